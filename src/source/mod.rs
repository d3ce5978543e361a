//! The fetcher: one task per source partition, copying fetched batches into the WAL.
//! It reads through the client layer ([`crate::kafka::fetch`]) and holds the writer half
//! of its partition's log ([`crate::wal::LogWriter`]); it imports nothing of the
//! forwarder.
//!
//! Guarantee: a batch counts as fetched only once the WAL commit covering it returned;
//! `fetched_next` moves in the same atomic write as the batch, so a crash at any
//! instant resumes exactly after the last committed batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::OffsetReset;
use crate::kafka::cluster::{Cluster, ClusterError, Retry, PROBE_WAIT_MS};
use crate::metrics::{Latencies, PartitionMetrics};
use crate::record::{FetchedBatch, SourcePartition, SourceRecord};
use crate::stop::Gate;
use crate::wal::{LogWriter, WalError};

use crate::kafka::fetch::ReadPartition;
use crate::kafka::leaders::{LeaderReader, Leaders};

/// Why a fetcher stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The external cluster refused in a way retrying cannot fix.
    #[error("fetching {partition} stopped: {source}")]
    Cluster {
        /// The partition.
        partition: SourcePartition,
        /// The refusal.
        source: ClusterError,
    },
    /// The WAL failed.
    #[error("fetching {partition} stopped: {source}")]
    Wal {
        /// The partition.
        partition: SourcePartition,
        /// The WAL error.
        source: WalError,
    },
    /// The partition has no position to fetch from and `auto.offset.reset=none`.
    #[error("fetching {partition} stopped: {message}")]
    Position {
        /// The partition.
        partition: SourcePartition,
        /// What is missing and the way out.
        message: String,
    },
}

impl SourceError {
    /// The WAL error that stopped the fetcher, if that is what stopped it.
    pub fn wal_error(&self) -> Option<&WalError> {
        match self {
            SourceError::Wal { source, .. } => Some(source),
            SourceError::Cluster { .. } | SourceError::Position { .. } => None,
        }
    }
}

/// Everything one fetcher needs.
#[derive(Debug)]
pub struct Fetcher {
    /// The external cluster.
    pub cluster: Cluster,
    /// Its partitions' leaders, whose connections every fetcher of the connector shares.
    pub leaders: Arc<Leaders>,
    /// The writer half of the partition's WAL log.
    pub log: LogWriter,
    /// Start policy without checkpoint.
    pub reset: OffsetReset,
    /// The connector's consumer group and its committed offset for this partition: the
    /// start of a partition without a position, before `reset`.
    pub group: (String, Option<i64>),
    /// Max bytes per fetch.
    pub max_bytes: i32,
    /// Max broker wait per fetch.
    pub max_wait: Duration,
    /// Woken after each commit.
    pub forwarder_wake: Arc<Notify>,
    /// Counters.
    pub metrics: Arc<PartitionMetrics>,
    /// Fetch latencies of the connector.
    pub latencies: Latencies,
    /// Closed while the connector is paused.
    pub gate: Gate,
    /// Stops the task.
    pub cancel: CancellationToken,
}

/// How the fetcher paces fetches that come back empty.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    /// The broker's wait per fetch: `fetch.max.wait.ms`, longer while fetches below the
    /// high watermark come back empty.
    wait: Duration,
    /// Consecutive fetches below the high watermark that returned nothing.
    empty_streak: u32,
}

impl Fetcher {
    fn partition(&self) -> &SourcePartition {
        self.log.source_partition()
    }

