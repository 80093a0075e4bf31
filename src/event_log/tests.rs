//! Tests of the structured events: the shape of each line, the writer's rate limit, and
//! reopening for logrotate.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::*;
use crate::event::{Hit, Mode, ProbeKind, Proto};
use crate::record::{Origin, Trigger, parse_target};
use crate::respond::{Action, Undo};

fn alert(src: &str, port: u16) -> Candidate {
    Candidate {
        hit: Hit {
            src: src.parse().unwrap(),
            port,
            mode: Mode::Stcp,
            kind: ProbeKind::Syn,
            ip_options: false,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        },
        count: 3,
        actionable: true,
        already_blocked: false,
    }
}

fn record(until: Option<Duration>) -> BlockRecord {
    let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    BlockRecord {
        members: Vec::new(),
        target: parse_target("fd77:1::2").unwrap(),
        since,
        until: until.map(|d| since + d),
        offences: 2,
        origin: Origin::Scan,
        trigger: Some(Trigger {
            port: 22,
            proto: Proto::Tcp,
            mode: Mode::Atcp,
            kind: "TCP SYN/Normal scan".into(),
        }),
        reason: String::new(),
        actions: vec![Action {
            responder: "route".into(),
            detail: "ip route add unreachable fd77:1::2".into(),
            undo: Undo::Command {
                command: "ip route del unreachable fd77:1::2".into(),
            },
        }],
    }
}

