//! The set of blocked hosts, persisted in `BLOCKED_FILE`, and the [`BlockedFilter`] that marks
//! probes from them as "already blocked" so that responders do not run twice.
//!
//! 1.2 truncated its per-mode blocked files (`portsentry.blocked.atcp`, …) at every start, so a
//! restart forgot every block while the firewall rules stayed. Here the file is append-only,
//! re-read at start, and 1.2's per-mode files are read once more and copied in, so that they
//! can be deleted afterwards. Lines use the history format ([`crate::history::history_line`]).
//!
//! A burst of probes from one host must trigger one block: the filter *reserves* the host
//! (pending), and the response stage later *confirms* the block or *releases* the host.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Filter, Verdict};
use crate::config::{BlockLevel, Config};
use crate::event::{Alert, Mode, Proto};
use crate::generation::Generation;
use crate::history::{append_line, history_line, open_append, parse_history_line};
use crate::respond::Action;

/// One block as applied: enough to report it, persist it, and later undo its actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// The blocked address (IPv4-mapped addresses are kept as IPv4).
    pub ip: IpAddr,
    /// When the block was applied.
    pub time: SystemTime,
    /// The port whose probe triggered the block.
    pub port: u16,
    /// Protocol of that probe.
    #[serde(with = "proto_name")]
    pub proto: Proto,
    /// Sensor mode that saw it. Records read back from `BLOCKED_FILE` lines, which carry only
    /// the protocol, get the classic mode of that protocol (`tcp`/`udp`); records migrated from
    /// a 1.2 per-mode file get the mode named by its suffix.
    #[serde(with = "mode_name")]
    pub mode: Mode,
    /// What each responder did, so that expiry or `unblock` can undo it; empty for records
    /// read back from a file.
    pub actions: Vec<Action>,
}

impl BlockRecord {
    /// The record for an alert whose responders ran now.
    pub fn from_alert(alert: &Alert, actions: Vec<Action>) -> BlockRecord {
        BlockRecord {
            ip: alert.hit.src.to_canonical(),
            time: SystemTime::now(),
            port: alert.hit.port,
            proto: alert.hit.proto(),
            mode: alert.hit.mode,
            actions,
        }
    }
}

/// Serializes a protocol as `tcp` / `udp`, the names Lua and `$PROTO$` use.
mod proto_name {
    use super::Proto;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(p: &Proto, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.lower())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Proto, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(D::Error::custom(format!(
                "unknown protocol \"{name}\", expected tcp or udp"
            ))),
        }
    }
}

/// Serializes a mode with its 1.2 name (`stcp`, …), the `$MODE$` spelling.
mod mode_name {
    use super::Mode;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let name = String::deserialize(d)?;
        Mode::from_name(&name).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown mode \"{name}\", expected tcp, udp, stcp, sudp, atcp or audp"
            ))
        })
    }
}

/// A host the registry knows about.
#[derive(Debug, Clone)]
enum HostState {
    /// An alert reserved it; responders are running.
    Pending,
    /// Responders ran; the record says what they did.
    Blocked(BlockRecord),
}

/// The blocked hosts, in memory (one hash lookup per probe) and in `BLOCKED_FILE`.
#[derive(Debug)]
pub struct BlockRegistry {
    path: PathBuf,
    file: File,
    hosts: HashMap<IpAddr, HostState>,
    blocked: usize,
}

/// The registry as the filter (pipeline thread) and the responders (response thread) share it.
pub type SharedRegistry = Arc<Mutex<BlockRegistry>>;

