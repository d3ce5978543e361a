//! Types shared by every stage of the pipeline: where a record came from and what it holds.
//!
//! The fetcher produces these, the WAL stores them, the forwarder consumes them; none of
//! those stages needs to know the others' Kafka clients.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One partition of a source topic, as seen by one connector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePartition {
    /// Topic name on the external cluster.
    pub topic: String,
    /// Partition number; the internal topic uses the same number.
    pub partition: i32,
}

impl SourcePartition {
    /// A source partition.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// A hash that is the same on every run, build and machine: FNV-1a of the topic
    /// name plus the partition number, so a topic's partitions take consecutive values
    /// (they spread evenly over shards and dead-letter partitions).
    pub fn stable_hash(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.topic.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        hash.wrapping_add(self.partition as u64)
    }
}

impl fmt::Display for SourcePartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A record read from the external cluster, with its real source offset.
///
/// Header keys are bytes as they are on the wire (Kafka's clients write UTF-8, a
/// librdkafka producer may write anything); header values are optional because Kafka
/// allows a header with a null value. Duplicate keys are kept, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct SourceRecord {
    /// Offset in the source partition (offsets may have gaps).
    pub offset: i64,
    /// Record timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key bytes; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` is a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers in the order they were read, duplicates kept.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl SourceRecord {
    /// Approximate payload size in bytes (key, value and headers).
    pub fn approximate_size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }
}

/// A fetched batch: consecutive records of one source partition, stored as one WAL entry.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
pub struct FetchedBatch {
    /// Records in source-offset order; never empty.
    pub records: Vec<SourceRecord>,
    /// The offset to fetch after this batch (`fetched_next` once it is committed).
    pub next_offset: i64,
}

impl FetchedBatch {
    /// Offset of the first record.
    pub fn first_offset(&self) -> i64 {
        self.records.first().map_or(self.next_offset, |r| r.offset)
    }
}

/// Names of the headers the forwarder adds to every record it writes.
///
/// The tail check reads them back to find what is already stored, so they are part
/// of the exactly-once mechanism and must never change meaning.
pub mod source_headers {
    /// Source topic name.
    pub const TOPIC: &str = "kafka-direct.source.topic";
    /// Source partition number, decimal.
    pub const PARTITION: &str = "kafka-direct.source.partition";
    /// Source offset, decimal.
    pub const OFFSET: &str = "kafka-direct.source.offset";
}

/// Milliseconds since `timestamp_ms` (a record's timestamp) by this machine's clock.
pub(crate) fn age_ms(timestamp_ms: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    now - timestamp_ms
}
