//! The HTTP API against a service replicating between two real brokers: status and
//! offsets agree with the brokers, metrics move as records flow, pause holds the
//! pipeline (and survives a restart), the token is enforced.

mod common;

use std::time::{Duration, Instant};

use common::*;
use common::{api_call as call, api_get as get, api_send as send};
use kafka_direct::cli::client::ApiClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// A started service that has copied `records` per partition of a new topic, and its API.
async fn replicating(
    topic: &'static str,
    partitions: i32,
    records: usize,
) -> (Pipeline, ApiClient) {
    let mut p = Pipeline::new(topic, partitions, &[]).await;
    p.produce_each(0, records).await;
    p.service.start();
    let api = ApiClient::new(&p.service.api().await, None);
    p.assert_replicated(0, WAIT).await;
    (p, api)
}

/// Sum of every sample of `name` in an exposition text (any labels).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

async fn metrics(api: &ApiClient) -> String {
    let (status, body) = call(api, "GET", "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// Polls `GET path` until `pred` holds on it.
async fn wait_json(
    api: &ApiClient,
    path: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        // Not found yet (a subject before its first record) counts as not there yet.
        let (status, body) = call(api, "GET", path).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if status == 200 && pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last {path}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn forwarded_next(status: &Value) -> Vec<Option<i64>> {
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["forwarded_next"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_offsets_and_metrics_agree_with_the_brokers() {
    let mut p = Pipeline::new("orders", 2, &[]).await;
    p.produce_each(0, 300).await;
    p.service.start();
    let api = ApiClient::new(&p.service.api().await, None);

    // /health answers at once; /ready once every task fetched and produced.
    assert_eq!(call(&api, "GET", "/health").await.0, 200);
    p.assert_replicated(0, WAIT).await;
    wait_json(&api, "/ready", "readiness", |v| v["status"] == "READY").await;

    assert_eq!(get(&api, "/connectors").await, serde_json::json!(["test"]));
    let status = wait_json(&api, "/connectors/test/status", "forwarded_next 300", |s| {
        forwarded_next(s) == vec![Some(300), Some(300)]
    })
    .await;
    assert_eq!(status["connector"]["state"], "RUNNING");
    for (i, task) in status["tasks"].as_array().unwrap().iter().enumerate() {
        assert_eq!(task["state"], "RUNNING", "{task}");
        assert_eq!(task["topic"], "orders");
        assert_eq!(task["partition"], i as i64);
        assert_eq!(task["high_watermark"], 300);
        assert_eq!(task["lag"], 0);
        assert_eq!(task["wal_backlog"], 0);
        assert_eq!(task["records_forwarded"], 300);
    }
    let expanded = get(&api, "/connectors?expand=status&expand=info").await;
    assert_eq!(
        expanded["test"]["status"]["tasks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(expanded["test"]["info"]["config"]["topic.prefix"], "int");
    assert_eq!(
        get(&api, "/connectors/test/topics").await["test"]["topics"],
        serde_json::json!(["orders"])
    );

    // Offsets (KIP-875 shape) are the checkpoints, which match the internal topic.
    let offsets = get(&api, "/connectors/test/offsets").await;
    let mut listed: Vec<(i64, i64)> = offsets["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["partition"]["kafka_topic"], "orders");
            (
                o["partition"]["kafka_partition"].as_i64().unwrap(),
                o["offset"]["kafka_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, vec![(0, 300), (1, 300)]);

    // The CLI prints the same, through the API.
    let base = p.service.api().await;
    let (ok, text) = cli(&["status", "--api", &base]);
    assert!(ok, "{text}");
    assert!(text.starts_with("connector test: RUNNING"), "{text}");
    for partition in ["orders/0", "orders/1"] {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(partition))
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1..5], ["RUNNING", "300", "300", "300"], "{row}");
    }
    let (ok, text) = cli(&["offsets", "get", "test", "--api", &base]);
    assert!(ok, "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["orders/1", "300"]),
        "{text}"
    );
    let (ok, text) = cli(&["status", "--api", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(
        text.contains("cannot reach the kafka-direct API at http://127.0.0.1:1"),
        "{text}"
    );

    // Metrics move as records flow.
    let before = metrics(&api).await;
    assert_eq!(
        metric_sum(&before, "kafka_direct_records_forwarded_total"),
        600.0
    );
    assert_eq!(
        metric_sum(&before, "kafka_direct_records_fetched_total"),
        600.0
    );
    assert_eq!(
        metric_sum(&before, "kafka_direct_partition_lag_records"),
        0.0
    );
    assert!(
        metric_sum(&before, "kafka_direct_end_to_end_seconds_count") >= 600.0,
        "{before}"
    );
    assert!(metric_sum(&before, "kafka_direct_wal_sync_seconds_count") > 0.0);
    assert_eq!(
        metric_sum(&before, "kafka_direct_task_state{connector=\"test\",topic=\"orders\",partition=\"0\",state=\"RUNNING\"}"),
        1.0
    );
    p.produce_each(300, 200).await;
    p.assert_replicated(0, WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let after = metrics(&api).await;
        let forwarded = metric_sum(&after, "kafka_direct_records_forwarded_total");
        if forwarded == 1000.0 {
            assert!(
                metric_sum(&after, "kafka_direct_bytes_forwarded_total")
                    > metric_sum(&before, "kafka_direct_bytes_forwarded_total")
            );
            assert!(
                metric_sum(&after, "kafka_direct_produce_seconds_count")
                    > metric_sum(&before, "kafka_direct_produce_seconds_count")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records_forwarded_total stuck at {forwarded}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Errors are JSON naming what is wrong.
    let (status, body) = call(&api, "GET", "/connectors/nope/status").await;
    assert_eq!(status, 404);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error_code"], 404);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("connector nope not found"),
        "{body}"
    );
    let (status, body) = call(&api, "DELETE", "/connectors/test").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("declared in the service's config file"),
        "{body}"
    );

    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_the_pipeline_across_a_restart_and_resume_copies_the_rest_once() {
    let (mut p, api) = replicating("paused", 2, 200).await;

    let (ok, text) = cli(&[
        "connectors",
        "pause",
        "test",
        "--api",
        &p.service.api().await,
    ]);
    assert!(ok, "{text}");
    wait_json(&api, "/connectors/test/status", "every task paused", |s| {
        s["connector"]["state"] == "PAUSED"
            && s["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["state"] == "PAUSED")
    })
    .await;
    p.produce_each(200, 150).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for partition in 0..2 {
        assert_eq!(
            end_offset(&p.internal.addr(), "int.paused", partition).await,
            200
        );
    }
    let status = get(&api, "/connectors/test/status").await;
    assert_eq!(forwarded_next(&status), vec![Some(200), Some(200)]);

    // The pause is durable: a restarted service comes back paused.
    assert!(p.service.terminate(Duration::from_secs(30)).success());
    p.service.start();
    let api = ApiClient::new(&p.service.api().await, None);
    wait_json(
        &api,
        "/connectors/test/status",
        "paused after the restart",
        |s| {
            s["connector"]["state"] == "PAUSED"
                && s["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|t| t["state"] == "PAUSED")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for partition in 0..2 {
        assert_eq!(
            end_offset(&p.internal.addr(), "int.paused", partition).await,
            200
        );
    }

    let (status, _) = call(&api, "PUT", "/connectors/test/resume").await;
    assert_eq!(status, 202);
    p.assert_replicated(0, WAIT).await;
    let status = wait_json(&api, "/connectors/test/status", "running again", |s| {
        s["connector"]["state"] == "RUNNING" && forwarded_next(s) == vec![Some(350), Some(350)]
    })
    .await;
    assert!(status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["state"] == "RUNNING"));
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_required_on_every_endpoint_when_set_and_never_logged() {
    let token = "s3cret-token-value";
    let mut p = Pipeline::new("guarded", 1, &[("api.token", token)]).await;
    p.produce_each(0, 10).await;
    p.service.start();
    let base = p.service.api().await;
    p.assert_replicated(0, WAIT).await;

    let anonymous = ApiClient::new(&base, None);
    let wrong = ApiClient::new(&base, Some("s3cret-token-valuX".into()));
    let right = ApiClient::new(&base, Some(token.into()));
    for path in [
        "/",
        "/health",
        "/metrics",
        "/connectors",
        "/connectors/test/config",
    ] {
        for client in [&anonymous, &wrong] {
            let (status, body) = call(client, "GET", path).await;
            assert_eq!(status, 401, "GET {path}: {body}");
            assert!(body.contains("Bearer"), "{body}");
        }
        assert_eq!(
            call(&right, "GET", path).await.0,
            200,
            "GET {path} with the token"
        );
    }
    assert_eq!(
        call(&anonymous, "PUT", "/connectors/test/pause").await.0,
        401
    );
    assert_eq!(
        get(&right, "/connectors/test/status").await["connector"]["state"],
        "RUNNING",
        "a refused pause changes nothing"
    );

    // The token appears nowhere: not in the log, not in `validate`'s printout.
    assert!(p.service.terminate(Duration::from_secs(30)).success());
    assert!(!p.service.log_text().contains(token));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["validate", "--config"])
        .arg(&p.service.config)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        printed.contains("[hidden]") && !printed.contains(token),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subjects_serve_the_schema_registry() {
    let mut p = Pipeline::new(
        "typed",
        1,
        &[
            ("connector.format", "json"),
            ("connector.schemas.enable", "true"),
        ],
    )
    .await;
    kcat_produce(
        &p.external.addr(),
        "typed",
        0,
        &[],
        "{\"id\":1,\"name\":\"a\"}\n{\"id\":2,\"name\":\"b\",\"qty\":3}\n",
    );
    p.service.start();
    let api = ApiClient::new(&p.service.api().await, None);
    wait_json(
        &api,
        "/subjects/int.typed/versions",
        "two schema versions",
        |v| *v == serde_json::json!([1, 2]),
    )
    .await;
    assert_eq!(
        get(&api, "/subjects").await,
        serde_json::json!(["int.typed"])
    );
    let latest = get(&api, "/subjects/int.typed/versions/latest").await;
    assert_eq!(latest["version"], 2);
    let fields: Vec<&str> = latest["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["id", "name", "qty"]);
    let (status, body) = call(&api, "GET", "/subjects/int.typed/versions/7").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = call(&api, "GET", "/subjects/int.other/versions").await;
    assert_eq!(status, 404);
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_change_only_while_stopped_and_a_rewind_copies_again_exactly_from_there() {
    let (mut p, api) = replicating("rewind", 1, 100).await;
    let to = |offset: Value| serde_json::json!({"offsets": [{"partition": {"kafka_topic": "rewind", "kafka_partition": 0}, "offset": offset}]});

    // Refused while running, with the reason.
    let (status, body) = send(
        &api,
        "PATCH",
        "/connectors/test/offsets",
        to(serde_json::json!({"kafka_offset": 40})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("only while it is STOPPED"), "{body}");
    assert_eq!(
        call(&api, "DELETE", "/connectors/test/offsets").await.0,
        400
    );

    let (status, body) = call(&api, "PUT", "/connectors/test/stop").await;
    assert_eq!(status, 204, "{body}");
    let status = get(&api, "/connectors/test/status").await;
    assert_eq!(status["connector"]["state"], "STOPPED");
    assert!(
        status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "STOPPED"),
        "{status}"
    );
    // A bad body names what is wrong; an unknown topic is refused.
    let (status, body) = send(
        &api,
        "PATCH",
        "/connectors/test/offsets",
        serde_json::json!({"offsets": [{"partition": {"kafka_topic": "rewind"}}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body.contains("offsets[0].partition.kafka_partition"),
        "{body}"
    );
    let (status, body) = send(&api, "PATCH", "/connectors/test/offsets", serde_json::json!({"offsets": [{"partition": {"kafka_topic": "other", "kafka_partition": 0}, "offset": {"kafka_offset": 1}}]})).await;
    assert_eq!(status, 400);
    assert!(body.contains("topic other is not in"), "{body}");

    let (status, body) = send(
        &api,
        "PATCH",
        "/connectors/test/offsets",
        to(serde_json::json!({"kafka_offset": 40})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let offsets = get(&api, "/connectors/test/offsets").await;
    assert_eq!(
        offsets["offsets"][0]["offset"]["kafka_offset"], 40,
        "{offsets}"
    );

    // Resumed, it copies 40..99 again on purpose, then new records once.
    assert_eq!(call(&api, "PUT", "/connectors/test/resume").await.0, 202);
    wait_for_end(&p.internal.addr(), "int.rewind", 0, 160, WAIT).await;
    p.produce_each(100, 10).await;
    wait_for_end(&p.internal.addr(), "int.rewind", 0, 170, WAIT).await;
    let expected: Vec<i64> = (0..100).chain(40..110).collect();
    assert_eq!(
        copied_source_offsets(&p.internal.addr(), "int.rewind", 0).await,
        expected
    );

    // A restart (after a crash, so with the settled tail check) copies nothing twice:
    // the barrier only hides what predates the change.
    p.service.kill9();
    p.service.start();
    let api = ApiClient::new(&p.service.api().await, None);
    p.produce_each(110, 5).await;
    wait_for_end(&p.internal.addr(), "int.rewind", 0, 175, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected: Vec<i64> = (0..100).chain(40..115).collect();
    assert_eq!(
        copied_source_offsets(&p.internal.addr(), "int.rewind", 0).await,
        expected
    );

    // DELETE goes back to auto.offset.reset (earliest here): everything again.
    assert_eq!(call(&api, "PUT", "/connectors/test/stop").await.0, 204);
    let (status, body) = call(&api, "DELETE", "/connectors/test/offsets").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        get(&api, "/connectors/test/offsets").await["offsets"],
        serde_json::json!([])
    );
    assert_eq!(call(&api, "PUT", "/connectors/test/resume").await.0, 202);
    wait_for_end(&p.internal.addr(), "int.rewind", 0, 290, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected: Vec<i64> = (0..100).chain(40..115).chain(0..115).collect();
    assert_eq!(
        copied_source_offsets(&p.internal.addr(), "int.rewind", 0).await,
        expected
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_connector_stays_stopped_across_a_restart_and_restart_resumes_tasks() {
    let (mut p, api) = replicating("halted", 2, 50).await;
    assert_eq!(call(&api, "POST", "/connectors/test/restart").await.0, 204);
    wait_json(
        &api,
        "/connectors/test/status",
        "running after restart",
        |s| {
            s["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["state"] == "RUNNING")
        },
    )
    .await;
    assert_eq!(call(&api, "PUT", "/connectors/test/stop").await.0, 204);
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    p.produce_each(50, 30).await;
    p.service.start();
    let api = ApiClient::new(&p.service.api().await, None);
    let status = get(&api, "/connectors/test/status").await;
    assert_eq!(status["connector"]["state"], "STOPPED", "{status}");
    assert_eq!(status["tasks"], serde_json::json!([]));
    assert_eq!(
        call(&api, "GET", "/ready").await.0,
        200,
        "a stopped connector has nothing to do"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(end_offset(&p.internal.addr(), "int.halted", 0).await, 50);
    assert_eq!(call(&api, "PUT", "/connectors/test/resume").await.0, 202);
    p.assert_replicated(0, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}
