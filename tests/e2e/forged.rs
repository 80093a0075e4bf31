//! Forged sources cannot turn the daemon against its owner, nor hide a real scanner: a flood
//! of one-packet forged sources blocks nobody while a real scan inside it is blocked, the log
//! stays bounded, and forged multi-port scans are blocked at most `BLOCK_RATE_LIMIT` a
//! minute, the best evidence first. Raw mode (`-atcp`), default evidence rules.

use std::time::{Duration, Instant};

use crate::lab::{Daemon, Lab};

/// Sends TCP SYNs from forged sources to `dst` from inside the attacker namespace: for each
/// `source@ports` one SYN per port (`10.79.0.1@21,22`, `fd77:5:8::1@100`). Raw socket, IPv4
/// or IPv6 by `dst` (every source of one call of its family), correct checksums.
const FORGE: &str = r#"
import socket, struct, sys, random
dst = sys.argv[1]
plan = [(s.split('@')[0], [int(p) for p in s.split('@')[1].split(',')]) for s in sys.argv[2:]]
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
v6 = ':' in dst
fam = socket.AF_INET6 if v6 else socket.AF_INET
r = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
d = socket.inet_pton(fam, dst)
for src, ports in plan:
    s = socket.inet_pton(fam, src)
    for port in ports:
        sport = random.randint(1024, 65000)
        tcp = struct.pack('!HHIIBBHHH', sport, port, random.getrandbits(32), 0, 5 << 4, 0x02, 1024, 0, 0)
        if v6:
            pseudo = s + d + struct.pack('!I3xB', len(tcp), 6)
            ip = struct.pack('!IHBB', 6 << 28, len(tcp), 6, 64) + s + d
        else:
            pseudo = s + d + struct.pack('!BBH', 0, 6, len(tcp))
            ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, random.getrandbits(16), 0, 64, 6, 0, s, d)
            ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
        tcp = tcp[:16] + struct.pack('!H', csum(pseudo + tcp)) + tcp[18:]
        r.sendto(ip + tcp, (dst, 0))
"#;

/// Sends the SYNs of `plan` (see [`FORGE`]) to `dst`.
pub(crate) fn forge(lab: &Lab, dst: &str, plan: &[String]) {
    let mut args = vec!["python3", "-c", FORGE, dst];
    args.extend(plan.iter().map(String::as_str));
    let out = lab.attack(&args);
    assert!(out.status.success(), "forge: {out:?}");
}

fn unreachable_routes(lab: &Lab) -> Vec<String> {
    lab.def_routes()
        .lines()
        .filter(|l| l.starts_with("unreachable "))
        .map(str::to_string)
        .collect()
}

fn blocking_config(lab: &Lab, extra: &str) -> String {
    lab.write_config(&format!(
        "{extra}\n\
         ADVANCED_PORTS_TCP=\"1024\"\n\
         ADVANCED_EXCLUDE_TCP=\"113,139\"\n\
         BLOCK_TCP=\"1\"\n\
         BLOCK_UDP=\"1\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n"
    ))
    .display()
    .to_string()
}

/// Starts `hping3 --rand-source` in the attacker namespace: SYNs to port 23 of the defender,
/// one every `interval_us` µs asked, each from another address of the whole IPv4 space (the
/// defender has no route back to them: nothing leaves the lab); `count` of them, or as many
/// as `secs` allow (hping3 is then stopped with SIGINT, so it still reports its count).
fn rand_source_flood(
    lab: &Lab,
    count: Option<u32>,
    interval_us: u32,
    secs: u32,
) -> std::thread::JoinHandle<std::process::Output> {
    let att = lab.att.clone();
    let def4 = lab.def4.clone();
    std::thread::spawn(move || {
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["-s", "INT", &secs.to_string(), "ip", "netns", "exec", &att])
            .args(["hping3", "--rand-source", "-S", "-p", "23", "-q"])
            .args(["-i", &format!("u{interval_us}")]);
        if let Some(count) = count {
            cmd.args(["-c", &count.to_string()]);
        }
        cmd.arg(&def4).output().expect("hping3")
    })
}

