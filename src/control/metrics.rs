//! Prometheus metrics (`METRICS_LISTEN`): `GET /metrics` in the Prometheus text format,
//! encoded by `prometheus-client`, served by a small HTTP server of our own.
//!
//! Nothing is counted twice: the values are the atomics the pipeline, the block manager, the
//! responder pool and the event writer keep anyway (the same ones `portsentry status`
//! reads), collected at scrape time. Only what no owner counted before lives here: reloads
//! and the generation in force, updated by the daemon's main thread.
//!
//! The server is built to be harmless to the daemon whatever a client does: one accept
//! thread and [`MAX_CLIENTS`] handler threads, made once; a connection that finds every
//! handler busy is closed at once (and counted). A handler gives a client [`READ_TIMEOUT`]
//! for the whole request head, at most [`MAX_HEAD_BYTES`], and [`WRITE_TIMEOUT`] for the
//! answer; it answers only `GET /metrics` and always closes the connection. So a thousand
//! slow clients cost five threads and a few kilobytes, and detection never waits for them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, TrySendError, bounded};
use nix::poll::{PollFd, PollFlags, poll};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::block::manager::BlockCounters;
use crate::block::view::BlockView;
use crate::event::Mode;
use crate::event_log::EventCounters;
use crate::pipeline::Stats;
use crate::respond::pool::DurationSnapshot;
use crate::sensor::HitSink;
use crate::storage::StoredFile;

/// Clients served at once; a connection beyond them is closed at once.
pub const MAX_CLIENTS: usize = 4;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the answer may take to be written to a client that stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Size of a request head (request line and headers) at most.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How often the accept thread and the handlers look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Where the values come from: the counters their owners keep.
#[derive(Clone)]
pub struct Sources {
    /// The filter stage's counters.
    pub stats: Arc<Stats>,
    /// The sensors' way in (it counts the probes the filters had no room for).
    pub sink: HitSink,
    /// The block manager's counters and the pool's timings.
    pub blocks: Arc<BlockCounters>,
    /// The blocks in force.
    pub view: BlockView,
    /// What happened to the structured events.
    pub events: Arc<EventCounters>,
    /// What the fleet's puller holds (its counts per origin).
    pub fleet: Arc<crate::fleet::PullView>,
}

