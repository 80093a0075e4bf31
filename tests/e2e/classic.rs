//! Classic `-tcp` / `-udp` modes, end to end.

use crate::lab::{Daemon, Lab};

/// Trap ports used by these tests (a short list keeps nmap quick).
const TCP_TRAPS: &str = "1,11,15,79,111,31337";
const UDP_TRAPS: &str = "7,9,69,31337";

fn blocking_config(lab: &Lab, extra: &str) -> std::path::PathBuf {
    lab.write_config(&format!(
        "{extra}\n\
         TCP_PORTS=\"{TCP_TRAPS}\"\n\
         UDP_PORTS=\"{UDP_TRAPS}\"\n\
         BLOCK_TCP=\"1\"\n\
         BLOCK_UDP=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n\
         KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n\
         KILL_RUN_CMD=\"echo ran $TARGET$ $PORT$ $MODE$ $PROTO$ >> {out}\"\n",
        out = lab.path("cmd.out").display()
    ))
}

fn conf_arg(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// The 1.2 history line for one host (epoch and local time vary, the rest does not).
/// The history file once it holds a line for `ip`, waiting up to 10 s: the line follows the
/// journal commit, a moment after the responders' log lines.
fn history_with(lab: &Lab, ip: &str) -> String {
    let has = |h: &str| h.contains(&format!("/{ip} Port: "));
    crate::blocks::wait_for(10, || has(&lab.read("portsentry.history")));
    lab.read("portsentry.history")
}

fn assert_history_line(history: &str, ip: &str, proto: &str) {
    let line = history
        .lines()
        .find(|l| l.contains(&format!("/{ip} Port: ")))
        .unwrap_or_else(|| panic!("no history line for {ip} in:\n{history}"));
    let (epoch, rest) = line.split_once(" - ").expect("epoch separator");
    assert!(epoch.parse::<u64>().is_ok(), "epoch in {line}");
    // MM/DD/YYYY HH:MM:SS Host: ip/ip Port: N TCP Blocked
    let parts: Vec<&str> = rest.split(' ').collect();
    assert_eq!(parts[0].len(), 10, "{line}");
    assert_eq!(parts[1].len(), 8, "{line}");
    assert_eq!(parts[2], "Host:");
    assert_eq!(parts[3], format!("{ip}/{ip}"));
    assert_eq!(parts[4], "Port:");
    assert!(parts[5].parse::<u16>().is_ok());
    assert_eq!(&parts[6..], &[proto, "Blocked"], "{line}");
}

#[test]
fn nmap_connect_scan_over_ipv4_is_logged_and_blocked_by_every_responder() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "");
    let mut d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    lab.scan("-sT", TCP_TRAPS, false);
    let att = &lab.att4;
    let line = d.expect_line(
        &format!("attackalert: Connect from host: {att}/{att} to TCP port: "),
        20,
    );
    assert!(line.starts_with("attackalert: "), "{line}");
    d.expect_line(
        &format!("attackalert: Host {att} has been blocked via wrappers with string: \"ALL: {att} : DENY\""),
        10,
    );
    d.expect_line(
        &format!("attackalert: Host {att} has been blocked via dropped route using command: \"/sbin/ip route add unreachable {att}\""),
        10,
    );
    d.expect_line(
        &format!(
            "attackalert: External command run for host: {att} using command: \"echo ran {att} "
        ),
        10,
    );
    assert_eq!(lab.read("hosts.deny"), format!("ALL: {att} : DENY\n"));
    assert!(
        lab.def_routes().contains(&format!("unreachable {att}")),
        "{}",
        lab.def_routes()
    );
    let cmd_out = lab.read("cmd.out");
    assert!(
        cmd_out.starts_with(&format!("ran {att} ")) && cmd_out.trim_end().ends_with(" tcp tcp"),
        "{cmd_out}"
    );
    assert_eq!(
        cmd_out.lines().count(),
        1,
        "one block, one command: {cmd_out}"
    );
    assert_history_line(&history_with(&lab, att), att, "TCP");
    assert_eq!(lab.read("portsentry.history").lines().count(), 1);
    // Later probes of the same scan start no second block: the host is being blocked, or
    // already is. A loaded machine may run nmap so slowly that the route stops every probe
    // after the first; then one more connection, past a route taken away by hand, shows it.
    let already = format!("attackalert: Host: {att} is already blocked. Ignoring");
    let in_progress = format!("attackalert: Host: {att} block in progress. Ignoring");
    let said = |d: &Daemon| d.count(&already) + d.count(&in_progress) > 0;
    if !crate::blocks::wait_for(3, || said(&d)) {
        lab.defend(&["ip", "route", "del", "unreachable", att]);
        lab.connect_from(att, 79);
    }
    assert!(crate::blocks::wait_for(10, || said(&d)), "{:?}", d.lines());
    assert_eq!(lab.read("cmd.out").lines().count(), 1, "still one block");
    assert!(
        lab.read("portsentry.blocked")
            .contains(&format!("/{att} Port: "))
    );
    // The same lines reached syslog, as RFC 3164 daemon.notice from portsentry[pid].
    let connect = d
        .syslog_line("attackalert: Connect from host:")
        .unwrap_or_else(|| panic!("syslog got: {:?}", d.syslog()));
    assert!(
        connect.starts_with("<29>"),
        "facility daemon, level notice: {connect}"
    );
    assert!(connect.contains(" portsentry["), "{connect}");
    d.stop();
    d.expect_line("adminalert: PortSentry is shutting down", 5);
}

