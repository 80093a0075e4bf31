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
//! A full or read-only disk does not stop the daemon: a journal that cannot be written keeps
//! its entries in memory (up to [`MAX_PENDING_BYTES`], then asks for a rewrite of the live
//! state), writes them as soon as it can, and says so in the log and in `status` (see
//! [`crate::storage`]). A failed write is cut back to where the file ended, so nothing
//! journaled before is ever lost or truncated.
//!
//! `BLOCKED_FILE` keeps its 1.2 meaning for outside tools ([`write_blocked_file`]); 1.2's own
//! files are read once, when the journal is first created ([`import_legacy`]).

use std::collections::HashMap;
use std::collections::hash_map;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    BlockRecord, Origin, Target, Trigger, excerpt, host_target, parse_target, target_text,
    time_text,
};
use crate::event::{Mode, Proto};
use crate::history::{HistoryEntry, history_line, parse_history_line};
use crate::log_lines;
use crate::storage::{Outage, StorageHealth, StoredFile, bare};

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

/// Why a block ended, kept in its Unblock line (plain data in [`crate::event`], which the
/// event log shares without importing the block manager).
pub use crate::event::UnblockReason;

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

/// Encoded entries kept in memory while the file cannot be written, at most (some 20,000
/// blocks). Past it they are let go and the file is rewritten whole from the blocks in force
/// (a compaction) as soon as it can be, so nothing the daemon still holds is lost.
pub const MAX_PENDING_BYTES: usize = 8 << 20;

/// Faults a unit test injects to see what a full disk, a failing fsync or a failing rename
/// leave behind: the bytes writes may still put down before they fail with ENOSPC, and
/// whether fsync, the rename of a compaction or an open for writing fail.
#[cfg(test)]
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    pub(crate) fail_sync: bool,
    pub(crate) fail_rename: bool,
    pub(crate) fail_open: bool,
}

/// The open journal: the block manager owns one and is its only writer.
///
/// While the file cannot be written (a full or read-only disk, a permission) the journal
/// keeps the entries it was given, in order, and writes them as soon as it can: at the next
/// [`Journal::record`] (each block) and every
/// [`RETRY_INTERVAL`](crate::storage::RETRY_INTERVAL) on
/// [`Journal::retry_pending`]. Past [`MAX_PENDING_BYTES`] it stops keeping them one by one
/// and asks for a rewrite of the live state instead ([`Journal::needs_compaction`]). A
/// failed write never leaves half an entry or cuts what was there before it: it is taken
/// back to the length the file had.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// Open for appending; `None` while it cannot be opened for writing (a read-only file
    /// system, a directory that cannot be created): opened again at the next try.
    file: Option<File>,
    /// Non-blank lines in the file, for [`Journal::needs_compaction`].
    lines: usize,
    /// The file does not end in a newline (a torn line, a failed write): the next append
    /// starts with one.
    torn: bool,
    /// Entries not written yet, oldest first, as whole encoded lines.
    pending: Vec<u8>,
    /// How many entries `pending` holds.
    pending_entries: usize,
    /// Past [`MAX_PENDING_BYTES`]: only a rewrite of the live state brings the file up to
    /// date.
    rewrite: bool,
    /// The file exists but could not be read at start: its blocks were not restored, so it
    /// is never rewritten this run, only appended to.
    unread: bool,
    /// Blocks recorded that the file does not hold yet (since its writes began failing).
    blocks_unwritten: u64,
    /// Entries given up at the bound (only a journal that was not read drops any).
    dropped: u64,
    /// Appends (and, past the bound, rewrites): what `status` shows as the journal's health.
    outage: Outage,
    /// Compactions of a journal whose appends work: only logged, nothing is lost.
    compaction: Outage,
    #[cfg(test)]
    faults: Faults,
    /// All of each write, but in tests playing a full disk.
    budget: crate::storage::WriteBudget,
}

