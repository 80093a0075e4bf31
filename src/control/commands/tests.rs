use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::block::{Origin, Trigger};
use crate::control::protocol::{ControlCall, Counters, ReloadInfo};
use crate::control::server::ControlServer;
use crate::event::{Mode, Proto};
use crate::respond::Action;

#[test]
fn a_bare_number_is_refused_with_a_hint_to_add_a_unit() {
    let err = block_duration("30").unwrap_err();
    assert!(err.contains("add a unit, e.g. 30s"), "{err}");
    assert_eq!(block_duration(" 1h 30m ").unwrap(), "1h 30m");
    assert_eq!(block_duration("7d").unwrap(), "7d");
    assert!(block_duration("0s").unwrap_err().contains("longer than 0s"));
    let err = block_duration("soon").unwrap_err();
    assert!(err.starts_with("\"soon\": "), "{err}");
    assert!(err.contains("e.g. 30s"), "{err}");
}

#[test]
fn targets_are_checked_and_canonical() {
    assert_eq!(canonical_target("10.0.0.5/24").unwrap(), "10.0.0.0/24");
    assert_eq!(canonical_target("::ffff:10.0.0.5").unwrap(), "10.0.0.5");
    assert!(canonical_target("10.0.0.x").is_err());
}

#[test]
fn target_list_allows_comments_blank_lines_and_repeats() {
    let text = "# bad hosts\n\n10.0.0.5  # scanner\n  fd77::/64\n10.0.0.5\n10.0.1.9/24\n";
    assert_eq!(
        parse_targets("list.txt", text).unwrap(),
        vec!["10.0.0.5", "fd77::/64", "10.0.1.0/24"]
    );
}

#[test]
fn every_bad_line_of_a_target_list_is_reported_with_file_and_line() {
    let text = "10.0.0.5\nexample.com\n# fine\n10.0.0.300 # typo\n";
    assert_eq!(
        parse_targets("list.txt", text).unwrap_err(),
        vec![
            "list.txt:2: \"example.com\": not an IP address or CIDR network",
            "list.txt:4: \"10.0.0.300\": not an IP address or CIDR network",
        ]
    );
    assert_eq!(
        parse_targets("list.txt", "# nothing\n").unwrap_err(),
        vec!["list.txt: no address or network in the file"]
    );
}

#[test]
fn target_file_must_be_a_regular_file_of_bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("list.txt");
    std::fs::write(&file, "10.0.0.5\nbad\n").unwrap();
    let errors = read_targets_file(&file).unwrap_err();
    assert_eq!(
        errors,
        vec![format!(
            "{}:2: \"bad\": not an IP address or CIDR network",
            file.display()
        )]
    );

    let err = read_targets_file(dir.path()).unwrap_err();
    assert!(err[0].ends_with(": not a regular file"), "{err:?}");

    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let err = read_targets_file(&fifo).unwrap_err();
    assert!(err[0].ends_with(": not a regular file"), "{err:?}");

    let big = dir.path().join("big.txt");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_TARGETS_FILE_BYTES + 1).unwrap();
    let err = read_targets_file(&big).unwrap_err();
    assert!(
        err[0].ends_with("larger than 64 MiB; split the list"),
        "{err:?}"
    );

    let err = read_targets_file(&dir.path().join("missing")).unwrap_err();
    assert!(err[0].contains("cannot open"), "{err:?}");
}