/// Locks the shared registry. A thread that panicked while holding it cannot have left it
/// half-updated in a way that matters (each operation is one map update plus an append), so a
/// poisoned lock is taken over rather than turned into a second panic.
pub fn lock(shared: &SharedRegistry) -> MutexGuard<'_, BlockRegistry> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BlockRegistry {
    /// Reads `path` (if it exists) and 1.2's `<path>.<mode>` files (if any), then opens `path`
    /// for appending, creating it and its directories; never truncates. Blocks found only in
    /// the 1.2 files are appended to `path`. Unreadable lines are skipped with a warning naming
    /// file and line; a file that exists but cannot be read is an error.
    pub fn open(path: &Path) -> io::Result<BlockRegistry> {
        let mut hosts = HashMap::new();
        read_records(path, None, &mut |rec, _| {
            hosts.insert(rec.ip, HostState::Blocked(rec));
        })?;
        let mut migrated = Vec::new();
        for mode in Mode::ALL {
            let legacy = legacy_path(path, mode);
            read_records(&legacy, Some(mode), &mut |rec, line| {
                if let Entry::Vacant(v) = hosts.entry(rec.ip) {
                    v.insert(HostState::Blocked(rec));
                    migrated.push(line.to_string());
                }
            })?;
        }
        let mut file = open_append(path)?;
        for line in &migrated {
            append_line(&mut file, path, line)?;
        }
        if !migrated.is_empty() {
            log::info!(
                "copied {} block(s) from 1.2's per-mode blocked files into {}",
                migrated.len(),
                path.display()
            );
        }
        let blocked = hosts.len();
        Ok(BlockRegistry {
            path: path.to_path_buf(),
            file,
            hosts,
            blocked,
        })
    }

    /// Follows a reload that names another `BLOCKED_FILE`: blocks listed there (by an
    /// earlier run) join the set, blocks in memory that it lacks are appended to it (so a
    /// restart with the new file still knows them), and new blocks go there from now on. The
    /// in-memory set is never shrunk. On error nothing changes and the old file stays in use.
    pub fn move_to(&mut self, path: &Path) -> io::Result<()> {
        if path == self.path {
            return Ok(());
        }
        let mut listed = Vec::new();
        read_records(path, None, &mut |rec, _| listed.push(rec))?;
        let mut file = open_append(path)?;
        let known: std::collections::HashSet<IpAddr> = listed.iter().map(|r| r.ip).collect();
        for rec in self.records() {
            if !known.contains(&rec.ip) {
                let ip = rec.ip.to_string();
                let line = history_line(rec.time, &ip, rec.ip, rec.port, rec.proto);
                append_line(&mut file, path, &line)?;
            }
        }
        for rec in listed {
            match self.hosts.entry(rec.ip) {
                Entry::Occupied(mut o) => {
                    if matches!(o.get(), HostState::Pending) {
                        // Blocked by an earlier run: no need to block again.
                        o.insert(HostState::Blocked(rec));
                        self.blocked += 1;
                    }
                }
                Entry::Vacant(v) => {
                    v.insert(HostState::Blocked(rec));
                    self.blocked += 1;
                }
            }
        }
        self.file = file;
        self.path = path.to_path_buf();
        Ok(())
    }

    /// Wraps the registry for sharing between the pipeline and the responders.
    pub fn into_shared(self) -> SharedRegistry {
        Arc::new(Mutex::new(self))
    }

    /// Whether a block of `ip` was confirmed (now or by an earlier run).
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        matches!(
            self.hosts.get(&ip.to_canonical()),
            Some(HostState::Blocked(_))
        )
    }

    /// Whether `ip` is reserved and its responders have not finished.
    pub fn is_pending(&self, ip: IpAddr) -> bool {
        matches!(self.hosts.get(&ip.to_canonical()), Some(HostState::Pending))
    }

    /// Blocked or pending: either way, a new probe from `ip` must not start another block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.hosts.contains_key(&ip.to_canonical())
    }

    /// Marks `ip` pending; true when it was neither pending nor blocked, i.e. the caller is
    /// the one that must block it. One lookup.
    pub fn reserve(&mut self, ip: IpAddr) -> bool {
        match self.hosts.entry(ip.to_canonical()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(HostState::Pending);
                true
            }
        }
    }

    /// Records a block whose responders ran: appends its history-format line to
    /// `BLOCKED_FILE` and keeps the record. The record is kept even when the write fails (the
    /// firewall rule exists either way, and a second block would duplicate it); the error is
    /// returned for the caller to log.
    pub fn confirm(&mut self, mut record: BlockRecord, resolved: &str) -> io::Result<()> {
        record.ip = record.ip.to_canonical();
        let line = history_line(record.time, resolved, record.ip, record.port, record.proto);
        let written = append_line(&mut self.file, &self.path, &line);
        let previous = self.hosts.insert(record.ip, HostState::Blocked(record));
        if !matches!(previous, Some(HostState::Blocked(_))) {
            self.blocked += 1;
        }
        written
    }

    /// Forgets a pending mark after the block failed or was vetoed, so that a later probe can
    /// try again. A confirmed block is never forgotten this way.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if matches!(self.hosts.get(&ip), Some(HostState::Pending)) {
            self.hosts.remove(&ip);
        }
    }

    /// The record of a confirmed block.
    pub fn get(&self, ip: IpAddr) -> Option<&BlockRecord> {
        match self.hosts.get(&ip.to_canonical()) {
            Some(HostState::Blocked(r)) => Some(r),
            _ => None,
        }
    }

    /// Every confirmed block, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &BlockRecord> {
        self.hosts.values().filter_map(|h| match h {
            HostState::Blocked(r) => Some(r),
            HostState::Pending => None,
        })
    }

    /// Number of confirmed blocks (pending ones not included).
    pub fn len(&self) -> usize {
        self.blocked
    }

    /// True when nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.blocked == 0
    }

    /// `BLOCKED_FILE` as opened.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// 1.2's per-mode file: `BLOCKED_FILE` with `.<mode>` appended (`portsentry.blocked.atcp`).