impl Journal {
    /// Opens the journal, creating the file (mode 0600: it holds the commands that undo
    /// blocks) and its parent directories, and replays it. A path that is not a regular file,
    /// a file over 1 GiB or one that fails while being read is an error naming the path; bad
    /// lines are only warnings. A file that cannot be opened for writing (or created) is not
    /// an error: it is read if it can be, the failure is logged, and the journal keeps its
    /// entries until the file takes them. One that exists but cannot be read is logged too,
    /// and only appended to this run.
    pub fn open(path: &Path) -> io::Result<(Journal, Replay)> {
        let now = Instant::now();
        let mut write_error: Option<io::Error> = None;
        if let Some(dir) = parent_dir(path)
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            write_error = Some(e);
        }
        let mut unread_error: Option<io::Error> = None;
        match existing(path) {
            Ok(Some(meta)) => check_regular(path, &meta)?,
            Ok(None) => {}
            Err(e) => unread_error = Some(bare(&e, path)),
        }
        let writable = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            // Never wait on a FIFO swapped in after the check; fstat below refuses it.
            .custom_flags(libc::O_NONBLOCK)
            .open(path);
        let (file, read_only) = match writable {
            Ok(file) => (Some(file), None),
            Err(e) => {
                write_error.get_or_insert(e);
                match OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path)
                {
                    Ok(file) => (None, Some(file)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) =>
                    {
                        (None, None)
                    }
                    Err(e) => {
                        unread_error.get_or_insert(e);
                        (None, None)
                    }
                }
            }
        };

        let mut replay = Replay::default();
        let mut torn = false;
        let reader = file.as_ref().or(read_only.as_ref());
        if let Some(reader) = reader {
            unread_error = None;
            check_regular(path, &reader.metadata().map_err(|e| named(path, e))?)?;
            let mut warnings = Warnings::default();
            torn = each_line(path, reader, |number, line| match line {
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
        }
        let writing = file.is_some();
        let mut journal = Journal {
            path: path.to_path_buf(),
            file,
            lines: replay.lines,
            torn,
            pending: Vec::new(),
            pending_entries: 0,
            rewrite: false,
            unread: unread_error.is_some(),
            blocks_unwritten: 0,
            dropped: 0,
            outage: Outage::new(StoredFile::Journal, path),
            compaction: Outage::logged_only(
                StoredFile::Journal,
                "block state file (compaction)",
                path,
            ),
            #[cfg(test)]
            faults: Faults::default(),
            budget: Default::default(),
        };
        if let Some(e) = &unread_error {
            log::error!("{}", log_lines::state_file_unread(path, e));
        }
        if !writing && let Some(e) = write_error {
            let kept = journal.kept();
            journal.outage.failed(&e, &kept, now);
        }
        Ok((journal, replay))
    }

    /// Records what changed, in order: written at once (one `fdatasync` for the batch), or,
    /// while the file cannot be written, kept in memory and written as soon as it can be (a
    /// failed write is logged by the journal itself, at once and then once a minute). An
    /// entry whose time cannot be written (after 9999) is logged and left out.
    pub fn record(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        for entry in &entries {
            let block = u64::from(matches!(entry, Entry::Block(_)));
            if self.rewrite {
                self.blocks_unwritten += block;
                continue;
            }
            let mut line = Vec::with_capacity(256);
            match encode(&self.path, entry, &mut line) {
                Ok(()) => {
                    self.pending.extend_from_slice(&line);
                    self.pending_entries += 1;
                    self.blocks_unwritten += block;
                }
                Err(e) => log::error!("{}", log_lines::state_file_entry_refused(e)),
            }
        }
        self.bound();
        self.flush(Instant::now(), true);
    }

    /// Writes the entries that wait, if the retry timer says so; call it on every wake.
    pub fn retry_pending(&mut self, now: Instant) {
        self.flush(now, false);
    }

    /// Makes the next retry (and a compaction that is due) happen whatever the timers say: a
    /// last try before stopping.
    pub fn expedite(&mut self) {
        self.outage.expedite();
        self.compaction.expedite();
    }

    /// At stop, after a last [`Journal::retry_pending`] (and compaction): when the file still
    /// does not hold everything, says what the next start will not restore.
    pub fn close(&mut self) {
        self.outage.expedite();
        self.flush(Instant::now(), true);
        if self.rewrite || !self.pending.is_empty() {
            log::error!(
                "{}",
                log_lines::state_file_lost_at_stop(&self.path, self.blocks_unwritten)
            );
        }
    }

    /// Sends the journal's health (failing since, entries waiting, blocks not written) to
    /// the daemon's shared [`StorageHealth`].
    pub fn report_to(&mut self, health: &StorageHealth) {
        self.outage.report_to(health);
        self.publish();
    }

    /// Whether its writes are failing now.
    pub fn is_failing(&self) -> bool {
        self.outage.is_failing()
    }

    /// Entries waiting in memory to be written.
    pub fn pending_entries(&self) -> usize {
        self.pending_entries
    }

    /// Blocks recorded that the file does not hold yet.
    pub fn blocks_unwritten(&self) -> u64 {
        self.blocks_unwritten
    }

    /// Keeps the pending entries within [`MAX_PENDING_BYTES`]: past it they are let go for a
    /// rewrite of the live state, or, in a journal that was not read (never rewritten), the
    /// oldest are dropped.
    fn bound(&mut self) {
        if self.pending.len() <= MAX_PENDING_BYTES {
            return;
        }
        if self.unread {
            let excess = self.pending.len() - MAX_PENDING_BYTES;
            let cut = self.pending[excess..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.pending.len(), |i| excess + i + 1);
            let lost = self.pending[..cut].iter().filter(|&&b| b == b'\n').count();
            self.pending.drain(..cut);
            self.pending_entries = self.pending_entries.saturating_sub(lost);
            self.dropped += lost as u64;
        } else {
            self.pending = Vec::new();
            self.pending_entries = 0;
            self.rewrite = true;
        }
        self.publish();
    }

    /// Writes the pending entries when there are any and it is time (`asked`: a new entry
    /// asks at once).
    fn flush(&mut self, now: Instant, asked: bool) {
        if self.pending.is_empty() || self.rewrite || !(asked || self.outage.due(now)) {
            return;
        }
        let buf = std::mem::take(&mut self.pending);
        match self.reopen().and_then(|()| self.write_batch(&buf)) {
            Ok(()) => {
                let n = self.pending_entries;
                let was_failing = self.outage.is_failing();
                self.lines += n;
                self.pending_entries = 0;
                self.blocks_unwritten = 0;
                if was_failing {
                    self.outage
                        .recovered(&format!("{n} entr(y/ies) that waited in memory written"));
                }
            }
            Err(e) => {
                self.pending = buf;
                let kept = self.kept();
                self.outage.failed(&e, &kept, now);
            }
        }
        self.publish();
    }

    /// What the journal does while failing, for the log lines.
    fn kept(&self) -> String {
        format!(
            "{}; retrying every {}s and at each block",
            self.kept_entries(),
            crate::storage::RETRY_INTERVAL.as_secs()
        )
    }

    fn kept_entries(&self) -> String {
        let mib = MAX_PENDING_BYTES >> 20;
        if self.rewrite {
            format!(
                "{} block(s) made since it failed are not in it; past the {mib} MiB of entries \
                 kept in memory, it is rewritten whole from the blocks in force as soon as it \
                 can be",
                self.blocks_unwritten
            )
        } else if self.unread {
            format!(
                "{} entr(y/ies) kept in memory and written as soon as it can be (at most {mib} \
                 MiB; beyond, the oldest are dropped, since a file not read at start is never \
                 rewritten)",
                self.pending_entries
            )
        } else {
            format!(
                "{} entr(y/ies) ({} block(s)) kept in memory and written as soon as it can be \
                 (at most {mib} MiB of them; beyond, the file is rewritten whole from the \
                 blocks in force once it can be)",
                self.pending_entries, self.blocks_unwritten
            )
        }
    }

    fn publish(&mut self) {
        self.outage.keep(
            self.pending_entries as u64,
            self.blocks_unwritten,
            self.dropped,
        );
    }

    /// Opens the file for appending again when it could not be; a torn last line (from a
    /// crash, or a write that could not be taken back) makes the next append start a line.
    fn reopen(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        #[cfg(test)]
        if self.faults.fail_open {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if let Some(dir) = parent_dir(&self.path) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)?;
        let meta = file.metadata()?;
        check_regular(&self.path, &meta).map_err(|e| bare(&e, &self.path))?;
        self.torn = false;
        if meta.len() > 0 {
            let mut last = [0u8; 1];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, meta.len() - 1)?;
            self.torn = last[0] != b'\n';
        }
        self.file = Some(file);
        Ok(())
    }

    /// Appends `buf` (whole lines) and `fdatasync`s. On failure whatever part of it reached
    /// the file is cut off again, back to the length the file had, never shorter: nothing
    /// journaled before is touched. Should even that fail, the next append starts a line.
    fn write_batch(&mut self, buf: &[u8]) -> io::Result<()> {
        // The newline that ends a torn line, then the batch (not copied: it may be large).
        let newline: &[u8] = if self.torn { b"\n" } else { b"" };
        let (allowed_newline, allowed) = (
            self.budget.allow(newline.len()),
            self.budget.allow(buf.len()),
        );
        let sync_fails = self.sync_fails();
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let finish = |f: &mut File| {
            if sync_fails {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                f.sync_data()
            }
        };
        let parts = [(newline, allowed_newline), (buf, allowed)];
        if let Err((e, torn)) = crate::storage::append_whole(file, &parts, finish, true) {
            self.torn |= torn;
            return Err(e);
        }
        self.torn = false;
        Ok(())
    }

    #[cfg(not(test))]
    fn sync_fails(&self) -> bool {
        false
    }

    #[cfg(test)]
    fn sync_fails(&self) -> bool {
        self.faults.fail_sync
    }

    #[cfg(not(test))]
    fn rename_fails(&self) -> bool {
        false
    }

    #[cfg(test)]
    fn rename_fails(&self) -> bool {
        self.faults.fail_rename
    }

    /// Appends the entries at once, one JSON object per line, then `fdatasync`s once for the
    /// batch; for tools and tests (the manager uses [`Journal::record`]). Only after `Ok` are
    /// they in the file. On error nothing of the batch stays (see [`Journal::record`] for
    /// how a failed write is taken back); an entry whose time cannot be written refuses the
    /// batch before anything is written.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(256 * entries.len() + 1);
        for entry in entries {
            encode(&self.path, entry, &mut buf)?;
        }
        self.reopen()
            .and_then(|()| self.write_batch(&buf))
            .map_err(|e| named(&self.path, e))?;
        self.lines += entries.len();
        Ok(())
    }

    /// Whether the file should be rewritten with [`Journal::compact`]: it has grown past
    /// twice the `live` entries plus 1000 lines, or it fell so far behind (past
    /// [`MAX_PENDING_BYTES`]) that only a rewrite brings it up to date. While writes fail it
    /// asks once every [`RETRY_INTERVAL`](crate::storage::RETRY_INTERVAL); a journal not read
    /// at start never asks.
    pub fn needs_compaction(&self, live: usize) -> bool {
        if self.unread {
            return false;
        }
        let now = Instant::now();
        if self.rewrite {
            return self.outage.due(now);
        }
        self.lines > live.saturating_mul(2).saturating_add(1000)
            && self.compaction.due(now)
            && self.outage.due(now)
    }

    /// Rewrites the file as exactly these active blocks and this offence memory: a temp file
    /// in the same directory, fsync, rename over the journal, fsync of the directory. An error
    /// before the rename (a full disk while writing the temp file, a failing fsync) leaves the
    /// old file in use and intact, and removes the temp file. An error syncing the directory
    /// comes after the rename: the new file is in use, but a power cut may bring back the old
    /// one (which replays to the same blocks). Once renamed, the file holds the live state:
    /// entries that waited in memory are in it. A journal not read at start is never
    /// rewritten (its blocks were not restored).
    /// The blocks are written in the order given (the block manager gives them oldest
    /// first), each encoded as it comes, so the caller need not hold them all at once.
    pub fn compact<'a, R: std::borrow::Borrow<BlockRecord>>(
        &mut self,
        active: impl IntoIterator<Item = R>,
        offences: impl Iterator<Item = (&'a Target, &'a Offence)>,
    ) -> io::Result<()> {
        if self.unread {
            return Err(io::Error::other(format!(
                "{}: not read at start, so not rewritten before a start that can read it",
                self.path.display()
            )));
        }
        let now = Instant::now();
        let mut memory: Vec<(&Target, &Offence)> = offences.collect();
        memory.sort_by_key(|(t, _)| **t);
        let mut buf = Vec::with_capacity(256 * memory.len());
        // Memory first: a Block line clears the memory of its target when replayed.
        for (target, offence) in &memory {
            encode(&self.path, &Entry::offence(**target, offence), &mut buf)?;
        }
        let mut blocks = 0;
        for record in active {
            encode_block(&self.path, record.borrow(), &mut buf)?;
            blocks += 1;
        }

        let tmp = sibling(&self.path, "compact");
        let file = match self.write_temp(&tmp, &buf) {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                let err = io::Error::new(
                    e.kind(),
                    format!(
                        "compaction via {} failed, the old file stays in use: {e}",
                        tmp.display()
                    ),
                );
                if self.rewrite {
                    let kept = self.kept();
                    self.outage.failed(&err, &kept, now);
                } else {
                    let kept = format!(
                        "the file keeps growing until it can be compacted; tried again every {}s",
                        crate::storage::RETRY_INTERVAL.as_secs()
                    );
                    self.compaction.failed(&err, &kept, now);
                }
                self.publish();
                return Err(named(&self.path, err));
            }
        };
        let caught_up = self.rewrite || self.pending_entries > 0;
        self.file = Some(file);
        self.lines = blocks + memory.len();
        self.torn = false;
        self.pending = Vec::new();
        self.pending_entries = 0;
        self.rewrite = false;
        self.blocks_unwritten = 0;
        if caught_up || self.outage.is_failing() {
            self.outage
                .recovered("rewritten whole from the blocks in force: nothing is missing from it");
        }
        self.compaction.recovered("compacted");
        self.publish();
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

    /// The temp file of a compaction, written, synced and renamed over the journal.
    fn write_temp(&mut self, tmp: &Path, buf: &[u8]) -> io::Result<File> {
        match std::fs::remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        let allowed = self.budget.allow(buf.len());
        file.write_all(&buf[..allowed])?;
        if allowed < buf.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if self.sync_fails() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        file.sync_all()?;
        if self.rename_fails() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        std::fs::rename(tmp, &self.path)?;
        Ok(file)
    }

    /// The file the journal writes, for log lines.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `BLOCKED_FILE` as the block manager keeps it: rewritten whole when the blocks change;
