//! One plugin's sandboxed Lua state: built, loaded and called only in the plugin's host
//! process ([`super::host`]).
//!
//! The sandbox is layered: only safe standard libraries are opened; the base library's
//! loaders and `string.dump` are removed; files are loaded as text only; a global hook
//! (it reaches coroutines too) enforces a wall-clock budget per call; a memory limit caps
//! the state; every way of catching an error re-raises a budget error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use serde::{Deserialize, Serialize};

use super::event::{EventName, LuaEvent};
use super::sandbox::{PluginSpec, Shared, TraceEntry, clip, memory_message, new_env, read_source};
use super::{LuaError, api};

/// Instructions between two budget checks: small enough to stop a loop within microseconds,
/// large enough that the hook costs about nothing.
const HOOK_EVERY: u32 = 1000;

/// Longest detail or veto reason kept from a handler's return value.
const MAX_DETAIL: usize = 1000;

/// Registry slot of the `event name -> {handlers}` table.
const HANDLERS_KEY: &str = "portsentry.handlers";

/// How one event dispatch ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        let shared = Arc::new(Shared::new(spec));
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
        state.shared.loaded();
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
    pub fn dispatch(&self, event: &LuaEvent) -> CallReport {
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
        let mut outcome = self.run_handlers(&handlers, event);
        if self.shared.out_of_memory() && !matches!(outcome, CallOutcome::Failed(_)) {
            // The plugin caught its memory error somewhere the wrappers could not re-raise
            // it; the call still fails.
            outcome = CallOutcome::Failed(LuaError::Plugin {
                plugin: self.name.clone(),
                file: self.file.clone(),
                line: None,
                message: self.shared.memory_message(),
            });
        }
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

    fn run_handlers(&self, handlers: &[Function], event: &LuaEvent) -> CallOutcome {
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
                let deadline = hook_shared.deadline();
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
        // What pcall, xpcall, coroutine.resume and coroutine.close return passes through
        // here: a caught memory error is noted so the call fails whatever the plugin does
        // next, and a spent budget or memory limit is raised again.
        let budget_check = lua.create_function(move |_, values: MultiValue| {
            if matches!(values.front(), Some(Value::Boolean(false)))
                && values.get(1).is_some_and(is_memory_error)
            {
                check_shared.memory_exhausted();
            }
            if check_shared.exceeded() {
                Err(check_shared.budget_error(""))
            } else if check_shared.out_of_memory() {
                Err(mlua::Error::RuntimeError(check_shared.memory_message()))
            } else {
                Ok(values)
            }
        })?;
        // xpcall's message handler sees the error first: note a memory error there too, and
        // tell the prelude not to run the plugin's handler once the call is doomed.
        let spent_shared = Arc::clone(&self.shared);
        let budget_spent = lua.create_function(move |_, err: Value| {
            if is_memory_error(&err) {
                spent_shared.memory_exhausted();
            }
            Ok(spent_shared.exceeded() || spent_shared.out_of_memory())
        })?;
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
            && let Some(p) = self.shared.chunk_ending_with(tail)
        {
            return p;
        }
        PathBuf::from(shown)
    }
}

/// True for the error value Lua gives a protected call that ran out of memory: its fixed
/// `"not enough memory"` string, or an mlua memory error raised from Rust.
fn is_memory_error(value: &Value) -> bool {
    fn memory(e: &mlua::Error) -> bool {
        match e {
            mlua::Error::MemoryError(_) => true,
            mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
                memory(cause)
            }
            _ => false,
        }
    }
    match value {
        Value::String(s) => s.as_bytes().as_ref() == b"not enough memory",
        Value::Error(e) => memory(e),
        _ => false,
    }
}

/// The innermost message of an error, without mlua's decorations and traceback.
fn root_message(err: &mlua::Error, memory_limit: usize) -> String {
    use mlua::Error as E;
    let text = match err {
        E::CallbackError { cause, .. } => return root_message(cause, memory_limit),
        E::WithContext { cause, .. } => return root_message(cause, memory_limit),
        E::RuntimeError(m) => m.clone(),
        E::SyntaxError { message, .. } => message.clone(),
        E::MemoryError(_) => memory_message(memory_limit),
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
