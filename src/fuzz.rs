//! Fuzz entry points: one function per parser that reads what an outsider or an admin can
//! write (captured packets, the config and ignore files, the history line, the block journal,
//! 1.2's `BLOCKED_FILE`, the control protocol). Each takes arbitrary bytes, must never panic
//! on them, and asserts the promises its parser makes (line numbers inside the input,
//! round-trips where a writer exists). A panic here is a bug found.
//!
//! The same functions are driven three ways: by property tests with random and
//! structure-aware inputs (`fuzz::tests`, `cargo test fuzz_`), by the corpus kept in
//! `fuzz/corpus/<target>/` (every file run on each `cargo test`), and by a coverage-guided
//! fuzzer (`fuzz/`, cargo-fuzz, not built by default). See the README's "Fuzzing" section.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::block::journal::{BlockedLine, Journal, import_legacy, write_blocked_file};
use crate::config::ignore::IgnoreList;
use crate::config::{ConfigError, build, parse};
use crate::control::commands::render;
use crate::control::protocol::{Request, Response};
use crate::history::{HistoryEntry, history_line, parse_history_line};
use crate::record::{BlockRecord, parse_target, target_text};
use crate::sensor::classify::{ChecksumCheck, inspect, outgoing};

/// A fuzz target's entry point: arbitrary bytes in, a panic when a promise is broken.
pub type FuzzFn = fn(&[u8]);

/// The targets, by the name of their corpus directory and entry function, so that the corpus
/// runner and a fuzzer harness agree on them.
pub const TARGETS: [(&str, FuzzFn); 8] = [
    ("classify", fuzz_classify),
    ("config", fuzz_config),
    ("ignore", fuzz_ignore),
    ("history", fuzz_history),
    ("journal", fuzz_journal),
    ("blocked_file", fuzz_blocked_file),
    ("control_request", fuzz_control_request),
    ("control_response", fuzz_control_response),
];

/// Last second a history line or journal time can be written for (end of year 9999).
const LAST_WRITABLE_SECS: u64 = 253_402_300_799;

/// Number of lines a reader that splits on `\n` sees in `bytes` (a last line without its
/// newline counts): the upper bound for any line number an error may name.
pub fn line_count(bytes: &[u8]) -> usize {
    bytes.split(|&b| b == b'\n').count()
}

/// Panics unless every error names `file` and a line inside the input (0: the whole file).
fn assert_lines_within(errors: &[ConfigError], file: &Path, lines: usize) {
    for e in errors {
        assert_eq!(e.file, file, "error names another file: {e}");
        assert!(
            e.line <= lines,
            "line {} past the {lines} lines: {e}",
            e.line
        );
    }
}

/// The packet classifier on one captured packet: never panics; a probe that passes the
/// checksum check also passes when the checksum is trusted, with the same fields; the
/// outgoing-flow reading never panics either.
pub fn fuzz_classify(bytes: &[u8]) {
    let verified = inspect(bytes, ChecksumCheck::Verify);
    let trusted = inspect(bytes, ChecksumCheck::Trusted);
    if let Ok(probe) = verified {
        assert_eq!(
            trusted,
            Ok(probe),
            "a verified probe must pass when trusted"
        );
    }
    if let Ok(start) = outgoing(bytes) {
        assert_eq!(start.local.is_ipv4(), start.remote.is_ipv4());
    }
}

/// `portsentry.conf`: parsing and building never panic and every error names the file and
/// a line of the input.
pub fn fuzz_config(bytes: &[u8]) {
    let file = Path::new("/fuzz/portsentry.conf");
    let lines = line_count(bytes);
    match parse::parse_bytes(file, bytes) {
        Err(errors) => assert_lines_within(&errors.0, file, lines),
        Ok(raw) => {
            if let Err(errors) = build::build(&raw) {
                assert_lines_within(&errors.0, file, lines);
            }
        }
    }
}

