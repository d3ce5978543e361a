//! SASL against Apache Kafka listeners that require it: SASL_PLAINTEXT and SASL_SSL,
//! with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (SCRAM users made when the broker's
//! storage is formatted). Records are written and read back by kcat (librdkafka)
//! authenticating on its own, so both sides of each check are independent of
//! kafka-direct's SASL code.

mod common;

use std::time::Duration;

use common::secure::*;
use common::*;
use kafka_direct::cli::client::ApiClient;

/// `n` records per partition written by kcat with `auth`: values `<topic>-<p>-<i>`.
fn produce_all(addr: &str, topic: &str, partitions: i32, n: usize, auth: &[String]) {
    for p in 0..partitions {
        produce_tls(addr, topic, p, n, auth);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_plaintext_with_scram_on_both_clusters_replicates_exactly_once() {
    let external = SaslBroker::start(None, SCRAM, &[("alice", "alice-secret")]);
    external.create("orders", 2).await;
    let internal = SaslBroker::start(None, SCRAM, &[("bob", "bob-secret")]);
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
    // Kafka lists every mechanism the listener enables, in no set order (tansu listed
    // only the one asked for).
    for (line, offered) in [
        ("external cluster: SASL SCRAM-SHA-256 authentication as \"alice\" passed (the broker offers ", "SCRAM-SHA-256"),
        ("internal cluster: SASL SCRAM-SHA-512 authentication as \"bob\" passed (the broker offers ", "SCRAM-SHA-512"),
    ] {
        let found = text.lines().find(|l| l.contains(line)).unwrap_or_else(|| panic!("{line}: {text}"));
        assert!(found.contains(offered) && found.contains(if offered == "SCRAM-SHA-256" { "SCRAM-SHA-512" } else { "SCRAM-SHA-256" }), "{found}");
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

/// A broker requiring SASL over TLS, offering `mechanisms` to `users`.
fn sasl_ssl_broker(pki: &Pki, mechanisms: &str, users: &[(&str, &str)]) -> SecureBroker {
    let (cert, key) = pki.issue("server", &["127.0.0.1"], Valid::Long);
    SaslBroker::start(Some((&cert, &key)), mechanisms, users)
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_ssl_with_scram_on_both_clusters_replicates_and_check_reports_both_layers() {
    let pki = Pki::new("kafka-direct test CA");
    let external = sasl_ssl_broker(&pki, SCRAM, &[("carol", "carol-secret")]);
    external.create("secure", 2).await;
    let internal_broker = sasl_ssl_broker(&pki, SCRAM, &[("dave", "dave-secret")]);
    let (addr, internal) = (external.addr(), internal_broker.addr());
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
    // SCRAM only: a PLAIN client is told what the listener offers instead.
    let broker = SaslBroker::start(None, SCRAM, &[("alice", "alice-secret")]);
    broker.create("t", 1).await;
    let (_, internal) = shared_brokers();
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
            "the broker does not enable PLAIN; it offers SCRAM-SHA-",
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

/// SASL/PLAIN, over SASL_PLAINTEXT on the external cluster and SASL_SSL on the internal
/// one (the rows only a broker offering PLAIN proves).
#[tokio::test(flavor = "multi_thread")]
async fn sasl_plain_over_plaintext_and_over_tls_replicates_exactly_once() {
    let pki = Pki::new("kafka-direct test CA");
    let external = SaslBroker::start(None, "PLAIN", &[("erin", "erin-secret")]);
    external.create("plain", 2).await;
    let internal = sasl_ssl_broker(&pki, "PLAIN", &[("frank", "frank-secret")]);
    let ca = pki.path("ca.pem");
    let erin = kcat_sasl("PLAIN", "erin", "erin-secret", None);
    let frank = kcat_sasl("PLAIN", "frank", "frank-secret", Some(&ca));
    produce_all(&external.addr(), "plain", 2, 100, &erin);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "plain",
            extra: &[
                ("connector.security.protocol", "SASL_PLAINTEXT"),
                ("connector.sasl.mechanism", "PLAIN"),
                ("connector.sasl.username", "erin"),
                ("connector.sasl.password", "erin-secret"),
                ("internal.security.protocol", "SASL_SSL"),
                ("internal.ssl.ca.location", ca.to_str().unwrap()),
                ("internal.sasl.mechanism", "PLAIN"),
                ("internal.sasl.username", "frank"),
                ("internal.sasl.password", "frank-secret"),
            ],
        },
    );
    let (ok, text) = service.cli("check");
    assert!(ok, "{text}");
    for line in [
        "external cluster: SASL PLAIN authentication as \"erin\" passed (the broker offers PLAIN)",
        "internal cluster: TLS handshake and certificate verification passed; SASL PLAIN authentication as \"frank\" passed",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    service.start();
    for p in 0..2 {
        assert_copied(&internal.addr(), "int.plain", "plain", p, 100, &frank).await;
    }
    assert!(service.terminate(Duration::from_secs(30)).success());
    // A wrong PLAIN password is refused by the broker, named, and never shown.
    let dir = tempfile::tempdir().unwrap();
    let mut refused = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.broker.addr(),
            topics: "plain",
            extra: &[
                ("connector.security.protocol", "SASL_PLAINTEXT"),
                ("connector.sasl.mechanism", "PLAIN"),
                ("connector.sasl.username", "erin"),
                ("connector.sasl.password", "not-erins"),
            ],
        },
    );
    let named = format!(
        "SASL PLAIN authentication of user \"erin\" with {} failed",
        external.addr()
    );
    let (text, log) = refused.assert_refused_at_start(&[&named], &named);
    assert!(
        !text.contains("not-erins") && !log.contains("not-erins"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_without_group_acls_replicates_and_check_names_the_missing_permission() {
    // Kafka's StandardAuthorizer: the plaintext listener (the test kit's, Kafka's
    // tools') is the super user ANONYMOUS; kafka-direct authenticates as `mirror`, who
    // may read the topic and nothing of any group.
    let secure_port = free_port();
    let args: Vec<String> = [
        "--secure",
        &format!("SASL_PLAINTEXT:{secure_port}"),
        "--mechanisms",
        "PLAIN",
        "--user",
        "mirror:mirror-secret",
        "--set",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "--set",
        "super.users=User:ANONYMOUS",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let external = Broker::start_kafka(None, &args);
    let plain = external.addr();
    let secure = format!("127.0.0.1:{secure_port}");
    create_topic(&plain, "guarded", 1).await;
    let acl = |extra: &[&str]| {
        let mut a = vec![
            "--bootstrap-server",
            &plain,
            "--add",
            "--allow-principal",
            "User:mirror",
        ];
        a.extend_from_slice(extra);
        kafka_tool("kafka-acls", &a);
    };
    acl(&[
        "--operation",
        "Read",
        "--operation",
        "Describe",
        "--operation",
        "DescribeConfigs",
        "--topic",
        "guarded",
    ]);
    produce_all(&plain, "guarded", 1, 50, &[]);
    let internal = Broker::start();

    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &secure,
            internal: &internal.addr(),
            topics: "guarded",
            extra: &[
                ("connector.security.protocol", "SASL_PLAINTEXT"),
                ("connector.sasl.mechanism", "PLAIN"),
                ("connector.sasl.username", "mirror"),
                ("connector.sasl.password", "mirror-secret"),
                ("connector.offset.flush.interval.ms", "300"),
            ],
        },
    );
    let (ok, text) = service.cli("check");
    assert!(
        ok,
        "missing group permissions are a warning, not a failure: {text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("consumer group kafka-direct-test cannot be read"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("GroupAuthorizationFailed"), "{line}");
    assert!(
        text.contains("grant it READ and DESCRIBE on Group:kafka-direct-test"),
        "{text}"
    );

    // Replication goes on without the group.
    service.start();
    wait_for_end(
        &internal.addr(),
        "int.guarded",
        0,
        50,
        Duration::from_secs(90),
    )
    .await;
    service
        .wait_log("the group warning", Duration::from_secs(30), |log| {
            log.contains("lag tools do not see kafka-direct's position")
        })
        .await;

    // Granted, the group shows the position, and check says so.
    acl(&[
        "--operation",
        "Read",
        "--operation",
        "Describe",
        "--group",
        "kafka-direct-test",
    ]);
    let (ok, text) = service.cli("check");
    assert!(ok, "{text}");
    assert!(
        text.contains("this principal may commit to group kafka-direct-test"),
        "{text}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = described(&plain, "kafka-direct-test", "guarded");
        if seen.get(&0) == Some(&Some(50)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// Brokers that end every SASL session after 3 s (`connections.max.reauth.ms`): PLAIN on
/// the external cluster, SCRAM-SHA-512 on the internal one. Over a 30 s run with records
/// arriving every half second, the service re-authenticates its open connections
/// (KIP-368) instead of losing them: every record is copied once,
/// `kafka_direct_sasl_reauthentications_total` counts renewals on both brokers, and
/// over the run no fetch or produce fails and nothing is logged above INFO. Records are
/// written and read on the brokers' plaintext listeners by plain rskafka.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_the_broker_ends_are_renewed_on_open_connections_with_plain_and_scram() {
    const TOPIC: &str = "renewed";
    let reauth = || {
        vec![
            "--set".to_owned(),
            "connections.max.reauth.ms=3000".to_owned(),
        ]
    };
    let external = SecureBroker::start_with(
        "SASL_PLAINTEXT",
        None,
        None,
        "PLAIN",
        &[("erin", "erin-secret")],
        reauth(),
    );
    let internal = SecureBroker::start_with(
        "SASL_PLAINTEXT",
        None,
        None,
        SCRAM,
        &[("bob", "bob-secret")],
        reauth(),
    );
    external.create(TOPIC, 2).await;
    let (plain_external, plain_internal) = (external.broker.addr(), internal.broker.addr());
    for p in 0..2 {
        produce_bounded(&plain_external, TOPIC, p, test_records(p, 0, 100)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: TOPIC,
            extra: &[
                ("connector.security.protocol", "SASL_PLAINTEXT"),
                ("connector.sasl.mechanism", "PLAIN"),
                ("connector.sasl.username", "erin"),
                ("connector.sasl.password", "erin-secret"),
                ("internal.security.protocol", "SASL_PLAINTEXT"),
                ("internal.sasl.mechanism", "SCRAM-SHA-512"),
                ("internal.sasl.username", "bob"),
                ("internal.sasl.password", "bob-secret"),
            ],
        },
    );
    let (ok, text) = service.cli("check");
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "the broker ends the session after 3.0 s: kafka-direct re-authenticates before"
        ),
        "{text}"
    );
    service.start();
    let int_topic = format!("int.{TOPIC}");
    for p in 0..2 {
        wait_for_end(&plain_internal, &int_topic, p, 100, Duration::from_secs(90)).await;
    }
    // A fresh broker's start (its coordinators loading) may count errors: the run is
    // judged from here.
    let errors_before = counter_sum(&service.metrics().await, "errors");
    let log_before = service.log_text().len();
    // Ten session lifetimes, records arriving every half second: the connections are
    // never idle long enough for a session to end unused.
    let started = std::time::Instant::now();
    let mut produced = 100;
    while started.elapsed() < Duration::from_secs(30) {
        for p in 0..2 {
            produce_bounded(&plain_external, TOPIC, p, test_records(p, produced, 10)).await;
        }
        produced += 10;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for p in 0..2 {
        if let Err(now) = reach_end(
            &plain_internal,
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
        let source = read_all(&plain_external, TOPIC, p).await;
        let copies = read_all(&plain_internal, &int_topic, p).await;
        assert_exactly_once(&source, &copies, TOPIC, p);
    }
    let metrics = service.metrics().await;
    let log = service.log_text()[log_before..].to_owned();
    for broker in [external.addr(), internal.addr()] {
        let renewed = counter_sum_where(
            &metrics,
            "sasl_reauthentications",
            &format!("broker=\"{broker}\""),
        );
        // The fetch session and the produce session each live the whole run.
        assert!(
            renewed >= 5,
            "{broker}: {renewed} re-authentications over ten session lifetimes; metrics:\n{metrics}\nlog:\n{log}"
        );
    }
    let errors = counter_sum(&metrics, "errors") - errors_before;
    assert_eq!(errors, 0, "failed calls:\n{metrics}\nlog:\n{log}");
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(loud.is_empty(), "logged above INFO:\n{}", loud.join("\n"));
    assert!(service.terminate(Duration::from_secs(30)).success());
}
