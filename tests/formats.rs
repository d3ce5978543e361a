//! Formats, schemas and the dead-letter topic, against real brokers: each bad input
//! reaches the dead-letter topic with the right headers while the good records around
//! it are forwarded in order, and a kill -9 in a mixed stream leaves every record in
//! exactly one of the two places.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::OffsetAt;
use rskafka::record::{Record, RecordAndOffset};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
/// The dead-letter topic of a pipeline: each test names its own (`DLQ_KEY`), as the
/// tests of this binary share the internal broker.
fn dlq(p: &Pipeline) -> String {
    format!("int.{}.dlq", p.topic)
}

/// A big value that still fits, with the source headers and a dead letter's error
/// headers, within a record batch of Kafka's default max.message.bytes (1 MiB + 12).
const BIG: usize = 960 << 10;

const DLQ_KEY: &str = "connector.errors.deadletterqueue.topic.name";

fn record(key: Option<&[u8]>, value: Option<Vec<u8>>, i: i64) -> Record {
    let mut headers = BTreeMap::new();
    headers.insert("trace".to_owned(), format!("t-{i}").into_bytes());
    Record {
        key: key.map(<[u8]>::to_vec),
        value,
        headers,
        timestamp: Utc.timestamp_millis_opt(1_700_000_000_000 + i).unwrap(),
    }
}

fn records(values: Vec<Option<Vec<u8>>>) -> Vec<Record> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| record(Some(b"k"), v, i as i64))
        .collect()
}

fn text(r: &RecordAndOffset, header: &str) -> String {
    let raw = r.record.headers.get(header).unwrap_or_else(|| {
        panic!("no {header} header on offset {}", r.offset);
    });
    String::from_utf8(raw.clone()).unwrap()
}

fn source_offset(r: &RecordAndOffset) -> i64 {
    text(r, SOURCE_OFFSET_HEADER).parse().unwrap()
}

