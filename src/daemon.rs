//! The daemon's life: load the first generation, open the sensors, start the pipeline, then
//! wait for signals (stop, reload) on the main thread.
//!
//! Order matters for "nothing half-started": every file is read and validated before any
//! socket is opened, and every socket is open before the daemon says it is active.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use crossbeam_channel::{Sender, unbounded};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::announce::Announcer;
use crate::block::manager::BlockManager;
use crate::config::preflight::{key_line, preflight};
use crate::config::watcher::{ConfigWatcher, WatchSet, WatchTiming};
use crate::config::{ConfigError, ConfigErrors, ConfigWarning};
use crate::control::metrics::{MetricsServer, Sources};
use crate::control::notify;
use crate::control::protocol::{
    ControlCall, Counters, ReloadInfo, Request, Response, StatusReport, TargetResult,
};
use crate::control::server::ControlServer;
use crate::event::Mode;
use crate::event_log::{Event, EventLog};
use crate::filter::protect::Protector;
use crate::filter::standard_chain;
use crate::generation::{Generation, Reloaded};
use crate::heartbeat;
use crate::history::History;
use crate::log_lines;
use crate::pipeline::Pipeline;
use crate::respond::lua::LuaPlugins;
use crate::sensor::bound::BoundSensor;
use crate::sensor::raw::RawSensor;
use crate::sensor::{HitSink, Sensor, SensorControl};

/// What the command line decided.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The modes to run, at least one.
    pub modes: Vec<Mode>,
    /// Where the modes came from when no mode flag was given (`/etc/default/portsentry`):
    /// a reload says so when that file now asks for other modes, which needs a restart.
    pub modes_file: Option<PathBuf>,
    /// `portsentry.conf`.
    pub config_path: PathBuf,
}

/// Requests the main loop acts on; signals, the config file watcher and (later) the control
/// socket all speak this language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonRequest {
    /// Re-read every file and swap in the new generation if it is valid.
    Reload,
    /// Orderly shutdown.
    Stop,
}

/// A running sensor thread and the channel that steers it.
struct SensorHandle {
    control: Sender<SensorControl>,
    thread: JoinHandle<()>,
}

fn spawn_sensor(sensor: Box<dyn Sensor>, sink: HitSink) -> anyhow::Result<SensorHandle> {
    let (control, rx) = unbounded();
    let name = sensor.name();
    let thread_name = format!("sensor {name}");
    let thread = std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let _enrolled = heartbeat::enroll(&thread_name, heartbeat::Kind::Loop);
            sensor.run(sink, rx)
        })
        .with_context(|| format!("cannot start sensor thread {name}"))?;
    Ok(SensorHandle { control, thread })
}

/// Opens the sensors for the requested modes; an error here stops start-up.
fn open_sensors(modes: &[Mode], generation: &Generation) -> anyhow::Result<Vec<Box<dyn Sensor>>> {
    let mut sensors: Vec<Box<dyn Sensor>> = Vec::new();
    let classic: Vec<Mode> = modes.iter().copied().filter(|m| !m.is_raw()).collect();
    let raw: Vec<Mode> = modes.iter().copied().filter(|m| m.is_raw()).collect();
    if !classic.is_empty() {
        sensors.push(Box::new(BoundSensor::open(&classic, &generation.config)?));
    }
    if !raw.is_empty() {
        sensors.push(Box::new(RawSensor::open(
            &raw,
            Arc::clone(&generation.config),
        )?));
    }
    Ok(sensors)
}

/// Logs config warnings, leaving out those about modes that are not running (1.2 only
/// spoke of ADVANCED_PORTS_* in advanced mode).
fn log_warnings(warnings: &[ConfigWarning], modes: &[Mode]) {
    let advanced = modes.iter().any(|m| matches!(m, Mode::Atcp | Mode::Audp));
    for w in warnings {
        if !advanced && w.message.starts_with("ADVANCED_PORTS_") {
            continue;
        }
        log::warn!("{}", log_lines::warning(w));
    }
}

/// Bridges Unix signals into daemon requests.
fn watch_signals(requests: Sender<DaemonRequest>) -> anyhow::Result<()> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let request = if sig == SIGHUP {
                    DaemonRequest::Reload
                } else {
                    DaemonRequest::Stop
                };
                if requests.send(request).is_err() {
                    return;
                }
            }
        })
        .context("cannot start signal thread")?;
    Ok(())
}

