//! Stealth (`-stcp`/`-sudp`) and advanced (`-atcp`/`-audp`) sensors: raw capture with an
//! in-kernel prefilter.
//! (in progress)

pub mod bpf;
pub mod ports;
