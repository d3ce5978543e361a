//! Exact offset translation: which internal offset holds the copy of a source offset.
//!
//! Each internal partition is written by one forwarder, in source-offset order, with
//! the source offset in a header, so above its barrier (the internal end at the last
//! offset change, below which older copies lie) the source offsets of an internal
//! partition only grow. The first record at or after a source offset is found by
//! bisecting the internal offsets: about log2(records) small fetches.
//!
//! A source offset without a copy (removed by compaction or retention before it was
//! copied, an aborted transaction's record, a record written to the dead-letter topic)
//! translates to the next record that has one; the answer says so.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::connector::{ConnectorHandle, Context, ControlError};
use crate::forward::tail::stored_next_from_headers;
use crate::kafka::cluster::{Cluster, PROBE_WAIT_MS, READ_WAITS_MS};
use crate::kafka::fetch::PartitionReader;
use crate::record::SourcePartition;

/// How a translation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The record at `internal_offset` is the copy of the source offset asked for.
    Exact,
    /// The source offset has no copy: the record at `internal_offset` is the first copy
    /// of a later source offset (`record_source_offset`).
    Gap,
    /// Every source offset up to the one asked for is done and none at or after it is
    /// copied yet: `internal_offset` is the internal partition's end, where the next
    /// copy will be.
    End,
    /// The source offset is beyond what kafka-direct has processed: no internal offset
    /// can be named yet (`internal_offset` is null).
    NotCopiedYet,
}

/// The answer to a translation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Translation {
    /// The source topic.
    pub topic: String,
    /// The partition number, on both clusters.
    pub partition: i32,
    /// The source offset asked for.
    pub source_offset: i64,
    /// The internal topic.
    pub internal_topic: String,
    /// The internal offset a consumer starts at to read from `source_offset` on.
    pub internal_offset: Option<i64>,
    /// The source offset of the record at `internal_offset`, when there is one.
    pub record_source_offset: Option<i64>,
    /// How the answer was found.
    pub basis: Basis,
    /// The answer in words.
    pub detail: String,
}

/// The first record at or after an internal offset, as the search needs it.
pub(crate) trait InternalLog {
    /// `(internal offset, source offset)` of the first record at or after `offset`
    /// (below the end), `None` when there is none.
    async fn first_at(&mut self, offset: i64) -> Result<Option<(i64, i64)>, ControlError>;
}

/// The smallest internal offset in `from..end` whose record (or the next one) has a
/// source offset at or above `source_offset`, with that record; `None` when no record of
/// the range has one.
pub(crate) async fn search<L: InternalLog>(
    log: &mut L,
    from: i64,
    end: i64,
    source_offset: i64,
) -> Result<Option<(i64, i64)>, ControlError> {
    let (mut lo, mut hi) = (from, end);
    // Invariant: every record below `lo` has a smaller source offset; the answer, if
    // any, is below `hi`.
    let mut found = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match log.first_at(mid).await? {
            Some((at, source)) if at < hi && source >= source_offset => {
                found = Some((at, source));
                hi = mid;
            }
            Some((at, _)) if at < hi => lo = at + 1,
            // Nothing from `mid` to `hi`: the answer, if any, is below `mid`.
            _ => hi = mid,
        }
    }
    // `lo` is the smallest offset whose first record qualifies; `found` is the record
    // at the lowest qualifying probe, which is that record.
    match found {
        Some(_) => log.first_at(lo).await,
        None => Ok(None),
    }
}

/// The internal partition of `partition`, read through its leader.
struct Reader<'a> {
    cluster: &'a Cluster,
    reader: PartitionReader,
    source: SourcePartition,
    internal_topic: String,
    end: i64,
}