impl Sources {
    /// The counters of a running daemon's parts.
    pub fn of(
        pipeline: &crate::pipeline::Pipeline,
        blocks: &crate::block::manager::BlockManager,
        events: &crate::event_log::EventLog,
        fleet: &crate::fleet::Fleet,
    ) -> Sources {
        Sources {
            stats: pipeline.stats(),
            sink: pipeline.sink(),
            blocks: blocks.counters(),
            view: blocks.view(),
            events: events.counters(),
            fleet: fleet.pulled(),
        }
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// What the daemon's main thread counts: reloads and the generation in force.
#[derive(Debug)]
struct Daemon {
    reloads_ok: AtomicU64,
    reloads_refused: AtomicU64,
    generation: AtomicU64,
    started: SystemTime,
}

/// The server's own counters.
#[derive(Debug, Default)]
struct ServerCounters {
    /// Connections closed at once because every handler was busy.
    refused: AtomicU64,
}

/// Reads every source at scrape time and encodes it.
#[derive(Debug)]
struct Collect {
    sources: Sources,
    daemon: Arc<Daemon>,
    server: Arc<ServerCounters>,
}

/// One counter or gauge without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One histogram series from a [`DurationSnapshot`].
fn histogram(
    metric: &mut prometheus_client::encoding::MetricEncoder,
    d: &DurationSnapshot,
) -> Result<(), std::fmt::Error> {
    metric.encode_histogram::<NoLabelSet>(d.sum, d.count, &d.buckets, None)
}

impl Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counter = |v: u64| ConstCounter::new(v);
        let (stats, blocks, events) = (
            &self.sources.stats,
            &self.sources.blocks,
            &self.sources.events,
        );
        let e = &mut encoder;

        let mut info = e.encode_descriptor(
            "portsentry_build",
            "Version of the running binary",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        let started = self
            .daemon
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        single(
            e,
            "portsentry_start_time_seconds",
            "When the daemon started, in seconds since the epoch",
            &ConstGauge::new(started),
        )?;
        single(
            e,
            "portsentry_config_generation",
            "Configuration generation in force (1 at start, +1 for every reload taken)",
            &ConstGauge::new(load(&self.daemon.generation) as i64),
        )?;
        let mut reloads = e.encode_descriptor(
            "portsentry_reloads",
            "Reloads tried, by result (ok: taken; refused: the old generation was kept)",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("ok", &self.daemon.reloads_ok),
            ("refused", &self.daemon.reloads_refused),
        ] {
            counter(load(n)).encode(reloads.encode_family(&[("result", result)])?)?;
        }

        let mut probes = e.encode_descriptor(
            "portsentry_probes",
            "Probes that reached the filters, by sensor mode and protocol",
            None,
            MetricType::Counter,
        )?;
        for mode in Mode::ALL {
            let labels = [("mode", mode.as_str()), ("proto", mode.proto().lower())];
            counter(load(&stats.hits_by_mode[mode.index()]))
                .encode(probes.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "portsentry_probes_ignored",
                "Probes from addresses in the ignore list",
                load(&stats.ignored),
            ),
            (
                "portsentry_probes_below_trigger",
                "Probes still below SCAN_TRIGGER",
                load(&stats.below_trigger),
            ),
            (
                "portsentry_probes_dropped",
                "Probes lost because the filters were behind",
                self.sources.sink.dropped(),
            ),
            (
                "portsentry_alerts",
                "Alerts handed to the announcing thread",
                load(&stats.alerts),
            ),
            (
                "portsentry_alerts_dropped",
                "Alerts lost because the announcing thread was behind",
                load(&stats.alerts_dropped),
            ),
            (
                "portsentry_alerts_not_logged",
                "Probes below the forgeable trigger over LOG_RATE_LIMIT (only summarised)",
                load(&stats.not_logged),
            ),
            (
                "portsentry_blocks_made",
                "Blocks applied (scan, manual, import; not restores)",
                load(&blocks.made),
            ),
            (
                "portsentry_blocks_failed",
                "Blocks no responder managed to apply",
                load(&blocks.failed),
            ),
            (
                "portsentry_blocks_expired",
                "Blocks lifted at their end",
                load(&blocks.expired),
            ),
            (
                "portsentry_blocks_unblocked",
                "Blocks lifted by an operator",
                load(&blocks.unblocked),
            ),
            (
                "portsentry_blocks_dropped",
                "Block requests dropped because too many were waiting",
                load(&blocks.dropped),
            ),
            (
                "portsentry_responder_failures",
                "Responder runs that failed (apply or undo)",
                load(&blocks.responder_failures),
            ),
            (
                "portsentry_fleet_notes_dropped",
                "Blocks made or lifted that the CrowdSec pusher could not be told (queue full)",
                load(&blocks.notes_dropped),
            ),
            (
                "portsentry_events_written",
                "Lines written to EVENT_LOG",
                load(&events.written),
            ),
            (
                "portsentry_event_write_errors",
                "Events EVENT_LOG could not take (disk full, read-only, not opened)",
                load(&events.write_errors),
            ),
            (
                "portsentry_metrics_connections_refused",
                "Metrics connections closed at once because every handler was busy",
                load(&self.server.refused),
            ),
        ] {
            single(e, name, help, &counter(value))?;
        }
        let mut dropped = e.encode_descriptor(
            "portsentry_events_dropped",
            "Events not written to EVENT_LOG, by reason (rate_limit: alert events over \
             EVENT_LOG_RATE_LIMIT; queue_full: the writer was behind)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("rate_limit", &events.rate_limited),
            ("queue_full", &events.queue_full),
        ] {
            counter(load(n)).encode(dropped.encode_family(&[("reason", reason)])?)?;
        }
        single(
            e,
            "portsentry_blocks_active",
            "Blocks in force now",
            &ConstGauge::new(self.sources.view.len() as i64),
        )?;
        let storage = blocks.storage.snapshot();
        let health = |file: StoredFile| storage.iter().find(|f| f.file == file.key());
        single(
            e,
            "portsentry_blocks_unjournaled",
            "Blocks in force that the block state file does not hold yet (its writes fail; \
             they are kept in memory and written as soon as it can be)",
            &ConstGauge::new(health(StoredFile::Journal).map_or(0, |f| f.blocks_unwritten) as i64),
        )?;
        let mut failing = e.encode_descriptor(
            "portsentry_file_write_failing",
            "1 while writes to the file fail: journal (BLOCK_STATE_FILE), history \
             (HISTORY_FILE), blocked (BLOCKED_FILE)",
            None,
            MetricType::Gauge,
        )?;
        for file in StoredFile::ALL {
            let on = health(file).is_some_and(|f| f.failing_since.is_some());
            ConstGauge::new(i64::from(on))
                .encode(failing.encode_family(&[("file", file.key())])?)?;
        }

        let pulled = self.sources.fleet.read();
        let mut by_origin = e.encode_descriptor(
            "portsentry_fleet_decisions",
            "CrowdSec decisions pulled and in force (in the kernel, apart from the blocks), \
             by origin",
            None,
            MetricType::Gauge,
        )?;
        for (origin, n) in &pulled.per_origin {
            ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX))
                .encode(by_origin.encode_family(&[("origin", origin.as_str())])?)?;
        }
        for (name, help, value) in [
            (
                "portsentry_fleet_decisions_refused",
                "Pulled CrowdSec decisions refused (protected, ignored or local addresses) \
                 since the puller started",
                pulled.refused,
            ),
            (
                "portsentry_fleet_decisions_over_limit",
                "Pulled CrowdSec decisions left out because CROWDSEC_MAX_DECISIONS was reached",
                pulled.over_limit,
            ),
        ] {
            single(e, name, help, &counter(value))?;
        }
        single(
            e,
            "portsentry_fleet_kernel_elements",
            "Kernel elements (nftables or routes) holding the pulled CrowdSec decisions",
            &ConstGauge::new(i64::try_from(pulled.elements).unwrap_or(i64::MAX)),
        )?;

