//! The replay on a capture taken in the test lab (`tests/fixtures/replay/lab-scans.pcap`,
//! tcpdump on the defender's veth, 10.77.250.1 and fd77:250::1, with a web server on 8080):
//! a curl to the web server, `nmap -sS -p 1-25` from 10.77.250.2, `nmap -sA -p 30-45` from
//! 10.77.250.3, `nmap -sS -p 50-70` forged from the gateway 10.77.250.254, and
//! `nmap -6 -sU -p 100-115` from fd77:250::2.

use super::*;
use crate::config::Config;
use crate::config::ignore::IgnoreList;
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay/lab-scans.pcap")
}

/// The defaults with blocking on, as the shipped portsentry.conf has it.
fn config() -> Config {
    let mut c =
        crate::config::build::defaults(std::path::Path::new("/nonexistent/portsentry.conf"));
    c.block_tcp = crate::config::BlockLevel::All;
    c.block_udp = crate::config::BlockLevel::All;
    c
}

fn options(modes: &[Mode]) -> Options {
    Options {
        files: vec![fixture()],
        modes: modes.to_vec(),
        json: true,
        ..Options::default()
    }
}

/// The JSON lines of a replay: the sources by address, and the summary.
fn replay(options: &Options, config: Config) -> (HashMap<String, Value>, Value) {
    let generation = Generation::from_parts(1, config, IgnoreList::default());
    let mut out = Vec::new();
    run(options, generation, &mut out).expect("replay runs");
    let mut sources = HashMap::new();
    let mut summary = Value::Null;
    for line in String::from_utf8(out).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        match v["type"].as_str() {
            Some("source") => {
                sources.insert(v["source"].as_str().unwrap().to_string(), v);
            }
            Some("summary") => summary = v,
            other => panic!("unexpected line type {other:?}: {line}"),
        }
    }
    (sources, summary)
}

fn verdict<'a>(sources: &'a HashMap<String, Value>, ip: &str) -> &'a str {
    sources
        .get(ip)
        .and_then(|s| s["verdict"].as_str())
        .unwrap_or("(no probe)")
}

#[test]
fn the_lab_scanners_would_be_blocked_with_the_ports_they_probed() {
    let (sources, summary) = replay(&options(&[Mode::Atcp, Mode::Audp]), config());
    assert_eq!(verdict(&sources, "10.77.250.2"), "would_block");
    let syn = &sources["10.77.250.2"];
    assert_eq!(syn["distinct_ports"], 25);
    assert_eq!(syn["kinds"], serde_json::json!(["syn"]));
    assert_eq!(syn["evidence"], "forgeable");
    assert!(syn["ports"].as_array().unwrap().contains(&"tcp/22".into()));
    assert_eq!(syn["block"]["target"], "10.77.250.2");
    assert!(syn["block"]["seconds"].as_u64().unwrap() > 0);
    assert_eq!(
        verdict(&sources, "10.77.250.3"),
        "would_block",
        "the ACK scan"
    );
    assert_eq!(sources["10.77.250.3"]["kinds"], serde_json::json!(["ack"]));
    assert_eq!(
        verdict(&sources, "fd77:250::2"),
        "would_block",
        "the UDP scan"
    );
    // Without --gateway nothing says the forged source is the gateway: it is blocked too
    // (the positive control of the test below).
    assert_eq!(verdict(&sources, "10.77.250.254"), "would_block");
    // The host's own addresses and the web server were learned from the capture.
    assert_eq!(
        summary["local"],
        serde_json::json!(["10.77.250.1", "fd77:250::1"])
    );
    assert_eq!(summary["listening_tcp"], serde_json::json!([8080]));
    assert_eq!(summary["would_block"], 4);
    assert_eq!(summary["packets"], 153);
}

#[test]
fn a_gateway_named_on_the_command_line_is_protected() {
    let mut o = options(&[Mode::Atcp, Mode::Audp]);
    o.gateways = vec!["10.77.250.254".parse().unwrap()];
    let (sources, _) = replay(&o, config());
    assert_eq!(verdict(&sources, "10.77.250.254"), "protected");
    assert_eq!(verdict(&sources, "10.77.250.2"), "would_block");
    // PROTECT_GATEWAYS="0": the same gateway is fair game.
    let mut c = config();
    c.protect_gateways = false;
    let (sources, _) = replay(&o, c);
    assert_eq!(verdict(&sources, "10.77.250.254"), "would_block");
}