/// The packets hping3 says it sent (`N packets transmitted`).
fn transmitted(out: &std::process::Output) -> u64 {
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    report
        .split(" packets transmitted")
        .next()
        .and_then(|head| head.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in hping3's report: {report}"))
}

#[test]
fn a_forged_flood_blocks_no_source_while_a_real_scan_inside_it_is_blocked() {
    let lab = Lab::new();
    let conf = blocking_config(&lab, "LOG_RATE_LIMIT=\"100\"");
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp"]);
    let flood = rand_source_flood(&lab, Some(20_000), 100, 60);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(800));
    // The real scanner, 1 s into a 2.5 s flood of one-packet forged sources.
    lab.nmap(&["-sS", "-p", "20-30", &lab.def4]);
    let out = flood.join().expect("flood thread");
    assert_eq!(transmitted(&out), 20_000, "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("20000 packets transmitted")
            || String::from_utf8_lossy(&out.stderr).contains("20000 packets transmitted"),
        "hping3: {out:?}"
    );
    let flood_time = started.elapsed();
    let att = &lab.att4;
    let blocked = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        unreachable_routes(&lab)
            .iter()
            .any(|r| r.starts_with(&format!("unreachable {att} ")))
    });
    assert!(
        blocked,
        "the real scanner is blocked: {:?}",
        unreachable_routes(&lab)
    );
    assert_eq!(
        unreachable_routes(&lab).len(),
        1,
        "no forged source blocked: {:?}",
        unreachable_routes(&lab)
    );
    let history = lab.read("portsentry.history");
    assert_eq!(history.lines().count(), 1, "{history}");
    assert!(history.contains(&format!("/{att} Port: ")), "{history}");
    // The log stays bounded: lines of probes not acted on fit in LOG_RATE_LIMIT, and the
    // rest is summed up.
    let summary = (0..150).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        d.lines()
            .into_iter()
            .find(|l| l.contains("sources not acted on in the last"))
    });
    let summary = summary.unwrap_or_else(|| panic!("no summary line: {:?}", d.lines().len()));
    assert!(summary.contains("below the trigger"), "{summary}");
    let forged_lines = d
        .syslog()
        .iter()
        .filter(|l| l.contains("SYN/Normal scan from host: ") && l.contains("to TCP port: 23"))
        .count();
    let budget = 100 + (flood_time.as_secs_f64() * 100.0) as usize + 100;
    assert!(
        forged_lines > 0 && forged_lines <= budget,
        "{forged_lines} lines for forged sources, budget {budget}"
    );
    // Every probe of the real scanner got its own line.
    let mine = d
        .syslog()
        .iter()
        .filter(|l| l.contains(&format!("SYN/Normal scan from host: {att}/{att}")))
        .count();
    assert!(mine >= 3, "{mine}");
}

#[test]
fn forged_multi_port_scans_are_blocked_at_the_rate_limit_best_evidence_first() {
    let lab = Lab::new();
    // The global budget alone: the 500 sources share two /24s, whose own budget
    // (BLOCK_RATE_LIMIT_PER_PREFIX) would otherwise be the one reached.
    let conf = blocking_config(
        &lab,
        "BLOCK_RATE_LIMIT=\"10\"\nBLOCK_RATE_LIMIT_PER_PREFIX=\"0\"\nLOG_RATE_LIMIT=\"0\"",
    );
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp"]);
    // 500 forged sources × 5 ports, then one that probes 9 ports.
    let plan: Vec<String> = (0..500)
        .map(|i| format!("10.79.{}.{}@21,22,23,25,80", i / 250, i % 250 + 1))
        .collect();
    forge(&lab, &lab.def4, &plan);
    let best = "10.79.9.9";
    forge(&lab, &lab.def4, &[format!("{best}@1,2,3,4,5,6,7,8,9")]);
    // The bucket starts full: 10 blocks at once, then one every 6 s.
    std::thread::sleep(Duration::from_secs(3));
    let routes = unreachable_routes(&lab);
    assert_eq!(routes.len(), 10, "{routes:?}");
    let summary = (0..150).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        d.lines()
            .into_iter()
            .find(|l| l.contains("sources not blocked in the last"))
    });
    let summary = summary.unwrap_or_else(|| panic!("no summary: {:?}", d.lines().len()));
    assert!(
        summary.contains("BLOCK_RATE_LIMIT (10 a minute)"),
        "{summary}"
    );
    // The next token goes to the best evidence, not to the next in line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while unreachable_routes(&lab).len() < 11 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let routes = unreachable_routes(&lab);
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with(&format!("unreachable {best} "))),
        "the 9-port source got the 11th block: {routes:?}"
    );
    assert!(routes.len() <= 12, "{routes:?}");
}

