//! Fleet latency: two daemons in two network namespaces sharing one CrowdSec LAPI (Debian's
//! `crowdsec` 1.4.6, unpacked by scripts/setup-deps.sh, run inside the first defender's
//! namespace on the link between the two defenders). A scanner probes host A once; the
//! figure is the time from that first probe to the scanner's route on host B, and to its
//! decision in the LAPI, for several `CROWDSEC_POLL_INTERVAL`s, median over RUNS scanners.
//! Each probe comes after a random pause (uniform over one poll interval), so that the
//! probes fall at random phases of B's polling, as real scans do; the worst case is a probe
//! just after a poll.
//!
//! Run as root: `cargo bench --bench fleet` (figures printed and written to
//! `target/bench-fleet.txt`; BENCHMARKS.md quotes them).

#[allow(dead_code)]
#[path = "../tests/e2e/lab.rs"]
mod lab;

#[allow(dead_code)]
#[path = "../tests/e2e/fleet/lapi.rs"]
mod lapi;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use lab::{Daemon, Lab};
use lapi::{LapiServer, daemon_config, has_route};

const RUNS: u8 = 9;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet benchmark: run with `cargo bench --bench fleet` (as root)");
        return;
    }
    let (a, b) = (Lab::new(), Lab::new());
    let (here, _) = a.link_defenders(&b);
    let mut lapi = LapiServer::new(&a.def, &format!("{here}:8080"), &["host-a", "host-b"]);
    lapi.start();
    let conf_a = daemon_config(
        &a,
        &lapi.daemon_config(a.dir.path(), true, Some("host-a"), "10s"),
    );
    let _da = Daemon::start(&a, &["-c", &conf_a, "-tcp"]);
    let mut out = String::new();
    let mut host = 3u8;
    for poll in ["1s", "2s", "10s"] {
        let conf_b = daemon_config(
            &b,
            &lapi.daemon_config(b.dir.path(), true, Some("host-b"), poll),
        );
        let mut db = Daemon::start(&b, &["-c", &conf_b, "-tcp"]);
        db.expect_line("connected (pull)", 15);
        let (mut to_lapi, mut to_b) = (Vec::new(), Vec::new());
        let interval = humantime::parse_duration(poll).expect("poll interval");
        for _ in 0..RUNS {
            std::thread::sleep(interval.mul_f64(fastrand::f64()));
            let (scanner, _) = a.add_attacker_addrs(host);
            host += 1;
            let probed = Instant::now();
            a.connect_from(&scanner, 79);
            let (mut in_lapi, mut on_b) = (None, None);
            while probed.elapsed() < Duration::from_secs(30) && on_b.is_none() {
                if in_lapi.is_none() && !lapi.decisions_for(&scanner).is_empty() {
                    in_lapi = Some(probed.elapsed());
                }
                if has_route(&b, &scanner) {
                    on_b = Some(probed.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let on_b = on_b.unwrap_or_else(|| panic!("{scanner} never blocked on B"));
            to_lapi.push(in_lapi.unwrap_or(on_b));
            to_b.push(on_b);
        }
        let worst = *to_b.iter().max().unwrap_or(&Duration::ZERO);
        let line = format!(
            "poll {poll}: first probe on A -> decision in the LAPI {} (median of {RUNS}), \
             -> route on B {} (median), worst {}\n",
            ms(median(to_lapi)),
            ms(median(to_b)),
            ms(worst)
        );
        print!("{line}");
        out.push_str(&line);
        db.stop();
    }
    let _ = writeln!(
        out,
        "(RUNS={RUNS}, debug or release as built by cargo bench)"
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-fleet.txt");
    if let Err(e) = std::fs::write(&path, &out) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
