//! Heartbeats: how the watchdog ([`crate::control::notify`]) knows that the threads doing
//! the daemon's work are alive and moving, rather than just that the process exists.
//!
//! Two kinds of thread enrol:
//! - *loops* (sensors, which run the filters, announcer, block manager) wake at least every [`INTERVAL`]
//!   and [`beat`] once per turn; one that has not beaten for [`LOOP_STALL`], or whose thread
//!   has ended (a panic included), is stalled.
//! - *workers* (the responder pool) sit idle between jobs, which is fine; each step of a job
//!   says how long it may take ([`busy`]). A worker past its step's limit is stuck; when
//!   every worker is stuck (or gone), as many as the pool has slots ([`Registry::set_worker_slots`]:
//!   idle workers end and start again), the pool can make no block any more and is wedged.
//!   One stuck worker out of several only slows blocks down, and the log says so already.
//!
//! There is one registry per process, as there is one `NOTIFY_SOCKET`: threads enrol with one
//! line where they start ([`enroll`]) and beat through a thread-local, so no constructor of
//! the pipeline has to carry it. A registry is plain state with an explicit clock, so its
//! rules are unit-tested without threads.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The longest a loop thread may wait for work before it turns round and beats.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A loop thread that has not beaten for this long is stalled. Well above [`INTERVAL`]:
/// the longest honest turn is a reverse-DNS wait (2 s) or a journal fsync on a busy disk.
pub const LOOP_STALL: Duration = Duration::from_secs(5);

/// What kind of thread an entry watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Beats every turn; stalled when it stops.
    Loop,
    /// One of the responder pool's workers: idle, or busy with a step that has a limit.
    Worker,
}

/// One enrolled thread. Times are milliseconds since the registry's epoch, plus one, so that
/// zero can mean "idle".
#[derive(Debug)]
struct Entry {
    name: String,
    kind: Kind,
    last: AtomicU64,
    busy_since: AtomicU64,
    limit_ms: AtomicU64,
    ended: AtomicBool,
}

/// The threads the watchdog vouches for.
#[derive(Debug)]
pub struct Registry {
    epoch: Instant,
    entries: Mutex<Vec<Arc<Entry>>>,
    /// The responder pool's size: its idle workers end and start again, so the workers
    /// enrolled at one moment may be fewer than the jobs it can run at once.
    worker_slots: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry whose clock starts now.
    pub fn new() -> Registry {
        Registry {
            epoch: Instant::now(),
            entries: Mutex::new(Vec::new()),
            worker_slots: AtomicUsize::new(0),
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis());
        ms.unwrap_or(u64::MAX - 1) + 1
    }

    /// Enrols a thread, as having beaten (and idle) at `now`.
    pub fn enroll_at(&self, name: &str, kind: Kind, now: Instant) -> Beat {
        let entry = Arc::new(Entry {
            name: name.to_string(),
            kind,
            last: AtomicU64::new(self.stamp(now)),
            busy_since: AtomicU64::new(0),
            limit_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        crate::sync::lock(&self.entries).push(Arc::clone(&entry));
        Beat {
            entry,
            epoch: self.epoch,
        }
    }

    /// The pool can run `slots` jobs at once: it is wedged only when that many workers are
    /// stuck, not when the one worker left after a quiet spell is.
    pub fn set_worker_slots(&self, slots: usize) {
        self.worker_slots.store(slots, Ordering::Relaxed);
    }

    /// Takes `beat`'s entry out: a worker the pool let go because it had nothing to do is no
    /// worker gone wrong, and the registry must not grow as the pool's threads come and go.
    pub fn retire(&self, beat: Beat) {
        crate::sync::lock(&self.entries).retain(|e| !Arc::ptr_eq(e, &beat.entry));
        // Dropped after its entry left: marking it ended reaches nobody.
        drop(beat);
    }

    /// Whether every enrolled thread is alive and moving at `now`; otherwise what is not, in
    /// words for the log. An empty registry is healthy (nothing enrolled, nothing stuck).
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let entries = crate::sync::lock(&self.entries);
        let now_ms = self.stamp(now);
        let ago = |stamp: u64| Duration::from_millis(now_ms.saturating_sub(stamp));
        let mut workers = 0;
        let mut stuck = Vec::new();
        for e in entries.iter() {
            let ended = e.ended.load(Ordering::Relaxed);
            match e.kind {
                Kind::Loop if ended => return Err(format!("thread \"{}\" has ended", e.name)),
                Kind::Loop => {
                    let quiet = ago(e.last.load(Ordering::Relaxed));
                    if quiet > LOOP_STALL {
                        return Err(format!(
                            "thread \"{}\" has not moved for {}",
                            e.name,
                            seconds(quiet)
                        ));
                    }
                }
                Kind::Worker => {
                    workers += 1;
                    let since = e.busy_since.load(Ordering::Relaxed);
                    let limit = Duration::from_millis(e.limit_ms.load(Ordering::Relaxed));
                    if ended {
                        stuck.push(format!("\"{}\" has ended", e.name));
                    } else if since != 0 && ago(since) > limit {
                        stuck.push(format!(
                            "\"{}\" on one step for {} (limit {})",
                            e.name,
                            seconds(ago(since)),
                            seconds(limit)
                        ));
                    }
                }
            }
        }
        let slots = workers.max(self.worker_slots.load(Ordering::Relaxed));
        if workers > 0 && stuck.len() >= slots {
            return Err(format!(
                "every responder worker is stuck: {}",
                stuck.join(", ")
            ));
        }
        Ok(())
    }
}

/// `12.3s`, for the log.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// One thread's entry, held by that thread. Dropping it marks the thread ended.
#[derive(Debug)]
pub struct Beat {
    entry: Arc<Entry>,
    epoch: Instant,
}

impl Beat {
    fn stamp(&self, now: Instant) -> u64 {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis());
        ms.unwrap_or(u64::MAX - 1) + 1
    }

