//! Property tests over the fuzz entry points, with arbitrary bytes and with generators that
//! know each format (valid input, then mutated), and the corpus runner. Every test is named
//! `fuzz_…` so that `cargo test fuzz_` runs them all. Case counts are small by default;
//! `PROPTEST_CASES=1000000 cargo test --release fuzz_` runs them longer.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::control::protocol::{Counters, ReloadInfo, StatusReport, TargetResult};
use crate::event::{Mode, ProbeKind, Proto};
use crate::record::{Action, Origin, Target, Trigger, Undo, host_target};
use crate::sensor::classify::{Reject, tcp_flags, tcp_kind};

/// `cases` unless `PROPTEST_CASES` asks for another number.
fn cases(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(Ipv6Addr::from)
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![ipv4().prop_map(IpAddr::V4), ipv6().prop_map(IpAddr::V6)]
}

/// Replaces byte `at` (modulo the length) of `v` with `value`: the mutation every
/// structure-aware generator applies to valid input.
fn mutate(mut v: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    if !v.is_empty() {
        for &(at, value) in edits {
            let i = at % v.len();
            v[i] = value;
        }
    }
    v
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4)
}

// ---------------------------------------------------------------------------------------
// Packets

/// A probe-shaped packet, built here with its own checksum code (an oracle independent of
/// the classifier's).
#[derive(Debug, Clone)]
struct Packet {
    v6: bool,
    tcp: bool,
    src4: Ipv4Addr,
    dst4: Ipv4Addr,
    src6: Ipv6Addr,
    dst6: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    options: usize,
    payload: Vec<u8>,
}