#[test]
fn a_minute_of_forged_syns_at_2000_a_second_adds_about_100_log_lines_with_the_defaults() {
    let lab = Lab::new();
    // LOG_RATE_LIMIT is left at its default.
    let conf = blocking_config(&lab, "");
    let d = Daemon::start(&lab, &["-c", &conf, "-atcp"]);
    std::thread::sleep(Duration::from_secs(1));
    let before = d.syslog().len();
    let started = Instant::now();
    // A minute of SYNs, one every 350 µs asked (hping3 oversleeps: about 2,000 a second).
    let flood = rand_source_flood(&lab, None, 350, 60);
    // The real scanner, 20 s into the flood: 5 ports, no retries.
    std::thread::sleep(Duration::from_secs(20));
    lab.nmap(&["-sS", "--max-retries", "0", "-p", "20-24", &lab.def4]);
    let sent = transmitted(&flood.join().expect("flood thread"));
    let flood_time = started.elapsed();
    let rate = sent as f64 / flood_time.as_secs_f64();
    assert!(
        rate > 1_500.0,
        "a flood of {rate:.0} SYNs a second is no test"
    );
    let probes = |d: &Daemon| {
        d.syslog()
            .iter()
            .filter(|l| l.contains("SYN/Normal scan from host: ") && l.contains("to TCP port: 23"))
            .count()
    };
    // The last summary comes at most 10 s after the flood.
    std::thread::sleep(Duration::from_secs(11));
    let lines: Vec<String> = d.syslog()[before..].to_vec();
    let att = &lab.att4;
    let mine =
        |l: &&String| l.contains(&format!("{att}/{att}")) || l.contains(&format!("Host {att} "));
    let scanner: Vec<&String> = lines.iter().filter(mine).collect();
    let others: Vec<&String> = lines.iter().filter(|l| !mine(l)).collect();
    eprintln!(
        "flood of {:.1} s ({:.0} SYNs a second): {} log lines, {} of them the real scanner's, \
         {} forged probe lines",
        flood_time.as_secs_f64(),
        rate,
        lines.len(),
        scanner.len(),
        probes(&d)
    );
    // Positive control: the real scan inside the flood is blocked, and logged.
    let routes = unreachable_routes(&lab);
    assert_eq!(
        routes
            .iter()
            .filter(|r| r.starts_with(&format!("unreachable {att} ")))
            .count(),
        1,
        "the real scanner is blocked, no forged source: {routes:?}"
    );
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(
        scanner
            .iter()
            .any(|l| l.contains("has been blocked via dropped route")),
        "{scanner:?}"
    );
    assert!(
        scanner
            .iter()
            .filter(|l| l.contains("SYN/Normal scan from host"))
            .count()
            >= 3,
        "the scanner's probes from the trigger on are logged: {scanner:?}"
    );
    // The flood itself: the burst, about one line a second, a summary every 10 s that says
    // how many lines were held back.
    let summaries: Vec<&&String> = others
        .iter()
        .filter(|l| l.contains("sources not acted on in the last"))
        .collect();
    assert!(
        (5..=8).contains(&summaries.len()),
        "{} summaries in {flood_time:?} and 11 s: {summaries:?}",
        summaries.len()
    );
    assert!(
        summaries
            .iter()
            .all(|l| l.contains("lines held back by LOG_RATE_LIMIT")),
        "{summaries:?}"
    );
    let budget = 10 + flood_time.as_secs() as usize + 1 + summaries.len();
    assert!(
        others.len() <= budget,
        "{} lines for the flood, budget {budget}: {others:#?}",
        others.len()
    );
    assert!(
        lines.len() <= 100,
        "{} lines in all, the scanner's {} included (100 allowed)",
        lines.len(),
        scanner.len()
    );
}
