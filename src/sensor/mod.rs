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
#[derive(Clone)]
pub struct HitSink {
    tx: Sender<Hit>,
    dropped: Arc<AtomicU64>,
}

impl HitSink {
    /// Wraps the sending side of the pipeline's input channel.
    pub fn new(tx: Sender<Hit>) -> HitSink {
        HitSink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Delivers a probe or counts it as dropped; returns false when it was dropped.
    pub fn emit(&self, hit: Hit) -> bool {
        match self.tx.try_send(hit) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
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
}
