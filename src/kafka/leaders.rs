//! One connection per source broker, shared by every partition it leads: each
//! partition's fetcher asks for its next records as before ([`LeaderReader`]), and the
//! broker's session task gathers what every fetcher of that broker wants into **one**
//! Fetch request (and the start offsets wanted meanwhile into one ListOffsets), sends
//! it, and hands each partition its part of the answer. A 1 000-partition topic then
//! holds one socket per broker instead of one per partition, and one round trip serves
//! every partition of a broker, as Kafka's own consumer fetches.
//!
//! What stays per partition: the position, the pacing of empty fetches, decoding, and
//! the WAL commit, in the partition's own task, so a partition that is slow to commit
//! (or paused, or held back by a full WAL) never holds the others back: it is simply not
//! in the rounds that go out meanwhile, and is fetched in the next one after it asks.
//!
//! A round goes out when at least one partition asks. Its broker wait is the shortest
//! that any of them has left of the wait it asked for, and short
//! ([`WAIT_WHILE_COMMITTING_MS`]) while partitions that have just been given records are
//! still committing them: they will ask again within milliseconds, and must not find the
//! connection held by a long poll for partitions with nothing to read. A partition is
//! answered with nothing only once its own wait is over (until then it goes in the next
//! rounds), so a fetcher sees what a fetch of its own would have seen. Partitions answered
//! with nothing come back at once; a round waits up to [`GATHER`] for them so that rounds
//! do not splinter. A partition the broker left empty only because the round's byte
//! budget ran out (records below its high watermark, none returned, while others got
//! records) is fetched again in the next round (twice at most) instead of being
//! answered with nothing.
//!
//! No fetch session (KIP-227): each request names all its partitions (about 30 bytes
//! each). Errors of the whole connection fail every request of the round; each fetcher
//! retries as it did alone, looking its leader up again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{
    DescribeConfigsRequest, FetchRequest, InitProducerIdRequest, ListOffsetsRequest,
    MetadataResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot};

use crate::kafka::cluster::{Cluster, ClusterError, WireFailure, PROBE_WAIT_MS};
use crate::kafka::connection::{self, leader_of, Connection, LeaderError, WireError};
use crate::kafka::fetch::{
    self, fetched, fetching, listing_earliest, Fetched, ReadPartition, FETCH_VERSIONS,
    LIST_OFFSETS_VERSIONS,
};
use crate::kafka::produce::INIT_PRODUCER_ID_VERSIONS;

/// The broker wait of a round while partitions given records are still committing them.
pub const WAIT_WHILE_COMMITTING_MS: i32 = 5;
/// How long a partition given records counts as committing them (past it, it is held
/// back by something else: a full WAL, a pause).
const COMMITTING_AT_MOST: Duration = Duration::from_millis(50);
/// How long a round waits for the partitions answered with nothing in the last round.
pub const GATHER: Duration = Duration::from_millis(2);
/// The most bytes a round asks for in all (each partition asks for `fetch.max.bytes`):
/// Kafka's consumer default `fetch.max.bytes`, rounded up.
const ROUND_MAX_BYTES: i64 = 64 << 20;
/// How long a topic's metadata serves leader lookups.
const METADATA_MAX_AGE: Duration = Duration::from_secs(5);

/// The leaders of one cluster's partitions, and a session per broker that leads some.
/// One per connector run; the sessions end when the last of their readers is dropped.
#[derive(Debug)]
pub struct Leaders {
    cluster: Cluster,
    /// Sessions per broker (`connections.per.broker`): partition `p` uses `p % n`.
    per_broker: i32,
    sessions: Mutex<HashMap<(String, i32), mpsc::WeakSender<Command>>>,
    /// Each topic's metadata, and when it was read.
    metadata: tokio::sync::Mutex<HashMap<String, (Instant, MetadataResponse)>>,
}

