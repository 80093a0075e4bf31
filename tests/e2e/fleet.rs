//! The fleet, end to end, against the real CrowdSec Local API (Debian's `crowdsec` 1.4.6,
//! unpacked by scripts/setup-deps.sh, started by each test inside its lab's defender
//! namespace with its own temp dir; nothing leaves the namespaces): blocks pushed as
//! decisions and deleted exactly, decisions pulled and applied as routes and lifted, ranges
//! v4 and v6, protected addresses, a LAPI down for 30 s, a LAPI answering 500 or garbage, and
//! two daemons sharing one LAPI (each deleting only its own decision for a shared scanner).

pub mod lapi;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::blocks::wait_for;
use crate::lab::{Daemon, Lab};
use lapi::{LapiServer, daemon_config, has_route, time_until};

/// Where the LAPI listens inside a defender namespace (the namespace is the test's own, so
/// the port is free).
const LISTEN: &str = "127.0.0.1:8080";

/// A LAPI in the lab with bouncer `host-a`, and a daemon that only pulls from it (1 s polls).
pub(crate) fn pulling_daemon(lab: &Lab) -> (LapiServer, Daemon) {
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &["host-a"]);
    lapi.start();
    let fleet = lapi.daemon_config(lab.dir.path(), false, Some("host-a"), "1s");
    let conf = daemon_config(lab, &fleet);
    let d = Daemon::start(lab, &["-c", &conf, "-tcp"]);
    (lapi, d)
}

#[test]
fn a_scan_becomes_a_decision_and_unblock_deletes_only_it() {
    let lab = Lab::new();
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &[]);
    lapi.start();
    let fleet = lapi.daemon_config(lab.dir.path(), true, None, "1s");
    let conf = daemon_config(&lab, &fleet);
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let att = lab.att4.clone();

    let probed = Instant::now();
    lab.connect_from(&att, 79);
    let seen = time_until(Duration::from_secs(5), || {
        !lapi.decisions_for(&att).is_empty()
    });
    let took = seen.unwrap_or_else(|| panic!("no decision for {att}: {:?}", d.syslog()));
    assert!(
        took < Duration::from_secs(2),
        "decision visible after {took:?}"
    );
    eprintln!(
        "scan -> decision visible in GET /v1/decisions: {:?} after the probe",
        probed.elapsed().min(took)
    );
    let ours = lapi.decisions_for(&att);
    assert_eq!(ours.len(), 1, "{ours:?}");
    let dec = &ours[0];
    assert_eq!(dec["origin"], "portsentry");
    assert_eq!(dec["scope"], "Ip");
    assert_eq!(dec["type"], "ban");
    assert_eq!(dec["scenario"], "portsentry/port-scan");
    let left = dec["duration"].as_str().unwrap();
    assert!(
        left.starts_with("59m") || left.starts_with("1h0m0s"),
        "{left}"
    );
    // The alert carries its evidence: `cscli alerts inspect -d` shows the probe.
    let alerts = lapi.cscli_ok(&["alerts", "list", "-o", "json", "-a"]);
    let alerts: Vec<serde_json::Value> = serde_json::from_str(&alerts).expect("alerts json");
    let alert = alerts
        .iter()
        .find(|a| a["source"]["value"] == att.as_str())
        .unwrap_or_else(|| panic!("no alert for {att}: {alerts:?}"));
    let id = alert["id"].to_string();
    let inspected = lapi.cscli_ok(&["alerts", "inspect", "-d", "-o", "json", &id]);
    let inspected: serde_json::Value = serde_json::from_str(&inspected).expect("inspect json");
    let meta = &inspected["events"][0]["meta"];
    let has = |k: &str, v: &str| {
        meta.as_array()
            .is_some_and(|m| m.iter().any(|p| p["key"] == k && p["value"] == v))
    };
    assert!(
        has("destination_port", "79")
            && has("protocol", "tcp")
            && has("mode", "tcp")
            && has("probe", "TCP connect")
            && has("source_ip", &att),
        "{inspected}"
    );
    assert!(
        inspected["events"][0]["timestamp"].is_string(),
        "{inspected}"
    );
    assert!(
        d.wait_line("CrowdSec LAPI", 1)
            .is_some_and(|l| l.contains("connected"))
    );
    let status = lab.ctl_ok(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("crowdsec push:") && l.contains(": connected since")),
        "{status}"
    );

    // A range covering the scanner, from elsewhere in the fleet, must survive the unblock.
    let net = format!("{}.0/24", att.rsplit_once('.').unwrap().0);
    lapi.cscli_ok(&["decisions", "add", "--range", &net, "--duration", "1h"]);
    assert_eq!(
        lapi.decisions(Some(&att)).len(),
        2,
        "the Ip and the Range one"
    );
    lab.ctl_ok(&["unblock", &att]);
    assert!(
        wait_for(2, || lapi.decisions_for(&att).is_empty()),
        "the Ip decision is deleted: {:?}",
        lapi.decisions(Some(&att))
    );
    let left = lapi.decisions(Some(&att));
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (&left[0]["scope"], &left[0]["value"]),
        (&"Range".into(), &net.clone().into())
    );
    // A network blocked by hand is a Range decision of scenario portsentry/manual.
    lab.ctl_ok(&["block", "198.51.100.0/24", "--reason", "noisy"]);
    assert!(wait_for(2, || !lapi
        .decisions_for("198.51.100.0/24")
        .is_empty()));
    let manual = &lapi.decisions_for("198.51.100.0/24")[0];
    assert_eq!(
        (&manual["scope"], &manual["scenario"]),
        (&"Range".into(), &"portsentry/manual".into())
    );
}

