//! One plugin's sandboxed Lua state: built, loaded and called only on its owner thread.
//!
//! The sandbox is layered: only safe standard libraries are opened; the base library's
//! loaders and `string.dump` are removed; files are loaded as text only; a global hook
//! (it reaches coroutines too) enforces a wall-clock budget per call; a memory limit caps
//! the state; every way of catching an error re-raises a budget error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};

use super::event::{EventData, EventName};
use super::exec::ExecResult;
use super::{LuaError, api};

/// Instructions between two budget checks: small enough to stop a loop within microseconds,
/// large enough that the hook costs about nothing.
const HOOK_EVERY: u32 = 1000;

/// Largest plugin or library file we read; a plugin is code, not data.
const MAX_SOURCE: u64 = 1024 * 1024;

/// Log lines one call may write; a plugin logging in a loop must not flood the log.
pub(crate) const MAX_LOG_LINES: usize = 100;

/// Bytes one call may append through `append_line`.
pub(crate) const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// Longest detail or veto reason kept from a handler's return value.
const MAX_DETAIL: usize = 1000;

/// Output kept per stream in the trace (the plugin itself gets up to 64 KiB).
const TRACE_OUTPUT: usize = 4096;

/// Registry slot of the `event name -> {handlers}` table.
const HANDLERS_KEY: &str = "portsentry.handlers";

/// Everything needed to build one plugin state; plain data so it can cross threads.
#[derive(Debug, Clone)]
pub(crate) struct PluginSpec {
    /// Plugin name (`nftables`), also the prefix of its settings (`NFTABLES_…`).
    pub name: String,
    /// The plugin's `.lua` file.
    pub file: PathBuf,
    /// Directories `require` searches, in order (the Lua library, then the plugin dir).
    pub search_dirs: Vec<PathBuf>,
    /// The plugin's settings: lower-case name without the prefix -> value.
    pub settings: BTreeMap<String, String>,
    /// Wall-clock budget of one call (loading counts as one).
    pub budget: Duration,
    /// Memory limit of the whole state, in bytes.
    pub memory_limit: usize,
}

/// Something a plugin did during a call, for `--test-plugin` and for block details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEntry {
    /// A program was run through `portsentry.exec`.
    Exec(ExecResult),
    /// A line was logged through `portsentry.log` or `print`.
    Log {
        /// `debug`, `info`, `warn` or `error`.
        level: String,
        /// The text, as logged after the plugin prefix.
        message: String,
    },
    /// A line was appended through `portsentry.append_line`.
    Append {
        /// The configured file.
        path: PathBuf,
        /// Bytes written, newline included.
        bytes: usize,
    },
}

/// Call state shared between the owner and the Rust functions the plugin calls. Everything
/// runs on the owner thread; the locks only satisfy `Send`.
pub(crate) struct Shared {
    pub plugin: String,
    pub budget: Duration,
    pub memory_limit: usize,
    pub settings: BTreeMap<String, String>,
    pub search_dirs: Vec<PathBuf>,
    deadline: Mutex<Option<Instant>>,
    exceeded: AtomicBool,
    loading: AtomicBool,
    logged: AtomicUsize,
    appended: AtomicUsize,
    trace: Mutex<Vec<TraceEntry>>,
    chunks: Mutex<Vec<PathBuf>>,
}

/// Locks a mutex, ignoring poisoning: the data is a plain value that stays consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Time left in the current call; zero when none is running or it ran out.
    pub fn remaining(&self) -> Duration {
        match *lock(&self.deadline) {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::ZERO,
        }
    }

    /// True while the plugin's main chunk runs (handlers may be registered only then).
    pub fn loading(&self) -> bool {
        self.loading.load(Ordering::Relaxed)
    }

    /// Records what the plugin did.
    pub fn record(&self, mut entry: TraceEntry) {
        if let TraceEntry::Exec(r) = &mut entry {
            r.stdout = clip(std::mem::take(&mut r.stdout), TRACE_OUTPUT);
            r.stderr = clip(std::mem::take(&mut r.stderr), TRACE_OUTPUT);
        }
        let mut t = lock(&self.trace);
        // A plugin logging in a loop must not grow the trace without bound.
        if t.len() < 1000 {
            t.push(entry);
        }
    }

    /// Marks the budget as spent and returns the error to raise.
    pub fn budget_error(&self, location: &str) -> mlua::Error {
        self.exceeded.store(true, Ordering::Relaxed);
        mlua::Error::RuntimeError(format!(
            "{location}time budget of {} exceeded (LUA_CALL_TIMEOUT)",
            humantime::format_duration(self.budget)
        ))
    }

    /// True once the current call ran out of time.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    /// Remembers a file loaded into this state, to map Lua's shortened names back.
    pub fn add_chunk(&self, path: &Path) {
        lock(&self.chunks).push(path.to_path_buf());
    }

    /// Counts a log line of the current call and returns how many came before it.
    pub fn logged_so_far(&self) -> usize {
        self.logged.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts bytes about to be appended by the current call; false past the per-call cap.
    pub fn may_append(&self, bytes: usize) -> bool {
        self.appended.fetch_add(bytes, Ordering::Relaxed) + bytes <= MAX_APPEND_BYTES
    }

    fn start_call(&self) {
        self.logged.store(0, Ordering::Relaxed);
        self.appended.store(0, Ordering::Relaxed);
        *lock(&self.deadline) = Some(Instant::now() + self.budget);
        self.exceeded.store(false, Ordering::Relaxed);
        lock(&self.trace).clear();
    }

    fn end_call(&self) -> Vec<TraceEntry> {
        *lock(&self.deadline) = None;
        std::mem::take(&mut *lock(&self.trace))
    }
}

