//! Wires sensors -> filters -> the announcing thread (the announcing thread hands blocks on
//! to the block manager, whose pool runs the responders).
//!
//! The filters run on the sensor's own thread: a sensor hands each batch of probes (all the
//! probes a raw sensor read at one wake-up) to the [`FilterStage`] by a call, which takes its
//! lock once per batch (uncontended when one sensor runs, the usual case) and runs the filter
//! chain (cheap, in memory). A thread of its own between the sensors and the announcer cost
//! more than the filters themselves: under a flood of forged SYNs at 6,000 a second the ring
//! hands over a block every 2 ms, and each hand-off (a futex wake, a context switch, the
//! receiver's spin and park) cost about 10 µs, against well under 1 µs a probe for the
//! chain.
//!
//! The alerts go on to the *announcing* thread over a bounded crossbeam channel, many in one
//! message; it logs them and asks the block manager ([`crate::block::manager`]) to block,
//! which runs the responders on its own pool. An alert that will block goes at once, with
//! whatever waits before it. Alerts that are only logged (alert-only modes, probes not acted
//! on, hosts already blocked) are held back up to [`LOG_ONLY_DELAY`] and handed on
//! together: under a flood they are most of the alerts, and waking the announcer for each
//! ring block would cost more than writing their lines. A sensor never waits on the
//! announcer: a full queue counts the alerts as dropped. A new config generation is applied
//! to the filters under the same lock and travels to the announcing thread in order with
//! the alerts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use crate::announce::{Announcer, Decision};
use crate::config::Config;
use crate::distinct::DistinctCount;
use crate::event::{Candidate, Hit};
use crate::filter::{DropReason, Filter};
use crate::generation::Generation;
use crate::heartbeat::{self, Kind};
use crate::log_lines;
use crate::logging;
use crate::respond::lua::LuaPlugins;
use crate::sensor::{HitSink, Judge};
use crate::token_bucket::TokenBucket;

/// Batches of alerts buffered between the filters and the announcing thread (one batch per
/// batch of probes): enough to absorb a burst of 100k probes/s from forged sources while the
/// announcing thread writes their log lines.
pub const ALERT_QUEUE: usize = 1024;
/// The longest an alert that is only logged waits to be handed on with others (see the
/// module doc); an alert that blocks never waits. Measured under 6,000 forged SYNs a
/// second (about 600 alerts a second, each only logged): the announcing thread used 61 ms
/// of CPU at 10 ms, 33 ms at 50 ms, of which about 20 ms is writing the lines. Nobody reading
/// a log notices 50 ms.
pub const LOG_ONLY_DELAY: Duration = Duration::from_millis(50);
/// Alerts held back at most: more are handed on at once.
const HELD_ALERTS: usize = 256;
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

enum ResponseMsg {
    /// The alerts of one batch of probes.
    Alerts(Vec<Candidate>),
    Reload(Generation, LuaPlugins),
    /// Every message sent before has been handled: end the thread.
    Stop,
}

