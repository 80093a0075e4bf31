//! Lua responders: plugins that block hosts (nftables, iptables), notify (mail, JSON log)
//! or veto a block (allow-lists), written in sandboxed Lua.
//!
//! Each plugin gets its own Lua state on its own owner thread; work arrives over a bounded
//! crossbeam channel, so the detection path never waits on Lua and a plugin that hangs in C
//! code stalls only itself. [`LuaPlugins::load`] builds every plugin named by
//! `LUA_RESPONDERS` from a [`Config`]; [`LuaPlugins::on_alert`] queues the `alert` event
//! (dropping and counting when a queue is full); [`LuaPlugins::responders`] gives one
//! [`Responder`] per plugin whose `respond` runs the `block` event and waits, bounded by
//! the call budget, for its result; [`LuaPlugins::unblock`] runs a plugin's `unblock` event
//! the same way when one of its blocks ends. Dropping the last handle (and the responders) lets each
//! owner thread finish its queue and exit; a reload simply builds a new `LuaPlugins`.
//!
//! The plugin API is documented in `lua/README.md`.

mod api;
mod event;
pub mod exec;
mod plugin_test;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};

use crate::config::build::{self, valid_plugin_name};
use crate::config::{Config, ConfigWarning};
use crate::respond::UnblockReason;
use crate::respond::{Action, Outcome, Responder, ResponseContext, Undo};

pub use event::{EventData, EventName};
pub use plugin_test::{
    EXIT_HANDLER_FAILED, EXIT_LOAD_FAILED, EXIT_OK, EXIT_TIMED_OUT, TestOptions, apply_settings,
    test_plugin, test_plugin_with, watchdog_limit,
};
pub use state::{CallOutcome, CallReport, TraceEntry};

use state::{PluginSpec, PluginState};

/// `LUA_CALL_TIMEOUT` default: wall-clock budget of one event in one plugin.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `LUA_MEMORY_LIMIT` default: memory of one plugin's Lua state.
pub const DEFAULT_MEMORY_LIMIT: usize = 32 * 1024 * 1024;
/// Events waiting per plugin before new alerts are dropped.
pub const QUEUE_SIZE: usize = 256;
/// Extra wait on top of the budget, for a reply to travel back.
const GRACE: Duration = Duration::from_secs(1);

/// Why a plugin or the Lua settings could not be used. Plugin errors name the plugin and
/// the file and line where things went wrong (which may be a library file it required).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// The longest one call of a Lua responder or `unblock` handler can keep the calling worker:
/// the wait for room in the plugin's queue, then for its report (`Handle::call`). The
/// watchdog's limit for a Lua step ([`crate::respond::pool::step_limit`]).
pub fn longest_call(config: &Config) -> Duration {
    let budget = limits(config).map_or(DEFAULT_CALL_TIMEOUT, |(budget, _)| budget);
    budget * 3 + GRACE
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
    /// Work items the owner thread has finished; it stops moving when the thread is stuck.
    progress: Arc<AtomicU64>,
    /// `progress` when a call last went unanswered (`NOT_STUCK` otherwise): while it has
    /// not moved, later calls fail at once instead of each waiting the whole budget.
    stuck_at: AtomicU64,
}

const NOT_STUCK: u64 = u64::MAX;

impl Handle {
    fn handles(&self, ev: EventName) -> bool {
        self.handled.contains(&ev)
    }

    /// Sends one event and waits for its report, bounded by the budget (queue wait and run).
    fn call(&self, event: EventData) -> Result<CallReport, String> {
        let stuck_at = self.stuck_at.load(Ordering::Relaxed);
        if stuck_at != NOT_STUCK {
            if self.progress.load(Ordering::Relaxed) == stuck_at {
                return Err(format!(
                    "lua:{}: still busy with an earlier event that never finished; not run",
                    self.name
                ));
            }
            self.stuck_at.store(NOT_STUCK, Ordering::Relaxed);
        }
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
        let wait = self.budget * 2 + GRACE;
        rrx.recv_timeout(wait).map_err(|e| match e {
            RecvTimeoutError::Timeout => {
                self.stuck_at
                    .store(self.progress.load(Ordering::Relaxed), Ordering::Relaxed);
                format!(
                    "lua:{}: no answer within {} (stuck in a C function?)",
                    self.name,
                    humantime::format_duration(wait)
                )
            }
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
    progress: Arc<AtomicU64>,
}

/// Starts a plugin's owner thread, which builds the state and then serves its queue.
fn start(spec: PluginSpec) -> Result<Pending, LuaError> {
    let (tx, rx) = crossbeam_channel::bounded::<Work>(QUEUE_SIZE);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let name = spec.name.clone();
    let file = spec.file.clone();
    let budget = spec.budget;
    let progress = Arc::new(AtomicU64::new(0));
    let owner_progress = Arc::clone(&progress);
    thread::Builder::new()
        .name(format!("lua:{name}"))
        .spawn(move || match PluginState::load(&spec) {
            Ok(state) => {
                let _ = ready_tx.send(Ok(state.handled()));
                drop(ready_tx);
                serve(&state, &rx, &owner_progress);
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
        progress,
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
        match self.ready.recv_timeout(self.budget + GRACE) {
            Ok(Ok(handled)) => Ok(Handle {
                name: self.name.clone(),
                tx: self.tx,
                handled,
                dropped: AtomicU64::new(0),
                budget: self.budget,
                progress: self.progress,
                stuck_at: AtomicU64::new(NOT_STUCK),
            }),
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Err(fail(format!(
                "did not finish loading within {}",
                humantime::format_duration(self.budget + GRACE)
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(fail("its thread died while loading".into()))
            }
        }
    }
}

/// The owner thread's loop: runs until every sender is gone and the queue is drained.
fn serve(state: &PluginState, rx: &Receiver<Work>, progress: &AtomicU64) {
    for work in rx.iter() {
        serve_one(state, work);
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// Handles one work item; a failed alert is logged here since nobody waits for it.
fn serve_one(state: &PluginState, work: Work) {
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
            let report = state.dispatch(&event);
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