/// The ignore file: never panics, errors name a line of the input, and every entry read is
/// then matched by the list (its network and last address).
pub fn fuzz_ignore(bytes: &[u8]) {
    let file = Path::new("/fuzz/portsentry.ignore");
    let text = String::from_utf8_lossy(bytes);
    match IgnoreList::parse(file, &text) {
        Err(errors) => assert_lines_within(&errors.0, file, line_count(text.as_bytes())),
        Ok(list) => {
            for net in list.entries() {
                assert!(list.contains(net.network()), "{net} not matched");
                assert!(list.contains(net.broadcast()), "{net} not matched");
            }
        }
    }
}

/// History lines (`HISTORY_FILE`, `BLOCKED_FILE`): never panics, and a line read back and
/// written again reads back the same.
pub fn fuzz_history(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for line in text.split('\n') {
        if let Some(entry) = parse_history_line(line) {
            assert_history_round_trip(&entry);
        }
    }
}

/// Writes `entry` with [`history_line`] and reads it back: the same entry (times past the
/// year 9999 cannot be written and are not checked).
pub fn assert_history_round_trip(entry: &HistoryEntry) {
    let secs = entry
        .time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A control character in the name is the writer's to escape (the line must stay one
    // line), so such a name does not read back as itself.
    if secs > LAST_WRITABLE_SECS || entry.resolved.chars().any(char::is_control) {
        return;
    }
    let line = history_line(
        entry.time,
        &entry.resolved,
        entry.ip,
        entry.port,
        entry.proto,
    );
    assert!(
        line.ends_with('\n') && line.matches('\n').count() == 1,
        "{line:?}"
    );
    let back = parse_history_line(&line).unwrap_or_else(|| panic!("cannot read {line:?}"));
    let expected = HistoryEntry {
        ip: entry.ip.to_canonical(),
        time: UNIX_EPOCH + Duration::from_secs(secs),
        ..entry.clone()
    };
    assert_eq!(back, expected, "{line:?}");
}

/// A file of its own for one fuzz case, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portsentry-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("{}: {e}", dir.display());
        }
        Scratch { dir }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        if let Err(e) = std::fs::write(&path, bytes) {
            panic!("{}: {e}", path.display());
        }
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Panics unless each warning starts with `path:` and, when it names a line, the line is
/// inside the input.
fn assert_warnings_within(warnings: &[String], path: &Path, lines: usize) {
    let prefix = format!("{}:", path.display());
    for w in warnings {
        let rest = w
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("warning does not name {prefix}: {w}"));
        if let Some((number, _)) = rest.split_once(':')
            && let Ok(n) = number.parse::<usize>()
        {
            assert!((1..=lines).contains(&n), "line {n} of {lines}: {w}");
        }
    }
}

/// The block journal (`BLOCK_STATE_FILE`) as found on disk: opening never fails on its
/// content, never panics, counts no more lines than there are, warns with a line of the
/// input, and restores only canonical targets.
pub fn fuzz_journal(bytes: &[u8]) {
    let scratch = Scratch::new();
    let path = scratch.file("portsentry.state", bytes);
    let (_journal, replay) = Journal::open(&path)
        .unwrap_or_else(|e| panic!("a regular file must open whatever it holds: {e}"));
    let lines = line_count(bytes);
    assert!(replay.lines <= lines, "{} of {lines} lines", replay.lines);
    assert_warnings_within(&replay.warnings, &path, lines);
    for (target, record) in &replay.active {
        assert_eq!(*target, record.target);
        assert_eq!(parse_target(&target_text(target)), Ok(*target));
    }
}

/// Writes `records` (distinct, canonical targets) to a fresh journal, reopens it and
/// panics unless exactly the same blocks come back (times to the millisecond).
pub fn assert_journal_round_trip(records: &[BlockRecord]) {
    let scratch = Scratch::new();
    let path = scratch.dir.join("portsentry.state");
    {
        let (mut journal, replay) =
            Journal::open(&path).unwrap_or_else(|e| panic!("new journal: {e}"));
        assert!(replay.active.is_empty());
        let entries: Vec<_> = records
            .iter()
            .cloned()
            .map(crate::block::journal::Entry::Block)
            .collect();
        journal
            .append(&entries)
            .unwrap_or_else(|e| panic!("append: {e}"));
    }
    let (_journal, replay) = Journal::open(&path).unwrap_or_else(|e| panic!("reopen: {e}"));
    assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
    assert_eq!(replay.active.len(), records.len());
    for record in records {
        assert_eq!(replay.active.get(&record.target), Some(record));
    }
}

