//! Benchmark helper for `benches/raw_capture.sh` (not part of the daemon): sends N TCP SYN
//! probes with forged sources to one IPv4 destination, paced at RATE per second.
//!
//! Usage (root, inside the benchmark's attacker namespace): `synflood N RATE DST [LOG]`;
//! with `SYNFLOOD_WIDE=1` in the environment the sources are drawn from all of 10.0.0.0/8
//! but 10.77.0.0/16 (see [`probe`]).
//! Prints the elapsed seconds and the achieved rate: `<seconds> <probes per second>`. With
//! LOG (the reaction-time measure), a line `<source> <unix time of the send, µs>` is written
//! to LOG per probe.
//!
//! Every probe is paced on its own, evenly, as `hping3 -i` sends (the acceptance flood):
//! probe i leaves at i/RATE seconds, or as soon after as the sender can (a sleep shorter
//! than the kernel's timer slack becomes a few probes back to back at 100,000/s). An
//! earlier version looked at the clock every 64 probes, which at 6,000/s sent bursts of 64
//! every 10.7 ms: a capture that wakes per burst pays its wake-up once per 64 probes, where
//! an evenly paced flood costs one per ring block.
//!
//! The packets are those the benchmark's earlier Python sender built: sources drawn from
//! 10.78.0.0/16 (third byte 0..=255, fourth 1..=254), source port 1024..=65534, destination
//! port 1..=1023 except 113 and 139 (the benchmark config's ADVANCED_EXCLUDE_TCP), random
//! sequence number, SYN only, window 1024, TTL 64, correct IP and TCP checksums. A fixed
//! xorshift seed makes every run send the same probes. Python could not send 100k/s on a
//! 2-core machine; this sends them with one `sendto(2)` each on an `IPPROTO_RAW` socket
//! (which implies `IP_HDRINCL`).
//!
//! Safety of the lab: packets go only to DST, which must be in 10.77.0.0/16 (the address
//! the benchmark gives its defender namespace); anything else is refused.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Fixed seed: every run sends the same sequence of probes.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// Marsaglia's xorshift64: enough randomness for forged fields, and no extra crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `lo..=hi` for a benchmark (modulo bias is negligible on 64 bits).
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }
}

/// Ones' complement sum of 16-bit big-endian words (RFC 1071), not yet folded.
fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// Folds a ones' complement sum and complements it: the checksum field's value.
fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds one 40-byte IPv4 + TCP SYN probe from `src` to `dst`.
fn probe(rng: &mut XorShift, dst: Ipv4Addr, ports: &[u16], wide: bool) -> [u8; 40] {
    let src = if wide {
        // All of 10.0.0.0/8 but the lab's own 10.77.0.0/16: 16.7 million sources, so that a
        // flood of 100,000 repeats almost none, as `hping3 --rand-source` over all of IPv4.
        let second = match rng.range(0, 254) as u8 {
            77 => 255,
            b => b,
        };
        Ipv4Addr::new(10, second, rng.range(0, 255) as u8, rng.range(1, 254) as u8)
    } else {
        Ipv4Addr::new(10, 78, rng.range(0, 255) as u8, rng.range(1, 254) as u8)
    };
    let sport = rng.range(1024, 65534) as u16;
    let dport = ports[rng.range(0, ports.len() as u32 - 1) as usize];
    let seq = rng.next() as u32;

    let mut p = [0u8; 40];
    // IPv4 header: version 4, IHL 5, total length 40, ID 0, no fragmentation, TTL 64, TCP.
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = fold(sum16(&p[..20]));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // TCP header: ports, sequence, ack 0, data offset 5, SYN, window 1024, urgent 0.
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&1024u16.to_be_bytes());
    // Pseudo-header: source, destination, zero, protocol, TCP length.
    let pseudo = sum16(&src.octets()) + sum16(&dst.octets()) + 6 + 20;
    let tcp_sum = fold(pseudo + sum16(t));
    t[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

fn parse_args() -> Result<(u64, f64, Ipv4Addr, Option<String>), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (n, rate, dst, log) = match args.as_slice() {
        [n, rate, dst] => (n, rate, dst, None),
        [n, rate, dst, log] => (n, rate, dst, Some(log.clone())),
        _ => {
            return Err(
                "usage: synflood N RATE DST [LOG] (DST an IPv4 address in 10.77.0.0/16)".into(),
            );
        }
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("N: '{n}' is not a number of probes"))?;
    let rate: f64 = rate
        .parse()
        .ok()
        .filter(|r: &f64| *r > 0.0 && r.is_finite())
        .ok_or_else(|| format!("RATE: '{rate}' is not a positive number of probes per second"))?;
    let dst: Ipv4Addr = dst
        .parse()
        .map_err(|_| format!("DST: '{dst}' is not an IPv4 address"))?;
    let [a, b, _, _] = dst.octets();
    if (a, b) != (10, 77) {
        return Err(format!(
            "DST: {dst} is outside 10.77.0.0/16, the benchmark lab's range: refused"
        ));
    }
    Ok((n, rate, dst, log))
}

