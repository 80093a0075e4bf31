//! The block journal: the one file that makes blocks survive a crash, a `kill -9` or a power
//! cut, and the 1.2 `BLOCKED_FILE` derived from it.
//!
//! `BLOCK_STATE_FILE` holds JSON lines, one [`Entry`] each, appended and `fdatasync`ed in
//! batches by the block manager (its only writer). Replaying the lines in order gives the blocks
//! in force and the repeat-offence memory. A line that cannot be read (torn by a crash, damaged,
//! written by a newer version) is skipped with a warning, never fatal: losing one block is better
//! than a daemon that will not start. [`Journal::compact`] rewrites the file as its live state
//! (temp file, fsync, rename, fsync of the directory), so the path always holds either the old
//! file or the new one, whole.
//!
//! `BLOCKED_FILE` keeps its 1.2 meaning for outside tools ([`write_blocked_file`]); 1.2's own
//! files are read once, when the journal is first created ([`import_legacy`]).

use std::collections::HashMap;
use std::collections::hash_map;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    BlockRecord, Origin, Target, Trigger, excerpt, host_target, parse_target, target_text,
    time_text,
};
use crate::event::{Mode, Proto};
use crate::history::{HistoryEntry, history_line, parse_history_line};

/// A state file larger than this is refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 1 << 30;
/// A line longer than this is skipped without being kept in memory.
const MAX_LINE_BYTES: usize = 1 << 20;
/// Warnings listed one by one; the rest are counted, so a damaged file cannot flood the log.
const MAX_WARNINGS: usize = 100;
/// Times at or after 10000-01-01 cannot be written as RFC 3339 (and would panic the formatter).
const LAST_WRITABLE_SECS: u64 = 253_402_300_800;

/// One line of the journal. Lines are replayed in order; the `op` field names the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Entry {
    /// A block applied (or re-applied with new actions): replaces any earlier record of the
    /// same target and clears its offence memory.
    Block(BlockRecord),
    /// A block ended: the target leaves the active set and is remembered as an offender, so
    /// its next block can last longer.
    Unblock {
        /// Who was unblocked.
        target: Target,
        /// When the block ended.
        #[serde(with = "time_text")]
        at: SystemTime,
        /// Why it ended, for the operator reading the file.
        why: UnblockReason,
    },
    /// Repeat-offence memory of a target not blocked now. Compaction writes it in place of
    /// the Block/Unblock lines it drops, so the memory survives them.
    Offence {
        /// The former offender.
        target: Target,
        /// How many times it was blocked.
        offences: u32,
        /// Length of its last block in milliseconds; `None`: that block was permanent.
        #[serde(default)]
        last_duration_ms: Option<u64>,
        /// When its last block ended.
        #[serde(with = "time_text")]
        ended: SystemTime,
    },
}

impl Entry {
    /// The target the entry is about, so a caller can log or route it without matching.
    pub fn target(&self) -> Target {
        match self {
            Entry::Block(record) => record.target,
            Entry::Unblock { target, .. } | Entry::Offence { target, .. } => *target,
        }
    }

    /// The line that records `offence` as the memory of `target`.
    pub fn offence(target: Target, offence: &Offence) -> Entry {
        Entry::Offence {
            target,
            offences: offence.offences,
            last_duration_ms: offence
                .last_duration
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ended: offence.ended,
        }
    }

    /// Whether every time in the entry can be written as RFC 3339 text (1970 to 9999).
    fn writable(&self) -> bool {
        match self {
            Entry::Block(r) => writable(&r.since) && r.until.as_ref().is_none_or(writable),
            Entry::Unblock { at, .. } => writable(at),
            Entry::Offence { ended, .. } => writable(ended),
        }
    }
}

/// Whether `time` can be written as RFC 3339 text: from 1970 to the end of 9999.
fn writable(time: &SystemTime) -> bool {
    time.duration_since(UNIX_EPOCH)
        .is_ok_and(|d| d.as_secs() < LAST_WRITABLE_SECS)
}

/// Why a block ended, kept in its Unblock line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnblockReason {
    /// Its time ran out.
    Expired,
    /// An operator unblocked it.
    Manual,
    /// The manager gave it up (e.g. re-applying it after a restart failed).
    Released,
    /// A host block taken over by the block of its prefix (`ESCALATE_AFTER_V4` / `_V6`):
    /// the prefix covers it from now on.
    Escalated,
}

/// Repeat-offence memory for one target, so the next block of a returning scanner lasts
/// longer, even across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offence {
    /// How many times the target was blocked.
    pub offences: u32,
    /// Length of its last block; `None` when that block was permanent.
    pub last_duration: Option<Duration>,
    /// When its last block ended, so that old memory can be forgotten.
    pub ended: SystemTime,
}