impl Leaders {
    /// No session yet: they start with the first reader of each broker. `per_broker`
    /// sessions at most per broker, each partition in one of them.
    pub fn new(cluster: Cluster, per_broker: usize) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            per_broker: per_broker.clamp(1, 64) as i32,
            sessions: Mutex::new(HashMap::new()),
            metadata: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A reader of `topic`/`partition` through the session of its leader. The leader is
    /// taken from metadata read after `fresher_than` (a failure that may mean the leader
    /// moved), or read within the last few seconds when there is no such failure.
    pub async fn reader(
        &self,
        topic: &str,
        partition: i32,
        fresher_than: Option<Instant>,
    ) -> Result<LeaderReader, ClusterError> {
        let (leader_id, addr) = self.leader(topic, partition, fresher_than).await?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (addr.clone(), partition % self.per_broker);
        let session = match sessions.get(&slot).and_then(mpsc::WeakSender::upgrade) {
            Some(session) => session,
            None => {
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(serve(addr.clone(), self.cluster.clone(), rx));
                sessions.insert(slot, tx.downgrade());
                tx
            }
        };
        Ok(LeaderReader {
            session,
            topic: topic.to_owned(),
            partition,
            addr,
            leader_id,
        })
    }

    /// How many brokers have a session now.
    #[cfg(test)]
    fn sessions(&self) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .values()
            .filter(|s| s.upgrade().is_some_and(|s| !s.is_closed()))
            .count()
    }

    /// The node id and `host:port` of the leader of `topic`/`partition`, from metadata
    /// read after `fresher_than`, or within the last few seconds when that is `None`.
    pub async fn leader(
        &self,
        topic: &str,
        partition: i32,
        fresher_than: Option<Instant>,
    ) -> Result<(i32, String), ClusterError> {
        let what = format!("finding the leader of {topic}/{partition}");
        self.cluster
            .bounded(what, self.look_up(topic, partition, fresher_than))
            .await
    }

    async fn look_up(
        &self,
        topic: &str,
        partition: i32,
        fresher_than: Option<Instant>,
    ) -> Result<(i32, String), LeaderError> {
        let mut cache = self.metadata.lock().await;
        if let Some((read_at, metadata)) = cache.get(topic) {
            let fresh = match fresher_than {
                Some(failure) => *read_at > failure,
                None => read_at.elapsed() < METADATA_MAX_AGE,
            };
            if fresh {
                if let Ok(leader) = leader_of(metadata, topic, partition) {
                    return Ok(leader);
                }
            }
        }
        let metadata = self.read_metadata(topic).await?;
        let leader = leader_of(&metadata, topic, partition);
        cache.insert(topic.to_owned(), (Instant::now(), metadata));
        leader
    }

    /// A topic's metadata, over a connection opened for it and closed after: lookups
    /// come in bursts (a start, a leader that moved), each served by one read.
    async fn read_metadata(&self, topic: &str) -> Result<MetadataResponse, LeaderError> {
        let cluster = &self.cluster;
        let (_, metadata) = connection::bootstrap_metadata(
            &cluster.servers,
            &cluster.client_id,
            &cluster.transport,
            topic,
            cluster.timeout,
        )
        .await?;
        Ok(metadata)
    }
}

/// One partition's reads, through the session of its leader.
#[derive(Debug)]
pub struct LeaderReader {
    session: mpsc::Sender<Command>,
    topic: String,
    partition: i32,
    addr: String,
    leader_id: i32,
}

