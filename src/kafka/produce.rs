//! The forward path's connection to one internal partition: Produce, and the reads of
//! the tail check, on a connection of our own ([`crate::kafka::connection`]) with messages encoded by
//! the `kafka-protocol` crate.
//!
//! Not rskafka's produce: rskafka writes a request's length and body in two writes on a
//! socket without `TCP_NODELAY`, so each produce waited for the broker's delayed ACK
//! (measured: 44 ms per produce on loopback, whatever its size), which made that the
//! floor of the end-to-end latency. Our connection sets `TCP_NODELAY`, and records are
//! encoded once, straight from the WAL's records, with no retry inside a call.

use bytes::Bytes;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    ApiKey, DescribeConfigsRequest, InitProducerIdRequest, ProduceRequest, ProducerId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::kafka::cluster::{Cluster, ClusterError, WireFailure, READ_WAITS_MS};
use crate::kafka::connection::{Sent, WireError};
use crate::kafka::fetch::{self, Fetched, PartitionReader, ReadPartition};
use crate::kafka::leaders::LeaderReader;
use crate::kafka::producers::{produce_request, Pending, ProduceLink, Producers, PRODUCE_VERSIONS};
pub use crate::kafka::records::Compression;
use crate::kafka::records::{self, NewRecord, Producer};
use crate::record::{source_headers, SourcePartition, SourceRecord};

/// InitProducerId versions: 0 is KIP-98's; 3 (KIP-360) adds an existing id and epoch to
/// the request, which a new idempotent producer leaves at -1.
pub(crate) const INIT_PRODUCER_ID_VERSIONS: std::ops::RangeInclusive<i16> = 0..=4;

/// Kafka's default `producer.id.expiration.ms` (one day).
pub const DEFAULT_PRODUCER_ID_EXPIRATION: std::time::Duration =
    std::time::Duration::from_secs(86_400);

/// An idempotent producer's state for one partition (KIP-98): the id and epoch the
/// broker gave, and the sequence number of the next record. The broker stores a batch
/// only if its base sequence follows the last one it stored for this id and epoch, and
/// answers a batch it already stored (one of the last five) with that batch's offset
/// instead of storing it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSession {
    /// Producer id.
    pub id: i64,
    /// Producer epoch.
    pub epoch: i16,
    next_sequence: i32,
}

impl ProducerSession {
    /// A session from InitProducerId's answer: sequences start at 0.
    pub fn new(id: i64, epoch: i16) -> Self {
        Self {
            id,
            epoch,
            next_sequence: 0,
        }
    }

    /// The fields of the next batch of `records` records; the sequence moves past it.
    pub fn next_batch(&mut self, records: usize) -> Producer {
        let producer = Producer {
            id: self.id,
            epoch: self.epoch,
            base_sequence: self.next_sequence,
        };
        self.next_sequence = increment_sequence(self.next_sequence, records);
        producer
    }

    /// Sends the batch that started at `sequence` again as the next one (every batch
    /// after it was refused too).
    pub fn rewind_to(&mut self, sequence: i32) {
        self.next_sequence = sequence;
    }

    /// The same id with the next epoch and sequences from 0, as Kafka's producer bumps
    /// an idempotent producer's epoch itself (KIP-360) when the broker lost or refused
    /// its sequence state: the broker takes a higher epoch at sequence 0, and refuses a
    /// batch of a lower epoch once one of the higher is stored. `None` when the epoch
    /// is exhausted (a new id is needed).
    pub fn bumped(self) -> Option<Self> {
        (self.epoch < i16::MAX).then(|| Self::new(self.id, self.epoch + 1))
    }
}

/// Kafka's sequence arithmetic: numbers wrap from `i32::MAX` to 0.
fn increment_sequence(sequence: i32, by: usize) -> i32 {
    let by = (by % (i32::MAX as usize + 1)) as i64;
    ((i64::from(sequence) + by) % (i64::from(i32::MAX) + 1)) as i32
}

/// A produce request sent and not yet answered.
#[derive(Debug)]
#[must_use = "its answer must be received before the next one"]
pub struct InFlight {
    flight: Flight,
    records: usize,
}

#[derive(Debug)]
enum Flight {
    Own(Sent<ProduceRequest>),
    Shared(Pending),
}