/// while that fails (a full or read-only disk) the failure is logged at once and once a
/// minute, and the manager tries again.
#[derive(Debug)]
pub struct BlockedFile {
    outage: Outage,
    health: Option<StorageHealth>,
}

impl BlockedFile {
    /// Nothing written yet to `path`.
    pub fn new(path: &Path) -> BlockedFile {
        BlockedFile {
            outage: Outage::new(StoredFile::Blocked, path),
            health: None,
        }
    }

    /// Sends its health to the daemon's shared [`StorageHealth`].
    pub fn report_to(&mut self, health: &StorageHealth) {
        self.health = Some(health.clone());
        self.outage.report_to(health);
    }

    /// Rewrites `path` ([`write_blocked_file`]); false when that failed (the caller keeps it
    /// marked as changed and tries again).
    pub fn write(&mut self, path: &Path, records: impl IntoIterator<Item = BlockedLine>) -> bool {
        if path != self.outage.path() {
            self.outage = Outage::new(StoredFile::Blocked, path);
            if let Some(h) = &self.health {
                self.outage.report_to(h);
            }
        }
        match write_blocked_file(path, records) {
            Ok(()) => {
                self.outage.recovered("it lists the blocks in force again");
                true
            }
            Err(e) => {
                self.outage.failed(
                    &bare(&e, path),
                    "it is rewritten as soon as it can be, tried again every second (the \
                     blocks are in force and in the block state file meanwhile)",
                    Instant::now(),
                );
                false
            }
        }
    }
}

