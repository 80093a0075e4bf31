//! libFuzzer target: see src/fuzz.rs (`fuzz_blocked_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portsentry::fuzz::fuzz_blocked_file(data));
