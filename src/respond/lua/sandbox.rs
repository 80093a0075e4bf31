//! The state shared between a plugin's Lua state and the Rust functions it calls: limits,
//! the current call's deadline, counters and trace. A leaf module: `api`, `event` and
//! `state` all use it and it uses none of them, so they form no cycle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mlua::{Lua, Table};
use serde::{Deserialize, Serialize};

use super::exec::ExecResult;

/// Largest plugin or library file we read; a plugin is code, not data.
const MAX_SOURCE: u64 = 1024 * 1024;

/// Log lines one call may write; a plugin logging in a loop must not flood the log.
pub(crate) const MAX_LOG_LINES: usize = 100;

/// Bytes one call may append through `append_line`.
pub(crate) const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// Output kept per stream in the trace (the plugin itself gets up to 64 KiB).
const TRACE_OUTPUT: usize = 4096;

/// Trace entries kept per call: a plugin logging in a loop must not grow it without bound.
const MAX_TRACE: usize = 1000;

/// Registry slot of the plugin's settings table (also `portsentry.config`).
pub(crate) const CONFIG_KEY: &str = "portsentry.config";

/// Everything needed to build one plugin state; plain data, so it can cross to the plugin's
/// host process. New fields get a `#[serde(default)]` so older hosts and tests keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `--test-plugin --dry-run`: `exec` and `append_line` are shown, not done.
    #[serde(default)]
    pub dry_run: bool,
}

/// Something a plugin did during a call, for `--test-plugin` and for block details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `--dry-run`: a line `portsentry.append_line` would have appended.
    WouldAppend {
        /// The configured file.
        path: PathBuf,
        /// The line, without its newline.
        line: String,
    },
}

/// Call state shared between the plugin state and the Rust functions the plugin calls.
/// Everything runs on one thread; the locks only satisfy `Send`.
pub(crate) struct Shared {
    pub plugin: String,
    pub budget: Duration,
    pub memory_limit: usize,
    pub settings: BTreeMap<String, String>,
    pub search_dirs: Vec<PathBuf>,
    /// `--test-plugin --dry-run`: `exec` and `append_line` are shown, not done.
    pub dry_run: bool,
    deadline: Mutex<Option<Instant>>,
    exceeded: AtomicBool,
    out_of_memory: AtomicBool,
    loading: AtomicBool,
    logged: AtomicUsize,
    appended: AtomicUsize,
    trace: Mutex<Vec<TraceEntry>>,
    chunks: Mutex<Vec<PathBuf>>,
}

pub(crate) use crate::sync::lock;

impl Shared {
    /// The shared state of a plugin about to be loaded (its main chunk counts as loading).
    pub fn new(spec: &PluginSpec) -> Shared {
        Shared {
            plugin: spec.name.clone(),
            budget: spec.budget,
            memory_limit: spec.memory_limit,
            settings: spec.settings.clone(),
            search_dirs: spec.search_dirs.clone(),
            dry_run: spec.dry_run,
            deadline: Mutex::new(None),
            exceeded: AtomicBool::new(false),
            out_of_memory: AtomicBool::new(false),
            loading: AtomicBool::new(true),
            logged: AtomicUsize::new(0),
            appended: AtomicUsize::new(0),
            trace: Mutex::new(Vec::new()),
            chunks: Mutex::new(vec![spec.file.clone()]),
        }
    }

    /// The end of the current call's budget; `None` between calls.
    pub fn deadline(&self) -> Option<Instant> {
        *lock(&self.deadline)
    }

    /// Time left in the current call; zero when none is running or it ran out.
    pub fn remaining(&self) -> Duration {
        match self.deadline() {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::ZERO,
        }
    }

    /// True while the plugin's main chunk runs (handlers may be registered only then).
    pub fn loading(&self) -> bool {
        self.loading.load(Ordering::Relaxed)
    }

    /// Ends the loading phase: from now on `portsentry.on` refuses.
    pub fn loaded(&self) {
        self.loading.store(false, Ordering::Relaxed);
    }

    /// Records what the plugin did.
    pub fn record(&self, mut entry: TraceEntry) {
        if let TraceEntry::Exec(r) = &mut entry {
            r.stdout = clip(std::mem::take(&mut r.stdout), TRACE_OUTPUT);
            r.stderr = clip(std::mem::take(&mut r.stderr), TRACE_OUTPUT);
        }
        let mut t = lock(&self.trace);
        if t.len() < MAX_TRACE {
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

    /// Marks the current call as having hit the memory limit, even if the plugin caught
    /// the error: the call fails whatever the handler does next.
    pub fn memory_exhausted(&self) {
        self.out_of_memory.store(true, Ordering::Relaxed);
    }

    /// True once the current call hit the memory limit.
    pub fn out_of_memory(&self) -> bool {
        self.out_of_memory.load(Ordering::Relaxed)
    }

    /// The message of a call that hit the memory limit.
    pub fn memory_message(&self) -> String {
        memory_message(self.memory_limit)
    }

    /// Remembers a file loaded into this state, to map Lua's shortened names back.
    pub fn add_chunk(&self, path: &Path) {
        lock(&self.chunks).push(path.to_path_buf());
    }

    /// The file among those loaded whose name ends with `tail`.
    pub fn chunk_ending_with(&self, tail: &str) -> Option<PathBuf> {
        lock(&self.chunks)
            .iter()
            .find(|p| p.to_string_lossy().ends_with(tail))
            .cloned()
    }

    /// Counts a log line of the current call and returns how many came before it.
    pub fn logged_so_far(&self) -> usize {
        self.logged.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts bytes about to be appended by the current call; false past the per-call cap.
    pub fn may_append(&self, bytes: usize) -> bool {
        self.appended.fetch_add(bytes, Ordering::Relaxed) + bytes <= MAX_APPEND_BYTES
    }

    /// Starts a call: fresh counters, trace and deadline.
    pub fn start_call(&self) {
        self.logged.store(0, Ordering::Relaxed);
        self.appended.store(0, Ordering::Relaxed);
        *lock(&self.deadline) = Some(Instant::now() + self.budget);
        self.exceeded.store(false, Ordering::Relaxed);
        self.out_of_memory.store(false, Ordering::Relaxed);
        lock(&self.trace).clear();
    }

    /// Ends a call and hands over its trace.
    pub fn end_call(&self) -> Vec<TraceEntry> {
        *lock(&self.deadline) = None;
        std::mem::take(&mut *lock(&self.trace))
    }
}

/// What a plugin that hit its memory limit is told, naming the setting.
pub(crate) fn memory_message(memory_limit: usize) -> String {
    format!(
        "out of memory: the plugin reached its limit of {} MiB (LUA_MEMORY_LIMIT)",
        memory_limit / (1024 * 1024)
    )
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