#[test]
fn nmap_connect_scan_over_ipv6_is_blocked_with_ipv6_route_and_history() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "");
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp", "-udp"]);
    lab.scan("-sT", TCP_TRAPS, true);
    let att = &lab.att6;
    d.expect_line(
        &format!("attackalert: Connect from host: {att}/{att} to TCP port: "),
        20,
    );
    d.expect_line(
        &format!("attackalert: Host {att} has been blocked via dropped route"),
        10,
    );
    assert!(
        lab.def_routes().contains(&format!("unreachable {att}")),
        "{}",
        lab.def_routes()
    );
    // tcp_wrappers reads an IPv6 client only in brackets.
    assert_eq!(lab.read("hosts.deny"), format!("ALL: [{att}] : DENY\n"));
    // The history line is written once every responder is done: KILL_RUN_CMD runs last.
    d.expect_line(&format!("External command run for host: {att} "), 10);
    assert!(
        crate::blocks::wait_for(5, || lab
            .read("portsentry.history")
            .contains(&format!("/{att} "))),
        "no history line"
    );
    assert_history_line(&history_with(&lab, att), att, "TCP");
}

#[test]
fn nmap_udp_scan_over_ipv4_and_ipv6_is_detected() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "");
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-udp"]);
    lab.scan("-sU", UDP_TRAPS, false);
    let att4 = &lab.att4;
    d.expect_line(
        &format!("attackalert: Connect from host: {att4}/{att4} to UDP port: "),
        20,
    );
    d.expect_line(
        &format!("attackalert: Host {att4} has been blocked via wrappers"),
        10,
    );
    lab.scan("-sU", UDP_TRAPS, true);
    let att6 = &lab.att6;
    d.expect_line(
        &format!("attackalert: Connect from host: {att6}/{att6} to UDP port: "),
        20,
    );
    d.expect_line(
        &format!("attackalert: Host {att6} has been blocked via wrappers"),
        10,
    );
    history_with(&lab, att4);
    let history = history_with(&lab, att6);
    assert_history_line(&history, att4, "UDP");
    assert_history_line(&history, att6, "UDP");
    assert!(lab.read("cmd.out").contains(&format!("ran {att6} ")));
    assert!(lab.read("cmd.out").contains(" udp udp"));
}

