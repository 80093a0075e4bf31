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
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::{Level, LevelFilter, Record};
use log4rs::append::Append;
use log4rs::config::{Appender, Config, Root};

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
    /// Set while this thread runs inside [`batched`]: its stderr lines wait in the buffer.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Largest stderr batch kept before it is written out anyway.
const STDERR_BATCH: usize = 64 * 1024;

/// Runs `f` with the stderr lines this thread logs gathered and written in one go at the
/// end (or every 64 KiB). The announcing thread drains a burst of alerts this way: during a
/// forged flood one `write(2)` per batch instead of one per line keeps it ahead of the
/// queue. Syslog lines are still sent one by one, as they are logged.
pub fn batched<R>(f: impl FnOnce() -> R) -> R {
    BATCHING.set(true);
    let result = f();
    BATCHING.set(false);
    log::logger().flush();
    result
}

/// Writes pending stderr lines now (before slow work inside a [`batched`] run, so that an
/// admin watching the log is not kept waiting by a responder).
pub fn flush() {
    log::logger().flush();
}

/// Escapes control characters so that `text` stays one line and shows no terminal escape:
/// `\n`, `\r`, `\t` as such, other C0 characters, ESC and DEL as `\xNN`, C1 characters as
/// `\u{NN}`. Everything else (and so every 1.2 log line made of ordinary text) is unchanged;
/// a backslash is left as it is, so ordinary paths and messages stay byte-compatible.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
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

/// A log4rs appender that speaks to the local syslog socket as glibc's `syslog()` (and so
/// 1.2) did: `<PRI>Mmm dd hh:mm:ss portsentry[PID]: message`, local time, facility daemon.
/// log4rs ships none, and `log4rs-syslog` only fits log4rs 0.8. The timestamp is formatted
/// once per second (the local time zone is looked up only then) and each line is written
/// into the same buffer, so a flood of alerts costs one `send(2)` per line and little else.
struct SyslogAppender {
    path: PathBuf,
    pid: u32,
    state: Mutex<SyslogState>,
}

struct SyslogState {
    socket: Option<UnixDatagram>,
    stamp_second: i64,
    stamp: String,
    /// The datagram being sent, kept for its memory.
    line: String,
}

impl SyslogState {
    fn new(socket: Option<UnixDatagram>) -> SyslogState {
        SyslogState {
            socket,
            stamp_second: i64::MIN,
            stamp: String::new(),
            line: String::new(),
        }
    }
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
        use std::fmt::Write;
        let mut guard = crate::sync::lock(&self.state);
        let state = &mut *guard;
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if second != state.stamp_second {
            let now = chrono::Local::now();
            state.stamp_second = now.timestamp();
            state.stamp = now.format("%b %e %H:%M:%S").to_string();
        }
        let line = &mut state.line;
        line.clear();
        let _ = write!(
            line,
            "<{}>{} portsentry[{}]: ",
            priority(record.level()),
            state.stamp,
            self.pid
        );
        push_message(line, record);
        // syslogd may have restarted since the last line: reconnect once and retry.
        if let Some(socket) = &state.socket
            && socket.send(line.as_bytes()).is_ok()
        {
            return Ok(());
        }
        state.socket = Self::connect(&self.path).ok();
        if let Some(socket) = &state.socket {
            socket
                .send(line.as_bytes())
                .map_err(|e| anyhow::anyhow!("syslog {}: {e}", self.path.display()))?;
        }
        Ok(())
    }

    fn flush(&self) {}
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

    #[test]
    fn control_characters_are_escaped_and_ordinary_text_is_untouched() {
        let plain = "attackalert: Host 192.0.2.7 has been blocked via dropped route using command: \"/sbin/ip route add unreachable 192.0.2.7\" (C:\\x)";
        assert!(matches!(escape_controls(plain), Cow::Borrowed(_)));
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
