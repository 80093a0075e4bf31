//! Logging set-up, the one place that knows log4rs (it is barely maintained; everything else
//! uses the `log` macros). Lines go to syslog (ident `portsentry`, with PID, facility daemon,
//! level notice for `log::info!`) as 1.2 sent them, and to stderr when running in the
//! foreground (systemd's journal picks it up). Without a syslog socket (containers, CI) the
//! stderr appender still comes up and the daemon carries on.
//!
//! Every message is one line: control characters in it (a plugin's multi-line result, a
//! command's output, a reverse-DNS name, a file name) are escaped here, at the one place all
//! lines pass, so no text from outside can start a forged `attackalert:` line of its own.

use std::borrow::Cow;
use std::cell::Cell;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::{Level, LevelFilter, Record};
use log4rs::append::Append;
use log4rs::config::{Appender, Config, Root};
use nix::sys::socket::{MsgFlags, MultiHeaders, sendmmsg};

/// Where log lines go; built from the command line.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Also write every line to stderr (the foreground default).
    pub stderr: bool,
    /// Syslog socket to use; `None` disables syslog, `Some(path)` uses that datagram socket.
    pub syslog_socket: Option<PathBuf>,
    /// Show debug lines (filter decisions, dropped probes).
    pub debug: bool,
}

/// Default syslog socket on Linux.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

thread_local! {
    /// Set while this thread runs inside [`batched`]: its stderr lines and syslog datagrams
    /// wait in their appender's buffer.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Largest stderr batch kept before it is written out anyway.
const STDERR_BATCH: usize = 64 * 1024;

/// Runs `f` with the lines this thread logs gathered and written in one go at the end: the
/// stderr lines with one `write(2)` (or every 64 KiB), the syslog datagrams with one
/// `sendmmsg(2)` (or every 64 datagrams or 64 KiB). The announcing thread drains a burst of
/// alerts this way: during a forged flood (some 85,000 syslog lines a second) one system
/// call per batch instead of one per line keeps it ahead of the queue. Each line keeps the
/// time it was logged at; a line another thread logs meanwhile goes out at once, after the
/// ones waiting.
pub fn batched<R>(f: impl FnOnce() -> R) -> R {
    BATCHING.set(true);
    let result = f();
    BATCHING.set(false);
    log::logger().flush();
    result
}

/// Writes pending stderr lines and sends pending syslog datagrams now (before slow work
/// inside a [`batched`] run, so that an admin watching the log is not kept waiting by a
/// responder).
pub fn flush() {
    log::logger().flush();
}

/// Escapes control characters so that `text` stays one line and shows no terminal escape:
/// `\n`, `\r`, `\t` as such, other C0 characters, ESC and DEL as `\xNN`, C1 characters as
/// `\u{NN}`. Everything else (and so every 1.2 log line made of ordinary text) is unchanged;
/// a backslash is left as it is, so ordinary paths and messages stay byte-compatible.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    // Every control character starts with a byte below 0x20, 0x7f, or 0xc2 (C1 is
    // U+0080-U+009F): a byte scan clears almost every line without decoding it.
    let maybe = text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2);
    if !maybe || !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Appends the text of a record to `out`, as one line without control characters. Written
/// in place (no string of its own per line): a flood logs tens of thousands of lines a
/// second, and almost none has anything to escape.
fn push_message(out: &mut String, record: &Record) {
    use std::fmt::Write;
    let start = out.len();
    match record.args().as_str() {
        Some(s) => out.push_str(s),
        None => {
            let _ = write!(out, "{}", record.args());
        }
    }
    if let Cow::Owned(escaped) = escape_controls(&out[start..]) {
        out.truncate(start);
        out.push_str(&escaped);
    }
}

/// Writes each record to stderr as one line: at once, or at the end of a [`batched`] run.
/// (log4rs's console appender writes message and newline separately and flushes each.)
#[derive(Debug, Default)]
struct StderrAppender {
    pending: Mutex<Vec<u8>>,
}

