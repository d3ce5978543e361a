//! Leader changes on Apache Kafka: a 3-broker source cluster and a 3-broker internal
//! cluster (replication factor 3, min.insync.replicas 2, produce with acks=all). The
//! leader of a partition is killed mid-stream on each side in turn; the copy goes on
//! against the new leaders, and every record arrives exactly once. The internal leader
//! dies with produce requests in flight (small batches, up to five in flight): they go
//! again to the new leader with their sequence numbers, which the new leader holds from
//! the replicated log, so what the old leader had stored is not stored twice.
//!
//! And a source partition with no leader for a minute (its only replica's broker down):
//! the other partitions are copied meanwhile, and it is copied exactly once when its
//! broker is back.

mod common;

use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(120);
const TOPIC: &str = "ha";
const PARTITIONS: i32 = 2;

/// One test's clusters at a time: each starts three or six JVM brokers, too many for two
/// cores at once.
static CLUSTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Produces `n` test records to every partition of [`TOPIC`] from `start`, retrying
/// each request until the cluster takes it (a leader may be moving).
async fn produce_through(bootstrap: &str, start: usize, n: usize) {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    produce_to(bootstrap, TOPIC, &partitions, start, n).await;
}

/// Produces `n` test records to each of `partitions` of `topic` from `start`, retrying
/// each request until the cluster takes it.
async fn produce_to(bootstrap: &str, topic: &str, partitions: &[i32], start: usize, n: usize) {
    for &p in partitions {
        for chunk_start in (start..start + n).step_by(100) {
            let records = recent_records(p, chunk_start, 100.min(start + n - chunk_start));
            let deadline = Instant::now() + WAIT;
            loop {
                let pc = partition_client(bootstrap, topic, p).await;
                match pc
                    .produce(
                        records.clone(),
                        rskafka::client::partition::Compression::NoCompression,
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "producing to {topic}/{p}: {e}");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leaders_on_either_side_loses_and_duplicates_nothing() {
    let _one_at_a_time = CLUSTERS.lock().await;
    let external = KafkaCluster::start(3);
    let internal = KafkaCluster::start(3);
    let (source, target) = (external.bootstrap(), internal.bootstrap());
    kafka_tool(
        "kafka-topics",
        &[
            "--bootstrap-server",
            &source,
            "--create",
            "--topic",
            TOPIC,
            "--partitions",
            &PARTITIONS.to_string(),
            "--replication-factor",
            "3",
            "--config",
            "min.insync.replicas=2",
        ],
    );
    produce_through(&source, 0, 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &source,
            internal: &target,
            topics: TOPIC,
            extra: &[
                ("internal.replication.factor", "3"),
                ("request.timeout.ms", "5000"),
                ("forward.batch.max.records", "20"),
            ],
        },
    );
    service.start();
    wait_for_end(&target, &format!("int.{TOPIC}"), 0, 1000, WAIT).await;

    // The source leader of partition 0 dies; records keep arriving at the new one.
    let source_leader = leader_of(&source, TOPIC, 0).await;
    external.node(source_leader).kill9();
    let source = external.bootstrap_without(source_leader);
    produce_through(&source, 1000, 1000).await;
    wait_for_end(&target, &format!("int.{TOPIC}"), 0, 2000, WAIT).await;

    // Then the internal leader of partition 0, while more records arrive and are
    // forwarded.
    let internal_leader = leader_of(&target, &format!("int.{TOPIC}"), 0).await;
    let producing = tokio::spawn({
        let source = source.clone();
        async move { produce_through(&source, 2000, 1000).await }
    });
    let int_topic = format!("int.{TOPIC}");
    wait_for_end(&target, &int_topic, 0, 2100, WAIT).await;
    internal.node(internal_leader).kill9();
    let target = internal.bootstrap_without(internal_leader);
    producing.await.unwrap();

    for p in 0..PARTITIONS {
        if let Err(now) = reach_end(&target, &format!("int.{TOPIC}"), p, 3000, WAIT).await {
            panic!(
                "int.{TOPIC}/{p} reached {now}, not 3000, after the leader changes; log:\n{}",
                service.log_text()
            );
        }
        let from_source = read_all(&source, TOPIC, p).await;
        let copied = read_all(&target, &format!("int.{TOPIC}"), p).await;
        assert_eq!(
            from_source.len(),
            3000,
            "{TOPIC}/{p} holds what was produced"
        );
        assert_exactly_once(&from_source, &copied, TOPIC, p);
    }
    let resent = counter_sum(&service.metrics().await, "produce_resent_batches");
    eprintln!("{resent} batches sent again after the internal leader died");
    assert!(
        resent >= 1,
        "the internal leader died with no batch in flight: the test did not test that"
    );
    assert!(service.terminate(Duration::from_secs(60)).success());
}

/// Partition 0 of a 3-partition topic lives on node 1 only (replication factor 1), 1 on
/// node 2, 2 on node 3. Node 1 is killed and stays down for a minute, many times the
/// service's request timeout and metadata refresh: records produced meanwhile to the
/// other partitions are copied while it is down. Then it starts again with its log, and
/// partition 0 is copied on, exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_partition_without_a_leader_for_a_minute_holds_back_no_other() {
    const LONE: &str = "lone";
    let _one_at_a_time = CLUSTERS.lock().await;
    let external = KafkaCluster::start(3);
    let internal = Broker::start();
    let source = external.bootstrap();
    kafka_tool(
        "kafka-topics",
        &[
            "--bootstrap-server",
            &source,
            "--create",
            "--topic",
            LONE,
            "--replica-assignment",
            "1,2,3",
        ],
    );
    produce_to(&source, LONE, &[0, 1, 2], 0, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let int_topic = format!("int.{LONE}");
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &source,
            internal: &internal.addr(),
            topics: LONE,
            extra: &[
                ("request.timeout.ms", "5000"),
                ("topic.metadata.refresh.interval.ms", "5000"),
            ],
        },
    );
    service.start();
    for p in 0..3 {
        wait_for_end(&internal.addr(), &int_topic, p, 300, WAIT).await;
    }

    let down = Instant::now();
    external.node(1).kill9();
    let others = external.bootstrap_without(1);
    // Records keep arriving at the other two partitions, and are copied, in rounds
    // until the minute is over.
    let mut produced = 300;
    while down.elapsed() < Duration::from_secs(60) {
        produce_to(&others, LONE, &[1, 2], produced, 100).await;
        produced += 100;
        for p in 1..3 {
            if let Err(now) =
                reach_end(&internal.addr(), &int_topic, p, produced as i64, WAIT).await
            {
                panic!(
                    "{int_topic}/{p} reached {now}, not {produced}, {:?} after {LONE}/0's only broker went down: another partition's outage held it back; log:\n{}",
                    down.elapsed(),
                    service.log_text()
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    eprintln!(
        "{} records copied to partitions 1 and 2 during {:?} without a leader for 0",
        2 * (produced - 300),
        down.elapsed()
    );

    external.node(1).start_again();
    produce_to(&source, LONE, &[0], 300, 300).await;
    wait_for_end(&internal.addr(), &int_topic, 0, 600, WAIT).await;
    for (p, end) in [(0, 600), (1, produced), (2, produced)] {
        let from_source = read_all(&source, LONE, p).await;
        let copied = read_all(&internal.addr(), &int_topic, p).await;
        assert_eq!(from_source.len(), end, "{LONE}/{p} holds what was produced");
        assert_exactly_once(&from_source, &copied, LONE, p);
    }
    let log = service.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("lone/0")),
        "no warning named the partition without a leader; log:\n{log}"
    );
    assert!(service.terminate(Duration::from_secs(60)).success());
}
