//! `portsentry replay`: a capture taken with tcpdump while the daemon runs in the lab is
//! replayed through the same configuration, and the verdicts equal what the live daemon did
//! with the same traffic: the scanners (`nmap -sS`, `-sU`, `-sA`, a real scan inside a
//! `--rand-source` flood) blocked with the ports they probed, the forged one-port sources
//! not, legitimate traffic in both directions never above "below trigger", a forged scan
//! from the gateway protected. Lua plugins run in dry run; bad files exit 2.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::blocks::list;
use crate::lab::{ChildGuard, Daemon, Lab, binary, repo};

/// Starts tcpdump on the defender's link (every packet written at once) and waits until it
/// captures.
fn start_capture(lab: &Lab, file: &Path) -> ChildGuard {
    let guard = lab.spawn_in_def(&[
        "tcpdump",
        "-i",
        &lab.def_dev,
        "-U",
        "-n",
        "-w",
        &file.display().to_string(),
    ]);
    let t0 = Instant::now();
    while std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) < 24 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tcpdump did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // tcpdump opens the file before the capture is live.
    std::thread::sleep(Duration::from_millis(500));
    guard
}

/// Stops tcpdump with SIGINT, so that it writes what it holds.
fn stop_capture(guard: ChildGuard) {
    let pid = guard.0.id().to_string();
    let _ = Command::new("pkill").args(["-INT", "-P", &pid]).output();
    let _ = Command::new("kill").args(["-INT", &pid]).output();
    std::thread::sleep(Duration::from_millis(500));
    drop(guard);
}

/// Runs `portsentry replay --json <args>`; the sources by address and the summary.
fn replay_json(args: &[&str]) -> (HashMap<String, Value>, Value) {
    let out = replay(&[&["--json"], args].concat());
    assert!(out.status.success(), "replay: {out:?}");
    let mut sources = HashMap::new();
    let mut summary = Value::Null;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["type"] == "summary" {
            summary = v;
        } else {
            sources.insert(v["source"].as_str().unwrap_or_default().to_string(), v);
        }
    }
    (sources, summary)
}

fn replay(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["120", binary(), "replay"])
        .args(args)
        .output()
        .expect("run portsentry replay")
}

fn verdict<'a>(sources: &'a HashMap<String, Value>, ip: &str) -> &'a str {
    sources
        .get(ip)
        .and_then(|s| s["verdict"].as_str())
        .unwrap_or("(no probe)")
}

/// The hosts the live daemon blocked, from `list --json`.
fn live_blocked(lab: &Lab) -> BTreeSet<String> {
    list(lab)
        .iter()
        .filter_map(|b| b["target"].as_str())
        .map(|t| {
            t.trim_end_matches("/32")
                .trim_end_matches("/128")
                .to_string()
        })
        .collect()
}

fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_replay_of_the_lab_capture_reaches_the_live_daemons_verdicts() {
    let lab = Lab::new();
    let (gw4, _) = lab.add_attacker_addrs(254);
    assert!(
        Command::new("ip")
            .args(["-n", &lab.def, "route", "add", "default", "via", &gw4])
            .status()
            .expect("ip route")
            .success()
    );
    let (syn4, _) = lab.add_attacker_addrs(3);
    let (_, udp6) = lab.add_attacker_addrs(4);
    let (ack4, _) = lab.add_attacker_addrs(5);
    let (inside4, _) = lab.add_attacker_addrs(6);
    let conf = lab.write_config(
        "ADVANCED_PORTS_TCP=\"1024\"\n\
         ADVANCED_PORTS_UDP=\"1024\"\n\
         ADVANCED_EXCLUDE_TCP=\"113,139\"\n\
         BLOCK_TCP=\"1\"\n\
         BLOCK_UDP=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n",
    );
    let conf = conf.display().to_string();
    let pcap = lab.path("lab.pcap");
    let capture = start_capture(&lab, &pcap);
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp", "-audp"]);
    let service = lab.defender_echo_service(8080);
    lab.wait_tcp_listener(8080);

    // Legitimate traffic both ways: a client of the defender's service, the defender's own
    // connection out from a watched port (its answers are not probes), a late DNS answer.
    let att4 = lab.att4.clone();
    lab.echo_from_attacker(format!("{}:8080", lab.def4).parse().expect("addr"));
    let echo = lab.attacker_echo_once(7000);
    lab.defender_connects_out(900, 7000, 7001);
    echo.join().expect("echo peer");
    let dns = lab.attacker_dns_answering_late(Duration::from_millis(300));
    lab.defender_queries_dns(700);
    dns.join().expect("dns");

    // The scanners.
    lab.nmap(&[
        "-sS",
        "-p",
        "20-40",
        "-S",
        &syn4,
        "-e",
        &lab.att_dev,
        &lab.def4,
    ]);
    lab.nmap(&[
        "-6",
        "-sU",
        "-p",
        "100-115",
        "-S",
        &udp6,
        "-e",
        &lab.att_dev,
        &lab.def6,
    ]);
    lab.nmap(&[
        "-sA",
        "-p",
        "200-215",
        "-S",
        &ack4,
        "-e",
        &lab.att_dev,
        &lab.def4,
    ]);
    // A scan forged from the gateway.
    lab.nmap(&[
        "-sS",
        "-p",
        "300-320",
        "-S",
        &gw4,
        "-e",
        &lab.att_dev,
        &lab.def4,
    ]);
    // A --rand-source flood to one port with a real scan inside it.
    let att = lab.att.clone();
    let def4 = lab.def4.clone();
    let flood = std::thread::spawn(move || {
        Command::new("timeout")
            .args(["-s", "INT", "30", "ip", "netns", "exec", &att])
            .args([
                "hping3",
                "--rand-source",
                "-S",
                "-p",
                "23",
                "-q",
                "-i",
                "u200",
                "-c",
                "5000",
            ])
            .arg(&def4)
            .output()
            .expect("hping3")
    });
    std::thread::sleep(Duration::from_millis(300));
    lab.nmap(&[
        "-sS",
        "-p",
        "400-420",
        "-S",
        &inside4,
        "-e",
        &lab.att_dev,
        &lab.def4,
    ]);
    let flooded = flood.join().expect("flood");
    assert!(
        flooded.status.success() || flooded.status.code() == Some(124),
        "{flooded:?}"
    );

    let scanners = [&syn4, &udp6, &ack4, &inside4];
    wait_for("the live daemon blocks the four scanners", 20, || {
        let live = live_blocked(&lab);
        scanners.iter().all(|s| live.contains(*s))
    });
    std::thread::sleep(Duration::from_millis(500));
    stop_capture(capture);
    drop(service);
    let live = live_blocked(&lab);
    drop(d);

    let (sources, summary) = replay_json(&[
        "-c",
        &conf,
        "-atcp",
        "-audp",
        "--gateway",
        &gw4,
        &pcap.display().to_string(),
    ]);
    let would: BTreeSet<String> = sources
        .iter()
        .filter(|(_, s)| s["verdict"] == "would_block")
        .map(|(ip, _)| ip.clone())
        .collect();
    assert_eq!(
        would, live,
        "replay against the live daemon; summary {summary}"
    );
    for s in scanners {
        assert_eq!(verdict(&sources, s), "would_block", "{s}");
    }
    assert_eq!(sources[&syn4]["distinct_ports"], 21);
    assert_eq!(sources[&syn4]["kinds"], serde_json::json!(["syn"]));
    assert_eq!(sources[&udp6]["kinds"], serde_json::json!(["udp"]));
    assert_eq!(sources[&ack4]["kinds"], serde_json::json!(["ack"]));
    assert!(
        sources[&inside4]["ports"]
            .as_array()
            .is_some_and(|p| p.contains(&"tcp/410".into())),
        "{}",
        sources[&inside4]
    );
    assert_eq!(verdict(&sources, &gw4), "protected");
    assert!(
        !live.contains(&gw4),
        "the live daemon protected the gateway too"
    );
    // The flood's forged sources: thousands of one-port sources, none above the trigger.
    let flood_sources: Vec<&Value> = sources
        .values()
        .filter(|s| s["ports"] == serde_json::json!(["tcp/23"]))
        .collect();
    assert!(
        flood_sources.len() > 1000,
        "{} flood sources",
        flood_sources.len()
    );
    assert!(
        flood_sources
            .iter()
            .all(|s| s["verdict"] != "would_block" && s["verdict"] != "held_back"),
        "a forged one-port source acted on"
    );
    // Legitimate traffic: the client of the service and the peer of the defender's own
    // connections never rise above "below trigger".
    let legit = verdict(&sources, &att4);
    assert!(
        matches!(
            legit,
            "(no probe)" | "below_trigger" | "answer_to_own_traffic"
        ),
        "{att4}: {legit}"
    );
    assert_eq!(summary["local_learned"], true);
    assert!(
        summary["local"]
            .as_array()
            .is_some_and(|l| l.contains(&lab.def4.as_str().into())),
        "{summary}"
    );
    assert!(
        summary["listening_tcp"]
            .as_array()
            .is_some_and(|l| l.contains(&8080.into())),
        "{summary}"
    );

    // The same capture under a higher trigger: the 16-port scans fall below it, the 21-port
    // ones stay (a key changes the verdict the admin expects).
    let stricter = lab.path("stricter.conf");
    let text = std::fs::read_to_string(&conf).expect("conf");
    std::fs::write(
        &stricter,
        format!(
            "{}FORGEABLE_SCAN_TRIGGER=\"18\"\n",
            text.replace("SCAN_TRIGGER=\"0\"", "SCAN_TRIGGER=\"18\"")
        ),
    )
    .expect("write");
    let (sources, _) = replay_json(&[
        "-c",
        &stricter.display().to_string(),
        "-atcp",
        "-audp",
        &pcap.display().to_string(),
    ]);
    assert_eq!(verdict(&sources, &syn4), "would_block");
    assert_eq!(verdict(&sources, &udp6), "below_trigger");
    assert_eq!(verdict(&sources, &ack4), "below_trigger");
}

