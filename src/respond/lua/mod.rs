//! Lua responders: plugins that block hosts (nftables, iptables), notify (mail, JSON log)
//! or veto a block (allow-lists), written in sandboxed Lua.
//!
//! Each plugin gets its own Lua state in its own child process ([`host`]), driven by an
//! owner thread in the daemon; work arrives at the owner thread over a bounded crossbeam
//! channel, so the detection path never waits on Lua. The owner thread sends each event to
//! the process and waits for the report until the budget (plus a grace) has passed; then it
//! kills the process and its commands, answers with a failure, and starts the plugin again
//! for the next event (after a growing delay when it keeps failing). So a plugin stuck in a
//! C call or a `__close` loop is stopped for sure, and stalls only itself.
//! [`LuaPlugins::for_generation`] builds every plugin named by `LUA_RESPONDERS` of a
//! [`Generation`] (the daemon does, for the announcer and the block manager);
//! [`LuaPlugins::on_alert`] queues the `alert` event (dropping and counting when a queue is
//! full); [`LuaPlugins::responders`] gives one [`Responder`] per plugin whose `respond` runs
//! the `block` event and waits, bounded by the call budget, for its result;
//! [`LuaPlugins::unblock`] runs a plugin's `unblock` event the same way when one of its
//! blocks ends. Dropping the last handle (and the responders) lets each owner thread finish
//! its queue, end its process and exit; a reload simply builds a new `LuaPlugins`.
//!
//! Inside the process: `state` (the sandboxed Lua state), `api` (the `portsentry` table),
//! `event` (the event table), all over `sandbox` (the shared call state, a leaf).
//!
//! The plugin API is documented in `lua/README.md`.

mod api;
mod event;
pub mod exec;
pub mod host;
mod plugin_test;
mod sandbox;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};

use crate::config::build::{self, valid_plugin_name};
use crate::config::{Config, ConfigError, ConfigErrors, ConfigWarning};
use crate::generation::Generation;
use crate::respond::UnblockReason;
use crate::respond::{Action, Outcome, Responder, ResponseContext, Undo};

pub use event::{EventData, EventName};
pub use host::HostProgram;
pub use plugin_test::{
    DryRunPlugins, EXIT_HANDLER_FAILED, EXIT_LOAD_FAILED, EXIT_OK, EXIT_TIMED_OUT, TestOptions,
    apply_settings, test_plugin, test_plugin_with, watchdog_limit,
};
pub use sandbox::TraceEntry;
pub use state::{CallOutcome, CallReport};

use host::{Host, HostFailure};
use sandbox::PluginSpec;

/// `LUA_CALL_TIMEOUT` default: wall-clock budget of one event in one plugin.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `LUA_MEMORY_LIMIT` default: memory of one plugin's Lua state.
pub const DEFAULT_MEMORY_LIMIT: usize = 32 * 1024 * 1024;
/// Events waiting per plugin before new alerts are dropped.
pub const QUEUE_SIZE: usize = 256;
/// Extra wait on top of the budget, for a reply to travel back (and a host to start).
const GRACE: Duration = Duration::from_millis(500);
/// Restart delay after the second failure in a row; it doubles with each further one.
const RESTART_DELAY_FIRST: Duration = Duration::from_millis(250);
/// Longest restart delay.
const RESTART_DELAY_MAX: Duration = Duration::from_secs(30);

/// Why a plugin or the Lua settings could not be used. Plugin errors name the plugin and
/// the file and line where things went wrong (which may be a library file it required).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum LuaError {
    /// A plugin failed to load, raised, ran out of time or memory.
    #[error("lua:{plugin}: {}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Plugin {
        /// Plugin name (`nftables`).
        plugin: String,
        /// File the error is in.
        file: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What went wrong.
        message: String,
    },
    /// A `LUA_*` setting is malformed.
    #[error("{}: {key}: \"{value}\": {message}", file.display())]
    Setting {
        /// The config file.
        file: PathBuf,
        /// The key (`LUA_MEMORY_LIMIT`).
        key: String,
        /// The value as written.
        value: String,
        /// What was expected.
        message: String,
    },
}