impl StderrAppender {
    fn write_out(pending: &mut Vec<u8>) -> std::io::Result<()> {
        use std::io::Write;
        if pending.is_empty() {
            return Ok(());
        }
        let result = std::io::stderr().lock().write_all(pending);
        pending.clear();
        result
    }
}

impl Append for StderrAppender {
    fn append(&self, record: &Record) -> anyhow::Result<()> {
        let mut pending = crate::sync::lock(&self.pending);
        let mut line = String::new();
        push_message(&mut line, record);
        line.push('\n');
        // Lines of other threads go after what is pending, so the order is kept.
        pending.extend_from_slice(line.as_bytes());
        if !BATCHING.get() || pending.len() >= STDERR_BATCH {
            Self::write_out(&mut pending)?;
        }
        Ok(())
    }

    fn flush(&self) {
        let mut pending = crate::sync::lock(&self.pending);
        let _ = Self::write_out(&mut pending);
    }
}

/// RFC 3164 priority: facility daemon (3) times 8 plus the severity.
fn priority(level: Level) -> u8 {
    let severity = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 5,
        Level::Debug | Level::Trace => 7,
    };
    3 * 8 + severity
}

/// Most syslog datagrams kept back in a [`batched`] run before they are sent anyway. Measured
/// on the daemon's test machine (where mitigations make a system call cost ~0.5 µs), a unix
/// datagram costs 2.7 µs of the sender's CPU with one `write(2)` each, 1.6 µs with
/// `sendmmsg(2)` in batches of 16 and 1.4 µs in batches of 64: larger batches gain little
/// and only hold lines back longer.
const SYSLOG_BATCH: usize = 64;

/// Most bytes of syslog datagrams kept back in a [`batched`] run (lines are short, so this
/// only bounds the buffer should a run log unusually long ones).
const SYSLOG_BATCH_BYTES: usize = 64 * 1024;

/// A log4rs appender that speaks to the local syslog socket as glibc's `syslog()` (and so
/// 1.2) did: `<PRI>Mmm dd hh:mm:ss portsentry[PID]: message`, local time, facility daemon.
/// log4rs ships none, and `log4rs-syslog` only fits log4rs 0.8. The timestamp is formatted
/// once per second (the local time zone is looked up only then) and each line is written
/// into the same buffer. A line is sent at once with one `write(2)` (what std's `send` on a
/// connected socket comes to), except inside a [`batched`] run: there the datagrams wait in the buffer and go with one `sendmmsg(2)` at the end of
/// the run (or every [`SYSLOG_BATCH`] datagrams), which under a flood of alerts nearly
/// halves the sender's cost of a line (figures at [`SYSLOG_BATCH`]). A line of a thread not
/// batching goes after the datagrams waiting, so syslog sees every line in the order it was
/// logged.
struct SyslogAppender {
    path: PathBuf,
    pid: u32,
    state: Mutex<SyslogState>,
}

struct SyslogState {
    socket: Option<UnixDatagram>,
    stamp_second: i64,
    stamp: String,
    /// The datagrams not sent yet, one after the other (kept for its memory once sent, so
    /// a warmed-up appender allocates nothing per line).
    pending: String,
    /// Where each datagram in `pending` ends, in the order they were logged.
    ends: Vec<usize>,
}

impl SyslogState {
    fn new(socket: Option<UnixDatagram>) -> SyslogState {
        SyslogState {
            socket,
            stamp_second: i64::MIN,
            stamp: String::new(),
            pending: String::new(),
            ends: Vec::with_capacity(SYSLOG_BATCH),
        }
    }

