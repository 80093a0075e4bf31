//! Operating a running daemon: a unix socket where `portsentry status`, `list`, `block`,
//! `unblock` and `reload` ask the daemon, by message, what only its owner threads know.
//!
//! The [`server`] never touches daemon state itself: it turns each request into a
//! [`protocol::ControlCall`] for the daemon's main loop and relays the answer. The
//! [`client`] is what the CLI subcommands use, through [`commands`] (what each subcommand
//! checks, sends and prints). [`protocol`] is the wire format both sides share; [`select`]
//! filters blocks by address and origin for `list` and `unblock --all`. [`notify`]
//! tells systemd the daemon's state (`Type=notify`, watchdog). [`metrics`] serves the
//! daemon's counters to Prometheus over HTTP (`METRICS_LISTEN`).

pub mod client;
pub mod commands;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod select;
pub mod server;

/// Where the socket lives unless the config's `CONTROL_SOCKET` says otherwise: `/run` is
/// cleared at boot, so a stale socket never outlives the machine's uptime.
pub const DEFAULT_SOCKET: &str = "/run/portsentry/portsentry.sock";

/// The config key naming the socket; client and daemon must read the same one.
pub const SOCKET_KEY: &str = "CONTROL_SOCKET";

/// One read of a client's (or the daemon's) bytes, classified the one way both bounded
/// readers (the control socket's lines, the metrics server's request heads) need.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// This many bytes arrived (0: the peer closed).
    Data(usize),
    /// A signal interrupted the read: read again.
    Interrupted,
    /// The read timeout ran out with nothing new.
    TimedOut,
    /// The socket failed.
    Failed(std::io::Error),
}

/// Reads once into `buf` and says which of the [`Chunk`] cases it was.
pub(crate) fn read_chunk(stream: &mut impl std::io::Read, buf: &mut [u8]) -> Chunk {
    use std::io::ErrorKind;
    match stream.read(buf) {
        Ok(n) => Chunk::Data(n),
        Err(e) if e.kind() == ErrorKind::Interrupted => Chunk::Interrupted,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Chunk::TimedOut
        }
        Err(e) => Chunk::Failed(e),
    }
}
