//! Telling systemd how the daemon is doing (`Type=notify`), over the documented `sd_notify`
//! datagram protocol: `READY=1` once every sensor listens, `RELOADING=1` then `READY=1`
//! around each reload with a `STATUS=` that says which generation is in force or why a reload
//! was refused, `STOPPING=1` on the way out, and `WATCHDOG=1` pings while the threads that
//! do the work are moving ([`crate::heartbeat`]).
//!
//! Without `NOTIFY_SOCKET` (not started by systemd, tests) every call is a no-op. The socket
//! is a path or, with a leading `@`, an abstract name, as sd_notify(3) documents.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::LazyLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};

use crate::event::Mode;
use crate::heartbeat::Registry;

/// Where the notifications go.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// A notifier for a `NOTIFY_SOCKET` value: an absolute path, or `@name` for an abstract
    /// socket.
    pub fn new(target: &str) -> std::io::Result<Notifier> {
        let addr = if let Some(name) = target.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if target.starts_with('/') {
            SocketAddr::from_pathname(target)?
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor an @abstract name",
            ));
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends one notification (newline-separated `KEY=value` assignments).
    pub fn send(&self, state: &str) -> std::io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
    }
}

/// The daemon's notifier, from `NOTIFY_SOCKET` at first use.
static NOTIFIER: LazyLock<Option<Notifier>> = LazyLock::new(|| {
    let target = std::env::var("NOTIFY_SOCKET").ok()?;
    match Notifier::new(&target) {
        Ok(n) => Some(n),
        Err(e) => {
            log::warn!("{}", crate::log_lines::notify_socket_unusable(&target, e));
            None
        }
    }
});

/// Sends `state` when systemd listens; a failure is logged and otherwise ignored (systemd
/// gone is no reason to stop guarding the host).
fn send(state: &str) {
    if let Some(n) = NOTIFIER.as_ref()
        && let Err(e) = n.send(state)
    {
        log::debug!("sd_notify {state:?} failed: {e}");
    }
}

/// `STATUS=` takes one line.
fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The status of a generation in force: `generation 2 in force, modes tcp udp`.
pub fn in_force(generation: u64, modes: &[Mode]) -> String {
    let modes: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
    format!(
        "generation {generation} in force, modes {}",
        modes.join(" ")
    )
}

/// The status after a reload: the generation now in force, or the first error (which names
/// its file and line) and the generation kept.
pub fn after_reload(result: &Result<u64, Vec<String>>, modes: &[Mode], kept: u64) -> String {
    match result {
        Ok(generation) => in_force(*generation, modes),
        Err(errors) => {
            let first = errors
                .first()
                .map_or_else(|| "unknown error".to_string(), |e| one_line(e));
            let more = match errors.len() {
                0 | 1 => String::new(),
                2 => " (and 1 more error)".to_string(),
                n => format!(" (and {} more errors)", n - 1),
            };
            format!("reload refused: {first}{more}, generation {kept} kept")
        }
    }
}

