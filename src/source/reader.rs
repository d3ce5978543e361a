//! Reads one source partition through the fetch path's own connection
//! ([`crate::wire`]): Fetch (read committed, with the aborted-transactions list) and
//! ListOffsets, on a connection to the partition's leader.

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest};
use kafka_protocol::ResponseError;

use super::batches::{self, AbortedTransaction, Decoded};
use crate::cluster::{Cluster, ClusterError, WireFailure};
use crate::wire::{self, topic_name, Connection, WireError};

/// Fetch versions used: 4 is the first with the aborted-transactions list; 13 replaces
/// topic names with topic ids.
const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=12;
/// ListOffsets versions used: 1 is the first with a single offset per partition.
const LIST_OFFSETS_VERSIONS: std::ops::RangeInclusive<i16> = 1..=7;
/// `isolation_level` READ_COMMITTED.
const READ_COMMITTED: i8 = 1;

/// The answer to one fetch.
#[derive(Debug)]
pub struct Fetched {
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// The records to copy and what was left out.
    pub decoded: Decoded,
}

/// A connection to the leader of one source partition.
#[derive(Debug)]
pub struct PartitionReader {
    conn: Connection,
    topic: String,
    partition: i32,
    fetch_version: i16,
    list_offsets_version: i16,
}

impl PartitionReader {
    /// Finds the partition's leader and connects to it.
    pub async fn connect(
        cluster: &Cluster,
        topic: &str,
        partition: i32,
    ) -> Result<Self, ClusterError> {
        let what = format!("finding the leader of {topic}/{partition}");
        let conn = cluster
            .bounded(
                what.clone(),
                wire::connect_leader(
                    &cluster.servers,
                    &cluster.client_id,
                    topic,
                    partition,
                    cluster.timeout,
                ),
            )
            .await?;
        let unsupported = |e: WireError| cluster.error(what.clone(), e);
        let fetch_version = conn
            .version::<FetchRequest>(FETCH_VERSIONS)
            .map_err(unsupported)?;
        let list_offsets_version = conn
            .version::<ListOffsetsRequest>(LIST_OFFSETS_VERSIONS)
            .map_err(unsupported)?;
        Ok(Self {
            conn,
            topic: topic.to_string(),
            partition,
            fetch_version,
            list_offsets_version,
        })
    }

    /// Fetches from `offset`, up to `max_bytes`, waiting up to `max_wait_ms` for data.
    pub async fn fetch(
        &mut self,
        cluster: &Cluster,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetched, ClusterError> {
        let what = format!(
            "fetching {}/{} at offset {offset}",
            self.topic, self.partition
        );
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(READ_COMMITTED)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(&self.topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(self.partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(max_bytes)])]);
        let version = self.fetch_version;
        let response = cluster
            .bounded(what.clone(), self.conn.call(&request, version))
            .await?;
        let refused = |error| cluster.error(what.clone(), WireFailure::Broker(error));
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            return Err(refused(error));
        }
        let Some(data) = response
            .responses
            .into_iter()
            .filter(|t| *t.topic.0 == self.topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition)
        else {
            // tansu answers a fetch that found nothing within max_wait this way.
            return Ok(Fetched {
                high_watermark: -1,
                decoded: Decoded {
                    batch: crate::record::FetchedBatch {
                        records: Vec::new(),
                        next_offset: offset,
                    },
                    ..Decoded::default()
                },
            });
        };
        if let Some(error) = ResponseError::try_from_code(data.error_code) {
            return Err(refused(error));
        }
        let aborted: Vec<AbortedTransaction> = data
            .aborted_transactions
            .unwrap_or_default()
            .iter()
            .map(|t| AbortedTransaction {
                producer_id: t.producer_id.0,
                first_offset: t.first_offset,
            })
            .collect();
        let decoded = batches::decode(data.records.unwrap_or_default(), offset, &aborted)
            .map_err(|e| cluster.error(what, WireFailure::Batch(e)))?;
        Ok(Fetched {
            high_watermark: data.high_watermark,
            decoded,
        })
    }

    /// The partition's first offset (ListOffsets, earliest).
    pub async fn earliest(&mut self, cluster: &Cluster) -> Result<i64, ClusterError> {
        let what = format!(
            "reading the earliest offset of {}/{}",
            self.topic, self.partition
        );
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(READ_COMMITTED)
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(&self.topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(self.partition)
                    .with_timestamp(-2)])]);
        let version = self.list_offsets_version;
        let response = cluster
            .bounded(what.clone(), self.conn.call(&request, version))
            .await?;
        let answer = response
            .topics
            .into_iter()
            .filter(|t| *t.name.0 == self.topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition);
        match answer {
            Some(p) => match ResponseError::try_from_code(p.error_code) {
                Some(error) => Err(cluster.error(what, WireFailure::Broker(error))),
                None => Ok(p.offset),
            },
            None => Err(cluster.error(
                what,
                WireFailure::Broker(ResponseError::UnknownTopicOrPartition),
            )),
        }
    }
}
