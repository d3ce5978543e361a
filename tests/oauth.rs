//! SASL OAUTHBEARER against Apache Kafka: tokens by the client-credentials grant from a
//! test identity provider (tests/common/oidc.rs: RS256 JWTs and their JWKS), validated
//! by Kafka's own OIDC validator on a SASL_PLAINTEXT listener (external) and a SASL_SSL
//! one (internal). The records are written
//! on the broker's plaintext listener and read back by plain rskafka, not by
//! kafka-direct's code.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::oidc::Oidc;
use common::secure::*;
use common::*;

const TOPIC: &str = "tokens";

/// The connector's keys for OAUTHBEARER as client `mirror` over SASL_PLAINTEXT.
fn oauth_keys<'a>(token_url: &'a str, secret: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("connector.security.protocol", "SASL_PLAINTEXT"),
        ("connector.sasl.mechanism", "OAUTHBEARER"),
        ("connector.sasl.oauthbearer.token.endpoint.url", token_url),
        ("connector.sasl.oauthbearer.client.id", "mirror"),
        ("connector.sasl.oauthbearer.client.secret", secret),
    ]
}

/// The external cluster (SASL_PLAINTEXT) authenticates with tokens lasting 12 s, and
/// ends every session at `connections.max.reauth.ms` (6 s) or its token's expiry,
/// whichever comes first; the internal cluster takes the same client's tokens over
/// SASL_SSL and ends each session at its token's expiry. Over a 40 s run the service
/// re-authenticates its open connections (KIP-368), with the cached token while 80 % of
/// its lifetime is left, then with a new one: every record is copied once, both brokers
/// count re-authentications, and over the run nothing is logged above INFO.
#[tokio::test(flavor = "multi_thread")]
async fn oauthbearer_tokens_from_a_token_endpoint_replicate_exactly_once_across_refreshes() {
    let oidc = Oidc::start("mirror", "mirror-secret", Duration::from_secs(12));
    let external = oauth_broker(
        &oidc.jwks_url(),
        None,
        &["listener.name.secure.oauthbearer.connections.max.reauth.ms=6000"],
    );
    external.create(TOPIC, 2).await;
    let pki = Pki::new("kafka-direct test CA");
    let (cert, key) = pki.issue("server", &["127.0.0.1"], Valid::Long);
    let secured = oauth_broker(&oidc.jwks_url(), Some((&cert, &key)), &[]);
    // The test reads the internal cluster on its plaintext listener.
    let internal = &secured.broker;
    let ca = pki.path("ca.pem");
    let plain = external.broker.addr();
    for p in 0..2 {
        produce_bounded(&plain, TOPIC, p, test_records(p, 0, 200)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let secret = file_reference(dir.path(), "client.secret", "mirror-secret");
    let token_url = oidc.token_url();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &secured.addr(),
            topics: TOPIC,
            extra: &[
                oauth_keys(&token_url, &secret).as_slice(),
                &[
                    ("internal.security.protocol", "SASL_SSL"),
                    ("internal.ssl.ca.location", ca.to_str().unwrap()),
                    ("internal.sasl.mechanism", "OAUTHBEARER"),
                    ("internal.sasl.oauthbearer.token.endpoint.url", &token_url),
                    ("internal.sasl.oauthbearer.client.id", "mirror"),
                    ("internal.sasl.oauthbearer.client.secret", &secret),
                ],
            ]
            .concat(),
        },
    );
    let (ok, text) = service.cli("check");
    assert!(ok, "{text}");
    for cluster in ["external", "internal"] {
        let line = format!("{cluster} cluster: ");
        let reported = text
            .lines()
            .find(|l| l.contains(&line) && l.contains("SASL"))
            .unwrap_or_default();
        assert!(
            reported.contains(&format!(
                "token for client \"mirror\" obtained from {token_url}"
            )) && reported.contains("SASL OAUTHBEARER authentication as \"mirror\" passed"),
            "{cluster}: {text}"
        );
    }
    assert!(
        text.contains("TLS handshake and certificate verification passed; token for client"),
        "{text}"
    );
    service.start();
    let int_topic = format!("int.{TOPIC}");
    for p in 0..2 {
        wait_for_end(
            &internal.addr(),
            &int_topic,
            p,
            200,
            Duration::from_secs(90),
        )
        .await;
    }
    let log_before = service.log_text().len();
    // More records over three token lifetimes.
    let started = Instant::now();
    let issued_before = oidc.issued.load(Ordering::SeqCst);
    let mut produced = 200;
    while started.elapsed() < Duration::from_secs(40) {
        for p in 0..2 {
            produce_bounded(&plain, TOPIC, p, test_records(p, produced, 50)).await;
        }
        produced += 50;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for p in 0..2 {
        if let Err(now) = reach_end(
            &internal.addr(),
            &int_topic,
            p,
            produced as i64,
            Duration::from_secs(90),
        )
        .await
        {
            panic!(
                "{int_topic}/{p} reached {now}, not {produced}; log:\n{}",
                service.log_text()
            );
        }
        let source = read_all(&plain, TOPIC, p).await;
        let copies = read_all(&internal.addr(), &int_topic, p).await;
        assert_exactly_once(&source, &copies, TOPIC, p);
    }
    let issued = oidc.issued.load(Ordering::SeqCst) - issued_before;
    eprintln!("{issued} tokens issued over {:?}", started.elapsed());
    assert!(
        issued >= 2,
        "{issued} tokens issued over three lifetimes of a token: the service did not refresh it; log:\n{}",
        service.log_text()
    );
    let log = service.log_text();
    assert!(
        !log.contains("mirror-secret"),
        "the secret was logged:\n{log}"
    );
    // Refreshed before they expire, no token is ever refused (a refused cached token
    // would be dropped and replaced, but only after a failed connection).
    assert!(
        !log.contains("refused the token"),
        "the broker refused a token: it was not refreshed in time; log:\n{log}"
    );
    let metrics = service.metrics().await;
    for broker in [external.addr(), secured.addr()] {
        let renewed = counter_sum_where(
            &metrics,
            "sasl_reauthentications",
            &format!("broker=\"{broker}\""),
        );
        assert!(
            renewed >= 2,
            "{broker}: {renewed} re-authentications over 40 s of sessions of at most 12 s; metrics:\n{metrics}\nlog:\n{log}"
        );
    }
    let loud: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(loud.is_empty(), "logged above INFO:\n{}", loud.join("\n"));
    assert!(service.terminate(Duration::from_secs(60)).success());
}

/// A wrong client secret, an unreachable token endpoint, and a token the broker refuses
/// (its signing key is not in the broker's JWKS): each is one line naming the endpoint or
/// the broker, never the secret.
#[tokio::test(flavor = "multi_thread")]
async fn each_oauthbearer_failure_is_named_and_never_shows_the_secret() {
    let oidc = Oidc::start("mirror", "mirror-secret", Duration::from_secs(60));
    // A second provider whose keys the broker does not know.
    let stranger = Oidc::start("mirror", "mirror-secret", Duration::from_secs(60));
    let external = oauth_broker(&oidc.jwks_url(), None, &[]);
    external.create(TOPIC, 1).await;
    let internal = Broker::start();
    // Port 1: nothing listens there, and no test takes it.
    let closed = "http://127.0.0.1:1/token".to_owned();
    let cases: [(&str, String, &str); 3] = [
        ("wrong secret", oidc.token_url(), "not-the-secret"),
        ("unreachable endpoint", closed.clone(), "mirror-secret"),
        (
            "token the broker refuses",
            stranger.token_url(),
            "mirror-secret",
        ),
    ];
    for (case, url, secret) in cases {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::configure(
            dir.path(),
            ServiceConfig {
                external: &external.addr(),
                internal: &internal.addr(),
                topics: TOPIC,
                extra: &oauth_keys(&url, secret),
            },
        );
        let (ok, text) = service.cli("check");
        eprintln!("== {case}:\n{text}");
        assert!(!ok, "{case}: check passed:\n{text}");
        assert!(
            !text.contains(secret),
            "{case}: the secret is shown:\n{text}"
        );
        match case {
            "wrong secret" => assert!(
                text.contains(&url) && text.contains("HTTP 401") && text.contains("invalid_client"),
                "{case}:\n{text}"
            ),
            "unreachable endpoint" => assert!(
                text.contains(&closed) && text.contains("could not be reached"),
                "{case}:\n{text}"
            ),
            _ => assert!(
                text.contains("refused the token") && text.contains(&external.addr()),
                "{case}:\n{text}"
            ),
        }
    }
    assert!(oidc.refused.load(Ordering::SeqCst) >= 1);
}

/// `sasl.oauthbearer.method=aws_msk_iam` against a real broker. There is no MSK here, so
/// Kafka's OIDC validator refuses the token; what this proves is the rest of the way:
/// credentials found by the AWS SDK's chain (here the environment), a token signed and
/// sent over OAUTHBEARER, and the broker's refusal named with the region and the access
/// key, never the secret key: credentials from the environment, from a stand-in for
/// EC2's instance metadata service, and from a named profile of the shared credentials
/// file. Without credentials (no environment, no shared files, the instance metadata
/// service switched off), `check` names the sources to set.
#[tokio::test(flavor = "multi_thread")]
async fn msk_iam_tokens_are_signed_from_the_aws_chain_and_a_refusal_names_region_and_key() {
    let oidc = Oidc::start("mirror", "mirror-secret", Duration::from_secs(60));
    let external = oauth_broker(&oidc.jwks_url(), None, &[]);
    external.create(TOPIC, 1).await;
    let internal = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: TOPIC,
            extra: &[
                ("connector.security.protocol", "SASL_PLAINTEXT"),
                ("connector.sasl.mechanism", "OAUTHBEARER"),
                ("connector.sasl.oauthbearer.method", "aws_msk_iam"),
                ("connector.sasl.oauthbearer.aws.region", "eu-west-1"),
            ],
        },
    );
    let (ok, validated) = service.cli("validate");
    assert!(ok, "{validated}");
    // No shared files: HOME and the files' variables point at an empty directory.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.to_str().unwrap().to_owned();
    let isolated = [
        ("HOME", home.as_str()),
        ("AWS_CONFIG_FILE", "/nonexistent/config"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let aws_names = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ];
    let secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let with_keys = [
        &isolated[..],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", secret_key),
        ],
    ]
    .concat();
    let (ok, text) = service.cli_in_env("check", &with_keys, &aws_names);
    eprintln!("== with keys in the environment:\n{text}");
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("with {} failed", external.addr()))
            && text.contains(
                "the broker refused the MSK IAM token (region eu-west-1, access key AKIAIOSFODNN7EXAMPLE)"
            )
            && text.contains("kafka-cluster:Connect"),
        "{text}"
    );
    assert!(
        !text.contains(secret_key),
        "the secret key is shown:\n{text}"
    );
    let (ok, text) = service.cli_in_env("check", &isolated, &aws_names);
    eprintln!("== without credentials:\n{text}");
    assert!(!ok, "{text}");
    assert!(
        text.contains("no AWS credentials for MSK IAM") && text.contains("AWS_ACCESS_KEY_ID"),
        "{text}"
    );

    // An instance's role, from a stand-in for EC2's instance metadata service (IMDSv2:
    // a session token first, then the role's name and its credentials).
    let (imds, asked) = fake_instance_metadata("ASIAIMDSEXAMPLE", secret_key);
    let imds_url = format!("http://{imds}");
    let on_ec2 = [
        &isolated[..3],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url.as_str())],
    ]
    .concat();
    let (ok, text) = service.cli_in_env("check", &on_ec2, &aws_names);
    eprintln!("== from the instance metadata service:\n{text}");
    assert!(!ok, "{text}");
    assert!(
        text.contains("refused the MSK IAM token (region eu-west-1, access key ASIAIMDSEXAMPLE)"),
        "{text}"
    );
    assert!(
        !text.contains(secret_key),
        "the secret key is shown:\n{text}"
    );
    let asked = asked.lock().unwrap().clone();
    for wanted in [
        "PUT /latest/api/token",
        "GET /latest/meta-data/iam/security-credentials/ ",
        "GET /latest/meta-data/iam/security-credentials/mirror-role ",
    ] {
        assert!(
            asked.iter().any(|line| line.starts_with(wanted)),
            "{wanted}: {asked:?}"
        );
    }

    // A profile of the shared credentials file, named by sasl.oauthbearer.aws.profile.
    let files = dir.path().join("aws");
    std::fs::create_dir_all(&files).unwrap();
    let credentials = files.join("credentials");
    std::fs::write(
        &credentials,
        format!("[default]\naws_access_key_id = AKIADEFAULTEXAMPLE\naws_secret_access_key = {secret_key}\n\n[mirror]\naws_access_key_id = AKIAPROFILEEXAMPLE\naws_secret_access_key = {secret_key}\n"),
    )
    .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let profiled = Service::configure(
        dir2.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: TOPIC,
            extra: &[
                ("connector.security.protocol", "SASL_PLAINTEXT"),
                ("connector.sasl.mechanism", "OAUTHBEARER"),
                ("connector.sasl.oauthbearer.method", "aws_msk_iam"),
                ("connector.sasl.oauthbearer.aws.region", "eu-west-1"),
                ("connector.sasl.oauthbearer.aws.profile", "mirror"),
            ],
        },
    );
    let with_file = [
        &isolated[..],
        &[("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap())],
    ]
    .concat();
    let (ok, text) = profiled.cli_in_env("check", &with_file, &aws_names);
    eprintln!("== from a profile:\n{text}");
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "refused the MSK IAM token (region eu-west-1, access key AKIAPROFILEEXAMPLE)"
        ),
        "{text}"
    );
}

