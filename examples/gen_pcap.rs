//! Benchmark helper for `benches/replay.sh` (not part of the daemon): writes the synthetic
//! captures the replay benchmark reads, in the classic pcap format (microseconds, little
//! endian, Ethernet), written by hand: no capture library.
//!
//! Usage: `gen_pcap bulk FILE [MIB]` or `gen_pcap probes FILE [PACKETS]`.
//!
//! The capturing host is 10.77.0.1 (MAC 02:00:00:00:00:01); every other address is behind
//! its gateway (MAC 02:00:00:00:00:fe), so every frame is between those two MACs.
//!
//! - `bulk` (default 1024 MiB): four established TCP connections between the host and
//!   10.77.1.1-4, two served by the host (ports 22 and 443), two opened by it (to 443 and
//!   873), each with its handshake, then full-size segments (1460 bytes of data, 1514-byte
//!   frames) at 1 Gbit/s in the direction of its transfer and a delayed ACK back every two
//!   segments, and a FIN exchange at the end. Inside the bulk traffic: at 1 s an nmap-like
//!   SYN scan of ports 1-1000 (shuffled) from 10.77.5.5, 100 µs apart, the host answering a
//!   SYN-ACK on 22, 80 and 443 (the scanner resets it) and an RST elsewhere; at 3 s a
//!   forged-source SYN flood, 50,000 one-packet sources of 10.78.0.0/16 to random ports
//!   1-1023, 20 µs apart, answered the same way; at 5 s UDP probes of 20 ports from
//!   10.77.5.6; DNS queries of the host to 10.77.0.53 and their answers every 500 ms.
//! - `probes` (default 2,000,000): SYN probes only, one every 10 µs, each from a random
//!   source of 10.0.0.0/8 outside 10.77.0.0/16 to a random port 1-1023 of the host.
//!
//! IPv4 header checksums and TCP/UDP checksums are correct. A fixed seed makes every run
//! write the same bytes. Prints `<packets> <bytes>` when done.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

const HOST: [u8; 4] = [10, 77, 0, 1];
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const RESOLVER: [u8; 4] = [10, 77, 0, 53];
const SCANNER: [u8; 4] = [10, 77, 5, 5];
const UDP_SCANNER: [u8; 4] = [10, 77, 5, 6];
/// The host's listening TCP ports (a SYN to them is answered with a SYN-ACK).
const OPEN: [u16; 3] = [22, 80, 443];
const MSS: usize = 1460;
/// 2021-01-01 00:00:00 UTC, the captures' start, in ns.
const START_NS: u64 = 1_609_459_200_000_000_000;
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A pcap file being written; `frame` is the buffer each packet is built in.
struct Pcap {
    out: BufWriter<File>,
    frame: Vec<u8>,
    payload: Vec<u8>,
    packets: u64,
    bytes: u64,
    ip_id: u16,
}

/// One end of a connection.
type End = ([u8; 4], u16);

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