impl LuaError {
    /// The plugin the error is about, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            LuaError::Plugin { plugin, .. } => Some(plugin),
            LuaError::Setting { .. } => None,
        }
    }

    /// The line the error points at, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            LuaError::Plugin { line, .. } => *line,
            LuaError::Setting { .. } => None,
        }
    }

    /// File and line (0: unknown) for a config error or warning about it.
    fn location(&self, config: &Config) -> (PathBuf, usize) {
        match self {
            LuaError::Plugin { file, line, .. } => (file.clone(), line.unwrap_or(0)),
            LuaError::Setting { .. } => (config.path.clone(), 0),
        }
    }
}

/// Prefix of a plugin's settings: `nftables` -> `NFTABLES`, `my-plugin` -> `MY_PLUGIN`.
pub fn setting_prefix(plugin: &str) -> String {
    plugin.to_ascii_uppercase().replace('-', "_")
}

/// A plugin's own settings (`NFTABLES_TIMEOUT` -> `timeout`), as the plugin sees them. A
/// key the core knows is never a plugin setting, even under the plugin's prefix:
/// `NFTABLES_TABLE` belongs to `KILL_NFTABLES`, not to plugin `nftables`.
pub fn plugin_settings(config: &Config, plugin: &str) -> BTreeMap<String, String> {
    let prefix = format!("{}_", setting_prefix(plugin));
    config
        .raw
        .iter()
        .filter_map(|(k, v)| {
            let upper = k.to_ascii_uppercase();
            if build::key_spec(&upper).is_some() {
                return None;
            }
            let rest = upper.strip_prefix(&prefix)?;
            (!rest.is_empty()).then(|| (rest.to_ascii_lowercase(), v.clone()))
        })
        .collect()
}

/// Budget and memory limit from `LUA_CALL_TIMEOUT` / `LUA_MEMORY_LIMIT` (validated by the
/// config builder too; checked here for configs built in code).
fn limits(config: &Config) -> Result<(Duration, usize), LuaError> {
    let bad = |key: &str, value: &str, message: String| LuaError::Setting {
        file: config.path.clone(),
        key: key.to_string(),
        value: value.to_string(),
        message,
    };
    let budget = match config.setting("LUA_CALL_TIMEOUT") {
        None => DEFAULT_CALL_TIMEOUT,
        Some(v) => build::lua_call_timeout(v).map_err(|m| bad("LUA_CALL_TIMEOUT", v, m))?,
    };
    let memory = match config.setting("LUA_MEMORY_LIMIT") {
        None => DEFAULT_MEMORY_LIMIT,
        Some(v) => build::lua_memory_limit(v).map_err(|m| bad("LUA_MEMORY_LIMIT", v, m))?,
    };
    Ok((budget, memory))
}

/// Whether [`load_warnings_to_stderr`]'s logger still prints (`--test-plugin` stops it once
/// the plugin is loaded: its report shows what the events log).
static LOAD_WARNINGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// For the commands that load plugins without the daemon's logger (`--check-config`,
/// `--test-plugin`): what a plugin logs at warning or error level while loading (the mail
/// plugin saying it cannot work under the unit's sandbox, and how to fix it) goes to stderr
/// as `warning: lua:NAME: …`. Does nothing when a logger is set already.
pub fn load_warnings_to_stderr() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
                && metadata.target() == "portsentry::lua"
                && LOAD_WARNINGS.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                eprintln!(
                    "warning: {}",
                    crate::logging::escape_controls(&record.args().to_string())
                );
            }
        }
        fn flush(&self) {}
    }
    if log::set_boxed_logger(Box::new(Stderr)).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// The longest one call of a Lua responder or `unblock` handler can keep the calling worker:
