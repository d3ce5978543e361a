//! The forwarder: one task per partition, draining WAL entries into the internal
//! partition of the same number, exactly once.
//!
//! It holds the reader half of its partition's WAL log ([`crate::wal::LogReader`]) and
//! produces through the client layer ([`crate::kafka::produce`]); it imports nothing of
//! the fetcher.
//!
//! Guarantees:
//! - each produce request is sent once by the client layer (its connection has no retry
//!   of its own); re-sends happen here: with an idempotent producer, the batches in
//!   flight again as they are, same sequences ([`window`]), which the broker stores
//!   once; without one, or once the broker lost the producer's state, after a settled
//!   tail check ([`tail`]).
//! - `forwarded_next` advances only over acknowledged batches, in order.
//! - The offsets the broker assigns are compared with the partition end we expect (we are
//!   the single writer); a mismatch is logged as an error and counted.

pub mod dead_letter;
pub mod tail;
pub mod window;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Compression;
use crate::format::{Formatter, Verdict};
use kafka_protocol::ResponseError;

use crate::kafka::cluster::{Cluster, ClusterError, Retry};
use crate::kafka::produce::{
    encode_batch, Outgoing, PartitionWriter, DEFAULT_PRODUCER_ID_EXPIRATION,
};
use crate::kafka::settle::Settling;
use crate::metrics::{Latencies, PartitionMetrics};
use crate::record::{FetchedBatch, SourcePartition, SourceRecord};
use crate::stop::Gate;
use crate::wal::{LogReader, WalError};
use dead_letter::DeadLetterSender;
use tail::{Routed, TailError};
use window::{Batch, Producing, Window};

/// Why a forwarder stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The internal cluster refused in a way retrying cannot fix.
    #[error("forwarding {partition} to {internal_topic} stopped: {source}")]
    Cluster {
        /// The source partition.
        partition: SourcePartition,
        /// The internal topic.
        internal_topic: String,
        /// The refusal.
        source: ClusterError,
    },
    /// The WAL failed or holds a damaged entry.
    #[error("forwarding {partition} stopped: {source}")]
    Wal {
        /// The source partition.
        partition: SourcePartition,
        /// The WAL error.
        source: WalError,
    },
    /// A batch could not be encoded (larger than a record batch can be).
    #[error("forwarding {partition} stopped: encoding a record batch failed: {reason}")]
    Encode {
        /// The source partition.
        partition: SourcePartition,
        /// Why.
        reason: String,
    },
    /// The internal broker refused a batch and stored a later one.
    #[error("forwarding {partition} stopped: {internal} lacks source offsets {first}..={last}: the broker refused them and stored later records, so they cannot be copied in order any more (they are still in the source)")]
    Gap {
        /// The source partition.
        partition: SourcePartition,
        /// The internal topic/partition.
        internal: String,
        /// First source offset of the refused batch.
        first: i64,
        /// Last source offset of the refused batch.
        last: i64,
    },
    /// The internal partition holds records of another writer.
    #[error("forwarding {partition} stopped: {source}")]
    Tail {
        /// The source partition.
        partition: SourcePartition,
        /// What was found.
        source: TailError,
    },
}

