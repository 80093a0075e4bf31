//! Structured events (`EVENT_LOG`): one JSON object a line for every alert, block, unblock
//! and reload, with stable field names, a `time` and a `host`: the shape log shippers
//! (Vector, Fluent Bit, Loki's agents) read without a parser of their own. The syslog lines
//! stay the 1.2 wording for people and fail2ban; this file is for machines.
//!
//! The threads that detect and block never touch the file: they hand an [`Event`] to an
//! [`EventSink`], a bounded channel that never waits (a full one counts a drop), and ONE
//! writer thread serialises and appends. Alert events are limited by `EVENT_LOG_RATE_LIMIT`
//! (a token bucket), so a flood of forged probes cannot fill the disk; block, unblock and
//! reload events are already bounded where they come from (`BLOCK_RATE_LIMIT`,
//! `MAX_ACTIVE_BLOCKS`, the admin) and are never held back by alerts. What is not written
//! is counted (metrics) and summarised in the log every 10 s.
//!
//! The file is reopened at every reload (`SIGHUP`, `portsentry reload`, a saved config),
//! so that logrotate can move it away; a changed `EVENT_LOG` is followed the same way.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select_biased, unbounded};
use serde::Serialize;

use crate::config::Config;
use crate::event::{Candidate, UnblockReason};
use crate::log_lines;
use crate::record::{BlockRecord, target_text};
use crate::respond::undo::UndoOutcome;
use crate::token_bucket::TokenBucket;

/// Events waiting for the writer at most; beyond, an event is dropped and counted.
pub const EVENT_QUEUE: usize = 8192;
/// Events written between two flushes at most.
const BATCH: usize = 512;
/// How often the count of events not written is logged, when it grew.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// One line of the file, before `time` and `host` are added.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum EventKind {
    /// A probe crossed the filters (actionable, or within the log budget).
    Alert(AlertEvent),
    /// A block is in force (journaled).
    Block(BlockEvent),
    /// A block ended and its actions were undone as far as they could be.
    Unblock(UnblockEvent),
    /// A reload was tried.
    Reload(ReloadEvent),
}

/// `"event":"alert"`: the fields of the syslog detection line, typed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    /// The probe's source address (forgeable unless `kind` is `TCP connect`).
    pub src: IpAddr,
    /// Reverse-DNS name with `RESOLVE_HOST="1"`, else the address again.
    pub resolved: String,
    /// Destination port on this host.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// The sensor mode that saw it (`tcp`, `udp`, `stcp`, `sudp`, `atcp`, `audp`).
    pub mode: &'static str,
    /// The scan as 1.2 names it (`TCP SYN/Normal scan`).
    pub kind: String,
    /// Distinct ports this source probed within `SCAN_TRIGGER_WINDOW`.
    pub count: u32,
    /// The evidence is enough to block (otherwise only logged).
    pub actionable: bool,
    /// The source was already blocked.
    pub already_blocked: bool,
    /// The IPv4 packet carried options.
    pub ip_options: bool,
}

/// `"event":"block"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockEvent {
    /// Address (`192.0.2.7`) or network (`192.0.2.0/24`).
    pub target: String,
    /// When it ends; `null` when permanent.
    #[serde(with = "crate::record::opt_time_text")]
    pub until: Option<SystemTime>,
    /// No end.
    pub permanent: bool,
    /// Whole seconds it lasts; `null` when permanent.
    pub duration_secs: Option<u64>,
    /// 1 for a first block, n for the n-th of a repeat offender.
    pub offences: u32,
    /// `scan`, `manual` or `import`.
    pub origin: &'static str,
    /// Mode of the probe behind a scan block; `null` otherwise.
    pub mode: Option<&'static str>,
    /// Its port; `null` for blocks without a probe.
    pub port: Option<u16>,
    /// Its protocol; `null` for blocks without a probe.
    pub proto: Option<&'static str>,
    /// Its scan description; `null` for blocks without a probe.
    pub kind: Option<String>,
    /// The operator's reason of a manual block, empty otherwise.
    pub reason: String,
    /// The responders that acted, in order.
    pub responders: Vec<String>,
}

