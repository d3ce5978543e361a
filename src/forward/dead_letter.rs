//! The dead-letter topic, exactly once.
//!
//! Each forwarder sends its partition's records in source-offset order, one produce at
//! a time, each to the internal partition (good records) or to the dead-letter topic
//! (refused ones), waiting for the acknowledgement before the next. So for one source
//! partition, every record below the highest source offset stored in *either* place is
//! stored, in exactly one of them: the forwarder resumes after
//! `max(internal tail, dead-letter tail)`.
//!
//! The internal partition has one writer, so its last record gives its tail. The
//! dead-letter topic is shared by every partition of the connector, so its tail for one
//! source partition is the highest source offset among that partition's dead letters,
//! found by reading it:
//! - at start-up, every dead-letter partition is read from a *floor* to its end; the
//!   floor and the tails found below it are kept in the WAL's metadata (written after
//!   the scan and at a clean stop), so a restart reads only what was written since;
//! - after a produce whose outcome is unknown, the forwarder waits for the partition's
//!   end to settle and reads it from the end it knew before sending.
//!
//! Every dead letter carries the source headers (`kafka-direct.source.*`), as internal
//! records do, and Kafka Connect's `__connect.errors.*` headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Compression;
use crate::format::{ErrorKind, Rejection};
use crate::kafka::cluster::{Cluster, ClusterError, Retry};
use crate::kafka::produce::{Outgoing, PartitionWriter};
use crate::kafka::settle::Settling;
use crate::record::{SourcePartition, SourceRecord};
use crate::state::{self, DeadLetterFloors};
use crate::wal::{Wal, WalError};

/// Headers of a dead letter, as Kafka Connect's dead-letter reporter names them.
pub mod connect_headers {
    /// Source topic.
    pub const TOPIC: &str = "__connect.errors.topic";
    /// Source partition, decimal.
    pub const PARTITION: &str = "__connect.errors.partition";
    /// Source offset, decimal.
    pub const OFFSET: &str = "__connect.errors.offset";
    /// The connector's name.
    pub const CONNECTOR: &str = "__connect.errors.connector.name";
    /// The stage that refused the record (always the value converter here).
    pub const STAGE: &str = "__connect.errors.stage";
    /// The error kind ([`crate::format::ErrorKind::name`]).
    pub const CLASS: &str = "__connect.errors.exception.class.name";
    /// What is wrong and where.
    pub const MESSAGE: &str = "__connect.errors.exception.message";
}

/// The dead letter of `record`: the record unchanged plus the error headers.
pub fn dead_letter<'a>(
    connector: &str,
    source: &SourcePartition,
    record: &'a SourceRecord,
    why: &Rejection,
) -> Outgoing<'a> {
    use connect_headers as h;
    Outgoing {
        record,
        value: None,
        extra_headers: vec![
            (h::TOPIC, source.topic.clone().into_bytes()),
            (h::PARTITION, source.partition.to_string().into_bytes()),
            (h::OFFSET, record.offset.to_string().into_bytes()),
            (h::CONNECTOR, connector.as_bytes().to_vec()),
            (h::STAGE, b"VALUE_CONVERTER".to_vec()),
            (h::CLASS, why.kind.name().as_bytes().to_vec()),
            (h::MESSAGE, why.message.clone().into_bytes()),
        ],
    }
}

#[derive(Debug)]
struct State {
    /// Per dead-letter partition, an end it had at some point: a produce sent later
    /// lands at or above it.
    known_end: Vec<i64>,
    /// Per source partition, the source offset after its last dead letter.
    next: HashMap<SourcePartition, i64>,
}

/// The connector's dead-letter topic and what each source partition stored there.
#[derive(Debug)]
pub struct DeadLetters {
    cluster: Cluster,
    /// The topic.
    pub topic: String,
    /// The connector's name (a header of every dead letter).
    pub connector: String,
    wal: Wal,
    state: Mutex<State>,
}

