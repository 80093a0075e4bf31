//! The `portsentry` table every plugin sees, and the sandbox's own `require`.
//!
//! Each function checks its arguments and raises errors that carry the caller's
//! `file:line:`, like Lua's own `luaL_error`, so a plugin author sees where it went wrong.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mlua::chunk::ChunkMode;
use mlua::{Function, Lua, LuaSerdeExt, Table, Value};

use super::event::EventName;
use super::exec::{self, ExecRequest};
use super::sandbox::{
    CONFIG_KEY, MAX_APPEND_BYTES, MAX_LOG_LINES, Shared, TraceEntry, clip, lock, new_env,
    read_source,
};

/// Registry slot of `require`'s cache.
const LOADED_KEY: &str = "portsentry.loaded";
/// Default `timeout` of `portsentry.exec`.
pub const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line `append_line` writes.
const MAX_LINE: usize = 64 * 1024;

/// The `file:line: ` of the Lua code calling the current Rust function, or nothing.
fn caller(lua: &Lua) -> String {
    lua.inspect_stack(1, |d| {
        let src = d.source();
        match (src.what, src.short_src, d.current_line()) {
            ("C", _, _) => String::new(),
            (_, Some(s), Some(l)) => format!("{s}:{l}: "),
            _ => String::new(),
        }
    })
    .unwrap_or_default()
}

/// An error raised at the caller's position.
fn raise(lua: &Lua, msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::RuntimeError(format!("{}{msg}", caller(lua)))
}

/// Lua value type name for messages.
fn type_name(v: &Value) -> &'static str {
    v.type_name()
}

/// Installs `portsentry` and `require` in the sandbox globals.
pub(crate) fn register(
    lua: &Lua,
    shared: &Arc<Shared>,
    name: &str,
    file: &Path,
) -> mlua::Result<()> {
    let ps = lua.create_table()?;
    ps.raw_set("version", env!("CARGO_PKG_VERSION"))?;

    let plugin = lua.create_table()?;
    plugin.raw_set("name", name)?;
    plugin.raw_set("file", file.to_string_lossy().into_owned())?;
    ps.raw_set("plugin", plugin)?;

    let config = lua.create_table()?;
    for (k, v) in &shared.settings {
        config.raw_set(k.as_str(), v.as_str())?;
    }
    lua.set_named_registry_value(CONFIG_KEY, config.clone())?;
    ps.raw_set("config", config)?;
    lua.set_named_registry_value(LOADED_KEY, lua.create_table()?)?;

    // Files `append_line` may write beyond the configured ones: the defaults the plugin
    // gave `portsentry.setting` for its `*file` settings the admin left unset.
    let default_files: Arc<Mutex<Vec<String>>> = Arc::default();
    ps.raw_set("on", on_function(lua, shared)?)?;
    ps.raw_set("exec", exec_function(lua, shared)?)?;
    ps.raw_set(
        "setting",
        setting_function(lua, shared, name, &default_files)?,
    )?;
    ps.raw_set(
        "append_line",
        append_function(lua, shared, name, &default_files)?,
    )?;
    ps.raw_set(
        "duration",
        lua.create_function(|lua, v: Value| {
            duration_seconds(&v)
                .map(seconds_value)
                .map_err(|m| raise(lua, format!("portsentry.duration: {m}")))
        })?,
    )?;
    ps.raw_set(
        "now",
        lua.create_function(|_, ()| {
            Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0))
        })?,
    )?;
    ps.raw_set("json", json_function(lua)?)?;
    ps.raw_set(
        "no_new_privs",
        lua.create_function(|_, ()| Ok(no_new_privs()))?,
    )?;
    ps.raw_set(
        "setid",
        lua.create_function(|lua, path: Value| {
            let Value::String(path) = &path else {
                return Err(raise(
                    lua,
                    format!(
                        "portsentry.setid: expected a path string, got {}",
                        type_name(&path)
                    ),
                ));
            };
            Ok(setid(Path::new(&*path.to_string_lossy())))
        })?,
    )?;
    lua.globals().raw_set("portsentry", ps)?;
    install_hints(lua)?;
    lua.globals()
        .raw_set("require", require_function(lua, shared)?)?;
    Ok(())
}

