//! The kernel asked at the moment a probe arrives: is there a socket to take it?
//!
//! The listener poll ([`crate::sensor::listeners`], once a second) decides which ports are
//! watched; it cannot see a socket opened and used within that second. Two kinds of probe
//! are therefore checked once more, with one sock_diag request, before they are reported:
//!
//! - A UDP datagram: is any UDP socket bound to its port now (the poll's own rule)? The
//!   answer comes from a snapshot of the bound UDP ports, one dump per family, reused for
//!   [`UDP_SNAPSHOT_VALID`]: under a flood of UDP probes to many ports the daemon asks at most
//!   200 times a second, whatever the rate (each dump walks the kernel's UDP hash table, a
//!   few tens of µs). A socket opened less than that before its first datagram arrived, and
//!   that had sent nothing itself (else its flow is known), can be missed.
//! - A bare ACK or FIN+ACK: does a TCP socket own its four-tuple (an established or closing
//!   connection, a TIME_WAIT)? This is a hash lookup in the kernel, as for an arriving
//!   segment (a few µs), not a walk of the connection table, which costs milliseconds on a
//!   large host. An ACK that no connection owns is one the kernel answers with a reset: a
//!   probe, even when other connections use the same local port.
//!
//! The netlink socket is opened once, in the sensor's network namespace, and read with a
//! timeout; a reply to an earlier request that timed out is recognised by its sequence
//! number and skipped.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::sensor::listeners::{
    DIAG_BUFFER, dump_ports, parse_lookup_reply, recv_into, tcp_lookup_request,
};

use super::ports::PortSet;

/// How long a snapshot of the bound UDP ports answers for.
pub const UDP_SNAPSHOT_VALID: Duration = Duration::from_millis(5);

/// The longest the sensor waits for the kernel's answer (it answers at once; this only
/// bounds the damage of a broken netlink socket).
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(500);

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;

/// A sock_diag socket for the checks, with the UDP snapshot.
pub struct LiveSockets {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
    udp: PortSet,
    udp_read: Option<Instant>,
    queries: u64,
}

impl std::fmt::Debug for LiveSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSockets")
            .field("queries", &self.queries)
            .finish_non_exhaustive()
    }
}

impl LiveSockets {
    /// Opens the netlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<LiveSockets> {
        let sock = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
        )?;
        sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(LiveSockets {
            sock,
            buf: vec![0u8; DIAG_BUFFER],
            seq: 0,
            udp: PortSet::default(),
            udp_read: None,
            queries: 0,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.queries += 1;
        self.seq
    }

    /// Whether a UDP socket (any address, connected or not, IPv4 or IPv6) is bound to
    /// `port`, from a snapshot at most [`UDP_SNAPSHOT_VALID`] old at `now`.
    pub fn udp_bound(&mut self, port: u16, now: Instant) -> io::Result<bool> {
        let fresh = self
            .udp_read
            .is_some_and(|t| now.saturating_duration_since(t) < UDP_SNAPSHOT_VALID);
        if !fresh {
            self.udp_read = None;
            self.udp.clear();
            for family in [AF_INET, AF_INET6] {
                let seq = self.next_seq();
                let set = &mut self.udp;
                dump_ports(
                    &self.sock,
                    &mut self.buf,
                    (family, IPPROTO_UDP, u32::MAX),
                    seq,
                    |p| set.insert(p),
                )?;
            }
            self.udp_read = Some(now);
        }
        Ok(self.udp.contains(port))
    }

    /// Whether a TCP socket of this host owns the segment between `local` and `remote`
    /// (same family): a connection in any state, a TIME_WAIT, or a listener of the port.
    pub fn tcp_owned(&mut self, local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
        let seq = self.next_seq();
        self.sock.send(&tcp_lookup_request(local, remote, seq))?;
        loop {
            let n = recv_into(&self.sock, &mut self.buf)?;
            let reply = self.buf.get(..n).unwrap_or_default();
            match parse_lookup_reply(reply, seq) {
                Ok(Some(owned)) => return Ok(owned),
                Ok(None) => continue, // a late reply to an earlier request
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    /// Requests sent to the kernel so far (statistics).
    pub fn queries(&self) -> u64 {
        self.queries
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};

    use super::*;
    use crate::sensor::listeners::tests::in_fresh_netns;

    #[test]
    fn a_udp_socket_is_seen_at_once_and_the_snapshot_is_reused_briefly() {
        in_fresh_netns(|| {
            let mut live = LiveSockets::open().unwrap();
            let t = Instant::now();
            assert!(!live.udp_bound(700, t).unwrap());
            let s = UdpSocket::bind("127.0.0.1:700").unwrap();
            // Within the snapshot's validity the answer is the cached one, without a query.
            let asked = live.queries();
            assert!(!live.udp_bound(700, t + Duration::from_millis(1)).unwrap());
            assert_eq!(live.queries(), asked);
            let later = t + UDP_SNAPSHOT_VALID;
            assert!(live.udp_bound(700, later).unwrap());
            let v6 = UdpSocket::bind("[::]:701").unwrap();
            assert!(live.udp_bound(701, later + UDP_SNAPSHOT_VALID).unwrap());
            drop((s, v6));
            let after = later + 2 * UDP_SNAPSHOT_VALID;
            assert!(!live.udp_bound(700, after).unwrap());
            assert!(!live.udp_bound(701, after).unwrap());
        });
    }

    #[test]
    fn a_tcp_connection_owns_its_four_tuple_only() {
        in_fresh_netns(|| {
            let mut live = LiveSockets::open().unwrap();
            let l = TcpListener::bind("127.0.0.1:8000").unwrap();
            let local: SocketAddr = "127.0.0.1:700".parse().unwrap();
            let sock = socket2::Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            sock.bind(&local.into()).unwrap();
            sock.connect(&"127.0.0.1:8000".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            let c: TcpStream = sock.into();
            let (_peer, _) = l.accept().unwrap();
            let server: SocketAddr = "127.0.0.1:8000".parse().unwrap();
            assert!(live.tcp_owned(local, server).unwrap());
            let scanner: SocketAddr = "127.0.0.1:8001".parse().unwrap();
            assert!(!live.tcp_owned(local, scanner).unwrap());
            assert!(
                !live
                    .tcp_owned("127.0.0.1:701".parse().unwrap(), server)
                    .unwrap()
            );
            // Closed first on this side: TIME_WAIT still owns the four-tuple.
            drop(c);
            std::thread::sleep(Duration::from_millis(50));
            assert!(live.tcp_owned(local, server).unwrap());
        });
    }

    #[test]
    fn a_dual_stack_socket_owns_its_ipv4_connections() {
        in_fresh_netns(|| {
            let mut live = LiveSockets::open().unwrap();
            let l = TcpListener::bind("[::]:8000").expect("IPv6 in the test namespace");
            let c = TcpStream::connect("127.0.0.1:8000").unwrap();
            let (peer, from) = l.accept().unwrap();
            let _keep = (c, peer);
            let here: SocketAddr = "127.0.0.1:8000".parse().unwrap();
            let from = SocketAddr::new("127.0.0.1".parse().unwrap(), from.port());
            assert!(live.tcp_owned(here, from).unwrap());
        });
    }
}
