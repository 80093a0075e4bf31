//! Responders: what happens to a source once an alert says it should be blocked.
//!
//! Built-in: [`hosts_deny`] (`KILL_HOSTS_DENY`), [`shell`] (`KILL_ROUTE`, `KILL_RUN_CMD`); custom ones in Lua ([`lua`]). They run on the response thread, never on
//! the detection path, and each reports what it did so that a block can later be undone.

pub mod command;
pub mod hosts_deny;
pub mod lua;
pub mod resolve;
pub mod shell;
pub mod stage;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::event::Alert;

/// Everything a responder may need about one alert.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    /// The alert being acted on.
    pub alert: &'a Alert,
    /// Reverse-DNS name when `RESOLVE_HOST=1` found one, else the IP as text.
    pub resolved: &'a str,
    /// The config generation in force.
    pub config: &'a Config,
}

impl ResponseContext<'_> {
    /// The attacker's address: always an IP literal, never a resolved name.
    pub fn target(&self) -> IpAddr {
        self.alert.hit.src
    }
}

/// What a responder did, kept in the block record so that expiry or `unblock` can undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Responder name (`hosts_deny`, `route`, `run_cmd`, `lua:nftables`, …).
    pub responder: String,
    /// What was applied: the command line run, the line appended, …
    pub detail: String,
}

/// A responder's result for one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The block was applied.
    Done(Action),
    /// Nothing to do (not configured, already present); not a failure.
    Skipped(String),
    /// The responder tried and failed; the text says how (exit status, timeout, I/O error).
    Failed(String),
    /// A custom responder decided the host must not be blocked: the responders after it
    /// do not run.
    Veto(String),
}

/// One way of blocking a source.
pub trait Responder: Send {
    /// Short stable name, recorded in block records.
    fn name(&self) -> String;

    /// Applies the block for this alert.
    fn respond(&mut self, ctx: &ResponseContext<'_>) -> Outcome;
}

/// Test support: runs a responder once for a probe from `src`, with default config.
#[cfg(test)]
pub(crate) fn respond_once(
    responder: &mut dyn Responder,
    src: &str,
    port: u16,
    mode: crate::event::Mode,
    kind: crate::event::ProbeKind,
) -> Outcome {
    let config = crate::config::build::defaults(std::path::Path::new("portsentry.conf"));
    let alert = Alert {
        hit: crate::event::Hit::now(src.parse().expect("test address"), port, mode, kind),
        count: 1,
        already_blocked: false,
    };
    let ctx = ResponseContext {
        alert: &alert,
        resolved: src,
        config: &config,
    };
    responder.respond(&ctx)
}
