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

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::Config;
use crate::event::{Hit, Mode};

/// Where a sensor delivers probes: a bounded channel that never blocks the sensor. A full
/// channel counts the probe as dropped so the loss is visible instead of silent.
///
/// The pipeline's channel carries batches ([`HitSink::batched`]): a sensor that reads many
/// packets at a time (the raw sensor's ring) hands them on in one message, so the filter
/// thread wakes once per batch rather than once per probe. A channel of single hits
/// ([`HitSink::new`]) serves tests and tools.
#[derive(Clone)]
pub struct HitSink {
    tx: HitTx,
    dropped: Arc<AtomicU64>,
}

/// The two kinds of channel a [`HitSink`] may feed.
#[derive(Clone)]
enum HitTx {
    One(Sender<Hit>),
    Batches(Sender<Vec<Hit>>),
}

impl HitSink {
    /// Wraps a channel of single hits.
    pub fn new(tx: Sender<Hit>) -> HitSink {
        HitSink {
            tx: HitTx::One(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Wraps a channel of batches (the pipeline's input).
    pub fn batched(tx: Sender<Vec<Hit>>) -> HitSink {
        HitSink {
            tx: HitTx::Batches(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Delivers a probe or counts it as dropped; returns false when it was dropped.
    pub fn emit(&self, hit: Hit) -> bool {
        match &self.tx {
            HitTx::One(tx) => self.sent(tx.try_send(hit), 1) == 1,
            HitTx::Batches(tx) => self.sent(tx.try_send(vec![hit]), 1) == 1,
        }
    }

    /// Delivers probes in one message (one per probe on a channel of single hits); returns
    /// how many were delivered, the others counted as dropped.
    pub fn emit_batch(&self, hits: Vec<Hit>) -> usize {
        let n = hits.len();
        if n == 0 {
            return 0;
        }
        match &self.tx {
            HitTx::One(tx) => hits.into_iter().map(|h| self.sent(tx.try_send(h), 1)).sum(),
            HitTx::Batches(tx) => self.sent(tx.try_send(hits), n),
        }
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
    fn a_batch_is_one_message_and_counts_all_its_probes_when_dropped() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sink = HitSink::batched(tx);
        let hit = Hit::now("10.77.0.2".parse().unwrap(), 1, Mode::Atcp, ProbeKind::Syn);
        assert_eq!(sink.emit_batch(vec![hit.clone(); 3]), 3);
        assert_eq!(
            sink.emit_batch(vec![hit.clone(); 5]),
            0,
            "the channel is full"
        );
        assert_eq!(sink.emit_batch(Vec::new()), 0);
        assert_eq!(sink.dropped(), 5);
        assert_eq!(rx.try_recv().map(|b| b.len()), Ok(3));
        // On a channel of single hits, a batch is one message per probe.
        let (tx, rx) = crossbeam_channel::bounded(2);
        let one = HitSink::new(tx);
        assert_eq!(one.emit_batch(vec![hit; 3]), 2);
        assert_eq!((rx.len(), one.dropped()), (2, 1));
    }
}