/// How one event dispatch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The plugin registered no handler for this event.
    NoHandler,
    /// Every handler returned normally; the text is the last string a handler returned.
    Done(Option<String>),
    /// A handler returned `false`; the text is its second return value, if any.
    Veto(Option<String>),
    /// A handler raised, ran out of time or memory.
    Failed(LuaError),
    /// The request waited in the queue past its deadline and was not run.
    Expired,
}

/// What one dispatch did and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallReport {
    /// The result.
    pub outcome: CallOutcome,
    /// Commands, log lines and appends, in order.
    pub trace: Vec<TraceEntry>,
    /// Time spent in Lua (commands included).
    pub elapsed: Duration,
}

/// A loaded plugin: its Lua state and the registered handlers.
pub(crate) struct PluginState {
    lua: Lua,
    shared: Arc<Shared>,
    name: String,
    file: PathBuf,
}

impl PluginState {
    /// Builds the sandbox and runs the plugin's main chunk (which registers its handlers).
    pub fn load(spec: &PluginSpec) -> Result<PluginState, LuaError> {
        let fail = |line: Option<usize>, message: String| LuaError::Plugin {
            plugin: spec.name.clone(),
            file: spec.file.clone(),
            line,
            message,
        };
        let lua = Lua::new_with(
            StdLib::TABLE
                | StdLib::STRING
                | StdLib::MATH
                | StdLib::UTF8
                | StdLib::COROUTINE
                | StdLib::OS,
            LuaOptions::default(),
        )
        .map_err(|e| fail(None, format!("cannot create Lua state: {e}")))?;
        let shared = Arc::new(Shared {
            plugin: spec.name.clone(),
            budget: spec.budget,
            memory_limit: spec.memory_limit,
            settings: spec.settings.clone(),
            search_dirs: spec.search_dirs.clone(),
            deadline: Mutex::new(None),
            exceeded: AtomicBool::new(false),
            loading: AtomicBool::new(true),
            logged: AtomicUsize::new(0),
            appended: AtomicUsize::new(0),
            trace: Mutex::new(Vec::new()),
            chunks: Mutex::new(vec![spec.file.clone()]),
        });
        let state = PluginState {
            lua,
            shared,
            name: spec.name.clone(),
            file: spec.file.clone(),
        };
        state
            .sandbox(spec)
            .map_err(|e| fail(None, format!("cannot build sandbox: {e}")))?;

        let source = read_source(&spec.file).map_err(|m| fail(None, m))?;
        state.shared.start_call();
        let result = state
            .lua
            .load(source)
            .set_name(format!("@{}", spec.file.display()))
            .set_mode(ChunkMode::Text)
            .set_environment(state.new_env().map_err(|e| fail(None, e.to_string()))?)
            .exec();
        state.shared.end_call();
        state.shared.loading.store(false, Ordering::Relaxed);
        if let Err(e) = result {
            return Err(state.locate(&e, None));
        }
        Ok(state)
    }

    /// The event names this plugin has handlers for.
    pub fn handled(&self) -> Vec<EventName> {
        EventName::ALL
            .into_iter()
            .filter(|ev| self.handlers(*ev).map(|h| !h.is_empty()).unwrap_or(false))
            .collect()
    }

    fn handlers(&self, ev: EventName) -> mlua::Result<Vec<Function>> {
        let all: Table = self.lua.named_registry_value(HANDLERS_KEY)?;
        let list: Option<Table> = all.raw_get(ev.as_str())?;
        match list {
            Some(t) => t.sequence_values::<Function>().collect(),
            None => Ok(Vec::new()),
        }
    }

