//! The forwarder: one task per partition, draining WAL entries into the internal
//! partition of the same number, exactly once.
//!
//! It holds the reader half of its partition's WAL log ([`crate::wal::LogReader`]) and
//! produces through the client layer ([`crate::kafka::produce`]); it imports nothing of
//! the fetcher.
//!
//! Guarantees:
//! - each produce request is sent once (the client layer's connection has no retry of
//!   its own); retries happen here, each one after a fresh tail check ([`tail`]).
//! - `forwarded_next` advances only after the produce is acknowledged.
//! - The offsets the broker assigns are compared with the partition end we expect (we are
//!   the single writer); a mismatch is logged as an error and counted.

pub mod dead_letter;
pub mod tail;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Compression;
use crate::format::{Formatter, Verdict};
use crate::kafka::cluster::{Cluster, ClusterError, Retry};
use crate::kafka::produce::{Outgoing, PartitionWriter};
use crate::kafka::settle::Settling;
use crate::metrics::{Latencies, PartitionMetrics};
use crate::record::{FetchedBatch, SourcePartition, SourceRecord};
use crate::stop::Gate;
use crate::wal::{LogReader, WalError};
use dead_letter::DeadLetterSender;
use tail::{Routed, TailError};

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
    /// The internal cluster (built without rskafka-internal retries).
    pub cluster: Cluster,
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

    /// Connects to the internal partition's leader.
    async fn connect(&self) -> Result<PartitionWriter, ClusterError> {
        PartitionWriter::connect(
            &self.cluster,
            &self.internal_topic,
            self.partition().partition,
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

    /// After a produce acknowledged at `base_offset`: the latencies and figures, and the
    /// check that the broker stored the run at `expected`, where the single writer
    /// expects it. `Some(None)`: it did (the tail moves by the run); `Some(Some(tail))`:
    /// it did not, and the tail was read again; `None`: cancelled while reading it.
    async fn stored(
        &mut self,
        run: &tail::Run<'_>,
        expected: i64,
        base_offset: i64,
        produce_took: Duration,
        leader: &mut Option<PartitionWriter>,
    ) -> Result<Option<Option<Tail>>, SinkError> {
        let partition = self.partition().clone();
        let count = run.records.len();
        self.latencies.observe_produce(
            produce_took,
            run.records.iter().map(|r| r.record.timestamp_ms),
        );
        self.metrics.forwarder_ready.store(true, Ordering::Relaxed);
        self.metrics.forwarded_bytes.fetch_add(
            run.records
                .iter()
                .map(|r| r.record.approximate_size() as u64)
                .sum(),
            Ordering::Relaxed,
        );
        debug!(%partition, records = count, produce_ms = produce_took.as_millis() as u64,
            first_record_age_ms = crate::record::age_ms(run.records[0].record.timestamp_ms), "produced");
        if base_offset == expected {
            return Ok(Some(None));
        }
        self.metrics
            .unexpected_produce_offsets
            .fetch_add(1, Ordering::Relaxed);
        error!(%partition, internal = %self.internal_name(), expected_first = expected, assigned = base_offset, count,
            "the broker stored the batch at an unexpected offset: another producer writes to this internal partition, or a request was stored twice");
        // Re-read the truth before going on.
        self.set_in_doubt(true);
        let Some(tail) = self.read_settled_tail(leader).await? else {
            return Ok(None);
        };
        self.set_in_doubt(false);
        Ok(Some(Some(tail)))
    }

    /// After a produce whose outcome is unknown (`error`): waits, then reads the tail
    /// settled, which says what was stored. `None`: cancelled.
    async fn after_unknown_outcome(
        &mut self,
        error: ClusterError,
        retry: &mut Retry,
        leader: &mut Option<PartitionWriter>,
    ) -> Result<Option<Tail>, SinkError> {
        let partition = self.partition().clone();
        self.set_in_doubt(true);
        self.metrics.produce_errors.fetch_add(1, Ordering::Relaxed);
        let delay = retry.delay();
        warn!(%partition, error = %error, retry_in = ?delay, "produce outcome unknown; will reconnect and re-read the internal partition's tail before re-sending");
        tokio::select! {
            _ = self.cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        let Some(tail) = self.read_settled_tail(leader).await? else {
            return Ok(None);
        };
        info!(%partition, internal_end = tail.end, stored_next = ?tail.stored_next, "internal partition's tail re-read; resuming");
        self.set_in_doubt(false);
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
                tokio::select! {
                    _ = self.cancel.cancelled() => return Ok(Flow::Stop),
                    _ = tokio::time::sleep(delay) => {}
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
                return Ok(Some(settling.into_inner()));
            }
            info!(partition = %self.partition(), before, now = settling.last().end, "internal partition's end moved while settling (a request of an earlier connection landed); reading again");
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
                    let delay = retry.delay();
                    warn!(partition = %self.partition(), error = %e, retry_in = ?delay, "reading the internal partition's tail failed; retrying");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay) => {}
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
        mut leader: Option<PartitionWriter>,
    ) -> Result<(), SinkError> {
        let partition = self.partition().clone();
        let wal_err = |source| SinkError::Wal {
            partition: partition.clone(),
            source,
        };
        let mut tail = initial;
        let mut retry = Retry::new(Duration::from_secs(10));
        // Bytes per produce request: forward.batch.max.bytes, halved each time the broker
        // refuses a batch as larger than the topic's max.message.bytes (the byte count
        // here is an estimate of the encoded batch).
        let mut produce_max_bytes = self.max_bytes;

        // Entries read and decoded once, kept until every record in them is stored.
        let mut pending: VecDeque<FetchedBatch> = VecDeque::new();
        let mut read_after: Option<i64> = None;

        while !self.cancel.is_cancelled() {
            let cancel = self.cancel.clone();
            if !self.gate.pass(&cancel, &self.metrics).await {
                break;
            }
            if pending.is_empty() {
                // Read before the entries: whatever is appended after this read lies
                // at or above it.
                let fetched_next = self.log.checkpoints().map_err(wal_err)?.fetched_next;
                let entries = self
                    .log
                    .entries_after(read_after, self.max_records, self.max_bytes)
                    .map_err(wal_err)?;
                let Some(last) = entries.last() else {
                    // Nothing left to forward: the position moves past records that
                    // were fetched but are not copied (transaction markers, aborted
                    // transactions) too.
                    if let Some(next) = fetched_next {
                        self.forwarded_up_to(next).map_err(wal_err)?;
                    }
                    self.metrics.forwarder_ready.store(true, Ordering::Relaxed);
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                };
                read_after = Some(last.first_offset());
                pending.extend(entries);
            }
            // Needed here too, not only after a produce: an entry whose records are all
            // stored but whose next_offset lies beyond them (trailing control records)
            // survives the start-up alignment and would otherwise never be released.
            let stored_next = self.frontier(&tail);
            self.release_stored(&mut pending, stored_next)
                .map_err(wal_err)?;
            let records = tail::unstored_records(pending.make_contiguous(), stored_next);
            if records.is_empty() {
                continue;
            }
            // One produce request goes to one place and stays within the batch limits
            // *after* the source headers are added; the rest waits for the next round.
            let run = tail::next_run(
                &records,
                self.max_records,
                produce_max_bytes,
                self.header_overhead(),
                |r| self.route(r),
            )
            .map_err(wal_err)?;
            let count = run.records.len();
            let last_source_offset = run.records[count - 1].record.offset;

            if run.destination == tail::Destination::DeadLetters {
                if self.send_dead_letters(&run, &mut retry).await? == Flow::Stop {
                    break;
                }
                let stored_next = self.frontier(&tail);
                self.release_stored(&mut pending, stored_next)
                    .map_err(wal_err)?;
                continue;
            }

            if let Some(mark) = self.formatter.durable_mark() {
                // Every schema version a record of this run may name is durable first.
                let durable = tokio::select! {
                    _ = self.cancel.cancelled() => break,
                    r = self.log.commit_through(mark) => r,
                };
                durable.map_err(wal_err)?;
            }
            if leader.is_none() {
                match self.connect().await {
                    Ok(pc) => leader = Some(pc),
                    Err(e) if e.is_transient() => {
                        let delay = retry.delay();
                        warn!(%partition, error = %e, retry_in = ?delay, "cannot reach the internal partition's leader; retrying");
                        tokio::select! {
                            _ = self.cancel.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                    Err(e) => return Err(self.cluster_failure(e)),
                }
            }
            let pc = leader.as_mut().expect("leader was just set");
            let produce_started = std::time::Instant::now();
            // Not cancellable: a produce in flight is finished, then the loop ends.
            let result = pc
                .produce(&self.cluster, &partition, &run.records, self.compression)
                .await;
            match result {
                Ok(base_offset) => {
                    retry.reset();
                    let stored = self
                        .stored(
                            &run,
                            tail.end,
                            base_offset,
                            produce_started.elapsed(),
                            &mut leader,
                        )
                        .await?;
                    let Some(stored) = stored else {
                        break;
                    };
                    tail = stored.unwrap_or(Tail {
                        end: tail.end + count as i64,
                        stored_next: Some(last_source_offset + 1),
                    });
                    let stored_next = self.frontier(&tail);
                    self.release_stored(&mut pending, stored_next)
                        .map_err(wal_err)?;
                    self.metrics
                        .forwarded_records
                        .fetch_add(count as u64, Ordering::Relaxed);
                }
                Err(e) if e.is_transient() => {
                    // The outcome is unknown: the batch may or may not be stored.
                    leader = None;
                    match self
                        .after_unknown_outcome(e, &mut retry, &mut leader)
                        .await?
                    {
                        Some(t) => {
                            // Records the lost acknowledgement covered are forwarded too.
                            self.metrics
                                .forwarded_records
                                .fetch_add((t.end - tail.end).max(0) as u64, Ordering::Relaxed);
                            tail = t;
                        }
                        None => break,
                    }
                }
                // Refused whole, nothing stored: the same records go again in smaller
                // requests. A single record too large is a failure to report.
                Err(e) if e.is_message_too_large() && count > 1 => {
                    let bytes: usize = run
                        .records
                        .iter()
                        .map(|r| r.record.approximate_size() + self.header_overhead())
                        .sum();
                    produce_max_bytes = (bytes / 2).max(1);
                    warn!(%partition, internal = %self.internal_name(), records = count, approximate_bytes = bytes, produce_max_bytes,
                        "the internal broker refused a produce as larger than the topic's max.message.bytes; sending smaller requests (lower forward.batch.max.bytes to avoid this)");
                }
                Err(e) if e.is_message_too_large() => {
                    error!(%partition, internal = %self.internal_name(), source_offset = last_source_offset,
                        approximate_bytes = run.records[0].record.approximate_size() + self.header_overhead(),
                        "this record alone is larger than the internal topic's max.message.bytes: raise it on the internal topic (kafka-configs --alter --entity-type topics --add-config max.message.bytes=...) and restart the connector");
                    return Err(self.cluster_failure(e));
                }
                Err(e) => return Err(self.cluster_failure(e)),
            }
        }
        debug!(%partition, "forwarder stopped");
        Ok(())
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
