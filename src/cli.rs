//! Command line (in progress).

/// Entry point of the binary; returns the exit code.
pub fn main() -> i32 {
    0
}
