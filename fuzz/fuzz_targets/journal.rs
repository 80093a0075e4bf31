//! libFuzzer target: see src/fuzz.rs (`fuzz_journal`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portsentry::fuzz::fuzz_journal(data));