/// The (source partition, source offset, kind) a dead letter of `connector` names; `None`
/// for a record of another connector (a dead-letter topic may be shared) or of another
/// writer.
fn source_of(
    record: &SourceRecord,
    connector: &str,
) -> Option<(SourcePartition, i64, Option<ErrorKind>)> {
    let text = |name: &str| {
        record
            .headers
            .iter()
            .rev()
            .find(|(k, _)| k == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
    };
    if text(connect_headers::CONNECTOR)? != connector {
        return None;
    }
    use crate::record::source_headers as s;
    let source = SourcePartition::new(text(s::TOPIC)?, text(s::PARTITION)?.parse().ok()?);
    let offset = text(s::OFFSET)?.parse().ok()?;
    let kind = text(connect_headers::CLASS).and_then(ErrorKind::from_name);
    Some((source, offset, kind))
}

/// Forgets the dead-letter tails of `sources` kept in the WAL (after their offsets were
/// changed): the next [`DeadLetters::open`] reads only from the floors, which must
/// already lie at the topic's ends (an `open` just before does that).
pub fn forget(wal: &Wal, connector: &str, sources: &[SourcePartition]) -> Result<(), WalError> {
    let state = state::State::of(wal);
    let mut stored = state.dead_letters(connector)?;
    stored
        .next
        .retain(|(t, p, _)| !sources.iter().any(|s| s.topic == *t && s.partition == *p));
    state.put_dead_letters(connector, &stored)
}

impl DeadLetters {
    /// Reads what the dead-letter topic (which must exist, with `partitions`
    /// partitions) stores for each source partition, from the floors kept in the WAL.
    /// With `settle`, reads again until the ends stay put for [`SETTLE`](crate::kafka::settle::SETTLE) (a produce of
    /// a run that crashed may still land).
    pub async fn open(
        cluster: Cluster,
        topic: String,
        partitions: i32,
        connector: String,
        wal: Wal,
        settle: bool,
        cancel: &CancellationToken,
    ) -> Result<Self, DeadLetterError> {
        let stored = state::State::of(&wal).dead_letters(&connector)?;
        let mut next: HashMap<SourcePartition, i64> = stored
            .next
            .into_iter()
            .map(|(t, p, n)| (SourcePartition::new(t, p), n))
            .collect();
        let mut known_end = Vec::new();
        let mut scanned = 0u64;
        for partition in 0..partitions {
            let mut conn = PartitionWriter::connect(&cluster, &topic, partition).await?;
            let earliest = conn.earliest(&cluster).await?;
            let mut from = stored
                .floors
                .get(&partition)
                .copied()
                .unwrap_or(0)
                .max(earliest);
            let mut settling = Settling::new(conn.high_watermark(&cluster, earliest).await?);
            loop {
                let end = *settling.last();
                scanned += scan(
                    &cluster,
                    &mut conn,
                    &connector,
                    from,
                    end,
                    |source, offset, _| {
                        let n = next.entry(source).or_insert(offset + 1);
                        *n = (*n).max(offset + 1);
                    },
                )
                .await?;
                // Stopping: what was read is counted; the floors stay true of it.
                if !settle || !settling.pause(cancel).await {
                    break;
                }
                if settling.agrees(conn.high_watermark(&cluster, earliest).await?) {
                    break;
                }
                from = end;
            }
            known_end.push(settling.into_inner());
        }
        info!(topic = %topic, partitions, read = scanned, "dead-letter topic read");
        let dlq = Self {
            cluster,
            topic,
            connector,
            wal,
            state: Mutex::new(State { known_end, next }),
        };
        dlq.persist()?;
        Ok(dlq)
    }

    /// Keeps the current floors and tails in the WAL (durable with its next commit).
    /// Call only when no dead-letter produce is in doubt.
    pub fn persist(&self) -> Result<(), WalError> {
        let state = self.state.lock().expect("dead-letter state");
        let stored = DeadLetterFloors {
            floors: state
                .known_end
                .iter()
                .enumerate()
                .map(|(p, end)| (p as i32, *end))
                .collect(),
            next: state
                .next
                .iter()
                .map(|(s, n)| (s.topic.clone(), s.partition, *n))
                .collect(),
        };
        state::State::of(&self.wal).put_dead_letters(&self.connector, &stored)
    }

    /// The source offset after the last dead letter of `source`, if it has any.
    pub fn stored_next(&self, source: &SourcePartition) -> Option<i64> {
        self.state
            .lock()
            .expect("dead-letter state")
            .next
            .get(source)
            .copied()
    }

    /// The dead-letter partition of `source`'s records: the same one on every run
    /// while the topic's partition count stays the same.
    fn partition_for(&self, source: &SourcePartition) -> i32 {
        let count = self
            .state
            .lock()
            .expect("dead-letter state")
            .known_end
            .len() as u64;
        (source.stable_hash() % count.max(1)) as i32
    }
}

/// Why the dead-letter topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The internal cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Reads records `from..end`, handing the source of each dead letter of `connector` to
/// `found`; returns how many records were read.
async fn scan(
    cluster: &Cluster,
    conn: &mut PartitionWriter,
    connector: &str,
    from: i64,
    end: i64,
    mut found: impl FnMut(SourcePartition, i64, Option<ErrorKind>),
) -> Result<u64, ClusterError> {
    let mut at = from;
    let mut read = 0;
    let mut others = 0u64;
    while at < end {
        let records = conn.records_between(cluster, at, end, 1 << 20).await?;
        let Some(last) = records.last() else {
            return Err(ClusterError::NoRecord {
                what: "reading the dead-letter topic".into(),
                role: cluster.role,
                offset: at,
            });
        };
        at = last.offset + 1;
        for r in &records {
            read += 1;
            match source_of(r, connector) {
                Some((source, offset, kind)) => found(source, offset, kind),
                None => others += 1,
            }
        }
    }
    if others > 0 {
        info!(records = others, from, end, "the dead-letter topic holds records of other connectors or writers; they are left alone");
    }
    Ok(read)
}

/// One forwarder's sender of dead letters.
#[derive(Debug)]
pub struct DeadLetterSender {
    dlq: Arc<DeadLetters>,
    source: SourcePartition,
    partition: i32,
    conn: Option<PartitionWriter>,
    /// While a produce's outcome is unknown: the end known before it was sent.
    in_doubt_from: Option<i64>,
}

impl DeadLetterSender {
    /// A sender for the dead letters of `source`.
    pub fn new(dlq: Arc<DeadLetters>, source: SourcePartition) -> Self {
        let partition = dlq.partition_for(&source);
        Self {
            dlq,
            source,
            partition,
            conn: None,
            in_doubt_from: None,
        }
    }

    /// The dead-letter topic.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dlq
    }

    /// The source offset after this partition's last stored dead letter.
    pub fn stored_next(&self) -> Option<i64> {
        self.dlq.stored_next(&self.source)
    }

    /// Produces `records` (dead letters of this source partition, in offset order). On a
    /// transient error the outcome is unknown: call [`DeadLetterSender::resolve`].
    pub async fn produce(
        &mut self,
        records: &[Outgoing<'_>],
        compression: Compression,
    ) -> Result<(), ClusterError> {
        let dlq = &self.dlq;
        if self.conn.is_none() {
            self.conn =
                Some(PartitionWriter::connect(&dlq.cluster, &dlq.topic, self.partition).await?);
        }
        let from = dlq.state.lock().expect("dead-letter state").known_end[self.partition as usize];
        self.in_doubt_from = Some(from);
        let conn = self.conn.as_mut().expect("just connected");
        match conn
            .produce(&dlq.cluster, &self.source, records, compression)
            .await
        {
            Ok(base) => {
                self.in_doubt_from = None;
                let last = records
                    .last()
                    .expect("a produce is never empty")
                    .record
                    .offset;
                let mut state = dlq.state.lock().expect("dead-letter state");
                let end = &mut state.known_end[self.partition as usize];
                *end = (*end).max(base + records.len() as i64);
                state.next.insert(self.source.clone(), last + 1);
                Ok(())
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// After a produce with an unknown outcome: waits until the dead-letter partition's
    /// end stays put for [`SETTLE`](crate::kafka::settle::SETTLE), reading what landed meanwhile, so that
    /// [`DeadLetterSender::stored_next`] is true again. Returns the dead letters of this
    /// partition found (per kind), or `None` when cancelled.
    pub async fn resolve(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<[u64; ErrorKind::ALL.len()]>, ClusterError> {
        let Some(mut from) = self.in_doubt_from else {
            return Ok(Some(Default::default()));
        };
        let mut counts = [0u64; ErrorKind::ALL.len()];
        let mut retry = Retry::new(Duration::from_secs(10));
        let mut settling = Settling::new(None);
        loop {
            if !settling.pause(cancel).await {
                return Ok(None);
            }
            let attempt = self.read_since(from, &mut counts);
            let result = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                r = attempt => r,
            };
            match result {
                Ok(end) if settling.agrees(Some(end)) => break,
                Ok(end) => from = end,
                Err(e) if e.is_transient() => {
                    self.conn = None;
                    let delay = retry.delay();
                    warn!(partition = %self.source, error = %e, retry_in = ?delay, "reading the dead-letter topic failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.in_doubt_from = None;
        Ok(Some(counts))
    }

    /// Reads the dead-letter partition from `from` to its end, noting this partition's
    /// dead letters; returns the end.
    async fn read_since(
        &mut self,
        from: i64,
        counts: &mut [u64; ErrorKind::ALL.len()],
    ) -> Result<i64, ClusterError> {
        let dlq = &self.dlq;
        if self.conn.is_none() {
            self.conn =
                Some(PartitionWriter::connect(&dlq.cluster, &dlq.topic, self.partition).await?);
        }
        let conn = self.conn.as_mut().expect("just connected");
        let earliest = conn.earliest(&dlq.cluster).await?;
        let end = conn.high_watermark(&dlq.cluster, earliest).await?;
        let mut newest = None;
        scan(
            &dlq.cluster,
            conn,
            &dlq.connector,
            from.max(earliest),
            end,
            |source, offset, kind| {
                if source == self.source {
                    newest = Some(offset + 1);
                    if let Some(kind) = kind {
                        counts[kind.index()] += 1;
                    }
                }
            },
        )
        .await?;
        let mut state = dlq.state.lock().expect("dead-letter state");
        let known = &mut state.known_end[self.partition as usize];
        *known = (*known).max(end);
        if let Some(next) = newest {
            let n = state.next.entry(self.source.clone()).or_insert(next);
            *n = (*n).max(next);
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_names_its_source_and_why() {
        let record = SourceRecord {
            offset: 42,
            timestamp_ms: 1,
            key: Some(b"k".to_vec()),
            value: Some(b"{oops".to_vec()),
            headers: vec![("user".into(), Some(b"h".to_vec()))],
        };
        let source = SourcePartition::new("orders", 3);
        let why = Rejection {
            kind: ErrorKind::MalformedJson,
            message: "value is not valid JSON".into(),
        };
        let out = dead_letter("conn", &source, &record, &why);
        assert_eq!(out.value, None, "the value goes unchanged");
        let header = |name| {
            out.extra_headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(header(connect_headers::TOPIC).as_deref(), Some("orders"));
        assert_eq!(header(connect_headers::PARTITION).as_deref(), Some("3"));
        assert_eq!(header(connect_headers::OFFSET).as_deref(), Some("42"));
        assert_eq!(
            header(connect_headers::CLASS).as_deref(),
            Some("MalformedJson")
        );
        // As the topic stores it, with the source headers the writer adds.
        let mut stored = record.clone();
        for (k, v) in &out.extra_headers {
            stored
                .headers
                .push((k.as_bytes().to_vec(), Some(v.clone())));
        }
        use crate::record::source_headers as s;
        stored
            .headers
            .push((s::TOPIC.into(), Some(b"orders".to_vec())));
        stored
            .headers
            .push((s::PARTITION.into(), Some(b"3".to_vec())));
        stored
            .headers
            .push((s::OFFSET.into(), Some(b"42".to_vec())));
        assert_eq!(
            source_of(&stored, "conn"),
            Some((source, 42, Some(ErrorKind::MalformedJson)))
        );
        assert_eq!(source_of(&stored, "other"), None, "another connector's");
        assert_eq!(
            source_of(&record, "conn"),
            None,
            "no source headers: not ours"
        );
    }
}