impl Packet {
    fn src(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.src6)
        } else {
            IpAddr::V4(self.src4)
        }
    }

    fn dst(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.dst6)
        } else {
            IpAddr::V4(self.dst4)
        }
    }

    /// The IP packet and the offset of its TCP/UDP header.
    fn bytes(&self) -> (Vec<u8>, usize) {
        let proto = if self.tcp { 6u8 } else { 17 };
        let mut seg = Vec::new();
        seg.extend_from_slice(&self.sport.to_be_bytes());
        seg.extend_from_slice(&self.dport.to_be_bytes());
        if self.tcp {
            seg.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, self.flags, 4, 0, 0, 0, 0, 0]);
        } else {
            let len = (8 + self.payload.len()) as u16;
            seg.extend_from_slice(&len.to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
        }
        seg.extend_from_slice(&self.payload);
        let mut pseudo = Vec::new();
        match (self.src(), self.dst()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
            }
            _ => unreachable!("one family per packet"),
        }
        pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        let mut sum = internet_checksum(&[&pseudo, &seg]);
        if !self.tcp && sum == 0 {
            sum = 0xffff; // zero means "no checksum" for UDP
        }
        let at = if self.tcp { 16 } else { 6 };
        seg[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        let mut p = Vec::new();
        if self.v6 {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&self.src6.octets());
            p.extend_from_slice(&self.dst6.octets());
        } else {
            let ihl = 5 + self.options;
            let total = (ihl * 4 + seg.len()) as u16;
            p.push(0x40 | ihl as u8);
            p.push(0);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&self.src4.octets());
            p.extend_from_slice(&self.dst4.octets());
            p.extend(std::iter::repeat_n(1u8, self.options * 4)); // NOP options
            let sum = internet_checksum(&[&p]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        let transport = p.len();
        p.extend_from_slice(&seg);
        (p, transport)
    }

    /// What the classifier must say about the packet as built.
    fn expected(&self) -> Result<crate::sensor::classify::Probe, Reject> {
        let kind = if self.tcp {
            let kind = tcp_kind(tcp_flags(self.flags)).ok_or(Reject::AckOrRst)?;
            if matches!(kind, ProbeKind::Ack | ProbeKind::Maimon) && !self.payload.is_empty() {
                return Err(Reject::AckOrRst);
            }
            kind
        } else {
            ProbeKind::Udp
        };
        Ok(crate::sensor::classify::Probe {
            src: self.src(),
            dst: self.dst(),
            proto: if self.tcp { Proto::Tcp } else { Proto::Udp },
            src_port: self.sport,
            dst_port: self.dport,
            kind,
            ip_options: !self.v6 && self.options > 0,
        })
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let all: Vec<u8> = parts.concat();
    let mut sum: u32 = 0;
    for pair in all.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn packet() -> impl Strategy<Value = Packet> {
    (
        (any::<bool>(), any::<bool>(), ipv4(), ipv4(), ipv6(), ipv6()),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u8>(),
            0usize..4,
            bytes(24),
        ),
    )
        .prop_map(
            |((v6, tcp, src4, dst4, src6, dst6), (sport, dport, flags, options, payload))| Packet {
                v6,
                tcp,
                src4,
                dst4,
                src6,
                dst6,
                sport,
                dport,
                flags,
                options,
                payload,
            },
        )
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn fuzz_classify_arbitrary_bytes(b in bytes(128), v6 in any::<bool>()) {
        fuzz_classify(&b);
        // Steered into an IP parser: the first nibble says IPv4 or IPv6.
        let mut steered = b;
        if let Some(first) = steered.first_mut() {
            *first = (*first & 0x0f) | if v6 { 0x60 } else { 0x40 };
        }
        fuzz_classify(&steered);
    }

    #[test]
    fn fuzz_classify_valid_packets_are_read_exactly(p in packet(), padding in bytes(8)) {
        let (mut bytes, _) = p.bytes();
        prop_assert_eq!(inspect(&bytes, ChecksumCheck::Verify), p.expected());
        // Ethernet pads short frames: bytes after the packet change nothing.
        bytes.extend_from_slice(&padding);
        prop_assert_eq!(inspect(&bytes, ChecksumCheck::Verify), p.expected());
        fuzz_classify(&bytes);
    }

    #[test]
    fn fuzz_classify_a_changed_transport_byte_is_never_a_verified_probe(
        p in packet(),
        at in any::<usize>(),
        xor in 1u8..,
    ) {
        let (mut bytes, transport) = p.bytes();
        let seg_len = bytes.len() - transport;
        let mut i = at % seg_len;
        // A UDP length or checksum edit changes what the checksum covers or switches it
        // off (zero, IPv4): other rules, tested elsewhere.
        if !p.tcp && (4..8).contains(&i) {
            i = (i + 4) % seg_len;
            prop_assume!(!(4..8).contains(&i));
        }
        bytes[transport + i] ^= xor;
        let verdict = inspect(&bytes, ChecksumCheck::Verify);
        prop_assert!(verdict.is_err(), "byte {} ^ {:#x}: {:?}", i, xor, verdict);
        fuzz_classify(&bytes);
    }

    #[test]
    fn fuzz_classify_a_cut_packet_is_never_a_probe(p in packet(), cut in any::<usize>()) {
        let (bytes, _) = p.bytes();
        let short = &bytes[..cut % bytes.len()];
        for check in [ChecksumCheck::Verify, ChecksumCheck::Trusted] {
            let verdict = inspect(short, check);
            prop_assert!(verdict.is_err(), "{} of {} bytes: {:?}", short.len(), bytes.len(), verdict);
        }
    }

    #[test]
    fn fuzz_classify_mutated_valid_packets(p in packet(), e in edits()) {
        fuzz_classify(&mutate(p.bytes().0, &e));
    }
}

// ---------------------------------------------------------------------------------------
// Config and ignore files