    /// Runs until cancelled or a permanent error.
    pub async fn run(mut self) -> Result<(), SourceError> {
        let partition = self.partition().clone();
        let wal_err = |source| SourceError::Wal {
            partition: partition.clone(),
            source,
        };
        let mut next = self.log.fetched_next().map_err(wal_err)?;
        if let Some(next) = next {
            info!(%partition, offset = next, "fetching from the checkpoint");
        }
        let mut leader: Option<LeaderReader> = None;
        // The last failure that may mean the leader moved: a lookup after it reads
        // metadata newer than it.
        let mut failed_at: Option<std::time::Instant> = None;
        let mut retry = Retry::new(Duration::from_secs(10));
        let mut was_full = false;
        let mut failing = false;
        let mut pacing = Pacing {
            wait: self.max_wait,
            empty_streak: 0,
        };

        loop {
            if self.log.is_full() && !was_full {
                was_full = true;
                warn!(%partition, wal_bytes = self.log.used_bytes(), "WAL is full: fetching waits until the forwarders catch up (backpressure)");
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = self.log.wait_for_room() => {}
            }
            if was_full {
                was_full = false;
                info!(%partition, "WAL has room again: fetching resumes");
            }
            let cancel = self.cancel.clone();
            if !self.gate.pass(&cancel, &self.metrics).await {
                break;
            }

            let result = self
                .step(&mut leader, failed_at, &mut next, &mut pacing)
                .await;
            // The position is no longer in the partition: go on where auto.offset.reset
            // says; what that needs fails like a fetch (retried, or final).
            let result = match (result, next) {
                (Err(StepError::Cluster(e)), Some(from)) if e.is_offset_out_of_range() => self
                    .reposition(&mut leader, failed_at, from)
                    .await
                    .map(|to| {
                        next = Some(to);
                        self.metrics.fetched_next.store(to, Ordering::Relaxed);
                        Step::Idle(Duration::ZERO)
                    }),
                (result, _) => result,
            };
            match result {
                Ok(Step::Committed) => {
                    if failing {
                        info!(%partition, "fetching works again");
                        failing = false;
                    }
                    retry.reset();
                }
                Ok(Step::Cancelled) => break,
                Ok(Step::Idle(wait)) => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(StepError::Wal(e)) if e.is_storage_failure() => {
                    // sled refuses every write after this: the whole service stops (the
                    // task that runs this fetcher signals it; a restart resumes from the
                    // last commit).
                    error!(%partition, error = %e, "writing the WAL failed: stopping every partition");
                    return Err(wal_err(e));
                }
                Err(StepError::Wal(e)) => {
                    error!(%partition, error = %e, "WAL write failed: fetching stops for this partition");
                    return Err(wal_err(e));
                }
                Err(StepError::Position(message)) => {
                    error!(%partition, "{message}");
                    return Err(SourceError::Position { partition, message });
                }
                // Out of range while the bounds were read (retention moved the log start
                // meanwhile): read them again, from the same position.
                Err(StepError::Cluster(e)) if e.is_offset_out_of_range() => {
                    let delay = retry.delay();
                    warn!(%partition, error = %e, retry_in = ?delay, "the partition's bounds moved while they were read; reading them again");
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(StepError::Cluster(e)) if e.is_transient() => {
                    leader = None;
                    failed_at = Some(std::time::Instant::now());
                    failing = true;
                    self.metrics.fetch_errors.fetch_add(1, Ordering::Relaxed);
                    let delay = retry.delay();
                    warn!(%partition, error = %e, retry_in = ?delay, "fetch failed; reconnecting");
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(StepError::Cluster(e)) => {
                    error!(%partition, error = %e, "fetching stops for this partition");
                    return Err(SourceError::Cluster {
                        partition,
                        source: e,
                    });
                }
            }
        }
        debug!(%partition, "fetcher stopped");
        Ok(())
    }

    /// One fetch: the position (the start offset first, if there is none), the fetch,
    /// then an empty answer paced or a batch appended and committed.
    async fn step(
        &self,
        leader: &mut Option<LeaderReader>,
        failed_at: Option<std::time::Instant>,
        next: &mut Option<i64>,
        pacing: &mut Pacing,
    ) -> Result<Step, StepError> {
        let partition = self.partition();
        let reader = self.leader(leader, failed_at).await?;
        let offset = match *next {
            Some(offset) => offset,
            None => {
                let offset = self.first_position(reader).await?;
                *next = Some(offset);
                offset
            }
        };

        let fetch = reader.fetch(
            &self.cluster,
            offset,
            self.max_bytes,
            pacing.wait.as_millis() as i32,
        );
        let fetch_started = std::time::Instant::now();
        let fetched = tokio::select! {
            _ = self.cancel.cancelled() => return Ok(Step::Cancelled),
            r = fetch => r?,
        };
        let fetch_took = fetch_started.elapsed();
        self.latencies.fetch.observe(fetch_took.as_secs_f64());
        self.metrics.fetched_once.store(true, Ordering::Relaxed);
        let high_watermark = fetched.high_watermark;
        if high_watermark >= 0 {
            self.metrics
                .source_high_watermark
                .store(high_watermark, Ordering::Relaxed);
        }
        let decoded = fetched.decoded;
        if decoded.aborted_records > 0 {
            debug!(%partition, offset, records = decoded.aborted_records, "dropped records of aborted transactions");
            self.metrics
                .aborted_records
                .fetch_add(decoded.aborted_records, Ordering::Relaxed);
        }
        if decoded.batch.next_offset == offset {
            return Ok(self.after_empty_fetch(
                offset,
                high_watermark,
                fetched.last_stable_offset,
                decoded.incomplete,
                pacing,
            ));
        }
        let fetch_ms = fetch_took.as_millis() as u64;
        let wait_ms = pacing.wait.as_millis() as u64;
        *pacing = Pacing {
            wait: self.max_wait,
            empty_streak: 0,
        };
        self.commit_batch(decoded.batch, offset, fetch_ms, wait_ms, next)
            .await
    }

    /// The position of a partition without one: where `auto.offset.reset` says, made
    /// durable at once (a restart must not re-apply `latest` later and skip what arrived
    /// in between).
    async fn first_position(&self, reader: &mut LeaderReader) -> Result<i64, StepError> {
        let partition = self.partition();
        if let (group, Some(offset)) = &self.group {
            self.log.append(&FetchedBatch {
                records: Vec::new(),
                next_offset: *offset,
            })?;
            self.log.commit().await?;
            info!(%partition, offset, %group, "no checkpoint: fetching from the committed offset of the connector's consumer group");
            self.metrics.fetched_next.store(*offset, Ordering::Relaxed);
            return Ok(*offset);
        }
        if self.reset == OffsetReset::None {
            return Err(StepError::Position(format!(
                "{partition} has no position (no checkpoint, nothing of it in the internal topic) and auto.offset.reset=none: set auto.offset.reset to earliest or latest, or give the partition an offset through the API (PATCH /connectors/<name>/offsets while the connector is stopped; docs/api.md)"
            )));
        }
        let offset = self.start_offset(reader).await?;
        self.log.append(&FetchedBatch {
            records: Vec::new(),
            next_offset: offset,
        })?;
        self.log.commit().await?;
        info!(%partition, offset, policy = ?self.reset, "no checkpoint: fetching from auto.offset.reset");
        self.metrics.fetched_next.store(offset, Ordering::Relaxed);
        Ok(offset)
    }

    /// What follows a fetch at `offset` that moved nothing: fetch again at once, or
    /// after a pause, and maybe with a longer broker wait.
    fn after_empty_fetch(
        &self,
        offset: i64,
        high_watermark: i64,
        last_stable_offset: i64,
        incomplete: bool,
        pacing: &mut Pacing,
    ) -> Step {
        let partition = self.partition();
        if incomplete {
            warn!(%partition, offset, max_bytes = self.max_bytes, "the broker returned only part of a record batch; fetching again (raise fetch.max.bytes if this repeats)");
            return Step::Idle(Duration::from_millis(200));
        }
        if high_watermark <= offset {
            // Nothing new within max_wait: fetch again at once (the broker waited).
            pacing.empty_streak = 0;
            return Step::Idle(Duration::ZERO);
        }
        // Records exist but none came back: an open transaction holds the last stable
        // offset back, or the broker could not read them within the wait (a slow
        // storage backend), or it answered before they became readable (tansu does,
        // often, while records arrive). Do not spin: the pause between fetches grows
        // from nothing to 200 ms. From the third empty fetch in a row the broker may
        // also hold each fetch longer (a slow storage backend); not before, because
        // tansu holds a fetch for about half its wait even when records arrive
        // meanwhile (measured: a wait doubled by one race delayed records by seconds).
        // An open transaction gets the long pause at once.
        let transaction_open = (0..=offset).contains(&last_stable_offset);
        pacing.empty_streak = if transaction_open {
            u32::MAX
        } else {
            pacing.empty_streak.saturating_add(1)
        };
        if pacing.empty_streak >= 3 {
            let longer = (pacing.wait * 2)
                .min(self.cluster.timeout / 2)
                .max(self.max_wait);
            if longer != pacing.wait {
                debug!(%partition, offset, high_watermark, last_stable_offset, wait = ?longer, "fetches below the high watermark keep returning nothing; waiting longer per fetch");
            }
            pacing.wait = longer;
        }
        Step::Idle(empty_fetch_pause(pacing.empty_streak))
    }

    /// Appends the batch fetched at `offset` and commits it; it counts as fetched once
    /// the commit returned. A batch without records (only transaction markers or aborted
    /// records) is still committed: it moves `fetched_next` past them.
    async fn commit_batch(
        &self,
        batch: FetchedBatch,
        offset: i64,
        fetch_ms: u64,
        wait_ms: u64,
        next: &mut Option<i64>,
    ) -> Result<Step, StepError> {
        let partition = self.partition();
        let bytes: usize = batch
            .records
            .iter()
            .map(SourceRecord::approximate_size)
            .sum();
        let count = batch.records.len() as u64;
        let next_offset = batch.next_offset;
        let first_timestamp_ms = batch.records.first().map(|r| r.timestamp_ms);
        let commit_started = std::time::Instant::now();
        self.log.append(&batch)?;
        // Cancellable: a flush on failed storage may never return. Not counted as
        // fetched then; a restart resumes from the last completed commit.
        tokio::select! {
            _ = self.cancel.cancelled() => return Ok(Step::Cancelled),
            r = self.log.commit() => r?,
        }
        debug!(%partition, offset, records = count, fetch_ms, wait_ms,
            commit_ms = commit_started.elapsed().as_millis() as u64,
            first_record_age_ms = first_timestamp_ms.map(crate::record::age_ms), "fetched");
        *next = Some(next_offset);
        self.metrics
            .fetched_next
            .store(next_offset, Ordering::Relaxed);
        self.metrics
            .fetched_records
            .fetch_add(count, Ordering::Relaxed);
        self.metrics
            .fetched_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.forwarder_wake.notify_one();
        Ok(Step::Committed)
    }

    async fn start_offset(&self, reader: &mut LeaderReader) -> Result<i64, ClusterError> {
        let bounds = Bounds::read(&self.cluster, reader, self.reset == OffsetReset::Latest).await?;
        Ok(bounds.start(self.reset))
    }
}

/// A source partition's first offset and its ends, as far as `auto.offset.reset` needs
/// them.
struct Bounds {
    earliest: i64,
    /// The high watermark (not below `earliest`).
    end: i64,
    /// The end as a read_committed consumer sees it: the last stable offset, from a
    /// fetch (tansu's ListOffsets(latest) is not exact; docs/compatibility.md). Below an
    /// open transaction, not past it: starting at the high watermark would copy the
    /// second half of a transaction that commits later. A broker that sends no last
    /// stable offset (-1) has no transactions open there: its high watermark.
    stable_end: i64,
}

impl Bounds {
    /// ListOffsets(earliest), then, if `need_end`, a probe fetch for the ends (without it
    /// both ends are `earliest`).
    async fn read(
        cluster: &Cluster,
        reader: &mut impl ReadPartition,
        need_end: bool,
    ) -> Result<Self, ClusterError> {
        let earliest = crate::kafka::fetch::earliest(reader, cluster).await?;
        if !need_end {
            return Ok(Self {
                earliest,
                end: earliest,
                stable_end: earliest,
            });
        }
        let fetched = reader.fetch(cluster, earliest, 1, PROBE_WAIT_MS).await?;
        let stable = if fetched.last_stable_offset >= 0 {
            fetched.last_stable_offset.min(fetched.high_watermark)
        } else {
            fetched.high_watermark
        };
        Ok(Self {
            earliest,
            end: fetched.high_watermark.max(earliest),
            stable_end: stable.max(earliest),
        })
    }

    /// Where `reset` starts.
    fn start(&self, reset: OffsetReset) -> i64 {
        match reset {
            OffsetReset::Earliest | OffsetReset::None => self.earliest,
            OffsetReset::Latest => self.stable_end,
        }
    }
}

impl Fetcher {
    /// The reader of the partition through its leader's session, looking the leader up
    /// first if there is none (in metadata newer than `failed_at`).
    async fn leader<'a>(
        &self,
        leader: &'a mut Option<LeaderReader>,
        failed_at: Option<std::time::Instant>,
    ) -> Result<&'a mut LeaderReader, StepError> {
        if leader.is_none() {
            let partition = self.partition();
            *leader = Some(
                self.leaders
                    .reader(&partition.topic, partition.partition, failed_at)
                    .await?,
            );
        }
        Ok(leader.as_mut().expect("leader was just set"))
    }

