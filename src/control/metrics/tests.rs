//! Tests of the metrics: request parsing, the limits of the server, and the encoding as a
//! Prometheus text parser reads it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::block::manager::BlockCounters;
use crate::block::view::BlockView;
use crate::event_log::EventCounters;
use crate::pipeline::Stats;
use crate::respond::pool::Op;

// ---- request line ----

#[test]
fn get_metrics_is_served_with_or_without_a_query() {
    for head in [
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /metrics HTTP/1.0\r\n\r\n",
        "GET /metrics?format=text HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1\n\n",
    ] {
        assert_eq!(route(head.as_bytes()), Route::Metrics, "{head:?}");
    }
}

#[test]
fn other_paths_are_not_found_and_other_methods_not_allowed() {
    assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
    assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
    assert_eq!(route(b"GET /metrics/ HTTP/1.1\r\n\r\n"), Route::NotFound);
    assert_eq!(route(b"GET /../metrics HTTP/1.1\r\n\r\n"), Route::NotFound);
    for method in ["POST", "HEAD", "PUT", "DELETE", "OPTIONS", "get"] {
        let head = format!("{method} /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(route(head.as_bytes()), Route::MethodNotAllowed, "{method}");
    }
}

#[test]
fn malformed_request_lines_are_bad_requests() {
    for head in [
        &b""[..],
        b"\r\n\r\n",
        b"GET /metrics\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1 extra\r\n\r\n",
        b"GET /metrics HTTP/2.0\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"G(T /metrics HTTP/1.1\r\n\r\n",
        b"GET /metr\xffics HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
    ] {
        assert_eq!(route(head), Route::BadRequest, "{head:?}");
    }
}

#[test]
fn any_bytes_give_a_route_and_never_a_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in 0..600 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly printable, with the separators that matter.
                b"GET /metrics HTTP/1.1\r\n ?\xff"[(seed % 26) as usize]
            })
            .collect();
        let _ = route(&bytes);
    }
}

// ---- reading the head ----

/// A stream that yields its chunks one read at a time, then nothing (a client that went
/// quiet) or the end (`closed`).
struct Script {
    chunks: Vec<Vec<u8>>,
    closed: bool,
}

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.chunks.is_empty() {
            if self.closed {
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(5));
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let chunk = &mut self.chunks[0];
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.chunks.remove(0);
        }
        Ok(n)
    }
}

impl ReadTimeout for Script {
    fn set_timeout(&mut self, _: Duration) -> std::io::Result<()> {
        Ok(())
    }
}

fn script(chunks: &[&[u8]], closed: bool) -> Script {
    Script {
        chunks: chunks.iter().map(|c| c.to_vec()).collect(),
        closed,
    }
}

fn read(s: &mut Script, within: Duration) -> (Result<(), HeadError>, Vec<u8>) {
    let mut head = Vec::new();
    let stop = AtomicBool::new(false);
    let r = read_head(s, &mut head, Instant::now() + within, MAX_HEAD_BYTES, &stop);
    (r, head)
}

#[test]
fn a_head_dribbled_byte_by_byte_is_read_whole() {
    let text = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
    let bytes: Vec<&[u8]> = text.chunks(1).collect();
    let (r, head) = read(&mut script(&bytes, false), Duration::from_secs(2));
    assert_eq!(r, Ok(()));
    assert_eq!(head, text);
}