        let timings = &blocks.timings;
        let mut jobs = e.encode_descriptor(
            "portsentry_block_apply_duration_seconds",
            "Time to apply one block, all its responders together",
            None,
            MetricType::Histogram,
        )?;
        histogram(&mut jobs, &timings.apply_jobs.snapshot())?;
        let mut each = e.encode_descriptor(
            "portsentry_responder_duration_seconds",
            "Time of one responder run, by responder and way (apply, undo)",
            None,
            MetricType::Histogram,
        )?;
        for (name, op, d) in timings.responders() {
            let labels = [("responder", name.as_str()), ("op", op.as_str())];
            histogram(&mut each.encode_family(&labels)?, &d)?;
        }
        Ok(())
    }
}

/// The metrics and the server that serves them; it exists whether or not `METRICS_LISTEN`
/// is set, so that a reload can turn the server on, move it, or turn it off.
pub struct MetricsServer {
    registry: Arc<Registry>,
    daemon: Arc<Daemon>,
    server: Arc<ServerCounters>,
    running: Mutex<Option<Running>>,
}

/// A bound server: its address, its stop flag and its threads.
struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            if t.join().is_err() {
                log::warn!("metrics: a server thread panicked");
            }
        }
    }
}

impl MetricsServer {
    /// The metrics of a daemon whose first generation is `generation`; no server yet
    /// ([`MetricsServer::follow`] binds one).
    pub fn new(sources: Sources, generation: u64) -> MetricsServer {
        let daemon = Arc::new(Daemon {
            reloads_ok: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            generation: AtomicU64::new(generation),
            started: SystemTime::now(),
        });
        let server = Arc::new(ServerCounters::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collect {
            sources,
            daemon: Arc::clone(&daemon),
            server: Arc::clone(&server),
        }));
        MetricsServer {
            registry: Arc::new(registry),
            daemon,
            server,
            running: Mutex::new(None),
        }
    }

    /// The page `GET /metrics` answers with.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Where the server listens now, if anywhere.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.lock().as_ref().map(|r| r.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        crate::sync::lock(&self.running)
    }

    /// Counts a reload (`ok`: taken), records the generation in force after it, and follows
    /// the `METRICS_LISTEN` of that generation.
    pub fn reloaded(&self, ok: bool, generation: u64, listen: Option<SocketAddr>) {
        let counter = if ok {
            &self.daemon.reloads_ok
        } else {
            &self.daemon.reloads_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.daemon.generation.store(generation, Ordering::Relaxed);
        self.follow(listen);
    }

    /// Serves on `listen` (`None`: nowhere). A new address is bound before the old one is
    /// let go; when it cannot be bound the old one keeps serving and the log says why.
    pub fn follow(&self, listen: Option<SocketAddr>) {
        let mut running = self.lock();
        let old = running.as_ref().map(|r| r.addr);
        if old == listen {
            return;
        }
        let Some(addr) = listen else {
            if let Some(r) = running.take() {
                let was = r.addr;
                r.stop();
                log::info!("{}", crate::log_lines::metrics_stopped(was));
            }
            return;
        };
        let bound = match TcpListener::bind(addr) {
            // The same port on another address of this host: the old listener stands in the
            // way, so it goes first and comes back if the new one still fails.
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && old.map(|o| o.port()) == Some(addr.port()) =>
            {
                if let Some(r) = running.take() {
                    r.stop();
                }
                TcpListener::bind(addr)
            }
            other => other,
        };
        match bound.and_then(|l| self.launch(l, addr)) {
            Ok(new) => {
                if let Some(r) = running.take() {
                    r.stop();
                }
                *running = Some(new);
                log::info!("{}", crate::log_lines::metrics_serving(addr));
            }
            Err(e) => {
                let now = match running.as_ref() {
                    Some(r) => format!("still serving on {}", r.addr),
                    None => match old.map(|o| TcpListener::bind(o).and_then(|l| self.launch(l, o)))
                    {
                        Some(Ok(back)) => {
                            let text = format!("still serving on {}", back.addr);
                            *running = Some(back);
                            text
                        }
                        _ => "no metrics server".to_string(),
                    },
                };
                log::error!("{}", crate::log_lines::metrics_listen_failed(addr, e, &now));
            }
        }
    }

    /// Starts the accept thread and the handlers on a bound listener.
    fn launch(&self, listener: TcpListener, addr: SocketAddr) -> io::Result<Running> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr().unwrap_or(addr);
        let stop = Arc::new(AtomicBool::new(false));
        // Connections handed over and not yet served; never more than there are handlers,
        // so one waits in the channel only while a free handler is about to take it.
        let busy = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = bounded::<TcpStream>(MAX_CLIENTS);
        let mut running = Running {
            addr,
            stop: Arc::clone(&stop),
            threads: Vec::new(),
        };
        for n in 0..MAX_CLIENTS {
            let (rx, stop, registry) = (rx.clone(), Arc::clone(&stop), Arc::clone(&self.registry));
            let busy = Arc::clone(&busy);
            let spawned = std::thread::Builder::new()
                .name(format!("metrics-{n}"))
                .spawn(move || handle_clients(&rx, &stop, &registry, &busy));
            match spawned {
                Ok(t) => running.threads.push(t),
                Err(e) => {
                    running.stop();
                    return Err(e);
                }
            }
        }
        let server = Arc::clone(&self.server);
        let accept_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                accept_loop(&listener, &accept_stop, |stream| {
                    let refused = if busy.load(Ordering::SeqCst) < MAX_CLIENTS {
                        busy.fetch_add(1, Ordering::SeqCst);
                        match tx.try_send(stream) {
                            Ok(()) => None,
                            Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) => {
                                busy.fetch_sub(1, Ordering::SeqCst);
                                Some(s)
                            }
                        }
                    } else {
                        Some(stream)
                    };
                    if let Some(stream) = refused {
                        server.refused.fetch_add(1, Ordering::Relaxed);
                        // Closed at once.
                        drop(stream);
                    }
                });
            });
        match spawned {
            Ok(t) => {
                running.threads.push(t);
                Ok(running)
            }
            Err(e) => {
                running.stop();
                Err(e)
            }
        }
    }

    /// Stops serving: the accept thread at once, the handlers within `POLL` unless one is
    /// writing an answer ([`WRITE_TIMEOUT`] at most).
    pub fn stop(self) {
        if let Some(r) = self.lock().take() {
            r.stop();
        }
    }
}

