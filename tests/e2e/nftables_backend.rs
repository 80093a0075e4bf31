//! The nftables backend against the real kernel (no daemon): each test opens it on a thread
//! inside the lab's defender namespace and checks what `nft` sees there; packets only cross
//! the lab's veth, between its own 10.77.N.x / fd77:N:: addresses.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use portsentry::respond::nftables::{
    IntervalChanges, NftBackend, NftError, NftSettings, Room, host_of, probe,
};

use crate::lab::Lab;

/// Set in the child process of [`probe_without_cap_net_admin_names_the_capability`].
const CHILD_ENV: &str = "PORTSENTRY_NFT_PROBE_CHILD";

fn settings() -> NftSettings {
    NftSettings::default()
}

/// Opens the backend on a thread in the defender namespace (the socket stays there).
fn open(lab: &Lab, settings: NftSettings) -> Result<NftBackend, NftError> {
    lab.in_def(move || NftBackend::open(&settings))
        .join()
        .expect("open thread")
}

/// `nft <args>` in the defender namespace; its stdout.
pub(crate) fn nft(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["nft"];
    all.extend_from_slice(args);
    lab.defend_stdout(&all)
}

/// `nft list set inet portsentry <set>`.
fn set_text(lab: &Lab, set: &str) -> String {
    nft(lab, &["list", "set", "inet", "portsentry", set])
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// A TCP connection from the attacker namespace to `addr` within 1.5 s.
fn connects(lab: &Lab, addr: SocketAddr) -> bool {
    lab.in_att(move || TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).is_ok())
        .join()
        .expect("attacker thread")
}

const EXPECTED_TABLE: &str = "table inet portsentry {
	set ipv4_addr {
		type ipv4_addr
		size 65536
		flags timeout
	}

	set ipv6_addr {
		type ipv6_addr
		size 65536
		flags timeout
	}

	set ipv4_net {
		type ipv4_addr
		flags interval,timeout
	}

	set ipv6_net {
		type ipv6_addr
		flags interval,timeout
	}

	set fleet_ipv4 {
		type ipv4_addr
		flags timeout
	}

	set fleet_ipv6 {
		type ipv6_addr
		flags timeout
	}

	set fleet_net4 {
		type ipv4_addr
		flags interval,timeout
	}

	set fleet_net6 {
		type ipv6_addr
		flags interval,timeout
	}

	chain input {
		type filter hook input priority filter - 10; policy accept;
		ip saddr @ipv4_addr drop
		ip6 saddr @ipv6_addr drop
		ip saddr @ipv4_net drop
		ip6 saddr @ipv6_net drop
		ip saddr @fleet_ipv4 drop
		ip6 saddr @fleet_ipv6 drop
		ip saddr @fleet_net4 drop
		ip6 saddr @fleet_net6 drop
	}
}
";

#[test]
fn open_creates_exactly_the_documented_table() {
    let lab = Lab::new();
    let _backend = open(&lab, settings()).expect("open");
    assert_eq!(
        nft(&lab, &["list", "table", "inet", "portsentry"]),
        EXPECTED_TABLE
    );
    assert_eq!(nft(&lab, &["list", "tables"]), "table inet portsentry\n");

    // The JSON view agrees: eight sets, one base chain, eight rules.
    let json: serde_json::Value =
        serde_json::from_str(&nft(&lab, &["-j", "list", "table", "inet", "portsentry"]))
            .expect("nft -j output");
    let items = json["nftables"].as_array().expect("nftables array");
    let count = |kind: &str| items.iter().filter(|i| i.get(kind).is_some()).count();
    assert_eq!((count("set"), count("chain"), count("rule")), (8, 1, 8));
    let chain = items.iter().find_map(|i| i.get("chain")).expect("chain");
    assert_eq!(chain["hook"], "input");
    assert_eq!(chain["prio"], -10);
    assert_eq!(chain["policy"], "accept");
}