impl LeaderReader {
    /// `host:port` of the leader.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, Failure>>) -> Command,
    ) -> Result<T, Failure> {
        let (reply, answer) = oneshot::channel();
        let gone = || {
            Failure::Wire(WireError::Io {
                addr: self.addr.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the broker's session ended",
                ),
            })
        };
        self.session
            .send(command(reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// A new idempotent producer id and epoch from the leader (InitProducerId without a
    /// transactional id); `None` when the broker does not offer InitProducerId.
    pub async fn init_producer_id(
        &self,
        cluster: &Cluster,
    ) -> Result<Option<(i64, i16)>, ClusterError> {
        let what = format!(
            "getting a producer id for {}/{}",
            self.topic, self.partition
        );
        self.ask(|reply| Command::InitProducerId { reply })
            .await
            .map_err(|e| e.into_cluster_error(cluster, what))
    }

    /// The value of the leader's broker config `key` (DescribeConfigs); `None` when the
    /// broker does not say (no DescribeConfigs, no such key, or refused).
    pub async fn leader_config(
        &self,
        cluster: &Cluster,
        key: &'static str,
    ) -> Result<Option<String>, ClusterError> {
        let what = format!(
            "reading the {key} of the leader of {}/{}",
            self.topic, self.partition
        );
        let broker = self.leader_id;
        self.ask(|reply| Command::BrokerConfig { broker, key, reply })
            .await
            .map_err(|e| e.into_cluster_error(cluster, what))
    }
}

impl ReadPartition for LeaderReader {
    async fn fetch(
        &mut self,
        cluster: &Cluster,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetched, ClusterError> {
        let what = fetching(&self.topic, self.partition, offset);
        let data = self.ask(|reply| {
            Command::Fetch(Want {
                topic: self.topic.clone(),
                partition: self.partition,
                offset,
                max_bytes,
                max_wait_ms,
                asked_at: Instant::now(),
                left_out: 0,
                reply,
            })
        });
        // The session answers every fetch (its calls are bounded); this bounds the wait
        // for a round to form too.
        let bound = cluster.timeout + Duration::from_millis(max_wait_ms.max(0) as u64);
        let data = match tokio::time::timeout(bound, data).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::Timeout(bound)),
        }
        .map_err(|e| e.into_cluster_error(cluster, what.clone()))?;
        fetched(cluster, what, offset, data)
    }

    async fn list_earliest(&mut self, cluster: &Cluster) -> Result<i64, ClusterError> {
        self.ask(|reply| Command::Earliest {
            topic: self.topic.clone(),
            partition: self.partition,
            reply,
        })
        .await
        .map_err(|e| e.into_cluster_error(cluster, listing_earliest(&self.topic, self.partition)))
    }
}

/// What a partition asks of its leader's session.
#[derive(Debug)]
enum Command {
    Fetch(Want),
    Earliest {
        topic: String,
        partition: i32,
        reply: oneshot::Sender<Result<i64, Failure>>,
    },
    InitProducerId {
        reply: oneshot::Sender<Result<Option<(i64, i16)>, Failure>>,
    },
    BrokerConfig {
        broker: i32,
        key: &'static str,
        reply: oneshot::Sender<Result<Option<String>, Failure>>,
    },
}

/// One partition's next fetch.
#[derive(Debug)]
struct Want {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    max_wait_ms: i32,
    /// When it was asked: it is answered with nothing only once the broker could have
    /// held it for `max_wait_ms` (rounds may wait less, for other partitions).
    asked_at: Instant,
    /// Rounds it went in again because the broker left it out for want of the round's
    /// byte budget.
    left_out: u8,
    /// The partition's part of the answer (`None`: the answer left it out).
    reply: oneshot::Sender<Result<Option<PartitionData>, Failure>>,
}

/// Why a session could not answer a request.
#[derive(Debug)]
pub(crate) enum Failure {
    Wire(WireError),
    /// No answer within the cluster's bound.
    Timeout(Duration),
    /// The broker refused the whole request, or this partition.
    Broker(ResponseError),
}

impl Failure {
    pub(crate) fn duplicate(&self) -> Failure {
        match self {
            Failure::Wire(e) => Failure::Wire(e.duplicate()),
            Failure::Timeout(t) => Failure::Timeout(*t),
            Failure::Broker(e) => Failure::Broker(*e),
        }
    }

    pub(crate) fn into_cluster_error(self, cluster: &Cluster, what: String) -> ClusterError {
        match self {
            Failure::Wire(e) => cluster.error(what, e),
            Failure::Broker(e) => cluster.error(what, WireFailure::Broker(e)),
            Failure::Timeout(timeout) => ClusterError::Timeout {
                what,
                role: cluster.role,
                servers: cluster.servers.join(","),
                timeout,
            },
        }
    }
}

/// A session's connection and the versions it speaks.
struct Session {
    conn: Connection,
    fetch_version: i16,
    list_offsets_version: i16,
}

impl Session {
    async fn open(addr: &str, cluster: &Cluster) -> Result<Self, Failure> {
        let open = Connection::open(addr, &cluster.client_id, &cluster.transport);
        let conn = bounded(cluster, open).await?;
        let fetch_version = conn
            .version::<FetchRequest>(FETCH_VERSIONS)
            .map_err(Failure::Wire)?;
        let list_offsets_version = conn
            .version::<ListOffsetsRequest>(LIST_OFFSETS_VERSIONS)
            .map_err(Failure::Wire)?;
        Ok(Self {
            conn,
            fetch_version,
            list_offsets_version,
        })
    }
}