/// The running pipeline. Dropping it without `stop` leaves the announcing thread running
/// until every sink is gone; call `stop` for an orderly end.
pub struct Pipeline {
    stage: Arc<FilterStage>,
    sink: HitSink,
    alerts: Sender<ResponseMsg>,
    stats: Arc<Stats>,
    response_thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the announcing thread; the filters and the announcer were built from the first
    /// generation, `log_rate_limit` is its `LOG_RATE_LIMIT`.
    pub fn start(
        filters: Vec<Box<dyn Filter>>,
        stage: Announcer,
        config: Arc<Config>,
    ) -> std::io::Result<Pipeline> {
        let (alert_tx, alert_rx) = bounded::<ResponseMsg>(ALERT_QUEUE);
        let stats = Arc::new(Stats::default());
        let now = Instant::now();
        let filter_stage = Arc::new(FilterStage {
            inner: Mutex::new(Filtering {
                filters,
                budget: LogBudget::new(config.log_rate_limit, now),
                config,
                held: Vec::new(),
                held_since: now,
                drops: DropReport::new(now),
                alerts: alert_tx.clone(),
                stats: Arc::clone(&stats),
            }),
        });
        let sink = HitSink::judged(Arc::clone(&filter_stage) as Arc<dyn Judge>);
        let housekeeping = Arc::clone(&filter_stage);
        let response_thread =
            std::thread::Builder::new()
                .name("respond".into())
                .spawn(move || {
                    let _enrolled = heartbeat::enroll("announce", Kind::Loop);
                    response_loop(stage, alert_rx, &housekeeping)
                })?;
        Ok(Pipeline {
            stage: filter_stage,
            sink,
            alerts: alert_tx,
            stats,
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

    /// Swaps in a new generation: the filters at once (the very next probe sees it, as the
    /// sensors judge under the same lock), then the announcing thread with the plugins built
    /// from it, in order with the alerts already queued.
    pub fn reload(&self, generation: Generation, lua: LuaPlugins) {
        let mut filtering = crate::sync::lock(&self.stage.inner);
        // What the old filters held back goes first, in order.
        filtering.hand_on();
        filtering
            .budget
            .set_rate(generation.config.log_rate_limit, Instant::now());
        for f in &mut filtering.filters {
            f.reconfigure(&generation.config, &generation.ignore);
        }
        filtering.config = Arc::clone(&generation.config);
        // Blocking send under the lock: a reload must not be lost behind a burst of alerts,
        // and no alert judged by the new filters may overtake it. The announcing thread
        // never waits for this lock (it only tries it), so it keeps draining meanwhile.
        let _ = filtering.alerts.send(ResponseMsg::Reload(generation, lua));
    }

    /// Stops the announcing thread after the alerts already queued have been handled, with a
    /// last report of drops and of the lines held back.
    pub fn stop(mut self) {
        {
            let mut filtering = crate::sync::lock(&self.stage.inner);
            filtering.hand_on();
            filtering.report(Instant::now());
        }
        let _ = self.alerts.send(ResponseMsg::Stop);
        if let Some(h) = self.response_thread.take() {
            let _ = h.join();
        }
    }
}

/// The filter chain and what goes with it (the log budget, the drop report), run by whichever
/// sensor thread hands it a batch; see the module doc for why there is no thread of its own.
pub struct FilterStage {
    inner: Mutex<Filtering>,
}

impl Judge for FilterStage {
    fn judge(&self, hits: &mut Vec<Hit>) {
        let now = Instant::now();
        let mut filtering = crate::sync::lock(&self.inner);
        filtering.inspect_batch(hits, now);
        filtering.housekeeping(now);
    }

    fn tick(&self, now: Instant) -> Option<Instant> {
        let mut filtering = crate::sync::lock(&self.inner);
        filtering.housekeeping(now);
        filtering.held_until()
    }
}

impl FilterStage {
    /// The periodic reports and the alerts held back too long, from the announcing thread
    /// when no sensor comes to see to them: skipped when a sensor holds the lock (it sees to
    /// them itself then).
    fn try_housekeeping(&self, now: Instant) {
        if let Ok(mut filtering) = self.inner.try_lock() {
            filtering.housekeeping(now);
        }
    }
}

/// Reports alerts dropped (the announcing thread behind) since the last report, at most
/// every [`DROP_REPORT_INTERVAL`] and once more at the end. (Probes are not dropped before
/// the filters: they are judged on the sensor's thread.)
struct DropReport {
    reported: u64,
    since: Instant,
}

impl DropReport {
    fn new(now: Instant) -> DropReport {
        DropReport {
            reported: 0,
            since: now,
        }
    }

    fn due(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= DROP_REPORT_INTERVAL
    }

    /// Logs what grew since the last report; returns the line, for tests.
    fn report(&mut self, alerts_dropped: u64, now: Instant) -> Option<String> {
        let secs = now.duration_since(self.since).as_secs().max(1);
        let line = (alerts_dropped > self.reported)
            .then(|| log_lines::alerts_dropped(alerts_dropped - self.reported, secs));
        if let Some(line) = &line {
            log::warn!("{line}");
        }
        self.reported = alerts_dropped;
        self.since = now;
        line
    }
}

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
    /// Keyed as [`crate::filter::addr_key`]: IPv4 and its mapped IPv6 form are one source.
    sources: DistinctCount,
    since: Instant,
}

impl LogBudget {
    fn new(rate: u32, now: Instant) -> LogBudget {
        LogBudget {
            bucket: TokenBucket::per_second(rate, now).with_burst(LOG_BURST),
            probes: 0,
            logged: 0,
            sources: DistinctCount::default(),
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
        self.sources.insert(crate::filter::addr_key(src));
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
            let sources = self.sources.count();
            log_lines::not_acted_on(self.probes, sources.n, sources.estimated, self.logged, secs)
        });
        self.probes = 0;
        self.logged = 0;
        self.sources.clear();
        line
    }
}

struct Filtering {
    filters: Vec<Box<dyn Filter>>,
    /// The config in force, for the announcer's rule (does an alert block?).
    config: Arc<Config>,
    /// Alerts that are only logged, held back to be handed on together, in order.
    held: Vec<Candidate>,
    /// When the oldest of `held` was judged.
    held_since: Instant,
    budget: LogBudget,
    drops: DropReport,
    alerts: Sender<ResponseMsg>,
    stats: Arc<Stats>,
}

impl Filtering {
    /// The alerts held back that have waited long enough, the drop report and the summary
    /// of lines held back, when due.
    fn housekeeping(&mut self, now: Instant) {
        if self.held_until().is_some_and(|t| now >= t) {
            self.hand_on();
        }
        if self.drops.due(now) {
            self.report(now);
        }
    }