#[test]
fn opening_again_adds_nothing_and_forward_follows_the_setting() {
    let lab = Lab::new();
    drop(open(&lab, settings()).expect("first open"));
    let first = nft(&lab, &["-a", "list", "table", "inet", "portsentry"]);
    drop(open(&lab, settings()).expect("second open"));
    assert_eq!(
        nft(&lab, &["-a", "list", "table", "inet", "portsentry"]),
        first
    );

    // A rule deleted by hand comes back, alone.
    let handle = first
        .lines()
        .find(|l| l.contains("ip6 saddr @ipv6_addr drop"))
        .and_then(|l| l.rsplit(' ').next())
        .expect("rule handle")
        .to_string();
    nft(
        &lab,
        &[
            "delete",
            "rule",
            "inet",
            "portsentry",
            "input",
            "handle",
            &handle,
        ],
    );
    drop(open(&lab, settings()).expect("open after a rule was deleted"));
    // Appended at the end of the chain: the same lines, in another order.
    let lines = |text: &str| {
        let mut v: Vec<String> = text.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        lines(&nft(&lab, &["list", "table", "inet", "portsentry"])),
        lines(EXPECTED_TABLE)
    );

    let forward = NftSettings {
        forward: true,
        ..settings()
    };
    drop(open(&lab, forward.clone()).expect("open with forward"));
    drop(open(&lab, forward).expect("open with forward again"));
    let text = nft(&lab, &["list", "chain", "inet", "portsentry", "forward"]);
    assert!(text.contains("type filter hook forward priority filter - 10; policy accept;"));
    assert_eq!(
        text.matches("ip saddr @ipv4_addr drop").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("ip6 saddr @ipv6_addr drop").count(),
        1,
        "{text}"
    );

    drop(open(&lab, settings()).expect("open without forward"));
    assert_eq!(
        lines(&nft(&lab, &["list", "table", "inet", "portsentry"])),
        lines(EXPECTED_TABLE)
    );
}

#[test]
fn hosts_carry_their_kernel_timeout_and_expire_in_the_kernel() {
    let lab = Lab::new();
    let mut b = open(&lab, settings()).expect("open");
    b.add(&[
        (ip("10.77.200.9"), Some(Duration::from_secs(2))),
        (ip("fd77:200::9"), None),
        (ip("10.77.200.10"), Some(Duration::from_secs(3600))),
    ])
    .expect("add");
    let set4 = set_text(&lab, "ipv4_addr");
    assert!(set4.contains("10.77.200.9 timeout 2s expires"), "{set4}");
    assert!(set4.contains("10.77.200.10 timeout 1h expires"), "{set4}");
    let set6 = set_text(&lab, "ipv6_addr");
    assert!(set6.contains("elements = { fd77:200::9 }"), "{set6}");

    let listed = b.list().expect("list");
    assert_eq!(listed.len(), 3);
    let left = |a: &str| listed.iter().find(|(x, _)| *x == ip(a)).map(|(_, t)| *t);
    assert!(
        left("10.77.200.9")
            .flatten()
            .is_some_and(|t| t <= Duration::from_secs(2))
    );
    assert!(
        left("10.77.200.10")
            .flatten()
            .is_some_and(|t| t > Duration::from_secs(3500))
    );
    assert_eq!(left("fd77:200::9"), Some(None));

    let deadline = Instant::now() + Duration::from_secs(10);
    while b.list().expect("list").len() == 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = b.list().expect("list");
    assert!(
        !listed.iter().any(|(a, _)| *a == ip("10.77.200.9")),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 2);
    let set4 = set_text(&lab, "ipv4_addr");
    assert!(!set4.contains("10.77.200.9 "), "{set4}");
}

#[test]
fn adding_a_host_again_replaces_its_timeout() {
    let lab = Lab::new();
    let mut b = open(&lab, settings()).expect("open");
    let a = ip("10.77.200.20");
    let left = |b: &NftBackend| {
        b.list()
            .expect("list")
            .into_iter()
            .find(|(x, _)| *x == a)
            .map(|(_, t)| t)
    };
    b.add(&[(a, Some(Duration::from_secs(2)))]).expect("add");
    b.add(&[(a, Some(Duration::from_secs(3600)))])
        .expect("add again");
    assert!(
        left(&b)
            .flatten()
            .is_some_and(|t| t > Duration::from_secs(3500))
    );
    b.add(&[(a, None)]).expect("make permanent");
    assert_eq!(left(&b), Some(None));
    b.add(&[(a, Some(Duration::from_secs(60)))])
        .expect("timed again");
    assert!(
        left(&b)
            .flatten()
            .is_some_and(|t| t <= Duration::from_secs(60))
    );
    // The same host twice in one call: the last timeout wins, no error.
    b.add(&[
        (a, Some(Duration::from_secs(5))),
        (a, Some(Duration::from_secs(600))),
    ])
    .expect("twice in one batch");
    assert!(
        left(&b)
            .flatten()
            .is_some_and(|t| t > Duration::from_secs(500))
    );
    assert_eq!(b.list().expect("list").len(), 1);
}