/// `portsentry.no_new_privs()`: whether this process (and so every program it runs) has
/// `no_new_privs` set, as under the systemd unit's `NoNewPrivileges=yes`: a setuid or setgid
/// program then runs without the identity its mode bits would give it.
fn no_new_privs() -> bool {
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointer and only reads the calling thread's flag.
    unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 }
}

/// `portsentry.setid(path)`: `"setuid"` or `"setgid"` when the file `path` names (symbolic
/// links followed) has that mode bit, `nil` otherwise or when it does not exist.
fn setid(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o4000 != 0 {
        Some("setuid")
    } else if mode & 0o2000 != 0 {
        Some("setgid")
    } else {
        None
    }
}

/// `raw_log(level, message)`: the Rust end of `portsentry.log.*` and `print`.
pub(crate) fn log_function(lua: &Lua, shared: &Arc<Shared>) -> mlua::Result<Function> {
    let shared = Arc::clone(shared);
    lua.create_function(move |_, (level, message): (String, String)| {
        let lvl = match level.as_str() {
            "debug" => log::Level::Debug,
            "warn" => log::Level::Warn,
            "error" => log::Level::Error,
            _ => log::Level::Info,
        };
        let n = shared.logged_so_far();
        if n < MAX_LOG_LINES {
            let message = clip(message, 4096);
            log::log!(target: "portsentry::lua", lvl, "lua:{}: {}", shared.plugin, message);
            shared.record(TraceEntry::Log { level, message });
        } else if n == MAX_LOG_LINES {
            log::warn!(
                target: "portsentry::lua",
                "lua:{}: more than {MAX_LOG_LINES} log lines in one event; the rest are dropped",
                shared.plugin
            );
        }
        Ok(())
    })
}

fn on_function(lua: &Lua, shared: &Arc<Shared>) -> mlua::Result<Function> {
    let shared = Arc::clone(shared);
    lua.create_function(move |lua, (event, handler): (Value, Value)| {
        if !shared.loading() {
            return Err(raise(
                lua,
                "portsentry.on: handlers can only be registered while the plugin loads",
            ));
        }
        let Value::String(ev) = &event else {
            return Err(raise(
                lua,
                format!(
                    "portsentry.on: event name must be a string, got {}",
                    type_name(&event)
                ),
            ));
        };
        let ev = ev.to_string_lossy();
        let Some(name) = EventName::from_name(&ev) else {
            return Err(raise(
                lua,
                format!(
                    "portsentry.on: unknown event '{ev}' \
                     (expected \"alert\", \"block\" or \"unblock\")"
                ),
            ));
        };
        let Value::Function(f) = handler else {
            return Err(raise(
                lua,
                format!(
                    "portsentry.on: handler must be a function, got {}",
                    type_name(&handler)
                ),
            ));
        };
        let all: Table = lua.named_registry_value("portsentry.handlers")?;
        let list = match all.raw_get::<Option<Table>>(name.as_str())? {
            Some(t) => t,
            None => {
                let t = lua.create_table()?;
                all.raw_set(name.as_str(), t.clone())?;
                t
            }
        };
        list.raw_push(f)?;
        Ok(())
    })
}

/// Parses a duration given as seconds (number) or text (`"5s"`, `"1h 30m"`).
pub(crate) fn duration_seconds(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Integer(i) if *i >= 0 => Ok(Duration::from_secs(i.unsigned_abs())),
        Value::Number(n) if n.is_finite() && *n >= 0.0 && *n < 1e12 => {
            Ok(Duration::from_secs_f64(*n))
        }
        Value::String(s) => {
            let text = s.to_string_lossy();
            let t = text.trim();
            if let Ok(n) = t.parse::<f64>()
                && n.is_finite()
                && (0.0..1e12).contains(&n)
            {
                return Ok(Duration::from_secs_f64(n));
            }
            humantime::parse_duration(t)
                .map_err(|e| format!("'{text}' is not a duration like \"30s\" or \"1h\": {e}"))
        }
        other => Err(format!(
            "expected a duration like \"30s\" or a number of seconds, got {}",
            match other {
                Value::Integer(_) | Value::Number(_) => "a negative or huge number",
                v => type_name(v),
            }
        )),
    }
}

