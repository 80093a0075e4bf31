//! What the raw sensor watches and the per-packet decision, as plain data: the configured
//! port sets per mode, the listeners and this host's addresses at the last refresh. No I/O
//! here except [`HostAddrs::read`], so every rule is unit-tested.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use crate::config::Config;
use crate::event::{Mode, Proto};
use crate::sensor::classify::Probe;
use crate::sensor::listeners::Listeners;

use super::bpf::{self, BuildError, Program};
use super::ports::PortSet;
use crate::report;

/// UDP source ports of services whose answers come back to this host's clients: DNS (53),
/// DHCP server (67), Kerberos (88), NTP (123), NetBIOS name/datagram (137, 138), SNMP agent
/// (161), CLDAP (389), QUIC/HTTP3 (443), IKE (500), syslog (514), DHCPv6 server (547),
/// DNS over QUIC (853), SSDP (1900), STUN (3478), IKE NAT-T (4500), mDNS (5353).
pub const ANSWER_SOURCE_PORTS: &[u16] = &[
    53, 67, 88, 123, 137, 138, 161, 389, 443, 500, 514, 547, 853, 1900, 3478, 4500, 5353,
];

/// Client ports below 1024 that those services answer to: DHCP (67 -> 68), NTP
/// symmetric (123 -> 123), NetBIOS (137 -> 137, 138 -> 138), IKE (500 -> 500), DHCPv6
/// (547 -> 546).
pub const ANSWER_PAIRS: &[(u16, u16)] = &[
    (67, 68),
    (123, 123),
    (137, 137),
    (138, 138),
    (500, 500),
    (547, 546),
];

/// Whether a UDP datagram is an answer to one of this host's own queries rather than a
/// probe: it comes from a well-known service port and goes to an unprivileged port (where
/// clients' ephemeral sockets live), or to the fixed client port of that service.
///
/// This closes 1.2's false alarm where a DNS answer arriving just after the resolver closed
/// its socket (so the port has no listener any more) got the DNS server blocked: stealth
/// mode's default UDP_PORTS include 32770-32774, inside Linux's ephemeral range. The price:
/// a UDP scan sent from source port 53 (`nmap -g 53`) to ports >= 1024 is not seen. In
/// advanced mode with the default limit (1024) no port >= 1024 is watched anyway.
pub fn is_udp_answer(src_port: u16, dst_port: u16) -> bool {
    ANSWER_SOURCE_PORTS.contains(&src_port)
        && (dst_port >= 1024 || ANSWER_PAIRS.contains(&(src_port, dst_port)))
}

/// This host's own addresses: a probe counts only if sent to one of them (a router also
/// receives frames for other hosts with its own MAC address as destination).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAddrs {
    addrs: HashSet<IpAddr>,
}

impl FromIterator<IpAddr> for HostAddrs {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        HostAddrs {
            addrs: iter.into_iter().collect(),
        }
    }
}

impl HostAddrs {
    /// Reads the addresses of every interface in the calling thread's network namespace.
    pub fn read() -> Result<HostAddrs, nix::Error> {
        let mut addrs = HashSet::new();
        for ifa in nix::ifaddrs::getifaddrs()? {
            let Some(a) = ifa.address else { continue };
            if let Some(v4) = a.as_sockaddr_in() {
                addrs.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = a.as_sockaddr_in6() {
                addrs.insert(IpAddr::V6(v6.ip()));
            }
        }
        Ok(HostAddrs { addrs })
    }

    /// Whether `ip` is this host's: an interface address, or loopback (Linux answers the
    /// whole 127.0.0.0/8 on `lo`).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.addrs.contains(ip)
    }

    /// Number of interface addresses known.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when no interface address is known.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// Why a well-formed probe does not become a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Sent to an address that is not this host's (forwarded traffic).
    NotLocal,
    /// The port is not in any watched set of this protocol.
    NotWatched,
    /// The port is watched but a real service listens on it.
    Listener,
    /// A UDP answer to one of this host's own queries ([`is_udp_answer`]).
    Answer,
}

/// A listener that appeared on, or left, a port of a configured watch set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerChange {
    /// Protocol of the port.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// True: a service now listens (the port is no longer watched); false: it left.
    pub appeared: bool,
}

/// The sensor's view of what to watch.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Raw modes in the order given, each with its configured set (before listeners).
    configured: Vec<(Mode, PortSet)>,
    tcp: PortSet,
    udp: PortSet,
    listeners: Listeners,
    addrs: HostAddrs,
}