    /// Formats `record` as the next pending datagram, stamped with the time now.
    fn push(&mut self, record: &Record, pid: u32) {
        use std::fmt::Write;
        // Bytes of a line cut short (a message whose formatting panicked) are not part of
        // any datagram: never let them lead the next one.
        self.pending
            .truncate(self.ends.last().copied().unwrap_or(0));
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if second != self.stamp_second {
            let now = chrono::Local::now();
            self.stamp_second = now.timestamp();
            self.stamp = now.format("%b %e %H:%M:%S").to_string();
        }
        let _ = write!(
            self.pending,
            "<{}>{} portsentry[{}]: ",
            priority(record.level()),
            self.stamp,
            pid
        );
        push_message(&mut self.pending, record);
        self.ends.push(self.pending.len());
    }

    /// Sends the pending datagrams, in order, and forgets them. syslogd may have restarted
    /// since the last line: on a failure, reconnect once and retry what was not sent; if
    /// that fails too, the rest is dropped (it is not kept to grow, nor retried forever)
    /// and the error returned. With no syslogd to reconnect to at all, the lines are
    /// dropped without an error, as they always were (log4rs would print every one).
    fn send_pending(&mut self, path: &Path) -> anyhow::Result<()> {
        let result = self.try_send_pending(path);
        self.pending.clear();
        self.ends.clear();
        // An unusually long line (a plugin's whole output) does not keep its memory.
        if self.pending.capacity() > 2 * SYSLOG_BATCH_BYTES {
            self.pending.shrink_to(SYSLOG_BATCH_BYTES);
        }
        result
    }

