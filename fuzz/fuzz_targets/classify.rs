//! libFuzzer target: see src/fuzz.rs (`fuzz_classify`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portsentry::fuzz::fuzz_classify(data));
