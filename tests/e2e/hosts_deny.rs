//! `KILL_HOSTS_DENY` as tcp_wrappers reads it: the real `tcpdmatch` (Debian's tcpd) judges
//! the lines the daemon wrote.

use std::process::Command;

use crate::lab::{Daemon, Lab};

/// `tcpdmatch -d sshd <client>` in the lab directory (`-d` reads hosts.allow and hosts.deny
/// from the current directory): its `access:` verdict, "denied" or "granted".
pub fn tcpd_verdict(lab: &Lab, client: &str) -> String {
    let out = Command::new("tcpdmatch")
        .args(["-d", "sshd", client])
        .current_dir(lab.dir.path())
        .output()
        .expect("tcpdmatch (package tcpd, scripts/setup-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("access:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no access line from tcpdmatch: {text}"))
}

/// `-tcp` on port 79 with the hosts.deny line as the only responder, beside an empty
/// hosts.allow (so that tcpdmatch's verdict comes from the daemon's lines alone).
fn start_wrappers_only(lab: &Lab) -> Daemon {
    std::fs::write(lab.path("hosts.allow"), "").unwrap();
    let conf = lab.write_config(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nKILL_ROUTE=\"\"\n\
         KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"",
    );
    Daemon::start(lab, &["-c", &conf.display().to_string(), "-tcp"])
}

#[test]
fn tcpdmatch_denies_the_blocked_ipv4_and_ipv6_clients_and_grants_another() {
    let lab = Lab::new();
    let d = start_wrappers_only(&lab);
    let (att4, att6) = (lab.att4.clone(), lab.att6.clone());
    lab.connect_from(&att4, 79);
    lab.connect_from(&att6, 79);
    d.expect_line(&format!("Host {att4} has been blocked via wrappers"), 10);
    d.expect_line(&format!("Host {att6} has been blocked via wrappers"), 10);
    let deny = lab.read("hosts.deny");
    // IPv4 as 1.2 wrote it, byte for byte; IPv6 in brackets.
    assert!(deny.contains(&format!("ALL: {att4} : DENY\n")), "{deny}");
    assert!(deny.contains(&format!("ALL: [{att6}] : DENY\n")), "{deny}");
    assert_eq!(tcpd_verdict(&lab, &att4), "denied", "{deny}");
    assert_eq!(tcpd_verdict(&lab, &att6), "denied", "{deny}");
    // Other clients of both families are let through.
    let (other4, other6) = lab.add_attacker_addrs(9);
    assert_eq!(tcpd_verdict(&lab, &other4), "granted", "{deny}");
    assert_eq!(tcpd_verdict(&lab, &other6), "granted", "{deny}");
    // Unblocking takes the bracketed line out again.
    lab.ctl_ok(&["unblock", &att6]);
    assert!(
        !lab.read("hosts.deny").contains(&att6),
        "{}",
        lab.read("hosts.deny")
    );
    assert_eq!(tcpd_verdict(&lab, &att6), "granted");
}

#[test]
fn tcpdmatch_denies_clients_inside_blocked_networks_of_both_families_until_unblocked() {
    let lab = Lab::new();
    let _d = start_wrappers_only(&lab);
    let n = lab.net();
    // Networks beside the lab's own (which hold the defender's addresses: refused).
    let (net4, net6) = (format!("10.78.{n}.0/24"), format!("fd77:{n}:1::/64"));
    // Inside each network, and beside it (the positive control: a line that matched
    // everyone would deny these too).
    let inside = [format!("10.78.{n}.200"), format!("fd77:{n}:1::5:200")];
    let outside = [format!("10.77.{n}.200"), format!("fd77:{n}:2::200")];
    lab.ctl_ok(&["block", &net4, &net6, "--for", "1h"]);
    let deny = lab.read("hosts.deny");
    // tcpd matches an IPv4 network only as net/mask, an IPv6 one only bracketed.
    assert!(
        deny.contains(&format!("ALL: 10.78.{n}.0/255.255.255.0 : DENY\n")),
        "{deny}"
    );
    assert!(
        deny.contains(&format!("ALL: [fd77:{n}:1::]/64 : DENY\n")),
        "{deny}"
    );
    for client in &inside {
        assert_eq!(tcpd_verdict(&lab, client), "denied", "{client}: {deny}");
    }
    for client in &outside {
        assert_eq!(tcpd_verdict(&lab, client), "granted", "{client}: {deny}");
    }
    lab.ctl_ok(&["unblock", &net4]);
    lab.ctl_ok(&["unblock", &net6]);
    let deny = lab.read("hosts.deny");
    assert!(!deny.contains(&format!("10.78.{n}.0")), "{deny}");
    assert!(!deny.contains(&format!("fd77:{n}:1::")), "{deny}");
    for client in &inside {
        assert_eq!(tcpd_verdict(&lab, client), "granted", "{client}: {deny}");
    }
}
