//! End-to-end guarantees of the core pipeline, against two real brokers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(90);

async fn source_with_records(
    external: &Broker,
    topic: &str,
    partitions: i32,
    per_partition: usize,
) {
    create_topic(&external.addr(), topic, partitions).await;
    for p in 0..partitions {
        let pc = partition_client(&external.addr(), topic, p).await;
        produce(&pc, test_records(p, 0, per_partition)).await;
    }
}

async fn assert_partitions_match(
    external: &Broker,
    internal: &Broker,
    topic: &str,
    partitions: i32,
) {
    for p in 0..partitions {
        let end = end_offset(&external.addr(), topic, p).await;
        wait_for_end(&internal.addr(), &format!("int.{topic}"), p, end, WAIT).await;
        let source = read_all(&external.addr(), topic, p).await;
        let copied = read_all(&internal.addr(), &format!("int.{topic}"), p).await;
        assert_exactly_once(&source, &copied, topic, p);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicates_every_partition_record_for_record() {
    let (external, internal) = (Broker::start(), Broker::start());
    source_with_records(&external, "orders", 3, 700).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "orders",
            extra: &[],
        },
    );
    service.start();
    assert_partitions_match(&external, &internal, "orders", 3).await;
    assert!(
        service.terminate(Duration::from_secs(30)).success(),
        "{}",
        service.log_text()
    );

    // An independent client (librdkafka through kcat) sees the same: every source offset
    // once per partition, in order.
    for p in 0..3 {
        let out = Command::new(kcat())
            .args([
                "-C",
                "-b",
                &internal.addr(),
                "-t",
                "int.orders",
                "-p",
                &p.to_string(),
                "-o",
                "beginning",
                "-e",
                "-q",
            ])
            .args(["-f", "%h\n"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kcat failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let offsets: Vec<i64> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                line.split(',')
                    .find_map(|h| h.strip_prefix(&format!("{SOURCE_OFFSET_HEADER}=")))
                    .unwrap_or_else(|| panic!("no source offset header in {line:?}"))
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            offsets,
            (0..700).collect::<Vec<i64>>(),
            "partition {p} as kcat reads it"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_skips_existing_records_and_copies_new_ones() {
    let (external, internal) = (Broker::start(), Broker::start());
    source_with_records(&external, "events", 2, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "events",
            extra: &[("connector.auto.offset.reset", "latest")],
        },
    );
    service.start();
    service
        .wait_log("both partitions to pick their start offset", WAIT, |log| {
            log.matches("no checkpoint: fetching from auto.offset.reset")
                .count()
                == 2
        })
        .await;
    for p in 0..2 {
        let pc = partition_client(&external.addr(), "events", p).await;
        produce(&pc, test_records(p, 100, 50)).await;
    }
    for p in 0..2 {
        wait_for_end(&internal.addr(), "int.events", p, 50, WAIT).await;
        let source = read_all(&external.addr(), "events", p).await;
        let copied = read_all(&internal.addr(), "int.events", p).await;
        assert_exactly_once(&source[100..], &copied, "events", p);
    }
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// Produces `batches` batches of 100 records per partition in the background.
fn produce_in_background(
    addr: String,
    topic: &'static str,
    partitions: i32,
    batches: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut clients = Vec::new();
        for p in 0..partitions {
            clients.push(partition_client(&addr, topic, p).await);
        }
        for b in 0..batches {
            for (p, pc) in clients.iter().enumerate() {
                produce(pc, test_records(p as i32, b * 100, 100)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn wait_forwarded_at_least(service: &Service, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        if service
            .last_progress()
            .is_some_and(|(_, forwarded, _)| forwarded >= n)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "service did not forward {n} records; log:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_stream_then_restart_loses_nothing_and_refetches_nothing() {
    let (external, internal) = (Broker::start(), Broker::start());
    create_topic(&external.addr(), "stream", 2).await;
    let producer = produce_in_background(external.addr(), "stream", 2, 60);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "stream",
            extra: &[],
        },
    );
    service.start();
    wait_forwarded_at_least(&service, 1500).await;
    let status = service.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}; log:\n{}",
        service.log_text()
    );

    let checkpoints = wal_fetched_next(&service.data_dir());
    assert_eq!(checkpoints.len(), 2);
    for ((_, partition), fetched_next) in &checkpoints {
        let fetched_next = fetched_next.expect("a checkpoint after a clean stop");
        assert!(fetched_next > 0, "partition {partition} committed nothing");
    }
    std::fs::write(&service.log, "").unwrap();
    service.start();
    // Each partition resumes exactly at its committed checkpoint: no re-fetch.
    for ((topic, partition), fetched_next) in &checkpoints {
        let expected = format!(
            "fetching from the checkpoint partition={topic}/{partition} offset={}",
            fetched_next.unwrap()
        );
        service
            .wait_log(&expected, WAIT, |log| log.contains(&expected))
            .await;
    }
    producer.await.unwrap();
    assert_partitions_match(&external, &internal, "stream", 2).await;
    assert!(service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_three_times_mid_stream_loses_and_duplicates_nothing() {
    let (external, internal) = (Broker::start(), Broker::start());
    create_topic(&external.addr(), "crashy", 3).await;
    let producer = produce_in_background(external.addr(), "crashy", 3, 60);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "crashy",
            extra: &[],
        },
    );
    let mut forwarded_before = 0;
    for round in 0..3u64 {
        std::fs::write(&service.log, "").unwrap();
        service.start();
        wait_forwarded_at_least(&service, 500 + round * 300).await;
        forwarded_before += service.last_progress().unwrap().1;
        service.kill9();
    }
    assert!(forwarded_before > 0);
    std::fs::write(&service.log, "").unwrap();
    service.start();
    producer.await.unwrap();
    assert_partitions_match(&external, &internal, "crashy", 3).await;
    assert!(service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_outage_spools_into_the_wal_then_drains_exactly_once() {
    let (external, internal) = (Broker::start(), Broker::start());
    create_topic(&external.addr(), "spool", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "spool",
            extra: &[],
        },
    );
    service.start();
    service
        .wait_log("the service to start replicating", WAIT, |log| {
            log.matches("no checkpoint: fetching").count() == 2
        })
        .await;

    // Some records flow first, so the forwarders hold open connections to the
    // internal broker when it stops answering: their produce outcome becomes unknown.
    let mut producers = Vec::new();
    for p in 0..2 {
        let pc = partition_client(&external.addr(), "spool", p).await;
        produce(&pc, test_records(p, 0, 100)).await;
        producers.push(pc);
    }
    wait_forwarded_at_least(&service, 200).await;
    internal.pause();
    for (p, pc) in producers.iter().enumerate() {
        produce(pc, test_records(p as i32, 100, 1400)).await;
    }
    // Everything is fetched into the WAL while nothing can be forwarded.
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((fetched, forwarded, wal_bytes)) = service.last_progress() {
            if fetched == 3000 {
                assert!(
                    forwarded < 3000 && wal_bytes > 0,
                    "expected a spooled WAL, got forwarded={forwarded} wal_bytes={wal_bytes}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "WAL did not spool; log:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for produce timeouts (3 s in tests) and reconnect attempts to happen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    internal.resume();

    assert_partitions_match(&external, &internal, "spool", 2).await;
    assert!(
        service.log_text().contains("produce outcome unknown"),
        "the outage must have hit a produce in flight; log:\n{}",
        service.log_text()
    );
    service
        .wait_log("the WAL to drain", WAIT, |_| {
            service
                .last_progress()
                .is_some_and(|(fetched, _, wal_bytes)| fetched == 3000 && wal_bytes == 0)
        })
        .await;
    assert!(service.terminate(Duration::from_secs(30)).success());
}
