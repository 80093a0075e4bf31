//! Operating a running daemon: a unix socket where `portsentry status`, `list`, `block`,
//! `unblock` and `reload` ask the daemon, by message, what only its owner threads know.
//!
//! The [`server`] never touches daemon state itself: it turns each request into a
//! [`protocol::ControlCall`] for the daemon's main loop and relays the answer. The
//! [`client`] is what the CLI subcommands use, through [`commands`] (what each subcommand
//! checks, sends and prints). [`protocol`] is the wire format both sides share.

pub mod client;
pub mod commands;
pub mod protocol;
pub mod server;

/// Where the socket lives unless the config's `CONTROL_SOCKET` says otherwise: `/run` is
/// cleared at boot, so a stale socket never outlives the machine's uptime.
pub const DEFAULT_SOCKET: &str = "/run/portsentry/portsentry.sock";

/// The config key naming the socket; client and daemon must read the same one.
pub const SOCKET_KEY: &str = "CONTROL_SOCKET";
