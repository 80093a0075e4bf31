//! The real daemon in stealth/advanced modes, end to end: nmap from an attacker network
//! namespace, the 1.2 log lines checked on the daemon's output. Uses the lead's lab
//! (`tests/e2e/lab.rs`). Needs root and nmap; skips itself (saying so) without them.

#[allow(dead_code)]
#[path = "e2e/lab.rs"]
mod lab;

use lab::{Daemon, Lab};

fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root");
        return false;
    }
    let nmap = std::process::Command::new("sh")
        .args(["-c", "command -v nmap >/dev/null"])
        .status()
        .is_ok_and(|s| s.success());
    if !nmap {
        eprintln!("SKIPPED: needs nmap");
    }
    nmap
}

fn nmap(lab: &Lab, args: &[&str]) {
    let mut all = vec!["nmap", "-n", "-Pn", "--max-retries", "0", "-T4"];
    all.extend_from_slice(args);
    let out = lab.attack(&all);
    assert!(
        out.status.success(),
        "{all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn atcp_audp_daemon_logs_every_nmap_scan_type_with_the_1_2_lines() {
    if !ready() {
        return;
    }
    let lab = Lab::new();
    let conf = lab.write_config("BLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\"\n");
    let conf = conf.display().to_string();
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp", "-audp"]);
    d.expect_line(
        "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 113",
        5,
    );
    let (a4, d4, a6, d6) = (&lab.att4, &lab.def4, &lab.att6, &lab.def6);
    nmap(&lab, &["-sS", "-p", "1", d4]);
    nmap(&lab, &["-sF", "-p", "11", d4]);
    nmap(&lab, &["-sN", "-p", "12", d4]);
    nmap(&lab, &["-sX", "-p", "13", d4]);
    nmap(&lab, &["-sU", "-p", "7", d4]);
    nmap(&lab, &["-6", "-sS", "-p", "14", d6]);
    nmap(&lab, &["-sS", "--ip-options", "R", "-p", "15", d4]);
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

#[test]
fn stcp_daemon_blocks_the_scanner_and_then_reports_it_as_already_blocked() {
    if !ready() {
        return;
    }
    let lab = Lab::new();
    let conf = lab.write_config(
        "TCP_PORTS=\"1,79,111\"\n\
         BLOCK_TCP=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n",
    );
    let conf = conf.display().to_string();
    let d = Daemon::start(&lab, &["-c", &conf, "-stcp"]);
    d.expect_line(
        "adminalert: Going into stealth listen mode on TCP port: 79",
        5,
    );
    let (a4, d4) = (&lab.att4, &lab.def4);
    nmap(&lab, &["-sS", "-p", "79", d4]);
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
    nmap(&lab, &["-sS", "-p", "111", d4]);
    d.expect_line(
        &format!("attackalert: Host: {a4}/{a4} is already blocked Ignoring"),
        10,
    );
    let history = lab.read("portsentry.history");
    assert_eq!(history.lines().count(), 1, "{history}");
    assert!(history.contains(&format!("Host: {a4}/{a4} Port: 79 TCP Blocked")));
}
