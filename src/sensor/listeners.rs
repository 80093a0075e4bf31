//! Which ports have a real listener, from the kernel's socket tables
//! (`/proc/net/{tcp,tcp6,udp,udp6}`).
//!
//! The raw sensors must not flag traffic to a port a real service answers on (1.2 found
//! those once at start by trying to bind every port; we follow them as they come and go,
//! without ever binding). The sensor re-reads the tables at most once per second, so a
//! service started after the daemon is taken into account within a second.
//!
//! What counts as "has a listener":
//! - TCP: a socket in state LISTEN (`0A`) on the port, on any local address. A port held
//!   only by an outgoing or established connection is not a service: a SYN to it is a probe.
//! - UDP: any socket bound to the port, connected or not. An unconnected bound socket is a
//!   service; a connected one is a client (a resolver's query socket) waiting for answers to
//!   that port, which must not be flagged either. Answers that arrive after such a socket
//!   closed are handled by the sensor's answer rule, not here: client sockets normally use
//!   ephemeral ports (32768-60999 on Linux), far above the advanced-mode limit.
//!
//! Listeners bound to one address (cupsd on 127.0.0.1:631) exclude the port on every
//! address, as 1.2's bind test did: a port-level rule is also what the kernel prefilter can
//! express.
//!
//! Where they are read from: the kernel's `sock_diag` netlink interface, asking for TCP
//! sockets in LISTEN only, so the kernel skips its table of established connections (the
//! `/proc/net/tcp` files walk every bucket of that table, several milliseconds per read on
//! a large machine even when it is empty: 1% of a core at one read per second). The
//! `/proc/net` tables are the fallback when netlink is unavailable. Both parsers are pure
//! ([`parse_table`], [`parse_diag_dump`]) and unit-tested on sample input; [`Listeners::read`]
//! does the I/O.
//!
//! The raw sensor also asks sock_diag about one probe at the moment it arrives (see
//! `raw::live`): [`dump_ports`] for the UDP sockets, and [`tcp_lookup_request`] /
//! [`parse_lookup_reply`] for the one TCP socket, if any, that owns a segment's addresses
//! (a hash lookup in the kernel, not a walk of its tables).

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// TCP state number of LISTEN in the kernel's tables.
pub const TCP_LISTEN: u8 = 0x0A;

/// One row of a `/proc/net/{tcp,udp}[6]` table: the fields the sensors need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketEntry {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (all zero for a listener or an unconnected UDP socket).
    pub remote: SocketAddr,
    /// Kernel socket state (`0A` = LISTEN for TCP, `07` = unconnected UDP).
    pub state: u8,
}

/// The ports with a listener, per protocol, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    /// TCP ports with a socket in LISTEN.
    pub tcp: BTreeSet<u16>,
    /// UDP ports with any socket bound.
    pub udp: BTreeSet<u16>,
}

impl Listeners {
    /// Builds the sets from the text of the four tables (IPv4 and IPv6 each); pass `""` for a
    /// table that does not exist (IPv6 disabled).
    pub fn from_tables(tcp: &str, tcp6: &str, udp: &str, udp6: &str) -> Listeners {
        let tcp = parse_table(tcp)
            .chain(parse_table(tcp6))
            .filter(|e| e.state == TCP_LISTEN)
            .map(|e| e.local.port())
            .collect();
        let udp = parse_table(udp)
            .chain(parse_table(udp6))
            .map(|e| e.local.port())
            .filter(|p| *p != 0)
            .collect();
        Listeners { tcp, udp }
    }

    /// Reads the listeners of the calling thread's network namespace: through `sock_diag`,
    /// or from the `/proc` tables if netlink fails.
    pub fn read() -> io::Result<Listeners> {
        match Listeners::read_netlink() {
            Ok(l) => Ok(l),
            Err(_) => Listeners::read_proc(),
        }
    }