fn run() -> Result<(), String> {
    let (n, rate, dst, log_path) = parse_args()?;
    let mut log = match &log_path {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("LOG {p}: {e}"))?),
        None => None,
    };
    let ports: Vec<u16> = (1..1024).filter(|p| *p != 113 && *p != 139).collect();
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .map_err(|e| format!("raw socket (needs root): {e}"))?;
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    let mut rng = XorShift(SEED);
    let wide = std::env::var_os("SYNFLOOD_WIDE").is_some_and(|v| v == "1");

    let start = Instant::now();
    for i in 0..n {
        let packet = probe(&mut rng, dst, &ports, wide);
        // ENOBUFS: the device queue is full for a moment; retry this packet.
        loop {
            match socket.send_to(&packet, &to) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                Err(e) => return Err(format!("sendto {dst}: {e}")),
            }
        }
        if let Some(f) = log.as_mut() {
            use std::io::Write;
            let sent = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            writeln!(f, "{src} {}", sent.as_micros()).map_err(|e| format!("LOG: {e}"))?;
        }
        let due = Duration::from_secs_f64((i + 1) as f64 / rate);
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{secs:.2} {:.0}", n as f64 / secs.max(1e-9));
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synflood: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_checksums_verify_to_zero() {
        let mut rng = XorShift(SEED);
        let dst = Ipv4Addr::new(10, 77, 250, 1);
        let ports: Vec<u16> = (1..1024).filter(|p| *p != 113 && *p != 139).collect();
        for _ in 0..1000 {
            let p = probe(&mut rng, dst, &ports, false);
            assert_eq!(fold(sum16(&p[..20])), 0, "IP header checksum");
            let src = &p[12..16];
            let pseudo = sum16(src) + sum16(&dst.octets()) + 6 + 20;
            assert_eq!(fold(pseudo + sum16(&p[20..])), 0, "TCP checksum");
            let dport = u16::from_be_bytes([p[22], p[23]]);
            assert!((1..1024).contains(&dport) && dport != 113 && dport != 139);
            assert_eq!((p[12], p[13]), (10, 78));
            assert!((1..=254).contains(&p[15]));
            assert_eq!(&p[16..20], &dst.octets());
            assert_eq!(p[33], 0x02, "SYN only");
        }
    }

    #[test]
    fn wide_sources_stay_in_ten_slash_eight_outside_the_lab_and_rarely_repeat() {
        let mut rng = XorShift(SEED);
        let dst = Ipv4Addr::new(10, 77, 250, 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            let p = probe(&mut rng, dst, &[80], true);
            assert_eq!(p[12], 10);
            assert_ne!(p[13], 77, "never the lab's own /16");
            seen.insert([p[12], p[13], p[14], p[15]]);
        }
        // 16.6 million sources: 100,000 draws repeat about 300.
        assert!(seen.len() > 99_000, "{}", seen.len());
    }
}