#[test]
fn a_higher_trigger_leaves_the_short_scans_below_it() {
    let mut c = config();
    c.scan_trigger = 20;
    c.forgeable_scan_trigger = 20;
    let (sources, _) = replay(&options(&[Mode::Atcp, Mode::Audp]), c);
    // 25 and 21 ports cross 20; the ACK scan's 16 and the UDP scan's 16 do not.
    assert_eq!(verdict(&sources, "10.77.250.2"), "would_block");
    assert_eq!(verdict(&sources, "10.77.250.254"), "would_block");
    assert_eq!(verdict(&sources, "10.77.250.3"), "below_trigger");
    assert_eq!(verdict(&sources, "fd77:250::2"), "below_trigger");
}

#[test]
fn forgeable_evidence_below_its_trigger_is_an_alert_only() {
    let mut c = config();
    c.scan_trigger = 2;
    c.forgeable_scan_trigger = 18;
    let (sources, _) = replay(&options(&[Mode::Atcp, Mode::Audp]), c);
    assert_eq!(verdict(&sources, "10.77.250.2"), "would_block");
    assert_eq!(verdict(&sources, "10.77.250.3"), "alert_only");
    assert_eq!(
        sources["10.77.250.3"]["why"],
        "forgeable evidence below FORGEABLE_SCAN_TRIGGER"
    );
}

#[test]
fn a_new_trap_port_in_stealth_mode_changes_the_verdict() {
    let mut c = config();
    c.tcp_ports = vec![1, 11, 15];
    let (sources, _) = replay(&options(&[Mode::Stcp]), c.clone());
    assert_eq!(verdict(&sources, "10.77.250.2"), "would_block");
    assert_eq!(sources["10.77.250.2"]["distinct_ports"], 3);
    assert_eq!(
        verdict(&sources, "10.77.250.3"),
        "(no probe)",
        "30-45 not trapped"
    );
    c.tcp_ports.push(33);
    let (sources, _) = replay(&options(&[Mode::Stcp]), c);
    assert_eq!(sources["10.77.250.3"]["distinct_ports"], 1);
}

#[test]
fn ports_named_listening_are_not_probes() {
    let mut o = options(&[Mode::Atcp]);
    o.listening = Some(
        parse_listening(
            "tcp/8080,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25",
        )
        .unwrap(),
    );
    let (sources, summary) = replay(&o, config());
    assert_eq!(verdict(&sources, "10.77.250.2"), "(no probe)");
    assert_eq!(verdict(&sources, "10.77.250.3"), "would_block", "control");
    assert_eq!(summary["listening_learned"], false);
    assert!(parse_listening("tcp/x").is_err() && parse_listening("icmp/1").is_err());
}

#[test]
fn the_block_budget_holds_back_what_it_would_have() {
    let mut c = config();
    c.block_rate_limit = 1;
    let (sources, summary) = replay(&options(&[Mode::Atcp, Mode::Audp]), c);
    // One block a minute: the first scanner is blocked, the others wait past the capture.
    assert_eq!(verdict(&sources, "10.77.250.2"), "would_block");
    assert_eq!(verdict(&sources, "10.77.250.3"), "held_back");
    assert_eq!(summary["held_back"], 3);
}

