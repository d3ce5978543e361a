//! End-to-end guarantees of the core pipeline, against two real brokers.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn replicates_every_partition_record_for_record() {
    let mut p = Pipeline::new("orders", 3, &[]).await;
    p.produce_each(0, 700).await;
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    assert!(
        p.service.terminate(Duration::from_secs(30)).success(),
        "{}",
        p.service.log_text()
    );

    // An independent client (librdkafka through kcat) sees the same: every source offset
    // once per partition, in order.
    for partition in 0..3 {
        let out = Command::new(kcat())
            .args([
                "-C",
                "-b",
                &p.internal.addr(),
                "-t",
                "int.orders",
                "-p",
                &partition.to_string(),
            ])
            .args(["-o", "beginning", "-e", "-q", "-f", "%h\n"])
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
            "partition {partition} as kcat reads it"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_skips_existing_records_and_copies_new_ones() {
    let mut p = Pipeline::new("events", 2, &[("connector.auto.offset.reset", "latest")]).await;
    p.produce_each(0, 100).await;
    p.service.start();
    p.service
        .wait_log("both partitions to pick their start offset", WAIT, |log| {
            log.matches("no checkpoint: fetching from auto.offset.reset")
                .count()
                == 2
        })
        .await;
    p.produce_each(100, 50).await;
    p.assert_replicated(100, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// Produces `batches` batches of 100 records per partition in the background.
fn produce_in_background(p: &Pipeline, batches: usize) -> tokio::task::JoinHandle<()> {
    produce_in_background_with(p, batches, test_records)
}

async fn wait_forwarded_at_least(service: &Service, n: u64) {
    service
        .wait_log(&format!("{n} records forwarded"), WAIT, |_| {
            service
                .last_progress()
                .is_some_and(|(_, forwarded, _)| forwarded >= n)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_stream_then_restart_loses_nothing_and_refetches_nothing() {
    let mut p = Pipeline::new("stream", 2, &[]).await;
    let producer = produce_in_background(&p, 60);
    p.service.start();
    wait_forwarded_at_least(&p.service, 1500).await;
    let status = p.service.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}; log:\n{}",
        p.service.log_text()
    );

    let checkpoints = wal_fetched_next(&p.service.data_dir());
    assert_eq!(checkpoints.len(), 2);
    for ((_, partition), fetched_next) in &checkpoints {
        let fetched_next = fetched_next.expect("a checkpoint after a clean stop");
        assert!(fetched_next > 0, "partition {partition} committed nothing");
    }
    std::fs::write(&p.service.log, "").unwrap();
    p.service.start();
    // Each partition resumes exactly at its committed checkpoint: no re-fetch.
    for ((topic, partition), fetched_next) in &checkpoints {
        let expected = format!(
            "fetching from the checkpoint partition={topic}/{partition} offset={}",
            fetched_next.unwrap()
        );
        p.service
            .wait_log(&expected, WAIT, |log| log.contains(&expected))
            .await;
    }
    producer.await.unwrap();
    p.assert_replicated(0, WAIT).await;
    assert!(
        !p.service.log_text().contains(NOT_CLEAN),
        "a clean stop needs no settling at the next start"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// Logged at start-up when the previous run may have left a produce request behind.
const NOT_CLEAN: &str = "the previous run did not stop cleanly";

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_three_times_mid_stream_loses_and_duplicates_nothing() {
    // Small produce requests: WAL entries are forwarded in several pieces, so crashes
    // also land between the pieces of one entry.
    let mut p = Pipeline::new("crashy", 3, &[("forward.batch.max.bytes", "65536")]).await;
    // Records keep arriving until the last restart, so every round has something to
    // forward however long the restarts take (each settles after its crash).
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce_in_background_until(&p, 60, test_records, Arc::clone(&stop));
    for round in 0..3u64 {
        std::fs::write(&p.service.log, "").unwrap();
        p.service.start();
        wait_forwarded_at_least(&p.service, 500 + round * 300).await;
        assert_eq!(
            p.service.log_text().contains(NOT_CLEAN),
            round > 0,
            "after a crash (and only then) the start-up tail check settles"
        );
        p.service.kill9();
    }
    std::fs::write(&p.service.log, "").unwrap();
    p.service.start();
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    p.assert_replicated(0, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_outage_spools_into_the_wal_then_drains_exactly_once() {
    let mut p = Pipeline::isolated("spool", 2, &[]).await;
    p.service.start();
    // Some records flow first, so the forwarders hold open connections to the internal
    // broker when it stops answering: their produce outcome becomes unknown.
    p.produce_each(0, 100).await;
    wait_forwarded_at_least(&p.service, 200).await;
    p.internal.pause();
    p.produce_each(100, 1400).await;

    // Everything is fetched into the WAL while nothing can be forwarded.
    p.service
        .wait_log("every record fetched into the WAL", WAIT, |_| {
            p.service
                .last_progress()
                .is_some_and(|(fetched, _, _)| fetched == 3000)
        })
        .await;
    // The internal broker is stopped, so these figures cannot move any more.
    let (_, forwarded, wal_bytes) = p.service.last_progress().expect("a progress line");
    assert!(
        forwarded < 3000 && wal_bytes > 0,
        "expected a spooled WAL, got forwarded={forwarded} wal_bytes={wal_bytes}"
    );
    // Long enough for produce timeouts (3 s in tests) and reconnect attempts to happen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    p.internal.resume();

    p.assert_replicated(0, WAIT).await;
    assert!(
        p.service.log_text().contains("produce outcome unknown"),
        "the outage must have hit a produce in flight; log:\n{}",
        p.service.log_text()
    );
    p.service
        .wait_log("the WAL to drain", WAIT, |_| {
            p.service
                .last_progress()
                .is_some_and(|(fetched, _, wal_bytes)| fetched == 3000 && wal_bytes == 0)
        })
        .await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn source_outage_longer_than_the_timeout_recovers_by_itself() {
    let mut p = Pipeline::isolated("flaky", 2, &[]).await;
    p.service.start();
    p.produce_each(0, 200).await;
    wait_forwarded_at_least(&p.service, 400).await;
    p.external.pause();
    // Longer than request.timeout.ms (3 s in tests): fetches time out and reconnect.
    tokio::time::sleep(Duration::from_secs(7)).await;
    p.external.resume();
    p.produce_each(200, 300).await;
    p.assert_replicated(0, WAIT).await;
    let log = p.service.log_text();
    assert!(
        log.contains("fetch failed; reconnecting"),
        "the outage must have failed a fetch; log:\n{log}"
    );
    assert!(
        log.contains("fetching works again"),
        "recovery must be logged; log:\n{log}"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_data_dir_resumes_from_the_internal_topic_without_duplicates() {
    let mut p = Pipeline::new("rebuild", 2, &[]).await;
    p.produce_each(0, 300).await;
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    // The WAL is gone (disk replaced, data dir deleted): the internal topic's tail says
    // where each partition stands, whatever auto.offset.reset says.
    std::fs::remove_dir_all(p.service.data_dir()).unwrap();
    p.produce_each(300, 200).await;
    std::fs::write(&p.service.log, "").unwrap();
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    let log = p.service.log_text();
    assert_eq!(
        log.matches("internal partition already stores everything below this source offset")
            .count(),
        2,
        "{log}"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}
