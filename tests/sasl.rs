//! SASL against a real broker that requires it: tansu built with SQLite storage
//! (scripts/install-sasl-broker), whose SASL offers SCRAM-SHA-256 and SCRAM-SHA-512.
//! SASL_SSL puts stunnel in front of it. Records are written and read back by kcat
//! (librdkafka) authenticating on its own, so both sides of each check are independent
//! of kafka-direct's SASL code. PLAIN is not offered by this broker: its exchange is
//! covered by the unit tests in src/wire.rs, and a PLAIN client is refused here with
//! the message that says so.

mod common;

use std::path::Path;
use std::time::Duration;

use common::secure::*;
use common::*;
use kafka_direct::api::client::ApiClient;

/// `n` records per partition written by kcat with `auth`: values `<topic>-<p>-<i>`.
fn produce_all(addr: &str, topic: &str, partitions: i32, n: usize, auth: &[String]) {
    for p in 0..partitions {
        produce_tls(addr, topic, p, n, auth);
    }
}

/// Writes `secret` to a file and returns the `${file:...}` reference to it.
fn file_reference(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    format!("${{file:{}}}", path.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_plaintext_with_scram_on_both_clusters_replicates_exactly_once() {
    let external = SaslBroker::start(
        None,
        &["user:alice:alice-secret:scram256", "topic:orders:2"],
    );
    let internal = SaslBroker::start(None, &["user:bob:bob-secret:scram512"]);
    let alice = kcat_sasl("SCRAM-SHA-256", "alice", "alice-secret", None);
    let bob = kcat_sasl("SCRAM-SHA-512", "bob", "bob-secret", None);
    produce_all(&external.addr(), "orders", 2, 150, &alice);

    let dir = tempfile::tempdir().unwrap();
    let bob_password = file_reference(dir.path(), "bob.password", "bob-secret");
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "orders",
            extra: &[
                ("connector.security.protocol", "SASL_PLAINTEXT"),
                ("connector.sasl.mechanism", "SCRAM-SHA-256"),
                ("connector.sasl.username", "alice"),
                ("connector.sasl.password", "alice-secret"),
                ("internal.security.protocol", "SASL_PLAINTEXT"),
                ("internal.sasl.mechanism", "SCRAM-SHA-512"),
                ("internal.sasl.username", "bob"),
                ("internal.sasl.password", &bob_password),
            ],
        },
    );
    let (ok, text) = service.cli("check");
    assert!(ok, "{text}");
    for line in [
        // tansu lists only the mechanism asked for; Kafka lists every enabled one.
        "external cluster: SASL SCRAM-SHA-256 authentication as \"alice\" passed (the broker offers SCRAM-SHA-256)",
        "internal cluster: SASL SCRAM-SHA-512 authentication as \"bob\" passed (the broker offers SCRAM-SHA-512)",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    service.start();
    for p in 0..2 {
        assert_copied(&internal.addr(), "int.orders", "orders", p, 150, &bob).await;
    }

    // The API shows the literal password hidden and the reference as given.
    let api = ApiClient::new(&service.api().await, None);
    let config = tokio::task::spawn_blocking(move || api.get_json("/connectors/test/config"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(config["sasl.password"], "[hidden]", "{config}");
    assert!(service.terminate(Duration::from_secs(30)).success());

    // Neither password is in the log or in `validate`'s printout.
    let (ok, validated) = service.cli("validate");
    assert!(ok, "{validated}");
    for text in [service.log_text(), validated] {
        assert!(
            !text.contains("alice-secret") && !text.contains("bob-secret"),
            "{text}"
        );
    }
}

/// A broker requiring SASL/SCRAM behind stunnel, with these set-up items; its TLS
/// address, and the broker and stunnel to keep alive.
fn sasl_ssl_broker(pki: &Pki, setup: &[&str]) -> (String, SaslBroker, Stunnel) {
    let (cert, key) = pki.issue("server", &["127.0.0.1"], Valid::Long);
    let port = free_port();
    let sasl = SaslBroker::start(Some(port), setup);
    let tls = Stunnel::front(port, sasl.port, &cert, &key, None);
    (format!("127.0.0.1:{}", tls.port), sasl, tls)
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_ssl_with_scram_on_both_clusters_replicates_and_check_reports_both_layers() {
    let pki = Pki::new("kafka-direct test CA");
    let (addr, _external, _external_tls) = sasl_ssl_broker(
        &pki,
        &["user:carol:carol-secret:scram512", "topic:secure:2"],
    );
    let (internal, _internal, _internal_tls) =
        sasl_ssl_broker(&pki, &["user:dave:dave-secret:scram256"]);
    let ca = pki.path("ca.pem");
    let carol = kcat_sasl("SCRAM-SHA-512", "carol", "carol-secret", Some(&ca));
    let dave = kcat_sasl("SCRAM-SHA-256", "dave", "dave-secret", Some(&ca));
    produce_all(&addr, "secure", 2, 120, &carol);

    let dir = tempfile::tempdir().unwrap();
    let password = file_reference(dir.path(), "carol.password", "carol-secret");
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &addr,
            internal: &internal,
            topics: "secure",
            extra: &[
                ("connector.security.protocol", "SASL_SSL"),
                ("connector.ssl.ca.location", ca.to_str().unwrap()),
                ("connector.sasl.mechanism", "SCRAM-SHA-512"),
                ("connector.sasl.username", "carol"),
                ("connector.sasl.password", &password),
                ("internal.security.protocol", "SASL_SSL"),
                ("internal.ssl.ca.location", ca.to_str().unwrap()),
                ("internal.sasl.mechanism", "SCRAM-SHA-256"),
                ("internal.sasl.username", "dave"),
                ("internal.sasl.password", "dave-secret"),
            ],
        },
    );
    let (ok, text) = service.cli("check");
    assert!(ok, "{text}");
    for line in [
        "external cluster: TLS handshake and certificate verification passed; SASL SCRAM-SHA-512 authentication as \"carol\" passed",
        "internal cluster: TLS handshake and certificate verification passed; SASL SCRAM-SHA-256 authentication as \"dave\" passed",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    service.start();
    for p in 0..2 {
        assert_copied(&internal, "int.secure", "secure", p, 120, &dave).await;
    }
    assert!(service.terminate(Duration::from_secs(30)).success());
    let log = service.log_text();
    assert!(
        !log.contains("carol-secret") && !log.contains("dave-secret"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sasl_failure_is_named_and_stops_the_service() {
    let broker = SaslBroker::start(None, &["user:alice:alice-secret:scram256", "topic:t:1"]);
    let internal = Broker::start();
    let server = broker.addr();
    // (mechanism, user, password, what the message must say besides the user)
    let cases = [
        (
            "SCRAM-SHA-256",
            "alice",
            "wrong-password",
            "check sasl.username and sasl.password",
        ),
        (
            "SCRAM-SHA-256",
            "mallory",
            "wrong-password",
            "check sasl.username and sasl.password",
        ),
        (
            "PLAIN",
            "alice",
            "alice-secret",
            "is PLAIN enabled on this listener?",
        ),
    ];
    for (mechanism, user, password, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut service = Service::configure(
            dir.path(),
            ServiceConfig {
                external: &server,
                internal: &internal.addr(),
                topics: "t",
                extra: &[
                    ("connector.security.protocol", "SASL_PLAINTEXT"),
                    ("connector.sasl.mechanism", mechanism),
                    ("connector.sasl.username", user),
                    ("connector.sasl.password", password),
                ],
            },
        );
        let named =
            format!("SASL {mechanism} authentication of user \"{user}\" with {server} failed");
        // `check` and `run` name the cause (`run` stops in bounded time); neither
        // shows the password.
        let (text, log) = service.assert_refused_at_start(&[&named, needle], &named);
        assert!(!text.contains(password), "{text}");
        assert!(!log.contains(password), "{log}");
    }
}
