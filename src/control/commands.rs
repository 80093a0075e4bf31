//! The client subcommands (`status`, `list`, `block`, `unblock`, `reload`): where the socket
//! is, what is checked before anything is sent, and how each answer reads on a terminal.
//! [`crate::cli`] only parses the command line and prints what [`run`] returns.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::client;
use super::protocol::{
    MAX_TARGETS_PER_REQUEST, Request, Response, StatusReport, TargetResult, UnblockResult,
};
use super::{DEFAULT_SOCKET, SOCKET_KEY};
use crate::block::{BlockRecord, excerpt, parse_target, target_text};
use crate::config::{self, DEFAULT_CONFIG_PATH};

/// Largest `--from-file` read: far above any real block list, small enough to refuse
/// `/dev/zero`-like mistakes before memory runs out.
pub const MAX_TARGETS_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Time the client adds to the server's own wait for the daemon, so that a slow daemon is
/// reported by the server ("did not answer in time") rather than by a client timeout.
const CLIENT_SLACK: Duration = Duration::from_secs(10);

/// What a subcommand prints and how it exits; built as text so that it can be tested and
/// so that a closed stdout (`list | head`) cannot make the program panic.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Printed {
    /// Text for stdout.
    pub out: String,
    /// Text for stderr.
    pub err: String,
    /// Exit code: 0, or 1 when anything failed.
    pub code: i32,
}

impl Printed {
    fn out(&mut self, line: impl AsRef<str>) {
        self.out.push_str(line.as_ref());
        self.out.push('\n');
    }

    fn fail(&mut self, line: impl AsRef<str>) {
        self.err.push_str(line.as_ref());
        self.err.push('\n');
        self.code = 1;
    }

    fn failure(line: impl AsRef<str>) -> Printed {
        let mut p = Printed::default();
        p.fail(line);
        p
    }
}

/// The control socket to use: `--socket`, else `CONTROL_SOCKET` from the config, else
/// [`DEFAULT_SOCKET`]. An unreadable config is only an error when it was named with `-c`:
/// a user who never mentioned a config should not be stopped by one.
pub fn socket_path(socket: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    match config::load(path) {
        Ok(c) => Ok(c
            .raw
            .get(SOCKET_KEY)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)),
        Err(_) if config.is_none() => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks an address or network given on the command line and returns it in the form the
/// daemon and `list` use (`10.0.0.5/24` → `10.0.0.0/24`).
pub fn canonical_target(text: &str) -> Result<String, String> {
    parse_target(text).map(|t| target_text(&t))
}

/// Checks `--for`: a humantime duration with a unit. The text is sent as written (the
/// daemon parses it again); a bare number is refused because its unit would be a guess.
pub fn block_duration(text: &str) -> Result<String, String> {
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "\"{}\" has no unit: add a unit, e.g. {}s",
            excerpt(t),
            excerpt(t)
        ));
    }
    match humantime::parse_duration(t) {
        Ok(d) if d.is_zero() => Err(format!(
            "\"{}\": a block must last longer than 0s",
            excerpt(t)
        )),
        Ok(_) => Ok(t.to_string()),
        Err(e) => Err(format!(
            "\"{}\": {e} (expected e.g. 30s, 10m, 1h 30m or 7d)",
            excerpt(t)
        )),
    }
}

