//! Faults around the process: a damaged WAL, a full disk, an internal broker that holds
//! requests past every timeout (docs/reliability.md).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(120);

fn wal_cli(args: &[&str], data_dir: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .arg("wal")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Damaged WAL files of a stopped service (bytes flipped in the segment file holding
/// the entries) are detected when the WAL is opened: `wal check` and `run` exit 1 naming
/// the data dir and the way to recover, nothing is forwarded from it, and the documented
/// recovery (move the data dir aside, start again) copies every record exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_wal_is_refused_and_the_documented_recovery_copies_exactly_once() {
    let mut p = Pipeline::isolated("damage", 1, &[]).await;
    p.service.start();
    p.service
        .wait_log("replication to start", WAIT, |log| {
            log.contains("no checkpoint: fetching")
        })
        .await;
    // The internal broker stops answering: what is fetched stays in the WAL.
    p.internal.pause();
    p.produce_each(0, 3000).await;
    p.service
        .wait_log("the WAL to hold every record", WAIT, |log| {
            progress_field(log, "fetched") == Some(3000)
        })
        .await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
    let data = p.service.data_dir();
    let (code, text) = wal_cli(&["check"], &data);
    assert_eq!(code, Some(0), "{text}");

    // The entries' bytes live in segment files: damage the first one.
    let mut segments: Vec<_> = walkdir(&data)
        .into_iter()
        .filter(|f| f.parent().is_some_and(|d| d.ends_with("segments")))
        .collect();
    segments.sort();
    let segment = segments.first().expect("a segment file in the WAL");
    let mut bytes = std::fs::read(segment).unwrap();
    for b in &mut bytes[1000..1016] {
        *b ^= 0xa5;
    }
    std::fs::write(segment, bytes).unwrap();

    let (code, text) = wal_cli(&["check"], &data);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("is damaged") && text.contains(&data.display().to_string()),
        "{text}"
    );
    p.internal.resume();
    p.service.start();
    let status = p.service.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1));
    let log = p.service.log_text();
    assert!(
        log.contains("is damaged") && log.contains("move the data dir aside"),
        "{log}"
    );
    let stored_before = end_offset(&p.internal.addr(), "int.damage", 0).await;
    assert!(stored_before < 3000, "the WAL's records were held back");

    // The recovery of docs/operations.md.
    std::fs::rename(&data, data.with_extension("damaged")).unwrap();
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A small tmpfs for a data dir, unmounted on drop. Mounting needs root (the test
/// machines and CI run as root); without it the test fails saying so.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs to fill a disk and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "remounting the tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The data dir's disk fills up (a 12 MiB tmpfs) while the internal cluster does not
/// answer: the service stops, exit 1, saying the WAL write failed for lack of space and
/// what to do. Once there is space again (the tmpfs grown) a restart copies every record
/// exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_service_clearly_and_a_restart_loses_nothing() {
    let disk = Tmpfs::mount("12m");
    let data = disk.dir.path().join("data");
    let mut p = Pipeline::isolated("full", 2, &[("data.dir", data.to_str().unwrap())]).await;
    p.service.start();
    p.service
        .wait_log("replication to start", WAIT, |log| {
            log.matches("no checkpoint: fetching").count() == 2
        })
        .await;
    p.internal.pause();
    p.produce_each(0, 20_000).await; // ~15 MB per partition
    let status = p.service.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1));
    let log = p.service.log_text();
    assert!(
        log.contains("writing the WAL failed")
            && log.contains("No space left on device")
            && log.contains("Free space in data.dir"),
        "{log}"
    );

    disk.resize("256m");
    p.internal.resume();
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// The internal broker stops (SIGSTOP) with produce requests in flight and stays stopped
/// for three times `request.timeout.ms`: kafka-direct gives up on the requests, connects
/// again (the kernel accepts the connection, the broker answers nothing) and sends the
/// same batches again, which wait too. When the broker resumes it reads both the old
/// requests and the re-sent ones. The old tail-check design could not exclude storing
/// such a held request twice (it waited 1.5 s for the tail to settle); the broker's
/// deduplication of the idempotent producer's sequence numbers does: every record is
/// stored once.
#[tokio::test(flavor = "multi_thread")]
async fn requests_held_by_a_stopped_broker_past_the_timeout_are_stored_once() {
    let mut p = Pipeline::isolated(
        "held",
        2,
        &[
            ("request.timeout.ms", "2000"),
            ("forward.batch.max.records", "20"),
        ],
    )
    .await;
    p.service.start();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce_in_background_until(&p, 40, recent_records, Arc::clone(&stop));
    wait_for_end(&p.internal.addr(), "int.held", 0, 300, WAIT).await;
    p.internal.pause();
    tokio::time::sleep(Duration::from_secs(6)).await;
    p.internal.resume();
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    p.assert_replicated(0, WAIT).await;
    let log = p.service.log_text();
    let resent = counter_sum(&p.service.metrics().await, "produce_resent_batches");
    assert!(
        resent >= 1 && log.contains("send the batches in flight again"),
        "the broker stopped with no batch in flight: the test did not test that; log:\n{log}"
    );
    eprintln!("{resent} batches sent again while the broker held the first ones");
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// `/ready`'s status code and body.
async fn ready(service: &Service) -> (u16, String) {
    let api = kafka_direct::cli::client::ApiClient::new(&service.api().await, None);
    tokio::task::spawn_blocking(move || api.call("GET", "/ready").expect("the API answers"))
        .await
        .unwrap()
}

/// `kafka_direct_waiting_for_cluster` of connector `test`: [external, internal].
async fn waiting_for_cluster(p: &Pipeline) -> [i64; 2] {
    let metrics = p.service.metrics().await;
    ["external", "internal"].map(|cluster| {
        let series = format!(
            "kafka_direct_waiting_for_cluster{{connector=\"test\",cluster=\"{cluster}\"}} "
        );
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("no {series}in /metrics:\n{metrics}"));
        line[series.len()..].parse().unwrap()
    })
}

