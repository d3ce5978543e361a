//! `kafka-direct check` against real brokers: each failure class reachable here gives
//! its own finding and exit code.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// Runs `check --json` on the pipeline's config with `overrides`; (exit success, report).
fn check(p: &Pipeline, overrides: &[&str]) -> (bool, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-direct"));
    cmd.args(["check", "--json", "--config"])
        .arg(&p.service.config);
    for o in overrides {
        cmd.args(["--set", o]);
    }
    let out = cmd.output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(report["passed"].as_bool(), Some(out.status.success()));
    (out.status.success(), report)
}

/// The findings of `step` with `status`, as "finding → fix" texts.
fn findings(report: &Value, step: &str, status: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["step"] == step && f["status"] == status)
        .map(|f| {
            format!(
                "{} → {}",
                f["finding"].as_str().unwrap(),
                f["fix"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn produce_text(p: &Pipeline, lines: &str) {
    kcat_produce(&p.external.addr(), p.topic, 0, &[], lines);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_config_passes_and_says_what_will_happen() {
    let p = Pipeline::new("sales", 2, &[("connector.format", "json")]).await;
    produce_text(&p, "{\"id\": 1}\n{\"id\": 2, \"extra\": true}\n");
    let (passed, report) = check(&p, &["connector.schemas.enable=true"]);
    assert!(passed, "{report:#}");
    assert!(
        findings(&report, "external", "ok")[0].contains("answers in"),
        "{report:#}"
    );
    let topics = findings(&report, "topics", "ok");
    assert!(
        topics[0].contains("sales: 2 partitions, every leader answers, 2 records available"),
        "{topics:?}"
    );
    let format = findings(&report, "format", "ok");
    assert!(format[0].contains("2 of 2 sampled values are JSON objects that fit one evolving schema (2 schema versions"), "{format:?}");
    let internal = findings(&report, "internal", "ok");
    assert!(
        internal
            .iter()
            .any(|f| f.contains("int.sales will be created with 2 partitions")),
        "{internal:?}"
    );
    assert!(
        internal
            .iter()
            .any(|f| f.contains("dead-letter topic int.dlq will be created")),
        "{internal:?}"
    );
    assert!(
        internal.iter().any(|f| f.contains(
            "the brokers offer InitProducerId: produce is idempotent (the broker stores a re-sent batch once), up to 5 requests in flight per partition"
        )),
        "{internal:?}"
    );
    // The text form has the same verdict.
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["check", "--config"])
        .arg(&p.service.config)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success()
            && text.contains("✔ topics")
            && text.ends_with("ready to run (0 warnings)\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_failures_name_the_address_and_the_key() {
    let p = Pipeline::new("unreached", 1, &[]).await;
    // Nothing listens on port 1.
    let (passed, report) = check(&p, &["connector.kafka.bootstrap.servers=127.0.0.1:1"]);
    assert!(!passed);
    let failed = findings(&report, "external", "fail");
    assert!(
        failed[0].contains("127.0.0.1:1") && failed[0].contains("Connection refused"),
        "{failed:?}"
    );
    assert!(
        failed[0].contains("connector.kafka.bootstrap.servers"),
        "{failed:?}"
    );
    // A name that does not resolve.
    let (passed, report) = check(
        &p,
        &["internal.bootstrap.servers=no-such-host.invalid:9092"],
    );
    assert!(!passed);
    let failed = findings(&report, "internal", "fail");
    assert!(
        failed[0].contains("no-such-host.invalid does not resolve"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_advertising_an_unreachable_address_is_named() {
    // The external broker tells clients to come back on a port where nothing listens
    // (no topic is needed: the connectivity step fails first).
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let external = Broker::start_advertising(Some(dead_port));
    let internal = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "orders",
            extra: &[],
        },
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["check", "--json", "--config"])
        .arg(&service.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = findings(&report, "external", "fail");
    assert!(
        failed[0].contains(&format!(
            "advertises 127.0.0.1:{dead_port}, which this machine cannot use"
        )) && failed[0].contains("advertised.listeners"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_format_and_offset_mistakes_are_explained() {
    let p = Pipeline::new("orders", 1, &[("connector.format", "json")]).await;
    produce_text(&p, "hello\nworld\n");
    // A misspelt topic.
    let (passed, report) = check(&p, &["connector.topic.include.list=ordres"]);
    assert!(!passed);
    let failed = findings(&report, "topics", "fail");
    assert!(
        failed[0].contains("ordres does not exist on the external cluster; did you mean `orders`?"),
        "{failed:?}"
    );
    // Text where JSON is configured: every sampled value would be a dead letter.
    let (passed, report) = check(&p, &[]);
    assert!(!passed);
    let failed = findings(&report, "format", "fail");
    assert!(
        failed[0].contains("2 of 2 sampled values are not valid JSON")
            && failed[0].contains("\"hello\""),
        "{failed:?}"
    );
    assert!(
        failed[0].contains("set connector.format=string"),
        "{failed:?}"
    );
    // `latest` on a topic that holds records: they will not be copied.
    let (passed, report) = check(
        &p,
        &[
            "connector.format=string",
            "connector.auto.offset.reset=latest",
        ],
    );
    assert!(passed, "{report:#}");
    let warned = findings(&report, "topics", "warn");
    assert!(
        warned[0].contains("the 2 records already in orders are not copied"),
        "{warned:?}"
    );
    // An unknown key stops the check at step 1.
    let (passed, report) = check(&p, &["connector.auto.ofset.reset=latest"]);
    assert!(!passed);
    let failed = findings(&report, "config", "fail");
    assert!(
        failed[0].contains("did you mean `connector.auto.offset.reset`?"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_topic_is_a_warning_not_a_failure() {
    let p = Pipeline::new("quiet", 1, &[]).await;
    let (passed, report) = check(&p, &[]);
    assert!(passed, "{report:#}");
    let warned = findings(&report, "topics", "warn");
    assert!(
        warned[0].contains("quiet is empty: nothing arrives until producers write"),
        "{warned:?}"
    );
}
