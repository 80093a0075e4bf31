//! `portsentry replay FILE…`: what would this configuration have done with that traffic?
//!
//! Every packet of the capture goes through the daemon's own stages, on a clock driven by
//! the capture's timestamps: the raw sensor's packet handling ([`raw::handle`]: classifier,
//! watched ports, flow table), the filter chain ([`filter::judge`]: ignore list, protected
//! addresses, trigger table with its evidence weights and prefixes, already blocked), the
//! announcer's rule ([`announce::decide`]) and the block core ([`BlockCore`]: rate limits,
//! per-prefix budgets, escalation, durations). Nothing is decided here that the daemon
//! decides elsewhere: this module only feeds the stages and listens to what they say.
//!
//! What the live daemon asks the kernel (its addresses, listeners, established sessions,
//! sockets) is read off the capture instead ([`host`]), or given on the command line. The
//! classic modes (`-tcp`, `-udp`) are bound sockets in the daemon; here a TCP trap port
//! counts a connection whose handshake completed in the capture, and a UDP trap port every
//! datagram. Nothing of the system is touched: no route, no element, no file but stdout.

mod driver;
pub mod file;
pub mod host;
pub mod link;
pub mod report;

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use crate::event::Mode;
use crate::generation::Generation;
use crate::sensor::listeners::Listeners;

use self::driver::Replay;
use self::file::{FileError, Mapped, Merged};
use self::host::{HostView, Learner};
use self::report::Summary;
use crate::respond::lua::DryRunPlugins;

/// What to replay, and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The capture files, merged in time order.
    pub files: Vec<PathBuf>,
    /// The sensor modes, as the daemon would run them.
    pub modes: Vec<Mode>,
    /// The host's addresses (`--local`); learned from the capture when `None`.
    pub local: Option<Vec<IpAddr>>,
    /// The ports with a listener (`--listening`); learned from the capture when `None`.
    pub listening: Option<Listeners>,
    /// Gateways to protect (`--gateway`), as the route table would have named them.
    pub gateways: Vec<IpAddr>,
    /// Nameservers to protect (`--resolver`), as `RESOLV_CONF` would have named them.
    pub resolvers: Vec<IpAddr>,
    /// Verify transport checksums (a capture off the wire); by default they are trusted,
    /// as the kernel vouches for packets built on the host or checked by the NIC.
    pub verify_checksums: bool,
    /// Fire the configured Lua responders' events in dry-run mode, traces on `out`.
    pub plugins: bool,
    /// JSON lines instead of the table.
    pub json: bool,
    /// List every source in the table.
    pub all: bool,
}

/// Why a replay did not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A capture file is unreadable or malformed (exit code 2).
    #[error(transparent)]
    File(#[from] FileError),
    /// The Lua plugins did not load.
    #[error("plugins: {0}")]
    Plugins(String),
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Output(#[from] io::Error),
}

/// Replays `options.files` under `generation` and writes the report to `out`.
pub fn run(
    options: &Options,
    generation: Generation,
    out: &mut dyn Write,
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let maps = Mapped::open_all(&options.files)?;
    let host = learn(&maps, options)?;
    let plugins = if options.plugins {
        let p = DryRunPlugins::load(&generation.config)
            .map_err(|e| ReplayError::Plugins(e.to_string()))?;
        writeln!(
            out,
            "Lua responders in dry run: {}",
            if p.names().is_empty() {
                "none configured (LUA_RESPONDERS)".to_string()
            } else {
                p.names().join(", ")
            }
        )?;
        Some(p)
    } else {
        None
    };
    let mut replay = Replay::new(options, generation, host, plugins);
    let mut files = Merged::open(&maps)?;
    while let Some(frame) = files.next_frame()? {
        replay.frame(&frame, out)?;
    }
    replay.finish(out)?;
    let mut summary = replay.summary();
    summary.files = options.files.len();
    summary.bytes = maps.iter().map(|m| m.bytes().len() as u64).sum();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.packets_per_second = summary.packets as f64 / summary.seconds.max(1e-9);
    if options.json {
        report::write_json(out, &replay.sources, &summary)?;
    } else {
        report::write_table(out, &replay.sources, &summary, options.all)?;
    }
    Ok(summary)
}

/// The first look: who the host was, from the capture's first [`host::SAMPLE`] IP packets
/// (listeners that first answer later are learned as the replay meets them).
fn learn(maps: &[Mapped], options: &Options) -> Result<HostView, ReplayError> {
    let mut learner = Learner::default();
    let mut files = Merged::open(maps)?;
    while !learner.sampled()
        && let Some(frame) = files.next_frame()?
    {
        if let Ok(d) = link::decode(frame.link, frame.data) {
            learner.see(frame.iface, &d);
        }
    }
    Ok(learner.finish(options.local.clone(), options.listening.clone()))
}

/// Reads `--listening` (`tcp/22,udp/53,80`: a bare port is TCP).
pub fn parse_listening(text: &str) -> Result<Listeners, String> {
    let mut l = Listeners::default();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (proto, port) = match item.split_once('/') {
            Some((p, n)) => (p.to_ascii_lowercase(), n),
            None => ("tcp".to_string(), item),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("--listening: '{item}': expected tcp/PORT or udp/PORT"))?;
        match proto.as_str() {
            "tcp" => l.tcp.insert(port),
            "udp" => l.udp.insert(port),
            _ => return Err(format!("--listening: '{item}': the protocol is tcp or udp")),
        };
    }
    Ok(l)
}

#[cfg(test)]
mod tests;