const KEYS: &[&str] = &[
    "TCP_PORTS",
    "UDP_PORTS",
    "ADVANCED_PORTS_TCP",
    "ADVANCED_PORTS_UDP",
    "ADVANCED_EXCLUDE_TCP",
    "BLOCK_TCP",
    "BLOCK_UDP",
    "SCAN_TRIGGER",
    "SCAN_TRIGGER_WINDOW",
    "KILL_ROUTE",
    "KILL_HOSTS_DENY",
    "KILL_RUN_CMD",
    "KILL_RUN_CMD_FIRST",
    "KILL_CMD_TIMEOUT",
    "PORT_BANNER",
    "BLOCK_TIMEOUT",
    "RESOLVE_HOST",
    "IGNORE_FILE",
    "HISTORY_FILE",
    "LUA_RESPONDERS",
    "METRICS_LISTEN",
    "NFTABLES_TABLE",
    "NO_SUCH_KEY",
];

fn config_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,5}(,[0-9]{1,5}){0,4}",
        "[0-9]{1,5}-[0-9]{1,5}",
        "[0-9]{1,4}(ms|s|m|h|d)?",
        "[01]",
        "/[a-z/]{1,20}",
        "[ -~]{0,24}",
    ]
}

fn config_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (proptest::sample::select(KEYS), config_value(), any::<bool>())
            .prop_map(|(k, v, quoted)| if quoted { format!("{k}=\"{v}\"") } else { format!("{k}={v}") }),
        1 => "#[ -~]{0,20}",
        1 => Just(String::new()),
        1 => "[ -~]{0,30}",
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(config_line(), 0..12).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn fuzz_config_arbitrary_bytes(b in bytes(256)) {
        fuzz_config(&b);
    }

    #[test]
    fn fuzz_config_structured_and_mutated(text in config_text(), e in edits(), crlf in any::<bool>()) {
        let text = if crlf { text.replace('\n', "\r\n") } else { text };
        fuzz_config(text.as_bytes());
        fuzz_config(&mutate(text.into_bytes(), &e));
    }

    #[test]
    fn fuzz_config_error_names_the_line_of_the_bad_value(
        good in proptest::collection::vec(
            prop_oneof![Just("TCP_PORTS=\"1,79\""), Just("# comment"), Just(""), Just("BLOCK_TCP=\"1\"")],
            0..8,
        ),
        at in any::<usize>(),
    ) {
        let mut lines: Vec<&str> = good;
        let bad = at % (lines.len() + 1);
        lines.insert(bad, "SCAN_TRIGGER_WINDOW=\"10\"");
        let text = lines.join("\n");
        let file = Path::new("/fuzz/portsentry.conf");
        let errors = parse::parse(file, &text)
            .and_then(|raw| build::build(&raw))
            .expect_err("a duration without a unit is refused");
        prop_assert_eq!(errors.0.len(), 1, "{}", errors);
        prop_assert_eq!(errors.0[0].line, bad + 1, "{}", errors);
        prop_assert!(errors.0[0].message.contains("SCAN_TRIGGER_WINDOW"), "{}", errors);
    }
}

fn ignore_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (ip(), proptest::option::of(0u8..140)).prop_map(|(ip, bits)| match bits {
            Some(b) => format!("{ip}/{b}"),
            None => ip.to_string(),
        }),
        1 => (ip(), "[ -~]{0,12}").prop_map(|(ip, c)| format!("{ip} # {c}")),
        1 => "#[ -~]{0,20}",
        1 => Just(String::new()),
        1 => "[ -~]{0,30}",
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn fuzz_ignore_arbitrary_bytes(b in bytes(256)) {
        fuzz_ignore(&b);
    }

    #[test]
    fn fuzz_ignore_structured_and_mutated(
        lines in proptest::collection::vec(ignore_line(), 0..12),
        e in edits(),
    ) {
        let text = lines.join("\n");
        fuzz_ignore(text.as_bytes());
        fuzz_ignore(&mutate(text.into_bytes(), &e));
    }

    #[test]
    fn fuzz_ignore_every_listed_address_is_ignored_and_a_bad_line_is_named(
        hosts in proptest::collection::vec(ip(), 1..8),
        at in any::<usize>(),
    ) {
        let file = Path::new("/fuzz/portsentry.ignore");
        let mut lines: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let text = lines.join("\n");
        let list = IgnoreList::parse(file, &text).expect("addresses only");
        for h in &hosts {
            prop_assert!(list.contains(*h), "{} not ignored", h);
        }
        let bad = at % (lines.len() + 1);
        lines.insert(bad, "10.0.0.1/33".into());
        let errors = IgnoreList::parse(file, &lines.join("\n")).expect_err("/33");
        prop_assert_eq!(errors.0.len(), 1, "{}", errors);
        prop_assert_eq!(errors.0[0].line, bad + 1, "{}", errors);
    }
}

