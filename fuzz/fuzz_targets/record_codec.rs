//! The record batch codec never panics on a batch's bytes, and what it decodes it
//! encodes again to a batch that decodes to the same records: keys, values, timestamps,
//! and every header in order, duplicates included.
#![no_main]

use kafka_direct::kafka::records::{decode, encode, Codec, NewRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = decode(bytes::Bytes::copy_from_slice(data)) else {
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
        Codec::None,
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