/// What replaying the journal found: the state to restore and what had to be skipped.
#[derive(Debug, Default)]
pub struct Replay {
    /// Blocks in force when the file was last written, by target.
    pub active: HashMap<Target, BlockRecord>,
    /// Offence memory of targets not blocked now.
    pub offences: HashMap<Target, Offence>,
    /// One `path:line: …` text per skipped line (the first 100, then a count), for the log.
    pub warnings: Vec<String>,
    /// Non-blank lines read, good or bad: the file's size as compaction counts it.
    pub lines: usize,
}

impl Replay {
    fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Block(mut record) => {
                record.target = canonical(record.target);
                self.offences.remove(&record.target);
                self.active.insert(record.target, record);
            }
            Entry::Unblock { target, at, .. } => {
                let target = canonical(target);
                if let Some(record) = self.active.remove(&target) {
                    self.offences.insert(
                        target,
                        Offence {
                            offences: record.offences,
                            last_duration: record.duration(),
                            ended: at,
                        },
                    );
                }
            }
            Entry::Offence {
                target,
                offences,
                last_duration_ms,
                ended,
            } => {
                self.offences.insert(
                    canonical(target),
                    Offence {
                        offences,
                        last_duration: last_duration_ms.map(Duration::from_millis),
                        ended,
                    },
                );
            }
        }
    }
}

/// The open journal: the block manager owns one and is its only writer.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Non-blank lines in the file, for [`Journal::needs_compaction`].
    lines: usize,
    /// The file does not end in a newline (a torn line, a failed write): the next append
    /// starts with one.
    torn: bool,
}

impl Journal {
    /// Opens the journal, creating the file (mode 0600: it holds the commands that undo
    /// blocks) and its parent directories, and replays it. A path that is not a regular file,
    /// a file over 1 GiB or an unreadable one is an error naming the path; bad lines are only
    /// warnings.
    pub fn open(path: &Path) -> io::Result<(Journal, Replay)> {
        if let Some(dir) = parent_dir(path) {
            std::fs::create_dir_all(dir).map_err(|e| named(path, e))?;
        }
        if let Some(meta) = existing(path)? {
            check_regular(path, &meta)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            // Never wait on a FIFO swapped in after the check; fstat below refuses it.
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| named(path, e))?;
        check_regular(path, &file.metadata().map_err(|e| named(path, e))?)?;

        let mut replay = Replay::default();
        let mut warnings = Warnings::default();
        let torn = each_line(path, &file, |number, line| match line {
            Line::TooLong(len) => warnings.push(too_long(path, number, len)),
            Line::Text(bytes) => {
                if bytes.trim_ascii().is_empty() {
                    return;
                }
                replay.lines += 1;
                match serde_json::from_slice::<Entry>(bytes) {
                    Ok(entry) => replay.apply(entry),
                    Err(e) => warnings.push(format!(
                        "{}:{number}: {}, skipped: \"{}\"",
                        path.display(),
                        describe(&e),
                        excerpt(&String::from_utf8_lossy(bytes))
                    )),
                }
            }
        })?;
        replay.warnings = warnings.finish(path);
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            lines: replay.lines,
            torn,
        };
        Ok((journal, replay))
    }

    /// Appends the entries, one JSON object per line, then `fdatasync`s once for the batch.
    /// Only after `Ok` may the caller report them done. On error the batch is rolled back
    /// (best effort) so that it does not come back at the next replay.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(256 * entries.len() + 1);
        if self.torn {
            buf.push(b'\n');
        }
        for entry in entries {
            encode(&self.path, entry, &mut buf)?;
        }
        let before = self
            .file
            .metadata()
            .map_err(|e| named(&self.path, e))?
            .len();
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            let rolled_back = self
                .file
                .set_len(before)
                .and_then(|()| self.file.sync_data());
            if rolled_back.is_err() {
                self.torn = true;
            }
            return Err(named(&self.path, e));
        }
        self.torn = false;
        self.lines += entries.len();
        Ok(())
    }

    /// Whether the file has grown enough (past twice the `live` entries plus 1000 lines) to
    /// be worth rewriting with [`Journal::compact`].
    pub fn needs_compaction(&self, live: usize) -> bool {
        self.lines > live.saturating_mul(2).saturating_add(1000)
    }

    /// Rewrites the file as exactly these active blocks and this offence memory: a temp file
    /// in the same directory, fsync, rename over the journal, fsync of the directory. An error
    /// before the rename leaves the old file in use and intact. An error syncing the directory
    /// comes after the rename: the new file is in use, but a power cut may bring back the old
    /// one (which replays to the same blocks).
    pub fn compact<'a>(
        &mut self,
        active: impl Iterator<Item = &'a BlockRecord>,
        offences: impl Iterator<Item = (&'a Target, &'a Offence)>,
    ) -> io::Result<()> {
        let mut blocks: Vec<&BlockRecord> = active.collect();
        blocks.sort_by_key(|r| (r.since, r.target));
        let mut memory: Vec<(&Target, &Offence)> = offences.collect();
        memory.sort_by_key(|(t, _)| **t);
        let mut buf = Vec::with_capacity(256 * (blocks.len() + memory.len()));
        // Memory first: a Block line clears the memory of its target when replayed.
        for (target, offence) in &memory {
            encode(&self.path, &Entry::offence(**target, offence), &mut buf)?;
        }
        for record in &blocks {
            encode(&self.path, &Entry::Block((*record).clone()), &mut buf)?;
        }

        let tmp = sibling(&self.path, "compact");
        let written = (|| {
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&buf)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(file)
        })();
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{}: compaction via {} failed, the old file stays in use: {e}",
                        self.path.display(),
                        tmp.display()
                    ),
                ));
            }
        };
        self.file = file;
        self.lines = blocks.len() + memory.len();
        self.torn = false;
        sync_dir(&self.path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: compacted, but its directory could not be synced: {e}",
                    self.path.display()
                ),
            )
        })
    }

    /// The file the journal writes, for log lines.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Rewrites `BLOCKED_FILE` with its 1.2 meaning, the hosts blocked now, one 1.2 history line
