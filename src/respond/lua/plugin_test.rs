//! `portsentry --test-plugin`: load one plugin as the daemon would, fire a synthetic alert
//! and block at it, and show what it did — so a plugin can be tried without an attack.
//! With `--dry-run` the commands and file writes are shown (quoted, ready to paste into a
//! shell) instead of done; `--set KEY=VALUE` adds plugin settings on top of the config.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::config::build::key_spec;
use crate::event::{Mode, ProbeKind, Proto};
use crate::logging::escape_controls;
use crate::respond::Outcome;

use super::{
    CallOutcome, CallReport, EventData, EventName, TraceEntry, block_outcome, load_file,
    plugin_settings, setting_prefix,
};

/// Exit code: the plugin loaded and no handler failed (a veto is not a failure).
pub const EXIT_OK: i32 = 0;
/// Exit code: a handler raised, ran out of time or memory, or did not answer.
pub const EXIT_HANDLER_FAILED: i32 = 1;
/// Exit code: the plugin did not load (or the Lua settings are malformed).
pub const EXIT_LOAD_FAILED: i32 = 2;
/// Exit code: the plugin did not finish within [`watchdog_limit`] and the process was ended.
pub const EXIT_TIMED_OUT: i32 = 3;

/// How to try a plugin: the synthetic probe, and whether to act for real.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOptions {
    /// Attacker address of the synthetic alert.
    pub target: IpAddr,
    /// Destination port probed.
    pub port: u16,
    /// Protocol of the probe.
    pub proto: Proto,
    /// Show every `exec` and `append_line` instead of doing it; the plugin sees success.
    pub dry_run: bool,
}

/// The longest `--test-plugin` may take: loading and the two events, each bounded by the
/// call budget. A plugin still running then (one that escapes its budget) is ended by the
/// command line's watchdog with [`EXIT_TIMED_OUT`].
pub fn watchdog_limit(config: &Config) -> Duration {
    super::longest_call(config) * 3 + Duration::from_secs(2)
}

/// Adds `--set KEY=VALUE` settings for the plugin at `path` to `config`, on top of its file.
/// `KEY` is the full name (`MAIL_TO`) or the plugin's own name for it (`to`), in any case.
/// A key of the daemon's own configuration is refused: the daemon would not give it to the
/// plugin either (`NFTABLES_TABLE` is the built-in responder's; the nftables plugin's table
/// is `NFTABLES_PLUGIN_TABLE`). Returns the full names set.
pub fn apply_settings(
    config: &mut Config,
    path: &Path,
    settings: &[String],
) -> Result<Vec<String>, String> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{}_", setting_prefix(&name));
    let mut set = Vec::new();
    for item in settings {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!(
                "--set {item}: expected KEY=VALUE (e.g. --set {prefix}FILE=/tmp/x)"
            ));
        };
        let key = key.trim().to_ascii_uppercase();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "--set {item}: '{key}' is not a setting name (letters, digits, '_')"
            ));
        }
        let full = if key.starts_with(&prefix) && key.len() > prefix.len() {
            key
        } else {
            format!("{prefix}{key}")
        };
        if key_spec(&full).is_some() {
            return Err(format!(
                "--set {item}: {full} is a key of the daemon's own configuration, not a \
                 setting of plugin {name} (the daemon would not pass it to the plugin)"
            ));
        }
        config.raw.insert(full.clone(), value.to_string());
        set.push(full);
    }
    Ok(set)
}

fn ms(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
    .to_string()
}

fn indented(out: &mut dyn Write, label: &str, text: &str) -> std::io::Result<()> {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    for (i, line) in lines.iter().take(20).enumerate() {
        let head = if i == 0 { label } else { "" };
        writeln!(out, "      {head:<7} {}", escape_controls(line))?;
    }
    if lines.len() > 20 {
        writeln!(out, "              … {} more lines", lines.len() - 20)?;
    }
    Ok(())
}

