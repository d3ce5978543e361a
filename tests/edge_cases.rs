//! The client library's edge cases a replicator must survive (see docs/compatibility.md).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use rskafka::record::Record;

const WAIT: Duration = Duration::from_secs(120);
/// The most connections a connector may hold to a one-broker external cluster: the
/// fetch session, and the consumer group's commits.
const SOURCE_CONNECTIONS: usize = 2;
/// The most the service may hold to a one-broker internal cluster: the session for the
/// tail reads and producer ids, the produce session, and the admin client (topics).
const INTERNAL_CONNECTIONS: usize = 3;

/// A proxy swallows produce responses after the broker stored the batch, many times,
/// with several batches in flight. kafka-direct's idempotent producer sends the batches
/// in flight again with the same producer id and sequence numbers, and the broker itself
/// refuses to store one twice: every record is stored once, and the tail of the internal
/// partition was never read to find out (no settle). Then records from 2023, whose
/// producer state the broker may drop at any check: after a lost response the tail is
/// read and settled instead, and still every record is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn lost_produce_responses_never_store_a_record_twice() {
    let (mut proxy, listener) = CuttingProxy::bind().await;
    let internal = Broker::start_advertising(Some(proxy.port));
    proxy.forward_to(listener, internal.port);
    // Produce requests of 30 records split each fetched entry (100 records) in pieces,
    // several in flight at once, so a lost response leaves an entry partly answered.
    let mut p =
        Pipeline::with_internal("cuts", 2, &[("forward.batch.max.records", "30")], internal).await;
    p.service.start();
    p.service
        .wait_log("replication to start", WAIT, |log| {
            log.matches("no checkpoint: fetching").count() == 2
        })
        .await;

    // A session's first batch goes alone and, if its answer is lost, the tail is read:
    // before it is stored the broker takes any sequence number.
    for partition in 0..2 {
        let pc = partition_client(&p.external.addr(), "cuts", partition).await;
        produce(&pc, recent_records(partition, 0, 100)).await;
    }
    p.assert_replicated(0, WAIT).await;
    let settled_before = p.service.log_text().matches("tail re-read").count();

    let started = Instant::now();
    for round in 1..25 {
        for partition in 0..2 {
            let pc = partition_client(&p.external.addr(), "cuts", partition).await;
            produce(&pc, recent_records(partition, round * 100, 100)).await;
        }
        proxy.cut_next(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    proxy.stop_cutting();
    p.assert_replicated(0, WAIT).await;
    let cuts = proxy.cuts_done.load(Ordering::SeqCst);
    let log = p.service.log_text();
    let resent = log
        .matches("send the batches in flight again with the same producer id")
        .count();
    assert!(cuts >= 10, "only {cuts} responses were cut");
    assert!(
        resent >= 3,
        "only {resent} produce outcomes were unknown and re-sent; log:\n{log}"
    );
    let resent_batches = counter_sum(&p.service.metrics().await, "produce_resent_batches");
    assert!(
        resent_batches >= resent as u64,
        "{resent_batches} batches re-sent for {resent} unknown outcomes"
    );
    assert_eq!(
        log.matches("tail re-read").count(),
        settled_before,
        "the broker deduplicated: no tail check was needed; log:\n{log}"
    );
    eprintln!(
        "{cuts} responses cut, {resent} produce outcomes unknown, {resent_batches} batches re-sent, in {:?}",
        started.elapsed()
    );

    for round in 25..30 {
        p.produce_each(round * 100, 100).await; // 2023 timestamps
        proxy.cut_next(1);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    proxy.stop_cutting();
    p.assert_replicated(0, WAIT).await;
    let log = p.service.log_text();
    assert!(
        log.matches("tail re-read").count() > settled_before,
        "old records: the tail was read after a lost response; log:\n{log}"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// The internal topic takes record batches of at most 20 000 bytes (`max.message.bytes`),
/// far below `forward.batch.max.bytes`: the broker refuses the first batches whole, the
/// idempotent producer sends the same records again in smaller batches from the refused
/// batch's sequence number, and every record is stored once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn batches_the_internal_topic_refuses_as_too_large_go_again_smaller() {
    let mut p = Pipeline::new("toolarge", 1, &[]).await;
    kafka_tool(
        "kafka-topics",
        &[
            "--bootstrap-server",
            &p.internal.addr(),
            "--create",
            "--topic",
            "int.toolarge",
            "--partitions",
            "1",
            "--config",
            "max.message.bytes=20000",
        ],
    );
    let pc = partition_client(&p.external.addr(), "toolarge", 0).await;
    produce(&pc, recent_records(0, 0, 1000)).await;
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    let log = p.service.log_text();
    assert!(
        log.contains("refused a produce as larger than the topic's max.message.bytes"),
        "{log}"
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
        let header = format!("codec={codec}");
        let args = ["-z", codec, "-K", "\t", "-H", &header];
        kcat_produce(
            &p.external.addr(),
            "codecs",
            partition as i32,
            &args,
            &lines,
        );
    }
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    for partition in 0..4 {
        let copied = read_all(&p.internal.addr(), "int.codecs", partition).await;
        assert_eq!(copied.len(), 500, "partition {partition}");
    }
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// A header with a null value (legal in Kafka, written here by librdkafka) made
/// rskafka's fetch fail at that offset forever. The record is copied, the header kept
/// null, and the records after it follow.
#[tokio::test(flavor = "multi_thread")]
async fn null_header_values_do_not_stop_a_partition() {
    let mut p = Pipeline::new("nulls", 1, &[]).await;
    let addr = p.external.addr();
    kcat_produce(&addr, "nulls", 0, &[], "a0\na1\na2\n");
    kcat_produce(
        &addr,
        "nulls",
        0,
        &["-H", "absent", "-H", "present=1"],
        "b0\nb1\n",
    );
    kcat_produce(&addr, "nulls", 0, &[], "c0\nc1\n");
    // The source really holds null header values.
    let source = kcat_read(&addr, "nulls", 0, "%s %h");
    assert_eq!(source[3], "b0 absent=NULL,present=1", "{source:?}");

    p.service.start();
    wait_for_end(&p.internal.addr(), "int.nulls", 0, 7, WAIT).await;
    // Read back with kcat: rskafka cannot read a null header value (the reason the
    // fetcher does not use it), and the copy keeps it null.
    let copied = kcat_read(&p.internal.addr(), "int.nulls", 0, "%s %h");
    let user_headers: Vec<String> = copied
        .iter()
        .map(|line| {
            let (value, headers) = line.split_once(' ').unwrap();
            let user: Vec<&str> = headers
                .split(',')
                .filter(|h| !h.starts_with("kafka-direct."))
                .collect();
            format!("{value} {}", user.join(","))
        })
        .collect();
    assert_eq!(
        user_headers,
        [
            "a0 ",
            "a1 ",
            "a2 ",
            "b0 absent=NULL,present=1",
            "b1 absent=NULL,present=1",
            "c0 ",
            "c1 "
        ],
        "records in order, each once, null header values still null"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// The copy carries exactly the source's headers: Kafka allows duplicate keys and their
/// order is part of the record (a map would turn `a=1,b=x,a=2` into `a=2,b=x`), null
/// values stay null, and kafka-direct's headers come after them, even when the source
/// record already has headers of the same names (a copy of a copy). And a topic with
/// `message.timestamp.type=LogAppendTime` gives every record the broker's append time:
/// the copy has that time, not the producer's create time. Read by kcat on both sides.
#[tokio::test(flavor = "multi_thread")]
async fn every_header_is_copied_in_order_with_duplicates_and_log_append_time_is_kept() {
    let mut p = Pipeline::new("faithful", 2, &[]).await;
    let addr = p.external.addr();
    kafka_tool(
        "kafka-configs",
        &[
            "--bootstrap-server",
            &addr,
            "--alter",
            "--entity-type",
            "topics",
            "--entity-name",
            "faithful",
            "--add-config",
            "message.timestamp.type=LogAppendTime",
        ],
    );
    let headers = [
        "-H",
        "a=1",
        "-H",
        "b=x",
        "-H",
        "a=2",
        "-H",
        "n",
        "-H",
        "kafka-direct.source.offset=77",
        "-H",
        "a=3",
    ];
    kcat_produce(&addr, "faithful", 0, &headers, "d0\nd1\n");
    // Create time 2023-11-14 (test_records); the broker stamps its append time.
    let pc = partition_client(&addr, "faithful", 1).await;
    produce(&pc, test_records(1, 0, 20)).await;

    let source = kcat_read(&addr, "faithful", 0, "%s %h");
    let own = "a=1,b=x,a=2,n=NULL,kafka-direct.source.offset=77,a=3";
    assert_eq!(source, [format!("d0 {own}"), format!("d1 {own}")]);
    p.service.start();
    // Not read by rskafka, which cannot read a null header value.
    wait_for_end(&p.internal.addr(), "int.faithful", 0, 2, WAIT).await;
    wait_for_end(&p.internal.addr(), "int.faithful", 1, 20, WAIT).await;

    let copied = kcat_read(&p.internal.addr(), "int.faithful", 0, "%s %h");
    let want: Vec<String> = (0..2)
        .map(|i| {
            format!(
                "d{i} {own},kafka-direct.source.topic=faithful,kafka-direct.source.partition=0,kafka-direct.source.offset={i}"
            )
        })
        .collect();
    assert_eq!(copied, want, "every header, in order, then ours");

    let stamps = |broker: &str, topic: &str| -> Vec<i64> {
        kcat_read(broker, topic, 1, "%T")
            .iter()
            .map(|t| t.parse().unwrap())
            .collect()
    };
    let source_times = stamps(&addr, "faithful");
    assert_eq!(source_times.len(), 20);
    assert!(
        source_times.iter().all(|&t| t > 1_750_000_000_000),
        "the source holds append times, not the 2023 create times: {source_times:?}"
    );
    assert_eq!(
        stamps(&p.internal.addr(), "int.faithful"),
        source_times,
        "each copy has its source record's append time"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// Transactions written by librdkafka's transactional producer leave control records
/// (markers) in the partition. A fetch that returns only a marker must move past it:
/// rskafka returned no record and no offset there, and the partition stopped for good.
/// Records of aborted transactions must never be copied (tansu 0.6 does not store
/// them at all; the filtering itself is tested on encoded batches in
/// `source::batches`).
#[tokio::test(flavor = "multi_thread")]
async fn transaction_markers_never_stop_a_partition() {
    let mut p = Pipeline::new("txns", 1, &[]).await;
    let (external, internal) = (p.external.addr(), p.internal.addr());
    p.service.start();
    p.service
        .wait_log("replication to start", WAIT, |log| {
            log.contains("no checkpoint: fetching")
        })
        .await;

    // The fetcher catches up with this transaction, then sits on its marker.
    produce_transactions(&external, "txns", 0, &["commit:3"]);
    wait_for_end(&internal, "int.txns", 0, 3, WAIT).await;
    produce_transactions(
        &external,
        "txns",
        0,
        &["commit:2", "abort:2", "plain:2", "commit:1"],
    );
    if let Err(now) = reach_end(&internal, "int.txns", 0, 8, WAIT).await {
        panic!(
            "int.txns reached {now}, not 8; log:\n{}",
            p.service.log_text()
        );
    }

    let expected = [
        "0-commit-0",
        "0-commit-1",
        "0-commit-2",
        "0-commit-0",
        "0-commit-1",
        "2-plain-0",
        "2-plain-1",
        "3-commit-0",
    ];
    let copied = kcat_read(&internal, "int.txns", 0, "%s");
    assert_eq!(copied, expected, "committed and plain records, each once");
    // Source offsets carried over: each copied record names its own source offset.
    let source = kcat_read(&external, "txns", 0, "%o %s");
    let copied_offsets = kcat_read(&internal, "int.txns", 0, "%s %h");
    for (src, copy) in source.iter().zip(&copied_offsets) {
        let (offset, value) = src.split_once(' ').unwrap();
        assert!(copy.starts_with(value), "{copy} vs {src}");
        assert!(
            copy.contains(&format!("kafka-direct.source.offset={offset}")),
            "{copy} vs {src}"
        );
    }
    // The position moves past the last marker too: nothing is reported as lagging.
    p.service
        .wait_log("lag 0 in a progress line", WAIT, |log| {
            progress_field(log, "lag") == Some(0) && progress_field(log, "forwarded") == Some(8)
        })
        .await;
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// An open transaction holds the copy at the last stable offset, as it holds a
/// read_committed consumer: records another producer writes after it wait until it
/// ends, then follow in source order, with the transaction's records once if it commits
/// and never if it aborts.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_transaction_holds_the_copy_at_the_last_stable_offset_until_it_ends() {
    let mut p = Pipeline::new("opentxn", 1, &[]).await;
    let (external, internal) = (p.external.addr(), p.internal.addr());
    p.service.start();
    produce_transactions(&external, "opentxn", 0, &["commit:2"]);
    wait_for_end(&internal, "int.opentxn", 0, 2, WAIT).await;

    for (round, commit) in [(0, true), (1, false)] {
        let before = end_offset(&internal, "int.opentxn", 0).await;
        let held = HeldTransaction::open(&external, "opentxn", 0, 3);
        let after = format!("after-{round}-0\nafter-{round}-1\n");
        kcat_produce(&external, "opentxn", 0, &[], &after);
        // Nothing past the open transaction is copied while it stays open: the records
        // after it sit above the last stable offset.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            end_offset(&internal, "int.opentxn", 0).await,
            before,
            "round {round}: records copied past an open transaction; log:\n{}",
            p.service.log_text()
        );
        let expected = if commit {
            held.commit();
            before + 5
        } else {
            held.abort();
            before + 2
        };
        if let Err(now) = reach_end(&internal, "int.opentxn", 0, expected, WAIT).await {
            panic!(
                "round {round}: int.opentxn reached {now}, not {expected}, once the transaction ended; log:\n{}",
                p.service.log_text()
            );
        }
    }
    let copied = kcat_read(&internal, "int.opentxn", 0, "%s");
    assert_eq!(
        copied,
        [
            "0-commit-0",
            "0-commit-1",
            "0-hold-0",
            "0-hold-1",
            "0-hold-2",
            "after-0-0",
            "after-0-1",
            "after-1-0",
            "after-1-1"
        ],
        "committed and plain records in source order, each once; the aborted ones never"
    );
    // Kafka's own console consumer reads the same.
    let read = kafka_tool(
        "kafka-console-consumer",
        &[
            "--bootstrap-server",
            &internal,
            "--topic",
            "int.opentxn",
            "--partition",
            "0",
            "--offset",
            "earliest",
            "--max-messages",
            "9",
            "--timeout-ms",
            "20000",
        ],
    );
    assert_eq!(
        read.lines().collect::<Vec<_>>(),
        copied,
        "kafka-console-consumer"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// A compacted source topic (Kafka's log cleaner removed superseded records): the copy
/// holds exactly the records that survived, each once with its own source offset (the
/// offsets have gaps), tombstones (null values) included.
#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_source_topic_is_copied_exactly_with_its_gaps_and_tombstones() {
    // A cleaner that looks every half second instead of every 15.
    let external =
        Broker::start_kafka(None, &["--set".into(), "log.cleaner.backoff.ms=500".into()]);
    let (_, internal) = shared_brokers();
    let addr = external.addr();
    create_topic_with_configs(
        &addr,
        "compacted",
        1,
        &[
            "cleanup.policy=compact",
            "segment.ms=100",
            "min.cleanable.dirty.ratio=0.01",
            "delete.retention.ms=86400000",
        ],
    );
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // Ten keys written five times each, in rounds that land in segments of their own;
    // a last round writes the even keys again, deleting two of them (tombstones), so
    // the odd keys survive from the fifth round and the offsets have gaps.
    let pc = partition_client(&addr, "compacted", 0).await;
    for round in 0..6 {
        let records = (0..10)
            .filter(|k| round < 5 || k % 2 == 0)
            .map(|k| Record {
                key: Some(format!("key-{k}").into_bytes()),
                value: (round < 5 || k >= 4).then(|| format!("round-{round}-key-{k}").into_bytes()),
                headers: BTreeMap::new(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(now_ms()).unwrap(),
            })
            .collect();
        produce(&pc, records).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One more record rolls the last round's segment, so the cleaner may take it too.
    let roller = Record {
        key: Some(b"roller".to_vec()),
        value: Some(b"last".to_vec()),
        headers: BTreeMap::new(),
        timestamp: rskafka::chrono::DateTime::from_timestamp_millis(now_ms()).unwrap(),
    };
    produce(&pc, vec![roller]).await;
    let deadline = Instant::now() + WAIT;
    let source = loop {
        let source = read_all(&addr, "compacted", 0).await;
        // 5 odd keys of the fifth round, 5 even keys of the last (2 of them
        // tombstones), the record that rolled the segment.
        if source.len() == 11 {
            break source;
        }
        assert!(
            Instant::now() < deadline,
            "the log cleaner left {} of 56 records",
            source.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let offsets: Vec<i64> = source.iter().map(|r| r.offset).collect();
    assert!(
        offsets.windows(2).any(|w| w[1] > w[0] + 1),
        "compaction leaves gaps: {offsets:?}"
    );
    assert!(
        source.iter().any(|r| r.record.value.is_none()),
        "tombstones are kept"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &addr,
            internal: &internal.addr(),
            topics: "compacted",
            extra: &[],
        },
    );
    service.start();
    wait_for_end(
        &internal.addr(),
        "int.compacted",
        0,
        source.len() as i64,
        WAIT,
    )
    .await;
    let copied = read_all(&internal.addr(), "int.compacted", 0).await;
    assert_exactly_once(&source, &copied, "compacted", 0);
    assert_eq!(copied.len(), source.len(), "one copy per surviving record");
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// `auto.offset.reset=latest` while a transaction is open starts where a read_committed
/// consumer does, at the last stable offset: the open transaction's records are copied
/// once it commits (starting at the high watermark would skip them), and the records
/// before it are not.
#[tokio::test(flavor = "multi_thread")]
async fn latest_starts_below_a_transaction_still_open() {
    let mut p = Pipeline::new("latetxn", 1, &[("connector.auto.offset.reset", "latest")]).await;
    let (external, internal) = (p.external.addr(), p.internal.addr());
    kcat_produce(&external, "latetxn", 0, &[], "before-0\nbefore-1\n");
    let held = HeldTransaction::open(&external, "latetxn", 0, 3);
    kcat_produce(&external, "latetxn", 0, &[], "after-0\n");
    p.service.start();
    p.service
        .wait_log("the start offset", WAIT, |log| {
            log.contains("no checkpoint: fetching from auto.offset.reset")
        })
        .await;
    let log = p.service.log_text();
    assert!(
        log.contains("offset=2 policy=Latest"),
        "latest must start at the open transaction (offset 2): {log}"
    );
    held.commit();
    wait_for_end(&internal, "int.latetxn", 0, 4, WAIT).await;
    let copied = kcat_read(&internal, "int.latetxn", 0, "%s");
    assert_eq!(copied, ["0-hold-0", "0-hold-1", "0-hold-2", "after-0"]);
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}

/// Every partition a source broker leads is fetched over one connection shared by all
/// of them (one Fetch per round for every partition that asks), and every partition an
/// internal broker leads is produced to over one (one Produce per round, pipelined), so
/// 24 partitions hold a few connections to each broker, not one each. Counted from
/// /proc, as the benchmark counts them. On Apache Kafka only (this binary is not in
/// tansu's subset): on tansu the internal topic ends up with 4 partitions when its source
/// has more (docs/compatibility.md).
#[tokio::test(flavor = "multi_thread")]
async fn partitions_share_one_connection_per_broker_and_direction() {
    const PARTITIONS: i32 = 24;
    let mut p = Pipeline::new("many", PARTITIONS, &[]).await;
    p.produce_each(0, 200).await;
    p.service.start();
    p.assert_replicated(0, WAIT).await;
    let port = |b: &Broker| -> u16 { b.addr().rsplit(':').next().unwrap().parse().unwrap() };
    let ports = [vec![port(&p.external)], vec![port(&p.internal)]];
    let [external, internal] = connections_to(p.service.pid(), &ports);
    eprintln!(
        "connections held: {external} to the external broker, {internal} to the internal one"
    );
    assert!(
        external <= SOURCE_CONNECTIONS,
        "{external} connections to the external broker for {PARTITIONS} partitions (at most {SOURCE_CONNECTIONS})"
    );
    assert!(
        internal <= INTERNAL_CONNECTIONS,
        "{internal} connections to the internal broker for {PARTITIONS} partitions (at most {INTERNAL_CONNECTIONS})"
    );
    assert!(p.service.terminate(Duration::from_secs(30)).success());
}