    /// Asks the kernel over `NETLINK_SOCK_DIAG`: TCP sockets in LISTEN, UDP sockets in any
    /// state, IPv4 and IPv6. A netlink socket belongs to the namespace of the thread that
    /// opens it.
    pub fn read_netlink() -> io::Result<Listeners> {
        let sock = socket2::Socket::new(
            socket2::Domain::from(libc::AF_NETLINK),
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::NETLINK_SOCK_DIAG)),
        )?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        let mut out = Listeners::default();
        let mut buf = vec![0u8; DIAG_BUFFER];
        let requests: [(u8, u8, u32, bool); 4] = [
            (AF_INET, IPPROTO_TCP, 1 << TCP_LISTEN, true),
            (AF_INET6, IPPROTO_TCP, 1 << TCP_LISTEN, true),
            (AF_INET, IPPROTO_UDP, u32::MAX, false),
            (AF_INET6, IPPROTO_UDP, u32::MAX, false),
        ];
        for (seq, (family, proto, states, tcp)) in requests.into_iter().enumerate() {
            let set = if tcp { &mut out.tcp } else { &mut out.udp };
            dump_ports(
                &sock,
                &mut buf,
                (family, proto, states),
                seq as u32 + 1,
                |p| {
                    set.insert(p);
                },
            )?;
        }
        Ok(out)
    }

    /// Reads the `/proc` tables of the calling thread's network namespace
    /// (`/proc/thread-self/net`, so a thread that entered another namespace sees that one;
    /// falls back to `/proc/net` on kernels without it).
    pub fn read_proc() -> io::Result<Listeners> {
        let dir = proc_net_dir();
        let tcp = read_table(&dir.join("tcp"))?;
        let tcp6 = read_table(&dir.join("tcp6"))?;
        let udp = read_table(&dir.join("udp"))?;
        let udp6 = read_table(&dir.join("udp6"))?;
        Ok(Listeners::from_tables(&tcp, &tcp6, &udp, &udp6))
    }
}

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLMSG_HDRLEN: usize = 16;

/// Receive buffer for sock_diag replies: the kernel fills up to a page-sized batch per read.
pub const DIAG_BUFFER: usize = 32 * 1024;

/// Sends one sock_diag dump request (`family`, `protocol`, state mask) on `sock` and calls
/// `each` with the local port of every socket listed (port 0, unbound, skipped). Replies to
/// an earlier request on the same socket (another `seq`) are skipped.
pub fn dump_ports(
    sock: &socket2::Socket,
    buf: &mut [u8],
    (family, proto, states): (u8, u8, u32),
    seq: u32,
    mut each: impl FnMut(u16),
) -> io::Result<()> {
    sock.send(&diag_request(family, proto, states, seq))?;
    loop {
        let n = recv_into(sock, buf)?;
        let part = parse_diag_dump(buf.get(..n).unwrap_or_default(), seq)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        part.ports
            .into_iter()
            .filter(|p| *p != 0)
            .for_each(&mut each);
        if part.done {
            return Ok(());
        }
    }
}

/// Receives one datagram from a netlink socket into `buf`, through socket2's safe `Read`
/// (a `read` on a datagram socket is a `recv` without flags).
pub fn recv_into(sock: &socket2::Socket, buf: &mut [u8]) -> io::Result<usize> {
    io::Read::read(&mut &*sock, buf)
}

/// A `SOCK_DIAG_BY_FAMILY` dump request (`nlmsghdr` + `inet_diag_req_v2`, 72 bytes).
pub fn diag_request(family: u8, proto: u8, states: u32, seq: u32) -> Vec<u8> {
    let mut m = diag_header(NLM_F_REQUEST | NLM_F_DUMP, seq, family, proto, states);
    m.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: no address filter
    m
}

/// `nlmsghdr` + the start of `inet_diag_req_v2`, for a 72-byte request.
fn diag_header(flags: u16, seq: u32, family: u8, proto: u8, states: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(&[family, proto, 0, 0]); // family, protocol, ext, pad
    m.extend_from_slice(&states.to_ne_bytes());
    m
}

/// The 16 bytes of an address in `inet_diag_sockid` (IPv4 in the first four).
fn diag_addr(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

/// A request for the one TCP socket that owns the segment between `local` (this host) and
/// `remote` (not a dump): the kernel looks the four-tuple up in its hash tables, as for an
/// arriving segment, and answers with that socket (established, closing, TIME_WAIT, or a
/// listener of the port) or with `ENOENT`. Both addresses must be of one family; an IPv4
/// segment finds the dual-stack IPv6 sockets that would take it, as the kernel's own lookup
/// does.
pub fn tcp_lookup_request(local: SocketAddr, remote: SocketAddr, seq: u32) -> Vec<u8> {
    let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut m = diag_header(NLM_F_REQUEST, seq, family, IPPROTO_TCP, u32::MAX);
    // inet_diag_sockid, from the socket's side: source = local, destination = remote.
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&remote.port().to_be_bytes());
    m.extend_from_slice(&diag_addr(local.ip()));
    m.extend_from_slice(&diag_addr(remote.ip()));
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    m
}