#[test]
fn deleting_present_and_absent_hosts_succeeds() {
    let lab = Lab::new();
    let mut b = open(&lab, settings()).expect("open");
    b.add(&[
        (ip("10.77.200.30"), None),
        (ip("10.77.200.31"), Some(Duration::from_secs(600))),
        (ip("fd77:200::30"), None),
    ])
    .expect("add");
    b.delete(&[]).expect("nothing to delete");
    b.delete(&[ip("10.77.200.99"), ip("fd77:200::99")])
        .expect("only absent hosts");
    b.delete(&[
        ip("10.77.200.30"),
        ip("10.77.200.98"),
        ip("::ffff:10.77.200.31"),
        ip("fd77:200::30"),
        ip("fd77:200::98"),
    ])
    .expect("present and absent mixed");
    assert_eq!(b.list().expect("list"), vec![]);
    let set4 = set_text(&lab, "ipv4_addr");
    assert!(!set4.contains("elements"), "{set4}");
}

#[test]
fn mapped_ipv6_goes_to_the_ipv4_set_and_networks_are_refused() {
    let lab = Lab::new();
    let mut b = open(&lab, settings()).expect("open");
    b.add(&[(ip("::ffff:10.77.200.40"), None)]).expect("add");
    let set4 = set_text(&lab, "ipv4_addr");
    assert!(set4.contains("elements = { 10.77.200.40 }"), "{set4}");
    assert_eq!(b.list().expect("list"), vec![(ip("10.77.200.40"), None)]);

    assert_eq!(
        host_of("10.77.200.41/32".parse().unwrap()).unwrap(),
        ip("10.77.200.41")
    );
    assert_eq!(
        host_of("fd77:200::41/128".parse().unwrap()).unwrap(),
        ip("fd77:200::41")
    );
    let err = host_of("10.77.200.0/24".parse().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "10.77.200.0/24 is a network; the host sets hold single hosts only"
    );
}

#[test]
fn many_hosts_go_in_one_batch() {
    let lab = Lab::new();
    let mut b = open(&lab, settings()).expect("open");
    let hosts: Vec<(IpAddr, Option<Duration>)> = (0..3000u32)
        .map(|i| {
            (
                IpAddr::from((0x0a4d_0000 + i).to_be_bytes()),
                Some(Duration::from_secs(600)),
            )
        })
        .chain((0..1500u16).map(|i| {
            let a = std::net::Ipv6Addr::new(0xfd77, 0x200, 0, 0, 0, 0, 1, i);
            (IpAddr::V6(a), None)
        }))
        .collect();
    b.add(&hosts).expect("add 4500");
    b.add(&hosts).expect("add the same 4500 again");
    assert_eq!(b.list().expect("list").len(), 4500);
    let addrs: Vec<IpAddr> = hosts.iter().map(|(a, _)| *a).collect();
    b.delete(&addrs).expect("delete 4500");
    assert!(b.list().expect("list").is_empty());

    // Far more absent hosts than the socket has room to hear about one by one, and a few
    // present ones among them.
    b.add(&hosts[..10]).expect("add 10");
    let absent: Vec<IpAddr> = (0..20_000u32)
        .map(|i| IpAddr::from((0x0a4e_0000 + i).to_be_bytes()))
        .chain(addrs[..10].iter().copied())
        .collect();
    b.delete(&absent)
        .expect("delete 20,000 absent and 10 present hosts");
    assert!(b.list().expect("list").is_empty());
}

