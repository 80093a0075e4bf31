//! Responders: what happens to a source once an alert says it should be blocked.
//!
//! Built-in: [`nftables`] (`KILL_NFTABLES`), [`hosts_deny`] (`KILL_HOSTS_DENY`), [`route`]
//! (`KILL_ROUTE` of the documented forms, over rtnetlink), [`shell`] (any other `KILL_ROUTE`,
//! `KILL_RUN_CMD`);
//! custom ones in Lua ([`lua`]). They run on the block manager's [`pool`] of workers, never
//! on the detection path, and each reports what it did and how to undo it; [`undo`] takes a
//! block back when it ends.

pub mod command;
pub mod hosts_deny;
pub mod lua;
pub mod nftables;
pub mod pool;
pub mod process;
pub mod resolve;
pub mod route;
pub mod shell;
pub mod undo;

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::event::Candidate;
pub use crate::record::{Action, Target, Undo};

/// Everything a responder may need about one block (or, for Lua `alert` handlers, one
/// alert).
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    /// The alert being acted on: the probe behind a scan block, a stand-in (port 0) for a
    /// block made by hand or restored from the journal.
    pub alert: &'a Candidate,
    /// Who is blocked: the alert's source, or a network for blocks made by hand.
    pub target: Target,
    /// Reverse-DNS name when `RESOLVE_HOST=1` found one, else the IP as text.
    pub resolved: &'a str,
    /// The config generation in force.
    pub config: &'a Config,
    /// When the block ends (`None`: permanent), so that a responder can give the kernel the
    /// same timeout.
    pub until: Option<SystemTime>,
    /// The block is re-applied after a restart, not new: notifications may stay quiet.
    pub restored: bool,
    /// The hosts a prefix block escalated from took over (their blocks were folded into
    /// it); empty for every other block.
    pub members: &'a [IpAddr],
}

impl<'a> ResponseContext<'a> {
    /// The context of a new, permanent block of the alert's source (Lua `alert` handlers,
    /// tests).
    pub fn for_alert(alert: &'a Candidate, resolved: &'a str, config: &'a Config) -> Self {
        ResponseContext {
            alert,
            target: crate::record::host_target(alert.hit.src),
            resolved,
            config,
            until: None,
            restored: false,
            members: &[],
        }
    }

    /// The attacker's address: always an IP literal, never a resolved name (the network
    /// address for a network block).
    pub fn target_ip(&self) -> IpAddr {
        self.target.addr()
    }

    /// `$TARGET$`: the bare address of a host, `addr/len` of a network.
    pub fn target_text(&self) -> String {
        crate::record::target_text(&self.target)
    }
}

/// Why a block ends; Lua `unblock` handlers see it as `ev.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnblockReason {
    /// Its `BLOCK_TIMEOUT` ran out.
    Expired,
    /// An operator lifted it (`portsentry unblock`).
    Unblock,
    /// A host block taken over by the block of its prefix (escalation): the prefix's own
    /// `block` event follows or came just before.
    Escalated,
}

impl UnblockReason {
    /// `"expired"` / `"unblock"` / `"escalated"`, the text of `ev.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnblockReason::Expired => "expired",
            UnblockReason::Unblock => "unblock",
            UnblockReason::Escalated => "escalated",
        }
    }
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

    /// Whether [`Responder::respond_batch`] does a batch in one go (one file rewrite, one
    /// netlink exchange) rather than block after block: the pool then gives the whole batch
    /// one step of its watchdog instead of one per block.
    fn batched(&self) -> bool {
        false
    }

    /// Applies the blocks of several alerts, one outcome per context in order. By default
    /// one after the other; responders that can do many at the cost of one override it.
    fn respond_batch(&mut self, ctxs: &[ResponseContext<'_>]) -> Vec<Outcome> {
        ctxs.iter().map(|ctx| self.respond(ctx)).collect()
    }

    /// Whether blocking `target` is done in this process within a bounded time (no command,
    /// no file, no plugin): then the pool may run it on the block manager's own thread,
    /// sparing the wake-up of a worker (see [`pool::Pool::submit`]).
    fn in_process(&self, _target: &Target) -> bool {
        false
    }
}

/// Test support: runs a responder once for a probe from `src`, with default config; `src`
/// may be a network (`10.0.0.0/24`), which is then the target (the probe comes from its
/// network address).
#[cfg(test)]
pub(crate) fn respond_once(
    responder: &mut dyn Responder,
    src: &str,
    port: u16,
    mode: crate::event::Mode,
    kind: crate::event::ProbeKind,
) -> Outcome {
    let config = crate::config::build::defaults(std::path::Path::new("portsentry.conf"));
    let target = crate::record::parse_target(src).expect("test address or network");
    let alert = Candidate {
        hit: crate::event::Hit::now(target.addr(), port, mode, kind),
        count: 1,
        already_blocked: false,
        actionable: true,
    };
    responder.respond(&ResponseContext {
        target,
        ..ResponseContext::for_alert(&alert, src, &config)
    })
}

/// Slack on top of a responder step's own limit before the watchdog counts the worker stuck:
/// a command is killed at `KILL_CMD_TIMEOUT`, then reaped and its output collected (200 ms).
const STEP_MARGIN: Duration = Duration::from_secs(2);

/// How long one responder step may keep a worker before it counts as stuck
/// ([`crate::heartbeat`]): commands are killed at `KILL_CMD_TIMEOUT`, a Lua call gives up
/// after its own budget, and a file edit (hosts.deny) is held to `KILL_CMD_TIMEOUT` too —
/// a local file that does not answer within it is a hung file system.
pub fn step_limit(config: &Config, responder: &str) -> Duration {
    let own = if responder.starts_with("lua:") {
        lua::longest_call(config)
    } else {
        config.kill_cmd_timeout
    };
    own + STEP_MARGIN
}