/// `"event":"unblock"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnblockEvent {
    /// Address or network, as in its block event.
    pub target: String,
    /// `expired`, `manual` (`portsentry unblock`) or `released` (could not be re-applied
    /// after a restart).
    pub reason: UnblockReason,
    /// When the block began.
    #[serde(with = "crate::record::time_text")]
    pub since: SystemTime,
    /// `scan`, `manual` or `import`.
    pub origin: &'static str,
    /// As in its block event.
    pub offences: u32,
    /// The responders whose actions were to be undone, in the order they were undone.
    pub responders: Vec<String>,
    /// Those of them whose action may still be in force (undo failed or impossible).
    pub failed: Vec<String>,
}

/// `"event":"reload"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadEvent {
    /// The new configuration was taken.
    pub ok: bool,
    /// The generation in force afterwards (the new one, or the one kept).
    pub generation: u64,
    /// Why it was refused (`file:line: problem`), empty when taken.
    pub errors: Vec<String>,
}

/// An event and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When the probe was seen, the block began or ended, the reload was tried.
    pub time: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The event of an alert the announcing thread handles.
    pub fn alert(alert: &Candidate, resolved: &str) -> Event {
        let hit = &alert.hit;
        Event {
            time: hit.time,
            kind: EventKind::Alert(AlertEvent {
                src: hit.src,
                resolved: resolved.to_string(),
                port: hit.port,
                proto: hit.proto().lower(),
                mode: hit.mode.as_str(),
                kind: hit.kind.describe(),
                count: alert.count,
                actionable: alert.actionable,
                already_blocked: alert.already_blocked,
                ip_options: hit.ip_options,
            }),
        }
    }

    /// The event of a block just journaled.
    pub fn block(record: &BlockRecord) -> Event {
        let trigger = record.trigger.as_ref();
        Event {
            time: record.since,
            kind: EventKind::Block(BlockEvent {
                target: target_text(&record.target),
                until: record.until,
                permanent: record.until.is_none(),
                duration_secs: record.duration().map(|d| d.as_secs()),
                offences: record.offences,
                origin: record.origin.as_str(),
                mode: trigger.map(|t| t.mode.as_str()),
                port: trigger.map(|t| t.port),
                proto: trigger.map(|t| t.proto.lower()),
                kind: trigger.map(|t| t.kind.clone()),
                reason: record.reason.clone(),
                responders: record.actions.iter().map(|a| a.responder.clone()).collect(),
            }),
        }
    }

    /// The event of a block that ended at `at`; `outcomes` are what its undo did (empty
    /// when there was nothing to undo).
    pub fn unblock(
        record: &BlockRecord,
        reason: UnblockReason,
        at: SystemTime,
        outcomes: &[(String, UndoOutcome)],
    ) -> Event {
        Event {
            time: at,
            kind: EventKind::Unblock(UnblockEvent {
                target: target_text(&record.target),
                reason,
                since: record.since,
                origin: record.origin.as_str(),
                offences: record.offences,
                responders: outcomes.iter().map(|(r, _)| r.clone()).collect(),
                failed: outcomes
                    .iter()
                    .filter(|(_, o)| !matches!(o, UndoOutcome::Done(_)))
                    .map(|(r, _)| r.clone())
                    .collect(),
            }),
        }
    }

    /// The event of a reload: `result` is the new generation or the errors; `generation` is
    /// the one in force afterwards.
    pub fn reload(result: &Result<u64, Vec<String>>, generation: u64) -> Event {
        Event {
            time: SystemTime::now(),
            kind: EventKind::Reload(ReloadEvent {
                ok: result.is_ok(),
                generation,
                errors: result.clone().err().unwrap_or_default(),
            }),
        }
    }

    /// Appends the JSON line (without its newline) to `out`, `time` and `host` first.
    pub fn encode(&self, host: &str, out: &mut Vec<u8>) -> serde_json::Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(with = "crate::record::time_text")]
            time: SystemTime,
            host: &'a str,
            #[serde(flatten)]
            kind: &'a EventKind,
        }
        serde_json::to_writer(
            out,
            &Line {
                time: self.time,
                host,
                kind: &self.kind,
            },
        )
    }
}

/// What happened to the events, for the metrics and the summary line.
#[derive(Debug, Default)]
pub struct EventCounters {
    /// Lines written.
    pub written: AtomicU64,
    /// Alert events over `EVENT_LOG_RATE_LIMIT`.
    pub rate_limited: AtomicU64,
    /// Events dropped because the writer's queue was full.
    pub queue_full: AtomicU64,
    /// Lines the file refused (disk full, file gone read-only, or it could not be opened).
    pub write_errors: AtomicU64,
}