/// the wait for room in the plugin's queue, then for its report (`Handle::call`). The
/// watchdog's limit for a Lua step ([`crate::respond::step_limit`]).
pub fn longest_call(config: &Config) -> Duration {
    let budget = limits(config).map_or(DEFAULT_CALL_TIMEOUT, |(budget, _)| budget);
    budget * 3 + GRACE * 2
}

/// The spec of the plugin `name` as the daemon loads it: `PLUGIN_DIR/name.lua`, with the Lua
/// library and the plugin directory on the module path.
fn daemon_spec(config: &Config, name: &str, budget: Duration, memory: usize) -> PluginSpec {
    PluginSpec {
        name: name.to_string(),
        file: config.plugin_dir.join(format!("{name}.lua")),
        search_dirs: vec![config.lua_lib_dir.clone(), config.plugin_dir.clone()],
        settings: plugin_settings(config, name),
        budget,
        memory_limit: memory,
        dry_run: false,
    }
}

/// Work for an owner thread.
enum Work {
    /// Run an event's handlers; reply when someone waits; skip when not started in time.
    Event {
        event: Arc<EventData>,
        reply: Option<Sender<CallReport>>,
        start_by: Option<Instant>,
    },
    /// Answer once everything queued before it is done.
    Flush(Sender<()>),
}

/// A running plugin: the sending side of its owner thread's queue.
struct Handle {
    name: String,
    tx: Sender<Work>,
    handled: Vec<EventName>,
    dropped: AtomicU64,
    budget: Duration,
}

impl Handle {
    fn handles(&self, ev: EventName) -> bool {
        self.handled.contains(&ev)
    }

    /// Sends one event and waits for its report, bounded by the budget (queue wait and run;
    /// the owner thread kills a plugin process that overruns, so an answer always comes).
    fn call(&self, event: EventData) -> Result<CallReport, String> {
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        let work = Work::Event {
            event: Arc::new(event),
            reply: Some(rtx),
            start_by: Some(Instant::now() + self.budget),
        };
        match self.tx.send_timeout(work, self.budget) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                return Err(format!("lua:{}: queue full, event not run", self.name));
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                return Err(format!("lua:{}: plugin thread has stopped", self.name));
            }
        }
        let wait = self.budget * 2 + GRACE * 2;
        rrx.recv_timeout(wait).map_err(|e| match e {
            RecvTimeoutError::Timeout => format!(
                "lua:{}: no answer within {}",
                self.name,
                humantime::format_duration(wait)
            ),
            RecvTimeoutError::Disconnected => {
                format!(
                    "lua:{}: plugin thread stopped while handling the event",
                    self.name
                )
            }
        })
    }
}

/// A plugin slot: running, or broken with the reason (lenient loading keeps both).
enum Slot {
    Ready(Handle),
    Broken(LuaError),
}

/// A plugin still loading on its owner thread.
struct Pending {
    name: String,
    file: PathBuf,
    ready: Receiver<Result<Vec<EventName>, LuaError>>,
    tx: Sender<Work>,
    budget: Duration,
}

