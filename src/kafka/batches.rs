//! Turns the record bytes of one fetched partition into the records to copy.
//!
//! What a read-committed Kafka consumer does, and what rskafka 0.6 does not:
//! - control batches (transaction markers) are skipped, and the position moves past
//!   them, so a fetch of only a marker still advances;
//! - batches of aborted transactions are dropped, using the aborted-transactions list
//!   of the fetch response (a producer's batches are aborted from the transaction's
//!   first offset until that producer's ABORT marker);
//! - null header values are kept as null;
//! - the position after a batch is its last offset + 1 (from the batch header), even
//!   when compaction removed the batch's last records;
//! - a batch cut off at the end of the response (the size limit) is left for the next
//!   fetch.
//!
//! Batches are decoded by [`crate::kafka::records`] (headers kept as the list they
//! are); the framing (base offset, length) is read here first, to skip a batch wholly
//! before the fetch offset or cut off at the end without decoding it.

use std::collections::HashSet;

use bytes::{Buf, Bytes};

use crate::kafka::records;
use crate::record::{FetchedBatch, SourceRecord};

// Positions in a record batch (magic 2), from the start of its base offset.
const LENGTH_AT: usize = 8;
const FRAMING: usize = 12;
const MAGIC_AT: usize = 16;
const LAST_OFFSET_DELTA_AT: usize = 23;
const RECORD_COUNT_AT: usize = 57;

/// More records than this in one batch is taken as damage: the decoder reserves memory
/// for the count the header claims before reading a record.
const MAX_BATCH_RECORDS: i64 = 1 << 22;

/// Control record type of an ABORT marker (the second i16 of a control record key).
const ABORT: i16 = 0;

/// A transaction the broker reports as aborted in the fetched range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTransaction {
    /// The transactional producer.
    pub producer_id: i64,
    /// Offset of the transaction's first record.
    pub first_offset: i64,
}

/// The records to copy from one fetch, and what was left out.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Records at or above the fetch offset, with the offset after the last complete
    /// batch (the fetch offset if no batch was complete).
    pub batch: FetchedBatch,
    /// Transaction markers passed over.
    pub control_records: u64,
    /// Records of aborted transactions dropped.
    pub aborted_records: u64,
    /// Whether the response held bytes but no complete batch.
    pub incomplete: bool,
}

/// A batch that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("record batch at offset {offset}: {reason}")]
pub struct BatchError {
    /// Base offset of the batch.
    pub offset: i64,
    /// What is wrong.
    pub reason: String,
}

/// Decodes `records` (the partition's record bytes of a fetch response at
/// `fetch_offset`), dropping control batches and aborted transactions.
pub fn decode(
    mut records: Bytes,
    fetch_offset: i64,
    aborted: &[AbortedTransaction],
) -> Result<Decoded, BatchError> {
    let mut aborted = aborted.to_vec();
    aborted.sort_by_key(|t| t.first_offset);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut out = Decoded {
        batch: FetchedBatch {
            records: Vec::new(),
            next_offset: fetch_offset,
        },
        ..Decoded::default()
    };

    while records.len() >= FRAMING {
        let base_offset = read_i64(&records, 0);
        let length = read_i32(&records, LENGTH_AT);
        let error = |reason: String| BatchError {
            offset: base_offset,
            reason,
        };
        if length < 0 {
            return Err(error(format!("negative batch length {length}")));
        }
        let total = FRAMING + length as usize;
        if records.len() < total {
            break; // cut off by the size limit: fetched again next time
        }
        let raw = records.split_to(total);
        if raw.len() < records::HEADER_LEN {
            return Err(error(format!(
                "batch of {total} bytes is shorter than its header"
            )));
        }
        let magic = raw[MAGIC_AT] as i8;
        if magic != 2 {
            return Err(error(format!(
                "message format v{magic} (written by Kafka before 0.11) is not supported"
            )));
        }
        let last_offset_delta = i64::from(read_i32(&raw, LAST_OFFSET_DELTA_AT));
        let record_count = i64::from(read_i32(&raw, RECORD_COUNT_AT));
        if last_offset_delta < 0 || record_count > (last_offset_delta + 1).min(MAX_BATCH_RECORDS) {
            return Err(error(format!(
                "header claims {record_count} records over {} offsets",
                last_offset_delta + 1
            )));
        }
        let last_offset = base_offset
            .checked_add(last_offset_delta)
            .filter(|&last| base_offset >= 0 && last < i64::MAX)
            .ok_or_else(|| {
                error(format!(
                    "offsets out of range (last offset delta {last_offset_delta})"
                ))
            })?;
        if last_offset < out.batch.next_offset {
            continue; // wholly before the position (a batch may start before it)
        }
        let set = records::decode(raw).map_err(error)?;
        let header = set.header;
        let position = out.batch.next_offset;
        out.batch.next_offset = last_offset + 1;
        let Some(first) = set.records.first() else {
            continue; // emptied by compaction
        };

        if header.producer.id >= 0 {
            while let Some(t) = aborted.next_if(|t| t.first_offset <= last_offset) {
                aborting.insert(t.producer_id);
            }
            if header.control() {
                if control_type(first.key.as_ref()) == Some(ABORT) {
                    aborting.remove(&header.producer.id);
                }
            } else if header.transactional() && aborting.contains(&header.producer.id) {
                out.aborted_records += set.records.len() as u64;
                continue;
            }
        }
        if header.control() {
            out.control_records += set.records.len() as u64;
            continue;
        }

        let mut previous = i64::MIN;
        for r in set.records {
            if r.offset <= previous || r.offset < base_offset || r.offset > last_offset {
                return Err(error(format!(
                    "record offset {} is out of order or outside the batch ({base_offset}..={last_offset})",
                    r.offset
                )));
            }
            previous = r.offset;
            if r.offset < position {
                continue;
            }
            out.batch.records.push(SourceRecord {
                offset: r.offset,
                // With LogAppendTime the broker's append time is the batch's max
                // timestamp, and it is every record's timestamp.
                timestamp_ms: if header.log_append_time() {
                    header.max_timestamp
                } else {
                    r.timestamp
                },
                key: r.key.map(|b| b.to_vec()),
                value: r.value.map(|b| b.to_vec()),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_vec(), v.map(|b| b.to_vec())))
                    .collect(),
            });
        }
    }
    out.incomplete = out.batch.next_offset == fetch_offset && !records.is_empty();
    Ok(out)
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    (&b[at..at + 8]).get_i64()
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    (&b[at..at + 4]).get_i32()
}

