//! The puller thread: follows the LAPI's decision stream (`startup=true` once, then every
//! `CROWDSEC_POLL_INTERVAL`) and keeps the `ban` decisions for `Ip` and `Range` scopes in
//! its own [`DecisionTable`], applying each pull's changes to the kernel in one go: the
//! `fleet_ipv4` / `fleet_ipv6` nftables sets with `KILL_NFTABLES` (one netlink transaction,
//! each element with the decision's remaining time as its kernel timeout), else routes
//! ([`super::room`]). Pulled decisions never go through the block manager: they do not count
//! against `MAX_ACTIVE_BLOCKS` or `BLOCK_RATE_LIMIT`, run no command, write no hosts.deny
//! line and no per-decision log line; a local scan always finds room.
//!
//! Protected, ignored and local addresses are refused with the block manager's own check
//! ([`crate::block::refusal::refusal`]), counted in the pull's one log line and named at
//! `--debug`. A decision of origin `portsentry` for a host this host blocks already is this
//! host's own decision coming back: left alone. Filters (`CROWDSEC_ORIGINS`,
//! `CROWDSEC_SCENARIOS_*`) go to the LAPI as the stream's query and are applied again to
//! what comes back. `CROWDSEC_PULL_RESPONDERS` ([`super::responders`]) runs other responders
//! too, after the kernel has the pull's changes. What `status`, `list` and the metrics show is published in a
//! [`PullView`] after each pull: they never wait on the LAPI.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;

use super::client::{Decision, Lapi, StreamFilter, Tls};
use super::duration::{self, Remaining};
use super::responders::{PullResponders, ResponderKeys};
use super::room::{KernelRoom, RoomSettings};
use super::table::{DecisionTable, Incoming, Pulled, Verdict};
use super::{Health, LinkView, ORIGIN, PullView, Secret};
use crate::block::view::BlockView;
use crate::block::{Target, parse_target, target_text};
use crate::config::ignore::IgnoreList;
use crate::local_addrs::LocalAddrs;
use crate::log_lines;
use crate::protected::ProtectView;
use crate::respond::nftables::NftHandle;

/// Refusals named one by one at `--debug` in one pull at most (the rest are counted).
const DEBUG_NAMES: usize = 1000;

/// What the puller needs; compared at reload to decide whether to restart it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullConfig {
    /// LAPI base URL.
    pub lapi_url: String,
    /// The bouncer key (from `CROWDSEC_BOUNCER_KEY_FILE`).
    pub bouncer_key: Secret,
    /// Time between two pulls.
    pub poll_interval: Duration,
    /// `CROWDSEC_MAX_DECISIONS`.
    pub max_decisions: usize,
    /// `CROWDSEC_ORIGINS` and `CROWDSEC_SCENARIOS_*`.
    pub filter: StreamFilter,
    /// Certificates for an `https://` LAPI.
    pub tls: Tls,
    /// Where the decisions go in the kernel.
    pub room: RoomSettings,
    /// The ignore list in force (a reload that changes it restarts the puller, which then
    /// re-reads the whole stream).
    pub ignore: Arc<IgnoreList>,
    /// `CROWDSEC_PULL_RESPONDERS` and the keys of those responders.
    pub responders: ResponderKeys,
}

/// What the puller reads of the rest of the daemon: the blocks in force here (to recognise
/// its own decisions coming back) and the protected addresses.
pub struct Context {
    /// The block manager's published blocks.
    pub blocks: BlockView,
    /// The protected addresses.
    pub protect: ProtectView,
    /// Where to publish the counts.
    pub view: Arc<PullView>,
    /// The config in force, for `CROWDSEC_PULL_RESPONDERS`' context.
    pub config: Arc<crate::config::Config>,
}

