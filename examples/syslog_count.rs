//! Benchmark helper for `benches/raw_capture.sh` (not part of the daemon): a syslog
//! receiver that counts detection lines.
//!
//! Usage: `syslog_count SOCKET COUNT_FILE PATTERN OTHER_FILE`. Binds a Unix datagram socket
//! at SOCKET (mode 0666), counts the datagrams that contain PATTERN, rewrites COUNT_FILE
//! every 0.2 s (atomically: temp file + rename) with `COUNT FIRST LAST`, the count and the
//! wall-clock times (Unix seconds) of the first and last matching datagram (0 before the
//! first), so the benchmark can tell how long logging lasted; and appends every other
//! datagram, one per line, to OTHER_FILE (so the daemon's warnings, e.g. its drop reports,
//! can be read afterwards). Runs until killed; the benchmark kills it only after the count
//! has stopped moving for seconds, so both files are complete by then.
//!
//! Why not Python: a syslog sender blocks when the receiver's queue is full, so a slow
//! receiver slows the daemon it measures. At 100k lines/s on a 2-core machine shared with
//! the sender and the daemon, this has to cost as little CPU as possible per line.

use socket2::SockRef;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the count file is rewritten (the benchmark polls it at this pace).
const TICK: Duration = Duration::from_millis(200);
/// Socket receive buffer asked for: room for bursts while this process is not scheduled.
const RCVBUF: usize = 8 << 20;

fn write_count(path: &Path, count: u64, first: f64, last: f64) -> std::io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    fs::write(&tmp, format!("{count} {first:.3} {last:.3}\n"))?;
    fs::rename(&tmp, path)
}

/// Wall-clock seconds: the benchmark compares them with `date +%s.%N` in its shell.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket_path, count_path, pattern, other_path] = args.as_slice() else {
        return Err("usage: syslog_count SOCKET COUNT_FILE PATTERN OTHER_FILE".into());
    };
    let (socket_path, count_path) = (Path::new(socket_path), Path::new(count_path));
    let pattern = pattern.as_bytes();

    match fs::remove_file(socket_path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(format!("{}: {e}", socket_path.display()));
        }
        _ => {}
    }
    let socket =
        UnixDatagram::bind(socket_path).map_err(|e| format!("{}: {e}", socket_path.display()))?;
    fs::set_permissions(socket_path, fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("{}: {e}", socket_path.display()))?;
    // Best effort: the default buffer still works, only with less room for bursts.
    let _ = SockRef::from(&socket).set_recv_buffer_size(RCVBUF);
    socket
        .set_read_timeout(Some(TICK))
        .map_err(|e| format!("{}: {e}", socket_path.display()))?;
    let other: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(other_path)
        .map_err(|e| format!("{other_path}: {e}"))?;
    let mut other = BufWriter::new(other);

    let mut buf = vec![0u8; 8192];
    let mut count = 0u64;
    let (mut first_at, mut last_at) = (0.0, 0.0);
    let mut written = None;
    let mut last = Instant::now();
    write_count(count_path, count, first_at, last_at)
        .map_err(|e| format!("{}: {e}", count_path.display()))?;
    loop {
        match socket.recv(&mut buf) {
            Ok(len) => {
                let msg = &buf[..len];
                if contains(msg, pattern) {
                    count += 1;
                    last_at = unix_now();
                    if count == 1 {
                        first_at = last_at;
                    }
                } else {
                    let msg = msg.strip_suffix(b"\n").unwrap_or(msg);
                    other
                        .write_all(msg)
                        .and_then(|()| other.write_all(b"\n"))
                        .map_err(|e| format!("{other_path}: {e}"))?;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{}: recv: {e}", socket_path.display())),
        }
        if last.elapsed() >= TICK {
            last = Instant::now();
            other.flush().map_err(|e| format!("{other_path}: {e}"))?;
            if written != Some(count) {
                write_count(count_path, count, first_at, last_at)
                    .map_err(|e| format!("{}: {e}", count_path.display()))?;
                written = Some(count);
            }
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syslog_count: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_found_anywhere_in_the_datagram() {
        let line =
            b"<36>Nov 25 13:00:00 portsentry[1]: attackalert: SYN/Normal scan from host: 10.78.0.1";
        assert!(contains(line, b"SYN/Normal scan from host"));
        assert!(!contains(line, b"UDP scan from host"));
        assert!(!contains(b"SYN", b"SYN/Normal"));
    }
}