    /// The thread is at the top of its loop at `now`.
    pub fn beat_at(&self, now: Instant) {
        self.entry.last.store(self.stamp(now), Ordering::Relaxed);
    }

    /// A worker starts a step at `now` that may take `limit`.
    pub fn busy_at(&self, now: Instant, limit: Duration) {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        self.entry.limit_ms.store(ms, Ordering::Relaxed);
        self.entry
            .busy_since
            .store(self.stamp(now), Ordering::Relaxed);
    }

    /// A worker has finished its job and waits for the next.
    pub fn idle(&self) {
        self.entry.busy_since.store(0, Ordering::Relaxed);
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.entry.ended.store(true, Ordering::Relaxed);
    }
}

/// The daemon's registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);
    &REGISTRY
}

thread_local! {
    /// This thread's entry, when it enrolled.
    static CURRENT: RefCell<Option<Beat>> = const { RefCell::new(None) };
}

/// Held by an enrolled thread for as long as it runs: dropping it (the thread returns or
/// unwinds) marks the thread ended, which stops the watchdog's pings.
#[derive(Debug)]
#[must_use = "the thread counts as ended once this is dropped"]
pub struct Enrolled(());

impl Drop for Enrolled {
    fn drop(&mut self) {
        // try_with: during thread teardown the slot may already be gone, and then the Beat
        // inside it has been dropped (and marked ended) with it.
        let _ = CURRENT.try_with(|c| c.borrow_mut().take());
    }
}

/// Enrols the calling thread in the daemon's registry.
pub fn enroll(name: &str, kind: Kind) -> Enrolled {
    let beat = registry().enroll_at(name, kind, Instant::now());
    CURRENT.with(|c| *c.borrow_mut() = Some(beat));
    Enrolled(())
}

/// The calling worker ends because the pool no longer needs it (not a failure): its entry
/// leaves the registry instead of counting as ended.
pub fn retire() {
    if let Ok(Some(beat)) = CURRENT.try_with(|c| c.borrow_mut().take()) {
        registry().retire(beat);
    }
}

fn with_current(f: impl FnOnce(&Beat)) {
    let _ = CURRENT.try_with(|c| {
        if let Some(beat) = c.borrow().as_ref() {
            f(beat);
        }
    });
}

/// The calling thread is alive and at the top of its loop (no-op when it did not enrol).
pub fn beat() {
    with_current(|b| b.beat_at(Instant::now()));
}

/// The calling worker starts a step that may take `limit` (no-op when it did not enrol).
pub fn busy(limit: Duration) {
    with_current(|b| b.busy_at(Instant::now(), limit));
}