/// Seconds as a Lua number: an integer when whole.
fn seconds_value(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::Integer(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    } else {
        Value::Number(d.as_secs_f64())
    }
}

fn exec_function(lua: &Lua, shared: &Arc<Shared>) -> mlua::Result<Function> {
    let shared = Arc::clone(shared);
    lua.create_function(move |lua, (spec, options): (Value, Value)| {
        let Value::Table(spec) = spec else {
            return Err(raise(
                lua,
                format!(
                    "portsentry.exec: expected a table {{\"program\", \"arg\", …, timeout = \"5s\"}}, got {}",
                    type_name(&spec)
                ),
            ));
        };
        let options = match options {
            Value::Nil => None,
            Value::Table(t) => Some(t),
            other => {
                return Err(raise(
                    lua,
                    format!(
                        "portsentry.exec: options must be a table, got {}",
                        type_name(&other)
                    ),
                ));
            }
        };
        let (mut req, check) = exec_request(&spec, options.as_ref())
            .map_err(|m| raise(lua, format!("portsentry.exec: {m}")))?;
        let remaining = shared.remaining();
        if remaining.is_zero() {
            return Err(shared.budget_error(&caller(lua)));
        }
        req.timeout = req.timeout.min(remaining);
        let result = if shared.dry_run {
            exec::dry_run(&req)
        } else {
            exec::run(&req)
        };
        log::debug!(
            target: "portsentry::lua",
            "lua:{}: exec {} -> {}",
            shared.plugin,
            result.command,
            result.describe()
        );
        shared.record(TraceEntry::Exec(result.clone()));
        if check && !result.ok() {
            let stderr = result.stderr.trim();
            let mut msg = format!("command `{}` failed: {}", result.command, result.describe());
            if !stderr.is_empty() {
                let short: String = stderr.chars().take(300).collect();
                msg.push_str(": ");
                msg.push_str(&short);
            }
            return Err(raise(lua, msg));
        }
        let t = lua.create_table()?;
        t.raw_set("ok", result.ok())?;
        t.raw_set("status", result.status)?;
        t.raw_set("signal", result.signal)?;
        t.raw_set("timed_out", result.timed_out)?;
        t.raw_set("stdout", lua.create_string(&result.stdout)?)?;
        t.raw_set("stderr", lua.create_string(&result.stderr)?)?;
        t.raw_set("command", result.command.as_str())?;
        t.raw_set("error", result.spawn_error.as_deref())?;
        Ok(t)
    })
}

