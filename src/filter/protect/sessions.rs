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
//!
//! How they are read ([`Reader`]): a dump of the TCP sockets in LISTEN, then one of those in
//! ESTABLISHED. An ESTABLISHED dump makes the kernel walk every bucket of its established
//! hash table (262,144 of them on a 24 GiB host, more on larger ones) however few sockets
//! the namespace holds; a LISTEN-only dump skips that table. Asked once per address family
//! (`SOCK_DIAG_BY_FAMILY` names one), the walk was done twice per read and was half of the
//! idle daemon's CPU. So the read uses the legacy `TCPDIAG_GETSOCK` request, which the
//! kernel dumps with `AF_UNSPEC` (`inet_diag_dump_compat`): one walk lists the sockets of
//! both families. A kernel that refuses it is asked per family, and the reader remembers.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use netlink_packet_core::{DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable};
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
/// [`Reader::read`], for tests).
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

/// How the TCP tables are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// One `TCPDIAG_GETSOCK` dump for both address families: one walk of the table.
    Both,
    /// One `SOCK_DIAG_BY_FAMILY` dump per family, for a kernel that refuses the first.
    PerFamily,
}

/// Reads the established sessions to listening ports of the calling thread's namespace, and
/// remembers whether the kernel takes the one-walk request (see the module documentation).
#[derive(Debug)]
pub struct Reader {
    walk: Walk,
}

impl Default for Reader {
    fn default() -> Reader {
        Reader { walk: Walk::Both }
    }
}

impl Reader {
    /// One dump of TCP listeners, then one of established sockets, each of both families at
    /// once (one per family on a kernel without the legacy request). Sockets are judged as
    /// they arrive, so a busy server's table is never held at once.
    pub fn read(&mut self, capacity: usize) -> io::Result<Sessions> {
        self.read_by(|walk| read_with(walk, capacity))
    }

    /// Reads with `read`, the one-walk way until the kernel refuses it, then (for this read
    /// and all later ones) per family; said once, at debug level.
    fn read_by<T>(&mut self, mut read: impl FnMut(Walk) -> io::Result<T>) -> io::Result<T> {
        if self.walk == Walk::Both {
            match read(Walk::Both) {
                Err(e) if refused(&e) => {
                    log::debug!(
                        "sock_diag: the kernel refuses TCPDIAG_GETSOCK ({e}); established \
                         sessions are read with one dump per address family"
                    );
                    self.walk = Walk::PerFamily;
                }
                result => return result,
            }
        }
        read(Walk::PerFamily)
    }
}

/// Whether `e` is the kernel's answer to a request it does not serve: the legacy type unknown
/// (`EINVAL`), no handler for it (`EOPNOTSUPP`) or for TCP (`ENOENT`).
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOENT | libc::EOPNOTSUPP)
    )
}

fn read_with(walk: Walk, capacity: usize) -> io::Result<Sessions> {
    let mut listening = HashSet::new();
    tcp_sockets(walk, StateFlags::LISTEN, |port, _| {
        listening.insert(port);
    })?;
    let mut out = Sessions::default();
    tcp_sockets(walk, StateFlags::ESTABLISHED, |port, peer| {
        out.add(&listening, port, peer, capacity)
    })?;
    Ok(out)
}

/// The TCP sockets in `states`; `each` gets (local port, remote address).
fn tcp_sockets(
    walk: Walk,
    states: StateFlags,
    mut each: impl FnMut(u16, IpAddr),
) -> io::Result<()> {
    match walk {
        Walk::Both => {
            let request = TcpDump::Request(states.bits());
            crate::netlink::dump(NETLINK_SOCK_DIAG, request, |answer| {
                if let TcpDump::Socket(port, peer) = answer {
                    each(port, peer);
                }
            })
        }
        Walk::PerFamily => {
            for family in [AF_INET, AF_INET6] {
                dump(family, states.clone(), &mut each)?;
            }
            Ok(())
        }
    }
}

/// One sock_diag dump of TCP sockets of `family` in `states` (a walk of the tables for
/// one family); `each` gets (local port, remote address).
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

/// nlmsg_type of the legacy request and of its answers.
const TCPDIAG_GETSOCK: u16 = 18;