/// Waits until the internal topic and the dead-letter topic together hold as many
/// records as the source topic.
async fn wait_all_placed(p: &Pipeline) {
    // The service creates the dead-letter topic before it starts replicating; asking the
    // broker about it earlier would create it with the broker's default partitions.
    p.service
        .wait_log("replication to start", WAIT, |log| {
            log.contains("replicating")
        })
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let mut source = 0;
        let mut dead = 0;
        for partition in 0..dlq_partitions(p).await {
            dead += end_offset(&p.internal.addr(), &dlq(p), partition).await;
        }
        let mut placed = dead;
        for partition in 0..p.partitions {
            source += end_offset(&p.external.addr(), p.topic, partition).await;
            placed += end_offset(&p.internal.addr(), &p.internal_topic(), partition).await;
        }
        if placed >= source {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{placed} of {source} records placed ({dead} dead letters) within {WAIT:?}; log:\n{}",
            p.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn dlq_partitions(p: &Pipeline) -> i32 {
    let topics = client(&p.internal.addr())
        .await
        .list_topics()
        .await
        .unwrap();
    let dlq = topics
        .iter()
        .find(|t| t.name == dlq(p))
        .expect("the dead-letter topic exists");
    dlq.partitions.len() as i32
}

/// Every dead letter, from every partition of the dead-letter topic.
async fn dead_letters(p: &Pipeline) -> Vec<RecordAndOffset> {
    let mut all = Vec::new();
    for partition in 0..dlq_partitions(p).await {
        all.extend(read_all(&p.internal.addr(), &dlq(p), partition).await);
    }
    all
}

/// Checks that each source record of `partition` is stored exactly once, in order,
/// intact: in the internal partition if `good` says so, else in the dead-letter topic
/// with Connect's error headers. Returns the dead letters of the partition.
async fn assert_placed(
    p: &Pipeline,
    partition: i32,
    good: impl Fn(&RecordAndOffset) -> bool,
) -> Vec<RecordAndOffset> {
    assert_placed_as(p, partition, good, true).await
}

/// As [`assert_placed`]; with `intact` false the internal records' values are not
/// compared (they are wrapped in the schema envelope), only their source offsets.
async fn assert_placed_as(
    p: &Pipeline,
    partition: i32,
    good: impl Fn(&RecordAndOffset) -> bool,
    intact: bool,
) -> Vec<RecordAndOffset> {
    let source = read_all(&p.external.addr(), p.topic, partition).await;
    let internal = read_all(&p.internal.addr(), &p.internal_topic(), partition).await;
    let dead: Vec<RecordAndOffset> = dead_letters(p)
        .await
        .into_iter()
        .filter(|r| {
            text(r, SOURCE_TOPIC_HEADER) == p.topic
                && text(r, SOURCE_PARTITION_HEADER) == partition.to_string()
        })
        .collect();
    let (want_good, want_dead): (Vec<RecordAndOffset>, Vec<RecordAndOffset>) =
        source.into_iter().partition(|r| good(r));
    if intact {
        assert_exactly_once(&want_good, &internal, p.topic, partition);
    } else {
        let stored: Vec<i64> = internal.iter().map(source_offset).collect();
        let want: Vec<i64> = want_good.iter().map(|r| r.offset).collect();
        assert_eq!(
            stored, want,
            "{}/{partition}: internal records by source offset",
            p.topic
        );
    }
    let offsets: Vec<i64> = dead.iter().map(source_offset).collect();
    let want: Vec<i64> = want_dead.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets, want,
        "{}/{partition}: dead letters by source offset",
        p.topic
    );
    for (d, s) in dead.iter().zip(&want_dead) {
        assert_eq!(
            (&d.record.key, &d.record.value),
            (&s.record.key, &s.record.value)
        );
        assert_eq!(d.record.timestamp, s.record.timestamp);
        for (k, v) in &s.record.headers {
            assert_eq!(d.record.headers.get(k), Some(v), "user header {k} kept");
        }
        assert_eq!(text(d, "__connect.errors.topic"), p.topic);
        assert_eq!(text(d, "__connect.errors.partition"), partition.to_string());
        assert_eq!(text(d, "__connect.errors.offset"), s.offset.to_string());
        assert_eq!(text(d, "__connect.errors.connector.name"), "test");
    }
    dead
}

fn error_of(r: &RecordAndOffset) -> (String, String) {
    (
        text(r, "__connect.errors.exception.class.name"),
        text(r, "__connect.errors.exception.message"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn string_format_dead_letters_invalid_utf8_and_forwards_the_rest() {
    let mut p = Pipeline::new(
        "texts",
        1,
        &[("connector.format", "string"), (DLQ_KEY, "int.texts.dlq")],
    )
    .await;
    let big = vec![b'a'; BIG];
    let values = vec![
        Some(b"hello".to_vec()),
        Some(b"\xff\xfe binary".to_vec()),
        Some(Vec::new()),
        None,
        Some(big),
        Some("héllo wörld".as_bytes().to_vec()),
        Some(b"cut \xc3".to_vec()),
    ];
    let pc = partition_client(&p.external.addr(), p.topic, 0).await;
    produce(&pc, records(values)).await;
    p.service.start();
    wait_all_placed(&p).await;
    let utf8 = |r: &RecordAndOffset| {
        r.record
            .value
            .as_deref()
            .is_none_or(|v| std::str::from_utf8(v).is_ok())
    };
    let dead = assert_placed(&p, 0, utf8).await;
    let errors: Vec<(String, String)> = dead.iter().map(error_of).collect();
    assert_eq!(
        errors,
        vec![
            (
                "InvalidUtf8".into(),
                "value is not valid UTF-8: invalid byte 0xff at position 0 of 9".into()
            ),
            (
                "InvalidUtf8".into(),
                "value is not valid UTF-8: invalid byte 0xc3 at position 4 of 5".into()
            ),
        ]
    );
    // An independent client sees the same headers.
    let seen = kcat_read(&p.internal.addr(), &dlq(&p), 0, "%o %h");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].contains("__connect.errors.exception.class.name=InvalidUtf8"),
        "{seen:?}"
    );
    assert!(p.service.progress_field("dead_lettered") == Some(2));
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_format_dead_letters_what_is_not_one_json_document() {
    let mut p = Pipeline::new(
        "jsons",
        1,
        &[("connector.format", "json"), (DLQ_KEY, "int.jsons.dlq")],
    )
    .await;
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let big_good = format!("{{\"blob\": \"{}\"}}", "x".repeat(BIG));
    let big_bad = format!("{{\"blob\": \"{}", "x".repeat(BIG));
    let values: Vec<Option<Vec<u8>>> = [
        Some(r#"{ "a" : 1 }"#),
        Some(r#"{"a": "#),
        Some(r#"{"a": 1} trailing"#),
        Some(r#"{"a": NaN}"#),
        Some(deep.as_str()),
        Some(""),
        None,
        Some("[1, 2]"),
        Some("42"),
        Some(big_good.as_str()),
        Some(big_bad.as_str()),
    ]
    .into_iter()
    .map(|v| v.map(|s| s.as_bytes().to_vec()))
    .collect();
    let mut batch = records(values);
    // Keys are not checked: a key that is not JSON (nor UTF-8) goes through.
    batch.push(record(
        Some(b"\xff not json"),
        Some(br#"{"k": true}"#.to_vec()),
        11,
    ));
    let pc = partition_client(&p.external.addr(), p.topic, 0).await;
    produce(&pc, batch).await;
    p.service.start();
    wait_all_placed(&p).await;
    let json = |r: &RecordAndOffset| {
        r.record
            .value
            .as_deref()
            .is_none_or(|v| serde_json::from_slice::<Value>(v).is_ok())
    };
    let dead = assert_placed(&p, 0, json).await;
    let errors: Vec<(String, String)> = dead.iter().map(error_of).collect();
    assert_eq!(errors.len(), 6, "{errors:?}");
    for (kind, message) in &errors {
        assert_eq!(kind, "MalformedJson");
        assert!(message.starts_with("value is not"), "{message}");
    }
    assert!(errors[0].1.contains("EOF while parsing"), "{errors:?}");
    assert!(errors[1].1.contains("trailing characters"), "{errors:?}");
    assert!(
        errors[3].1.contains("recursion limit exceeded"),
        "{errors:?}"
    );
    assert!(errors[4].1.contains("empty"), "{errors:?}");
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// (subject, version) of every schema the stopped (or killed) service's registry holds,
/// as `kafka-direct schemas --json` lists them.
fn stored_versions(service: &Service) -> Vec<(String, i64)> {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["schemas", "--json", "--config"])
        .arg(&service.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["subject"].as_str().unwrap().to_owned(),
                v["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn envelope(r: &RecordAndOffset) -> Value {
    serde_json::from_slice(r.record.value.as_deref().expect("a value")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn schemas_evolve_wrap_values_in_the_connect_envelope_and_refuse_drift() {
    let mut p = Pipeline::new(
        "orders",
        1,
        &[
            (DLQ_KEY, "int.orders.dlq"),
            ("connector.format", "json"),
            ("connector.schemas.enable", "true"),
        ],
    )
    .await;
    let own = r#"{"schema": {"type": "struct", "optional": false, "fields": [{"field": "n", "type": "int32", "optional": false}]}, "payload": {"n": 5}}"#;
    let values: Vec<Option<Vec<u8>>> = [
        Some(r#"{"id": 1, "qty": 2, "note": null}"#),
        Some(r#"{"id": 2, "qty": 3, "tag": "x"}"#),
        Some(r#"{"id": 3, "qty": "four"}"#),
        Some(r#"{"id": 4}"#),
        Some("[1, 2]"),
        Some(r#""scalar""#),
        Some(own),
        None,
        Some(r#"{"id": 5, "qty": 6}"#),
        Some(r#"{"id": 6, "qty": 7, "note": "now text"}"#),
    ]
    .into_iter()
    .map(|v| v.map(|s| s.as_bytes().to_vec()))
    .collect();
    let pc = partition_client(&p.external.addr(), p.topic, 0).await;
    produce(&pc, records(values)).await;
    p.service.start();
    wait_all_placed(&p).await;

    let internal = read_all(&p.internal.addr(), &p.internal_topic(), 0).await;
    let offsets: Vec<i64> = internal.iter().map(source_offset).collect();
    assert_eq!(offsets, vec![0, 1, 6, 7, 8, 9]);
    let versions: Vec<Option<i64>> = internal
        .iter()
        .map(|r| {
            r.record
                .value
                .as_ref()
                .and_then(|_| envelope(r)["schema"]["version"].as_i64())
        })
        .collect();
    assert_eq!(
        versions,
        vec![Some(1), Some(2), None, None, Some(2), Some(3)]
    );
    assert_eq!(
        envelope(&internal[0]),
        json!({"schema": {"type": "struct", "optional": false, "version": 1, "fields": [
                {"field": "id", "type": "int64", "optional": false},
                {"field": "qty", "type": "int64", "optional": false}]},
               "payload": {"id": 1, "qty": 2, "note": null}})
    );
    assert_eq!(
        envelope(&internal[1])["schema"]["fields"][2],
        json!({"field": "tag", "type": "string", "optional": true})
    );
    assert_eq!(
        internal[2].record.value.as_deref(),
        Some(own.as_bytes()),
        "an envelope passes as it is"
    );
    assert_eq!(internal[3].record.value, None, "a tombstone stays null");

    let dead = assert_placed_as(&p, 0, |r| [0, 1, 6, 7, 8, 9].contains(&r.offset), false).await;
    let errors: Vec<(String, String)> = dead.iter().map(error_of).collect();
    assert_eq!(
        errors,
        vec![
            ("SchemaMismatch".into(), "expected int64 at $.qty, got string (schema int.orders version 2)".into()),
            ("SchemaMismatch".into(), "expected int64 (the field is required) at $.qty, got no such field (schema int.orders version 2)".into()),
            ("SchemaMismatch".into(), "expected a JSON object at $, got array (schema int.orders version 2)".into()),
            ("SchemaMismatch".into(), "expected a JSON object at $, got string (schema int.orders version 2)".into()),
        ]
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    // The registry survives the restart: a record of the latest shape makes no version.
    let listed = stored_versions(&p.service);
    let subject = p.internal_topic();
    assert_eq!(
        listed,
        vec![(subject.clone(), 1), (subject.clone(), 2), (subject, 3)]
    );
    produce(
        &pc,
        vec![record(
            None,
            Some(br#"{"id": 7, "qty": 8, "tag": "t", "note": "n"}"#.to_vec()),
            10,
        )],
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["schemas", "--config"])
        .arg(&p.service.config)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("id:int64, qty:int64, note?:string, tag?:string"),
        "{table}"
    );
    std::fs::write(&p.service.log, "").unwrap();
    p.service.start();
    wait_all_placed(&p).await;
    // After a clean stop the dead-letter topic is read from where the last run left it.
    let log = p.service.log_text();
    assert!(
        log.contains("dead-letter topic read") && log.contains("read=0"),
        "{log}"
    );
    assert!(!log.contains("new schema version"), "{log}");
    let internal = read_all(&p.internal.addr(), &p.internal_topic(), 0).await;
    assert_eq!(envelope(internal.last().unwrap())["schema"]["version"], 3);
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// Values of a mixed stream: about one in five is not UTF-8, some are null.
fn mixed_records(partition: i32, start: usize, n: usize) -> Vec<Record> {
    (start..start + n)
        .map(|i| {
            let value = (i % 13 != 5).then(|| {
                let mut v = format!("p{partition}-seq{i}-").into_bytes();
                v.extend(std::iter::repeat_n(b'v', (i * 37) % 700));
                if i % 7 == 3 || i % 11 == 0 {
                    v.push(0xff);
                }
                v
            });
            record(Some(format!("key-{i}").as_bytes()), value, i as i64)
        })
        .collect()
}

fn is_good(r: &RecordAndOffset) -> bool {
    r.record
        .value
        .as_deref()
        .is_none_or(|v| std::str::from_utf8(v).is_ok())
}

async fn wait_dead_lettered_at_least(service: &Service, n: u64) {
    service
        .wait_log(&format!("{n} records dead-lettered"), WAIT, |_| {
            service
                .progress_field("dead_lettered")
                .is_some_and(|d| d >= n)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_a_mixed_stream_stores_each_record_once_in_one_place() {
    // Small produce requests: runs of good and bad records are split further, so crashes
    // land between dead-letter and internal produces of one WAL entry.
    let mut p = Pipeline::new(
        "mixed",
        3,
        &[
            (DLQ_KEY, "int.mixed.dlq"),
            ("connector.format", "string"),
            ("forward.batch.max.bytes", "16384"),
        ],
    )
    .await;
    // Records keep arriving until the last restart, so every round has dead letters to
    // write however long the restarts take.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce_in_background_until(&p, 40, mixed_records, Arc::clone(&stop));
    for round in 0..3u64 {
        std::fs::write(&p.service.log, "").unwrap();
        p.service.start();
        wait_dead_lettered_at_least(&p.service, 100 + round * 50).await;
        p.service.kill9();
    }
    std::fs::write(&p.service.log, "").unwrap();
    p.service.start();
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    wait_all_placed(&p).await;
    let mut dead = 0;
    for partition in 0..p.partitions {
        dead += assert_placed(&p, partition, is_good).await.len();
    }
    assert!(dead > 1000, "a mixed stream: {dead} dead letters");
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// Responses to produce requests are lost, dead-letter ones included: the forwarder
/// re-reads the dead-letter topic before sending again, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread")]
async fn lost_dead_letter_produce_responses_never_store_a_dead_letter_twice() {
    let (mut proxy, listener) = CuttingProxy::bind().await;
    let internal = Broker::start_advertising(Some(proxy.port));
    proxy.forward_to(listener, internal.port);
    let mut p = Pipeline::with_internal(
        "cutmix",
        2,
        &[
            (DLQ_KEY, "int.cutmix.dlq"),
            ("connector.format", "string"),
            ("forward.batch.max.records", "30"),
        ],
        internal,
    )
    .await;
    p.service.start();
    // Cuts begin once both partitions replicate: the start-up's own requests (topic
    // creation, reading the dead-letter topic) are not what this test is about, and a
    // start that keeps failing stops the service.
    p.service
        .wait_log("replication to start", WAIT, |log| {
            log.matches("no checkpoint: fetching").count() >= 2
        })
        .await;
    // 20 rounds, and more (150 at most) until a dead-letter produce lost its answer: the
    // proxy cuts whichever response comes next, internal or dead-letter, and with every
    // partition's requests on one shared connection a cut often hits that connection's
    // reconnect (its forwarders then back off) rather than a dead-letter answer.
    let dead_letter_unknown =
        |log: &str| log.matches("dead-letter produce outcome unknown").count();
    for round in 0..150 {
        if round >= 20 && dead_letter_unknown(&p.service.log_text()) >= 1 {
            break;
        }
        for partition in 0..p.partitions {
            let pc = partition_client(&p.external.addr(), p.topic, partition).await;
            // Most of these values are binary: most produces go to the dead-letter topic.
            // Recent timestamps: the internal partition's lost answers are resolved by
            // the broker's deduplication, not by tail reads whose answers the proxy
            // would cut instead of the dead-letter ones.
            produce(&pc, recent_records(partition, round * 100, 100)).await;
        }
        proxy.cut_next(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    proxy.stop_cutting();
    wait_all_placed(&p).await;
    for partition in 0..p.partitions {
        assert_placed(&p, partition, is_good).await;
    }
    let log = p.service.log_text();
    let unknown = dead_letter_unknown(&log);
    eprintln!(
        "{} responses cut, {unknown} dead-letter produce outcomes unknown",
        proxy.cuts_done.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(
        unknown >= 1,
        "no dead-letter produce lost its answer; log:\n{log}"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// A schema version is durable before a record naming it is produced: killed right
/// after such a record is stored, the service leaves that version in its registry (three
/// times), and the next evolution after the restart builds on it.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_after_a_new_schema_version_is_produced_keeps_the_version() {
    let mut p = Pipeline::new(
        "evolving",
        1,
        &[
            ("connector.format", "json"),
            ("connector.schemas.enable", "true"),
            ("forward.batch.max.records", "10"),
        ],
    )
    .await;
    let source = partition_client(&p.external.addr(), p.topic, 0).await;
    let value = |s: String, i: i64| record(Some(b"k"), Some(s.into_bytes()), i);
    produce(&source, vec![value(r#"{"id": 0}"#.into(), 0)]).await;
    p.service.start();
    wait_for_end(&p.internal.addr(), &p.internal_topic(), 0, 1, WAIT).await;
    let internal = partition_client(&p.internal.addr(), &p.internal_topic(), 0).await;

    let mut next = 1;
    for round in 1..=3 {
        // One source batch whose last record makes a new version. The forwarder sends it
        // in 15 requests, so that record is checked well after the fetcher's commit of
        // the batch returned; the service is killed as soon as it is stored, with nothing
        // else arriving that would commit the WAL for another reason.
        let mut batch: Vec<Record> = (next..next + 149)
            .map(|i| value(format!(r#"{{"id": {i}}}"#), i))
            .collect();
        batch.push(value(
            format!(r#"{{"id": 0, "x{round}": "y"}}"#),
            next + 149,
        ));
        next += 150;
        produce(&source, batch).await;
        let deadline = Instant::now() + WAIT;
        loop {
            // ListOffsets on one client is the fastest exact read on Kafka; tansu's is
            // not exact, so the kit's fetch-based end serves there.
            let end = match platform() {
                Platform::Kafka => internal.get_offset(OffsetAt::Latest).await.unwrap(),
                Platform::Tansu => end_offset(&p.internal.addr(), &p.internal_topic(), 0).await,
            };
            if end >= next {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the new version's record not stored"
            );
        }
        p.service.kill9();

        let versions: Vec<i64> = stored_versions(&p.service)
            .into_iter()
            .map(|(_, version)| version)
            .collect();
        assert_eq!(
            versions,
            (1..=round + 1).collect::<Vec<i64>>(),
            "round {round}: the registry of the killed service"
        );
        p.service.start();
    }

    produce(&source, vec![value(r#"{"id": 0, "z": true}"#.into(), next)]).await;
    wait_for_end(&p.internal.addr(), &p.internal_topic(), 0, next + 1, WAIT).await;
    let stored = read_all(&p.internal.addr(), &p.internal_topic(), 0).await;
    let last = envelope(stored.last().unwrap())["schema"].clone();
    assert_eq!(last["version"], 5, "{last:#}");
    let fields: Vec<&str> = last["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec!["id", "x1", "x2", "x3", "z"],
        "version 5 evolves version 4"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}
