//! Block lifecycle benchmark, on the real (release) binary in a network namespace lab.
//!
//! 1. Restore: a journal with N active blocks (N = 1,000 and 20,000) is re-applied at start
//!    through the default responders (`ip route add unreachable` + a hosts.deny line): wall
//!    time from the daemon's start to its "block(s) re-applied" line, CPU of the daemon and
//!    its children (the `ip` commands) per block, and a check that the kernel's route table
//!    holds all N.
//! 2. `portsentry list` latency over the control socket with 20,000 blocks in force (text
//!    and `--json`), median of RUNS runs.
//! 3. The same restore with `KILL_NFTABLES="1"` alone (N = 20,000 and 100,000, each block
//!    with its time left): wall time from the daemon's start until the kernel's sets hold
//!    all N (polled over netlink every 2 ms), until every block is re-applied, the daemon's
//!    CPU per block, and its peak RSS.
//! 5. (printed before 3) Restore of 20,000 journaled blocks with the shipped responders
//!    (nftables + `ip route add unreachable` + a hosts.deny line, as conf/portsentry.conf),
//!    then with the route alone and hosts.deny alone: time from the daemon's "listening" line
//!    until the kernel's route table, the hosts.deny file and the nftables sets each hold all
//!    N (watched from inside the lab every 5 ms, less often for large N), CPU per block,
//!    peak RSS, and the RSS per block beyond an idle daemon.
//!    `PORTSENTRY_BENCH_100K=1` adds N = 100,000 (`PORTSENTRY_BENCH_100K_ONLY=1`: only that).
//!    `PORTSENTRY_BENCH_SHIPPED_ONLY=1` runs only this (`PORTSENTRY_BENCH_RUNS`: runs each,
//!    100,000 included).
//! 6. Idle RSS with the shipped config (conf/portsentry.conf, the modes of
//!    conf/default-portsentry: `-atcp -audp`), its files moved into the lab: the daemon's
//!    VmRSS 5 s after it listens, what smaps_rollup says of it (anonymous memory, file
//!    pages), its threads and its child processes (Lua plugins run in children, which do
//!    not count in its RSS). Then the same daemon's peak and settled RSS after 100,000 SYNs
//!    from forged sources (examples/synflood.rs: 10.78.0.0/16, about 65,000 distinct, at
//!    20,000 a second; build it first with `cargo build --release --example synflood`).
//!    `PORTSENTRY_BENCH_IDLE_ONLY=1` runs only this.
//! 4. Blocks per second through the whole daemon (control socket, block manager, responder
//!    pool, journal): `portsentry block --from-file` of N hosts, `KILL_NFTABLES` alone vs
//!    `KILL_ROUTE` alone.
//!
//! The blocked addresses (10.78.0.0/16, fd78::/64) only ever appear as route entries inside
//! the lab's namespace; no packet is sent to them.
//!
//! Run as root: `cargo bench --bench blocks` (figures printed and written to
//! `target/bench-blocks.txt`; BENCHMARKS.md quotes them).

#[allow(dead_code)]
#[path = "../tests/e2e/lab.rs"]
mod lab;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use lab::{Daemon, Lab};
use portsentry::block::journal::{Entry, Journal};
use portsentry::block::{BlockRecord, Origin, host_target};
use portsentry::respond::nftables::NftBackend;

const RUNS: usize = 20;

/// The i-th blocked address: IPv4 for even i, IPv6 for odd.
fn address(i: usize) -> IpAddr {
    if i.is_multiple_of(2) {
        let n = i / 2;
        IpAddr::from([10, 78, (n / 256 % 256) as u8, (n % 256) as u8])
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(
            (0xfd78_u128 << 112) | (i as u128 + 1),
        ))
    }
}