#[test]
fn a_client_that_goes_quiet_times_out_at_the_deadline() {
    let started = Instant::now();
    let (r, _) = read(
        &mut script(&[b"GET /metrics HTTP/1.1\r\n"], false),
        Duration::from_millis(300),
    );
    assert_eq!(r, Err(HeadError::TimedOut));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_head_over_the_limit_is_refused_and_never_buffered_past_it() {
    let big = vec![b'a'; 1 << 20];
    let (r, head) = read(
        &mut script(&[b"GET /", &big], false),
        Duration::from_secs(2),
    );
    assert_eq!(r, Err(HeadError::TooLarge));
    assert!(head.len() <= MAX_HEAD_BYTES + 1, "{}", head.len());
    // Exactly at the limit is fine.
    let mut exact = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    exact.resize(MAX_HEAD_BYTES - 4, b'x');
    exact.extend_from_slice(b"\r\n\r\n");
    let (r, _) = read(&mut script(&[&exact], false), Duration::from_secs(2));
    assert_eq!(r, Ok(()));
}

#[test]
fn a_closed_connection_or_a_stop_ends_the_read_without_an_answer() {
    let (r, _) = read(&mut script(&[b"GET /"], true), Duration::from_secs(2));
    assert_eq!(r, Err(HeadError::Gone));
    let stop = AtomicBool::new(true);
    let mut head = Vec::new();
    let r = read_head(
        &mut script(&[], false),
        &mut head,
        Instant::now() + Duration::from_secs(2),
        MAX_HEAD_BYTES,
        &stop,
    );
    assert_eq!(r, Err(HeadError::Gone));
}

#[test]
fn responses_close_the_connection_and_say_their_length() {
    let r = String::from_utf8(response("404 Not Found", "text/plain", "", "nope\n")).unwrap();
    assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
    assert!(r.contains("\r\nContent-Length: 5\r\n"), "{r}");
    assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\nnope\n"), "{r}");
}

// ---- encoding ----

fn sources() -> Sources {
    let (tx, _rx) = crossbeam_channel::bounded(1);
    Sources {
        stats: Arc::new(Stats::default()),
        sink: HitSink::new(tx),
        blocks: Arc::new(BlockCounters::default()),
        view: BlockView::new(),
        events: Arc::new(EventCounters::default()),
        fleet: Arc::new(crate::fleet::PullView::default()),
    }
}

fn parse(page: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{e}: {page}"))
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?} in {:?}", scrape.samples));
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn the_page_reads_the_owners_counters_at_scrape_time() {
    let s = sources();
    let server = MetricsServer::new(s.clone(), 1);
    s.stats.hits_by_mode[Mode::Stcp.index()].store(7, Ordering::Relaxed);
    s.stats.hits_by_mode[Mode::Udp.index()].store(2, Ordering::Relaxed);
    s.stats.alerts.store(3, Ordering::Relaxed);
    s.blocks.made.store(2, Ordering::Relaxed);
    s.blocks.expired.store(1, Ordering::Relaxed);
    s.events.rate_limited.store(9, Ordering::Relaxed);
    server.reloaded(true, 2, None);
    server.reloaded(false, 2, None);
    let scrape = parse(&server.render());
    assert_eq!(
        value(
            &scrape,
            "portsentry_probes_total",
            &[("mode", "stcp"), ("proto", "tcp")]
        ),
        7.0
    );
    assert_eq!(
        value(
            &scrape,
            "portsentry_probes_total",
            &[("mode", "udp"), ("proto", "udp")]
        ),
        2.0
    );
    assert_eq!(
        value(&scrape, "portsentry_probes_total", &[("mode", "atcp")]),
        0.0
    );
    assert_eq!(value(&scrape, "portsentry_alerts_total", &[]), 3.0);
    assert_eq!(value(&scrape, "portsentry_blocks_made_total", &[]), 2.0);
    assert_eq!(value(&scrape, "portsentry_blocks_expired_total", &[]), 1.0);
    assert_eq!(value(&scrape, "portsentry_blocks_active", &[]), 0.0);
    assert_eq!(value(&scrape, "portsentry_config_generation", &[]), 2.0);
    assert_eq!(
        value(&scrape, "portsentry_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "portsentry_reloads_total",
            &[("result", "refused")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "portsentry_events_dropped_total",
            &[("reason", "rate_limit")]
        ),
        9.0
    );
    assert_eq!(
        value(
            &scrape,
            "portsentry_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Later changes show in the next scrape: nothing is copied at start.
    s.blocks.made.store(5, Ordering::Relaxed);
    assert_eq!(
        value(
            &parse(&server.render()),
            "portsentry_blocks_made_total",
            &[]
        ),
        5.0
    );
}

#[test]
fn a_failing_journal_shows_its_unjournaled_blocks_and_which_files_fail() {
    use crate::storage::{Outage, StoredFile};
    let s = sources();
    let server = MetricsServer::new(s.clone(), 1);
    let scrape = parse(&server.render());
    assert_eq!(value(&scrape, "portsentry_blocks_unjournaled", &[]), 0.0);
    for file in ["journal", "history", "blocked"] {
        assert_eq!(
            value(&scrape, "portsentry_file_write_failing", &[("file", file)]),
            0.0,
            "{file}"
        );
    }
    let mut journal = Outage::new(StoredFile::Journal, std::path::Path::new("/x/state"));
    journal.report_to(&s.blocks.storage);
    journal.failed(
        &std::io::Error::from_raw_os_error(libc::ENOSPC),
        "kept",
        std::time::Instant::now(),
    );
    journal.keep(7, 4, 0);
    let scrape = parse(&server.render());
    assert_eq!(value(&scrape, "portsentry_blocks_unjournaled", &[]), 4.0);
    let failing = |file| value(&scrape, "portsentry_file_write_failing", &[("file", file)]);
    assert_eq!((failing("journal"), failing("history")), (1.0, 0.0));
}

#[test]
fn pulled_decisions_are_gauges_per_origin_read_at_scrape_time() {
    let s = sources();
    let server = MetricsServer::new(s.clone(), 1);
    s.fleet.publish(crate::fleet::PullSnapshot {
        per_origin: vec![("CAPI".into(), 25_000), ("crowdsec".into(), 3)],
        held: 25_003,
        elements: 24_990,
        refused: 2,
        over_limit: 0,
        room: "nftables".into(),
    });
    let scrape = parse(&server.render());
    let origin = |o| value(&scrape, "portsentry_fleet_decisions", &[("origin", o)]);
    assert_eq!((origin("CAPI"), origin("crowdsec")), (25_000.0, 3.0));
    assert_eq!(
        value(&scrape, "portsentry_fleet_decisions_refused_total", &[]),
        2.0
    );
    assert_eq!(
        value(&scrape, "portsentry_fleet_kernel_elements", &[]),
        24_990.0
    );
    // A local block is no fleet decision: the blocks gauge is apart.
    assert_eq!(value(&scrape, "portsentry_blocks_active", &[]), 0.0);
}

#[test]
fn responder_durations_are_histograms_per_responder_and_way() {
    let s = sources();
    let server = MetricsServer::new(s.clone(), 1);
    let t = &s.blocks.timings;
    t.apply_jobs.record(Duration::from_millis(30));
    t.record_responder("route", Op::Apply, Duration::from_millis(3));
    t.record_responder("route", Op::Apply, Duration::from_secs(40));
    t.record_responder("route", Op::Undo, Duration::from_millis(2));
    let page = server.render();
    let scrape = parse(&page);
    let histogram = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h)
                    if s.metric == name
                        && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) =>
                {
                    Some(h.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no histogram {name} {labels:?} in {page}"))
    };
    let route = histogram(
        "portsentry_responder_duration_seconds",
        &[("responder", "route"), ("op", "apply")],
    );
    let le = |h: &[prometheus_parse::HistogramCount], bound: f64| {
        h.iter()
            .find(|c| c.less_than == bound)
            .map(|c| c.count)
            .unwrap_or_else(|| panic!("no bucket {bound}: {h:?}"))
    };
    assert_eq!(le(&route, 0.001), 0.0);
    assert_eq!(le(&route, 0.005), 1.0, "cumulative buckets");
    assert_eq!(le(&route, 30.0), 1.0);
    assert_eq!(le(&route, f64::INFINITY), 2.0, "the 40 s run");
    assert!(page.contains(
        "portsentry_responder_duration_seconds_count{responder=\"route\",op=\"apply\"} 2"
    ));
    let undo = histogram(
        "portsentry_responder_duration_seconds",
        &[("responder", "route"), ("op", "undo")],
    );
    assert_eq!(le(&undo, 0.005), 1.0);
    let jobs = histogram("portsentry_block_apply_duration_seconds", &[]);
    assert_eq!(le(&jobs, 0.05), 1.0);
    assert!(page.contains("portsentry_block_apply_duration_seconds_sum 0.03"));
}

// ---- the server ----

/// Starts a server on an ephemeral loopback port.
fn serving() -> (MetricsServer, Sources, SocketAddr) {
    let s = sources();
    let server = MetricsServer::new(s.clone(), 1);
    server.follow(Some("127.0.0.1:0".parse().unwrap()));
    let addr = server.local_addr().expect("bound");
    (server, s, addr)
}

/// Sends `request` and reads the whole answer (the server closes the connection).
fn ask(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request).unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer
}

#[test]
fn the_server_answers_metrics_404_405_and_431() {
    let (server, s, addr) = serving();
    s.blocks.made.store(4, Ordering::Relaxed);
    let ok = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(
        ok.contains("Content-Type: text/plain; version=0.0.4"),
        "{ok}"
    );
    let body = ok.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        value(&parse(body), "portsentry_blocks_made_total", &[]),
        4.0
    );
    assert!(ask(addr, b"GET / HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404 "));
    let post = ask(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.contains("\r\nAllow: GET\r\n"), "{post}");
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_HEAD_BYTES + 100, b'x');
    assert!(ask(addr, &big).starts_with("HTTP/1.1 431 "));
    assert!(ask(addr, b"hello\r\n\r\n").starts_with("HTTP/1.1 400 "));
    server.stop();
    assert!(TcpStream::connect(addr).is_err(), "stopped: nobody listens");
}