impl Watch {
    /// Builds the view for `modes` (raw modes only; others are ignored) from `config`.
    pub fn new(modes: &[Mode], config: &Config, listeners: Listeners, addrs: HostAddrs) -> Watch {
        let mut w = Watch {
            configured: Vec::new(),
            tcp: PortSet::default(),
            udp: PortSet::default(),
            listeners,
            addrs,
        };
        w.configure(modes, config);
        w
    }

    fn configure(&mut self, modes: &[Mode], config: &Config) {
        self.configured = modes
            .iter()
            .filter(|m| m.is_raw())
            .map(|m| (*m, config.watched_ports(*m).into_iter().collect()))
            .collect();
        self.recompute();
    }

    fn recompute(&mut self) {
        let mut tcp = PortSet::default();
        let mut udp = PortSet::default();
        for (mode, set) in &self.configured {
            match mode.proto() {
                Proto::Tcp => tcp.union_with(set),
                Proto::Udp => udp.union_with(set),
            }
        }
        for p in &self.listeners.tcp {
            tcp.remove(*p);
        }
        for p in &self.listeners.udp {
            udp.remove(*p);
        }
        self.tcp = tcp;
        self.udp = udp;
    }

    /// Follows a new config (hot reload); true when a configured set changed.
    pub fn reconfigure(&mut self, modes: &[Mode], config: &Config) -> bool {
        let before = self.configured.clone();
        self.configure(modes, config);
        before != self.configured
    }

    /// Installs a fresh listener snapshot; returns the changes on configured ports.
    pub fn set_listeners(&mut self, new: Listeners) -> Vec<ListenerChange> {
        let mut changes = Vec::new();
        for (proto, old, new) in [
            (Proto::Tcp, &self.listeners.tcp, &new.tcp),
            (Proto::Udp, &self.listeners.udp, &new.udp),
        ] {
            let configured = |p: u16| {
                self.configured
                    .iter()
                    .any(|(m, s)| m.proto() == proto && s.contains(p))
            };
            for p in new.difference(old).filter(|p| configured(**p)) {
                changes.push(ListenerChange {
                    proto,
                    port: *p,
                    appeared: true,
                });
            }
            for p in old.difference(new).filter(|p| configured(**p)) {
                changes.push(ListenerChange {
                    proto,
                    port: *p,
                    appeared: false,
                });
            }
        }
        self.listeners = new;
        self.recompute();
        changes
    }

    /// The listener snapshot in use.
    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// Installs a fresh address snapshot.
    pub fn set_addrs(&mut self, addrs: HostAddrs) {
        self.addrs = addrs;
    }

    /// The ports watched right now (configured minus listeners).
    pub fn effective(&self, proto: Proto) -> &PortSet {
        match proto {
            Proto::Tcp => &self.tcp,
            Proto::Udp => &self.udp,
        }
    }

    /// The kernel prefilter for the current sets.
    pub fn program(&self) -> Result<Program, BuildError> {
        bpf::build(&self.tcp, &self.udp)
    }

    /// The mode a probe counts for, or why it does not count.
    pub fn decide(&self, probe: &Probe) -> Result<Mode, Skip> {
        if !self.addrs.contains(&probe.dst) {
            return Err(Skip::NotLocal);
        }
        if probe.proto == Proto::Udp && is_udp_answer(probe.src_port, probe.dst_port) {
            return Err(Skip::Answer);
        }
        let port = probe.dst_port;
        if !self.effective(probe.proto).contains(port) {
            let listening = match probe.proto {
                Proto::Tcp => &self.listeners.tcp,
                Proto::Udp => &self.listeners.udp,
            };
            return Err(if listening.contains(&port) {
                Skip::Listener
            } else {
                Skip::NotWatched
            });
        }
        self.configured
            .iter()
            .find(|(m, s)| m.proto() == probe.proto && s.contains(port))
            .map(|(m, _)| *m)
            .ok_or(Skip::NotWatched)
    }

