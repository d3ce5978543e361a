//! Reads one source partition through the fetch path's own connection
//! ([`crate::kafka::connection`]): Fetch (read committed, with the aborted-transactions list) and
//! ListOffsets, on a connection to the partition's leader.

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::kafka::batches::{self, AbortedTransaction, Decoded};
use crate::kafka::cluster::{Cluster, ClusterError, WireFailure, READ_WAITS_MS};
use crate::kafka::connection::{self, topic_name, Connection, WireError};

/// Fetch versions used: 4 is the first with the aborted-transactions list; 11 is the
/// last before the flexible encoding (12), whose tagged fields add nothing used here and
/// which tansu 0.6 with SQLite storage gets wrong (it writes the v16 NodeEndpoints tag
/// into v12 answers, which the decoder rightly refuses: docs/compatibility.md). The cap
/// serves tansu; on Kafka (4.x accepts 4 to 17) it costs only KIP-951's leader hint, a
/// metadata request when a leader moves.
pub(crate) const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=11;
/// ListOffsets versions used: 1 is the first with a single offset per partition.
pub(crate) const LIST_OFFSETS_VERSIONS: std::ops::RangeInclusive<i16> = 1..=7;
/// `isolation_level` READ_COMMITTED.
const READ_COMMITTED: i8 = 1;