pub(crate) async fn bounded<T>(
    cluster: &Cluster,
    call: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(cluster.timeout, call).await {
        Ok(result) => result.map_err(Failure::Wire),
        Err(_) => Err(Failure::Timeout(cluster.timeout)),
    }
}

type Key = (String, i32);

/// What a session knows of its partitions between rounds.
#[derive(Debug, Default)]
struct Rounds {
    /// Fetches asked for, oldest first (at most one per partition goes in a round).
    fetches: VecDeque<Want>,
    /// Start offsets asked for.
    earliest: Vec<(Key, oneshot::Sender<Result<i64, Failure>>)>,
    /// Producer ids and broker configs asked for, served one at a time.
    calls: VecDeque<Command>,
    /// Partitions answered in the last rounds that have not asked again: when they were
    /// answered, and whether with records (then they are committing them).
    away: HashMap<Key, (Instant, bool)>,
}

impl Rounds {
    fn push(&mut self, command: Command) {
        match command {
            Command::Fetch(want) => {
                self.away.remove(&(want.topic.clone(), want.partition));
                self.fetches.push_back(want);
            }
            Command::Earliest {
                topic,
                partition,
                reply,
            } => self.earliest.push(((topic, partition), reply)),
            call => self.calls.push_back(call),
        }
    }

    fn is_empty(&self) -> bool {
        self.fetches.is_empty() && self.earliest.is_empty() && self.calls.is_empty()
    }

    /// Drops what nobody waits for any more (a fetcher stopped) and forgets partitions
    /// away too long.
    fn prune(&mut self) {
        self.fetches.retain(|w| !w.reply.is_closed());
        self.earliest.retain(|(_, reply)| !reply.is_closed());
        self.away.retain(|_, (at, with_records)| {
            at.elapsed()
                < if *with_records {
                    COMMITTING_AT_MOST
                } else {
                    GATHER
                }
        });
    }

    /// Whether a partition answered with nothing has not asked again yet.
    fn expecting(&self) -> bool {
        self.away.values().any(|(_, with_records)| !with_records)
    }

    fn committing(&self) -> bool {
        self.away.values().any(|(_, with_records)| *with_records)
    }

    /// The next round's fetches: the oldest want of each partition.
    fn take_round(&mut self) -> Vec<Want> {
        let mut round: Vec<Want> = Vec::new();
        let mut taken: std::collections::HashSet<Key> = std::collections::HashSet::new();
        let mut rest = VecDeque::new();
        while let Some(want) = self.fetches.pop_front() {
            if want.reply.is_closed() {
                continue;
            }
            if taken.insert((want.topic.clone(), want.partition)) {
                round.push(want);
            } else {
                rest.push_back(want);
            }
        }
        self.fetches = rest;
        round
    }

    fn fail_all(&mut self, failure: &Failure) {
        for want in self.fetches.drain(..) {
            let _ = want.reply.send(Err(failure.duplicate()));
        }
        for (_, reply) in self.earliest.drain(..) {
            let _ = reply.send(Err(failure.duplicate()));
        }
        for call in self.calls.drain(..) {
            match call {
                Command::InitProducerId { reply } => {
                    let _ = reply.send(Err(failure.duplicate()));
                }
                Command::BrokerConfig { reply, .. } => {
                    let _ = reply.send(Err(failure.duplicate()));
                }
                Command::Fetch(_) | Command::Earliest { .. } => {}
            }
        }
    }
}

