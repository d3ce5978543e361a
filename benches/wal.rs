//! Micro-benchmarks of the replication path without a network: WAL entry encode/decode,
//! append + group commit, drain (read + delete), produce-batch encoding, and the whole
//! in-process path (fetched record batch → WAL → produce batch), and the latency
//! histogram every acknowledged record is counted in.
//!
//! `cargo bench --features unstable --bench wal` prints records/s for each case (criterion "elements");
//! docs/benchmarks.md holds this machine's figures.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_direct::config::Compression;
use kafka_direct::config::Format;
use kafka_direct::format::registry::SchemaRegistry;
use kafka_direct::format::schema::Schema;
use kafka_direct::format::{Formatter, Verdict};
use kafka_direct::kafka::batches;
use kafka_direct::kafka::produce::{encode_batch, Outgoing};
use kafka_direct::kafka::records::Producer;
use kafka_direct::record::{FetchedBatch, SourcePartition, SourceRecord};
use kafka_direct::wal::{codec, SyncPolicy, Wal, WalOptions};

fn batch(first: i64, records: usize, size: usize) -> FetchedBatch {
    FetchedBatch {
        records: (0..records)
            .map(|i| SourceRecord {
                offset: first + i as i64,
                timestamp_ms: 1_700_000_000_000 + i as i64,
                key: Some(format!("key-{i}").into_bytes()),
                value: Some(vec![(i % 251) as u8; size]),
                headers: vec![(b"trace".to_vec(), Some(b"abc".to_vec()))],
            })
            .collect(),
        next_offset: first + records as i64,
    }
}

fn codec_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [100usize, 1024] {
        let b = batch(0, 1000, size);
        let bytes = codec::encode(&b);
        group.throughput(Throughput::Elements(1000));
        group.bench_with_input(BenchmarkId::new("encode_1000", size), &b, |bench, b| {
            bench.iter(|| codec::encode(b))
        });
        group.bench_with_input(
            BenchmarkId::new("decode_1000", size),
            &bytes,
            |bench, bytes| bench.iter(|| codec::decode(bytes).expect("valid entry")),
        );
    }
    group.finish();
}

fn open_wal(dir: &std::path::Path, sync: SyncPolicy) -> Wal {
    Wal::open(
        dir,
        WalOptions {
            sync,
            max_bytes: u64::MAX,
            cache_bytes: 64 << 20,
        },
    )
    .expect("open WAL")
}

fn append_commit_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("wal_append_commit");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    for (sync, name) in [(SyncPolicy::Fsync, "fsync"), (SyncPolicy::Flush, "flush")] {
        for (records, size) in [(1usize, 100usize), (100, 100), (1000, 100), (1000, 1024)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let wal = open_wal(dir.path(), sync);
            let log = wal
                .partition("bench", &SourcePartition::new("t", 0))
                .expect("partition");
            let mut next = 0i64;
            group.throughput(Throughput::Elements(records as u64));
            group.bench_function(
                BenchmarkId::new(name, format!("{records}x{size}B")),
                |bench| {
                    bench.iter(|| {
                        let b = batch(next, records, size);
                        log.append(&b).expect("append");
                        runtime.block_on(wal.commit()).expect("commit");
                        // Keep the WAL small, as the forwarder would.
                        log.release(b.next_offset).expect("release");
                        next = b.next_offset;
                    })
                },
            );
        }
    }
    group.finish();
}

/// Reading the oldest entries and deleting them, as the forwarder does once they are stored.
fn drain_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_drain");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    for size in [100usize, 1024] {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open_wal(dir.path(), SyncPolicy::Flush);
        let log = wal
            .partition("bench", &SourcePartition::new("t", 0))
            .expect("partition");
        let mut next = 0i64;
        group.throughput(Throughput::Elements(1000));
        group.bench_function(BenchmarkId::new("read_delete_1000", size), |bench| {
            // Only the read + delete is timed; the append before each one is not.
            bench.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let b = batch(next, 1000, size);
                    log.append(&b).expect("append");
                    next = b.next_offset;
                    let started = std::time::Instant::now();
                    let entries = log.oldest(usize::MAX, usize::MAX).expect("read");
                    let firsts: Vec<i64> = entries.iter().map(|e| e.first_offset()).collect();
                    let last = entries.last().expect("an entry").next_offset;
                    log.release_entries(&firsts, last).expect("delete");
                    timed += started.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

/// Encoding the produce request's record batch (source headers added).
fn produce_encode_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("produce_encode");
    let source = SourcePartition::new("orders", 3);
    for size in [100usize, 1024] {
        let b = batch(0, 1000, size);
        let refs: Vec<Outgoing<'_>> = b.records.iter().map(Outgoing::plain).collect();
        group.throughput(Throughput::Elements(1000));
        for (compression, name) in [(Compression::None, "none"), (Compression::Lz4, "lz4")] {
            group.bench_function(BenchmarkId::new(format!("1000_{name}"), size), |bench| {
                bench.iter(|| {
                    encode_batch(&source, &refs, compression, Producer::NONE).expect("encode")
                })
            });
        }
    }
    group.finish();
}

/// The whole path without a network, per 1000 records: a fetched record batch decoded,
/// appended to the WAL and committed (fsync), read back, encoded as a produce batch, and
/// released.
fn in_process_path_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("in_process_path");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    let source = SourcePartition::new("t", 0);
    for size in [100usize, 1024] {
        // The fetched bytes: what a broker returns for 1000 records (encoded once).
        let produced = batch(0, 1000, size);
        let refs: Vec<Outgoing<'_>> = produced.records.iter().map(Outgoing::plain).collect();
        let fetched =
            encode_batch(&source, &refs, Compression::None, Producer::NONE).expect("encode");
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open_wal(dir.path(), SyncPolicy::Fsync);
        let log = wal.partition("bench", &source).expect("partition");
        group.throughput(Throughput::Elements(1000));
        group.bench_function(BenchmarkId::new("fsync_1000", size), |bench| {
            bench.iter(|| {
                let decoded = batches::decode(fetched.clone(), 0, &[]).expect("decode");
                log.append(&decoded.batch).expect("append");
                runtime.block_on(wal.commit()).expect("commit");
                let entries = log.oldest(usize::MAX, usize::MAX).expect("read");
                for entry in &entries {
                    let refs: Vec<Outgoing<'_>> =
                        entry.records.iter().map(Outgoing::plain).collect();
                    encode_batch(&source, &refs, Compression::None, Producer::NONE)
                        .expect("encode");
                }
                let firsts: Vec<i64> = entries.iter().map(|e| e.first_offset()).collect();
                log.release_entries(&firsts, decoded.batch.next_offset)
                    .expect("release");
            })
        });
    }
    group.finish();
}