/// The answer to one fetch.
#[derive(Debug)]
pub struct Fetched {
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// The partition's last stable offset (records at or above it belong to open
    /// transactions); -1 when the broker did not say.
    pub last_stable_offset: i64,
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
                connection::connect_leader(
                    &cluster.servers,
                    &cluster.client_id,
                    &cluster.transport,
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

    /// The connection (for other requests to the same leader).
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Fetches from `offset`, up to `max_bytes`, waiting up to `max_wait_ms` for data.
    pub async fn fetch(
        &mut self,
        cluster: &Cluster,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetched, ClusterError> {
        let what = fetching(&self.topic, self.partition, offset);
        let request = fetch_request(
            max_wait_ms,
            max_bytes,
            [(self.topic.as_str(), self.partition, offset, max_bytes)],
        );
        let version = self.fetch_version;
        let response = cluster
            .bounded(what.clone(), self.conn.call(&request, version))
            .await?;
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            return Err(cluster.error(what, WireFailure::Broker(error)));
        }
        let data = response
            .responses
            .into_iter()
            .filter(|t| *t.topic.0 == self.topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition);
        fetched(cluster, what, offset, data)
    }

    /// The partition's first offset: see [`earliest`].
    pub async fn earliest(&mut self, cluster: &Cluster) -> Result<i64, ClusterError> {
        earliest(self, cluster).await
    }

    async fn list_earliest(&mut self, cluster: &Cluster) -> Result<i64, ClusterError> {
        let what = listing_earliest(&self.topic, self.partition);
        let request = earliest_request([(self.topic.as_str(), self.partition)]);
        let version = self.list_offsets_version;
        let response = cluster
            .bounded(what.clone(), self.conn.call(&request, version))
            .await?;
        listed_offset(&response, &self.topic, self.partition)
            .map_err(|e| cluster.error(what, WireFailure::Broker(e)))
    }
}

/// Reading one source partition, as the fetcher and `auto.offset.reset` need it: over a
/// connection of the partition's own ([`PartitionReader`]) or over one its leader shares
/// with every partition it leads ([`crate::kafka::leaders::LeaderReader`]).
pub trait ReadPartition: Send {
    /// Fetches from `offset`, up to `max_bytes`, waiting up to `max_wait_ms` for data.
    fn fetch(
        &mut self,
        cluster: &Cluster,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> impl std::future::Future<Output = Result<Fetched, ClusterError>> + Send;

    /// ListOffsets (earliest) of the partition, as the broker answers it.
    fn list_earliest(
        &mut self,
        cluster: &Cluster,
    ) -> impl std::future::Future<Output = Result<i64, ClusterError>> + Send;
}

impl ReadPartition for PartitionReader {
    async fn fetch(
        &mut self,
        cluster: &Cluster,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetched, ClusterError> {
        PartitionReader::fetch(self, cluster, offset, max_bytes, max_wait_ms).await
    }

    async fn list_earliest(&mut self, cluster: &Cluster) -> Result<i64, ClusterError> {
        PartitionReader::list_earliest(self, cluster).await
    }
}

/// The partition's first offset: ListOffsets (earliest), checked by a fetch at 0 when it
/// is above 0. tansu 0.6 answers ListOffsets with the batch *stored* first, and two
/// produces racing on one partition may be stored out of offset order, so its answer can
/// skip the partition's first batches; Kafka answers a fetch below its log start with
/// OFFSET_OUT_OF_RANGE, which keeps the listed offset. The check serves tansu; on Kafka,
/// whose ListOffsets is exact, it costs one round trip when the log start is above 0.
pub async fn earliest<R: ReadPartition>(
    reader: &mut R,
    cluster: &Cluster,
) -> Result<i64, ClusterError> {
    let listed = reader.list_earliest(cluster).await?;
    if listed <= 0 {
        return Ok(listed);
    }
    for max_wait_ms in READ_WAITS_MS {
        match reader.fetch(cluster, 0, 1, max_wait_ms).await {
            // tansu sometimes answers a short fetch without the partition.
            Ok(fetched) if fetched.high_watermark < 0 => continue,
            Ok(fetched) => {
                let first = fetched.decoded.batch.records.first();
                return Ok(first.map_or(listed, |r| r.offset.min(listed)));
            }
            Err(e) if e.is_offset_out_of_range() => return Ok(listed),
            Err(e) => return Err(e),
        }
    }
    Ok(listed)
}

/// What a failed fetch of `topic`/`partition` at `offset` was, in errors.
pub(crate) fn fetching(topic: &str, partition: i32, offset: i64) -> String {
    format!("fetching {topic}/{partition} at offset {offset}")
}

/// What a failed ListOffsets (earliest) of `topic`/`partition` was, in errors.
/// The log end offset of `topic`/`partition` on its leader, on a connection of its own:
/// ListOffsets (latest) asked as a debugging replica (replica id -2), which Kafka answers
/// with the leader's log end instead of its high watermark. Above the high watermark
/// are records the leader appended that its in-sync replicas have not all taken yet
/// (its followers down, or cut off): invisible to readers, they become visible once the
/// replicas catch up, or are dropped if another replica becomes the leader. A broker
/// that ignores the replica id answers with its high watermark.
pub async fn log_end_offset(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
) -> Result<i64, ClusterError> {
    let what = format!("reading the log end offset of {topic}/{partition}");
    let mut conn = cluster
        .bounded(
            what.clone(),
            connection::connect_leader(
                &cluster.servers,
                &cluster.client_id,
                &cluster.transport,
                topic,
                partition,
                cluster.timeout,
            ),
        )
        .await?;
    let version = conn
        .version::<ListOffsetsRequest>(LIST_OFFSETS_VERSIONS)
        .map_err(|e| cluster.error(what.clone(), e))?;
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-2))
        .with_isolation_level(0)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let response = cluster
        .bounded(what.clone(), conn.call(&request, version))
        .await?;
    listed_offset(&response, topic, partition)
        .map_err(|e| cluster.error(what, WireFailure::Broker(e)))
}

pub(crate) fn listing_earliest(topic: &str, partition: i32) -> String {
    format!("reading the earliest offset of {topic}/{partition}")
}

/// A read-committed Fetch of `partitions` (topic, partition, offset, the partition's
/// byte budget), answered after `max_wait_ms` or once one byte is there, with at most
/// `max_bytes` in all. No fetch session (KIP-227): every request names every partition.
pub(crate) fn fetch_request<'a>(
    max_wait_ms: i32,
    max_bytes: i32,
    partitions: impl IntoIterator<Item = (&'a str, i32, i64, i32)>,
) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (topic, partition, offset, partition_max_bytes) in partitions {
        let wanted = FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(partition_max_bytes);
        match topics.iter_mut().find(|t| *t.topic.0 == *topic) {
            Some(t) => t.partitions.push(wanted),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(topic_name(topic))
                    .with_partitions(vec![wanted]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_isolation_level(READ_COMMITTED)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// A ListOffsets (earliest, read committed) of `partitions`.
pub(crate) fn earliest_request<'a>(
    partitions: impl IntoIterator<Item = (&'a str, i32)>,
) -> ListOffsetsRequest {
    let mut topics: Vec<ListOffsetsTopic> = Vec::new();
    for (topic, partition) in partitions {
        let wanted = ListOffsetsPartition::default()
            .with_partition_index(partition)
            .with_timestamp(-2);
        match topics.iter_mut().find(|t| *t.name.0 == *topic) {
            Some(t) => t.partitions.push(wanted),
            None => topics.push(
                ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(vec![wanted]),
            ),
        }
    }
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(READ_COMMITTED)
        .with_topics(topics)
}

/// The offset `response` lists for `topic`/`partition`, or the broker's error for it
/// (UNKNOWN_TOPIC_OR_PARTITION when the answer leaves it out).
pub(crate) fn listed_offset(
    response: &ListOffsetsResponse,
    topic: &str,
    partition: i32,
) -> Result<i64, ResponseError> {
    let answer = response
        .topics
        .iter()
        .filter(|t| *t.name.0 == *topic)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == partition);
    match answer {
        Some(p) => match ResponseError::try_from_code(p.error_code) {
            Some(error) => Err(error),
            None => Ok(p.offset),
        },
        None => Err(ResponseError::UnknownTopicOrPartition),
    }
}

/// One partition's part of a Fetch answer (`None`: the answer left it out), read as the
/// fetch at `offset` that `what` names.
#[allow(clippy::result_large_err)] // the error every call of the fetch path returns
pub(crate) fn fetched(
    cluster: &Cluster,
    what: String,
    offset: i64,
    data: Option<PartitionData>,
) -> Result<Fetched, ClusterError> {
    let Some(data) = data else {
        // tansu answers a fetch that found nothing within max_wait this way.
        return Ok(Fetched {
            high_watermark: -1,
            last_stable_offset: -1,
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
        return Err(cluster.error(what, WireFailure::Broker(error)));
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
        last_stable_offset: data.last_stable_offset,
        decoded,
    })
}

#[cfg(test)]
mod tests {
    //! The reader against an in-process fake broker that answers with encoded protocol
    //! messages: what a real Kafka sends for a partition holding an aborted transaction
    //! (tansu 0.6 never stores aborted records, so the end-to-end tests cannot show it).
    use std::time::Duration;

    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::{self, FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
    };
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, ApiVersionsResponse, FetchResponse, ListOffsetsResponse, MetadataResponse,
        ProducerId,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;
    use crate::kafka::batches::test_batches::{data, encode, marker, COMMIT};

    /// Serves one connection: ApiVersions, Metadata (itself as leader), ListOffsets
    /// (earliest 0) and Fetch (`records` with `aborted`, high watermark 10).
    async fn fake_broker(records: Bytes, aborted: Vec<(i64, i64)>) -> String {
        fake_broker_listing(records, aborted, 0, None).await
    }

    /// As [`fake_broker`], with ListOffsets answering `listed` and every fetch failing
    /// with `fetch_error` if given.
    async fn fake_broker_listing(
        records: Bytes,
        aborted: Vec<(i64, i64)>,
        listed: i64,
        fetch_error: Option<ResponseError>,
    ) -> String {
        crate::kafka::connection::fake::broker(move |addr, api, version, _, out| {
            match api {
                ApiKey::ApiVersions => ApiVersionsResponse::default()
                    .with_api_keys(crate::kafka::connection::fake::versions(&[
                        (ApiKey::Fetch, 16),
                        (ApiKey::ListOffsets, 9),
                        (ApiKey::Metadata, 12),
                    ]))
                    .encode(out, version),
                ApiKey::Metadata => MetadataResponse::default()
                    .with_brokers(vec![MetadataResponseBroker::default()
                        .with_node_id(BrokerId(1))
                        .with_host(StrBytes::from_string(addr.ip().to_string()))
                        .with_port(i32::from(addr.port()))])
                    .with_topics(vec![MetadataResponseTopic::default()
                        .with_name(Some(topic_name("t")))
                        .with_partitions(vec![MetadataResponsePartition::default()
                            .with_partition_index(0)
                            .with_leader_id(BrokerId(1))])])
                    .encode(out, version),
                ApiKey::ListOffsets => ListOffsetsResponse::default()
                    .with_topics(vec![ListOffsetsTopicResponse::default()
                        .with_name(topic_name("t"))
                        .with_partitions(vec![ListOffsetsPartitionResponse::default()
                            .with_partition_index(0)
                            .with_offset(listed)])])
                    .encode(out, version),
                ApiKey::Fetch => FetchResponse::default()
                    .with_responses(vec![FetchableTopicResponse::default()
                        .with_topic(topic_name("t"))
                        .with_partitions(vec![PartitionData::default()
                            .with_partition_index(0)
                            .with_error_code(fetch_error.map_or(0, |e| e.code()))
                            .with_high_watermark(10)
                            .with_last_stable_offset(10)
                            .with_aborted_transactions(Some(
                                aborted
                                    .iter()
                                    .map(|&(producer_id, first_offset)| {
                                        fetch_response::AbortedTransaction::default()
                                            .with_producer_id(ProducerId(producer_id))
                                            .with_first_offset(first_offset)
                                    })
                                    .collect(),
                            ))
                            .with_records(Some(records.clone()))])])
                    .encode(out, version),
                other => panic!("unexpected request {other:?}"),
            }
            .unwrap()
        })
        .await
        .to_string()
    }

    fn cluster(addr: String) -> Cluster {
        Cluster {
            role: "external",
            key: "connector.kafka.bootstrap.servers",
            servers: vec![addr],
            timeout: Duration::from_secs(5),
            internal_retries: true,
            client_id: "test".into(),
            transport: crate::kafka::tls::Transport::plaintext(),
        }
    }

    #[tokio::test]
    async fn a_fetch_drops_the_aborted_transaction_the_broker_lists() {
        // Producer 7 aborts 0..3 (marker 3), then commits 4..6 (marker 6); plain
        // records 7..10.
        let records = encode(&[
            data(7, true, 0..3),
            marker(7, 0, 3),
            data(7, true, 4..6),
            marker(7, COMMIT, 6),
            data(-1, false, 7..10),
        ]);
        let cluster = cluster(fake_broker(records, vec![(7, 0)]).await);
        let mut reader = PartitionReader::connect(&cluster, "t", 0).await.unwrap();
        assert_eq!(reader.fetch_version, 11, "highest version both sides speak");
        assert_eq!(reader.earliest(&cluster).await.unwrap(), 0);

        let fetched = reader.fetch(&cluster, 0, 1 << 20, 100).await.unwrap();
        assert_eq!(fetched.high_watermark, 10);
        let offsets: Vec<i64> = fetched
            .decoded
            .batch
            .records
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, vec![4, 5, 7, 8, 9]);
        assert_eq!(fetched.decoded.batch.next_offset, 10);
        assert_eq!(fetched.decoded.aborted_records, 3);
        assert_eq!(fetched.decoded.control_records, 2);
    }

    #[tokio::test]
    async fn earliest_is_the_first_offset_a_fetch_finds_below_the_listed_one() {
        // tansu listed the batch stored first (offset 3) while 0..3 are readable.
        let records = encode(&[data(-1, false, 0..3), data(-1, false, 3..5)]);
        let cluster = cluster(fake_broker_listing(records, vec![], 3, None).await);
        let mut reader = PartitionReader::connect(&cluster, "t", 0).await.unwrap();
        assert_eq!(reader.earliest(&cluster).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn earliest_is_the_listed_offset_when_a_fetch_below_it_is_out_of_range() {
        // Kafka after retention removed 0..3.
        let records = encode(&[data(-1, false, 3..5)]);
        let fake =
            fake_broker_listing(records, vec![], 3, Some(ResponseError::OffsetOutOfRange)).await;
        let cluster = cluster(fake);
        let mut reader = PartitionReader::connect(&cluster, "t", 0).await.unwrap();
        assert_eq!(reader.earliest(&cluster).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_a_transient_error_naming_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = PartitionReader::connect(&cluster(addr.clone()), "t", 0)
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains(&addr), "{e}");
    }
}
