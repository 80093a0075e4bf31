//! The history line, byte for byte as 1.2 writes it, and the append-only files that hold it.
//!
//! fail2ban's stock filter reads `HISTORY_FILE` with
//! `failregex = \/<HOST> Port\: [0-9]+ (TCP|UDP) Blocked$` and takes the leading epoch as the
//! date, so the line is produced in exactly one place: [`history_line`]. `BLOCKED_FILE` uses the
//! same line, and [`parse_history_line`] reads it back.

use std::collections::VecDeque;
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Local, TimeZone, Utc};

use crate::event::Proto;
use crate::storage::{Outage, StorageHealth, StoredFile};

/// The 1.2 history line for one block, in local time, ending in `"\n"`:
/// `<epoch> - MM/DD/YYYY HH:MM:SS Host: <resolved>/<ip> Port: <port> <TCP|UDP> Blocked`.
/// An IPv4-mapped IPv6 address is written as the IPv4 address it carries, so fail2ban bans
/// the address it can act on. A time before 1970 (a broken clock) is written as the epoch.
pub fn history_line(
    time: SystemTime,
    resolved: &str,
    ip: IpAddr,
    port: u16,
    proto: Proto,
) -> String {
    history_line_at(
        &utc_of(time).with_timezone(&Local),
        resolved,
        ip,
        port,
        proto,
    )
}

/// [`history_line`] in a given time zone, so the exact bytes can be tested anywhere.
pub fn history_line_at<Tz: TimeZone>(
    time: &DateTime<Tz>,
    resolved: &str,
    ip: IpAddr,
    port: u16,
    proto: Proto,
) -> String
where
    Tz::Offset: Display,
{
    format!(
        "{} - {} Host: {}/{} Port: {} {} Blocked\n",
        time.timestamp(),
        time.format("%m/%d/%Y %H:%M:%S"),
        crate::logging::escape_controls(resolved),
        ip.to_canonical(),
        port,
        proto.upper()
    )
}

fn utc_of(time: SystemTime) -> DateTime<Utc> {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// One history line read back (from `BLOCKED_FILE`, or 1.2's per-mode blocked files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The epoch at the start of the line (the date part is only for humans).
    pub time: SystemTime,
    /// The name part of `Host: name/ip` (the IP itself when not resolved).
    pub resolved: String,
    /// The blocked address.
    pub ip: IpAddr,
    /// The port that triggered the block.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub proto: Proto,
}

/// Reads a line written by [`history_line`] or by 1.2; `None` when it is not one (a torn last
/// line after a crash, a stray edit). Trailing whitespace and CR are tolerated.
pub fn parse_history_line(line: &str) -> Option<HistoryEntry> {
    let line = line.trim_end();
    let (epoch, rest) = line.split_once(" - ")?;
    let epoch: i64 = epoch.trim().parse().ok()?;
    let rest = rest.strip_suffix(" Blocked")?;
    let (rest, proto) = rest.rsplit_once(' ')?;
    let proto = match proto {
        "TCP" => Proto::Tcp,
        "UDP" => Proto::Udp,
        _ => return None,
    };
    let (rest, port) = rest.rsplit_once(" Port: ")?;
    let port: u16 = port.parse().ok()?;
    let (_date, host) = rest.split_once(" Host: ")?;
    let (resolved, ip) = host.rsplit_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let time = UNIX_EPOCH + Duration::from_secs(u64::try_from(epoch).unwrap_or(0));
    Some(HistoryEntry {
        time,
        resolved: resolved.to_string(),
        ip,
        port,
        proto,
    })
}

/// Opens `path` for appending, creating it and its parent directories, never truncating. If
/// the file does not end in a newline (a crash mid-write), one is added so the next line is
/// not glued to the torn one. Errors name the file.
pub fn open_append(path: &Path) -> io::Result<File> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(named)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        // A FIFO opens at once and is refused below: once full it would stall every write.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(named)?;
    let meta = file.metadata().map_err(named)?;
    if let Some(kind) = crate::config::read::non_regular_kind(&meta)
        && !std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type())
    {
        return Err(named(io::Error::other(format!(
            "is {kind}, expected a regular file"
        ))));
    }
    let len = meta.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1).map_err(named)?;
        if last[0] != b'\n' {
            file.write_all(b"\n").map_err(named)?;
        }
    }
    Ok(file)
}

