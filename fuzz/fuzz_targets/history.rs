//! libFuzzer target: see src/fuzz.rs (`fuzz_history`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portsentry::fuzz::fuzz_history(data));