#[test]
fn a_cscli_decision_is_applied_within_a_poll_and_lifted_when_deleted() {
    let lab = Lab::new();
    let (lapi, d) = pulling_daemon(&lab);
    d.expect_line("CrowdSec LAPI http://127.0.0.1:8080: connected (pull)", 5);
    let ip = "10.77.250.9";
    let added = Instant::now();
    lapi.cscli_ok(&[
        "decisions",
        "add",
        "--ip",
        ip,
        "--duration",
        "30s",
        "--reason",
        "t",
    ]);
    let took = time_until(Duration::from_secs(5), || has_route(&lab, ip))
        .unwrap_or_else(|| panic!("{ip} not applied: {:?}", d.syslog()));
    eprintln!(
        "cscli decisions add -> route: {:?}",
        added.elapsed().min(took)
    );
    assert!(
        took < Duration::from_secs(2),
        "applied {took:?} after cscli returned (poll 1s)"
    );
    // A kernel element of the fleet's own, counted per origin; no block of the manager.
    let list = lab.ctl_ok(&["list"]);
    assert!(list.starts_with("no blocks in force\n"), "{list}");
    assert!(
        list.contains("fleet: 1 decisions in force (cscli 1), 1 elements in routes"),
        "{list}"
    );
    let status = lab.ctl_ok(&["status"]);
    assert!(
        status.contains("crowdsec decisions: 1 decisions in force (cscli 1)"),
        "{status}"
    );

    lapi.cscli_ok(&["decisions", "delete", "--ip", ip]);
    assert!(
        wait_for(3, || !has_route(&lab, ip)),
        "lifted after deletion: {}",
        lab.def_routes()
    );
    let list = lab.ctl_ok(&["list"]);
    assert!(
        list.contains("no blocks in force\nfleet: 0 decisions in force"),
        "{list}"
    );
}

#[test]
fn range_decisions_are_applied_for_v4_and_v6_and_a_local_block_is_never_lifted_by_the_fleet() {
    let lab = Lab::new();
    let (lapi, d) = pulling_daemon(&lab);
    let att = lab.att4.clone();
    lab.connect_from(&att, 79);
    assert!(wait_for(5, || has_route(&lab, &att)), "{:?}", d.syslog());
    for net in ["10.99.0.0/16", "fd99:1::/48"] {
        lapi.cscli_ok(&["decisions", "add", "--range", net, "--duration", "1h"]);
    }
    // A decision for the address this host blocked itself: the block stays a scan block.
    lapi.cscli_ok(&["decisions", "add", "--ip", &att, "--duration", "1h"]);
    for net in ["10.99.0.0/16", "fd99:1::/48"] {
        assert!(
            wait_for(3, || has_route(&lab, net)),
            "{net}: {}",
            lab.def_routes()
        );
    }
    for net in ["10.99.0.0/16", "fd99:1::/48"] {
        lapi.cscli_ok(&["decisions", "delete", "--range", net]);
    }
    lapi.cscli_ok(&["decisions", "delete", "--ip", &att]);
    for net in ["10.99.0.0/16", "fd99:1::/48"] {
        assert!(
            wait_for(3, || !has_route(&lab, net)),
            "{net}: {}",
            lab.def_routes()
        );
    }
    // Two more polls: the deletion of the decision for the scanner lifted nothing.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        has_route(&lab, &att),
        "the scan block stays: {}",
        lab.def_routes()
    );
    let list = lab.ctl_ok(&["list"]);
    let row = list.lines().find(|l| l.starts_with(&att)).unwrap();
    assert!(row.contains(" scan "), "{row}");
}