/// Writes a journal of `n` blocks made by hand, as an earlier run would have: permanent,
/// or with `left` to run.
fn write_journal(lab: &Lab, n: usize, left: Option<Duration>) {
    let (mut journal, _) = Journal::open(&lab.path("portsentry.state")).expect("journal");
    let since = SystemTime::now();
    let entries: Vec<Entry> = (0..n)
        .map(|i| {
            Entry::Block(BlockRecord {
                members: Vec::new(),
                target: host_target(address(i)),
                since,
                until: left.map(|d| since + d),
                offences: 1,
                origin: Origin::Manual,
                trigger: None,
                reason: "benchmark".into(),
                actions: Vec::new(),
            })
        })
        .collect();
    journal.append(&entries).expect("append");
}

/// user + system CPU seconds of a process and of its reaped children.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14-17 (utime stime cutime cstime) are 11..=14 after the ") state" split.
    let ticks = f.get(11..15).map_or(0.0, |s| s.iter().sum());
    ticks / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn config(lab: &Lab) -> String {
    lab.write_config(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nBLOCK_UDP=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n\
         KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"",
    )
    .display()
    .to_string()
}

fn restore(n: usize, out: &mut String) -> Option<(Lab, Daemon)> {
    let lab = Lab::new();
    let conf = config(&lab);
    write_journal(&lab, n, None);
    let t0 = Instant::now();
    let d = Daemon::spawn(&lab, &["-c", &conf, "-tcp", "--quiet"]);
    // --quiet sends nothing to stderr: read the syslog copy instead.
    let line = wait_syslog(&d, "re-applied in", 600);
    let wall = t0.elapsed();
    let cpu = cpu_seconds(d.daemon_pid());
    let routes = lab
        .def_routes()
        .lines()
        .filter(|l| l.starts_with("unreachable"))
        .count();
    let deny = lab.read("hosts.deny").lines().count();
    let own_ms = figure(&line, "re-applied in ", " ms");
    let _ = writeln!(
        out,
        "restore {n:>6} blocks: start -> all re-applied {:>8.0} ms (daemon's own figure {own_ms} ms), \
         {:>7.0} us wall/block, CPU {:.1} s = {:>6.0} us/block (daemon + ip commands); \
         routes in kernel {routes}, hosts.deny lines {deny}",
        wall.as_secs_f64() * 1000.0,
        wall.as_secs_f64() * 1e6 / n as f64,
        cpu,
        cpu * 1e6 / n as f64,
    );
    assert_eq!(routes, n, "every block is in the route table");
    Some((lab, d))
}

/// The syslog line containing `needle`, waited for (the benches run the daemon `--quiet`).
fn wait_syslog(d: &Daemon, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(l) = d.syslog_line(needle) {
            return l;
        }
        assert!(Instant::now() < deadline, "no {needle:?} within {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number between `before` and `after` in a log line (`in 95 ms`).
fn figure<'a>(line: &'a str, before: &str, after: &str) -> &'a str {
    line.split(before)
        .nth(1)
        .and_then(|s| s.split(after).next())
        .unwrap_or("?")
}

/// A memory figure of a process from `/proc/PID/status` (`VmHWM`, `VmRSS`), in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Peak resident set of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM")
}

/// Resident set of a process now, in MiB.
fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS")
}

/// The lab's config: trap port 79, blocking on, no cap on blocks, then `keys`.
fn lab_config(lab: &Lab, keys: &str) -> String {
    lab.write_config(&format!(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nBLOCK_UDP=\"1\"\nMAX_ACTIVE_BLOCKS=\"0\"\n{keys}"
    ))
    .display()
    .to_string()
}

/// `KILL_NFTABLES` alone, sets large enough for any N.
fn nftables_config(lab: &Lab) -> String {
    lab.write_config(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nBLOCK_UDP=\"1\"\nKILL_NFTABLES=\"1\"\n\
         MAX_ACTIVE_BLOCKS=\"0\"",
    )
    .display()
    .to_string()
}