fn write_trace(out: &mut dyn Write, report: &CallReport) -> std::io::Result<()> {
    for entry in &report.trace {
        match entry {
            TraceEntry::Exec(r) if r.dry_run => {
                writeln!(out, "  would exec   {}", escape_controls(&r.quoted()))?;
                if let Some(stdin) = &r.stdin {
                    indented(out, "stdin:", stdin)?;
                }
            }
            TraceEntry::Exec(r) => {
                writeln!(
                    out,
                    "  exec   {} -> {} in {}",
                    escape_controls(&r.quoted()),
                    r.describe(),
                    ms(r.elapsed)
                )?;
                indented(out, "stdout:", &r.stdout)?;
                indented(out, "stderr:", &r.stderr)?;
            }
            TraceEntry::Log { level, message } => {
                writeln!(out, "  log    {level}: {}", escape_controls(message))?
            }
            TraceEntry::Append { path, bytes } => writeln!(
                out,
                "  append {} ({bytes} bytes)",
                escape_controls(&path.display().to_string())
            )?,
            TraceEntry::WouldAppend { path, line } => writeln!(
                out,
                "  would append to {}: {}",
                shell_words::quote(&path.display().to_string()),
                escape_controls(line)
            )?,
        }
    }
    Ok(())
}

/// Loads the plugin at `path` with the settings `config` gives it (`<NAME>_*` keys,
/// `LUA_*` limits, the Lua library in `LUA_PATH_DIR`), fires a synthetic `alert` then
/// `block` for `target`, and writes what happened to `out`: commands run with their status
/// and output, log lines, appended files, errors with file and line. The commands really
/// run ([`test_plugin_with`] can show them instead). Returns [`EXIT_OK`],
/// [`EXIT_HANDLER_FAILED`] or [`EXIT_LOAD_FAILED`].
pub fn test_plugin(
    path: &Path,
    target: IpAddr,
    port: u16,
    proto: Proto,
    config: &Config,
    out: &mut dyn Write,
) -> i32 {
    let options = TestOptions {
        target,
        port,
        proto,
        dry_run: false,
    };
    test_plugin_with(path, &options, config, out)
}

/// [`test_plugin`] with every option, `--dry-run` included.
pub fn test_plugin_with(
    path: &Path,
    options: &TestOptions,
    config: &Config,
    out: &mut dyn Write,
) -> i32 {
    match run(path, options, config, out) {
        Ok(code) => code,
        Err(_) => EXIT_HANDLER_FAILED,
    }
}

fn run(
    path: &Path,
    options: &TestOptions,
    config: &Config,
    out: &mut dyn Write,
) -> std::io::Result<i32> {
    let TestOptions {
        target,
        port,
        proto,
        dry_run,
    } = *options;
    writeln!(
        out,
        "plugin {}{}",
        path.display(),
        if dry_run {
            " (dry run: commands and file writes are shown, not done)"
        } else {
            ""
        }
    )?;
    let loaded = load_file(path, config, dry_run);
    // What the events log is in the report below, not on stderr too.
    super::LOAD_WARNINGS.store(false, std::sync::atomic::Ordering::Relaxed);
    let (name, handle) = match loaded {
        Ok(x) => x,
        Err(e) => {
            writeln!(out, "load failed: {}", escape_controls(&e.to_string()))?;
            return Ok(EXIT_LOAD_FAILED);
        }
    };
    let prefix = setting_prefix(&name);
    let settings = plugin_settings(config, &name);
    if settings.is_empty() {
        writeln!(
            out,
            "settings: none ({prefix}_* keys in {})",
            config.path.display()
        )?;
    } else {
        writeln!(out, "settings:")?;
        for (k, v) in &settings {
            writeln!(
                out,
                "  {prefix}_{}=\"{}\"",
                k.to_ascii_uppercase(),
                escape_controls(v)
            )?;
        }
    }
    let handled: Vec<&str> = handle.handled.iter().map(|e| e.as_str()).collect();
    writeln!(
        out,
        "loaded; handles: {}",
        if handled.is_empty() {
            "nothing".to_string()
        } else {
            handled.join(", ")
        }
    )?;

    let (mode, kind) = match proto {
        Proto::Tcp => (Mode::Stcp, ProbeKind::Syn),
        Proto::Udp => (Mode::Sudp, ProbeKind::Udp),
    };
    let alert = EventData {
        name: EventName::Alert,
        target: crate::record::host_target(target),
        members: Vec::new(),
        port,
        proto,
        mode,
        kind: kind.describe(),
        count: 1,
        time: SystemTime::now(),
        host: None,
        already_blocked: false,
        ip_options: false,
        timeout: None,
        restored: false,
        reason: None,
    };
    let mut failed = false;

    writeln!(
        out,
        "\nalert {target} {}/{port} ({}, mode {mode}):",
        proto.lower(),
        alert.kind
    )?;
    match handle.call(alert.clone()) {
        Ok(report) => {
            write_trace(out, &report)?;
            match &report.outcome {
                CallOutcome::NoHandler => writeln!(out, "  result: no alert handler")?,
                CallOutcome::Done(_) | CallOutcome::Veto(_) => {
                    writeln!(out, "  result: ok in {}", ms(report.elapsed))?
                }
                CallOutcome::Failed(e) => {
                    failed = true;
                    writeln!(out, "  result: FAILED: {}", escape_controls(&e.to_string()))?
                }
                CallOutcome::Expired => {
                    failed = true;
                    writeln!(
                        out,
                        "  result: FAILED: not run (queue wait past the budget)"
                    )?
                }
            }
        }
        Err(msg) => {
            failed = true;
            writeln!(out, "  result: FAILED: {}", escape_controls(&msg))?;
        }
    }

    writeln!(out, "\nblock {target}:")?;
    match handle.call(alert.renamed(EventName::Block)) {
        Ok(report) => {
            write_trace(out, &report)?;
            match block_outcome(&name, &report, handle.handles(EventName::Unblock)) {
                Outcome::Done(a) => writeln!(
                    out,
                    "  result: done ({}): {}",
                    a.responder,
                    escape_controls(&a.detail)
                )?,
                Outcome::Skipped(why) => {
                    writeln!(out, "  result: skipped: {}", escape_controls(&why))?
                }
                Outcome::Veto(why) => writeln!(
                    out,
                    "  result: veto: {} (responders after it would not run)",
                    escape_controls(&why)
                )?,
                Outcome::Failed(why) => {
                    failed = true;
                    writeln!(out, "  result: FAILED: {}", escape_controls(&why))?
                }
            }
        }
        Err(msg) => {
            failed = true;
            writeln!(out, "  result: FAILED: {}", escape_controls(&msg))?;
        }
    }
    Ok(if failed { EXIT_HANDLER_FAILED } else { EXIT_OK })
}