#[test]
fn a_decision_for_a_protected_or_ignored_address_is_refused_counted_and_named_at_debug_only() {
    let lab = Lab::new();
    let ignored = "10.77.250.50";
    std::fs::write(
        lab.path("portsentry.ignore"),
        format!("127.0.0.1/32\n0.0.0.0\n{ignored}\n"),
    )
    .unwrap();
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &["host-a"]);
    lapi.start();
    let fleet = lapi.daemon_config(lab.dir.path(), false, Some("host-a"), "1s");
    let conf = daemon_config(&lab, &fleet);
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp", "--debug"]);
    let own = lab.def4.clone();
    let control = "10.77.250.9";
    for ip in [own.as_str(), ignored, control] {
        lapi.cscli_ok(&["decisions", "add", "--ip", ip, "--duration", "1h"]);
    }
    // Positive control: the ordinary address of the same stream is applied.
    assert!(wait_for(3, || has_route(&lab, control)), "{:?}", d.syslog());
    assert!(
        wait_for(3, || lab.ctl_ok(&["list"]).contains("2 refused")),
        "{}",
        lab.ctl_ok(&["list"])
    );
    // Named at --debug, with why.
    let own_line = d.expect_line(&format!("CrowdSec decision for {own} (pulled)"), 1);
    assert!(own_line.contains("this host's own address"), "{own_line}");
    let ignored_line = d.expect_line(&format!("CrowdSec decision for {ignored} (pulled)"), 1);
    assert!(
        ignored_line.contains("in the ignore list"),
        "{ignored_line}"
    );
    // The pull lines count them.
    assert!(
        d.syslog()
            .iter()
            .any(|l| l.contains("CrowdSec pull:") && l.contains(" refused")),
        "{:?}",
        d.syslog()
    );
    assert!(!has_route(&lab, &own) && !has_route(&lab, ignored));
    let list = lab.ctl_ok(&["list"]);
    assert!(
        list.contains("fleet: 1 decisions in force (cscli 1), 1 elements in routes, 2 refused"),
        "{list}"
    );
}

#[test]
fn blocks_made_while_the_lapi_is_down_for_30s_all_arrive_once_and_none_twice() {
    let lab = Lab::new();
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &[]);
    lapi.start();
    let fleet = lapi.daemon_config(lab.dir.path(), true, None, "1s");
    let conf = daemon_config(&lab, &fleet);
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let addrs: Vec<String> = (3..=7).map(|h| lab.add_attacker_addrs(h).0).collect();
    // While up: delivered at once.
    lab.connect_from(&addrs[0], 79);
    assert!(wait_for(3, || lapi.decisions_for(&addrs[0]).len() == 1));

    lapi.stop();
    let down = Instant::now();
    lab.connect_from(&addrs[1], 79);
    assert!(
        wait_for(3, || has_route(&lab, &addrs[1])),
        "blocking goes on"
    );
    lab.ctl_ok(&["block", "10.77.250.80", "--for", "1h"]);
    // Blocked and unblocked while down: posted then deleted, so absent in the end.
    lab.connect_from(&addrs[2], 79);
    assert!(wait_for(3, || has_route(&lab, &addrs[2])));
    lab.ctl_ok(&["unblock", &addrs[2]]);
    d.expect_line(
        "CrowdSec LAPI http://127.0.0.1:8080: unreachable (connection refused)",
        5,
    );
    let status = lab.ctl_ok(&["status"]);
    assert!(
        status.contains("http://127.0.0.1:8080: failing, retrying since"),
        "{status}"
    );
    // A restart meanwhile: the outbox keeps what was not delivered.
    d.stop();
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    lab.connect_from(&addrs[3], 79);
    assert!(wait_for(3, || has_route(&lab, &addrs[3])));
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    assert!(
        d.count("unreachable (connection refused)") <= 1,
        "said once per change"
    );

    lapi.start();
    let expected = [
        addrs[0].as_str(),
        addrs[1].as_str(),
        "10.77.250.80",
        addrs[3].as_str(),
    ];
    let arrived = wait_for(20, || {
        expected.iter().all(|a| !lapi.decisions_for(a).is_empty())
    });
    assert!(
        arrived,
        "all arrive: {:?}\n{:?}",
        lapi.decisions(None),
        d.syslog()
    );
    // Let any duplicate show up, then count.
    std::thread::sleep(Duration::from_secs(2));
    for a in expected {
        assert_eq!(
            lapi.decisions_for(a).len(),
            1,
            "{a}: {:?}",
            lapi.decisions(None)
        );
    }
    assert!(
        lapi.decisions_for(&addrs[2]).is_empty(),
        "{:?}",
        lapi.decisions(None)
    );
    // None twice: one alert each (`-a`: origins other than crowdsec and cscli too).
    let alerts = lapi.cscli_ok(&["alerts", "list", "-o", "json", "-a"]);
    let alerts: Vec<serde_json::Value> = serde_json::from_str(&alerts).unwrap_or_default();
    for a in expected {
        let n = alerts.iter().filter(|x| x["source"]["value"] == a).count();
        assert_eq!(n, 1, "alerts for {a}: {alerts:?}");
    }
    d.expect_line(
        "CrowdSec LAPI http://127.0.0.1:8080: reachable again (push)",
        1,
    );
    d.stop();
}

