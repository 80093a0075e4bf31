//! `KILL_HOSTS_DENY` as tcp_wrappers reads it: the real `tcpdmatch` (Debian's tcpd) judges
//! the lines the daemon wrote.

use std::process::Command;

use crate::lab::{Daemon, Lab};

/// `tcpdmatch -d sshd <client>` in the lab directory (`-d` reads hosts.allow and hosts.deny
/// from the current directory): its `access:` verdict, "denied" or "granted".
pub(crate) fn tcpd_verdict(lab: &Lab, client: &str) -> String {
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

#[test]
fn tcpdmatch_denies_the_blocked_ipv4_and_ipv6_clients_and_grants_another() {
    let lab = Lab::new();
    std::fs::write(lab.path("hosts.allow"), "").unwrap();
    let conf = lab.write_config(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nKILL_ROUTE=\"\"\n\
         KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"",
    );
    let d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
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