impl InternalLog for Reader<'_> {
    async fn first_at(&mut self, offset: i64) -> Result<Option<(i64, i64)>, ControlError> {
        let mut from = offset;
        let mut max_bytes = 64 * 1024;
        let mut waits = READ_WAITS_MS.iter();
        let mut wait = *waits.next().expect("a wait");
        while from < self.end {
            let fetched = self
                .reader
                .fetch(self.cluster, from, max_bytes, wait)
                .await?;
            let next = fetched.decoded.batch.next_offset;
            let incomplete = fetched.decoded.incomplete;
            let first = fetched
                .decoded
                .batch
                .records
                .into_iter()
                .find(|r| r.offset >= offset && r.offset < self.end);
            if let Some(record) = first {
                let stored_next = stored_next_from_headers(
                    &record.headers,
                    &self.source,
                    &self.internal_topic,
                    record.offset,
                )
                .map_err(|e| ControlError::Refused(e.to_string()))?;
                return Ok(Some((record.offset, stored_next - 1)));
            }
            if next > from {
                // Whole batches came back with nothing at or after `offset` (a batch
                // whose later records were compacted away): go on after them.
                from = next;
                continue;
            }
            if incomplete && max_bytes < MAX_FETCH_BYTES {
                // A batch larger than asked for, cut off by the broker: ask for more.
                max_bytes = (max_bytes * 4).min(MAX_FETCH_BYTES);
                continue;
            }
            // Nothing came back: tansu sometimes answers a short fetch without records
            // that exist; each try waits longer.
            match waits.next() {
                Some(longer) => wait = *longer,
                None => {
                    // The active segment holds the partition's last batch, so a read
                    // below the end always finds one: answering "none" here could name
                    // the end for an offset that has a copy.
                    return Err(ControlError::Refused(format!(
                        "reading {}/{} at offset {from} (below its end {}) returned no record: ask again",
                        self.internal_topic, self.source.partition, self.end
                    )));
                }
            }
        }
        Ok(None)
    }
}

/// The most a read of the search asks for (a produce request is at most 64 MiB).
const MAX_FETCH_BYTES: i32 = 64 << 20;

/// Translates `source_offset` of `partition` into its internal partition, searching
/// above `barrier`. `position` is kafka-direct's stored position of the partition (the
/// next source offset to store), which tells a source offset not copied yet from one
/// that never will be.
pub(crate) async fn translate(
    cluster: &Cluster,
    internal_topic: &str,
    partition: &SourcePartition,
    source_offset: i64,
    barrier: i64,
    position: Option<i64>,
) -> Result<Translation, ControlError> {
    let mut reader = PartitionReader::connect(cluster, internal_topic, partition.partition).await?;
    let earliest = reader.earliest(cluster).await?;
    let end = reader
        .fetch(cluster, earliest, 1, PROBE_WAIT_MS)
        .await?
        .high_watermark
        .max(earliest);
    let from = earliest.max(barrier).min(end);
    let mut log = Reader {
        cluster,
        reader,
        source: partition.clone(),
        internal_topic: internal_topic.to_owned(),
        end,
    };
    let found = search(&mut log, from, end, source_offset).await?;
    let answer = |internal_offset, record_source_offset, basis, detail: String| Translation {
        topic: partition.topic.clone(),
        partition: partition.partition,
        source_offset,
        internal_topic: internal_topic.to_owned(),
        internal_offset,
        record_source_offset,
        basis,
        detail,
    };
    Ok(match found {
        Some((at, source)) if source == source_offset => answer(
            Some(at),
            Some(source),
            Basis::Exact,
            format!("source offset {source_offset} of {partition} is internal offset {at} of {internal_topic}/{}", partition.partition),
        ),
        Some((at, source)) => answer(
            Some(at),
            Some(source),
            Basis::Gap,
            format!(
                "source offsets {source_offset}..{} of {partition} have no copy (removed by compaction or retention before they were copied, aborted transactions, records written to the dead-letter topic, or before the connector's first position or last offset change); the first copy after them is source offset {source} at internal offset {at}",
                source - 1
            ),
        ),
        None if position.is_some_and(|p| p >= source_offset) => answer(
            Some(end),
            None,
            Basis::End,
            format!("every source offset of {partition} below {source_offset} is processed and none from it on is copied yet: a consumer starting at internal offset {end} (the end) reads from source offset {source_offset} on"),
        ),
        None => answer(
            None,
            None,
            Basis::NotCopiedYet,
            format!(
                "source offset {source_offset} of {partition} is not processed yet (kafka-direct's position is {}): ask again once it is",
                position.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into())
            ),
        ),
    })
}

