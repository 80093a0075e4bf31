//! Peers of established TCP sessions to this host's listening services, read with sock_diag,
//! and when each was first seen.
//!
//! A completed handshake proves the peer's address; a raw SYN carrying that address proves
//! nothing. So a probe "from" a peer is not acted on when the peer's session was already
//! established before the probe: an admin's SSH session cannot be cut by forged packets.
//! Only sessions whose local port has a listener count (someone connected to a service of
//! ours), not this host's own outgoing connections.
//!
//! A session is only known from the read that first lists it: its first-seen time is taken
//! after that read, an upper bound of when it was established, so "older than the probe" is
//! never claimed wrongly. The table holds at most [`MAX_PEERS`] addresses.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// Most peer addresses protected at once: a server with more distinct clients than this
/// protects the first ones listed, and says so.
pub const MAX_PEERS: usize = 65536;

pub use crate::protected::Peer;

/// The peers of one read: address -> local port, at most `capacity` of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Each peer address (canonical) with the local port of one of its sessions.
    pub peers: HashMap<IpAddr, u16>,
    /// More peers were listed than the capacity allowed.
    pub overflow: bool,
}

impl Sessions {
    /// Counts one established socket: kept when its local port is in `listening` and its
    /// peer is new, within `capacity`.
    fn add(&mut self, listening: &HashSet<u16>, port: u16, peer: IpAddr, capacity: usize) {
        if !listening.contains(&port) {
            return;
        }
        let peer = peer.to_canonical();
        if peer.is_unspecified() || peer.is_loopback() || self.peers.contains_key(&peer) {
            return;
        }
        if self.peers.len() >= capacity {
            self.overflow = true;
            return;
        }
        self.peers.insert(peer, port);
    }
}

/// Keeps, from established sockets given as (local port, peer address), those whose local
/// port is in `listening`, one entry per peer, at most `capacity` (pure: the rule of
/// [`read`], for tests).
pub fn collect(
    listening: &HashSet<u16>,
    established: impl IntoIterator<Item = (u16, IpAddr)>,
    capacity: usize,
) -> Sessions {
    let mut out = Sessions::default();
    for (port, peer) in established {
        out.add(listening, port, peer, capacity);
    }
    out
}

/// Reads the established sessions to listening ports of the calling thread's namespace:
/// one dump of TCP listeners, then one of established sockets, per address family. Sockets
/// are judged as they arrive, so a busy server's table is never held at once.
pub fn read(capacity: usize) -> io::Result<Sessions> {
    let mut listening = HashSet::new();
    for family in [AF_INET, AF_INET6] {
        dump(family, StateFlags::LISTEN, |port, _| {
            listening.insert(port);
        })?;
    }
    let mut out = Sessions::default();
    for family in [AF_INET, AF_INET6] {
        dump(family, StateFlags::ESTABLISHED, |port, peer| {
            out.add(&listening, port, peer, capacity)
        })?;
    }
    Ok(out)
}

/// One sock_diag dump of TCP sockets of `family` in `states`; `each` gets (local port,
/// remote address).
fn dump(family: u8, states: StateFlags, mut each: impl FnMut(u16, IpAddr)) -> io::Result<()> {
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id,
    });
    crate::netlink::dump(NETLINK_SOCK_DIAG, request, |answer| {
        if let SockDiagMessage::InetResponse(r) = answer {
            let id = &r.header.socket_id;
            each(id.source_port, id.destination_address);
        }
    })
}

/// When each peer was first seen established, carried from read to read.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    peers: Arc<HashMap<IpAddr, Peer>>,
}

impl PeerTable {
    /// Replaces the table with the peers of a new read taken at `now`: a peer still listed
    /// keeps its first-seen time, a new one is stamped `now`, a gone one is forgotten.
    pub fn update(&mut self, sessions: &Sessions, now: SystemTime) {
        let peers = sessions
            .peers
            .iter()
            .map(|(&ip, &port)| {
                let first_seen = self.peers.get(&ip).map_or(now, |p| p.first_seen);
                (ip, Peer { port, first_seen })
            })
            .collect();
        self.peers = Arc::new(peers);
    }

    /// Forgets every peer (PROTECT_ESTABLISHED turned off).
    pub fn clear(&mut self) {
        self.peers = Arc::default();
    }

