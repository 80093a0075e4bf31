//! `CROWDSEC_PULL_RESPONDERS`: the other responders an admin wants run for pulled decisions
//! as well (off by default): `hosts_deny`, `run_cmd`, `route` (the last only with
//! `KILL_NFTABLES`: without it, routes are the fleet's kernel room already).
//!
//! Kept simple, and as costly as it sounds: after each pull, once the kernel holds the
//! changes, the puller runs each named responder for every target newly written to the
//! kernel and undoes what they did for every target gone (a decision deleted or ended), one
//! target at a time, on the puller's own thread: a command is one process per decision and
//! responder, and every hosts.deny undo rewrites the file. 12,000 decisions through
//! `run_cmd` take minutes, during which the next pull waits (the kernel part of each pull is
//! already done by then). When the puller stops (reload, stop), everything it did is undone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::config::Config;
use crate::event::{Candidate, Hit, Mode, ProbeKind};
use crate::respond::hosts_deny::HostsDenyResponder;
use crate::respond::lua::LuaPlugins;
use crate::respond::nftables::NftHandle;
use crate::respond::shell::ShellResponder;
use crate::respond::undo::{UndoOutcome, undo_action};
use crate::respond::{Action, Outcome, Responder, ResponseContext, UnblockReason};

/// What the responders of the puller are made of: compared at reload (a change restarts
/// the puller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponderKeys {
    /// `CROWDSEC_PULL_RESPONDERS`.
    pub names: Vec<String>,
    /// `KILL_HOSTS_DENY` and `HOSTS_DENY_FILE`.
    pub hosts_deny: Option<(String, std::path::PathBuf)>,
    /// `KILL_RUN_CMD`.
    pub run_cmd: Option<String>,
    /// `KILL_ROUTE`, with `KILL_NFTABLES` only.
    pub route: Option<String>,
    /// `KILL_CMD_TIMEOUT`.
    pub timeout: Duration,
}

impl ResponderKeys {
    /// The keys of `config` that the named responders use.
    pub fn from_config(config: &Config) -> ResponderKeys {
        let names = config.fleet.pull_responders.clone();
        let wants = |n: &str| names.iter().any(|x| x == n);
        ResponderKeys {
            hosts_deny: config
                .kill_hosts_deny
                .as_ref()
                .filter(|_| wants("hosts_deny"))
                .map(|t| (t.text.clone(), config.hosts_deny_file.clone())),
            run_cmd: config
                .kill_run_cmd
                .as_ref()
                .filter(|_| wants("run_cmd"))
                .map(|t| t.text.clone()),
            route: config
                .kill_route
                .as_ref()
                .filter(|_| wants("route") && config.kill_nftables)
                .map(|t| t.text.clone()),
            timeout: config.kill_cmd_timeout,
            names,
        }
    }
}

/// The responders of one puller and what they did, per target.
pub struct PullResponders {
    config: std::sync::Arc<Config>,
    chain: Vec<Box<dyn Responder>>,
    done: HashMap<IpNet, Vec<Action>>,
}

/// What one round of runs did, for the pull's log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ran {
    /// Responder runs that applied something.
    pub applied: usize,
    /// Actions undone.
    pub undone: usize,
    /// Runs or undos that failed.
    pub failed: usize,
}

impl PullResponders {
    /// The responders `keys` names (a name whose key is unset, or `route` without
    /// `KILL_NFTABLES`, is left out); `None` when none is left. `config` is what their
    /// context shows (`$MODE$`…).
    pub fn new(keys: &ResponderKeys, config: std::sync::Arc<Config>) -> Option<PullResponders> {
        let mut chain: Vec<Box<dyn Responder>> = Vec::new();
        if let Some((template, file)) = &keys.hosts_deny {
            chain.push(Box::new(HostsDenyResponder::new(template, file.clone())));
        }
        if let Some(t) = &keys.route {
            chain.push(Box::new(ShellResponder::route(t, keys.timeout)));
        }
        if let Some(t) = &keys.run_cmd {
            chain.push(Box::new(ShellResponder::run_cmd(t, keys.timeout)));
        }
        (!chain.is_empty()).then(|| PullResponders {
            config,
            chain,
            done: HashMap::new(),
        })
    }

