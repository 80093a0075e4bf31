//! `portsentry --test-plugin`: load one plugin as the daemon would, fire a synthetic alert
//! and block at it, and show what it did — so a plugin can be tried without an attack.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::event::{Mode, ProbeKind, Proto};
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
        writeln!(out, "      {head:<7} {line}")?;
    }
    if lines.len() > 20 {
        writeln!(out, "              … {} more lines", lines.len() - 20)?;
    }
    Ok(())
}

fn write_trace(out: &mut dyn Write, report: &CallReport) -> std::io::Result<()> {
    for entry in &report.trace {
        match entry {
            TraceEntry::Exec(r) => {
                writeln!(
                    out,
                    "  exec   {} -> {} in {}",
                    r.command,
                    r.describe(),
                    ms(r.elapsed)
                )?;
                indented(out, "stdout:", &r.stdout)?;
                indented(out, "stderr:", &r.stderr)?;
            }
            TraceEntry::Log { level, message } => writeln!(out, "  log    {level}: {message}")?,
            TraceEntry::Append { path, bytes } => {
                writeln!(out, "  append {} ({bytes} bytes)", path.display())?
            }
        }
    }
    Ok(())
}

/// Loads the plugin at `path` with the settings `config` gives it (`<NAME>_*` keys,
/// `LUA_*` limits, the Lua library in `LUA_PATH_DIR`), fires a synthetic `alert` then
/// `block` for `target`, and writes what happened to `out`: commands run with their status
/// and output, log lines, appended files, errors with file and line. The commands really
/// run. Returns [`EXIT_OK`], [`EXIT_HANDLER_FAILED`] or [`EXIT_LOAD_FAILED`].
pub fn test_plugin(
    path: &Path,
    target: IpAddr,
    port: u16,
    proto: Proto,
    config: &Config,
    out: &mut dyn Write,
) -> i32 {
    match run(path, target, port, proto, config, out) {
        Ok(code) => code,
        Err(_) => EXIT_HANDLER_FAILED,
    }
}

fn run(
    path: &Path,
    target: IpAddr,
    port: u16,
    proto: Proto,
    config: &Config,
    out: &mut dyn Write,
) -> std::io::Result<i32> {
    writeln!(out, "plugin {}", path.display())?;
    let (name, handle) = match load_file(path, config) {
        Ok(x) => x,
        Err(e) => {
            writeln!(out, "load failed: {e}")?;
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
            writeln!(out, "  {prefix}_{}=\"{v}\"", k.to_ascii_uppercase())?;
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
        target: crate::block::host_target(target),
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
                    writeln!(out, "  result: FAILED: {e}")?
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
            writeln!(out, "  result: FAILED: {msg}")?;
        }
    }

    writeln!(out, "\nblock {target}:")?;
    match handle.call(alert.renamed(EventName::Block)) {
        Ok(report) => {
            write_trace(out, &report)?;
            match block_outcome(&name, &report, handle.handles(EventName::Unblock)) {
                Outcome::Done(a) => {
                    writeln!(out, "  result: done ({}): {}", a.responder, a.detail)?
                }
                Outcome::Skipped(why) => writeln!(out, "  result: skipped: {why}")?,
                Outcome::Veto(why) => writeln!(
                    out,
                    "  result: veto: {why} (responders after it would not run)"
                )?,
                Outcome::Failed(why) => {
                    failed = true;
                    writeln!(out, "  result: FAILED: {why}")?
                }
            }
        }
        Err(msg) => {
            failed = true;
            writeln!(out, "  result: FAILED: {msg}")?;
        }
    }
    Ok(if failed { EXIT_HANDLER_FAILED } else { EXIT_OK })
}
