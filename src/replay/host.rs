//! Who the capturing host was: its addresses, its MAC address on each interface, and the
//! ports it listened on, learned from a first pass over the capture (or given on the command
//! line: `--local`, `--listening`). The live sensor asks the kernel these things; a replay
//! can only read them off the traffic:
//! - a cooked capture (`tcpdump -i any`) says each packet's direction;
//! - on Ethernet the host's MAC address is the one in the most frames of the interface;
//! - on raw IP the host's addresses are those in a large share of all packets;
//! - a port that answered a SYN with a SYN-ACK, or sent UDP, had a listener.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

/// The first pass looks up about ten keys (MACs, addresses, senders) a packet: std's SipHash
/// made it a quarter of a bulk replay. foldhash is seeded per process, so a capture's
/// addresses cannot be chosen to collide; the maps are bounded anyway.
type Fast = foldhash::fast::RandomState;

use super::link::{Decoded, Direction};
use crate::sensor::listeners::Listeners;

/// Distinct MAC addresses counted per capture at most.
const MAX_MACS: usize = 4096;
/// Distinct IP addresses counted at most (raw-IP captures).
const MAX_ADDRS: usize = 65_536;
/// Addresses remembered per sender at most: a host has a handful, a router forwards many.
const MAX_ADDRS_PER_SENDER: usize = 64;
/// IP packets the first look reads: enough to tell the host from its gateway or peer and to
/// meet the listeners in use; the replay then reads the capture once (a listener that first
/// answers later is learned when it does).
pub const SAMPLE: u64 = 250_000;
/// Without a link-layer clue, an address in at least this share of the IP packets is the
/// host's (the host is in every packet of its own capture).
const LOCAL_SHARE: f64 = 0.2;

/// Who sent a packet, as the link tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sender {
    /// A MAC address on an interface.
    Mac(u32, [u8; 6]),
    /// The capturing host, as a cooked capture says.
    Host,
    /// An IP address (raw-IP links).
    Ip(IpAddr),
}

/// What a sender did that tells about the host behind it.
#[derive(Debug, Default)]
struct Seen {
    addrs: HashSet<IpAddr, Fast>,
    tcp: BTreeSet<u16>,
    udp: BTreeSet<u16>,
    /// SYN-ACKs and RSTs sent: a scanned or serving host answers, a scanner asks.
    answers: u64,
}

impl Seen {
    fn add_addr(&mut self, ip: IpAddr) {
        if self.addrs.len() < MAX_ADDRS_PER_SENDER && is_unicast(ip) {
            self.addrs.insert(ip);
        }
    }
}

/// The addresses and ports of one IP packet, as far as the first pass needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// A TCP SYN-ACK or a UDP datagram: the source port (it had a listener), with the protocol.
    pub listener: Option<(bool, u16)>,
    /// A TCP SYN-ACK or RST: an answer to someone else's segment.
    pub answer: bool,
}