fn line(event: &Event) -> String {
    let mut out = Vec::new();
    event.encode("sentry1", &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn json(event: &Event) -> Value {
    serde_json::from_str(&line(event)).unwrap()
}

#[test]
fn every_line_starts_with_time_and_host_then_names_its_event() {
    let text = line(&Event::alert(&alert("10.77.1.2", 135), "10.77.1.2"));
    assert!(
        text.starts_with(r#"{"time":"2023-11-14T22:13:20.123Z","host":"sentry1","event":"alert","#),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn an_alert_event_carries_the_detection_line_typed() {
    let v = json(&Event::alert(&alert("10.77.1.2", 135), "scanner.example"));
    assert_eq!(v["src"], "10.77.1.2");
    assert_eq!(v["resolved"], "scanner.example");
    assert_eq!(v["port"], 135);
    assert_eq!(v["proto"], "tcp");
    assert_eq!(v["mode"], "stcp");
    assert_eq!(v["kind"], "TCP SYN/Normal scan");
    assert_eq!(v["count"], 3);
    assert_eq!(v["actionable"], true);
    assert_eq!(v["already_blocked"], false);
    assert_eq!(v["ip_options"], false);
}

#[test]
fn a_block_event_says_until_or_permanent_and_the_responders() {
    let v = json(&Event::block(&record(Some(Duration::from_secs(3600)))));
    assert_eq!(v["event"], "block");
    assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
    assert_eq!(v["target"], "fd77:1::2");
    assert_eq!(v["until"], "2023-11-14T23:13:20.000Z");
    assert_eq!(v["permanent"], false);
    assert_eq!(v["duration_secs"], 3600);
    assert_eq!(v["offences"], 2);
    assert_eq!(v["origin"], "scan");
    assert_eq!(v["mode"], "atcp");
    assert_eq!(v["port"], 22);
    assert_eq!(v["proto"], "tcp");
    assert_eq!(v["responders"], serde_json::json!(["route"]));
    let manual = BlockRecord {
        members: Vec::new(),
        origin: Origin::Manual,
        trigger: None,
        reason: "seen in a report".into(),
        ..record(None)
    };
    let v = json(&Event::block(&manual));
    assert_eq!(v["permanent"], true);
    assert!(v["until"].is_null() && v["duration_secs"].is_null());
    assert!(v["mode"].is_null() && v["port"].is_null() && v["proto"].is_null());
    assert_eq!(v["reason"], "seen in a report");
}

#[test]
fn an_unblock_event_names_its_reason_and_what_could_not_be_undone() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_003_600);
    let outcomes = vec![
        ("route".to_string(), UndoOutcome::Done("deleted".into())),
        (
            "run_cmd".to_string(),
            UndoOutcome::Impossible("no UNKILL_RUN_CMD".into()),
        ),
    ];
    let rec = record(Some(Duration::from_secs(3600)));
    let v = json(&Event::unblock(&rec, UnblockReason::Expired, at, &outcomes));
    assert_eq!(v["event"], "unblock");
    assert_eq!(v["time"], "2023-11-14T23:13:20.000Z");
    assert_eq!(v["reason"], "expired");
    assert_eq!(v["since"], "2023-11-14T22:13:20.000Z");
    assert_eq!(v["responders"], serde_json::json!(["route", "run_cmd"]));
    assert_eq!(v["failed"], serde_json::json!(["run_cmd"]));
    let v = json(&Event::unblock(&rec, UnblockReason::Manual, at, &[]));
    assert_eq!(v["reason"], "manual");
}

#[test]
fn a_reload_event_gives_the_generation_and_the_errors() {
    let v = json(&Event::reload(&Ok(3), 3));
    assert_eq!(
        (v["ok"].clone(), v["generation"].clone()),
        (true.into(), 3.into())
    );
    assert_eq!(v["errors"], serde_json::json!([]));
    let errors = vec!["p.conf:4: SCAN_TRIGGER: \"x\": not a whole number".to_string()];
    let v = json(&Event::reload(&Err(errors.clone()), 2));
    assert_eq!(v["ok"], false);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["errors"], serde_json::json!(errors));
}

#[test]
fn an_off_sink_takes_nothing() {
    let sink = EventSink::off();
    assert!(!sink.enabled());
    sink.send(Event::reload(&Ok(1), 1));
}

fn config(path: Option<&Path>, rate: u32) -> Config {
    let mut c = crate::config::build::defaults(Path::new("p.conf"));
    c.event_log = path.map(Path::to_path_buf);
    c.event_log_rate_limit = rate;
    c
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn alert_events_over_the_rate_are_counted_and_blocks_are_never_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/events.jsonl");
    let log = EventLog::start(&config(Some(&path), 10)).unwrap();
    let sink = log.sink();
    assert!(sink.enabled());
    for i in 0..100u16 {
        sink.send(Event::alert(&alert("10.77.1.2", i + 1), "x"));
    }
    sink.send(Event::block(&record(None)));
    let counters = log.counters();
    log.stop();
    let written = lines(&path);
    let kinds = |k: &str| written.iter().filter(|v| v["event"] == k).count();
    assert_eq!(kinds("block"), 1, "{written:?}");
    assert!(
        (10..=11).contains(&kinds("alert")),
        "the burst is the rate: {}",
        kinds("alert")
    );
    let over = counters.rate_limited.load(Ordering::Relaxed);
    assert_eq!(over + kinds("alert") as u64, 100);
    assert_eq!(
        counters.written.load(Ordering::Relaxed),
        written.len() as u64
    );
    let mode = std::fs::metadata(&path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o640
    );
}

#[test]
fn a_reload_reopens_the_file_so_logrotate_can_move_it_and_follows_a_new_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let log = EventLog::start(&config(Some(&path), 0)).unwrap();
    log.send(Event::reload(&Ok(1), 1));
    // logrotate: move the file away, then SIGHUP (a reload, whatever its outcome).
    let wait_written = |n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while log.counters().written.load(Ordering::Relaxed) < n {
            assert!(std::time::Instant::now() < deadline, "not written");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_written(1);
    let rotated = dir.path().join("events.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    log.follow(&config(Some(&path), 0));
    log.send(Event::reload(&Ok(2), 2));
    wait_written(2);
    // A new path.
    let moved = dir.path().join("other.jsonl");
    log.follow(&config(Some(&moved), 0));
    log.send(Event::reload(&Ok(3), 3));
    wait_written(3);
    // Off: nothing more is taken.
    log.follow(&config(None, 0));
    assert!(!log.sink().enabled());
    log.send(Event::reload(&Ok(4), 4));
    log.stop();
    let generation = |p: &Path| -> Vec<u64> {
        lines(p)
            .iter()
            .map(|v| v["generation"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(generation(&rotated), vec![1]);
    assert_eq!(generation(&path), vec![2]);
    assert_eq!(generation(&moved), vec![3]);
}

#[test]
fn a_path_that_cannot_be_opened_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let log = EventLog::start(&config(Some(&path), 0)).unwrap();
    // A directory where the file should be: the open fails.
    let bad = dir.path().join("adir");
    std::fs::create_dir(&bad).unwrap();
    log.follow(&config(Some(&bad), 0));
    log.send(Event::reload(&Err(vec!["x".into()]), 1));
    log.stop();
    assert_eq!(lines(&path).len(), 1, "written to the old file");
}
