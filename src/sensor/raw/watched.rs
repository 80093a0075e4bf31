//! What the raw sensor watches and the per-packet decision, as plain data: the configured
//! port sets per mode, the listeners and this host's addresses at the last refresh (a probe
//! counts only if sent to one of them: a router also receives frames for other hosts with its
//! own MAC address as destination). No I/O here but the address refresh, which
//! [`crate::local_addrs`] owns, so every rule is unit-tested.
//!
//! A UDP port whose socket the listener poll saw go away stays unwatched for
//! [`UDP_FLOW_TTL`] more: the prefilter passes only datagrams from *watched* ports up, so
//! the flows of a socket the poll already knew were not recorded, and their late answers
//! must not count as probes. A socket that lived less than a poll interval (the usual
//! query socket) left its flows in the flow table instead, and needs no such grace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::config::Config;
use crate::event::{Mode, Proto};
use crate::local_addrs::LocalAddrs;
use crate::sensor::classify::{FlowStart, Probe};
use crate::sensor::listeners::Listeners;

use super::bpf::{self, BuildError, Program};
use super::flows::UDP_FLOW_TTL;
use super::ports::PortSet;
use crate::log_lines;

/// Why a well-formed probe does not become a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Sent to an address that is not this host's (forwarded traffic).
    NotLocal,
    /// The port is not in any watched set of this protocol.
    NotWatched,
    /// The port is watched but a real service listens on it.
    Listener,
    /// A UDP socket the poll knew on this port closed less than [`UDP_FLOW_TTL`] ago: what
    /// arrives may answer what it sent.
    JustClosed,
    /// It answers a flow this host started (see [`super::flows`]).
    Answer,
    /// A live socket takes it, as the kernel said when asked (see [`super::live`]).
    Socket,
    /// The same frame seen on a second interface (a bridge or bond) a moment ago.
    Duplicate,
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
    addrs: LocalAddrs,
    /// UDP ports of configured sets whose socket left, each with the end of its grace.
    udp_closing: BTreeMap<u16, Instant>,
}