impl SinkError {
    /// The WAL error that stopped the forwarder, if that is what stopped it.
    pub fn wal_error(&self) -> Option<&WalError> {
        match self {
            SinkError::Wal { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What the internal partition holds, from the tail check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The internal partition's end (next offset the broker will assign).
    pub end: i64,
    /// The next source offset to forward; `None` when nothing of this source is stored.
    pub stored_next: Option<i64>,
}

/// Everything one forwarder needs.
#[derive(Debug)]
pub struct Forwarder {
    /// The internal cluster (built without internal retries).
    pub cluster: Cluster,
    /// Its leaders' sessions, shared by every forwarder of the service.
    pub producers: Arc<crate::kafka::producers::Producers>,
    /// When this forwarder last reached its leader.
    pub connected_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Internal topic name.
    pub internal_topic: String,
    /// Internal offsets below this were written before the partition's source offset
    /// was last changed (`PATCH`/`DELETE /connectors/{name}/offsets`): they say nothing
    /// about where to resume. 0 when it never was.
    pub barrier: i64,
    /// The reader half of the partition's WAL log.
    pub log: LogReader,
    /// The next source offset to forward: the WAL holds nothing below it (-1 until
    /// known). Owned here; the metrics show a copy.
    pub forwarded_next: i64,
    /// A produce's outcome is unknown until the tail is read again. Shared with the
    /// connector's runtime, which owes the next start a settled tail check if it is set
    /// when the task stops; the metrics show a copy.
    pub in_doubt: Arc<AtomicBool>,
    /// Compression of produced batches.
    pub compression: Compression,
    /// Max records per produce.
    pub max_records: usize,
    /// Max bytes per produce.
    pub max_bytes: usize,
    /// Whether to produce with an idempotent producer where the broker offers one.
    pub idempotence: bool,
    /// Produce requests in flight with idempotence (1 to 5).
    pub max_in_flight: usize,
    /// Checks each record's value against the connector's format.
    pub formatter: Formatter,
    /// Where refused records go (set whenever the format can refuse one).
    pub dead_letters: Option<DeadLetterSender>,
    /// Woken by the fetcher after each commit.
    pub wake: Arc<Notify>,
    /// Counters.
    pub metrics: Arc<PartitionMetrics>,
    /// Produce and end-to-end latencies of the connector.
    pub latencies: Latencies,
    /// Closed while the connector is paused.
    pub gate: Gate,
    /// Stops the task (after the produce in flight).
    pub cancel: CancellationToken,
}

/// The forwarding loop's state between answers.
#[derive(Debug)]
struct Sending {
    /// Bytes per produce request (lowered after a MESSAGE_TOO_LARGE).
    produce_max_bytes: usize,
    /// Entries read and decoded once, kept until every record in them is stored.
    pending: VecDeque<FetchedBatch>,
    /// The first offset of the last entry read.
    read_after: Option<i64>,
    /// The batches in flight.
    window: Window,
    /// Whether the broker holds this producer session's state for the partition (a
    /// batch of the session was stored): before that, it takes any sequence number, so
    /// a batch refused while a later one is stored would leave a gap.
    state_known: bool,
    /// The partition leader's `producer.id.expiration.ms`: the broker forgets a
    /// producer this long after the timestamp of the last batch it stored, wherever
    /// that timestamp lies (a source record's create time).
    expiration: Duration,
    /// Whether `expiration` is still to be asked of the leader.
    expiration_unread: bool,
    /// Batches sent again after an unknown outcome and not answered yet (the produce is
    /// in doubt until they are).
    resent_unanswered: usize,
}

/// Whether a batch whose newest record has `max_timestamp` leaves the broker's state of
/// its producer in place long enough (`expiration`, the broker's): younger than half of it.
fn young(expiration: Duration, max_timestamp: i64) -> bool {
    crate::record::age_ms(max_timestamp) < (expiration.as_millis() / 2) as i64
}

impl Sending {
    /// Whether the broker can tell a re-sent batch of the window from a new one: it holds
    /// the session's state, and will hold it while these batches are in flight (a batch
    /// whose records are older than the broker's expiration makes the state expire at its
    /// next check, every 10 minutes by default, which could fall between a batch and its
    /// re-sent copy).
    fn deduplication_trusted(&self) -> bool {
        self.state_known && self.window.all(|b| young(self.expiration, b.max_timestamp))
    }
}

/// What filling the window ended with.
#[derive(Debug)]
enum Fill {
    /// The window is full, or nothing more can be sent now.
    Ready,
    /// Cancelled.
    Stop,
    /// Sending failed (the connection broke): the outcome of the window is unknown.
    Failed(ClusterError),
}

/// Whether the broker lost or refused the producer's sequence state: the batches in
/// flight cannot be deduplicated any more.
fn lost_sequence_state(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::OutOfOrderSequenceNumber
            | ResponseError::UnknownProducerId
            | ResponseError::InvalidProducerEpoch
            | ResponseError::ProducerFenced
    )
}

/// What the forwarding loop does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Go on.
    Go,
    /// Stop: the task was cancelled.
    Stop,
}

impl Forwarder {
    fn partition(&self) -> &SourcePartition {
        self.log.source_partition()
    }

    fn internal_name(&self) -> String {
        format!("{}/{}", self.internal_topic, self.partition().partition)
    }

    /// Reaches the internal partition's leader through its shared sessions; a reconnect
    /// looks the leader up in metadata newer than the connection before.
    async fn connect(&self) -> Result<PartitionWriter, ClusterError> {
        let now = std::time::Instant::now();
        let before = self
            .connected_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(now);
        PartitionWriter::shared(
            &self.producers,
            &self.internal_topic,
            self.partition().partition,
            before,
        )
        .await
    }

    /// Reads the tail of the internal partition (see [`tail`]).
    async fn read_tail(
        &self,
        pc: &mut PartitionWriter,
    ) -> Result<Result<Tail, TailError>, ClusterError> {
        let internal = self.internal_name();
        let earliest = pc.earliest(&self.cluster).await?;
        let end = pc.high_watermark(&self.cluster, earliest).await?;
        if end <= earliest.max(self.barrier) {
            return Ok(Ok(Tail {
                end,
                stored_next: None,
            }));
        }
        let max = (self.max_bytes as i32).saturating_mul(2).max(1 << 20);
        let mut last = self
            .read_from(pc, end - 1, end, max)
            .await?
            .filter(|r| r.offset == end - 1);
        if last.is_none() {
            // The broker counts records up to `end` but cannot return the last one: it
            // lost records it had acknowledged (seen with tansu on S3 storage killed
            // while writing). What counts is what consumers can read: find the last
            // readable record (step back until a fetch returns one, then read forward
            // to the gap); the records after it are sent again.
            let mut back = 1i64;
            loop {
                let from = (end - 1 - back).max(earliest);
                last = self.read_from(pc, from, end, max).await?;
                if last.is_some() || from == earliest {
                    break;
                }
                back = back.saturating_mul(10);
            }
            while let Some(found) = &last {
                match self.read_from(pc, found.offset + 1, end, max).await? {
                    Some(next) => last = Some(next),
                    None => break,
                }
            }
            if let Some(found) = &last {
                warn!(partition = %self.partition(), internal = %internal, high_watermark = end, last_readable = found.offset,
                    "the internal partition's broker cannot return its records above the last readable one (records lost by the broker); what follows it is sent again");
            }
        }
        if last.as_ref().is_some_and(|r| r.offset < self.barrier) {
            // The last readable record predates the offset change.
            return Ok(Ok(Tail {
                end,
                stored_next: None,
            }));
        }
        let Some(last) = last else {
            return Err(ClusterError::NoRecord {
                what: format!("reading the last record of {internal}"),
                role: self.cluster.role,
                offset: end - 1,
            });
        };
        Ok(
            tail::stored_next_from_headers(&last.headers, self.partition(), &internal, last.offset)
                .map(|next| Tail {
                    end,
                    stored_next: Some(next),
                }),
        )
    }

    /// The highest record below `end` that a fetch from `offset` returns, or `None`.
    async fn read_from(
        &self,
        pc: &mut PartitionWriter,
        offset: i64,
        end: i64,
        max: i32,
    ) -> Result<Option<SourceRecord>, ClusterError> {
        Ok(pc
            .records_between(&self.cluster, offset, end, max)
            .await?
            .pop())
    }

