//! The fetch path's record batch decoder never panics on what a broker sends, and what
//! it returns is consistent: records at or above the fetch offset, in order, below the
//! next offset.
#![no_main]

use kafka_direct::kafka::batches::{decode, AbortedTransaction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let fetch_offset = i64::from(data[0]);
    let aborted: Vec<AbortedTransaction> = data[1..9]
        .chunks(2)
        .map(|c| AbortedTransaction {
            producer_id: i64::from(c[0] % 4),
            first_offset: i64::from(c[1]),
        })
        .collect();
    if let Ok(decoded) = decode(bytes::Bytes::copy_from_slice(&data[9..]), fetch_offset, &aborted) {
        let batch = decoded.batch;
        assert!(batch.next_offset >= fetch_offset);
        let mut last = fetch_offset - 1;
        for r in &batch.records {
            assert!(r.offset > last, "records in order, at or above the fetch offset");
            assert!(r.offset < batch.next_offset);
            last = r.offset;
        }
    }
});