/// A fake LAPI on loopback in the defender namespace answering every request with
/// `answer`; counts the requests.
struct FakeLapi {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeLapi {
    fn start(lab: &Lab, port: u16, answer: &'static [u8]) -> FakeLapi {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&requests));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let thread = lab.in_def(move || {
            let l = TcpListener::bind(("127.0.0.1", port)).expect("bind the fake LAPI");
            l.set_nonblocking(true).unwrap();
            let _ = tx.send(());
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_millis(200)))
                            .unwrap();
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(answer);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("fake LAPI up");
        FakeLapi {
            stop,
            requests,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeLapi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Median time from a probe to its route, over three scanners (hosts `first`..`first+2`).
fn median_scan_to_block(lab: &Lab, first: u8) -> Duration {
    let mut times: Vec<Duration> = (first..first + 3)
        .map(|h| {
            let (a4, _) = lab.add_attacker_addrs(h);
            let t = Instant::now();
            lab.connect_from(&a4, 79);
            time_until(Duration::from_secs(5), || has_route(lab, &a4))
                .map(|_| t.elapsed())
                .unwrap_or_else(|| panic!("{a4} not blocked"))
        })
        .collect();
    times.sort();
    times[1]
}

#[test]
fn a_lapi_answering_500_or_garbage_does_not_slow_detection() {
    let lab = Lab::new();
    let conf = daemon_config(&lab, "");
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let baseline = median_scan_to_block(&lab, 10);
    d.stop();
    for (port, first, answer) in [
        (
            8081,
            20,
            &b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"[..],
        ),
        (
            8082,
            30,
            &b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n<html>?</ht"[..],
        ),
    ] {
        let fake = FakeLapi::start(&lab, port, answer);
        let secret = lab.path("secret");
        std::fs::write(&secret, "x\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fleet = format!(
            "CROWDSEC_LAPI_URL=\"http://127.0.0.1:{port}\"\nCROWDSEC_POLL_INTERVAL=\"1s\"\n\
             CROWDSEC_MACHINE_ID=\"m\"\nCROWDSEC_PASSWORD_FILE=\"{s}\"\n\
             CROWDSEC_BOUNCER_KEY_FILE=\"{s}\"\n",
            s = secret.display()
        );
        let conf = daemon_config(&lab, &fleet);
        let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
        let with_fake = median_scan_to_block(&lab, first);
        eprintln!("scan -> block: {baseline:?} without a fleet, {with_fake:?} with a LAPI answering {:?}", String::from_utf8_lossy(&answer[9..12]));
        assert!(
            with_fake < (baseline * 2).max(baseline + Duration::from_millis(500)),
            "{with_fake:?} vs {baseline:?}"
        );
        assert!(fake.requests.load(Ordering::SeqCst) >= 2, "the daemon did talk to it");
        assert!(wait_for(3, || d.count("will retry (push)") == 1));
        assert_eq!(d.count("will retry (pull)"), 1, "said once: {:?}", d.syslog());
        d.stop();
    }
}

#[test]
fn a_scan_of_one_host_gets_the_scanner_blocked_on_the_other() {
    let (a, b) = (Lab::new(), Lab::new());
    let (here, _) = a.link_defenders(&b);
    let listen = format!("{here}:8080");
    let mut lapi = LapiServer::new(&a.def, &listen, &["host-a", "host-b"]);
    lapi.start();
    let conf_a = daemon_config(
        &a,
        &lapi.daemon_config(a.dir.path(), true, Some("host-a"), "2s"),
    );
    let conf_b = daemon_config(
        &b,
        &lapi.daemon_config(b.dir.path(), true, Some("host-b"), "2s"),
    );
    let da = Daemon::start(&a, &["-c", &conf_a, "-tcp"]);
    let db = Daemon::start(&b, &["-c", &conf_b, "-tcp"]);
    db.expect_line("connected (pull)", 5);
    let scanner = a.att4.clone();
    let probed = Instant::now();
    a.connect_from(&scanner, 79);
    let took = time_until(Duration::from_secs(6), || has_route(&b, &scanner))
        .map(|_| probed.elapsed())
        .unwrap_or_else(|| panic!("not blocked on B: {:?}\n{:?}", da.syslog(), db.syslog()));
    eprintln!("first probe on A -> block on B: {took:?} (poll 2s)");
    assert!(
        took < Duration::from_secs(3),
        "{took:?}: over one poll interval plus 1 s"
    );
    let row = b.ctl_ok(&["list"]);
    assert!(
        row.contains("fleet: 1 decisions in force (portsentry 1)"),
        "{row}"
    );
    // A's own decision came back to A and was not applied twice; B pushed nothing back.
    std::thread::sleep(Duration::from_secs(3));
    let rows_a = a.ctl_ok(&["list"]);
    assert_eq!(rows_a.lines().count(), 3, "{rows_a}");
    assert!(rows_a.contains(" scan "), "{rows_a}");
    assert!(rows_a.contains("fleet: 0 decisions in force"), "{rows_a}");
    assert_eq!(
        lapi.decisions_for(&scanner).len(),
        1,
        "{:?}",
        lapi.decisions(None)
    );
}

#[test]
fn two_hosts_blocking_the_same_scanner_each_delete_only_their_own_decision() {
    let (a, b) = (Lab::new(), Lab::new());
    let (here, _) = a.link_defenders(&b);
    let listen = format!("{here}:8080");
    let mut lapi = LapiServer::new(&a.def, &listen, &[]);
    lapi.start();
    // Push only: with pull, B would already block the scanner from A's decision and its
    // own scan would push nothing.
    let conf_a = daemon_config(&a, &lapi.daemon_config(a.dir.path(), true, None, "1s"));
    let conf_b = daemon_config(&b, &lapi.daemon_config(b.dir.path(), true, None, "1s"));
    let da = Daemon::start(&a, &["-c", &conf_a, "-tcp"]);
    let db = Daemon::start(&b, &["-c", &conf_b, "-tcp"]);
    // The same scanner address probes both hosts: A's attacker address is given to B's
    // attacker too, and B's defender routes it there.
    let scanner = a.att4.clone();
    crate::lab::sh(&[
        "ip",
        "-n",
        &b.att,
        "addr",
        "add",
        &format!("{scanner}/32"),
        "dev",
        &b.att_dev,
    ]);
    let net = format!("{}.0/24", scanner.rsplit_once('.').unwrap().0);
    crate::lab::sh(&["ip", "-n", &b.def, "route", "add", &net, "via", &b.att4]);

    a.connect_from(&scanner, 79);
    assert!(
        wait_for(5, || lapi.decisions_for(&scanner).len() == 1),
        "A's decision: {:?}\n{:?}",
        lapi.decisions(None),
        da.syslog()
    );
    let id_a = lapi.decisions_for(&scanner)[0]["id"].clone();
    b.connect_from(&scanner, 79);
    assert!(
        wait_for(5, || lapi.decisions_for(&scanner).len() == 2),
        "B's decision too: {:?}\n{:?}",
        lapi.decisions(None),
        db.syslog()
    );
    let ids = |lapi: &LapiServer| -> Vec<serde_json::Value> {
        lapi.decisions(Some(&scanner))
            .iter()
            .map(|d| d["id"].clone())
            .collect()
    };
    let both = ids(&lapi);
    // Positive control: A's decision is there before the unblock.
    assert!(both.contains(&id_a), "{both:?}");
    let id_b = both.iter().find(|i| **i != id_a).cloned().unwrap();
    assert!(has_route(&a, &scanner) && has_route(&b, &scanner));

    a.ctl_ok(&["unblock", &scanner]);
    assert!(
        wait_for(3, || !ids(&lapi).contains(&id_a)),
        "A's decision is deleted: {:?}\n{:?}",
        lapi.decisions(Some(&scanner)),
        da.syslog()
    );
    // Let a wrong delete show up, then look again: B's decision is still active.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ids(&lapi), [id_b], "{:?}", lapi.decisions(None));
    assert_eq!(lapi.decisions_for(&scanner)[0]["origin"], "portsentry");
    assert_eq!(
        da.count("deleted by scope, value and origin"),
        0,
        "no fallback: {:?}",
        da.syslog()
    );
    assert!(has_route(&b, &scanner), "B still blocks it");
}

#[test]
fn a_reload_starts_the_fleet_and_a_world_readable_key_is_refused_unread() {
    let lab = Lab::new();
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &["host-a"]);
    lapi.start();
    let conf = daemon_config(&lab, "");
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let ip = "10.77.250.9";
    lapi.cscli_ok(&["decisions", "add", "--ip", ip, "--duration", "1h"]);

    let fleet = lapi.daemon_config(lab.dir.path(), false, Some("host-a"), "1s");
    let key = lab.path("crowdsec.bouncer-key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    daemon_config(&lab, &fleet);
    lab.ctl_ok(&["reload"]);
    d.expect_line("CROWDSEC_BOUNCER_KEY_FILE", 5);
    assert!(
        d.syslog_line("readable by every user (mode 0644)")
            .is_some_and(|l| l.contains("CrowdSec pull is off")),
        "{:?}",
        d.syslog()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!has_route(&lab, ip), "no pull with a refused key");

    // Positive control: the same set-up with the key made private.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    lab.ctl_ok(&["reload"]);
    assert!(wait_for(4, || has_route(&lab, ip)), "{:?}", d.syslog());
    d.expect_line("restarting the fleet threads", 1);
    let logged = format!("{:?}{:?}", d.syslog(), d.lines());
    assert!(
        !logged.contains("host-a-key"),
        "the key never shows in a log"
    );
}

/// The nameserver of the resolv.conf [`nft_pulling_daemon`] writes: a protected address.
const LAB_RESOLVER: &str = "10.77.253.53";

/// `count` ban decisions for hosts of 10.88.0.0/16 (250 a /24: 10.88.x.1-250) as a CSV for
/// `cscli decisions import` (origin `cscli-import`), plus `extra` values.
fn import_hosts(lab: &Lab, lapi: &LapiServer, count: u32, extra: &[&str]) {
    let mut text = String::from("duration,scope,value\n");
    for i in 0..count {
        text.push_str(&format!("4h,Ip,10.88.{}.{}\n", i / 250, i % 250 + 1));
    }
    for value in extra {
        text.push_str(&format!("4h,Ip,{value}\n"));
    }
    let csv = lab.path("decisions.csv");
    std::fs::write(&csv, text).expect("write the import");
    lapi.cscli_ok(&["decisions", "import", "-i", &csv.display().to_string()]);
}

/// A daemon with the shipped responders (`KILL_NFTABLES`, `KILL_ROUTE`, `KILL_HOSTS_DENY`)
/// pulling every second, with `extra` config lines.
fn nft_pulling_daemon(lab: &Lab, lapi: &LapiServer, extra: &str) -> Daemon {
    let fleet = lapi.daemon_config(lab.dir.path(), false, Some("host-a"), "1s");
    let resolv = lab.path("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {LAB_RESOLVER}\n")).expect("resolv.conf");
    let conf = daemon_config(
        lab,
        &format!(
            "{fleet}{extra}KILL_NFTABLES=\"1\"\nKILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n\
             RESOLV_CONF=\"{}\"\n",
            resolv.display()
        ),
    );
    Daemon::start(lab, &["-c", &conf, "-tcp"])
}

/// The hosts of the fleet's IPv4 set.
fn fleet_v4(lab: &Lab) -> Vec<String> {
    crate::nftables_backend::fleet_elements(lab, "fleet_ipv4")
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

#[test]
fn twelve_thousand_pulled_decisions_are_one_batch_in_their_own_sets_and_a_scan_still_finds_room() {
    let lab = Lab::new();
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &["host-a"]);
    lapi.start();
    // 12,000 decisions, one for this host's own address and one for its nameserver (a
    // protected address): those two refused and counted.
    let own = lab.def4.clone();
    import_hosts(&lab, &lapi, 12_000, &[&own, LAB_RESOLVER]);
    let started = Instant::now();
    let d = nft_pulling_daemon(&lab, &lapi, "");
    let took = time_until(Duration::from_secs(10), || fleet_v4(&lab).len() == 12_000)
        .map(|_| started.elapsed())
        .unwrap_or_else(|| panic!("{} in the set: {:?}", fleet_v4(&lab).len(), d.syslog()));
    eprintln!("12,000 decisions in the kernel {took:?} after the daemon was started");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Each element carries its decision's remaining time (4 h) as its kernel timeout.
    let elements = crate::nftables_backend::fleet_elements(&lab, "fleet_ipv4");
    assert!(
        elements.iter().all(|(_, t)| (14_000..=14_400).contains(t)),
        "{:?}",
        &elements[..3]
    );
    // No route, no hosts.deny line, no block of the manager, a handful of lines.
    assert!(!lab.def_routes().contains("10.88."), "{}", lab.def_routes());
    let deny = std::fs::read_to_string(lab.path("hosts.deny")).unwrap_or_default();
    assert!(!deny.contains("10.88."), "{deny}");
    let list = lab.ctl_ok(&["list"]);
    assert!(list.starts_with("no blocks in force\n"), "{list}");
    assert!(
        list.contains(
            "fleet: 12000 decisions in force (cscli-import 12000), 12000 elements in nftables, \
             2 refused"
        ),
        "{list}"
    );
    assert!(!fleet_v4(&lab).contains(&own), "this host's own address");
    assert!(
        !fleet_v4(&lab).contains(&LAB_RESOLVER.to_string()),
        "the nameserver"
    );
    let lines = d.syslog();
    assert_eq!(
        lines.iter().filter(|l| l.contains("10.88.")).count(),
        0,
        "{lines:?}"
    );
    let pulls: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("CrowdSec pull:"))
        .collect();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert!(
        pulls[0].contains("12000 decisions added, 0 removed, 2 refused; 12000 in force"),
        "{pulls:?}"
    );
    assert!(lines.len() < 30, "{} lines: {lines:?}", lines.len());