/// 1.2's `BLOCKED_FILE`, imported once when the journal is first created: never panics,
/// warns with a line of the input, and every imported block is a permanent import of a
/// canonical target.
pub fn fuzz_blocked_file(bytes: &[u8]) {
    let scratch = Scratch::new();
    let path = scratch.file("portsentry.blocked", bytes);
    let (records, warnings) = import_legacy(&path);
    assert_warnings_within(&warnings, &path, line_count(bytes));
    for r in &records {
        assert_eq!(r.origin, crate::record::Origin::Import);
        assert_eq!(r.until, None);
        assert_eq!(parse_target(&target_text(&r.target)), Ok(r.target));
    }
}

/// Writes `records` as a `BLOCKED_FILE` and imports it again: the same targets, times (to
/// the second) and trigger ports come back.
pub fn assert_blocked_file_round_trip(records: &[BlockRecord]) {
    let scratch = Scratch::new();
    let path = scratch.dir.join("portsentry.blocked");
    write_blocked_file(&path, records.iter().map(BlockedLine::from))
        .unwrap_or_else(|e| panic!("write: {e}"));
    let (back, warnings) = import_legacy(&path);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(back.len(), records.len());
    for r in records {
        let b = back
            .iter()
            .find(|b| b.target == r.target)
            .unwrap_or_else(|| panic!("{} not imported", r.target));
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        assert_eq!(secs(b.since), secs(r.since), "{}", r.target);
        assert_eq!(b.port_proto(), r.port_proto(), "{}", r.target);
    }
}

/// A control request line as the server decodes it: never panics; one that decodes encodes
/// on one line and decodes back to itself.
pub fn fuzz_control_request(bytes: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<Request>(bytes) {
        assert_request_round_trip(&request);
    }
}

/// Encodes `request` as the client does and decodes it as the server does.
pub fn assert_request_round_trip(request: &Request) {
    let json = serde_json::to_string(request).unwrap_or_else(|e| panic!("encode: {e}"));
    assert!(!json.contains('\n'), "{json}");
    let back: Request = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(&back, request, "{json}");
}

/// A response line as the client decodes it: never panics, encodes on one line, is stable
/// after one encoding (times are kept to the millisecond), and renders for every request
/// without panicking.
pub fn fuzz_control_response(bytes: &[u8]) {
    let Ok(response) = serde_json::from_slice::<Response>(bytes) else {
        return;
    };
    let once = assert_response_round_trip(&response);
    let again: Response = serde_json::from_str(&once).unwrap_or_else(|e| panic!("{once}: {e}"));
    assert_eq!(assert_response_round_trip(&again), once);
    let requests = [
        Request::Status,
        Request::List {
            targets: vec!["10.0.0.0/8".into()],
            origin: Some("fleet".into()),
        },
        Request::UnblockMany {
            targets: Vec::new(),
            all: true,
            origin: Some("scan".into()),
            covering: false,
        },
        Request::Reload,
        Request::Unblock {
            target: "192.0.2.1".into(),
            covering: false,
        },
        Request::Block {
            targets: vec!["192.0.2.1".into()],
            duration: None,
            reason: String::new(),
        },
    ];
    for request in &requests {
        for json in [false, true] {
            let printed = render(request, &response, json);
            assert!(printed.code == 0 || printed.code == 1, "{}", printed.code);
        }
    }
}

/// Encodes `response` (on one line) and returns the text, panicking unless it decodes to a
/// response that encodes to the same text.
pub fn assert_response_round_trip(response: &Response) -> String {
    let json = serde_json::to_string(response).unwrap_or_else(|e| panic!("encode: {e}"));
    assert!(!json.contains('\n'), "{json}");
    let back: Response = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    let again = serde_json::to_string(&back).unwrap_or_else(|e| panic!("encode: {e}"));
    assert_eq!(again, json);
    json
}

#[cfg(test)]
mod tests;