/// A way to the leader of one internal partition.
#[derive(Debug)]
pub struct PartitionWriter {
    link: Link,
    topic: String,
    partition: i32,
}

#[derive(Debug)]
enum Link {
    /// A connection of its own (dead letters, the start-up settle reads); boxed, as the
    /// connection is the larger by far.
    Own {
        reader: Box<PartitionReader>,
        produce_version: i16,
    },
    /// The sessions of its leader, shared with every partition the leader leads: reads,
    /// producer ids and configs through one, produce requests pipelined through another.
    Shared {
        reader: LeaderReader,
        producer: ProduceLink,
    },
}

impl PartitionWriter {
    /// Finds the partition's leader and connects to it, on a connection of its own.
    pub async fn connect(
        cluster: &Cluster,
        topic: &str,
        partition: i32,
    ) -> Result<Self, ClusterError> {
        let reader = PartitionReader::connect(cluster, topic, partition).await?;
        let produce_version = reader
            .connection()
            .version::<ProduceRequest>(PRODUCE_VERSIONS)
            .map_err(|e: WireError| {
                cluster.error(format!("producing to {topic}/{partition}"), e)
            })?;
        Ok(Self {
            link: Link::Own {
                reader: Box::new(reader),
                produce_version,
            },
            topic: topic.to_owned(),
            partition,
        })
    }

    /// The partition through the sessions of its leader (see
    /// [`crate::kafka::producers`]), the leader looked up in metadata read after
    /// `fresher_than` (a reconnect), or recently when that is `None`.
    pub async fn shared(
        producers: &Producers,
        topic: &str,
        partition: i32,
        fresher_than: Option<std::time::Instant>,
    ) -> Result<Self, ClusterError> {
        let reader = producers
            .leaders
            .reader(topic, partition, fresher_than)
            .await?;
        let producer = producers.link(reader.addr(), partition);
        Ok(Self {
            link: Link::Shared { reader, producer },
            topic: topic.to_owned(),
            partition,
        })
    }

    async fn fetch(
        &mut self,
        cluster: &Cluster,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetched, ClusterError> {
        match &mut self.link {
            Link::Own { reader, .. } => reader.fetch(cluster, offset, max_bytes, max_wait_ms).await,
            Link::Shared { reader, .. } => {
                ReadPartition::fetch(reader, cluster, offset, max_bytes, max_wait_ms).await
            }
        }
    }

    /// The partition's first offset.
    pub async fn earliest(&mut self, cluster: &Cluster) -> Result<i64, ClusterError> {
        match &mut self.link {
            Link::Own { reader, .. } => reader.earliest(cluster).await,
            Link::Shared { reader, .. } => fetch::earliest(reader, cluster).await,
        }
    }

    /// The partition's end (high watermark) from a fetch at `earliest`: exact on every
    /// broker we know, where ListOffsets(latest) is not (docs/compatibility.md). tansu
    /// sometimes answers a short fetch without the partition: each try waits longer.
    pub async fn high_watermark(
        &mut self,
        cluster: &Cluster,
        earliest: i64,
    ) -> Result<i64, ClusterError> {
        for max_wait_ms in READ_WAITS_MS {
            let hw = self
                .fetch(cluster, earliest, 1, max_wait_ms)
                .await?
                .high_watermark;
            if hw >= 0 {
                return Ok(hw);
            }
        }
        Err(ClusterError::NoRecord {
            what: format!("reading the end of {}/{}", self.topic, self.partition),
            role: cluster.role,
            offset: earliest,
        })
    }

    /// The records in `from..end` that one fetch from `from` (up to `max_bytes`) returns,
    /// in offset order; empty when the broker returns none of them. tansu sometimes
    /// answers a short fetch with no records although they exist: each try waits longer.
    pub async fn records_between(
        &mut self,
        cluster: &Cluster,
        from: i64,
        end: i64,
        max_bytes: i32,
    ) -> Result<Vec<SourceRecord>, ClusterError> {
        for max_wait_ms in READ_WAITS_MS {
            let mut records = self
                .fetch(cluster, from, max_bytes, max_wait_ms)
                .await?
                .decoded
                .batch
                .records;
            records.retain(|r| r.offset >= from && r.offset < end);
            if !records.is_empty() {
                return Ok(records);
            }
        }
        Ok(Vec::new())
    }

    /// A new idempotent producer id and epoch (InitProducerId without a transactional
    /// id); `None` when the broker does not offer InitProducerId.
    pub async fn init_producer_id(
        &mut self,
        cluster: &Cluster,
    ) -> Result<Option<ProducerSession>, ClusterError> {
        let what = format!(
            "getting a producer id for {}/{}",
            self.topic, self.partition
        );
        let reader = match &mut self.link {
            Link::Shared { reader, .. } => {
                let given = reader.init_producer_id(cluster).await?;
                return Ok(given.map(|(id, epoch)| ProducerSession::new(id, epoch)));
            }
            Link::Own { reader, .. } => reader,
        };
        let Ok(version) = reader
            .connection()
            .version::<InitProducerIdRequest>(INIT_PRODUCER_ID_VERSIONS)
        else {
            return Ok(None);
        };
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(i32::MAX)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = cluster
            .bounded(
                what.clone(),
                reader.connection_mut().call(&request, version),
            )
            .await?;
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            return Err(cluster.error(what, WireFailure::Broker(error)));
        }
        Ok(Some(ProducerSession::new(
            response.producer_id.0,
            response.producer_epoch,
        )))
    }

