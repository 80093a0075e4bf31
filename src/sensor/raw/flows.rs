//! The flows this host started, so that their answers are not taken for probes.
//!
//! The capture socket also sees what this host sends (`PACKET_OUTGOING`) from a watched
//! port: each UDP datagram and each TCP SYN is recorded here as (local port, remote address,
//! remote port) per protocol. A packet that comes back from that remote address and port to
//! that local port answers the flow: it is not a probe, whether or not the local socket
//! still exists (a DNS answer that arrives after the resolver gave up and closed its socket
//! is still an answer). This replaces 1.2-era guessing by source port ("from 53 to a high
//! port is an answer"), which also hid every UDP scan sent from port 53.
//!
//! How long a flow lives:
//! - UDP: [`UDP_FLOW_TTL`] (30 s) after the last datagram this host sent on it. Resolvers give
//!   up after 5 s per try and a few tries; 30 s also covers NTP and SNMP clients' retries.
//! - TCP: [`TCP_FLOW_TTL`] (2 min) after the last SYN this host sent (a retransmitted SYN
//!   renews it). Linux gives up a connection attempt after 6 retries, about 127 s, so the
//!   SYN+ACK or RST of the slowest handshake that can still succeed arrives within it. Once
//!   the handshake is done the connection's socket vouches for its segments (the sensor asks
//!   the kernel, and a positive answer renews the flow for another 2 min), and after the
//!   close the socket's TIME_WAIT does for the stragglers.
//!
//! Memory is bounded: each protocol keeps at most [`FLOW_CAPACITY`] flows and a new one
//! evicts the one that would expire first (the oldest). Only packets this host sends create
//! flows, so a remote flood cannot fill the table; a local program that opens many flows only
//! shortens how long the oldest are remembered.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::event::Proto;
use crate::sensor::classify::{FlowStart, Probe};

/// How long a UDP flow is remembered after this host's last datagram on it.
pub const UDP_FLOW_TTL: Duration = Duration::from_secs(30);

/// How long a TCP flow is remembered after this host's last SYN on it (or the last time a
/// live socket was found to own it).
pub const TCP_FLOW_TTL: Duration = Duration::from_secs(120);

/// Flows kept per protocol (about 100 bytes each: a few hundred KiB at most).
pub const FLOW_CAPACITY: usize = 4096;

/// A flow as seen from this host: answers come from `remote`:`remote_port` to `local_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// This host's port.
    pub local_port: u16,
    /// The peer's address.
    pub remote: IpAddr,
    /// The peer's port.
    pub remote_port: u16,
}

impl FlowKey {
    /// The flow an outgoing packet opens.
    pub fn of_start(start: &FlowStart) -> FlowKey {
        FlowKey {
            local_port: start.local_port,
            remote: start.remote,
            remote_port: start.remote_port,
        }
    }

    /// The flow an incoming packet would answer.
    pub fn of_probe(probe: &Probe) -> FlowKey {
        FlowKey {
            local_port: probe.dst_port,
            remote: probe.src,
            remote_port: probe.src_port,
        }
    }
}

/// One protocol's flows: a map for lookups and an index by expiry for eviction and purging.
/// Every flow of a table has the same lifetime, so expiry order is refresh order.
#[derive(Debug)]
struct Table {
    ttl: Duration,
    capacity: usize,
    by_key: HashMap<FlowKey, (Instant, u64)>,
    by_expiry: BTreeMap<(Instant, u64), FlowKey>,
    /// Tie-breaker for flows refreshed at the same instant.
    seq: u64,
}

impl Table {
    fn new(ttl: Duration, capacity: usize) -> Table {
        Table {
            ttl,
            capacity: capacity.max(1),
            by_key: HashMap::new(),
            by_expiry: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Forgets the flows expired at `now`.
    fn purge(&mut self, now: Instant) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.by_key.remove(&key);
        }
    }

    /// Records or renews `key` until `now + ttl`; true when another flow was evicted for it.
    fn touch(&mut self, key: FlowKey, now: Instant) -> bool {
        self.purge(now);
        self.seq += 1;
        let stamp = (now + self.ttl, self.seq);
        let mut evicted = false;
        match self.by_key.insert(key, stamp) {
            Some(old) => {
                self.by_expiry.remove(&old);
            }
            None if self.by_key.len() > self.capacity => {
                if let Some((_, oldest)) = self.by_expiry.pop_first() {
                    self.by_key.remove(&oldest);
                    evicted = true;
                }
            }
            None => {}
        }
        self.by_expiry.insert(stamp, key);
        evicted
    }

