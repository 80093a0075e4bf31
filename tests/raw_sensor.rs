//! End-to-end tests of the raw sensor: a defender and an attacker network namespace joined
//! by a veth pair; the sensor runs on a thread that entered the defender namespace, nmap
//! (or plain sockets) in the attacker namespace. Needs root, `ip` and nmap; a test skips
//! itself (saying so) when they are missing.
//!
//! Addresses are the same in every pair (10.77.1.1 defender, 10.77.1.2 attacker,
//! fd77:1::1 / fd77:1::2): namespaces are isolated, only their names must be unique.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use portsentry::config::Config;
use portsentry::config::build::defaults;
use portsentry::event::{Hit, Mode, ProbeKind};
use portsentry::sensor::raw::{RawSensor, RawSensorError};
use portsentry::sensor::{HitSink, Sensor, SensorControl};

const DEF4: &str = "10.77.1.1";
const ATT4: &str = "10.77.1.2";
const DEF6: &str = "fd77:1::1";
const ATT6: &str = "fd77:1::2";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips the test (returns early) unless root and the named tools are present.
macro_rules! require {
    ($($tool:expr),*) => {
        if !is_root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
        $(if !have($tool) {
            eprintln!("SKIPPED: needs {}", $tool);
            return;
        })*
    };
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and a veth between them; deleted on drop, even when the test fails.
struct NetPair {
    def: String,
    att: String,
}

impl NetPair {
    fn new() -> NetPair {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let pair = NetPair {
            def: format!("psraw-{pid}-{n}-d"),
            att: format!("psraw-{pid}-{n}-a"),
        };
        ip(&["netns", "add", &pair.def]);
        ip(&["netns", "add", &pair.att]);
        ip(&[
            "link", "add", "vd", "netns", &pair.def, "type", "veth", "peer", "name", "va", "netns",
            &pair.att,
        ]);
        for (ns, dev, a4, a6) in [(&pair.def, "vd", DEF4, DEF6), (&pair.att, "va", ATT4, ATT6)] {
            ip(&["-n", ns, "addr", "add", &format!("{a4}/24"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    fn nmap(&self, args: &[&str]) {
        let mut cmd = Command::new("timeout");
        cmd.args(["120", "ip", "netns", "exec", &self.att, "nmap", "-n", "-Pn"]);
        cmd.args(["--max-retries", "0", "-T4"]);
        cmd.args(args);
        let out = cmd.output().expect("run nmap");
        assert!(
            out.status.success(),
            "nmap {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.def, &self.att] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A sensor running in the defender namespace; stopped on drop.
struct Running {
    ctl: Sender<SensorControl>,
    hits: Receiver<Hit>,
    sink: HitSink,
    handle: Option<JoinHandle<()>>,
}

impl Running {
    fn start(pair: &NetPair, modes: &[Mode], config: Config, capacity: usize) -> Running {
        let (ready_tx, ready_rx) = bounded::<Result<(), String>>(1);
        let (hit_tx, hits) = bounded(capacity);
        let sink = HitSink::new(hit_tx);
        let thread_sink = sink.clone();
        let (ctl, ctl_rx) = unbounded();
        let modes = modes.to_vec();
        let handle = in_netns(&pair.def, move || {
            match RawSensor::open(&modes, Arc::new(config)) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    Box::new(s).run(thread_sink, ctl_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("sensor start timed out");
        ready.expect("sensor open");
        Running {
            ctl,
            hits,
            sink,
            handle: Some(handle),
        }
    }

    /// Hits received so far, after letting late packets arrive.
    fn take(&self) -> Vec<Hit> {
        thread::sleep(Duration::from_millis(400));
        self.hits.try_iter().collect()
    }

    fn stop(mut self) -> Vec<Hit> {
        let hits = self.take();
        self.halt();
        hits
    }

    fn halt(&mut self) {
        let _ = self.ctl.send(SensorControl::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

fn config() -> Config {
    defaults(std::path::Path::new("/etc/portsentry/portsentry.conf"))
}

fn att4() -> IpAddr {
    ATT4.parse().unwrap()
}

fn att6() -> IpAddr {
    ATT6.parse().unwrap()
}

fn kinds_on(hits: &[Hit], src: IpAddr, port: u16) -> Vec<ProbeKind> {
    hits.iter()
        .filter(|h| h.src == src && h.port == port)
        .map(|h| h.kind)
        .collect()
}

/// A TCP service in the defender namespace that echoes until stopped.
struct Service {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Service {
    fn start(pair: &NetPair, port: u16) -> Service {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = bounded(1);
        let handle = in_netns(&pair.def, move || {
            let l = TcpListener::bind(("::", port)).expect("bind service"); // dual stack
            l.set_nonblocking(true).unwrap();
            let _ = tx.send(());
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 || c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("service up");
        Service {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn nmap_scans_over_ipv4_and_ipv6_are_seen_with_1_2_names() {
    require!("nmap");
    let pair = NetPair::new();
    let s = Running::start(&pair, &[Mode::Atcp, Mode::Audp], config(), 4096);
    pair.nmap(&["-sS", "-p", "1,7", DEF4]);
    pair.nmap(&["-sF", "-p", "11", DEF4]);
    pair.nmap(&["-sN", "-p", "12", DEF4]);
    pair.nmap(&["-sX", "-p", "13", DEF4]);
    pair.nmap(&["-sU", "-p", "7,161", DEF4]);
    pair.nmap(&["-6", "-sS", "-p", "14", DEF6]);
    pair.nmap(&["-6", "-sU", "-p", "15", DEF6]);
    pair.nmap(&["--scanflags", "SYNFIN", "-p", "16", DEF4]);
    pair.nmap(&["-sS", "--ip-options", "R", "-p", "17", DEF4]);
    let hits = s.stop();
    let a = att4();
    assert_eq!(kinds_on(&hits, a, 1), [ProbeKind::Syn]);
    assert_eq!(kinds_on(&hits, a, 11), [ProbeKind::Fin]);
    assert_eq!(kinds_on(&hits, a, 12), [ProbeKind::Null]);
    assert_eq!(kinds_on(&hits, a, 13), [ProbeKind::Xmas]);
    assert!(matches!(
        kinds_on(&hits, a, 16)[..],
        [ProbeKind::UnknownTcp(_)]
    ));
    assert_eq!(kinds_on(&hits, att6(), 14), [ProbeKind::Syn]);
    assert_eq!(kinds_on(&hits, att6(), 15), [ProbeKind::Udp]);
    let udp7: Vec<_> = hits
        .iter()
        .filter(|h| h.src == a && h.port == 7 && h.mode == Mode::Audp)
        .collect();
    assert_eq!(udp7.len(), 1, "{hits:#?}");
    assert!(hits.iter().any(|h| h.port == 161 && h.mode == Mode::Audp));
    assert!(hits.iter().any(|h| h.port == 7 && h.mode == Mode::Atcp));
    let opts: Vec<_> = hits.iter().filter(|h| h.port == 17).collect();
    assert_eq!(opts.len(), 1);
    assert!(opts[0].ip_options);
    assert!(hits.iter().filter(|h| h.port != 17).all(|h| !h.ip_options));
}

#[test]
fn stealth_mode_watches_only_the_trap_ports() {
    require!("nmap");
    let pair = NetPair::new();
    let s = Running::start(&pair, &[Mode::Stcp, Mode::Sudp], config(), 4096);
    // 1, 79, 111 and 31337 are trap ports; 2 and 80 are not.
    pair.nmap(&["-sS", "-p", "1,2,79,80,111,31337", DEF4]);
    pair.nmap(&["-sU", "-p", "2,7,31337", DEF4]);
    let hits = s.stop();
    let mut tcp: Vec<u16> = hits
        .iter()
        .filter(|h| h.mode == Mode::Stcp)
        .map(|h| h.port)
        .collect();
    tcp.sort_unstable();
    assert_eq!(tcp, [1, 79, 111, 31337]);
    let mut udp: Vec<u16> = hits
        .iter()
        .filter(|h| h.mode == Mode::Sudp)
        .map(|h| h.port)
        .collect();
    udp.sort_unstable();
    assert_eq!(udp, [7, 31337]);
}

#[test]
fn bad_checksums_and_fragments_are_not_counted() {
    require!("nmap");
    let pair = NetPair::new();
    let s = Running::start(&pair, &[Mode::Atcp, Mode::Audp], config(), 4096);
    pair.nmap(&["-sS", "--badsum", "-p", "21", DEF4]);
    pair.nmap(&["-sU", "--badsum", "-p", "22", DEF4]);
    pair.nmap(&["-6", "-sS", "--badsum", "-p", "23", DEF6]);
    // 8-byte fragments: the first one does not even hold the TCP flags (documented gap).
    pair.nmap(&["-sS", "-f", "-p", "24", DEF4]);
    let hits = s.stop();
    assert!(hits.is_empty(), "{hits:#?}");
}

#[test]
fn clients_of_a_real_service_and_established_traffic_are_not_flagged() {
    require!();
    let pair = NetPair::new();
    let _svc = Service::start(&pair, 80);
    let s = Running::start(&pair, &[Mode::Atcp], config(), 4096);
    let client = in_netns(&pair.att, || {
        for target in [format!("{DEF4}:80"), format!("[{DEF6}]:80")] {
            let addr: SocketAddr = target.parse().unwrap();
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let block = vec![0x5au8; 64 * 1024];
            let mut back = vec![0u8; 64 * 1024];
            for _ in 0..32 {
                c.write_all(&block).unwrap();
                c.read_exact(&mut back).unwrap();
            }
        }
    });
    client.join().unwrap();
    let hits = s.stop();
    assert!(hits.is_empty(), "{hits:#?}");
}

#[test]
fn the_hosts_own_connections_and_their_replies_are_not_flagged() {
    require!();
    let pair = NetPair::new();
    // The attacker runs a service on 600; the defender connects to it from local port 700
    // (a watched port) and also to a closed port (the reply is a RST).
    let (tx, rx) = bounded(1);
    let peer = in_netns(&pair.att, move || {
        let l = TcpListener::bind(("0.0.0.0", 600)).unwrap();
        let _ = tx.send(());
        let (mut c, _) = l.accept().unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let s = Running::start(&pair, &[Mode::Atcp, Mode::Audp], config(), 4096);
    let me = in_netns(&pair.def, || {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_reuse_address(true).unwrap();
        let local: SocketAddr = format!("{DEF4}:700").parse().unwrap();
        sock.bind(&local.into()).unwrap();
        let peer: SocketAddr = format!("{ATT4}:600").parse().unwrap();
        sock.connect_timeout(&peer.into(), Duration::from_secs(5))
            .unwrap();
        let mut c: TcpStream = sock.into();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        let closed: SocketAddr = format!("{ATT4}:601").parse().unwrap();
        assert!(TcpStream::connect_timeout(&closed, Duration::from_secs(5)).is_err());
    });
    me.join().unwrap();
    peer.join().unwrap();
    let hits = s.stop();
    assert!(hits.is_empty(), "{hits:#?}");
}

#[test]
fn udp_answers_to_own_queries_are_not_flagged_even_after_the_socket_closed() {
    require!();
    let pair = NetPair::new();
    // A slow "DNS server" in the attacker namespace: answers 300 ms late.
    let (tx, rx) = bounded(1);
    let server = in_netns(&pair.att, move || {
        let s = UdpSocket::bind(("0.0.0.0", 53)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = tx.send(());
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        thread::sleep(Duration::from_millis(300));
        s.send_to(&buf[..n], from).unwrap();
        // And an ordinary datagram from a non-service port to the same trap port.
        let other = UdpSocket::bind(("0.0.0.0", 40000)).unwrap();
        other.send_to(b"probe", from).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // -sudp's default UDP_PORTS hold 32771, inside the ephemeral range.
    let s = Running::start(&pair, &[Mode::Sudp], config(), 4096);
    let client = in_netns(&pair.def, || {
        let c = UdpSocket::bind((DEF4, 32771)).unwrap();
        c.send_to(b"query", (ATT4, 53)).unwrap();
        // Closed at once: the answer finds no socket.
    });
    client.join().unwrap();
    server.join().unwrap();
    let hits = s.stop();
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0].port, 32771);
    assert_eq!(hits[0].kind, ProbeKind::Udp);
}

#[test]
fn a_service_started_or_stopped_later_is_followed_within_a_second() {
    require!("nmap");
    let pair = NetPair::new();
    let s = Running::start(&pair, &[Mode::Atcp], config(), 4096);
    pair.nmap(&["-sS", "-p", "81", DEF4]);
    assert_eq!(s.take().len(), 1);
    let svc = Service::start(&pair, 81);
    thread::sleep(Duration::from_millis(1500));
    let client = in_netns(&pair.att, || {
        let addr: SocketAddr = format!("{DEF4}:81").parse().unwrap();
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
    });
    client.join().unwrap();
    pair.nmap(&["-sS", "-p", "81", DEF4]);
    assert!(s.take().is_empty(), "port 81 has a listener now");
    drop(svc);
    thread::sleep(Duration::from_millis(1500));
    pair.nmap(&["-sS", "-p", "81", DEF4]);
    assert_eq!(s.stop().len(), 1, "port 81 is watched again");
}

#[test]
fn reconfigure_follows_new_port_sets_without_reopening() {
    require!("nmap");
    let pair = NetPair::new();
    let s = Running::start(&pair, &[Mode::Stcp], config(), 4096);
    pair.nmap(&["-sS", "-p", "1,4444", DEF4]);
    let before: Vec<u16> = s.take().iter().map(|h| h.port).collect();
    assert_eq!(before, [1]);
    let mut c = config();
    c.tcp_ports = vec![4444];
    s.ctl.send(SensorControl::Reconfigure(Arc::new(c))).unwrap();
    thread::sleep(Duration::from_millis(500));
    pair.nmap(&["-sS", "-p", "1,4444", DEF4]);
    let after: Vec<u16> = s.stop().iter().map(|h| h.port).collect();
    assert_eq!(after, [4444]);
}

#[test]
fn a_full_pipeline_counts_drops_without_blocking_the_sensor() {
    require!("nmap");
    let pair = NetPair::new();
    let s = Running::start(&pair, &[Mode::Atcp], config(), 1);
    pair.nmap(&["-sS", "-p", "1-200", DEF4]);
    let received = s.take().len();
    let dropped = s.sink.dropped();
    assert_eq!(received, 1);
    assert!(dropped >= 150, "only {dropped} counted as dropped");
    // Still reading: after draining, a new probe gets through.
    pair.nmap(&["-sS", "-p", "300", DEF4]);
    let later = s.stop();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].port, 300);
}

#[test]
fn packets_for_other_hosts_are_not_flagged() {
    require!("nmap");
    let pair = NetPair::new();
    // The attacker routes 10.77.200.0/24 through the defender: frames carry the
    // defender's MAC (PACKET_HOST) but the IP destination is not the defender's.
    ip(&[
        "-n",
        &pair.att,
        "route",
        "add",
        "10.77.200.0/24",
        "via",
        DEF4,
    ]);
    let s = Running::start(&pair, &[Mode::Atcp, Mode::Audp], config(), 4096);
    pair.nmap(&["-sS", "-p", "1,7", "10.77.200.5"]);
    pair.nmap(&["-sU", "-p", "7", "10.77.200.5"]);
    let hits = s.stop();
    assert!(hits.is_empty(), "{hits:#?}");
}

#[test]
fn opening_without_cap_net_raw_fails_clearly() {
    require!();
    let pair = NetPair::new();
    let def = pair.def.clone();
    let result = in_netns(&def, || {
        drop_cap_net_raw_on_this_thread();
        RawSensor::open(&[Mode::Atcp], Arc::new(config())).map(|_| ())
    })
    .join()
    .unwrap();
    match result {
        Err(e @ RawSensorError::NotPermitted(_)) => {
            assert!(e.to_string().contains("needs root"), "{e}");
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
}

/// Clears CAP_NET_RAW from this thread's effective set (capabilities are per thread).
fn drop_cap_net_raw_on_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_RAW: u32 = 13;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data words, as the ABI requires.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_NET_RAW);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

#[test]
fn sensor_stops_promptly_when_told() {
    require!();
    let pair = NetPair::new();
    let s = Running::start(&pair, &[Mode::Atcp], config(), 16);
    let t = Instant::now();
    let hits = s.stop();
    assert!(hits.is_empty());
    assert!(t.elapsed() < Duration::from_secs(2));
}
