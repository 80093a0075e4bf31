//! The core on a fake clock: every decision checked from what it returns, with no thread,
//! no file and no responder (the test plays the pool: it answers each job).

use std::sync::Mutex;

use super::*;
use crate::config::ignore::IgnoreList;

/// A guard that protects the addresses it is given.
struct Protects(Vec<IpAddr>);

impl Guard for Protects {
    fn refusal(&self, target: &Target, ignore: &IgnoreList) -> Option<String> {
        self.0
            .iter()
            .find(|ip| target.contains(*ip))
            .map(|ip| format!("refused: {ip} is protected (gateway)"))
            .or_else(|| {
                let none = crate::local_addrs::LocalAddrs::from_addrs([], Instant::now());
                crate::block::refusal::refusal(target, &none, &Default::default(), ignore)
            })
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> Target {
    crate::record::parse_target(s).unwrap()
}

fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = crate::config::build::defaults(std::path::Path::new("/nonexistent/p.conf"));
    c.block_timeout = Some(Duration::from_secs(600));
    c.block_timeout_jitter = Duration::ZERO;
    edit(&mut c);
    c
}

/// A core, the clock at its start, and every output seen so far.
struct Rig {
    core: BlockCore,
    now: Now,
    /// Jobs handed out and not answered yet.
    work: Vec<Work>,
    entries: Vec<Entry>,
    lines: Vec<String>,
    view: Vec<ViewChange>,
}

impl Rig {
    fn new(c: Config) -> Rig {
        Rig::with(c, IgnoreList::default(), Vec::new())
    }

    fn with(c: Config, ignore: IgnoreList, protected: Vec<IpAddr>) -> Rig {
        let now = Now::read();
        let core = BlockCore::new(CoreSetup {
            generation: Generation::from_parts(1, c, ignore),
            guard: Box::new(Protects(protected)),
            counters: Arc::default(),
            offences: HashMap::new(),
            workers: 8,
            max_waiting: 4096,
            events: false,
            now,
        });
        Rig {
            core,
            now,
            work: Vec::new(),
            entries: Vec::new(),
            lines: Vec::new(),
            view: Vec::new(),
        }
    }

    fn absorb(&mut self, out: Output) {
        self.work.extend(out.work);
        self.entries.extend(out.entries);
        self.view.extend(out.view);
        for e in out.effects {
            match e {
                Effect::Info(l) | Effect::Warn(l) | Effect::Debug(l) | Effect::History(l) => {
                    self.lines.push(l)
                }
                Effect::Reply(r) => r(),
                Effect::Event(_) | Effect::Note(_) => {}
            }
        }
    }

    fn send(&mut self, input: Input) {
        let out = self.core.handle(input, self.now);
        self.absorb(out);
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.after(d);
        self.send(Input::Tick);
    }

    /// A probe from `src` on `port`; `proven`: a completed handshake.
    fn probe(&mut self, src: &str, port: u16, proven: bool) {
        let kind = if proven {
            ProbeKind::Connect
        } else {
            ProbeKind::Syn
        };
        let mode = if proven { Mode::Tcp } else { Mode::Atcp };
        let req = BlockRequest {
            alert: Candidate {
                hit: Hit::now(ip(src), port, mode, kind),
                count: 1,
                already_blocked: false,
                actionable: true,
            },
            resolved: src.to_string(),
        };
        self.send(Input::Request(req));
    }

    /// Plays the pool: every job handed out succeeds, until none is left.
    fn settle(&mut self) {
        self.settle_with(|_| "route");
    }

    /// [`Rig::settle`], the apply of each target acting through the responder `by` names.
    fn settle_with(&mut self, by: impl Fn(&Target) -> &'static str) {
        while !self.work.is_empty() {
            for w in std::mem::take(&mut self.work) {
                let result = w.succeeded(
                    |target| Action {
                        responder: by(target).into(),
                        detail: format!("ip route add blackhole {}", target_text(target)),
                        undo: crate::record::Undo::Command {
                            command: "true".into(),
                        },
                    },
                    vec![("route".into(), UndoOutcome::Done("ok".into()))],
                );
                self.send(Input::Result(result));
            }
        }
    }