/// Reads the addresses (and a listener's port) of an IP packet; `None` when too short.
pub fn peek(ip: &[u8]) -> Option<Peek> {
    let super::link::IpHeader {
        src,
        dst,
        proto,
        l4,
    } = super::link::ip_header(ip)?;
    let port = |l4: &[u8]| Some(u16::from_be_bytes([*l4.first()?, *l4.get(1)?]));
    let flags = l4.and_then(|l| l.get(13)).copied().unwrap_or(0);
    let answer = proto == 6 && (flags & 0x04 != 0 || flags & 0x12 == 0x12);
    let listener = match (proto, l4) {
        (6, Some(l4)) if l4.get(13).is_some_and(|f| f & 0x16 == 0x12) => {
            port(l4).map(|p| (true, p))
        }
        (17, Some(l4)) => port(l4).map(|p| (false, p)),
        _ => None,
    };
    Some(Peek {
        src,
        dst,
        listener,
        answer,
    })
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => !(a.is_broadcast() || a.is_multicast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

/// The first pass: feed it every frame, then [`Learner::finish`].
#[derive(Debug, Default)]
pub struct Learner {
    macs: HashMap<(u32, [u8; 6]), u64, Fast>,
    addrs: HashMap<IpAddr, u64, Fast>,
    ip_packets: u64,
    senders: HashMap<Sender, Seen, Fast>,
    receivers: HashMap<Sender, Seen, Fast>,
    /// Interfaces whose link is Ethernet.
    ethernet: BTreeSet<u32>,
    cooked: bool,
}

impl Learner {
    /// Takes one decoded frame of interface `iface`.
    pub fn see(&mut self, iface: u32, d: &Decoded<'_>) {
        let Some(p) = peek(d.ip) else {
            return;
        };
        self.ip_packets += 1;
        for ip in [p.src, p.dst] {
            let n = self.addrs.len();
            if let Some(c) = self.addrs.get_mut(&ip) {
                *c += 1;
            } else if n < MAX_ADDRS {
                self.addrs.insert(ip, 1);
            }
        }
        let (from, to) = match (d.direction, d.macs) {
            (Direction::Out, _) => {
                self.cooked = true;
                (Some(Sender::Host), None)
            }
            (Direction::In, _) => {
                self.cooked = true;
                (None, Some(Sender::Host))
            }
            (Direction::Other, _) => return,
            (Direction::Unknown, Some((src, dst))) => {
                self.ethernet.insert(iface);
                for mac in [src, dst] {
                    let n = self.macs.len();
                    if let Some(c) = self.macs.get_mut(&(iface, mac)) {
                        *c += 1;
                    } else if n < MAX_MACS {
                        self.macs.insert((iface, mac), 1);
                    }
                }
                (Some(Sender::Mac(iface, src)), Some(Sender::Mac(iface, dst)))
            }
            (Direction::Unknown, None) => (Some(Sender::Ip(p.src)), None),
        };
        if let Some(from) = from {
            // Raw IP: only senders of SYN-ACKs, RSTs or UDP are kept (their ports), so that a
            // flood of forged sources costs nothing here. A known sender is looked up once.
            let telling = p.listener.is_some() || p.answer || !matches!(from, Sender::Ip(_));
            let n = self.senders.len();
            let seen = match self.senders.get_mut(&from) {
                Some(seen) => Some(seen),
                None if n < MAX_ADDRS && telling => Some(self.senders.entry(from).or_default()),
                None => None,
            };
            if let Some(seen) = seen {
                seen.add_addr(p.src);
                seen.answers += u64::from(p.answer);
                match p.listener {
                    Some((true, port)) => {
                        seen.tcp.insert(port);
                    }
                    Some((false, port)) => {
                        seen.udp.insert(port);
                    }
                    None => {}
                }
            }
        }
        if let Some(to) = to {
            let n = self.receivers.len();
            if let Some(seen) = self.receivers.get_mut(&to) {
                seen.add_addr(p.dst);
            } else if n < MAX_MACS {
                self.receivers.entry(to).or_default().add_addr(p.dst);
            }
        }
    }

    /// True once [`SAMPLE`] IP packets were seen.
    pub fn sampled(&self) -> bool {
        self.ip_packets >= SAMPLE
    }

    /// What the pass learned, with the command line's `local` and `listening` in place of
    /// what it would have guessed.
    pub fn finish(self, local: Option<Vec<IpAddr>>, listening: Option<Listeners>) -> HostView {
        // The host's MAC is in every frame of its capture, but so is its gateway's (or, on a
        // point-to-point link, the peer's): among those, the host is the one with few
        // addresses behind it (a gateway carries every remote address), then the one that
        // answers (SYN-ACKs, RSTs) rather than asks.
        let rank = |sender: Sender, count: u64| {
            let seen = self.senders.get(&sender);
            // An IP sender is one address by definition: only its answers tell.
            let behind = match sender {
                Sender::Ip(_) => 0,
                _ => seen.map_or(0, |s| s.addrs.len()),
            };
            (
                count,
                std::cmp::Reverse(behind),
                seen.map_or(0, |s| s.answers),
            )
        };
        let mut host_macs = HashMap::default();
        for iface in &self.ethernet {
            if let Some(((_, mac), _)) = self
                .macs
                .iter()
                .filter(|((i, m), _)| i == iface && m[0] & 1 == 0)
                .max_by_key(|((i, m), c)| (rank(Sender::Mac(*i, *m), **c), *m))
            {
                host_macs.insert(*iface, *mac);
            }
        }
        let mut hosts: Vec<Sender> = host_macs.iter().map(|(i, m)| Sender::Mac(*i, *m)).collect();
        if self.cooked {
            hosts.push(Sender::Host);
        }
        let mut guessed: BTreeSet<IpAddr> = BTreeSet::new();
        for h in &hosts {
            for seen in [self.senders.get(h), self.receivers.get(h)]
                .into_iter()
                .flatten()
            {
                guessed.extend(seen.addrs.iter().copied());
            }
        }
        // Raw IP (or nothing learned from the link): per family, the address in the most
        // packets (the host is in every packet of its capture), the one that answers on a tie.
        let link_told = !hosts.is_empty();
        if !link_told {
            let floor = (self.ip_packets as f64 * LOCAL_SHARE).ceil() as u64;
            for v4 in [true, false] {
                if let Some((ip, _)) = self
                    .addrs
                    .iter()
                    .filter(|(ip, n)| ip.is_ipv4() == v4 && **n >= floor.max(1))
                    .max_by_key(|(ip, n)| (rank(Sender::Ip(**ip), **n), **ip))
                {
                    guessed.insert(*ip);
                }
            }
        }
        let guessed_local = local.is_none();
        let local: BTreeSet<IpAddr> = match local {
            Some(l) => l.into_iter().map(|ip| ip.to_canonical()).collect(),
            None => guessed.into_iter().map(|ip| ip.to_canonical()).collect(),
        };
        let guessed_listeners = listening.is_none();
        let listeners = listening.unwrap_or_else(|| {
            let mut l = Listeners::default();
            let mut add = |seen: &Seen| {
                l.tcp.extend(seen.tcp.iter().copied());
                l.udp.extend(seen.udp.iter().copied());
            };
            if link_told {
                hosts
                    .iter()
                    .filter_map(|h| self.senders.get(h))
                    .for_each(&mut add);
            } else {
                local
                    .iter()
                    .filter_map(|ip| self.senders.get(&Sender::Ip(*ip)))
                    .for_each(&mut add);
            }
            l
        });
        HostView {
            local,
            host_macs,
            listeners,
            guessed_local,
            guessed_listeners,
        }
    }
}

/// The capturing host as the replay takes it.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// Its addresses.
    pub local: BTreeSet<IpAddr>,
    /// Its MAC address on each Ethernet interface of the capture.
    pub host_macs: HashMap<u32, [u8; 6], Fast>,
    /// The ports that had a listener.
    pub listeners: Listeners,
    /// The addresses were read off the traffic (no `--local`).
    pub guessed_local: bool,
    /// The listeners were read off the traffic (no `--listening`).
    pub guessed_listeners: bool,
}

/// Which ways a packet travelled, as the sensor would have seen it: a packet between two
/// of the host's own addresses (loopback) is seen leaving and arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ways {
    /// It arrived (`PACKET_HOST`).
    pub incoming: bool,
    /// It left (`PACKET_OUTGOING`).
    pub outgoing: bool,
}

impl HostView {
    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || self.local.contains(&ip)
    }

    /// The ways of a decoded frame of interface `iface`.
    pub fn ways(&self, iface: u32, d: &Decoded<'_>) -> Ways {
        let by_link = match d.direction {
            Direction::In => Some((true, false)),
            Direction::Out => Some((false, true)),
            Direction::Other => Some((false, false)),
            Direction::Unknown => match (d.macs, self.host_macs.get(&iface)) {
                (Some((src, dst)), Some(host)) if src != dst => Some((dst == *host, src == *host)),
                _ => None,
            },
        };
        let (incoming, outgoing) = by_link.unwrap_or_else(|| match peek(d.ip) {
            Some(p) => (self.is_local(p.dst), self.is_local(p.src)),
            None => (false, false),
        });
        Ways { incoming, outgoing }
    }
}

#[cfg(test)]
mod tests;