/// The Prometheus text page of a registry.
fn render(registry: &Registry) -> String {
    let mut page = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut page, registry) {
        log::warn!("metrics: cannot encode: {e}");
    }
    page
}

/// Accepts until `stop`, handing each connection to `hand_over`; waits out errors such as
/// running out of descriptors instead of spinning.
fn accept_loop(listener: &TcpListener, stop: &AtomicBool, mut hand_over: impl FnMut(TcpStream)) {
    let poll_ms = u16::try_from(POLL.as_millis()).unwrap_or(100);
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                log::warn!("metrics: poll failed: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        }
        // Take every connection that is ready, so that a burst cannot fill the backlog.
        loop {
            match listener.accept() {
                Ok((stream, _)) => hand_over(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    std::thread::sleep(POLL);
                    break;
                }
            }
        }
    }
}

/// A handler: serves the connections handed to it, one at a time, until the accept thread
/// is gone; `busy` counts the connections handed over and not yet served.
fn handle_clients(
    clients: &Receiver<TcpStream>,
    stop: &AtomicBool,
    registry: &Registry,
    busy: &AtomicUsize,
) {
    let mut head = Vec::with_capacity(MAX_HEAD_BYTES + 1);
    for stream in clients {
        if let Err(e) = serve(stream, stop, registry, &mut head) {
            log::debug!("metrics: a client: {e}");
        }
        busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a request asked for, as far as this server cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (a query string is allowed and ignored).
    Metrics,
    /// Another path: 404.
    NotFound,
    /// Another method: 405.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line: 400.
    BadRequest,
}

/// Judges a request head by its request line: a pure function of the bytes, so that any
/// input can be tried in a test.
pub fn route(head: &[u8]) -> Route {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) || !target.starts_with('/') || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The deadline passed first: 408.
    TimedOut,
    /// More than [`MAX_HEAD_BYTES`] without the blank line that ends a head: 431.
    TooLarge,
    /// The client closed the connection, or the daemon is stopping: no answer.
    Gone,
}