// ---------------------------------------------------------------------------------------
// History line, journal, 1.2 BLOCKED_FILE

const LAST: u64 = 253_402_300_799;

fn history_entry() -> impl Strategy<Value = HistoryEntry> {
    (0..=LAST, "[ -~]{0,24}", ip(), any::<u16>(), any::<bool>()).prop_map(
        |(secs, resolved, ip, port, tcp)| HistoryEntry {
            time: UNIX_EPOCH + Duration::from_secs(secs),
            resolved,
            ip,
            port,
            proto: if tcp { Proto::Tcp } else { Proto::Udp },
        },
    )
}

fn history_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(history_entry(), 0..6).prop_map(|entries| {
        entries
            .iter()
            .map(|e| history_line(e.time, &e.resolved, e.ip, e.port, e.proto))
            .collect()
    })
}

/// A canonical target: a host, or a network as a block by hand or an import makes one.
fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        ip().prop_map(host_target),
        (ipv4(), 0u8..=32)
            .prop_map(|(a, p)| IpNet::V4(ipnet::Ipv4Net::new(a, p).expect("prefix in range"))),
        (ipv6(), 0u8..=128)
            .prop_map(|(a, p)| IpNet::V6(ipnet::Ipv6Net::new(a, p).expect("prefix in range"))),
    ]
    .prop_map(|t| parse_target(&target_text(&t)).expect("a target's text reads back"))
}

use ipnet::IpNet;

fn trigger() -> impl Strategy<Value = Trigger> {
    (any::<u16>(), any::<bool>(), 0usize..6, "[a-z/ ]{0,12}").prop_map(|(port, tcp, m, kind)| {
        Trigger {
            port,
            proto: if tcp { Proto::Tcp } else { Proto::Udp },
            mode: Mode::ALL[m],
            kind,
        }
    })
}

fn action() -> impl Strategy<Value = Action> {
    ("[a-z_]{1,10}", "[ -~\n]{0,20}", "[ -~]{0,20}").prop_map(|(responder, detail, command)| {
        Action {
            responder,
            detail,
            undo: Undo::Command { command },
        }
    })
}

/// Block records with distinct targets; `whole_seconds` for the formats that keep no more.
fn records(whole_seconds: bool) -> impl Strategy<Value = Vec<BlockRecord>> {
    let record = (
        target(),
        0..=LAST * 1000,
        proptest::option::of(0u64..10_000_000),
        1u32..20,
        0usize..3,
        proptest::option::of(trigger()),
        "[ -~\n\"\\\\]{0,20}",
        proptest::collection::vec(action(), 0..3),
    )
        .prop_map(
            move |(target, ms, length, offences, origin, trigger, reason, actions)| {
                let ms = if whole_seconds { ms / 1000 * 1000 } else { ms };
                let since = UNIX_EPOCH + Duration::from_millis(ms);
                let until =
                    length.map(|l| UNIX_EPOCH + Duration::from_millis((ms + l).min(LAST * 1000)));
                BlockRecord {
                    members: Vec::new(),
                    target,
                    since,
                    until,
                    offences,
                    origin: [Origin::Scan, Origin::Manual, Origin::Import][origin],
                    trigger,
                    reason,
                    actions,
                }
            },
        );
    proptest::collection::vec(record, 0..6).prop_map(|rs| {
        let mut by_target = BTreeMap::new();
        for r in rs {
            by_target.entry(r.target).or_insert(r);
        }
        by_target.into_values().collect()
    })
}