    // A local scan finds room: blocked within 1 s, in the host set.
    let att = lab.att4.clone();
    let scanned = Instant::now();
    lab.connect_from(&att, 79);
    let blocked = time_until(Duration::from_secs(3), || {
        crate::nftables_backend::nft(&lab, &["list", "set", "inet", "portsentry", "ipv4_addr"])
            .contains(&att)
    })
    .map(|_| scanned.elapsed())
    .unwrap_or_else(|| panic!("scanner not blocked: {:?}", d.syslog()));
    eprintln!("local scan blocked {blocked:?} after its probe, 12,000 decisions held");
    assert!(blocked < Duration::from_secs(1), "{blocked:?}");

    // 1,000 of them deleted with cscli: exactly those leave at the next pull.
    lapi.cscli_ok(&[
        "decisions",
        "delete",
        "--range",
        "10.88.0.0/22",
        "--contained",
    ]);
    assert!(
        wait_for(4, || fleet_v4(&lab).len() == 11_000),
        "{} left: {:?}",
        fleet_v4(&lab).len(),
        d.syslog()
    );
    let left = fleet_v4(&lab);
    assert!(
        !left
            .iter()
            .any(|v| v.starts_with("10.88.0.") || v.starts_with("10.88.3."))
    );
    assert!(left.contains(&"10.88.4.1".to_string()) && left.contains(&"10.88.47.250".to_string()));
    assert!(d.wait_line("1000 removed", 1).is_some(), "{:?}", d.syslog());
    // The local block stands apart.
    assert!(
        crate::nftables_backend::nft(&lab, &["list", "set", "inet", "portsentry", "ipv4_addr"])
            .contains(&att)
    );
}