/// Reads `{argv..., timeout=, stdin=, netns=, check=}` (options may also come in a second
/// table, which wins); the bool is `check`.
fn exec_request(spec: &Table, options: Option<&Table>) -> Result<(ExecRequest, bool), String> {
    let n = spec.raw_len();
    let mut argv = Vec::with_capacity(n);
    for i in 1..=n {
        let v: Value = spec.raw_get(i).map_err(|e| e.to_string())?;
        argv.push(match v {
            Value::String(s) => {
                let s = s
                    .to_str()
                    .map_err(|_| format!("argument {i} is not valid UTF-8"))?
                    .to_string();
                if s.contains('\0') {
                    return Err(format!("argument {i} contains a NUL byte"));
                }
                s
            }
            Value::Integer(x) => x.to_string(),
            Value::Number(x) => x.to_string(),
            other => {
                return Err(format!(
                    "argument {i} is a {}, expected a string",
                    type_name(&other)
                ));
            }
        });
    }
    if argv.is_empty() {
        return Err("no program given: the table's first element is the program".into());
    }
    let mut req = ExecRequest {
        argv,
        stdin: None,
        timeout: EXEC_DEFAULT_TIMEOUT,
        netns: None,
    };
    let mut check = false;
    let from_spec = spec.pairs::<Value, Value>().map(|p| (p, true));
    let from_options = options
        .into_iter()
        .flat_map(|t| t.pairs::<Value, Value>().map(|p| (p, false)));
    for (pair, in_spec) in from_spec.chain(from_options) {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let key = match &k {
            Value::Integer(i)
                if in_spec && *i >= 1 && usize::try_from(*i).is_ok_and(|i| i <= n) =>
            {
                continue;
            }
            Value::String(s) => s.to_string_lossy(),
            other => return Err(format!("unexpected key of type {}", type_name(other))),
        };
        match key.as_str() {
            "timeout" => {
                let d = duration_seconds(&v).map_err(|m| format!("timeout: {m}"))?;
                if d.is_zero() {
                    return Err("timeout: must be more than zero".into());
                }
                req.timeout = d;
            }
            "stdin" => match v {
                Value::String(s) => req.stdin = Some(s.as_bytes().to_vec()),
                Value::Nil => {}
                other => {
                    return Err(format!(
                        "stdin: expected a string, got {}",
                        type_name(&other)
                    ));
                }
            },
            "netns" => match v {
                Value::String(s) => {
                    let ns = s.to_string_lossy();
                    if ns.is_empty() {
                        continue;
                    }
                    if !exec::valid_netns(&ns) {
                        return Err(format!("netns: '{ns}' is not a network namespace name"));
                    }
                    req.netns = Some(ns);
                }
                Value::Nil => {}
                other => {
                    return Err(format!(
                        "netns: expected a string, got {}",
                        type_name(&other)
                    ));
                }
            },
            "check" => match v {
                Value::Boolean(b) => check = b,
                Value::Nil => {}
                other => {
                    return Err(format!(
                        "check: expected a boolean, got {}",
                        type_name(&other)
                    ));
                }
            },
            other => {
                return Err(format!(
                    "unknown option '{other}' (known: timeout, stdin, netns, check)"
                ));
            }
        }
    }
    Ok((req, check))
}

fn setting_function(
    lua: &Lua,
    shared: &Arc<Shared>,
    name: &str,
    default_files: &Arc<Mutex<Vec<String>>>,
) -> mlua::Result<Function> {
    let shared = Arc::clone(shared);
    let default_files = Arc::clone(default_files);
    let prefix = format!("{}_", super::setting_prefix(name).to_ascii_lowercase());
    lua.create_function(move |lua, (key, default): (Value, Value)| {
        let Value::String(key) = &key else {
            return Err(raise(
                lua,
                format!(
                    "portsentry.setting: name must be a string, got {}",
                    type_name(&key)
                ),
            ));
        };
        let key = key.to_string_lossy().to_ascii_lowercase();
        let short = key.strip_prefix(&prefix).unwrap_or(&key);
        match shared.settings.get(short) {
            Some(v) => Ok(Value::String(lua.create_string(v)?)),
            None => {
                // The plugin's own default for a file it writes is as good as a configured one.
                if let Value::String(path) = &default
                    && short.ends_with("file")
                {
                    let path = path.to_string_lossy();
                    let mut files = lock(&default_files);
                    if !path.is_empty() && !files.contains(&path) {
                        files.push(path);
                    }
                }
                Ok(default)
            }
        }
    })
}

