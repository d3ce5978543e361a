//! Live counters per partition, shared by the fetcher, the forwarder and the progress log.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::format::ErrorKind;
use crate::record::SourcePartition;

/// Counters of one source partition. Updated with relaxed atomics: figures, not locks.
#[derive(Debug)]
pub struct PartitionMetrics {
    /// The partition.
    pub partition: SourcePartition,
    /// Records committed to the WAL since start.
    pub fetched_records: AtomicU64,
    /// Bytes (key+value+headers) committed to the WAL since start.
    pub fetched_bytes: AtomicU64,
    /// Records acknowledged by the internal cluster since start.
    pub forwarded_records: AtomicU64,
    /// Records acknowledged by the dead-letter topic since start, per
    /// [`ErrorKind::index`].
    pub dead_lettered: [AtomicU64; ErrorKind::ALL.len()],
    /// Records of aborted transactions dropped by the fetcher since start.
    pub aborted_records: AtomicU64,
    /// Produce acknowledgements whose offsets were not the expected partition end.
    pub unexpected_produce_offsets: AtomicU64,
    /// Source high watermark at the last fetch (-1 before the first).
    pub source_high_watermark: AtomicI64,
    /// Next source offset to fetch (-1 before it is known).
    pub fetched_next: AtomicI64,
    /// Next source offset to forward (-1 before it is known).
    pub forwarded_next: AtomicI64,
    /// A produce's outcome is unknown and the internal partition's tail has not been
    /// re-read since (the broker may still store that request).
    pub produce_in_doubt: AtomicBool,
}

impl PartitionMetrics {
    /// Zeroed counters.
    pub fn new(partition: SourcePartition) -> Self {
        Self {
            partition,
            fetched_records: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            forwarded_records: AtomicU64::new(0),
            dead_lettered: Default::default(),
            aborted_records: AtomicU64::new(0),
            unexpected_produce_offsets: AtomicU64::new(0),
            source_high_watermark: AtomicI64::new(-1),
            fetched_next: AtomicI64::new(-1),
            forwarded_next: AtomicI64::new(-1),
            produce_in_doubt: AtomicBool::new(false),
        }
    }

    /// Records sent to the dead-letter topic since start, all kinds.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Records in the source not yet forwarded (0 when unknown).
    pub fn lag(&self) -> i64 {
        let hw = self.source_high_watermark.load(Ordering::Relaxed);
        let forwarded = self.forwarded_next.load(Ordering::Relaxed);
        if hw < 0 || forwarded < 0 {
            0
        } else {
            (hw - forwarded).max(0)
        }
    }
}