/// History lines kept in memory while `HISTORY_FILE` cannot be written, at most; past it
/// the oldest are dropped (fail2ban would find them too old by then anyway).
pub const MAX_PENDING_LINES: usize = 10_000;

/// `HISTORY_FILE`: append-only, one [`history_line`] per real block. While it cannot be
/// written (a full or read-only disk, a permission) its lines wait in memory, in order
/// ([`MAX_PENDING_LINES`] at most), and are written as soon as it can be: at the next line
/// and every [`RETRY_INTERVAL`](crate::storage::RETRY_INTERVAL) on
/// [`History::retry_pending`]. A write that fails half way is cut back, so the file never
/// keeps half a line.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    /// `None` while it cannot be opened: opened again at the next try.
    file: Option<File>,
    /// Lines not written yet, each ending in a newline.
    pending: VecDeque<String>,
    /// The file does not end in a newline (a failed write that could not be cut back).
    torn: bool,
    /// Lines given up at the bound since start.
    dropped: u64,
    outage: Outage,
    #[cfg(test)]
    write_budget: Option<usize>,
}

impl History {
    /// Opens (or creates) the file for appending; never truncates. An error when it cannot.
    pub fn open(path: &Path) -> io::Result<History> {
        Ok(History {
            file: Some(open_append(path)?),
            ..History::closed(path)
        })
    }

    /// Opens the file like [`History::open`], or, when it cannot be opened now, a history
    /// that logs why (at once, then once a minute), keeps its lines and opens the file as
    /// soon as it can: what the daemon starts with.
    pub fn open_or_wait(path: &Path) -> History {
        let mut history = History::closed(path);
        if let Err(e) = history.reopen() {
            let kept = history.kept();
            history.outage.failed(&e, &kept, Instant::now());
        }
        history
    }

    fn closed(path: &Path) -> History {
        History {
            path: path.to_path_buf(),
            file: None,
            pending: VecDeque::new(),
            torn: false,
            dropped: 0,
            outage: Outage::new(StoredFile::History, path),
            #[cfg(test)]
            write_budget: None,
        }
    }