/// The session of the broker at `addr`: until every reader of it is dropped, rounds of
/// ListOffsets and Fetch for whatever its partitions ask.
async fn serve(addr: String, cluster: Cluster, mut commands: mpsc::Receiver<Command>) {
    let mut session: Option<Session> = None;
    let mut rounds = Rounds::default();
    loop {
        if rounds.is_empty() {
            match commands.recv().await {
                Some(command) => rounds.push(command),
                None => break,
            }
        }
        // Partitions answered with nothing ask again at once: give them a moment, so
        // that the round carries them all.
        let gather_until = Instant::now() + GATHER;
        loop {
            while let Ok(command) = commands.try_recv() {
                rounds.push(command);
            }
            rounds.prune();
            if !rounds.expecting() || Instant::now() >= gather_until {
                break;
            }
            match tokio::time::timeout_at(gather_until.into(), commands.recv()).await {
                Ok(Some(command)) => rounds.push(command),
                Ok(None) | Err(_) => break,
            }
        }
        if rounds.is_empty() {
            continue;
        }
        let current = match session.as_mut() {
            Some(current) => current,
            None => match Session::open(&addr, &cluster).await {
                Ok(opened) => session.insert(opened),
                Err(failure) => {
                    tracing::debug!(%addr, error = ?failure, "connecting to the partitions' leader failed");
                    rounds.fail_all(&failure);
                    continue;
                }
            },
        };
        let result = if let Some(call) = rounds.calls.pop_front() {
            serve_call(current, &cluster, call).await
        } else if !rounds.earliest.is_empty() {
            list_round(current, &cluster, &mut rounds).await
        } else {
            fetch_round(current, &cluster, &mut rounds).await
        };
        if result.is_err() {
            // The connection's state is unknown after a failed or timed-out call.
            session = None;
        }
    }
    tracing::debug!(%addr, "the broker's fetch session ended");
}

/// InitProducerId (idempotent, no transactional id) or DescribeConfigs of a broker.
async fn serve_call(session: &mut Session, cluster: &Cluster, call: Command) -> Result<(), ()> {
    match call {
        Command::InitProducerId { reply } => {
            let Ok(version) = session
                .conn
                .version::<InitProducerIdRequest>(INIT_PRODUCER_ID_VERSIONS)
            else {
                let _ = reply.send(Ok(None));
                return Ok(());
            };
            let request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(i32::MAX)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            match bounded(cluster, session.conn.call(&request, version)).await {
                Ok(answer) => {
                    let result = match ResponseError::try_from_code(answer.error_code) {
                        Some(error) => Err(Failure::Broker(error)),
                        None => Ok(Some((answer.producer_id.0, answer.producer_epoch))),
                    };
                    let _ = reply.send(result);
                    Ok(())
                }
                Err(failure) => {
                    let _ = reply.send(Err(failure));
                    Err(())
                }
            }
        }
        Command::BrokerConfig { broker, key, reply } => {
            const BROKER: i8 = 4;
            let Ok(version) = session.conn.version::<DescribeConfigsRequest>(1..=4) else {
                let _ = reply.send(Ok(None));
                return Ok(());
            };
            let request = DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(BROKER)
                    .with_resource_name(StrBytes::from_string(broker.to_string()))
                    .with_configuration_keys(Some(vec![StrBytes::from_static_str(key)])),
            ]);
            match bounded(cluster, session.conn.call(&request, version)).await {
                Ok(answer) => {
                    let value = answer
                        .results
                        .iter()
                        .filter(|r| r.error_code == 0)
                        .flat_map(|r| &r.configs)
                        .find(|c| &*c.name == key)
                        .and_then(|c| Some(c.value.as_ref()?.to_string()));
                    let _ = reply.send(Ok(value));
                    Ok(())
                }
                Err(failure) => {
                    let _ = reply.send(Err(failure));
                    Err(())
                }
            }
        }
        Command::Fetch(_) | Command::Earliest { .. } => Ok(()),
    }
}

/// One ListOffsets (earliest) for every partition that asked, at most one ask each.
async fn list_round(
    session: &mut Session,
    cluster: &Cluster,
    rounds: &mut Rounds,
) -> Result<(), ()> {
    let mut asked: Vec<(Key, oneshot::Sender<Result<i64, Failure>>)> = Vec::new();
    let mut later = Vec::new();
    for (key, reply) in rounds.earliest.drain(..) {
        if asked.iter().any(|(k, _)| *k == key) {
            later.push((key, reply));
        } else {
            asked.push((key, reply));
        }
    }
    rounds.earliest = later;
    let request = fetch::earliest_request(asked.iter().map(|((topic, p), _)| (topic.as_str(), *p)));
    let version = session.list_offsets_version;
    match bounded(cluster, session.conn.call(&request, version)).await {
        Ok(response) => {
            for ((topic, partition), reply) in asked {
                let listed = fetch::listed_offset(&response, &topic, partition);
                let _ = reply.send(listed.map_err(Failure::Broker));
            }
            Ok(())
        }
        Err(failure) => {
            for (_, reply) in asked {
                let _ = reply.send(Err(failure.duplicate()));
            }
            Err(())
        }
    }
}