    /// The peers, shared with the snapshots that publish them.
    pub fn peers(&self) -> Arc<HashMap<IpAddr, Peer>> {
        Arc::clone(&self.peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::protect::test_netns::NetNs;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_sessions_to_listening_ports_count_once_per_peer() {
        let listening: HashSet<u16> = [22, 443].into();
        let s = collect(
            &listening,
            [
                (22, ip("10.77.1.5")),
                (443, ip("10.77.1.5")),
                (443, ip("::ffff:10.77.1.6")),
                (40000, ip("10.77.1.7")), // our own outgoing connection
                (22, ip("127.0.0.1")),
                (22, ip("fd77::8")),
            ],
            10,
        );
        let expected: HashMap<IpAddr, u16> = [
            (ip("10.77.1.5"), 22),
            (ip("10.77.1.6"), 443),
            (ip("fd77::8"), 22),
        ]
        .into();
        assert_eq!(s.peers, expected);
        assert!(!s.overflow);
    }

    #[test]
    fn capacity_bounds_the_peers_and_says_so() {
        let listening: HashSet<u16> = [22].into();
        let many = (1..=50u8).map(|h| (22, IpAddr::from([10, 77, 9, h])));
        let s = collect(&listening, many, 8);
        assert_eq!(s.peers.len(), 8);
        assert!(s.overflow);
    }

    #[test]
    fn first_seen_is_kept_while_the_session_lasts_and_forgotten_after() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t1 = t0 + Duration::from_secs(2);
        let mut table = PeerTable::default();
        let a = Sessions {
            peers: [(ip("10.77.1.5"), 22)].into(),
            overflow: false,
        };
        table.update(&a, t0);
        let both = Sessions {
            peers: [(ip("10.77.1.5"), 22), (ip("10.77.1.6"), 22)].into(),
            overflow: false,
        };
        table.update(&both, t1);
        let peers = table.peers();
        assert_eq!(peers[&ip("10.77.1.5")].first_seen, t0);
        assert_eq!(peers[&ip("10.77.1.6")].first_seen, t1);
        // The first session ends, then a new one starts: it is new again.
        table.update(&Sessions::default(), t1);
        table.update(&a, t1 + Duration::from_secs(2));
        assert_eq!(
            table.peers()[&ip("10.77.1.5")].first_seen,
            t1 + Duration::from_secs(2)
        );
    }

    #[test]
    fn established_peers_of_the_kernel_in_a_private_namespace() {
        let ns = NetNs::with_link("sessions");
        ns.ip(&["addr", "add", "10.77.251.2/24", "dev", "d0"]);
        ns.ip(&["-6", "addr", "add", "fd77:251::2/64", "dev", "d0", "nodad"]);
        let sessions = ns
            .run(|| {
                use std::net::{SocketAddr, TcpListener, TcpStream};
                let connect_from = |src: &str, to: SocketAddr| {
                    let src: IpAddr = src.parse().unwrap();
                    let domain = if src.is_ipv4() {
                        socket2::Domain::IPV4
                    } else {
                        socket2::Domain::IPV6
                    };
                    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
                    s.bind(&SocketAddr::new(src, 0).into()).unwrap();
                    s.connect(&to.into()).unwrap();
                    TcpStream::from(s)
                };
                let l4 = TcpListener::bind("10.77.251.1:0").unwrap();
                let l6 = TcpListener::bind("[fd77:251::1]:0").unwrap();
                let c4 = connect_from("10.77.251.2", l4.local_addr().unwrap());
                let c6 = connect_from("fd77:251::2", l6.local_addr().unwrap());
                let (a4, _) = l4.accept().unwrap();
                let (a6, _) = l6.accept().unwrap();
                let read = read(MAX_PEERS);
                drop((c4, c6, a4, a6));
                read.map(|s| {
                    (
                        s,
                        l4.local_addr().unwrap().port(),
                        l6.local_addr().unwrap().port(),
                    )
                })
            })
            .expect("sock_diag dump");
        let (s, p4, p6) = sessions;
        let expected: HashMap<IpAddr, u16> =
            [(ip("10.77.251.2"), p4), (ip("fd77:251::2"), p6)].into();
        // The clients' own ends (ephemeral local ports, no listener) are not sessions to us.
        assert_eq!(s.peers, expected);
    }
}