/// A typical order event of about 1 KiB.
fn order_json(i: usize) -> Vec<u8> {
    let items: Vec<serde_json::Value> = (0..5)
        .map(|n| {
            serde_json::json!({"sku": format!("SKU-{:06}", i * 7 + n), "qty": n + 1,
                "price": 9.99 + n as f64, "title": "A product with a reasonably long title"})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "id": i, "created_at": "2026-11-24T20:00:00Z", "status": "PAID",
        "customer": {"id": i * 3, "name": "Jane Example", "email": "jane@example.com",
                     "address": {"street": "1 Long Street Name", "city": "Springfield", "zip": "12345"}},
        "items": items, "total": 123.45, "currency": "EUR", "coupon": null,
        "referrer": "https://www.example.com/campaigns/winter?utm_source=newsletter&utm_medium=email",
        "tags": ["gift", "express", "fragile", "priority"], "shipping": {"method": "courier", "eta_days": 2},
        "note": "Leave the parcel at the door, please; ring twice and wait a minute. Thanks!"
    }))
    .expect("serializes")
}

/// Per record: JSON parse, schema check + envelope, schema inference (1 KiB objects).
fn formats_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("formats");
    let records: Vec<SourceRecord> = (0..1000)
        .map(|i| SourceRecord {
            offset: i as i64,
            timestamp_ms: 0,
            key: None,
            value: Some(order_json(i)),
            headers: vec![],
        })
        .collect();
    let size = records[0].value.as_ref().map_or(0, Vec::len);
    group.throughput(Throughput::Elements(1000));
    let check_all = |f: &Formatter| {
        for r in &records {
            let checked = f.check(r).expect("no WAL error");
            assert!(!matches!(checked, Verdict::Reject(_)));
        }
    };
    let string = Formatter::new(Format::String, None);
    group.bench_function(BenchmarkId::new("string_utf8_check_1000", size), |b| {
        b.iter(|| check_all(&string))
    });
    let json = Formatter::new(Format::Json, None);
    group.bench_function(BenchmarkId::new("json_parse_1000", size), |b| {
        b.iter(|| check_all(&json))
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), SyncPolicy::Flush);
    let registry = std::sync::Arc::new(SchemaRegistry::open(&wal, "bench").expect("registry"));
    let schemas = Formatter::new(Format::Json, Some((registry, "int.orders".into())));
    check_all(&schemas); // version 1 exists before the measurement
    group.bench_function(BenchmarkId::new("json_schema_envelope_1000", size), |b| {
        b.iter(|| check_all(&schemas))
    });
    let values: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().expect("value")).expect("json"))
        .collect();
    group.bench_function(BenchmarkId::new("schema_inference_1000", size), |b| {
        b.iter(|| {
            for v in &values {
                Schema::infer_record(v).expect("an object");
            }
        })
    });
    group.finish();
}

/// The end-to-end latency histogram (prometheus-client's, a mutex per observation),
/// observed once per acknowledged record: its cost per record.
fn latency_histogram_bench(c: &mut Criterion) {
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    let ages: Vec<f64> = (0..1000).map(|i| (i % 97) as f64 / 1000.0).collect();
    let mut group = c.benchmark_group("latency_histogram");
    group.throughput(Throughput::Elements(ages.len() as u64));
    let histogram = Histogram::new(exponential_buckets(0.001, 2.0, 17));
    group.bench_function("observe_per_record/1000", |b| {
        b.iter(|| {
            for &age in &ages {
                histogram.observe(age);
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    latency_histogram_bench,
    formats_bench,
    codec_bench,
    append_commit_bench,
    drain_bench,
    produce_encode_bench,
    in_process_path_bench
);
criterion_main!(benches);