/// One Fetch for the oldest want of every partition that asked.
async fn fetch_round(
    session: &mut Session,
    cluster: &Cluster,
    rounds: &mut Rounds,
) -> Result<(), ()> {
    let round = rounds.take_round();
    if round.is_empty() {
        return Ok(());
    }
    // No partition waits longer than it asked; and never 0, which tansu answers with
    // no partition at all (docs/compatibility.md): 1 ms, as the probes ask.
    let mut wait = round
        .iter()
        .map(remaining_ms)
        .min()
        .unwrap_or(0)
        .max(PROBE_WAIT_MS);
    if rounds.committing() {
        wait = wait.min(WAIT_WHILE_COMMITTING_MS);
    }
    let budget: i64 = round.iter().map(|w| i64::from(w.max_bytes)).sum();
    let request = fetch::fetch_request(
        wait,
        budget.min(ROUND_MAX_BYTES) as i32,
        round
            .iter()
            .map(|w| (w.topic.as_str(), w.partition, w.offset, w.max_bytes)),
    );
    let version = session.fetch_version;
    let sent_at = Instant::now();
    let response = bounded(cluster, session.conn.call(&request, version)).await;
    if let (Ok(answer), true) = (&response, tracing::enabled!(tracing::Level::DEBUG)) {
        let bytes: usize = answer
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .filter_map(|p| p.records.as_ref().map(|r| r.len()))
            .sum();
        tracing::debug!(addr = %session.conn.addr(), partitions = round.len(), wait_ms = wait, bytes,
            took_us = sent_at.elapsed().as_micros() as u64, "fetch round");
    }
    let mut response = match response {
        Ok(response) => match ResponseError::try_from_code(response.error_code) {
            Some(error) => {
                for want in round {
                    let _ = want.reply.send(Err(Failure::Broker(error)));
                }
                return Ok(());
            }
            None => response,
        },
        Err(failure) => {
            for want in round {
                let _ = want.reply.send(Err(failure.duplicate()));
            }
            return Err(());
        }
    };
    let mut parts: HashMap<Key, PartitionData> = HashMap::new();
    for topic in response.responses.drain(..) {
        let name = topic.topic.0.to_string();
        for data in topic.partitions {
            parts.insert((name.clone(), data.partition_index), data);
        }
    }
    let gave_records = parts
        .values()
        .any(|d| d.records.as_ref().is_some_and(|r| !r.is_empty()));
    let now = Instant::now();
    let mut again = Vec::new();
    for mut want in round {
        let key = (want.topic.clone(), want.partition);
        let data = parts.remove(&key);
        let with_records = data
            .as_ref()
            .is_some_and(|d| d.records.as_ref().is_some_and(|r| !r.is_empty()));
        let failed = data.as_ref().is_some_and(|d| d.error_code != 0);
        if !with_records && !failed {
            // Nothing yet, before the wait it asked for is over: it goes in the next
            // round (which waits no longer than what is left of it).
            if remaining_ms(&want) > 0 {
                again.push(want);
                continue;
            }
            // Left out for want of the round's byte budget: again, twice at most (then
            // the fetcher's own pacing of empty answers takes over).
            if gave_records
                && want.left_out < 2
                && data.as_ref().is_some_and(|d| left_out(d, want.offset))
            {
                want.left_out += 1;
                again.push(want);
                continue;
            }
        }
        if want.reply.send(Ok(data)).is_ok() {
            rounds.away.insert(key, (now, with_records));
        }
    }
    // First in the next round.
    for want in again.into_iter().rev() {
        rounds.fetches.push_front(want);
    }
    Ok(())
}

/// What is left, in whole milliseconds, of the broker wait `want` asked for.
fn remaining_ms(want: &Want) -> i32 {
    let asked = Duration::from_millis(want.max_wait_ms.max(0) as u64);
    asked.saturating_sub(want.asked_at.elapsed()).as_millis() as i32
}