    /// Appends one line (a newline is added if missing) in a single write, so that lines from
    /// concurrent writers never interleave; the data is in the file when this returns `Ok`.
    /// On error the line waits in memory with any earlier ones and is written, in order, as
    /// soon as the file takes writes again.
    pub fn append(&mut self, line: &str) -> io::Result<()> {
        let mut line = line.to_string();
        if !line.ends_with('\n') {
            line.push('\n');
        }
        if self.pending.len() >= MAX_PENDING_LINES {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(line);
        // While the file fails, the retry timer decides: a burst of blocks does not rewrite
        // the whole backlog once per line.
        let asked = !self.outage.is_failing();
        self.flush(Instant::now(), asked)
    }

    /// Writes the lines that wait, if the retry timer says so; call it on every wake.
    pub fn retry_pending(&mut self, now: Instant) {
        let _ = self.flush(now, false);
    }

    /// A last try before stopping; lines that still wait are lost, and the log says so.
    pub fn close(&mut self) {
        self.outage.expedite();
        if self.flush(Instant::now(), false).is_err() {
            log::error!(
                "{}",
                crate::log_lines::history_lost_at_stop(&self.path, self.pending.len())
            );
        }
    }

    /// Takes over the lines still waiting for `old` (a reload moved `HISTORY_FILE`): they
    /// go to this file, before its own.
    pub fn take_waiting_from(&mut self, old: &mut History) {
        let mut waiting = std::mem::take(&mut old.pending);
        waiting.append(&mut self.pending);
        self.pending = waiting;
        let _ = self.flush(Instant::now(), true);
    }

    /// Sends its health to the daemon's shared [`StorageHealth`].
    pub fn report_to(&mut self, health: &StorageHealth) {
        self.outage.report_to(health);
        self.publish();
    }

    /// Lines waiting in memory.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn flush(&mut self, now: Instant, asked: bool) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if !asked && !self.outage.due(now) {
            self.publish();
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{}: waits for the next try", self.path.display()),
            ));
        }
        let mut buf =
            String::with_capacity(self.pending.iter().map(String::len).sum::<usize>() + 1);
        if self.torn {
            buf.push('\n');
        }
        self.pending.iter().for_each(|l| buf.push_str(l));
        let result = self.reopen().and_then(|()| self.write(buf.as_bytes()));
        match &result {
            Ok(()) => {
                let n = self.pending.len();
                self.pending.clear();
                if self.outage.is_failing() {
                    self.outage.recovered(&format!(
                        "{n} history line(s) that waited in memory written"
                    ));
                }
            }
            Err(e) => {
                let kept = self.kept();
                self.outage.failed(e, &kept, now);
            }
        }
        self.publish();
        result.map_err(|e| named(&self.path, e))
    }

    /// One `write` on the `O_APPEND` descriptor; what part of it reached the file before an
    /// error is cut off again (never below the length the file had before).
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let allowed = self.allowance(data.len());
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let before = file.metadata()?.len();
        let written = file.write_all(&data[..allowed]).and_then(|()| {
            if allowed < data.len() {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                file.flush()
            }
        });
        if let Err(e) = written {
            // logrotate's copytruncate may have emptied the file meanwhile: only ever cut
            // back what is past the old end, never extend.
            let taken_back = file.metadata().and_then(|m| {
                if m.len() > before {
                    file.set_len(before)
                } else {
                    Ok(())
                }
            });
            if taken_back.is_err() {
                self.torn = true;
            }
            return Err(e);
        }
        self.torn = false;
        Ok(())
    }

    #[cfg(not(test))]
    fn allowance(&mut self, len: usize) -> usize {
        len
    }

    #[cfg(test)]
    fn allowance(&mut self, len: usize) -> usize {
        match &mut self.write_budget {
            Some(budget) => {
                let n = len.min(*budget);
                *budget -= n;
                n
            }
            None => len,
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            self.file =
                Some(open_append(&self.path).map_err(|e| crate::storage::bare(&e, &self.path))?);
            self.torn = false;
        }
        Ok(())
    }

    fn kept(&self) -> String {
        format!(
            "{} line(s) kept in memory and written as soon as it can be (at most \
             {MAX_PENDING_LINES}; beyond, the oldest are dropped{}); retrying every {}s",
            self.pending.len(),
            if self.dropped > 0 {
                format!(", {} so far", self.dropped)
            } else {
                String::new()
            },
            crate::storage::RETRY_INTERVAL.as_secs()
        )
    }

    fn publish(&mut self) {
        self.outage.keep(self.pending.len() as u64, 0, self.dropped);
    }
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// US Central standard time: the 1.2 documentation's example was written at UTC-6.
    fn cst() -> FixedOffset {
        FixedOffset::west_opt(6 * 3600).unwrap()
    }

    /// fail2ban's `\/<HOST> Port\: [0-9]+ (TCP|UDP) Blocked$` for one host, by hand.
    fn fail2ban_matches(line: &str, host: &str) -> bool {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let Some(rest) = line
            .strip_suffix(" TCP Blocked")
            .or_else(|| line.strip_suffix(" UDP Blocked"))
        else {
            return false;
        };
        let digits = rest.len() - rest.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest[..rest.len() - digits].ends_with(&format!("/{host} Port: "))
    }

    #[test]
    fn history_line_matches_the_1_2_example_byte_for_byte() {
        let t = cst().timestamp_opt(942_286_729, 0).unwrap();
        let line = history_line_at(&t, "192.168.2.12", ip("192.168.2.12"), 111, Proto::Tcp);
        assert_eq!(
            line,
            "942286729 - 11/10/1999 20:18:49 Host: 192.168.2.12/192.168.2.12 Port: 111 TCP Blocked\n"
        );
    }

    #[test]
    fn history_line_stays_one_line_whatever_the_resolved_name() {
        let t = cst().timestamp_opt(942_286_729, 0).unwrap();
        let line = history_line_at(
            &t,
            "evil\n1 - Host: x/10.0.0.1 Port: 1 TCP Blocked",
            ip("192.0.2.7"),
            111,
            Proto::Tcp,
        );
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains("Host: evil\\n1 - Host: x/10.0.0.1 Port"),
            "{line}"
        );
        assert!(
            line.ends_with("/192.0.2.7 Port: 111 TCP Blocked\n"),
            "{line}"
        );
    }

    #[test]
    fn history_line_pads_month_day_and_time_with_zeros() {
        let t = Utc.timestamp_opt(1_704_164_645, 0).unwrap(); // 2024-01-02 03:04:05 UTC
        let line = history_line_at(&t, "scanner.example", ip("fd77::5"), 7, Proto::Udp);
        assert_eq!(
            line,
            "1704164645 - 01/02/2024 03:04:05 Host: scanner.example/fd77::5 Port: 7 UDP Blocked\n"
        );
    }

    #[test]
    fn history_line_uses_the_epoch_of_the_given_time() {
        let time = UNIX_EPOCH + Duration::from_secs(942_286_729);
        let line = history_line(time, "h", ip("10.0.0.1"), 1, Proto::Tcp);
        assert!(line.starts_with("942286729 - "), "{line}");
        assert!(line.ends_with(" Host: h/10.0.0.1 Port: 1 TCP Blocked\n"));
    }

    #[test]
    fn history_line_writes_mapped_addresses_as_ipv4() {
        let t = Utc.timestamp_opt(0, 0).unwrap();
        let line = history_line_at(&t, "x", ip("::ffff:10.1.2.3"), 1, Proto::Tcp);
        assert!(line.contains("/10.1.2.3 Port: 1 "), "{line}");
    }

    #[test]
    fn fail2ban_regex_matches_v4_and_v6_lines() {
        let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let v4 = history_line_at(&t, "10.77.0.2", ip("10.77.0.2"), 31337, Proto::Tcp);
        let v6 = history_line_at(&t, "fd77::2", ip("fd77::2"), 161, Proto::Udp);
        let named = history_line_at(&t, "evil.example", ip("2001:db8::9"), 1, Proto::Udp);
        assert!(fail2ban_matches(&v4, "10.77.0.2"));
        assert!(fail2ban_matches(&v6, "fd77::2"));
        assert!(fail2ban_matches(&named, "2001:db8::9"));
        assert!(!fail2ban_matches(&v4, "10.77.0.3"));
        assert!(!fail2ban_matches(
            "1 - x Host: a/10.0.0.1 Port: x TCP Blocked",
            "10.0.0.1"
        ));
    }

    #[test]
    fn parse_reads_back_what_history_line_writes() {
        let t = cst().timestamp_opt(942_286_729, 0).unwrap();
        for (addr, proto) in [("192.168.2.12", Proto::Tcp), ("fd77::9", Proto::Udp)] {
            let line = history_line_at(&t, "name.example", ip(addr), 111, proto);
            let e = parse_history_line(&line).unwrap();
            assert_eq!(e.time, UNIX_EPOCH + Duration::from_secs(942_286_729));
            assert_eq!(e.resolved, "name.example");
            assert_eq!(e.ip, ip(addr));
            assert_eq!(e.port, 111);
            assert_eq!(e.proto, proto);
        }
    }

    #[test]
    fn parse_rejects_torn_and_foreign_lines() {
        for bad in [
            "",
            "942286729 - 11/10/1999 20:18:49 Host: 1.2.3.4/1.2.3.4 Port: 111 TCP Blo",
            "942286729 - 11/10/1999 20:18:49 Host: 1.2.3.4/1.2.3.4 Port: 111 ICMP Blocked",
            "942286729 - 11/10/1999 20:18:49 Host: 1.2.3.4/bogus Port: 111 TCP Blocked",
            "x - 11/10/1999 20:18:49 Host: 1.2.3.4/1.2.3.4 Port: 111 TCP Blocked",
            "942286729 - 11/10/1999 20:18:49 Host: 1.2.3.4/1.2.3.4 Port: 99999 TCP Blocked",
        ] {
            assert_eq!(parse_history_line(bad), None, "{bad}");
        }
        assert!(
            parse_history_line(
                "942286729 - 11/10/1999 20:18:49 Host: 1.2.3.4/1.2.3.4 Port: 111 TCP Blocked\r"
            )
            .is_some()
        );
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_for_appending_and_dev_null_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = open_append(&fifo).unwrap_err().to_string();
        assert!(err.contains("is a FIFO, expected a regular file"), "{err}");
        let err = open_append(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(open_append(Path::new("/dev/null")).is_ok());
        assert!(open_append(&dir.path().join("h")).is_ok());
    }

    #[test]
    fn history_appends_and_never_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/portsentry/portsentry.history");
        {
            let mut h = History::open(&path).unwrap();
            h.append("first line\n").unwrap();
            // Visible to a reader as soon as append returns.
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "first line\n");
        }
        let mut h = History::open(&path).unwrap();
        h.append("second line").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "first line\nsecond line\n"
        );
        assert_eq!(h.path(), path);
    }

    #[test]
    fn history_repairs_a_torn_last_line_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        std::fs::write(&path, "old\ntorn").unwrap();
        let mut h = History::open(&path).unwrap();
        h.append("new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\ntorn\nnew\n");
    }

    fn later() -> Instant {
        Instant::now() + crate::storage::RETRY_INTERVAL
    }

    #[test]
    fn a_line_the_disk_cannot_take_waits_and_nothing_is_left_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        let health = StorageHealth::new();
        let mut h = History::open(&path).unwrap();
        h.report_to(&health);
        h.append("one\n").unwrap();
        h.write_budget = Some(3);
        assert!(h.append("two\n").is_err());
        assert!(h.append("three").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n", "cut back");
        assert_eq!(h.waiting(), 2);
        let f = health.get(StoredFile::History).unwrap();
        assert!(f.failing_since.is_some() && f.waiting == 2, "{f:?}");
        h.write_budget = None;
        h.retry_pending(Instant::now());
        assert_eq!(h.waiting(), 2, "not before the retry interval");
        h.retry_pending(later());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "one\ntwo\nthree\n",
            "in order, each once"
        );
        assert_eq!(health.get(StoredFile::History).unwrap().failing_since, None);
    }

    #[test]
    fn a_history_that_cannot_be_opened_at_start_is_opened_once_it_can_be() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("lib");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("portsentry.history");
        let mut h = History::open_or_wait(&path);
        assert!(h.append("first").is_err());
        std::fs::remove_file(&blocker).unwrap();
        h.retry_pending(later());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");
        assert_eq!(h.waiting(), 0);
    }

    #[test]
    fn past_the_bound_the_oldest_waiting_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        let mut h = History::open(&path).unwrap();
        h.write_budget = Some(0);
        for i in 0..MAX_PENDING_LINES + 5 {
            let _ = h.append(&format!("line {i}"));
        }
        assert_eq!((h.waiting(), h.dropped), (MAX_PENDING_LINES, 5));
        h.write_budget = None;
        h.retry_pending(later());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("line 5\n"), "{}", &text[..20]);
        assert_eq!(text.lines().count(), MAX_PENDING_LINES);
    }

    #[test]
    fn lines_waiting_for_an_old_history_file_go_to_the_new_one_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = History::open(&dir.path().join("old")).unwrap();
        old.write_budget = Some(0);
        let _ = old.append("waited");
        let mut new = History::open(&dir.path().join("new")).unwrap();
        new.take_waiting_from(&mut old);
        assert_eq!(old.waiting(), 0);
        new.append("fresh").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("new")).unwrap(),
            "waited\nfresh\n"
        );
    }

    #[test]
    fn open_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = History::open(&blocker.join("sub/h")).unwrap_err();
        assert!(err.to_string().contains("file/sub"), "{err}");
    }
}