/// Starts the thread.
pub fn spawn(
    config: PullConfig,
    context: Context,
    stop: Receiver<()>,
) -> Result<(JoinHandle<()>, Arc<LinkView>), String> {
    let lapi = Lapi::with_tls(&config.lapi_url, &config.tls)?;
    let room = KernelRoom::open(&config.room);
    let responders = PullResponders::new(&config.responders, Arc::clone(&context.config));
    let mut puller = Puller {
        responders,
        lapi,
        health: Health::new(&config.lapi_url, "pull"),
        table: DecisionTable::new(config.max_decisions, room.expires_itself()),
        room,
        config,
        context,
        local: LocalAddrs::new(),
        resync: false,
        kernel_time: Duration::ZERO,
        refused_total: 0,
        over_total: 0,
    };
    let view = puller.health.view();
    std::thread::Builder::new()
        .name("fleet-pull".into())
        .spawn(move || puller.run(&stop))
        .map(|t| (t, view))
        .map_err(|e| format!("cannot start the thread: {e}"))
}

struct Puller {
    responders: Option<PullResponders>,
    config: PullConfig,
    context: Context,
    lapi: Lapi,
    health: Health,
    table: DecisionTable,
    room: KernelRoom,
    local: LocalAddrs,
    /// The kernel refused the last changes: rewrite the room at the next pull.
    resync: bool,
    /// Time the last pull's kernel changes took.
    kernel_time: Duration,
    refused_total: u64,
    over_total: u64,
}

