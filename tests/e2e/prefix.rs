//! Attackers who own many addresses (issue 17), end to end: a scanner that sends each probe
//! from another address of its IPv6 /64 or IPv4 /24 defeats any per-host detector, so the
//! daemon blocks the prefix once `ESCALATE_AFTER_V6` / `_V4` of its hosts were blocked, on a
//! budget of its own, never over a prefix that holds a protected or ignored address, and
//! not on forgeable evidence unless `ESCALATE_FORGEABLE="1"`. The prefix block is one record
//! that `list`, `unblock`, expiry, the journal, the route table, the nftables sets and
//! hosts.deny all agree about.
//!
//! The rotation is measured as the scanner sees it: from many addresses added to the
//! attacker namespace, one non-blocking TCP connect each to one trap port (another port per
//! address), spaced [`GAP`] apart; an "answer" is a SYN-ACK or an RST within [`ANSWER_WAIT`]
//! (the connect completed or was refused), silence means the source was blocked.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::blocks::{list, wait_for};
use crate::forged::forge;
use crate::hosts_deny::tcpd_verdict;
use crate::lab::{Daemon, Lab, sh};

/// Time between two probes of a rotation: a quick scanner that still lets the daemon see
/// each probe on its own.
const GAP: Duration = Duration::from_millis(20);
/// How long a probe may wait for its SYN-ACK or RST before it counts as silence (an answer
/// on the lab's veth takes well under a millisecond; the first SYN retransmission is at 1 s).
const ANSWER_WAIT: Duration = Duration::from_millis(900);
/// Trap ports of `-tcp` (a rotation cycles through them, one per address).
const TCP_TRAPS: std::ops::Range<u16> = 2000..2100;
/// Ports a rotation probes in `-atcp` (watched: below `ADVANCED_PORTS_TCP`, no listener).
const RAW_TRAPS: std::ops::Range<u16> = 100..200;
/// Answers a /64 rotation may get before the /64 is blocked (the issue's bound).
const MAX_ANSWERS_V6: usize = 8;
/// Answers a /24 rotation may get before the /24 is blocked (the issue's bound).
const MAX_ANSWERS_V4: usize = 16;
/// The defaults of `ESCALATE_AFTER_V6` and `ESCALATE_AFTER_V4`.
const ESCALATE_AFTER_V6: usize = 3;
const ESCALATE_AFTER_V4: usize = 8;

/// The sensor mode under test.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Classic: a completed handshake per probe, proven evidence.
    Tcp,
    /// Raw capture: a SYN (answered by the kernel's RST), forgeable evidence.
    Atcp,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Tcp => "-tcp",
            Mode::Atcp => "-atcp",
        }
    }

    /// Distinct ports one source must probe to be blocked on its own: one proven probe
    /// (`SCAN_TRIGGER="0"`), or `FORGEABLE_SCAN_TRIGGER` (default 3) forgeable ones.
    fn probes_to_block(self) -> usize {
        match self {
            Mode::Tcp => 1,
            Mode::Atcp => 3,
        }
    }

    fn ports(self) -> Vec<u16> {
        match self {
            Mode::Tcp => TCP_TRAPS.collect(),
            Mode::Atcp => RAW_TRAPS.collect(),
        }
    }

    /// The config lines of the mode: its trap ports; in `-atcp` also evidence by /24 for IPv4
    /// (a one-probe-per-address rotation never gives one host the 3 ports forgeable evidence
    /// needs) and `ESCALATE_FORGEABLE="1"` (raw capture cannot tell a real rotation from a
    /// forged one: an admin who wants raw-mode rotations escalated must accept forgeries).
    fn config(self) -> String {
        match self {
            Mode::Tcp => format!("TCP_PORTS=\"{}-{}\"\n", TCP_TRAPS.start, TCP_TRAPS.end - 1),
            Mode::Atcp => "ADVANCED_PORTS_TCP=\"1024\"\nADVANCED_EXCLUDE_TCP=\"113,139\"\n\
                           SCAN_PREFIX_V4=\"24\"\nESCALATE_FORGEABLE=\"1\"\n"
                .to_string(),
        }
    }
}

/// Blocking on, as shipped: hosts.deny line and unreachable route, `SCAN_TRIGGER="0"` (the
/// lab's config), every issue-17 key at its default unless `extra` says otherwise.
const BLOCKING: &str = "BLOCK_TCP=\"1\"\n\
                        KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n\
                        KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n";

