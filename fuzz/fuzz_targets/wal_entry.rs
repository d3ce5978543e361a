//! The WAL entry decoder never panics, and whatever it accepts encodes back to an entry
//! that decodes to the same batch.
#![no_main]

use kafka_direct::wal::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = codec::decode(data) {
        let again = codec::decode(&codec::encode(&batch)).expect("a re-encoded entry decodes");
        assert_eq!(again, batch);
    }
});
