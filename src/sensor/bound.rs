//! Classic `-tcp` / `-udp`: listen on every trap port, IPv4 and IPv6, from one poll loop.
//!
//! A completed TCP handshake proves the source address, which is why this mode stays useful
//! next to raw capture. A trap port that another program holds is skipped with 1.2's line and
//! the others go on. On reload the set of ports follows the config: new ports are opened,
//! removed ones closed, unchanged listeners are kept open so no probe is missed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::{HitSink, Sensor, SensorControl};
use crate::config::Config;
use crate::event::{Hit, Mode, ProbeKind, Proto};
use crate::log_lines;

/// How often the loop looks at its control channel when no packet arrives.
const CONTROL_INTERVAL: Duration = Duration::from_millis(50);

/// Failure to start the classic sensor.
#[derive(Debug, thiserror::Error)]
pub enum BoundSensorError {
    /// Every trap port of a mode was taken or refused: 1.2 shuts down in that case.
    #[error("{}", log_lines::nothing_bound(.0))]
    NothingBound(&'static str),
    /// The poll instance could not be created.
    #[error("cannot create poll instance: {0}")]
    Poll(std::io::Error),
}

enum Socketish {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

struct Listener {
    mode: Mode,
    port: u16,
    socket: Socketish,
}

/// The classic sensor: every trap listener of `-tcp` and/or `-udp` in one poll loop.
pub struct BoundSensor {
    modes: Vec<Mode>,
    poll: Poll,
    listeners: BTreeMap<Token, Listener>,
    next_token: usize,
    banner: Option<Vec<u8>>,
}

/// Opens a listening socket for one port and family; `None` when the family is unavailable
/// (IPv6 disabled) so that IPv4 still works.
fn open_socket(proto: Proto, ip: IpAddr, port: u16) -> std::io::Result<Socket> {
    let domain = if ip.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let (ty, protocol) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let socket = Socket::new(domain, ty, Some(protocol))?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if proto == Proto::Tcp {
        // Lets a restarted daemon rebind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&SocketAddr::new(ip, port).into())?;
    if proto == Proto::Tcp {
        socket.listen(128)?;
    }
    Ok(socket)
}

/// Why a bind failed, as the admin searches for it: `Address already in use (EADDRINUSE)`.
fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let errno = nix::errno::Errno::from_raw(code);
            format!("{} ({errno:?})", errno.desc())
        }
        None => e.to_string(),
    }
}

impl BoundSensor {
    /// Opens every trap port of the given classic modes. Fails only when a mode could bind
    /// no port at all.
    pub fn open(modes: &[Mode], config: &Config) -> Result<BoundSensor, BoundSensorError> {
        let poll = Poll::new().map_err(BoundSensorError::Poll)?;
        let mut sensor = BoundSensor {
            modes: modes.iter().copied().filter(|m| !m.is_raw()).collect(),
            poll,
            listeners: BTreeMap::new(),
            next_token: 0,
            banner: None,
        };
        sensor.apply(config);
        for mode in &sensor.modes {
            if !sensor.listeners.values().any(|l| l.mode == *mode) {
                return Err(BoundSensorError::NothingBound(mode.proto().upper()));
            }
        }
        Ok(sensor)
    }

    /// Ports currently listened on, per mode (for tests and status).
    pub fn bound_ports(&self, mode: Mode) -> BTreeSet<u16> {
        self.listeners
            .values()
            .filter(|l| l.mode == mode)
            .map(|l| l.port)
            .collect()
    }

    /// Makes the open sockets match the config: opens what is new, closes what went away.
    fn apply(&mut self, config: &Config) {
        self.banner = config.port_banner.as_ref().map(|b| b.as_bytes().to_vec());
        for mode in self.modes.clone() {
            let wanted: BTreeSet<u16> = config.trap_ports(mode.proto()).iter().copied().collect();
            let have = self.bound_ports(mode);
            let stale: Vec<Token> = self
                .listeners
                .iter()
                .filter(|(_, l)| l.mode == mode && !wanted.contains(&l.port))
                .map(|(t, _)| *t)
                .collect();
            for token in stale {
                if let Some(l) = self.listeners.remove(&token) {
                    log::info!("{}", log_lines::no_longer_listening(mode.proto(), l.port));
                    self.deregister(l);
                }
            }
            let mut failed: BTreeMap<String, Vec<u16>> = BTreeMap::new();
            let new_ports: Vec<u16> = wanted.difference(&have).copied().collect();
            for &port in &new_ports {
                if let Err(e) = self.open_port(mode, port) {
                    failed.entry(errno_text(&e)).or_default().push(port);
                }
            }
            if !failed.is_empty() {
                log::error!(
                    "{}",
                    log_lines::bind_summary(mode.proto(), new_ports.len(), &failed)
                );
            }
        }
    }