    /// The tail at start-up: settled ([`Forwarder::read_settled_tail`]) unless no
    /// request of an earlier run can still be pending (`settle` false: the WAL is new,
    /// or the previous run stopped with no produce in doubt).
    pub async fn read_start_tail(
        &self,
        pc_slot: &mut Option<PartitionWriter>,
        settle: bool,
    ) -> Result<Option<Tail>, SinkError> {
        if settle {
            self.read_settled_tail(pc_slot).await
        } else {
            self.read_tail_retrying(pc_slot).await
        }
    }

    /// After a produce whose outcome is unknown (`error`) that the broker cannot be
    /// trusted to deduplicate: waits, then starts over from the tail read settled, which
    /// says what was stored ([`Forwarder::start_over`]). `None`: cancelled.
    async fn after_unknown_outcome(
        &mut self,
        error: ClusterError,
        retry: &mut Retry,
        s: &mut Sending,
        leader: &mut Option<PartitionWriter>,
        tail: &Tail,
    ) -> Result<Option<Tail>, SinkError> {
        let partition = self.partition().clone();
        self.set_in_doubt(true);
        self.metrics.produce_errors.fetch_add(1, Ordering::Relaxed);
        let delay = retry.delay();
        warn!(%partition, error = %error, retry_in = ?delay, "produce outcome unknown; will reconnect and re-read the internal partition's tail before re-sending");
        if !self.wait(delay).await {
            return Ok(None);
        }
        let Some(tail) = self.start_over(s, leader, tail).await? else {
            return Ok(None);
        };
        info!(%partition, internal_end = tail.end, stored_next = ?tail.stored_next, "internal partition's tail re-read; resuming");
        Ok(Some(tail))
    }

    /// Sends a run of refused records to the dead-letter topic; after an unknown outcome,
    /// waits and re-reads the topic before going on. [`Flow::Stop`]: cancelled.
    async fn send_dead_letters(
        &mut self,
        run: &tail::Run<'_>,
        retry: &mut Retry,
    ) -> Result<Flow, SinkError> {
        let partition = self.partition().clone();
        let count = run.records.len();
        let last_source_offset = run.records[count - 1].record.offset;
        let dlq = self
            .dead_letters
            .as_mut()
            .expect("records are refused only when a dead-letter topic is set");
        match dlq.produce(&run.records, self.compression).await {
            Ok(()) => {
                retry.reset();
                debug!(%partition, records = count, last_source_offset, "dead-lettered");
                for kind in &run.refused {
                    self.metrics.dead_lettered[kind.index()].fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.is_transient() => {
                self.set_in_doubt(true);
                self.metrics
                    .dead_letter_errors
                    .fetch_add(1, Ordering::Relaxed);
                let delay = retry.delay();
                warn!(%partition, error = %e, retry_in = ?delay, "dead-letter produce outcome unknown; will re-read the dead-letter topic before re-sending");
                if !self.wait(delay).await {
                    return Ok(Flow::Stop);
                }
                let dlq = self.dead_letters.as_mut().expect("set above");
                match dlq.resolve(&self.cancel).await {
                    Ok(Some(found)) => {
                        for (counter, n) in self.metrics.dead_lettered.iter().zip(found) {
                            counter.fetch_add(n, Ordering::Relaxed);
                        }
                        let stored_next = dlq.stored_next();
                        self.set_in_doubt(false);
                        info!(%partition, ?stored_next, "dead-letter topic re-read; resuming");
                    }
                    Ok(None) => return Ok(Flow::Stop),
                    Err(e) => return Err(self.dead_letter_failure(e)),
                }
            }
            Err(e) => return Err(self.dead_letter_failure(e)),
        }
        Ok(Flow::Go)
    }

    /// Reads the tail until two reads [`SETTLE`](crate::kafka::settle::SETTLE) apart agree, so that a request of an
    /// earlier connection that the broker had not processed yet is seen. `None` when
    /// cancelled.
    pub async fn read_settled_tail(
        &self,
        pc_slot: &mut Option<PartitionWriter>,
    ) -> Result<Option<Tail>, SinkError> {
        let Some(tail) = self.read_tail_retrying(pc_slot).await? else {
            return Ok(None);
        };
        let mut settling = Settling::new(tail);
        loop {
            if !settling.pause(&self.cancel).await {
                return Ok(None);
            }
            let Some(again) = self.read_tail_retrying(pc_slot).await? else {
                return Ok(None);
            };
            let before = settling.last().end;
            if settling.agrees(again) {
                let end = settling.last().end;
                if self.uncommitted_above(end).await {
                    continue;
                }
                return Ok(Some(settling.into_inner()));
            }
            info!(partition = %self.partition(), before, now = settling.last().end, "internal partition's end moved while settling (a request of an earlier connection landed); reading again");
        }
    }

    /// Whether the internal partition's leader holds records above the settled end
    /// `end` (its high watermark) that its replicas have not all taken: a produce of an
    /// earlier connection or session, appended while the in-sync replicas were out of
    /// reach, which counts once they catch up. The end is not settled until they have
    /// (or another replica leads without them). A failed read says no: the settled end
    /// stands, as on brokers without the answer.
    async fn uncommitted_above(&self, end: i64) -> bool {
        let topic = &self.internal_topic;
        let partition = self.partition().partition;
        match crate::kafka::fetch::log_end_offset(&self.cluster, topic, partition).await {
            Ok(log_end) if log_end > end => {
                info!(partition = %self.partition(), internal = %self.internal_name(), high_watermark = end, log_end,
                    "the internal partition's leader holds records its replicas have not all taken (produced while they were out of reach): waiting until they do before trusting its end");
                true
            }
            Ok(_) => false,
            Err(e) => {
                debug!(partition = %self.partition(), error = %e, "reading the internal partition's log end failed; its high watermark stands");
                false
            }
        }
    }

    /// Reads the tail once, retrying transient errors until it succeeds or the task is cancelled.
    async fn read_tail_retrying(
        &self,
        pc_slot: &mut Option<PartitionWriter>,
    ) -> Result<Option<Tail>, SinkError> {
        let mut retry = Retry::new(Duration::from_secs(10));
        loop {
            let attempt = async {
                if pc_slot.is_none() {
                    *pc_slot = Some(self.connect().await?);
                }
                self.read_tail(pc_slot.as_mut().expect("just connected"))
                    .await
            };
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(None),
                r = attempt => r,
            };
            match result {
                Ok(Ok(tail)) => return Ok(Some(tail)),
                Ok(Err(source)) => {
                    error!(partition = %self.partition(), error = %source, "forwarding stops for this partition");
                    return Err(SinkError::Tail {
                        partition: self.partition().clone(),
                        source,
                    });
                }
                Err(e) if e.is_transient() => {
                    *pc_slot = None;
                    // A request to the internal cluster that failed: counted with the
                    // produce requests, for the alert on the internal side.
                    self.metrics.produce_errors.fetch_add(1, Ordering::Relaxed);
                    let delay = retry.delay();
                    warn!(partition = %self.partition(), error = %e, retry_in = ?delay, "reading the internal partition's tail failed; retrying");
                    if !self.wait(delay).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(self.cluster_failure(e)),
            }
        }
    }

    /// The next source offset to forward: after the highest one stored in the internal
    /// partition or in the dead-letter topic (see [`dead_letter`]).
    pub fn frontier(&self, tail: &Tail) -> Option<i64> {
        let dead = self
            .dead_letters
            .as_ref()
            .and_then(DeadLetterSender::stored_next);
        tail.stored_next.max(dead)
    }

    /// How `record` is sent: as it is, in the schema envelope, or as a dead letter.
    fn route<'a>(&self, record: &'a SourceRecord) -> Result<Routed<'a>, WalError> {
        let (outgoing, refused) = match self.formatter.check(record)? {
            Verdict::Forward => (Outgoing::plain(record), None),
            Verdict::ForwardAs(value) => (
                Outgoing {
                    record,
                    value: Some(value),
                    extra_headers: Vec::new(),
                },
                None,
            ),
            Verdict::Reject(why) => {
                let dlq = self
                    .dead_letters
                    .as_ref()
                    .expect("a format that refuses records has a dead-letter topic");
                let connector = &dlq.dead_letters().connector;
                (
                    dead_letter::dead_letter(connector, self.partition(), record, &why),
                    Some(why.kind),
                )
            }
        };
        Ok(Routed { outgoing, refused })
    }

