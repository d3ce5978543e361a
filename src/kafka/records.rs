//! Record batches (magic 2) to records and back, by kafka-direct itself.
//!
//! The `kafka-protocol` crate's record type keeps headers in a map, so a record with
//! headers `a=1, b=x, a=2` comes out of its decoder as `a=2, b=x`. Kafka allows
//! duplicate header keys, and their order is part of the record: this codec keeps the
//! headers as the list they are on the wire, header keys as bytes. The crate still
//! does the compression ([`kafka_protocol::compression`]); the framing, the CRC-32C and
//! the records are here.
//!
//! Layout (Kafka's `DefaultRecordBatch`): base offset i64, length i32, partition leader
//! epoch i32, magic i8, CRC u32 (of what follows it), attributes i16, last offset delta
//! i32, base timestamp i64, max timestamp i64, producer id i64, producer epoch i16,
//! base sequence i32, record count i32, then the records, compressed as a whole. A
//! record: its length, attributes i8, timestamp delta, offset delta, key, value and
//! headers, lengths and deltas as zig-zag varints, -1 for null.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{self as codec, Compressor, Decompressor};

/// Bytes before the records.
pub const HEADER_LEN: usize = 61;
/// Where the CRC's range starts (the attributes).
const CRC_FROM: usize = 21;

/// Compression of a record batch (the attributes' lowest three bits), and of the batches
/// written to the internal cluster (`internal.compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression (0).
    None,
    /// gzip (1).
    Gzip,
    /// Snappy (2).
    Snappy,
    /// LZ4 (3).
    Lz4,
    /// Zstandard (4).
    Zstd,
}

impl Compression {
    fn from_attributes(attributes: i16) -> Result<Self, String> {
        Ok(match attributes & 0x07 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(format!("unknown compression codec {other}")),
        })
    }

    fn bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

const LOG_APPEND_TIME: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// The idempotent producer's fields of a batch; [`Producer::NONE`] without idempotence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    /// From InitProducerId; -1 for none.
    pub id: i64,
    /// From InitProducerId; -1 for none.
    pub epoch: i16,
    /// Sequence number of the batch's first record in this partition; -1 for none.
    pub base_sequence: i32,
}

impl Producer {
    /// No idempotence.
    pub const NONE: Producer = Producer {
        id: -1,
        epoch: -1,
        base_sequence: -1,
    };
}

/// A batch's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// The attributes (compression, timestamp type, transactional, control).
    pub attributes: i16,
    /// Last offset minus base offset.
    pub last_offset_delta: i32,
    /// Timestamp the records' deltas are from.
    pub base_timestamp: i64,
    /// Highest timestamp; the broker's append time with `LogAppendTime`.
    pub max_timestamp: i64,
    /// Producer id, epoch and base sequence.
    pub producer: Producer,
    /// Records the header claims.
    pub record_count: i32,
}

impl BatchHeader {
    /// Whether the broker set the timestamp (`message.timestamp.type=LogAppendTime`):
    /// then every record's timestamp is [`BatchHeader::max_timestamp`].
    pub fn log_append_time(&self) -> bool {
        self.attributes & LOG_APPEND_TIME != 0
    }

    /// Whether the batch belongs to a transaction.
    pub fn transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }

    /// Whether the batch holds a transaction marker.
    pub fn control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
}

/// One record as it is on the wire, offsets and timestamps made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    /// Base offset plus the record's offset delta.
    pub offset: i64,
    /// The record's own timestamp (base timestamp plus delta): with `LogAppendTime`
    /// the batch's max timestamp counts instead.
    pub timestamp: i64,
    /// Key; `None` is null.
    pub key: Option<Bytes>,
    /// Value; `None` is null.
    pub value: Option<Bytes>,
    /// Headers in wire order, duplicates kept.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Its header.
    pub header: BatchHeader,
    /// Its records, in wire order.
    pub records: Vec<WireRecord>,
}