#[test]
fn a_truncated_capture_is_an_error_naming_the_packet() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture()).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let mut o = options(&[Mode::Atcp]);
    o.files = vec![cut];
    let generation = Generation::from_parts(1, config(), IgnoreList::default());
    match run(&o, generation, &mut Vec::new()) {
        Err(ReplayError::File(e)) => {
            assert_eq!(e.packet, 153, "{e}");
            assert!(e.to_string().contains("cut.pcap: packet 153"), "{e}");
        }
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn the_table_lists_verdicts_and_the_summary() {
    let mut o = options(&[Mode::Atcp, Mode::Audp]);
    o.json = false;
    o.gateways = vec!["10.77.250.254".parse().unwrap()];
    let generation = Generation::from_parts(1, config(), IgnoreList::default());
    let mut out = Vec::new();
    run(&o, generation, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let line = |ip: &str| {
        text.lines()
            .find(|l| l.starts_with(ip))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("10.77.250.2 ").contains("would block"), "{text}");
    assert!(line("10.77.250.254").contains("protected"), "{text}");
    assert!(
        text.contains("would block: 3 source(s) in 3 block(s)"),
        "{text}"
    );
    assert!(
        text.contains("listening (learned from the capture; --listening to set): tcp 8080"),
        "{text}"
    );
}

/// An IPv4 TCP SYN (header checksum right; the TCP sum is trusted by default).
fn syn_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    tcp_v4(src, dst, sport, dport, 0x02)
}

/// An IPv4 TCP segment without payload with `flags`.
fn tcp_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = !(sum as u16);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    ip.extend_from_slice(&sport.to_be_bytes());
    ip.extend_from_slice(&dport.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    ip
}

/// Writes raw-IP packets (one every 10 ms) as a pcap in `dir`.
fn raw_capture(dir: &tempfile::TempDir, packets: &[Vec<u8>]) -> PathBuf {
    let frames: Vec<(u32, u32, &[u8])> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| (1_000, i as u32 * 10_000, p.as_slice()))
        .collect();
    let path = dir.path().join("raw.pcap");
    std::fs::write(
        &path,
        crate::replay::file::tests::legacy(101, false, &frames),
    )
    .unwrap();
    path
}

#[test]
fn answers_to_the_hosts_own_connections_are_not_probes() {
    let (host, peer, stranger) = ([10, 77, 1, 1], [10, 9, 9, 9], [10, 9, 9, 8]);
    let dir = tempfile::tempdir().unwrap();
    let path = raw_capture(
        &dir,
        &[
            // The host connects out from port 900 (watched by -atcp): the peer's ACK answers.
            tcp_v4(host, peer, 900, 80, 0x02),
            tcp_v4(peer, host, 80, 900, 0x10),
            // The same bare ACK from a stranger answers nothing: an ACK scan probe.
            tcp_v4(stranger, host, 80, 901, 0x10),
        ],
    );
    let mut o = options(&[Mode::Atcp]);
    o.files = vec![path];
    o.local = Some(vec![IpAddr::from(host)]);
    let mut c = config();
    c.forgeable_scan_trigger = 1;
    let (sources, _) = replay(&o, c);
    assert_eq!(verdict(&sources, "10.9.9.9"), "answer_to_own_traffic");
    assert_eq!(verdict(&sources, "10.9.9.8"), "would_block", "the control");
}

#[test]
fn a_rotation_through_a_prefix_escalates_as_the_daemon_would() {
    // Raw IP: 12 hosts of 10.9.9.0/24, each probing 3 ports of 10.77.1.1, 100 ms apart.
    let host = [10, 77, 1, 1];
    let mut frames = Vec::new();
    for h in 0..12u8 {
        for (i, port) in [21u16, 22, 23].into_iter().enumerate() {
            let t = u32::from(h) * 100_000 + i as u32 * 1_000;
            frames.push((
                1_000 + t / 1_000_000,
                t % 1_000_000,
                syn_v4([10, 9, 9, 10 + h], host, 40000, port),
            ));
        }
    }
    let refs: Vec<(u32, u32, &[u8])> = frames
        .iter()
        .map(|(s, u, d)| (*s, *u, d.as_slice()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rotation.pcap");
    std::fs::write(&path, crate::replay::file::tests::legacy(101, false, &refs)).unwrap();
    let mut o = options(&[Mode::Atcp]);
    o.files = vec![path];
    o.local = Some(vec![IpAddr::from(host)]);
    let mut c = config();
    c.escalate_forgeable = true;
    let (sources, summary) = replay(&o, c.clone());
    // Eight host blocks, then the /24: every later host is inside it.
    let first = &sources["10.9.9.10"]["block"];
    assert_eq!(first["target"], "10.9.9.0/24", "{first}");
    assert_eq!(first["escalated"], true);
    assert_eq!(verdict(&sources, "10.9.9.21"), "would_block");
    assert_eq!(summary["would_block"], 12);
    // Positive control of the key: without ESCALATE_FORGEABLE, host blocks only.
    c.escalate_forgeable = false;
    let (sources, summary) = replay(&o, c);
    assert_eq!(sources["10.9.9.10"]["block"]["target"], "10.9.9.10");
    assert!(summary["blocks"].as_u64().unwrap() >= 10, "{summary}");
}