#[test]
fn socket_comes_from_the_flag_then_the_config_then_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("portsentry.conf");
    std::fs::write(&conf, "CONTROL_SOCKET=\"/tmp/ps-test.sock\"\n").unwrap();
    let flag = Path::new("/x.sock");
    assert_eq!(socket_path(Some(flag), Some(&conf)).unwrap(), flag);
    assert_eq!(
        socket_path(None, Some(&conf)).unwrap(),
        Path::new("/tmp/ps-test.sock")
    );
    std::fs::write(&conf, "SCAN_TRIGGER=\"0\"\n").unwrap();
    assert_eq!(
        socket_path(None, Some(&conf)).unwrap(),
        Path::new(DEFAULT_SOCKET)
    );
    // A config named with -c must be readable; the implicit one need not be.
    let err = socket_path(None, Some(&dir.path().join("missing.conf"))).unwrap_err();
    assert!(err.contains("cannot read the configuration file"), "{err}");
    assert!(socket_path(None, None).is_ok());
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn status_reads_as_aligned_key_value_lines() {
    let report = StatusReport {
        version: "0.1.0".into(),
        modes: vec!["atcp".into(), "audp".into()],
        started: at(1_700_000_000),
        uptime_secs: 3 * 3600 + 125,
        generation: 4,
        last_reload: Some(ReloadInfo {
            at: at(1_700_000_100),
            ok: false,
            errors: vec!["portsentry.conf:3: TCP_PORTS: \"x\": bad".into()],
        }),
        counters: Counters {
            probes_seen: 12,
            responder_failures: 2,
            ..Counters::default()
        },
        fleet: vec![crate::fleet::FleetLink {
            direction: "push".into(),
            url: "http://10.0.0.5:8080".into(),
            state: "failing, retrying".into(),
            since: None,
            decisions: None,
        }],
        storage: vec![
            crate::storage::FileHealth {
                file: "journal".into(),
                path: "/var/lib/portsentry/portsentry.state".into(),
                ..Default::default()
            },
            // Healthy: not shown.
            crate::storage::FileHealth {
                file: "blocked".into(),
                path: "/var/lib/portsentry/portsentry.blocked".into(),
                ..Default::default()
            },
        ],
    };
    let text = status_text(&report, at(1_700_000_160));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "version:            0.1.0");
    assert_eq!(lines[1], "modes:              atcp audp");
    assert_eq!(lines[3], "uptime:             3h 2m 5s");
    assert_eq!(lines[4], "generation:         4");
    assert!(
        lines[5].starts_with("last reload:        refused at ") && lines[5].ends_with("(1m ago)"),
        "{}",
        lines[5]
    );
    assert_eq!(
        lines[6],
        "                      portsentry.conf:3: TCP_PORTS: \"x\": bad"
    );
    assert_eq!(
        lines[7],
        "crowdsec push:      http://10.0.0.5:8080: failing, retrying"
    );
    assert_eq!(
        lines[8],
        "journal:            ok (/var/lib/portsentry/portsentry.state)"
    );
    assert_eq!(lines[9], "probes seen:        12");
    assert_eq!(lines[18], "responder failures: 2");
    assert_eq!(lines.len(), 19);
}

#[test]
fn status_says_since_when_the_journal_and_the_history_fail_and_what_waits() {
    let failing = |file: &str, waiting, blocks| crate::storage::FileHealth {
        file: file.into(),
        path: format!("/var/lib/portsentry/{file}"),
        failing_since: Some(at(1_700_000_000)),
        error: "No space left on device (os error 28)".into(),
        waiting,
        blocks_unwritten: blocks,
        dropped: 0,
    };
    let report = StatusReport {
        version: "0.1.0".into(),
        modes: vec!["tcp".into()],
        started: at(1_700_000_000),
        uptime_secs: 60,
        generation: 1,
        last_reload: None,
        counters: Counters::default(),
        fleet: Vec::new(),
        storage: vec![failing("journal", 5, 3), failing("history", 3, 0)],
    };
    let text = status_text(&report, at(1_700_000_060));
    let since = local_time(at(1_700_000_000));
    let journal = text.lines().find(|l| l.starts_with("journal:")).unwrap();
    assert_eq!(
        journal,
        format!(
            "journal:            failing since {since} (No space left on device (os error 28)); \
             3 block(s) not yet journaled, 5 entr(y/ies) waiting in memory"
        )
    );
    let history = text
        .lines()
        .find(|l| l.starts_with("history file:"))
        .unwrap();
    assert!(
        history.ends_with("; 3 line(s) waiting in memory"),
        "{history}"
    );
}

fn records() -> Vec<BlockRecord> {
    vec![
        BlockRecord {
            members: Vec::new(),
            target: parse_target("10.0.0.5").unwrap(),
            since: at(1_700_000_000),
            until: Some(at(1_700_003_600)),
            offences: 2,
            origin: Origin::Scan,
            trigger: Some(Trigger {
                port: 22,
                proto: Proto::Tcp,
                mode: Mode::Atcp,
                kind: "TCP SYN/Normal scan".into(),
            }),
            reason: String::new(),
            actions: vec![
                Action {
                    responder: "route".into(),
                    detail: "ip route add blackhole 10.0.0.5".into(),
                    undo: Default::default(),
                },
                Action {
                    responder: "hosts_deny".into(),
                    detail: "ALL: 10.0.0.5".into(),
                    undo: Default::default(),
                },
            ],
        },
        BlockRecord {
            members: Vec::new(),
            target: parse_target("2001:db8::/64").unwrap(),
            since: at(1_700_000_000),
            until: None,
            offences: 1,
            origin: Origin::Manual,
            trigger: None,
            reason: "lab".into(),
            actions: vec![],
        },
    ]
}