/// Restore of `n` journaled blocks (1 h left each) with `KILL_NFTABLES` alone, once:
/// [start -> all in the kernel's sets, the daemon's one batch, start -> all re-applied, the
/// daemon's own re-applied figure] in ms, CPU µs per block, peak RSS MiB.
fn restore_nftables_once(n: usize) -> [f64; 6] {
    let lab = Lab::new();
    let conf = nftables_config(&lab);
    write_journal(&lab, n, Some(Duration::from_secs(3600)));
    let t0 = Instant::now();
    // Watches the kernel from inside the lab's namespace, reading the sets only.
    let watcher = lab.in_def(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let count = NftBackend::attach("portsentry")
                .and_then(|b| b.list())
                .map_or(0, |l| l.len());
            if count >= n {
                return Some(t0.elapsed());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let d = Daemon::spawn(&lab, &["-c", &conf, "-tcp", "--quiet"]);
    let in_kernel = watcher
        .join()
        .expect("watcher")
        .unwrap_or_else(|| panic!("the kernel's sets never held {n} blocks"));
    let loaded = wait_syslog(&d, "loaded into nftables table", 60);
    let reapplied = wait_syslog(&d, "re-applied in", 600);
    let wall = t0.elapsed();
    let cpu = cpu_seconds(d.daemon_pid());
    let ms = |line: &str, before: &str| figure(line, before, " ms").parse().unwrap_or(f64::NAN);
    [
        in_kernel.as_secs_f64() * 1000.0,
        ms(&loaded, "table inet portsentry in "),
        wall.as_secs_f64() * 1000.0,
        ms(&reapplied, "re-applied in "),
        cpu * 1e6 / n as f64,
        peak_rss_mib(d.daemon_pid()),
    ]
}

/// The median of each column.
fn medians<const N: usize>(runs: &[[f64; N]]) -> [f64; N] {
    std::array::from_fn(|i| median(runs.iter().map(|r| r[i]).collect()))
}

/// [`restore_nftables_once`], `runs` times: the medians.
fn restore_nftables(n: usize, runs: usize, out: &mut String) {
    let all: Vec<[f64; 6]> = (0..runs).map(|_| restore_nftables_once(n)).collect();
    let [kernel, batch, wall, own, cpu, rss] = medians(&all);
    let _ = writeln!(
        out,
        "nftables restore {n:>6} blocks (median of {runs}): start -> all {n} in the kernel's \
         sets {kernel:>5.0} ms (the daemon's one batch: {batch:.0} ms); start -> all re-applied \
         {wall:>6.0} ms (daemon's own figure {own:.0} ms), {:>4.0} us wall/block; CPU \
         {cpu:>3.0} us/block; daemon peak RSS {rss:.1} MiB",
        wall * 1000.0 / n as f64,
    );
}

/// The shipped responders (conf/portsentry.conf): nftables, an unreachable route and a
/// hosts.deny line, and each of the last two alone.
const SHIPPED: [(&str, &str); 3] = [
    (
        "shipped (nftables + route + hosts.deny)",
        "KILL_NFTABLES=\"1\"\nKILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n\
         KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"",
    ),
    (
        "route alone",
        "KILL_NFTABLES=\"0\"\nKILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n\
         KILL_HOSTS_DENY=\"\"",
    ),
    (
        "hosts.deny alone",
        "KILL_NFTABLES=\"0\"\nKILL_ROUTE=\"\"\nKILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"",
    ),
];

/// Routes of the main table in the calling thread's namespace, counted over one rtnetlink
/// dump (cheaper than `ip route show` of 20,000 lines every few milliseconds).
fn count_routes() -> usize {
    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::route::{RouteMessage, RouteType};
    let mut count = 0;
    for family in [
        netlink_packet_route::AddressFamily::Inet,
        netlink_packet_route::AddressFamily::Inet6,
    ] {
        let Ok(mut socket) = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE) else {
            return 0;
        };
        let _ = socket.bind_auto();
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(request)),
        );
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        if socket
            .send_to(&buf, &netlink_sys::SocketAddr::new(0, 0), 0)
            .is_err()
        {
            return 0;
        }
        let mut rx = vec![0u8; 64 * 1024];
        'dump: loop {
            let Ok(n) = socket.recv(&mut &mut rx[..], 0) else {
                return 0;
            };
            let mut at = 0;
            while at < n {
                let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n]) else {
                    break 'dump;
                };
                match m.payload {
                    NetlinkPayload::Done(_) => break 'dump,
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r))
                        if r.header.kind == RouteType::Unreachable =>
                    {
                        count += 1
                    }
                    _ => {}
                }
                let len = m.header.length as usize;
                if len == 0 {
                    break 'dump;
                }
                at += (len + 3) & !3;
            }
        }
    }
    count
}