/// Starts a plugin's owner thread, which starts the plugin's host process and then serves
/// its queue.
fn start(spec: PluginSpec) -> Result<Pending, LuaError> {
    let (tx, rx) = crossbeam_channel::bounded::<Work>(QUEUE_SIZE);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let name = spec.name.clone();
    let file = spec.file.clone();
    let budget = spec.budget;
    let mut runner = Runner::new(spec, HostProgram::current());
    thread::Builder::new()
        .name(format!("lua:{name}"))
        .spawn(move || match runner.first_start() {
            Ok(handled) => {
                let _ = ready_tx.send(Ok(handled));
                drop(ready_tx);
                for work in rx.iter() {
                    runner.serve_one(work);
                }
                runner.stop();
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| LuaError::Plugin {
            plugin: name.clone(),
            file: file.clone(),
            line: None,
            message: format!("cannot start its thread: {e}"),
        })?;
    Ok(Pending {
        name,
        file,
        ready: ready_rx,
        tx,
        budget,
    })
}

impl Pending {
    fn wait(self) -> Result<Handle, LuaError> {
        let fail = |message: String| LuaError::Plugin {
            plugin: self.name.clone(),
            file: self.file.clone(),
            line: None,
            message,
        };
        // The owner thread answers once the process runs and then within the load budget
        // plus its grace (it kills a host that does not).
        let wait = host::START_WAIT + self.budget + GRACE * 2;
        match self.ready.recv_timeout(wait) {
            Ok(Ok(handled)) => Ok(Handle {
                name: self.name.clone(),
                tx: self.tx,
                handled,
                dropped: AtomicU64::new(0),
                budget: self.budget,
            }),
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Err(fail(format!(
                "did not finish loading within {}",
                humantime::format_duration(wait)
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(fail("its thread died while loading".into()))
            }
        }
    }
}

/// Restart delay after `failures` failed starts or calls in a row: none after the first
/// (a plugin killed for one slow event is back for the next), then growing, so a plugin
/// that dies at every start cannot make the daemon fork without pause.
fn restart_delay(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => (RESTART_DELAY_FIRST * 2u32.saturating_pow(n.min(16) - 2)).min(RESTART_DELAY_MAX),
    }
}

/// The owner thread's side of one plugin: its host process (started again after a kill or
/// a crash) and what happened to the last one.
struct Runner {
    spec: PluginSpec,
    program: HostProgram,
    host: Option<Host>,
    /// Failed starts or calls in a row.
    failures: u32,
    /// No new host before this.
    retry_at: Option<Instant>,
    /// Why the last host went away, for events refused while waiting to restart.
    last_failure: String,
}

impl Runner {
    fn new(spec: PluginSpec, program: HostProgram) -> Runner {
        Runner {
            spec,
            program,
            host: None,
            failures: 0,
            retry_at: None,
            last_failure: String::new(),
        }
    }

    fn error(&self, message: String) -> LuaError {
        LuaError::Plugin {
            plugin: self.spec.name.clone(),
            file: self.spec.file.clone(),
            line: None,
            message,
        }
    }

    /// The first start, when the generation is built: its error is the plugin's load error.
    fn first_start(&mut self) -> Result<Vec<EventName>, LuaError> {
        match Host::start(&self.program, &self.spec, self.spec.budget + GRACE) {
            Ok(Ok((host, handled))) => {
                self.host = Some(host);
                Ok(handled)
            }
            Ok(Err(e)) => Err(e),
            Err(f) => Err(self.error(self.failure_text(&f, "loading"))),
        }
    }

    fn failure_text(&self, f: &HostFailure, during: &str) -> String {
        match f {
            HostFailure::Timeout => format!(
                "exceeded its {} budget in {during}; plugin process killed, restarted for \
                 the next event",
                humantime::format_duration(self.spec.budget)
            ),
            HostFailure::Died(why) => {
                format!("{why} during {during}; restarted for the next event")
            }
            HostFailure::Spawn(why) => format!("cannot start its plugin process: {why}"),
        }
    }

    /// Counts a failure (delaying the next start), logs it and returns it as the plugin's
    /// error.
    fn failed(&mut self, message: String) -> LuaError {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + restart_delay(self.failures));
        log::warn!(target: "portsentry::lua", "lua:{}: {message}", self.spec.name);
        self.last_failure = message.clone();
        self.error(message)
    }

    /// A running host, started again if the last one is gone and its restart delay passed.
    fn host(&mut self, during: &str) -> Result<&mut Host, LuaError> {
        if self.host.is_none() {
            if let Some(at) = self.retry_at
                && Instant::now() < at
            {
                let left = at.saturating_duration_since(Instant::now());
                return Err(self.error(format!(
                    "not run: its plugin process is being restarted (in {}) after: {}",
                    humantime::format_duration(Duration::from_millis(
                        u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
                    )),
                    self.last_failure
                )));
            }
            match Host::start(&self.program, &self.spec, self.spec.budget + GRACE) {
                Ok(Ok((host, _handled))) => self.host = Some(host),
                Ok(Err(e)) => {
                    return Err(
                        self.failed(format!("could not load it again to run {during}: {e}"))
                    );
                }
                Err(f) => {
                    let text = self.failure_text(&f, &format!("restarting to run {during}"));
                    return Err(self.failed(text));
                }
            }
        }
        let missing = self.error("its plugin process is not running".into());
        self.host.as_mut().ok_or(missing)
    }

    /// Runs one event in the plugin's process, killing it when it overruns its budget.
    fn run(&mut self, event: &EventData) -> CallReport {
        let during = format!(
            "the {} handler for {}",
            event.name.as_str(),
            crate::record::target_text(&event.target)
        );
        let started = Instant::now();
        let run_for = self.spec.budget + GRACE;
        let wire = event.to_wire();
        let failed = |e: LuaError| CallReport {
            outcome: CallOutcome::Failed(e),
            trace: Vec::new(),
            elapsed: started.elapsed(),
        };
        let result = match self.host(&during) {
            // The budget counts from now: a restart just before is not the event's time.
            Ok(host) => host.call(&wire, Instant::now() + run_for),
            Err(e) => return failed(e),
        };
        match result {
            Ok((report, retiring)) => {
                self.failures = 0;
                if retiring && let Some(host) = self.host.take() {
                    host.finish();
                }
                report
            }
            Err(f) => {
                self.host = None;
                let text = self.failure_text(&f, &during);
                failed(self.failed(text))
            }
        }
    }

    /// Handles one work item; a failed alert is logged here since nobody waits for it.
    fn serve_one(&mut self, work: Work) {
        match work {
            Work::Event {
                event,
                reply,
                start_by,
            } => {
                if let Some(deadline) = start_by
                    && Instant::now() > deadline
                {
                    if let Some(r) = reply {
                        let _ = r.send(CallReport {
                            outcome: CallOutcome::Expired,
                            trace: Vec::new(),
                            elapsed: Duration::ZERO,
                        });
                    }
                    return;
                }
                let report = self.run(&event);
                match reply {
                    Some(r) => {
                        let _ = r.send(report);
                    }
                    None => {
                        if let CallOutcome::Failed(e) = &report.outcome {
                            log::warn!(
                                target: "portsentry::lua",
                                "{e} ({} handler skipped for {})",
                                event.name.as_str(),
                                crate::record::target_text(&event.target)
                            );
                        }
                    }
                }
            }
            Work::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    /// The plugin is no longer used: its process ends.
    fn stop(&mut self) {
        if let Some(host) = self.host.take() {
            host.finish();
        }
    }
}

struct Inner {
    order: Vec<String>,
    plugins: BTreeMap<String, Arc<Slot>>,
}

/// The Lua plugins of one config generation. Cheap to clone; the owner threads live as long
/// as a clone or a responder made from it does.
#[derive(Clone)]
pub struct LuaPlugins {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LuaPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaPlugins")
            .field("order", &self.inner.order)
            .finish()
    }
}

impl LuaPlugins {
    /// No plugin at all (`LUA_RESPONDERS` empty): no thread, nothing to call.
    pub fn none() -> LuaPlugins {
        LuaPlugins {
            inner: Arc::new(Inner {
                order: Vec::new(),
                plugins: BTreeMap::new(),
            }),
        }
    }

    /// The running plugins of a generation (its `LUA_RESPONDERS`). Any plugin that fails to
    /// load is a config error naming file and line, at start, reload and `--check-config`
    /// alike: the start is refused (a security daemon must not run without a responder it
    /// was told to use), a reload keeps the previous plugins. Warnings: none today; the
    /// slot keeps the signature of [`crate::generation::Built`].
    pub fn for_generation(
        generation: &Generation,
    ) -> Result<(LuaPlugins, Vec<ConfigWarning>), ConfigErrors> {
        let config = &generation.config;
        let as_error = |e: &LuaError| {
            let (file, line) = e.location(config);
            ConfigError {
                file,
                line,
                message: e.to_string(),
            }
        };
        let (lua, errors) =
            LuaPlugins::load_lenient(config).map_err(|e| ConfigErrors(vec![as_error(&e)]))?;
        if errors.is_empty() {
            return Ok((lua, Vec::new()));
        }
        Err(ConfigErrors(errors.iter().map(as_error).collect()))
    }

    /// Loads every plugin in `LUA_RESPONDERS`; the first failure (in that order) is returned,
    /// so a reload can keep the previous generation and say why.
    pub fn load(config: &Config) -> Result<LuaPlugins, LuaError> {
        let (plugins, errors) = LuaPlugins::load_lenient(config)?;
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(plugins),
        }
    }

    /// Loads what can be loaded: a broken plugin is reported and its responder answers
    /// `Outcome::Failed`, while the others work. Only malformed `LUA_*` settings fail.
    pub fn load_lenient(config: &Config) -> Result<(LuaPlugins, Vec<LuaError>), LuaError> {
        let (budget, memory) = limits(config)?;
        let mut pending = Vec::new();
        let mut plugins = BTreeMap::new();
        let mut errors = Vec::new();
        for name in &config.lua_responders {
            if plugins.contains_key(name) || pending.iter().any(|(n, _)| n == name) {
                continue;
            }
            if !valid_plugin_name(name) {
                let e = LuaError::Plugin {
                    plugin: name.clone(),
                    file: config.plugin_dir.clone(),
                    line: None,
                    message: "LUA_RESPONDERS: a plugin name is letters, digits, '_' and '-' \
                              (the file name without .lua)"
                        .into(),
                };
                errors.push(e.clone());
                plugins.insert(name.clone(), Arc::new(Slot::Broken(e)));
                continue;
            }
            match start(daemon_spec(config, name, budget, memory)) {
                Ok(p) => pending.push((name.clone(), Ok(p))),
                Err(e) => pending.push((name.clone(), Err(e))),
            }
        }
        for (name, p) in pending {
            let slot = match p.and_then(Pending::wait) {
                Ok(h) => Slot::Ready(h),
                Err(e) => {
                    errors.push(e.clone());
                    Slot::Broken(e)
                }
            };
            plugins.insert(name, Arc::new(slot));
        }
        // Report errors in LUA_RESPONDERS order.
        errors.sort_by_key(|e| {
            config
                .lua_responders
                .iter()
                .position(|n| Some(n.as_str()) == e.plugin())
        });
        let loaded = LuaPlugins {
            inner: Arc::new(Inner {
                order: config.lua_responders.clone(),
                plugins,
            }),
        };
        for w in loaded.undo_warnings(config) {
            log::warn!(target: "portsentry::lua", "{w}");
        }
        Ok((loaded, errors))
    }

    /// With `BLOCK_TIMEOUT` set, one warning per loaded plugin that blocks but registers no
    /// `unblock` handler: what it does to a host stays when the block ends. Logged at load.
    pub fn undo_warnings(&self, config: &Config) -> Vec<ConfigWarning> {
        if config.block_timeout.is_none() {
            return Vec::new();
        }
        self.inner
            .order
            .iter()
            .filter_map(|name| match self.inner.plugins.get(name).map(|s| &**s) {
                Some(Slot::Ready(h))
                    if h.handles(EventName::Block) && !h.handles(EventName::Unblock) =>
                {
                    Some(ConfigWarning {
                        file: config.plugin_dir.join(format!("{name}.lua")),
                        line: 0,
                        message: format!(
                            "lua:{name}: blocks that expire or are unblocked keep what this \
                             plugin did (it registers no \"unblock\" handler)"
                        ),
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// Runs `plugin`'s `unblock` handlers for the block `ctx` describes, waiting (within the
    /// plugin's budget) for them to finish. `Ok` says what was done (the handler's returned
    /// string, or the commands it ran); `Err` why the block may still be in force.
    pub fn unblock(
        &self,
        plugin: &str,
        ctx: &ResponseContext<'_>,
        reason: UnblockReason,
    ) -> Result<String, String> {
        let responder = format!("lua:{plugin}");
        let handle = match self.inner.plugins.get(plugin).map(|s| &**s) {
            Some(Slot::Ready(h)) => h,
            Some(Slot::Broken(e)) => {
                return Err(format!(
                    "{e} (plugin not loaded, its unblock handler cannot run)"
                ));
            }
            None => {
                return Err(format!(
                    "{responder}: the plugin is not loaded (no longer in LUA_RESPONDERS?), \
                     so its unblock handler cannot run"
                ));
            }
        };
        if !handle.handles(EventName::Unblock) {
            return Err(format!(
                "{responder}: the plugin no longer registers an unblock handler"
            ));
        }
        let report = handle.call(EventData::unblock(ctx, reason))?;
        match &report.outcome {
            CallOutcome::Done(Some(detail)) => Ok(format!("{responder}: {detail}")),
            CallOutcome::Done(None) => {
                let cmds = commands_run(&report);
                Ok(if cmds.is_empty() {
                    format!("{responder}: unblock handler ran")
                } else {
                    format!("{responder}: {}", cmds.join("; "))
                })
            }
            CallOutcome::NoHandler => Err(format!("{responder} has no unblock handler")),
            CallOutcome::Veto(why) => Err(format!(
                "{responder}: the unblock handler returned false{}",
                why.as_ref().map(|w| format!(": {w}")).unwrap_or_default()
            )),
            CallOutcome::Failed(e) => Err(e.to_string()),
            CallOutcome::Expired => Err(format!(
                "{responder}: the unblock waited in the queue past its budget and was not run"
            )),
        }
    }

    /// Queues the `alert` event for every plugin that handles it. Never blocks: when a
    /// plugin's queue is full the event is dropped for that plugin and counted.
    pub fn on_alert(&self, ctx: &ResponseContext<'_>) {
        let mut event = None;
        for slot in self.inner.plugins.values() {
            let Slot::Ready(h) = &**slot else { continue };
            if !h.handles(EventName::Alert) {
                continue;
            }
            let ev = event
                .get_or_insert_with(|| Arc::new(EventData::from_context(EventName::Alert, ctx)));
            let work = Work::Event {
                event: Arc::clone(ev),
                reply: None,
                start_by: None,
            };
            match h.tx.try_send(work) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    let n = h.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n % 1000 == 0 {
                        log::warn!(
                            target: "portsentry::lua",
                            "lua:{}: busy, alert for {} dropped ({n} dropped so far)",
                            h.name,
                            ctx.target_text()
                        );
                    }
                }
            }
        }
    }

    /// One responder per `LUA_RESPONDERS` entry, in order.
    pub fn responders(&self) -> Vec<Box<dyn Responder>> {
        self.inner
            .order
            .iter()
            .filter_map(|name| {
                let slot = self.inner.plugins.get(name)?;
                Some(Box::new(LuaResponder {
                    name: name.clone(),
                    slot: Arc::clone(slot),
                }) as Box<dyn Responder>)
            })
            .collect()
    }

    /// Plugin names in `LUA_RESPONDERS` order.
    pub fn names(&self) -> &[String] {
        &self.inner.order
    }

    /// Alerts dropped so far because a plugin's queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner
            .plugins
            .values()
            .map(|s| match &**s {
                Slot::Ready(h) => h.dropped.load(Ordering::Relaxed),
                Slot::Broken(_) => 0,
            })
            .sum()
    }

    /// Waits until every event queued so far has been handled; false on timeout. For tests,
    /// `--test-plugin` and an orderly shutdown.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut waits = Vec::new();
        for slot in self.inner.plugins.values() {
            let Slot::Ready(h) = &**slot else { continue };
            let (tx, rx) = crossbeam_channel::bounded(1);
            let left = deadline.saturating_duration_since(Instant::now());
            if h.tx.send_timeout(Work::Flush(tx), left).is_err() {
                return false;
            }
            waits.push(rx);
        }
        waits.into_iter().all(|rx| {
            let left = deadline.saturating_duration_since(Instant::now());
            rx.recv_timeout(left).is_ok()
        })
    }
}

/// The commands a call ran, in order, for block and unblock details.
fn commands_run(report: &CallReport) -> Vec<&str> {
    report
        .trace
        .iter()
        .filter_map(|t| match t {
            TraceEntry::Exec(r) => Some(r.command.as_str()),
            _ => None,
        })
        .collect()
}

/// Turns a `block` call's report into a responder outcome. `undoable`: the plugin registers
/// an `unblock` handler, so the block is recorded as undone by it.
fn block_outcome(plugin: &str, report: &CallReport, undoable: bool) -> Outcome {
    let responder = format!("lua:{plugin}");
    let undo = if undoable {
        Undo::Lua {
            plugin: plugin.to_string(),
        }
    } else {
        Undo::Impossible {
            why: format!("{responder} registers no unblock handler"),
        }
    };
    match &report.outcome {
        CallOutcome::NoHandler => Outcome::Skipped(format!("{responder} has no block handler")),
        CallOutcome::Done(Some(detail)) => Outcome::Done(Action {
            responder,
            detail: detail.clone(),
            undo,
        }),
        CallOutcome::Done(None) => {
            let cmds = commands_run(report);
            if cmds.is_empty() {
                Outcome::Skipped(format!("{responder}: the block handler took no action"))
            } else {
                let detail = cmds.join("; ");
                Outcome::Done(Action {
                    responder,
                    detail,
                    undo,
                })
            }
        }
        CallOutcome::Veto(reason) => Outcome::Veto(match reason {
            Some(r) => format!("{responder}: {r}"),
            None => format!("{responder} vetoed the block"),
        }),
        CallOutcome::Failed(e) => Outcome::Failed(e.to_string()),
        CallOutcome::Expired => Outcome::Failed(format!(
            "{responder}: the block waited in the queue past its budget and was not run"
        )),
    }
}

/// A Lua plugin acting as a responder: runs the plugin's `block` handlers.
pub struct LuaResponder {
    name: String,
    slot: Arc<Slot>,
}

impl Responder for LuaResponder {
    fn name(&self) -> String {
        format!("lua:{}", self.name)
    }

    fn respond(&mut self, ctx: &ResponseContext<'_>) -> Outcome {
        match &*self.slot {
            Slot::Broken(e) => Outcome::Failed(format!("{e} (plugin not loaded)")),
            Slot::Ready(h) => {
                if !h.handles(EventName::Block) {
                    return Outcome::Skipped(format!("lua:{} has no block handler", self.name));
                }
                match h.call(EventData::from_context(EventName::Block, ctx)) {
                    Ok(report) => block_outcome(&self.name, &report, h.handles(EventName::Unblock)),
                    Err(msg) => Outcome::Failed(msg),
                }
            }
        }
    }
}

/// Loads one plugin file the way the daemon would, for `--test-plugin`.
fn load_file(path: &Path, config: &Config, dry_run: bool) -> Result<(String, Handle), LuaError> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |message: String| LuaError::Plugin {
        plugin: name.clone(),
        file: path.to_path_buf(),
        line: None,
        message,
    };
    if !valid_plugin_name(&name) {
        return Err(fail(
            "a plugin file is named <name>.lua, the name being letters, digits, '_' and '-'".into(),
        ));
    }
    let (budget, memory) = limits(config)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let spec = PluginSpec {
        name: name.clone(),
        file: path.to_path_buf(),
        search_dirs: vec![config.lua_lib_dir.clone(), dir],
        settings: plugin_settings(config, &name),
        budget,
        memory_limit: memory,
        dry_run,
    };
    let handle = start(spec)?.wait()?;
    Ok((name, handle))
}

#[cfg(test)]
mod tests;