/// The answer to a [`tcp_lookup_request`] numbered `seq` in one datagram: `Some(true)` a
/// socket owns the four-tuple, `Some(false)` none does (`ENOENT`), `None` the datagram held
/// only replies to other requests; any other error is an error.
pub fn parse_lookup_reply(b: &[u8], seq: u32) -> Result<Option<bool>, String> {
    for msg in NetlinkMessages(b) {
        let (kind, msg_seq, body) = msg?;
        match kind {
            _ if msg_seq != seq => {}
            SOCK_DIAG_BY_FAMILY => return Ok(Some(true)),
            NLMSG_ERROR if error_code(body) == -libc::ENOENT => return Ok(Some(false)),
            NLMSG_ERROR => return Err(diag_error(body)),
            _ => {}
        }
    }
    Ok(None)
}

/// The messages of one netlink datagram as (type, sequence number, body); a header whose
/// length does not fit ends the walk with an error.
struct NetlinkMessages<'a>(&'a [u8]);

impl<'a> Iterator for NetlinkMessages<'a> {
    type Item = Result<(u16, u32, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        if len < NLMSG_HDRLEN || len > b.len() {
            self.0 = &[];
            return Some(Err(format!("sock_diag: bad message length {len}")));
        }
        // Messages are 4-byte aligned.
        self.0 = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some(Ok((kind, seq, &b[NLMSG_HDRLEN..len])))
    }
}

/// The (negative) errno of an `NLMSG_ERROR` body; 0 when missing.
fn error_code(body: &[u8]) -> i32 {
    body.get(..4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .unwrap_or(0)
}

/// An `NLMSG_ERROR` body as a message.
fn diag_error(body: &[u8]) -> String {
    format!(
        "sock_diag: {}",
        io::Error::from_raw_os_error(error_code(body).saturating_neg())
    )
}

/// The local ports in one datagram of a sock_diag dump, and whether the dump ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiagPart {
    /// Local port of each socket listed.
    pub ports: Vec<u16>,
    /// `NLMSG_DONE` was seen.
    pub done: bool,
}

/// Parses one datagram of the sock_diag reply to the dump numbered `seq`: a run of
/// `nlmsghdr` + `inet_diag_msg`, maybe ending with `NLMSG_DONE`. Messages of another
/// sequence number (late replies to an earlier request) are skipped. An `NLMSG_ERROR` or a
/// malformed header is an error.
pub fn parse_diag_dump(b: &[u8], seq: u32) -> Result<DiagPart, String> {
    let mut part = DiagPart::default();
    for msg in NetlinkMessages(b) {
        let (kind, msg_seq, body) = msg?;
        match kind {
            _ if msg_seq != seq => {}
            NLMSG_DONE => {
                part.done = true;
                return Ok(part);
            }
            NLMSG_ERROR => return Err(diag_error(body)),
            SOCK_DIAG_BY_FAMILY => {
                // inet_diag_msg: family, state, timer, retrans, then id.sport (big endian).
                let sport = body
                    .get(4..6)
                    .ok_or_else(|| "sock_diag: short inet_diag_msg".to_string())?;
                part.ports.push(u16::from_be_bytes([sport[0], sport[1]]));
            }
            _ => {}
        }
    }
    Ok(part)
}

fn proc_net_dir() -> PathBuf {
    let thread = Path::new("/proc/thread-self/net");
    if thread.is_dir() {
        thread.to_path_buf()
    } else {
        PathBuf::from("/proc/net")
    }
}

/// A missing table means the protocol family is absent (IPv6 disabled): no listeners.
fn read_table(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{}: cannot read socket table: {e}", path.display()),
        )),
    }
}

/// Parses the rows of one table (IPv4 or IPv6, told apart by the address width); the header
/// line and any row that does not parse are skipped, so a kernel adding columns breaks
/// nothing.
pub fn parse_table(text: &str) -> impl Iterator<Item = SocketEntry> + '_ {
    text.lines().filter_map(parse_row)
}

/// Parses one row: `sl: local rem st ...`.
pub fn parse_row(line: &str) -> Option<SocketEntry> {
    let mut fields = line.split_whitespace();
    let sl = fields.next()?;
    if !sl.ends_with(':') {
        return None; // header line
    }
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    Some(SocketEntry {
        local,
        remote,
        state,
    })
}