/// With `PORTSENTRY_BENCH_SMAPS=DIR`: the daemon's `/proc/PID/smaps` saved as
/// `DIR/smaps-<label>.txt`, to see which mappings hold its memory.
fn dump_smaps(pid: u32, label: &str) {
    if let Some(dir) = std::env::var_os("PORTSENTRY_BENCH_SMAPS") {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(format!("smaps-{label}.txt")),
            smaps,
        );
    }
}

/// Restore of `n` journaled blocks (1 h left each) through `keys`, once: ms from the
/// daemon's "listening" line to [all routes in the kernel, all hosts.deny lines in the
/// file, all hosts in the nftables sets, all three] (looked at every 5 ms, every N/1000 ms
/// past 5,000 blocks), the daemon's own re-applied figure
/// (ms after its start), CPU µs per block (daemon and children), peak RSS MiB. A responder
/// not configured counts as done at once. Also the daemon's RSS once every block is back
/// (MiB), and its RSS idle before (the same daemon with an empty journal, MiB); then the
/// anonymous part of each (`RssAnon`, MiB): RSS also counts the pages of the binary's code
/// that the restore ran for the first time (shared, clean, dropped by the kernel at need),
/// which are no memory per block.
fn restore_shipped_once(n: usize, keys: &str) -> [f64; 11] {
    let lab = Lab::new();
    let conf = lab_config(&lab, keys);
    write_journal(&lab, n, Some(Duration::from_secs(3600)));
    let (routes, deny, nft) = (
        keys.contains("KILL_ROUTE=\"/"),
        keys.contains("KILL_HOSTS_DENY=\"A"),
        keys.contains("KILL_NFTABLES=\"1"),
    );
    let deny_file = lab.path("hosts.deny");
    let t0 = Instant::now();
    // Watches the kernel and the file from inside the lab's namespace: when each was
    // complete, measured from t0.
    let watcher = lab.in_def(move || {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut done: [Option<Duration>; 3] = [None; 3];
        for (slot, on) in done.iter_mut().zip([routes, deny, nft]) {
            if !on {
                *slot = Some(Duration::ZERO);
            }
        }
        while done.iter().any(Option::is_none) && Instant::now() < deadline {
            if done[0].is_none() && count_routes() >= n {
                done[0] = Some(t0.elapsed());
            }
            if done[1].is_none() {
                let lines = std::fs::read(&deny_file)
                    .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
                if lines >= n {
                    done[1] = Some(t0.elapsed());
                }
            }
            if done[2].is_none()
                && NftBackend::attach("portsentry")
                    .and_then(|b| b.list())
                    .map_or(0, |l| l.len())
                    >= n
            {
                done[2] = Some(t0.elapsed());
            }
            // A look costs a dump of N routes and a read of N lines: kept to a few per
            // second at large N so that the watcher does not slow the daemon it watches.
            std::thread::sleep(Duration::from_millis((n as u64 / 1000).max(5)));
        }
        done
    });
    let d = Daemon::spawn(&lab, &["-c", &conf, "-tcp", "--quiet"]);
    let listening = loop {
        if d.syslog_line("is now active and listening").is_some() {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "never listening");
        std::thread::sleep(Duration::from_millis(2));
    };
    let done = watcher.join().expect("watcher");
    let reapplied = wait_syslog(&d, "re-applied in", 600);
    let cpu = cpu_seconds(d.daemon_pid());
    let peak = peak_rss_mib(d.daemon_pid());
    // Settled: the journal replay's buffers are freed, the records remain, and the
    // responder workers beyond the first have ended for lack of work (their allocator
    // caches handed back).
    std::thread::sleep(portsentry::respond::pool::IDLE_EXIT + Duration::from_secs(2));
    let rss = rss_mib(d.daemon_pid());
    let anon = status_mib(d.daemon_pid(), "RssAnon");
    dump_smaps(d.daemon_pid(), &format!("{n}-{}", keys.len()));
    drop(d);
    drop(lab);
    let (idle, idle_anon) = idle_rss_mib(keys);
    let since_listening = |t: Option<Duration>| {
        t.map_or(f64::NAN, |t| {
            (t.as_secs_f64() - listening.as_secs_f64()).max(0.0) * 1000.0
        })
    };
    let all = done.iter().copied().max().flatten();
    [
        since_listening(done[0]),
        since_listening(done[1]),
        since_listening(done[2]),
        since_listening(all),
        figure(&reapplied, "re-applied in ", " ms")
            .parse()
            .unwrap_or(f64::NAN),
        cpu * 1e6 / n as f64,
        peak,
        rss,
        idle,
        anon,
        idle_anon,
    ]
}

