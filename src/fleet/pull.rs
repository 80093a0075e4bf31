//! The puller thread: follows the LAPI's decision stream (`startup=true` once, then every
//! `CROWDSEC_POLL_INTERVAL`) and hands `ban` decisions for `Ip` and `Range` scopes to the
//! block manager as blocks of origin `fleet`, lasting the decision's remaining time.
//!
//! The manager decides like for a block by hand: protected, ignored and local addresses are
//! refused (said once per address here), and a target already blocked here is left alone —
//! which is how this host's own decisions, coming back through the stream, are not applied
//! twice, while a decision another portsentry host made for an address not blocked here is.
//! A decision deleted or expired lifts the fleet block of its value once no other active
//! decision names that value; lifting is idempotent and never touches a block of another
//! origin.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, select, unbounded};

use super::client::{Decision, Lapi, Stream};
use super::duration::{self, Remaining};
use super::{Health, LinkView, Secret};
use crate::block::manager::{BlockOutcome, FleetInput};
use crate::block::{Target, parse_target, target_text};
use crate::log_lines;

/// Addresses remembered as "refusal already said" at most (then forgotten all at once).
const WARNED_MEMORY: usize = 10_000;

/// What the puller needs; compared at reload to decide whether to restart it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullConfig {
    /// LAPI base URL.
    pub lapi_url: String,
    /// The bouncer key (from `CROWDSEC_BOUNCER_KEY_FILE`).
    pub bouncer_key: Secret,
    /// Time between two pulls.
    pub poll_interval: Duration,
}

/// Starts the thread.
pub fn spawn(
    config: PullConfig,
    blocks: FleetInput,
    stop: Receiver<()>,
) -> Result<(JoinHandle<()>, Arc<LinkView>), String> {
    let (outcomes_tx, outcomes) = unbounded();
    let mut puller = Puller {
        lapi: Lapi::new(&config.lapi_url),
        health: Health::new(&config.lapi_url, "pull"),
        config,
        blocks,
        active: HashMap::new(),
        warned: HashSet::new(),
        outcomes_tx,
    };
    let view = puller.health.view();
    std::thread::Builder::new()
        .name("fleet-pull".into())
        .spawn(move || puller.run(&outcomes, &stop))
        .map(|t| (t, view))
        .map_err(|e| format!("cannot start the thread: {e}"))
}

struct Puller {
    config: PullConfig,
    lapi: Lapi,
    health: Health,
    blocks: FleetInput,
    /// Active decision ids by the target they name.
    active: HashMap<Target, BTreeSet<i64>>,
    /// Targets whose refusal was logged.
    warned: HashSet<Target>,
    outcomes_tx: Sender<(Target, String, BlockOutcome)>,
}

impl Puller {
    fn run(&mut self, outcomes: &Receiver<(Target, String, BlockOutcome)>, stop: &Receiver<()>) {
        let mut startup = true;
        loop {
            match self.lapi.stream(self.config.bouncer_key.expose(), startup) {
                Ok(stream) => {
                    self.health.ok();
                    if startup {
                        self.active.clear();
                    }
                    startup = false;
                    self.apply(stream);
                }
                Err(e) => self.health.failed(&e),
            }
            let deadline = crossbeam_channel::after(self.config.poll_interval);
            loop {
                select! {
                    recv(stop) -> _ => return,
                    recv(outcomes) -> o => if let Ok((target, source, outcome)) = o {
                        self.report(target, &source, &outcome);
                    },
                    recv(deadline) -> _ => break,
                }
            }
        }
    }

    /// New decisions first (at startup they fill the set of active ones), then deletions.
    fn apply(&mut self, stream: Stream) {
        for d in &stream.new {
            let Some(target) = target_of(d) else {
                continue;
            };
            match duration::parse(&d.duration) {
                Ok(Remaining::Left(left)) => {
                    self.active.entry(target).or_default().insert(d.id);
                    let source = source_of(d);
                    let tx = self.outcomes_tx.clone();
                    let said = source.clone();
                    self.blocks
                        .fleet_block(target, left, source, move |outcome| {
                            let _ = tx.send((target, said, outcome));
                        });
                }
                Ok(Remaining::Over) => {}
                Err(e) => log::debug!("CrowdSec decision {} skipped: {e}", d.id),
            }
        }
        for d in &stream.deleted {
            let Some(target) = target_of(d) else {
                continue;
            };
            let still = self.active.get_mut(&target).is_some_and(|ids| {
                ids.remove(&d.id);
                !ids.is_empty()
            });
            if !still {
                self.active.remove(&target);
                self.blocks.fleet_unblock(target);
            }
        }
    }

    /// Says once per address why a decision was not applied (protected, ignored, local,
    /// `MAX_ACTIVE_BLOCKS`); "already blocked here" is the normal case of our own decisions
    /// and says nothing.
    fn report(&mut self, target: Target, source: &str, outcome: &BlockOutcome) {
        if outcome.ok || !outcome.detail.starts_with("refused") {
            return;
        }
        if self.warned.len() >= WARNED_MEMORY {
            self.warned.clear();
        }
        if self.warned.insert(target) {
            log::warn!(
                "{}",
                log_lines::fleet_decision_not_applied(
                    &target_text(&target),
                    &crate::record::excerpt(source),
                    &outcome.detail
                )
            );
        }
    }
}

/// The target of a `ban` decision of scope `Ip` or `Range`; `None` for anything else
/// (captcha, country and AS scopes, unreadable values).
fn target_of(d: &Decision) -> Option<Target> {
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

/// What `list` keeps of a decision: its origin (one word) and scenario.
fn source_of(d: &Decision) -> String {
    let origin: String = d
        .origin
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(40)
        .collect();
    let origin = if origin.is_empty() {
        "unknown".to_string()
    } else {
        origin
    };
    format!("{origin} {}", crate::record::excerpt(&d.scenario))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: i64, scope: &str, value: &str, duration: &str) -> Decision {
        Decision {
            id,
            origin: "cscli".into(),
            scenario: "manual 'ban' from 'h'".into(),
            scope: scope.into(),
            kind: "ban".into(),
            value: value.into(),
            duration: duration.into(),
        }
    }

    #[test]
    fn only_ban_decisions_for_ips_and_ranges_are_blocks() {
        let t = |d: &Decision| target_of(d).map(|t| target_text(&t));
        assert_eq!(
            t(&decision(1, "Ip", "10.0.0.5", "1s")).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            t(&decision(1, "Range", "fd77:1::/64", "1s")).as_deref(),
            Some("fd77:1::/64")
        );
        assert_eq!(t(&decision(1, "Ip", "10.0.0.0/24", "1s")), None);
        assert_eq!(t(&decision(1, "Country", "FR", "1s")), None);
        let mut captcha = decision(1, "Ip", "10.0.0.5", "1s");
        captcha.kind = "captcha".into();
        assert_eq!(t(&captcha), None);
        assert_eq!(t(&decision(1, "Ip", "not-an-ip", "1s")), None);
    }

    #[test]
    fn the_source_keeps_one_word_of_origin_and_the_scenario() {
        let mut d = decision(1, "Ip", "10.0.0.5", "1s");
        assert_eq!(source_of(&d), "cscli manual 'ban' from 'h'");
        d.origin = "evil origin\n".into();
        assert!(source_of(&d).starts_with("evilorigin "));
        d.origin.clear();
        assert!(source_of(&d).starts_with("unknown "));
    }
}