#[test]
fn busy_handlers_close_new_connections_at_once_and_slow_clients_time_out() {
    let (server, _, addr) = serving();
    // Every handler held by a client that sends nothing.
    let silent: Vec<TcpStream> = (0..MAX_CLIENTS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut extra = TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "closed at once, not after the others: {:?}",
        started.elapsed()
    );
    let refused = parse(&server.render());
    assert!(
        value(
            &refused,
            "portsentry_metrics_connections_refused_total",
            &[]
        ) >= 1.0
    );
    // The silent ones are told they were too slow, READ_TIMEOUT after they connected.
    for mut c in silent {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }
    assert!(started.elapsed() < READ_TIMEOUT + Duration::from_secs(1));
    // And the handlers are free again.
    assert!(ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    server.stop();
}

#[test]
fn a_new_address_is_bound_before_the_old_one_goes_and_a_bad_one_keeps_the_old() {
    let (server, _, first) = serving();
    // Taken by someone else: the old address keeps serving.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    server.follow(Some(taken));
    assert_eq!(server.local_addr(), Some(first));
    assert!(ask(first, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    drop(squatter);
    // A free one: moved.
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    server.follow(Some(free));
    assert_eq!(server.local_addr(), Some(free));
    assert!(ask(free, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    assert!(TcpStream::connect(first).is_err(), "the old port is closed");
    // The same port on another loopback address.
    let other = SocketAddr::new("127.0.0.2".parse().unwrap(), free.port());
    server.follow(Some(other));
    assert_eq!(server.local_addr(), Some(other));
    // Off.
    server.follow(None);
    assert_eq!(server.local_addr(), None);
    assert!(TcpStream::connect(other).is_err());
}