#[test]
fn list_is_a_table_with_permanent_blocks_named() {
    let text = list_text(&records());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        words(lines[0]),
        [
            "ADDRESS", "SINCE", "UNTIL", "TIMES", "MODE", "PORT", "ORIGIN", "ACTIONS"
        ]
    );
    // Dates are local: two words each.
    let row = words(lines[1]);
    assert_eq!(row[0], "10.0.0.5");
    assert_eq!(row[5..], ["2", "atcp", "22", "scan", "route,hosts_deny"]);
    let row = words(lines[2]);
    assert_eq!(row[0], "2001:db8::/64");
    assert_eq!(row[3..], ["permanent", "1", "-", "-", "manual", "-"]);
    // Columns line up: every row's second column starts where the header's does.
    let col = lines[0].find("SINCE").unwrap();
    assert!(lines.iter().all(|l| l[col - 2..col] == *"  "), "{text}");
    assert_eq!(list_text(&[]), "no blocks in force\n");
}

#[test]
fn an_escalated_prefix_is_one_line_saying_how_many_hosts_it_took_over() {
    let mut prefix = records().remove(0);
    prefix.target = parse_target("2001:db8:1:2::/64").unwrap();
    prefix.members = ["2001:db8:1:2::a", "2001:db8:1:2::b", "2001:db8:1:2::c"]
        .map(|a| a.parse().unwrap())
        .to_vec();
    let text = list_text(&[prefix]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].starts_with("2001:db8:1:2::/64 "), "{text}");
    assert!(lines[1].contains("  scan, 3 hosts  "), "{text}");
}

#[test]
fn list_text_ends_with_the_fleet_decisions_per_origin() {
    let fleet = crate::fleet::PullSnapshot {
        per_origin: vec![("CAPI".into(), 2), ("crowdsec".into(), 1)],
        held: 3,
        elements: 3,
        refused: 1,
        over_limit: 0,
        room: "nftables".into(),
    };
    let p = render(
        &Request::List {
            targets: Vec::new(),
            origin: None,
        },
        &Response::List {
            blocks: vec![],
            fleet: Some(fleet),
        },
        false,
    );
    assert_eq!(
        p.out,
        "no blocks in force\nfleet: 3 decisions in force (CAPI 2, crowdsec 1), 3 elements in \
         nftables, 1 refused\n"
    );
}

#[test]
fn list_json_is_the_blocks_array() {
    let blocks = records();
    let p = render(
        &Request::List {
            targets: vec![],
            origin: None,
        },
        &Response::List {
            blocks: blocks.clone(),
            fleet: None,
        },
        true,
    );
    assert_eq!(p.code, 0);
    let back: Vec<BlockRecord> = serde_json::from_str(&p.out).unwrap();
    assert_eq!(back, blocks);
}

#[test]
fn answers_decide_output_and_exit_code() {
    let block = Request::Block {
        targets: vec![],
        duration: None,
        reason: String::new(),
    };
    let p = render(
        &block,
        &Response::Blocked {
            results: vec![
                TargetResult {
                    target: "10.0.0.5".into(),
                    ok: true,
                    detail: "route, hosts_deny".into(),
                },
                TargetResult {
                    target: "10.0.0.1".into(),
                    ok: false,
                    detail: "protected address".into(),
                },
            ],
        },
        false,
    );
    assert_eq!(
        p.out,
        "10.0.0.5: blocked (route, hosts_deny)\n10.0.0.1: NOT blocked: protected address\n\
         1 blocked, 1 failed\n"
    );
    assert_eq!(p.code, 1);

    let unblock = Request::Unblock {
        target: "10.0.0.5".into(),
        covering: false,
    };
    let p = render(
        &unblock,
        &Response::Unblocked {
            target: "10.0.0.5".into(),
            detail: vec!["route: ip route del blackhole 10.0.0.5".into()],
        },
        false,
    );
    assert_eq!(
        (p.out.as_str(), p.code),
        (
            "10.0.0.5: unblocked\n  route: ip route del blackhole 10.0.0.5\n",
            0
        )
    );
    let p = render(&unblock, &Response::error("10.0.0.5 is not blocked"), false);
    assert_eq!(
        (p.err.as_str(), p.code),
        ("portsentry: 10.0.0.5 is not blocked\n", 1)
    );

    let p = render(
        &Request::Reload,
        &Response::Reloaded { generation: 5 },
        false,
    );
    assert_eq!(
        (p.out.as_str(), p.code),
        ("configuration generation 5 in force\n", 0)
    );
    let p = render(
        &Request::Reload,
        &Response::ReloadRefused {
            kept_generation: 4,
            errors: vec!["a.conf:1: X: bad".into(), "a.conf:2: Y: bad".into()],
        },
        false,
    );
    assert_eq!(
        (p.err.as_str(), p.code),
        (
            "reload refused, generation 4 kept:\n  a.conf:1: X: bad\n  a.conf:2: Y: bad\n",
            1
        )
    );

    let p = render(
        &Request::Status,
        &Response::Reloaded { generation: 1 },
        false,
    );
    assert_eq!(p.code, 1);
    assert!(
        p.err
            .contains("unexpected answer \"reloaded\" to \"status\""),
        "{}",
        p.err
    );
}