impl Pcap {
    fn create(path: &str) -> std::io::Result<Pcap> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&[0; 8])?; // thiszone, sigfigs
        out.write_all(&262_144u32.to_le_bytes())?;
        out.write_all(&1u32.to_le_bytes())?; // LINKTYPE_ETHERNET
        Ok(Pcap {
            out,
            frame: Vec::with_capacity(2048),
            payload: (0..MSS).map(|i| (i * 7 + 13) as u8).collect(),
            packets: 0,
            bytes: 24,
            ip_id: 1,
        })
    }

    /// Builds the Ethernet and IPv4 headers of a packet of `l4_len` bytes of protocol `proto`.
    fn ip_header(&mut self, src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) {
        self.frame.clear();
        let (dmac, smac) = if src == HOST {
            (GATEWAY_MAC, HOST_MAC)
        } else {
            (HOST_MAC, GATEWAY_MAC)
        };
        self.frame.extend_from_slice(&dmac);
        self.frame.extend_from_slice(&smac);
        self.frame.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + l4_len) as u16;
        self.ip_id = self.ip_id.wrapping_add(1);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = fold(sum16(&ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        self.frame.extend_from_slice(&ip);
    }

    fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
        sum16(&src) + sum16(&dst) + u32::from(proto) + len as u32
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(&mut self, t: u64, s: End, d: End, seq: u32, ack: u32, flags: u8, len: usize) {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&s.1.to_be_bytes());
        h[2..4].copy_from_slice(&d.1.to_be_bytes());
        h[4..8].copy_from_slice(&seq.to_be_bytes());
        h[8..12].copy_from_slice(&ack.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        let window: u16 = if flags & SYN != 0 { 64_240 } else { 65_535 };
        h[14..16].copy_from_slice(&window.to_be_bytes());
        let payload = &self.payload[..len];
        let c = fold(Self::pseudo(s.0, d.0, 6, 20 + len) + sum16(&h) + sum16(payload));
        h[16..18].copy_from_slice(&c.to_be_bytes());
        self.ip_header(s.0, d.0, 6, 20 + len);
        self.frame.extend_from_slice(&h);
        self.frame.extend_from_slice(&self.payload[..len]);
        self.record(t);
    }

    fn udp(&mut self, t: u64, s: End, d: End, len: usize) {
        let mut h = [0u8; 8];
        h[0..2].copy_from_slice(&s.1.to_be_bytes());
        h[2..4].copy_from_slice(&d.1.to_be_bytes());
        h[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        let payload = &self.payload[..len];
        let mut c = fold(Self::pseudo(s.0, d.0, 17, 8 + len) + sum16(&h) + sum16(payload));
        if c == 0 {
            c = 0xffff;
        }
        h[6..8].copy_from_slice(&c.to_be_bytes());
        self.ip_header(s.0, d.0, 17, 8 + len);
        self.frame.extend_from_slice(&h);
        self.frame.extend_from_slice(&self.payload[..len]);
        self.record(t);
    }

    /// Writes the packet built in `frame` at `t` ns since the capture's start.
    fn record(&mut self, t: u64) {
        let ns = START_NS + t;
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&((ns / 1_000_000_000) as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&((ns % 1_000_000_000 / 1000) as u32).to_le_bytes());
        let n = (self.frame.len() as u32).to_le_bytes();
        rec[8..12].copy_from_slice(&n);
        rec[12..16].copy_from_slice(&n);
        // A write error is reported by the final flush.
        let _ = self.out.write_all(&rec);
        let _ = self.out.write_all(&self.frame);
        self.packets += 1;
        self.bytes += 16 + self.frame.len() as u64;
    }

    fn finish(mut self) -> std::io::Result<(u64, u64)> {
        self.out.flush()?;
        Ok((self.packets, self.bytes))
    }
}

/// A scan or background packet, sorted into the bulk traffic by time.
#[derive(Clone, Copy)]
enum Event {
    Tcp(End, End, u32, u32, u8),
    Udp(End, End, usize),
}

/// The packets of the scans and of the host's DNS, in time order.
fn events(rng: &mut Rng, until: u64) -> Vec<(u64, Event)> {
    let mut ev = Vec::new();
    // Replies of the host to a SYN of `from` to `port`, `t` ns after it.
    let syn = |ev: &mut Vec<(u64, Event)>, t: u64, from: End, port: u16, seq: u32| {
        let to = (HOST, port);
        ev.push((t, Event::Tcp(from, to, seq, 0, SYN)));
        if OPEN.contains(&port) {
            ev.push((t + 40_000, Event::Tcp(to, from, 7_000, seq + 1, SYN | ACK)));
            ev.push((t + 80_000, Event::Tcp(from, to, seq + 1, 0, RST)));
        } else {
            ev.push((t + 40_000, Event::Tcp(to, from, 0, seq + 1, RST | ACK)));
        }
    };
    // The nmap-like SYN scan: ports 1-1000 in a random order, one source port.
    let mut ports: Vec<u16> = (1..=1000).collect();
    for i in (1..ports.len()).rev() {
        ports.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (i, p) in ports.iter().enumerate() {
        syn(
            &mut ev,
            1_000_000_000 + i as u64 * 100_000,
            (SCANNER, 61_234),
            *p,
            0x1000,
        );
    }
    // The forged flood: 50,000 distinct sources of 10.78.0.0/16 (an odd multiplier walks
    // the /16 without repeats), each one SYN to a random port below 1024.
    for i in 0..50_000u64 {
        let host = (i.wrapping_mul(40_503) & 0xffff) as u16;
        let src = [10, 78, (host >> 8) as u8, host as u8];
        let port = 1 + rng.below(1023) as u16;
        let sport = 1024 + rng.below(64_000) as u16;
        syn(
            &mut ev,
            3_000_000_000 + i * 20_000,
            (src, sport),
            port,
            rng.next() as u32,
        );
    }
    // UDP probes of 20 ports, 1 ms apart.
    for (i, p) in [
        1u16, 7, 9, 53, 69, 111, 123, 137, 161, 162, 500, 513, 514, 520, 635, 640, 641, 700, 1900,
        5353,
    ]
    .iter()
    .enumerate()
    {
        let t = 5_000_000_000 + i as u64 * 1_000_000;
        ev.push((t, Event::Udp((UDP_SCANNER, 45_000), (HOST, *p), 0)));
    }
    // The host's DNS queries and their answers.
    let mut t = 250_000_000;
    let mut sport = 40_000u16;
    while t < until {
        ev.push((t, Event::Udp((HOST, sport), (RESOLVER, 53), 40)));
        ev.push((t + 300_000, Event::Udp((RESOLVER, 53), (HOST, sport), 120)));
        sport = sport.wrapping_add(1).max(32_768);
        t += 500_000_000;
    }
    ev.sort_by_key(|(t, _)| *t);
    ev
}

/// One bulk TCP connection: `client` opened it to `server`; `up` whether the data flows
/// from client to server.
struct Conn {
    client: End,
    server: End,
    up: bool,
    /// Next sequence numbers of client and server.
    cseq: u32,
    sseq: u32,
    unacked: u32,
}

fn bulk(path: &str, mib: u64) -> std::io::Result<(u64, u64)> {
    let mut rng = Rng(SEED);
    let mut pcap = Pcap::create(path)?;
    let target = mib << 20;
    // Wire time of a full segment at 1 Gbit/s (frame, preamble and gap); four connections
    // share the link.
    let gap = (14 + 20 + 20 + MSS as u64 + 20) * 8;
    // Estimated length, for the DNS events (about 1043 bytes a packet).
    let until = target / 1043 * gap + 2_000_000_000;
    let events = events(&mut rng, until);
    let mut next = 0;
    let peer = |n: u8| [10, 77, 1, n];
    let mut conns = [
        (peer(1), 40_001, HOST, 22, true),
        (peer(2), 40_002, HOST, 443, false),
        (HOST, 50_001, peer(3), 443, false),
        (HOST, 50_002, peer(4), 873, true),
    ]
    .map(|(c, cp, s, sp, up)| Conn {
        client: (c, cp),
        server: (s, sp),
        up,
        cseq: rng.next() as u32,
        sseq: rng.next() as u32,
        unacked: 0,
    });
    let mut t = 0u64;
    for c in &mut conns {
        pcap.tcp(t, c.client, c.server, c.cseq, 0, SYN, 0);
        pcap.tcp(
            t + 200_000,
            c.server,
            c.client,
            c.sseq,
            c.cseq + 1,
            SYN | ACK,
            0,
        );
        c.cseq += 1;
        c.sseq += 1;
        pcap.tcp(t + 400_000, c.client, c.server, c.cseq, c.sseq, ACK, 0);
        t += 1_000_000;
    }
    let mut i = 0usize;
    while pcap.bytes < target {
        while next < events.len() && events[next].0 <= t {
            match events[next].1 {
                Event::Tcp(s, d, seq, ack, flags) => {
                    pcap.tcp(events[next].0, s, d, seq, ack, flags, 0)
                }
                Event::Udp(s, d, len) => pcap.udp(events[next].0, s, d, len),
            }
            next += 1;
        }
        let c = &mut conns[i % conns.len()];
        i += 1;
        let (from, to, seq, ack) = if c.up {
            (c.client, c.server, &mut c.cseq, c.sseq)
        } else {
            (c.server, c.client, &mut c.sseq, c.cseq)
        };
        let s = *seq;
        *seq = seq.wrapping_add(MSS as u32);
        let next_seq = *seq;
        pcap.tcp(t, from, to, s, ack, ACK | PSH, MSS);
        c.unacked += 1;
        if c.unacked == 2 {
            c.unacked = 0;
            let ack_seq = if c.up { c.sseq } else { c.cseq };
            pcap.tcp(t + gap / 2, to, from, ack_seq, next_seq, ACK, 0);
        }
        t += gap;
    }
    // The events left (a scan past a small file's end) are written anyway: they are the test.
    for (at, e) in &events[next..] {
        let at = (*at).max(t);
        match *e {
            Event::Tcp(s, d, seq, ack, flags) => pcap.tcp(at, s, d, seq, ack, flags, 0),
            Event::Udp(s, d, len) => pcap.udp(at, s, d, len),
        }
        t = at;
    }
    for c in &mut conns {
        t += 100_000;
        pcap.tcp(t, c.client, c.server, c.cseq, c.sseq, FIN | ACK, 0);
        pcap.tcp(
            t + 50_000,
            c.server,
            c.client,
            c.sseq,
            c.cseq + 1,
            FIN | ACK,
            0,
        );
        pcap.tcp(
            t + 100_000,
            c.client,
            c.server,
            c.cseq + 1,
            c.sseq + 1,
            ACK,
            0,
        );
    }
    pcap.finish()
}

fn probes(path: &str, count: u64) -> std::io::Result<(u64, u64)> {
    let mut rng = Rng(SEED ^ 0x5555);
    let mut pcap = Pcap::create(path)?;
    for i in 0..count {
        let src = loop {
            let r = rng.next() as u32;
            let a = [10, (r >> 16) as u8, (r >> 8) as u8, r as u8];
            if a[1] != 77 && a[3] != 0 && a[3] != 255 {
                break a;
            }
        };
        let port = 1 + rng.below(1023) as u16;
        let sport = 1024 + rng.below(64_000) as u16;
        pcap.tcp(
            i * 10_000,
            (src, sport),
            (HOST, port),
            rng.next() as u32,
            0,
            SYN,
            0,
        );
    }
    pcap.finish()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["bulk", path] => bulk(path, 1024),
        ["bulk", path, n] if n.parse::<u64>().is_ok() => bulk(path, n.parse().unwrap_or(1024)),
        ["probes", path] => probes(path, 2_000_000),
        ["probes", path, n] if n.parse::<u64>().is_ok() => probes(path, n.parse().unwrap_or(0)),
        _ => {
            eprintln!("usage: gen_pcap bulk FILE [MIB] | gen_pcap probes FILE [PACKETS]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok((packets, bytes)) => {
            println!("{packets} {bytes}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen_pcap: {e}");
            ExitCode::FAILURE
        }
    }
}