/// Reads `block --from-file`: one address or network a line, `#` comments and blank lines
/// allowed, duplicates kept once. `Err` lists every problem (`FILE:LINE: "...": not an IP
/// address or CIDR network`) so that a list is fixed in one pass and nothing is half sent.
pub fn read_targets_file(path: &Path) -> Result<Vec<String>, Vec<String>> {
    let shown = path.display().to_string();
    let one = |message: String| vec![format!("{shown}: {message}")];
    // O_NONBLOCK: opening a FIFO put in place of the file must not hang; regular files
    // ignore the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| one(format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| one(e.to_string()))?;
    if !meta.is_file() {
        return Err(one("not a regular file".into()));
    }
    let too_large = || {
        one(format!(
            "larger than {} MiB; split the list",
            MAX_TARGETS_FILE_BYTES / (1024 * 1024)
        ))
    };
    if meta.len() > MAX_TARGETS_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_TARGETS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| one(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_TARGETS_FILE_BYTES {
        return Err(too_large());
    }
    parse_targets(&shown, &String::from_utf8_lossy(&bytes))
}

/// [`read_targets_file`] after the reading: `name` is the file as messages show it.
pub fn parse_targets(name: &str, text: &str) -> Result<Vec<String>, Vec<String>> {
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        match parse_target(entry) {
            Ok(t) => {
                let t = target_text(&t);
                if seen.insert(t.clone()) {
                    targets.push(t);
                }
            }
            Err(_) => errors.push(format!(
                "{name}:{}: \"{}\": not an IP address or CIDR network",
                i + 1,
                excerpt(entry)
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if targets.is_empty() {
        return Err(vec![format!("{name}: no address or network in the file")]);
    }
    Ok(targets)
}

/// Sends `request` to the daemon at `socket` and renders the answer; `json` asks `list`
/// and `status` for JSON. A long `block` list goes in several requests of at most
/// [`MAX_TARGETS_PER_REQUEST`] targets.
pub fn run(socket: &Path, request: Request, json: bool) -> Printed {
    let Request::Block {
        targets,
        duration,
        reason,
    } = request
    else {
        let timeout = request.answer_timeout() + CLIENT_SLACK;
        return match client::call(socket, &request, timeout) {
            Ok(response) => render(&request, &response, json),
            Err(e) => Printed::failure(format!("portsentry: {e}")),
        };
    };
    let total = targets.len();
    let mut results = Vec::with_capacity(total);
    let mut trouble = None;
    for chunk in targets.chunks(MAX_TARGETS_PER_REQUEST) {
        let request = Request::Block {
            targets: chunk.to_vec(),
            duration: duration.clone(),
            reason: reason.clone(),
        };
        let timeout = request.answer_timeout() + CLIENT_SLACK;
        match client::call(socket, &request, timeout) {
            Ok(Response::Blocked { results: got }) => results.extend(got),
            Ok(Response::Error { message }) => {
                trouble = Some(message);
                break;
            }
            Ok(other) => {
                trouble = Some(unexpected(&request, &other));
                break;
            }
            Err(e) => {
                trouble = Some(e.to_string());
                break;
            }
        }
    }
    let mut printed = blocked_text(&results);
    if let Some(message) = trouble {
        printed.fail(format!("portsentry: {message}"));
        if !results.is_empty() {
            printed.fail(format!(
                "portsentry: {} of {total} targets were not blocked (not sent or not answered)",
                total - results.len()
            ));
        }
    }
    printed
}

/// How an answer reads: `request` says which answer was expected.
pub fn render(request: &Request, response: &Response, json: bool) -> Printed {
    match (request, response) {
        (_, Response::Error { message }) => Printed::failure(format!("portsentry: {message}")),
        (Request::Status, Response::Status(report)) if json => json_text(report),
        (Request::Status, Response::Status(report)) => Printed {
            out: status_text(report, SystemTime::now()),
            ..Printed::default()
        },
        (Request::List { .. }, Response::List { blocks, .. }) if json => json_text(blocks),
        (Request::List { targets, origin }, Response::List { blocks, fleet }) => Printed {
            out: if blocks.is_empty()
                && fleet.is_none()
                && (!targets.is_empty() || origin.is_some())
            {
                "no block in force matches\n".into()
            } else {
                list_text(blocks) + &fleet_text(fleet.as_ref())
            },
            ..Printed::default()
        },
        (Request::Unblock { .. }, Response::Unblocked { target, detail }) => {
            let mut p = Printed::default();
            unblocked_lines(&mut p, target, detail);
            p
        }
        (Request::UnblockMany { all, origin, .. }, Response::UnblockedMany { results }) => {
            unblocked_many_text(results, *all, origin.as_deref())
        }
        (Request::Block { .. }, Response::Blocked { results }) => blocked_text(results),
        (Request::Reload, Response::Reloaded { generation }) => {
            let mut p = Printed::default();
            p.out(format!("configuration generation {generation} in force"));
            p
        }
        (
            Request::Reload,
            Response::ReloadRefused {
                kept_generation,
                errors,
            },
        ) => {
            let mut p = Printed::failure(format!(
                "reload refused, generation {kept_generation} kept:"
            ));
            for e in errors {
                p.fail(format!("  {e}"));
            }
            p
        }
        (request, other) => Printed::failure(format!("portsentry: {}", unexpected(request, other))),
    }
}

/// `--json`: the answer's data, pretty-printed, for scripts and `jq`.
fn json_text(value: &impl serde::Serialize) -> Printed {
    match serde_json::to_string_pretty(value) {
        Ok(text) => Printed {
            out: text + "\n",
            ..Printed::default()
        },
        Err(e) => Printed::failure(format!("portsentry: {e}")),
    }
}

fn unblocked_lines(p: &mut Printed, target: &str, detail: &[String]) {
    p.out(format!("{target}: unblocked"));
    for line in detail {
        p.out(format!("  {line}"));
    }
}

/// `unblock ADDR…` / `unblock --all`: a line (and its undo lines) a target, a count when
/// there were several; exit 1 when any target failed.
fn unblocked_many_text(results: &[UnblockResult], all: bool, origin: Option<&str>) -> Printed {
    let mut p = Printed::default();
    if results.is_empty() && all {
        match origin {
            Some(origin) => p.out(format!("no block of origin {origin} in force")),
            None => p.out("no block in force"),
        }
        return p;
    }
    for r in results {
        if r.ok {
            unblocked_lines(&mut p, &r.target, &r.detail);
        } else {
            p.out(format!(
                "{}: NOT unblocked: {}",
                r.target,
                r.detail.join("; ")
            ));
            p.code = 1;
        }
    }
    if results.len() > 1 || all {
        let failed = results.iter().filter(|r| !r.ok).count();
        p.out(format!(
            "{} unblocked, {failed} failed",
            results.len() - failed
        ));
    }
    p
}

fn unexpected(request: &Request, response: &Response) -> String {
    format!(
        "unexpected answer \"{}\" to \"{}\" (is the daemon a different version?)",
        response.name(),
        request.name()
    )
}

fn blocked_text(results: &[TargetResult]) -> Printed {
    let mut p = Printed::default();
    for r in results {
        match (r.ok, r.detail.is_empty()) {
            (true, true) => p.out(format!("{}: blocked", r.target)),
            (true, false) => p.out(format!("{}: blocked ({})", r.target, r.detail)),
            (false, _) => {
                p.out(format!("{}: NOT blocked: {}", r.target, r.detail));
                p.code = 1;
            }
        }
    }
    if results.len() > 1 {
        let failed = results.iter().filter(|r| !r.ok).count();
        p.out(format!(
            "{} blocked, {failed} failed",
            results.len() - failed
        ));
    }
    p
}

/// Local time to the second, as operators read their other logs.
fn local_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// `status`: `key: value` lines, values aligned.
fn status_text(report: &StatusReport, now: SystemTime) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("version".into(), report.version.clone()),
        (
            "modes".into(),
            if report.modes.is_empty() {
                "none".into()
            } else {
                report.modes.join(" ")
            },
        ),
        ("started".into(), local_time(report.started)),
        (
            "uptime".into(),
            humantime::format_duration(Duration::from_secs(report.uptime_secs)).to_string(),
        ),
        ("generation".into(), report.generation.to_string()),
    ];
    let mut reload_errors: &[String] = &[];
    let reload = match &report.last_reload {
        None => "none since start".to_string(),
        Some(r) => {
            let ago = now
                .duration_since(r.at)
                .map(|d| Duration::from_secs(d.as_secs()))
                .unwrap_or_default();
            reload_errors = &r.errors;
            format!(
                "{} at {} ({} ago)",
                if r.ok { "ok" } else { "refused" },
                local_time(r.at),
                humantime::format_duration(ago)
            )
        }
    };
    rows.push(("last reload".into(), reload));
    let reload_at = rows.len();
    for link in &report.fleet {
        let since = link
            .since
            .map(|at| format!(" since {}", local_time(at)))
            .unwrap_or_default();
        rows.push((
            format!("crowdsec {}", link.direction),
            format!("{}: {}{since}", link.url, link.state),
        ));
        if let Some(decisions) = &link.decisions {
            rows.push(("crowdsec decisions".into(), decisions.summary()));
        }
    }
    rows.extend(storage_rows(&report.storage));
    rows.extend(
        report
            .counters
            .named()
            .iter()
            .map(|(name, n)| (name.to_string(), n.to_string())),
    );
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (i, (key, value)) in rows.iter().enumerate() {
        out.push_str(&format!("{:<width$} {value}\n", format!("{key}:")));
        if i + 1 == reload_at {
            for e in reload_errors {
                out.push_str(&format!("{:<width$}   {e}\n", ""));
            }
        }
    }
    out
}

/// The journal's row (always), and the history and blocked files' rows when they fail:
/// `ok (path)`, or `failing since <time> (<error>); <what waits>`.
fn storage_rows(storage: &[crate::storage::FileHealth]) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for f in storage {
        let key = match f.file.as_str() {
            "journal" => "journal".to_string(),
            other => format!("{other} file"),
        };
        let Some(since) = f.failing_since else {
            if f.file == "journal" {
                rows.push((key, format!("ok ({})", f.path)));
            }
            continue;
        };
        let mut value = format!("failing since {} ({})", local_time(since), f.error);
        let mut waiting = Vec::new();
        if f.file == "journal" {
            waiting.push(format!("{} block(s) not yet journaled", f.blocks_unwritten));
            if f.waiting > 0 {
                waiting.push(format!("{} entr(y/ies) waiting in memory", f.waiting));
            }
        } else if f.waiting > 0 {
            waiting.push(format!("{} line(s) waiting in memory", f.waiting));
        }
        if f.dropped > 0 {
            waiting.push(format!("{} dropped at the memory bound", f.dropped));
        }
        if !waiting.is_empty() {
            value.push_str("; ");
            value.push_str(&waiting.join(", "));
        }
        rows.push((key, value));
    }
    rows
}

/// `list`'s last line: the decisions pulled from the fleet, counted per origin (they are
/// kernel elements of their own, not blocks: tens of thousands of rows would say less).
fn fleet_text(fleet: Option<&crate::fleet::PullSnapshot>) -> String {
    fleet.map_or_else(String::new, |f| format!("fleet: {}\n", f.summary()))
}

/// `list`: one row a block, columns aligned.
fn list_text(blocks: &[BlockRecord]) -> String {
    if blocks.is_empty() {
        return "no blocks in force\n".into();
    }
    let mut rows = vec![
        [
            "ADDRESS", "SINCE", "UNTIL", "TIMES", "MODE", "PORT", "ORIGIN", "ACTIONS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for b in blocks {
        let (mode, port) = b.trigger.as_ref().map_or_else(
            || ("-".to_string(), "-".to_string()),
            |t| (t.mode.as_str().to_string(), t.port.to_string()),
        );
        let actions = if b.actions.is_empty() {
            "-".to_string()
        } else {
            b.actions
                .iter()
                .map(|a| a.responder.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push(vec![
            target_text(&b.target),
            local_time(b.since),
            b.until.map_or_else(|| "permanent".into(), local_time),
            b.offences.to_string(),
            mode,
            port,
            origin_column(b),
            actions,
        ]);
    }
    table(&rows)
}

/// The origin, and for a prefix escalated from host blocks how many hosts it took over
/// (`scan, 3 hosts`): why a whole network is blocked, on the block's one line.
fn origin_column(b: &BlockRecord) -> String {
    match b.members.len() {
        0 => b.origin_text(),
        n => format!("{}, {n} hosts", b.origin_text()),
    }
}

/// Left-aligned columns two spaces apart, no trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
