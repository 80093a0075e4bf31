//! The files the daemon keeps writing while it runs — the block journal
//! (`BLOCK_STATE_FILE`), `HISTORY_FILE` and `BLOCKED_FILE` — on a disk that may fill up, be
//! remounted read-only or lose a permission. None of that stops detection or blocking: each
//! writer keeps what it could not write (within a bound it names) and writes it as soon as it
//! can. This module is what the writers share: an [`Outage`] per file, which says at once when
//! the file starts failing, again once a minute while it lasts and once more when it works
//! again; and [`StorageHealth`], the snapshot `portsentry status` and the metrics read.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::log_lines;

/// How often a failing file is tried again when nothing else asks for a write (a new block
/// asks at once).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How often the log says again that a file still cannot be written.
pub const REMIND_INTERVAL: Duration = Duration::from_secs(60);

/// The files whose health is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoredFile {
    /// `BLOCK_STATE_FILE`, the block journal.
    Journal,
    /// `HISTORY_FILE`.
    History,
    /// `BLOCKED_FILE`.
    Blocked,
}

impl StoredFile {
    /// Every tracked file, in the order `status` lists them.
    pub const ALL: [StoredFile; 3] = [
        StoredFile::Journal,
        StoredFile::History,
        StoredFile::Blocked,
    ];

    /// Its name in `status` and in the metrics' `file` label.
    pub fn key(self) -> &'static str {
        match self {
            StoredFile::Journal => "journal",
            StoredFile::History => "history",
            StoredFile::Blocked => "blocked",
        }
    }

    /// How log lines name it.
    pub fn describe(self) -> &'static str {
        match self {
            StoredFile::Journal => "block state file",
            StoredFile::History => "history file",
            StoredFile::Blocked => "blocked file",
        }
    }
}

/// One file's state as `status` shows it (and the control socket carries it). Every field
/// but `file` defaults, so that fields added later read from an older daemon.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileHealth {
    /// `journal`, `history` or `blocked` ([`StoredFile::key`]).
    pub file: String,
    /// Its path.
    #[serde(default)]
    pub path: String,
    /// Since when its writes fail; `None`: they work.
    #[serde(with = "crate::record::opt_time_text", default)]
    pub failing_since: Option<SystemTime>,
    /// The last error while failing.
    #[serde(default)]
    pub error: String,
    /// Entries (journal) or lines (history) kept in memory until they can be written.
    #[serde(default)]
    pub waiting: u64,
    /// Journal: blocks made (or re-applied) since its writes began failing that it does not
    /// hold yet.
    #[serde(default)]
    pub blocks_unwritten: u64,
    /// Entries or lines given up at the memory bound since start.
    #[serde(default)]
    pub dropped: u64,
}

/// The health of every tracked file, shared: the block manager's thread (which owns the
/// writers) updates it, `status` and the metrics read it. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StorageHealth(Arc<Mutex<BTreeMap<StoredFile, FileHealth>>>);

impl StorageHealth {
    /// Nothing known yet.
    pub fn new() -> StorageHealth {
        StorageHealth::default()
    }

    /// Every file reported so far, journal first.
    pub fn snapshot(&self) -> Vec<FileHealth> {
        crate::sync::lock(&self.0).values().cloned().collect()
    }

    /// One file's health, if reported.
    pub fn get(&self, file: StoredFile) -> Option<FileHealth> {
        crate::sync::lock(&self.0).get(&file).cloned()
    }

    fn publish(&self, file: StoredFile, health: FileHealth) {
        crate::sync::lock(&self.0).insert(file, health);
    }
}

/// Since when, and why, a file's writes fail.
#[derive(Debug, Clone)]
struct Failing {
    since: SystemTime,
    started: Instant,
    error: String,
    /// When the log last said so.
    said: Instant,
}

/// What one writer knows about its file's failures: it decides when to try again, words the
/// log lines (the first failure at once, then once a minute, and the recovery) and publishes
/// the file's [`FileHealth`].
#[derive(Debug)]
pub struct Outage {
    file: StoredFile,
    /// How log lines name the file (`block state file`, …).
    what: &'static str,
    path: PathBuf,
    failing: Option<Failing>,
    /// When a write was last tried while failing.
    tried: Option<Instant>,
    /// Where the health goes; `None` for an outage only logged (compaction).
    health: Option<StorageHealth>,
    waiting: u64,
    blocks_unwritten: u64,
    dropped: u64,
}