impl Puller {
    fn run(&mut self, stop: &Receiver<()>) {
        let mut startup = true;
        loop {
            let started = Instant::now();
            match self.lapi.stream(
                self.config.bouncer_key.expose(),
                startup,
                &self.config.filter,
            ) {
                Ok(body) => {
                    self.health.ok();
                    self.take(&body, startup, started);
                    startup = false;
                }
                Err(e) => self.health.failed(&e),
            }
            match stop.recv_timeout(self.config.poll_interval) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// One answer of the stream: parsed (borrowing the body: no copy of tens of thousands
    /// of strings), judged, kept, applied, logged and published.
    fn take(&mut self, body: &[u8], startup: bool, started: Instant) {
        let stream = match super::client::parse_stream(body) {
            Ok(s) => s,
            Err(e) => {
                self.health.failed(&e);
                return;
            }
        };
        self.local.refresh_if_stale(Instant::now());
        let protect = self.context.protect.snapshot();
        let filter = &self.config.filter;
        let new = stream.new.iter().filter_map(|d| {
            let target = target_of(d)?;
            if !filter.accepts(&d.origin, &d.scenario) {
                return None;
            }
            match duration::parse(&d.duration) {
                Ok(Remaining::Left(left)) => Some(Incoming {
                    id: d.id,
                    target,
                    left,
                    origin: &d.origin,
                }),
                Ok(Remaining::Over) => None,
                Err(e) => {
                    log::debug!("CrowdSec decision {} skipped: {e}", d.id);
                    None
                }
            }
        });
        let deleted = stream.deleted.iter().map(|d| d.id);
        let (local, ignore, blocks) = (&self.local, &self.config.ignore, &self.context.blocks);
        let judge = |target: &Target, origin: &str| {
            if let Some(why) = crate::block::refusal::refusal(target, local, &protect, ignore) {
                return Verdict::Refuse(why);
            }
            let host = target.prefix_len() == target.max_prefix_len();
            if origin == ORIGIN && host && blocks.is_blocked(target.addr()) {
                return Verdict::Here;
            }
            Verdict::Apply
        };
        let mut pulled = self
            .table
            .pull(startup, new, deleted, judge, SystemTime::now());
        drop(stream);
        if self.resync && !pulled.changes.flush {
            pulled.changes = self.table.rewrite(SystemTime::now());
        }
        self.apply(&mut pulled);
        self.report(&pulled, started);
    }

    /// Applies a pull's changes; when the kernel refuses them (an element expired or
    /// deleted under our feet, a table flushed by hand), rewrites the whole room once.
    fn apply(&mut self, pulled: &mut Pulled) {
        self.kernel_time = Duration::ZERO;
        if pulled.changes.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = match self.room.apply(&pulled.changes) {
            Err(e) if !pulled.changes.flush => {
                log::debug!("CrowdSec changes refused by the kernel ({e}); rewriting the set");
                let full = self.table.rewrite(SystemTime::now());
                self.room.apply(&full)
            }
            other => other,
        };
        self.kernel_time = started.elapsed();
        match result {
            Ok(()) => {
                self.resync = false;
                self.run_responders();
            }
            Err(e) => {
                if !self.resync {
                    log::error!("{}", log_lines::fleet_kernel_failed(e));
                }
                self.resync = true;
            }
        }
    }

    /// `CROWDSEC_PULL_RESPONDERS`: run for what the kernel now holds that they have not
    /// seen, undone for what it no longer holds; one line when they did something.
    fn run_responders(&mut self) {
        let Some(r) = &mut self.responders else {
            return;
        };
        let ran = r.follow(self.table.written(), &NftHandle::closed());
        if ran != Default::default() {
            log::info!(
                "{}",
                log_lines::fleet_responders_ran(ran.applied, ran.undone, ran.failed)
            );
        }
    }

    /// The pull's one line (when it changed something), the debug names of the refused,
    /// the limit's line, and the published counts.
    fn report(&mut self, pulled: &Pulled, started: Instant) {
        for (target, why) in pulled.refused.iter().take(DEBUG_NAMES) {
            log::debug!(
                "{}",
                log_lines::fleet_decision_not_applied(&target_text(target), "pulled", why)
            );
        }
        if pulled.limit_reached {
            log::warn!(
                "{}",
                log_lines::fleet_limit_reached(self.config.max_decisions)
            );
        }
        let counts = self.table.counts();
        if pulled.changed() {
            log::info!(
                "{}",
                log_lines::fleet_pulled(
                    &log_lines::FleetPullCounts {
                        added: pulled.added,
                        removed: pulled.removed,
                        refused: pulled.refused.len(),
                        over_limit: pulled.over_limit,
                        held: self.table.len(),
                    },
                    &counts,
                    started.elapsed(),
                    self.kernel_time
                )
            );
        }
        self.refused_total += pulled.refused.len() as u64;
        self.over_total += pulled.over_limit as u64;
        self.context.view.publish(super::PullSnapshot {
            per_origin: counts,
            held: self.table.len() as u64,
            elements: self.table.elements() as u64,
            refused: self.refused_total,
            over_limit: self.over_total,
            room: self.room.name().to_string(),
        });
    }
}

impl Drop for Puller {
    /// A stopped puller (reload, stop) leaves the kernel as it is: nftables elements expire
    /// on their own; routes are removed (they never would).
    fn drop(&mut self) {
        if let Some(r) = &mut self.responders {
            r.release(&NftHandle::closed());
        }
        self.room.release();
        self.context.view.publish(super::PullSnapshot::default());
    }
}

/// The target of a `ban` decision of scope `Ip` or `Range`; `None` for anything else
/// (captcha, country and AS scopes, unreadable values).
fn target_of(d: &Decision<'_>) -> Option<Target> {
    if !d.kind.eq_ignore_ascii_case("ban") {
        return None;
    }
    let target = parse_target(&d.value).ok()?;
    let host = target.prefix_len() == target.max_prefix_len();
    match d.scope.to_ascii_lowercase().as_str() {
        "ip" if host => Some(target),
        "range" => Some(target),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn decision<'a>(scope: &'a str, value: &'a str) -> Decision<'a> {
        Decision {
            id: 1,
            origin: Cow::Borrowed("cscli"),
            scenario: Cow::Borrowed("manual 'ban' from 'h'"),
            scope: Cow::Borrowed(scope),
            kind: Cow::Borrowed("ban"),
            value: Cow::Borrowed(value),
            duration: Cow::Borrowed("1s"),
        }
    }

    #[test]
    fn only_ban_decisions_for_ips_and_ranges_are_blocks() {
        let t = |d: &Decision<'_>| target_of(d).map(|t| target_text(&t));
        assert_eq!(t(&decision("Ip", "10.0.0.5")).as_deref(), Some("10.0.0.5"));
        assert_eq!(
            t(&decision("Range", "fd77:1::/64")).as_deref(),
            Some("fd77:1::/64")
        );
        assert_eq!(t(&decision("Ip", "10.0.0.0/24")), None);
        assert_eq!(t(&decision("Country", "FR")), None);
        let mut captcha = decision("Ip", "10.0.0.5");
        captcha.kind = Cow::Borrowed("captcha");
        assert_eq!(t(&captcha), None);
        assert_eq!(t(&decision("Ip", "not-an-ip")), None);
    }
}