    /// When the alerts held back must be handed on at the latest.
    fn held_until(&self) -> Option<Instant> {
        (!self.held.is_empty()).then(|| self.held_since + LOG_ONLY_DELAY)
    }

    /// Hands the alerts held back on in one message; a full queue loses them (counted),
    /// never blocks the sensor.
    fn hand_on(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let alerts = std::mem::take(&mut self.held);
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

    /// Reports drops and lines held back since the last report.
    fn report(&mut self, now: Instant) {
        self.drops
            .report(self.stats.alerts_dropped.load(Ordering::Relaxed), now);
        if let Some(line) = self.budget.summary(now) {
            log::info!("{line}");
        }
    }

    /// Runs a batch of probes through the filters (leaving `batch` empty, its memory kept
    /// for the sensor's next one). Its alerts join those held back; all go on at once when
    /// one of them blocks or too many wait, else within [`LOG_ONLY_DELAY`].
    fn inspect_batch(&mut self, batch: &mut Vec<Hit>, now: Instant) {
        let mut urgent = false;
        for hit in batch.drain(..) {
            if let Some(alert) = self.inspect(hit, now) {
                if self.held.is_empty() {
                    self.held_since = now;
                }
                urgent |= crate::announce::decide(&alert, &self.config) == Decision::Block;
                self.held.push(alert);
            }
        }
        if urgent || self.held.len() >= HELD_ALERTS {
            self.hand_on();
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

fn response_loop(mut stage: Announcer, alerts: Receiver<ResponseMsg>, filters: &FilterStage) {
    // Handles one message; false once told to stop.
    let mut handle = |msg: ResponseMsg| match msg {
        ResponseMsg::Alerts(alerts) => {
            for alert in &alerts {
                // A reverse-DNS wait per alert adds up: beat for each one.
                heartbeat::beat();
                stage.handle(alert);
            }
            true
        }
        ResponseMsg::Reload(generation, lua) => {
            stage.reconfigure(generation, lua);
            true
        }
        ResponseMsg::Stop => false,
    };
    loop {
        heartbeat::beat();
        filters.try_housekeeping(Instant::now());
        let first = match alerts.recv_timeout(heartbeat::INTERVAL) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let go_on = logging::batched(|| {
            if !handle(first) {
                return false;
            }
            for _ in 1..RESPONSE_BATCH {
                match alerts.try_recv() {
                    Ok(msg) => {
                        if !handle(msg) {
                            return false;
                        }
                    }
                    Err(_) => break,
                }
            }
            true
        });
        if !go_on {
            break;
        }
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
        assert!(r.report(0, t0 + DROP_REPORT_INTERVAL).is_none());
        let t1 = t0 + DROP_REPORT_INTERVAL;
        assert_eq!(
            r.report(2, t1 + Duration::from_secs(3)),
            Some(log_lines::alerts_dropped(2, 3))
        );
        // Only what grew since is reported next time.
        assert_eq!(
            r.report(5, t1 + Duration::from_secs(13)),
            Some(log_lines::alerts_dropped(3, 10))
        );
    }

    /// A stage with no filters (every probe is an alert) and `block_tcp`, and the announcer's
    /// end of its queue.
    fn bare_stage(block_tcp: crate::config::BlockLevel) -> (Filtering, Receiver<ResponseMsg>) {
        let (tx, rx) = bounded(16);
        let mut config = crate::config::build::defaults(std::path::Path::new("t.conf"));
        config.block_tcp = block_tcp;
        let t0 = Instant::now();
        let stage = Filtering {
            filters: Vec::new(),
            config: Arc::new(config),
            held: Vec::new(),
            held_since: t0,
            budget: LogBudget::new(0, t0),
            drops: DropReport::new(t0),
            alerts: tx,
            stats: Arc::new(Stats::default()),
        };
        (stage, rx)
    }

    fn probe(i: u32) -> Hit {
        Hit::now(
            ip(0x0a4d_0000 + i),
            1,
            crate::event::Mode::Atcp,
            crate::event::ProbeKind::Syn,
        )
    }

    /// The sources of the alerts of each message on the queue now.
    fn queued(rx: &Receiver<ResponseMsg>) -> Vec<Vec<std::net::IpAddr>> {
        rx.try_iter()
            .filter_map(|m| match m {
                ResponseMsg::Alerts(a) => Some(a.iter().map(|c| c.hit.src).collect()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn alerts_only_logged_wait_to_go_together_and_one_that_blocks_takes_them_at_once() {
        use crate::config::BlockLevel;
        let (mut stage, rx) = bare_stage(BlockLevel::LogOnly);
        let t0 = Instant::now();
        stage.inspect_batch(&mut vec![probe(1), probe(2)], t0);
        stage.inspect_batch(&mut vec![probe(3)], t0 + Duration::from_millis(4));
        assert!(queued(&rx).is_empty(), "held back");
        assert_eq!(stage.held_until(), Some(t0 + LOG_ONLY_DELAY));
        stage.housekeeping(t0 + LOG_ONLY_DELAY - Duration::from_millis(1));
        assert!(queued(&rx).is_empty(), "not due yet");
        stage.housekeeping(t0 + LOG_ONLY_DELAY);
        assert_eq!(
            queued(&rx),
            vec![vec![ip(0x0a4d_0001), ip(0x0a4d_0002), ip(0x0a4d_0003)]]
        );
        assert_eq!(stage.held_until(), None);
        assert_eq!(stage.stats.alerts.load(Ordering::Relaxed), 3);

        // Blocking on: the same probes go at once, with what was held before them, in order.
        let (mut stage, rx) = bare_stage(BlockLevel::All);
        stage.held.push(Candidate {
            hit: probe(9),
            count: 1,
            already_blocked: true,
            actionable: true,
        });
        stage.inspect_batch(&mut vec![probe(1)], t0);
        assert_eq!(queued(&rx), vec![vec![ip(0x0a4d_0009), ip(0x0a4d_0001)]]);
        assert_eq!(stage.held_until(), None);
    }

    #[test]
    fn too_many_held_alerts_go_at_once_and_a_full_queue_counts_them_dropped() {
        let (mut stage, rx) = bare_stage(crate::config::BlockLevel::LogOnly);
        let t0 = Instant::now();
        let mut batch: Vec<Hit> = (0..HELD_ALERTS as u32).map(probe).collect();
        stage.inspect_batch(&mut batch, t0);
        assert!(batch.is_empty());
        assert_eq!(queued(&rx).concat().len(), HELD_ALERTS);
        // Fill the announcer's queue, then one more hand-off is lost, and counted.
        for _ in 0..16 {
            stage.inspect_batch(&mut vec![probe(1)], t0);
            stage.hand_on();
        }
        stage.inspect_batch(&mut vec![probe(2), probe(3)], t0);
        stage.hand_on();
        assert_eq!(stage.stats.alerts_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(rx.len(), 16);
    }
}
