//! kafka-direct's REST API against a real Kafka Connect worker's (Apache Kafka 4.1.2,
//! distributed mode, scripts/connect-worker), endpoint by endpoint.
//!
//! Both get the same requests, in the same order, for a connector of the same name:
//! on the worker, Kafka's own MirrorSourceConnector (MirrorMaker 2's), on kafka-direct
//! one of its connectors, each with its own config keys. Each answer is reduced to what
//! a client depends on: the status code and the JSON's shape (field names and value
//! types, recursively; the keys of config maps and of KIP-875's connector-defined
//! partition and offset objects left out, as they belong to the connector). Every
//! difference is named, as `METHOD PATH: what`, and must be listed as intended in
//! docs/api.md's "Kafka Connect conformance" table; a listed difference that no longer
//! occurs fails too, so the table stays true.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::connect::ConnectWorker;
use common::*;
use kafka_direct::cli::client::ApiClient;
use serde_json::{json, Value};

const NAME: &str = "orders-mirror";

/// The shape of a JSON value: what a client's parser sees.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Null,
    Bool,
    Number,
    String,
    /// The union of its elements' shapes; `None` when empty (fits any).
    Array(Option<Box<Shape>>),
    Object(BTreeMap<String, Shape>),
    /// An object whose keys are data (a config, a connector's own offsets): only that
    /// it is an object counts.
    Map,
}

impl Shape {
    fn name(&self) -> &'static str {
        match self {
            Shape::Null => "null",
            Shape::Bool => "boolean",
            Shape::Number => "number",
            Shape::String => "string",
            Shape::Array(_) => "array",
            Shape::Object(_) | Shape::Map => "object",
        }
    }
}

/// Whether the object at `path` is a map of data rather than fields.
fn is_map(path: &str) -> bool {
    path.ends_with(".config")
        || path == "$config"
        || path.ends_with(".offsets[].partition")
        || path.ends_with(".offsets[].offset")
}

fn shape(value: &Value, path: &str) -> Shape {
    match value {
        Value::Null => Shape::Null,
        Value::Bool(_) => Shape::Bool,
        Value::Number(_) => Shape::Number,
        Value::String(_) => Shape::String,
        Value::Array(items) => {
            let element = format!("{path}[]");
            let mut union: Option<Shape> = None;
            for item in items {
                let s = shape(item, &element);
                union = Some(match union {
                    None => s,
                    Some(u) => merge(u, s),
                });
            }
            Shape::Array(union.map(Box::new))
        }
        Value::Object(_) if is_map(path) => Shape::Map,
        Value::Object(fields) => Shape::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    // A map keyed by connector name (`?expand=`): one entry, the name
                    // being ours, so its key is written `*`.
                    let key = if k == NAME { "*".to_owned() } else { k.clone() };
                    let s = shape(v, &format!("{path}.{key}"));
                    (key, s)
                })
                .collect(),
        ),
    }
}

/// Two elements of one array: their fields together (a field some elements lack is
/// optional, and still a field).
fn merge(a: Shape, b: Shape) -> Shape {
    match (a, b) {
        (Shape::Object(mut x), Shape::Object(y)) => {
            for (k, v) in y {
                let merged = match x.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                x.insert(k, merged);
            }
            Shape::Object(x)
        }
        (a, _) => a,
    }
}

/// The differences between Connect's shape and ours at `path`.
fn compare(connect: &Shape, ours: &Shape, path: &str, out: &mut Vec<String>) {
    let here = if path.is_empty() { "." } else { path };
    match (connect, ours) {
        (Shape::Object(c), Shape::Object(o)) => {
            for (k, cv) in c {
                let p = format!("{path}.{k}");
                match o.get(k) {
                    Some(ov) => compare(cv, ov, &p, out),
                    None => out.push(format!("{p}: only Kafka Connect")),
                }
            }
            for k in o.keys().filter(|k| !c.contains_key(*k)) {
                out.push(format!("{path}.{k}: only kafka-direct"));
            }
        }
        (Shape::Array(c), Shape::Array(o)) => {
            if let (Some(c), Some(o)) = (c, o) {
                compare(c, o, &format!("{path}[]"), out);
            }
        }
        (c, o) if c.name() == o.name() => {}
        (c, o) => out.push(format!(
            "{here}: {} (Kafka Connect), {} (kafka-direct)",
            c.name(),
            o.name()
        )),
    }
}