/// RSS and its anonymous part (MiB) of a daemon with the responders of `keys` and no block
/// at all, in a lab of its own, settled as the restored one is measured: its idle responder
/// workers have ended too.
fn idle_rss_mib(keys: &str) -> (f64, f64) {
    let lab = Lab::new();
    let conf = lab_config(&lab, keys);
    let d = Daemon::spawn(&lab, &["-c", &conf, "-tcp", "--quiet"]);
    wait_syslog(&d, "is now active and listening", 30);
    std::thread::sleep(portsentry::respond::pool::IDLE_EXIT + Duration::from_secs(2));
    (
        rss_mib(d.daemon_pid()),
        status_mib(d.daemon_pid(), "RssAnon"),
    )
}

/// [`restore_shipped_once`] for each of [`SHIPPED`], `runs` times: the medians.
fn restore_shipped(n: usize, runs: usize, out: &mut String) {
    for (label, keys) in SHIPPED {
        let all: Vec<[f64; 11]> = (0..runs).map(|_| restore_shipped_once(n, keys)).collect();
        let [
            routes,
            deny,
            nft,
            every,
            own,
            cpu,
            peak,
            rss,
            idle,
            anon,
            idle_anon,
        ] = medians(&all);
        let per_block = (rss - idle) * 1024.0 * 1024.0 / n as f64;
        let anon_per_block = (anon - idle_anon) * 1024.0 * 1024.0 / n as f64;
        let line = format!(
            "restore {n:>6} blocks, {label} (median of {runs}): after listening, routes \
             {routes:.0} ms, hosts.deny {deny:.0} ms, nftables {nft:.0} ms, all {every:.0} ms; \
             re-applied {own:.0} ms after start (daemon's figure); CPU {cpu:.0} us/block; peak \
             RSS {peak:.1} MiB, RSS after {rss:.1} MiB vs {idle:.1} MiB idle = {per_block:.0} \
             bytes/block; anonymous {anon:.1} MiB vs {idle_anon:.1} MiB = {anon_per_block:.0} \
             bytes/block"
        );
        println!("{line}");
        let _ = writeln!(out, "{line}");
    }
}