/// Writes the lab's config (`extra` first, then the mode's lines, then [`BLOCKING`]) and
/// starts the daemon in `mode`.
fn start(lab: &Lab, mode: Mode, extra: &str) -> Daemon {
    let conf = lab.write_config(&format!("{extra}\n{}{BLOCKING}", mode.config()));
    Daemon::start(lab, &["-c", &conf.display().to_string(), mode.flag()])
}

/// Many addresses of one prefix, owned by the attacker namespace and reachable from the
/// defender by an on-link route (no gateway: a gateway is a protected address).
struct Prefix {
    /// The prefix as the daemon names it (`fd77:5:5::/64`, `10.78.5.0/24`).
    net: String,
    /// Its addresses in the attacker namespace, in rotation order.
    hosts: Vec<IpAddr>,
}

impl Prefix {
    /// `count` addresses `fd77:N:group::1000` and up, of the /64 `fd77:N:group::/64` (N
    /// written in decimal digits, as the lab writes its own /64).
    fn v6(lab: &Lab, group: u16, count: usize) -> Prefix {
        let base = format!("fd77:{}:{group}:", lab.net());
        let hosts = (0..count)
            .map(|i| lab.addr(&format!("{base}:{:x}", 0x1000 + i)))
            .collect();
        Prefix::add(lab, format!("{base}:/64"), hosts)
    }

    /// `count` addresses `10.78.third.1` and up, of the /24 `10.78.third.0/24`.
    fn v4(lab: &Lab, third: u8, count: usize) -> Prefix {
        assert!(count < 250, "one /24");
        let hosts = (1..=count)
            .map(|i| lab.addr(&format!("10.78.{third}.{i}")))
            .collect();
        Prefix::add(lab, format!("10.78.{third}.0/24"), hosts)
    }

    /// The lab's own /64 or /24 (which holds the defender's address), hosts 100 and up.
    fn own(lab: &Lab, v6: bool, count: usize) -> Prefix {
        let n = lab.net();
        let (net, hosts) = if v6 {
            (
                format!("fd77:{n}::/64"),
                (0..count)
                    .map(|i| lab.addr(&format!("fd77:{n}::{:x}", 0x100 + i)))
                    .collect(),
            )
        } else {
            (
                format!("10.77.{n}.0/24"),
                (0..count)
                    .map(|i| lab.addr(&format!("10.77.{n}.{}", 100 + i)))
                    .collect(),
            )
        };
        Prefix::add(lab, net, hosts)
    }

    /// Adds `hosts` to the attacker's end of the veth (one `ip -batch`: 400 addresses in a
    /// blink) and, for a net that is not the lab's own, an on-link route on the defender.
    fn add(lab: &Lab, net: String, hosts: Vec<IpAddr>) -> Prefix {
        let len = net.rsplit('/').next().expect("a prefix");
        let batch: String = hosts
            .iter()
            .map(|h| match h {
                IpAddr::V6(_) => format!("addr add {h}/{len} dev {} nodad\n", lab.att_dev),
                IpAddr::V4(_) => format!("addr add {h}/{len} dev {}\n", lab.att_dev),
            })
            .collect();
        let file = lab.path(&format!("addrs-{}", net.replace(['/', ':', '.'], "_")));
        std::fs::write(&file, batch).expect("write the address batch");
        sh(&["ip", "-n", &lab.att, "-batch", &file.display().to_string()]);
        let covering = if net.contains(':') {
            format!("fd77:{}::/32", lab.net())
        } else {
            "10.78.0.0/16".to_string()
        };
        if !lab.def_routes().lines().any(|l| l.starts_with(&covering)) {
            let dev = &lab.def_dev;
            sh(&["ip", "-n", &lab.def, "route", "add", &covering, "dev", dev]);
        }
        Prefix { net, hosts }
    }

    fn is_v6(&self) -> bool {
        self.net.contains(':')
    }

    /// Whether `ip` lies in this prefix.
    fn holds(&self, ip: &IpAddr) -> bool {
        let net: ipnet::IpNet = self.net.parse().expect("a prefix");
        net.contains(ip)
    }

    /// `ESCALATE_AFTER` of the family, at its default.
    fn escalate_after(&self) -> usize {
        if self.is_v6() {
            ESCALATE_AFTER_V6
        } else {
            ESCALATE_AFTER_V4
        }
    }
}

/// What a rotation learned.
#[derive(Debug, Default)]
struct Probed {
    /// Probes answered within [`ANSWER_WAIT`] by a SYN-ACK (connected) or an RST (refused).
    answers: usize,
    /// Probes that heard nothing: the source was blocked.
    silent: usize,
    /// Probes that failed otherwise (an ICMP error…), with the first error seen.
    other: usize,
    first_other: Option<String>,
    /// Index of the last answered probe (how far into the rotation the scanner still
    /// learned something).
    last_answer: Option<usize>,
}

