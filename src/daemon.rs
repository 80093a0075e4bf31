//! The daemon's life: load the first generation, open the sensors, start the pipeline, then
//! wait for signals (stop, reload) on the main thread.
//!
//! Order matters for "nothing half-started": every file is read and validated before any
//! socket is opened, and every socket is open before the daemon says it is active.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, Sender, unbounded};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::ConfigWarning;
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
    /// `portsentry.conf`.
    pub config_path: PathBuf,
}

/// Requests the main loop acts on; signals and (later) the file watcher and the control
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
    watch_signals(requests_tx)?;
    let mut handles = Vec::new();
    for sensor in sensors {
        handles.push(spawn_sensor(sensor, pipeline.sink())?);
    }
    log::info!("{}", report::active());

    let mut current = generation;
    serve(&requests, &mut current, &pipeline, &handles, options);

    log::info!("{}", report::shutting_down());
    for h in &handles {
        let _ = h.control.send(SensorControl::Stop);
    }
    for h in handles {
        let _ = h.thread.join();
    }
    pipeline.stop();
    Ok(())
}

/// The main loop: reloads on request until told to stop.
fn serve(
    requests: &Receiver<DaemonRequest>,
    current: &mut Generation,
    pipeline: &Pipeline,
    sensors: &[SensorHandle],
    options: &RunOptions,
) {
    for request in requests {
        match request {
            DaemonRequest::Stop => return,
            DaemonRequest::Reload => reload(current, pipeline, sensors, options),
        }
    }
}

/// Builds the next generation from the files; swaps it in only if all of it is valid.
fn reload(
    current: &mut Generation,
    pipeline: &Pipeline,
    sensors: &[SensorHandle],
    options: &RunOptions,
) {
    match Generation::load(current.number + 1, &options.config_path) {
        Ok((next, warnings)) => {
            log_warnings(&warnings, &options.modes);
            for h in sensors {
                let _ = h
                    .control
                    .send(SensorControl::Reconfigure(Arc::clone(&next.config)));
            }
            pipeline.reload(next.clone());
            log::info!(
                "adminalert: configuration reloaded, generation {} in force",
                next.number
            );
            *current = next;
        }
        Err(errors) => {
            for e in &errors.0 {
                log::error!("adminalert: ERROR: reload refused: {e}");
            }
            log::error!(
                "adminalert: ERROR: keeping configuration generation {}",
                current.number
            );
        }
    }
}
