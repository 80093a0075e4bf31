//! The fleet at community scale: a daemon pulling 12,000 and 100,000 decisions from
//! Debian's real `crowdsec` 1.4.6 LAPI (unpacked by scripts/setup-deps.sh, run inside the
//! lab's defender namespace; decisions loaded with `cscli decisions import`). For each
//! size: the time from the daemon's start to the pull line saying they are applied (the
//! kernel then holds them: counted with `nft -j`), the puller's own figure, the daemon's
//! CPU time (utime + stime) by then, and its RSS against the same daemon pulling an empty
//! stream; then a later pull that deletes 127 decisions: its time and CPU. With
//! `KILL_NFTABLES` (the fleet's own interval sets) and, for 12,000, without it (routes over
//! rtnetlink).
//!
//! Run as root: `cargo bench --bench fleet_scale` (figures printed and written to
//! `target/bench-fleet-scale.txt`; BENCHMARKS.md quotes them).

#[allow(dead_code)]
#[path = "../tests/e2e/lab.rs"]
mod lab;

#[allow(dead_code)]
#[path = "../tests/e2e/fleet/lapi.rs"]
mod lapi;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use lab::{Daemon, Lab};
use lapi::{LapiServer, daemon_config};

/// The daemon's CPU time so far, in seconds (`/proc/PID/stat` utime + stime, 100 Hz).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// The daemon's resident set, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `count` decisions for distinct hosts of 10.88.0.0/13 (10.88.0.1 on), as one import.
fn import(lab: &Lab, lapi: &LapiServer, count: u32) {
    let mut text = String::from("duration,scope,value\n");
    for i in 0..count {
        let _ = writeln!(
            text,
            "4h,Ip,10.{}.{}.{}",
            88 + i / 62_500,
            (i / 250) % 250,
            i % 250 + 1
        );
    }
    let csv = lab.path("decisions.csv");
    std::fs::write(&csv, text).expect("write the import");
    lapi.cscli_ok(&["decisions", "import", "-i", &csv.display().to_string()]);
}

/// The puller's own times at the end of its line (`…; 123 ms (kernel 4 ms)`).
fn pull_ms(line: &str) -> String {
    line.rsplit("; ")
        .next()
        .map_or_else(|| "?".into(), |t| t.trim().to_string())
}

fn config(lab: &Lab, lapi: &LapiServer, nft: bool) -> String {
    let fleet = lapi.daemon_config(lab.dir.path(), false, Some("host-a"), "1s");
    let extra = if nft { "KILL_NFTABLES=\"1\"\n" } else { "" };
    daemon_config(lab, &format!("{fleet}{extra}"))
}

/// Elements in the fleet's sets (nft) or routes of the fleet's protocol.
fn in_kernel(lab: &Lab, nft: bool) -> usize {
    if nft {
        let out = lab.defend_stdout(&[
            "nft",
            "-j",
            "list",
            "set",
            "inet",
            "portsentry",
            "fleet_ipv4",
        ]);
        out.matches("\"elem\":").count().saturating_sub(1)
    } else {
        let out = lab.defend_stdout(&["ip", "route", "show", "proto", "247"]);
        out.lines().count()
    }
}

fn run(n: u32, nft: bool, out: &mut String) {
    let lab = Lab::new();
    let mut lapi = LapiServer::new(&lab.def, "127.0.0.1:8080", &["host-a"]);
    lapi.start();
    let conf = config(&lab, &lapi, nft);
    // The same daemon pulling an empty stream: the RSS baseline.
    let mut empty = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    empty.expect_line("connected (pull)", 15);
    std::thread::sleep(Duration::from_millis(1500));
    let base_rss = rss_mib(empty.daemon_pid());
    empty.stop();
    drop(empty);

    let imported = Instant::now();
    import(&lab, &lapi, n);
    let import_took = imported.elapsed();
    let started = Instant::now();
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    let pid = d.daemon_pid();
    let line = d.expect_line(&format!("CrowdSec pull: {n} decisions added"), 60);
    let took = started.elapsed();
    let (cpu, rss) = (cpu_secs(pid), rss_mib(pid));
    let held = in_kernel(&lab, nft);
    assert_eq!(held, n as usize, "in the kernel: {held}");
    let room = if nft { "nftables" } else { "routes" };
    let line1 = format!(
        "{n} decisions ({room}): in the kernel {:.2} s after the daemon's start (pull and apply \
         {}), daemon CPU {cpu:.2} s, RSS {rss:.1} MiB ({:+.1} MiB over {base_rss:.1} MiB \
         pulling an empty stream); import by cscli {:.1} s\n",
        took.as_secs_f64(),
        pull_ms(&line),
        rss - base_rss,
        import_took.as_secs_f64()
    );
    print!("{line1}");
    out.push_str(&line1);

    // A later pull deleting 127 (one `cscli decisions delete --contained`: one soft
    // delete, so that one pull sees them all).
    let cpu_before = cpu_secs(pid);
    lapi.cscli_ok(&[
        "decisions",
        "delete",
        "--range",
        "10.88.0.0/25",
        "--contained",
    ]);
    let line = d.expect_line(" 127 removed", 10);
    let line2 = format!(
        "  then a pull deleting 127: {} (pull and apply), daemon CPU {:.2} s\n",
        pull_ms(&line),
        cpu_secs(pid) - cpu_before
    );
    print!("{line2}");
    out.push_str(&line2);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet scale benchmark: run with `cargo bench --bench fleet_scale` (as root)");
        return;
    }
    let mut out = String::new();
    run(12_000, true, &mut out);
    run(100_000, true, &mut out);
    run(12_000, false, &mut out);
    let _ = writeln!(out, "(release build, as cargo bench builds it)");
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-fleet-scale.txt");
    if let Err(e) = std::fs::write(&path, &out) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
