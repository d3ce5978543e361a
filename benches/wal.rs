//! Micro-benchmarks of the replication path without a network: WAL entry encode/decode,
//! append + group commit, drain (read + delete), produce-batch encoding, and the whole
//! in-process path (fetched record batch → WAL → produce batch).
//!
//! `cargo bench --bench wal` prints records/s for each case (criterion "elements");
//! docs/benchmarks.md holds this machine's figures.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_direct::config::Compression;
use kafka_direct::forward::writer::encode_batch;
use kafka_direct::record::{FetchedBatch, SourcePartition, SourceRecord};
use kafka_direct::source::batches;
use kafka_direct::wal::{codec, SyncPolicy, Wal, WalOptions};

fn batch(first: i64, records: usize, size: usize) -> FetchedBatch {
    FetchedBatch {
        records: (0..records)
            .map(|i| SourceRecord {
                offset: first + i as i64,
                timestamp_ms: 1_700_000_000_000 + i as i64,
                key: Some(format!("key-{i}").into_bytes()),
                value: Some(vec![(i % 251) as u8; size]),
                headers: vec![("trace".to_owned(), Some(b"abc".to_vec()))],
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
        let refs: Vec<&SourceRecord> = b.records.iter().collect();
        group.throughput(Throughput::Elements(1000));
        for (compression, name) in [(Compression::None, "none"), (Compression::Lz4, "lz4")] {
            group.bench_function(BenchmarkId::new(format!("1000_{name}"), size), |bench| {
                bench.iter(|| encode_batch(&source, &refs, compression).expect("encode"))
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
        let refs: Vec<&SourceRecord> = produced.records.iter().collect();
        let fetched = encode_batch(&source, &refs, Compression::None).expect("encode");
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
                    let refs: Vec<&SourceRecord> = entry.records.iter().collect();
                    encode_batch(&source, &refs, Compression::None).expect("encode");
                }
                let firsts: Vec<i64> = entries.iter().map(|e| e.first_offset()).collect();
                log.release_entries(&firsts, decoded.batch.next_offset)
                    .expect("release");
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    codec_bench,
    append_commit_bench,
    drain_bench,
    produce_encode_bench,
    in_process_path_bench
);
criterion_main!(benches);