    /// Where to go on after the broker answered OFFSET_OUT_OF_RANGE at `from`, as a Kafka
    /// consumer with the same `auto.offset.reset` does, never silently: records removed
    /// before they were copied (retention, DeleteRecords) are counted, logged and named
    /// in the status. [`StepError::Position`] when `none` says to stop. The new position
    /// is committed to the WAL before it is used.
    async fn reposition(
        &self,
        leader: &mut Option<LeaderReader>,
        failed_at: Option<std::time::Instant>,
        from: i64,
    ) -> Result<i64, StepError> {
        let partition = self.partition();
        let reader = self.leader(leader, failed_at).await?;
        let bounds = Bounds::read(&self.cluster, reader, true).await?;
        let (earliest, end) = (bounds.earliest, bounds.end);
        let policy = match self.reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
            OffsetReset::None => "none",
        };
        if (earliest..=end).contains(&from) {
            // In range again (a leader that had not caught up): fetch there once more.
            return Ok(from);
        }
        let target = match self.reset {
            OffsetReset::Earliest | OffsetReset::Latest => bounds.start(self.reset),
            OffsetReset::None if from < earliest => {
                return Err(StepError::Position(format!(
                    "source offsets {from}..{} of {partition} were removed (retention or DeleteRecords) before they were copied, and auto.offset.reset=none: the partition stops here. To go on from the oldest record kept, stop the connector, set this partition's offset to {earliest} (PATCH /connectors/<name>/offsets; docs/api.md) and resume it, or set auto.offset.reset=earliest",
                    earliest - 1
                )));
            }
            OffsetReset::None => {
                return Err(StepError::Position(format!(
                    "{partition} ends at offset {end}, below kafka-direct's position {from} (the partition was truncated or the topic re-created), and auto.offset.reset=none: the partition stops here; set its offset through the API (PATCH /connectors/<name>/offsets; docs/api.md)"
                )));
            }
        };
        if from < earliest {
            let skipped = (target - from).max(0);
            self.metrics
                .skipped_offsets
                .fetch_add(skipped as u64, Ordering::Relaxed);
            *self
                .metrics
                .skipped_range
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((from, target));
            warn!(%partition, from, to = target - 1, skipped, policy,
                "source offsets were removed (retention or DeleteRecords) before they were copied: skipped as auto.offset.reset says");
        } else {
            warn!(%partition, position = from, end, resume = target, policy,
                "the source partition ends below kafka-direct's position (truncated, or the topic re-created): going on as auto.offset.reset says");
        }
        self.log.append(&FetchedBatch {
            records: Vec::new(),
            next_offset: target,
        })?;
        self.log.commit().await?;
        Ok(target)
    }
}

/// The pause before the next fetch after `streak` empty fetches below the high
/// watermark: none after the first, then 5, 10, 20 ... ms up to 200 ms.
fn empty_fetch_pause(streak: u32) -> Duration {
    match streak {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(5u64 << (n - 2).min(6)).min(Duration::from_millis(200)),
    }
}

enum Step {
    Committed,
    Cancelled,
    Idle(Duration),
}

enum StepError {
    Cluster(ClusterError),
    Wal(WalError),
    /// No position to fetch from, and auto.offset.reset says not to choose one.
    Position(String),
}

impl From<ClusterError> for StepError {
    fn from(e: ClusterError) -> Self {
        Self::Cluster(e)
    }
}

impl From<WalError> for StepError {
    fn from(e: WalError) -> Self {
        Self::Wal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fetches_pause_longer_each_time_up_to_200_ms() {
        let pauses: Vec<u64> = (1..=9)
            .map(|n| empty_fetch_pause(n).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [0, 5, 10, 20, 40, 80, 160, 200, 200]);
        assert_eq!(empty_fetch_pause(u32::MAX), Duration::from_millis(200));
    }
}
