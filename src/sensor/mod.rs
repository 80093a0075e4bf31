//! Sensors: where probes come from. A sensor owns its sockets, reads them on its own thread
//! and hands each probe to a [`HitSink`]; it never waits on anything downstream.
//!
//! - [`bound`]: classic `-tcp`/`-udp`, listening on the trap ports (proves the source for TCP).
//! - [`raw`]: stealth and advanced modes, raw capture with an in-kernel prefilter.
//! - [`classify`]: the pure bytes -> probe function the raw sensor uses (fuzzable).
//! - [`listeners`]: which ports have a real listener, from the kernel's socket tables.

pub mod bound;
pub mod classify;
pub mod listeners;
pub mod raw;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::Config;
use crate::event::{Hit, Mode};

/// What judges a sensor's probes on the sensor's own thread: the filter stage
/// ([`crate::pipeline`]), called once per batch, so a probe costs no hand-off to another
/// thread before it is judged.
pub trait Judge: Send + Sync {
    /// Takes every hit out of `hits`, leaving the vector empty with its memory kept for the
    /// sensor's next batch.
    fn judge(&self, hits: &mut Vec<Hit>);

    /// Hands on what the judge held back and is due at `now`; returns when it wants the next
    /// call at the latest (`None`: nothing held).
    fn tick(&self, now: Instant) -> Option<Instant>;
}

/// Where a sensor delivers probes; it never blocks the sensor on anything downstream.
///
/// The daemon's sink judges the probes in place ([`HitSink::judged`]): the filters run on the
/// sensor's thread, a batch at a time (a raw sensor hands over every probe it read at one
/// wake-up). A bounded channel of single hits ([`HitSink::new`]) serves tests and tools; when
/// it is full the probe is counted as dropped, so the loss is visible instead of silent.
#[derive(Clone)]
pub struct HitSink {
    tx: HitTx,
    dropped: Arc<AtomicU64>,
}

/// The two ways a [`HitSink`] delivers.
#[derive(Clone)]
enum HitTx {
    One(Sender<Hit>),
    Judged(Arc<dyn Judge>),
}