#[test]
fn ignore_listed_scanner_is_never_blocked() {
    let lab = Lab::new();
    std::fs::write(
        lab.path("portsentry.ignore"),
        format!(
            "# the scanner, by its /24, masked as 1.2 did\n{}/24 # trailing comment\n",
            lab.att4.rsplit_once('.').unwrap().0.to_string() + ".77"
        ),
    )
    .unwrap();
    std::fs::write(
        lab.path("portsentry.ignore.static"),
        format!("{}\n", lab.att6),
    )
    .unwrap();
    let conf = blocking_config(&lab, "");
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    lab.scan("-sT", TCP_TRAPS, false);
    lab.scan("-sT", TCP_TRAPS, true);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(d.count("attackalert:"), 0, "{:?}", d.lines());
    assert_eq!(lab.read("portsentry.history"), "");
    assert_eq!(lab.read("hosts.deny"), "");
    // Control, same daemon and lists: an address listed nowhere is detected and blocked.
    let (_, other6) = lab.add_attacker_addrs(3);
    lab.connect_from(&other6, 79);
    d.expect_line(
        &format!("attackalert: Connect from host: {other6}/{other6} to TCP port: 79"),
        10,
    );
    d.expect_line(&format!("Host {other6} has been blocked"), 10);
    assert_eq!(
        d.count("attackalert: Connect from host:"),
        1,
        "{:?}",
        d.lines()
    );
}

#[test]
fn scan_trigger_of_three_needs_three_distinct_ports() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "SCAN_TRIGGER=\"3\"");
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    let probe = |port: &str| {
        lab.scan("-sT", port, false);
    };
    probe("11");
    probe("11");
    probe("15");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        d.count("attackalert:"),
        0,
        "two distinct ports must not fire: {:?}",
        d.lines()
    );
    probe("79");
    d.expect_line("to TCP port: 79", 10);
    assert_eq!(
        d.count("attackalert: Connect from host:"),
        1,
        "{:?}",
        d.lines()
    );
}

#[test]
fn block_level_zero_logs_only_and_writes_no_history() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "BLOCK_TCP=\"0\"");
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    lab.scan("-sT", "79", false);
    d.expect_line("to TCP port: 79", 20);
    d.expect_line(
        "attackalert: Ignoring TCP response per configuration file setting.",
        5,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(lab.read("portsentry.history"), "");
    assert_eq!(lab.read("hosts.deny"), "");
    assert_eq!(lab.read("cmd.out"), "");
    assert!(!lab.def_routes().contains("unreachable"));
}

#[test]
fn block_level_two_runs_only_the_external_command() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "BLOCK_TCP=\"2\"");
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    lab.scan("-sT", "79", false);
    d.expect_line("attackalert: External command run for host:", 20);
    assert_eq!(lab.read("hosts.deny"), "");
    assert!(!lab.def_routes().contains("unreachable"));
    assert_eq!(
        lab.read("cmd.out").trim(),
        format!("ran {} 79 tcp tcp", lab.att4)
    );
    assert_history_line(&history_with(&lab, &lab.att4), &lab.att4, "TCP");
}

#[test]
fn failing_kill_route_is_logged_as_a_failure_not_a_success() {
    let lab = Lab::new();
    let conf = blocking_config(
        &lab,
        "KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$ dev nosuchdev0\"\nKILL_HOSTS_DENY=\"\"\nKILL_RUN_CMD=\"\"",
    );
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    lab.scan("-sT", "79", false);
    let failure = d.expect_line(
        &format!("attackalert: ERROR: route failed for host: {}", lab.att4),
        20,
    );
    assert!(failure.contains("exit status"), "{failure}");
    d.expect_line(
        &format!("attackalert: ERROR: Could not block host {} !!", lab.att4),
        5,
    );
    assert_eq!(d.count("has been blocked via dropped route"), 0);
    assert_eq!(lab.read("portsentry.history"), "");
}

