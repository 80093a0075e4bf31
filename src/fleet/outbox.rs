//! The pusher's persistent outbox: what is still to be told to the LAPI (decisions to post,
//! decisions to delete), as JSON lines beside the block journal, so that a LAPI that is down
//! or a daemon restart loses nothing. Each item is appended (fsynced) before delivery is
//! tried and acknowledged by an `ack` line after the LAPI took it; opening replays the file
//! and keeps the items without an ack, in order. A torn last line (a crash mid-write) is
//! skipped with a warning. The file is rewritten with only what is pending once acks
//! dominate it, and the number of pending items is bounded: beyond [`MAX_PENDING`] the
//! oldest is dropped (counted and logged).
//!
//! The outbox also remembers which LAPI decision ids each posted value got (`known` lines,
//! cancelled by `forget` lines), so that lifting a block deletes exactly this host's
//! decisions by id, never another portsentry host's decision for the same address. Files
//! written before those lines existed load as they are: their values are simply unknown.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Items waiting at most; a LAPI down for days must not fill the disk.
pub const MAX_PENDING: usize = 10_000;
/// Values whose decision ids are remembered at most; beyond, a new value is not
/// remembered (its delete falls back to scope, value and origin) rather than letting the
/// file grow without bound.
pub const MAX_KNOWN: usize = 100_000;
/// Acknowledged lines tolerated in the file before it is rewritten.
const COMPACT_AFTER: usize = 1_000;

/// A decision to post: everything the alert needs, with absolute times so that a delivery
/// after a restart still posts the time that is left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Post {
    /// `Ip` or `Range`.
    pub scope: String,
    /// Canonical address or network.
    pub value: String,
    /// `portsentry/port-scan` or `portsentry/manual`.
    pub scenario: String,
    /// Mode, ports and evidence, for people reading `cscli alerts list`.
    pub message: String,
    /// When the block began.
    #[serde(with = "crate::record::time_text")]
    pub since: SystemTime,
    /// When it ends; `None`: permanent.
    #[serde(with = "crate::record::opt_time_text", default)]
    pub until: Option<SystemTime>,
    /// The evidence, as the alert's events' `meta` (key, value) pairs: port, protocol,
    /// mode, probe kind for a scan; the reason for a block by hand. Empty in an outbox of
    /// an older version (then the alert has no events).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta: Vec<(String, String)>,
}

/// A decision to delete: by the ids remembered for `value` when known, else by scope, value
/// and our origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    /// `Ip` or `Range`.
    pub scope: String,
    /// Canonical address or network.
    pub value: String,
}

/// What is to be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Work {
    /// Post an alert with one ban decision.
    Post(Post),
    /// Delete our decision.
    Delete(Delete),
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Item {
        id: u64,
        work: Work,
    },
    Ack {
        ack: u64,
    },
    /// The LAPI decision ids this host's posts for `known` (a value) got; added to any
    /// already remembered for it.
    Known {
        known: String,
        ids: Vec<u64>,
    },
    /// The decisions of this value were deleted: its ids are no longer remembered.
    Forget {
        forget: String,
    },
}

/// The outbox: pending items in order, and the file that keeps them.
pub struct Outbox {
    path: PathBuf,
    file: File,
    pending: VecDeque<(u64, Work)>,
    /// Decision ids per value, of this host's own posted decisions not yet deleted.
    known: BTreeMap<String, Vec<u64>>,
    next_id: u64,
    /// Lines in the file that are no longer pending (acks and the items they ack).
    dead_lines: usize,
    /// Items dropped because the outbox was full, since the last time it was said.
    pub dropped: u64,
}