/// One probe in flight: the socket and when its SYN left.
struct InFlight {
    index: usize,
    sock: socket2::Socket,
    sent: Instant,
}

/// Judges a probe whose [`ANSWER_WAIT`] is over: writable (or in error) means the handshake
/// completed or was refused; still pending means silence.
fn judge(p: InFlight, probed: &mut Probed) {
    let mut fds = libc::pollfd {
        fd: p.sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let ready = unsafe { libc::poll(&mut fds, 1, 0) };
    if ready == 0 {
        probed.silent += 1;
        return;
    }
    match p.sock.take_error() {
        Ok(None) => {}
        Ok(Some(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
        Ok(Some(e)) | Err(e) => {
            probed.other += 1;
            probed.first_other.get_or_insert_with(|| e.to_string());
            return;
        }
    }
    probed.answers += 1;
    probed.last_answer = Some(p.index);
}

/// The rotation: from each of `hosts` in turn, one non-blocking connect to the defender
/// (IPv4 or IPv6 by the source) on the next of `ports`, [`GAP`] apart; each probe judged
/// [`ANSWER_WAIT`] after it left.
fn rotate(lab: &Lab, hosts: &[IpAddr], ports: &[u16]) -> Probed {
    let (def4, def6) = (lab.addr(&lab.def4), lab.addr(&lab.def6));
    let hosts = hosts.to_vec();
    let ports = ports.to_vec();
    lab.in_att(move || {
        let mut probed = Probed::default();
        let mut flying: std::collections::VecDeque<InFlight> = Default::default();
        for (index, src) in hosts.iter().enumerate() {
            let dst = if src.is_ipv4() { def4 } else { def6 };
            let domain = socket2::Domain::for_address(SocketAddr::new(*src, 0));
            let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
            sock.set_nonblocking(true).expect("non-blocking");
            sock.bind(&SocketAddr::new(*src, 0).into())
                .unwrap_or_else(|e| panic!("bind {src}: {e}"));
            let port = ports[index % ports.len()];
            match sock.connect(&SocketAddr::new(dst, port).into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => panic!("connect from {src} to port {port}: {e}"),
            }
            flying.push_back(InFlight {
                index,
                sock,
                sent: Instant::now(),
            });
            while flying
                .front()
                .is_some_and(|p| p.sent.elapsed() >= ANSWER_WAIT)
            {
                judge(flying.pop_front().expect("front"), &mut probed);
            }
            std::thread::sleep(GAP);
        }
        while let Some(p) = flying.pop_front() {
            std::thread::sleep(ANSWER_WAIT.saturating_sub(p.sent.elapsed()));
            judge(p, &mut probed);
        }
        probed
    })
    .join()
    .expect("the rotation")
}

/// Unreachable routes in the defender namespace, by destination (`fd77:5:5::1000`,
/// `10.78.5.0/24`).
fn unreachable(lab: &Lab) -> BTreeSet<String> {
    lab.def_routes()
        .lines()
        .filter_map(|l| l.strip_prefix("unreachable "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Host routes of `p`'s addresses in the defender namespace.
fn host_routes(lab: &Lab, p: &Prefix) -> usize {
    unreachable(lab)
        .iter()
        .filter(|r| r.parse::<IpAddr>().is_ok_and(|ip| p.holds(&ip)))
        .count()
}

fn prefix_routed(lab: &Lab, p: &Prefix) -> bool {
    unreachable(lab).contains(&p.net)
}

/// The block record of `target` in `list --json`.
fn record(lab: &Lab, target: &str) -> Option<serde_json::Value> {
    list(lab)
        .into_iter()
        .find(|b| b["target"].as_str() == Some(target))
}

/// The member addresses of a listed prefix block.
fn members(rec: &serde_json::Value) -> Vec<IpAddr> {
    rec["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|a| a.as_str().and_then(|a| a.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The lines of `d`'s log that say `p` was not escalated.
fn not_escalated_lines(d: &Daemon, p: &Prefix) -> Vec<String> {
    d.lines()
        .into_iter()
        .filter(|l| l.contains("not escalated") && l.contains(&p.net))
        .collect()
}

/// Asserts that `p`'s rotation was escalated: its prefix route is in the table, the member
/// host routes are folded into it (undone), and `list --json` holds one record for it,
/// origin scan, with at least `ESCALATE_AFTER` members, all inside it.
fn expect_escalated(d: &Daemon, lab: &Lab, p: &Prefix, probed: &Probed) {
    assert!(
        wait_for(5, || prefix_routed(lab, p)),
        "{} not blocked whole after {probed:?}; routes {:?}; log:\n{}",
        p.net,
        unreachable(lab),
        d.lines().join("\n")
    );
    assert!(
        wait_for(5, || host_routes(lab, p) == 0),
        "the host blocks of {} are folded into it: {:?}",
        p.net,
        unreachable(lab)
    );
    let rec = record(lab, &p.net).unwrap_or_else(|| panic!("{} in list --json", p.net));
    assert_eq!(rec["origin"], "scan", "{rec}");
    let m = members(&rec);
    assert!(m.len() >= p.escalate_after(), "members of {}: {rec}", p.net);
    assert!(
        m.iter().all(|ip| p.holds(ip)),
        "members of {}: {rec}",
        p.net
    );
    let hosts_listed = list(lab)
        .iter()
        .filter(|b| {
            b["target"]
                .as_str()
                .and_then(|t| t.split('/').next())
                .and_then(|t| t.parse::<IpAddr>().ok())
                .is_some_and(|ip| p.holds(&ip))
        })
        .count();
    assert_eq!(hosts_listed, 1, "one record for {}: {:?}", p.net, list(lab));
}

/// Asserts that `p` was never blocked whole although it passed the escalation threshold:
/// at least `ESCALATE_AFTER` of its hosts stay blocked as hosts, no prefix route, no record
/// of the prefix, and one "not escalated" line naming it and, in `reason`, why.
fn expect_not_escalated(d: &Daemon, lab: &Lab, p: &Prefix, reason: &str) {
    assert!(
        wait_for(5, || host_routes(lab, p) >= p.escalate_after()),
        "{} hosts of {} blocked (at least {} to show the threshold was passed): {:?}",
        host_routes(lab, p),
        p.net,
        p.escalate_after(),
        unreachable(lab)
    );
    assert!(
        wait_for(5, || !not_escalated_lines(d, p).is_empty()),
        "no \"not escalated\" line for {}; log:\n{}",
        p.net,
        d.lines().join("\n")
    );
    // Give a late escalation time to show.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!prefix_routed(lab, p), "{} blocked whole", p.net);
    assert!(record(lab, &p.net).is_none(), "{} listed", p.net);
    let lines = not_escalated_lines(d, p);
    assert_eq!(lines.len(), 1, "logged once: {lines:#?}");
    assert!(
        lines[0].to_lowercase().contains(reason),
        "the reason ({reason}) is given: {}",
        lines[0]
    );
}

/// The rotation of issue 17 in `mode`: 400 addresses of a /64, then 120 of a /24, then one
/// probe from a fresh address of another /24, which must be blocked within 2 s.
fn rotation_is_escalated_and_leaves_the_budget(mode: Mode) {
    let lab = Lab::new();
    let d = start(&lab, mode, "");
    let p6 = Prefix::v6(&lab, 5, 400);
    let p4 = Prefix::v4(&lab, 5, 120);
    let (fresh, _) = lab.add_attacker_addrs(9);
    let ports = mode.ports();
    let v6 = rotate(&lab, &p6.hosts, &ports);
    eprintln!(
        "{mode:?} /64 rotation: {v6:?}; host routes {}, prefix blocked {}",
        host_routes(&lab, &p6),
        prefix_routed(&lab, &p6)
    );
    let v4 = rotate(&lab, &p4.hosts, &ports);
    eprintln!(
        "{mode:?} /24 rotation: {v4:?}; host routes {}, prefix blocked {}",
        host_routes(&lab, &p4),
        prefix_routed(&lab, &p4)
    );
    // The next scanner, right after, from an address of another /24: as many ports as its
    // evidence needs to be blocked, timed from its first probe.
    let probes = vec![lab.addr(&fresh); mode.probes_to_block()];
    let probe_sent = Instant::now();
    let blocked_after = std::thread::scope(|s| {
        let next = s.spawn(|| rotate(&lab, &probes, &ports));
        let blocked = wait_for(2, || unreachable(&lab).contains(&fresh));
        let after = blocked.then(|| probe_sent.elapsed());
        next.join().expect("the next scanner");
        after
    });
    eprintln!("{mode:?} fresh scanner {fresh}: blocked after {blocked_after:?}");
    // The measure hears silence: the first hosts of each rotation, blocked (as hosts or by
    // their prefix) by now, probed again.
    let again6 = rotate(&lab, &p6.hosts[..5], &ports);
    let again4 = rotate(&lab, &p4.hosts[..5], &ports);
    eprintln!("{mode:?} again: /64 {again6:?}, /24 {again4:?}");
    assert!(
        v6.answers <= MAX_ANSWERS_V6,
        "{} answers to the /64 rotation: {v6:?}",
        v6.answers
    );
    expect_escalated(&d, &lab, &p6, &v6);
    assert!(
        v4.answers <= MAX_ANSWERS_V4,
        "{} answers to the /24 rotation: {v4:?}",
        v4.answers
    );
    expect_escalated(&d, &lab, &p4, &v4);
    assert!(
        blocked_after.is_some(),
        "the fresh scanner {fresh} is blocked within 2 s: {:?}; log:\n{}",
        unreachable(&lab),
        d.lines().join("\n")
    );
    assert_eq!(v6.other + v4.other, 0, "{v6:?} {v4:?}");
    assert_eq!(again6.answers + again4.answers, 0, "{again6:?} {again4:?}");
}

#[test]
fn tcp_rotation_through_a_64_and_a_24_is_blocked_whole_and_the_next_scanner_still_blocked() {
    rotation_is_escalated_and_leaves_the_budget(Mode::Tcp);
}

#[test]
fn atcp_rotation_through_a_64_and_a_24_is_blocked_whole_and_the_next_scanner_still_blocked() {
    rotation_is_escalated_and_leaves_the_budget(Mode::Atcp);
}

/// Rotations of 40 addresses: enough for every default `ESCALATE_AFTER` within the per-prefix
/// budget of 10 blocks a minute.
const SMALL: usize = 40;

/// The global block budget of the protection tests: their six prefixes may spend up to 10
/// host blocks each, and what happens when the global bucket runs dry is another test's.
const AMPLE_BUDGET: &str = "BLOCK_RATE_LIMIT=\"600\"\n";

/// A /64 and a /24 with a defender's address at `fd77:N:6::1` and `10.78.6.250` (not among
/// the rotating ones), and, as controls, the same beside them where nothing is protected.
fn protected_and_controls(lab: &Lab) -> ([Prefix; 2], [Prefix; 2], [String; 2]) {
    let protected = [Prefix::v6(lab, 6, SMALL), Prefix::v4(lab, 6, SMALL)];
    let controls = [Prefix::v6(lab, 7, SMALL), Prefix::v4(lab, 7, SMALL)];
    let inside = [
        format!("fd77:{}:6::1", lab.net()),
        "10.78.6.250".to_string(),
    ];
    (protected, controls, inside)
}

/// Rotates through the controls, then through each protected prefix; the controls must be
/// blocked whole, each protected prefix (with the word its log line gives as the reason)
/// never.
fn only_the_controls_are_escalated(
    d: &Daemon,
    lab: &Lab,
    controls: &[Prefix],
    protected: &[(&Prefix, &str)],
) {
    let ports = Mode::Tcp.ports();
    for p in controls.iter().chain(protected.iter().map(|(p, _)| *p)) {
        let probed = rotate(lab, &p.hosts, &ports);
        eprintln!("{}: {probed:?}", p.net);
    }
    for p in controls {
        expect_escalated(d, lab, p, &Probed::default());
    }
    for (p, reason) in protected {
        expect_not_escalated(d, lab, p, reason);
    }
}

#[test]
fn a_prefix_holding_a_gateway_or_this_hosts_address_is_never_blocked_whole() {
    let lab = Lab::new();
    let ([gw6, gw4], controls, [gw6_addr, gw4_addr]) = protected_and_controls(&lab);
    for (family, gw) in [("-6", &gw6_addr), ("-4", &gw4_addr)] {
        sh(&[
            "ip", "-n", &lab.def, family, "route", "add", "default", "via", gw,
        ]);
    }
    // And the defender's own addresses in these.
    let own6 = Prefix::own(&lab, true, SMALL);
    let own4 = Prefix::own(&lab, false, SMALL);
    let d = start(&lab, Mode::Tcp, AMPLE_BUDGET);
    d.expect_line(&format!("default gateway(s): {gw4_addr}, {gw6_addr}"), 5);
    only_the_controls_are_escalated(
        &d,
        &lab,
        &controls,
        &[
            (&gw6, "gateway"),
            (&gw4, "gateway"),
            (&own6, "own"),
            (&own4, "own"),
        ],
    );
}

#[test]
fn a_prefix_holding_an_ignored_address_is_never_blocked_whole() {
    let lab = Lab::new();
    let ([ign6, ign4], controls, [ign6_addr, ign4_addr]) = protected_and_controls(&lab);
    std::fs::write(
        lab.path("portsentry.ignore"),
        format!("127.0.0.1/32\n0.0.0.0\n{ign6_addr}\n{ign4_addr}\n"),
    )
    .expect("write the ignore file");
    let d = start(&lab, Mode::Tcp, AMPLE_BUDGET);
    only_the_controls_are_escalated(&d, &lab, &controls, &[(&ign6, "ignore"), (&ign4, "ignore")]);
}

/// Forges one SYN from each of 400 addresses of `p` (addresses the attacker does not hold:
/// no handshake can complete), cycling through the raw-mode ports.
fn forge_rotation(lab: &Lab, p: &Prefix) {
    let ports = Mode::Atcp.ports();
    let plan: Vec<String> = p
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| format!("{h}@{}", ports[i % ports.len()]))
        .collect();
    forge(lab, &lab.def6, &plan);
}

/// A /64 of `count` addresses that only forged packets come from: nothing is added to the
/// attacker namespace, and the defender has no route to it.
fn forged_v6(lab: &Lab, group: u16, count: usize) -> Prefix {
    let base = format!("fd77:{}:{group}:", lab.net());
    Prefix {
        net: format!("{base}:/64"),
        hosts: (0..count)
            .map(|i| lab.addr(&format!("{base}:{:x}", 0x1000 + i)))
            .collect(),
    }
}

#[test]
fn forged_rotation_in_raw_mode_escalates_only_with_escalate_forgeable() {
    let lab = Lab::new();
    // Default ESCALATE_FORGEABLE: the forger gets host blocks (evidence by /64 crosses
    // FORGEABLE_SCAN_TRIGGER), never the whole /64 of someone else.
    let conf = lab.write_config(&format!(
        "ADVANCED_PORTS_TCP=\"1024\"\nADVANCED_EXCLUDE_TCP=\"113,139\"\n{BLOCKING}"
    ));
    let mut d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-atcp"]);
    let forged = forged_v6(&lab, 8, 400);
    forge_rotation(&lab, &forged);
    assert!(
        wait_for(10, || host_routes(&lab, &forged) >= ESCALATE_AFTER_V6),
        "host blocks of forged sources (evidence counted by /64): {:?}; log:\n{}",
        unreachable(&lab),
        d.lines().join("\n")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !prefix_routed(&lab, &forged),
        "a forged rotation blocked {} whole",
        forged.net
    );
    assert!(record(&lab, &forged.net).is_none());
    d.stop();
    // The control: the same forged rotation from another /64, ESCALATE_FORGEABLE="1".
    let conf = lab.write_config(&format!(
        "ESCALATE_FORGEABLE=\"1\"\nADVANCED_PORTS_TCP=\"1024\"\nADVANCED_EXCLUDE_TCP=\"113,139\"\n\
         {BLOCKING}"
    ));
    let d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-atcp"]);
    let control = forged_v6(&lab, 9, 400);
    forge_rotation(&lab, &control);
    expect_escalated(&d, &lab, &control, &Probed::default());
}

/// Every responder on: route, hosts.deny and the nftables sets.
const ALL_RESPONDERS: &str = "KILL_NFTABLES=\"1\"\n";

/// `nft list table inet portsentry` in the defender namespace.
fn nft_table(lab: &Lab) -> String {
    lab.defend_stdout(&["nft", "list", "table", "inet", "portsentry"])
}

/// Whether the nftables table holds `element` (an address or a prefix) in one of its sets.
fn nft_has(lab: &Lab, element: &str) -> bool {
    nft_table(lab)
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}'))
        .any(|w| w == element)
}

/// The hosts.deny line of a prefix, as tcpd matches it.
fn deny_line(p: &Prefix) -> String {
    let (addr, len) = p.net.split_once('/').expect("a prefix");
    if p.is_v6() {
        format!("ALL: [{addr}]/{len} : DENY")
    } else {
        let mask = ipnet::Ipv4Net::new(addr.parse().expect("v4"), len.parse().expect("len"))
            .expect("a /24")
            .netmask();
        format!("ALL: {addr}/{mask} : DENY")
    }
}

/// Whether every trace of `p`'s block is in place (`true`) or gone (`false`): route,
/// nftables element, hosts.deny line; and no member host left behind in any of them.
fn expect_traces(lab: &Lab, p: &Prefix, present: bool) {
    let ok = wait_for(5, || {
        prefix_routed(lab, p) == present
            && nft_has(lab, &p.net) == present
            && lab.read("hosts.deny").lines().any(|l| l == deny_line(p)) == present
    });
    assert!(
        ok,
        "{} expected {}: routes {:?}\nhosts.deny:\n{}\nnft:\n{}",
        p.net,
        if present { "blocked" } else { "gone" },
        unreachable(lab),
        lab.read("hosts.deny"),
        nft_table(lab)
    );
    assert_eq!(host_routes(lab, p), 0, "{:?}", unreachable(lab));
    for h in &p.hosts {
        assert!(!nft_has(lab, &h.to_string()), "{h} left in the sets");
        assert!(
            !lab.read("hosts.deny").contains(&h.to_string()),
            "{h} left in hosts.deny"
        );
    }
}

/// Rotations through 20 addresses of a /64 and 30 of a /24 (enough to escalate both), each
/// checked blocked whole, in the route table, the nftables sets and hosts.deny, where tcpd
/// denies a host of the prefix by the prefix's line (the positive control of every "gone"
/// that follows).
fn escalate_a_64_and_a_24(d: &Daemon, lab: &Lab) -> [Prefix; 2] {
    let prefixes = [Prefix::v6(lab, 5, 20), Prefix::v4(lab, 5, 30)];
    std::fs::write(lab.path("hosts.allow"), "").expect("write hosts.allow");
    let ports = Mode::Tcp.ports();
    for p in &prefixes {
        let probed = rotate(lab, &p.hosts, &ports);
        expect_escalated(d, lab, p, &probed);
        expect_traces(lab, p, true);
        let last = p.hosts.last().expect("hosts").to_string();
        assert_eq!(tcpd_verdict(lab, &last), "denied", "{last}");
    }
    prefixes
}

#[test]
fn a_prefix_block_is_one_record_that_unblock_restart_and_the_kernel_agree_about() {
    let lab = Lab::new();
    let mut d = start(&lab, Mode::Tcp, ALL_RESPONDERS);
    let [p6, p4] = escalate_a_64_and_a_24(&d, &lab);
    // One line each in the plain list.
    let listed = lab.ctl_ok(&["list"]);
    for p in [&p6, &p4] {
        let lines = listed.lines().filter(|l| l.contains(&p.net)).count();
        assert_eq!(lines, 1, "{listed}");
    }
    // A host inside: the answer names the covering prefix and lifts nothing.
    let member = members(&record(&lab, &p6.net).expect("listed"))[0].to_string();
    let out = lab.ctl(&["unblock", &member]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&p6.net), "names the prefix: {said}");
    expect_traces(&lab, &p6, true);
    // The journal brings the blocks back: stopped, the routes flushed by hand, started again.
    d.stop();
    lab.defend(&["ip", "route", "flush", "type", "unreachable"]);
    lab.defend(&["ip", "-6", "route", "flush", "type", "unreachable"]);
    assert!(unreachable(&lab).is_empty(), "{:?}", unreachable(&lab));
    let d = start(&lab, Mode::Tcp, ALL_RESPONDERS);
    for p in [&p6, &p4] {
        expect_traces(&lab, p, true);
        let rec = record(&lab, &p.net).expect("restored");
        assert!(members(&rec).len() >= p.escalate_after(), "{rec}");
    }
    // --covering lifts the prefix that covers a host; the prefix itself lifts by name.
    lab.ctl_ok(&["unblock", "--covering", &member]);
    expect_traces(&lab, &p6, false);
    lab.ctl_ok(&["unblock", &p4.net]);
    expect_traces(&lab, &p4, false);
    assert!(list(&lab).is_empty(), "{:?}", list(&lab));
    assert!(unreachable(&lab).is_empty(), "{:?}", unreachable(&lab));
    // And tcpd lets the prefixes' hosts in again.
    for p in [&p6, &p4] {
        assert_eq!(tcpd_verdict(&lab, &p.hosts[0].to_string()), "granted");
    }
    drop(d);
}

#[test]
fn an_expired_prefix_block_leaves_no_route_element_or_hosts_deny_line() {
    let lab = Lab::new();
    let d = start(
        &lab,
        Mode::Tcp,
        &format!("BLOCK_TIMEOUT=\"6s\"\n{ALL_RESPONDERS}"),
    );
    let [p6, p4] = escalate_a_64_and_a_24(&d, &lab);
    for p in [&p6, &p4] {
        assert!(
            wait_for(15, || !prefix_routed(&lab, p)),
            "{} still blocked: {:?}",
            p.net,
            unreachable(&lab)
        );
        expect_traces(&lab, p, false);
    }
    assert!(wait_for(5, || list(&lab).is_empty()), "{:?}", list(&lab));
}

/// A Lua responder that writes each block and unblock event it hears to `RECORDER_FILE`:
/// event, target, prefix length, and the members, comma-separated.
const RECORDER: &str = r#"
local function note(ev)
  portsentry.append_line(portsentry.config.file, table.concat({ ev.event, ev.target,
    ev.prefix_len, table.concat(ev.members, ",") }, " "))
  return "noted " .. ev.target
end
portsentry.on("block", note)
portsentry.on("unblock", note)
"#;

#[test]
fn lua_plugins_hear_an_escalated_prefix_with_its_member_hosts() {
    let lab = Lab::new();
    let plugins = lab.path("plugins");
    std::fs::create_dir(&plugins).expect("plugin dir");
    std::fs::write(plugins.join("recorder.lua"), RECORDER).expect("write the plugin");
    let events = lab.path("events");
    let d = start(
        &lab,
        Mode::Tcp,
        &format!(
            "PLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}\"\nLUA_RESPONDERS=\"recorder\"\n\
             RECORDER_FILE=\"{}\"",
            plugins.display(),
            crate::lab::repo("lua").display(),
            events.display()
        ),
    );
    let p = Prefix::v6(&lab, 5, 20);
    let probed = rotate(&lab, &p.hosts, &Mode::Tcp.ports());
    expect_escalated(&d, &lab, &p, &probed);
    let rec = record(&lab, &p.net).expect("listed");
    let members: Vec<String> = members(&rec).iter().map(IpAddr::to_string).collect();
    let block = format!("block {} 64 {}", p.net, members.join(","));
    let unblock = format!("unblock {} 64 {}", p.net, members.join(","));
    assert!(
        wait_for(5, || lab.read("events").lines().any(|l| l == block)),
        "{block:?} in:\n{}",
        lab.read("events")
    );
    // The hosts before it: their own address, the full length, no members.
    let first = format!("block {} 128 ", p.hosts[0]);
    assert!(
        lab.read("events")
            .lines()
            .any(|l| l == first.trim_end() || l == first),
        "{first:?} in:\n{}",
        lab.read("events")
    );
    lab.ctl_ok(&["unblock", &p.net]);
    assert!(
        wait_for(5, || lab.read("events").lines().any(|l| l == unblock)),
        "{unblock:?} in:\n{}",
        lab.read("events")
    );
}

/// The main table already routes exactly the rotated /24 (a static route an admin made):
/// `ip route add unreachable` of it answers "File exists", which is no block. The route
/// responder fails and says why; the prefix is blocked by hosts.deny alone, so its hosts
/// keep their routes (a weaker prefix block takes nothing over); a /24 beside it without such
/// a route is escalated and folds its hosts (positive control).
#[test]
fn a_prefix_the_table_routes_already_is_not_taken_for_blocked_and_keeps_its_host_blocks() {
    let lab = Lab::new();
    let routed = Prefix::v4(&lab, 8, SMALL);
    let control = Prefix::v4(&lab, 9, SMALL);
    let dev = lab.def_dev.clone();
    sh(&[
        "ip",
        "-n",
        &lab.def,
        "route",
        "add",
        &routed.net,
        "dev",
        &dev,
    ]);
    let d = start(&lab, Mode::Tcp, AMPLE_BUDGET);
    let ports = Mode::Tcp.ports();
    rotate(&lab, &control.hosts, &ports);
    expect_escalated(&d, &lab, &control, &Probed::default());
    rotate(&lab, &routed.hosts, &ports);
    assert!(
        wait_for(10, || d.lines().iter().any(|l| l.contains(&format!(
            "a route for {} is in the table already",
            routed.net
        )))),
        "no refusal of the existing route; log:\n{}",
        d.lines().join("\n")
    );
    assert!(!prefix_routed(&lab, &routed), "{}", lab.def_routes());
    let rec = record(&lab, &routed.net).expect("the prefix's record (hosts.deny)");
    assert_eq!(rec["actions"][0]["responder"], "hosts_deny", "{rec}");
    assert_eq!(rec["actions"].as_array().map(Vec::len), Some(1), "{rec}");
    assert!(
        host_routes(&lab, &routed) >= routed.escalate_after(),
        "its hosts stay blocked: {}",
        lab.def_routes()
    );
}
