//! The real daemon in stealth/advanced modes, end to end: nmap from the attacker namespace
//! (from several source addresses where each scan must be told apart), the 1.2 log lines
//! and the built-in responders checked on the daemon's output and in the defender
//! namespace; and legitimate traffic that must not raise anything.

use std::thread;
use std::time::Duration;

use crate::blocks::wrappers;
use crate::lab::{Daemon, Lab};

/// Config lines for a daemon whose built-in responders really block: the route goes into
/// the defender namespace, hosts.deny into the lab's file.
/// 1.2's behaviour: a raw probe blocks on its first packet (`FORGEABLE_SCAN_TRIGGER="1"`, the
/// admin's explicit choice; the default waits for three ports, see tests/e2e/forged.rs).
const BLOCKING: &str = "FORGEABLE_SCAN_TRIGGER=\"1\"\n\
                        BLOCK_TCP=\"1\"\n\
                        BLOCK_UDP=\"1\"\n\
                        KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n\
                        KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n";

fn conf_arg(lab: &Lab, extra: &str) -> String {
    lab.write_config(extra).display().to_string()
}

#[test]
fn atcp_audp_daemon_logs_every_nmap_scan_type_with_the_1_2_lines() {
    let lab = Lab::new();
    let conf = conf_arg(&lab, "BLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\"\n");
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp", "-audp"]);
    d.expect_line(
        "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 113",
        5,
    );
    let (a4, d4, a6, d6) = (&lab.att4, &lab.def4, &lab.att6, &lab.def6);
    lab.nmap(&["-sS", "-p", "1", d4]);
    lab.nmap(&["-sF", "-p", "11", d4]);
    lab.nmap(&["-sN", "-p", "12", d4]);
    lab.nmap(&["-sX", "-p", "13", d4]);
    lab.nmap(&["-sU", "-p", "7", d4]);
    lab.nmap(&["-6", "-sS", "-p", "14", d6]);
    lab.nmap(&["-sS", "--ip-options", "R", "-p", "15", d4]);
    for line in [
        format!("attackalert: TCP SYN/Normal scan from host: {a4}/{a4} to TCP port: 1"),
        format!("attackalert: TCP FIN scan from host: {a4}/{a4} to TCP port: 11"),
        format!("attackalert: TCP NULL scan from host: {a4}/{a4} to TCP port: 12"),
        format!("attackalert: TCP XMAS scan from host: {a4}/{a4} to TCP port: 13"),
        format!("attackalert: UDP scan from host: {a4}/{a4} to UDP port: 7"),
        format!("attackalert: TCP SYN/Normal scan from host: {a6}/{a6} to TCP port: 14"),
        format!(
            "attackalert: Packet from host: {a4}/{a4} to TCP port: 15 has IP options set (detection avoidance technique)."
        ),
    ] {
        d.expect_line(&line, 10);
    }
    d.expect_line(
        "attackalert: Ignoring UDP response per configuration file setting.",
        5,
    );
    // 1.2's stray space before the NULL name is fixed.
    assert_eq!(d.count("attackalert:  TCP NULL scan"), 0);
}

/// One nmap scan type of the blocking test: its flags, the port it probes, the extra
/// attacker host number it is sent from, and the 1.2 wording of its detection.
struct ScanCase {
    flags: &'static [&'static str],
    port: &'static str,
    host: u8,
    v6: bool,
    name: &'static str,
    proto: &'static str,
}

const SCAN_CASES: &[ScanCase] = &[
    ScanCase {
        flags: &["-sS"],
        port: "1",
        host: 3,
        v6: false,
        name: "TCP SYN/Normal scan",
        proto: "TCP",
    },
    ScanCase {
        flags: &["-sF"],
        port: "11",
        host: 4,
        v6: false,
        name: "TCP FIN scan",
        proto: "TCP",
    },
    ScanCase {
        flags: &["-sN"],
        port: "12",
        host: 5,
        v6: false,
        name: "TCP NULL scan",
        proto: "TCP",
    },
    ScanCase {
        flags: &["-sX"],
        port: "13",
        host: 6,
        v6: false,
        name: "TCP XMAS scan",
        proto: "TCP",
    },
    ScanCase {
        flags: &["-sU"],
        port: "7",
        host: 7,
        v6: false,
        name: "UDP scan",
        proto: "UDP",
    },
    ScanCase {
        flags: &["-6", "-sS"],
        port: "14",
        host: 8,
        v6: true,
        name: "TCP SYN/Normal scan",
        proto: "TCP",
    },
];