/// `0100007F:0016` or `00000000000000000000000001000000:0016`. The kernel prints each
/// 32-bit word of the address as a native-endian number, the port in host order.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => {
            let word = u32::from_str_radix(addr, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::netlink::tests::message as diag_msg;

    // Captured on a Debian 12 host: sshd on 22 (v4 and v6), cupsd on 127.0.0.1:631, an
    // outgoing SSH connection from port 45678 (ESTABLISHED), a TIME_WAIT on 8080.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 18341 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 19822 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:B26E 0202000A:0016 01 00000000:00000000 02:000A3B7C 00000000  1000        0 55123 2 0000000000000000 20 4 29 10 -1
   3: 0F02000A:1F90 0302000A:C350 06 00000000:00000000 03:00000F2A 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 18343 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0CEA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20001 1 0000000000000000 100 0 0 10 0
";
    // chronyd on 127.0.0.1:323 and [::1]:323, dhclient on 68, a resolver's connected query
    // socket from 41000 to 10.0.2.3:53.
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  105: 0100007F:0143 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 17310 2 0000000000000000 0
  250: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 17211 2 0000000000000000 0
  300: 0F02000A:A028 0302000A:0035 01 00000000:00000000 00:00000000 00000000   100        0 60001 2 0000000000000000 0
";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  105: 00000000000000000000000001000000:0143 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 17311 2 0000000000000000 0
";

    #[test]
    fn tcp_listeners_are_the_listen_state_only() {
        let l = Listeners::from_tables(TCP, TCP6, "", "");
        // 22 (v4+v6), 631 (loopback only), 3306 (v6 loopback only); not 45678, not 8080.
        assert_eq!(l.tcp.into_iter().collect::<Vec<_>>(), vec![22, 631, 3306]);
    }

    #[test]
    fn udp_listeners_include_connected_client_sockets() {
        let l = Listeners::from_tables("", "", UDP, UDP6);
        assert_eq!(l.udp.into_iter().collect::<Vec<_>>(), vec![68, 323, 41000]);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn addresses_are_decoded_from_native_endian_words() {
        let rows: Vec<_> = parse_table(TCP).collect();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].local, "127.0.0.1:631".parse().unwrap());
        assert_eq!(rows[2].local, "10.0.2.15:45678".parse().unwrap());
        assert_eq!(rows[2].remote, "10.0.2.2:22".parse().unwrap());
        assert_eq!(rows[2].state, 1);
        let rows6: Vec<_> = parse_table(TCP6).collect();
        assert_eq!(rows6[1].local, "[::1]:3306".parse().unwrap());
        assert_eq!(rows6[0].local, "[::]:22".parse().unwrap());
    }

    #[test]
    fn header_and_garbage_rows_are_skipped() {
        let text = "  sl  local_address rem_address   st\n   0: zz:0016 00000000:0000 0A\n   1: 00000000:0016\n\n   2: 00000000:0050 00000000:0000 0A 0:0\n   3: 0000:0051 00000000:0000 0A\n";
        let rows: Vec<_> = parse_table(text).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].local.port(), 80);
    }

    #[test]
    fn empty_tables_mean_no_listeners() {
        assert_eq!(Listeners::from_tables("", "", "", ""), Listeners::default());
    }

    /// An inet_diag_msg (72 bytes) for a socket on local port `port`.
    fn inet_diag_msg(port: u16, state: u8) -> Vec<u8> {
        let mut b = vec![libc::AF_INET as u8, state, 0, 0];
        b.extend_from_slice(&port.to_be_bytes());
        b.resize(72, 0);
        b
    }

    #[test]
    fn diag_dump_lists_local_ports_until_done() {
        let mut dgram = diag_msg(1, SOCK_DIAG_BY_FAMILY, &inet_diag_msg(22, TCP_LISTEN));
        dgram.extend(diag_msg(
            1,
            SOCK_DIAG_BY_FAMILY,
            &inet_diag_msg(631, TCP_LISTEN),
        ));
        assert_eq!(
            parse_diag_dump(&dgram, 1),
            Ok(DiagPart {
                ports: vec![22, 631],
                done: false
            })
        );
        dgram.extend(diag_msg(1, NLMSG_DONE, &0i32.to_ne_bytes()));
        assert!(parse_diag_dump(&dgram, 1).unwrap().done);
    }

    #[test]
    fn diag_error_and_garbage_are_errors_not_panics() {
        let err = diag_msg(1, NLMSG_ERROR, &(-libc::EINVAL).to_ne_bytes());
        assert!(parse_diag_dump(&err, 1).unwrap_err().contains("sock_diag"));
        let mut bad = diag_msg(1, SOCK_DIAG_BY_FAMILY, &inet_diag_msg(22, TCP_LISTEN));
        bad[0] = 200; // length beyond the datagram
        assert!(parse_diag_dump(&bad, 1).is_err());
        assert!(parse_diag_dump(&diag_msg(1, SOCK_DIAG_BY_FAMILY, &[2, 10]), 1).is_err());
        assert_eq!(parse_diag_dump(&[1, 2, 3], 1), Ok(DiagPart::default()));
    }

    #[test]
    fn late_replies_to_another_request_are_skipped() {
        let mut dgram = diag_msg(1, SOCK_DIAG_BY_FAMILY, &inet_diag_msg(22, TCP_LISTEN));
        dgram.extend(diag_msg(1, NLMSG_DONE, &0i32.to_ne_bytes()));
        dgram.extend(diag_msg(2, SOCK_DIAG_BY_FAMILY, &inet_diag_msg(53, 7)));
        assert_eq!(
            parse_diag_dump(&dgram, 2),
            Ok(DiagPart {
                ports: vec![53],
                done: false
            })
        );
        assert_eq!(parse_lookup_reply(&dgram, 3), Ok(None));
    }

    #[test]
    fn tcp_lookup_request_names_the_socket_from_its_own_side() {
        let local: SocketAddr = "10.77.9.1:700".parse().unwrap();
        let remote: SocketAddr = "10.77.9.2:600".parse().unwrap();
        let r = tcp_lookup_request(local, remote, 9);
        assert_eq!(r.len(), 72);
        assert_eq!(
            u16::from_ne_bytes([r[6], r[7]]),
            NLM_F_REQUEST,
            "not a dump"
        );
        assert_eq!(u32::from_ne_bytes([r[8], r[9], r[10], r[11]]), 9);
        assert_eq!((r[16], r[17]), (AF_INET, IPPROTO_TCP));
        assert_eq!(
            &r[24..28],
            &[0x02, 0xbc, 0x02, 0x58],
            "sport 700, dport 600"
        );
        assert_eq!(&r[28..32], &[10, 77, 9, 1]);
        assert_eq!(&r[44..48], &[10, 77, 9, 2]);
        assert_eq!(&r[64..72], &[0xff; 8], "no cookie");
        let v6 = tcp_lookup_request(
            "[fd77:9::1]:703".parse().unwrap(),
            "[fd77:9::2]:600".parse().unwrap(),
            1,
        );
        assert_eq!(v6[16], AF_INET6);
        assert_eq!(v6[43], 1);
        assert_eq!(v6[59], 2);
    }

    #[test]
    fn lookup_reply_is_found_not_found_or_an_error() {
        let found = diag_msg(4, SOCK_DIAG_BY_FAMILY, &inet_diag_msg(700, 1));
        assert_eq!(parse_lookup_reply(&found, 4), Ok(Some(true)));
        let enoent = diag_msg(4, NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_lookup_reply(&enoent, 4), Ok(Some(false)));
        let eperm = diag_msg(4, NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert!(parse_lookup_reply(&eperm, 4).is_err());
        let mut bad = found.clone();
        bad[0] = 200;
        assert!(parse_lookup_reply(&bad, 4).is_err());
        assert_eq!(parse_lookup_reply(&[1, 2], 4), Ok(None));
    }

    #[test]
    fn diag_request_is_72_bytes_with_the_dump_flags() {
        let r = diag_request(libc::AF_INET6 as u8, 6, 1 << TCP_LISTEN, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]), 72);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 20);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301);
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], 6);
        assert_eq!(u32::from_ne_bytes([r[20], r[21], r[22], r[23]]), 1 << 10);
    }

    /// Runs `f` on a new thread that entered a fresh network namespace with `lo` up, where
    /// the test alone decides what is bound and which addresses exist. Fails loudly when
    /// not root: a test that skips itself passes without showing anything.
    pub(crate) fn in_fresh_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (a private network namespace); run the suite as root"
        );
        std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread's network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            // A child forked from this thread inherits its namespace.
            ns_sh(&["ip", "link", "set", "lo", "up"]);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Runs a set-up command (`ip …`) in the calling thread's namespace; panics with its
    /// stderr when it fails.
    pub(crate) fn ns_sh(args: &[&str]) {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn netlink_and_proc_agree_in_a_fresh_namespace() {
        in_fresh_netns(|| {
            let _t4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _t6 = std::net::TcpListener::bind("[::1]:0").unwrap();
            let _u4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let _u6 = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let netlink = Listeners::read_netlink().unwrap();
            let proc = Listeners::read_proc().unwrap();
            assert_eq!(netlink, proc);
            assert_eq!(netlink.tcp.len(), 2, "{netlink:?}");
            assert_eq!(netlink.udp.len(), 2, "{netlink:?}");
        });
    }

    #[test]
    fn reading_this_hosts_tables_works() {
        // Whatever the host runs, the files parse and a missing IPv6 table is no error.
        assert!(Listeners::read().is_ok());
    }
}
