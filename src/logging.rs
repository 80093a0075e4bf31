//! Logging set-up, the one place that knows log4rs (it is barely maintained; everything else
//! uses the `log` macros). Lines go to syslog (ident `portsentry`, with PID, facility daemon,
//! level notice for `log::info!`) as 1.2 sent them, and to stderr when running in the
//! foreground (systemd's journal picks it up). Without a syslog socket (containers, CI) the
//! stderr appender still comes up and the daemon carries on.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::{Level, LevelFilter, Record};
use log4rs::append::Append;
use log4rs::append::console::{ConsoleAppender, Target};
use log4rs::config::{Appender, Config, Root};
use log4rs::encode::pattern::PatternEncoder;
use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

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

/// A log4rs appender that speaks RFC 3164 to the local syslog socket, as 1.2's `syslog()`
/// calls did. log4rs ships none, and `log4rs-syslog` only fits log4rs 0.8.
struct SyslogAppender {
    path: PathBuf,
    logger: Mutex<Option<Logger<LoggerBackend, Formatter3164>>>,
}

impl std::fmt::Debug for SyslogAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogAppender")
            .field("path", &self.path)
            .finish()
    }
}

impl SyslogAppender {
    fn connect(path: &Path) -> syslog::Result<Logger<LoggerBackend, Formatter3164>> {
        let formatter = Formatter3164 {
            facility: Facility::LOG_DAEMON,
            hostname: None,
            process: "portsentry".to_string(),
            pid: std::process::id(),
        };
        syslog::unix_custom(formatter, path)
    }

    fn send(
        logger: &mut Logger<LoggerBackend, Formatter3164>,
        level: Level,
        msg: &str,
    ) -> syslog::Result<()> {
        match level {
            Level::Error => logger.err(msg),
            Level::Warn => logger.warning(msg),
            Level::Info => logger.notice(msg),
            Level::Debug | Level::Trace => logger.debug(msg),
        }
    }
}

impl Append for SyslogAppender {
    fn append(&self, record: &Record) -> anyhow::Result<()> {
        let msg = record.args().to_string();
        let mut guard = self.logger.lock().unwrap_or_else(|p| p.into_inner());
        // syslogd may have restarted since the last line: reconnect once and retry.
        if let Some(logger) = guard.as_mut()
            && Self::send(logger, record.level(), &msg).is_ok()
        {
            return Ok(());
        }
        *guard = Self::connect(&self.path).ok();
        if let Some(logger) = guard.as_mut() {
            Self::send(logger, record.level(), &msg).map_err(|e| anyhow::anyhow!("syslog: {e}"))?;
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
        let console = ConsoleAppender::builder()
            .target(Target::Stderr)
            .encoder(Box::new(PatternEncoder::new("{m}{n}")))
            .build();
        builder = builder.appender(Appender::builder().build("stderr", Box::new(console)));
        root = root.appender("stderr");
    }
    if let Some(path) = &settings.syslog_socket {
        match SyslogAppender::connect(path) {
            Ok(logger) => {
                let appender = SyslogAppender {
                    path: path.clone(),
                    logger: Mutex::new(Some(logger)),
                };
                builder = builder.appender(Appender::builder().build("syslog", Box::new(appender)));
                root = root.appender("syslog");
            }
            Err(e) => {
                note = Some(format!(
                    "adminalert: syslog socket {} unavailable ({e}); logging to stderr only",
                    path.display()
                ));
            }
        }
    }
    let config = builder.build(root.build(level))?;
    log4rs::init_config(config)?;
    Ok(note)
}