/// Decodes one whole batch (`raw` from its base offset to its last byte): checks the
/// magic and CRC, decompresses, reads every record.
pub fn decode(raw: Bytes) -> Result<Batch, String> {
    if raw.len() < HEADER_LEN {
        return Err(format!(
            "batch of {} bytes is shorter than its header",
            raw.len()
        ));
    }
    let mut h = &raw[..HEADER_LEN];
    let base_offset = h.get_i64();
    let length = h.get_i32();
    if length < 0 || length as usize != raw.len() - 12 {
        return Err(format!(
            "batch length {length} does not match its {} bytes",
            raw.len() - 12
        ));
    }
    let _partition_leader_epoch = h.get_i32();
    let magic = h.get_i8();
    if magic != 2 {
        return Err(format!("message format v{magic} is not supported"));
    }
    let crc = h.get_u32();
    let actual = crc32c::crc32c(&raw[CRC_FROM..]);
    if crc != actual {
        return Err(format!(
            "CRC mismatch: the batch says {crc:#010x}, its bytes give {actual:#010x}"
        ));
    }
    let header = BatchHeader {
        base_offset,
        attributes: h.get_i16(),
        last_offset_delta: h.get_i32(),
        base_timestamp: h.get_i64(),
        max_timestamp: h.get_i64(),
        producer: Producer {
            id: h.get_i64(),
            epoch: h.get_i16(),
            base_sequence: h.get_i32(),
        },
        record_count: h.get_i32(),
    };
    if header.record_count < 0 {
        return Err(format!("negative record count {}", header.record_count));
    }
    let mut body = raw.slice(HEADER_LEN..);
    let read = |buf: &mut Bytes| decode_records(buf, &header).map_err(anyhow::Error::msg);
    let records = match Compression::from_attributes(header.attributes)? {
        Compression::None => read(&mut body),
        Compression::Gzip => codec::Gzip::decompress(&mut body, read),
        Compression::Snappy => codec::Snappy::decompress(&mut body, read),
        Compression::Lz4 => codec::Lz4::decompress(&mut body, read),
        Compression::Zstd => codec::Zstd::decompress(&mut body, read),
    }
    .map_err(|e| format!("{e:#}"))?;
    Ok(Batch { header, records })
}

fn decode_records(buf: &mut Bytes, header: &BatchHeader) -> Result<Vec<WireRecord>, String> {
    // A damaged count must not make us reserve memory for it: each record takes at
    // least 7 bytes.
    let claimed = header.record_count as usize;
    if claimed > buf.len() / 7 + 1 {
        return Err(format!(
            "header claims {claimed} records in {} bytes",
            buf.len()
        ));
    }
    let mut records = Vec::with_capacity(claimed);
    for i in 0..claimed {
        let length = varint(buf)?;
        if length < 0 || length as usize > buf.len() {
            return Err(format!(
                "record {i}: length {length} with {} bytes left",
                buf.len()
            ));
        }
        let mut r = buf.split_to(length as usize);
        let record = decode_record(&mut r, header).map_err(|e| format!("record {i}: {e}"))?;
        if r.has_remaining() {
            return Err(format!(
                "record {i}: {} bytes past its headers",
                r.remaining()
            ));
        }
        records.push(record);
    }
    if buf.has_remaining() {
        return Err(format!(
            "{} bytes after the {claimed} records the header claims",
            buf.remaining()
        ));
    }
    Ok(records)
}

fn decode_record(r: &mut Bytes, header: &BatchHeader) -> Result<WireRecord, String> {
    if !r.has_remaining() {
        return Err("empty".into());
    }
    let _attributes = r.get_i8();
    let timestamp_delta = varint(r)?;
    let offset_delta = varint(r)?;
    if !(0..=i64::from(i32::MAX)).contains(&offset_delta) {
        return Err(format!("offset delta {offset_delta} is out of range"));
    }
    let key = bytes(r)?;
    let value = bytes(r)?;
    let count = varint(r)?;
    if count < 0 || count as usize > r.len() / 2 {
        return Err(format!("header count {count} with {} bytes left", r.len()));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let key = bytes(r)?.ok_or("a header key is null")?;
        headers.push((key, bytes(r)?));
    }
    Ok(WireRecord {
        offset: header.base_offset.wrapping_add(offset_delta),
        timestamp: header.base_timestamp.wrapping_add(timestamp_delta),
        key,
        value,
        headers,
    })
}

/// A zig-zag varint (up to 64 bits).
fn varint(buf: &mut Bytes) -> Result<i64, String> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err("a varint runs past the end".into());
        }
        let b = buf.get_u8();
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    Err("a varint longer than 10 bytes".into())
}

/// A length-prefixed byte string; -1 is null.
fn bytes(buf: &mut Bytes) -> Result<Option<Bytes>, String> {
    let len = varint(buf)?;
    if len < 0 {
        return Ok(None);
    }
    if len as usize > buf.len() {
        return Err(format!("{len} bytes announced, {} left", buf.len()));
    }
    Ok(Some(buf.split_to(len as usize)))
}

fn put_varint(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8(z as u8 | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn put_bytes(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
    }
}

/// A record to encode.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a, H> {
    /// Create time, ms since the epoch.
    pub timestamp: i64,
    /// Key; `None` is null.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is null.
    pub value: Option<&'a [u8]>,
    /// Headers, in order.
    pub headers: H,
}

