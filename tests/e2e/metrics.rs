//! Metrics and structured events, end to end: the real daemon in the lab with
//! `METRICS_LISTEN` and `EVENT_LOG`; `/metrics` fetched from inside the defender namespace
//! and read by a Prometheus text parser; a thousand slow clients on the metrics port while
//! a scan is detected and blocked; every line of the events file checked against the
//! documented fields.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::blocks::wait_for;
use crate::lab::{Daemon, Lab};

/// Stealth TCP on a few trap ports, blocks by route, the extra lines first.
fn config(lab: &Lab, extra: &str) -> String {
    lab.write_config(&format!(
        "{extra}\n\
         TCP_PORTS=\"1,11,79,111,31337\"\n\
         BLOCK_TCP=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n"
    ))
    .display()
    .to_string()
}

/// `GET /metrics` from inside the defender namespace; the body when the answer is a 200.
fn scrape(lab: &Lab, addr: SocketAddr) -> Option<String> {
    lab.in_def(move || {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: portsentry\r\n\r\n")
            .ok()?;
        let mut answer = String::new();
        c.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200 ").then(|| body.to_string())
    })
    .join()
    .expect("scrape thread")
}

/// The parsed page; panics when the server does not answer within `secs`.
pub(crate) fn metrics(lab: &Lab, addr: SocketAddr, secs: u64) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(body) = scrape(lab, addr) {
            return prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
                .unwrap_or_else(|e| panic!("not Prometheus text: {e}: {body}"));
        }
        assert!(
            Instant::now() < deadline,
            "/metrics did not answer within {secs}s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the counter or gauge `name` whose labels include `labels`.
pub(crate) fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?} in {:?}", scrape.samples));
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name} is not a single value: {other:?}"),
    }
}

/// The number of observations of the histogram `name` with `labels`.
fn observations(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h)
                if s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) =>
            {
                h.iter()
                    .find(|b| b.less_than == f64::INFINITY)
                    .map(|b| b.count)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"))
}

// ---- the documented fields of the events file (README, "Structured events") ----

/// A field's JSON type.
#[derive(Debug, Clone, Copy)]
enum Ty {
    /// A string.
    Str,
    /// An RFC 3339 UTC time (`2026-03-01T10:00:00.123Z`).
    Time,
    /// An RFC 3339 time or null.
    TimeOrNull,
    /// An IP address as text.
    Ip,
    /// A non-negative whole number.
    Num,
    /// A whole number or null.
    NumOrNull,
    /// A string or null.
    StrOrNull,
    /// true / false.
    Bool,
    /// An array of strings.
    Strs,
}

/// Every line has these, first.
const COMMON: &[(&str, Ty)] = &[("time", Ty::Time), ("host", Ty::Str), ("event", Ty::Str)];

/// The fields of each event, besides the common ones: the stable schema.
const SCHEMA: &[(&str, &[(&str, Ty)])] = &[
    (
        "alert",
        &[
            ("src", Ty::Ip),
            ("resolved", Ty::Str),
            ("port", Ty::Num),
            ("proto", Ty::Str),
            ("mode", Ty::Str),
            ("kind", Ty::Str),
            ("count", Ty::Num),
            ("actionable", Ty::Bool),
            ("already_blocked", Ty::Bool),
            ("ip_options", Ty::Bool),
        ],
    ),
    (
        "block",
        &[
            ("target", Ty::Str),
            ("until", Ty::TimeOrNull),
            ("permanent", Ty::Bool),
            ("duration_secs", Ty::NumOrNull),
            ("offences", Ty::Num),
            ("origin", Ty::Str),
            ("mode", Ty::StrOrNull),
            ("port", Ty::NumOrNull),
            ("proto", Ty::StrOrNull),
            ("kind", Ty::StrOrNull),
            ("reason", Ty::Str),
            ("responders", Ty::Strs),
        ],
    ),
    (
        "unblock",
        &[
            ("target", Ty::Str),
            ("reason", Ty::Str),
            ("since", Ty::Time),
            ("origin", Ty::Str),
            ("offences", Ty::Num),
            ("responders", Ty::Strs),
            ("failed", Ty::Strs),
        ],
    ),
    (
        "reload",
        &[
            ("ok", Ty::Bool),
            ("generation", Ty::Num),
            ("errors", Ty::Strs),
        ],
    ),
];