/// The calling worker is done with its job (no-op when it did not enrol).
pub fn idle() {
    with_current(Beat::idle);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// `n` responder workers, idle since `t0`.
    fn workers(r: &Registry, n: usize, t0: Instant) -> Vec<Beat> {
        (0..n)
            .map(|i| r.enroll_at(&format!("respond-{i}"), Kind::Worker, t0))
            .collect()
    }

    #[test]
    fn loops_that_beat_are_healthy_and_a_silent_one_stalls_after_loop_stall() {
        let r = Registry::new();
        let t0 = r.epoch;
        let filter = r.enroll_at("filter", Kind::Loop, t0);
        let block = r.enroll_at("block", Kind::Loop, t0);
        for s in 1..=10 {
            filter.beat_at(t0 + S * s);
            block.beat_at(t0 + S * s);
            assert_eq!(r.check(t0 + S * s), Ok(()));
        }
        // block stops at 10 s; at exactly LOOP_STALL later it is still within bounds.
        filter.beat_at(t0 + S * 15);
        assert_eq!(r.check(t0 + S * 10 + LOOP_STALL), Ok(()));
        filter.beat_at(t0 + S * 16);
        assert_eq!(
            r.check(t0 + S * 16),
            Err("thread \"block\" has not moved for 6.0s".into())
        );
        block.beat_at(t0 + S * 16);
        assert_eq!(
            r.check(t0 + S * 16),
            Ok(()),
            "it recovers when it beats again"
        );
    }

    #[test]
    fn a_loop_thread_that_ended_stops_the_pings() {
        let r = Registry::new();
        let t0 = r.epoch;
        let _filter = r.enroll_at("filter", Kind::Loop, t0);
        let sensor = r.enroll_at("sensor classic", Kind::Loop, t0);
        drop(sensor);
        assert_eq!(
            r.check(t0),
            Err("thread \"sensor classic\" has ended".into())
        );
    }

    #[test]
    fn idle_workers_are_healthy_however_long_they_wait() {
        let r = Registry::new();
        let t0 = r.epoch;
        let _w = workers(&r, 3, t0);
        assert_eq!(r.check(t0 + S * 3600), Ok(()));
    }

    #[test]
    fn pool_is_wedged_only_when_every_worker_is_past_its_step_limit() {
        let r = Registry::new();
        let t0 = r.epoch;
        let w = workers(&r, 3, t0);
        w[0].busy_at(t0, S * 3);
        w[1].busy_at(t0, S * 3);
        assert_eq!(r.check(t0 + S * 10), Ok(()), "one worker is free");
        w[2].busy_at(t0 + S * 9, S * 3);
        assert_eq!(
            r.check(t0 + S * 10),
            Ok(()),
            "the third is busy but within its limit"
        );
        assert_eq!(
            r.check(t0 + S * 13),
            Err(
                "every responder worker is stuck: \"respond-0\" on one step for 13.0s \
                 (limit 3.0s), \"respond-1\" on one step for 13.0s (limit 3.0s), \
                 \"respond-2\" on one step for 4.0s (limit 3.0s)"
                    .into()
            )
        );
        // A new step restarts the clock: a worker moving through a chain of slow but
        // bounded responders is not stuck.
        w[0].busy_at(t0 + S * 12, S * 3);
        assert_eq!(r.check(t0 + S * 13), Ok(()));
        w[0].idle();
        assert_eq!(r.check(t0 + S * 100), Ok(()));
    }

    /// Asserts that `r` is unhealthy at `at` for a reason naming `needle`.
    fn assert_unhealthy(r: &Registry, at: Instant, needle: &str) {
        let got = r.check(at);
        assert!(got.as_ref().is_err_and(|e| e.contains(needle)), "{got:?}");
    }

    #[test]
    fn workers_that_ended_count_as_stuck() {
        let r = Registry::new();
        let t0 = r.epoch;
        let mut w = workers(&r, 2, t0);
        let w1 = w.pop().unwrap();
        drop(w);
        assert_eq!(r.check(t0), Ok(()));
        w1.busy_at(t0, S);
        assert_unhealthy(&r, t0 + S * 2, "\"respond-0\" has ended");
    }

    #[test]
    fn a_retired_worker_leaves_the_registry_instead_of_counting_as_ended() {
        let r = Registry::new();
        let t0 = r.epoch;
        let mut w = workers(&r, 2, t0);
        let stuck = w.pop().unwrap();
        r.retire(w.pop().unwrap());
        assert_eq!(crate::sync::lock(&r.entries).len(), 1, "its entry is gone");
        // The one left is the whole pool now: stuck, it wedges the pool...
        stuck.busy_at(t0, S);
        assert_unhealthy(&r, t0 + S * 2, "\"respond-1\" on one step");
        // A pool of three whose other two workers ended for lack of work is not wedged
        // by its one stuck worker: new jobs start new workers.
        r.set_worker_slots(3);
        assert_eq!(r.check(t0 + S * 2), Ok(()));
        r.set_worker_slots(0);
        // ...whereas an ended one counted as stuck beside it (control).
        let ended = r.enroll_at("respond-9", Kind::Worker, t0);
        drop(ended);
        stuck.idle();
        assert_eq!(r.check(t0 + S * 2), Ok(()), "one of two stuck is no wedge");
        stuck.busy_at(t0, S);
        assert!(
            r.check(t0 + S * 2)
                .is_err_and(|e| e.contains("\"respond-9\" has ended"))
        );
    }

    #[test]
    fn thread_local_beats_reach_the_entry_and_end_with_the_guard() {
        let t = std::thread::spawn(|| {
            let _enrolled = enroll("heartbeat-test-thread", Kind::Worker);
            busy(Duration::ZERO);
            std::thread::sleep(Duration::from_millis(5));
            let entries = crate::sync::lock(&registry().entries);
            let e = entries
                .iter()
                .find(|e| e.name == "heartbeat-test-thread")
                .unwrap();
            assert_ne!(e.busy_since.load(Ordering::Relaxed), 0);
            Arc::clone(e)
        });
        let entry = t.join().unwrap();
        assert!(entry.ended.load(Ordering::Relaxed));
        // Threads that never enrolled may call these freely.
        beat();
        idle();
    }
}