/// A stand-in for EC2's instance metadata service (IMDSv2) on a free loopback port,
/// serving the role `mirror-role` with `access_key` and `secret_key`: returns its
/// address and the request lines it was sent.
fn fake_instance_metadata(
    access_key: &'static str,
    secret_key: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut has_token = false;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
                has_token |= header
                    .to_ascii_lowercase()
                    .starts_with("x-aws-ec2-metadata-token: imds-session");
            }
            seen.lock().unwrap().push(request.trim_end().to_owned());
            let path = request.split(' ').nth(1).unwrap_or("");
            let (status, extra, body) = match (request.split(' ').next(), path) {
                (Some("PUT"), "/latest/api/token") => (
                    "200 OK",
                    "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                    "imds-session".to_owned(),
                ),
                (Some("GET"), _) if !has_token => ("401 Unauthorized", "", String::new()),
                (Some("GET"), "/latest/meta-data/iam/security-credentials/") => {
                    ("200 OK", "", "mirror-role".to_owned())
                }
                (Some("GET"), "/latest/meta-data/iam/security-credentials/mirror-role") => (
                    "200 OK",
                    "",
                    format!(
                        r#"{{"Code":"Success","LastUpdated":"2026-12-04T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"{access_key}","SecretAccessKey":"{secret_key}","Token":"imds-session-token","Expiration":"2099-01-01T00:00:00Z"}}"#
                    ),
                ),
                _ => ("404 Not Found", "", String::new()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, asked)
}
