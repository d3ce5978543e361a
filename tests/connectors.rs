//! Connectors managed through the API on a service whose config file declares none:
//! create (with the errors a user can make), topics added at run time, configs that
//! survive a restart, delete, and a re-created connector that starts fresh.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kafka_direct::cli::client::ApiClient;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

async fn send(
    api: &ApiClient,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let api = api.clone();
    let path = path.to_owned();
    let (status, text) =
        tokio::task::spawn_blocking(move || api.send(method, &path, body.as_ref()).unwrap())
            .await
            .unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, value)
}

/// A configured (not started) service whose file declares no connector.
fn without_connector(dir: &std::path::Path, internal: &Broker, settings: &str) -> Service {
    let service = Service::configure(
        dir,
        ServiceConfig {
            external: "unused:1",
            internal: &internal.addr(),
            topics: "unused",
            extra: &[],
        },
    );
    std::fs::write(
        &service.config,
        format!(
            "data.dir = \"{}\"\ninternal.bootstrap.servers = \"{}\"\napi.listen = \"127.0.0.1:0\"\n{settings}",
            dir.join("data").display(),
            internal.addr()
        ),
    )
    .unwrap();
    service
}

/// Stops the service cleanly and starts it again; the new run's API client.
async fn restart(service: &mut Service) -> ApiClient {
    assert!(
        service.terminate(Duration::from_secs(30)).success(),
        "{}",
        service.log_text()
    );
    service.start();
    ApiClient::new(&service.api().await, None)
}

