//! `KILL_NFTABLES`, end to end: the real daemon in the lab's defender namespace puts
//! scanners into its own nftables sets, whose drop rule then stops their packets; unblock,
//! expiry, restart and reload follow the block; an admin's own table is never touched; and
//! an nftables that cannot be used is said once while the other responders keep blocking.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use portsentry::respond::nftables::NftBackend;

use crate::blocks::{list, wait_for};
use crate::lab::{Daemon, Lab};
use crate::nftables_backend::{add_unusable_table, nft};

/// Port of the service the scanner reaches before its block and not after.
const SERVICE: u16 = 7001;

/// Classic TCP traps, `KILL_NFTABLES` only (no route, no hosts.deny, so that what stops
/// the scanner is the set), the extra lines first.
fn config(lab: &Lab, extra: &str) -> String {
    lab.write_config(&format!(
        "{extra}\n\
         TCP_PORTS=\"79,111,31337\"\n\
         BLOCK_TCP=\"1\"\n\
         BLOCK_UDP=\"1\"\n\
         KILL_NFTABLES=\"1\"\n"
    ))
    .display()
    .to_string()
}

/// `nft list set inet <table> <set>`.
fn set_text(lab: &Lab, table: &str, set: &str) -> String {
    nft(lab, &["list", "set", "inet", table, set])
}

/// The set of an address's family.
fn set_for(ip: &str) -> &'static str {
    if ip.contains(':') {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    }
}

/// Whether `nft list set` shows `ip` among the elements of its set in `table`.
fn in_set(lab: &Lab, table: &str, ip: &str) -> bool {
    set_text(lab, table, set_for(ip))
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}'))
        .any(|w| w == ip)
}

/// The element of `ip` in `nft list set` text: `10.77.1.2 timeout 1h expires 59m59s`.
const HOUR: Duration = Duration::from_secs(3600);

