//! Live counters per partition and latency histograms per connector, shared by the
//! fetcher, the forwarder, the progress log and the API (`/metrics`, `/status`).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

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
    /// Bytes (key+value+headers, as fetched) acknowledged by the internal cluster since start.
    pub forwarded_bytes: AtomicU64,
    /// Fetches that failed and were retried.
    pub fetch_errors: AtomicU64,
    /// Produces to the internal partition that failed (outcome unknown) and were resolved.
    pub produce_errors: AtomicU64,
    /// Produces to the dead-letter topic that failed and were resolved.
    pub dead_letter_errors: AtomicU64,
    /// Records acknowledged by the dead-letter topic since start, per
    /// [`ErrorKind::index`].
    pub dead_lettered: [AtomicU64; ErrorKind::ALL.len()],
    /// Records of aborted transactions dropped by the fetcher since start.
    pub aborted_records: AtomicU64,
    /// Produce acknowledgements whose offsets were not the expected partition end.
    pub unexpected_produce_offsets: AtomicU64,
    /// Batches sent again with their producer id, epoch and sequence after an unknown
    /// outcome (the broker stores each once).
    pub resent_batches: AtomicU64,
    /// Re-sent batches a broker answered as already stored (DUPLICATE_SEQUENCE_NUMBER).
    pub deduplicated_batches: AtomicU64,
    /// Producer sessions renewed (new epoch or id) after the broker lost or refused
    /// their sequence state.
    pub producer_resets: AtomicU64,
    /// Source offsets skipped because they were no longer in the source partition
    /// (removed by retention or DeleteRecords before they were copied), since start.
    pub skipped_offsets: AtomicU64,
    /// The last skipped range, `from..to` (to exclusive), for the status.
    pub skipped_range: Mutex<Option<(i64, i64)>>,
    /// Source high watermark at the last fetch (-1 before the first).
    pub source_high_watermark: AtomicI64,
    /// Next source offset to fetch (-1 before it is known).
    pub fetched_next: AtomicI64,
    /// Next source offset to forward (-1 before it is known).
    pub forwarded_next: AtomicI64,
    /// A produce's outcome is unknown and the internal partition's tail has not been
    /// re-read since (the broker may still store that request).
    pub produce_in_doubt: AtomicBool,
    /// A fetch has come back from the broker since start.
    pub fetched_once: AtomicBool,
    /// A produce has been acknowledged since start, or the forwarder found nothing to
    /// forward: the internal side works or has nothing to prove.
    pub forwarder_ready: AtomicBool,
    state: AtomicU8,
    error: Mutex<Option<String>>,
}

/// `ahead − behind` of two positions, 0 while either is unknown (-1) or when behind is
/// ahead (the two are read one after the other).
fn gap(ahead: &AtomicI64, behind: &AtomicI64) -> i64 {
    let (ahead, behind) = (
        ahead.load(Ordering::Relaxed),
        behind.load(Ordering::Relaxed),
    );
    if ahead < 0 || behind < 0 {
        0
    } else {
        (ahead - behind).max(0)
    }
}

/// What a partition's tasks (its fetcher and forwarder) are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskState {
    /// Checking the internal partition's tail before the tasks start.
    Starting = 0,
    /// Fetching and forwarding.
    Running,
    /// Waiting for the connector to be resumed.
    Paused,
    /// Stopped on an error ([`PartitionMetrics::error`] says which).
    Failed,
    /// Stopped on request (shutdown).
    Stopped,
}

impl TaskState {
    /// The name the API uses (Kafka Connect's, plus STARTING).
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Paused => "PAUSED",
            TaskState::Failed => "FAILED",
            TaskState::Stopped => "STOPPED",
        }
    }

    /// Every state.
    pub const ALL: [TaskState; 5] = [
        TaskState::Starting,
        TaskState::Running,
        TaskState::Paused,
        TaskState::Failed,
        TaskState::Stopped,
    ];
}

impl PartitionMetrics {
    /// Zeroed counters.
    pub fn new(partition: SourcePartition) -> Self {
        Self {
            partition,
            fetched_records: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            forwarded_records: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
            fetch_errors: AtomicU64::new(0),
            produce_errors: AtomicU64::new(0),
            dead_letter_errors: AtomicU64::new(0),
            dead_lettered: Default::default(),
            aborted_records: AtomicU64::new(0),
            unexpected_produce_offsets: AtomicU64::new(0),
            resent_batches: AtomicU64::new(0),
            deduplicated_batches: AtomicU64::new(0),
            producer_resets: AtomicU64::new(0),
            skipped_offsets: AtomicU64::new(0),
            skipped_range: Mutex::new(None),
            source_high_watermark: AtomicI64::new(-1),
            fetched_next: AtomicI64::new(-1),
            forwarded_next: AtomicI64::new(-1),
            produce_in_doubt: AtomicBool::new(false),
            fetched_once: AtomicBool::new(false),
            forwarder_ready: AtomicBool::new(false),
            state: AtomicU8::new(0),
            error: Mutex::new(None),
        }
    }

    /// The tasks' state.
    pub fn state(&self) -> TaskState {
        TaskState::ALL[self.state.load(Ordering::Relaxed) as usize]
    }

    /// Sets the state, unless the tasks already failed (a failure stays visible).
    pub fn set_state(&self, state: TaskState) {
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now != TaskState::Failed as u8).then_some(state as u8)
            });
    }

    /// Marks the tasks failed with `error`.
    pub fn fail(&self, error: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        self.state.store(TaskState::Failed as u8, Ordering::Relaxed);
    }

    /// Why the tasks failed, if they did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Source records not fetched yet: high watermark minus the next offset to fetch
    /// (0 when unknown).
    pub fn source_lag(&self) -> i64 {
        gap(&self.source_high_watermark, &self.fetched_next)
    }

    /// Source offsets fetched into the WAL but not yet forwarded (0 when unknown).
    pub fn wal_backlog(&self) -> i64 {
        gap(&self.fetched_next, &self.forwarded_next)
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
        gap(&self.source_high_watermark, &self.forwarded_next)
    }
}

/// Latency histograms of one connector, in seconds. Cheap to clone (shared buckets).
#[derive(Debug, Clone)]
pub struct Latencies {
    /// One fetch request, sent to answered.
    pub fetch: Histogram,
    /// One produce request to an internal partition, sent to acknowledged.
    pub produce: Histogram,
    /// Source record timestamp to its acknowledgement by the internal cluster.
    pub end_to_end: Histogram,
}

impl Latencies {
    /// Empty histograms with buckets from 1 ms to about 65 s (doubling).
    pub fn new() -> Self {
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        Self {
            fetch: buckets(),
            produce: buckets(),
            end_to_end: buckets(),
        }
    }

    /// Records one produce of records with these timestamps (ms since the epoch).
    pub fn observe_produce(&self, took: Duration, timestamps_ms: impl Iterator<Item = i64>) {
        self.produce.observe(took.as_secs_f64());
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        for ts in timestamps_ms {
            // A clock ahead of ours (or a made-up timestamp) counts as no delay.
            self.end_to_end
                .observe((now_ms - ts).max(0) as f64 / 1000.0);
        }
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}