/// Blocks by hand of `n` new hosts (one `block --from-file` request) through one responder,
/// once: [blocks/s, wall µs per block, CPU µs per block (daemon and its children)].
fn manual_blocks_once(n: usize, responder: &str) -> [f64; 3] {
    let lab = Lab::new();
    let conf = lab_config(&lab, responder);
    let d = Daemon::spawn(&lab, &["-c", &conf, "-tcp", "--quiet"]);
    wait_syslog(&d, "is now active and listening", 20);
    let file = lab.path("hosts.txt");
    let text: String = (0..n).map(|i| format!("{}\n", address(i))).collect();
    std::fs::write(&file, text).expect("write the list");
    let cpu0 = cpu_seconds(d.daemon_pid());
    let t0 = Instant::now();
    let file = file.display().to_string();
    let o = lab.ctl(&["block", "--from-file", &file, "--for", "1h"]);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(d.daemon_pid()) - cpu0;
    assert!(o.status.success(), "{o:?}");
    [n as f64 / wall, wall * 1e6 / n as f64, cpu * 1e6 / n as f64]
}

/// [`manual_blocks_once`], `runs` times: the medians.
fn manual_blocks(label: &str, n: usize, runs: usize, responder: &str, out: &mut String) {
    let all: Vec<[f64; 3]> = (0..runs)
        .map(|_| manual_blocks_once(n, responder))
        .collect();
    let [rate, wall, cpu] = medians(&all);
    let _ = writeln!(
        out,
        "block --from-file {n:>6} hosts via {label:<9} (median of {runs}): {rate:>6.0} blocks/s, \
         {wall:>5.0} us wall and {cpu:>5.0} us CPU per block (daemon + children, journal \
         included)",
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("blocks benchmark: run with `cargo bench --bench blocks` (as root)");
        return;
    }
    let mut out = String::new();
    let runs_asked = std::env::var("PORTSENTRY_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok());
    // PORTSENTRY_BENCH_IDLE_ONLY=1: idle RSS with the shipped config only.
    if std::env::var_os("PORTSENTRY_BENCH_IDLE_ONLY").is_some() {
        idle_shipped(runs_asked.unwrap_or(3), &mut out);
        return;
    }
    // PORTSENTRY_BENCH_SHIPPED_ONLY=1: the restore with the shipped responders only.
    if std::env::var_os("PORTSENTRY_BENCH_SHIPPED_ONLY").is_some() {
        let runs = runs_asked.unwrap_or(5);
        if std::env::var_os("PORTSENTRY_BENCH_100K_ONLY").is_none() {
            restore_shipped(20_000, runs, &mut out);
        }
        if std::env::var_os("PORTSENTRY_BENCH_100K").is_some()
            || std::env::var_os("PORTSENTRY_BENCH_100K_ONLY").is_some()
        {
            restore_shipped(100_000, runs, &mut out);
        }
        return;
    }
    // PORTSENTRY_BENCH_NFTABLES_ONLY=1: parts 3 and 4 only.
    if std::env::var_os("PORTSENTRY_BENCH_NFTABLES_ONLY").is_some() {
        nftables_parts(&mut out);
        return;
    }
    drop(restore(1_000, &mut out));
    print!("{out}");
    let (lab, d) = restore(20_000, &mut out).expect("20k restore");
    print!("{}", out.lines().last().unwrap_or(""));
    println!();
    for (label, args) in [
        ("list", vec!["list"]),
        ("list --json", vec!["list", "--json"]),
    ] {
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            let o = lab.ctl(&args);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(o.status.success(), "{o:?}");
            bytes = o.stdout.len();
        }
        let line = format!(
            "{label:<12} with 20000 blocks: median {:.1} ms over {RUNS} runs (client process \
             included), {bytes} bytes of output",
            median(ms)
        );
        println!("{line}");
        let _ = writeln!(out, "{line}");
    }
    drop(d);
    drop(lab);
    restore_shipped(20_000, 5, &mut out);
    idle_shipped(3, &mut out);
    nftables_parts(&mut out);
}

