//! nftables backend benchmark: what a block costs in the kernel set vs an `ip route` fork.
//!
//! Every part runs on a thread in a private network namespace of its own (gone when the
//! thread ends), so the host's firewall and routes are never touched; no packet is sent.
//!
//! 1. Restore: 20,000 hosts, each with its own timeout, into a fresh table in one batch
//!    (open + add, and the add alone): wall time and process CPU (getrusage).
//! 2. Throughput: blocks per second and CPU per block, adding in batches of 1 and of 100.
//! 3. Memory: peak RSS of the process after 100,000 hosts are added (sets sized for them).
//! 4. For comparison: 1,000 blocks as `ip route add unreachable` forks (wall and CPU, the
//!    children's included).
//!
//! Run as root: `cargo bench --bench nftables`. Figures are printed and written to
//! `target/bench-nftables.txt`, for BENCHMARKS.md.

use std::net::{IpAddr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portsentry::respond::nftables::{NftBackend, NftSettings};

const RESTORE_HOSTS: usize = 20_000;
const RESTORE_RUNS: usize = 7;
const SINGLE_BLOCKS: usize = 5_000;
const BATCHED_BLOCKS: usize = 20_000;
const THROUGHPUT_RUNS: usize = 5;
const RSS_HOSTS: usize = 100_000;
const ROUTE_BLOCKS: usize = 1_000;
const ROUTE_RUNS: usize = 3;

/// CPU time of the process so far (user + system), and of its waited-for children.
fn cpu() -> (Duration, Duration) {
    let usage = |who| {
        // SAFETY: getrusage writes one rusage into the zeroed struct we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(who, &mut ru) };
        assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
        ru
    };
    let time = |ru: &libc::rusage| {
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    (
        time(&usage(libc::RUSAGE_SELF)),
        time(&usage(libc::RUSAGE_CHILDREN)),
    )
}

/// Peak resident set of the process, in MiB: `VmHWM`, which starts afresh at exec
/// (getrusage's `ru_maxrss` keeps the peak of the image before exec, cargo's here).
fn max_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib / 1024.0
}

/// Runs `f` on a thread in a fresh network namespace of its own.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) changes only the calling thread's namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("benchmark thread")
}

/// The i-th test host: 10.77.0.0/16 first, then fd77::/64.
fn host(i: usize) -> IpAddr {
    if i < 65_536 {
        IpAddr::from([10, 77, (i >> 8) as u8, i as u8])
    } else {
        IpAddr::V6(Ipv6Addr::from((0xfd77u128 << 112) | (i as u128 - 65_536)))
    }
}

/// `n` hosts, each with its own remaining time (as restored from a journal).
fn hosts(n: usize) -> Vec<(IpAddr, Option<Duration>)> {
    (0..n)
        .map(|i| (host(i), Some(Duration::from_secs(600 + (i % 3600) as u64))))
        .collect()
}