    fn dead_letter_failure(&self, source: ClusterError) -> SinkError {
        let topic = self
            .dead_letters
            .as_ref()
            .map(|d| d.dead_letters().topic.clone())
            .unwrap_or_default();
        error!(partition = %self.partition(), dead_letter_topic = %topic, error = %source, "forwarding stops for this partition");
        SinkError::Cluster {
            partition: self.partition().clone(),
            internal_topic: topic,
            source,
        }
    }

    fn cluster_failure(&self, source: ClusterError) -> SinkError {
        error!(partition = %self.partition(), internal = %self.internal_name(), error = %source, "forwarding stops for this partition");
        SinkError::Cluster {
            partition: self.partition().clone(),
            internal_topic: self.internal_topic.clone(),
            source,
        }
    }

    /// Runs until cancelled or a permanent error, starting from a tail read at start-up.
    /// `leader` is the connection the start-up tail check used, if still good.
    pub async fn run(
        mut self,
        initial: Tail,
        leader: Option<PartitionWriter>,
    ) -> Result<(), SinkError> {
        let mut s = Sending {
            // Bytes per produce request: forward.batch.max.bytes, halved each time the
            // broker refuses a batch as larger than the topic's max.message.bytes (the byte
            // count here is an estimate of the encoded batch).
            produce_max_bytes: self.max_bytes,
            pending: VecDeque::new(),
            read_after: None,
            window: Window::default(),
            state_known: false,
            expiration: DEFAULT_PRODUCER_ID_EXPIRATION,
            expiration_unread: true,
            resent_unanswered: 0,
        };
        let ended = self.forward(initial, leader, &mut s).await;
        if !s.window.is_empty() {
            // Whatever ended the loop, batches sent and not answered may still be
            // stored: the next start owes them a settled tail check.
            self.set_in_doubt(true);
        }
        ended
    }