    /// Runs the responders for the targets the kernel holds now and did not before, and
    /// undoes what they did for the targets it no longer holds. `until` gives a target's
    /// end, for the responders' `$TARGET$` context.
    pub fn follow<'a>(
        &mut self,
        held: impl Iterator<Item = (&'a IpNet, SystemTime)>,
        nft: &NftHandle,
    ) -> Ran {
        let mut ran = Ran::default();
        let mut now_held: HashMap<IpNet, SystemTime> = HashMap::new();
        now_held.extend(held.map(|(n, u)| (*n, u)));
        let gone: Vec<IpNet> = self
            .done
            .keys()
            .filter(|t| !now_held.contains_key(t))
            .copied()
            .collect();
        for target in gone {
            self.undo(target, nft, &mut ran);
        }
        for (target, until) in now_held {
            if self.done.contains_key(&target) {
                continue;
            }
            let alert = stand_in(target.addr());
            let ctx = ResponseContext {
                target,
                until: Some(until),
                ..ResponseContext::for_alert(&alert, "", &self.config)
            };
            let mut actions = Vec::new();
            for r in &mut self.chain {
                match r.respond(&ctx) {
                    Outcome::Done(a) => {
                        ran.applied += 1;
                        actions.push(a);
                    }
                    Outcome::Failed(why) => {
                        ran.failed += 1;
                        log::debug!("CrowdSec decision for {target}: {}: {why}", r.name());
                    }
                    Outcome::Skipped(_) | Outcome::Veto(_) => {}
                }
            }
            self.done.insert(target, actions);
        }
        ran
    }

    /// Undoes everything (the puller stops).
    pub fn release(&mut self, nft: &NftHandle) -> Ran {
        let mut ran = Ran::default();
        let all: Vec<IpNet> = self.done.keys().copied().collect();
        for target in all {
            self.undo(target, nft, &mut ran);
        }
        ran
    }

    fn undo(&mut self, target: IpNet, nft: &NftHandle, ran: &mut Ran) {
        let Some(actions) = self.done.remove(&target) else {
            return;
        };
        let alert = stand_in(target.addr());
        let ctx = ResponseContext {
            target,
            ..ResponseContext::for_alert(&alert, "", &self.config)
        };
        let lua = LuaPlugins::none();
        for a in &actions {
            match undo_action(
                a,
                &ctx,
                UnblockReason::Expired,
                &lua,
                nft,
                self.config.kill_cmd_timeout,
            ) {
                UndoOutcome::Done(_) => ran.undone += 1,
                other => {
                    ran.failed += 1;
                    log::debug!("CrowdSec decision for {target}: undo: {other:?}");
                }
            }
        }
    }
}

/// The alert a responder sees for a pulled decision: the target's address, port 0.
fn stand_in(addr: IpAddr) -> Candidate {
    Candidate {
        hit: Hit::now(addr, 0, Mode::Tcp, ProbeKind::Connect),
        count: 0,
        already_blocked: false,
        actionable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_deny_lines_follow_the_held_targets_and_go_at_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::build::defaults(std::path::Path::new("p.conf"));
        config.hosts_deny_file = dir.path().join("hosts.deny");
        config.kill_hosts_deny = Some(crate::config::Template {
            text: "ALL: $TARGET$ : DENY".into(),
            line: 1,
        });
        config.fleet.pull_responders = vec!["route".into()];
        let keys = ResponderKeys::from_config(&config);
        let config = std::sync::Arc::new(config);
        assert!(PullResponders::new(&keys, std::sync::Arc::clone(&config)).is_none());
        let mut with = (*config).clone();
        with.fleet.pull_responders = vec!["hosts_deny".into()];
        let keys = ResponderKeys::from_config(&with);
        let mut r = PullResponders::new(&keys, config).unwrap();
        let nft = NftHandle::closed();
        let until = SystemTime::now() + Duration::from_secs(60);
        let (a, b): (IpNet, IpNet) = (
            "10.77.0.1/32".parse().unwrap(),
            "10.77.2.0/24".parse().unwrap(),
        );
        let ran = r.follow([(&a, until), (&b, until)].into_iter(), &nft);
        assert_eq!((ran.applied, ran.failed), (2, 0));
        let text = std::fs::read_to_string(dir.path().join("hosts.deny")).unwrap();
        assert!(
            text.contains("ALL: 10.77.0.1 : DENY")
                && text.contains("ALL: 10.77.2.0/255.255.255.0 : DENY"),
            "{text}"
        );
        // Nothing new: nothing run.
        assert_eq!(
            r.follow([(&a, until), (&b, until)].into_iter(), &nft),
            Ran::default()
        );
        let ran = r.follow([(&b, until)].into_iter(), &nft);
        assert_eq!(ran.undone, 1);
        let text = std::fs::read_to_string(dir.path().join("hosts.deny")).unwrap();
        assert!(
            !text.contains("10.77.0.1") && text.contains("10.77.2.0/255.255.255.0"),
            "{text}"
        );
        assert_eq!(r.release(&nft).undone, 1);
        let text = std::fs::read_to_string(dir.path().join("hosts.deny")).unwrap();
        assert!(!text.contains("10.77."), "{text}");
    }
}
