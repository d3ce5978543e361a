//! The destination tail check: what the internal partition already stores.
//!
//! Each internal partition has exactly one writer (its forwarder), which writes source
//! records in source-offset order with the source offset in a header. So the last record
//! of the internal partition names the highest source offset stored, and everything
//! below it is stored too. Resuming after it makes a re-sent batch harmless: a record
//! may be sent twice, never stored twice, never skipped.

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
    headers: &[(String, Option<Vec<u8>>)],
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
            .find(|(k, _)| k == name)
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

/// How many of `records` go into one produce request: at most `max_records`, and at
/// most `max_bytes` counting `overhead` extra bytes per record; always at least one.
pub fn produce_chunk_len(
    records: &[&SourceRecord],
    max_records: usize,
    max_bytes: usize,
    overhead: usize,
) -> usize {
    let mut bytes = 0;
    for (i, r) in records.iter().enumerate().take(max_records) {
        bytes += r.approximate_size() + overhead;
        if bytes > max_bytes {
            return i.max(1);
        }
    }
    records.len().min(max_records).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(topic: &str, partition: &str, offset: &str) -> Vec<(String, Option<Vec<u8>>)> {
        [
            (source_headers::TOPIC, topic),
            (source_headers::PARTITION, partition),
            (source_headers::OFFSET, offset),
            ("user", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Some(v.as_bytes().to_vec())))
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
                h.retain(|(k, _)| k != source_headers::OFFSET);
                h.push((source_headers::OFFSET.into(), None));
                h
            },
        ] {
            let err = stored_next_from_headers(&h, &sp, "ext.orders/2", 9).unwrap_err();
            assert!(err.to_string().contains("ext.orders/2 (offset 9)"), "{err}");
        }
    }

    #[test]
    fn produce_chunks_respect_count_and_bytes_with_header_overhead() {
        let big = SourceRecord {
            value: Some(vec![0; 400]),
            ..record(0)
        };
        let records: Vec<&SourceRecord> = std::iter::repeat_n(&big, 10).collect();
        assert_eq!(produce_chunk_len(&records, 100, 10_000, 100), 10);
        assert_eq!(produce_chunk_len(&records, 3, 10_000, 100), 3);
        // 500 bytes per record with overhead: two fit in 1000, not three.
        assert_eq!(produce_chunk_len(&records, 100, 1_000, 100), 2);
        // A single record larger than the limit still goes alone.
        assert_eq!(produce_chunk_len(&records, 100, 10, 100), 1);
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