fn is_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| t.ends_with('Z') && t.contains('T') && humantime::parse_rfc3339(t).is_ok())
}

fn has_type(v: &Value, ty: Ty) -> bool {
    match ty {
        Ty::Str => v.is_string(),
        Ty::Time => is_time(v),
        Ty::TimeOrNull => v.is_null() || is_time(v),
        Ty::Ip => v
            .as_str()
            .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
        Ty::Num => v.is_u64(),
        Ty::NumOrNull => v.is_null() || v.is_u64(),
        Ty::StrOrNull => v.is_null() || v.is_string(),
        Ty::Bool => v.is_boolean(),
        Ty::Strs => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
    }
}

/// Checks one line against the schema: valid JSON, `time` and `host` first, every field
/// of its event present with its type, and no other field.
fn validate(line: &str) -> Value {
    assert!(
        line.starts_with("{\"time\":\"") && line.contains("\",\"host\":\""),
        "time and host first: {line}"
    );
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"));
    let event = v["event"]
        .as_str()
        .unwrap_or_else(|| panic!("no event: {line}"));
    let (_, fields) = SCHEMA
        .iter()
        .find(|(name, _)| *name == event)
        .unwrap_or_else(|| panic!("undocumented event {event}: {line}"));
    let all: Vec<&(&str, Ty)> = COMMON.iter().chain(fields.iter()).collect();
    for (name, ty) in &all {
        let field = obj
            .get(*name)
            .unwrap_or_else(|| panic!("{event}: no {name}: {line}"));
        assert!(
            has_type(field, *ty),
            "{event}: {name} is not {ty:?}: {line}"
        );
    }
    for key in obj.keys() {
        assert!(
            all.iter().any(|(name, _)| name == key),
            "{event}: undocumented field {key}: {line}"
        );
    }
    v
}