#[test]
fn crowdsec_origins_that_leave_an_origin_out_apply_none_of_its_decisions() {
    let lab = Lab::new();
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &["host-a"]);
    lapi.start();
    import_hosts(&lab, &lapi, 200, &[]);
    // Positive control in the same stream: a decision of origin cscli.
    let control = "10.77.251.7";
    lapi.cscli_ok(&["decisions", "add", "--ip", control, "--duration", "1h"]);
    let d = nft_pulling_daemon(&lab, &lapi, "CROWDSEC_ORIGINS=\"crowdsec,cscli\"\n");
    assert!(
        wait_for(3, || fleet_v4(&lab) == [control.to_string()]),
        "{:?} {:?}",
        fleet_v4(&lab),
        d.syslog()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        fleet_v4(&lab),
        [control.to_string()],
        "none of cscli-import"
    );
    assert!(
        lab.ctl_ok(&["list"])
            .contains("fleet: 1 decisions in force (cscli 1)"),
        "{}",
        lab.ctl_ok(&["list"])
    );
}

#[test]
fn a_reload_that_widens_crowdsec_origins_rewrites_the_fleet_sets_in_one_pull() {
    let lab = Lab::new();
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &["host-a"]);
    lapi.start();
    import_hosts(&lab, &lapi, 300, &[]);
    let control = "10.77.251.8";
    lapi.cscli_ok(&["decisions", "add", "--ip", control, "--duration", "1h"]);
    let d = nft_pulling_daemon(&lab, &lapi, "CROWDSEC_ORIGINS=\"cscli\"\n");
    assert!(
        wait_for(3, || fleet_v4(&lab) == [control.to_string()]),
        "{:?}",
        fleet_v4(&lab)
    );
    // The same config without the filter: the puller restarts and reads the whole stream.
    let conf = lab.path("portsentry.conf");
    let text = std::fs::read_to_string(&conf).expect("config");
    std::fs::write(&conf, text.replace("CROWDSEC_ORIGINS=\"cscli\"\n", "")).expect("config");
    lab.ctl_ok(&["reload"]);
    assert!(
        wait_for(4, || fleet_v4(&lab).len() == 301),
        "{} {:?}",
        fleet_v4(&lab).len(),
        d.syslog()
    );
    d.expect_line("restarting the fleet threads", 1);
    d.expect_line("CrowdSec pull: 301 decisions added", 1);
    assert!(
        lab.ctl_ok(&["list"])
            .contains("fleet: 301 decisions in force (cscli-import 300, cscli 1)"),
        "{}",
        lab.ctl_ok(&["list"])
    );
}

