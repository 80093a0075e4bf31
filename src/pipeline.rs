//! Wires sensors -> filters -> the announcing thread over crossbeam channels (the
//! announcing thread hands blocks on to the block manager, whose pool runs the responders).
//!
//! Two threads: the *filter* thread takes hits from every sensor, a batch per message (all
//! the probes a raw sensor read at one wake-up), and runs the filter chain (cheap, in
//! memory), handing the alerts of a batch on in one message, so that each thread wakes
//! once per batch; the *announcing* thread takes the alerts that passed, logs them and
//! asks the block manager ([`crate::block::manager`]) to block, which runs the responders on
//! its own pool. Sensors never block: their channel is bounded and a full channel
//! counts a drop. A new config generation arrives on a control channel that beats data
//! (`select_biased!`) and travels to the announcing thread in order with the alerts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, Sender, TrySendError, bounded, select_biased, unbounded,
};

use crate::announce::Announcer;
use crate::event::{Candidate, Hit};
use crate::filter::{DropReason, Filter};
use crate::generation::Generation;
use crate::heartbeat::{self, Kind};
use crate::log_lines;
use crate::logging;
use crate::respond::lua::LuaPlugins;
use crate::sensor::HitSink;
use crate::token_bucket::TokenBucket;

/// Batches of probes buffered between the sensors and the filters (a raw sensor's batch is
/// at most [`crate::sensor::raw::BATCH`] probes, a classic sensor's one probe).
pub const HIT_QUEUE: usize = 1024;
/// Batches of alerts buffered between the filters and the announcing thread (one batch per
/// batch of probes): enough to absorb a burst of 100k probes/s from forged sources while the
/// announcing thread writes their log lines.
pub const ALERT_QUEUE: usize = 1024;
/// How often drop counters are reported when they grew.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Counters shared by the pipeline's threads; read by the daemon for status lines and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Probes that reached the filters.
    pub hits: AtomicU64,
    /// The same probes by the sensor mode that saw them, indexed by [`crate::event::Mode::index`]
    /// (the metrics' `mode` label).
    pub hits_by_mode: [AtomicU64; crate::event::Mode::ALL.len()],
    /// Probes dropped by the ignore filter.
    pub ignored: AtomicU64,
    /// Probes still below SCAN_TRIGGER.
    pub below_trigger: AtomicU64,
    /// Probes from protected addresses (gateways, nameservers, established peers).
    pub protected: AtomicU64,
    /// Alerts handed to the announcing thread.
    pub alerts: AtomicU64,
    /// Alerts lost because the announcing thread was behind.
    pub alerts_dropped: AtomicU64,
    /// Probes not acted on whose line did not fit in `LOG_RATE_LIMIT` (summarised).
    pub not_logged: AtomicU64,
}

enum FilterMsg {
    Reload(Generation, LuaPlugins),
    /// Answered once every message sent before it has been applied.
    Sync(Sender<()>),
    Stop,
}