/// [`translate`] for one of `handle`'s partitions: above its barrier, with its stored
/// position (the WAL's checkpoint, or the running forwarder's when further).
pub(crate) async fn of_connector(
    ctx: &Context,
    handle: &ConnectorHandle,
    partition: &SourcePartition,
    offset: i64,
) -> Result<Translation, ControlError> {
    let connector = handle.config();
    if !connector.topics.contains(&partition.topic) {
        return Err(ControlError::Refused(format!(
            "topic {} is not in connector {}'s topic.include.list ({})",
            partition.topic,
            connector.name,
            connector.topics.join(", ")
        )));
    }
    if offset < 0 {
        return Err(ControlError::Refused(format!(
            "offset {offset} for {partition} is negative"
        )));
    }
    if !ctx.config.owns(partition) {
        return Err(ControlError::Refused(format!(
            "{partition} belongs to another shard (shard.index {} of {} runs other partitions): ask the instance that runs it",
            ctx.config.shard_index, ctx.config.shard_count
        )));
    }
    let wal = &ctx.wal;
    let barrier = crate::state::State::of(wal).barrier(&connector.name, partition)?;
    // The WAL's checkpoint of a partition it has a log for (opening another would make
    // an empty one).
    let logged = wal
        .partitions()
        .contains(&(connector.name.clone(), partition.clone()));
    let checkpoint = if logged {
        wal.partition(&connector.name, partition)?
            .checkpoints()?
            .forwarded_next
    } else {
        None
    };
    // A stopped connector's counters are its last run's: an offset change since may
    // have moved the position back.
    let running = handle
        .partitions()
        .iter()
        .filter(|_| handle.target() != crate::connector::Target::Stopped)
        .find(|p| p.partition == *partition)
        .map(|p| p.forwarded_next.load(Ordering::Relaxed))
        .filter(|n| *n >= 0);
    let position = checkpoint.max(running);
    translate(
        &ctx.internal,
        &connector.internal_topic(&partition.topic),
        partition,
        offset,
        barrier,
        position,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// An internal partition as (internal offset → source offset); gaps are compacted
    /// away.
    struct Fake(BTreeMap<i64, i64>, usize);

    impl InternalLog for Fake {
        async fn first_at(&mut self, offset: i64) -> Result<Option<(i64, i64)>, ControlError> {
            self.1 += 1;
            Ok(self.0.range(offset..).next().map(|(a, s)| (*a, *s)))
        }
    }

    fn run(log: &mut Fake, from: i64, end: i64, source: i64) -> Option<(i64, i64)> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(search(log, from, end, source))
            .unwrap()
    }

    #[test]
    fn every_source_offset_finds_the_first_copy_at_or_after_it() {
        // Source offsets with gaps (compaction, dead letters), internal offsets with
        // gaps (compaction on the internal topic).
        let pairs: BTreeMap<i64, i64> =
            [(0, 3), (1, 4), (2, 7), (4, 8), (5, 12), (9, 13), (10, 20)]
                .into_iter()
                .collect();
        for source in 0..25 {
            let mut log = Fake(pairs.clone(), 0);
            let want = pairs
                .iter()
                .find(|(_, s)| **s >= source)
                .map(|(a, s)| (*a, *s));
            assert_eq!(run(&mut log, 0, 11, source), want, "source offset {source}");
            assert!(log.1 <= 6, "{} reads for source offset {source}", log.1);
        }
    }

    #[test]
    fn records_below_the_start_are_not_looked_at() {
        // An offset change copied source offsets 5.. again from internal offset 3 on.
        let pairs: BTreeMap<i64, i64> = [(0, 5), (1, 6), (2, 7), (3, 5), (4, 6), (5, 7)]
            .into_iter()
            .collect();
        let mut log = Fake(pairs, 0);
        assert_eq!(run(&mut log, 3, 6, 6), Some((4, 6)));
        assert_eq!(run(&mut log, 3, 6, 8), None);
        assert_eq!(run(&mut log, 6, 6, 0), None, "an empty range");
    }

    #[test]
    fn a_million_records_take_about_twenty_reads() {
        let pairs: BTreeMap<i64, i64> = (0..1_000_000).map(|i| (i, 2 * i)).collect();
        let mut log = Fake(pairs, 0);
        assert_eq!(
            run(&mut log, 0, 1_000_000, 1_234_567),
            Some((617_284, 1_234_568))
        );
        assert!(log.1 <= 22, "{} reads", log.1);
    }
}
