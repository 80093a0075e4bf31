//! Wires sensors -> filters -> responders over crossbeam channels.
//!
//! Two threads: the *filter* thread takes hits from every sensor and runs the filter chain
//! (cheap, in memory); the *announcing* thread takes the alerts that passed, logs them and
//! asks the block manager ([`crate::block::manager`]) to block, which runs the responders on
//! its own pool. Sensors never block: their channel is bounded and a full channel
//! counts a drop. A new config generation arrives on a control channel that beats data
//! (`select_biased!`) and travels to the response thread in order with the alerts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select_biased, unbounded};

use crate::announce::Announcer;
use crate::event::{Alert, Hit};
use crate::filter::{DropReason, Filter, Verdict};
use crate::generation::Generation;
use crate::logging;
use crate::report;
use crate::sensor::HitSink;

/// Probes buffered between the sensors and the filters.
pub const HIT_QUEUE: usize = 16 * 1024;
/// Alerts buffered between the filters and the responders: enough to absorb a burst of
/// 100k probes/s from forged sources while the response thread writes their log lines.
pub const ALERT_QUEUE: usize = 16 * 1024;
/// How often drop counters are reported when they grew.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Counters shared by the pipeline's threads; read by the daemon for status lines and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Probes that reached the filters.
    pub hits: AtomicU64,
    /// Probes dropped by the ignore filter.
    pub ignored: AtomicU64,
    /// Probes still below SCAN_TRIGGER.
    pub below_trigger: AtomicU64,
    /// Alerts handed to the response thread.
    pub alerts: AtomicU64,
    /// Alerts lost because the response thread was behind.
    pub alerts_dropped: AtomicU64,
}

enum FilterMsg {
    Reload(Generation),
    /// Answered once every message sent before it has been applied.
    Sync(Sender<()>),
    Stop,
}

enum ResponseMsg {
    Alert(Alert),
    Reload(Generation),
}

/// The running pipeline. Dropping it without `stop` leaves its threads running until the
/// sensors' senders are gone; call `stop` for an orderly end.
pub struct Pipeline {
    sink: HitSink,
    control: Sender<FilterMsg>,
    stats: Arc<Stats>,
    filter_thread: Option<JoinHandle<()>>,
    response_thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts both threads; the filters and the stage were built from the first generation.
    pub fn start(filters: Vec<Box<dyn Filter>>, stage: Announcer) -> std::io::Result<Pipeline> {
        let (hit_tx, hit_rx) = bounded::<Hit>(HIT_QUEUE);
        let (control_tx, control_rx) = unbounded::<FilterMsg>();
        let (alert_tx, alert_rx) = bounded::<ResponseMsg>(ALERT_QUEUE);
        let stats = Arc::new(Stats::default());
        let sink = HitSink::new(hit_tx);

        let response_thread = std::thread::Builder::new()
            .name("respond".into())
            .spawn(move || response_loop(stage, alert_rx))?;
        let filter_stats = Arc::clone(&stats);
        let filter_sink = sink.clone();
        let filter_thread = std::thread::Builder::new()
            .name("filter".into())
            .spawn(move || {
                let mut worker = FilterWorker {
                    filters,
                    alerts: alert_tx,
                    stats: filter_stats,
                    sink: filter_sink,
                };
                worker.run(hit_rx, control_rx);
            })?;
        Ok(Pipeline {
            sink,
            control: control_tx,
            stats,
            filter_thread: Some(filter_thread),
            response_thread: Some(response_thread),
        })
    }

    /// Where sensors deliver probes.
    pub fn sink(&self) -> HitSink {
        self.sink.clone()
    }

    /// Counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Swaps in a new generation: filters first (the very next probe sees it), then the
    /// response stage, in order with the alerts already queued.
    pub fn reload(&self, generation: Generation) {
        let _ = self.control.send(FilterMsg::Reload(generation));
    }

    /// Waits until the filter thread has applied every reload sent before (so the next probe
    /// sees it); false when it did not answer within `timeout`.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (tx, rx) = bounded(1);
        self.control.send(FilterMsg::Sync(tx)).is_ok() && rx.recv_timeout(timeout).is_ok()
    }

    /// Stops both threads after the alerts already queued have been handled.
    pub fn stop(mut self) {
        let _ = self.control.send(FilterMsg::Stop);
        if let Some(h) = self.filter_thread.take() {
            let _ = h.join();
        }
        if let Some(h) = self.response_thread.take() {
            let _ = h.join();
        }
    }
}

/// Reports probes and alerts dropped since the last report, at most every
/// [`DROP_REPORT_INTERVAL`] and once more at the end.
struct DropReport {
    reported: (u64, u64),
    since: Instant,
}