#[test]
fn status_json_is_the_report() {
    let report = StatusReport {
        version: "0.1.0".into(),
        modes: vec!["atcp".into()],
        started: SystemTime::UNIX_EPOCH,
        uptime_secs: 5,
        generation: 2,
        last_reload: None,
        counters: Default::default(),
        fleet: Vec::new(),
        storage: Vec::new(),
    };
    let p = render(&Request::Status, &Response::Status(report.clone()), true);
    assert_eq!(p.code, 0);
    let back: StatusReport = serde_json::from_str(&p.out).unwrap();
    assert_eq!(back, report);
}

#[test]
fn a_filtered_list_that_matches_nothing_says_so() {
    let filtered = Request::List {
        targets: vec!["10.0.0.5".into()],
        origin: None,
    };
    let none = Response::List {
        blocks: vec![],
        fleet: None,
    };
    let p = render(&filtered, &none, false);
    assert_eq!((p.out.as_str(), p.code), ("no block in force matches\n", 0));
    let p = render(&filtered, &none, true);
    assert_eq!((p.out.as_str(), p.code), ("[]\n", 0));
}

#[test]
fn unblock_of_several_prints_each_target_and_a_count() {
    let many = Request::UnblockMany {
        targets: vec![],
        all: true,
        origin: Some("scan".into()),
        covering: false,
    };
    let results = crate::control::protocol::sample_unblock_results();
    let p = render(&many, &Response::UnblockedMany { results }, false);
    assert_eq!(
        p.out,
        "10.0.0.5: unblocked\n  route: ip route del 10.0.0.5\n\
         10.0.0.6: NOT unblocked: 10.0.0.6 is not blocked\n1 unblocked, 1 failed\n"
    );
    assert_eq!(p.code, 1);
    let p = render(&many, &Response::UnblockedMany { results: vec![] }, false);
    assert_eq!(
        (p.out.as_str(), p.code),
        ("no block of origin scan in force\n", 0)
    );
}

#[test]
fn a_block_the_daemon_extended_says_so() {
    let block = Request::Block {
        targets: vec![],
        duration: Some("2h".into()),
        reason: String::new(),
    };
    let p = render(
        &block,
        &Response::Blocked {
            results: vec![TargetResult {
                target: "10.0.0.5".into(),
                ok: true,
                detail: "extended until 2026-12-07 14:00:00".into(),
            }],
        },
        false,
    );
    assert_eq!(
        (p.out.as_str(), p.code),
        (
            "10.0.0.5: blocked (extended until 2026-12-07 14:00:00)\n",
            0
        )
    );
}

#[test]
fn a_missing_daemon_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let p = run(&sock, Request::Status, false);
    assert_eq!(p.code, 1);
    assert_eq!(
        p.err,
        format!(
            "portsentry: portsentry is not running (no control socket at {})\n",
            sock.display()
        )
    );
}

#[test]
fn a_long_block_list_goes_in_several_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.path().join("p.sock");
    let (tx, rx) = crossbeam_channel::unbounded::<ControlCall>();
    let server = ControlServer::start(&sock, tx).unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        for call in rx {
            seen.fetch_add(1, Ordering::SeqCst);
            let response = match &call.request {
                Request::Block {
                    targets,
                    duration,
                    reason,
                } if duration.as_deref() == Some("1h") && reason == "test" => Response::Blocked {
                    results: targets
                        .iter()
                        .map(|t| TargetResult {
                            target: t.clone(),
                            ok: t != "10.1.0.7",
                            detail: String::new(),
                        })
                        .collect(),
                },
                other => Response::error(format!("unexpected {other:?}")),
            };
            call.answer(response);
        }
    });
    let targets: Vec<String> = (0..MAX_TARGETS_PER_REQUEST * 2 + 1)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let p = run(
        &sock,
        Request::Block {
            targets,
            duration: Some("1h".into()),
            reason: "test".into(),
        },
        false,
    );
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert!(
        p.out.contains("10.1.0.7: NOT blocked: \n"),
        "{}",
        &p.out[..200]
    );
    assert!(
        p.out.ends_with("100000 blocked, 1 failed\n"),
        "{}",
        &p.out[p.out.len() - 100..]
    );
    assert_eq!(p.code, 1);
    server.stop();
}