/// `struct inet_diag_req`: family, src_len, dst_len, ext, `inet_diag_sockid` (48 bytes),
/// states, dbs. The kernel refuses a shorter one (`EINVAL`).
const INET_DIAG_REQ_LEN: usize = 60;

/// `struct inet_diag_msg`: family, state, timer, retrans, `inet_diag_sockid`, expires,
/// rqueue, wqueue, uid, inode (attributes may follow).
const INET_DIAG_MSG_LEN: usize = 72;

/// The legacy `TCPDIAG_GETSOCK` dump: the request and the sockets it lists, which the
/// netlink-packet crates do not know. The kernel (`inet_diag_rcv_msg_compat`, then
/// `inet_diag_dump_compat`) dumps it with `sdiag_family = AF_UNSPEC`, so one walk of each
/// table lists the IPv4 and the IPv6 sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpDump {
    /// Dump the TCP sockets whose state bit (`1 << state`) is set.
    Request(u32),
    /// One socket: local port, remote address (as the kernel holds it: an IPv4 peer of a
    /// dual-stack IPv6 socket is IPv4-mapped).
    Socket(u16, IpAddr),
}

impl NetlinkSerializable for TcpDump {
    fn message_type(&self) -> u16 {
        TCPDIAG_GETSOCK
    }

    fn buffer_len(&self) -> usize {
        INET_DIAG_REQ_LEN
    }

    /// Only requests are sent: family `AF_UNSPEC` (the kernel dumps with it whatever is
    /// given), no address lengths, no extensions, an empty `inet_diag_sockid` (no filter),
    /// the states, no dbs.
    fn serialize(&self, buffer: &mut [u8]) {
        let states = match *self {
            TcpDump::Request(states) => states,
            TcpDump::Socket(..) => 0,
        };
        buffer.fill(0);
        if let Some(field) = buffer.get_mut(52..56) {
            field.copy_from_slice(&states.to_ne_bytes());
        }
    }
}

impl NetlinkDeserializable for TcpDump {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<TcpDump, DecodeError> {
        if header.message_type != TCPDIAG_GETSOCK {
            return Err(
                format!("sock_diag: unexpected message type {}", header.message_type).into(),
            );
        }
        let (port, peer) = parse_socket(payload)
            .ok_or("sock_diag: inet_diag_msg too short or of another family")?;
        Ok(TcpDump::Socket(port, peer))
    }
}

