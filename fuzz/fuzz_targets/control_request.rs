//! libFuzzer target: see src/fuzz.rs (`fuzz_control_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portsentry::fuzz::fuzz_control_request(data));
