//! The configuration loader (TOML and JSON, flattened to dotted keys, then validated)
//! never panics, whatever the text.
#![no_main]

use kafka_direct::config::RawConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = RawConfig::from_toml_str(text) {
        let _ = raw.build();
    }
    if let Ok(raw) = RawConfig::from_json_str(text) {
        let _ = raw.build();
    }
});