/// The type of a control record (ABORT = 0, COMMIT = 1) from its key.
fn control_type(key: Option<&Bytes>) -> Option<i16> {
    let key = key?;
    (key.len() >= 4).then(|| (&key[2..4]).get_i16())
}

/// Record batches built with the protocol crate's encoder, for tests.
#[cfg(test)]
pub(crate) mod test_batches {
    use bytes::{Bytes, BytesMut};
    use indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// Type of a COMMIT marker.
    pub const COMMIT: i16 = 1;

    pub struct Batch {
        pub producer_id: i64,
        pub transactional: bool,
        pub control: Option<i16>,
        pub offsets: Vec<i64>,
        pub compression: Compression,
    }

    pub fn data(producer_id: i64, transactional: bool, offsets: std::ops::Range<i64>) -> Batch {
        Batch {
            producer_id,
            transactional,
            control: None,
            offsets: offsets.collect(),
            compression: Compression::None,
        }
    }

    pub fn marker(producer_id: i64, kind: i16, offset: i64) -> Batch {
        Batch {
            producer_id,
            transactional: true,
            control: Some(kind),
            offsets: vec![offset],
            compression: Compression::None,
        }
    }

    pub fn encode(batches: &[Batch]) -> Bytes {
        let mut buf = BytesMut::new();
        for b in batches {
            let records: Vec<Record> = b
                .offsets
                .iter()
                .map(|&offset| {
                    let (key, value) = match b.control {
                        // version 0, type
                        Some(kind) => (
                            Some(Bytes::from([0, 0, 0, kind as u8].to_vec())),
                            Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
                        ),
                        None => (
                            Some(Bytes::from(format!("k{offset}"))),
                            Some(Bytes::from(format!("v{offset}"))),
                        ),
                    };
                    let mut headers = IndexMap::new();
                    headers.insert(StrBytes::from_static_str("null"), None);
                    headers.insert(
                        StrBytes::from_static_str("set"),
                        Some(Bytes::from_static(b"x")),
                    );
                    Record {
                        transactional: b.transactional,
                        control: b.control.is_some(),
                        delete_horizon: false,
                        partition_leader_epoch: 0,
                        producer_id: b.producer_id,
                        producer_epoch: 0,
                        timestamp_type: TimestampType::Creation,
                        offset,
                        // The encoder starts a new batch where offset - sequence changes.
                        sequence: offset as i32,
                        timestamp: 1_700_000_000_000 + offset,
                        key,
                        value,
                        headers: if b.control.is_some() {
                            IndexMap::new()
                        } else {
                            headers
                        },
                    }
                })
                .collect();
            let options = RecordEncodeOptions {
                version: 2,
                compression: b.compression,
            };
            RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        }
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    //! Fetch responses built with the protocol crate's encoder: the transactional cases
    //! the test broker (tansu 0.6) cannot produce, because it never stores the records
    //! of an aborted transaction.
    use super::test_batches::*;
    use super::*;
    use kafka_protocol::records::Compression;

    fn offsets(d: &Decoded) -> Vec<i64> {
        d.batch.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn plain_batches_keep_null_headers_keys_and_timestamps() {
        let bytes = encode(&[data(-1, false, 0..3), data(-1, false, 3..5)]);
        let d = decode(bytes, 0, &[]).unwrap();
        assert_eq!(offsets(&d), vec![0, 1, 2, 3, 4]);
        assert_eq!(d.batch.next_offset, 5);
        let r = &d.batch.records[3];
        assert_eq!(r.key.as_deref(), Some(&b"k3"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"v3"[..]));
        assert_eq!(r.timestamp_ms, 1_700_000_000_003);
        assert_eq!(
            r.headers,
            vec![
                (b"null".to_vec(), None),
                (b"set".to_vec(), Some(b"x".to_vec()))
            ]
        );
    }

    #[test]
    fn records_before_the_fetch_offset_are_skipped() {
        let mut batch = data(-1, false, 10..20);
        batch.compression = Compression::Gzip;
        let d = decode(encode(&[batch]), 15, &[]).unwrap();
        assert_eq!(offsets(&d), (15..20).collect::<Vec<_>>());
        assert_eq!(d.batch.next_offset, 20);
    }

    #[test]
    fn a_marker_alone_advances_past_itself() {
        let d = decode(encode(&[marker(7, COMMIT, 3)]), 3, &[]).unwrap();
        assert!(d.batch.records.is_empty());
        assert_eq!(d.batch.next_offset, 4);
        assert_eq!(d.control_records, 1);
    }

    #[test]
    fn aborted_transactions_are_dropped_and_committed_ones_kept() {
        // producer 7 commits 0..3 (marker 3), aborts 4..6 (marker 6); producer 8 writes
        // 7..9 in a transaction interleaved with plain records 9..10 and aborts it
        // (marker 10); producer 7 then commits 11..12 (marker 13).
        let bytes = encode(&[
            data(7, true, 0..3),
            marker(7, COMMIT, 3),
            data(7, true, 4..6),
            marker(7, ABORT, 6),
            data(8, true, 7..9),
            data(-1, false, 9..10),
            marker(8, ABORT, 10),
            data(7, true, 11..13),
            marker(7, COMMIT, 13),
        ]);
        let aborted = [
            AbortedTransaction {
                producer_id: 8,
                first_offset: 7,
            },
            AbortedTransaction {
                producer_id: 7,
                first_offset: 4,
            },
        ];
        let d = decode(bytes.clone(), 0, &aborted).unwrap();
        assert_eq!(offsets(&d), vec![0, 1, 2, 9, 11, 12]);
        assert_eq!(d.batch.next_offset, 14);
        assert_eq!(d.aborted_records, 4);
        assert_eq!(d.control_records, 4);

        // Without the list (what rskafka does), aborted records would be copied.
        let unfiltered = decode(bytes, 0, &[]).unwrap();
        assert_eq!(unfiltered.batch.records.len(), 10);
    }

    #[test]
    fn an_abort_marker_ends_the_abort_for_that_producer_only() {
        let bytes = encode(&[
            data(7, true, 0..2),
            marker(7, ABORT, 2),
            data(7, true, 3..5), // a new transaction of the same producer, committed
            marker(7, COMMIT, 5),
        ]);
        let aborted = [AbortedTransaction {
            producer_id: 7,
            first_offset: 0,
        }];
        let d = decode(bytes, 0, &aborted).unwrap();
        assert_eq!(offsets(&d), vec![3, 4]);
        assert_eq!(d.batch.next_offset, 6);
    }

    #[test]
    fn a_batch_cut_off_by_the_size_limit_waits_for_the_next_fetch() {
        let bytes = encode(&[data(-1, false, 0..2), data(-1, false, 2..4)]);
        let cut = bytes.slice(..bytes.len() - 5);
        let d = decode(cut.clone(), 0, &[]).unwrap();
        assert_eq!(offsets(&d), vec![0, 1]);
        assert_eq!(d.batch.next_offset, 2);
        assert!(!d.incomplete);

        let first_len = encode(&[data(-1, false, 0..2)]).len();
        let d = decode(cut.slice(first_len..), 2, &[]).unwrap();
        assert!(d.batch.records.is_empty());
        assert_eq!(d.batch.next_offset, 2);
        assert!(d.incomplete);
    }

    #[test]
    fn a_damaged_batch_is_an_error_naming_its_offset() {
        let mut bytes = encode(&[data(-1, false, 40..42)]).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let e = decode(Bytes::from(bytes), 40, &[]).unwrap_err();
        assert_eq!(e.offset, 40);
        assert!(e.reason.contains("CRC mismatch"), "{e}");
    }

    #[test]
    fn a_header_claiming_more_records_than_offsets_is_an_error() {
        let mut bytes = encode(&[data(-1, false, 0..2)]).to_vec();
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        let e = decode(Bytes::from(bytes), 0, &[]).unwrap_err();
        assert!(e.reason.contains("records over 2 offsets"), "{e}");
    }

    #[test]
    fn every_codec_decodes() {
        for compression in [
            Compression::Gzip,
            Compression::Lz4,
            Compression::Snappy,
            Compression::Zstd,
        ] {
            let mut batch = data(-1, false, 0..50);
            batch.compression = compression;
            let d = decode(encode(&[batch]), 0, &[]).unwrap();
            assert_eq!(d.batch.records.len(), 50, "{compression:?}");
        }
    }
}