fn journal_text() -> impl Strategy<Value = String> {
    records(false).prop_map(|rs| {
        rs.into_iter()
            .map(|r| {
                let line = serde_json::to_string(&crate::block::journal::Entry::Block(r))
                    .expect("a record encodes");
                line + "\n"
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn fuzz_history_arbitrary_bytes(b in bytes(256)) {
        fuzz_history(&b);
    }

    #[test]
    fn fuzz_history_written_lines_read_back(entry in history_entry()) {
        assert_history_round_trip(&entry);
    }

    #[test]
    fn fuzz_history_mutated_lines(text in history_text(), e in edits()) {
        fuzz_history(&mutate(text.into_bytes(), &e));
    }

    #[test]
    fn fuzz_control_request_arbitrary_bytes(b in bytes(256)) {
        fuzz_control_request(&b);
    }

    #[test]
    fn fuzz_control_response_arbitrary_bytes(b in bytes(256)) {
        fuzz_control_response(&b);
    }

    #[test]
    fn fuzz_control_requests_round_trip(request in request(), e in edits()) {
        assert_request_round_trip(&request);
        let json = serde_json::to_vec(&request).expect("encodes");
        fuzz_control_request(&mutate(json, &e));
    }

    #[test]
    fn fuzz_control_responses_round_trip(response in response(), e in edits()) {
        assert_response_round_trip(&response);
        let json = serde_json::to_vec(&response).expect("encodes");
        fuzz_control_response(&json);
        fuzz_control_response(&mutate(json, &e));
    }
}

proptest! {
    // Each case writes and reads files: fewer cases.
    #![proptest_config(cases(64))]

    #[test]
    fn fuzz_journal_arbitrary_bytes(b in bytes(512)) {
        fuzz_journal(&b);
    }

    #[test]
    fn fuzz_journal_mutated_lines(text in journal_text(), e in edits()) {
        fuzz_journal(&mutate(text.into_bytes(), &e));
    }

    #[test]
    fn fuzz_journal_written_blocks_come_back(rs in records(false)) {
        assert_journal_round_trip(&rs);
    }

    #[test]
    fn fuzz_blocked_file_arbitrary_bytes(b in bytes(512)) {
        fuzz_blocked_file(&b);
    }

    #[test]
    fn fuzz_blocked_file_mutated_lines(text in history_text(), e in edits()) {
        fuzz_blocked_file(&mutate(text.into_bytes(), &e));
    }

    #[test]
    fn fuzz_blocked_file_written_blocks_come_back(rs in records(true)) {
        assert_blocked_file_round_trip(&rs);
    }
}

// ---------------------------------------------------------------------------------------
// Control protocol

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Status),
        (
            proptest::collection::vec(".{0,16}", 0..3),
            proptest::option::of(".{0,10}"),
        )
            .prop_map(|(targets, origin)| Request::List { targets, origin }),
        (
            proptest::collection::vec(".{0,16}", 0..3),
            any::<bool>(),
            proptest::option::of(".{0,10}"),
            any::<bool>(),
        )
            .prop_map(|(targets, all, origin, covering)| Request::UnblockMany {
                targets,
                all,
                origin,
                covering,
            }),
        Just(Request::Reload),
        (".{0,20}", any::<bool>())
            .prop_map(|(target, covering)| Request::Unblock { target, covering }),
        (
            proptest::collection::vec(".{0,16}", 0..4),
            proptest::option::of(".{0,10}"),
            ".{0,20}",
        )
            .prop_map(|(targets, duration, reason)| Request::Block {
                targets,
                duration,
                reason,
            }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        ".{0,30}".prop_map(Response::error),
        (".{0,20}", proptest::collection::vec(".{0,20}", 0..3))
            .prop_map(|(target, detail)| Response::Unblocked { target, detail }),
        any::<u64>().prop_map(|generation| Response::Reloaded { generation }),
        (any::<u64>(), proptest::collection::vec(".{0,30}", 0..3)).prop_map(
            |(kept_generation, errors)| Response::ReloadRefused {
                kept_generation,
                errors,
            }
        ),
        proptest::collection::vec((".{0,20}", any::<bool>(), ".{0,20}"), 0..4).prop_map(|rs| {
            Response::Blocked {
                results: rs
                    .into_iter()
                    .map(|(target, ok, detail)| TargetResult { target, ok, detail })
                    .collect(),
            }
        }),
        records(false).prop_map(|blocks| Response::List {
            blocks,
            fleet: None,
        }),
        status().prop_map(Response::Status),
    ]
}

fn status() -> impl Strategy<Value = StatusReport> {
    (
        (
            ".{0,10}",
            proptest::collection::vec("[a-z]{0,5}", 0..3),
            0..=LAST * 1000,
        ),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of((
                0..=LAST * 1000,
                any::<bool>(),
                proptest::collection::vec(".{0,20}", 0..2),
            )),
        ),
        any::<[u64; 10]>(),
    )
        .prop_map(
            |((version, modes, started), (uptime_secs, generation, reload), c)| StatusReport {
                version,
                modes,
                started: UNIX_EPOCH + Duration::from_millis(started),
                uptime_secs,
                generation,
                last_reload: reload.map(|(at, ok, errors)| ReloadInfo {
                    at: UNIX_EPOCH + Duration::from_millis(at),
                    ok,
                    errors,
                }),
                counters: Counters {
                    probes_seen: c[0],
                    alerts: c[1],
                    blocks_made: c[2],
                    blocks_failed: c[3],
                    blocks_expired: c[4],
                    blocks_active: c[5],
                    probes_dropped: c[6],
                    alerts_dropped: c[7],
                    blocks_dropped: c[8],
                    responder_failures: c[9],
                },
                fleet: Vec::new(),
                storage: Vec::new(),
            },
        )
}

// ---------------------------------------------------------------------------------------
// Corpus

/// Runs every file of `fuzz/corpus/<name>/` through the target's entry function; a panic
/// names the file. The directory must hold at least one file.
fn run_corpus(name: &str) {
    let (_, target) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no sample", dir.display());
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = std::panic::catch_unwind(|| target(&bytes)) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{}: {why}", file.display());
        }
    }
}

