//! One produce connection per internal broker, shared by every partition it leads, with
//! requests pipelined: each forwarder hands its encoded batch to the broker's session
//! ([`Producers::send`]) and later takes the answer, as it did on a connection of its
//! own; the session gathers the batches waiting into **one** Produce request (at most
//! one batch per partition, as the protocol wants), sends it without waiting for the
//! answers to the ones before it (up to `internal.max.in.flight` requests in flight, the
//! forwarder's own window), and a reader beside it hands each partition its answer.
//!
//! Order per partition is what the exactly-once bookkeeping needs, and it holds: a
//! partition's batches leave in the order they were handed over, each in a later request
//! than the one before on the same connection, which the broker handles in order. A
//! batch whose forwarder gave up on it (it reconnects and sends it again) is dropped if
//! it has not left yet. A broken connection fails every batch not answered, as a
//! forwarder's own connection did; the idempotent producer's sequence numbers let the
//! forwarder send them again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot};

use crate::kafka::cluster::{Cluster, ClusterError};
use crate::kafka::connection::{topic_name, Connection, Inbound, Sent, WireError};
use crate::kafka::leaders::{bounded, Failure, Leaders};

/// Produce versions used: 3 is the first with record batches (magic 2); 13 replaces
/// topic names with topic ids.
pub const PRODUCE_VERSIONS: std::ops::RangeInclusive<i16> = 3..=12;
/// `acks=all`: the answer comes once every in-sync replica has the batch.
pub const ACKS_ALL: i16 = -1;
/// The most bytes of batches one request carries (Kafka's `socket.request.max.bytes`
/// is 100 MiB).
const REQUEST_MAX_BYTES: usize = 32 << 20;

/// The internal cluster's leaders and a produce session per broker that leads some of
/// its partitions. One per service; the sessions end when no forwarder holds them.
#[derive(Debug)]
pub struct Producers {
    cluster: Cluster,
    /// Lookups, and every other request of the forward path (the tail reads, producer
    /// ids, broker configs) through the leaders' read sessions.
    pub leaders: Arc<Leaders>,
    max_in_flight: usize,
    /// Sessions per broker (`connections.per.broker`): partition `p` uses `p % n`.
    per_broker: i32,
    sessions: Mutex<HashMap<(String, i32), mpsc::WeakSender<Batch>>>,
}

/// A handle on the produce session of one partition's leader.
#[derive(Debug, Clone)]
pub struct ProduceLink {
    session: mpsc::Sender<Batch>,
    addr: String,
}

/// A batch handed to a session, not answered yet.
#[derive(Debug)]
pub struct Pending {
    answer: oneshot::Receiver<Result<i64, Failure>>,
    addr: String,
}

/// One partition's batch, as the session sends it.
#[derive(Debug)]
struct Batch {
    topic: String,
    partition: i32,
    bytes: Bytes,
    /// The offset the broker gave the batch's first record.
    reply: oneshot::Sender<Result<i64, Failure>>,
}