/// Runs the daemon until SIGTERM/SIGINT. Returns an error (already worded for the admin)
/// when start-up fails.
pub fn run(options: &RunOptions) -> anyhow::Result<()> {
    if options.modes.is_empty() {
        bail!("no mode to run");
    }
    crate::memory::tune();
    log::info!(
        "{}",
        log_lines::starting(env!("CARGO_PKG_VERSION"), &options.modes)
    );
    // The same checks as `--check-config`: a plugin that does not load and a file that the
    // modes cannot run with refuse the start, with file and line.
    let refused =
        |e: ConfigErrors| anyhow::anyhow!("{e}\n{}", log_lines::config_refused_not_starting());
    let (generation, mut warnings) = Generation::load(1, &options.config_path).map_err(refused)?;
    let problems = preflight(&generation.config, &options.modes);
    if !problems.is_empty() {
        return Err(refused(ConfigErrors(problems)));
    }
    // The Lua plugins (each in its own process) are built from the generation here and
    // shared by the announcer and the block manager.
    let (lua, plugin_warnings) = LuaPlugins::for_generation(&generation).map_err(refused)?;
    warnings.extend(plugin_warnings);
    log_warnings(&warnings, &options.modes);
    let config = Arc::clone(&generation.config);
    // First, so that a second daemon stops here before it touches the journal.
    let (calls_tx, calls) = crossbeam_channel::bounded(16);
    let control = start_control(&config.control_socket, calls_tx)?;
    // A full or read-only disk does not stop the start: the history, the journal and the
    // blocked file say so and keep what they cannot write until they can.
    for w in crate::config::preflight::storage_warnings(&config) {
        log::warn!("{}", log_lines::warning(w));
    }
    let history = History::open_or_wait(&config.history_file);

    let sensors = open_sensors(&options.modes, &generation)?;
    let events = EventLog::start(&config).context("cannot start the event log thread")?;
    // Protection is read before the first probe is judged (and before any block by hand).
    let protector =
        Protector::start(&config).context("cannot start the protected-address thread")?;
    // The manager restores the journal's blocks before the first probe is judged.
    let blocks = BlockManager::start_with_events(
        generation.clone(),
        lua.clone(),
        history,
        protector.view(),
        events.sink(),
    )?;
    // The fleet: pushes what the manager tells it, pulls decisions into it.
    let mut fleet = crate::fleet::Fleet::start(&generation, &blocks, protector.view());
    let filters = standard_chain(
        &generation.config,
        &generation.ignore,
        &blocks.view(),
        &protector.view(),
    );
    let announcer = Announcer::new(generation.clone(), lua.clone(), blocks.requester())
        .with_events(events.sink());
    let pipeline = Pipeline::start(filters, announcer, Arc::clone(&generation.config))
        .context("cannot start pipeline threads")?;
    let metrics = MetricsServer::new(
        Sources::of(&pipeline, &blocks, &events, &fleet),
        generation.number,
    );
    metrics.follow(config.metrics_listen);

    let (requests_tx, requests) = unbounded();
    watch_signals(requests_tx.clone())?;
    let watcher = start_watcher(&generation, requests_tx);
    let mut handles = Vec::new();
    for sensor in sensors {
        handles.push(spawn_sensor(sensor, pipeline.sink())?);
    }
    log::info!("{}", log_lines::active());
    notify::ready(&notify::in_force(generation.number, &options.modes));
    let watchdog = notify::Watchdog::start();

    let mut reloader = Reloader {
        current: generation,
        current_lua: lua,
        last_reload: None,
        pipeline: &pipeline,
        sensors: &handles,
        blocks: &blocks,
        protector: &protector,
        watcher: watcher.as_ref(),
        options,
        events: &events,
        metrics: &metrics,
        fleet: &mut fleet,
    };
    let started = SystemTime::now();
    loop {
        crossbeam_channel::select_biased! {
            recv(requests) -> request => {
                let Ok(request) = request else { break };
                if request == DaemonRequest::Stop {
                    break;
                }
                // Requests that queued up meanwhile (a burst of SIGHUPs, a save seen by the
                // watcher while a SIGHUP was pending) are all answered by one reload: it reads
                // the files as they are now. A stop among them wins.
                if requests.try_iter().any(|r| r == DaemonRequest::Stop) {
                    break;
                }
                let _ = reloader.reload();
            },
            recv(calls) -> call => {
                if let Ok(call) = call {
                    answer(call, &mut reloader, started);
                }
            },
        }
    }

    log::info!("{}", log_lines::shutting_down());
    notify::stopping();
    if let Some(w) = watchdog {
        w.stop();
    }
    if let Some(c) = control {
        c.stop();
    }
    metrics.stop();
    if let Some(w) = watcher {
        w.stop();
    }
    for h in &handles {
        let _ = h.control.send(SensorControl::Stop);
    }
    for h in handles {
        let _ = h.thread.join();
    }
    pipeline.stop();
    protector.stop();
    fleet.stop(&blocks);
    blocks.stop();
    events.stop();
    Ok(())
}

