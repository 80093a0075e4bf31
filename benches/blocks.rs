//! Block lifecycle benchmark, on the real (release) binary in a network namespace lab.
//!
//! 1. Restore: a journal with N active blocks (N = 1,000 and 20,000) is re-applied at start
//!    through the default responders (`ip route add unreachable` + a hosts.deny line): wall
//!    time from the daemon's start to its "block(s) re-applied" line, CPU of the daemon and
//!    its children (the `ip` commands) per block, and a check that the kernel's route table
//!    holds all N.
//! 2. `portsentry list` latency over the control socket with 20,000 blocks in force (text
//!    and `--json`), median of RUNS runs.
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

const RUNS: usize = 20;

/// The i-th blocked address: IPv4 for even i, IPv6 for odd.
fn address(i: usize) -> IpAddr {
    if i.is_multiple_of(2) {
        let n = i / 2;
        IpAddr::from([10, 78, (n / 256 % 256) as u8, (n % 256) as u8])
    } else {
        format!("fd78::{:x}", i + 1).parse().expect("address")
    }
}

/// Writes a journal of `n` permanent blocks made by hand, as an earlier run would have.
fn write_journal(lab: &Lab, n: usize) {
    let (mut journal, _) = Journal::open(&lab.path("portsentry.state")).expect("journal");
    let since = SystemTime::now();
    let entries: Vec<Entry> = (0..n)
        .map(|i| {
            Entry::Block(BlockRecord {
                target: host_target(address(i)),
                since,
                until: None,
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
    write_journal(&lab, n);
    let t0 = Instant::now();
    let d = Daemon::spawn(&lab, &["-c", &conf, "-tcp", "--quiet"]);
    // --quiet sends nothing to stderr: read the syslog copy instead.
    let deadline = Instant::now() + Duration::from_secs(600);
    let line = loop {
        if let Some(l) = d.syslog().into_iter().find(|l| l.contains("re-applied in")) {
            break l;
        }
        assert!(Instant::now() < deadline, "restore of {n} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = t0.elapsed();
    let cpu = cpu_seconds(d.daemon_pid());
    let routes = lab
        .def_routes()
        .lines()
        .filter(|l| l.starts_with("unreachable"))
        .count();
    let deny = lab.read("hosts.deny").lines().count();
    let own_ms: String = line
        .split("re-applied in ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .unwrap_or("?")
        .to_string();
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

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("blocks benchmark: run with `cargo bench --bench blocks` (as root)");
        return;
    }
    let mut out = String::new();
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
    std::fs::create_dir_all("target").ok();
    std::fs::write("target/bench-blocks.txt", &out).expect("write results");
    println!("written to target/bench-blocks.txt");
}