/// `READY=1` with a status line.
pub fn ready_message(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

/// `RELOADING=1` with the time the reload began (systemd uses it to tell this reload's
/// `READY=1` from an earlier one's).
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// The daemon is ready: every sensor listens (at start) or a reload is over.
pub fn ready(status: &str) {
    send(&ready_message(status));
}

/// A reload begins.
pub fn reloading() {
    send(&reloading_message(monotonic_usec()));
}

/// The daemon is stopping.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// `CLOCK_MONOTONIC` in microseconds, the clock `MONOTONIC_USEC` is read against.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let micros = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), when it is meant for this
/// process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The pinger: sends `WATCHDOG=1` every half interval while the registry is healthy.
pub struct Watchdog {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging when systemd asked for a watchdog and listens; `None` otherwise.
    pub fn start() -> Option<Watchdog> {
        let interval = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )?;
        let notifier = NOTIFIER.as_ref()?;
        let (stop, stopped) = bounded::<()>(1);
        let registry = crate::heartbeat::registry();
        let every = interval / 2;
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut pinging = true;
                loop {
                    pinging = ping_if_healthy(registry, notifier, pinging);
                    match stopped.recv_timeout(every) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            });
        match thread {
            Ok(t) => Some(Watchdog {
                stop,
                thread: Some(t),
            }),
            Err(e) => {
                log::error!("{}", crate::log_lines::watchdog_thread_failed(e));
                None
            }
        }
    }

    /// Stops pinging (before the threads it watches end).
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One turn of the pinger: pings when every watched thread moves, says so in the log when
/// that changes; returns whether it pinged.
fn ping_if_healthy(registry: &Registry, notifier: &Notifier, was_pinging: bool) -> bool {
    match registry.check(Instant::now()) {
        Ok(()) => {
            if !was_pinging {
                log::info!("{}", crate::log_lines::watchdog_resumed());
            }
            if let Err(e) = notifier.send("WATCHDOG=1") {
                log::debug!("sd_notify WATCHDOG=1 failed: {e}");
            }
            true
        }
        Err(why) => {
            if was_pinging {
                log::warn!("{}", crate::log_lines::watchdog_stopped(why));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::Kind;

    #[test]
    fn ready_carries_the_generation_and_modes() {
        assert_eq!(
            ready_message(&in_force(1, &[Mode::Tcp, Mode::Audp])),
            "READY=1\nSTATUS=generation 1 in force, modes tcp audp"
        );
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        assert_eq!(
            reloading_message(12_345_678),
            "RELOADING=1\nMONOTONIC_USEC=12345678"
        );
        let (a, b) = (monotonic_usec(), monotonic_usec());
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn refused_reload_names_the_file_the_first_error_and_the_kept_generation() {
        let errors = vec![
            "/etc/portsentry/portsentry.ignore:3: \"10.0.0.x\": not an address".to_string(),
            "/etc/portsentry/portsentry.conf:9: TCP_PORTS: \"x\": not a port".to_string(),
        ];
        assert_eq!(
            after_reload(&Err(errors), &[Mode::Tcp], 4),
            "reload refused: /etc/portsentry/portsentry.ignore:3: \"10.0.0.x\": not an \
             address (and 1 more error), generation 4 kept"
        );
        assert_eq!(
            after_reload(&Ok(5), &[Mode::Tcp], 4),
            "generation 5 in force, modes tcp"
        );
        assert_eq!(
            after_reload(&Err(vec![]), &[Mode::Tcp], 4),
            "reload refused: unknown error, generation 4 kept"
        );
    }

    #[test]
    fn status_is_kept_on_one_line() {
        assert_eq!(
            ready_message("reload refused: a\nb\n"),
            "READY=1\nSTATUS=reload refused: a; b"
        );
    }

    #[test]
    fn watchdog_interval_needs_usec_and_our_pid_if_one_is_named() {
        let s = Some("30000000");
        assert_eq!(watchdog_interval(s, None, 7), Some(Duration::from_secs(30)));
        assert_eq!(
            watchdog_interval(s, Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(s, Some("8"), 7),
            None,
            "meant for another"
        );
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
    }

    fn pair() -> (UnixDatagram, Notifier) {
        let name = format!(
            "portsentry-notify-test-{}-{:?}",
            std::process::id(),
            Instant::now()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        (listener, Notifier::new(&format!("@{name}")).unwrap())
    }

    fn recv(s: &UnixDatagram) -> Option<String> {
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[test]
    fn abstract_and_path_sockets_receive_what_is_sent() {
        let (listener, n) = pair();
        n.send("READY=1").unwrap();
        assert_eq!(recv(&listener).as_deref(), Some("READY=1"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::new(&path.display().to_string())
            .unwrap()
            .send("STOPPING=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");

        assert!(Notifier::new("relative/path").is_err());
    }

    #[test]
    fn pinger_pings_only_while_the_registry_is_healthy() {
        let (listener, n) = pair();
        listener
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let r = Registry::new();
        let worker = r.enroll_at("respond-0", Kind::Worker, Instant::now());
        assert!(ping_if_healthy(&r, &n, true));
        assert_eq!(recv(&listener).as_deref(), Some("WATCHDOG=1"));
        worker.busy_at(Instant::now(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!ping_if_healthy(&r, &n, true));
        assert_eq!(recv(&listener), None, "no ping while the pool is wedged");
        worker.idle();
        assert!(ping_if_healthy(&r, &n, false));
        assert_eq!(recv(&listener).as_deref(), Some("WATCHDOG=1"));
    }
}