    fn contains(&mut self, key: &FlowKey, now: Instant) -> bool {
        self.purge(now);
        self.by_key.contains_key(key)
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// The flows this host started, per protocol, bounded and expiring.
#[derive(Debug)]
pub struct Flows {
    tcp: Table,
    udp: Table,
    evicted: u64,
}

impl Default for Flows {
    fn default() -> Self {
        Flows::with_capacity(FLOW_CAPACITY)
    }
}

impl Flows {
    /// An empty table keeping at most `capacity` flows per protocol.
    pub fn with_capacity(capacity: usize) -> Flows {
        Flows {
            tcp: Table::new(TCP_FLOW_TTL, capacity),
            udp: Table::new(UDP_FLOW_TTL, capacity),
            evicted: 0,
        }
    }

    fn table(&mut self, proto: Proto) -> &mut Table {
        match proto {
            Proto::Tcp => &mut self.tcp,
            Proto::Udp => &mut self.udp,
        }
    }

    /// Remembers (or renews) the flow an outgoing datagram or SYN opens.
    pub fn record(&mut self, start: &FlowStart, now: Instant) {
        if self.table(start.proto).touch(FlowKey::of_start(start), now) {
            self.evicted += 1;
        }
    }

    /// Whether `probe` comes back on a flow this host started and that is still remembered.
    pub fn answers(&mut self, probe: &Probe, now: Instant) -> bool {
        self.table(probe.proto)
            .contains(&FlowKey::of_probe(probe), now)
    }

    /// Remembers the flow of an incoming segment that a live socket of this host owns, so that
    /// the connection's next segments are recognised without asking the kernel again.
    pub fn confirm(&mut self, probe: &Probe, now: Instant) {
        if self.table(probe.proto).touch(FlowKey::of_probe(probe), now) {
            self.evicted += 1;
        }
    }

    /// Flows remembered for `proto` (expired ones may linger until the next call that purges).
    pub fn len(&self, proto: Proto) -> usize {
        match proto {
            Proto::Tcp => self.tcp.len(),
            Proto::Udp => self.udp.len(),
        }
    }

    /// Flows evicted so far because the table was full (shown in the sensor's statistics).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::event::ProbeKind;

    const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 1));
    const DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));

    fn start(proto: Proto, local_port: u16, remote: IpAddr, remote_port: u16) -> FlowStart {
        FlowStart {
            proto,
            local: ME,
            local_port,
            remote,
            remote_port,
        }
    }

    /// The packet that answers `s`, of the given kind.
    fn answer(s: &FlowStart, kind: ProbeKind) -> Probe {
        Probe {
            src: s.remote,
            dst: s.local,
            proto: s.proto,
            src_port: s.remote_port,
            dst_port: s.local_port,
            kind,
            ip_options: false,
        }
    }

    #[test]
    fn udp_answer_is_recognised_for_30_s_after_the_last_query() {
        let mut f = Flows::default();
        let t = Instant::now();
        let q = start(Proto::Udp, 700, DNS, 53);
        let a = answer(&q, ProbeKind::Udp);
        assert!(!f.answers(&a, t));
        f.record(&q, t);
        assert!(f.answers(&a, t + Duration::from_secs(29)));
        // A retry renews the flow.
        f.record(&q, t + Duration::from_secs(20));
        assert!(f.answers(&a, t + Duration::from_secs(49)));
        assert!(!f.answers(&a, t + Duration::from_secs(50)));
        assert_eq!(f.len(Proto::Udp), 0, "expired flows are purged");
    }

    #[test]
    fn tcp_flow_lives_two_minutes_after_the_syn_and_renews_on_confirmation() {
        let mut f = Flows::default();
        let t = Instant::now();
        let syn = start(Proto::Tcp, 700, DNS, 600);
        let ack = answer(&syn, ProbeKind::Ack);
        f.record(&syn, t);
        assert!(f.answers(&ack, t + Duration::from_secs(119)));
        f.confirm(&ack, t + Duration::from_secs(100));
        assert!(f.answers(&ack, t + Duration::from_secs(219)));
        assert!(!f.answers(&ack, t + Duration::from_secs(220)));
    }

    #[test]
    fn only_the_same_peer_port_and_protocol_answer() {
        let mut f = Flows::default();
        let t = Instant::now();
        let q = start(Proto::Udp, 700, DNS, 53);
        f.record(&q, t);
        let other_peer = Probe {
            src: IpAddr::V4(Ipv4Addr::new(10, 77, 9, 3)),
            ..answer(&q, ProbeKind::Udp)
        };
        let other_port = Probe {
            src_port: 54,
            ..answer(&q, ProbeKind::Udp)
        };
        let other_local = Probe {
            dst_port: 701,
            ..answer(&q, ProbeKind::Udp)
        };
        let tcp = Probe {
            proto: Proto::Tcp,
            ..answer(&q, ProbeKind::Ack)
        };
        for p in [other_peer, other_port, other_local, tcp] {
            assert!(!f.answers(&p, t), "{p:?}");
        }
        assert!(f.answers(&answer(&q, ProbeKind::Udp), t));
    }

    #[test]
    fn a_full_table_evicts_the_oldest_flow() {
        let mut f = Flows::with_capacity(3);
        let t = Instant::now();
        let flows: Vec<FlowStart> = (0..4)
            .map(|i| start(Proto::Udp, 700 + i, DNS, 53))
            .collect();
        for (i, q) in flows.iter().take(3).enumerate() {
            f.record(q, t + Duration::from_millis(i as u64));
        }
        // Renewing the first makes the second the oldest.
        f.record(&flows[0], t + Duration::from_millis(10));
        f.record(&flows[3], t + Duration::from_millis(11));
        let now = t + Duration::from_millis(12);
        assert_eq!(f.len(Proto::Udp), 3);
        assert_eq!(f.evicted(), 1);
        assert!(f.answers(&answer(&flows[0], ProbeKind::Udp), now));
        assert!(!f.answers(&answer(&flows[1], ProbeKind::Udp), now));
        assert!(f.answers(&answer(&flows[2], ProbeKind::Udp), now));
        assert!(f.answers(&answer(&flows[3], ProbeKind::Udp), now));
    }

    #[test]
    fn a_flood_of_flows_never_grows_the_table_past_its_capacity() {
        let mut f = Flows::with_capacity(1000);
        let t = Instant::now();
        for i in 0..100_000u32 {
            let remote = IpAddr::V4(Ipv4Addr::from(0x0a4e_0000 + i));
            f.record(&start(Proto::Udp, 700, remote, 53), t);
            f.record(&start(Proto::Tcp, 700, remote, 600), t);
            assert!(f.len(Proto::Udp) <= 1000 && f.len(Proto::Tcp) <= 1000);
        }
        assert_eq!(f.evicted(), 2 * 99_000);
        assert_eq!(f.udp.by_expiry.len(), 1000);
        assert_eq!(f.tcp.by_expiry.len(), 1000);
    }
}