/// each (resolved name = the target text), sorted by the time of the block so the output is
/// deterministic. Written to a temp file and renamed, so a reader never sees half a list.
pub fn write_blocked_file<'a>(
    path: &Path,
    records: impl Iterator<Item = &'a BlockRecord>,
) -> io::Result<()> {
    let mut records: Vec<&BlockRecord> = records.collect();
    records.sort_by_key(|r| (r.since, r.target));
    let mut text = String::with_capacity(100 * records.len());
    for record in records {
        let (port, proto) = record.port_proto();
        text.push_str(&history_line(
            record.since,
            &target_text(&record.target),
            record.target.addr(),
            port,
            proto,
        ));
    }
    if let Some(dir) = parent_dir(path) {
        std::fs::create_dir_all(dir).map_err(|e| named(path, e))?;
    }
    let tmp = sibling(path, "tmp");
    let written = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        named(path, e)
    })
}

/// Reads an existing 1.2 (or earlier Rust) `BLOCKED_FILE` and 1.2's per-mode files
/// (`<BLOCKED_FILE>.atcp`, …) into permanent records (origin import, one offence, no actions:
/// nothing to undo), one per target. The per-mode files are read first because their suffix
/// names the exact mode; `BLOCKED_FILE` lines get the classic mode of their protocol. Missing
/// files are fine; unreadable files and bad lines are warnings naming `path:line`.
pub fn import_legacy(blocked_file: &Path) -> (Vec<BlockRecord>, Vec<String>) {
    let mut found: HashMap<Target, BlockRecord> = HashMap::new();
    let mut warnings = Warnings::default();
    let sources = Mode::ALL
        .into_iter()
        .map(|mode| (legacy_path(blocked_file, mode), Some(mode)))
        .chain(std::iter::once((blocked_file.to_path_buf(), None)));
    for (path, mode) in sources {
        if let Err(e) = import_file(&path, mode, &mut found, &mut warnings) {
            warnings.push(format!("{e}; its blocks were not imported"));
        }
    }
    let mut records: Vec<BlockRecord> = found.into_values().collect();
    records.sort_by_key(|r| (r.since, r.target));
    (records, warnings.finish(blocked_file))
}

/// 1.2's per-mode file: `BLOCKED_FILE` with `.<mode>` appended (`portsentry.blocked.atcp`).
fn legacy_path(blocked_file: &Path, mode: Mode) -> PathBuf {
    let mut name = blocked_file.as_os_str().to_os_string();
    name.push(".");
    name.push(mode.as_str());
    PathBuf::from(name)
}

/// Adds the records of one legacy file to `found` (first one wins); a missing file adds none.
fn import_file(
    path: &Path,
    mode: Option<Mode>,
    found: &mut HashMap<Target, BlockRecord>,
    warnings: &mut Warnings,
) -> io::Result<()> {
    match existing(path)? {
        None => return Ok(()),
        Some(meta) => check_regular(path, &meta)?,
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| named(path, e))?;
    check_regular(path, &file.metadata().map_err(|e| named(path, e))?)?;
    each_line(path, &file, |number, line| {
        let bytes = match line {
            Line::TooLong(len) => return warnings.push(too_long(path, number, len)),
            Line::Text(bytes) if bytes.trim_ascii().is_empty() => return,
            Line::Text(bytes) => bytes,
        };
        let text = String::from_utf8_lossy(bytes);
        let Some(entry) = parse_history_line(&text) else {
            return warnings.push(format!(
                "{}:{number}: not a blocked-host line (expected \"<epoch> - MM/DD/YYYY \
                 HH:MM:SS Host: name/ip Port: n TCP|UDP Blocked\"), skipped: \"{}\"",
                path.display(),
                excerpt(&text)
            ));
        };
        if !writable(&entry.time) {
            return warnings.push(format!(
                "{}:{number}: time out of range (after the year 9999), skipped: \"{}\"",
                path.display(),
                excerpt(&text)
            ));
        }
        let record = imported(&entry, mode);
        if let hash_map::Entry::Vacant(v) = found.entry(record.target) {
            v.insert(record);
        }
    })?;
    Ok(())
}