/// Encodes `records` as one batch at base offset 0 (the broker assigns offsets), create
/// time, not transactional, with the producer's fields.
pub fn encode<'a, H, I>(
    records: I,
    producer: Producer,
    compression: Compression,
) -> Result<Bytes, String>
where
    H: IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    I: IntoIterator<Item = NewRecord<'a, H>>,
    I::IntoIter: Clone,
{
    let records = records.into_iter();
    let (count, base_timestamp, max_timestamp) = records
        .clone()
        .fold((0usize, i64::MAX, i64::MIN), |(n, lo, hi), r| {
            (n + 1, lo.min(r.timestamp), hi.max(r.timestamp))
        });
    if count == 0 {
        return Err("a batch needs at least one record".into());
    }
    if count > i32::MAX as usize {
        return Err(format!("{count} records do not fit in one batch"));
    }
    let write = |buf: &mut BytesMut| -> anyhow::Result<()> {
        // One record, and its headers, before their lengths are known.
        let mut one = BytesMut::new();
        let mut rest = BytesMut::new();
        for (i, r) in records.enumerate() {
            one.clear();
            one.put_i8(0);
            put_varint(&mut one, r.timestamp.wrapping_sub(base_timestamp));
            put_varint(&mut one, i as i64);
            put_bytes(&mut one, r.key);
            put_bytes(&mut one, r.value);
            let mut headers = 0i64;
            rest.clear();
            for (k, v) in r.headers {
                put_bytes(&mut rest, Some(k));
                put_bytes(&mut rest, v);
                headers += 1;
            }
            put_varint(&mut one, headers);
            one.extend_from_slice(&rest);
            put_varint(buf, one.len() as i64);
            buf.extend_from_slice(&one);
        }
        Ok(())
    };
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 64 * count);
    buf.put_i64(0); // base offset
    buf.put_i32(0); // length, below
    buf.put_i32(-1); // partition leader epoch
    buf.put_i8(2); // magic
    buf.put_u32(0); // CRC, below
    buf.put_i16(compression.bits());
    buf.put_i32(count as i32 - 1);
    buf.put_i64(base_timestamp);
    buf.put_i64(max_timestamp);
    buf.put_i64(producer.id);
    buf.put_i16(producer.epoch);
    buf.put_i32(producer.base_sequence);
    buf.put_i32(count as i32);
    match compression {
        Compression::None => write(&mut buf),
        Compression::Gzip => codec::Gzip::compress(&mut buf, write),
        Compression::Snappy => codec::Snappy::compress(&mut buf, write),
        Compression::Lz4 => codec::Lz4::compress(&mut buf, write),
        Compression::Zstd => codec::Zstd::compress(&mut buf, write),
    }
    .map_err(|e| format!("{e:#}"))?;
    let length = buf.len() - 12;
    if length > i32::MAX as usize {
        return Err(format!("a batch of {length} bytes is too large"));
    }
    buf[8..12].copy_from_slice(&(length as i32).to_be_bytes());
    let crc = crc32c::crc32c(&buf[CRC_FROM..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression as TheirCompression, Record, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    type Headers = Vec<(Vec<u8>, Option<Vec<u8>>)>;

    #[derive(Debug, Clone)]
    struct Plain {
        timestamp: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Headers,
    }

    fn blob() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
    }

    fn header_key() -> impl Strategy<Value = Vec<u8>> {
        // Few names, so duplicates are common.
        prop_oneof![
            Just(b"a".to_vec()),
            Just(b"b".to_vec()),
            "[a-z]{0,6}".prop_map(String::into_bytes)
        ]
    }

    fn plain() -> impl Strategy<Value = Plain> {
        (
            1_600_000_000_000i64..1_800_000_000_000,
            blob(),
            blob(),
            proptest::collection::vec((header_key(), blob()), 0..6),
        )
            .prop_map(|(timestamp, key, value, headers)| Plain {
                timestamp,
                key,
                value,
                headers,
            })
    }

    fn codec() -> impl Strategy<Value = Compression> {
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Gzip),
            Just(Compression::Snappy),
            Just(Compression::Lz4),
            Just(Compression::Zstd)
        ]
    }

    fn ours(records: &[Plain], producer: Producer, compression: Compression) -> Bytes {
        encode(
            records.iter().map(|r| NewRecord {
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: r.headers.iter().map(|(k, v)| (&k[..], v.as_deref())),
            }),
            producer,
            compression,
        )
        .unwrap()
    }

    fn theirs_compression(c: Compression) -> TheirCompression {
        match c {
            Compression::None => TheirCompression::None,
            Compression::Gzip => TheirCompression::Gzip,
            Compression::Snappy => TheirCompression::Snappy,
            Compression::Lz4 => TheirCompression::Lz4,
            Compression::Zstd => TheirCompression::Zstd,
        }
    }

    /// The headers as a map keeps them: the last value of each key, at the position of
    /// its first occurrence.
    fn as_map(headers: &Headers) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut map: IndexMap<Vec<u8>, Option<Vec<u8>>> = IndexMap::new();
        for (k, v) in headers {
            map.insert(k.clone(), v.clone());
        }
        map.into_iter().collect()
    }

    fn utf8_headers(records: &[Plain]) -> bool {
        records.iter().all(|r| {
            r.headers
                .iter()
                .all(|(k, _)| std::str::from_utf8(k).is_ok())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn our_batches_decode_to_what_was_encoded_duplicates_and_order_kept(
            records in proptest::collection::vec(plain(), 1..8),
            compression in codec(),
            sequence in 0i32..1000,
        ) {
            let producer = Producer { id: 4711, epoch: 3, base_sequence: sequence };
            let batch = decode(ours(&records, producer, compression)).unwrap();
            prop_assert_eq!(batch.header.producer, producer);
            prop_assert_eq!(batch.header.record_count as usize, records.len());
            prop_assert_eq!(batch.header.last_offset_delta as usize, records.len() - 1);
            prop_assert_eq!(batch.records.len(), records.len());
            for (i, (got, sent)) in batch.records.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, i as i64);
                prop_assert_eq!(got.timestamp, sent.timestamp);
                prop_assert_eq!(got.key.as_deref(), sent.key.as_deref());
                prop_assert_eq!(got.value.as_deref(), sent.value.as_deref());
                let headers: Headers = got.headers.iter().map(|(k, v)| (k.to_vec(), v.as_ref().map(|v| v.to_vec()))).collect();
                prop_assert_eq!(&headers, &sent.headers);
            }
        }

        #[test]
        fn the_protocol_crate_reads_our_batches(
            records in proptest::collection::vec(plain(), 1..8),
            compression in codec(),
        ) {
            prop_assume!(utf8_headers(&records));
            let producer = Producer { id: 17, epoch: 0, base_sequence: 40 };
            let mut raw = ours(&records, producer, compression);
            let set = RecordBatchDecoder::decode(&mut raw).unwrap();
            prop_assert_eq!(set.records.len(), records.len());
            for (i, (got, sent)) in set.records.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, i as i64);
                prop_assert_eq!(got.sequence, 40 + i as i32);
                prop_assert_eq!(got.producer_id, 17);
                prop_assert_eq!(got.timestamp, sent.timestamp);
                prop_assert_eq!(got.key.as_deref(), sent.key.as_deref());
                prop_assert_eq!(got.value.as_deref(), sent.value.as_deref());
                let headers: Headers = got.headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_ref().map(|v| v.to_vec()))).collect();
                prop_assert_eq!(headers, as_map(&sent.headers));
            }
        }

        #[test]
        fn we_read_the_protocol_crates_batches(
            records in proptest::collection::vec(plain(), 1..8),
            compression in codec(),
        ) {
            prop_assume!(utf8_headers(&records));
            let wire: Vec<Record> = records.iter().enumerate().map(|(i, r)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: 100 + i as i64,
                // The crate's encoder keeps records in one batch while offset minus
                // sequence stays the same.
                sequence: i as i32 - 1,
                timestamp: r.timestamp,
                key: r.key.clone().map(Bytes::from),
                value: r.value.clone().map(Bytes::from),
                headers: as_map(&r.headers).into_iter().map(|(k, v)| (StrBytes::from_utf8(Bytes::from(k)).unwrap(), v.map(Bytes::from))).collect(),
            }).collect();
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(&mut buf, wire.iter(), &RecordEncodeOptions { version: 2, compression: theirs_compression(compression) }).unwrap();
            let batch = decode(buf.freeze()).unwrap();
            prop_assert_eq!(batch.records.len(), records.len());
            for (i, (got, sent)) in batch.records.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, 100 + i as i64);
                prop_assert_eq!(got.timestamp, sent.timestamp);
                prop_assert_eq!(got.key.as_deref(), sent.key.as_deref());
                prop_assert_eq!(got.value.as_deref(), sent.value.as_deref());
                let headers: Headers = got.headers.iter().map(|(k, v)| (k.to_vec(), v.as_ref().map(|v| v.to_vec()))).collect();
                prop_assert_eq!(headers, as_map(&sent.headers));
            }
        }
    }

    #[test]
    fn a_flipped_bit_is_a_crc_mismatch() {
        let records = [Plain {
            timestamp: 1_700_000_000_000,
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![],
        }];
        let raw = ours(&records, Producer::NONE, Compression::None);
        let mut damaged = BytesMut::from(&raw[..]);
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let err = decode(damaged.freeze()).unwrap_err();
        assert!(err.contains("CRC mismatch"), "{err}");
    }

    #[test]
    fn varints_round_trip_at_their_edges() {
        for v in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            assert_eq!(varint(&mut buf.freeze()).unwrap(), v);
        }
    }
}