    /// The partition leader's `producer.id.expiration.ms` (DescribeConfigs of the
    /// broker): how long it keeps a producer's state after the timestamp of the last
    /// batch it stored. `None` when the broker does not say (no DescribeConfigs, no such
    /// key, or refused).
    pub async fn producer_id_expiration(
        &mut self,
        cluster: &Cluster,
    ) -> Result<Option<std::time::Duration>, ClusterError> {
        const KEY: &str = "producer.id.expiration.ms";
        const BROKER: i8 = 4;
        let millis = |value: &str| value.parse::<u64>().ok();
        let reader = match &mut self.link {
            Link::Shared { reader, .. } => {
                let value = reader.leader_config(cluster, KEY).await?;
                return Ok(value
                    .as_deref()
                    .and_then(millis)
                    .map(std::time::Duration::from_millis));
            }
            Link::Own { reader, .. } => reader,
        };
        let what = format!(
            "reading the {KEY} of the leader of {}/{}",
            self.topic, self.partition
        );
        let conn = reader.connection_mut();
        let Ok(version) = conn.version::<DescribeConfigsRequest>(1..=4) else {
            return Ok(None);
        };
        let metadata = cluster
            .bounded(what.clone(), conn.metadata(&self.topic))
            .await?;
        let leader = metadata
            .topics
            .iter()
            .filter(|t| t.name.as_ref().is_some_and(|n| *n.0 == self.topic))
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == self.partition)
            .map(|p| p.leader_id.0);
        let Some(leader) = leader.filter(|id| *id >= 0) else {
            return Ok(None);
        };
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(BROKER)
                .with_resource_name(StrBytes::from_string(leader.to_string()))
                .with_configuration_keys(Some(vec![StrBytes::from_static_str(KEY)])),
        ]);
        let response = cluster.bounded(what, conn.call(&request, version)).await?;
        Ok(response
            .results
            .iter()
            .filter(|r| r.error_code == 0)
            .flat_map(|r| &r.configs)
            .find(|c| &*c.name == KEY)
            .and_then(|c| millis(c.value.as_ref()?))
            .map(std::time::Duration::from_millis))
    }

    /// Produces `records` of `source` as one batch without idempotence, each with the
    /// source headers added; returns the offset the broker gave the first one. Bounded
    /// by the cluster's timeout; on a timeout or a broken connection the outcome is
    /// unknown.
    pub async fn produce(
        &mut self,
        cluster: &Cluster,
        source: &SourcePartition,
        records: &[Outgoing<'_>],
        compression: Compression,
    ) -> Result<i64, ClusterError> {
        let batch = encode_batch(source, records, compression, Producer::NONE).map_err(|e| {
            cluster.error(
                self.what(records.len()),
                self.codec_error(format!("encoding the record batch: {e}")),
            )
        })?;
        let in_flight = self.send(cluster, batch, records.len()).await?;
        self.receive(cluster, in_flight).await
    }

    fn what(&self, records: usize) -> String {
        format!(
            "producing {records} records to {}/{}",
            self.topic, self.partition
        )
    }

    fn codec_error(&self, reason: String) -> WireError {
        match &self.link {
            Link::Own { reader, .. } => reader.connection().codec_error(ApiKey::Produce, reason),
            Link::Shared { reader, .. } => WireError::Codec {
                addr: reader.addr().to_owned(),
                api: ApiKey::Produce,
                reason,
            },
        }
    }

    /// Sends one encoded batch of `records` records (see [`encode_batch`]) without
    /// waiting for the answer: up to five may be in flight, answered in order by
    /// [`PartitionWriter::receive`]. On a connection of its own, bounded by the cluster's
    /// timeout; through a session, handed over (the session bounds its calls).
    pub async fn send(
        &mut self,
        cluster: &Cluster,
        batch: Bytes,
        records: usize,
    ) -> Result<InFlight, ClusterError> {
        let what = self.what(records);
        let flight = match &mut self.link {
            Link::Own {
                reader,
                produce_version,
            } => {
                let request =
                    produce_request(cluster, [(self.topic.as_str(), self.partition, batch)]);
                let sent = cluster
                    .bounded(
                        what,
                        reader.connection_mut().send(&request, *produce_version),
                    )
                    .await?;
                Flight::Own(sent)
            }
            Link::Shared { producer, .. } => {
                let pending = producer
                    .send(&self.topic, self.partition, batch)
                    .await
                    .map_err(|e| e.into_cluster_error(cluster, what))?;
                Flight::Shared(pending)
            }
        };
        Ok(InFlight { flight, records })
    }

    /// The answer to the oldest batch in flight: the offset the broker gave its first
    /// record. Bounded by the cluster's timeout (through a session, each of its calls
    /// is); on a timeout or a broken connection the outcome is unknown (and the
    /// connection is not to be used again).
    pub async fn receive(
        &mut self,
        cluster: &Cluster,
        in_flight: InFlight,
    ) -> Result<i64, ClusterError> {
        let what = self.what(in_flight.records);
        let sent = match (in_flight.flight, &mut self.link) {
            (Flight::Shared(pending), _) => return pending.answer(cluster, what).await,
            (Flight::Own(sent), Link::Own { reader, .. }) => (sent, reader),
            (Flight::Own(_), Link::Shared { .. }) => {
                unreachable!("a batch is answered on the link it was sent on")
            }
        };
        let (sent, reader) = sent;
        let response = cluster
            .bounded(what.clone(), reader.connection_mut().receive(sent))
            .await?;
        let answer = response
            .responses
            .into_iter()
            .filter(|t| *t.name.0 == self.topic)
            .flat_map(|t| t.partition_responses)
            .find(|p| p.index == self.partition);
        let Some(answer) = answer else {
            let reason = "the produce response does not name the partition".to_owned();
            return Err(cluster.error(what, self.codec_error(reason)));
        };
        if let Some(error) = ResponseError::try_from_code(answer.error_code) {
            return Err(cluster.error(what, WireFailure::Broker(error)));
        }
        Ok(answer.base_offset)
    }
}