impl HitSink {
    /// Wraps a channel of single hits.
    pub fn new(tx: Sender<Hit>) -> HitSink {
        HitSink {
            tx: HitTx::One(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Judges probes in place, on the calling sensor's thread (the pipeline's input).
    pub fn judged(judge: Arc<dyn Judge>) -> HitSink {
        HitSink {
            tx: HitTx::Judged(judge),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Delivers a probe or counts it as dropped; returns false when it was dropped.
    pub fn emit(&self, hit: Hit) -> bool {
        match &self.tx {
            HitTx::One(tx) => self.sent(tx.try_send(hit), 1) == 1,
            HitTx::Judged(judge) => {
                judge.judge(&mut vec![hit]);
                true
            }
        }
    }

    /// Delivers every probe of `hits` (leaving it empty, its memory kept for the next batch):
    /// one call of the judge, or one message per probe on a channel of single hits. Returns
    /// how many were delivered, the others counted as dropped.
    pub fn emit_batch(&self, hits: &mut Vec<Hit>) -> usize {
        let n = hits.len();
        if n == 0 {
            return 0;
        }
        match &self.tx {
            HitTx::One(tx) => hits.drain(..).map(|h| self.sent(tx.try_send(h), 1)).sum(),
            HitTx::Judged(judge) => {
                judge.judge(hits);
                n
            }
        }
    }

    /// Hands on what the judge held back and is due at `now` (the alerts that are only
    /// logged wait a few milliseconds to go together); returns when the sensor must call
    /// again at the latest. A sensor that batches calls it at every wake-up and never sleeps
    /// past the time returned.
    pub fn tick(&self, now: Instant) -> Option<Instant> {
        match &self.tx {
            HitTx::One(_) => None,
            HitTx::Judged(judge) => judge.tick(now),
        }
    }

    /// [`HitSink::tick`], and how long the sensor may then sleep: `longest`, or less when
    /// something held back falls due sooner.
    pub fn tick_and_wait(&self, now: Instant, longest: Duration) -> Duration {
        self.tick(now)
            .map_or(longest, |t| t.saturating_duration_since(now).min(longest))
    }

    /// Counts `n` probes of a send as delivered or dropped.
    fn sent<T>(&self, result: Result<(), TrySendError<T>>, n: usize) -> usize {
        match result {
            Ok(()) => n,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                0
            }
        }
    }

    /// Probes dropped so far because the pipeline was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Messages a running sensor receives from the daemon: a new config generation to follow
/// (hot reload), or the order to stop.
#[derive(Debug, Clone)]
pub enum SensorControl {
    /// Follow this config from now on (open new ports, close removed ones, keep the rest).
    Reconfigure(Arc<Config>),
    /// Close every socket and return.
    Stop,
}

/// A source of probes. `start` opens the sockets (so errors surface before the daemon says
/// it is active) and `run` reads them until told to stop.
pub trait Sensor: Send {
    /// Short name for logs (`classic`, `raw tcp`, …).
    fn name(&self) -> String;

    /// The modes this sensor serves.
    fn modes(&self) -> Vec<Mode>;

    /// Reads until `SensorControl::Stop` arrives or the control channel closes.
    fn run(self: Box<Self>, sink: HitSink, control: Receiver<SensorControl>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProbeKind;

    #[test]
    fn full_channel_counts_drops_instead_of_blocking() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let sink = HitSink::new(tx);
        let hit = Hit::now(
            "10.77.0.2".parse().unwrap(),
            1,
            Mode::Tcp,
            ProbeKind::Connect,
        );
        assert!(sink.emit(hit.clone()));
        assert!(sink.emit(hit.clone()));
        assert!(!sink.emit(hit.clone()));
        assert!(!sink.clone().emit(hit));
        assert_eq!(sink.dropped(), 2);
        assert_eq!(rx.len(), 2);
    }

    #[test]
    fn a_batch_is_judged_in_one_call_and_left_empty() {
        #[derive(Default)]
        struct Counting(std::sync::Mutex<Vec<usize>>);
        impl Judge for Counting {
            fn judge(&self, hits: &mut Vec<Hit>) {
                crate::sync::lock(&self.0).push(hits.len());
                hits.clear();
            }
            fn tick(&self, _now: Instant) -> Option<Instant> {
                None
            }
        }
        let judge = Arc::new(Counting::default());
        let sink = HitSink::judged(Arc::clone(&judge) as Arc<dyn Judge>);
        let hit = Hit::now("10.77.0.2".parse().unwrap(), 1, Mode::Atcp, ProbeKind::Syn);
        let mut batch = vec![hit.clone(); 3];
        assert_eq!(sink.emit_batch(&mut batch), 3);
        assert!(batch.is_empty() && batch.capacity() >= 3, "memory kept");
        assert_eq!(sink.emit_batch(&mut batch), 0, "an empty batch is no call");
        assert!(sink.emit(hit.clone()));
        assert_eq!(*crate::sync::lock(&judge.0), vec![3, 1]);
        assert_eq!(sink.dropped(), 0);
        // On a channel of single hits, a batch is one message per probe.
        let (tx, rx) = crossbeam_channel::bounded(2);
        let one = HitSink::new(tx);
        assert_eq!(one.emit_batch(&mut vec![hit; 3]), 2);
        assert_eq!((rx.len(), one.dropped()), (2, 1));
    }

    #[test]
    fn a_sensor_sleeps_no_longer_than_what_the_judge_holds_back_allows() {
        struct Holding(Option<Duration>);
        impl Judge for Holding {
            fn judge(&self, hits: &mut Vec<Hit>) {
                hits.clear();
            }
            fn tick(&self, now: Instant) -> Option<Instant> {
                self.0.map(|d| now + d)
            }
        }
        let now = Instant::now();
        let longest = Duration::from_millis(250);
        let held = HitSink::judged(Arc::new(Holding(Some(Duration::from_millis(7)))));
        assert_eq!(held.tick_and_wait(now, longest), Duration::from_millis(7));
        let nothing = HitSink::judged(Arc::new(Holding(None)));
        assert_eq!(nothing.tick_and_wait(now, longest), longest);
        let later = HitSink::judged(Arc::new(Holding(Some(Duration::from_secs(9)))));
        assert_eq!(later.tick_and_wait(now, longest), longest);
        // A channel of single hits holds nothing back.
        let (tx, _rx) = crossbeam_channel::bounded(1);
        assert_eq!(HitSink::new(tx).tick_and_wait(now, longest), longest);
    }
}