    fn try_send_pending(&mut self, path: &Path) -> anyhow::Result<()> {
        let mut sent = 0;
        let mut reconnected = false;
        while sent < self.ends.len() {
            let start = sent.checked_sub(1).map_or(0, |last| self.ends[last]);
            let result = match &self.socket {
                Some(socket) => {
                    send_datagrams(socket, self.pending.as_bytes(), start, &self.ends[sent..])
                }
                None => Err(std::io::ErrorKind::NotConnected.into()),
            };
            match result {
                Ok(count) => sent += count,
                Err(e) if reconnected => {
                    return Err(anyhow::anyhow!("syslog {}: {e}", path.display()));
                }
                Err(_) => {
                    reconnected = true;
                    self.socket = SyslogAppender::connect(path).ok();
                    if self.socket.is_none() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sends the datagrams of `bytes` that begin at `start` and end at `ends` (the first
/// [`SYSLOG_BATCH`] of them) with one system call; returns how many were sent, at least
/// one. A lone datagram goes with `send` (a `write(2)`); more with `sendmmsg(2)`, which stops at the
/// first that fails and reports the failure only if none was sent.
fn send_datagrams(
    socket: &UnixDatagram,
    bytes: &[u8],
    mut start: usize,
    ends: &[usize],
) -> std::io::Result<usize> {
    if let [end] = ends {
        socket.send(&bytes[start..*end])?;
        return Ok(1);
    }
    let mut slices = [[IoSlice::new(&[])]; SYSLOG_BATCH];
    let mut count = 0;
    for (slice, &end) in slices.iter_mut().zip(ends) {
        *slice = [IoSlice::new(&bytes[start..end])];
        start = end;
        count += 1;
    }
    // nix's headers hold raw pointers, so they are not `Send` and cannot be kept in the
    // appender's state: one allocation of `count` headers per call, not per line.
    let mut headers = MultiHeaders::<()>::preallocate(count, None);
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &slices[..count],
        [None; SYSLOG_BATCH],
        [],
        MsgFlags::empty(),
    )?
    .count();
    if sent == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    Ok(sent)
}

impl std::fmt::Debug for SyslogAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogAppender")
            .field("path", &self.path)
            .finish()
    }
}

impl SyslogAppender {
    fn connect(path: &Path) -> std::io::Result<UnixDatagram> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(socket)
    }
}

impl Append for SyslogAppender {
    fn append(&self, record: &Record) -> anyhow::Result<()> {
        let mut state = crate::sync::lock(&self.state);
        state.push(record, self.pid);
        if BATCHING.get()
            && state.ends.len() < SYSLOG_BATCH
            && state.pending.len() < SYSLOG_BATCH_BYTES
        {
            return Ok(());
        }
        // Lines of other threads go after what is pending, so the order is kept.
        state.send_pending(&self.path)
    }

    fn flush(&self) {
        let _ = crate::sync::lock(&self.state).send_pending(&self.path);
    }
}

/// Installs the global logger. Returns a note for the caller to log when syslog was asked
/// for but could not be reached (the daemon runs on without it).
pub fn init(settings: &LogSettings) -> anyhow::Result<Option<String>> {
    let level = if settings.debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let mut builder = Config::builder();
    let mut root = Root::builder();
    let mut note = None;
    if settings.stderr {
        builder =
            builder.appender(Appender::builder().build("stderr", Box::<StderrAppender>::default()));
        root = root.appender("stderr");
    }
    if let Some(path) = &settings.syslog_socket {
        match SyslogAppender::connect(path) {
            Ok(socket) => {
                let appender = SyslogAppender {
                    path: path.clone(),
                    pid: std::process::id(),
                    state: Mutex::new(SyslogState::new(Some(socket))),
                };
                builder = builder.appender(Appender::builder().build("syslog", Box::new(appender)));
                root = root.appender("syslog");
            }
            Err(e) => {
                note = Some(crate::log_lines::syslog_unavailable(path, e));
            }
        }
    }
    let config = builder.build(root.build(level))?;
    log4rs::init_config(config)?;
    Ok(note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_line_is_what_glibc_sends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let rx = UnixDatagram::bind(&path).unwrap();
        let appender = SyslogAppender {
            path: path.clone(),
            pid: 4242,
            state: Mutex::new(SyslogState::new(Some(
                SyslogAppender::connect(&path).unwrap(),
            ))),
        };
        let record = Record::builder()
            .level(Level::Info)
            .args(format_args!(
                "adminalert: PortSentry is now active and listening."
            ))
            .build();
        appender.append(&record).unwrap();
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        // <29> = daemon.notice; then "Mmm dd hh:mm:ss" (day space-padded), 15 characters.
        assert!(got.starts_with("<29>"), "{got}");
        assert_eq!(
            &got[4 + 15..],
            " portsentry[4242]: adminalert: PortSentry is now active and listening."
        );
        assert_eq!(&got[4 + 3..4 + 4], " ");
        assert_eq!(&got[4 + 9..4 + 10], ":");
        assert_eq!(priority(Level::Error), 27);
    }

    /// An appender connected to the receiver at `path`, as `init` makes it.
    /// A syslog receiver bound in a fresh temp dir (kept alive by the first value) and an
    /// appender connected to it.
    fn syslogd() -> (tempfile::TempDir, PathBuf, UnixDatagram, SyslogAppender) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let rx = UnixDatagram::bind(&path).unwrap();
        let appender = appender_at(&path);
        (dir, path, rx, appender)
    }

    /// Flushes `appender` as the end of a `batched` run does (`log::logger().flush()`, the
    /// installed logger's: this one is not installed), then `rx` holds exactly `lines`.
    fn flushed_in_order(
        appender: &SyslogAppender,
        rx: &UnixDatagram,
        lines: impl IntoIterator<Item = String>,
    ) {
        appender.flush();
        for line in lines {
            assert_eq!(receive(rx), line);
        }
        assert!(nothing_waiting(rx));
    }

    fn appender_at(path: &Path) -> SyslogAppender {
        SyslogAppender {
            path: path.to_path_buf(),
            pid: 7,
            state: Mutex::new(SyslogState::new(Some(
                SyslogAppender::connect(path).unwrap(),
            ))),
        }
    }

    fn log(appender: &SyslogAppender, message: &str) -> anyhow::Result<()> {
        appender.append(
            &Record::builder()
                .level(Level::Info)
                .args(format_args!("{message}"))
                .build(),
        )
    }

    /// The next datagram at `rx` (waiting up to 5 s, so a lost one fails instead of
    /// hanging), checked to be a whole glibc-style line; returns its message.
    fn receive(rx: &UnixDatagram) -> String {
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        // "<29>Mmm dd hh:mm:ss portsentry[7]: ", as in syslog_line_is_what_glibc_sends.
        assert!(got.starts_with("<29>"), "{got}");
        assert_eq!(&got[4 + 3..4 + 4], " ", "{got}");
        assert_eq!(&got[4 + 9..4 + 10], ":", "{got}");
        let message = got[4 + 15..].strip_prefix(" portsentry[7]: ");
        message.unwrap_or_else(|| panic!("{got}")).to_string()
    }

    /// Whether a datagram is waiting at `rx`, without waiting for one.
    fn nothing_waiting(rx: &UnixDatagram) -> bool {
        rx.set_nonblocking(true).unwrap();
        let result = rx.recv(&mut [0u8; 512]);
        rx.set_nonblocking(false).unwrap();
        matches!(result, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    #[test]
    fn a_batch_of_syslog_lines_arrives_whole_and_in_order_when_it_ends() {
        let (_dir, _path, rx, appender) = syslogd();
        // Positive control: outside a batch a line is there at once.
        log(&appender, "alone").unwrap();
        assert_eq!(receive(&rx), "alone");
        assert!(nothing_waiting(&rx));
        // Fewer lines than the receiving queue holds (net.unix.max_dgram_qlen is 10 here).
        batched(|| {
            for i in 0..8 {
                log(&appender, &format!("attackalert: line {i}")).unwrap();
            }
            assert!(nothing_waiting(&rx), "a line went before the batch ended");
        });
        flushed_in_order(
            &appender,
            &rx,
            (0..8).map(|i| format!("attackalert: line {i}")),
        );
    }

    #[test]
    fn a_batch_longer_than_one_sendmmsg_arrives_whole_and_in_order() {
        let (_dir, _path, rx, appender) = syslogd();
        let lines = 2 * SYSLOG_BATCH + 22;
        std::thread::scope(|s| {
            // The receiving queue holds 10 datagrams: read while the batch is sent.
            let reader = s.spawn(|| (0..lines).map(|_| receive(&rx)).collect::<Vec<_>>());
            batched(|| {
                for i in 0..lines {
                    log(&appender, &format!("line {i}")).unwrap();
                }
            });
            appender.flush();
            let got = reader.join().unwrap();
            let want: Vec<String> = (0..lines).map(|i| format!("line {i}")).collect();
            assert_eq!(got, want);
        });
        assert!(nothing_waiting(&rx));
    }

    #[test]
    fn a_line_of_another_thread_goes_after_the_pending_batch() {
        let (_dir, _path, rx, appender) = syslogd();
        batched(|| {
            for i in 0..3 {
                log(&appender, &format!("batch {i}")).unwrap();
            }
            assert!(nothing_waiting(&rx));
            // Not batching on that thread: its line goes at once, after the three waiting.
            std::thread::scope(|s| s.spawn(|| log(&appender, "other")).join().unwrap()).unwrap();
            for i in 0..3 {
                assert_eq!(receive(&rx), format!("batch {i}"));
            }
            assert_eq!(receive(&rx), "other");
            log(&appender, "batch 3").unwrap();
            assert!(nothing_waiting(&rx));
        });
        appender.flush();
        assert_eq!(receive(&rx), "batch 3");
    }

    #[test]
    fn a_batch_reaches_a_syslogd_restarted_while_it_was_gathered() {
        let (_dir, path, old, appender) = syslogd();
        // Positive control: the appender's socket is connected to the first receiver.
        log(&appender, "before").unwrap();
        assert_eq!(receive(&old), "before");
        let new = batched(|| {
            for i in 0..3 {
                log(&appender, &format!("line {i}")).unwrap();
            }
            // syslogd restarts: its socket is closed and bound anew at the same path.
            drop(old);
            std::fs::remove_file(&path).unwrap();
            let new = UnixDatagram::bind(&path).unwrap();
            for i in 3..6 {
                log(&appender, &format!("line {i}")).unwrap();
            }
            assert!(nothing_waiting(&new));
            new
        });
        flushed_in_order(&appender, &new, (0..6).map(|i| format!("line {i}")));
    }

    #[test]
    fn a_batch_for_a_syslogd_that_is_gone_is_dropped_not_kept() {
        let (_dir, path, rx, appender) = syslogd();
        drop(rx);
        std::fs::remove_file(&path).unwrap();
        // No syslogd: lines are dropped without an error, as one by one they always were.
        batched(|| {
            for i in 0..SYSLOG_BATCH + 10 {
                log(&appender, &format!("lost {i}")).unwrap();
            }
        });
        appender.flush();
        {
            let state = crate::sync::lock(&appender.state);
            assert!(state.ends.is_empty() && state.pending.is_empty());
            assert!(state.socket.is_none());
        }
        // syslogd comes back: the next line reaches it, and none of the lost ones.
        let rx = UnixDatagram::bind(&path).unwrap();
        log(&appender, "back").unwrap();
        assert_eq!(receive(&rx), "back");
        assert!(nothing_waiting(&rx));
    }

    #[test]
    fn a_datagram_syslogd_cannot_take_fails_after_one_retry_and_the_order_is_kept() {
        let (_dir, _path, rx, appender) = syslogd();
        // Larger than a unix datagram may be (the send buffer, 208 KiB by default), and
        // larger than a batch: it sends what waits before it, then fails with EMSGSIZE.
        let huge = "x".repeat(1 << 20);
        batched(|| {
            log(&appender, "a").unwrap();
            log(&appender, "b").unwrap();
            let err = log(&appender, &huge).unwrap_err().to_string();
            assert!(err.starts_with("syslog "), "{err}");
            assert_eq!(receive(&rx), "a");
            assert_eq!(receive(&rx), "b");
            log(&appender, "c").unwrap();
            assert!(nothing_waiting(&rx));
        });
        appender.flush();
        assert_eq!(receive(&rx), "c");
        assert!(nothing_waiting(&rx));
        let capacity = crate::sync::lock(&appender.state).pending.capacity();
        assert!(capacity <= 2 * SYSLOG_BATCH_BYTES, "{capacity}");
    }

    #[test]
    fn control_characters_are_escaped_and_ordinary_text_is_untouched() {
        let plain = "attackalert: Host 192.0.2.7 has been blocked via dropped route using command: \"/sbin/ip route add unreachable 192.0.2.7\" (C:\\x)";
        assert!(matches!(escape_controls(plain), Cow::Borrowed(_)));
        // A lead byte shared with the C1 controls, on a printable character: untouched.
        assert!(matches!(escape_controls("© é"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nb\rc\td\u{1b}[31me\u{7f}f\u{0}g\u{85}h é"),
            "a\\nb\\rc\\td\\x1b[31me\\x7ff\\x00g\\u{85}h é"
        );
    }

    #[test]
    fn a_multi_line_plugin_message_stays_one_syslog_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let rx = UnixDatagram::bind(&path).unwrap();
        let appender = SyslogAppender {
            path: path.clone(),
            pid: 1,
            state: Mutex::new(SyslogState::new(Some(
                SyslogAppender::connect(&path).unwrap(),
            ))),
        };
        let result = "ok\nattackalert: Host 1.2.3.4 is blocked";
        appender
            .append(
                &Record::builder()
                    .level(Level::Info)
                    .args(format_args!("lua:inject: {result}"))
                    .build(),
            )
            .unwrap();
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(got.lines().count(), 1, "{got}");
        assert!(
            got.ends_with(": lua:inject: ok\\nattackalert: Host 1.2.3.4 is blocked"),
            "{got}"
        );
    }
}
