//! Gateways of the routing table, read through rtnetlink: the next hop (`via`) of every
//! default route and of every other route, IPv4 and IPv6, in every table (policy routing
//! puts default routes outside `main`), single or multipath, `via inet6` included.
//!
//! Routes using nexthop objects (`ip nexthop`, `RTA_NH_ID`) carry no gateway in the route
//! itself and are not seen here.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia,
};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;

/// The gateways of one read of the routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gateways {
    /// Next hops of default routes (`0.0.0.0/0`, `::/0`).
    pub default: BTreeSet<IpAddr>,
    /// Next hops of other routes that are not also default gateways.
    pub routers: BTreeSet<IpAddr>,
}

impl Gateways {
    /// Whether no gateway is known.
    pub fn is_empty(&self) -> bool {
        self.default.is_empty() && self.routers.is_empty()
    }
}

/// Dumps the unicast routes of the calling thread's network namespace (the only ones with
/// a next hop) and returns their gateways.
///
/// The kernel is asked to leave the other types out (strict checking, Linux 4.20): a host
/// with 100,000 blocks holds 100,000 `unreachable` routes, and a full dump of them cost
/// seconds of CPU (IPv6 re-walks its tree from the start for every datagram of a dump,
/// under the lock the daemon's own route adds wait for), for no gateway. A kernel without
/// strict checking gets the plain dump.
pub fn read() -> io::Result<Gateways> {
    let mut routes = Vec::new();
    let mut keep = |answer| {
        if let RouteNetlinkMessage::NewRoute(route) = answer {
            routes.push(route);
        }
    };
    let mut unicast = RouteMessage::default();
    unicast.header.kind = RouteType::Unicast;
    let request = RouteNetlinkMessage::GetRoute(unicast);
    match crate::netlink::dump_with(NETLINK_ROUTE, request, true, &mut keep) {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            let all = RouteNetlinkMessage::GetRoute(RouteMessage::default());
            crate::netlink::dump(NETLINK_ROUTE, all, &mut keep)?;
        }
        other => other?,
    }
    Ok(gateways_of(&routes))
}

/// The gateways of a list of routes (pure: the parsed dump in, the sets out).
pub fn gateways_of<'a>(routes: impl IntoIterator<Item = &'a RouteMessage>) -> Gateways {
    let mut gateways = Gateways::default();
    for route in routes {
        let set = if route.header.destination_prefix_length == 0 {
            &mut gateways.default
        } else {
            &mut gateways.routers
        };
        next_hops(&route.attributes, set);
    }
    let default = &gateways.default;
    gateways.routers.retain(|ip| !default.contains(ip));
    gateways
}

/// Adds the gateways named by a route's attributes (or a multipath next hop's) to `set`.
fn next_hops(attributes: &[RouteAttribute], set: &mut BTreeSet<IpAddr>) {
    for attribute in attributes {
        let ip = match attribute {
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => IpAddr::V4(*a),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => IpAddr::V6(*a),
            RouteAttribute::Via(RouteVia::Inet(a)) => IpAddr::V4(*a),
            RouteAttribute::Via(RouteVia::Inet6(a)) => IpAddr::V6(*a),
            RouteAttribute::MultiPath(hops) => {
                for hop in hops {
                    next_hops(&hop.attributes, set);
                }
                continue;
            }
            _ => continue,
        };
        let ip = ip.to_canonical();
        if !ip.is_unspecified() {
            set.insert(ip);
        }
    }
}

/// Kernel notifications of route changes, so a new default route is protected within a
/// fraction of a second instead of at the next periodic read.
pub struct RouteWatch {
    socket: Socket,
    buf: Vec<u8>,
}

impl RouteWatch {
    /// Subscribes to the IPv4 and IPv6 route groups of the calling thread's namespace.
    pub fn open() -> io::Result<RouteWatch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        // Room for a restore's burst between two ticks (each of its route adds is a
        // notification of ~100 bytes): an overflow costs a whole re-read of the table.
        // Past rmem_max only with CAP_NET_ADMIN; the ordinary size is the fallback.
        let forced = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &WATCH_BUFFER,
        );
        if forced.is_err() {
            let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(WATCH_BUFFER);
        }
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_IPV4_ROUTE)?;
        socket.add_membership(libc::RTNLGRP_IPV6_ROUTE)?;
        socket.set_non_blocking(true)?;
        Ok(RouteWatch {
            socket,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Drains the notifications queued since the last call; true when one of them added or
    /// removed a route with a next hop (or when some were lost because the queue overflowed:
    /// the table must be read again). Routes without a gateway (the daemon's own
    /// `unreachable` blocks, on-link routes) change no gateway: a restore adding 100,000 of
    /// them must not make this thread dump the whole table again and again.
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        // Bounded: a route storm is answered by one re-read, not by draining for ever.
        for _ in 0..WATCH_DRAIN {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => {
                    let datagram = self.buf.get(..n).unwrap_or_default();
                    any |= names_a_gateway(datagram);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ENOBUFS (overflow) and anything else: read the table to be sure.
                Err(_) => {
                    any = true;
                    break;
                }
            }
        }
        any
    }
}

