//! Where pulled decisions go in the kernel, in bulk.
//!
//! - With `KILL_NFTABLES`: the `fleet_ipv4` / `fleet_ipv6` interval sets of our table, one
//!   netlink transaction a pull, each element with its decision's remaining time as its
//!   kernel timeout (it expires in the kernel even while the daemon is down).
//! - Else, with `KILL_ROUTE`: routes of the type `KILL_ROUTE` names (`unreachable` unless it
//!   says `blackhole` or `prohibit`), added and deleted over rtnetlink in batches of
//!   messages, no command run, marked with a protocol number of our own
//!   ([`ROUTE_PROTOCOL`]) so that exactly ours can be found again, and a local block's
//!   route is never replaced nor deleted by the fleet. Routes have no timeout:
//!   the table removes them when their decision ends (at the next pull), and they are
//!   removed when the puller stops, and found and removed at its next start (a crash).
//! - Else nowhere, said once.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use crate::config::Config;
use crate::log_lines;
use crate::respond::nftables::{IntervalChanges, NftHandle, NftSettings, Room};

/// The `rtm_protocol` of the routes the fleet adds (`ip route` shows `proto 247`, a number
/// no routing daemon uses): what
/// tells ours from every other route of the table.
pub const ROUTE_PROTOCOL: u8 = 247;
/// Route messages sent in one datagram at most: the kernel answers each with an ack of its
/// own (an skb of about a kilobyte of buffer each), which must all fit [`ACK_BUFFER`].
const ROUTES_PER_SEND: usize = 250;
/// Receive buffer asked for the acks of one datagram.
const ACK_BUFFER: usize = 1 << 20;

/// The kind of route `KILL_ROUTE` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `unreachable` (also 1.2's `reject`).
    Unreachable,
    /// `blackhole`.
    Blackhole,
    /// `prohibit`.
    Prohibit,
}

/// What the config says about where pulled decisions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomSettings {
    /// `KILL_NFTABLES`: the fleet sets of this table.
    Nft(NftSettings),
    /// `KILL_ROUTE` without `KILL_NFTABLES`.
    Routes(RouteKind),
    /// Neither: why, for the one warning line.
    Off(String),
}

impl RoomSettings {
    /// `KILL_NFTABLES` first, else `KILL_ROUTE`'s kind of route.
    pub fn from_config(config: &Config) -> RoomSettings {
        if let Some(nft) = NftSettings::from_config(config) {
            return RoomSettings::Nft(nft);
        }
        match &config.kill_route {
            Some(t) if !t.text.trim().is_empty() => RoomSettings::Routes(route_kind(&t.text)),
            _ => RoomSettings::Off(
                "neither KILL_NFTABLES nor KILL_ROUTE is set (set KILL_NFTABLES=\"1\")".into(),
            ),
        }
    }
}

/// The route type a `KILL_ROUTE` command makes.
pub fn route_kind(command: &str) -> RouteKind {
    let words: Vec<&str> = command.split_whitespace().collect();
    if words.contains(&"blackhole") {
        RouteKind::Blackhole
    } else if words.contains(&"prohibit") {
        RouteKind::Prohibit
    } else {
        RouteKind::Unreachable
    }
}

/// The open way into the kernel.
pub enum KernelRoom {
    /// The fleet sets, through a backend of our own.
    Nft(NftHandle),
    /// Routes.
    Routes(RouteKind),
    /// Nowhere.
    Off,
}

impl KernelRoom {
    /// Opens what the settings ask for; a failure is one error line, and the room stays off
    /// (the puller keeps its table and counts).
    pub fn open(settings: &RoomSettings) -> KernelRoom {
        match settings {
            RoomSettings::Nft(nft) => {
                let handle = NftHandle::closed();
                match handle.open(nft) {
                    Ok(()) => KernelRoom::Nft(handle),
                    Err(e) => {
                        log::warn!("{}", log_lines::fleet_no_kernel_room(e));
                        KernelRoom::Off
                    }
                }
            }
            RoomSettings::Routes(kind) => {
                // Routes left by a puller that did not stop cleanly.
                if let Err(e) = flush_routes() {
                    log::warn!("{}", log_lines::fleet_no_kernel_room(e));
                }
                KernelRoom::Routes(*kind)
            }
            RoomSettings::Off(why) => {
                log::warn!("{}", log_lines::fleet_no_kernel_room(why));
                KernelRoom::Off
            }
        }
    }

    /// Whether elements expire in the kernel on their own (nftables timeouts); routes do not.
    pub fn expires_itself(&self) -> bool {
        !matches!(self, KernelRoom::Routes(_))
    }

    /// `nftables`, `routes` or `none`, for `status`.
    pub fn name(&self) -> &'static str {
        match self {
            KernelRoom::Nft(_) => "nftables",
            KernelRoom::Routes(_) => "routes",
            KernelRoom::Off => "none",
        }
    }

    /// Applies one pull's changes.
    pub fn apply(&mut self, changes: &IntervalChanges) -> Result<(), String> {
        match self {
            KernelRoom::Nft(handle) => handle
                .change_intervals(Room::Fleet, changes)
                .map(drop)
                .map_err(|e| e.to_string()),
            KernelRoom::Routes(kind) => {
                apply_routes(*kind, changes).map_err(|e| format!("routes: {e}"))
            }
            KernelRoom::Off => Ok(()),
        }
    }

    /// The puller stops: routes go (nothing would ever remove them); nftables elements stay
    /// and expire on their own.
    pub fn release(&mut self) {
        if let KernelRoom::Routes(_) = self
            && let Err(e) = flush_routes()
        {
            log::warn!("{}", log_lines::fleet_kernel_failed(format!("routes: {e}")));
        }
    }
}

