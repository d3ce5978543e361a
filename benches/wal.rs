//! WAL micro-benchmarks: batch encode/decode, and append + group commit.
//!
//! `cargo bench --bench wal` prints records/s for each case (criterion "elements").

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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

fn append_commit_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("wal_append_commit");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    for (sync, name) in [(SyncPolicy::Fsync, "fsync"), (SyncPolicy::Flush, "flush")] {
        for (records, size) in [(1usize, 100usize), (100, 100), (1000, 100), (1000, 1024)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let wal = Wal::open(
                dir.path(),
                WalOptions {
                    sync,
                    max_bytes: u64::MAX,
                    cache_bytes: 64 << 20,
                },
            )
            .expect("open WAL");
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

criterion_group!(benches, codec_bench, append_commit_bench);
criterion_main!(benches);