#[test]
fn legitimate_connection_to_a_real_service_is_not_reported() {
    let lab = Lab::new();
    // A real service on 111, one of the trap ports, up before the daemon (dual-stack: it
    // holds both families): the daemon must leave the port to it and go on with the rest.
    let _service = lab.spawn_in_def(&["python3", "-m", "http.server", "--bind", "::", "111"]);
    lab.wait_tcp_listener(111);
    let conf = blocking_config(&lab, "");
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp", "-udp"]);
    for url in [
        format!("http://{}:111/", lab.def4),
        format!("http://[{}]:111/", lab.def6),
    ] {
        assert!(lab.fetch(&url), "the real service answered {url}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(d.count("attackalert:"), 0, "{:?}", d.lines());
    // Control, same daemon: a trap port next to it is watched and reported.
    assert!(lab.connect_from(&lab.att4, 79));
    d.expect_line(
        &format!(
            "attackalert: Connect from host: {a}/{a} to TCP port: 79",
            a = lab.att4
        ),
        10,
    );
    assert_eq!(d.count("to TCP port: 111"), 0, "{:?}", d.lines());
}

#[test]
fn blocks_made_by_an_earlier_run_are_re_applied_after_restart() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "");
    let mut d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    lab.scan("-sT", "79", false);
    d.expect_line("has been blocked via wrappers", 20);
    d.stop();
    // The route is lost while the daemon is down (a reboot, `ip route flush`): the restart
    // puts it back, without a second history line or hosts.deny line.
    lab.defend(&["ip", "route", "del", "unreachable", &lab.att4]);
    assert!(
        !lab.def_routes()
            .contains(&format!("unreachable {}", lab.att4))
    );
    let d2 = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !lab
        .def_routes()
        .contains(&format!("unreachable {}", lab.att4))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        lab.def_routes()
            .contains(&format!("unreachable {}", lab.att4)),
        "{}",
        lab.def_routes()
    );
    lab.defend(&["ip", "route", "del", "unreachable", &lab.att4]);
    lab.scan("-sT", "11", false);
    d2.expect_line(
        &format!(
            "attackalert: Host: {} is already blocked. Ignoring",
            lab.att4
        ),
        20,
    );
    assert_eq!(
        lab.read("portsentry.history").lines().count(),
        1,
        "history never truncated, no second block"
    );
    assert_eq!(lab.read("hosts.deny").lines().count(), 1);
}

#[test]
fn hanging_command_is_killed_at_the_timeout_and_the_daemon_goes_on() {
    let lab = Lab::new();
    let conf = blocking_config(
        &lab,
        "KILL_RUN_CMD=\"sleep 60\"\nKILL_CMD_TIMEOUT=\"3s\"\nKILL_ROUTE=\"\"\nKILL_HOSTS_DENY=\"\"",
    );
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    lab.scan("-sT", "79", false);
    d.expect_line("to TCP port: 79", 10);
    // While that command hangs, another scanner is still reported at once.
    lab.scan("-sT", "11", true);
    d.expect_line(
        &format!(
            "attackalert: Connect from host: {0}/{0} to TCP port: 11",
            lab.att6
        ),
        2,
    );
    assert_eq!(
        d.count("failed for host"),
        0,
        "the first command still runs"
    );
    let failure = d.expect_line("attackalert: ERROR: run_cmd failed for host:", 20);
    assert!(failure.contains("timed out after 3s"), "{failure}");
    assert_eq!(lab.read("portsentry.history"), "");
}

#[test]
fn resolve_host_without_a_reachable_dns_logs_the_ip_promptly() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "RESOLVE_HOST=\"1\"\nBLOCK_TCP=\"0\"");
    let d = Daemon::start(&lab, &["-c", &conf_arg(&conf), "-tcp"]);
    let start = std::time::Instant::now();
    lab.scan("-sT", "79", false);
    let att = &lab.att4;
    d.expect_line(
        &format!("attackalert: Connect from host: {att}/{att} to TCP port: 79"),
        10,
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(8));
}
