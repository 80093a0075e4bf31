//! The history line, byte for byte as 1.2 writes it, and the append-only files that hold it.
//!
//! fail2ban's stock filter reads `HISTORY_FILE` with
//! `failregex = \/<HOST> Port\: [0-9]+ (TCP|UDP) Blocked$` and takes the leading epoch as the
//! date, so the line is produced in exactly one place: [`history_line`]. `BLOCKED_FILE` uses the
//! same line, and [`parse_history_line`] reads it back.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Local, TimeZone, Utc};

use crate::event::Proto;

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

/// `HISTORY_FILE`: append-only, one [`history_line`] per real block.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    file: File,
}

impl History {
    /// Opens (or creates) the file for appending; never truncates.
    pub fn open(path: &Path) -> io::Result<History> {
        Ok(History {
            path: path.to_path_buf(),
            file: open_append(path)?,
        })
    }

    /// Appends one line (a newline is added if missing) in a single write, so that lines from
    /// concurrent writers never interleave; the data is in the file when this returns.
    pub fn append(&mut self, line: &str) -> io::Result<()> {
        append_line(&mut self.file, &self.path, line)
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One `write` of `line` plus its newline, on a file opened with `O_APPEND`.
pub(crate) fn append_line(file: &mut File, path: &Path, line: &str) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if line.ends_with('\n') {
        file.write_all(line.as_bytes()).map_err(named)?;
    } else {
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        file.write_all(buf.as_bytes()).map_err(named)?;
    }
    file.flush().map_err(named)
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

    #[test]
    fn open_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = History::open(&blocker.join("sub/h")).unwrap_err();
        assert!(err.to_string().contains("file/sub"), "{err}");
    }
}