/// The permanent record of one imported line.
fn imported(entry: &HistoryEntry, mode: Option<Mode>) -> BlockRecord {
    let host = host_target(entry.ip);
    // Our own BLOCKED_FILE writes a network block as `Host: 10.0.0.0/24/10.0.0.0`.
    let target = match parse_target(&entry.resolved) {
        Ok(net) if net.network() == host.addr() => net,
        _ => host,
    };
    let mode = mode.unwrap_or(match entry.proto {
        Proto::Tcp => Mode::Tcp,
        Proto::Udp => Mode::Udp,
    });
    BlockRecord {
        members: Vec::new(),
        target,
        since: entry.time,
        until: None,
        offences: 1,
        origin: Origin::Import,
        trigger: Some(Trigger {
            port: entry.port,
            proto: entry.proto,
            mode,
            kind: "imported".into(),
        }),
        reason: String::new(),
        actions: Vec::new(),
    }
}

/// A target in the form replay keys it by: truncated, IPv4-mapped addresses as IPv4.
fn canonical(target: Target) -> Target {
    parse_target(&target.to_string()).unwrap_or_else(|_| target.trunc())
}

/// Appends one entry and its newline to `buf`; a time that cannot be written is refused
/// here rather than panicking in the formatter.
fn encode(path: &Path, entry: &Entry, buf: &mut Vec<u8>) -> io::Result<()> {
    if !entry.writable() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: entry for {} has a time outside 1970..9999, not written",
                path.display(),
                target_text(&entry.target())
            ),
        ));
    }
    serde_json::to_writer(&mut *buf, entry).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: entry for {} cannot be written: {e}",
                path.display(),
                target_text(&entry.target())
            ),
        )
    })?;
    buf.push(b'\n');
    Ok(())
}

/// The serde_json error without its "at line 1 column n" (the line is ours to name).
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    match e.classify() {
        serde_json::error::Category::Eof => "torn entry (cut short, e.g. by a crash)".into(),
        serde_json::error::Category::Syntax => format!("not JSON ({text})"),
        serde_json::error::Category::Data => {
            format!("not an entry this version knows ({text})")
        }
        serde_json::error::Category::Io => text.to_string(),
    }
}

fn too_long(path: &Path, number: usize, len: u64) -> String {
    format!(
        "{}:{number}: line of {len} bytes is longer than the 1 MiB an entry may take, skipped",
        path.display()
    )
}

/// Warnings, the first [`MAX_WARNINGS`] in full, the rest counted.
#[derive(Default)]
struct Warnings {
    list: Vec<String>,
    more: usize,
}

impl Warnings {
    fn push(&mut self, warning: String) {
        if self.list.len() < MAX_WARNINGS {
            self.list.push(warning);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self, path: &Path) -> Vec<String> {
        if self.more > 0 {
            self.list.push(format!(
                "{}: {} more bad line(s) not listed",
                path.display(),
                self.more
            ));
        }
        self.list
    }
}

/// One line as [`each_line`] hands it over.
enum Line<'a> {
    /// Its bytes, without the newline.
    Text(&'a [u8]),
    /// It was longer than [`MAX_LINE_BYTES`]; only its length is known.
    TooLong(u64),
}

/// Calls `each` with the 1-based number and content of every line of `file`, holding at most
/// [`MAX_LINE_BYTES`] of one line and reading at most [`MAX_FILE_BYTES`] (more is an error).
/// Returns whether the file ends without a newline (a torn last line).
fn each_line(path: &Path, file: &File, mut each: impl FnMut(usize, Line<'_>)) -> io::Result<bool> {
    let mut reader = BufReader::with_capacity(64 * 1024, file.take(MAX_FILE_BYTES + 1));
    let mut line: Vec<u8> = Vec::new();
    let mut over: u64 = 0;
    let mut number = 0usize;
    let mut total = 0u64;
    let mut last = b'\n';
    loop {
        let chunk = reader.fill_buf().map_err(|e| named(path, e))?;
        let Some(&final_byte) = chunk.last() else {
            break;
        };
        let (piece, ends, used) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true, i + 1),
            None => (chunk, false, chunk.len()),
        };
        if over > 0 {
            over += piece.len() as u64;
        } else if line.len() + piece.len() > MAX_LINE_BYTES {
            over = (line.len() + piece.len()) as u64;
            line.clear();
        } else {
            line.extend_from_slice(piece);
        }
        last = if ends { b'\n' } else { final_byte };
        reader.consume(used);
        total += used as u64;
        if total > MAX_FILE_BYTES {
            return Err(too_large(path));
        }
        if ends {
            number += 1;
            deliver(&mut each, number, &line, over);
            line.clear();
            over = 0;
        }
    }
    let torn = last != b'\n';
    if torn {
        number += 1;
        deliver(&mut each, number, &line, over);
    }
    Ok(torn)
}