    /// The 1.2 start-up lines for each mode, in order, given the current listeners.
    pub fn startup_lines(&self, config: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for (mode, _) in &self.configured {
            let proto = mode.proto();
            let listening: &BTreeSet<u16> = match proto {
                Proto::Tcp => &self.listeners.tcp,
                Proto::Udp => &self.listeners.udp,
            };
            match mode {
                Mode::Stcp | Mode::Sudp => {
                    for p in config.trap_ports(proto) {
                        out.push(report::stealth_listen(proto, *p));
                        if listening.contains(p) {
                            out.push(report::stealth_port_in_use(*p));
                        }
                    }
                }
                Mode::Atcp | Mode::Audp => {
                    let (limit, exclude) = config.advanced(proto);
                    out.push(report::advanced_monitor_first(limit));
                    if exclude.is_empty() {
                        out.push(report::advanced_exclude_none());
                    }
                    for p in exclude {
                        out.push(report::advanced_exclude(*p));
                    }
                    for p in listening.iter().filter(|p| **p < limit) {
                        out.push(report::advanced_ignored(proto, *p));
                    }
                    for p in exclude {
                        out.push(report::advanced_ignored(proto, *p));
                    }
                }
                Mode::Tcp | Mode::Udp => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;

    use super::*;
    use crate::config::build::defaults;
    use crate::event::ProbeKind;

    const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 1));
    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));

    fn config() -> Config {
        defaults(Path::new("/etc/portsentry/portsentry.conf"))
    }

    fn listeners(tcp: &[u16], udp: &[u16]) -> Listeners {
        Listeners {
            tcp: tcp.iter().copied().collect(),
            udp: udp.iter().copied().collect(),
        }
    }

    fn watch(modes: &[Mode], l: Listeners) -> Watch {
        Watch::new(modes, &config(), l, [ME].into_iter().collect())
    }

    fn tcp(port: u16) -> Probe {
        Probe {
            src: PEER,
            dst: ME,
            proto: Proto::Tcp,
            src_port: 40000,
            dst_port: port,
            kind: ProbeKind::Syn,
            ip_options: false,
        }
    }

    fn udp(src_port: u16, port: u16) -> Probe {
        Probe {
            proto: Proto::Udp,
            src_port,
            kind: ProbeKind::Udp,
            ..tcp(port)
        }
    }

    #[test]
    fn advanced_tcp_watches_below_the_limit_except_excludes_and_listeners() {
        let w = watch(&[Mode::Atcp], listeners(&[22], &[]));
        assert_eq!(w.decide(&tcp(1)), Ok(Mode::Atcp));
        assert_eq!(w.decide(&tcp(1023)), Ok(Mode::Atcp));
        assert_eq!(w.decide(&tcp(1024)), Err(Skip::NotWatched));
        assert_eq!(w.decide(&tcp(113)), Err(Skip::NotWatched));
        assert_eq!(w.decide(&tcp(22)), Err(Skip::Listener));
        assert_eq!(w.decide(&tcp(0)), Err(Skip::NotWatched));
        assert_eq!(w.decide(&udp(40000, 7)), Err(Skip::NotWatched));
    }

    #[test]
    fn stealth_watches_the_trap_ports_only() {
        let w = watch(&[Mode::Stcp, Mode::Sudp], listeners(&[111], &[]));
        assert_eq!(w.decide(&tcp(1)), Ok(Mode::Stcp));
        assert_eq!(w.decide(&tcp(31337)), Ok(Mode::Stcp));
        assert_eq!(w.decide(&tcp(2)), Err(Skip::NotWatched));
        assert_eq!(w.decide(&tcp(111)), Err(Skip::Listener));
        assert_eq!(w.decide(&udp(40000, 31337)), Ok(Mode::Sudp));
    }

    #[test]
    fn modes_combine_and_keep_their_own_names() {
        let w = watch(&[Mode::Atcp, Mode::Audp], Listeners::default());
        assert_eq!(w.decide(&tcp(80)), Ok(Mode::Atcp));
        assert_eq!(w.decide(&udp(40000, 161)), Ok(Mode::Audp));
        assert_eq!(w.decide(&udp(40000, 67)), Err(Skip::NotWatched)); // excluded
    }

    #[test]
    fn probes_to_other_hosts_do_not_count_but_loopback_does() {
        let w = watch(&[Mode::Atcp], Listeners::default());
        let forwarded = Probe {
            dst: IpAddr::V4(Ipv4Addr::new(10, 77, 9, 99)),
            ..tcp(80)
        };
        assert_eq!(w.decide(&forwarded), Err(Skip::NotLocal));
        let lo = Probe {
            dst: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            ..tcp(80)
        };
        assert_eq!(w.decide(&lo), Ok(Mode::Atcp));
    }

    #[test]
    fn dns_answer_to_a_closed_ephemeral_port_is_not_a_probe() {
        // -sudp's default UDP_PORTS include 32771, inside the ephemeral range.
        let w = watch(&[Mode::Sudp], Listeners::default());
        assert_eq!(w.decide(&udp(53, 32771)), Err(Skip::Answer));
        assert_eq!(w.decide(&udp(123, 32771)), Err(Skip::Answer));
        // The same port probed from an ordinary source port is a probe.
        assert_eq!(w.decide(&udp(40000, 32771)), Ok(Mode::Sudp));
        // From port 53 to a privileged trap port: a probe (nmap -g 53 below 1024 is seen).
        assert_eq!(w.decide(&udp(53, 161)), Ok(Mode::Sudp));
    }

    #[test]
    fn answer_rule_covers_fixed_client_ports() {
        assert!(is_udp_answer(67, 68));
        assert!(is_udp_answer(547, 546));
        assert!(is_udp_answer(123, 123));
        assert!(is_udp_answer(53, 40000));
        assert!(!is_udp_answer(53, 53));
        assert!(!is_udp_answer(40000, 53));
        assert!(!is_udp_answer(53, 1023));
    }

    #[test]
    fn advanced_udp_never_watches_ephemeral_ports() {
        // Answers to the host's own queries land on ports >= 32768: above the default limit.
        let w = watch(&[Mode::Audp], Listeners::default());
        for port in [32768, 40000, 60999] {
            assert_eq!(w.decide(&udp(5000, port)), Err(Skip::NotWatched));
        }
    }

    #[test]
    fn listener_changes_are_reported_for_configured_ports_only() {
        let mut w = watch(&[Mode::Atcp, Mode::Audp], listeners(&[22], &[]));
        let changes = w.set_listeners(listeners(&[80], &[40000, 500]));
        assert_eq!(
            changes,
            vec![
                ListenerChange {
                    proto: Proto::Tcp,
                    port: 80,
                    appeared: true
                },
                ListenerChange {
                    proto: Proto::Tcp,
                    port: 22,
                    appeared: false
                },
                ListenerChange {
                    proto: Proto::Udp,
                    port: 500,
                    appeared: true
                },
            ]
        );
        assert_eq!(w.decide(&tcp(22)), Ok(Mode::Atcp));
        assert_eq!(w.decide(&tcp(80)), Err(Skip::Listener));
        assert!(!w.effective(Proto::Tcp).contains(80));
        assert!(w.effective(Proto::Tcp).contains(22));
    }

    #[test]
    fn reconfigure_follows_new_port_sets() {
        let mut w = watch(&[Mode::Atcp], Listeners::default());
        let mut c = config();
        assert!(!w.reconfigure(&[Mode::Atcp], &c));
        c.advanced_ports_tcp = 200;
        c.advanced_exclude_tcp = vec![7];
        assert!(w.reconfigure(&[Mode::Atcp], &c));
        assert_eq!(w.decide(&tcp(199)), Ok(Mode::Atcp));
        assert_eq!(w.decide(&tcp(200)), Err(Skip::NotWatched));
        assert_eq!(w.decide(&tcp(7)), Err(Skip::NotWatched));
        assert_eq!(w.decide(&tcp(113)), Ok(Mode::Atcp));
    }

    #[test]
    fn startup_lines_match_1_2() {
        let w = watch(&[Mode::Atcp, Mode::Stcp], listeners(&[22, 79, 8080], &[]));
        let lines = w.startup_lines(&config());
        assert_eq!(
            lines[..6],
            [
                "adminalert: Advanced mode will monitor first 1024 ports",
                "adminalert: Advanced mode will manually exclude port: 113",
                "adminalert: Advanced mode will manually exclude port: 139",
                "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 22",
                "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 79",
                "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 113",
            ]
        );
        assert!(
            lines.contains(&"adminalert: Going into stealth listen mode on TCP port: 1".into())
        );
        let i = lines
            .iter()
            .position(|l| l == "adminalert: Going into stealth listen mode on TCP port: 79")
            .unwrap();
        assert_eq!(
            lines[i + 1],
            "adminalert: ERROR: Socket 79 is in use and will not be monitored. Attempting to continue"
        );
    }

    #[test]
    fn host_addrs_of_this_machine_include_loopback() {
        let a = HostAddrs::read().unwrap();
        assert!(a.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(!a.contains(&IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    }
}
