//! The JSON the API writes and the CLI reads, as types both use: a field is named once.
//!
//! Shapes follow the Kafka Connect REST API (status per task, KIP-875 offsets); the
//! fields beyond Connect's are kafka-direct's own (docs/api.md). Every field has a
//! default when read, so the CLI reads answers of a service one version older or newer.

use serde::{Deserialize, Serialize};

/// `GET /connectors/{name}/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectorStatus {
    /// The connector's name.
    pub name: String,
    /// The connector's own state.
    pub connector: ConnectorSummary,
    /// One task per source partition.
    pub tasks: Vec<TaskStatus>,
    /// Always `source`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// The connector's own state in a [`ConnectorStatus`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectorSummary {
    /// `RUNNING`, `PAUSED`, `STOPPED`, `FAILED`, `UNASSIGNED`.
    pub state: String,
    /// This instance's API address.
    pub worker_id: String,
    /// kafka-direct's version (Kafka Connect: the connector plugin's).
    pub version: String,
    /// Why the connector could not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// One source partition's task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskStatus {
    /// The task's number within the connector.
    pub id: usize,
    /// `RUNNING`, `PAUSED`, `FAILED`, …
    pub state: String,
    /// This instance's API address.
    pub worker_id: String,
    /// kafka-direct's version (Kafka Connect: the task plugin's).
    pub version: String,
    /// The source topic.
    pub topic: String,
    /// The source partition.
    pub partition: i32,
    /// The source partition's high watermark, once known.
    pub high_watermark: Option<i64>,
    /// The next source offset to fetch, once known.
    pub fetched_next: Option<i64>,
    /// The next source offset to forward, once known.
    pub forwarded_next: Option<i64>,
    /// Records not fetched yet.
    pub lag: i64,
    /// Records fetched, not forwarded yet.
    pub wal_backlog: i64,
    /// Records fetched since the start.
    pub records_fetched: u64,
    /// Records stored in the internal partition since the start.
    pub records_forwarded: u64,
    /// Records stored in the dead-letter topic since the start.
    pub records_dead_lettered: u64,
    /// A produce's outcome is unknown (the next start reads the tail settled).
    pub produce_in_doubt: bool,
    /// Source offsets skipped because retention or DeleteRecords removed them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_offsets: Option<SkippedOffsets>,
    /// Why the task failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// Offsets a task skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkippedOffsets {
    /// How many.
    pub total: u64,
    /// The last range, `first..last`.
    pub last: String,
}

/// `GET /connectors/{name}/offsets` (KIP-875).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Offsets {
    /// One entry per partition with a checkpoint.
    pub offsets: Vec<PartitionOffset>,
}

/// One partition's offset in [`Offsets`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartitionOffset {
    /// The source partition.
    pub partition: KafkaPartition,
    /// The next source offset to forward.
    pub offset: KafkaOffset,
}

/// A source partition, in Connect's names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaPartition {
    /// The topic.
    pub kafka_topic: String,
    /// The partition.
    pub kafka_partition: i32,
}

/// An offset, in Connect's names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaOffset {
    /// Everything below it is stored (in the internal or the dead-letter topic).
    pub kafka_offset: i64,
}