/// Whether a datagram of route notifications adds or removes a route with a next hop; one
/// that cannot be read counts as one, to be safe. Only a unicast route has a next hop: the
/// others (the daemon's own `unreachable` blocks among them) are told apart by one byte of
/// their header, without parsing their attributes.
fn names_a_gateway(datagram: &[u8]) -> bool {
    if !datagram_may_name_a_gateway(datagram) {
        return false;
    }
    let mut gateway = false;
    let read = crate::netlink::for_each_message(datagram, |m: RouteNetlinkMessage| {
        if let RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) = m {
            let mut hops = BTreeSet::new();
            next_hops(&r.attributes, &mut hops);
            gateway |= !hops.is_empty();
        }
    });
    gateway || read.is_err()
}

/// False only when every message of `datagram` is a route notification of a type other
/// than unicast (read from `struct rtmsg`'s `rtm_type`); anything short or odd is true.
fn datagram_may_name_a_gateway(mut datagram: &[u8]) -> bool {
    const HEADER: usize = 16; // struct nlmsghdr
    const RTM_TYPE: usize = HEADER + 7; // struct rtmsg: family, dst, src, tos, table, protocol, scope, type
    while !datagram.is_empty() {
        let (Some(len), Some(kind), Some(&rtm_type)) = (
            datagram
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes),
            datagram
                .get(4..6)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_ne_bytes),
            datagram.get(RTM_TYPE),
        ) else {
            return true;
        };
        let is_route = kind == libc::RTM_NEWROUTE || kind == libc::RTM_DELROUTE;
        if !is_route || rtm_type == libc::RTN_UNICAST {
            return true;
        }
        let len = len as usize;
        if len < RTM_TYPE + 1 {
            return true;
        }
        datagram = datagram.get((len + 3) & !3..).unwrap_or_default();
    }
    false
}