    /// Runs every handler of the event in registration order, within one budget.
    pub fn dispatch(&self, event: &EventData) -> CallReport {
        let started = Instant::now();
        let handlers = match self.handlers(event.name) {
            Ok(h) => h,
            Err(e) => {
                return CallReport {
                    outcome: CallOutcome::Failed(self.locate(&e, None)),
                    trace: Vec::new(),
                    elapsed: started.elapsed(),
                };
            }
        };
        if handlers.is_empty() {
            return CallReport {
                outcome: CallOutcome::NoHandler,
                trace: Vec::new(),
                elapsed: started.elapsed(),
            };
        }
        self.shared.start_call();
        let outcome = self.run_handlers(&handlers, event);
        let trace = self.shared.end_call();
        if matches!(outcome, CallOutcome::Failed(_)) {
            // Give back what a runaway handler allocated before the next event arrives.
            let _ = self.lua.gc_collect();
        }
        CallReport {
            outcome,
            trace,
            elapsed: started.elapsed(),
        }
    }

    fn run_handlers(&self, handlers: &[Function], event: &EventData) -> CallOutcome {
        let table = match event.to_lua(&self.lua) {
            Ok(t) => t,
            Err(e) => return CallOutcome::Failed(self.locate(&e, None)),
        };
        let mut detail = None;
        for h in handlers {
            match h.call::<MultiValue>(table.clone()) {
                Ok(values) => {
                    let mut it = values.into_iter();
                    match it.next() {
                        Some(Value::Boolean(false)) => {
                            let reason = match it.next() {
                                Some(Value::String(s)) => {
                                    Some(clip(s.to_string_lossy(), MAX_DETAIL))
                                }
                                _ => None,
                            };
                            return CallOutcome::Veto(reason);
                        }
                        Some(Value::String(s)) => {
                            detail = Some(clip(s.to_string_lossy(), MAX_DETAIL))
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    let info = h.info();
                    let defined = info
                        .source
                        .as_deref()
                        .and_then(|s| s.strip_prefix('@'))
                        .map(PathBuf::from)
                        .zip(info.line_defined);
                    return CallOutcome::Failed(self.locate(&e, defined));
                }
            }
        }
        CallOutcome::Done(detail)
    }

    /// A fresh environment table for a chunk: reads fall through to the sandbox globals,
    /// writes stay in the chunk's own table.
    pub fn new_env(&self) -> mlua::Result<Table> {
        new_env(&self.lua)
    }

    fn sandbox(&self, spec: &PluginSpec) -> mlua::Result<()> {
        let lua = &self.lua;
        lua.set_memory_limit(spec.memory_limit)?;
        let g = lua.globals();
        for name in [
            "load", "loadfile", "dofile", "require", "warn", "package", "debug", "io",
        ] {
            g.raw_set(name, Value::Nil)?;
        }
        let string: Table = g.get("string")?;
        string.raw_set("dump", Value::Nil)?;
        // os: only the clock functions; no execute, exit, getenv, remove, rename, tmpname.
        let os: Table = g.get("os")?;
        let safe_os = lua.create_table()?;
        for name in ["time", "clock", "date", "difftime"] {
            safe_os.raw_set(name, os.get::<Value>(name)?)?;
        }
        g.raw_set("os", safe_os)?;

        lua.set_named_registry_value(HANDLERS_KEY, lua.create_table()?)?;
        api::register(lua, &self.shared, &self.name, &self.file)?;

        let hook_shared = Arc::clone(&self.shared);
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_lua, debug| {
                let deadline = *lock(&hook_shared.deadline);
                match deadline {
                    Some(d) if Instant::now() < d => Ok(VmState::Continue),
                    _ => {
                        let src = debug.source();
                        let location = match (src.short_src, debug.current_line()) {
                            (Some(s), Some(l)) => format!("{s}:{l}: "),
                            _ => String::new(),
                        };
                        Err(hook_shared.budget_error(&location))
                    }
                }
            },
        )?;

        let check_shared = Arc::clone(&self.shared);
        let budget_check = lua.create_function(move |_, values: MultiValue| {
            if check_shared.exceeded() {
                Err(check_shared.budget_error(""))
            } else {
                Ok(values)
            }
        })?;
        let spent_shared = Arc::clone(&self.shared);
        let budget_spent = lua.create_function(move |_, ()| Ok(spent_shared.exceeded()))?;
        let raw_log = api::log_function(lua, &self.shared)?;
        self.shared.start_call();
        let result = lua
            .load(include_str!("prelude.lua"))
            .set_name("=portsentry prelude")
            .set_mode(ChunkMode::Text)
            .call::<()>((budget_check, budget_spent, raw_log));
        self.shared.end_call();
        result
    }

    /// Turns an mlua error into a [`LuaError`] naming the file and line it happened at: the
    /// position in the message when Lua put one there, else `fallback` (the handler's
    /// definition), else the plugin file.
    pub fn locate(&self, err: &mlua::Error, fallback: Option<(PathBuf, usize)>) -> LuaError {
        let mut message = root_message(err, self.shared.memory_limit);
        let mut file = self.file.clone();
        let mut line = None;
        if let Some((f, l, rest)) = split_location(&message) {
            file = self.resolve_chunk(f);
            line = Some(l);
            message = rest.to_string();
        } else if let Some(tb_loc) = traceback_location(err) {
            file = self.resolve_chunk(&tb_loc.0);
            line = Some(tb_loc.1);
        } else if let Some((f, l)) = fallback {
            file = self.resolve_chunk(&f.to_string_lossy());
            line = Some(l);
            message = format!("{message} (in the handler defined here)");
        }
        LuaError::Plugin {
            plugin: self.name.clone(),
            file,
            line,
            message,
        }
    }

    /// Maps a chunk name as Lua prints it (possibly `...tail` when long) to the file.
    fn resolve_chunk(&self, shown: &str) -> PathBuf {
        if let Some(tail) = shown.strip_prefix("...")
            && let Some(p) = lock(&self.shared.chunks)
                .iter()
                .find(|p| p.to_string_lossy().ends_with(tail))
        {
            return p.clone();
        }
        PathBuf::from(shown)
    }
}

/// Cuts text to at most `max` bytes, on a character boundary, marking the cut.
pub(crate) fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Reads a Lua source file, refusing binary chunks and oversized files.
pub(crate) fn read_source(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > MAX_SOURCE {
        return Err(format!(
            "file is {} bytes, larger than the {} bytes a plugin may be",
            meta.len(),
            MAX_SOURCE
        ));
    }
    let bytes = crate::config::read::read_regular(path, MAX_SOURCE, "plugin source")
        .map_err(|e| format!("cannot read: {}", e.reason()))?;
    if bytes.first() == Some(&0x1b) {
        return Err("binary (precompiled) chunks are not accepted; load the .lua source".into());
    }
    Ok(bytes)
}

/// A fresh environment table whose reads fall through to the sandbox globals.
pub(crate) fn new_env(lua: &Lua) -> mlua::Result<Table> {
    let env = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", lua.globals())?;
    env.set_metatable(Some(meta))?;
    Ok(env)
}

/// The innermost message of an error, without mlua's decorations and traceback.
fn root_message(err: &mlua::Error, memory_limit: usize) -> String {
    use mlua::Error as E;
    let text = match err {
        E::CallbackError { cause, .. } => return root_message(cause, memory_limit),
        E::WithContext { cause, .. } => return root_message(cause, memory_limit),
        E::RuntimeError(m) => m.clone(),
        E::SyntaxError { message, .. } => message.clone(),
        E::MemoryError(_) => format!(
            "out of memory: the plugin reached its limit of {} MiB (LUA_MEMORY_LIMIT)",
            memory_limit / (1024 * 1024)
        ),
        E::ExternalError(e) => e.to_string(),
        other => other.to_string(),
    };
    match text.find("\nstack traceback:") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Splits `file.lua:12: message` into its parts (Lua's standard error position prefix).
pub(crate) fn split_location(message: &str) -> Option<(&str, usize, &str)> {
    let first_line = message.lines().next()?;
    let mut search = 0;
    while let Some(rel) = first_line[search..].find(':') {
        let colon = search + rel;
        let after = &first_line[colon + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after.as_bytes().get(digits) == Some(&b':') {
            let file = first_line[..colon].trim_start();
            if file.ends_with(".lua") || file.ends_with(']') {
                let line = after[..digits].parse().ok()?;
                let rest = message[colon + 1 + digits + 1..].trim_start();
                return Some((file, line, rest));
            }
        }
        search = colon + 1;
    }
    None
}

/// The first Lua frame (`file.lua:12: in …`) of the innermost traceback, for errors raised
/// from Rust without a position.
fn traceback_location(err: &mlua::Error) -> Option<(String, usize)> {
    let mut tb = None;
    let mut e = err;
    while let mlua::Error::CallbackError { cause, traceback } = e {
        tb = Some(traceback.as_str());
        e = cause;
    }
    for line in tb?.lines() {
        let l = line.trim();
        if l.starts_with("[C]") || l.starts_with('[') {
            continue;
        }
        if let Some((file, n, _)) = split_location(l) {
            return Some((file.to_string(), n));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_location_reads_lua_error_positions() {
        assert_eq!(
            split_location("/etc/p/x.lua:12: attempt to index a nil value"),
            Some(("/etc/p/x.lua", 12, "attempt to index a nil value"))
        );
        assert_eq!(
            split_location("...long/path/x.lua:3: boom: with colons"),
            Some(("...long/path/x.lua", 3, "boom: with colons"))
        );
        assert_eq!(split_location("no position here: 12: x"), None);
    }
}