/// Whether `bytes` hold a whole request head (it ends with an empty line).
fn head_complete(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
}

/// Reads a request head into `head` before `deadline`, at most `max` bytes, looking at
/// `stop` every `POLL`.
pub fn read_head(
    stream: &mut impl ReadTimeout,
    head: &mut Vec<u8>,
    deadline: Instant,
    max: usize,
    stop: &AtomicBool,
) -> Result<(), HeadError> {
    head.clear();
    let mut chunk = [0u8; 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(HeadError::Gone);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream
            .set_timeout(left.min(POLL))
            .map_err(|_| HeadError::Gone)?;
        // Never more than one byte past the limit, so that memory stays bounded.
        let room = (max + 1).saturating_sub(head.len()).min(chunk.len());
        match super::read_chunk(stream, &mut chunk[..room]) {
            super::Chunk::Data(0) | super::Chunk::Failed(_) => return Err(HeadError::Gone),
            super::Chunk::Data(n) => head.extend_from_slice(&chunk[..n]),
            // A timeout only ends a poll interval: the deadline is checked above.
            super::Chunk::Interrupted | super::Chunk::TimedOut => continue,
        }
        if head_complete(head) {
            return Ok(());
        }
        if head.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// A stream whose reads can be given a timeout (a `TcpStream`; a fake one in tests).
pub trait ReadTimeout: Read {
    /// Sets the timeout of the next reads.
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl ReadTimeout for TcpStream {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

/// A whole HTTP response: status line, headers, body; the connection is always closed.
pub fn response(status: &str, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The answer to a request head (or to the reason it could not be read).
fn answer(head: Result<(), HeadError>, bytes: &[u8], registry: &Registry) -> Option<Vec<u8>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let error = |status: &str, extra: &str, body: &str| Some(response(status, TEXT, extra, body));
    match head {
        Err(HeadError::Gone) => None,
        Err(HeadError::TimedOut) => error("408 Request Timeout", "", "request timed out\n"),
        Err(HeadError::TooLarge) => error(
            "431 Request Header Fields Too Large",
            "",
            "request head too large\n",
        ),
        Ok(()) => match route(bytes) {
            Route::Metrics => Some(response(
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                "",
                &render(registry),
            )),
            Route::NotFound => error("404 Not Found", "", "only /metrics is served here\n"),
            Route::MethodNotAllowed => error(
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                "only GET is served here\n",
            ),
            Route::BadRequest => error("400 Bad Request", "", "not an HTTP/1.x request\n"),
        },
    }
}

/// One connection, start to end: read the head, answer, close.
fn serve(
    mut stream: TcpStream,
    stop: &AtomicBool,
    registry: &Registry,
    head: &mut Vec<u8>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let read = read_head(&mut stream, head, deadline, MAX_HEAD_BYTES, stop);
    if let Some(bytes) = answer(read, head, registry) {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.write_all(&bytes)?;
        stream.flush()?;
    }
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests;
