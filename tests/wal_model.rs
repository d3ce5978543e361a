//! Property test of the WAL against a plain in-memory model: random sequences of
//! appends (records, gaps, record-less position moves), commits, releases of forwarded
//! entries, start-up alignments (`resume_from`), segment compactions and
//! close-and-reopen, over two partitions. After every step the WAL must hold exactly what the model holds.
//!
//! A reopen here follows a clean close (sled flushes when its last handle drops); crashes
//! with kill -9 are the torture harness's part (tests/torture.rs).

#![allow(clippy::disallowed_methods)]

use kafka_direct::record::{FetchedBatch, SourcePartition, SourceRecord};
use kafka_direct::wal::{PartitionLog, SyncPolicy, Wal, WalError, WalOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch of `records` records to partition `p`, after skipping `gap`
    /// offsets (compaction, markers); 0 records is a position move only.
    Append {
        p: usize,
        records: usize,
        gap: i64,
    },
    Commit,
    /// Release the first `entries` entries of partition `p` (they were forwarded).
    ReleaseEntries {
        p: usize,
        entries: usize,
    },
    /// Release by position: everything below the offset `back` records before the end.
    Release {
        p: usize,
        back: i64,
    },
    /// Align with an internal partition storing everything below `fetched_next - back`.
    ResumeFrom {
        p: usize,
        back: i64,
    },
    /// Move the live entries of the emptiest segment (if at most half live).
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..6usize, 0..3i64).prop_map(|(p, records, gap)| Op::Append { p, records, gap }),
        2 => Just(Op::Commit),
        2 => (0..2usize, 0..4usize).prop_map(|(p, entries)| Op::ReleaseEntries { p, entries }),
        1 => (0..2usize, 0..8i64).prop_map(|(p, back)| Op::Release { p, back }),
        1 => (0..2usize, -3..8i64).prop_map(|(p, back)| Op::ResumeFrom { p, back }),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default, Clone, PartialEq)]
struct ModelPartition {
    entries: Vec<FetchedBatch>,
    fetched_next: Option<i64>,
    forwarded_next: Option<i64>,
}

impl ModelPartition {
    fn release(&mut self, forwarded_next: i64) {
        // Entries wholly below the position go, in order, stopping at the first that
        // does not (as the WAL does).
        let keep = self
            .entries
            .iter()
            .position(|e| e.first_offset() >= forwarded_next || e.next_offset > forwarded_next)
            .unwrap_or(self.entries.len());
        self.entries.drain(..keep);
        self.forwarded_next = Some(forwarded_next);
    }
}

fn record(offset: i64) -> SourceRecord {
    SourceRecord {
        offset,
        timestamp_ms: 1_700_000_000_000 + offset,
        key: (offset % 3 != 0).then(|| format!("k{offset}").into_bytes()),
        value: (offset % 5 != 0).then(|| vec![offset as u8; (offset % 40) as usize]),
        headers: vec![("h".into(), (offset % 2 == 0).then(|| b"v".to_vec()))],
    }
}

fn options() -> WalOptions {
    WalOptions {
        sync: SyncPolicy::Flush,
        max_bytes: 1 << 30,
        cache_bytes: 1 << 20,
    }
}

fn open(dir: &std::path::Path) -> (Wal, Vec<PartitionLog>) {
    // sled's flusher thread lets go of a closed database (and its lock) shortly after
    // the last handle is dropped: a reopen within the same process may have to wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let wal = loop {
        match Wal::open(dir, options()) {
            Err(WalError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => break result.unwrap(),
        }
    };
    let logs = (0..2)
        .map(|p| wal.partition("c", &SourcePartition::new("t", p)).unwrap())
        .collect();
    (wal, logs)
}

fn check(wal: &Wal, logs: &[PartitionLog], model: &[ModelPartition]) -> Result<(), TestCaseError> {
    let held: usize = model
        .iter()
        .flat_map(|m| &m.entries)
        .map(|e| kafka_direct::wal::codec::encode(e).len())
        .sum();
    prop_assert_eq!(wal.used_bytes(), held as u64);
    for (log, m) in logs.iter().zip(model) {
        let cp = log.checkpoints().unwrap();
        prop_assert_eq!(cp.fetched_next, m.fetched_next);
        prop_assert_eq!(cp.forwarded_next, m.forwarded_next);
        let entries = log.oldest(usize::MAX, usize::MAX).unwrap();
        prop_assert_eq!(&entries, &m.entries);
        let stats = log.stats().unwrap();
        prop_assert_eq!(stats.entries as usize, m.entries.len());
        prop_assert_eq!(stats.damaged_entries, 0);
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, mut logs) = open(dir.path());
    let mut model = vec![ModelPartition::default(); 2];

    for op in ops {
        match op {
            Op::Append { p, records, gap } => {
                let start = model[p].fetched_next.unwrap_or(0) + gap;
                let batch = FetchedBatch {
                    records: (start..start + records as i64).map(record).collect(),
                    next_offset: start + records as i64,
                };
                if batch.next_offset == model[p].fetched_next.unwrap_or(0) && records == 0 {
                    continue; // nothing to move
                }
                logs[p].append(&batch).unwrap();
                if !batch.records.is_empty() {
                    model[p].entries.push(batch.clone());
                }
                model[p].fetched_next = Some(batch.next_offset);
            }
            Op::Commit => runtime.block_on(wal.commit()).unwrap(),
            Op::ReleaseEntries { p, entries } => {
                let n = entries.min(model[p].entries.len());
                let released: Vec<i64> = model[p].entries[..n]
                    .iter()
                    .map(FetchedBatch::first_offset)
                    .collect();
                let forwarded_next = model[p].entries[..n]
                    .last()
                    .map(|e| e.next_offset)
                    .or(model[p].forwarded_next)
                    .unwrap_or(0);
                logs[p].release_entries(&released, forwarded_next).unwrap();
                model[p].entries.drain(..n);
                model[p].forwarded_next = Some(forwarded_next);
            }
            Op::Release { p, back } => {
                let to = (model[p].fetched_next.unwrap_or(0) - back).max(0);
                logs[p].release(to).unwrap();
                model[p].release(to);
            }
            Op::ResumeFrom { p, back } => {
                let stored_next = (model[p].fetched_next.unwrap_or(0) - back).max(0);
                logs[p].resume_from(stored_next).unwrap();
                model[p].release(stored_next);
                if model[p].fetched_next.is_none_or(|f| f < stored_next) {
                    model[p].fetched_next = Some(stored_next);
                }
            }
            Op::Compact => {
                wal.compact(std::time::Duration::ZERO).unwrap();
            }
            Op::Reopen => {
                drop(logs);
                drop(wal);
                (wal, logs) = open(dir.path());
            }
        }
        check(&wal, &logs, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_wal_always_agrees_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

#[test]
fn used_bytes_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, logs) = open(dir.path());
    for i in 0..10 {
        logs[0]
            .append(&FetchedBatch {
                records: (i * 3..i * 3 + 3).map(record).collect(),
                next_offset: i * 3 + 3,
            })
            .unwrap();
    }
    logs[0].release(9).unwrap();
    let before = wal.used_bytes();
    assert!(before > 0);
    drop(logs);
    drop(wal);
    let (wal, _logs) = open(dir.path());
    assert_eq!(wal.used_bytes(), before);
}
