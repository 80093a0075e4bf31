//! Block lifecycle, end to end: expiry and escalation, undo through the control command,
//! restore after kill -9 and a flushed route table, honest reporting of failed blocks, and
//! blocks of different hosts running side by side. The real daemon, the kernel's route
//! table and a hosts.deny in the lab's temp dir.

use std::time::{Duration, Instant};

use crate::lab::{Daemon, Lab};

/// Classic TCP traps, route + hosts.deny responders, and the extra lines first.
fn config(lab: &Lab, extra: &str) -> String {
    lab.write_config(&format!(
        "{extra}\n\
         TCP_PORTS=\"79,111,31337\"\n\
         UDP_PORTS=\"7\"\n\
         BLOCK_TCP=\"1\"\n\
         BLOCK_UDP=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n\
         KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n"
    ))
    .display()
    .to_string()
}

fn has_route(lab: &Lab, ip: &str) -> bool {
    lab.def_routes()
        .lines()
        .any(|l| l.starts_with(&format!("unreachable {ip} ")) || l == format!("unreachable {ip}"))
}

fn deny_has(lab: &Lab, ip: &str) -> bool {
    lab.read("hosts.deny")
        .lines()
        .any(|l| l == format!("ALL: {} : DENY", wrappers(ip)))
}

/// An address as hosts.deny holds it: IPv6 in brackets (tcp_wrappers' syntax).
pub(crate) fn wrappers(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Waits until `cond` holds (checked every 50 ms), at most `secs`.
pub(crate) fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// `list --json` as JSON values.
pub(crate) fn list(lab: &Lab) -> Vec<serde_json::Value> {
    let out = lab.ctl_ok(&["list", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("list --json: {e}: {out}"))
}

fn listed<'a>(blocks: &'a [serde_json::Value], target: &str) -> Option<&'a serde_json::Value> {
    blocks.iter().find(|b| {
        b["target"].as_str().is_some_and(|t| {
            t == target || t == format!("{target}/32") || t == format!("{target}/128")
        })
    })
}

/// Seconds between a listed block's `since` and `until`.
fn listed_duration(b: &serde_json::Value) -> f64 {
    let t = |k: &str| {
        humantime::parse_rfc3339_weak(b[k].as_str().unwrap_or_else(|| panic!("{k} in {b}")))
            .unwrap_or_else(|e| panic!("{k} in {b}: {e}"))
    };
    t("until").duration_since(t("since")).unwrap().as_secs_f64()
}

#[test]
fn block_expires_from_route_table_and_hosts_deny_and_a_second_offence_lasts_twice_as_long() {
    let lab = Lab::new();
    std::fs::write(lab.path("hosts.deny"), "sshd: 192.0.2.1\n").unwrap();
    let conf = config(&lab, "BLOCK_TIMEOUT=\"3s\"\nBLOCK_TIMEOUT_FACTOR=\"2\"");
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let att = lab.att4.clone();
    lab.connect_from(&att, 79);
    d.expect_line(&format!("Host {att} is blocked for 3s"), 10);
    assert!(has_route(&lab, &att), "{}", lab.def_routes());
    assert!(deny_has(&lab, &att));
    let blocks = list(&lab);
    let b = listed(&blocks, &att).unwrap_or_else(|| panic!("{att} in {blocks:?}"));
    assert!((listed_duration(b) - 3.0).abs() < 0.5, "{b}");
    assert_eq!(b["offences"], 1);
    d.expect_line(
        &format!("attackalert: Host {att} has been unblocked (block expired after 3s)"),
        10,
    );
    assert!(!has_route(&lab, &att), "{}", lab.def_routes());
    assert_eq!(
        lab.read("hosts.deny"),
        "sshd: 192.0.2.1\n",
        "only our line removed"
    );
    assert!(list(&lab).is_empty());
    // The memory of the offence survives a restart.
    let mut d = d;
    d.stop();
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    // The scanner comes back: twice as long.
    assert!(
        lab.connect_from(&att, 111),
        "unblocked: the trap port answers again"
    );
    d.expect_line(&format!("Host {att} is blocked for 6s (offence 2)"), 10);
    let blocks = list(&lab);
    let b = listed(&blocks, &att).unwrap_or_else(|| panic!("{att} in {blocks:?}"));
    assert!((listed_duration(b) - 6.0).abs() < 0.5, "{b}");
    assert!(has_route(&lab, &att));
    d.expect_line("(block expired after 6s)", 12);
    assert!(!has_route(&lab, &att));
    // Two blocks, two history lines; the journal remembers the offences.
    assert_eq!(lab.read("portsentry.history").lines().count(), 2);
}