impl Watch {
    /// Builds the view for `modes` (raw modes only; others are ignored) from `config`.
    pub fn new(modes: &[Mode], config: &Config, listeners: Listeners, addrs: LocalAddrs) -> Watch {
        let mut w = Watch {
            configured: Vec::new(),
            tcp: PortSet::default(),
            udp: PortSet::default(),
            listeners,
            addrs,
            udp_closing: BTreeMap::new(),
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
        for p in self.listeners.udp.iter().chain(self.udp_closing.keys()) {
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

    fn is_configured(&self, proto: Proto, port: u16) -> bool {
        self.configured
            .iter()
            .any(|(m, s)| m.proto() == proto && s.contains(port))
    }

    /// Installs a fresh listener snapshot taken at `now`; returns the changes on configured
    /// ports. A UDP port whose socket left is reported (and watched) only when its grace
    /// ends, in [`Watch::expire`]; one whose socket comes back within the grace was never
    /// watched meanwhile, so neither event is reported.
    pub fn set_listeners(&mut self, new: Listeners, now: Instant) -> Vec<ListenerChange> {
        let mut changes = Vec::new();
        for (proto, old, new) in [
            (Proto::Tcp, &self.listeners.tcp, &new.tcp),
            (Proto::Udp, &self.listeners.udp, &new.udp),
        ] {
            let configured = |ports: std::collections::btree_set::Difference<'_, u16>| {
                ports
                    .copied()
                    .filter(|p| self.is_configured(proto, *p))
                    .collect::<Vec<u16>>()
            };
            let (appeared, gone) = (
                configured(new.difference(old)),
                configured(old.difference(new)),
            );
            for port in appeared {
                if proto == Proto::Udp && self.udp_closing.remove(&port).is_some() {
                    continue;
                }
                changes.push(ListenerChange {
                    proto,
                    port,
                    appeared: true,
                });
            }
            for port in gone {
                if proto == Proto::Udp {
                    self.udp_closing.insert(port, now + UDP_FLOW_TTL);
                    continue;
                }
                changes.push(ListenerChange {
                    proto,
                    port,
                    appeared: false,
                });
            }
        }
        self.listeners = new;
        self.recompute();
        changes
    }

    /// Ends the grace of UDP ports whose socket left [`UDP_FLOW_TTL`] before `now`: they are
    /// watched again, and reported as such.
    pub fn expire(&mut self, now: Instant) -> Vec<ListenerChange> {
        let ended: Vec<u16> = self
            .udp_closing
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        if ended.is_empty() {
            return Vec::new();
        }
        for p in &ended {
            self.udp_closing.remove(p);
        }
        self.recompute();
        ended
            .into_iter()
            .map(|port| ListenerChange {
                proto: Proto::Udp,
                port,
                appeared: false,
            })
            .collect()
    }

    /// The listener snapshot in use.
    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// Takes this host's addresses afresh when the snapshot is older than
    /// [`crate::local_addrs::REFRESH_INTERVAL`] at `now` (a failure is logged there and the
    /// previous addresses kept).
    pub fn refresh_addrs(&mut self, now: Instant) {
        self.addrs.refresh_if_stale(now);
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

    /// Whether an outgoing packet opens a flow worth remembering: sent from one of this
    /// host's addresses (not forwarded) and from a watched port, the only ports whose
    /// answers could be taken for probes.
    pub fn starts_flow(&self, start: &FlowStart) -> bool {
        self.addrs.contains(start.local) && self.effective(start.proto).contains(start.local_port)
    }

    /// The mode a probe counts for, or why it does not count (flows and live sockets are
    /// the sensor's to check).
    pub fn decide(&self, probe: &Probe) -> Result<Mode, Skip> {
        if !self.addrs.contains(probe.dst) {
            return Err(Skip::NotLocal);
        }
        let port = probe.dst_port;
        if !self.effective(probe.proto).contains(port) {
            let listening = match probe.proto {
                Proto::Tcp => &self.listeners.tcp,
                Proto::Udp => &self.listeners.udp,
            };
            return Err(if listening.contains(&port) {
                Skip::Listener
            } else if probe.proto == Proto::Udp && self.udp_closing.contains_key(&port) {
                Skip::JustClosed
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
                        out.push(log_lines::stealth_listen(proto, *p));
                        if listening.contains(p) {
                            out.push(log_lines::stealth_port_in_use(*p));
                        }
                    }
                }
                Mode::Atcp | Mode::Audp => {
                    let (limit, exclude) = config.advanced(proto);
                    out.push(log_lines::advanced_monitor_first(limit));
                    if exclude.is_empty() {
                        out.push(log_lines::advanced_exclude_none());
                    }
                    for p in exclude {
                        out.push(log_lines::advanced_exclude(*p));
                    }
                    for p in listening.iter().filter(|p| **p < limit) {
                        out.push(log_lines::advanced_ignored(proto, *p));
                    }
                    for p in exclude {
                        out.push(log_lines::advanced_ignored(proto, *p));
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
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;
    use std::time::Duration;

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
    fn udp_from_a_service_port_is_judged_like_any_other() {
        // No source-port rule: a scan sent from port 53 (nmap -g 53) is a probe; answers are
        // told by their flow (see flows.rs).
        let w = watch(&[Mode::Sudp], Listeners::default());
        assert_eq!(w.decide(&udp(53, 32771)), Ok(Mode::Sudp));
        assert_eq!(w.decide(&udp(123, 161)), Ok(Mode::Sudp));
        assert_eq!(w.decide(&udp(40000, 32771)), Ok(Mode::Sudp));
    }

    fn flow(proto: Proto, local: IpAddr, local_port: u16) -> FlowStart {
        FlowStart {
            proto,
            local,
            local_port,
            remote: PEER,
            remote_port: 53,
        }
    }

    #[test]
    fn only_this_hosts_packets_from_watched_ports_start_flows() {
        let w = watch(&[Mode::Atcp, Mode::Audp], listeners(&[22], &[123]));
        assert!(w.starts_flow(&flow(Proto::Udp, ME, 700)));
        assert!(w.starts_flow(&flow(Proto::Tcp, ME, 700)));
        // A service's port, an unwatched one, forwarded traffic: not remembered.
        assert!(!w.starts_flow(&flow(Proto::Udp, ME, 123)));
        assert!(!w.starts_flow(&flow(Proto::Tcp, ME, 22)));
        assert!(!w.starts_flow(&flow(Proto::Udp, ME, 40000)));
        let lan_host = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 50));
        assert!(!w.starts_flow(&flow(Proto::Udp, lan_host, 700)));
    }

    #[test]
    fn a_udp_port_whose_known_socket_closed_stays_unwatched_for_the_flow_lifetime() {
        let t = Instant::now();
        let mut w = watch(&[Mode::Audp], listeners(&[], &[700]));
        assert_eq!(w.decide(&udp(53, 700)), Err(Skip::Listener));
        assert!(w.set_listeners(Listeners::default(), t).is_empty());
        assert_eq!(w.decide(&udp(53, 700)), Err(Skip::JustClosed));
        assert!(!w.effective(Proto::Udp).contains(700));
        assert!(
            w.expire(t + UDP_FLOW_TTL - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(
            w.expire(t + UDP_FLOW_TTL),
            vec![ListenerChange {
                proto: Proto::Udp,
                port: 700,
                appeared: false
            }]
        );
        assert_eq!(w.decide(&udp(53, 700)), Ok(Mode::Audp));
        assert!(w.effective(Proto::Udp).contains(700));
    }

    #[test]
    fn a_udp_socket_back_within_the_grace_is_not_reported_again() {
        let t = Instant::now();
        let mut w = watch(&[Mode::Audp], listeners(&[], &[700]));
        w.set_listeners(Listeners::default(), t);
        assert!(
            w.set_listeners(listeners(&[], &[700]), t + Duration::from_secs(1))
                .is_empty()
        );
        assert!(w.expire(t + UDP_FLOW_TTL * 2).is_empty());
        assert_eq!(w.decide(&udp(53, 700)), Err(Skip::Listener));
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
        let changes = w.set_listeners(listeners(&[80], &[40000, 500]), Instant::now());
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
    fn host_addrs_are_read_from_the_interfaces_of_this_namespace() {
        crate::sensor::listeners::tests::in_fresh_netns(|| {
            use crate::sensor::listeners::tests::ns_sh;
            let added: IpAddr = "10.77.9.1".parse().unwrap();
            let added6: IpAddr = "fd77:9::1".parse().unwrap();
            let before = LocalAddrs::read().unwrap();
            assert!(!before.contains(added), "{before:?}");
            ns_sh(&["ip", "addr", "add", "10.77.9.1/32", "dev", "lo"]);
            ns_sh(&["ip", "addr", "add", "fd77:9::1/128", "dev", "lo"]);
            let after = LocalAddrs::read().unwrap();
            assert!(after.contains(added), "{after:?}");
            assert!(after.contains(added6), "{after:?}");
            // Another host of the same subnet is not ours.
            assert!(!after.contains("10.77.9.2".parse().unwrap()), "{after:?}");
        });
    }
}