impl Outage {
    /// A file that works until a write says otherwise.
    pub fn new(file: StoredFile, path: &Path) -> Outage {
        Outage {
            file,
            what: file.describe(),
            path: path.to_path_buf(),
            failing: None,
            tried: None,
            health: Some(StorageHealth::new()),
            waiting: 0,
            blocks_unwritten: 0,
            dropped: 0,
        }
    }

    /// An outage that is logged under another name (`what`) and shown nowhere: a failing
    /// compaction, which loses nothing.
    pub fn logged_only(file: StoredFile, what: &'static str, path: &Path) -> Outage {
        Outage {
            what,
            health: None,
            ..Outage::new(file, path)
        }
    }

    /// From now on the health goes to `health` (the daemon's shared one), starting with
    /// what is known now.
    pub fn report_to(&mut self, health: &StorageHealth) {
        if self.health.is_some() {
            self.health = Some(health.clone());
            self.publish();
        }
    }

    /// The file this outage is about.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether its writes are failing now.
    pub fn is_failing(&self) -> bool {
        self.failing.is_some()
    }

    /// Since when they fail.
    pub fn failing_since(&self) -> Option<SystemTime> {
        self.failing.as_ref().map(|f| f.since)
    }

    /// Whether a write should be tried now: always while the file works; while it fails,
    /// once every [`RETRY_INTERVAL`] (a writer asked by a new block may try at once anyway).
    pub fn due(&self, now: Instant) -> bool {
        self.failing.is_none()
            || self
                .tried
                .is_none_or(|t| now.saturating_duration_since(t) >= RETRY_INTERVAL)
    }

    /// Makes the next [`Outage::due`] true (a last try before stopping).
    pub fn expedite(&mut self) {
        self.tried = None;
    }

    /// The writer's own counts, for `status` and the metrics.
    pub fn keep(&mut self, waiting: u64, blocks_unwritten: u64, dropped: u64) {
        if (self.waiting, self.blocks_unwritten, self.dropped)
            != (waiting, blocks_unwritten, dropped)
        {
            (self.waiting, self.blocks_unwritten, self.dropped) =
                (waiting, blocks_unwritten, dropped);
            self.publish();
        }
    }

    /// A write (or open) failed with `err`. The first failure is logged at once, naming
    /// what the writer does meanwhile (`kept`); later ones once every [`REMIND_INTERVAL`].
    pub fn failed(&mut self, err: &io::Error, kept: &str, now: Instant) {
        self.tried = Some(now);
        let error = err.to_string();
        match &mut self.failing {
            None => {
                log::error!(
                    "{}",
                    log_lines::file_write_failing(self.what, &self.path, &error, kept)
                );
                self.failing = Some(Failing {
                    since: SystemTime::now(),
                    started: now,
                    error,
                    said: now,
                });
            }
            Some(f) => {
                let changed = f.error != error;
                f.error = error;
                if now.saturating_duration_since(f.said) >= REMIND_INTERVAL {
                    f.said = now;
                    log::error!(
                        "{}",
                        log_lines::file_still_failing(
                            self.what, &self.path, f.since, &f.error, kept
                        )
                    );
                } else if !changed {
                    return;
                }
            }
        }
        self.publish();
    }

    /// A write worked: when the file was failing, the log says it works again and what was
    /// caught up (`done`).
    pub fn recovered(&mut self, done: &str) {
        self.tried = None;
        if let Some(f) = self.failing.take() {
            log::warn!(
                "{}",
                log_lines::file_writable_again(self.what, &self.path, f.started.elapsed(), done)
            );
            self.publish();
        }
    }

    fn publish(&self) {
        let Some(health) = &self.health else { return };
        health.publish(
            self.file,
            FileHealth {
                file: self.file.key().to_string(),
                path: self.path.display().to_string(),
                failing_since: self.failing.as_ref().map(|f| f.since),
                error: self
                    .failing
                    .as_ref()
                    .map(|f| f.error.clone())
                    .unwrap_or_default(),
                waiting: self.waiting,
                blocks_unwritten: self.blocks_unwritten,
                dropped: self.dropped,
            },
        );
    }
}