#[test]
fn block_and_unblock_by_hand_act_on_route_and_hosts_deny_at_once() {
    let lab = Lab::new();
    let conf = config(&lab, "");
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let (a4, a6) = lab.add_attacker_addrs(40);
    let out = lab.ctl_ok(&["block", &a4, "--for", "1h", "--reason", "seen in a report"]);
    assert!(out.contains(&a4), "{out}");
    assert!(has_route(&lab, &a4), "{}", lab.def_routes());
    assert!(deny_has(&lab, &a4));
    assert!(
        !lab.connect_from(&a4, 79),
        "the blocked host cannot connect"
    );
    lab.ctl_ok(&["block", &a6]);
    assert!(has_route(&lab, &a6), "{}", lab.def_routes());
    let blocks = list(&lab);
    let b = listed(&blocks, &a4).unwrap_or_else(|| panic!("{a4} in {blocks:?}"));
    assert_eq!(b["origin"], "manual");
    assert_eq!(b["reason"], "seen in a report");
    assert!((listed_duration(b) - 3600.0).abs() < 2.0, "{b}");
    let b6 = listed(&blocks, &a6).unwrap_or_else(|| panic!("{a6} in {blocks:?}"));
    assert!(b6["until"].is_null(), "no BLOCK_TIMEOUT: permanent: {b6}");
    // The human table names them too.
    let table = lab.ctl_ok(&["list"]);
    assert!(
        table.contains(&a4) && table.contains("permanent"),
        "{table}"
    );

    lab.ctl_ok(&["unblock", &a4]);
    assert!(!has_route(&lab, &a4), "{}", lab.def_routes());
    assert!(!deny_has(&lab, &a4));
    assert!(deny_has(&lab, &a6), "the other block stays");
    d.expect_line(
        &format!("Host {a4} has been unblocked (by the operator)"),
        5,
    );
    assert!(lab.connect_from(&a4, 79) || d.wait_line(&format!("from host: {a4}/"), 5).is_some());
    // Refusals are clear and exit 1.
    let own = lab.ctl(&["block", &lab.def4]);
    assert!(!own.status.success());
    assert!(
        String::from_utf8_lossy(&own.stdout).contains("this host's own address")
            || String::from_utf8_lossy(&own.stderr).contains("this host's own address"),
        "{own:?}"
    );
    let missing = lab.ctl(&["unblock", "10.77.250.250"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("is not blocked"),
        "{missing:?}"
    );
    // A block from a file, networks included.
    let list_file = lab.path("list.txt");
    std::fs::write(
        &list_file,
        "# from fail2ban\n192.0.2.0/24\n\n198.51.100.7\n",
    )
    .unwrap();
    lab.ctl_ok(&[
        "block",
        "--from-file",
        &list_file.display().to_string(),
        "--for",
        "1h",
    ]);
    assert!(
        lab.def_routes().contains("unreachable 192.0.2.0/24"),
        "{}",
        lab.def_routes()
    );
    assert!(has_route(&lab, "198.51.100.7"));
    // Not running: one line, exit 1.
    let mut d = d;
    d.stop();
    let gone = lab.ctl(&["status"]);
    assert_eq!(gone.status.code(), Some(1));
    let err = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not running"), "{err}");
}

#[test]
fn control_socket_refuses_a_client_that_is_not_root() {
    let lab = Lab::new();
    let conf = config(&lab, "");
    let _d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    // Positive control: root is answered.
    assert!(lab.ctl_ok(&["status"]).contains("generation"));
    let sock = lab.path("ctl.sock");
    // The lab's temp dir is root's 0700: let nobody reach the socket's directory, so that
    // only the socket's own mode stands in the way.
    std::fs::set_permissions(
        lab.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(crate::lab::binary())
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .expect("runuser");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn restart_after_kill_9_and_route_flush_restores_active_blocks_and_not_expired_ones() {
    let lab = Lab::new();
    let conf = config(&lab, "KILL_RUN_CMD=\"sleep 0.05\"");
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp", "-udp"]);
    let (short4, _) = lab.add_attacker_addrs(30);
    // A burst of scan blocks from many sources, killed in the middle.
    let sources: Vec<String> = (50..80).map(|h| lab.add_attacker_addrs(h).0).collect();
    let burst: Vec<_> = sources
        .iter()
        .map(|s| {
            let s = s.clone();
            let lab_att = lab.att.clone();
            let def4 = lab.def4.clone();
            std::thread::spawn(move || {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "exec", &lab_att, "python3", "-c"])
                    .arg(format!(
                        "import socket\ns=socket.socket()\ns.settimeout(2)\ns.bind(('{s}',0))\n\
                         try: s.connect(('{def4}',79))\nexcept Exception: pass"
                    ))
                    .output();
            })
        })
        .collect();
    assert!(
        wait_for(10, || d.count("has been blocked via dropped route") >= 6),
        "{:?}",
        d.lines()
    );
    // A short block that expires while the daemon is down.
    lab.ctl_ok(&["block", &short4, "--for", "3s"]);
    let short_blocked = Instant::now();
    d.signal("KILL");
    let _ = d.wait_exit(5);
    for t in burst {
        let _ = t.join();
    }
    // A torn journal line, as a power loss leaves it.
    let state = lab.path("portsentry.state");
    let mut text = std::fs::read_to_string(&state).unwrap();
    text.push_str("{\"op\":\"block\",\"target\":\"10.77.");
    std::fs::write(&state, text).unwrap();
    // What the journal says is blocked, before the restart.
    let journaled: Vec<String> = sources
        .iter()
        .filter(|s| {
            std::fs::read_to_string(&state)
                .unwrap()
                .contains(&format!("\"{s}/32\""))
        })
        .cloned()
        .collect();
    assert!(
        !journaled.is_empty(),
        "some blocks were journaled before the kill"
    );
    lab.defend(&["ip", "route", "flush", "type", "unreachable"]);
    assert!(!lab.def_routes().contains("unreachable"));
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(short_blocked.elapsed()));

    let started = Instant::now();
    let d2 = Daemon::start(&lab, &["-c", &conf, "-tcp", "-udp"]);
    let all_back = wait_for(5, || journaled.iter().all(|s| has_route(&lab, s)));
    let took = started.elapsed();
    eprintln!(
        "{} blocks back in the route table {took:?} after start",
        journaled.len()
    );
    assert!(all_back, "missing routes: {}", lab.def_routes());
    assert!(took < Duration::from_secs(3), "restore took {took:?}");
    // The daemon's own figure, from reading the journal to the last route: within a second.
    let line = d2.expect_line("block(s) re-applied in ", 5);
    let ms: u64 = line
        .split("re-applied in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(ms < 1000, "{line}");
    d2.expect_line("WARNING: ", 5);
    assert!(
        d2.lines()
            .iter()
            .any(|l| l.contains("portsentry.state:") && l.contains("skipped")),
        "the torn line is named: {:?}",
        d2.lines()
    );
    // The block that expired while down is undone, not re-applied.
    d2.expect_line(
        &format!("Host {short4} has been unblocked (block expired after 3s)"),
        10,
    );
    assert!(!has_route(&lab, &short4));
    assert!(!deny_has(&lab, &short4));
    // Every history line is whole.
    for line in lab.read("portsentry.history").lines() {
        assert!(
            line.ends_with(" TCP Blocked"),
            "torn history line: {line:?}"
        );
    }
    let blocks = list(&lab);
    for s in &journaled {
        assert!(listed(&blocks, s).is_some(), "{s} listed after restart");
    }
    assert!(listed(&blocks, &short4).is_none());
}

#[test]
fn a_failed_block_is_never_called_already_blocked_and_is_retried_on_the_next_probe() {
    let lab = Lab::new();
    let flag = lab.path("route-works");
    let conf = config(
        &lab,
        &format!(
            "KILL_ROUTE=\"test -e {} && /sbin/ip route add unreachable $TARGET$\"\nKILL_HOSTS_DENY=\"\"",
            flag.display()
        ),
    );
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let att = lab.att4.clone();
    lab.connect_from(&att, 79);
    d.expect_line(
        &format!("attackalert: ERROR: Could not block host {att} !!"),
        10,
    );
    lab.connect_from(&att, 111);
    // The second probe tries again (and fails again): no "already blocked".
    assert!(
        wait_for(10, || d.count("Could not block host") >= 2),
        "{:?}",
        d.lines()
    );
    assert_eq!(d.count("is already blocked"), 0, "{:?}", d.lines());
    assert!(lab.read("portsentry.history").is_empty());
    // Once the route can be added, the next probe blocks it (positive control).
    std::fs::write(&flag, "").unwrap();
    lab.connect_from(&att, 31337);
    d.expect_line(
        &format!("Host {att} has been blocked via dropped route"),
        10,
    );
    assert!(has_route(&lab, &att));
    // The history line follows the journal commit, a moment after the responder's line.
    assert!(
        wait_for(10, || lab.read("portsentry.history").lines().count() == 1),
        "{}",
        lab.read("portsentry.history")
    );
    // Now it is blocked for real, and later probes say so.
    lab.defend(&["ip", "route", "del", "unreachable", &att]);
    lab.connect_from(&att, 79);
    d.expect_line(&format!("Host: {att} is already blocked. Ignoring"), 10);
}

#[test]
fn a_hanging_command_delays_only_its_own_host() {
    let lab = Lab::new();
    let (slow, _) = lab.add_attacker_addrs(20);
    let (fast, _) = lab.add_attacker_addrs(21);
    let conf = config(
        &lab,
        &format!(
            "KILL_RUN_CMD=\"case $TARGET$ in {slow}) sleep 20;; esac; true\"\n\
             KILL_CMD_TIMEOUT=\"30s\"\nKILL_RUN_CMD_FIRST=\"1\""
        ),
    );
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    lab.connect_from(&slow, 79);
    d.expect_line(&format!("from host: {slow}/{slow}"), 10);
    let start = Instant::now();
    lab.connect_from(&fast, 79);
    d.expect_line(&format!("External command run for host: {fast}"), 5);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(has_route(&lab, &fast));
    assert_eq!(
        d.count(&format!("External command run for host: {slow}")),
        0,
        "still hanging"
    );
    // Probes of the slow host meanwhile: in progress, not "already blocked".
    lab.connect_from(&slow, 111);
    d.expect_line(&format!("Host: {slow} block in progress. Ignoring"), 5);
}

#[test]
fn a_1_2_blocked_file_is_imported_once_and_its_hosts_blocked_again() {
    let lab = Lab::new();
    let (old, _) = lab.add_attacker_addrs(60);
    std::fs::write(
        lab.path("portsentry.blocked.atcp"),
        format!("942286729 - 11/10/1999 20:18:49 Host: {old}/{old} Port: 111 TCP Blocked\n"),
    )
    .unwrap();
    let conf = config(&lab, "");
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    assert!(
        wait_for(5, || has_route(&lab, &old)),
        "{}",
        lab.def_routes()
    );
    let blocks = list(&lab);
    let b = listed(&blocks, &old).unwrap_or_else(|| panic!("{old} in {blocks:?}"));
    assert_eq!(b["origin"], "import");
    assert!(b["until"].is_null());
    // BLOCKED_FILE lists it again (rewritten at most once a second).
    assert!(wait_for(3, || lab
        .read("portsentry.blocked")
        .contains(&format!("/{old} Port: 111 TCP Blocked"))));
    d.stop();
    // Unblocked by hand, it stays unblocked across a restart: the import happened once.
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    lab.ctl_ok(&["unblock", &old]);
    d.stop();
    let _d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!has_route(&lab, &old), "{}", lab.def_routes());
    assert!(list(&lab).is_empty());
}
