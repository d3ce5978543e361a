//! TLS against Apache Kafka listeners that require it (SSL, and SSL with a client
//! certificate required): every client connection, rskafka's and our own, goes through
//! the TLS listener. Certificates are made here with rcgen, fresh for each test (no key
//! is committed).

mod common;

use std::time::Duration;

use common::secure::*;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn ssl_on_both_clusters_replicates_exactly_once() {
    let pki = Pki::new("kafka-direct test CA");
    let (cert, key) = pki.issue("server", &["127.0.0.1", "localhost"], Valid::Long);
    // The external broker's certificate expires soon: check warns, nothing fails yet.
    let (soon, soon_key) = pki.issue("expiring", &["127.0.0.1"], Valid::ForDays(10));
    let external = TlsBroker::start(&soon, &soon_key, None);
    let internal = TlsBroker::start(&cert, &key, None);
    let ca_path = pki.path("ca.pem");
    let tls = kcat_tls(&ca_path, None);
    external.create("secure", 2).await;
    for p in 0..2 {
        produce_tls(&external.addr(), "secure", p, 150, &tls);
    }
    let ca = ca_path.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "secure",
            extra: &[
                ("connector.security.protocol", "SSL"),
                ("connector.ssl.ca.location", ca),
                ("internal.security.protocol", "SSL"),
                ("internal.ssl.ca.location", ca),
            ],
        },
    );
    let (ok, text) = service.cli("check");
    assert!(ok, "{text}");
    assert!(
        text.contains("external cluster: TLS handshake and certificate verification passed"),
        "{text}"
    );
    // The chain, with the days left; under 30 it is a warning (`!`).
    let expiring = text
        .lines()
        .find(|l| l.contains("external cluster: broker certificate CN=expiring issued by CN=kafka-direct test CA"))
        .unwrap_or_else(|| panic!("{text}"));
    // Ten days from when the certificate was made, to the second: 10, or 9 once a
    // second has passed.
    assert!(
        expiring.starts_with('!')
            && (expiring.contains("(9 days left)") || expiring.contains("(10 days left)")),
        "{expiring}"
    );
    assert!(
        text.contains("✔ security  internal cluster: broker certificate CN=server issued by CN=kafka-direct test CA, valid until 4096-01-01"),
        "{text}"
    );
    service.start();
    for p in 0..2 {
        assert_copied(&internal.addr(), "int.secure", "secure", p, 150, &tls).await;
    }
    assert!(service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_an_inline_client_key_replicates_and_without_it_is_refused() {
    let pki = Pki::new("kafka-direct test CA");
    let (cert, key) = pki.issue("server", &["127.0.0.1"], Valid::Long);
    let (client_cert, client_key) = pki.issue("client", &["kafka-direct"], Valid::Long);
    let external = TlsBroker::start(&cert, &key, Some(&pki.path("ca.pem")));
    let (_, internal) = shared_brokers();
    let ca = pki.path("ca.pem");
    external.create("mutual", 1).await;
    produce_tls(
        &external.addr(),
        "mutual",
        0,
        60,
        &kcat_tls(&ca, Some((&client_cert, &client_key))),
    );
    // Inline PEM; in the TOML basic string the test kit writes, newlines are escaped.
    let inline_key = std::fs::read_to_string(&client_key)
        .unwrap()
        .replace('\n', "\\n");
    let client_cert_text = client_cert.to_str().unwrap().to_owned();
    let base = [
        ("connector.security.protocol", "SSL"),
        ("connector.ssl.ca.location", ca.to_str().unwrap()),
    ];
    // The broker refuses the handshake without a client certificate, and with one that
    // has expired or that another CA signed.
    let refused_check = |extra: &[(&str, &str)], what: &str| {
        let dir = tempfile::tempdir().unwrap();
        let refused = Service::configure(
            dir.path(),
            ServiceConfig {
                external: &external.addr(),
                internal: &internal.addr(),
                topics: "mutual",
                extra,
            },
        );
        let (ok, text) = refused.cli("check");
        assert!(!ok, "{what}: {text}");
        assert!(
            text.contains(&format!("TLS handshake with {} failed", external.addr())),
            "{what}: {text}"
        );
    };
    refused_check(&base, "no client certificate");
    let other = Pki::new("another CA");
    let (expired_cert, expired_key) =
        pki.issue("expired-client", &["kafka-direct"], Valid::Expired);
    let (foreign_cert, foreign_key) = other.issue("foreign-client", &["kafka-direct"], Valid::Long);
    for (cert, key) in [(&expired_cert, &expired_key), (&foreign_cert, &foreign_key)] {
        let mut extra = base.to_vec();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        extra.push(("connector.ssl.certificate.location", cert));
        extra.push(("connector.ssl.key.location", key));
        refused_check(&extra, cert);
    }

    let mut extra = base.to_vec();
    extra.push(("connector.ssl.certificate.location", &client_cert_text));
    extra.push(("connector.ssl.key.location", &inline_key));
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "mutual",
            extra: &extra,
        },
    );
    service.start();
    assert_copied(&internal.addr(), "int.mutual", "mutual", 0, 60, &[]).await;
    assert!(service.terminate(Duration::from_secs(30)).success());
    // The key is secret: not in the log, not in `validate`'s printout.
    assert!(!service.log_text().contains("PRIVATE KEY"));
    let (ok, printed) = service.cli("validate");
    assert!(ok && !printed.contains("PRIVATE KEY"), "{printed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tls_failure_is_named_with_what_to_do() {
    let pki = Pki::new("kafka-direct test CA");
    let other = Pki::new("another CA");
    let (good, good_key) = pki.issue("good", &["127.0.0.1"], Valid::Long);
    let (wrong_name, wrong_name_key) = pki.issue("wrong-name", &["kafka.example.com"], Valid::Long);
    let (expired, expired_key) = pki.issue("expired", &["127.0.0.1"], Valid::Expired);
    let good_broker = TlsBroker::start(&good, &good_key, None);
    let wrong_name_broker = TlsBroker::start(&wrong_name, &wrong_name_key, None);
    let expired_broker = TlsBroker::start(&expired, &expired_key, None);
    let (plain, internal) = shared_brokers();
    let ca = pki.path("ca.pem");
    let other_ca = other.path("ca.pem");
    // (server, connector keys, what the message must say)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            good_broker.addr(),
            vec![("connector.ssl.ca.location", other_ca.to_str().unwrap())],
            "not signed by ssl.ca.location",
        ),
        (
            wrong_name_broker.addr(),
            vec![("connector.ssl.ca.location", ca.to_str().unwrap())],
            "the certificate does not name this address",
        ),
        (
            expired_broker.addr(),
            vec![("connector.ssl.ca.location", ca.to_str().unwrap())],
            "has expired",
        ),
        (
            plain.addr(),
            vec![("connector.ssl.ca.location", ca.to_str().unwrap())],
            "is the listener TLS?",
        ),
    ];
    for (i, (server, mut extra, needle)) in cases.into_iter().enumerate() {
        extra.push(("connector.security.protocol", "SSL"));
        // A certificate refusal is final: `run` must stop without retrying it for the
        // request timeout (120 s here, past the 60 s the exit is waited for). The
        // plaintext listener may instead leave the handshake unanswered, which is retried.
        if i < 3 {
            extra.push(("request.timeout.ms", "120000"));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut service = Service::configure(
            dir.path(),
            ServiceConfig {
                external: &server,
                internal: &internal.addr(),
                topics: "t",
                extra: &extra,
            },
        );
        let (ok, text) = service.cli("check");
        assert!(!ok, "{text}");
        assert!(
            (text.contains(&format!("TLS handshake with {server} failed"))
                || text.contains(&format!(
                    "{server} (127.0.0.1): no answer to the TLS handshake"
                )))
                && text.contains(needle),
            "{needle}: {text}"
        );
        // `run` stops with the cause too, in bounded time.
        service.start();
        let status = service.wait_exit(Duration::from_secs(60));
        assert!(!status.success());
        let log = service.log_text();
        assert!(log.contains(&server), "{log}");
    }

    // The reverse mismatch: a plaintext client against the TLS listener.
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &good_broker.addr(),
            internal: &internal.addr(),
            topics: "t",
            extra: &[],
        },
    );
    let needle = format!(
        "connection to {} broke at the first request",
        good_broker.addr()
    );
    service.assert_refused_at_start(
        &[
            &needle,
            "is the listener TLS? then set security.protocol=SSL",
        ],
        &needle,
    );

    // A name mismatch is accepted only with the loudly named key, which warns.
    let dir = tempfile::tempdir().unwrap();
    let service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &wrong_name_broker.addr(),
            internal: &internal.addr(),
            topics: "t",
            extra: &[
                ("connector.security.protocol", "SSL"),
                ("connector.ssl.ca.location", ca.to_str().unwrap()),
                ("connector.ssl.endpoint.identification.algorithm", "none"),
            ],
        },
    );
    let (_, text) = service.cli("check");
    assert!(
        text.contains("external cluster: TLS handshake and certificate verification passed"),
        "{text}"
    );
    let mut service = service;
    service.start();
    service.wait_exit(Duration::from_secs(60)); // no topic t: it stops after connecting
    let log = service.log_text();
    assert!(
        log.contains("certificates are not checked against their addresses"),
        "{log}"
    );
    assert!(
        log.contains("none of the configured topics (t) exists"),
        "{log}"
    );
}