#[test]
fn every_nmap_scan_type_is_detected_and_blocked_by_route_and_hosts_deny_per_source() {
    let lab = Lab::new();
    let conf = conf_arg(&lab, BLOCKING);
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp", "-audp"]);
    let sources: Vec<String> = SCAN_CASES
        .iter()
        .map(|c| {
            let (a4, a6) = lab.add_attacker_addrs(c.host);
            if c.v6 { a6 } else { a4 }
        })
        .collect();
    // All scans at once, each from its own address: one scan's block cannot hide another.
    thread::scope(|s| {
        for (case, src) in SCAN_CASES.iter().zip(&sources) {
            let lab = &lab;
            s.spawn(move || {
                let target = if case.v6 { &lab.def6 } else { &lab.def4 };
                let mut args: Vec<&str> = case.flags.to_vec();
                args.extend(["-S", src, "-e", &lab.att_dev, "-p", case.port, target]);
                lab.nmap(&args);
            });
        }
    });
    for (case, src) in SCAN_CASES.iter().zip(&sources) {
        let (name, port, proto) = (case.name, case.port, case.proto);
        d.expect_line(
            &format!("attackalert: {name} from host: {src}/{src} to {proto} port: {port}"),
            10,
        );
        d.expect_line(
            &format!(
                "attackalert: Host {src} has been blocked via dropped route using command: \
                 \"/sbin/ip route add unreachable {src}\""
            ),
            10,
        );
        d.expect_line(
            &format!(
                "attackalert: Host {src} has been blocked via wrappers with string: \
                 \"ALL: {} : DENY\"",
                wrappers(src)
            ),
            10,
        );
    }
    let routes = lab.def_routes();
    let deny = lab.read("hosts.deny");
    let history = lab.read("portsentry.history");
    for (case, src) in SCAN_CASES.iter().zip(&sources) {
        assert!(
            routes.contains(&format!("unreachable {src} ")),
            "no route for {src}:\n{routes}"
        );
        assert_eq!(
            deny.lines()
                .filter(|l| *l == format!("ALL: {} : DENY", wrappers(src)))
                .count(),
            1,
            "{deny}"
        );
        let mine: Vec<&str> = history
            .lines()
            .filter(|l| l.contains(&format!(" Host: {src}/{src} Port: ")))
            .collect();
        assert_eq!(mine.len(), 1, "one history line for {src}:\n{history}");
        assert!(
            mine[0].ends_with(&format!(
                " Host: {src}/{src} Port: {} {} Blocked",
                case.port, case.proto
            )),
            "{}",
            mine[0]
        );
    }
    assert_eq!(history.lines().count(), SCAN_CASES.len(), "{history}");
    assert_eq!(deny.lines().count(), SCAN_CASES.len(), "{deny}");
    // The lab's own attacker address sent nothing and is not blocked.
    assert!(
        !routes.contains(&format!("unreachable {} ", lab.att4)),
        "{routes}"
    );
}