enum ResponseMsg {
    /// The alerts of one batch of probes.
    Alerts(Vec<Candidate>),
    Reload(Generation, LuaPlugins),
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
    /// Starts both threads; the filters and the announcer were built from the first generation,
    /// `log_rate_limit` is its `LOG_RATE_LIMIT`.
    pub fn start(
        filters: Vec<Box<dyn Filter>>,
        stage: Announcer,
        log_rate_limit: u32,
    ) -> std::io::Result<Pipeline> {
        let (hit_tx, hit_rx) = bounded::<Vec<Hit>>(HIT_QUEUE);
        let (control_tx, control_rx) = unbounded::<FilterMsg>();
        let (alert_tx, alert_rx) = bounded::<ResponseMsg>(ALERT_QUEUE);
        let stats = Arc::new(Stats::default());
        let sink = HitSink::batched(hit_tx);

        let response_thread =
            std::thread::Builder::new()
                .name("respond".into())
                .spawn(move || {
                    let _enrolled = heartbeat::enroll("announce", Kind::Loop);
                    response_loop(stage, alert_rx)
                })?;
        let filter_stats = Arc::clone(&stats);
        let filter_sink = sink.clone();
        let filter_thread = std::thread::Builder::new()
            .name("filter".into())
            .spawn(move || {
                let _enrolled = heartbeat::enroll("filter", Kind::Loop);
                let mut worker = FilterWorker {
                    filters,
                    budget: LogBudget::new(log_rate_limit, Instant::now()),
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
    /// announcing thread with the plugins built from it, in order with the alerts already
    /// queued.
    pub fn reload(&self, generation: Generation, lua: LuaPlugins) {
        let _ = self.control.send(FilterMsg::Reload(generation, lua));
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
            lines.push(log_lines::probes_dropped(counts.0 - self.reported.0, secs));
        }
        if counts.1 > self.reported.1 {
            lines.push(log_lines::alerts_dropped(counts.1 - self.reported.1, secs));
        }
        for line in &lines {
            log::warn!("{line}");
        }
        self.reported = counts;
        self.since = now;
        lines
    }
}

/// Sources remembered per summary interval at most, for the "from N sources" count.
const SUMMARY_SOURCES: usize = 100_000;

/// Lines of probes not acted on that may be written at once before `LOG_RATE_LIMIT` holds
/// (when the rate is lower): a quiet host's few probes a minute are all logged, while a
/// sustained flood is held to the rate.
pub const LOG_BURST: u32 = 10;

/// The log budget (`LOG_RATE_LIMIT`) for probes that are not acted on: a token bucket of
/// detection lines a second (a burst of [`LOG_BURST`]), and the counts of the summary line.
/// During a flood of forged one-packet sources the log stays readable, and the announcing
/// thread's queue is kept for the alerts that matter.
struct LogBudget {
    bucket: TokenBucket,
    probes: u64,
    logged: u64,
    sources: std::collections::HashSet<std::net::IpAddr>,
    capped: bool,
    since: Instant,
}

impl LogBudget {
    fn new(rate: u32, now: Instant) -> LogBudget {
        LogBudget {
            bucket: TokenBucket::per_second(rate, now).with_burst(LOG_BURST),
            probes: 0,
            logged: 0,
            sources: std::collections::HashSet::new(),
            capped: false,
            since: now,
        }
    }

    /// Follows a reload's `LOG_RATE_LIMIT`, keeping what was spent.
    fn set_rate(&mut self, rate: u32, now: Instant) {
        if rate != self.bucket.per() {
            self.bucket.set_rate(rate, LOG_BURST, now);
        }
    }

    /// Counts a probe not acted on; true when its line fits in the budget.
    fn admit(&mut self, src: std::net::IpAddr, now: Instant) -> bool {
        self.probes += 1;
        if self.sources.len() < SUMMARY_SOURCES {
            self.sources.insert(src.to_canonical());
        } else if !self.sources.contains(&src.to_canonical()) {
            self.capped = true;
        }
        let ok = self.bucket.take(now);
        self.logged += u64::from(ok);
        ok
    }

    /// The summary of the interval, when lines were held back (when every probe got its
    /// line, the lines say it all); starts the next interval.
    fn summary(&mut self, now: Instant) -> Option<String> {
        let secs = now.duration_since(self.since).as_secs().max(1);
        self.since = now;
        let line = (self.probes > self.logged).then(|| {
            log_lines::not_acted_on(
                self.probes,
                self.sources.len() as u64,
                self.capped,
                self.logged,
                secs,
            )
        });
        self.probes = 0;
        self.logged = 0;
        self.sources.clear();
        self.capped = false;
        line
    }
}

struct FilterWorker {
    filters: Vec<Box<dyn Filter>>,
    budget: LogBudget,
    alerts: Sender<ResponseMsg>,
    stats: Arc<Stats>,
    sink: HitSink,
}

impl FilterWorker {
    fn run(&mut self, hits: Receiver<Vec<Hit>>, control: Receiver<FilterMsg>) {
        let mut drops = DropReport::new(Instant::now());
        loop {
            heartbeat::beat();
            select_biased! {
                recv(control) -> msg => match msg {
                    Ok(FilterMsg::Reload(generation, lua)) => {
                        self.budget
                            .set_rate(generation.config.log_rate_limit, Instant::now());
                        for f in &mut self.filters {
                            f.reconfigure(&generation.config, &generation.ignore);
                        }
                        // Blocking send: a reload must not be lost behind a burst of alerts.
                        let _ = self.alerts.send(ResponseMsg::Reload(generation, lua));
                    }
                    Ok(FilterMsg::Sync(done)) => {
                        let _ = done.send(());
                    }
                    Ok(FilterMsg::Stop) | Err(_) => break,
                },
                recv(hits) -> batch => match batch {
                    Ok(batch) => self.inspect_batch(batch),
                    Err(_) => break,
                },
                default(heartbeat::INTERVAL) => {}
            }
            if drops.due(Instant::now()) {
                drops.report(self.drop_counts(), Instant::now());
                self.summarize();
            }
        }
        // Drops of the last seconds are reported too, not lost with the daemon.
        drops.report(self.drop_counts(), Instant::now());
        self.summarize();
    }

    fn summarize(&mut self) {
        if let Some(line) = self.budget.summary(Instant::now()) {
            log::info!("{line}");
        }
    }

    fn drop_counts(&self) -> (u64, u64) {
        (
            self.sink.dropped(),
            self.stats.alerts_dropped.load(Ordering::Relaxed),
        )
    }

    /// Runs a batch of probes through the filters and hands the alerts on in one message;
    /// a full queue loses the whole batch (counted), never blocks the filters.
    fn inspect_batch(&mut self, batch: Vec<Hit>) {
        let now = Instant::now();
        let alerts: Vec<Candidate> = batch
            .into_iter()
            .filter_map(|h| self.inspect(h, now))
            .collect();
        if alerts.is_empty() {
            return;
        }
        let n = alerts.len() as u64;
        // A lost alert reserved nothing: the host's next probe is judged afresh.
        match self.alerts.try_send(ResponseMsg::Alerts(alerts)) {
            Ok(()) => {
                self.stats.alerts.fetch_add(n, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.alerts_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// One probe through the filters: the alert it makes, if any.
    fn inspect(&mut self, hit: Hit, now: Instant) -> Option<Candidate> {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.stats.hits_by_mode[hit.mode.index()].fetch_add(1, Ordering::Relaxed);
        let mut candidate = Candidate {
            hit,
            count: 0,
            already_blocked: false,
            actionable: true,
        };
        if let Err((filter, reason)) = crate::filter::judge(&mut self.filters, &mut candidate, now)
        {
            let counter = match reason {
                DropReason::Ignored => &self.stats.ignored,
                DropReason::BelowTrigger => &self.stats.below_trigger,
                DropReason::Protected => &self.stats.protected,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "{filter} dropped probe from {} to {} port {}: {reason:?}",
                candidate.hit.src,
                candidate.hit.proto().upper(),
                candidate.hit.port
            );
            return None;
        }
        // Probes not acted on are logged within the budget only; the rest are summarised.
        if !candidate.actionable && !self.budget.admit(candidate.hit.src, now) {
            self.stats.not_logged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(candidate)
    }
}

/// Batches of alerts handled in one stderr batch at most (see [`logging::batched`]).
const RESPONSE_BATCH: usize = 16;

fn response_loop(mut stage: Announcer, alerts: Receiver<ResponseMsg>) {
    let mut handle = |msg: ResponseMsg| match msg {
        ResponseMsg::Alerts(alerts) => {
            for alert in &alerts {
                // A reverse-DNS wait per alert adds up: beat for each one.
                heartbeat::beat();
                stage.handle(alert);
            }
        }
        ResponseMsg::Reload(generation, lua) => stage.reconfigure(generation, lua),
    };
    loop {
        heartbeat::beat();
        let first = match alerts.recv_timeout(heartbeat::INTERVAL) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
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

    fn ip(i: u32) -> std::net::IpAddr {
        std::net::IpAddr::from(i.to_be_bytes())
    }

    #[test]
    fn log_budget_admits_its_rate_and_summarises_the_rest() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(100, t0);
        let admitted = (0..1000u32)
            .filter(|i| b.admit(ip(0x0a4e_0000 + i), t0))
            .count();
        assert_eq!(admitted, 100, "the burst is the rate");
        // Half a second later, half the rate again.
        let later = t0 + Duration::from_millis(500);
        let more = (0..1000)
            .filter(|_| b.admit(ip(0x0a4f_0001), later))
            .count();
        assert_eq!(more, 50);
        let line = b.summary(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            line,
            log_lines::not_acted_on(2000, 1001, false, 150, 10),
            "{line}"
        );
        assert!(line.contains("1,850 lines held back"), "{line}");
        assert!(
            b.summary(t0 + Duration::from_secs(20)).is_none(),
            "quiet: no line"
        );
        // No limit: everything is logged, and nothing held back needs a summary.
        let mut free = LogBudget::new(0, t0);
        assert!((0..500).all(|_| free.admit(ip(0x0a00_0001), t0)));
        assert_eq!(free.summary(t0), None);
    }

    #[test]
    fn the_default_budget_holds_a_sustained_flood_near_one_line_a_second() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(crate::config::build::DEFAULT_LOG_RATE_LIMIT, t0);
        let mut lines = 0;
        // A minute of 2,000 forged probes a second, a summary every 10 s.
        for ms in (0..60_000u64).step_by(50) {
            let now = t0 + Duration::from_millis(ms);
            for i in 0..100u32 {
                lines += usize::from(b.admit(ip(0x0100_0000 + (ms as u32) * 100 + i), now));
            }
            if ms % 10_000 == 9_950 {
                lines += usize::from(b.summary(now).is_some());
            }
        }
        assert_eq!(
            lines,
            LOG_BURST as usize + 59 + 6,
            "burst, one a second, summaries"
        );
        // The key's documentation says the same.
        let doc = crate::config::build::key_spec("LOG_RATE_LIMIT").map(|k| k.doc);
        assert!(
            doc.is_some_and(|d| d.contains(&format!("burst of {LOG_BURST} (default 1;"))),
            "{doc:?}"
        );
        // A quiet host: a burst of a few probes is logged whole, and no summary is needed.
        let later = t0 + Duration::from_secs(3600);
        b.summary(later);
        assert!((0..LOG_BURST).all(|i| b.admit(ip(0x0a00_0001 + i), later)));
        assert_eq!(b.summary(later + Duration::from_secs(10)), None);
    }

    #[test]
    fn a_reload_changes_the_rate_without_a_fresh_burst() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(1, t0);
        assert_eq!((0..100).filter(|_| b.admit(ip(1), t0)).count(), 10);
        b.set_rate(200, t0);
        assert_eq!((0..1000).filter(|_| b.admit(ip(1), t0)).count(), 0);
        let later = t0 + Duration::from_millis(100);
        assert_eq!((0..1000).filter(|_| b.admit(ip(1), later)).count(), 20);
    }

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
            vec![
                log_lines::probes_dropped(7, 3),
                log_lines::alerts_dropped(2, 3)
            ]
        );
        // Only what grew since is reported next time.
        assert_eq!(
            r.report((7, 5), t1 + Duration::from_secs(13)),
            vec![log_lines::alerts_dropped(3, 10)]
        );
    }
}
