//! Records removed from a source partition before they were copied (retention or
//! DeleteRecords, while the service was stopped), on Apache Kafka: the service does what
//! a Kafka consumer with the same `auto.offset.reset` does, never silently (a warning, a
//! counter in /metrics, the skipped range in the status), and with `none` the partition
//! stops naming the lost offsets and the way out, which the API then takes.

mod common;

use std::time::Duration;

use common::*;
use kafka_direct::cli::client::ApiClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

async fn call(
    api: &ApiClient,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let api = api.clone();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        api.send(method, &path, body.as_ref())
            .expect("the API answers")
    })
    .await
    .unwrap()
}

/// Produces `n` more records and removes the source's records below `below`
/// (DeleteRecords), while the service is stopped.
async fn produce_and_remove(p: &Pipeline, start: usize, n: usize, below: i64) {
    p.produce_each(start, n).await;
    partition_client(&p.external.addr(), p.topic, 0)
        .await
        .delete_records(below, 10_000)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn records_removed_before_they_were_copied_are_skipped_as_auto_offset_reset_says() {
    let mut p = Pipeline::new("retained", 1, &[]).await;
    p.produce_each(0, 100).await;
    p.service.start();
    wait_for_end(&p.internal.addr(), &p.internal_topic(), 0, 100, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    // earliest: 100..149 are gone; the copy goes on from 150, saying so.
    produce_and_remove(&p, 100, 100, 150).await;
    p.service.start();
    wait_for_end(&p.internal.addr(), &p.internal_topic(), 0, 150, WAIT).await;
    let expected: Vec<i64> = (0..100).chain(150..200).collect();
    assert_eq!(
        copied_source_offsets(&p.internal.addr(), &p.internal_topic(), 0).await,
        expected
    );
    let api = ApiClient::new(&p.service.api().await, None);
    let s = connector_status(&api).await;
    assert_eq!(
        s["tasks"][0]["skipped_offsets"],
        serde_json::json!({"total": 50, "last": "100..149"}),
        "{s:#}"
    );
    let (_, metrics) = call(&api, "GET", "/metrics", None).await;
    let skipped = metrics
        .lines()
        .find(|l| {
            l.starts_with("kafka_direct_skipped_offsets_total{") && l.contains("topic=\"retained\"")
        })
        .unwrap_or_else(|| panic!("no skipped offsets counter:\n{metrics}"));
    assert!(skipped.ends_with(" 50"), "{skipped}");
    let log = p.service.log_text();
    assert!(
        log.contains(
            "source offsets were removed (retention or DeleteRecords) before they were copied"
        ) && log.contains("from=100 to=149 skipped=50 policy=\"earliest\""),
        "{log}"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    // none: the same loss stops the partition, naming the offsets and the way out.
    produce_and_remove(&p, 200, 100, 250).await;
    std::fs::write(&p.service.log, "").unwrap();
    let mut service = Service::configure(
        &p.service.dir,
        ServiceConfig {
            external: &p.external.addr(),
            internal: &p.internal.addr(),
            topics: p.topic,
            extra: &[("connector.auto.offset.reset", "none")],
        },
    );
    service.start();
    let api = ApiClient::new(&service.api().await, None);
    let s = wait_status(&api, "the partition failed", |s| {
        s["tasks"][0]["state"] == "FAILED"
    })
    .await;
    let trace = s["tasks"][0]["trace"].as_str().unwrap();
    assert!(
        trace.contains("source offsets 200..249 of retained/0 were removed")
            && trace.contains("auto.offset.reset=none")
            && trace
                .contains("set this partition's offset to 250 (PATCH /connectors/<name>/offsets"),
        "{trace}"
    );
    assert_eq!(
        end_offset(&p.internal.addr(), &p.internal_topic(), 0).await,
        150
    );

    // The way out the message names: stop, set the offset, resume.
    assert_eq!(
        call(&api, "PUT", "/connectors/test/stop", None).await.0,
        204
    );
    let body = serde_json::json!({"offsets": [{"partition": {"kafka_topic": "retained", "kafka_partition": 0}, "offset": {"kafka_offset": 250}}]});
    let (code, answer) = call(&api, "PATCH", "/connectors/test/offsets", Some(body)).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        call(&api, "PUT", "/connectors/test/resume", None).await.0,
        202
    );
    wait_for_end(&p.internal.addr(), &p.internal_topic(), 0, 200, WAIT).await;
    let expected: Vec<i64> = (0..100).chain(150..200).chain(250..300).collect();
    assert_eq!(
        copied_source_offsets(&p.internal.addr(), &p.internal_topic(), 0).await,
        expected
    );
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// `none` on a first start: no position, no guess.
#[tokio::test(flavor = "multi_thread")]
async fn none_without_a_position_stops_the_partition_saying_what_to_set() {
    let mut p = Pipeline::new("unplaced", 1, &[("connector.auto.offset.reset", "none")]).await;
    p.produce_each(0, 10).await;
    p.service.start();
    let api = ApiClient::new(&p.service.api().await, None);
    let s = wait_status(&api, "the partition failed", |s| {
        s["tasks"][0]["state"] == "FAILED"
    })
    .await;
    let trace = s["tasks"][0]["trace"].as_str().unwrap();
    assert!(
        trace.contains("unplaced/0 has no position") && trace.contains("auto.offset.reset=none"),
        "{trace}"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}