/// Whether an element's kernel timeout is `full` or just under it: the daemon gives the
/// kernel the block's time left when the worker runs, a few ms less on a loaded machine.
fn times_out_after(element: &str, full: Duration) -> bool {
    element
        .split(" timeout ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|t| humantime::parse_duration(t).ok())
        .is_some_and(|t| t <= full && t + Duration::from_secs(30) > full)
}

fn element(lab: &Lab, table: &str, ip: &str) -> Option<String> {
    let text = set_text(lab, table, set_for(ip));
    let elements = text.split_once("elements = {")?.1.split('}').next()?;
    elements
        .split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .find(|e| e == ip || e.starts_with(&format!("{ip} ")))
}

/// The hosts in our sets with their time left, read over netlink without changing anything.
fn kernel_list(lab: &Lab, table: &'static str) -> Vec<(IpAddr, Option<Duration>)> {
    lab.in_def(move || NftBackend::attach(table).and_then(|b| b.list()))
        .join()
        .expect("list thread")
        .expect("list the sets")
}

/// The responders a listed block's actions name, for `ip`.
fn listed_responders(lab: &Lab, ip: &str) -> Option<Vec<String>> {
    list(lab)
        .into_iter()
        .find(|b| {
            b["target"]
                .as_str()
                .is_some_and(|t| t == ip || t.starts_with(&format!("{ip}/")))
        })
        .map(|b| {
            b["actions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x["responder"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        })
}

/// A connection from `src` to the service, tried up to 3 times: after an unblock, IPv6
/// neighbour discovery that was dropped meanwhile may need a retry.
fn reaches_service(lab: &Lab, src: &str) -> bool {
    (0..3).any(|_| lab.connect_from(src, SERVICE))
}

#[test]
fn a_scanner_goes_into_the_set_with_its_timeout_is_dropped_and_unblock_lets_it_back() {
    let lab = Lab::new();
    let _service = lab.defender_echo_service(SERVICE);
    let conf = config(&lab, "BLOCK_TIMEOUT=\"1h\"");
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    d.expect_line(
        "adminalert: nftables: blocking in table inet portsentry (sets ipv4_addr and \
         ipv6_addr, 10000 hosts each; hook input)",
        5,
    );
    for att in [lab.att4.clone(), lab.att6.clone()] {
        let set = set_for(&att);
        assert!(
            lab.connect_from(&att, SERVICE),
            "positive control: {att} reaches the service before its scan"
        );
        lab.connect_from(&att, 79);
        d.expect_line(
            &format!(
                "attackalert: Host {att} has been blocked via nftables set inet portsentry {set}"
            ),
            10,
        );
        let e = element(&lab, "portsentry", &att)
            .unwrap_or_else(|| panic!("{att} in {}", set_text(&lab, "portsentry", set)));
        assert!(
            e.starts_with(&format!("{att} timeout ")) && times_out_after(&e, HOUR),
            "{e}"
        );
        assert!(
            !lab.connect_from(&att, SERVICE),
            "{att}'s next connection is dropped"
        );
        assert_eq!(
            listed_responders(&lab, &att),
            Some(vec!["nftables".to_string()])
        );
    }

    for att in [lab.att4.clone(), lab.att6.clone()] {
        lab.ctl_ok(&["unblock", &att]);
        assert!(
            !in_set(&lab, "portsentry", &att),
            "{}",
            set_text(&lab, "portsentry", set_for(&att))
        );
        assert!(reaches_service(&lab, &att), "{att} is let in again");
        d.expect_line(
            &format!("attackalert: Host {att} has been unblocked (by the operator)"),
            5,
        );
    }
    assert!(list(&lab).is_empty());
}

#[test]
fn blocks_stay_in_the_kernel_while_the_daemon_is_down_and_are_loaded_back_at_start() {
    let lab = Lab::new();
    let conf = config(&lab, "");
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let (a4, a6) = lab.add_attacker_addrs(20);
    lab.ctl_ok(&["block", &a4, "--for", "1h"]);
    lab.ctl_ok(&["block", &a6]);
    let e4 = element(&lab, "portsentry", &a4);
    assert!(
        e4.as_deref().is_some_and(|e| times_out_after(e, HOUR)),
        "{e4:?}"
    );
    assert_eq!(
        element(&lab, "portsentry", &a6).as_deref(),
        Some(a6.as_str()),
        "permanent: no timeout"
    );
    d.stop();
    // During the restart the kernel still drops them.
    assert!(in_set(&lab, "portsentry", &a4) && in_set(&lab, "portsentry", &a6));
    assert!(
        !lab.connect_from(&a4, 79),
        "still dropped while the daemon is down"
    );

    // Gone by hand while the daemon was down: the start puts them back in one batch,
    // each with the time it has left.
    nft(&lab, &["flush", "set", "inet", "portsentry", "ipv4_addr"]);
    nft(&lab, &["flush", "set", "inet", "portsentry", "ipv6_addr"]);
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    d.expect_line(
        "adminalert: 2 block(s) loaded into nftables table inet portsentry in ",
        5,
    );
    let kernel = kernel_list(&lab, "portsentry");
    let left = |ip: &str| {
        let ip: IpAddr = lab.addr(ip);
        kernel
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{ip} in {kernel:?}"))
    };
    assert!(
        left(&a4).is_some_and(|t| t > Duration::from_secs(3500) && t <= Duration::from_secs(3600)),
        "{kernel:?}"
    );
    assert_eq!(left(&a6), None, "permanent");
    d.expect_line("adminalert: 2 block(s) re-applied in ", 10);
    assert_eq!(kernel_list(&lab, "portsentry").len(), 2);
    assert!(!lab.connect_from(&a4, 79));
    assert!(d.count("has been blocked via nftables") >= 2);
}

#[test]
fn with_a_2s_block_timeout_the_kernel_drops_the_element_and_list_forgets_the_block() {
    let lab = Lab::new();
    let conf = config(&lab, "BLOCK_TIMEOUT=\"2s\"");
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let att = lab.att4.clone();
    lab.connect_from(&att, 79);
    d.expect_line(&format!("Host {att} is blocked for 2s"), 10);
    let e = element(&lab, "portsentry", &att).expect("in the set");
    assert!(e.starts_with(&format!("{att} timeout 2s expires")), "{e}");
    let t0 = Instant::now();
    assert!(
        wait_for(6, || !in_set(&lab, "portsentry", &att)),
        "the kernel expires the element"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(wait_for(5, || list(&lab).is_empty()), "{:?}", list(&lab));
    d.expect_line(
        &format!("attackalert: Host {att} has been unblocked (block expired after 2s)"),
        5,
    );
    // The manager's undo found the element gone: that is success, not a failure line.
    assert_eq!(d.count("could not undo"), 0, "{:?}", d.lines());
    assert!(lab.connect_from(&att, 111) || d.wait_line("to TCP port: 111", 5).is_some());
}

#[test]
fn the_admins_table_is_untouched_byte_for_byte_by_start_blocks_and_stop() {
    let lab = Lab::new();
    let admin = lab.path("admin.nft");
    std::fs::write(
        &admin,
        "table inet admin {\n\
         \tset trusted { type ipv4_addr; flags timeout; elements = { 10.77.250.7 timeout 1d } }\n\
         \tchain input {\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tip saddr @trusted accept\n\
         \t\ttcp dport 22 accept\n\
         \t\tcounter\n\
         \t}\n\
         \tchain forward {\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t}\n\
         }\n\
         table ip legacy {\n\
         \tchain input { type filter hook input priority 0; }\n\
         }\n",
    )
    .expect("write admin ruleset");
    nft(&lab, &["-f", &admin.display().to_string()]);
    let snapshot = |lab: &Lab| {
        (
            nft(lab, &["-a", "-s", "list", "table", "inet", "admin"]),
            nft(lab, &["-a", "list", "table", "ip", "legacy"]),
        )
    };
    let before = snapshot(&lab);
    let conf = config(
        &lab,
        "BLOCK_TIMEOUT=\"1h\"\nNFTABLES_FORWARD=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"",
    );
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    assert_eq!(snapshot(&lab), before, "after start");
    lab.connect_from(&lab.att4, 79);
    d.expect_line(
        "has been blocked via nftables set inet portsentry ipv4_addr",
        10,
    );
    lab.ctl_ok(&["block", &lab.att6]);
    // A network made by hand goes to the interval set (and the route).
    lab.ctl_ok(&["block", "192.0.2.0/24", "--for", "1h"]);
    assert!(lab.def_routes().contains("unreachable 192.0.2.0/24"));
    assert_eq!(
        listed_responders(&lab, "192.0.2.0"),
        Some(vec!["nftables".to_string(), "route".to_string()])
    );
    assert!(set_text(&lab, "portsentry", "ipv4_net").contains("192.0.2.0/24"));
    assert_eq!(kernel_list(&lab, "portsentry").len(), 2, "hosts");
    lab.ctl_ok(&["unblock", "192.0.2.0/24"]);
    assert!(!set_text(&lab, "portsentry", "ipv4_net").contains("192.0.2.0/24"));
    lab.ctl_ok(&["unblock", &lab.att4]);
    assert_eq!(snapshot(&lab), before, "after blocks and an unblock");
    d.stop();
    assert_eq!(snapshot(&lab), before, "after stop");
    assert_eq!(
        nft(&lab, &["list", "tables"]),
        "table inet admin\ntable ip legacy\ntable inet portsentry\n"
    );
    let chain = nft(&lab, &["list", "chain", "inet", "portsentry", "forward"]);
    assert!(chain.contains("ip6 saddr @ipv6_addr drop"), "{chain}");
}

#[test]
fn nftables_unusable_is_one_error_at_start_and_check_config_and_the_route_still_blocks() {
    let lab = Lab::new();
    // Our table already holds a set of our name that cannot work: opening must fail, and
    // nothing of it may change.
    add_unusable_table(&lab);
    let ruleset = nft(&lab, &["list", "ruleset"]);
    let conf = config(
        &lab,
        "KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"",
    );

    let check = lab.defend(&[crate::lab::binary(), "--check-config", "-c", &conf]);
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(
        check.status.code(),
        Some(0),
        "a warning, not an error: {err}"
    );
    assert!(
        err.contains(
            "KILL_NFTABLES: nftables: table inet portsentry: set ipv4_addr holds another type \
             of key; delete the table (nft delete table inet portsentry) so that portsentry \
             can make it again; the daemon would start and block with the other responders only"
        ),
        "{err}"
    );

    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let att = lab.att4.clone();
    lab.connect_from(&att, 79);
    d.expect_line(
        &format!("attackalert: Host {att} has been blocked via dropped route"),
        10,
    );
    let errors: Vec<String> = d
        .lines()
        .into_iter()
        .filter(|l| l.contains("nftables") || l.contains("KILL_NFTABLES"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(
            "adminalert: ERROR: KILL_NFTABLES: nftables: table inet portsentry: set ipv4_addr \
             holds another type of key"
        ) && errors[0].ends_with(
            "blocking goes on with the other responders (nftables is tried again at the next \
             reload)"
        ),
        "{errors:?}"
    );
    assert_eq!(
        listed_responders(&lab, &att),
        Some(vec!["route".to_string()])
    );
    assert_eq!(nft(&lab, &["list", "ruleset"]), ruleset);

    // Once the admin deletes the table, a reload sets nftables up and new blocks use it.
    nft(&lab, &["delete", "table", "inet", "portsentry"]);
    lab.ctl_ok(&["reload"]);
    d.expect_line("adminalert: nftables: blocking in table inet portsentry", 5);
    lab.ctl_ok(&["block", &lab.att6]);
    assert!(in_set(&lab, "portsentry", &lab.att6));
    assert_eq!(
        listed_responders(&lab, &lab.att6),
        Some(vec!["nftables".to_string(), "route".to_string()])
    );
}

#[test]
fn a_reload_to_another_table_takes_new_blocks_there_and_old_ones_end_where_they_are() {
    let lab = Lab::new();
    let conf = config(&lab, "");
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let (a4, a6) = lab.add_attacker_addrs(30);
    lab.ctl_ok(&["block", &a4, "--for", "1h"]);
    assert!(in_set(&lab, "portsentry", &a4));

    config(&lab, "NFTABLES_TABLE=\"ps2\"");
    lab.ctl_ok(&["reload"]);
    d.expect_line("adminalert: nftables: blocking in table inet ps2", 5);
    lab.ctl_ok(&["block", &a6, "--for", "1h"]);
    assert!(in_set(&lab, "ps2", &a6));
    assert!(!in_set(&lab, "portsentry", &a6));
    // The old block is lifted from the table it was put in.
    lab.ctl_ok(&["unblock", &a4]);
    assert!(!in_set(&lab, "portsentry", &a4));

    // Off: the table stays, and a block in it is still lifted from it.
    config(&lab, "NFTABLES_TABLE=\"ps2\"\nKILL_NFTABLES=\"0\"");
    lab.ctl_ok(&["reload"]);
    d.expect_line(
        "adminalert: nftables: KILL_NFTABLES is off; table inet ps2 stays",
        5,
    );
    lab.ctl_ok(&["unblock", &a6]);
    assert!(!in_set(&lab, "ps2", &a6));
    assert_eq!(
        nft(&lab, &["list", "tables"]),
        "table inet portsentry\ntable inet ps2\n"
    );
}

#[test]
fn block_of_a_blocked_host_for_longer_extends_it_in_the_journal_and_the_kernel() {
    let lab = Lab::new();
    let conf = config(&lab, "");
    let _d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let (a4, _) = lab.add_attacker_addrs(21);
    lab.ctl_ok(&["block", &a4, "--for", "1h"]);
    let first = element(&lab, "portsentry", &a4);
    assert!(
        first.as_deref().is_some_and(|e| times_out_after(e, HOUR)),
        "{first:?}"
    );
    // Shorter than what is in force: refused, the kernel element unchanged.
    let shorter = lab.ctl(&["block", &a4, "--for", "10m"]);
    assert_eq!(shorter.status.code(), Some(1), "{shorter:?}");
    assert!(
        String::from_utf8_lossy(&shorter.stdout).contains("which is later than asked"),
        "{shorter:?}"
    );
    assert!(element(&lab, "portsentry", &a4).is_some_and(|e| times_out_after(&e, HOUR)));
    // Longer: extended, and the kernel gets the new time left.
    let longer = lab.ctl_ok(&["block", &a4, "--for", "3h"]);
    assert!(longer.contains("extended until "), "{longer}");
    let renewed = element(&lab, "portsentry", &a4);
    assert!(
        renewed
            .as_deref()
            .is_some_and(|e| times_out_after(e, 3 * HOUR)),
        "{renewed:?}"
    );
    let listed = crate::blocks::list(&lab);
    let until = listed
        .iter()
        .find(|b| {
            b["target"]
                .as_str()
                .is_some_and(|t| t == a4 || t.starts_with(&format!("{a4}/")))
        })
        .and_then(|b| b["until"].as_str().map(str::to_owned))
        .expect("listed with an end");
    let until = humantime::parse_rfc3339_weak(&until).expect("RFC 3339 end");
    let left = until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(left > 3 * HOUR - Duration::from_secs(60), "{left:?}");
}

#[test]
fn a_network_block_and_a_host_block_inside_it_are_both_elements_and_end_apart() {
    let lab = Lab::new();
    let _service = lab.defender_echo_service(SERVICE);
    let conf = config(&lab, "BLOCK_TIMEOUT=\"1h\"");
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let att = lab.att4.clone();
    assert!(reaches_service(&lab, &att), "positive control");
    // The attacker's /31 (the defender, .1, stays outside it), and the attacker itself.
    let net = format!("{}/31", att);
    lab.ctl_ok(&["block", &net]);
    lab.ctl_ok(&["block", &att]);
    let net_text = format!(
        "{}/31",
        att.rsplit_once('.')
            .map_or(String::new(), |(p, _)| format!("{p}.2"))
    );
    assert!(
        set_text(&lab, "portsentry", "ipv4_net").contains(&net_text),
        "{}",
        set_text(&lab, "portsentry", "ipv4_net")
    );
    assert!(in_set(&lab, "portsentry", &att));
    assert!(!reaches_service(&lab, &att));
    // The network goes; the host block inside it stays and still drops.
    lab.ctl_ok(&["unblock", &net_text]);
    assert!(!set_text(&lab, "portsentry", "ipv4_net").contains(&net_text));
    assert!(in_set(&lab, "portsentry", &att));
    assert!(!lab.connect_from(&att, SERVICE));
    lab.ctl_ok(&["unblock", &att]);
    assert!(reaches_service(&lab, &att), "{:?}", d.syslog());
}
