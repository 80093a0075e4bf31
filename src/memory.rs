//! The allocator's part of the daemon's memory (glibc's malloc). Two settings keep the
//! resident size close to what the daemon really holds: fixed thresholds at start, and the
//! free pages handed back after a burst such as the restore of 100,000 blocks.
//!
//! By default glibc raises its mmap and trim thresholds each time a large block is freed
//! (up to 32 MiB and 64 MiB): after a restore of 100,000 blocks, a thread's heap (not the
//! main one) stayed some 30 MiB larger, `malloc_trim` or not. Fixed thresholds (glibc's own
//! starting values, 128 KiB) keep large blocks in their own mappings, given back when
//! freed, and let heaps be trimmed as they shrink.
//! Other C libraries: nothing to do, both functions are empty.

/// Large blocks get their own mapping and a heap's free top goes back to the system past
/// this size.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes glibc's thresholds, before the daemon's threads start.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

/// Hands the pages the allocator holds free back to the system, in every thread's heap:
/// after a restore the journal's full records and the jobs' texts are freed, but freed
/// memory in the middle of a heap stays resident until asked for.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only returns free pages of glibc's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