/// What `BLOCKED_FILE` says of one block: no more than its 1.2 line needs, so the manager
/// can list 100,000 blocks without making their full records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedLine {
    /// When the block was applied.
    pub since: SystemTime,
    /// Who is blocked.
    pub target: Target,
    /// The probed port (0 without a probe).
    pub port: u16,
    /// Its protocol (TCP without a probe).
    pub proto: Proto,
}

impl From<&BlockRecord> for BlockedLine {
    fn from(record: &BlockRecord) -> BlockedLine {
        let (port, proto) = record.port_proto();
        BlockedLine {
            since: record.since,
            target: record.target,
            port,
            proto,
        }
    }
}

/// Rewrites `BLOCKED_FILE` with its 1.2 meaning, the hosts blocked now, one 1.2 history line
/// each (resolved name = the target text), sorted by the time of the block so the output is
/// deterministic. Written to a temp file and renamed, so a reader never sees half a list.
pub fn write_blocked_file(
    path: &Path,
    records: impl IntoIterator<Item = BlockedLine>,
) -> io::Result<()> {
    let mut records: Vec<BlockedLine> = records.into_iter().collect();
    records.sort_by_key(|r| (r.since, r.target));
    let mut text = String::with_capacity(100 * records.len());
    for r in records {
        text.push_str(&history_line(
            r.since,
            &target_text(&r.target),
            r.target.addr(),
            r.port,
            r.proto,
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
    encode_line(path, entry.target(), entry.writable(), entry, buf)
}

/// The line of [`Entry::Block`] for a borrowed record (the same bytes, no copy of it made).
fn encode_block(path: &Path, record: &BlockRecord, buf: &mut Vec<u8>) -> io::Result<()> {
    #[derive(Serialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    enum Line<'a> {
        Block(&'a BlockRecord),
    }
    let writable = writable(&record.since) && record.until.as_ref().is_none_or(writable);
    encode_line(path, record.target, writable, &Line::Block(record), buf)
}

/// One journal line (`value` about `target`), unless a time in it cannot be written.
fn encode_line(
    path: &Path,
    target: Target,
    writable: bool,
    value: &impl Serialize,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    if !writable {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: entry for {} has a time outside 1970..9999, not written",
                path.display(),
                target_text(&target)
            ),
        ));
    }
    serde_json::to_writer(&mut *buf, value).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: entry for {} cannot be written: {e}",
                path.display(),
                target_text(&target)
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

/// The metadata of `path`, `None` when it does not exist (nor can: a file stands where a
/// directory of its path should be).
fn existing(path: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
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
            .compact(std::iter::empty::<BlockRecord>(), std::iter::empty())
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

    /// The blocks `path` replays to, by target text, and its warnings.
    fn replayed(path: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
        let (_, replay) = Journal::open(path).unwrap();
        let mut active: Vec<String> = replay.active.keys().map(target_text).collect();
        active.sort();
        let mut offences: Vec<String> = replay.offences.keys().map(target_text).collect();
        offences.sort();
        (active, offences, replay.warnings)
    }

    fn later() -> Instant {
        Instant::now() + crate::storage::RETRY_INTERVAL
    }

    #[test]
    fn a_full_disk_keeps_entries_in_memory_and_writes_them_in_order_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let health = StorageHealth::new();
        let (mut j, _) = Journal::open(&path).unwrap();
        j.report_to(&health);
        j.record(vec![Entry::Block(record("10.0.0.1", 1, None))]);
        let before = std::fs::read(&path).unwrap();

        // The disk fills up half way through the next line.
        j.budget.left = Some(40);
        let b = record("10.0.0.2", 2, Some(60));
        j.record(vec![Entry::Block(b.clone())]);
        assert!(j.is_failing());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the half line is cut off"
        );
        assert_eq!((j.pending_entries(), j.blocks_unwritten()), (1, 1));
        let h = health.get(StoredFile::Journal).unwrap();
        assert!(h.failing_since.is_some(), "{h:?}");
        assert!(h.error.contains("No space left on device"), "{h:?}");
        assert_eq!((h.waiting, h.blocks_unwritten), (1, 1));

        // Still full: the next block is tried at once and kept after the first.
        j.budget.left = Some(0);
        j.record(vec![
            Entry::Block(record("10.0.0.3", 3, None)),
            Entry::Unblock {
                target: b.target,
                at: at(70),
                why: UnblockReason::Expired,
            },
        ]);
        assert_eq!((j.pending_entries(), j.blocks_unwritten()), (3, 2));
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // Room again: nothing happens before the retry timer, everything after it.
        j.budget.left = None;
        j.retry_pending(Instant::now());
        assert_eq!(j.pending_entries(), 3, "not before the retry interval");
        j.retry_pending(later());
        assert!(!j.is_failing());
        assert_eq!((j.pending_entries(), j.blocks_unwritten()), (0, 0));
        let h = health.get(StoredFile::Journal).unwrap();
        assert_eq!(
            (h.failing_since, h.waiting, h.blocks_unwritten),
            (None, 0, 0)
        );
        let text = std::fs::read(&path).unwrap();
        assert!(
            text.starts_with(&before),
            "what was there before is untouched"
        );
        let (active, offences, warnings) = replayed(&path);
        assert!(warnings.is_empty(), "no torn line anywhere: {warnings:?}");
        assert_eq!(active, ["10.0.0.1", "10.0.0.3"]);
        assert_eq!(offences, ["10.0.0.2"], "the unblock came after its block");
        assert_eq!(j.lines, 4);
    }

    #[test]
    fn nothing_journaled_is_lost_or_truncated_wherever_a_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        j.record(vec![Entry::Block(record("10.1.0.1", 1, None))]);
        let batch = vec![
            Entry::Block(record("10.1.0.2", 2, None)),
            Entry::Block(record("fd77::2", 3, Some(60))),
        ];
        let mut len = 0;
        for e in &batch {
            encode(&path, e, &mut Vec::new()).unwrap();
            let mut one = Vec::new();
            encode(&path, e, &mut one).unwrap();
            len += one.len();
        }
        let before = std::fs::read(&path).unwrap();
        // Every place the disk can fill up in, the last byte included; then an fsync error.
        for budget in 0..len {
            j.budget.left = Some(budget);
            j.record(batch.clone());
            assert_eq!(std::fs::read(&path).unwrap(), before, "budget {budget}");
            assert!(j.is_failing());
            // Keep the queue to the one batch: drop what this round added.
            j.pending.clear();
            j.pending_entries = 0;
        }
        j.budget.left = None;
        j.faults.fail_sync = true;
        j.record(batch.clone());
        assert_eq!(std::fs::read(&path).unwrap(), before, "fsync error");
        assert_eq!(j.pending_entries(), 2);
        j.faults.fail_sync = false;
        j.retry_pending(later());
        let (active, _, warnings) = replayed(&path);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(active, ["10.1.0.1", "10.1.0.2", "fd77::2"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "each entry once: {text}");
    }

    #[test]
    fn a_journal_that_cannot_be_created_starts_empty_and_is_written_once_it_can_be() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the journal's directory should be: nothing can be created under it.
        let blocker = dir.path().join("lib");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("portsentry/portsentry.state");
        let (mut j, replay) = Journal::open(&path).expect("the start goes on");
        assert!(replay.active.is_empty() && replay.warnings.is_empty());
        assert!(j.is_failing() && !j.unread);
        j.record(vec![Entry::Block(record("10.2.0.1", 1, None))]);
        j.retry_pending(later());
        assert_eq!(j.pending_entries(), 1);
        // The admin fixes it: the next retry creates directory and file.
        std::fs::remove_file(&blocker).unwrap();
        j.expedite();
        j.retry_pending(Instant::now());
        assert!(!j.is_failing());
        assert_eq!(replayed(&path).0, ["10.2.0.1"]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_journal_reopened_for_writing_after_a_torn_write_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        j.record(vec![Entry::Block(record("10.3.0.1", 1, None))]);
        // As a crash mid-line leaves it, while the journal had lost its descriptor (a
        // read-only remount).
        let full = json_line(&Entry::Block(record("10.3.0.9", 9, None)));
        append_raw(&path, &full[..full.len() / 2]);
        j.file = None;
        j.faults.fail_open = true;
        j.record(vec![Entry::Block(record("10.3.0.2", 2, None))]);
        assert!(j.is_failing());
        j.faults.fail_open = false;
        j.retry_pending(later());
        assert!(!j.is_failing());
        let (active, _, warnings) = replayed(&path);
        assert_eq!(active, ["10.3.0.1", "10.3.0.2"]);
        assert_eq!(warnings.len(), 1, "only the torn line: {warnings:?}");
    }

    #[test]
    fn past_the_bound_the_file_is_rewritten_whole_from_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        let old = record("10.4.0.1", 1, None);
        j.record(vec![Entry::Block(old.clone())]);
        let before = std::fs::read(&path).unwrap();
        j.budget.left = Some(0);
        let mut live = vec![old];
        let mut n = 0;
        while !j.rewrite {
            n += 1;
            let mut r = record(&format!("10.4.{}.{}", n / 250 + 1, n % 250 + 1), n, None);
            r.reason = "x".repeat(64 * 1024);
            live.push(r.clone());
            j.record(vec![Entry::Block(r)]);
            assert!(n < 1000, "the bound was never reached");
        }
        assert_eq!(j.pending_entries(), 0, "let go for the rewrite");
        assert_eq!(j.blocks_unwritten(), n);
        assert!(
            j.pending.capacity() < MAX_PENDING_BYTES,
            "memory given back"
        );
        // More blocks are only counted now.
        let last = record("10.4.9.9", 5000, None);
        live.push(last.clone());
        j.record(vec![Entry::Block(last)]);
        assert_eq!((j.pending_entries(), j.blocks_unwritten()), (0, n + 1));
        assert!(
            !j.needs_compaction(live.len()),
            "not before the retry interval"
        );
        j.expedite();
        assert!(j.needs_compaction(live.len()));
        // Still full: the rewrite fails, the old file stays whole, no temp file is left.
        let err = j.compact(live.iter(), std::iter::empty()).unwrap_err();
        assert!(
            err.to_string().contains("the old file stays in use"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(!sibling(&path, "compact").exists());
        assert!(j.is_failing() && j.rewrite);
        // Room again.
        j.budget.left = None;
        j.expedite();
        assert!(j.needs_compaction(live.len()));
        j.compact(live.iter(), std::iter::empty()).unwrap();
        assert!(!j.is_failing() && !j.rewrite);
        assert_eq!(j.blocks_unwritten(), 0);
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.active.len(), live.len());
    }

    #[test]
    fn a_failing_rename_or_fsync_in_a_compaction_leaves_the_old_file_in_use_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        let a = record("10.5.0.1", 1, None);
        j.record(vec![Entry::Block(a.clone())]);
        let before = std::fs::read(&path).unwrap();
        for fault in ["rename", "sync", "write"] {
            j.faults.fail_rename = fault == "rename";
            j.faults.fail_sync = fault == "sync";
            j.budget.left = (fault == "write").then_some(5);
            assert!(j.compact([&a], std::iter::empty()).is_err());
            assert_eq!(std::fs::read(&path).unwrap(), before, "{fault}");
            assert!(!sibling(&path, "compact").exists(), "{fault}");
            assert!(j.compaction.is_failing() && !j.is_failing(), "{fault}");
        }
        j.faults = Faults::default();
        j.budget.left = None;
        // Appends still go to the old file, which is still the one in use.
        j.record(vec![Entry::Block(record("10.5.0.2", 2, None))]);
        assert!(!j.is_failing());
        assert_eq!(replayed(&path).0, ["10.5.0.1", "10.5.0.2"]);
        // A failed compaction is not tried again before the retry interval.
        j.lines = 5000;
        assert!(!j.needs_compaction(0));
        j.expedite();
        assert!(j.needs_compaction(0));
    }

    #[test]
    fn a_compaction_during_an_outage_holds_the_entries_that_waited() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        let a = record("10.6.0.1", 1, None);
        j.budget.left = Some(0);
        j.record(vec![Entry::Block(a.clone())]);
        assert_eq!(j.pending_entries(), 1);
        j.budget.left = None;
        j.compact([&a], std::iter::empty()).unwrap();
        assert!(!j.is_failing());
        assert_eq!(j.pending_entries(), 0, "the rewrite holds them");
        j.retry_pending(later());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "not written twice: {text}");
    }

    #[test]
    fn a_journal_not_read_at_start_drops_its_oldest_entries_at_the_bound_and_never_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = state(&dir);
        let (mut j, _) = Journal::open(&path).unwrap();
        j.unread = true;
        j.budget.left = Some(0);
        // 20 entries of some 512 KiB: more than the bound holds.
        for i in 1..=20 {
            let mut r = record(&format!("10.7.0.{i}"), i, None);
            r.reason = "y".repeat(512 * 1024);
            j.record(vec![Entry::Block(r)]);
        }
        assert!(!j.rewrite);
        assert!(j.pending.len() <= MAX_PENDING_BYTES);
        let kept = j.pending_entries();
        assert_eq!(j.dropped as usize, 20 - kept);
        assert!(kept > 10 && kept < 20, "{kept}");
        assert!(!j.needs_compaction(0));
        assert!(
            j.compact(std::iter::empty::<BlockRecord>(), std::iter::empty())
                .is_err()
        );
        j.budget.left = None;
        j.retry_pending(later());
        let expected: Vec<String> = (21 - kept..=20).map(|i| format!("10.7.0.{i}")).collect();
        let mut got = replayed(&path).0;
        let key = |t: &String| t.rsplit('.').next().unwrap().parse::<u32>().unwrap();
        got.sort_by_key(key);
        assert_eq!(got, expected, "the newest kept, the oldest dropped");
    }

    #[test]
    fn blocked_file_says_whether_it_was_written_and_follows_a_new_path() {
        let dir = tempfile::tempdir().unwrap();
        let health = StorageHealth::new();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let bad = blocker.join("portsentry.blocked");
        let mut b = BlockedFile::new(&bad);
        b.report_to(&health);
        let r = record("10.8.0.1", 1, None);
        assert!(!b.write(&bad, [BlockedLine::from(&r)]));
        assert!(
            health
                .get(StoredFile::Blocked)
                .unwrap()
                .failing_since
                .is_some()
        );
        let good = dir.path().join("portsentry.blocked");
        assert!(b.write(&good, [BlockedLine::from(&r)]));
        let h = health.get(StoredFile::Blocked).unwrap();
        assert_eq!(h.failing_since, None);
        assert_eq!(h.path, good.display().to_string());
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
        write_blocked_file(&path, [&v6, &late, &early].map(BlockedLine::from)).unwrap();
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
        write_blocked_file(&path, [BlockedLine::from(&late)]).unwrap();
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
        write_blocked_file(
            &path,
            [&net, &record("10.0.0.1", 5, None)].map(BlockedLine::from),
        )
        .unwrap();
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