/// Opens the control socket. Another daemon answering on it stops the start (two daemons
/// must not share one journal); any other failure leaves the daemon running without it.
fn start_control(path: &Path, calls: Sender<ControlCall>) -> anyhow::Result<Option<ControlServer>> {
    match ControlServer::start(path, calls) {
        Ok(server) => Ok(Some(server)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow::anyhow!("{e}")),
        Err(e) => {
            log::warn!("{}", log_lines::no_control_socket(e));
            Ok(None)
        }
    }
}

/// Answers one control request: status and reload here, blocks by the block manager (which
/// answers the client itself, so the main thread never waits for a responder).
fn answer(call: ControlCall, reloader: &mut Reloader<'_>, started: SystemTime) {
    match &call.request {
        Request::Status => {
            let report = reloader.status(started);
            call.answer(Response::Status(report));
        }
        Request::Reload => {
            let response = match reloader.reload() {
                Ok(generation) => Response::Reloaded { generation },
                Err(errors) => Response::ReloadRefused {
                    kept_generation: reloader.current.number,
                    errors,
                },
            };
            call.answer(response);
        }
        // The control server filters the list and splits an unblock of several targets into
        // single unblocks: only the plain forms reach the daemon.
        Request::List { .. } => {
            let fleet = reloader.fleet.decisions();
            reloader
                .blocks
                .list(move |blocks| call.answer(Response::List { blocks, fleet }))
        }
        Request::UnblockMany { .. } => call.answer(Response::error(
            "unblock of several targets is split by the control server",
        )),
        Request::Unblock { target, covering } => match crate::block::parse_target(target) {
            Err(e) => call.answer(Response::error(e)),
            Ok(t) => {
                let text = crate::block::target_text(&t);
                reloader
                    .blocks
                    .unblock_covering(t, *covering, move |result| {
                        call.answer(match result {
                            Ok(detail) => Response::Unblocked {
                                target: text,
                                detail,
                            },
                            Err(e) => Response::error(e),
                        })
                    });
            }
        },
        Request::Block {
            targets,
            duration,
            reason,
        } => {
            let parsed: Result<Vec<_>, String> = targets
                .iter()
                .map(|t| crate::block::parse_target(t))
                .collect();
            let duration = match duration.as_deref() {
                None => Ok(None),
                Some(text) => crate::control::commands::block_duration(text).and_then(|t| {
                    humantime::parse_duration(&t)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }),
            };
            match (parsed, duration) {
                (Err(e), _) | (_, Err(e)) => call.answer(Response::error(e)),
                (Ok(targets), Ok(duration)) => {
                    reloader
                        .blocks
                        .block(targets, duration, reason.clone(), move |outcomes| {
                            call.answer(Response::Blocked {
                                results: outcomes
                                    .into_iter()
                                    .map(|o| TargetResult {
                                        target: o.target,
                                        ok: o.ok,
                                        detail: o.detail,
                                    })
                                    .collect(),
                            })
                        })
                }
            }
        }
    }
}

/// Starts the config file watcher; without one (inotify limit reached) the daemon runs on
/// and SIGHUP still reloads.
fn start_watcher(
    generation: &Generation,
    requests: Sender<DaemonRequest>,
) -> Option<ConfigWatcher> {
    let set = WatchSet::for_config(&generation.config);
    match ConfigWatcher::start(set, requests, DaemonRequest::Reload, WatchTiming::default()) {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!("{}", log_lines::config_not_watched(e));
            None
        }
    }
}

/// How long a reload waits for the threads to take the new generation before saying it is
/// in force anyway (they take it within one poll interval, 50 ms).
const APPLY_WAIT: Duration = Duration::from_secs(1);