impl Producers {
    /// `max_in_flight` produce requests at most in flight per session, `per_broker`
    /// sessions at most per broker.
    pub fn new(cluster: Cluster, max_in_flight: usize, per_broker: usize) -> Arc<Self> {
        Arc::new(Self {
            leaders: Leaders::new(cluster.clone(), per_broker),
            cluster,
            max_in_flight: max_in_flight.max(1),
            per_broker: per_broker.clamp(1, 64) as i32,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The produce session for `partition` of the leader at `addr`, started if there is
    /// none.
    pub fn link(&self, addr: &str, partition: i32) -> ProduceLink {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (addr.to_owned(), partition % self.per_broker);
        let session = match sessions.get(&slot).and_then(mpsc::WeakSender::upgrade) {
            Some(session) => session,
            None => {
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(serve(
                    addr.to_owned(),
                    self.cluster.clone(),
                    self.max_in_flight,
                    rx,
                ));
                sessions.insert(slot, tx.downgrade());
                tx
            }
        };
        ProduceLink {
            session,
            addr: addr.to_owned(),
        }
    }
}

impl ProduceLink {
    /// Hands `bytes` (one encoded record batch for `topic`/`partition`) to the session.
    pub(crate) async fn send(
        &self,
        topic: &str,
        partition: i32,
        bytes: Bytes,
    ) -> Result<Pending, Failure> {
        let (reply, answer) = oneshot::channel();
        let batch = Batch {
            topic: topic.to_owned(),
            partition,
            bytes,
            reply,
        };
        self.session
            .send(batch)
            .await
            .map_err(|_| ended(&self.addr))?;
        Ok(Pending {
            answer,
            addr: self.addr.clone(),
        })
    }
}

impl Pending {
    /// The offset the broker gave the batch's first record, or why there is none (`what`
    /// names the batch in errors). Not bounded here: the session answers every batch,
    /// its own calls bounded by the cluster's timeout, and a batch is given up only
    /// with its connection closed. A forwarder that stopped waiting while the connection
    /// stayed open could see its batch stored after it read the tail.
    pub async fn answer(self, cluster: &Cluster, what: String) -> Result<i64, ClusterError> {
        let addr = self.addr;
        self.answer
            .await
            .unwrap_or_else(|_| Err(ended(&addr)))
            .map_err(|e| e.into_cluster_error(cluster, what))
    }
}

fn ended(addr: &str) -> Failure {
    Failure::Wire(WireError::Io {
        addr: addr.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the broker's produce session ended",
        ),
    })
}

/// A batch in a request in flight: its topic, partition, and who waits for its answer.
type Awaited = (String, i32, oneshot::Sender<Result<i64, Failure>>);

/// A request in flight: its partitions' batches, in the request's order.
struct InFlight {
    sent: Sent<ProduceRequest>,
    batches: Vec<Awaited>,
    /// Bytes of its batches, and when it was sent (for the debug log).
    bytes: usize,
    sent_at: std::time::Instant,
}

/// The session of the broker at `addr`: a connection at a time, batches sent in requests
/// as they come, answers read beside.
async fn serve(
    addr: String,
    cluster: Cluster,
    max_in_flight: usize,
    mut rx: mpsc::Receiver<Batch>,
) {
    let mut queue: VecDeque<Batch> = VecDeque::new();
    // The connection kept after its SASL session was renewed.
    let mut renewed: Option<Connection> = None;
    loop {
        if queue.is_empty() && renewed.is_none() {
            match rx.recv().await {
                Some(batch) => queue.push_back(batch),
                None => break,
            }
        }
        let opened = match renewed.take() {
            Some(conn) => Ok(conn),
            None => {
                bounded(
                    &cluster,
                    Connection::open(&addr, &cluster.client_id, &cluster.transport),
                )
                .await
            }
        };
        let conn = match opened.and_then(|conn| {
            let version = conn
                .version::<ProduceRequest>(PRODUCE_VERSIONS)
                .map_err(Failure::Wire)?;
            Ok((conn, version))
        }) {
            Ok(opened) => opened,
            Err(failure) => {
                tracing::debug!(%addr, error = ?failure, "connecting to the partitions' leader to produce failed");
                while let Ok(batch) = rx.try_recv() {
                    queue.push_back(batch);
                }
                for batch in queue.drain(..) {
                    let _ = batch.reply.send(Err(failure.duplicate()));
                }
                continue;
            }
        };
        let (conn, version) = conn;
        let (mut out, inbound) = conn.split();
        // A request in flight takes a place here until the reader takes it, and the
        // reader holds one more while it reads its answer.
        let (in_flight, answers) =
            mpsc::channel::<InFlight>(max_in_flight.saturating_sub(1).max(1));
        let mut reader = tokio::spawn(read_answers(
            inbound,
            addr.clone(),
            cluster.clone(),
            answers,
        ));
        let end = loop {
            while let Ok(batch) = rx.try_recv() {
                queue.push_back(batch);
            }
            // A forwarder that gave up on a batch sends it again itself.
            queue.retain(|b| !b.reply.is_closed());
            if queue.is_empty() {
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(batch) => {
                            queue.push_back(batch);
                            continue;
                        }
                        None => break End::NoMoreWriters,
                    },
                    _ = &mut reader => break End::ReaderGone,
                }
            }
            if out.session_due() {
                break End::Renew;
            }
            let place = tokio::select! {
                place = in_flight.reserve() => place,
                _ = &mut reader => break End::ReaderGone,
            };
            let Ok(place) = place else {
                break End::SendFailed;
            };
            let round = take_round(&mut queue);
            let request = produce_request(
                &cluster,
                round
                    .iter()
                    .map(|b| (b.topic.as_str(), b.partition, b.bytes.clone())),
            );
            let bytes = round.iter().map(|b| b.bytes.len()).sum();
            let sent_at = std::time::Instant::now();
            match bounded(&cluster, out.send(&request, version)).await {
                Ok(sent) => place.send(InFlight {
                    sent,
                    bytes,
                    sent_at,
                    batches: round
                        .into_iter()
                        .map(|b| (b.topic, b.partition, b.reply))
                        .collect(),
                }),
                Err(failure) => {
                    for batch in round {
                        let _ = batch.reply.send(Err(failure.duplicate()));
                    }
                    break End::SendFailed;
                }
            }
        };
        // The reader answers what is in flight (or fails it), then ends.
        drop(in_flight);
        match end {
            End::Renew => {
                // Every answer read: the same connection re-authenticates, and the
                // batches waiting go on it (or on a new one if that fails: none of them
                // has left, and none sent before failed).
                if let Ok(Some(inbound)) = reader.await {
                    let mut conn = out.join(inbound);
                    match bounded(&cluster, conn.renew_session()).await {
                        Ok(()) => renewed = Some(conn),
                        Err(failure) => {
                            tracing::debug!(%addr, error = ?failure, "renewing the SASL session of the produce connection failed");
                        }
                    }
                    continue;
                }
            }
            End::ReaderGone => {}
            End::SendFailed => {
                let _ = reader.await;
            }
            End::NoMoreWriters => {
                let _ = reader.await;
                break;
            }
        }
        // What waits behind a broken connection fails too, as on a connection of a
        // partition's own: a partition's later batch must not leave before its
        // forwarder has seen the earlier one fail.
        while let Ok(batch) = rx.try_recv() {
            queue.push_back(batch);
        }
        let broke = Failure::Wire(WireError::Io {
            addr: addr.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the produce connection broke before this batch was sent",
            ),
        });
        for batch in queue.drain(..) {
            let _ = batch.reply.send(Err(broke.duplicate()));
        }
    }
    tracing::debug!(%addr, "the broker's produce session ended");
}

