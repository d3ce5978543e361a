//! The record batch codec never panics on a batch's bytes, and what it decodes it
//! encodes again to a batch that decodes to the same records: keys, values, timestamps,
//! and every header in order, duplicates included.
#![no_main]

use kafka_direct::kafka::records::{decode, encode, Compression, NewRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Past the framing: the length and the CRC made right (half the time), so the
    // fuzzer reaches the records instead of stopping at the checksum.
    let mut data = data.to_vec();
    if data.len() >= 61 && data[0] & 1 == 0 {
        let length = (data.len() - 12) as i32;
        data[8..12].copy_from_slice(&length.to_be_bytes());
        data[16] = 2;
        let crc = crc32c::crc32c(&data[21..]);
        data[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    let Ok(batch) = decode(bytes::Bytes::from(data)) else {
        return;
    };
    if batch.records.is_empty() {
        return;
    }
    let again = encode(
        batch.records.iter().map(|r| NewRecord {
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: r.headers.iter().map(|(k, v)| (&k[..], v.as_deref())),
        }),
        batch.header.producer,
        Compression::None,
    )
    .expect("decoded records encode");
    let round = decode(again).expect("an encoded batch decodes");
    assert_eq!(round.header.producer, batch.header.producer);
    assert_eq!(round.records.len(), batch.records.len());
    for (i, (a, b)) in round.records.iter().zip(&batch.records).enumerate() {
        assert_eq!(a.offset, i as i64);
        assert_eq!(a.timestamp, b.timestamp);
        assert_eq!(a.key, b.key);
        assert_eq!(a.value, b.value);
        assert_eq!(a.headers, b.headers);
    }
});