/// The configured Lua responders (`LUA_RESPONDERS`) loaded in dry-run mode, as
/// `--test-plugin --dry-run` loads one: `portsentry replay --plugins` fires at them the
/// events they would have got from a capture, and shows what they would have done.
pub struct DryRunPlugins {
    plugins: Vec<(String, super::Handle)>,
}

impl DryRunPlugins {
    /// Loads every plugin of `LUA_RESPONDERS` from `PLUGIN_DIR`, each in its own process;
    /// the first that does not load is the error.
    pub fn load(config: &Config) -> Result<DryRunPlugins, super::LuaError> {
        super::LOAD_WARNINGS.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut plugins = Vec::new();
        for name in &config.lua_responders {
            let path = config.plugin_dir.join(format!("{name}.lua"));
            plugins.push(load_file(&path, config, true)?);
        }
        Ok(DryRunPlugins { plugins })
    }

    /// Names of the plugins loaded.
    pub fn names(&self) -> Vec<&str> {
        self.plugins.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Fires `event` at every plugin that handles it and writes `header`, then each one's
    /// trace (commands and file writes it would have made, log lines, errors) to `out`;
    /// nothing when no plugin handles it.
    pub fn fire(
        &self,
        event: &EventData,
        header: &str,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let mut first = true;
        for (name, handle) in &self.plugins {
            if !handle.handles(event.name) {
                continue;
            }
            if std::mem::take(&mut first) {
                writeln!(out, "{header}")?;
            }
            writeln!(out, "  lua:{name} {}:", event.name.as_str())?;
            match handle.call(event.clone()) {
                Ok(report) => {
                    write_trace(out, &report)?;
                    match &report.outcome {
                        CallOutcome::Veto(why) => writeln!(
                            out,
                            "  result: veto: {}",
                            escape_controls(why.as_deref().unwrap_or("no reason given"))
                        )?,
                        CallOutcome::Failed(e) => {
                            writeln!(out, "  result: FAILED: {}", escape_controls(&e.to_string()))?
                        }
                        CallOutcome::Expired => writeln!(
                            out,
                            "  result: FAILED: not run (queue wait past the budget)"
                        )?,
                        CallOutcome::NoHandler | CallOutcome::Done(_) => {}
                    }
                }
                Err(msg) => writeln!(out, "  result: FAILED: {}", escape_controls(&msg))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