/// One request sent to both, with each side's own body.
struct Step {
    method: &'static str,
    path: String,
    connect_body: Option<Value>,
    ours_body: Option<Value>,
}

fn step(method: &'static str, path: &str) -> Step {
    Step {
        method,
        path: path.replace("{name}", NAME),
        connect_body: None,
        ours_body: None,
    }
}

fn with_bodies(mut s: Step, connect: Value, ours: Value) -> Step {
    s.connect_body = Some(connect);
    s.ours_body = Some(ours);
    s
}

async fn send(api: &ApiClient, step: &Step, body: Option<&Value>) -> (u16, Value) {
    let (api, method, path, body) = (api.clone(), step.method, step.path.clone(), body.cloned());
    let (status, text) =
        tokio::task::spawn_blocking(move || api.send(method, &path, body.as_ref()).unwrap())
            .await
            .unwrap();
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text))
    };
    (status, value)
}

/// Both APIs, and what was found so far.
struct Both {
    connect: ApiClient,
    ours: ApiClient,
    /// `METHOD PATH: what` of every difference.
    differences: Vec<String>,
    /// Each step's answers, for the test's output.
    seen: Vec<String>,
}

impl Both {
    /// Sends `s` to both, records the answers, and names what differs.
    async fn run(&mut self, s: Step) {
        let (cc, cv) = send(&self.connect, &s, s.connect_body.as_ref()).await;
        let (oc, ov) = send(&self.ours, &s, s.ours_body.as_ref()).await;
        let title = format!("{} {}", s.method, s.path.replace(NAME, "{name}"));
        self.seen.push(format!("{title}: {cc} {cv}\n    {oc} {ov}"));
        if cc != oc {
            self.differences.push(format!(
                "{title}: status {cc} (Kafka Connect), {oc} (kafka-direct)"
            ));
        }
        let root = if title.ends_with("/config") && s.method == "GET" {
            "$config"
        } else {
            ""
        };
        let mut found = Vec::new();
        compare(&shape(&cv, root), &shape(&ov, root), "", &mut found);
        self.differences
            .extend(found.into_iter().map(|d| canonical(&title, &d)));
    }
}

/// `title: difference`, except for a task status object, which five endpoints answer
/// (`/status`, `?expand=status`, `/tasks/{id}/status`, a restart's): its differences
/// are named once, as `task status: .field: …`.
fn canonical(title: &str, difference: &str) -> String {
    if title.ends_with("/tasks/0/status") && difference.starts_with('.') {
        return format!("task status: {difference}");
    }
    let within = difference
        .strip_prefix(".*.status")
        .unwrap_or(difference)
        .strip_prefix(".tasks[]");
    match within {
        Some(rest) if rest.starts_with('.') => format!("task status: {rest}"),
        _ => format!("{title}: {difference}"),
    }
}