fn settings(size: u32) -> NftSettings {
    NftSettings {
        set_size: size,
        ..NftSettings::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One measurement: wall seconds and CPU seconds (self + children) of `f`.
fn measure(f: impl FnOnce()) -> (f64, f64) {
    let (s0, c0) = cpu();
    let t0 = Instant::now();
    f();
    let wall = t0.elapsed().as_secs_f64();
    let (s1, c1) = cpu();
    (wall, ((s1 - s0) + (c1 - c0)).as_secs_f64())
}

fn restore() -> Vec<String> {
    let mut open_add = (Vec::new(), Vec::new());
    let mut add = (Vec::new(), Vec::new());
    for _ in 0..RESTORE_RUNS {
        let ((w1, c1), (w2, c2)) = in_private_netns(|| {
            let elements = hosts(RESTORE_HOSTS);
            let mut b = None;
            let mut add = (0.0, 0.0);
            let whole = measure(|| {
                let mut backend = NftBackend::open(&settings(65_536)).expect("open");
                add = measure(|| backend.add(&elements).expect("add 20k"));
                b = Some(backend);
            });
            let listed = b.expect("backend").list().expect("list").len();
            assert_eq!(listed, RESTORE_HOSTS);
            (whole, add)
        });
        open_add.0.push(w1);
        open_add.1.push(c1);
        add.0.push(w2);
        add.1.push(c2);
    }
    vec![
        format!(
            "restore {RESTORE_HOSTS} hosts, one batch, fresh table (median of {RESTORE_RUNS}): \
             open + add {:.1} ms wall, {:.1} ms CPU; add alone {:.1} ms wall, {:.1} ms CPU",
            median(open_add.0) * 1e3,
            median(open_add.1) * 1e3,
            median(add.0) * 1e3,
            median(add.1) * 1e3,
        ),
        "  target: under 1 s".into(),
    ]
}

fn throughput(batch: usize, total: usize) -> String {
    let mut rate = Vec::new();
    let mut cpu_us = Vec::new();
    for _ in 0..THROUGHPUT_RUNS {
        let (wall, cpu) = in_private_netns(move || {
            let elements = hosts(total);
            let mut backend = NftBackend::open(&settings(65_536)).expect("open");
            measure(|| {
                for chunk in elements.chunks(batch) {
                    backend.add(chunk).expect("add");
                }
            })
        });
        rate.push(total as f64 / wall);
        cpu_us.push(cpu * 1e6 / total as f64);
    }
    format!(
        "add in batches of {batch:>3} ({total} blocks, median of {THROUGHPUT_RUNS}): \
         {:.0} blocks/s, {:.1} µs CPU per block",
        median(rate),
        median(cpu_us)
    )
}

fn rss() -> String {
    let before = max_rss_mib();
    let (wall, after) = in_private_netns(|| {
        let elements = hosts(RSS_HOSTS);
        let mut backend = NftBackend::open(&settings(RSS_HOSTS as u32)).expect("open");
        let (wall, _) = measure(|| backend.add(&elements).expect("add 100k"));
        assert_eq!(backend.list().expect("list").len(), RSS_HOSTS);
        (wall, max_rss_mib())
    });
    format!(
        "peak RSS with {RSS_HOSTS} hosts added in one batch ({:.0} ms): {after:.1} MiB \
         (peak before: {before:.1} MiB; the elements themselves live in kernel memory)",
        wall * 1e3
    )
}

fn routes() -> String {
    let mut per_block_wall = Vec::new();
    let mut per_block_cpu = Vec::new();
    for _ in 0..ROUTE_RUNS {
        let (wall, cpu) = in_private_netns(|| {
            measure(|| {
                for i in 0..ROUTE_BLOCKS {
                    let status = Command::new("ip")
                        .args(["route", "add", "unreachable", &host(i).to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("run ip");
                    assert!(status.success(), "ip route add failed");
                }
            })
        });
        per_block_wall.push(wall * 1e6 / ROUTE_BLOCKS as f64);
        per_block_cpu.push(cpu * 1e6 / ROUTE_BLOCKS as f64);
    }
    let wall = median(per_block_wall);
    format!(
        "for comparison, `ip route add unreachable` forks ({ROUTE_BLOCKS} blocks, median of \
         {ROUTE_RUNS}): {:.0} blocks/s, {wall:.0} µs wall and {:.0} µs CPU per block \
         (children included); {RESTORE_HOSTS} of them would take {:.1} s",
        1e6 / wall,
        median(per_block_cpu),
        wall * RESTORE_HOSTS as f64 / 1e6
    )
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: only `cargo bench`
    // measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("nftables benchmark: run with `cargo bench --bench nftables` (as root)");
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the nftables benchmark needs root (private network namespaces, nf_tables)"
    );
    let mut lines = vec![format!(
        "nftables backend benchmark (kernel {}, {} CPUs)",
        String::from_utf8_lossy(
            &Command::new("uname")
                .arg("-r")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )];
    lines.push(rss());
    lines.extend(restore());
    lines.push(throughput(1, SINGLE_BLOCKS));
    lines.push(throughput(100, BATCHED_BLOCKS));
    lines.push("  target: at least 10,000 blocks/s, under 50 µs CPU per block (batched)".into());
    lines.push(routes());
    let text = lines.join("\n") + "\n";
    print!("{text}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-nftables.txt");
    if let Err(e) = std::fs::write(&out, &text) {
        eprintln!("cannot write {}: {e}", out.display());
    }
}