#[test]
fn crowdsec_pull_responders_runs_hosts_deny_for_pulled_decisions_and_undoes_it() {
    let lab = Lab::new();
    let mut lapi = LapiServer::new(&lab.def, LISTEN, &["host-a"]);
    lapi.start();
    let d = nft_pulling_daemon(&lab, &lapi, "CROWDSEC_PULL_RESPONDERS=\"hosts_deny\"\n");
    let ip = "10.77.252.4";
    lapi.cscli_ok(&["decisions", "add", "--ip", ip, "--duration", "1h"]);
    let line = format!("ALL: {ip} : DENY");
    let deny = || std::fs::read_to_string(lab.path("hosts.deny")).unwrap_or_default();
    assert!(
        wait_for(3, || deny().contains(&line)
            && fleet_v4(&lab) == [ip.to_string()]),
        "{} {:?} {:?}",
        deny(),
        fleet_v4(&lab),
        d.syslog()
    );
    d.expect_line("CrowdSec pull responders: 1 applied, 0 undone, 0 failed", 1);
    lapi.cscli_ok(&["decisions", "delete", "--ip", ip]);
    assert!(
        wait_for(3, || !deny().contains(&line) && fleet_v4(&lab).is_empty()),
        "{} {:?}",
        deny(),
        fleet_v4(&lab)
    );
}

