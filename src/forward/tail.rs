//! The destination tail check: what the internal partition already stores.
//!
//! Each internal partition has exactly one writer (its forwarder), which writes source
//! records in source-offset order with the source offset in a header. So the last record
//! of the internal partition names the highest source offset stored, and everything
//! below it is stored too. Resuming after it makes a re-sent batch harmless: a record
//! may be sent twice, never stored twice, never skipped.

use crate::format::ErrorKind;
use crate::kafka::produce::Outgoing;
use crate::record::{source_headers, FetchedBatch, SourcePartition, SourceRecord};

/// Why the tail could not be interpreted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    /// The last record was not written by a forwarder of this source partition.
    #[error("the last record of internal partition {internal} (offset {offset}) {reason}; kafka-direct must be the only writer of its internal topics")]
    ForeignRecord {
        /// Internal topic/partition.
        internal: String,
        /// Offset of the record in the internal partition.
        offset: i64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads the next source offset to forward from the headers of the last internal record.
pub fn stored_next_from_headers(
    headers: &[(Vec<u8>, Option<Vec<u8>>)],
    source: &SourcePartition,
    internal: &str,
    offset: i64,
) -> Result<i64, TailError> {
    let foreign = |reason: String| TailError::ForeignRecord {
        internal: internal.to_owned(),
        offset,
        reason,
    };
    let text = |name: &str| -> Result<String, TailError> {
        let raw = headers
            .iter()
            .rev()
            .find(|(k, _)| k == name.as_bytes())
            .ok_or_else(|| foreign(format!("has no `{name}` header")))?
            .1
            .as_ref()
            .ok_or_else(|| foreign(format!("has a null `{name}` header")))?;
        String::from_utf8(raw.clone())
            .map_err(|_| foreign(format!("has a non-UTF-8 `{name}` header")))
    };
    let topic = text(source_headers::TOPIC)?;
    let partition = text(source_headers::PARTITION)?;
    if topic != source.topic || partition != source.partition.to_string() {
        return Err(foreign(format!(
            "comes from {topic}/{partition}, not from {source}"
        )));
    }
    let source_offset: i64 = text(source_headers::OFFSET)?.parse().map_err(|_| {
        foreign(format!(
            "has a `{}` header that is not an offset",
            source_headers::OFFSET
        ))
    })?;
    Ok(source_offset + 1)
}

/// The records of `entries` that are not stored yet: those at or after `stored_next`.
pub fn unstored_records(entries: &[FetchedBatch], stored_next: Option<i64>) -> Vec<&SourceRecord> {
    let from = stored_next.unwrap_or(i64::MIN);
    entries
        .iter()
        .flat_map(|e| e.records.iter())
        .filter(|r| r.offset >= from)
        .collect()
}

/// Where a produce request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The internal partition.
    Internal,
    /// The dead-letter topic.
    DeadLetters,
}

/// How one record is sent, as the forwarder's format check decided.
#[derive(Debug)]
pub struct Routed<'a> {
    /// The record as produced.
    pub outgoing: Outgoing<'a>,
    /// Why it goes to the dead-letter topic; `None`: it goes to the internal partition.
    pub refused: Option<ErrorKind>,
}

/// The next produce request: records from the front of the unstored ones that all go to
/// one place.
#[derive(Debug)]
pub struct Run<'a> {
    /// Where they go.
    pub destination: Destination,
    /// The records, in source-offset order.
    pub records: Vec<Outgoing<'a>>,
    /// Per dead letter, why.
    pub refused: Vec<ErrorKind>,
}