pub fn legacy_path(blocked_file: &Path, mode: Mode) -> PathBuf {
    let mut name = blocked_file.as_os_str().to_os_string();
    name.push(".");
    name.push(mode.as_str());
    PathBuf::from(name)
}

/// Calls `each` with every readable record of `path` and its line text; a missing file has
/// none. `mode` is the mode to give the records (`None`: the classic mode of their protocol).
fn read_records(
    path: &Path,
    mode: Option<Mode>,
    each: &mut dyn FnMut(BlockRecord, &str),
) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(named(e)),
    };
    for (i, bytes) in BufReader::new(file).split(b'\n').enumerate() {
        let bytes = bytes.map_err(named)?;
        let text = String::from_utf8_lossy(&bytes);
        let line = text.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        match parse_history_line(line) {
            Some(e) => {
                let record = BlockRecord {
                    ip: e.ip.to_canonical(),
                    time: e.time,
                    port: e.port,
                    proto: e.proto,
                    mode: mode.unwrap_or(match e.proto {
                        Proto::Tcp => Mode::Tcp,
                        Proto::Udp => Mode::Udp,
                    }),
                    actions: Vec::new(),
                };
                each(record, line);
            }
            None => log::warn!(
                "{}:{}: not a blocked-host line (expected \"<epoch> - MM/DD/YYYY HH:MM:SS Host: \
                 name/ip Port: n TCP|UDP Blocked\"), skipped",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(())
}

/// Third filter: marks probes from blocked (or pending) hosts as already blocked, and reserves
/// a new host when the config will act on its protocol. It never drops: the daemon still logs
/// the detection line, then 1.2's "already blocked" line.
#[derive(Debug)]
pub struct BlockedFilter {
    registry: SharedRegistry,
    config: Arc<Config>,
}

impl BlockedFilter {
    /// A filter over the shared registry, acting per the generation's `BLOCK_TCP`/`BLOCK_UDP`.
    pub fn new(registry: SharedRegistry, generation: &Generation) -> BlockedFilter {
        BlockedFilter {
            registry,
            config: generation.config.clone(),
        }
    }

    /// The registry this filter reserves in; the response stage confirms or releases there.
    pub fn registry(&self) -> &SharedRegistry {
        &self.registry
    }
}

impl Filter for BlockedFilter {
    fn name(&self) -> &'static str {
        "blocked"
    }

    fn inspect(&mut self, candidate: &mut Alert) -> Verdict {
        let ip = candidate.hit.src.to_canonical();
        let acts = self.config.block_level(candidate.hit.proto()) != BlockLevel::LogOnly;
        let mut registry = lock(&self.registry);
        let already = if acts {
            !registry.reserve(ip)
        } else {
            registry.contains(ip)
        };
        candidate.already_blocked = already;
        Verdict::Pass
    }

    fn reconfigure(&mut self, generation: &Generation) {
        self.config = generation.config.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Hit, ProbeKind};
    use std::time::{Duration, UNIX_EPOCH};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn record(addr: &str, port: u16, mode: Mode) -> BlockRecord {
        BlockRecord {
            ip: ip(addr),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            port,
            proto: mode.proto(),
            mode,
            actions: vec![Action {
                responder: "route".into(),
                detail: format!("/sbin/route add -host {addr} reject"),
                undo: Default::default(),
            }],
        }
    }

    fn alert(src: &str, mode: Mode) -> Alert {
        Alert {
            hit: Hit::now(ip(src), 111, mode, ProbeKind::Syn),
            count: 1,
            already_blocked: false,
        }
    }

    fn generation(block_tcp: BlockLevel, block_udp: BlockLevel) -> Generation {
        let mut c = crate::config::build::defaults(Path::new("x.conf"));
        c.block_tcp = block_tcp;
        c.block_udp = block_udp;
        Generation::from_parts(1, c, Default::default())
    }

    const LINE_1_2: &str =
        "942286729 - 11/10/1999 20:18:49 Host: 192.168.2.12/192.168.2.12 Port: 111 TCP Blocked";

    #[test]
    fn open_creates_the_file_and_its_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/portsentry/portsentry.blocked");
        let reg = BlockRegistry::open(&path).unwrap();
        assert!(reg.is_empty());
        assert!(path.exists());
    }

    #[test]
    fn reserve_once_per_host_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = BlockRegistry::open(&dir.path().join("b")).unwrap();
        let a = ip("10.0.0.1");
        assert!(reg.reserve(a));
        assert!(!reg.reserve(a), "a burst from one host triggers one block");
        assert!(!reg.reserve(ip("::ffff:10.0.0.1")));
        assert!(reg.is_pending(a) && !reg.is_blocked(a) && reg.contains(a));
        assert_eq!(reg.len(), 0);
        reg.release(a);
        assert!(!reg.contains(a));
        assert!(reg.reserve(a), "a failed block can be retried");
    }

    #[test]
    fn confirm_appends_the_history_line_and_keeps_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let mut reg = BlockRegistry::open(&path).unwrap();
        let rec = record("10.0.0.1", 31337, Mode::Atcp);
        assert!(reg.reserve(rec.ip));
        reg.confirm(rec.clone(), "scanner.example").unwrap();
        assert!(reg.is_blocked(rec.ip));
        assert!(!reg.is_pending(rec.ip));
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.get(rec.ip), Some(&rec));
        assert_eq!(reg.records().count(), 1);
        reg.release(rec.ip);
        assert!(
            reg.is_blocked(rec.ip),
            "release never forgets a confirmed block"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            history_line(rec.time, "scanner.example", rec.ip, 31337, Proto::Tcp)
        );
        assert!(text.ends_with("Host: scanner.example/10.0.0.1 Port: 31337 TCP Blocked\n"));
    }

    #[test]
    fn reopen_reloads_blocks_written_by_a_previous_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        {
            let mut reg = BlockRegistry::open(&path).unwrap();
            reg.confirm(record("10.0.0.1", 1, Mode::Stcp), "10.0.0.1")
                .unwrap();
            reg.confirm(record("fd77::9", 7, Mode::Audp), "fd77::9")
                .unwrap();
        }
        let before = std::fs::read_to_string(&path).unwrap();
        let reg = BlockRegistry::open(&path).unwrap();
        assert_eq!(reg.len(), 2);
        let v4 = reg.get(ip("10.0.0.1")).unwrap();
        assert_eq!(
            (v4.port, v4.proto, v4.mode),
            (1, Proto::Tcp, Mode::Tcp),
            "the line carries the protocol only"
        );
        assert_eq!(v4.time, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert!(v4.actions.is_empty());
        assert!(reg.is_blocked(ip("fd77::9")));
        assert_eq!(reg.get(ip("fd77::9")).unwrap().proto, Proto::Udp);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            before,
            "never truncated"
        );
    }

    #[test]
    fn move_to_keeps_the_set_merges_the_new_file_and_copies_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new/blocked");
        let mut reg = BlockRegistry::open(&old).unwrap();
        reg.confirm(record("10.0.0.1", 1, Mode::Tcp), "10.0.0.1")
            .unwrap();
        {
            let mut other = BlockRegistry::open(&new).unwrap();
            other
                .confirm(record("10.0.0.2", 2, Mode::Tcp), "10.0.0.2")
                .unwrap();
        }
        assert!(reg.reserve(ip("10.0.0.3")));
        reg.move_to(&new).unwrap();
        assert_eq!(reg.path(), new.as_path());
        assert!(reg.is_blocked(ip("10.0.0.1")), "the in-memory set is kept");
        assert!(reg.is_blocked(ip("10.0.0.2")), "the new file's blocks join");
        assert!(reg.is_pending(ip("10.0.0.3")));
        assert_eq!(reg.len(), 2);
        reg.confirm(record("10.0.0.3", 3, Mode::Tcp), "10.0.0.3")
            .unwrap();
        let text = std::fs::read_to_string(&new).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        for a in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            assert!(text.contains(&format!("/{a} Port: ")), "{a} in {text}");
        }
        assert_eq!(std::fs::read_to_string(&old).unwrap().lines().count(), 1);
        drop(reg);
        assert_eq!(BlockRegistry::open(&new).unwrap().len(), 3);
    }

    #[test]
    fn move_to_an_unusable_path_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let mut reg = BlockRegistry::open(&old).unwrap();
        // A directory cannot be opened for appending.
        assert!(reg.move_to(dir.path()).is_err());
        assert_eq!(reg.path(), old.as_path());
        reg.confirm(record("10.0.0.1", 1, Mode::Tcp), "10.0.0.1")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap().lines().count(), 1);
    }

    #[test]
    fn reopen_skips_bad_lines_and_appends_after_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        std::fs::write(
            &path,
            format!("{LINE_1_2}\r\ngarbage\n\n{LINE_1_2}x\n1 - torn Ho"),
        )
        .unwrap();
        let mut reg = BlockRegistry::open(&path).unwrap();
        assert_eq!(reg.len(), 1);
        assert!(reg.is_blocked(ip("192.168.2.12")));
        reg.confirm(record("10.0.0.2", 1, Mode::Tcp), "10.0.0.2")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!("{LINE_1_2}\r\ngarbage\n")));
        let last = text.lines().last().unwrap();
        assert!(
            last.ends_with("Host: 10.0.0.2/10.0.0.2 Port: 1 TCP Blocked"),
            "{last}"
        );
        assert!(text.contains("1 - torn Ho\n"));
        drop(reg);
        assert_eq!(BlockRegistry::open(&path).unwrap().len(), 2);
    }

    #[test]
    fn per_mode_files_of_1_2_are_migrated_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portsentry.blocked");
        let atcp = legacy_path(&path, Mode::Atcp);
        let sudp = legacy_path(&path, Mode::Sudp);
        assert_eq!(atcp, dir.path().join("portsentry.blocked.atcp"));
        let udp_line =
            "942286800 - 11/10/1999 20:20:00 Host: h.example/10.9.9.9 Port: 161 UDP Blocked";
        std::fs::write(&atcp, format!("{LINE_1_2}\n")).unwrap();
        std::fs::write(&sudp, format!("{udp_line}\n")).unwrap();
        {
            let reg = BlockRegistry::open(&path).unwrap();
            assert_eq!(reg.len(), 2);
            assert_eq!(reg.get(ip("192.168.2.12")).unwrap().mode, Mode::Atcp);
            let u = reg.get(ip("10.9.9.9")).unwrap();
            assert_eq!((u.mode, u.port, u.proto), (Mode::Sudp, 161, Proto::Udp));
        }
        // Copied into BLOCKED_FILE once: reopening does not duplicate them.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains(LINE_1_2) && text.contains(udp_line));
        assert_eq!(
            std::fs::read_to_string(&atcp).unwrap(),
            format!("{LINE_1_2}\n")
        );
        drop(BlockRegistry::open(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // And the old files can go.
        std::fs::remove_file(&atcp).unwrap();
        std::fs::remove_file(&sudp).unwrap();
        assert_eq!(BlockRegistry::open(&path).unwrap().len(), 2);
    }

    #[test]
    fn unreadable_blocked_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = BlockRegistry::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn block_record_round_trips_through_json() {
        let rec = record("fd77::5", 22, Mode::Stcp);
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains("\"mode\":\"stcp\""), "{json}");
        assert!(json.contains("\"proto\":\"tcp\""), "{json}");
        let back: BlockRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        let bad = json.replace("\"stcp\"", "\"stealth\"");
        assert!(serde_json::from_str::<BlockRecord>(&bad).is_err());
    }

    #[test]
    fn poisoned_registry_is_still_usable() {
        let dir = tempfile::tempdir().unwrap();
        let shared = BlockRegistry::open(&dir.path().join("b"))
            .unwrap()
            .into_shared();
        let s2 = shared.clone();
        let _ = std::thread::spawn(move || {
            let _g = lock(&s2);
            panic!("responder died holding the lock");
        })
        .join();
        assert!(shared.is_poisoned());
        assert!(lock(&shared).reserve(ip("10.0.0.1")));
    }

    #[test]
    fn filter_reserves_first_probe_and_marks_the_burst_already_blocked() {
        let dir = tempfile::tempdir().unwrap();
        let shared = BlockRegistry::open(&dir.path().join("b"))
            .unwrap()
            .into_shared();
        let mut f = BlockedFilter::new(
            shared.clone(),
            &generation(BlockLevel::All, BlockLevel::All),
        );
        let mut first = alert("10.0.0.1", Mode::Stcp);
        assert_eq!(f.inspect(&mut first), Verdict::Pass);
        assert!(!first.already_blocked);
        assert!(lock(&shared).is_pending(ip("10.0.0.1")));
        let mut second = alert("10.0.0.1", Mode::Sudp);
        assert_eq!(f.inspect(&mut second), Verdict::Pass);
        assert!(second.already_blocked);
        // Confirmed blocks stay "already blocked".
        lock(&shared)
            .confirm(record("10.0.0.1", 111, Mode::Stcp), "10.0.0.1")
            .unwrap();
        let mut third = alert("::ffff:10.0.0.1", Mode::Stcp);
        assert_eq!(f.inspect(&mut third), Verdict::Pass);
        assert!(third.already_blocked);
    }

    #[test]
    fn filter_does_not_reserve_when_the_protocol_is_log_only() {
        let dir = tempfile::tempdir().unwrap();
        let shared = BlockRegistry::open(&dir.path().join("b"))
            .unwrap()
            .into_shared();
        let mut f = BlockedFilter::new(
            shared.clone(),
            &generation(BlockLevel::LogOnly, BlockLevel::RunCmdOnly),
        );
        for _ in 0..2 {
            let mut a = alert("10.0.0.1", Mode::Atcp);
            assert_eq!(f.inspect(&mut a), Verdict::Pass);
            assert!(!a.already_blocked, "log-only probes are reported each time");
        }
        assert!(!lock(&shared).contains(ip("10.0.0.1")));
        // UDP acts (BLOCK_UDP=2): reserved.
        let mut u = alert("10.0.0.1", Mode::Audp);
        f.inspect(&mut u);
        assert!(!u.already_blocked);
        assert!(lock(&shared).is_pending(ip("10.0.0.1")));
        // Now TCP, still log-only, sees the host as already being blocked.
        let mut t = alert("10.0.0.1", Mode::Atcp);
        f.inspect(&mut t);
        assert!(t.already_blocked);
    }

    #[test]
    fn filter_follows_the_block_level_of_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let shared = BlockRegistry::open(&dir.path().join("b"))
            .unwrap()
            .into_shared();
        let mut f = BlockedFilter::new(
            shared.clone(),
            &generation(BlockLevel::LogOnly, BlockLevel::LogOnly),
        );
        f.inspect(&mut alert("10.0.0.1", Mode::Tcp));
        assert!(!lock(&shared).contains(ip("10.0.0.1")));
        f.reconfigure(&generation(BlockLevel::All, BlockLevel::LogOnly));
        f.inspect(&mut alert("10.0.0.1", Mode::Tcp));
        assert!(lock(&shared).is_pending(ip("10.0.0.1")));
    }
}