#[test]
fn the_route_room_adds_and_deletes_thousands_of_routes_of_its_own_protocol_only() {
    use portsentry::fleet::room::{KernelRoom, RoomSettings, RouteKind};
    use portsentry::respond::nftables::IntervalChanges;
    let lab = Lab::new();
    // A local block's route for one of the same hosts: never replaced nor deleted.
    lab.defend_stdout(&["ip", "route", "add", "unreachable", "10.89.0.7"]);
    let nets: Vec<ipnet::IpNet> = (0..2000u32)
        .map(|i| {
            format!("10.89.{}.{}/32", i / 250, i % 250 + 1)
                .parse()
                .unwrap()
        })
        .collect();
    let ours = |lab: &Lab| {
        lab.defend_stdout(&["ip", "route", "show", "proto", "247"])
            .lines()
            .count()
    };
    let add = IntervalChanges {
        add: nets.iter().map(|n| (*n, None)).collect(),
        ..IntervalChanges::default()
    };
    let remove = IntervalChanges {
        remove: nets[..1000].to_vec(),
        ..IntervalChanges::default()
    };
    let (added, removed) = lab
        .in_def(move || {
            let mut room = KernelRoom::open(&RoomSettings::Routes(RouteKind::Unreachable));
            let added = room.apply(&add);
            let routes_after_add = ours_count();
            let removed = room.apply(&remove);
            let routes_after_remove = ours_count();
            room.release();
            ((added, routes_after_add), (removed, routes_after_remove))
        })
        .join()
        .expect("route thread");
    assert_eq!(added, (Ok(()), 1999), "all but the local block's own");
    assert_eq!(removed, (Ok(()), 1000));
    assert_eq!(ours(&lab), 0, "released");
    assert!(
        lab.def_routes()
            .lines()
            .any(|l| l.starts_with("unreachable 10.89.0.7")),
        "the local route stays: {}",
        lab.def_routes()
    );
}

/// Routes of the fleet's protocol in the calling thread's namespace.
fn ours_count() -> usize {
    let out = std::process::Command::new("ip")
        .args(["route", "show", "proto", "247"])
        .output()
        .expect("ip route");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