fn append_function(
    lua: &Lua,
    shared: &Arc<Shared>,
    name: &str,
    default_files: &Arc<Mutex<Vec<String>>>,
) -> mlua::Result<Function> {
    let shared = Arc::clone(shared);
    let default_files = Arc::clone(default_files);
    let prefix = super::setting_prefix(name);
    lua.create_function(move |lua, (path, text): (Value, Value)| {
        let (Value::String(path), Value::String(text)) = (&path, &text) else {
            return Err(raise(
                lua,
                format!(
                    "portsentry.append_line: expected (path, text) strings, got ({}, {})",
                    type_name(&path),
                    type_name(&text)
                ),
            ));
        };
        let path = path.to_string_lossy();
        let allowed = shared
            .settings
            .iter()
            .any(|(k, v)| k.ends_with("file") && !v.is_empty() && *v == path)
            || lock(&default_files).contains(&path);
        if !allowed {
            return Err(raise(
                lua,
                format!(
                    "portsentry.append_line: '{path}' is not a file configured for this plugin \
                     (only values of {prefix}_*FILE settings, or the plugin's defaults for \
                     them, may be written)"
                ),
            ));
        }
        let bytes = text.as_bytes();
        if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
            return Err(raise(
                lua,
                "portsentry.append_line: text must be a single line",
            ));
        }
        if bytes.len() > MAX_LINE {
            return Err(raise(
                lua,
                format!(
                    "portsentry.append_line: line of {} bytes is longer than {MAX_LINE}",
                    bytes.len()
                ),
            ));
        }
        let mut line = bytes.to_vec();
        line.push(b'\n');
        if !shared.may_append(line.len()) {
            return Err(raise(
                lua,
                format!(
                    "portsentry.append_line: more than {MAX_APPEND_BYTES} bytes appended in one event"
                ),
            ));
        }
        if shared.dry_run {
            shared.record(TraceEntry::WouldAppend {
                path: PathBuf::from(&*path),
                line: String::from_utf8_lossy(&bytes).into_owned(),
            });
            return Ok(true);
        }
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&*path)
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = written {
            return Err(raise(lua, format!("portsentry.append_line: {path}: {e}")));
        }
        shared.record(TraceEntry::Append {
            path: PathBuf::from(&*path),
            bytes: line.len(),
        });
        Ok(true)
    })
}

/// `portsentry.json(value)`: the value as one line of JSON. The plugin's settings table
/// (`portsentry.config`, also every event's `config` field) is left out wherever it appears,
/// so `portsentry.json(ev)` cannot leak a token into a payload.
fn json_function(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, v: Value| {
        let config: Table = lua.named_registry_value(CONFIG_KEY)?;
        let v = without_table(lua, v, &config, 0)?;
        if v.is_nil() {
            return Err(raise(
                lua,
                "portsentry.json: the plugin's settings are never written out (they may hold \
                 secrets); pick the fields you need",
            ));
        }
        let json: serde_json::Value = lua
            .from_value(v)
            .map_err(|e| raise(lua, format!("portsentry.json: {e}")))?;
        Ok(json.to_string())
    })
}

/// Tables nested deeper than this are passed on as they are (the JSON encoder refuses them
/// anyway).
const MAX_JSON_DEPTH: usize = 64;

/// `v` with every occurrence of `hidden` dropped: a copy of each table on the way (nil when
/// `v` is `hidden` itself). Keys keep their order-independent meaning, so arrays stay arrays.
fn without_table(lua: &Lua, v: Value, hidden: &Table, depth: usize) -> mlua::Result<Value> {
    let Value::Table(t) = v else {
        return Ok(v);
    };
    if t == *hidden {
        return Ok(Value::Nil);
    }
    if depth >= MAX_JSON_DEPTH {
        return Ok(Value::Table(t));
    }
    let copy = lua.create_table()?;
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let v = without_table(lua, v, hidden, depth + 1)?;
        if !v.is_nil() {
            copy.raw_set(k, v)?;
        }
    }
    if let Some(mt) = t.metatable() {
        copy.set_metatable(Some(mt))?;
    }
    Ok(Value::Table(copy))
}