impl Outbox {
    /// Opens (creating it, mode 0600) and replays the file; warnings name the lines that
    /// could not be read.
    pub fn open(path: &Path) -> std::io::Result<(Outbox, Vec<String>)> {
        let mut warnings = Vec::new();
        let mut pending: VecDeque<(u64, Work)> = VecDeque::new();
        let mut known: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut next_id = 0;
        let mut lines = 0usize;
        if let Ok(f) = File::open(path) {
            for (n, line) in BufReader::new(f).split(b'\n').enumerate() {
                let line = line?;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                lines += 1;
                match serde_json::from_slice::<Line>(&line) {
                    Ok(Line::Item { id, work }) => {
                        next_id = next_id.max(id + 1);
                        pending.push_back((id, work));
                    }
                    Ok(Line::Ack { ack }) => pending.retain(|(id, _)| *id != ack),
                    Ok(Line::Known { known: value, ids }) => {
                        if known.len() < MAX_KNOWN || known.contains_key(&value) {
                            known.entry(value).or_default().extend(ids);
                        }
                    }
                    Ok(Line::Forget { forget }) => {
                        known.remove(&forget);
                    }
                    Err(e) => warnings.push(format!(
                        "{}:{}: skipped an unreadable outbox line ({e})",
                        path.display(),
                        n + 1
                    )),
                }
            }
        }
        while pending.len() > MAX_PENDING {
            pending.pop_front();
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let mut outbox = Outbox {
            path: path.to_path_buf(),
            file,
            dead_lines: lines.saturating_sub(pending.len() + known.len()),
            pending,
            known,
            next_id,
            dropped: 0,
        };
        // A torn last line must not glue itself to the next append.
        let len = outbox.file.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(len - 1))?;
            f.read_exact(&mut last)?;
            if last[0] != b'\n' {
                outbox.file.write_all(b"\n")?;
            }
        }
        outbox.compact_if_due()?;
        Ok((outbox, warnings))
    }

    /// The file, for log lines.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Items not yet delivered, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &(u64, Work)> {
        self.pending.iter()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Appends items (one write, one fsync); the oldest pending ones give way beyond
    /// [`MAX_PENDING`].
    pub fn push(&mut self, work: Vec<Work>) -> std::io::Result<()> {
        if work.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for w in work {
            let id = self.next_id;
            self.next_id += 1;
            let line = Line::Item { id, work: w };
            text.push_str(&serde_json::to_string(&line).map_err(std::io::Error::other)?);
            text.push('\n');
            if let Line::Item { id, work } = line {
                self.pending.push_back((id, work));
            }
            if self.pending.len() > MAX_PENDING {
                self.pending.pop_front();
                self.dropped += 1;
                self.dead_lines += 1;
            }
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    /// The decision ids remembered for `value`, if any.
    pub fn known_ids(&self, value: &str) -> Option<&[u64]> {
        self.known
            .get(value)
            .map(Vec::as_slice)
            .filter(|ids| !ids.is_empty())
    }

    /// Remembers (one write, one fsync) the decision ids a post of `value` got, beside any
    /// already remembered for it; nothing when [`MAX_KNOWN`] values are remembered already.
    pub fn remember(&mut self, value: &str, ids: &[u64]) -> std::io::Result<()> {
        if ids.is_empty() || (self.known.len() >= MAX_KNOWN && !self.known.contains_key(value)) {
            return Ok(());
        }
        let line = Line::Known {
            known: value.to_string(),
            ids: ids.to_vec(),
        };
        let entry = self.known.entry(value.to_string()).or_default();
        if !entry.is_empty() {
            // The earlier line for this value is superseded by the compacted one.
            self.dead_lines += 1;
        }
        entry.extend_from_slice(ids);
        self.append(&line)
    }

    /// Forgets (one write, one fsync) the ids of `value` once its decisions are deleted.
    pub fn forget(&mut self, value: &str) -> std::io::Result<()> {
        if self.known.remove(value).is_none() {
            return Ok(());
        }
        self.dead_lines += 2;
        self.append(&Line::Forget {
            forget: value.to_string(),
        })?;
        self.compact_if_due()
    }

    fn append(&mut self, line: &Line) -> std::io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    /// Marks items delivered (one write, one fsync), then compacts when due.
    pub fn ack(&mut self, ids: &[u64]) -> std::io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.pending.retain(|(id, _)| !ids.contains(id));
        let mut text = String::new();
        for &ack in ids {
            text.push_str(
                &serde_json::to_string(&Line::Ack { ack }).map_err(std::io::Error::other)?,
            );
            text.push('\n');
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        self.dead_lines += 2 * ids.len();
        self.compact_if_due()
    }

    /// Rewrites the file with only the pending items and the remembered decision ids (temp
    /// file, fsync, rename) once the dead lines outnumber them.
    fn compact_if_due(&mut self) -> std::io::Result<()> {
        if self.dead_lines < COMPACT_AFTER.max(self.pending.len() + self.known.len()) {
            return Ok(());
        }
        let tmp = self.path.with_extension("outbox.tmp");
        let mut text = String::new();
        for (value, ids) in &self.known {
            let line = Line::Known {
                known: value.clone(),
                ids: ids.clone(),
            };
            text.push_str(&serde_json::to_string(&line).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        for (id, work) in &self.pending {
            let line = Line::Item {
                id: *id,
                work: work.clone(),
            };
            text.push_str(&serde_json::to_string(&line).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.dead_lines = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn post(value: &str) -> Work {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Work::Post(Post {
            scope: "Ip".into(),
            value: value.into(),
            scenario: "portsentry/port-scan".into(),
            message: "m".into(),
            since,
            until: Some(since + Duration::from_secs(60)),
            meta: Vec::new(),
        })
    }

    fn delete(value: &str) -> Work {
        Work::Delete(Delete {
            scope: "Ip".into(),
            value: value.into(),
        })
    }

    fn values(o: &Outbox) -> Vec<String> {
        o.pending()
            .map(|(_, w)| match w {
                Work::Post(p) => format!("post {}", p.value),
                Work::Delete(d) => format!("delete {}", d.value),
            })
            .collect()
    }

    #[test]
    fn undelivered_items_survive_a_reopen_in_order_and_acked_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crowdsec.outbox");
        let (mut o, w) = Outbox::open(&path).unwrap();
        assert!(w.is_empty() && o.is_empty());
        o.push(vec![post("10.0.0.1"), post("10.0.0.2")]).unwrap();
        o.push(vec![delete("10.0.0.1")]).unwrap();
        let first = o.pending().next().unwrap().0;
        o.ack(&[first]).unwrap();
        drop(o);
        let (o, w) = Outbox::open(&path).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(values(&o), ["post 10.0.0.2", "delete 10.0.0.1"]);
        let mode = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_torn_last_line_is_skipped_with_a_warning_and_the_next_append_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        let (mut o, _) = Outbox::open(&path).unwrap();
        o.push(vec![post("10.0.0.1")]).unwrap();
        drop(o);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":9,\"work\":{\"op\":\"po").unwrap();
        drop(f);
        let (mut o, w) = Outbox::open(&path).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains(":2: skipped an unreadable outbox line"),
            "{w:?}"
        );
        o.push(vec![post("10.0.0.3")]).unwrap();
        drop(o);
        let (o, _) = Outbox::open(&path).unwrap();
        assert_eq!(values(&o), ["post 10.0.0.1", "post 10.0.0.3"]);
        let ids: Vec<u64> = o.pending().map(|(id, _)| *id).collect();
        assert!(ids[0] < ids[1], "ids keep growing across reopens: {ids:?}");
    }

    #[test]
    fn acks_are_compacted_away_and_ids_stay_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        let (mut o, _) = Outbox::open(&path).unwrap();
        for i in 0..1500u32 {
            o.push(vec![post(&format!("10.1.{}.{}", i / 256, i % 256))])
                .unwrap();
            let id = o.pending().last().unwrap().0;
            o.ack(&[id]).unwrap();
        }
        o.push(vec![post("10.9.9.9")]).unwrap();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 1100, "the file was compacted: {lines} lines");
        let last = o.pending().last().unwrap().0;
        assert_eq!(last, 1500);
        drop(o);
        let (o, _) = Outbox::open(&path).unwrap();
        assert_eq!(values(&o), ["post 10.9.9.9"]);
    }

    #[test]
    fn decision_ids_are_remembered_across_reopens_and_compaction_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        // A file from before the ids existed loads as it is: nothing known.
        std::fs::write(
            &path,
            "{\"id\":0,\"work\":{\"op\":\"delete\",\"scope\":\"Ip\",\"value\":\"10.0.0.9\"}}\n",
        )
        .unwrap();
        let (mut o, w) = Outbox::open(&path).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(values(&o), ["delete 10.0.0.9"]);
        assert_eq!(o.known_ids("10.0.0.9"), None);
        o.remember("10.0.0.1", &[7]).unwrap();
        o.remember("10.0.0.1", &[9]).unwrap();
        o.remember("fd77::1", &[8]).unwrap();
        o.remember("10.0.0.2", &[]).unwrap();
        drop(o);
        let (mut o, w) = Outbox::open(&path).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.known_ids("10.0.0.1"), Some(&[7, 9][..]));
        assert_eq!(o.known_ids("fd77::1"), Some(&[8][..]));
        assert_eq!(o.known_ids("10.0.0.2"), None);
        o.forget("fd77::1").unwrap();
        drop(o);
        let (mut o, _) = Outbox::open(&path).unwrap();
        assert_eq!(o.known_ids("fd77::1"), None, "forgotten after the delete");
        // Compaction keeps what is remembered (and the pending item).
        for i in 0..1500u32 {
            o.push(vec![post(&format!("10.1.{}.{}", i / 256, i % 256))])
                .unwrap();
            let id = o.pending().last().unwrap().0;
            o.ack(&[id]).unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 1100, "the file was compacted: {lines} lines");
        drop(o);
        let (o, _) = Outbox::open(&path).unwrap();
        assert_eq!(o.known_ids("10.0.0.1"), Some(&[7, 9][..]));
        assert_eq!(values(&o), ["delete 10.0.0.9"]);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        let (mut o, _) = Outbox::open(&path).unwrap();
        let many: Vec<Work> = (0..MAX_PENDING + 3)
            .map(|i| post(&format!("10.2.{}.{}", i / 256, i % 256)))
            .collect();
        o.push(many).unwrap();
        assert_eq!(o.pending().count(), MAX_PENDING);
        assert_eq!(o.dropped, 3);
        assert_eq!(values(&o)[0], "post 10.2.0.3");
    }
}