/// A route message for `net` of our protocol in the main table.
fn route(kind: RouteKind, net: IpNet) -> RouteMessage {
    let mut m = RouteMessage::default();
    let h = &mut m.header;
    h.table = netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN;
    h.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    h.scope = RouteScope::Universe;
    h.kind = match kind {
        RouteKind::Unreachable => RouteType::Unreachable,
        RouteKind::Blackhole => RouteType::BlackHole,
        RouteKind::Prohibit => RouteType::Prohibit,
    };
    h.destination_prefix_length = net.prefix_len();
    let (family, addr) = match net.trunc().addr() {
        IpAddr::V4(a) => (AddressFamily::Inet, RouteAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, RouteAddress::Inet6(a)),
    };
    h.address_family = family;
    m.attributes.push(RouteAttribute::Destination(addr));
    m
}

/// Adds and deletes routes: deletes first (an absent one is no error), then adds
/// (replacing one there already). `flush` deletes every route of ours first.
fn apply_routes(kind: RouteKind, changes: &IntervalChanges) -> io::Result<()> {
    if changes.flush {
        flush_routes()?;
    } else {
        let gone: Vec<_> = changes.remove.iter().map(|n| route(kind, *n)).collect();
        send_routes(gone, false)?;
    }
    let new: Vec<_> = changes.add.iter().map(|(n, _)| route(kind, *n)).collect();
    send_routes(new, true)
}

/// Deletes every route of [`ROUTE_PROTOCOL`] in the main table.
fn flush_routes() -> io::Result<()> {
    let mut ours = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        crate::netlink::dump(
            NETLINK_ROUTE,
            RouteNetlinkMessage::GetRoute(request),
            |answer| {
                if let RouteNetlinkMessage::NewRoute(r) = answer
                    && r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
                {
                    ours.push(r);
                }
            },
        )?;
    }
    send_routes(ours, false)
}

/// Sends route adds (`add`) or deletes, [`ROUTES_PER_SEND`] messages a datagram, and reads
/// every ack; an add that exists, a delete that is gone are no error; the first other
/// error is returned after all were sent. Routes are one room with the routes `KILL_ROUTE`
/// adds for local blocks: an add never replaces a route there already (`NLM_F_EXCL`: a
/// local block keeps its own route), and a delete names our protocol, so that the kernel
/// deletes only a route of ours.
fn send_routes(routes: Vec<RouteMessage>, add: bool) -> io::Result<()> {
    if routes.is_empty() {
        return Ok(());
    }
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let sock = socket2::SockRef::from(&socket);
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    // Best effort: the chunk size keeps the acks within the default buffer as well.
    let _ = sock.set_recv_buffer_size(ACK_BUFFER);
    let mut first_error = None;
    let mut seq = 0u32;
    let mut routes = routes.into_iter().peekable();
    let mut buf = vec![0u8; 64 * 1024];
    while routes.peek().is_some() {
        let mut out = Vec::new();
        let mut sent = 0;
        for r in routes.by_ref().take(ROUTES_PER_SEND) {
            seq = seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.sequence_number = seq;
            header.flags = NLM_F_REQUEST | NLM_F_ACK;
            let payload = if add {
                header.flags |= NLM_F_CREATE | NLM_F_EXCL;
                RouteNetlinkMessage::NewRoute(r)
            } else {
                RouteNetlinkMessage::DelRoute(r)
            };
            let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
            m.finalize();
            let at = out.len();
            out.resize(at + m.buffer_len(), 0);
            m.serialize(&mut out[at..]);
            sent += 1;
        }
        socket.send(&out, 0)?;
        let mut acked = 0;
        while acked < sent {
            let n = socket.recv(&mut &mut buf[..], 0)?;
            let mut datagram = buf.get(..n).unwrap_or_default();
            while !datagram.is_empty() {
                let answer =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(datagram).map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}"))
                    })?;
                let len = answer.header.length as usize;
                if let NetlinkPayload::Error(e) = answer.payload {
                    acked += 1;
                    if let Some(code) = e.code {
                        let errno = -code.get();
                        let harmless = if add {
                            errno == nix::errno::Errno::EEXIST as i32
                        } else {
                            errno == nix::errno::Errno::ESRCH as i32
                                || errno == nix::errno::Errno::ENOENT as i32
                        };
                        if !harmless && first_error.is_none() {
                            first_error = Some(io::Error::from_raw_os_error(errno));
                        }
                    }
                }
                if len == 0 {
                    break;
                }
                datagram = datagram.get((len + 3) & !3..).unwrap_or_default();
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_kind_follows_kill_route() {
        assert_eq!(
            route_kind("/sbin/ip route add blackhole $TARGET$"),
            RouteKind::Blackhole
        );
        assert_eq!(
            route_kind("/sbin/route add -host $TARGET$ reject"),
            RouteKind::Unreachable
        );
        assert_eq!(
            route_kind("ip route add prohibit $TARGET$"),
            RouteKind::Prohibit
        );
    }

    #[test]
    fn a_route_of_ours_names_its_network_type_and_protocol() {
        let r = route(RouteKind::Unreachable, "fd77:1::/64".parse().unwrap());
        assert_eq!(r.header.address_family, AddressFamily::Inet6);
        assert_eq!(r.header.destination_prefix_length, 64);
        assert_eq!(r.header.kind, RouteType::Unreachable);
        assert_eq!(r.header.protocol, RouteProtocol::Other(ROUTE_PROTOCOL));
    }
}