    fn deregister(&self, listener: Listener) {
        let registry = self.poll.registry();
        let _ = match listener.socket {
            Socketish::Tcp(mut s) => registry.deregister(&mut s),
            Socketish::Udp(mut s) => registry.deregister(&mut s),
        };
    }

    /// Opens both families of one port and logs what was really bound: 1.2's listen-mode
    /// line when the IPv4 socket is bound (with or without IPv6), the same line with an
    /// `(IPv6 only: …)` suffix when only IPv6 is, nothing when neither is (the caller sums
    /// those up in one line).
    fn open_port(&mut self, mode: Mode, port: u16) -> Result<(), std::io::Error> {
        let proto = mode.proto();
        let mut v4_error = None;
        let mut v6_error = None;
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            let result = open_socket(proto, ip, port).and_then(|socket| {
                self.register(mode, port, socket)
                    .then_some(())
                    .ok_or_else(|| std::io::Error::other("cannot register with poll"))
            });
            if let Err(e) = result {
                log::debug!("bind {ip} {} port {port}: {e}", proto.upper());
                if ip.is_ipv6() {
                    v6_error = Some(e);
                } else {
                    v4_error = Some(e);
                }
            }
        }
        match (v4_error, v6_error) {
            (None, _) => {
                log::info!("{}", log_lines::listen_mode(proto, port));
                Ok(())
            }
            (Some(v4), None) => {
                log::info!(
                    "{}",
                    log_lines::listen_mode_v6_only(proto, port, &errno_text(&v4))
                );
                Ok(())
            }
            (Some(v4), Some(_)) => Err(v4),
        }
    }

    fn register(&mut self, mode: Mode, port: u16, socket: Socket) -> bool {
        let token = Token(self.next_token);
        self.next_token += 1;
        let registry = self.poll.registry();
        let socket = match mode.proto() {
            Proto::Tcp => {
                let mut l = TcpListener::from_std(socket.into());
                if registry
                    .register(&mut l, token, Interest::READABLE)
                    .is_err()
                {
                    return false;
                }
                Socketish::Tcp(l)
            }
            Proto::Udp => {
                let mut s = UdpSocket::from_std(socket.into());
                if registry
                    .register(&mut s, token, Interest::READABLE)
                    .is_err()
                {
                    return false;
                }
                Socketish::Udp(s)
            }
        };
        self.listeners
            .insert(token, Listener { mode, port, socket });
        true
    }

    /// Drains one ready socket: every pending connection or datagram becomes a hit.
    fn drain(&self, token: Token, sink: &HitSink) {
        let Some(listener) = self.listeners.get(&token) else {
            return;
        };
        match &listener.socket {
            Socketish::Tcp(l) => loop {
                match l.accept() {
                    Ok((mut stream, peer)) => {
                        if let Some(banner) = &self.banner {
                            // Best effort: the peer may already be gone.
                            let _ = stream.write(banner);
                        }
                        drop(stream);
                        sink.emit(Hit::now(
                            peer.ip().to_canonical(),
                            listener.port,
                            listener.mode,
                            ProbeKind::Connect,
                        ));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::debug!("accept on TCP port {}: {e}", listener.port);
                        break;
                    }
                }
            },
            Socketish::Udp(s) => {
                let mut buf = [0u8; 1];
                loop {
                    match s.recv_from(&mut buf) {
                        Ok((_, peer)) => {
                            if let Some(banner) = &self.banner {
                                let _ = s.send_to(banner, peer);
                            }
                            sink.emit(Hit::now(
                                peer.ip().to_canonical(),
                                listener.port,
                                listener.mode,
                                ProbeKind::Udp,
                            ));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // ICMP errors from earlier banners surface here; not a probe.
                            log::debug!("recv on UDP port {}: {e}", listener.port);
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Sensor for BoundSensor {
    fn name(&self) -> String {
        "classic".to_string()
    }

    fn modes(&self) -> Vec<Mode> {
        self.modes.clone()
    }

    fn run(mut self: Box<Self>, sink: HitSink, control: Receiver<SensorControl>) {
        let mut events = Events::with_capacity(256);
        loop {
            crate::heartbeat::beat();
            match control.try_recv() {
                Ok(SensorControl::Reconfigure(config)) => self.apply(&config),
                Ok(SensorControl::Stop) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
            let wait = sink.tick_and_wait(Instant::now(), CONTROL_INTERVAL);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("{}", log_lines::poll_failed(e));
                    std::thread::sleep(CONTROL_INTERVAL);
                }
                continue;
            }
            for event in events.iter() {
                self.drain(event.token(), &sink);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::build::defaults;
    use std::net::{TcpStream, UdpSocket as StdUdp};

    fn free_port(proto: Proto) -> u16 {
        match proto {
            Proto::Tcp => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap(),
            Proto::Udp => StdUdp::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
                .unwrap(),
        }
    }

    fn run_sensor(
        sensor: BoundSensor,
    ) -> (
        crossbeam_channel::Receiver<Hit>,
        crossbeam_channel::Sender<SensorControl>,
        std::thread::JoinHandle<()>,
    ) {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let (ctx, crx) = crossbeam_channel::unbounded();
        let sink = HitSink::new(tx);
        let h = std::thread::spawn(move || Box::new(sensor).run(sink, crx));
        (rx, ctx, h)
    }

    #[test]
    fn tcp_connect_on_loopback_is_a_hit_and_gets_the_banner() {
        let port = free_port(Proto::Tcp);
        let mut config = defaults(std::path::Path::new("p.conf"));
        config.tcp_ports = vec![port];
        config.port_banner = Some("GO AWAY".into());
        let sensor = BoundSensor::open(&[Mode::Tcp], &config).unwrap();
        let (rx, ctl, h) = run_sensor(sensor);
        // A loaded machine sometimes resets a connection closed this fast before the client
        // reads it: the banner is asked for again then (each try is a hit).
        let banner = (0..3).find_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut got = String::new();
            std::io::Read::read_to_string(&mut s, &mut got)
                .ok()
                .map(|_| got)
        });
        assert_eq!(banner.as_deref(), Some("GO AWAY"));
        let hit = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(hit.port, port);
        assert_eq!(hit.kind, ProbeKind::Connect);
        assert_eq!(hit.src, IpAddr::V4(Ipv4Addr::LOCALHOST));
        ctl.send(SensorControl::Stop).unwrap();
        h.join().unwrap();
    }

    #[test]
    fn udp_datagram_over_ipv6_loopback_is_a_hit() {
        let port = free_port(Proto::Udp);
        let mut config = defaults(std::path::Path::new("p.conf"));
        config.udp_ports = vec![port];
        let sensor = BoundSensor::open(&[Mode::Udp], &config).unwrap();
        let (rx, ctl, h) = run_sensor(sensor);
        let c = StdUdp::bind("[::1]:0").unwrap();
        c.send_to(b"x", ("::1", port)).unwrap();
        let hit = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (hit.port, hit.kind, hit.mode),
            (port, ProbeKind::Udp, Mode::Udp)
        );
        assert_eq!(hit.src, "::1".parse::<IpAddr>().unwrap());
        ctl.send(SensorControl::Stop).unwrap();
        h.join().unwrap();
    }

    #[test]
    fn port_in_use_is_skipped_and_the_others_go_on() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let free = free_port(Proto::Tcp);
        let mut config = defaults(std::path::Path::new("p.conf"));
        config.tcp_ports = vec![taken_port, free];
        let sensor = BoundSensor::open(&[Mode::Tcp], &config).unwrap();
        assert!(sensor.bound_ports(Mode::Tcp).contains(&free));
        // The IPv6 half of the taken port may bind; the IPv4 one cannot.
        drop(taken);
    }

    /// Holds `port` on both families in the calling thread's namespace, the IPv6 socket
    /// IPv6-only so that the two never collide whatever `bindv6only` says.
    fn hold_both_families(port: u16) -> (Socket, Socket) {
        let hold = |ip: IpAddr| {
            let domain = if ip.is_ipv6() {
                Domain::IPV6
            } else {
                Domain::IPV4
            };
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
            if ip.is_ipv6() {
                s.set_only_v6(true).unwrap();
            }
            s.bind(&SocketAddr::new(ip, port).into()).unwrap();
            s.listen(8).unwrap();
            s
        };
        (
            hold(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            hold(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        )
    }

    #[test]
    fn nothing_bound_is_fatal() {
        // In a namespace of its own nothing else can take or free the port meanwhile.
        crate::sensor::listeners::tests::in_fresh_netns(|| {
            let port = 4444;
            let mut config = defaults(std::path::Path::new("p.conf"));
            config.tcp_ports = vec![port];
            let held = hold_both_families(port);
            let r = BoundSensor::open(&[Mode::Tcp], &config);
            assert!(
                matches!(r, Err(BoundSensorError::NothingBound("TCP"))),
                "both families of the only port are taken: {:?}",
                r.map(|s| s.bound_ports(Mode::Tcp))
            );
            // Control, same set-up: once the port is free the same config opens.
            drop(held);
            let sensor = once_closed(|| BoundSensor::open(&[Mode::Tcp], &config)).unwrap();
            assert_eq!(sensor.bound_ports(Mode::Tcp), BTreeSet::from([port]));
        });
    }

    #[test]
    fn bind_failures_are_summed_up_in_one_line_with_their_reason() {
        let mut failed = BTreeMap::new();
        failed.insert(
            errno_text(&std::io::Error::from_raw_os_error(libc::EADDRINUSE)),
            vec![22, 80, 443],
        );
        assert_eq!(
            log_lines::bind_summary(Proto::Tcp, 120, &failed),
            "adminalert: ERROR: could not bind 3 of 120 TCP ports: 22, 80, 443 \
             (Address already in use (EADDRINUSE)). Attempting to continue"
        );
        failed.insert(
            errno_text(&std::io::Error::from_raw_os_error(libc::EMFILE)),
            (1000..1100).collect(),
        );
        let line = log_lines::bind_summary(Proto::Tcp, 65535, &failed);
        assert!(
            line.contains("could not bind 103 of 65535 TCP ports"),
            "{line}"
        );
        assert!(
            line.contains("1019, … 80 more (Too many open files (EMFILE))"),
            "{line}"
        );
        assert!(line.len() < 400, "{line}");
    }

    #[test]
    fn a_port_held_on_ipv4_only_is_still_bound_on_ipv6() {
        let taken4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken4.local_addr().unwrap().port();
        let free = free_port(Proto::Tcp);
        let mut config = defaults(std::path::Path::new("p.conf"));
        config.tcp_ports = vec![port, free];
        let mut sensor = BoundSensor::open(&[Mode::Tcp], &config).unwrap();
        let families = |sensor: &BoundSensor, p: u16| -> usize {
            sensor.listeners.values().filter(|l| l.port == p).count()
        };
        // The free port has both families (positive control), the held one IPv6 only.
        assert_eq!(families(&sensor, free), 2);
        assert_eq!(families(&sensor, port), 1);
        assert!(
            sensor.open_port(Mode::Tcp, port).is_err(),
            "both halves now taken"
        );
    }

    #[test]
    fn reconfigure_opens_new_ports_and_closes_removed_ones() {
        let a = free_port(Proto::Tcp);
        let b = free_port(Proto::Tcp);
        let mut config = defaults(std::path::Path::new("p.conf"));
        config.tcp_ports = vec![a];
        let mut sensor = BoundSensor::open(&[Mode::Tcp], &config).unwrap();
        config.tcp_ports = vec![b];
        sensor.apply(&config);
        assert_eq!(sensor.bound_ports(Mode::Tcp), BTreeSet::from([b]));
        assert!(once_closed(|| std::net::TcpListener::bind(("127.0.0.1", a))).is_ok());
    }

    /// `bind` retried for up to a second: a process another test forks while our listeners
    /// are open holds a copy of them until it execs (microseconds, but seen in full runs),
    /// so a port just closed may still be taken for a moment.
    fn once_closed<T, E>(mut bind: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        let mut result = bind();
        for _ in 0..50 {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            result = bind();
        }
        result
    }
}