fn deliver(each: &mut impl FnMut(usize, Line<'_>), number: usize, line: &[u8], over: u64) {
    if over > 0 {
        each(number, Line::TooLong(over));
    } else {
        each(number, Line::Text(line));
    }
}

/// The metadata of `path`, `None` when it does not exist.
fn existing(path: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(named(path, e)),
    }
}

/// Refuses anything but a regular file of at most [`MAX_FILE_BYTES`]: reading a FIFO would
/// hang, reading `/dev/zero` would never end.
fn check_regular(path: &Path, meta: &Metadata) -> io::Result<()> {
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: not a regular file (a directory, FIFO or device), refusing to read it",
                path.display()
            ),
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(path));
    }
    Ok(())
}

fn too_large(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: larger than the 1 GiB a block state file may hold, refusing to read it",
            path.display()
        ),
    )
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().filter(|d| !d.as_os_str().is_empty())
}

/// `path` with `.suffix` appended: a temp file in the same directory, so rename is atomic.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Makes a rename in the directory of `path` durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path).unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::respond::{Action, Undo};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn target(text: &str) -> Target {
        parse_target(text).unwrap()
    }

    /// A scan block of `addr` at `since`, lasting `secs` (`None`: permanent).
    fn record(addr: &str, since: u64, secs: Option<u64>) -> BlockRecord {
        BlockRecord {
            members: Vec::new(),
            target: target(addr),
            since: at(since),
            until: secs.map(|s| at(since + s)),
            offences: 1,
            origin: Origin::Scan,
            trigger: Some(Trigger {
                port: 161,
                proto: Proto::Udp,
                mode: Mode::Sudp,
                kind: "UDP scan".into(),
            }),
            reason: String::new(),
            actions: vec![Action {
                responder: "route".into(),
                detail: format!("/sbin/route add -host {addr} reject"),
                undo: Undo::Command {
                    command: format!("/sbin/route del -host {addr} reject"),
                },
            }],
        }
    }

    fn state(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("portsentry.state")
    }

    fn append_raw(path: &Path, text: &str) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn json_line(entry: &Entry) -> String {
        serde_json::to_string(entry).unwrap() + "\n"
    }

    #[test]
    fn fleet_blocks_round_trip_with_their_source_and_old_lines_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        let mut fleet = record("198.51.100.0/24", 1_700_000_000, Some(30));
        fleet.origin = Origin::Fleet;
        fleet.trigger = None;
        fleet.reason = "cscli manual 'ban' from 'localhost'".into();
        j.append(&[Entry::Block(fleet.clone())]).unwrap();
        drop(j);
        // A line written before fleet blocks existed, beside the new one.
        let old = record("10.0.0.9", 1_700_000_001, Some(60));
        append_raw(&path, &json_line(&Entry::Block(old.clone())));
        let (_, replay) = Journal::open(&path).unwrap();
        assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
        let back = &replay.active[&fleet.target];
        assert_eq!(back, &fleet);
        assert_eq!(back.origin_text(), "fleet:cscli");
        assert_eq!(replay.active[&old.target].origin_text(), "scan");
    }

    #[test]
    fn appended_blocks_come_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, replay) = Journal::open(&path).unwrap();
        assert!(replay.active.is_empty() && replay.warnings.is_empty());
        assert_eq!(replay.lines, 0);
        let a = record("10.0.0.1", 1_700_000_000, Some(3600));
        let b = record("fd77::5", 1_700_000_001, None);
        let mut net = record("192.0.2.0/24", 1_700_000_002, Some(60));
        net.origin = Origin::Manual;
        net.trigger = None;
        net.reason = "noisy network".into();
        j.append(&[
            Entry::Block(a.clone()),
            Entry::Block(b.clone()),
            Entry::Block(net.clone()),
        ])
        .unwrap();
        // A re-applied block replaces the earlier record of its target.
        let mut b2 = b.clone();
        b2.actions.clear();
        j.append(&[Entry::Block(b2.clone())]).unwrap();
        drop(j);

        let (j, replay) = Journal::open(&path).unwrap();
        assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
        assert_eq!(replay.lines, 4);
        let expected: HashMap<Target, BlockRecord> =
            [a, b2, net].into_iter().map(|r| (r.target, r)).collect();
        assert_eq!(replay.active, expected);
        assert!(replay.offences.is_empty());
        assert_eq!(j.path(), path.as_path());
    }

    #[test]
    fn unblock_removes_the_block_and_remembers_the_offence() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        let mut rec = record("10.0.0.1", 1_700_000_000, Some(3600));
        rec.offences = 2;
        let other = record("10.0.0.2", 1_700_000_000, None);
        j.append(&[Entry::Block(rec.clone()), Entry::Block(other.clone())])
            .unwrap();
        let unblock = Entry::Unblock {
            target: rec.target,
            at: at(1_700_003_600),
            why: UnblockReason::Expired,
        };
        assert!(
            json_line(&unblock).starts_with(
                "{\"op\":\"unblock\",\"target\":\"10.0.0.1/32\",\
                 \"at\":\"2023-11-14T23:13:20.000Z\",\"why\":\"expired\"}"
            ),
            "{}",
            json_line(&unblock)
        );
        j.append(&[unblock]).unwrap();
        drop(j);
        let (mut j, replay) = Journal::open(&path).unwrap();
        assert_eq!(
            replay.active.keys().collect::<Vec<_>>(),
            vec![&other.target]
        );
        assert_eq!(
            replay.offences.get(&rec.target),
            Some(&Offence {
                offences: 2,
                last_duration: Some(Duration::from_secs(3600)),
                ended: at(1_700_003_600),
            })
        );
        // The returning scanner's new block clears the memory; an Offence line sets it.
        let mut again = rec.clone();
        again.offences = 3;
        let memory = Offence {
            offences: 4,
            last_duration: None,
            ended: at(1_600_000_000),
        };
        j.append(&[
            Entry::Block(again.clone()),
            Entry::offence(target("10.0.0.9"), &memory),
        ])
        .unwrap();
        drop(j);
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.active.get(&rec.target), Some(&again));
        assert!(!replay.offences.contains_key(&rec.target));
        assert_eq!(replay.offences.get(&target("10.0.0.9")), Some(&memory));
    }

    #[test]
    fn torn_last_line_is_skipped_and_the_next_append_starts_a_fresh_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(&[Entry::Block(record("10.0.0.1", 1_700_000_000, None))])
            .unwrap();
        drop(j);
        // kill -9 in the middle of the second write.
        let full = json_line(&Entry::Block(record("10.0.0.2", 1_700_000_001, None)));
        append_raw(&path, &full[..full.len() / 2]);

        let (mut j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.active.len(), 1);
        assert_eq!(replay.warnings.len(), 1, "{:?}", replay.warnings);
        let w = &replay.warnings[0];
        assert!(
            w.starts_with(&format!("{}:2: torn entry", path.display())),
            "{w}"
        );
        assert!(
            w.chars().count() < path.display().to_string().len() + 160,
            "{w}"
        );

        let third = record("10.0.0.3", 1_700_000_002, None);
        j.append(&[Entry::Block(third.clone())]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(&format!("\n{}", json_line(&Entry::Block(third)))));
        drop(j);
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.active.len(), 2);
        assert!(replay.active.contains_key(&target("10.0.0.3")));
        assert_eq!(replay.warnings.len(), 1, "still only the torn line");
        assert_eq!(replay.lines, 3);
    }

    #[test]
    fn garbage_and_unknown_lines_in_the_middle_are_skipped_with_their_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let garbage = "x".repeat(200);
        std::fs::write(
            &path,
            format!(
                "{}{garbage}\n\n{{\"op\":\"teleport\",\"target\":\"10.0.0.9/32\"}}\n{}",
                json_line(&Entry::Block(record("10.0.0.1", 1, None))),
                json_line(&Entry::Block(record("10.0.0.2", 2, None))),
            ),
        )
        .unwrap();
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.active.len(), 2);
        assert_eq!(replay.lines, 4, "the blank line is not counted");
        let [w2, w4] = replay.warnings.as_slice() else {
            panic!("{:?}", replay.warnings)
        };
        let p = path.display().to_string();
        assert!(w2.starts_with(&format!("{p}:2: not JSON")), "{w2}");
        assert!(!w2.contains(&garbage), "quotes at most ~60 chars: {w2}");
        assert!(w4.starts_with(&format!("{p}:4: not an entry")), "{w4}");
        assert!(w4.contains("teleport"), "{w4}");
    }

    #[test]
    fn over_long_line_is_skipped_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let long = "y".repeat(MAX_LINE_BYTES + 10);
        std::fs::write(
            &path,
            format!(
                "{long}\n{}",
                json_line(&Entry::Block(record("10.0.0.1", 1, None)))
            ),
        )
        .unwrap();
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.active.len(), 1);
        let [w] = replay.warnings.as_slice() else {
            panic!("{:?}", replay.warnings)
        };
        assert!(
            w.starts_with(&format!("{}:1: line of 1048586 bytes", path.display())),
            "{w}"
        );
    }

    #[test]
    fn a_flood_of_bad_lines_gives_a_bounded_list_of_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        std::fs::write(&path, "bad\n".repeat(500)).unwrap();
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.warnings.len(), MAX_WARNINGS + 1);
        assert!(
            replay.warnings[MAX_WARNINGS].ends_with(": 400 more bad line(s) not listed"),
            "{}",
            replay.warnings[MAX_WARNINGS]
        );
    }

    #[test]
    fn compaction_keeps_active_blocks_and_offences_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        for i in 0..600u64 {
            let rec = record(
                &format!("10.0.{}.{}", i / 256, i % 256),
                1_700_000_000 + i,
                Some(60),
            );
            let mut batch = vec![Entry::Block(rec.clone())];
            if i >= 5 {
                batch.push(Entry::Unblock {
                    target: rec.target,
                    at: at(1_700_000_060 + i),
                    why: UnblockReason::Expired,
                });
            }
            j.append(&batch).unwrap();
        }
        assert!(j.needs_compaction(5));
        let before = std::fs::metadata(&path).unwrap().len();
        drop(j);
        let (mut j, replay) = Journal::open(&path).unwrap();
        assert_eq!((replay.active.len(), replay.offences.len()), (5, 595));
        // The manager forgets old offenders: keep only some of them.
        let kept: HashMap<Target, Offence> = replay
            .offences
            .iter()
            .filter(|(_, o)| o.ended >= at(1_700_000_600))
            .map(|(t, o)| (*t, *o))
            .collect();
        j.compact(replay.active.values(), kept.iter()).unwrap();
        assert!(!j.needs_compaction(5));
        let after = std::fs::metadata(&path).unwrap();
        assert!(after.len() < before / 2, "{} -> {}", before, after.len());
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
        assert!(!sibling(&path, "compact").exists(), "no temp file left");

        // Still the journal in use: appends after compaction survive a reopen.
        let late = record("10.9.9.9", 1_800_000_000, None);
        j.append(&[Entry::Block(late.clone())]).unwrap();
        drop(j);
        let (_, again) = Journal::open(&path).unwrap();
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
        let mut expected = replay.active.clone();
        expected.insert(late.target, late);
        assert_eq!(again.active, expected);
        assert_eq!(again.offences, kept);
        assert_eq!(again.lines, 6 + kept.len());
    }

    #[test]
    fn failed_compaction_leaves_the_old_file_in_use_and_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        let a = record("10.0.0.1", 1, None);
        j.append(&[Entry::Block(a.clone())]).unwrap();
        let before = std::fs::read(&path).unwrap();
        // The temp file cannot be created: a directory holds its name.
        std::fs::create_dir(sibling(&path, "compact")).unwrap();
        let err = j
            .compact(std::iter::empty(), std::iter::empty())
            .unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let b = record("10.0.0.2", 2, None);
        j.append(&[Entry::Block(b.clone())]).unwrap();
        drop(j);
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(
            replay.active.len(),
            2,
            "compaction to nothing did not happen"
        );
    }

    #[test]
    fn fifo_dev_zero_and_directories_are_refused_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for path in [fifo.clone(), PathBuf::from("/dev/zero"), dir.path().into()] {
            let (tx, rx) = mpsc::channel();
            let p = path.clone();
            std::thread::spawn(move || {
                let _ = tx.send(Journal::open(&p).map(|_| ()));
            });
            let result = rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("{} hung", path.display()));
            let err = result.unwrap_err();
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        // The legacy import says so too, rather than hanging.
        let (records, warnings) = import_legacy(&fifo);
        assert!(records.is_empty());
        assert!(warnings[0].contains("not a regular file"), "{warnings:?}");
    }

    #[test]
    fn new_state_file_is_private_and_its_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/portsentry/portsentry.state");
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.lines, 0);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn times_that_cannot_be_written_are_refused_without_touching_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        let mut rec = record("10.0.0.1", 1, None);
        rec.until = Some(at(LAST_WRITABLE_SECS + 1));
        let err = j.append(&[Entry::Block(rec)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("10.0.0.1"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        j.append(&[Entry::Block(record("10.0.0.2", 1, None))])
            .unwrap();
        assert_eq!(Journal::open(&path).unwrap().1.active.len(), 1);
    }

    #[test]
    fn needs_compaction_past_twice_the_live_entries_plus_a_thousand() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        std::fs::write(&path, "{}\n".repeat(1010)).unwrap();
        let (j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.lines, 1010);
        assert!(j.needs_compaction(4));
        assert!(!j.needs_compaction(5));
    }

    #[test]
    fn blocked_file_holds_the_1_2_lines_of_the_blocks_in_force_sorted_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib/portsentry.blocked");
        let late = record("10.0.0.1", 942_286_800, Some(60));
        let mut early = record("192.0.2.0/24", 942_286_729, None);
        early.trigger = None;
        early.origin = Origin::Manual;
        let v6 = record("fd77::5", 942_286_900, None);
        write_blocked_file(&path, [&v6, &late, &early].into_iter()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = [
            history_line(
                at(942_286_729),
                "192.0.2.0/24",
                "192.0.2.0".parse().unwrap(),
                0,
                Proto::Tcp,
            ),
            history_line(
                at(942_286_800),
                "10.0.0.1",
                "10.0.0.1".parse().unwrap(),
                161,
                Proto::Udp,
            ),
            history_line(
                at(942_286_900),
                "fd77::5",
                "fd77::5".parse().unwrap(),
                161,
                Proto::Udp,
            ),
        ]
        .concat();
        assert_eq!(text, expected);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("942286729 - "), "{}", lines[0]);
        assert!(
            lines[1].ends_with(" Host: 10.0.0.1/10.0.0.1 Port: 161 UDP Blocked"),
            "{}",
            lines[1]
        );
        let back: Vec<HistoryEntry> = lines
            .iter()
            .map(|l| parse_history_line(l).unwrap())
            .collect();
        assert_eq!(back[2].ip, "fd77::5".parse::<std::net::IpAddr>().unwrap());
        assert_eq!((back[1].port, back[1].proto), (161, Proto::Udp));
        assert_eq!(back[0].resolved, "192.0.2.0/24");

        // Rewritten whole, not appended to; no temp file left.
        write_blocked_file(&path, [&late].into_iter()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert!(!sibling(&path, "tmp").exists());
        write_blocked_file(&path, std::iter::empty()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn import_of_our_own_blocked_file_keeps_network_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portsentry.blocked");
        let mut net = record("192.0.2.0/24", 942_286_729, None);
        net.trigger = None;
        write_blocked_file(&path, [&net, &record("10.0.0.1", 5, None)].into_iter()).unwrap();
        let (records, warnings) = import_legacy(&path);
        assert!(warnings.is_empty(), "{warnings:?}");
        let targets: Vec<String> = records.iter().map(|r| target_text(&r.target)).collect();
        assert_eq!(targets, ["10.0.0.1", "192.0.2.0/24"]);
    }

    #[test]
    fn import_reads_blocked_file_and_per_mode_files_with_their_modes_once_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("portsentry.blocked");
        let tcp =
            "942286729 - 11/10/1999 20:18:49 Host: 192.168.2.12/192.168.2.12 Port: 111 TCP Blocked";
        let udp = "942286800 - 11/10/1999 20:20:00 Host: h.example/10.9.9.9 Port: 161 UDP Blocked";
        let v6 = "942286900 - 11/10/1999 20:21:40 Host: fd77::7/fd77::7 Port: 7 UDP Blocked";
        let mapped = "942287000 - 11/10/1999 20:23:20 Host: x/::ffff:10.1.1.1 Port: 80 TCP Blocked";
        std::fs::write(&blocked, format!("{tcp}\r\ngarbage line\n\n{v6}\n{mapped}")).unwrap();
        std::fs::write(legacy_path(&blocked, Mode::Atcp), format!("{tcp}\n")).unwrap();
        std::fs::write(legacy_path(&blocked, Mode::Sudp), format!("{udp}\n")).unwrap();
        std::fs::write(
            legacy_path(&blocked, Mode::Audp),
            "942287100 - 11/10/1999 20:25:00 Host: 1.2.3.4/1.2.3.4 Port: 1 ICMP Blocked\n",
        )
        .unwrap();

        let (records, warnings) = import_legacy(&blocked);
        let [w_audp, w_blocked] = warnings.as_slice() else {
            panic!("{warnings:?}")
        };
        assert!(
            w_audp.starts_with(&format!(
                "{}.audp:1: not a blocked-host line",
                blocked.display()
            )),
            "{w_audp}"
        );
        assert!(
            w_blocked.starts_with(&format!("{}:2: ", blocked.display())),
            "{w_blocked}"
        );
        let summary: Vec<(String, Mode, u16, Proto, SystemTime)> = records
            .iter()
            .map(|r| {
                let t = r.trigger.as_ref().unwrap();
                (target_text(&r.target), t.mode, t.port, t.proto, r.since)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "192.168.2.12".into(),
                    Mode::Atcp,
                    111,
                    Proto::Tcp,
                    at(942_286_729)
                ),
                (
                    "10.9.9.9".into(),
                    Mode::Sudp,
                    161,
                    Proto::Udp,
                    at(942_286_800)
                ),
                ("fd77::7".into(), Mode::Udp, 7, Proto::Udp, at(942_286_900)),
                (
                    "10.1.1.1".into(),
                    Mode::Tcp,
                    80,
                    Proto::Tcp,
                    at(942_287_000)
                ),
            ]
        );
        for r in &records {
            assert_eq!((r.until, r.offences, r.origin), (None, 1, Origin::Import));
            assert!(r.actions.is_empty() && r.reason.is_empty());
            assert_eq!(r.trigger.as_ref().unwrap().kind, "imported");
        }
        // The old files are only read.
        assert_eq!(
            std::fs::read_to_string(legacy_path(&blocked, Mode::Atcp)).unwrap(),
            format!("{tcp}\n")
        );
    }

    #[test]
    fn import_of_nothing_is_empty_and_out_of_range_times_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("portsentry.blocked");
        assert_eq!(import_legacy(&blocked), (Vec::new(), Vec::new()));
        std::fs::write(
            &blocked,
            "99999999999999 - 11/10/1999 20:18:49 Host: a/10.0.0.1 Port: 1 TCP Blocked\n",
        )
        .unwrap();
        let (records, warnings) = import_legacy(&blocked);
        assert!(records.is_empty());
        assert!(
            warnings[0].contains(":1: time out of range"),
            "{warnings:?}"
        );
    }
}
