//! The daemon's life: load the first generation, open the sensors, start the pipeline, then
//! wait for signals (stop, reload) on the main thread.
//!
//! Order matters for "nothing half-started": every file is read and validated before any
//! socket is opened, and every socket is open before the daemon says it is active.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crossbeam_channel::{Sender, unbounded};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::watch::{ConfigWatcher, WatchSet, WatchTiming};
use crate::config::{ConfigError, ConfigErrors, ConfigWarning};
use crate::event::Mode;
use crate::filter::blocked::{BlockRegistry, SharedRegistry};
use crate::filter::standard_chain;
use crate::generation::{Generation, PluginPolicy};
use crate::history::History;
use crate::pipeline::Pipeline;
use crate::report;
use crate::respond::stage::ResponseStage;
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
    let thread = std::thread::Builder::new()
        .name(format!("sensor {name}"))
        .spawn(move || sensor.run(sink, rx))
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
        log::warn!("adminalert: WARNING: {w}");
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
    log::info!(
        "{}",
        report::starting(env!("CARGO_PKG_VERSION"), &options.modes)
    );
    let (generation, warnings) =
        Generation::load_with(1, &options.config_path, PluginPolicy::SkipBroken)
            .map_err(|e| anyhow::anyhow!("{e}\nadminalert: configuration refused, not starting"))?;
    log_warnings(&warnings, &options.modes);
    let config = Arc::clone(&generation.config);
    let registry: SharedRegistry = BlockRegistry::open(&config.blocked_file)
        .with_context(|| format!("cannot open blocked file {}", config.blocked_file.display()))?
        .into_shared();
    let history = History::open(&config.history_file)
        .with_context(|| format!("cannot open history file {}", config.history_file.display()))?;

    let sensors = open_sensors(&options.modes, &generation)?;
    let filters = standard_chain(&generation, &registry);
    let stage = ResponseStage::new(generation.clone(), Arc::clone(&registry), history);
    let pipeline = Pipeline::start(filters, Arc::clone(&registry), stage)
        .context("cannot start pipeline threads")?;

    let (requests_tx, requests) = unbounded();
    watch_signals(requests_tx.clone())?;
    let watcher = start_watcher(&generation, requests_tx);
    let mut handles = Vec::new();
    for sensor in sensors {
        handles.push(spawn_sensor(sensor, pipeline.sink())?);
    }
    log::info!("{}", report::active());

    let mut reloader = Reloader {
        current: generation,
        pipeline: &pipeline,
        sensors: &handles,
        registry: &registry,
        watcher: watcher.as_ref(),
        options,
    };
    while let Ok(request) = requests.recv() {
        if request == DaemonRequest::Stop {
            break;
        }
        // Requests that queued up meanwhile (a burst of SIGHUPs, a save seen by the watcher
        // while a SIGHUP was pending) are all answered by one reload: it reads the files as
        // they are now. A stop among them wins.
        if requests.try_iter().any(|r| r == DaemonRequest::Stop) {
            break;
        }
        reloader.reload();
    }

    log::info!("{}", report::shutting_down());
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
    Ok(())
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
            log::warn!(
                "adminalert: WARNING: cannot watch the configuration files ({e}); \
                 reload with SIGHUP"
            );
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
    pipeline: &'a Pipeline,
    sensors: &'a [SensorHandle],
    registry: &'a SharedRegistry,
    watcher: Option<&'a ConfigWatcher>,
    options: &'a RunOptions,
}

impl Reloader<'_> {
    /// Builds the next generation from the files and swaps it in only if all of it is valid;
    /// otherwise the generation in force stays and the errors name file and line. Never
    /// ends the daemon.
    fn reload(&mut self) {
        let started = Instant::now();
        let number = self.current.number + 1;
        let path = &self.options.config_path;
        let next = build_generation(number, path).and_then(|(next, warnings)| {
            open_kept_files(&self.current, &next)?;
            Ok((next, warnings))
        });
        match next {
            Ok((next, warnings)) => {
                log_warnings(&warnings, &self.options.modes);
                self.report_mode_change();
                self.swap(next);
                log::info!(
                    "adminalert: configuration reloaded, generation {} in force ({} ms)",
                    self.current.number,
                    started.elapsed().as_millis()
                );
            }
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("adminalert: ERROR: reload refused: {e}");
                }
                log::error!(
                    "adminalert: ERROR: keeping configuration generation {}",
                    self.current.number
                );
                // Watch what the broken text names too, so that fixing it is seen.
                if let Some(w) = self.watcher {
                    w.follow(
                        WatchSet::for_config(&self.current.config)
                            .union(WatchSet::from_config_text(path)),
                    );
                }
            }
        }
    }

    /// Modes are fixed at start: when the modes file now names others, say that a restart
    /// is needed (the rest of the reload still applies).
    fn report_mode_change(&self) {
        let Some(path) = &self.options.modes_file else {
            return;
        };
        match crate::cli::modes_from_file(path) {
            Ok(modes) if modes == self.options.modes => {}
            Ok(modes) => log::warn!(
                "{}",
                report::modes_need_restart(path, &modes, &self.options.modes)
            ),
            Err(e) => log::warn!("adminalert: WARNING: {e}; modes unchanged"),
        }
    }

    /// Hands a valid generation to every running part, then waits until the sensors and the
    /// filters hold it, so that "in force" is true for the next probe.
    fn swap(&mut self, next: Generation) {
        let old = &self.current.config;
        let new = &next.config;
        if new.blocked_file != old.blocked_file {
            let mut registry = crate::filter::blocked::lock(self.registry);
            match registry.move_to(&new.blocked_file) {
                Ok(()) => log::info!(
                    "adminalert: blocked file is now {} (was {})",
                    new.blocked_file.display(),
                    old.blocked_file.display()
                ),
                Err(e) => log::error!(
                    "adminalert: ERROR: cannot move to blocked file {e}; still writing {}",
                    registry.path().display()
                ),
            }
        }
        for h in self.sensors {
            let _ = h
                .control
                .send(SensorControl::Reconfigure(Arc::clone(&next.config)));
        }
        self.pipeline.reload(next.clone());
        if let Some(w) = self.watcher {
            w.follow(WatchSet::for_config(&next.config));
        }
        self.current = next;
        let deadline = Instant::now() + APPLY_WAIT;
        // A sensor takes its control message at the top of its poll loop and applies it
        // before polling again.
        while self.sensors.iter().any(|h| !h.control.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !self
            .pipeline
            .sync(deadline.saturating_duration_since(Instant::now()))
        {
            log::warn!("adminalert: WARNING: the filters are slow to take the new configuration");
        }
    }
}

/// `Generation::load`, with a panic inside it turned into a refused reload: whatever a
/// config file (or, later, a plugin) holds, a reload must not end the daemon.
fn build_generation(number: u64, path: &Path) -> Result<crate::generation::Loaded, ConfigErrors> {
    match std::panic::catch_unwind(|| Generation::load(number, path)) {
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

/// The line a key is set on (first occurrence, as the loader reads it); 0 when absent.
fn key_line(config_path: &Path, key: &str) -> usize {
    std::fs::read(config_path)
        .ok()
        .and_then(|bytes| {
            crate::config::parse::parse_collect(config_path, &bytes)
                .0
                .entries
                .into_iter()
                .find(|e| e.key == key)
        })
        .map_or(0, |e| e.line)
}