/// Why a session's connection is given up.
enum End {
    /// Its SASL session is due for renewal (KIP-368): the same connection goes on after.
    Renew,
    /// The reader stopped: the connection broke while answers were read.
    ReaderGone,
    /// A request could not be sent.
    SendFailed,
    /// No forwarder holds the session any more.
    NoMoreWriters,
}

/// The oldest batch of each partition waiting, up to [`REQUEST_MAX_BYTES`] (at least one).
fn take_round(queue: &mut VecDeque<Batch>) -> Vec<Batch> {
    let mut round: Vec<Batch> = Vec::new();
    let mut taken: std::collections::HashSet<(String, i32)> = std::collections::HashSet::new();
    let mut bytes = 0;
    let mut rest = VecDeque::new();
    while let Some(batch) = queue.pop_front() {
        if batch.reply.is_closed() {
            // Given up by its forwarder before it left.
            continue;
        }
        let key = (batch.topic.clone(), batch.partition);
        let full = !round.is_empty() && bytes + batch.bytes.len() > REQUEST_MAX_BYTES;
        if full || taken.contains(&key) {
            rest.push_back(batch);
        } else {
            taken.insert(key);
            bytes += batch.bytes.len();
            round.push(batch);
        }
    }
    *queue = rest;
    round
}