/// The error of an `io::Error` without the path a caller put in front of it (`path: …`),
/// for log lines that name the path themselves.
pub fn bare(err: &io::Error, path: &Path) -> io::Error {
    let text = err.to_string();
    let prefix = format!("{}: ", path.display());
    match text.strip_prefix(&prefix) {
        Some(rest) => io::Error::new(err.kind(), rest.to_string()),
        None => io::Error::new(err.kind(), text),
    }
}

/// Space below which `--check-config` and the start call a file system full.
pub const NEARLY_FULL_BYTES: u64 = 1024 * 1024;

/// Why the file system that holds (or would hold) `path` cannot take writes now, if so:
/// mounted read-only, full (less than [`NEARLY_FULL_BYTES`] left to root), or out of inodes
/// for a file still to be created. `None` when it looks fine or cannot be checked.
// `c_ulong` and `fsblkcnt_t` are `u32` on some targets: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
pub fn file_system_problem(path: &Path) -> Option<String> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let exists = path.exists();
    let mut at = Some(path);
    let stat = loop {
        let p = at?;
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        if p.exists()
            && let Ok(s) = statvfs(p)
        {
            break s;
        }
        at = p.parent();
    };
    if stat.flags().contains(FsFlags::ST_RDONLY) {
        return Some("its file system is mounted read-only".into());
    }
    let block = u64::from(stat.fragment_size()).max(1);
    // The daemon runs as root, which may use the blocks reserved for it.
    let free = if nix::unistd::geteuid().is_root() {
        u64::from(stat.blocks_free())
    } else {
        u64::from(stat.blocks_available())
    }
    .saturating_mul(block);
    if free < NEARLY_FULL_BYTES && stat.blocks() > 0 {
        return Some(format!("its file system is full ({free} bytes free)"));
    }
    if !exists && stat.files() > 0 && stat.files_free() == 0 {
        return Some("its file system has no free inode to create it".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_due_at_once_then_every_retry_interval_and_publishes_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let health = StorageHealth::new();
        let mut o = Outage::new(StoredFile::Journal, &path);
        o.report_to(&health);
        let t0 = Instant::now();
        assert!(o.due(t0) && !o.is_failing());
        assert_eq!(health.get(StoredFile::Journal).unwrap().failing_since, None);

        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        o.failed(&full, "kept", t0);
        o.keep(3, 2, 0);
        assert!(!o.due(t0 + Duration::from_secs(1)));
        assert!(o.due(t0 + RETRY_INTERVAL));
        let h = health.get(StoredFile::Journal).unwrap();
        assert!(h.failing_since.is_some(), "{h:?}");
        assert!(h.error.contains("No space left on device"), "{h:?}");
        assert_eq!(
            (h.file.as_str(), h.waiting, h.blocks_unwritten),
            ("journal", 3, 2)
        );
        assert_eq!(h.path, path.display().to_string());

        o.expedite();
        assert!(o.due(t0));
        o.recovered("3 entries written");
        assert!(!o.is_failing() && o.due(t0));
        o.keep(0, 0, 0);
        let h = health.get(StoredFile::Journal).unwrap();
        assert_eq!(
            (h.failing_since, h.waiting, h.error.as_str()),
            (None, 0, "")
        );
    }

    #[test]
    fn a_logged_only_outage_publishes_nothing() {
        let health = StorageHealth::new();
        let mut o = Outage::logged_only(StoredFile::Journal, "compaction", Path::new("/x"));
        o.report_to(&health);
        o.failed(&io::Error::other("boom"), "kept", Instant::now());
        assert!(o.is_failing());
        assert!(health.snapshot().is_empty());
    }

    #[test]
    fn bare_takes_the_path_off_the_front_of_an_error() {
        let path = Path::new("/var/lib/portsentry/portsentry.state");
        let named = io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{}: No space left on device", path.display()),
        );
        let b = bare(&named, path);
        assert_eq!(b.to_string(), "No space left on device");
        assert_eq!(b.kind(), io::ErrorKind::StorageFull);
        assert_eq!(bare(&io::Error::other("x"), path).to_string(), "x");
    }

    #[test]
    fn a_writable_directory_has_no_file_system_problem_and_proc_is_not_called_full() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(file_system_problem(&dir.path().join("a/b/new")), None);
        assert_eq!(file_system_problem(Path::new("/proc/self/status")), None);
    }
}
