//! Feed arbitrary text to the config loader (both formats): it must answer Ok or a located
//! error, never panic.
#![no_main]

use std::path::Path;

use kvrouter::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(Path::new("fuzz.yml"), text) {
        assert!(!e.reason.is_empty());
    }
});