#[test]
fn counters_move_after_a_scan_and_every_event_line_has_the_documented_fields() {
    let lab = Lab::new();
    let events = lab.path("log/events.jsonl");
    let listen: SocketAddr = "127.0.0.1:9736".parse().unwrap();
    let extra = format!(
        "METRICS_LISTEN=\"{listen}\"\nEVENT_LOG=\"{}\"",
        events.display()
    );
    let conf = config(&lab, &extra);
    let d = Daemon::start(&lab, &["-c", &conf, "-stcp"]);
    d.expect_line(&format!("metrics served on http://{listen}/metrics"), 5);
    let before = metrics(&lab, listen, 5);
    assert_eq!(
        value(
            &before,
            "portsentry_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value(&before, "portsentry_config_generation", &[]), 1.0);
    assert_eq!(
        value(&before, "portsentry_probes_total", &[("mode", "stcp")]),
        0.0
    );
    assert_eq!(value(&before, "portsentry_blocks_made_total", &[]), 0.0);

    // A SYN scan of five trap ports: detected, blocked at the third (forgeable evidence,
    // so for FORGEABLE_BLOCK_TIMEOUT).
    let att = lab.att4.clone();
    lab.nmap(&["-sS", "-p", "1,11,79,111,31337", &lab.def4]);
    d.expect_line(
        &format!("Host {att} has been blocked via dropped route"),
        10,
    );
    let after = metrics(&lab, listen, 5);
    let stcp = [("mode", "stcp"), ("proto", "tcp")];
    assert!(value(&after, "portsentry_probes_total", &stcp) >= 3.0);
    assert_eq!(
        value(&after, "portsentry_probes_total", &[("mode", "tcp")]),
        0.0
    );
    assert!(value(&after, "portsentry_alerts_total", &[]) >= 3.0);
    assert_eq!(value(&after, "portsentry_blocks_made_total", &[]), 1.0);
    assert_eq!(value(&after, "portsentry_blocks_active", &[]), 1.0);
    assert_eq!(value(&after, "portsentry_blocks_failed_total", &[]), 0.0);
    assert!(
        observations(
            &after,
            "portsentry_responder_duration_seconds",
            &[("responder", "route"), ("op", "apply")]
        ) >= 1.0
    );
    assert!(observations(&after, "portsentry_block_apply_duration_seconds", &[]) >= 1.0);

    // Unblocked by hand, and a manual block that expires.
    lab.ctl_ok(&["unblock", &att]);
    let (short, _) = lab.add_attacker_addrs(33);
    lab.ctl_ok(&["block", &short, "--for", "2s", "--reason", "e2e"]);
    d.expect_line(
        &format!("Host {short} has been unblocked (block expired after 2s)"),
        10,
    );
    let later = metrics(&lab, listen, 5);
    assert_eq!(value(&later, "portsentry_blocks_unblocked_total", &[]), 1.0);
    assert_eq!(value(&later, "portsentry_blocks_expired_total", &[]), 1.0);
    assert_eq!(value(&later, "portsentry_blocks_made_total", &[]), 2.0);
    assert_eq!(value(&later, "portsentry_blocks_active", &[]), 0.0);
    assert!(
        observations(
            &later,
            "portsentry_responder_duration_seconds",
            &[("responder", "route"), ("op", "undo")]
        ) >= 2.0
    );

    // A reload taken, then one refused (the watcher may add reloads of its own: at least).
    lab.ctl_ok(&["reload"]);
    std::fs::write(
        lab.path("portsentry.conf"),
        lab.config_text(&format!("{extra}\nSCAN_TRIGGER=\"x\"")),
    )
    .unwrap();
    let refused = lab.ctl(&["reload"]);
    assert!(!refused.status.success(), "{refused:?}");
    let reloads = metrics(&lab, listen, 5);
    assert!(value(&reloads, "portsentry_reloads_total", &[("result", "ok")]) >= 1.0);
    assert!(
        value(
            &reloads,
            "portsentry_reloads_total",
            &[("result", "refused")]
        ) >= 1.0
    );
    assert!(value(&reloads, "portsentry_config_generation", &[]) >= 2.0);

    // The events file: every line valid, and each kind there with what happened.
    let mut d = d;
    d.stop();
    let text = std::fs::read_to_string(&events).expect("the events file");
    let lines: Vec<Value> = text.lines().map(validate).collect();
    let of = |kind: &str| -> Vec<&Value> { lines.iter().filter(|v| v["event"] == kind).collect() };
    let alerts = of("alert");
    assert!(
        alerts
            .iter()
            .any(|a| a["src"] == att.as_str() && a["mode"] == "stcp" && a["actionable"] == true),
        "{text}"
    );
    let blocks = of("block");
    assert!(
        blocks.iter().any(|b| b["target"] == att.as_str()
            && b["origin"] == "scan"
            && b["permanent"] == false
            && b["duration_secs"] == 3600
            && b["proto"] == "tcp"
            && b["responders"] == serde_json::json!(["route"])),
        "{text}"
    );
    assert!(
        blocks
            .iter()
            .any(|b| b["target"] == short.as_str() && b["origin"] == "manual"),
        "{text}"
    );
    let unblocks = of("unblock");
    assert!(
        unblocks
            .iter()
            .any(|u| u["target"] == att.as_str() && u["reason"] == "manual"),
        "{text}"
    );
    assert!(
        unblocks
            .iter()
            .any(|u| u["target"] == short.as_str() && u["reason"] == "expired"),
        "{text}"
    );
    let reloads = of("reload");
    assert!(reloads.iter().any(|r| r["ok"] == true), "{text}");
    assert!(
        reloads.iter().any(|r| r["ok"] == false
            && r["errors"][0]
                .as_str()
                .is_some_and(|e| e.contains("SCAN_TRIGGER"))),
        "{text}"
    );
    // The block's event comes after the alerts that caused it.
    let first_block = lines.iter().position(|v| v["event"] == "block");
    let first_alert = lines.iter().position(|v| v["event"] == "alert");
    assert!(first_alert < first_block, "{text}");
}

/// Daemon threads and open descriptors, from /proc.
fn threads_and_fds(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (threads, fds)
}

/// Raises this process's open-file limit to its hard limit (the clients need ~1,000).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Slow clients from `src` to `dst`, `count` of them over `threads` threads, for `for_`:
/// each connects and sends nothing (one in four dribbles a byte every 300 ms); one the
/// server closed connects again. Returns how many connections were made in all.
fn slow_clients(
    lab: &Lab,
    src: std::net::IpAddr,
    dst: SocketAddr,
    count: usize,
    threads: usize,
    for_: Duration,
) -> Vec<std::thread::JoinHandle<usize>> {
    let connect = move || -> Option<TcpStream> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        sock.bind(&SocketAddr::new(src, 0).into()).ok()?;
        sock.connect_timeout(&dst.into(), Duration::from_millis(500))
            .ok()?;
        let s: TcpStream = sock.into();
        s.set_nonblocking(true).ok()?;
        Some(s)
    };
    (0..threads)
        .map(|t| {
            lab.in_att(move || {
                let deadline = Instant::now() + for_;
                let mut made = 0;
                let mut clients: Vec<Option<TcpStream>> = (0..count / threads)
                    .map(|_| {
                        let c = connect();
                        made += usize::from(c.is_some());
                        c
                    })
                    .collect();
                let mut round = 0u64;
                while Instant::now() < deadline {
                    round += 1;
                    for (i, slot) in clients.iter_mut().enumerate() {
                        let mut buf = [0u8; 512];
                        let gone = match slot {
                            Some(c) => match c.read(&mut buf) {
                                Ok(_) => true,
                                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                            },
                            None => true,
                        };
                        if gone {
                            *slot = connect();
                            made += usize::from(slot.is_some());
                        } else if (i + t) % 4 == 0
                            && let Some(c) = slot
                        {
                            let _ =
                                c.write_all(&[b"GET /metrics HTTP/1.1\r\n"[(round % 23) as usize]]);
                        }
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
                made
            })
        })
        .collect()
}

#[test]
fn a_thousand_slow_clients_on_the_metrics_port_leave_detection_unaffected() {
    raise_fd_limit();
    let lab = Lab::new();
    let listen: SocketAddr = format!("{}:9736", lab.def4).parse().unwrap();
    let conf = config(&lab, &format!("METRICS_LISTEN=\"{listen}\""));
    let d = Daemon::start(&lab, &["-c", &conf, "-stcp"]);
    d.expect_line(&format!("metrics served on http://{listen}/metrics"), 5);
    metrics(&lab, listen, 5);
    let pid = d.daemon_pid();
    let (threads0, fds0) = threads_and_fds(pid);
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let rss0 = rss(pid);

    // The slow clients come from an address of their own; the scan from the lab's.
    let (slow4, _) = lab.add_attacker_addrs(44);
    let src: std::net::IpAddr = slow4.parse().unwrap();
    let attack = Duration::from_secs(8);
    let clients = slow_clients(&lab, src, listen, 1000, 4, attack);
    std::thread::sleep(Duration::from_secs(2));

    // Under way: the daemon holds no more threads and a bounded number of descriptors.
    let (threads1, fds1) = threads_and_fds(pid);
    assert!(threads1 <= threads0, "threads {threads0} -> {threads1}");
    assert!(
        fds1 <= fds0 + portsentry::control::metrics::MAX_CLIENTS + 4,
        "descriptors {fds0} -> {fds1}"
    );

    // A scan now is still detected and blocked within a couple of seconds.
    let att = lab.att4.clone();
    lab.nmap(&["-sS", "-p", "1,11,79,111,31337", &lab.def4]);
    let scanned = Instant::now();
    d.expect_line(&format!("Host {att} has been blocked via dropped route"), 3);
    let took = scanned.elapsed();
    eprintln!("blocked {took:?} after the scan ended, with 1,000 slow clients on the metrics port");
    assert!(took < Duration::from_secs(2), "{took:?}");

    let made: usize = clients.into_iter().map(|c| c.join().unwrap_or(0)).sum();
    eprintln!("{made} slow connections made");
    assert!(made >= 1000, "{made}");
    // Afterwards /metrics answers again, and says what it refused.
    let after = metrics(&lab, listen, 5);
    assert!(
        value(&after, "portsentry_metrics_connections_refused_total", &[]) >= 900.0,
        "most of them were closed at once"
    );
    assert_eq!(value(&after, "portsentry_blocks_made_total", &[]), 1.0);
    assert!(
        wait_for(5, || threads_and_fds(pid).1 <= fds0 + 2),
        "descriptors back: {fds0} -> {:?}",
        threads_and_fds(pid)
    );
    // No thread per client; fewer is fine: idle responder workers end after 5 s.
    let threads2 = threads_and_fds(pid).0;
    assert!(threads2 <= threads0, "threads {threads0} -> {threads2}");
    let rss1 = rss(pid);
    assert!(rss1 < rss0 + 20 * 1024, "memory {rss0} kB -> {rss1} kB");
}
