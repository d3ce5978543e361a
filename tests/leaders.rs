//! Leader changes on Apache Kafka: a 3-broker source cluster and a 3-broker internal
//! cluster (replication factor 3, min.insync.replicas 2, produce with acks=all). The
//! leader of a partition is killed mid-stream on each side in turn; the copy goes on
//! against the new leaders, and every record arrives exactly once. The internal leader
//! dies with produce requests in flight (small batches, up to five in flight): they go
//! again to the new leader with their sequence numbers, which the new leader holds from
//! the replicated log, so what the old leader had stored is not stored twice.

mod common;

use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(120);
const TOPIC: &str = "ha";
const PARTITIONS: i32 = 2;

/// The id of the node leading `topic/partition`, as Kafka's own `kafka-topics
/// --describe` reports it (once it has one).
async fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let described = kafka_tool(
            "kafka-topics",
            &[
                "--bootstrap-server",
                bootstrap,
                "--describe",
                "--topic",
                topic,
            ],
        );
        let leader = described.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = |name: &str| {
                fields
                    .iter()
                    .position(|f| *f == name)
                    .and_then(|i| fields.get(i + 1))
            };
            (at("Partition:")? == &partition.to_string().as_str())
                .then(|| at("Leader:")?.parse::<i32>().ok())
                .flatten()
        });
        if let Some(leader) = leader.filter(|id| *id > 0) {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition} has no leader: {described}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Produces `n` test records to every partition from `start`, retrying each request
/// until the cluster takes it (a leader may be moving).
async fn produce_through(bootstrap: &str, start: usize, n: usize) {
    for p in 0..PARTITIONS {
        for chunk_start in (start..start + n).step_by(100) {
            let records = recent_records(p, chunk_start, 100.min(start + n - chunk_start));
            let deadline = Instant::now() + WAIT;
            loop {
                let pc = partition_client(bootstrap, TOPIC, p).await;
                match pc
                    .produce(
                        records.clone(),
                        rskafka::client::partition::Compression::NoCompression,
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "producing to {TOPIC}/{p}: {e}");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leaders_on_either_side_loses_and_duplicates_nothing() {
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