/// The shipped conf/portsentry.conf with its files in the lab (the keys the lab sets are
/// left to it; plugins and the Lua library from this checkout, as scripts/run-default.sh
/// installs them).
fn shipped_config(lab: &Lab) -> String {
    const LAB_KEYS: [&str; 8] = [
        "IGNORE_FILE",
        "HISTORY_FILE",
        "BLOCKED_FILE",
        "HOSTS_DENY_FILE",
        "BLOCK_STATE_FILE",
        "CONTROL_SOCKET",
        "PLUGIN_DIR",
        "LUA_PATH_DIR",
    ];
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = std::fs::read_to_string(format!("{root}/conf/portsentry.conf"))
        .expect("conf/portsentry.conf");
    let kept: String = shipped
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !LAB_KEYS.contains(&key) && !["RESOLVE_HOST", "SCAN_TRIGGER"].contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    lab.write_config(&format!(
        "{kept}PLUGIN_DIR=\"{root}/plugins\"\nLUA_PATH_DIR=\"{root}/lua\"\n"
    ))
    .display()
    .to_string()
}

/// A `key: N kB` figure of `/proc/PID/smaps_rollup`, in MiB.
fn rollup_mib(pid: u32, key: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Child processes of `pid` (Lua plugins, commands running).
fn children(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_or(0, |c| c.split_whitespace().count())
}

/// Idle RSS with the shipped config and modes, once: [VmRSS, anonymous, file-backed
/// (MiB), threads, child processes], then after a flood of forged sources: [peak RSS,
/// RSS 5 s after the flood (MiB)].
fn idle_shipped_once() -> [f64; 7] {
    let lab = Lab::new();
    let conf = shipped_config(&lab);
    let d = Daemon::spawn(&lab, &["-c", &conf, "-atcp", "-audp", "--quiet"]);
    wait_syslog(&d, "is now active and listening", 60);
    std::thread::sleep(Duration::from_secs(5));
    let pid = d.daemon_pid();
    let rss = rss_mib(pid);
    dump_smaps(pid, "idle");
    let anon = rollup_mib(pid, "Anonymous");
    let threads = status_mib(pid, "Threads") * 1024.0;
    let flood = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/release/examples/synflood"
    );
    let sent = lab.attack(&[flood, "100000", "20000", &lab.def4]);
    assert!(sent.status.success(), "synflood: {sent:?}");
    std::thread::sleep(Duration::from_secs(5));
    dump_smaps(pid, "forged");
    [
        rss,
        anon,
        rss - anon,
        threads,
        children(pid) as f64,
        peak_rss_mib(pid),
        rss_mib(pid),
    ]
}

/// [`idle_shipped_once`], `runs` times: the medians.
fn idle_shipped(runs: usize, out: &mut String) {
    let all: Vec<[f64; 7]> = (0..runs).map(|_| idle_shipped_once()).collect();
    let [rss, anon, file, threads, kids, peak, after] = medians(&all);
    let each: Vec<String> = all.iter().map(|r| format!("{:.1}", r[0])).collect();
    let line = format!(
        "idle, shipped config -atcp -audp (median of {runs}): RSS {rss:.1} MiB (runs: {}), \
         of which anonymous {anon:.1} MiB and file-backed {file:.1} MiB; {threads:.0} \
         threads, {kids:.0} child processes; 100,000 SYNs from forged sources: peak RSS \
         {peak:.1} MiB, {after:.1} MiB 5 s after",
        each.join(" / ")
    );
    println!("{line}");
    let _ = writeln!(out, "{line}");
}

/// Parts 3 and 4, then the results file.
fn nftables_parts(out: &mut String) {
    let before = out.len();
    restore_nftables(20_000, 5, out);
    restore_nftables(100_000, 3, out);
    manual_blocks("nftables", 20_000, 3, "KILL_NFTABLES=\"1\"", out);
    manual_blocks(
        "ip route",
        1_000,
        3,
        "KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"",
        out,
    );
    print!("{}", &out[before..]);
    std::fs::create_dir_all("target").ok();
    std::fs::write("target/bench-blocks.txt", &*out).expect("write results");
    println!("written to target/bench-blocks.txt");
}