/// Receive buffer of the route watch, and datagrams drained per tick at most.
const WATCH_BUFFER: usize = 4 << 20;
const WATCH_DRAIN: usize = 16_384;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::protect::test_netns::NetNs;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| ip(a)).collect()
    }

    #[test]
    fn block_routes_are_no_change_of_gateways_and_a_gateway_route_is() {
        let ns = NetNs::with_link("routewatch");
        let mut watch = ns.run(|| RouteWatch::open().expect("subscribe"));
        assert!(!watch.changed(), "nothing yet");
        // What a restore of many blocks does: unreachable and blackhole routes, no next hop.
        for i in 1..=50 {
            ns.ip(&["route", "add", "unreachable", &format!("10.77.254.{i}")]);
        }
        ns.ip(&["-6", "route", "add", "blackhole", "fd77:254::9"]);
        ns.ip(&["route", "del", "unreachable", "10.77.254.7"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!watch.changed(), "block routes name no gateway");
        // The positive control: a route through a next hop is a change, added or removed.
        ns.ip(&["route", "add", "10.77.252.0/24", "via", "10.77.251.253"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(watch.changed(), "a gateway route");
        ns.ip(&["route", "del", "10.77.252.0/24"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(watch.changed(), "its removal");
        assert!(
            names_a_gateway(b"\x01\x02garbage"),
            "unreadable counts as a change"
        );
    }

    #[test]
    fn gateways_of_the_kernel_table_in_a_private_namespace() {
        let ns = NetNs::with_link("routes");
        ns.ip(&["route", "add", "default", "via", "10.77.251.254"]);
        ns.ip(&["route", "add", "10.77.252.0/24", "via", "10.77.251.253"]);
        ns.ip(&[
            "route",
            "add",
            "10.77.253.0/24",
            "nexthop",
            "via",
            "10.77.251.10",
            "nexthop",
            "via",
            "10.77.251.11",
        ]);
        // A default route of another table (policy routing) counts too.
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "10.77.251.252",
            "table",
            "100",
        ]);
        ns.ip(&["-6", "route", "add", "default", "via", "fd77:251::fe"]);
        ns.ip(&["-6", "route", "add", "fd77:252::/64", "via", "fd77:251::fd"]);
        // The route a block adds, and a plain on-link route: no gateway.
        ns.ip(&["route", "add", "unreachable", "10.77.254.9"]);
        let g = ns.run(read).expect("route dump");
        assert_eq!(
            g.default,
            set(&["10.77.251.254", "10.77.251.252", "fd77:251::fe"])
        );
        assert_eq!(
            g.routers,
            set(&[
                "10.77.251.253",
                "10.77.251.10",
                "10.77.251.11",
                "fd77:251::fd"
            ])
        );
    }

    #[test]
    fn a_namespace_without_routes_has_no_gateways() {
        let ns = NetNs::new("noroutes");
        assert!(ns.run(read).expect("route dump").is_empty());
    }

    #[test]
    fn watch_sees_a_route_change() {
        let ns = NetNs::with_link("watch");
        let mut watch = ns.run(RouteWatch::open).expect("subscribe");
        assert!(!watch.changed(), "nothing happened yet");
        ns.ip(&["route", "add", "default", "via", "10.77.251.254"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !watch.changed() {
            assert!(std::time::Instant::now() < deadline, "no notification");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!watch.changed(), "drained");
    }

    #[test]
    fn a_gateway_that_is_also_default_is_listed_once_as_default() {
        use netlink_packet_route::route::RouteNextHop;
        let mut default = RouteMessage::default();
        default
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(
                "10.77.1.1".parse().unwrap(),
            )));
        let mut other = RouteMessage::default();
        other.header.destination_prefix_length = 24;
        let mut hop = RouteNextHop::default();
        hop.attributes.push(RouteAttribute::Via(RouteVia::Inet6(
            "fe80::1".parse().unwrap(),
        )));
        hop.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(
                "10.77.1.1".parse().unwrap(),
            )));
        other.attributes.push(RouteAttribute::MultiPath(vec![hop]));
        let g = gateways_of([&default, &other]);
        assert_eq!(g.default, set(&["10.77.1.1"]));
        assert_eq!(g.routers, set(&["fe80::1"]));
    }

    /// Route messages of one dump of the namespace, (unicast, other types).
    fn dumped(strict: bool) -> (usize, usize) {
        let mut request = RouteMessage::default();
        if strict {
            request.header.kind = RouteType::Unicast;
        }
        let (mut unicast, mut other) = (0, 0);
        crate::netlink::dump_with(
            NETLINK_ROUTE,
            RouteNetlinkMessage::GetRoute(request),
            strict,
            |m| {
                if let RouteNetlinkMessage::NewRoute(r) = m {
                    if r.header.kind == RouteType::Unicast {
                        unicast += 1;
                    } else {
                        other += 1;
                    }
                }
            },
        )
        .expect("route dump");
        (unicast, other)
    }

    #[test]
    fn the_kernel_leaves_the_block_routes_out_of_the_dump_the_gateways_come_from() {
        let ns = NetNs::with_link("routes-strict");
        ns.ip(&["route", "add", "default", "via", "10.77.251.254"]);
        // One `ip -batch`, not 200 processes: every fork of the test process holds a copy
        // of other tests' sockets until it execs.
        let dir = tempfile::tempdir().unwrap();
        let batch = dir.path().join("routes");
        let lines: String = (1..=200)
            .map(|i| format!("route add unreachable 10.77.254.{i}\n"))
            .collect();
        std::fs::write(&batch, lines).unwrap();
        ns.ip(&["-batch", batch.to_str().unwrap()]);
        ns.ip(&["-6", "route", "add", "unreachable", "fd77:254::9"]);
        let (plain, strict) = ns.run(|| (dumped(false), dumped(true)));
        // Control: the plain dump carries every block route.
        assert!(plain.1 >= 201, "{plain:?}");
        assert_eq!(strict.1, 0, "only unicast routes come back");
        assert_eq!(strict.0, plain.0, "every unicast route does");
        let g = ns.run(read).expect("route dump");
        assert_eq!(g.default, set(&["10.77.251.254"]));
    }

    #[test]
    fn a_notification_of_a_block_route_is_told_apart_by_its_type_byte() {
        // struct rtmsg of an IPv4 /32: family, dst_len, src_len, tos, table, protocol,
        // scope, type; then one RTA_DST attribute.
        let rtmsg = |rtm_type: u8| {
            let mut b = vec![2, 32, 0, 0, 254, 4, 0, rtm_type, 0, 0, 0, 0];
            b.extend_from_slice(&8u16.to_ne_bytes());
            b.extend_from_slice(&1u16.to_ne_bytes()); // RTA_DST
            b.extend_from_slice(&[10, 77, 254, 9]);
            b
        };
        let msg =
            |kind: u16, rtm_type: u8| crate::netlink::tests::message(0, kind, &rtmsg(rtm_type));
        let unreachable = msg(libc::RTM_NEWROUTE, libc::RTN_UNREACHABLE);
        let blackhole = msg(libc::RTM_DELROUTE, libc::RTN_BLACKHOLE);
        assert!(!datagram_may_name_a_gateway(&unreachable));
        assert!(!datagram_may_name_a_gateway(
            &[unreachable.clone(), blackhole].concat()
        ));
        assert!(!names_a_gateway(&unreachable));
        // Control: a unicast route in the same datagram must be looked at.
        let unicast = msg(libc::RTM_NEWROUTE, libc::RTN_UNICAST);
        assert!(datagram_may_name_a_gateway(
            &[unreachable.clone(), unicast].concat()
        ));
        // Anything else, or cut short, is looked at too.
        assert!(datagram_may_name_a_gateway(&msg(libc::RTM_NEWLINK, 0)));
        assert!(datagram_may_name_a_gateway(&unreachable[..20]));
    }
}