/// What a reload touches: the generation in force and the running parts that follow it.
struct Reloader<'a> {
    current: Generation,
    /// The plugins built from `current`'s config, kept when a reload applies only the
    /// ignore list.
    current_lua: LuaPlugins,
    /// When the last reload was tried and what it said, for `status`.
    last_reload: Option<ReloadInfo>,
    pipeline: &'a Pipeline,
    sensors: &'a [SensorHandle],
    blocks: &'a BlockManager,
    protector: &'a Protector,
    watcher: Option<&'a ConfigWatcher>,
    options: &'a RunOptions,
    events: &'a EventLog,
    metrics: &'a MetricsServer,
    fleet: &'a mut crate::fleet::Fleet,
}

impl Reloader<'_> {
    /// Builds the next generation from the files and swaps it in only if all of it is valid;
    /// otherwise the generation in force stays and the errors name file and line. Never
    /// ends the daemon.
    fn reload(&mut self) -> Result<u64, Vec<String>> {
        notify::reloading();
        let result = self.try_reload();
        let modes = &self.options.modes;
        notify::ready(&notify::after_reload(&result, modes, self.current.number));
        self.last_reload = Some(ReloadInfo {
            at: SystemTime::now(),
            ok: result.is_ok(),
            errors: result.clone().err().unwrap_or_default(),
        });
        // Reopened at every reload, taken or not: logrotate moves the file, then sends SIGHUP.
        self.events.follow(&self.current.config);
        self.events
            .send(Event::reload(&result, self.current.number));
        let listen = self.current.config.metrics_listen;
        self.metrics
            .reloaded(result.is_ok(), self.current.number, listen);
        result
    }

    /// The status the control socket reports: what runs, since when, and every counter.
    fn status(&self, started: SystemTime) -> StatusReport {
        let stats = self.pipeline.stats();
        let blocks = self.blocks.counters();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            modes: self
                .options
                .modes
                .iter()
                .map(|m| m.as_str().to_string())
                .collect(),
            started,
            uptime_secs: started.elapsed().unwrap_or_default().as_secs(),
            generation: self.current.number,
            last_reload: self.last_reload.clone(),
            counters: Counters {
                probes_seen: load(&stats.hits),
                alerts: load(&stats.alerts),
                blocks_made: load(&blocks.made),
                blocks_failed: load(&blocks.failed),
                blocks_expired: load(&blocks.expired),
                blocks_active: self.blocks.view().len() as u64,
                probes_dropped: self.pipeline.sink().dropped(),
                alerts_dropped: load(&stats.alerts_dropped),
                blocks_dropped: load(&blocks.dropped),
                responder_failures: load(&blocks.responder_failures),
            },
            fleet: self.fleet.status(),
            storage: blocks.storage.snapshot(),
        }
    }

    fn try_reload(&mut self) -> Result<u64, Vec<String>> {
        let started = Instant::now();
        let number = self.current.number + 1;
        let path = &self.options.config_path;
        let modes = &self.options.modes;
        // The new plugins are built (and loaded, each in its own process) before anything is
        // swapped: one that fails to load refuses the config side and the old ones keep
        // running.
        let next = build_generation(&self.current, number, path).and_then(|reloaded| {
            // What would refuse a start refuses a reload (no port left, more ports than
            // descriptors, an output file that is a directory).
            let problems = preflight(&reloaded.generation.config, modes);
            if !problems.is_empty() {
                return Err(ConfigErrors(problems));
            }
            open_kept_files(&self.current, &reloaded.generation)?;
            Ok(reloaded)
        });
        match next {
            Ok(reloaded) => {
                log_warnings(&reloaded.warnings, &self.options.modes);
                self.report_mode_change();
                let lua = reloaded.built.unwrap_or_else(|| self.current_lua.clone());
                self.swap(reloaded.generation, lua);
                if !reloaded.refused.is_empty() {
                    self.report_partial(&reloaded.refused, &reloaded.applied);
                }
                log::info!(
                    "{}",
                    log_lines::config_reloaded(self.current.number, started.elapsed().as_millis())
                );
                Ok(self.current.number)
            }
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("{}", log_lines::reload_refused(e));
                }
                log::error!("{}", log_lines::keeping_generation(self.current.number));
                // Watch what the broken text names too, so that fixing it is seen.
                if let Some(w) = self.watcher {
                    w.follow(
                        WatchSet::for_config(&self.current.config)
                            .union(WatchSet::from_config_text(path)),
                    );
                }
                Err(errors.0.iter().map(ToString::to_string).collect())
            }
        }
    }

    /// A reload that applied some files and refused others: say which, with the errors, and
    /// watch what the broken text names so that fixing it is seen.
    fn report_partial(&self, refused: &[ConfigError], applied: &[PathBuf]) {
        for e in refused {
            log::error!("{}", log_lines::reload_refused(e));
        }
        let mut files: Vec<String> = refused
            .iter()
            .map(|e| e.file.display().to_string())
            .collect();
        files.dedup();
        let applied: Vec<String> = applied.iter().map(|p| p.display().to_string()).collect();
        log::error!("{}", log_lines::reload_partly_applied(&files, &applied));
        if let Some(w) = self.watcher {
            w.follow(
                WatchSet::for_config(&self.current.config)
                    .union(WatchSet::from_config_text(&self.options.config_path)),
            );
        }
    }

    /// Modes are fixed at start: when the modes file now names others, say that a restart
    /// is needed (the rest of the reload still applies).
    fn report_mode_change(&self) {
        let Some(path) = &self.options.modes_file else {
            return;
        };
        match crate::config::modes::modes_from_file(path) {
            Ok(modes) if modes == self.options.modes => {}
            Ok(modes) => log::warn!(
                "{}",
                log_lines::modes_need_restart(path, &modes, &self.options.modes)
            ),
            Err(e) => log::warn!("{}", log_lines::modes_unchanged(e)),
        }
    }

    /// Hands a valid generation (and the plugins built from it) to every running part, then
    /// waits until the sensors hold it (the filters take it at once), so that "in force" is true for the
    /// next probe. The previous plugins stop once the announcer and the block manager (and
    /// any job still running) let go of them.
    fn swap(&mut self, next: Generation, lua: LuaPlugins) {
        self.blocks.reconfigure(next.clone(), lua.clone());
        self.protector.reconfigure(&next.config);
        self.fleet.follow(&next, self.blocks);
        for h in self.sensors {
            let _ = h
                .control
                .send(SensorControl::Reconfigure(Arc::clone(&next.config)));
        }
        let lua_kept = lua.clone();
        self.pipeline.reload(next.clone(), lua);
        if let Some(w) = self.watcher {
            w.follow(WatchSet::for_config(&next.config));
        }
        self.current = next;
        self.current_lua = lua_kept;
        let deadline = Instant::now() + APPLY_WAIT;
        // A sensor takes its control message at the top of its poll loop and applies it
        // before polling again.
        // The filters took it in `reload` (under the lock the sensors judge with).
        while self.sensors.iter().any(|h| !h.control.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// [`Generation::reload_from`] with the plugins built from a new config, and a panic inside
/// it turned into a refused reload: whatever a config file (or a plugin) holds, a reload
/// must not end the daemon.
fn build_generation(
    current: &Generation,
    number: u64,
    path: &Path,
) -> Result<Reloaded<LuaPlugins>, ConfigErrors> {
    let build = std::panic::AssertUnwindSafe(|| {
        Generation::reload_from(current, number, path, |next| {
            LuaPlugins::for_generation(next)
        })
    });
    match std::panic::catch_unwind(build) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                message: format!("internal error while loading ({what}); please report it"),
            }]))
        }
    }
}

/// Files that live across generations (history, blocked set) and that a reload may name
/// anew: the new one must be writable before the reload is accepted, so that a typo in a
/// path refuses the reload instead of silently losing history lines.
fn open_kept_files(current: &Generation, next: &Generation) -> Result<(), ConfigErrors> {
    let (old, new) = (&current.config, &next.config);
    let mut errors = Vec::new();
    for (key, was, now) in [
        ("HISTORY_FILE", &old.history_file, &new.history_file),
        ("BLOCKED_FILE", &old.blocked_file, &new.blocked_file),
    ] {
        if was == now {
            continue;
        }
        if let Err(e) = crate::history::open_append(now) {
            errors.push(ConfigError {
                file: new.path.clone(),
                line: key_line(&new.path, key),
                message: format!(
                    "{key}: \"{}\": cannot open for appending: {e}",
                    now.display()
                ),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}