#[test]
fn lua_responders_run_in_dry_run_and_nothing_is_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("mkdir");
    let marker = dir.path().join("touched");
    std::fs::write(
        plugins.join("mark.lua"),
        format!(
            "portsentry.on(\"block\", function(ev)\n  \
             portsentry.exec{{ \"/usr/bin/touch\", \"{}\" }}\n  \
             portsentry.append_line(portsentry.config.file, \"blocked \" .. ev.ip)\nend)\n",
            marker.display(),
        ),
    )
    .expect("plugin");
    let conf = dir.path().join("portsentry.conf");
    std::fs::write(
        &conf,
        format!(
            "BLOCK_TCP=\"1\"\nBLOCK_UDP=\"1\"\nPLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}\"\n\
             LUA_RESPONDERS=\"mark\"\nMARK_FILE=\"{}\"\nIGNORE_FILE=\"{}\"\n",
            plugins.display(),
            repo("lua").display(),
            dir.path().join("log").display(),
            dir.path().join("none.ignore").display()
        ),
    )
    .expect("conf");
    let fixture = repo("tests/fixtures/replay/lab-scans.pcap");
    let out = replay(&[
        "-c",
        &conf.display().to_string(),
        "-atcp",
        "--plugins",
        &fixture.display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("Lua responders in dry run: mark"), "{text}");
    assert!(text.contains("block 10.77.250.2:"), "{text}");
    assert!(
        text.contains(&format!("would exec   /usr/bin/touch {}", marker.display())),
        "{text}"
    );
    assert!(text.contains("would append to"), "{text}");
    assert!(!marker.exists(), "the command was not run");
    assert!(!dir.path().join("log").exists(), "the file was not written");
}

#[test]
fn a_bad_capture_file_exits_2_naming_the_file_and_packet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture: PathBuf = repo("tests/fixtures/replay/lab-scans.pcap");
    let bytes = std::fs::read(&fixture).expect("fixture");
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).expect("write");
    let out = replay(&[
        "-c",
        "/nonexistent.conf",
        "-atcp",
        &cut.display().to_string(),
    ]);
    // A missing config file is refused first (1), then a bad file is 2.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let conf = dir.path().join("p.conf");
    std::fs::write(&conf, "BLOCK_TCP=\"1\"\n").expect("conf");
    let out = replay(&[
        "-c",
        &conf.display().to_string(),
        "-atcp",
        &cut.display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(err.contains("cut.pcap: packet 153"), "{err}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a capture").expect("write");
    let out = replay(&[
        "-c",
        &conf.display().to_string(),
        &text.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a capture file"));
    // The intact fixture runs (exit 0) and blocks its first scanner: the positive control.
    let out = replay(&[
        "-c",
        &conf.display().to_string(),
        "-atcp",
        &fixture.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("would block"));
}