/// The local port and the remote address of one `inet_diag_msg`; `None` when it is shorter
/// than the struct or of another family than IPv4 and IPv6.
fn parse_socket(msg: &[u8]) -> Option<(u16, IpAddr)> {
    let msg: &[u8; INET_DIAG_MSG_LEN] = msg.get(..INET_DIAG_MSG_LEN)?.try_into().ok()?;
    // inet_diag_sockid from byte 4: sport, dport (big endian), src[16], dst[16] (network
    // order, an IPv4 address in the first four bytes), if, cookie.
    let port = u16::from_be_bytes([msg[4], msg[5]]);
    let dst: [u8; 16] = msg[24..40].try_into().ok()?;
    let peer = match msg[0] {
        AF_INET => IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(dst)),
        _ => return None,
    };
    Some((port, peer))
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

    /// One `inet_diag_msg` as the kernel answers a `TCPDIAG_GETSOCK` dump: `family`, state
    /// ESTABLISHED, local port `port`, remote address `peer`, then the `INET_DIAG_SHUTDOWN`
    /// attribute the kernel always adds.
    fn socket_msg(family: u8, port: u16, peer: IpAddr) -> Vec<u8> {
        let mut b = vec![family, 1, 0, 0];
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&[0; 16]); // local address: not read
        match peer {
            IpAddr::V4(a) => b.extend(a.octets().into_iter().chain([0; 12])),
            IpAddr::V6(a) => b.extend(a.octets()),
        }
        b.resize(INET_DIAG_MSG_LEN, 0xee);
        b.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]); // nla: len 5, type 8, u8 0, padding
        crate::netlink::tests::message(1, TCPDIAG_GETSOCK, &b)
    }

    fn nlmsg_error(errno: i32) -> Vec<u8> {
        let mut body = (-errno).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 16]); // the request's header, echoed
        crate::netlink::tests::message(1, 2, &body)
    }

    fn nlmsg_done() -> Vec<u8> {
        crate::netlink::tests::message(1, 3, &0i32.to_ne_bytes())
    }

    /// The sockets of one datagram, and whether the dump ended.
    fn parse(datagram: &[u8]) -> io::Result<(Vec<TcpDump>, bool)> {
        let mut sockets = Vec::new();
        let done = crate::netlink::for_each_message(datagram, |m| sockets.push(m))?;
        Ok((sockets, done))
    }

    #[test]
    fn the_legacy_request_asks_for_both_families_in_one_dump() {
        let r = crate::netlink::dump_request(TcpDump::Request(StateFlags::ESTABLISHED.bits()));
        assert_eq!(r.len(), 16 + 60, "nlmsghdr + struct inet_diag_req");
        assert_eq!(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]), 76);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 18, "TCPDIAG_GETSOCK");
        assert_eq!(
            u16::from_ne_bytes([r[6], r[7]]),
            0x301,
            "NLM_F_REQUEST | NLM_F_DUMP"
        );
        let req = &r[16..];
        assert_eq!(req[0], libc::AF_UNSPEC as u8, "idiag_family");
        assert_eq!(&req[1..4], &[0, 0, 0], "no address lengths, no extensions");
        assert_eq!(&req[4..52], &[0; 48], "inet_diag_sockid: no filter");
        assert_eq!(
            u32::from_ne_bytes([req[52], req[53], req[54], req[55]]),
            1 << 1,
            "idiag_states: ESTABLISHED"
        );
        assert_eq!(&req[56..60], &[0; 4], "idiag_dbs");
    }

    #[test]
    fn answers_of_both_families_are_parsed_until_done() {
        let mut dgram = socket_msg(libc::AF_INET as u8, 22, ip("10.77.1.5"));
        dgram.extend(socket_msg(libc::AF_INET6 as u8, 443, ip("fd77::8")));
        dgram.extend(socket_msg(
            libc::AF_INET6 as u8,
            443,
            ip("::ffff:10.77.1.6"),
        ));
        let (sockets, done) = parse(&dgram).unwrap();
        assert!(!done);
        assert_eq!(
            sockets,
            [
                TcpDump::Socket(22, ip("10.77.1.5")),
                TcpDump::Socket(443, ip("fd77::8")),
                // Kept as the kernel gives it; Sessions::add makes it 10.77.1.6.
                TcpDump::Socket(443, ip("::ffff:10.77.1.6")),
            ]
        );
        dgram.extend(nlmsg_done());
        assert!(parse(&dgram).unwrap().1);
    }

    #[test]
    fn short_cut_or_foreign_answers_are_errors_not_panics() {
        let whole = socket_msg(libc::AF_INET as u8, 22, ip("10.77.1.5"));
        // An inet_diag_msg shorter than the struct, however its header says so.
        let short = crate::netlink::tests::message(1, TCPDIAG_GETSOCK, &whole[16..16 + 40]);
        assert!(parse(&short).is_err());
        // A datagram that ends inside a message.
        for cut in [3, 16, 40, whole.len() - 1] {
            assert!(parse(&whole[..cut]).is_err(), "cut at {cut}");
        }
        // Another family, another message type, garbage.
        let unix = socket_msg(libc::AF_UNIX as u8, 22, ip("10.77.1.5"));
        assert!(parse(&unix).is_err());
        let v2 = crate::netlink::tests::message(1, 20, &whole[16..]); // SOCK_DIAG_BY_FAMILY
        assert!(parse(&v2).is_err());
        assert!(parse(&[0xff; 64]).is_err());
        assert_eq!(parse(&[]).unwrap(), (vec![], false));
        assert_eq!(parse_socket(&[2, 1, 0, 0, 0, 22]), None);
    }

    #[test]
    fn a_refusal_of_the_legacy_request_is_told_from_other_errors() {
        for errno in [libc::EINVAL, libc::ENOENT, libc::EOPNOTSUPP] {
            let e = parse(&nlmsg_error(errno)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(errno));
            assert!(refused(&e), "{e}");
        }
        for errno in [libc::EPERM, libc::ENOBUFS] {
            assert!(!refused(&parse(&nlmsg_error(errno)).unwrap_err()));
        }
        let timeout = io::Error::from(io::ErrorKind::WouldBlock);
        assert!(!refused(&timeout));
    }

    #[test]
    fn a_kernel_that_refuses_is_read_per_family_from_then_on() {
        let mut reader = Reader::default();
        let mut asked = Vec::new();
        let mut read = |walk| {
            asked.push(walk);
            match walk {
                Walk::Both => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
                Walk::PerFamily => Ok(7),
            }
        };
        assert_eq!(reader.read_by(&mut read).unwrap(), 7);
        assert_eq!(reader.read_by(&mut read).unwrap(), 7);
        assert_eq!(asked, [Walk::Both, Walk::PerFamily, Walk::PerFamily]);

        // Any other failure is the read's: the next read tries the one walk again.
        let mut reader = Reader::default();
        let failing = |_| Err::<u8, _>(io::Error::from_raw_os_error(libc::EPERM));
        assert!(reader.read_by(failing).is_err());
        assert_eq!(reader.walk, Walk::Both);
    }

    #[test]
    fn established_peers_of_the_kernel_in_a_private_namespace() {
        let ns = NetNs::with_link("sessions");
        ns.ip(&["addr", "add", "10.77.251.2/24", "dev", "d0"]);
        ns.ip(&["addr", "add", "10.77.251.3/24", "dev", "d0"]);
        ns.ip(&["-6", "addr", "add", "fd77:251::2/64", "dev", "d0", "nodad"]);
        let (both, per_family, walk, ports) = ns.run(|| {
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
            // Dual-stack: an IPv4 client's session is an IPv6 socket with a mapped peer.
            let dual = TcpListener::bind("[::]:0").unwrap();
            let port = |l: &TcpListener| l.local_addr().unwrap().port();
            let ports = (port(&l4), port(&l6), port(&dual));
            let to_dual = SocketAddr::new(ip("10.77.251.1"), ports.2);
            let clients = [
                connect_from("10.77.251.2", l4.local_addr().unwrap()),
                connect_from("fd77:251::2", l6.local_addr().unwrap()),
                connect_from("10.77.251.3", to_dual),
            ];
            let accepted = [&l4, &l6, &dual].map(|l| l.accept().unwrap());
            let mut reader = Reader::default();
            let both = reader.read(MAX_PEERS).expect("one-walk dump");
            let per_family = Reader {
                walk: Walk::PerFamily,
            }
            .read(MAX_PEERS)
            .expect("per-family dumps");
            drop((clients, accepted));
            (both, per_family, reader.walk, ports)
        });
        let (p4, p6, pdual) = ports;
        let expected: HashMap<IpAddr, u16> = [
            (ip("10.77.251.2"), p4),
            (ip("fd77:251::2"), p6),
            (ip("10.77.251.3"), pdual),
        ]
        .into();
        assert_eq!(walk, Walk::Both, "this kernel takes TCPDIAG_GETSOCK");
        // The clients' own ends (ephemeral local ports, no listener) are not sessions to us:
        // their peers, our own addresses, are not listed.
        for ours in ["10.77.251.1", "fd77:251::1"] {
            assert!(!both.peers.contains_key(&ip(ours)), "{ours} listed");
        }
        assert_eq!(both.peers, expected);
        assert_eq!(per_family, both);
    }

    /// Thread CPU time (user and system) of the calling thread.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec that we own.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// The cost of one read in this host's namespace (its real established table), one walk
    /// against one per family: median over 7 runs of 100 reads, wall and thread CPU time.
    #[test]
    #[ignore = "timing: cargo test --lib read_cost -- --ignored --nocapture"]
    fn read_cost() {
        for walk in [Walk::PerFamily, Walk::Both] {
            let mut reader = Reader { walk };
            let (mut wall, mut cpu) = (Vec::new(), Vec::new());
            for _ in 0..7 {
                let (w0, c0) = (std::time::Instant::now(), thread_cpu());
                for _ in 0..100 {
                    reader.read(MAX_PEERS).unwrap();
                }
                wall.push(w0.elapsed() / 100);
                cpu.push((thread_cpu() - c0) / 100);
            }
            assert_eq!(reader.walk, walk);
            wall.sort();
            cpu.sort();
            println!(
                "{walk:?}: a read takes {:?} wall, {:?} CPU (median; runs {wall:?})",
                wall[3], cpu[3]
            );
        }
    }
}