/// A record as it is produced: a source record, possibly with another value and more
/// headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<'a> {
    /// The source record (offset, timestamp, key, headers, value).
    pub record: &'a SourceRecord,
    /// Replaces the record's value (the schema envelope).
    pub value: Option<Vec<u8>>,
    /// Headers added after the record's own, before the source headers (the
    /// dead-letter topic's error headers).
    pub extra_headers: Vec<(&'static str, Vec<u8>)>,
}

impl<'a> Outgoing<'a> {
    /// The record as it is.
    pub fn plain(record: &'a SourceRecord) -> Self {
        Self {
            record,
            value: None,
            extra_headers: Vec::new(),
        }
    }

    /// Approximate bytes (key, value, headers) before the source headers.
    pub fn approximate_size(&self) -> usize {
        let value = match &self.value {
            Some(v) => v.len(),
            None => self.record.value.as_ref().map_or(0, Vec::len),
        };
        self.record.approximate_size() - self.record.value.as_ref().map_or(0, Vec::len)
            + value
            + self
                .extra_headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// One record batch (magic 2) of `records`, relative offsets 0..n, each record's own
/// headers as they are (duplicates and order kept), then the extra headers, then the
/// source headers (the bytes of a produce request's partition). `producer` carries the
/// idempotent producer's id, epoch and base sequence ([`Producer::NONE`] without).
pub fn encode_batch(
    source: &SourcePartition,
    records: &[Outgoing<'_>],
    compression: Compression,
    producer: Producer,
) -> Result<Bytes, String> {
    let partition = source.partition.to_string();
    let offsets: Vec<String> = records
        .iter()
        .map(|o| o.record.offset.to_string())
        .collect();
    let topic = source.topic.as_bytes();
    let wire = records.iter().zip(&offsets).map(|(out, offset)| {
        let r = out.record;
        let own = r.headers.iter().map(|(k, v)| (&k[..], v.as_deref()));
        let extra = out
            .extra_headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(&v[..])));
        let ours = [
            (source_headers::TOPIC.as_bytes(), Some(topic)),
            (
                source_headers::PARTITION.as_bytes(),
                Some(partition.as_bytes()),
            ),
            (source_headers::OFFSET.as_bytes(), Some(offset.as_bytes())),
        ];
        NewRecord {
            timestamp: r.timestamp_ms,
            key: r.key.as_deref(),
            value: out.value.as_deref().or(r.value.as_deref()),
            headers: own.chain(extra).chain(ours),
        }
    });
    records::encode(wire, producer, compression)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::batches;
    use bytes::BytesMut;

    fn record(offset: i64, headers: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> SourceRecord {
        SourceRecord {
            offset,
            timestamp_ms: 1_700_000_000_000 + offset,
            key: (offset % 2 == 0).then(|| format!("k{offset}").into_bytes()),
            value: Some(vec![b'v'; offset as usize]),
            headers,
        }
    }

    #[test]
    fn sequences_follow_each_batch_and_wrap_past_i32_max() {
        let mut session = ProducerSession::new(7, 2);
        assert_eq!(session.next_batch(3).base_sequence, 0);
        assert_eq!(session.next_batch(10).base_sequence, 3);
        assert_eq!(session.next_batch(1).base_sequence, 13);
        session.rewind_to(i32::MAX - 1);
        assert_eq!(session.next_batch(3).base_sequence, i32::MAX - 1);
        assert_eq!(
            session.next_batch(1).base_sequence,
            1,
            "MAX-1, MAX, 0, then 1"
        );
        let bumped = session.bumped().unwrap();
        assert_eq!((bumped.id, bumped.epoch), (7, 3));
        assert_eq!(bumped.clone().next_batch(1).base_sequence, 0);
        assert_eq!(ProducerSession::new(7, i16::MAX).bumped(), None);
    }

    #[test]
    fn an_encoded_batch_decodes_to_the_records_with_every_header_and_source_headers() {
        let source = SourcePartition::new("orders", 3);
        let records = [
            record(
                40,
                vec![
                    ("a".into(), Some(b"1".to_vec())),
                    ("b".into(), Some(b"x".to_vec())),
                    ("a".into(), Some(b"2".to_vec())),
                    // A copy of a copy: the source record names its own source.
                    (source_headers::OFFSET.into(), Some(b"9".to_vec())),
                ],
            ),
            record(41, vec![("absent".into(), None), (vec![0xff, 0], None)]),
        ];
        let refs: Vec<Outgoing<'_>> = records.iter().map(Outgoing::plain).collect();
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Snappy,
            Compression::Zstd,
        ] {
            let bytes = encode_batch(&source, &refs, compression, Producer::NONE).unwrap();
            // As the broker would store it: at internal offset 7.
            let mut stored = BytesMut::from(&bytes[..]);
            stored[..8].copy_from_slice(&7i64.to_be_bytes());
            let decoded = batches::decode(stored.freeze(), 7, &[]).unwrap();
            let got = decoded.batch.records;
            assert_eq!(got.len(), 2, "one batch holding both records");
            for (i, (got, sent)) in got.iter().zip(&records).enumerate() {
                assert_eq!(got.offset, 7 + i as i64);
                assert_eq!(got.timestamp_ms, sent.timestamp_ms);
                assert_eq!(got.key, sent.key);
                assert_eq!(got.value, sent.value);
                let mut want = sent.headers.clone();
                want.push((source_headers::TOPIC.into(), Some(b"orders".to_vec())));
                want.push((source_headers::PARTITION.into(), Some(b"3".to_vec())));
                want.push((
                    source_headers::OFFSET.into(),
                    Some(sent.offset.to_string().into_bytes()),
                ));
                assert_eq!(got.headers, want, "{compression:?}");
            }
        }
    }
}