#[test]
fn a_full_set_refuses_the_whole_batch() {
    let lab = Lab::new();
    let small = NftSettings {
        set_size: 2,
        ..settings()
    };
    let mut b = open(&lab, small).expect("open");
    let err = b
        .add(&[
            (ip("10.77.200.50"), None),
            (ip("10.77.200.51"), None),
            (ip("10.77.200.52"), None),
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            NftError::SetFull {
                set: "ipv4_addr",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        b.list().expect("list").is_empty(),
        "the batch applied in part"
    );
}

#[test]
fn the_admins_own_table_is_untouched() {
    let lab = Lab::new();
    let admin = lab.path("admin.nft");
    std::fs::write(
        &admin,
        "table inet admin {\n\
         \tset trusted { type ipv4_addr; elements = { 10.77.200.7 } }\n\
         \tchain input {\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tip saddr @trusted accept\n\
         \t\ttcp dport 22 accept\n\
         \t}\n\
         }\n",
    )
    .expect("write admin ruleset");
    nft(&lab, &["-f", &admin.display().to_string()]);
    let before = nft(&lab, &["-a", "list", "table", "inet", "admin"]);

    let mut b = open(&lab, settings()).expect("open");
    b.add(&[(ip("10.77.200.7"), None), (ip("fd77:200::7"), None)])
        .expect("add");
    b.delete(&[ip("10.77.200.7"), ip("10.77.200.8")])
        .expect("delete");
    drop(b);
    drop(open(&lab, settings()).expect("open again"));

    assert_eq!(nft(&lab, &["-a", "list", "table", "inet", "admin"]), before);
    assert_eq!(
        nft(&lab, &["list", "tables"]),
        "table inet admin\ntable inet portsentry\n"
    );
}

/// Makes `table inet portsentry` with a set `ipv4_addr` of IPv6 addresses: a set of our
/// name that cannot work.
pub(crate) fn add_unusable_table(lab: &Lab) {
    nft(lab, &["add", "table", "inet", "portsentry"]);
    nft(
        lab,
        &[
            "add",
            "set",
            "inet",
            "portsentry",
            "ipv4_addr",
            "{ type ipv6_addr; }",
        ],
    );
}

#[test]
fn a_set_of_our_name_we_cannot_use_is_reported_not_changed() {
    let lab = Lab::new();
    add_unusable_table(&lab);
    let before = nft(&lab, &["list", "ruleset"]);
    let err = lab
        .in_def(|| probe(&NftSettings::default()))
        .join()
        .expect("probe thread")
        .unwrap_err();
    assert!(matches!(err, NftError::Incompatible { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("set ipv4_addr holds another type of key"),
        "{err}"
    );
    assert!(
        err.to_string().contains("nft delete table inet portsentry"),
        "{err}"
    );
    let err = open(&lab, settings()).err().expect("open must fail");
    assert!(matches!(err, NftError::Incompatible { .. }), "{err}");
    assert_eq!(nft(&lab, &["list", "ruleset"]), before);
}

#[test]
fn a_blocked_source_is_dropped_and_an_unblocked_one_passes() {
    let lab = Lab::new();
    let _service = lab.defender_echo_service(7001);
    let mut b = open(&lab, settings()).expect("open");
    for (def, att) in [(&lab.def4, &lab.att4), (&lab.def6, &lab.att6)] {
        let target = SocketAddr::new(ip(def), 7001);
        let attacker = ip(att);
        assert!(
            connects(&lab, target),
            "positive control: {attacker} -> {target}"
        );
        b.add(&[(attacker, Some(Duration::from_secs(600)))])
            .expect("block");
        assert!(!connects(&lab, target), "{attacker} still reaches {target}");
        b.delete(&[attacker]).expect("unblock");
        // Neighbour discovery was dropped too while blocked: allow it a retry.
        assert!(
            (0..3).any(|_| connects(&lab, target)),
            "{attacker} cannot reach {target} after the unblock"
        );
    }
}

#[test]
fn probe_passes_with_the_capability() {
    let lab = Lab::new();
    lab.in_def(|| probe(&NftSettings::default()))
        .join()
        .expect("probe thread")
        .expect("probe as root");
    // It changes nothing.
    assert_eq!(nft(&lab, &["list", "ruleset"]), "");
    let err = probe(&NftSettings {
        table: "no spaces".into(),
        ..settings()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("table name \"no spaces\""),
        "{err}"
    );
}

/// Runs only as the child of the next test: prints what probe and open say.
#[test]
fn probe_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let probe = probe(&NftSettings::default()).map_err(|e| e.to_string());
    let open = NftBackend::open(&NftSettings::default())
        .map(|_| ())
        .map_err(|e| e.to_string());
    println!("PROBE: {probe:?}");
    println!("OPEN: {open:?}");
}

#[test]
fn probe_without_cap_net_admin_names_the_capability() {
    let lab = Lab::new();
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &lab.def])
        .args(["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"])
        .arg(&exe)
        .args(["--exact", "nftables_backend::probe_child", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child under setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = "Err(\"nftables cannot be used: the kernel refused access (EPERM); changing the \
                firewall needs CAP_NET_ADMIN (run as root, or grant the capability)\")";
    assert!(stdout.contains(&format!("PROBE: {want}")), "{stdout}");
    assert!(stdout.contains(&format!("OPEN: {want}")), "{stdout}");
    assert_eq!(nft(&lab, &["list", "ruleset"]), "");
}

fn net(text: &str) -> ipnet::IpNet {
    text.parse().expect("test network")
}

/// The elements of a fleet set as `nft -j` shows them: (value, timeout in seconds).
pub(crate) fn fleet_elements(lab: &Lab, set: &str) -> Vec<(String, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(&nft(lab, &["-j", "list", "set", "inet", "portsentry", set]))
            .expect("nft -j output");
    let mut out: Vec<(String, u64)> = json["nftables"][1]["set"]["elem"]
        .as_array()
        .map(|elems| {
            elems
                .iter()
                .map(|e| {
                    let e = &e["elem"];
                    let val = match &e["val"] {
                        serde_json::Value::String(s) => s.clone(),
                        v => format!(
                            "{}/{}",
                            v["prefix"]["addr"].as_str().unwrap_or("?"),
                            v["prefix"]["len"]
                        ),
                    };
                    (val, e["timeout"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn the_fleet_room_holds_hosts_and_touching_networks_with_timeouts_in_one_transaction() {
    let lab = Lab::new();
    let mut b = open(&lab, settings()).expect("open");
    let t = |s| Some(Duration::from_secs(s));
    let changes = IntervalChanges {
        flush: false,
        remove: vec![],
        add: vec![
            (net("10.77.0.1/32"), t(600)),
            (net("10.77.0.2/32"), t(700)),
            (net("10.77.1.0/24"), t(800)),
            (net("10.77.2.0/24"), t(850)),
            (net("fd77:9::5/128"), t(900)),
            (net("fd77:8::/64"), t(1000)),
        ],
    };
    b.change_intervals(Room::Fleet, &changes).expect("add");
    // Adding the same elements again (a restart re-applying them) is no error.
    b.change_intervals(Room::Fleet, &changes)
        .expect("add again");
    // Hosts in the host sets, networks (touching ones too) in the interval sets.
    assert_eq!(
        fleet_elements(&lab, "fleet_ipv4"),
        [
            ("10.77.0.1".to_string(), 600),
            ("10.77.0.2".to_string(), 700)
        ]
    );
    assert_eq!(
        fleet_elements(&lab, "fleet_net4"),
        [
            ("10.77.1.0/24".to_string(), 800),
            ("10.77.2.0/24".to_string(), 850)
        ]
    );
    assert_eq!(
        fleet_elements(&lab, "fleet_ipv6"),
        [("fd77:9::5".to_string(), 900)]
    );
    assert_eq!(
        fleet_elements(&lab, "fleet_net6"),
        [("fd77:8::/64".to_string(), 1000)]
    );
    // Reading them back gives the same networks.
    let mut listed: Vec<String> = b
        .list_intervals(Room::Fleet)
        .expect("list")
        .into_iter()
        .map(|(n, left)| {
            assert!(
                left.is_some_and(|l| l > Duration::from_secs(590)),
                "{n}: {left:?}"
            );
            n.to_string()
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "10.77.0.1/32",
            "10.77.0.2/32",
            "10.77.1.0/24",
            "10.77.2.0/24",
            "fd77:8::/64",
            "fd77:9::5/128"
        ]
    );
    // The host sets of the blocks made here are untouched.
    assert!(!set_text(&lab, "ipv4_addr").contains("elements"));

    // One host removed and a network replaced with a new timeout, in one transaction.
    let changes = IntervalChanges {
        flush: false,
        remove: vec![net("10.77.0.1/32"), net("10.77.1.0/24")],
        add: vec![(net("10.77.1.0/24"), t(50))],
    };
    b.change_intervals(Room::Fleet, &changes).expect("change");
    assert_eq!(
        fleet_elements(&lab, "fleet_ipv4"),
        [("10.77.0.2".to_string(), 700)]
    );
    assert_eq!(
        fleet_elements(&lab, "fleet_net4"),
        [
            ("10.77.1.0/24".to_string(), 50),
            ("10.77.2.0/24".to_string(), 850)
        ]
    );

    // An overlapping network is refused, and the whole transaction with it.
    let overlap = IntervalChanges {
        flush: false,
        remove: vec![net("10.77.0.2/32")],
        add: vec![(net("10.77.1.128/25"), t(60))],
    };
    assert!(b.change_intervals(Room::Fleet, &overlap).is_err());
    assert_eq!(
        fleet_elements(&lab, "fleet_ipv4").len(),
        1,
        "nothing changed"
    );
    assert_eq!(
        fleet_elements(&lab, "fleet_net4").len(),
        2,
        "nothing changed"
    );
    // Deleting an absent element fails too (the caller then rewrites with a flush).
    let absent = IntervalChanges {
        remove: vec![net("10.77.0.1/32")],
        ..IntervalChanges::default()
    };
    assert!(b.change_intervals(Room::Fleet, &absent).is_err());

    // A flush and a refill are one transaction.
    let refill = IntervalChanges {
        flush: true,
        remove: vec![],
        add: vec![(net("10.77.3.3/32"), t(30))],
    };
    b.change_intervals(Room::Fleet, &refill).expect("refill");
    assert_eq!(
        fleet_elements(&lab, "fleet_ipv4"),
        [("10.77.3.3".to_string(), 30)]
    );
    for set in ["fleet_ipv6", "fleet_net4", "fleet_net6"] {
        assert!(fleet_elements(&lab, set).is_empty(), "{set}");
    }
}

#[test]
fn a_source_in_a_fleet_network_or_host_set_is_dropped_and_passes_once_removed() {
    let lab = Lab::new();
    let _service = lab.defender_echo_service(7002);
    let mut b = open(&lab, settings()).expect("open");
    let target = SocketAddr::new(ip(&lab.def4), 7002);
    assert!(connects(&lab, target), "positive control");
    // The attacker's /31 (10.77.N.2-3) drops it; the defender (.1) stays outside it.
    let attacker: IpAddr = ip(&lab.att4);
    let net31 = ipnet::IpNet::new(attacker, 31).expect("net").trunc();
    let changes = IntervalChanges {
        add: vec![(net31, Some(Duration::from_secs(600)))],
        ..IntervalChanges::default()
    };
    b.change_intervals(Room::Fleet, &changes).expect("add");
    assert!(
        !connects(&lab, target),
        "{attacker} inside {net31} still connects"
    );
    let changes = IntervalChanges {
        remove: vec![net31],
        ..IntervalChanges::default()
    };
    b.change_intervals(Room::Fleet, &changes).expect("remove");
    assert!(
        (0..3).any(|_| connects(&lab, target)),
        "{attacker} cannot reach {target} after the removal"
    );
    // The same with the attacker as a host of the fleet's host set.
    let host = ipnet::IpNet::from(attacker);
    let changes = IntervalChanges {
        add: vec![(host, Some(Duration::from_secs(600)))],
        ..IntervalChanges::default()
    };
    b.change_intervals(Room::Fleet, &changes).expect("add host");
    assert!(
        !connects(&lab, target),
        "{attacker} in fleet_ipv4 still connects"
    );
    let changes = IntervalChanges {
        remove: vec![host],
        ..IntervalChanges::default()
    };
    b.change_intervals(Room::Fleet, &changes)
        .expect("remove host");
    assert!((0..3).any(|_| connects(&lab, target)));
}
