//! The client library's edge cases a replicator must survive (see docs/compatibility.md).

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(120);

/// rskafka retries a produce inside one call when the connection breaks, without an
/// idempotent producer; kafka-direct must turn that off and retry behind a tail check.
/// Here a proxy swallows responses after the broker stored the batch, many times.
#[tokio::test(flavor = "multi_thread")]
async fn lost_produce_responses_never_store_a_record_twice() {
    let (mut proxy, listener) = CuttingProxy::bind().await;
    let internal = Broker::start_advertising(Some(proxy.port));
    proxy.forward_to(listener, internal.port);
    // Produce requests of 30 records split each fetched entry (100 records) in pieces, so
    // a lost response can leave an entry partly stored: only the tail check tells which part.
    let mut p =
        Pipeline::with_internal("cuts", 2, &[("forward.batch.max.records", "30")], internal).await;
    p.service.start();
    p.service
        .wait_log("replication to start", WAIT, |log| {
            log.matches("no checkpoint: fetching").count() == 2
        })
        .await;

    let started = Instant::now();
    for round in 0..25 {
        p.produce_each(round * 100, 100).await;
        proxy.cut_next(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    p.assert_replicated(0, WAIT).await;
    let cuts = proxy.cuts_done.load(Ordering::SeqCst);
    let unknown = p
        .service
        .log_text()
        .matches("produce outcome unknown")
        .count();
    assert!(cuts >= 10, "only {cuts} responses were cut");
    assert!(
        unknown >= 3,
        "only {unknown} produce outcomes were unknown; log:\n{}",
        p.service.log_text()
    );
    eprintln!(
        "{cuts} responses cut, {unknown} produce outcomes unknown, in {:?}",
        started.elapsed()
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// Batches compressed by librdkafka with every codec Kafka has are read and copied.
#[tokio::test(flavor = "multi_thread")]
async fn compressed_source_batches_of_every_codec_are_replicated() {
    let mut p = Pipeline::new("codecs", 4, &[]).await;
    for (partition, codec) in ["gzip", "lz4", "zstd", "snappy"].iter().enumerate() {
        let lines: String = (0..500)
            .map(|i| format!("k{i}\t{codec}-value-{i}-{}\n", "x".repeat(i % 97)))
            .collect();
        let mut kcat = Command::new(kcat())
            .args([
                "-P",
                "-b",
                &p.external.addr(),
                "-t",
                "codecs",
                "-p",
                &partition.to_string(),
            ])
            .args(["-z", codec, "-K", "\t", "-H", &format!("codec={codec}")])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        kcat.stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        assert!(kcat.wait().unwrap().success(), "kcat -z {codec} failed");
    }
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    for partition in 0..4 {
        let copied = read_all(&p.internal.addr(), "int.codecs", partition).await;
        assert_eq!(copied.len(), 500, "partition {partition}");
    }
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}