async fn wait_running(api: &ApiClient, name: &str, partitions: usize) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, s) = send(api, "GET", &format!("/connectors/{name}/status"), None).await;
        let tasks = s["tasks"].as_array().map(Vec::len).unwrap_or(0);
        if status == 200
            && tasks == partitions
            && s["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["state"] == "RUNNING")
        {
            return s;
        }
        assert!(Instant::now() < deadline, "{name} not running: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connectors_are_created_changed_kept_and_deleted_through_the_api() {
    let external = Broker::start();
    let internal = Broker::start();
    create_topic(&external.addr(), "a", 2).await;
    create_topic(&external.addr(), "b", 1).await;
    for p in 0..2 {
        produce(
            &partition_client(&external.addr(), "a", p).await,
            test_records(p, 0, 50),
        )
        .await;
    }
    produce(
        &partition_client(&external.addr(), "b", 0).await,
        test_records(0, 0, 30),
    )
    .await;

    // A service with no connector in its file.
    let dir = tempfile::tempdir().unwrap();
    let mut service = without_connector(dir.path(), &internal, "request.timeout.ms = 3000\nfetch.max.wait.ms = 100\ntopic.metadata.refresh.interval.ms = 300\n");
    service.start();
    let api = ApiClient::new(&service.api().await, None);
    assert_eq!(
        send(&api, "GET", "/connectors", None).await,
        (200, json!([]))
    );
    assert_eq!(send(&api, "GET", "/ready", None).await.0, 200);

    let config = json!({
        "kafka.bootstrap.servers": external.addr(),
        "topic.prefix": "x",
        "topic.include.list": ["a"],
        "format": "bytes",
    });
    let (status, body) = send(
        &api,
        "POST",
        "/connectors",
        Some(json!({"name": "one", "config": config})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "one");
    assert_eq!(body["config"]["topic.include.list"], "a");

    // What a user gets wrong is answered clearly.
    let (status, body) = send(
        &api,
        "POST",
        "/connectors",
        Some(json!({"name": "one", "config": config})),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str().unwrap()),
        (409, "connector one already exists")
    );
    let mut typo = config.clone();
    typo["topic.prefx"] = json!("y");
    let post = |body: Value, status: u16, needle: &'static str| {
        let api = api.clone();
        async move {
            let (got, answer) = send(&api, "POST", "/connectors", Some(body)).await;
            assert_eq!(got, status, "{answer}");
            let message = answer["message"].as_str().unwrap();
            assert!(message.contains(needle), "{message}");
        }
    };
    post(
        json!({"name": "two", "config": typo}),
        400,
        "did you mean `topic.prefix`",
    )
    .await;
    post(
        json!({"name": "two", "config": config}),
        409,
        "internal topic x.a is already written by connector one",
    )
    .await;
    let (status, body) = send(&api, "POST", "/connectors", Some(json!({"name": "three"}))).await;
    assert_eq!(status, 400, "{body}");

    wait_running(&api, "one", 2).await;
    for p in 0..2 {
        reach_end(&internal.addr(), "x.a", p, 50, WAIT)
            .await
            .unwrap_or_else(|now| panic!("x.a/{p} at {now}"));
        let source = read_all(&external.addr(), "a", p).await;
        assert_exactly_once(&source, &read_all(&internal.addr(), "x.a", p).await, "a", p);
    }

    // A topic added at run time starts (from its earliest offset); a's tasks go on.
    let mut more = config.clone();
    more["topic.include.list.user.defined"] = json!("b");
    let (status, body) = send(&api, "PUT", "/connectors/one/config", Some(more.clone())).await;
    assert_eq!(status, 200, "{body}");
    let s = wait_running(&api, "one", 3).await;
    let a0 = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "a" && t["partition"] == 0)
        .unwrap()
        .clone();
    assert_eq!(
        a0["records_forwarded"], 50,
        "a's counters were kept: its tasks did not restart"
    );
    reach_end(&internal.addr(), "x.b", 0, 30, WAIT)
        .await
        .unwrap_or_else(|now| panic!("x.b/0 at {now}"));
    assert!(!service
        .log_text()
        .contains("config changed: restarting the connector"));

    // The connector and its config survive a restart of the service.
    let api = restart(&mut service).await;
    assert_eq!(
        send(&api, "GET", "/connectors", None).await,
        (200, json!(["one"]))
    );
    wait_running(&api, "one", 3).await;
    assert_eq!(
        send(&api, "GET", "/connectors/one/config", None).await.1
            ["topic.include.list.user.defined"],
        "b"
    );
    produce(
        &partition_client(&external.addr(), "b", 0).await,
        test_records(0, 30, 10),
    )
    .await;
    reach_end(&internal.addr(), "x.b", 0, 40, WAIT)
        .await
        .unwrap_or_else(|now| panic!("x.b/0 at {now}"));
    let source = read_all(&external.addr(), "b", 0).await;
    assert_exactly_once(&source, &read_all(&internal.addr(), "x.b", 0).await, "b", 0);

    // Deleted, then created again under the same name: it starts fresh under
    // auto.offset.reset (earliest here), so a's records are copied a second time.
    let (status, body) = send(&api, "DELETE", "/connectors/one", None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        send(&api, "GET", "/connectors", None).await,
        (200, json!([]))
    );
    assert_eq!(
        send(&api, "GET", "/connectors/one/status", None).await.0,
        404
    );
    let (status, body) = send(
        &api,
        "POST",
        "/connectors",
        Some(json!({"name": "one", "config": config})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for p in 0..2 {
        reach_end(&internal.addr(), "x.a", p, 100, WAIT)
            .await
            .unwrap_or_else(|now| panic!("x.a/{p} at {now}"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in 0..2 {
        assert_eq!(
            end_offset(&internal.addr(), "x.a", p).await,
            100,
            "one fresh copy, no more"
        );
    }
    assert!(
        service.terminate(Duration::from_secs(30)).success(),
        "{}",
        service.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connector_that_cannot_start_says_why_and_starts_once_its_config_is_fixed() {
    let external = Broker::start();
    let internal = Broker::start();
    create_topic(&external.addr(), "c", 1).await;
    produce(
        &partition_client(&external.addr(), "c", 0).await,
        test_records(0, 0, 20),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = without_connector(dir.path(), &internal, "request.timeout.ms = 2000\n");
    service.start();
    let api = ApiClient::new(&service.api().await, None);
    let wrong = json!({"kafka.bootstrap.servers": "127.0.0.1:1", "topic.prefix": "z", "topic.include.list": "c", "format": "bytes"});
    let (status, body) = send(&api, "PUT", "/connectors/late/config", Some(wrong)).await;
    assert_eq!(status, 201, "{body}");
    // A cluster that does not answer is waited for (UNASSIGNED), the status saying why.
    let deadline = Instant::now() + WAIT;
    let waiting = loop {
        let (_, s) = send(&api, "GET", "/connectors/late/status", None).await;
        let trace = s["connector"]["trace"].as_str().unwrap_or_default();
        if s["connector"]["state"] == "UNASSIGNED"
            && trace.contains("waiting for the external cluster")
        {
            break s;
        }
        assert!(Instant::now() < deadline, "{s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let trace = waiting["connector"]["trace"].as_str().unwrap();
    assert!(
        trace.contains("127.0.0.1:1") && trace.contains("connector.kafka.bootstrap.servers"),
        "{trace}"
    );

    let right = json!({"kafka.bootstrap.servers": external.addr(), "topic.prefix": "z", "topic.include.list": "c", "format": "bytes"});
    let (status, body) = send(&api, "PUT", "/connectors/late/config", Some(right)).await;
    assert_eq!(status, 200, "{body}");
    let s = wait_running(&api, "late", 1).await;
    assert!(s["connector"].get("trace").is_none(), "{s}");
    reach_end(&internal.addr(), "z.c", 0, 20, WAIT)
        .await
        .unwrap_or_else(|now| panic!("z.c/0 at {now}"));
    assert!(
        service.terminate(Duration::from_secs(30)).success(),
        "{}",
        service.log_text()
    );
}

/// A connector's durable state is its own: deleting `orders` leaves the paused state of
/// `orders-eu` (whose name starts with `orders`) as it was, across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_connector_keeps_the_state_of_one_whose_name_it_prefixes() {
    let (external, internal) = shared_brokers();
    create_topic(&external.addr(), "prefixed.orders", 1).await;
    produce(
        &partition_client(&external.addr(), "prefixed.orders", 0).await,
        test_records(0, 0, 20),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = without_connector(dir.path(), &internal, "request.timeout.ms = 3000\n");
    service.start();
    let api = ApiClient::new(&service.api().await, None);
    for (name, prefix) in [("orders", "po"), ("orders-eu", "poeu")] {
        let config = json!({
            "kafka.bootstrap.servers": external.addr(),
            "topic.prefix": prefix,
            "topic.include.list": ["prefixed.orders"],
            "format": "bytes",
        });
        let (status, body) = send(
            &api,
            "POST",
            "/connectors",
            Some(json!({"name": name, "config": config})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        wait_running(&api, name, 1).await;
    }
    let (status, body) = send(&api, "PUT", "/connectors/orders-eu/pause", None).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = send(&api, "DELETE", "/connectors/orders", None).await;
    assert_eq!(status, 204, "{body}");

    let api = restart(&mut service).await;
    assert_eq!(
        send(&api, "GET", "/connectors", None).await,
        (200, json!(["orders-eu"]))
    );
    // UNASSIGNED while it starts (its group and topic configs are read first).
    let deadline = std::time::Instant::now() + WAIT;
    let s = loop {
        let (status, s) = send(&api, "GET", "/connectors/orders-eu/status", None).await;
        assert_eq!(status, 200, "{s}");
        if s["connector"]["state"] != "UNASSIGNED" || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s["connector"]["state"], "PAUSED", "{s:#}");
    assert!(
        service.terminate(Duration::from_secs(30)).success(),
        "{}",
        service.log_text()
    );
}