/// Waits until `GET /connectors/{name}/status` on `api` says `state` for the connector.
async fn wait_state(api: &ApiClient, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let get = step("GET", "/connectors/{name}/status");
    loop {
        let (code, status) = send(api, &get, None).await;
        if code == 200 && status["connector"]["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not {state} within 60 s: {status}",
            get.path
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The intended differences: the first column of docs/api.md's conformance table, each
/// backquoted difference in it.
fn intended() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/api.md")).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Kafka Connect conformance"))
        .expect("docs/api.md has a \"Kafka Connect conformance\" section");
    let mut listed = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first = row.trim_start_matches('|').split(" | ").next().unwrap();
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                listed.insert(part.to_owned());
            }
        }
    }
    listed
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_as_a_kafka_connect_worker_does_but_for_the_differences_docs_api_md_lists()
{
    let broker = Broker::start();
    create_topic(&broker.addr(), "orders", 2).await;
    let worker = ConnectWorker::start(&broker.addr());
    let connect = ApiClient::new(&worker.url(), None);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &broker.addr(),
            internal: &broker.addr(),
            topics: "unused",
            extra: &[],
        },
    );
    std::fs::write(
        &service.config,
        format!(
            "data.dir = \"{}\"\ninternal.bootstrap.servers = \"{}\"\napi.listen = \"127.0.0.1:0\"\n",
            dir.path().join("data").display(),
            broker.addr()
        ),
    )
    .unwrap();
    service.start();
    let ours = ApiClient::new(&service.api().await, None);

    let b = broker.addr();
    let mirror = |topics: &str| {
        json!({
            "connector.class": "org.apache.kafka.connect.mirror.MirrorSourceConnector",
            "source.cluster.alias": "ext",
            "target.cluster.alias": "int",
            "source.cluster.bootstrap.servers": b,
            "target.cluster.bootstrap.servers": b,
            "topics": topics,
            "tasks.max": "1",
            "replication.factor": "1",
            "offset-syncs.topic.replication.factor": "1",
            "sync.topic.acls.enabled": "false",
        })
    };
    let direct = |topics: &str| {
        json!({
            "kafka.bootstrap.servers": b,
            "topic.prefix": "int",
            "topic.include.list": topics,
        })
    };
    let create = || {
        with_bodies(
            step("POST", "/connectors"),
            json!({"name": NAME, "config": mirror("orders")}),
            json!({"name": NAME, "config": direct("orders")}),
        )
    };
    let mut both = Both {
        connect: connect.clone(),
        ours: ours.clone(),
        differences: Vec::new(),
        seen: Vec::new(),
    };
    both.run(step("GET", "/")).await;
    both.run(create()).await;
    wait_state(&connect, "RUNNING").await;
    wait_state(&ours, "RUNNING").await;
    // Connect's tasks start a moment after the connector.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for path in [
        "/connectors",
        "/connectors?expand=status",
        "/connectors?expand=info",
        "/connectors?expand=status&expand=info",
        "/connectors/{name}",
        "/connectors/{name}/config",
        "/connectors/{name}/status",
        "/connectors/{name}/tasks",
        "/connectors/{name}/tasks/0/status",
        "/connectors/{name}/topics",
        "/connectors/{name}/offsets",
    ] {
        both.run(step("GET", path)).await;
    }
    both.run(create()).await;
    both.run(with_bodies(
        step("PUT", "/connectors/{name}/config"),
        mirror("orders"),
        direct("orders"),
    ))
    .await;
    wait_state(&connect, "RUNNING").await;
    wait_state(&ours, "RUNNING").await;
    both.run(step("PUT", "/connectors/{name}/pause")).await;
    wait_state(&connect, "PAUSED").await;
    wait_state(&ours, "PAUSED").await;
    both.run(step("GET", "/connectors/{name}/status")).await;
    both.run(step("PUT", "/connectors/{name}/resume")).await;
    wait_state(&connect, "RUNNING").await;
    wait_state(&ours, "RUNNING").await;
    both.run(step("POST", "/connectors/{name}/restart")).await;
    both.run(step(
        "POST",
        "/connectors/{name}/restart?includeTasks=true&onlyFailed=false",
    ))
    .await;
    wait_state(&connect, "RUNNING").await;
    wait_state(&ours, "RUNNING").await;
    // Offsets change only while stopped.
    both.run(with_bodies(
        step("PATCH", "/connectors/{name}/offsets"),
        json!({"offsets": [{"partition": {"cluster": "ext", "topic": "orders", "partition": 0}, "offset": {"offset": 0}}]}),
        json!({"offsets": [{"partition": {"kafka_topic": "orders", "kafka_partition": 0}, "offset": {"kafka_offset": 0}}]}),
    )).await;
    both.run(step("PUT", "/connectors/{name}/stop")).await;
    wait_state(&connect, "STOPPED").await;
    wait_state(&ours, "STOPPED").await;
    both.run(step("GET", "/connectors/{name}/status")).await;
    both.run(step("GET", "/connectors/{name}/offsets")).await;
    both.run(with_bodies(
        step("PATCH", "/connectors/{name}/offsets"),
        json!({"offsets": [{"partition": {"cluster": "ext", "topic": "orders", "partition": 0}, "offset": {"offset": 0}}]}),
        json!({"offsets": [{"partition": {"kafka_topic": "orders", "kafka_partition": 0}, "offset": {"kafka_offset": 0}}]}),
    )).await;
    both.run(step("DELETE", "/connectors/{name}/offsets")).await;
    both.run(step("PUT", "/connectors/{name}/resume")).await;
    wait_state(&connect, "RUNNING").await;
    wait_state(&ours, "RUNNING").await;
    // Errors.
    for (method, path) in [
        ("GET", "/connectors/nope"),
        ("GET", "/connectors/nope/status"),
        ("PUT", "/connectors/nope/pause"),
        ("DELETE", "/connectors/nope"),
        ("GET", "/connectors/{name}/tasks/7/status"),
    ] {
        both.run(step(method, path)).await;
    }
    both.run(with_bodies(
        step("POST", "/connectors"),
        json!({"config": mirror("orders")}),
        json!({"config": direct("orders")}),
    ))
    .await;
    both.run(step("DELETE", "/connectors/{name}")).await;
    both.run(step("GET", "/connectors")).await;

    let Both {
        differences, seen, ..
    } = both;
    eprintln!("answers (Kafka Connect, then kafka-direct):");
    for line in &seen {
        eprintln!("  {line}");
    }
    let found: BTreeSet<String> = differences.into_iter().collect();
    let listed = intended();
    let unlisted: Vec<&String> = found.difference(&listed).collect();
    let stale: Vec<&String> = listed.difference(&found).collect();
    eprintln!("differences found ({}):", found.len());
    for d in &found {
        eprintln!("  {d}");
    }
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "differences not listed in docs/api.md's conformance table:\n  {}\nlisted there but not found:\n  {}\n(worker log: {} bytes)",
        unlisted.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        stale.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        worker.log_text().len()
    );
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// Runs kc (kafka-connect-py's CLI, scripts/install-kafka-connect-py) against `url`:
/// its output, after checking it succeeded.
fn kc(url: &str, args: &[&str]) -> String {
    static KC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let kc = KC.get_or_init(|| {
        let out = std::process::Command::new(repo_root().join("scripts/install-kafka-connect-py"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/install-kafka-connect-py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    });
    let out = std::process::Command::new(kc)
        .args(["--url", url])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kc {args:?}: {text}");
    text
}

/// A Kafka Connect client nobody here wrote, kafka-connect-py's `kc`, creates, lists,
/// pauses, resumes, restarts and deletes a kafka-direct connector, unchanged; the
/// connector it created copies records.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_connect_py_drives_the_api_unchanged() {
    let broker = Broker::start();
    create_topic(&broker.addr(), "orders", 2).await;
    for p in 0..2 {
        produce_bounded(&broker.addr(), "orders", p, test_records(p, 0, 50)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &broker.addr(),
            internal: &broker.addr(),
            topics: "unused",
            extra: &[],
        },
    );
    std::fs::write(
        &service.config,
        format!(
            "data.dir = \"{}\"\ninternal.bootstrap.servers = \"{}\"\napi.listen = \"127.0.0.1:0\"\n",
            dir.path().join("data").display(),
            broker.addr()
        ),
    )
    .unwrap();
    service.start();
    let url = service.api().await;
    let ours = ApiClient::new(&url, None);
    let config = json!({
        "name": NAME,
        "config": {
            "kafka.bootstrap.servers": broker.addr(),
            "topic.prefix": "int",
            "topic.include.list": "orders",
            "format": "bytes",
        }
    })
    .to_string();
    let url2 = url.clone();
    let run = move |args: Vec<String>| {
        let url = url2.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                kc(&url, &args)
            })
            .await
            .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let created = run(args(&["create", "--config-data", &config])).await;
    assert!(created.contains(NAME), "{created}");
    wait_state(&ours, "RUNNING").await;
    for p in 0..2 {
        wait_for_end(&broker.addr(), "int.orders", p, 50, Duration::from_secs(60)).await;
    }
    let listed = run(args(&["list", "--expand", "status"])).await;
    assert!(
        listed.contains(NAME) && listed.contains("RUNNING"),
        "{listed}"
    );
    let status = run(args(&["status", NAME])).await;
    assert!(status.contains("RUNNING"), "{status}");
    run(args(&["pause", NAME])).await;
    wait_state(&ours, "PAUSED").await;
    run(args(&["resume", NAME])).await;
    wait_state(&ours, "RUNNING").await;
    run(args(&["restart", NAME, "--include-tasks"])).await;
    wait_state(&ours, "RUNNING").await;
    let tasks = run(args(&["list-tasks", NAME])).await;
    assert!(tasks.contains("orders-1"), "{tasks}");
    run(args(&["delete", NAME])).await;
    let (code, left) =
        tokio::task::spawn_blocking(move || ours.call("GET", "/connectors").unwrap())
            .await
            .unwrap();
    assert_eq!((code, left.as_str()), (200, "[]"));
    assert!(service.terminate(Duration::from_secs(30)).success());
}