macro_rules! corpus_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                run_corpus($name);
            }
        )*

        #[test]
        fn fuzz_corpus_covers_every_target() {
            let tested = [$($name),*];
            for (name, _) in TARGETS {
                assert!(tested.contains(&name), "no corpus test for {name}");
            }
        }
    };
}

corpus_tests! {
    fuzz_corpus_classify => "classify",
    fuzz_corpus_config => "config",
    fuzz_corpus_ignore => "ignore",
    fuzz_corpus_history => "history",
    fuzz_corpus_journal => "journal",
    fuzz_corpus_blocked_file => "blocked_file",
    fuzz_corpus_control_request => "control_request",
    fuzz_corpus_control_response => "control_response",
}

/// The real packets the classifier's own tests hold are in the corpus as files, byte for
/// byte: a packet added there is fuzzed from then on.
#[test]
fn fuzz_corpus_holds_the_captured_packets() {
    use crate::sensor::classify::samples;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/classify");
    for (name, bytes) in [
        ("syn_v4", samples::SYN_V4),
        ("fin_v4", samples::FIN_V4),
        ("null_v4", samples::NULL_V4),
        ("udp_v4", samples::UDP_V4),
        ("syn_v6", samples::SYN_V6),
        ("udp_v6", samples::UDP_V6),
        ("syn_v4_ip_options", samples::SYN_V4_IP_OPTIONS),
        ("frag1_v4", samples::FRAG1_V4),
        ("ack_v4", samples::ACK_V4),
        ("maimon_v6", samples::MAIMON_V6),
        ("out_syn_v4", samples::OUT_SYN_V4),
    ] {
        let path = dir.join(format!("{name}.bin"));
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(on_disk, bytes, "{}", path.display());
    }
}