impl DropReport {
    fn new(now: Instant) -> DropReport {
        DropReport {
            reported: (0, 0),
            since: now,
        }
    }

    fn due(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= DROP_REPORT_INTERVAL
    }

    /// Logs what grew since the last report; returns the lines, for tests.
    fn report(&mut self, counts: (u64, u64), now: Instant) -> Vec<String> {
        let secs = now.duration_since(self.since).as_secs().max(1);
        let mut lines = Vec::new();
        if counts.0 > self.reported.0 {
            lines.push(report::probes_dropped(counts.0 - self.reported.0, secs));
        }
        if counts.1 > self.reported.1 {
            lines.push(report::alerts_dropped(counts.1 - self.reported.1, secs));
        }
        for line in &lines {
            log::warn!("{line}");
        }
        self.reported = counts;
        self.since = now;
        lines
    }
}

struct FilterWorker {
    filters: Vec<Box<dyn Filter>>,
    alerts: Sender<ResponseMsg>,
    stats: Arc<Stats>,
    sink: HitSink,
}

impl FilterWorker {
    fn run(&mut self, hits: Receiver<Hit>, control: Receiver<FilterMsg>) {
        let mut drops = DropReport::new(Instant::now());
        loop {
            select_biased! {
                recv(control) -> msg => match msg {
                    Ok(FilterMsg::Reload(generation)) => {
                        for f in &mut self.filters {
                            f.reconfigure(&generation);
                        }
                        // Blocking send: a reload must not be lost behind a burst of alerts.
                        let _ = self.alerts.send(ResponseMsg::Reload(generation));
                    }
                    Ok(FilterMsg::Sync(done)) => {
                        let _ = done.send(());
                    }
                    Ok(FilterMsg::Stop) | Err(_) => break,
                },
                recv(hits) -> hit => match hit {
                    Ok(hit) => self.inspect(hit),
                    Err(_) => break,
                },
                default(DROP_REPORT_INTERVAL) => {}
            }
            if drops.due(Instant::now()) {
                drops.report(self.drop_counts(), Instant::now());
            }
        }
        // Drops of the last seconds are reported too, not lost with the daemon.
        drops.report(self.drop_counts(), Instant::now());
    }

    fn drop_counts(&self) -> (u64, u64) {
        (
            self.sink.dropped(),
            self.stats.alerts_dropped.load(Ordering::Relaxed),
        )
    }

    fn inspect(&mut self, hit: Hit) {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        let mut candidate = Alert {
            hit,
            count: 0,
            already_blocked: false,
            actionable: true,
        };
        for f in &mut self.filters {
            match f.inspect(&mut candidate) {
                Verdict::Pass => {}
                Verdict::Drop(reason) => {
                    let counter = match reason {
                        DropReason::Ignored => &self.stats.ignored,
                        DropReason::BelowTrigger => &self.stats.below_trigger,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    log::debug!(
                        "{} dropped probe from {} to {} port {}: {reason:?}",
                        f.name(),
                        candidate.hit.src,
                        candidate.hit.proto().upper(),
                        candidate.hit.port
                    );
                    return;
                }
            }
        }
        // A lost alert reserved nothing: the host's next probe is judged afresh.
        match self.alerts.try_send(ResponseMsg::Alert(candidate)) {
            Ok(()) => {
                self.stats.alerts.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.alerts_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Alerts handled in one stderr batch at most (see [`logging::batched`]).
const RESPONSE_BATCH: usize = 512;

fn response_loop(mut stage: Announcer, alerts: Receiver<ResponseMsg>) {
    let mut handle = |msg: ResponseMsg| match msg {
        ResponseMsg::Alert(alert) => stage.handle(&alert),
        ResponseMsg::Reload(generation) => stage.reconfigure(generation),
    };
    while let Ok(first) = alerts.recv() {
        logging::batched(|| {
            handle(first);
            for _ in 1..RESPONSE_BATCH {
                match alerts.try_recv() {
                    Ok(msg) => handle(msg),
                    Err(_) => break,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_reported_once_per_interval_and_at_the_end() {
        let t0 = Instant::now();
        let mut r = DropReport::new(t0);
        assert!(!r.due(t0 + Duration::from_secs(9)));
        assert!(r.due(t0 + DROP_REPORT_INTERVAL));
        assert!(r.report((0, 0), t0 + DROP_REPORT_INTERVAL).is_empty());
        let t1 = t0 + DROP_REPORT_INTERVAL;
        assert_eq!(
            r.report((7, 2), t1 + Duration::from_secs(3)),
            vec![report::probes_dropped(7, 3), report::alerts_dropped(2, 3)]
        );
        // Only what grew since is reported next time.
        assert_eq!(
            r.report((7, 5), t1 + Duration::from_secs(13)),
            vec![report::alerts_dropped(3, 10)]
        );
    }
}