/// Takes records from the front of `records` while they go to the same place as the
/// first, at most `max_records` and at most `max_bytes` counting `overhead` extra bytes
/// per record (the source headers); always at least one. `route` decides each record.
pub fn next_run<'a, E>(
    records: &[&'a SourceRecord],
    max_records: usize,
    max_bytes: usize,
    overhead: usize,
    mut route: impl FnMut(&'a SourceRecord) -> Result<Routed<'a>, E>,
) -> Result<Run<'a>, E> {
    let mut run = Run {
        destination: Destination::Internal,
        records: Vec::new(),
        refused: Vec::new(),
    };
    let mut bytes = 0;
    for (i, record) in records.iter().enumerate().take(max_records) {
        let routed = route(record)?;
        let destination = match routed.refused {
            None => Destination::Internal,
            Some(_) => Destination::DeadLetters,
        };
        if i == 0 {
            run.destination = destination;
        } else if destination != run.destination {
            break;
        }
        bytes += routed.outgoing.approximate_size() + overhead;
        if i > 0 && bytes > max_bytes {
            break;
        }
        run.refused.extend(routed.refused);
        run.records.push(routed.outgoing);
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(topic: &str, partition: &str, offset: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        [
            (source_headers::TOPIC, topic),
            (source_headers::PARTITION, partition),
            (source_headers::OFFSET, offset),
            ("user", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
        .collect()
    }

    fn record(offset: i64) -> SourceRecord {
        SourceRecord {
            offset,
            timestamp_ms: 0,
            key: None,
            value: None,
            headers: vec![],
        }
    }

    #[test]
    fn resumes_after_the_stored_source_offset() {
        let sp = SourcePartition::new("orders", 2);
        assert_eq!(
            stored_next_from_headers(&headers("orders", "2", "41"), &sp, "ext.orders/2", 9),
            Ok(42)
        );
    }

    #[test]
    fn refuses_records_of_another_writer() {
        let sp = SourcePartition::new("orders", 2);
        for h in [
            headers("orders", "3", "41"),
            headers("payments", "2", "41"),
            headers("orders", "2", "x"),
            Vec::new(),
            {
                let mut h = headers("orders", "2", "41");
                h.retain(|(k, _)| k != source_headers::OFFSET.as_bytes());
                h.push((source_headers::OFFSET.into(), None));
                h
            },
        ] {
            let err = stored_next_from_headers(&h, &sp, "ext.orders/2", 9).unwrap_err();
            assert!(err.to_string().contains("ext.orders/2 (offset 9)"), "{err}");
        }
    }

    fn plain(record: &SourceRecord) -> Result<Routed<'_>, ()> {
        Ok(Routed {
            outgoing: Outgoing::plain(record),
            refused: None,
        })
    }

    #[test]
    fn runs_respect_count_and_bytes_with_header_overhead() {
        let big = SourceRecord {
            value: Some(vec![0; 400]),
            ..record(0)
        };
        let records: Vec<&SourceRecord> = std::iter::repeat_n(&big, 10).collect();
        let len = |max_records, max_bytes| {
            next_run(&records, max_records, max_bytes, 100, plain)
                .unwrap()
                .records
                .len()
        };
        assert_eq!(len(100, 10_000), 10);
        assert_eq!(len(3, 10_000), 3);
        // 500 bytes per record with overhead: two fit in 1000, not three.
        assert_eq!(len(100, 1_000), 2);
        // A single record larger than the limit still goes alone.
        assert_eq!(len(100, 10), 1);
    }

    #[test]
    fn a_run_ends_where_the_destination_changes() {
        let owned: Vec<SourceRecord> = (0..8).map(record).collect();
        let records: Vec<&SourceRecord> = owned.iter().collect();
        // Offsets 3, 4 and 7 are refused.
        fn route(r: &SourceRecord) -> Result<Routed<'_>, ()> {
            let refused = [3, 4, 7]
                .contains(&r.offset)
                .then_some(ErrorKind::MalformedJson);
            Ok(Routed {
                outgoing: Outgoing::plain(r),
                refused,
            })
        }
        let mut at = 0;
        let mut runs = Vec::new();
        while at < records.len() {
            let run = next_run(&records[at..], 100, 1 << 20, 0, route).unwrap();
            at += run.records.len();
            let offsets: Vec<i64> = run.records.iter().map(|o| o.record.offset).collect();
            runs.push((run.destination, offsets, run.refused.len()));
        }
        use Destination::*;
        assert_eq!(
            runs,
            vec![
                (Internal, vec![0, 1, 2], 0),
                (DeadLetters, vec![3, 4], 2),
                (Internal, vec![5, 6], 0),
                (DeadLetters, vec![7], 1),
            ]
        );
        let err = next_run(&records, 100, 1 << 20, 0, |_| Err::<Routed<'_>, _>("stop"));
        assert_eq!(err.unwrap_err(), "stop");
    }

    #[test]
    fn skips_exactly_the_stored_records_even_mid_entry_and_across_gaps() {
        let entries = vec![
            FetchedBatch {
                records: vec![record(3), record(4), record(7)],
                next_offset: 8,
            },
            FetchedBatch {
                records: vec![record(8), record(9)],
                next_offset: 10,
            },
        ];
        let offsets = |next| -> Vec<i64> {
            unstored_records(&entries, next)
                .iter()
                .map(|r| r.offset)
                .collect()
        };
        assert_eq!(offsets(None), vec![3, 4, 7, 8, 9]);
        assert_eq!(offsets(Some(5)), vec![7, 8, 9]);
        assert_eq!(offsets(Some(8)), vec![8, 9]);
        assert_eq!(offsets(Some(10)), Vec::<i64>::new());
    }
}