#[test]
fn stcp_daemon_blocks_the_scanner_and_then_reports_it_as_already_blocked() {
    let lab = Lab::new();
    let conf = conf_arg(
        &lab,
        "TCP_PORTS=\"1,79,111\"\n\
         FORGEABLE_SCAN_TRIGGER=\"1\"\n\
         BLOCK_TCP=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n",
    );
    let d = Daemon::start(&lab, &["-c", &conf, "-stcp"]);
    d.expect_line(
        "adminalert: Going into stealth listen mode on TCP port: 79",
        5,
    );
    let (a4, d4) = (&lab.att4, &lab.def4);
    lab.nmap(&["-sS", "-p", "79", d4]);
    d.expect_line(
        &format!("attackalert: TCP SYN/Normal scan from host: {a4}/{a4} to TCP port: 79"),
        10,
    );
    d.expect_line(
        &format!("attackalert: Host {a4} has been blocked via dropped route using command:"),
        10,
    );
    assert!(lab.def_routes().contains(&format!("unreachable {a4}")));
    // Capture happens before routing: the blocked host's next probe is still seen, and
    // reported as already blocked instead of blocked again.
    lab.nmap(&["-sS", "-p", "111", d4]);
    d.expect_line(
        &format!("attackalert: Host: {a4}/{a4} is already blocked Ignoring"),
        10,
    );
    let history = lab.read("portsentry.history");
    assert_eq!(history.lines().count(), 1, "{history}");
    assert!(history.contains(&format!("Host: {a4}/{a4} Port: 79 TCP Blocked")));
}

#[test]
fn listener_started_after_the_daemon_is_not_reported_once_a_second_has_passed() {
    let lab = Lab::new();
    let conf = conf_arg(&lab, "BLOCK_TCP=\"0\"\n");
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp"]);
    let _server = lab.defender_echo_service(600);
    d.expect_line(
        "adminalert: A service now listens on TCP port: 600. It is no longer watched",
        3,
    );
    thread::sleep(Duration::from_millis(1100));
    lab.echo_from_attacker(format!("{}:600", lab.def4).parse().unwrap());
    lab.echo_from_attacker(format!("[{}]:600", lab.def6).parse().unwrap());
    // Control: a SYN to an unused port next to it is still a probe. Its line also shows
    // that the daemon has handled the connections above.
    lab.nmap(&["-sS", "-p", "601", &lab.def4]);
    let a4 = &lab.att4;
    d.expect_line(
        &format!("attackalert: TCP SYN/Normal scan from host: {a4}/{a4} to TCP port: 601"),
        10,
    );
    assert_eq!(d.count("to TCP port: 600"), 0, "{:#?}", d.lines());
    assert_eq!(d.count("attackalert: TCP"), 1, "{:#?}", d.lines());
}

#[test]
fn legitimate_traffic_in_both_directions_raises_nothing_in_advanced_mode() {
    let lab = Lab::new();
    // A real service below 1024, up before the daemon: advanced mode leaves its port out.
    let _web = lab.spawn_in_def(&["python3", "-m", "http.server", "--bind", "::", "80"]);
    lab.wait_tcp_listener(80);
    // In the attacker namespace: a TCP echo service on 600 and a slow "DNS server" on 53.
    let tcp_peer = lab.attacker_echo_once(600);
    let dns = lab.attacker_dns_answering_late(Duration::from_millis(300));
    // Every UDP port is watched, so that the query's ephemeral port is too.
    let conf = conf_arg(&lab, &format!("ADVANCED_PORTS_UDP=\"65535\"\n{BLOCKING}"));
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp", "-audp"]);
    d.expect_line(
        "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 80",
        5,
    );
    // Clients of the real service, over both families.
    for url in [
        format!("http://{}:80/", lab.def4),
        format!("http://[{}]:80/", lab.def6),
    ] {
        for _ in 0..3 {
            assert!(lab.fetch(&url), "GET {url} from the attacker failed");
        }
    }
    // The defender's own connections: from local port 700 (watched) to the echo service,
    // to a closed port, and a DNS query from an ephemeral port (watched here too).
    lab.defender_connects_out(700, 600, 601);
    lab.defender_queries_dns(0);
    tcp_peer.join().expect("echo service");
    dns.join().expect("dns server");
    thread::sleep(Duration::from_millis(700));
    assert_eq!(d.count("attackalert:"), 0, "{:#?}", d.lines());
    // Control: the daemon was watching all along.
    let (probe4, _) = lab.add_attacker_addrs(3);
    lab.nmap(&[
        "-sS",
        "-S",
        &probe4,
        "-e",
        &lab.att_dev,
        "-p",
        "601",
        &lab.def4,
    ]);
    d.expect_line(
        &format!("attackalert: TCP SYN/Normal scan from host: {probe4}/{probe4} to TCP port: 601"),
        10,
    );
}