/// An `acks=all` Produce of `batches` (topic, partition, one encoded record batch each),
/// with the cluster's timeout for the replicas.
pub(crate) fn produce_request<'a>(
    cluster: &Cluster,
    batches: impl IntoIterator<Item = (&'a str, i32, Bytes)>,
) -> ProduceRequest {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for (topic, partition, bytes) in batches {
        let data = PartitionProduceData::default()
            .with_index(partition)
            .with_records(Some(bytes));
        match topics.iter_mut().find(|t| *t.name.0 == *topic) {
            Some(t) => t.partition_data.push(data),
            None => topics.push(
                TopicProduceData::default()
                    .with_name(topic_name(topic))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    ProduceRequest::default()
        .with_acks(ACKS_ALL)
        .with_timeout_ms(cluster.timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topic_data(topics)
}

/// Reads the answers of the requests in flight, in order, and hands each batch its own.
/// A broken connection fails the request read and every one behind it. Gives the
/// connection's half back when the sender stops with every answer read.
async fn read_answers(
    mut inbound: Inbound,
    addr: String,
    cluster: Cluster,
    mut requests: mpsc::Receiver<InFlight>,
) -> Option<Inbound> {
    while let Some(request) = requests.recv().await {
        match bounded(&cluster, inbound.receive(request.sent)).await {
            Ok(response) => {
                tracing::debug!(%addr, partitions = request.batches.len(), bytes = request.bytes,
                    took_us = request.sent_at.elapsed().as_micros() as u64, "produce round");
                answer(&addr, &response, request.batches)
            }
            Err(failure) => {
                for (_, _, reply) in request.batches {
                    let _ = reply.send(Err(failure.duplicate()));
                }
                requests.close();
                while let Some(behind) = requests.recv().await {
                    for (_, _, reply) in behind.batches {
                        let _ = reply.send(Err(failure.duplicate()));
                    }
                }
                return None;
            }
        }
    }
    Some(inbound)
}

fn answer(addr: &str, response: &ProduceResponse, batches: Vec<Awaited>) {
    let answers: HashMap<(&str, i32), &PartitionProduceResponse> = response
        .responses
        .iter()
        .flat_map(|t| {
            t.partition_responses
                .iter()
                .map(move |p| ((&*t.name.0, p.index), p))
        })
        .collect();
    for (topic, partition, reply) in batches {
        let found = answers.get(&(topic.as_str(), partition));
        let result = match found {
            None => Err(Failure::Wire(WireError::Codec {
                addr: addr.to_owned(),
                api: ApiKey::Produce,
                reason: format!("the produce response does not name {topic}/{partition}"),
            })),
            Some(p) => match ResponseError::try_from_code(p.error_code) {
                Some(error) => Err(Failure::Broker(error)),
                None => Ok(p.base_offset),
            },
        };
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    //! A session against an in-process fake broker that records the partitions of each
    //! Produce request and gives each batch the next offset of its partition (or refuses
    //! partition 9).
    use std::time::Duration;

    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{ApiVersionsResponse, ProduceResponse};
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;
    use crate::kafka::connection::fake;

    async fn broker() -> (String, Arc<Mutex<Vec<Vec<i32>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let mut next: HashMap<i32, i64> = HashMap::new();
        let addr = fake::broker(move |_, api, version, mut body, out| {
            match api {
                ApiKey::ApiVersions => ApiVersionsResponse::default()
                    .with_api_keys(fake::versions(&[(ApiKey::Produce, 9)]))
                    .encode(out, version),
                ApiKey::Produce => {
                    let request = ProduceRequest::decode(&mut body, version).unwrap();
                    let partitions: Vec<i32> = request
                        .topic_data
                        .iter()
                        .flat_map(|t| &t.partition_data)
                        .map(|p| p.index)
                        .collect();
                    log.lock().unwrap().push(partitions.clone());
                    let answers = partitions
                        .iter()
                        .map(|&p| {
                            let answer = PartitionProduceResponse::default().with_index(p);
                            if p == 9 {
                                return answer
                                    .with_error_code(ResponseError::NotLeaderOrFollower.code());
                            }
                            let offset = next.entry(p).or_insert(0);
                            *offset += 10;
                            answer.with_base_offset(*offset - 10)
                        })
                        .collect();
                    ProduceResponse::default()
                        .with_responses(vec![TopicProduceResponse::default()
                            .with_name(topic_name("t"))
                            .with_partition_responses(answers)])
                        .encode(out, version)
                }
                other => panic!("unexpected request {other:?}"),
            }
            .unwrap()
        })
        .await;
        (addr.to_string(), seen)
    }

    fn cluster(addr: &str) -> Cluster {
        Cluster {
            role: "internal",
            key: "internal.bootstrap.servers",
            servers: vec![addr.to_owned()],
            timeout: Duration::from_secs(5),
            internal_retries: false,
            client_id: "test".into(),
            transport: crate::kafka::tls::Transport::plaintext(),
        }
    }

    fn batch() -> Bytes {
        Bytes::from_static(b"batch")
    }

    #[tokio::test]
    async fn batches_of_several_partitions_go_in_one_request_and_each_gets_its_answer() {
        let (addr, seen) = broker().await;
        let cluster = cluster(&addr);
        let producers = Producers::new(cluster.clone(), 5, 1);
        let link = producers.link(&addr, 0);
        // Two batches of partition 0, one of partition 1, handed over before the session
        // runs: partition 0's second waits for the next request, in order.
        let a = link.send("t", 0, batch()).await.unwrap();
        let b = link.send("t", 1, batch()).await.unwrap();
        let c = link.send("t", 0, batch()).await.unwrap();
        let what = || "producing".to_owned();
        assert_eq!(a.answer(&cluster, what()).await.unwrap(), 0);
        assert_eq!(b.answer(&cluster, what()).await.unwrap(), 0);
        assert_eq!(c.answer(&cluster, what()).await.unwrap(), 10);
        assert_eq!(*seen.lock().unwrap(), [vec![0, 1], vec![0]]);
    }

    #[tokio::test]
    async fn a_partition_the_broker_refuses_gets_the_refusal_and_the_others_their_offsets() {
        let (addr, _) = broker().await;
        let cluster = cluster(&addr);
        let producers = Producers::new(cluster.clone(), 5, 1);
        let link = producers.link(&addr, 0);
        let refused = link.send("t", 9, batch()).await.unwrap();
        let stored = link.send("t", 2, batch()).await.unwrap();
        let e = refused
            .answer(&cluster, "producing to t/9".into())
            .await
            .unwrap_err();
        assert_eq!(e.broker_error(), Some(ResponseError::NotLeaderOrFollower));
        assert!(e.to_string().contains("producing to t/9"), "{e}");
        assert_eq!(stored.answer(&cluster, String::new()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_batch_whose_forwarder_gave_up_before_it_left_is_not_sent() {
        let (addr, seen) = broker().await;
        let cluster = cluster(&addr);
        let producers = Producers::new(cluster.clone(), 5, 1);
        let link = producers.link(&addr, 0);
        let dropped = link.send("t", 3, batch()).await.unwrap();
        drop(dropped);
        let kept = link.send("t", 4, batch()).await.unwrap();
        kept.answer(&cluster, String::new()).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [vec![4]]);
    }

    #[tokio::test]
    async fn a_broker_that_cannot_be_reached_fails_the_batches_transiently() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = listener.local_addr().unwrap().to_string();
        drop(listener);
        let cluster = cluster(&dead);
        let producers = Producers::new(cluster.clone(), 5, 1);
        let pending = producers
            .link(&dead, 0)
            .send("t", 0, batch())
            .await
            .unwrap();
        let e = pending
            .answer(&cluster, "producing to t/0".into())
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains(&dead), "{e}");
    }
}