    fn blocked(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .core
            .active()
            .iter()
            .map(|r| target_text(&r.target))
            .collect();
        v.sort();
        v
    }

    fn said(&self, needle: &str) -> usize {
        self.lines.iter().filter(|l| l.contains(needle)).count()
    }
}

#[test]
fn a_scan_block_is_applied_then_journaled_logged_and_shown() {
    let mut r = Rig::new(config(|_| {}));
    r.probe("192.0.2.7", 23, true);
    assert!(
        matches!(&r.work[..], [Work::Apply(b)] if b.target == net("192.0.2.7")),
        "one job for the host"
    );
    assert!(
        r.entries.is_empty(),
        "nothing journaled before it is in force"
    );
    r.settle();
    assert_eq!(r.blocked(), ["192.0.2.7"]);
    assert!(matches!(&r.entries[..], [Entry::Block(b)] if b.target == net("192.0.2.7")));
    assert_eq!(r.view, [ViewChange::Insert(net("192.0.2.7"))]);
    assert_eq!(r.said("192.0.2.7 is blocked for 10m"), 1, "{:?}", r.lines);
    // A second probe of the same host adds nothing.
    r.probe("192.0.2.7", 24, true);
    assert!(r.work.is_empty());
    assert_eq!(r.said("already blocked"), 1);
}

#[test]
fn the_global_rate_limit_holds_back_the_third_block_until_a_token_returns() {
    let mut r = Rig::new(config(|c| {
        c.block_rate_limit = 2;
        c.block_rate_limit_per_prefix = 0;
    }));
    for h in ["192.0.2.1", "198.51.100.1", "203.0.113.1"] {
        r.probe(h, 23, true);
    }
    r.settle();
    assert_eq!(r.blocked(), ["192.0.2.1", "198.51.100.1"]);
    // Two a minute: the next token comes after 30 s, not before.
    r.advance(Duration::from_secs(20));
    r.settle();
    assert_eq!(r.blocked().len(), 2);
    r.advance(Duration::from_secs(11));
    r.settle();
    assert_eq!(r.blocked().len(), 3, "served once the token is back");
    r.advance(Duration::from_secs(10));
    assert_eq!(
        r.said("BLOCK_RATE_LIMIT (2 a minute) reached"),
        1,
        "{:?}",
        r.lines
    );
}

#[test]
fn held_back_sources_are_served_proven_first_then_by_ports() {
    let mut r = Rig::new(config(|c| {
        c.block_rate_limit = 1;
        c.block_rate_limit_per_prefix = 0;
    }));
    r.probe("192.0.2.1", 1, true); // takes the only token
    r.probe("198.51.100.1", 1, false); // forged, one port
    r.probe("198.51.100.2", 1, false); // forged, three ports
    r.probe("198.51.100.2", 2, false);
    r.probe("198.51.100.2", 3, false);
    r.probe("203.0.113.1", 1, true); // proven, one port: first in line
    r.settle();
    r.advance(Duration::from_secs(61));
    r.settle();
    assert_eq!(r.blocked(), ["192.0.2.1", "203.0.113.1"]);
    r.advance(Duration::from_secs(61));
    r.settle();
    assert!(r.blocked().contains(&"198.51.100.2".to_string()));
    assert!(!r.blocked().contains(&"198.51.100.1".to_string()));
}

#[test]
fn one_prefix_spends_its_own_budget_and_leaves_the_global_one_to_the_next_attacker() {
    let mut r = Rig::new(config(|c| {
        c.block_rate_limit = 20;
        c.block_rate_limit_per_prefix = 3;
        c.escalate_after_v4 = 0;
    }));
    for h in 1..=10 {
        r.probe(&format!("198.51.100.{h}"), h, true);
    }
    r.settle();
    assert_eq!(r.blocked().len(), 3, "{:?}", r.blocked());
    // Another /24 is blocked at once: its budget is its own and the global one is not spent.
    r.probe("203.0.113.9", 23, true);
    r.settle();
    assert_eq!(r.blocked().len(), 4);
    assert!(r.blocked().contains(&"203.0.113.9".to_string()));
    // The held-back hosts of the first /24 come as its budget refills (3 a minute).
    r.advance(Duration::from_secs(21));
    r.settle();
    assert_eq!(r.blocked().len(), 5);
}

#[test]
fn three_hosts_of_a_v6_prefix_escalate_to_one_prefix_block_and_fold_into_it() {
    let mut r = Rig::new(config(|_| {}));
    for (h, port) in [("2001:db8:1:2::a", 1), ("2001:db8:1:2::b", 2)] {
        r.probe(h, port, true);
        r.settle();
    }
    assert_eq!(r.blocked().len(), 2, "below ESCALATE_AFTER_V6: host blocks");
    r.probe("2001:db8:1:2:ffff::c", 3, true);
    r.settle();
    assert_eq!(
        r.blocked(),
        ["2001:db8:1:2::/64"],
        "one record for the prefix"
    );
    let record = r.core.active().pop().unwrap();
    assert_eq!(
        record.members,
        [
            ip("2001:db8:1:2::a"),
            ip("2001:db8:1:2::b"),
            ip("2001:db8:1:2:ffff::c")
        ]
    );
    assert_eq!(record.origin, Origin::Scan);
    assert_eq!(
        r.said("Prefix 2001:db8:1:2::/64 is blocked: 3 of its hosts"),
        1,
        "{:?}",
        r.lines
    );
    let folded = r
        .entries
        .iter()
        .filter(|e| {
            matches!(
                e,
                Entry::Unblock {
                    why: UnblockReason::Escalated,
                    ..
                }
            )
        })
        .count();
    assert_eq!(folded, 3, "the host blocks were folded");
    // The next address of the prefix is covered: no new block, no job.
    r.probe("2001:db8:1:2::99", 4, true);
    assert!(r.work.is_empty());
    assert_eq!(r.said("2001:db8:1:2::99 is already blocked"), 1);
    // Another /64 of the same /48 is its own prefix.
    r.probe("2001:db8:1:3::1", 5, true);
    r.settle();
    assert!(r.blocked().contains(&"2001:db8:1:3::1".to_string()));
}

#[test]
fn a_prefix_lasts_as_long_as_its_longest_member_would_have() {
    let mut r = Rig::new(config(|c| c.escalate_after_v4 = 2));
    r.probe("198.51.100.1", 1, true);
    r.settle();
    r.advance(Duration::from_secs(300));
    r.probe("198.51.100.2", 2, true);
    r.settle();
    let record = r.core.active().pop().unwrap();
    assert_eq!(record.target, net("198.51.100.0/24"));
    let left = record.remaining(r.now.wall).unwrap();
    assert!(
        left >= Duration::from_secs(599) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    // Expiry lifts it like any block.
    r.advance(Duration::from_secs(601));
    r.settle();
    assert!(r.blocked().is_empty());
    assert_eq!(
        r.said("198.51.100.0/24 has been unblocked (block expired"),
        1
    );
}

#[test]
fn a_returning_prefix_is_blocked_longer_like_any_repeat_offender() {
    let mut r = Rig::new(config(|c| {
        c.escalate_after_v4 = 2;
        c.block_timeout_factor = 3.0;
    }));
    for round in 0..2u64 {
        r.probe("198.51.100.1", 1, true);
        r.settle();
        r.probe("198.51.100.2", 2, true);
        r.settle();
        let record = r.core.active().pop().unwrap();
        assert_eq!(record.target, net("198.51.100.0/24"));
        assert_eq!(record.offences, u32::try_from(round).unwrap() + 1);
        let expected = if round == 0 { 600 } else { 1800 };
        assert_eq!(record.duration(), Some(Duration::from_secs(expected)));
        r.advance(Duration::from_secs(expected + 1));
        r.settle();
        assert!(r.blocked().is_empty());
    }
}

#[test]
fn a_prefix_holding_a_protected_or_ignored_address_stays_host_blocks() {
    let ignore = IgnoreList::parse(std::path::Path::new("ignore"), "203.0.113.77\n").unwrap();
    let mut r = Rig::with(
        config(|c| c.escalate_after_v4 = 2),
        ignore,
        vec![ip("198.51.100.254")],
    );
    for h in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        r.probe(h, 1, true);
        r.settle();
    }
    for h in ["203.0.113.1", "203.0.113.2"] {
        r.probe(h, 1, true);
        r.settle();
    }
    // Positive control: a prefix with nothing to protect is escalated.
    for h in ["192.0.2.1", "192.0.2.2"] {
        r.probe(h, 1, true);
        r.settle();
    }
    let blocked = r.blocked();
    assert!(blocked.contains(&"192.0.2.0/24".to_string()), "{blocked:?}");
    assert!(!blocked.iter().any(|b| b.starts_with("198.51.100.0/")));
    assert!(!blocked.iter().any(|b| b.starts_with("203.0.113.0/")));
    assert_eq!(blocked.len(), 1 + 3 + 2, "{blocked:?}");
    let gateway = "Prefix 198.51.100.0/24 not escalated, its hosts stay host blocks: \
                   198.51.100.254 is protected (gateway)";
    assert_eq!(r.said(gateway), 1, "said once: {:?}", r.lines);
    assert_eq!(
        r.said("Prefix 203.0.113.0/24 not escalated, its hosts stay host blocks: in the ignore list (203.0.113.77)"),
        1,
        "{:?}",
        r.lines
    );
}

#[test]
fn forgeable_evidence_escalates_only_when_asked() {
    for (forgeable, escalated) in [(false, false), (true, true)] {
        let mut r = Rig::new(config(|c| {
            c.escalate_after_v6 = 2;
            c.escalate_forgeable = forgeable;
        }));
        r.probe("2001:db8:9::1", 1, false);
        r.settle();
        r.probe("2001:db8:9::2", 2, false);
        r.settle();
        assert_eq!(
            r.blocked() == ["2001:db8:9::/64"],
            escalated,
            "ESCALATE_FORGEABLE={forgeable}: {:?}",
            r.blocked()
        );
    }
}

#[test]
fn hosts_blocked_longer_ago_than_the_window_do_not_escalate() {
    let mut r = Rig::new(config(|c| {
        c.escalate_after_v4 = 2;
        c.scan_trigger_window = Duration::from_secs(60);
        c.block_timeout = Some(Duration::from_secs(3600));
    }));
    r.probe("198.51.100.1", 1, true);
    r.settle();
    r.advance(Duration::from_secs(61));
    r.probe("198.51.100.2", 2, true);
    r.settle();
    assert_eq!(r.blocked().len(), 2, "{:?}", r.blocked());
    // Positive control: a third within the window of the second escalates.
    r.probe("198.51.100.3", 3, true);
    r.settle();
    assert!(r.blocked().contains(&"198.51.100.0/24".to_string()));
}

#[test]
fn unblock_of_a_host_inside_a_prefix_names_it_and_covering_lifts_it() {
    let mut r = Rig::new(config(|c| c.escalate_after_v4 = 2));
    for h in ["198.51.100.1", "198.51.100.2"] {
        r.probe(h, 1, true);
        r.settle();
    }
    let answer = Arc::new(Mutex::new(None));
    let a = Arc::clone(&answer);
    r.send(Input::Unblock {
        target: net("198.51.100.1"),
        covering: false,
        reply: Box::new(move |res| *a.lock().unwrap() = Some(res)),
    });
    let said = answer.lock().unwrap().take().unwrap().unwrap_err();
    assert!(
        said.contains("covered by the block of 198.51.100.0/24"),
        "{said}"
    );
    assert_eq!(r.blocked(), ["198.51.100.0/24"], "nothing lifted");
    let a = Arc::clone(&answer);
    r.send(Input::Unblock {
        target: net("198.51.100.1"),
        covering: true,
        reply: Box::new(move |res| *a.lock().unwrap() = Some(res)),
    });
    r.settle();
    assert!(answer.lock().unwrap().take().unwrap().is_ok());
    assert!(r.blocked().is_empty());
}

#[test]
fn a_host_blocked_by_hand_inside_a_blocked_network_is_its_own_block_and_outlives_it() {
    let mut r = Rig::new(config(|_| {}));
    r.probe("192.0.2.7", 1, true);
    r.settle();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let o = Arc::clone(&outcomes);
    r.send(Input::Block {
        targets: vec![net("192.0.2.0/24"), net("192.0.2.9")],
        duration: Some(Duration::from_secs(60)),
        reason: "by hand".into(),
        reply: Box::new(move |v| o.lock().unwrap().extend(v)),
    });
    r.settle();
    assert!(
        outcomes.lock().unwrap().iter().all(|o| o.ok),
        "{outcomes:?}"
    );
    // The scan block inside the manual network stays: it is not an escalated prefix.
    assert_eq!(r.blocked(), ["192.0.2.0/24", "192.0.2.7", "192.0.2.9"]);
    let a = Arc::new(Mutex::new(None));
    let a2 = Arc::clone(&a);
    r.send(Input::Unblock {
        target: net("192.0.2.0/24"),
        covering: false,
        reply: Box::new(move |res| *a2.lock().unwrap() = Some(res)),
    });
    r.settle();
    assert!(a.lock().unwrap().take().unwrap().is_ok());
    assert_eq!(r.blocked(), ["192.0.2.7", "192.0.2.9"]);
}

#[test]
fn max_active_blocks_holds_back_scans_and_refuses_manual_blocks() {
    let mut r = Rig::new(config(|c| {
        c.max_active_blocks = 2;
        c.escalate_after_v4 = 0;
    }));
    for h in ["192.0.2.1", "198.51.100.1", "203.0.113.1"] {
        r.probe(h, 1, true);
    }
    r.settle();
    assert_eq!(r.blocked().len(), 2);
    // A slot frees: the held-back one goes in.
    r.advance(Duration::from_secs(601));
    r.settle();
    r.advance(Duration::from_secs(1));
    r.settle();
    assert!(
        r.blocked().contains(&"203.0.113.1".to_string()),
        "{:?}",
        r.blocked()
    );
}

#[test]
fn restore_shows_blocks_at_once_reapplies_them_and_undoes_the_expired() {
    let mut r = Rig::new(config(|_| {}));
    let now = r.now.wall;
    let record = |t: &str, until: SystemTime| BlockRecord {
        target: net(t),
        since: now - Duration::from_secs(100),
        until: Some(until),
        offences: 1,
        origin: Origin::Scan,
        trigger: None,
        reason: String::new(),
        actions: Vec::new(),
        members: if t.contains('/') {
            vec![ip("2001:db8:5::1"), ip("2001:db8:5::2")]
        } else {
            Vec::new()
        },
    };
    let active: HashMap<Target, BlockRecord> = [
        record("192.0.2.1", now + Duration::from_secs(60)),
        record("2001:db8:5::/64", now + Duration::from_secs(60)),
        record("192.0.2.2", now - Duration::from_secs(1)),
    ]
    .into_iter()
    .map(|r| (r.target, r))
    .collect();
    let out = r.core.restore(active, r.now);
    assert_eq!(out.preload.len(), 1, "hosts go to the kernel in one batch");
    r.absorb(out);
    assert!(r.view.contains(&ViewChange::Insert(net("192.0.2.1"))));
    assert!(r.view.contains(&ViewChange::Insert(net("2001:db8:5::/64"))));
    let applies = r
        .work
        .iter()
        .filter(|w| matches!(w, Work::Apply(b) if b.restored))
        .count();
    let undoes = r.work.iter().filter(|w| matches!(w, Work::Undo(_))).count();
    assert_eq!((applies, undoes), (2, 1));
    r.settle();
    assert_eq!(r.blocked(), ["192.0.2.1", "2001:db8:5::/64"]);
    let prefix = r
        .core
        .active()
        .into_iter()
        .find(|b| b.target == net("2001:db8:5::/64"));
    assert_eq!(
        prefix.unwrap().members.len(),
        2,
        "members kept across a restart"
    );
    // A host of the restored prefix is covered.
    r.probe("2001:db8:5::77", 1, true);
    assert!(r.work.is_empty());
    r.advance(Duration::from_secs(61));
    r.settle();
    assert!(r.blocked().is_empty());
}

#[test]
fn a_stop_keeps_scan_blocks_in_hand_and_leaves_restores_to_the_next_start() {
    let mut r = Rig::new(config(|_| {}));
    r.probe("192.0.2.1", 1, true);
    r.send(Input::Stop);
    assert!(!r.core.stopped(), "the block in hand finishes first");
    r.settle();
    assert!(r.core.stopped());
    assert_eq!(r.blocked(), ["192.0.2.1"]);
}

#[test]
fn restore_slots_hand_out_that_many_restored_reapplies_beside_the_workers() {
    let mut r = Rig::new(config(|_| {}));
    r.core = std::mem::replace(
        &mut r.core,
        BlockCore::new(CoreSetup {
            generation: Generation::from_parts(1, config(|_| {}), IgnoreList::default()),
            guard: Box::new(Protects(Vec::new())),
            counters: Arc::default(),
            offences: HashMap::new(),
            workers: 8,
            max_waiting: 4096,
            events: false,
            now: r.now,
        }),
    )
    .with_restore_slots(16);
    let now = r.now.wall;
    let active: HashMap<Target, BlockRecord> = (0..40u8)
        .map(|i| BlockRecord {
            target: net(&format!("192.0.2.{i}")),
            since: now - Duration::from_secs(100),
            until: Some(now + Duration::from_secs(60)),
            offences: 1,
            origin: Origin::Manual,
            trigger: None,
            reason: String::new(),
            actions: Vec::new(),
            members: Vec::new(),
        })
        .map(|b| (b.target, b))
        .collect();
    let out = r.core.restore(active, r.now);
    r.absorb(out);
    assert_eq!(r.work.len(), 16 + 8, "the slots and the workers");
    r.send(Input::Stop);
    assert!(!r.core.stopped(), "the re-applies in hand finish first");
    r.settle();
    assert!(r.core.stopped());
    assert_eq!(
        r.blocked().len(),
        40,
        "every journaled block stays; those not re-applied are left to the next start"
    );
}

#[test]
fn a_flood_of_forged_multi_port_sources_stays_bounded_and_a_real_scanner_goes_first() {
    let mut r = Rig::new(config(|c| {
        c.block_rate_limit = 60;
        c.escalate_after_v4 = 0;
    }));
    // 60,000 forged sources, each in a /24 of its own, each with enough ports to act on.
    for i in 0..60_000u32 {
        let [_, b, c, d] = (0x0a00_0000 + i * 256).to_be_bytes();
        r.probe(&format!("10.{b}.{c}.{d}"), 1, false);
        if i % 1000 == 0 {
            r.settle();
        }
    }
    r.settle();
    assert_eq!(r.blocked().len(), 60, "the budget holds");
    assert!(r.core.deferred.len() <= DEFERRED_CAP);
    assert!(r.core.prefix_rates.len() <= PREFIX_MEMORY);
    // A proven scanner joins the line and is served first when the next token comes.
    r.probe("192.0.2.200", 23, true);
    r.advance(Duration::from_secs(1));
    r.settle();
    assert!(r.blocked().contains(&"192.0.2.200".to_string()));
    assert_eq!(r.blocked().len(), 61);
}

/// An operator's `block` of `target` for `secs`, answered.
fn block_for(r: &mut Rig, target: &str, secs: u64) -> BlockOutcome {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let o = Arc::clone(&outcomes);
    r.send(Input::Block {
        targets: vec![net(target)],
        duration: Some(Duration::from_secs(secs)),
        reason: "by hand".into(),
        reply: Box::new(move |v| o.lock().unwrap().extend(v)),
    });
    r.settle();
    let got = outcomes.lock().unwrap().pop();
    got.expect("answered")
}

#[test]
fn block_of_a_blocked_address_extends_it_when_the_new_end_is_later_and_refuses_otherwise() {
    let mut r = Rig::new(config(|_| {}));
    r.probe("192.0.2.7", 23, true);
    r.settle();
    let first = r.core.active().pop().unwrap().until.unwrap();
    let shorter = block_for(&mut r, "192.0.2.7", 60);
    assert!(!shorter.ok, "{shorter:?}");
    assert!(
        shorter.detail.contains("which is later than asked"),
        "{shorter:?}"
    );
    assert_eq!(r.core.active().pop().unwrap().until, Some(first));
    let longer = block_for(&mut r, "192.0.2.7", 7200);
    assert!(
        longer.ok && longer.detail.starts_with("extended until "),
        "{longer:?}"
    );
    let record = r.core.active().pop().unwrap();
    // Kept to the millisecond, as the journal writes it.
    let asked = r.now.wall + Duration::from_secs(7200);
    let lag = asked.duration_since(record.until.unwrap()).unwrap();
    assert!(lag < Duration::from_millis(1), "{lag:?}");
    assert!(
        matches!(r.entries.last(), Some(Entry::Block(b)) if b.until == record.until),
        "the new end is journaled"
    );
    // The old end passes: still blocked; the new one lifts it.
    r.advance(Duration::from_secs(601));
    r.settle();
    assert_eq!(r.blocked(), ["192.0.2.7"]);
    r.advance(Duration::from_secs(7200));
    r.settle();
    assert!(r.blocked().is_empty());
}

#[test]
fn a_prefix_block_weaker_than_its_hosts_blocks_takes_none_of_them_over() {
    let mut r = Rig::new(config(|c| c.escalate_after_v4 = 2));
    // The prefix's route could not be added: only hosts.deny acted for it.
    let weaker = |t: &Target| if is_network(t) { "hosts_deny" } else { "route" };
    for h in ["198.51.100.1", "198.51.100.2"] {
        r.probe(h, 1, true);
        r.settle_with(weaker);
    }
    assert_eq!(
        r.blocked(),
        ["198.51.100.0/24", "198.51.100.1", "198.51.100.2"],
        "the host routes stay"
    );
    // Positive control: a prefix block that routes too takes its hosts over.
    for h in ["203.0.113.1", "203.0.113.2"] {
        r.probe(h, 1, true);
        r.settle();
    }
    assert!(r.blocked().contains(&"203.0.113.0/24".to_string()));
    assert!(!r.blocked().contains(&"203.0.113.1".to_string()));
}

#[test]
fn a_block_in_force_takes_little_room_in_the_hosts_table() {
    // One bucket per block (key and value), 100,000 of them on a busy host.
    let bucket = std::mem::size_of::<(Target, Host)>();
    assert!(bucket <= 80, "{bucket} bytes");
}