/// Replaces what the sandbox removed with tables that say what to use instead: `io.open`
/// raises "use portsentry.append_line" rather than "attempt to index a nil value", and
/// `os.execute` points at `portsentry.exec`.
fn install_hints(lua: &Lua) -> mlua::Result<()> {
    let io = lua.create_table()?;
    let io_meta = lua.create_table()?;
    io_meta.raw_set(
        "__index",
        lua.create_function(|lua, (_, key): (Value, Value)| -> mlua::Result<Value> {
            let key = key.to_string().unwrap_or_default();
            let instead = match key.as_str() {
                "write" | "stdout" | "stderr" => "portsentry.log.info",
                "read" | "lines" | "stdin" => "portsentry.config for settings",
                "popen" => "portsentry.exec",
                _ => "portsentry.append_line (files named by a *_FILE setting)",
            };
            Err(raise(
                lua,
                format!("io.{key} is not available in plugins; use {instead}"),
            ))
        })?,
    )?;
    io.set_metatable(Some(io_meta))?;
    lua.globals().raw_set("io", io)?;

    if let Ok(Value::Table(os)) = lua.globals().raw_get::<Value>("os") {
        let os_meta = lua.create_table()?;
        os_meta.raw_set(
            "__index",
            lua.create_function(|lua, (_, key): (Value, Value)| -> mlua::Result<Value> {
                let key = key.to_string().unwrap_or_default();
                let instead = match key.as_str() {
                    "execute" => "portsentry.exec",
                    "getenv" => "portsentry.config (settings come from portsentry.conf)",
                    "remove" | "rename" | "tmpname" => {
                        "portsentry.append_line (plugins only append to their files)"
                    }
                    "exit" => "error() to fail the event",
                    _ => return Ok(Value::Nil),
                };
                Err(raise(
                    lua,
                    format!("os.{key} is not available in plugins; use {instead}"),
                ))
            })?,
        )?;
        os.set_metatable(Some(os_meta))?;
    }
    Ok(())
}

/// Checks a module name: dotted identifiers only, so it cannot climb out of the search dirs.
fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn require_function(lua: &Lua, shared: &Arc<Shared>) -> mlua::Result<Function> {
    let shared = Arc::clone(shared);
    lua.create_function(move |lua, name: Value| {
        let Value::String(name) = &name else {
            return Err(raise(
                lua,
                format!(
                    "require: module name must be a string, got {}",
                    type_name(&name)
                ),
            ));
        };
        let name = name.to_string_lossy();
        if !valid_module_name(&name) {
            return Err(raise(
                lua,
                format!("require: '{name}' is not a module name (letters, digits, '_', dots)"),
            ));
        }
        let loaded: Table = lua.named_registry_value(LOADED_KEY)?;
        match loaded.raw_get::<Value>(name.as_str())? {
            Value::Nil => {}
            Value::LightUserData(_) => {
                return Err(raise(
                    lua,
                    format!("require: module '{name}' requires itself (loop)"),
                ));
            }
            v => return Ok(v),
        }
        let rel = name.replace('.', "/");
        let mut tried = Vec::new();
        let mut found = None;
        for dir in &shared.search_dirs {
            for candidate in [
                dir.join(format!("{rel}.lua")),
                dir.join(&rel).join("init.lua"),
            ] {
                if candidate.is_file() {
                    found = Some(candidate);
                    break;
                }
                tried.push(candidate.display().to_string());
            }
            if found.is_some() {
                break;
            }
        }
        let Some(path) = found else {
            return Err(raise(
                lua,
                format!(
                    "require: module '{name}' not found; tried {}",
                    tried.join(", ")
                ),
            ));
        };
        let source = read_source(&path)
            .map_err(|m| raise(lua, format!("require: {}: {m}", path.display())))?;
        shared.add_chunk(&path);
        loaded.raw_set(
            name.as_str(),
            Value::LightUserData(mlua::LightUserData(std::ptr::null_mut())),
        )?;
        let result = lua
            .load(source)
            .set_name(format!("@{}", path.display()))
            .set_mode(ChunkMode::Text)
            .set_environment(new_env(lua)?)
            .call::<Value>((name.as_str(), path.to_string_lossy().into_owned()));
        match result {
            Ok(v) => {
                let v = if v.is_nil() { Value::Boolean(true) } else { v };
                loaded.raw_set(name.as_str(), v.clone())?;
                Ok(v)
            }
            Err(e) => {
                loaded.raw_set(name.as_str(), Value::Nil)?;
                Err(e)
            }
        }
    })
}