    async fn forward(
        &mut self,
        initial: Tail,
        mut leader: Option<PartitionWriter>,
        s: &mut Sending,
    ) -> Result<(), SinkError> {
        let partition = self.partition().clone();
        let wal_err = |source| SinkError::Wal {
            partition: partition.clone(),
            source,
        };
        let mut tail = initial;
        let mut retry = Retry::new(Duration::from_secs(10));
        let mut producing = if self.idempotence {
            Producing::Asking
        } else {
            Producing::Plain
        };

        loop {
            let stopping = self.cancel.is_cancelled();
            if stopping && s.window.is_empty() {
                break;
            }
            if s.window.is_empty() && !self.gate.pass(&self.cancel, &self.metrics).await {
                break;
            }
            if leader.is_none() {
                match self.connect().await {
                    Ok(pc) => leader = Some(pc),
                    Err(e) if e.is_transient() => {
                        if !s.window.is_empty() {
                            self.set_in_doubt(true);
                        }
                        let delay = retry.delay();
                        warn!(%partition, error = %e, retry_in = ?delay, "cannot reach the internal partition's leader; retrying");
                        if !self.wait(delay).await {
                            break;
                        }
                        continue;
                    }
                    Err(e) => return Err(self.cluster_failure(e)),
                }
            }
            if s.window.has_unsent() && !s.deduplication_trusted() {
                // The batches to send again waited so long (an outage) that the broker may
                // have forgotten this producer: the tail says what is stored instead.
                warn!(%partition, batches = s.window.len(),
                    "the batches in flight waited longer than the broker keeps this producer's state for records this old; reading the internal partition's tail (settled) instead of sending them again");
                producing = producing.renewed(false);
                let Some(t) = self.start_over(s, &mut leader, &tail).await? else {
                    break;
                };
                tail = t;
                continue;
            }
            let pc = leader.as_mut().expect("connected above");
            if s.expiration_unread {
                // Once per forwarder, before its first producer id. A broker that lists
                // DescribeConfigs but hangs up on a broker resource (tansu) leaves Kafka's
                // default, and the connection is made again.
                s.expiration_unread = false;
                let fallback = "assuming Kafka's default, a day: records older than 12 hours go one produce request at a time, and a lost answer is resolved by reading the tail";
                match pc.producer_id_expiration(&self.cluster).await {
                    Ok(Some(expiration)) => s.expiration = expiration,
                    Ok(None) => {
                        warn!(%partition, "the internal partition's leader does not say its producer.id.expiration.ms (no DescribeConfigs of brokers, or refused); {fallback}");
                    }
                    Err(e) => {
                        warn!(%partition, error = %e, "the internal partition's leader did not say its producer.id.expiration.ms; {fallback}");
                        leader = None;
                        continue;
                    }
                }
            }
            if producing == Producing::Asking {
                match self.ask_producer_id(pc).await {
                    Ok(p) => {
                        producing = p;
                        s.state_known = false;
                    }
                    Err(e) => {
                        leader = None;
                        self.metrics.produce_errors.fetch_add(1, Ordering::Relaxed);
                        let delay = retry.delay();
                        warn!(%partition, error = %e, retry_in = ?delay, "asking the internal cluster for a producer id failed; retrying");
                        if !self.wait(delay).await {
                            break;
                        }
                        continue;
                    }
                }
            }

            // After a reconnect the batches in flight go again, in order and as they are:
            // the same producer id, epoch and sequences, so the broker stores each once.
            let mut failure = self.resend(pc, &mut s.window).await.err();
            let mut sent_failed = failure.is_some();
            if failure.is_none() && !stopping {
                match self.fill(pc, s, &tail, &mut producing, &mut retry).await? {
                    Fill::Ready => {}
                    Fill::Stop if s.window.is_empty() => break,
                    Fill::Stop => {}
                    Fill::Failed(e) => {
                        failure = Some(e);
                        sent_failed = true;
                    }
                }
            }
            if s.window.is_empty() {
                if failure.is_none() {
                    // Nothing left to send now.
                    self.metrics.forwarder_ready.store(true, Ordering::Relaxed);
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                continue;
            }

            // The oldest batch's answer. Not cancellable: the batches in flight are
            // answered, then the loop ends.
            let result = match failure {
                Some(e) => Err(e),
                None => {
                    let front = s.window.front_mut().expect("not empty");
                    let in_flight = front.in_flight.take().expect("sent on this connection");
                    pc.receive(&self.cluster, in_flight).await
                }
            };
            let refusal = result.as_ref().err().and_then(ClusterError::broker_error);
            match result {
                Ok(base_offset) => {
                    retry.reset();
                    let batch = s.window.pop_front().expect("answered");
                    if self.acknowledged(&batch, Some(base_offset)) {
                        s.state_known = true;
                        tail = batch.stored();
                    } else {
                        // Re-read the truth before going on, once the batches still in
                        // flight are answered (stored or refused, they are then in the
                        // tail); a new epoch refuses whatever of ours is still on its way.
                        for b in s.window.unsent_or_in_flight() {
                            if let Some(in_flight) = b.in_flight.take() {
                                if pc.receive(&self.cluster, in_flight).await.is_err() {
                                    break;
                                }
                            }
                        }
                        s.window.clear();
                        leader = None;
                        producing = producing.renewed(false);
                        s.state_known = false;
                        self.set_in_doubt(true);
                        let Some(t) = self.read_settled_tail(&mut leader).await? else {
                            break;
                        };
                        tail = t;
                    }
                    self.after_answer(s, &tail).map_err(wal_err)?;
                }
                // A broker that answers a batch it already stored with this error
                // instead of that batch's offset (tansu): stored, where expected.
                Err(_) if refusal == Some(ResponseError::DuplicateSequenceNumber) => {
                    retry.reset();
                    let batch = s.window.pop_front().expect("answered");
                    self.acknowledged(&batch, None);
                    s.state_known = true;
                    self.metrics
                        .deduplicated_batches
                        .fetch_add(1, Ordering::Relaxed);
                    tail = batch.stored();
                    self.after_answer(s, &tail).map_err(wal_err)?;
                }
                Err(e) if e.is_transient() => {
                    leader = None;
                    let trusted = s.deduplication_trusted();
                    if let (Producing::Idempotent(session), true) = (producing, trusted) {
                        // The outcome is unknown; the broker knows it.
                        self.set_in_doubt(true);
                        self.metrics.produce_errors.fetch_add(1, Ordering::Relaxed);
                        s.window.mark_unsent();
                        s.resent_unanswered = s.window.len();
                        self.metrics
                            .resent_batches
                            .fetch_add(s.window.len() as u64, Ordering::Relaxed);
                        let delay = retry.delay();
                        warn!(%partition, error = %e, batches = s.window.len(), producer_id = session.id, retry_in = ?delay,
                            "produce outcome unknown; will reconnect and send the batches in flight again with the same producer id and sequence numbers (the broker stores each once)");
                        if !self.wait(delay).await {
                            break;
                        }
                    } else {
                        // The batch may or may not be stored, and the broker may hold
                        // no state to tell a re-sent copy by (the session's first batch,
                        // or records old enough for it to expire): the tail says. A new
                        // epoch refuses whatever of ours is still on its way.
                        producing = producing.renewed(false);
                        let Some(t) = self
                            .after_unknown_outcome(e, &mut retry, s, &mut leader, &tail)
                            .await?
                        else {
                            break;
                        };
                        tail = t;
                    }
                }
                // Refused whole, nothing stored: the same records go again in smaller
                // requests. A single record too large is a failure to report.
                Err(e) if e.is_message_too_large() => {
                    let batch = s.window.front_mut().expect("refused");
                    let (count, bytes) = (batch.records, batch.source_bytes as usize);
                    if count == 1 {
                        error!(%partition, internal = %self.internal_name(), source_offset = batch.last_source_offset,
                            approximate_bytes = bytes + self.header_overhead(),
                            "this record alone is larger than the internal topic's max.message.bytes: raise it on the internal topic (kafka-configs --alter --entity-type topics --add-config max.message.bytes=...) and restart the connector");
                        self.after_refusal(pc, &mut s.window).await?;
                        return Err(self.cluster_failure(e));
                    }
                    let bytes = bytes + count * self.header_overhead();
                    s.produce_max_bytes = (bytes / 2).max(1);
                    warn!(%partition, internal = %self.internal_name(), records = count, approximate_bytes = bytes, produce_max_bytes = s.produce_max_bytes,
                        "the internal broker refused a produce as larger than the topic's max.message.bytes; sending smaller requests (lower forward.batch.max.bytes to avoid this)");
                    // The batches after it were refused too (their sequences do not
                    // follow a stored batch): they go again, smaller, from its sequence.
                    let sequence = batch.producer.base_sequence;
                    self.after_refusal(pc, &mut s.window).await?;
                    if let Producing::Idempotent(session) = &mut producing {
                        session.rewind_to(sequence);
                    }
                    leader = None;
                }
                Err(e) if refusal.is_some_and(lost_sequence_state) => {
                    let fenced = matches!(
                        refusal,
                        Some(ResponseError::InvalidProducerEpoch | ResponseError::ProducerFenced)
                    );
                    self.metrics.producer_resets.fetch_add(1, Ordering::Relaxed);
                    if fenced && !s.state_known && !sent_failed {
                        // The first batch of an epoch the broker does not take (tansu
                        // refuses an epoch bumped by the producer): it went alone and
                        // nothing of this epoch is stored, so the tail is as known.
                        info!(%partition, error = %e, "the internal broker refused this producer's new epoch; asking for a new producer id");
                        s.window.clear();
                        producing = Producing::Asking;
                        continue;
                    }
                    warn!(%partition, error = %e, batches = s.window.len(),
                        "the internal broker lost or refused this producer's sequence state (producer id expired, log truncated, or fenced); producing with a new epoch or producer id after reading the internal partition's tail again");
                    leader = None;
                    producing = producing.renewed(fenced);
                    let Some(t) = self.start_over(s, &mut leader, &tail).await? else {
                        break;
                    };
                    tail = t;
                }
                Err(e) => {
                    if sent_failed {
                        // No answer was read: what is in flight is for the next start's
                        // settled tail check to find.
                        self.set_in_doubt(true);
                    } else {
                        self.after_refusal(pc, &mut s.window).await?;
                    }
                    return Err(self.cluster_failure(e));
                }
            }
        }
        debug!(%partition, "forwarder stopped");
        Ok(())
    }

    /// After a batch is answered as stored (and `tail` moved past it): the produce is no
    /// longer in doubt once the re-sent batches are answered, and the entries stored are
    /// released.
    fn after_answer(&mut self, s: &mut Sending, tail: &Tail) -> Result<(), WalError> {
        s.resent_unanswered = s.resent_unanswered.saturating_sub(1);
        if s.window.is_empty() || s.resent_unanswered == 0 {
            self.set_in_doubt(false);
        }
        let stored_next = self.frontier(tail);
        self.release_stored(&mut s.pending, stored_next)
    }

    /// Forgets the window (the broker cannot be trusted to deduplicate it) and reads the
    /// tail settled, which says what is stored; the records the lost answers covered
    /// count as forwarded. The caller has moved the producer to a new epoch or id.
    /// `None`: cancelled.
    async fn start_over(
        &mut self,
        s: &mut Sending,
        leader: &mut Option<PartitionWriter>,
        tail: &Tail,
    ) -> Result<Option<Tail>, SinkError> {
        s.window.clear();
        s.state_known = false;
        self.set_in_doubt(true);
        let Some(t) = self.read_settled_tail(leader).await? else {
            return Ok(None);
        };
        self.set_in_doubt(false);
        self.metrics
            .forwarded_records
            .fetch_add((t.end - tail.end).max(0) as u64, Ordering::Relaxed);
        Ok(Some(t))
    }

    /// A producer id for this partition's session, or [`Producing::Plain`] when the
    /// broker offers none (or refuses one: a principal without the right to write
    /// idempotently on an old broker).
    async fn ask_producer_id(&self, pc: &mut PartitionWriter) -> Result<Producing, ClusterError> {
        let partition = self.partition();
        match pc.init_producer_id(&self.cluster).await {
            Ok(Some(session)) => {
                debug!(%partition, producer_id = session.id, epoch = session.epoch, "idempotent producer");
                Ok(Producing::Idempotent(session))
            }
            Ok(None) => {
                warn!(%partition, internal = %self.internal_name(),
                    "the internal cluster does not offer InitProducerId: producing without idempotence (one request in flight, the tail read again and settled after an unknown outcome)");
                Ok(Producing::Plain)
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                warn!(%partition, internal = %self.internal_name(), error = %e,
                    "the internal cluster refused a producer id: producing without idempotence (one request in flight, the tail read again and settled after an unknown outcome)");
                Ok(Producing::Plain)
            }
        }
    }

    /// After the broker refused the window's oldest batch for good: reads the answers to
    /// the batches after it, which the broker refuses as out of sequence, and empties the
    /// window. One of them stored would leave the refused batch's records missing below
    /// it (possible only if the broker dropped the producer's state in between): that
    /// stops the partition, naming the records, instead of going on past them.
    async fn after_refusal(
        &self,
        pc: &mut PartitionWriter,
        window: &mut Window,
    ) -> Result<(), SinkError> {
        let refused = window.pop_front();
        let mut stored_after = None;
        for b in window.unsent_or_in_flight() {
            let Some(in_flight) = b.in_flight.take() else {
                break;
            };
            match pc.receive(&self.cluster, in_flight).await {
                Ok(_) => stored_after = Some(b.last_source_offset),
                // Appended, whatever the replicas did next.
                Err(e)
                    if matches!(
                        e.broker_error(),
                        Some(
                            ResponseError::NotEnoughReplicasAfterAppend
                                | ResponseError::RequestTimedOut
                        )
                    ) =>
                {
                    stored_after = Some(b.last_source_offset)
                }
                Err(e) if e.broker_error().is_some() => {}
                // The connection is gone: what it carried is for the next start's settled
                // tail check to find.
                Err(_) => {
                    self.set_in_doubt(true);
                    break;
                }
            }
        }
        window.clear();
        match (refused, stored_after) {
            (Some(refused), Some(last)) => {
                let first = refused.first_source_offset;
                error!(partition = %self.partition(), internal = %self.internal_name(), refused_up_to = refused.last_source_offset, stored_up_to = last,
                    "the internal broker refused a batch and stored a later one (it had dropped this producer's state): the refused records are missing from the internal partition; forwarding stops for this partition");
                Err(SinkError::Gap {
                    partition: self.partition().clone(),
                    internal: self.internal_name(),
                    first,
                    last: refused.last_source_offset,
                })
            }
            _ => Ok(()),
        }
    }

    /// Sends the batches of the window that are not on this connection, in order.
    async fn resend(
        &self,
        pc: &mut PartitionWriter,
        window: &mut Window,
    ) -> Result<(), ClusterError> {
        for batch in window.unsent() {
            batch.sent_at = std::time::Instant::now();
            batch.in_flight = Some(
                pc.send(&self.cluster, batch.bytes.clone(), batch.records)
                    .await?,
            );
        }
        Ok(())
    }

    /// Sends new batches until the window is full or nothing is left to send now (dead
    /// letters are sent here too, when no batch is in flight).
    async fn fill(
        &mut self,
        pc: &mut PartitionWriter,
        s: &mut Sending,
        tail: &Tail,
        producing: &mut Producing,
        retry: &mut Retry,
    ) -> Result<Fill, SinkError> {
        let partition = self.partition().clone();
        let wal_err = |source| SinkError::Wal {
            partition: partition.clone(),
            source,
        };
        loop {
            // More than one in flight only while the broker holds the session's state and
            // will go on holding it: without it, it takes any sequence number, so a batch
            // refused while a later one is stored would leave a gap.
            let limit = if s.deduplication_trusted() {
                producing.window(self.max_in_flight)
            } else {
                1
            };
            if s.window.len() >= limit || !self.gate.is_open() {
                return Ok(Fill::Ready);
            }
            // Needed here too, not only after an answer: an entry whose records are all
            // stored but whose next_offset lies beyond them (trailing control records)
            // survives the start-up alignment and would otherwise never be released.
            let stored_next = self.frontier(tail);
            self.release_stored(&mut s.pending, stored_next)
                .map_err(wal_err)?;
            let from = s.window.next_source_offset().or(stored_next);
            let records = tail::unstored_records(s.pending.make_contiguous(), from);
            if records.is_empty() {
                // Read before the entries: whatever is appended after this read lies at
                // or above it.
                let fetched_next = self.log.checkpoints().map_err(wal_err)?.fetched_next;
                let entries = self
                    .log
                    .entries_after(s.read_after, self.max_records, self.max_bytes)
                    .map_err(wal_err)?;
                let Some(last) = entries.last() else {
                    if s.pending.is_empty() {
                        // Everything is forwarded: the position moves past records that
                        // were fetched but are not copied (transaction markers, aborted
                        // transactions) too.
                        if let Some(next) = fetched_next {
                            self.forwarded_up_to(next).map_err(wal_err)?;
                        }
                    }
                    return Ok(Fill::Ready);
                };
                s.read_after = Some(last.first_offset());
                s.pending.extend(entries);
                continue;
            }
            // One produce request goes to one place and stays within the batch limits
            // *after* the source headers are added; the rest waits for the next round.
            let run = tail::next_run(
                &records,
                self.max_records,
                s.produce_max_bytes,
                self.header_overhead(),
                |r| self.route(r),
            )
            .map_err(wal_err)?;
            if run.destination == tail::Destination::DeadLetters {
                if !s.window.is_empty() {
                    // In order: after the batches before it are answered.
                    return Ok(Fill::Ready);
                }
                if self.send_dead_letters(&run, retry).await? == Flow::Stop {
                    return Ok(Fill::Stop);
                }
                continue;
            }
            if let Some(mark) = self.formatter.durable_mark() {
                // Every schema version a record of this run may name is durable first.
                let durable = tokio::select! {
                    _ = self.cancel.cancelled() => return Ok(Fill::Stop),
                    r = self.log.commit_through(mark) => r,
                };
                durable.map_err(wal_err)?;
            }
            let count = run.records.len();
            let max_timestamp = run
                .records
                .iter()
                .map(|r| r.record.timestamp_ms)
                .max()
                .expect("a run is never empty");
            if !s.window.is_empty() && !young(s.expiration, max_timestamp) {
                // Records this old may outlive the broker's state of this producer: sent
                // alone, once the batches in flight are answered.
                return Ok(Fill::Ready);
            }
            let producer = producing.next_batch(count);
            let bytes = encode_batch(self.partition(), &run.records, self.compression, producer)
                .map_err(|reason| SinkError::Encode {
                    partition: partition.clone(),
                    reason,
                })?;
            let batch = s.window.push(Batch {
                bytes,
                producer,
                records: count,
                first_source_offset: run.records[0].record.offset,
                last_source_offset: run.records[count - 1].record.offset,
                max_timestamp,
                expected_base: s.window.end(tail.end),
                timestamps: run.records.iter().map(|r| r.record.timestamp_ms).collect(),
                source_bytes: run
                    .records
                    .iter()
                    .map(|r| r.record.approximate_size() as u64)
                    .sum(),
                sent_at: std::time::Instant::now(),
                in_flight: None,
            });
            match pc.send(&self.cluster, batch.bytes.clone(), count).await {
                Ok(in_flight) => batch.in_flight = Some(in_flight),
                Err(e) => return Ok(Fill::Failed(e)),
            }
        }
    }

    /// A batch answered as stored at `base_offset` (`None`: stored earlier, offset not
    /// said): the figures, and whether it is where the single writer expects it.
    fn acknowledged(&mut self, batch: &Batch, base_offset: Option<i64>) -> bool {
        let partition = self.partition().clone();
        self.latencies
            .observe_produce(batch.sent_at.elapsed(), batch.timestamps.iter().copied());
        self.metrics.forwarder_ready.store(true, Ordering::Relaxed);
        self.metrics
            .forwarded_bytes
            .fetch_add(batch.source_bytes, Ordering::Relaxed);
        self.metrics
            .forwarded_records
            .fetch_add(batch.records as u64, Ordering::Relaxed);
        debug!(%partition, records = batch.records, produce_ms = batch.sent_at.elapsed().as_millis() as u64,
            first_record_age_ms = crate::record::age_ms(batch.timestamps[0]), "produced");
        let Some(base_offset) = base_offset else {
            return true;
        };
        if base_offset == batch.expected_base {
            return true;
        }
        self.metrics
            .unexpected_produce_offsets
            .fetch_add(1, Ordering::Relaxed);
        error!(%partition, internal = %self.internal_name(), expected_first = batch.expected_base, assigned = base_offset, count = batch.records,
            "the broker stored the batch at an unexpected offset: another producer writes to this internal partition, or a request was stored twice");
        false
    }

    /// Drops the entries at the front of `pending` whose records are all stored and
    /// checkpoints `forwarded_next`. Not waited on for durability: the next group commit
    /// or sled's background flush persists it, and a crash that loses it is harmless,
    /// because the start-up tail check, not this checkpoint, decides what is stored.
    fn release_stored(
        &mut self,
        pending: &mut VecDeque<FetchedBatch>,
        stored_next: Option<i64>,
    ) -> Result<(), WalError> {
        let Some(stored_next) = stored_next else {
            return Ok(());
        };
        let mut done = Vec::new();
        let mut forwarded_next = stored_next;
        while let Some(entry) = pending.front() {
            if entry
                .records
                .last()
                .is_some_and(|r| r.offset >= stored_next)
            {
                break;
            }
            forwarded_next = forwarded_next.max(entry.next_offset);
            done.push(entry.first_offset());
            pending.pop_front();
        }
        if done.is_empty() && self.forwarded_next >= forwarded_next {
            return Ok(());
        }
        self.log.release_entries(&done, forwarded_next)?;
        self.set_forwarded_next(forwarded_next);
        Ok(())
    }

    /// Records `next` as the forwarding position when every entry below it is gone.
    fn forwarded_up_to(&mut self, next: i64) -> Result<(), WalError> {
        if self.forwarded_next >= next {
            return Ok(());
        }
        self.log.release_entries(&[], next)?;
        self.set_forwarded_next(next);
        Ok(())
    }

    /// Waits `delay`; `false` when the task is cancelled first.
    async fn wait(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Marks a produce's outcome unknown, or known again.
    fn set_in_doubt(&self, in_doubt: bool) {
        self.in_doubt.store(in_doubt, Ordering::Relaxed);
        self.metrics
            .produce_in_doubt
            .store(in_doubt, Ordering::Relaxed);
    }

    /// Moves the forwarding position (and the figure the status shows).
    pub fn set_forwarded_next(&mut self, next: i64) {
        self.forwarded_next = next;
        self.metrics.forwarded_next.store(next, Ordering::Relaxed);
    }

    /// Bytes the source headers and record framing add to each produced record (an
    /// upper bound: three header names (80 bytes), a topic name, a partition and an offset
    /// in decimal (up to 24), the headers' six length varints (12), and the record's own
    /// length, attributes, timestamp and offset deltas, key and value lengths and header
    /// count (19)).
    fn header_overhead(&self) -> usize {
        135 + self.partition().topic.len()
    }
}
