//! Hot reload benchmark, on the real (release) binary in a network namespace lab.
//!
//! 1. Latency: time from the rename of a saved config (vim style: temp file + rename) to the
//!    daemon's "generation N in force" line, debounce included; median of RUNS runs.
//! 2. No gap: a client in the attacker namespace connects to an unchanged trap port in a
//!    loop while the config is saved (adding and removing another port) and SIGHUP is sent
//!    over and over; every accepted connection must show up as a detection line.
//!
//! Run as root: `cargo bench --bench reload` (figures go to BENCHMARKS.md, "Hot reload").

#[allow(dead_code)]
#[path = "../tests/e2e/lab.rs"]
mod lab;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lab::{Daemon, Lab};

const RUNS: usize = 20;
/// How long the connect loop of the no-gap part runs.
const LOOP_TIME: Duration = Duration::from_secs(10);
/// Pause between two connections of the client (keeps the logging side from being the limit).
const CONNECT_PAUSE: Duration = Duration::from_millis(1);
/// Pause between two reloads in the no-gap part.
const RELOAD_EVERY: Duration = Duration::from_millis(250);

fn conf_text(lab: &Lab, ports: &str) -> String {
    lab.config_text(&format!(
        "TCP_PORTS=\"{ports}\"\nBLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\""
    ))
}

/// Vim-style save; returns the instant of the rename.
fn save_by_rename(lab: &Lab, ports: &str) -> Instant {
    let tmp = lab.path(".portsentry.conf.swx");
    std::fs::write(&tmp, conf_text(lab, ports)).expect("write temp config");
    let t = Instant::now();
    std::fs::rename(&tmp, lab.path("portsentry.conf")).expect("rename");
    t
}

/// Polls the daemon's stderr (1 ms) for a line; the instant it was seen.
fn seen(d: &Daemon, needle: &str, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if d.lines().iter().any(|l| l.contains(needle)) {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Moves the calling thread into a network namespace made by `ip netns add`.
fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd changes only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: the end-to-end tests
    // cover reload there; only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("reload benchmark: run with `cargo bench --bench reload` (as root)");
        return;
    }
    let lab = Lab::new();
    std::fs::write(lab.path("portsentry.ignore"), "127.0.0.1/32\n").expect("ignore");
    let conf = lab.path("portsentry.conf");
    std::fs::write(&conf, conf_text(&lab, "79")).expect("config");
    let d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-tcp"]);

    // Part 1: latency.
    let mut ms = Vec::new();
    for run in 0..RUNS {
        let generation = run + 2;
        let ports = if run % 2 == 0 { "79,1524" } else { "79" };
        let t0 = save_by_rename(&lab, ports);
        let needle = format!("generation {generation} in force");
        let t1 = seen(&d, &needle, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no {needle:?}; log:\n{}", d.lines().join("\n")));
        ms.push((t1 - t0).as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
    }
    let own: Vec<String> = d
        .lines()
        .iter()
        .filter(|l| l.contains(" in force ("))
        .filter_map(|l| {
            l.rsplit('(')
                .next()
                .map(|s| s.trim_end_matches(" ms)").to_string())
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "reload latency, rename -> \"generation N in force\" ({RUNS} runs): \
         median {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        ms[0],
        ms[ms.len() - 1]
    );
    println!(
        "  of which build + swap, as the daemon logs it (ms): {}",
        own.join(" ")
    );

    // Part 2: no probe lost on an unchanged port while reloading.
    let before = d.count("to TCP port: 79");
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let target: SocketAddr = format!("{}:79", lab.def4).parse().expect("address");
    let client = {
        let (stop, made, refused, att) = (
            Arc::clone(&stop),
            Arc::clone(&made),
            Arc::clone(&refused),
            lab.att.clone(),
        );
        std::thread::spawn(move || {
            enter_netns(&att);
            while !stop.load(Ordering::Relaxed) {
                match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Ok(_) => made.fetch_add(1, Ordering::Relaxed),
                    Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(CONNECT_PAUSE);
            }
        })
    };
    let start = Instant::now();
    let mut reloads = 0u32;
    let mut generation = RUNS + 1;
    while start.elapsed() < LOOP_TIME {
        generation += 1;
        if reloads % 3 == 2 {
            d.signal("HUP");
        } else {
            save_by_rename(
                &lab,
                if reloads.is_multiple_of(2) {
                    "79,1524"
                } else {
                    "79"
                },
            );
        }
        seen(
            &d,
            &format!("generation {generation} in force"),
            Duration::from_secs(5),
        )
        .expect("reload in force");
        reloads += 1;
        std::thread::sleep(RELOAD_EVERY);
    }
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client thread");
    let made = made.load(Ordering::Relaxed) as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.count("to TCP port: 79") - before < made && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let detected = d.count("to TCP port: 79") - before;
    let behind = d.count("pipeline behind");
    println!(
        "no gap: {made} connections to unchanged port 79 over {:.1} s, {reloads} reloads \
         (2 of 3 by rename adding/removing port 1524, 1 of 3 by SIGHUP): \
         {detected} detection lines, {} refused, {behind} 'pipeline behind' warnings",
        start.elapsed().as_secs_f64(),
        refused.load(Ordering::Relaxed)
    );
    assert_eq!(detected, made, "a probe was lost across a reload");
}