/// A cluster down when the service starts is waited for, never a crash loop: with the
/// internal cluster down, the partitions with a stored position are fetched into the WAL
/// from the start and forwarded once it answers; a first start (an empty WAL, the
/// internal topic already holding copies) waits, then goes on after what is stored; with
/// the external cluster down, the service waits for it. `/ready` says what it waits for;
/// every record is copied exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn clusters_down_at_start_are_waited_for_and_the_wal_spools_meanwhile() {
    let mut p = Pipeline::isolated("downstart", 2, &[]).await;
    p.produce_each(0, 200).await;
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    // The internal cluster down at start, the WAL holding positions: it spools.
    p.internal.kill9();
    p.produce_each(200, 300).await;
    p.service.start();
    p.service
        .wait_log("the spool to start", WAIT, |log| {
            log.contains("fetching into the WAL while the internal cluster does not answer")
        })
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while counter_sum(&p.service.metrics().await, "records_fetched") < 600 {
        assert!(
            std::time::Instant::now() < deadline,
            "the 600 new records were not fetched into the WAL while the internal cluster was down; log:\n{}",
            p.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body) = ready(&p.service).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting for the internal cluster")
            && body.contains("internal.bootstrap.servers"),
        "{body}"
    );
    assert_eq!(waiting_for_cluster(&p).await, [0, 1], "external, internal");
    p.internal.start_again();
    p.assert_replicated(0, WAIT).await;
    assert_eq!(waiting_for_cluster(&p).await, [0, 0], "external, internal");
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    // A first start, the data dir lost, the internal cluster down: nothing to spool
    // (where each partition starts depends on the internal topic); once it answers, the
    // start-up tail check goes on after what it holds.
    std::fs::remove_dir_all(p.service.data_dir()).unwrap();
    p.internal.kill9();
    p.produce_each(500, 100).await;
    let waited = |log: &str| log.matches("waiting for the internal cluster").count();
    let before = waited(&p.service.log_text());
    p.service.start();
    p.service
        .wait_log("the wait for the internal cluster", WAIT, |log| {
            waited(log) > before
        })
        .await;
    let (code, body) = ready(&p.service).await;
    assert_eq!(code, 503, "{body}");
    p.internal.start_again();
    p.assert_replicated(0, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());

    // The external cluster down at start: waited for, then copied from the positions.
    p.produce_each(600, 100).await;
    p.external.kill9();
    p.service.start();
    p.service
        .wait_log("the wait for the external cluster", WAIT, |log| {
            log.contains(
                "waiting for the external cluster (key `connector.kafka.bootstrap.servers`)",
            )
        })
        .await;
    let (code, body) = ready(&p.service).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&p.external.addr()), "{body}");
    assert_eq!(waiting_for_cluster(&p).await, [1, 0], "external, internal");
    p.external.start_again();
    p.assert_replicated(0, WAIT).await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}