/// Where the detecting and blocking threads hand their events: never blocks, and costs an
/// atomic load when `EVENT_LOG` is off.
#[derive(Debug, Clone)]
pub struct EventSink {
    inner: Option<SinkInner>,
}

/// Events travel boxed: a bounded queue sets aside a slot for each event it may hold, and
/// [`EVENT_QUEUE`] slots of a whole event, two queues of them, were 3.4 MiB of the daemon's
/// memory from its start, `EVENT_LOG` or not; boxed, a slot is a pointer.
type Queued = Box<Event>;

#[derive(Debug, Clone)]
struct SinkInner {
    /// Alert events: many in a flood, rate limited by the writer.
    alerts: Sender<Queued>,
    /// Every other event: a queue of their own, so that a flood of alerts never crowds out
    /// a block.
    others: Sender<Queued>,
    on: Arc<AtomicBool>,
    counters: Arc<EventCounters>,
}

impl EventSink {
    /// A sink that takes nothing (no `EVENT_LOG`, tests).
    pub fn off() -> EventSink {
        EventSink { inner: None }
    }

    /// Whether events are written now; check it before building one.
    pub fn enabled(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| i.on.load(Ordering::Relaxed))
    }

    /// Queues an event for the writer; when the queue is full it is dropped and counted.
    pub fn send(&self, event: Event) {
        let Some(inner) = self.inner.as_ref().filter(|_| self.enabled()) else {
            return;
        };
        let queue = match event.kind {
            EventKind::Alert(_) => &inner.alerts,
            _ => &inner.others,
        };
        match queue.try_send(Box::new(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                inner.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

enum Control {
    /// Open (or reopen) this file with this rate; `None`: write nothing.
    Open(Option<PathBuf>, u32),
    /// Write what is queued, then end.
    Stop,
}

/// The writer thread and the way to steer it; the daemon owns it.
pub struct EventLog {
    sink: EventSink,
    on: Arc<AtomicBool>,
    control: Sender<Control>,
    counters: Arc<EventCounters>,
    thread: Option<JoinHandle<()>>,
}

impl EventLog {
    /// Starts the writer thread on the config's `EVENT_LOG` (if any). A file that cannot be
    /// opened is logged; the daemon runs on, and the next reload tries again.
    pub fn start(config: &Config) -> std::io::Result<EventLog> {
        let (alerts, alerts_rx) = bounded(EVENT_QUEUE);
        let (others, others_rx) = bounded(EVENT_QUEUE);
        let (control, control_rx) = unbounded();
        let counters = Arc::new(EventCounters::default());
        let on = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            path: None,
            file: None,
            host: hostname(),
            budget: TokenBucket::per_second(config.event_log_rate_limit, Instant::now()),
            counters: Arc::clone(&counters),
            line: Vec::new(),
            failing: false,
            reported: (0, 0),
            since: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || writer.run(&others_rx, &alerts_rx, &control_rx))?;
        let log = EventLog {
            sink: EventSink {
                inner: Some(SinkInner {
                    alerts,
                    others,
                    on: Arc::clone(&on),
                    counters: Arc::clone(&counters),
                }),
            },
            on,
            control,
            counters,
            thread: Some(thread),
        };
        log.follow(config);
        Ok(log)
    }

    /// Where events go.
    pub fn sink(&self) -> EventSink {
        self.sink.clone()
    }

    /// Queues one event (the daemon's own: reloads).
    pub fn send(&self, event: Event) {
        self.sink.send(event);
    }

    /// Counters for the metrics.
    pub fn counters(&self) -> Arc<EventCounters> {
        Arc::clone(&self.counters)
    }

    /// Follows a reload: reopens `EVENT_LOG` whether or not its path changed (logrotate moved
    /// the old file away and sent SIGHUP), takes the new rate, or stops writing when the
    /// key is gone.
    pub fn follow(&self, config: &Config) {
        self.on.store(config.event_log.is_some(), Ordering::Relaxed);
        let _ = self.control.send(Control::Open(
            config.event_log.clone(),
            config.event_log_rate_limit,
        ));
    }

    /// Writes what is queued, then stops the writer. Call it after the threads that send
    /// events have stopped, so that their last events are in the file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.control.send(Control::Stop);
            let _ = t.join();
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The machine's name for the `host` field, read once; shippers that add their own may
/// ignore it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Opens `path` for appending (0640: the lines name attackers and this host's responders),
/// creating its directory when missing.
fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

struct Writer {
    path: Option<PathBuf>,
    file: Option<BufWriter<File>>,
    host: String,
    /// `EVENT_LOG_RATE_LIMIT`: alert events a second, starting full.
    budget: TokenBucket,
    counters: Arc<EventCounters>,
    /// Reused for every line.
    line: Vec<u8>,
    /// The last write failed (logged once until one succeeds again).
    failing: bool,
    /// (rate limited, queue full) at the last summary.
    reported: (u64, u64),
    since: Instant,
}

impl Writer {
    /// Control first, then blocks, unblocks and reloads, then alerts; one flush a batch.
    fn run(
        &mut self,
        others: &Receiver<Queued>,
        alerts: &Receiver<Queued>,
        control: &Receiver<Control>,
    ) {
        loop {
            let first = select_biased! {
                recv(control) -> msg => match msg {
                    Ok(Control::Open(path, rate)) => { self.open(path, rate); None }
                    Ok(Control::Stop) | Err(_) => break,
                },
                recv(others) -> event => event.ok(),
                recv(alerts) -> event => event.ok(),
                default(SUMMARY_INTERVAL) => None,
            };
            if let Some(event) = first {
                self.write(&event);
                let rest = others.try_iter().chain(alerts.try_iter()).take(BATCH);
                for event in rest {
                    self.write(&event);
                }
                self.flush();
            }
            if self.since.elapsed() >= SUMMARY_INTERVAL {
                self.summarize();
            }
        }
        // What the stopped threads sent last goes in too.
        for event in others.try_iter().chain(alerts.try_iter()) {
            self.write(&event);
        }
        self.flush();
        self.summarize();
    }

    fn open(&mut self, path: Option<PathBuf>, rate: u32) {
        if rate != self.budget.per() {
            self.budget = TokenBucket::per_second(rate, Instant::now());
        }
        self.flush();
        let Some(path) = path else {
            if let Some(old) = self.path.take() {
                log::info!("{}", crate::log_lines::event_log_closed(&old));
            }
            self.file = None;
            return;
        };
        match open_append(&path) {
            Ok(file) => {
                if self.path.as_ref() != Some(&path) {
                    log::info!("{}", crate::log_lines::event_log_opened(&path));
                }
                self.file = Some(BufWriter::with_capacity(64 * 1024, file));
                self.path = Some(path);
                self.failing = false;
            }
            Err(e) => match &self.path {
                Some(old) if self.file.is_some() => log::error!(
                    "{}",
                    crate::log_lines::event_log_open_failed_keeping(&path, e, old)
                ),
                _ => log::error!("{}", crate::log_lines::event_log_open_failed(&path, e)),
            },
        }
    }

    fn write(&mut self, event: &Event) {
        let Some(file) = self.file.as_mut() else {
            // EVENT_LOG is set but could not be opened: lost, and counted as such.
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if matches!(event.kind, EventKind::Alert(_)) && !self.budget.take(Instant::now()) {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.line.clear();
        if let Err(e) = event.encode(&self.host, &mut self.line) {
            log::error!("{}", crate::log_lines::event_encode_failed(e));
            return;
        }
        self.line.push(b'\n');
        match file.write_all(&self.line) {
            Ok(()) => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed(&e),
        }
    }

    fn flush(&mut self) {
        if let Some(file) = self.file.as_mut()
            && let Err(e) = file.flush()
        {
            self.failed(&e);
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing {
            let path = self.path.as_deref().unwrap_or(Path::new("?"));
            log::error!("{}", crate::log_lines::event_log_write_failed(path, e));
            self.failing = true;
        }
    }

    /// Logs the events not written since the last summary, if any.
    fn summarize(&mut self) {
        let now = (
            self.counters.rate_limited.load(Ordering::Relaxed),
            self.counters.queue_full.load(Ordering::Relaxed),
        );
        let secs = self.since.elapsed().as_secs().max(1);
        self.since = Instant::now();
        let over = now.0.saturating_sub(self.reported.0);
        let full = now.1.saturating_sub(self.reported.1);
        self.reported = now;
        if over + full > 0 {
            let path = self.path.as_deref().unwrap_or(Path::new("EVENT_LOG"));
            log::warn!("{}", log_lines::events_not_written(path, over, full, secs));
        }
    }
}

#[cfg(test)]
mod tests;