/// Whether the broker left a partition empty only for want of the round's byte budget:
/// no error, no records, records below its high watermark, no open transaction holding
/// them back.
fn left_out(data: &PartitionData, offset: i64) -> bool {
    let empty = data.records.as_ref().is_none_or(|r| r.is_empty());
    let held_by_transaction = (0..=offset).contains(&data.last_stable_offset);
    data.error_code == 0 && empty && data.high_watermark > offset && !held_by_transaction
}

#[cfg(test)]
mod tests {
    //! Sessions against an in-process fake broker that leads every partition of topic
    //! `t` and answers each fetched partition with two records from the offset asked.
    use std::sync::{Arc, Mutex};

    use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
    use kafka_protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
    };
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, ApiVersionsResponse, BrokerId, FetchResponse, ListOffsetsResponse,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    use super::*;
    use crate::kafka::batches::test_batches::{data, encode};
    use crate::kafka::connection::{fake, topic_name};

    /// What the fake broker saw: connections made (ApiVersions asked), and the
    /// partitions of each Fetch, in order.
    #[derive(Debug, Default)]
    struct Seen {
        connections: usize,
        fetches: Vec<Vec<i32>>,
    }

    /// A broker leading partitions `0..partitions` of `t`; partition `starved` (if any)
    /// gets no records in a fetch that carries another partition (a round's byte budget
    /// used up by the others) though its high watermark is above the offset.
    async fn broker(partitions: i32, starved: Option<i32>) -> (String, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let log = Arc::clone(&seen);
        let addr = fake::broker(move |addr, api, version, mut body, out| {
            match api {
                ApiKey::ApiVersions => {
                    log.lock().unwrap().connections += 1;
                    ApiVersionsResponse::default()
                        .with_api_keys(fake::versions(&[
                            (ApiKey::Fetch, 16),
                            (ApiKey::ListOffsets, 9),
                            (ApiKey::Metadata, 12),
                        ]))
                        .encode(out, version)
                }
                ApiKey::Metadata => MetadataResponse::default()
                    .with_brokers(vec![MetadataResponseBroker::default()
                        .with_node_id(BrokerId(1))
                        .with_host(StrBytes::from_string(addr.ip().to_string()))
                        .with_port(i32::from(addr.port()))])
                    .with_topics(vec![MetadataResponseTopic::default()
                        .with_name(Some(topic_name("t")))
                        .with_partitions(
                            (0..partitions)
                                .map(|p| {
                                    MetadataResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_leader_id(BrokerId(1))
                                })
                                .collect(),
                        )])
                    .encode(out, version),
                ApiKey::ListOffsets => {
                    let request = ListOffsetsRequest::decode(&mut body, version).unwrap();
                    let asked = request.topics.iter().flat_map(|t| &t.partitions);
                    ListOffsetsResponse::default()
                        .with_topics(vec![ListOffsetsTopicResponse::default()
                            .with_name(topic_name("t"))
                            .with_partitions(
                                asked
                                    .map(|p| {
                                        ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p.partition_index)
                                            .with_offset(0)
                                    })
                                    .collect(),
                            )])
                        .encode(out, version)
                }
                ApiKey::Fetch => {
                    let request = FetchRequest::decode(&mut body, version).unwrap();
                    let asked: Vec<(i32, i64)> = request
                        .topics
                        .iter()
                        .flat_map(|t| &t.partitions)
                        .map(|p| (p.partition, p.fetch_offset))
                        .collect();
                    log.lock()
                        .unwrap()
                        .fetches
                        .push(asked.iter().map(|(p, _)| *p).collect());
                    let shared = asked.len() > 1;
                    let answers = asked
                        .iter()
                        .map(|&(p, offset)| {
                            let records = if shared && starved == Some(p) {
                                bytes::Bytes::new()
                            } else {
                                encode(&[data(-1, false, offset..offset + 2)])
                            };
                            PartitionData::default()
                                .with_partition_index(p)
                                .with_high_watermark(offset + 2)
                                .with_last_stable_offset(offset + 2)
                                .with_records(Some(records))
                        })
                        .collect();
                    FetchResponse::default()
                        .with_responses(vec![FetchableTopicResponse::default()
                            .with_topic(topic_name("t"))
                            .with_partitions(answers)])
                        .encode(out, version)
                }
                other => panic!("unexpected request {other:?}"),
            }
            .unwrap()
        })
        .await;
        (addr.to_string(), seen)
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

    fn offsets(fetched: &Fetched) -> Vec<i64> {
        fetched
            .decoded
            .batch
            .records
            .iter()
            .map(|r| r.offset)
            .collect()
    }

    #[tokio::test]
    async fn the_partitions_of_one_leader_share_its_connection_and_its_fetches() {
        let (addr, seen) = broker(3, None).await;
        let cluster = cluster(addr);
        let leaders = Leaders::new(cluster.clone(), 1);
        let mut readers = Vec::new();
        for p in 0..3 {
            readers.push(leaders.reader("t", p, None).await.unwrap());
        }
        assert_eq!(leaders.sessions(), 1);
        let [a, b, c] = &mut readers[..] else {
            unreachable!()
        };
        let (fa, fb, fc) = tokio::join!(
            a.fetch(&cluster, 10, 1 << 20, 500),
            b.fetch(&cluster, 20, 1 << 20, 500),
            c.fetch(&cluster, 30, 1 << 20, 500),
        );
        assert_eq!(offsets(&fa.unwrap()), [10, 11]);
        assert_eq!(offsets(&fb.unwrap()), [20, 21]);
        assert_eq!(offsets(&fc.unwrap()), [30, 31]);
        let (ea, eb) = tokio::join!(a.list_earliest(&cluster), b.list_earliest(&cluster));
        assert_eq!((ea.unwrap(), eb.unwrap()), (0, 0));

        let seen = seen.lock().unwrap();
        assert_eq!(seen.fetches, [vec![0, 1, 2]], "one Fetch for the three");
        // One for the metadata (closed since), one for the session.
        assert_eq!(seen.connections, 2);
    }

    #[tokio::test]
    async fn a_partition_left_empty_by_the_rounds_budget_is_fetched_again_not_answered_empty() {
        let (addr, seen) = broker(2, Some(1)).await;
        let cluster = cluster(addr);
        let leaders = Leaders::new(cluster.clone(), 1);
        let mut a = leaders.reader("t", 0, None).await.unwrap();
        let mut b = leaders.reader("t", 1, None).await.unwrap();
        let (fa, fb) = tokio::join!(
            a.fetch(&cluster, 0, 1 << 20, 500),
            b.fetch(&cluster, 5, 1 << 20, 500),
        );
        assert_eq!(offsets(&fa.unwrap()), [0, 1]);
        assert_eq!(offsets(&fb.unwrap()), [5, 6], "fetched again, alone");
        assert_eq!(seen.lock().unwrap().fetches, [vec![0, 1], vec![1]]);
    }

    #[tokio::test]
    async fn a_broker_that_cannot_be_reached_fails_every_fetch_of_the_round_transiently() {
        let (addr, _) = broker(2, None).await;
        let cluster = cluster(addr.clone());
        let leaders = Leaders::new(cluster.clone(), 1);
        let mut a = leaders.reader("t", 0, None).await.unwrap();
        // The session's first connection goes to the leader the metadata names: make
        // that a port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = listener.local_addr().unwrap().to_string();
        drop(listener);
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(serve(dead.clone(), cluster.clone(), rx));
        a.session = tx;
        let e = a.fetch(&cluster, 0, 1 << 20, 500).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        let text = e.to_string();
        assert!(text.contains("fetching t/0 at offset 0"), "{text}");
        assert!(text.contains(&dead), "{text}");
    }

    #[tokio::test]
    async fn a_session_ends_with_its_last_reader() {
        let (addr, _) = broker(1, None).await;
        let cluster = cluster(addr);
        let leaders = Leaders::new(cluster.clone(), 1);
        let mut a = leaders.reader("t", 0, None).await.unwrap();
        a.fetch(&cluster, 0, 1 << 20, 500).await.unwrap();
        assert_eq!(leaders.sessions(), 1);
        drop(a);
        assert_eq!(leaders.sessions(), 0);
    }
}
