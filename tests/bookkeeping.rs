//! Kafka-native bookkeeping against Apache Kafka, read back with Kafka's own tools: the
//! connector's consumer group on the external cluster (kafka-consumer-groups sees the
//! stored position; offset changes through the API move it; a reset made with the
//! group's tools while the connector is stopped is followed once; a new partition
//! starts from it), topic configs carried to internal topics (kafka-configs), exact
//! offset translation and consumer group failover (kafka-console-consumer --group on
//! the internal cluster), and a principal without Group ACLs.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use common::{api_call as call, api_get as get, api_send as send};
use kafka_direct::cli::client::ApiClient;

const WAIT: Duration = Duration::from_secs(90);
/// The connector's group: `Service::configure` names the connector `test`.
const GROUP: &str = "kafka-direct-test";

/// Waits until [`described`] equals `want`.
async fn wait_described(addr: &str, group: &str, topic: &str, want: &[(i32, Option<i64>)]) {
    let want: BTreeMap<i32, Option<i64>> = want.iter().copied().collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, g, t) = (addr.to_owned(), group.to_owned(), topic.to_owned());
        let seen = tokio::task::spawn_blocking(move || described(&a, &g, &t))
            .await
            .unwrap();
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} on {addr}: {seen:?}, waiting for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kafka-consumer-groups --reset-offsets --to-offset OFFSET --execute` on one partition.
fn reset_group(addr: &str, group: &str, topic: &str, partition: i32, offset: i64) {
    kafka_tool(
        "kafka-consumer-groups",
        &[
            "--bootstrap-server",
            addr,
            "--group",
            group,
            "--reset-offsets",
            "--topic",
            &format!("{topic}:{partition}"),
            "--to-offset",
            &offset.to_string(),
            "--execute",
        ],
    );
}

/// A service copying `topic` (created with `partitions` on the shared external broker)
/// to the shared internal broker, not started.
async fn service(
    dir: &std::path::Path,
    topic: &str,
    partitions: i32,
    extra: &[(&str, &str)],
) -> (Service, String, String) {
    let (external, internal) = shared_brokers();
    create_topic(&external.addr(), topic, partitions).await;
    let service = Service::configure(
        dir,
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: topic,
            extra,
        },
    );
    (service, external.addr(), internal.addr())
}

async fn produce_to(addr: &str, topic: &str, partition: i32, start: usize, n: usize) {
    let pc = partition_client(addr, topic, partition).await;
    produce(&pc, test_records(partition, start, n)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_group_shows_the_stored_position_to_kafka_consumer_groups_and_moves_with_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (mut service, external, internal) = service(
        dir.path(),
        "lagged",
        2,
        &[("connector.offset.flush.interval.ms", "300")],
    )
    .await;
    for p in 0..2 {
        produce_to(&external, "lagged", p, 0, 30).await;
    }
    service.start();
    let api = ApiClient::new(&service.api().await, None);
    wait_described(&external, GROUP, "lagged", &[(0, Some(30)), (1, Some(30))]).await;
    produce_to(&external, "lagged", 1, 30, 10).await;
    wait_described(&external, GROUP, "lagged", &[(0, Some(30)), (1, Some(40))]).await;

    // Stopped, its offsets changed through the API: the group moves at once (partition
    // 0 to 5; partition 1 back to auto.offset.reset, so its group offset goes).
    assert_eq!(call(&api, "PUT", "/connectors/test/stop").await.0, 204);
    let (status, body) = send(
        &api,
        "PATCH",
        "/connectors/test/offsets",
        serde_json::json!({"offsets": [
            {"partition": {"kafka_topic": "lagged", "kafka_partition": 0}, "offset": {"kafka_offset": 5}},
            {"partition": {"kafka_topic": "lagged", "kafka_partition": 1}, "offset": null},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (e, g) = (external.clone(), GROUP);
    let now = tokio::task::spawn_blocking(move || described(&e, g, "lagged"))
        .await
        .unwrap();
    assert_eq!(now.get(&0), Some(&Some(5)), "{now:?}");
    assert_ne!(now.get(&1), Some(&Some(40)), "{now:?}");
    assert!(matches!(now.get(&1), None | Some(None)), "{now:?}");

    // Resumed: 5..29 of partition 0 and all of partition 1 are copied again (as the
    // change asks), and the group follows the stored position.
    assert_eq!(call(&api, "PUT", "/connectors/test/resume").await.0, 202);
    wait_for_end(&internal, "int.lagged", 0, 30 + 25, WAIT).await;
    wait_for_end(&internal, "int.lagged", 1, 40 + 40, WAIT).await;
    wait_described(&external, GROUP, "lagged", &[(0, Some(30)), (1, Some(40))]).await;
    let p0: Vec<i64> = (0..30).chain(5..30).collect();
    assert_eq!(copied_source_offsets(&internal, "int.lagged", 0).await, p0);
    let p1: Vec<i64> = (0..40).chain(0..40).collect();
    assert_eq!(copied_source_offsets(&internal, "int.lagged", 1).await, p1);

    // A clean stop commits the last position even between flushes.
    produce_to(&external, "lagged", 0, 30, 3).await;
    wait_for_end(&internal, "int.lagged", 0, 58, WAIT).await;
    assert!(service.terminate(Duration::from_secs(30)).success());
    let (e, g) = (external.clone(), GROUP);
    let last = tokio::task::spawn_blocking(move || described(&e, g, "lagged"))
        .await
        .unwrap();
    assert_eq!(last.get(&0), Some(&Some(33)), "{last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_reset_with_kafka_consumer_groups_while_stopped_is_followed_once() {
    let dir = tempfile::tempdir().unwrap();
    // No periodic commit: only the clean stop commits, so the crash below happens while
    // the group still holds the reset's offset.
    let (mut service, external, internal) = service(
        dir.path(),
        "regrouped",
        1,
        &[("connector.offset.flush.interval.ms", "3600000")],
    )
    .await;
    produce_to(&external, "regrouped", 0, 0, 50).await;
    service.start();
    let api = ApiClient::new(&service.api().await, None);
    wait_for_end(&internal, "int.regrouped", 0, 50, WAIT).await;
    assert_eq!(call(&api, "PUT", "/connectors/test/stop").await.0, 204);
    wait_described(&external, GROUP, "regrouped", &[(0, Some(50))]).await;

    // The group has no members: Kafka's tool resets it.
    let e = external.clone();
    tokio::task::spawn_blocking(move || reset_group(&e, GROUP, "regrouped", 0, 20))
        .await
        .unwrap();
    assert_eq!(call(&api, "PUT", "/connectors/test/resume").await.0, 202);
    wait_for_end(&internal, "int.regrouped", 0, 80, WAIT).await;
    let expected: Vec<i64> = (0..50).chain(20..50).collect();
    assert_eq!(
        copied_source_offsets(&internal, "int.regrouped", 0).await,
        expected
    );
    assert!(
        service
            .log_text()
            .contains("following the group's offset, set by another client"),
        "the service says why it copies again"
    );

    // A crash before kafka-direct's own commit replaced the reset in the group: the
    // reset is not followed a second time.
    service.kill9();
    service.start();
    produce_to(&external, "regrouped", 0, 50, 5).await;
    wait_for_end(&internal, "int.regrouped", 0, 85, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected: Vec<i64> = (0..50).chain(20..55).collect();
    assert_eq!(
        copied_source_offsets(&internal, "int.regrouped", 0).await,
        expected
    );
    assert!(service.terminate(Duration::from_secs(30)).success());
    wait_described(&external, GROUP, "regrouped", &[(0, Some(55))]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_without_a_position_starts_from_the_groups_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    // No periodic commit: the group keeps the offset set below until a clean stop.
    let (mut service, external, internal) = service(
        dir.path(),
        "inherited",
        1,
        &[("connector.offset.flush.interval.ms", "3600000")],
    )
    .await;
    produce_to(&external, "inherited", 0, 0, 40).await;
    // The group exists before kafka-direct ever ran (an earlier consumer's, or a
    // position chosen on purpose).
    let e = external.clone();
    tokio::task::spawn_blocking(move || reset_group(&e, GROUP, "inherited", 0, 25))
        .await
        .unwrap();
    service.start();
    wait_for_end(&internal, "int.inherited", 0, 15, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        copied_source_offsets(&internal, "int.inherited", 0).await,
        (25..40).collect::<Vec<i64>>()
    );

    // A crash while the group still holds that offset: the restart does not take it a
    // second time (as an offset change, which would copy 25.. again).
    service.kill9();
    service.start();
    produce_to(&external, "inherited", 0, 40, 5).await;
    wait_for_end(&internal, "int.inherited", 0, 20, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        copied_source_offsets(&internal, "int.inherited", 0).await,
        (25..45).collect::<Vec<i64>>()
    );
    assert!(service.terminate(Duration::from_secs(30)).success());
    wait_described(&external, GROUP, "inherited", &[(0, Some(45))]).await;
}

/// `kafka-configs --describe` of a topic: its configs set on the topic itself.
fn topic_configs(addr: &str, topic: &str) -> BTreeMap<String, String> {
    let text = kafka_tool(
        "kafka-configs",
        &[
            "--bootstrap-server",
            addr,
            "--entity-type",
            "topics",
            "--entity-name",
            topic,
            "--describe",
        ],
    );
    // "Dynamic configs for topic T are:" then "  key=value sensitive=false synonyms={...}"
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let first = l.split_whitespace().next()?;
            let (k, v) = first.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_source_topic_is_copied_into_a_compacted_topic_and_later_changes_follow() {
    let (external, internal) = shared_brokers();
    let (ext, int) = (external.addr(), internal.addr());
    let e = ext.clone();
    tokio::task::spawn_blocking(move || {
        create_topic_with_configs(
            &e,
            "changelog",
            2,
            &[
                "cleanup.policy=compact",
                "min.compaction.lag.ms=1000",
                "retention.ms=2592000000",
                "message.timestamp.type=LogAppendTime",
            ],
        )
    })
    .await
    .unwrap();
    // A compacted topic takes keyed records only.
    kcat_produce(
        &ext,
        "changelog",
        0,
        &["-K", ":"],
        "a:1\nb:2\nc:3\na:4\nd:5\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &ext,
            internal: &int,
            topics: "changelog",
            extra: &[
                // Longer retention on the copy than on the source.
                ("internal.topic.config.retention.ms", "5184000000"),
                ("topic.metadata.refresh.interval.ms", "500"),
            ],
        },
    );
    service.start();
    wait_for_end(&int, "int.changelog", 0, 5, WAIT).await;
    let i = int.clone();
    let configs = tokio::task::spawn_blocking(move || topic_configs(&i, "int.changelog"))
        .await
        .unwrap();
    assert_eq!(
        configs.get("cleanup.policy").map(String::as_str),
        Some("compact"),
        "{configs:?}"
    );
    assert_eq!(
        configs.get("min.compaction.lag.ms").map(String::as_str),
        Some("1000"),
        "{configs:?}"
    );
    assert_eq!(
        configs.get("retention.ms").map(String::as_str),
        Some("5184000000"),
        "the override wins: {configs:?}"
    );
    assert!(
        !configs.contains_key("message.timestamp.type"),
        "the copy keeps the source's timestamps, so it is not carried: {configs:?}"
    );

    // A change on the source follows at the next metadata refresh.
    let e = ext.clone();
    tokio::task::spawn_blocking(move || {
        kafka_tool(
            "kafka-configs",
            &[
                "--bootstrap-server",
                &e,
                "--entity-type",
                "topics",
                "--entity-name",
                "changelog",
                "--alter",
                "--add-config",
                "delete.retention.ms=123456,min.compaction.lag.ms=2000",
            ],
        )
    })
    .await
    .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let i = int.clone();
        let configs = tokio::task::spawn_blocking(move || topic_configs(&i, "int.changelog"))
            .await
            .unwrap();
        if configs.get("delete.retention.ms").map(String::as_str) == Some("123456")
            && configs.get("min.compaction.lag.ms").map(String::as_str) == Some("2000")
        {
            assert_eq!(
                configs.get("retention.ms").map(String::as_str),
                Some("5184000000")
            );
            break;
        }
        assert!(Instant::now() < deadline, "not synced: {configs:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(service
        .log_text()
        .contains("internal topic config changed to follow its source topic"));
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// A service copying `topic` with `extra` that exits at start, its log holding each
/// of `needles`.
async fn refused_at_start(topic: &str, extra: &[(&str, &str)], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (mut service, _, _) = service(dir.path(), topic, 1, extra).await;
    service.start();
    assert!(!service.wait_exit(WAIT).success());
    let log = service.log_text();
    for needle in needles {
        assert!(log.contains(needle), "{needle}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replication_factor_the_internal_cluster_cannot_give_names_the_key() {
    refused_at_start(
        "overreplicated",
        &[("internal.replication.factor", "3")],
        &["internal.replication.factor=3", "int.overreplicated"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_config_the_internal_cluster_refuses_names_the_key() {
    refused_at_start(
        "misconfigured",
        &[("internal.topic.config.cleanup.policy", "sometimes")],
        &[
            "cleanup.policy=sometimes",
            "internal.topic.config.*",
            "int.misconfigured",
        ],
    )
    .await;
}

/// Records of `keys` (`key:value` lines, one per record) for `kcat -K:`.
fn keyed(records: &[(String, String)]) -> String {
    records.iter().map(|(k, v)| format!("{k}:{v}\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_translate_exactly_and_a_source_group_fails_over_to_its_position() {
    let (external, internal) = shared_brokers();
    let (ext, int) = (external.addr(), internal.addr());
    let e = ext.clone();
    tokio::task::spawn_blocking(move || {
        create_topic_with_configs(
            &e,
            "failover",
            1,
            &[
                "cleanup.policy=compact",
                "segment.ms=100",
                "min.cleanable.dirty.ratio=0.01",
                "min.compaction.lag.ms=0",
            ],
        );
        // The cleaner looks every 15 s by default.
        kafka_tool(
            "kafka-configs",
            &[
                "--bootstrap-server",
                &e,
                "--entity-type",
                "brokers",
                "--entity-default",
                "--alter",
                "--add-config",
                "log.cleaner.backoff.ms=200",
            ],
        );
    })
    .await
    .unwrap();
    // Source offsets 0..9 share one key (compaction keeps 9), 10..19 and 21..29 are
    // JSON with keys of their own, 20 is not JSON (it goes to the dead-letter topic).
    let first: Vec<(String, String)> = (0..10)
        .map(|n| ("a".into(), format!("{{\"n\":{n}}}")))
        .collect();
    kcat_produce(&ext, "failover", 0, &["-K", ":"], &keyed(&first));
    tokio::time::sleep(Duration::from_millis(300)).await; // the next record rolls the segment
    let mut rest: Vec<(String, String)> = (10..20)
        .map(|n| (format!("k{n}"), format!("{{\"n\":{n}}}")))
        .collect();
    rest.push(("bad".into(), "not json {".into()));
    rest.extend((21..30).map(|n| (format!("k{n}"), format!("{{\"n\":{n}}}"))));
    kcat_produce(&ext, "failover", 0, &["-K", ":"], &keyed(&rest));
    let deadline = Instant::now() + WAIT;
    loop {
        let kept: Vec<i64> = read_all(&ext, "failover", 0)
            .await
            .iter()
            .map(|r| r.offset)
            .collect();
        if kept.first() == Some(&9) {
            assert_eq!(kept, (9..30).collect::<Vec<i64>>());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the source was not compacted: {kept:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &ext,
            internal: &int,
            topics: "failover",
            extra: &[
                ("connector.format", "json"),
                ("connector.groups.sync", "app-.*"),
                ("connector.groups.sync.interval.ms", "300"),
            ],
        },
    );
    service.start();
    let api = ApiClient::new(&service.api().await, None);
    // Copies: source 9 at internal 0, 10..19 at 1..10, 21..29 at 11..19.
    wait_for_end(&int, "int.failover", 0, 20, WAIT).await;
    wait_for_end(&int, "int.dlq", 0, 1, WAIT).await;
    let translate = |offset: i64| {
        format!("/connectors/test/offsets/translate?topic=failover&partition=0&offset={offset}")
    };
    for (source, internal_offset, record, basis) in [
        (0, Some(0), Some(9), "gap"),
        (5, Some(0), Some(9), "gap"),
        (9, Some(0), Some(9), "exact"),
        (15, Some(6), Some(15), "exact"),
        (20, Some(11), Some(21), "gap"),
        (21, Some(11), Some(21), "exact"),
        (29, Some(19), Some(29), "exact"),
        (30, Some(20), None, "end"),
        (31, None, None, "not_copied_yet"),
    ] {
        let t = get(&api, &translate(source)).await;
        assert_eq!(
            t["internal_offset"].as_i64(),
            internal_offset,
            "{source}: {t}"
        );
        assert_eq!(t["record_source_offset"].as_i64(), record, "{source}: {t}");
        assert_eq!(t["basis"], basis, "{source}: {t}");
        assert_eq!(t["internal_topic"], "int.failover");
    }
    let (status, body) = call(
        &api,
        "GET",
        "/connectors/test/offsets/translate?topic=failover&partition=0",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("offset"), "{body}");
    let api_url = service.api().await;
    let (ok, text) = cli(&[
        "offsets",
        "translate",
        "test",
        "failover/0=20",
        "--api",
        &api_url,
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("failover/0@20 -> int.failover/0@11 (gap)"),
        "{text}"
    );

    // A source consumer group at 5 (inside the compacted range) and then at 20 (the
    // dead-lettered record): the same group on the internal cluster follows.
    let e = ext.clone();
    tokio::task::spawn_blocking(move || {
        reset_group(&e, "app-1", "failover", 0, 5);
        reset_group(&e, "other", "failover", 0, 5);
    })
    .await
    .unwrap();
    wait_described(&int, "app-1", "int.failover", &[(0, Some(0))]).await;
    let e = ext.clone();
    tokio::task::spawn_blocking(move || reset_group(&e, "app-1", "failover", 0, 20))
        .await
        .unwrap();
    wait_described(&int, "app-1", "int.failover", &[(0, Some(11))]).await;

    // The consumer fails over: Kafka's console consumer in group app-1 on the internal
    // cluster reads first the copy of source offset 21, then commits after it.
    let i = int.clone();
    let read = tokio::task::spawn_blocking(move || {
        kafka_tool(
            "kafka-console-consumer",
            &[
                "--bootstrap-server",
                &i,
                "--topic",
                "int.failover",
                "--group",
                "app-1",
                "--max-messages",
                "1",
                "--property",
                "print.headers=true",
                "--timeout-ms",
                "60000",
            ],
        )
    })
    .await
    .unwrap();
    assert!(read.contains("kafka-direct.source.offset:21"), "{read}");
    assert!(read.contains("{\"n\":21}"), "{read}");
    wait_described(&int, "app-1", "int.failover", &[(0, Some(12))]).await;

    // The source group going back never moves the internal group backwards; a group
    // not in groups.sync is not carried.
    let e = ext.clone();
    tokio::task::spawn_blocking(move || reset_group(&e, "app-1", "failover", 0, 15))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let i = int.clone();
    let (after, other) = tokio::task::spawn_blocking(move || {
        (
            described(&i, "app-1", "int.failover"),
            described(&i, "other", "int.failover"),
        )
    })
    .await
    .unwrap();
    assert_eq!(after, BTreeMap::from([(0, Some(12))]));
    assert!(other.is_empty(), "{other:?}");
    assert!(service.terminate(Duration::from_secs(30)).success());
}
