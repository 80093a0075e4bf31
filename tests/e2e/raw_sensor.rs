//! End-to-end tests of the raw sensor itself (no daemon): it runs on a thread that entered
//! the lab's defender namespace, nmap (or plain sockets on threads in the attacker
//! namespace) on the other side of the veth.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use portsentry::config::Config;
use portsentry::config::build::defaults;
use portsentry::event::{Hit, Mode, ProbeKind};
use portsentry::sensor::raw::{RawSensor, RawSensorError};
use portsentry::sensor::{HitSink, Sensor, SensorControl};

use crate::lab::{Lab, sh};

/// A sensor running in the defender namespace; stopped on drop.
struct Running {
    ctl: Sender<SensorControl>,
    hits: Receiver<Hit>,
    sink: HitSink,
    handle: Option<JoinHandle<()>>,
}

impl Running {
    fn start(lab: &Lab, modes: &[Mode], config: Config, capacity: usize) -> Running {
        let (ready_tx, ready_rx) = bounded::<Result<(), String>>(1);
        let (hit_tx, hits) = bounded(capacity);
        let sink = HitSink::new(hit_tx);
        let thread_sink = sink.clone();
        let (ctl, ctl_rx) = unbounded();
        let modes = modes.to_vec();
        let handle = lab.in_def(move || match RawSensor::open(&modes, Arc::new(config)) {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                Box::new(s).run(thread_sink, ctl_rx);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
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

fn kinds_on(hits: &[Hit], src: IpAddr, port: u16) -> Vec<ProbeKind> {
    hits.iter()
        .filter(|h| h.src == src && h.port == port)
        .map(|h| h.kind)
        .collect()
}

#[test]
fn nmap_scans_over_ipv4_and_ipv6_are_seen_with_1_2_names() {
    let lab = Lab::new();
    let s = Running::start(&lab, &[Mode::Atcp, Mode::Audp], config(), 4096);
    lab.nmap(&["-sS", "-p", "1,7", &lab.def4]);
    lab.nmap(&["-sF", "-p", "11", &lab.def4]);
    lab.nmap(&["-sN", "-p", "12", &lab.def4]);
    lab.nmap(&["-sX", "-p", "13", &lab.def4]);
    lab.nmap(&["-sU", "-p", "7,161", &lab.def4]);
    lab.nmap(&["-6", "-sS", "-p", "14", &lab.def6]);
    lab.nmap(&["-6", "-sU", "-p", "15", &lab.def6]);
    lab.nmap(&["--scanflags", "SYNFIN", "-p", "16", &lab.def4]);
    lab.nmap(&["-sS", "--ip-options", "R", "-p", "17", &lab.def4]);
    lab.nmap(&["-sA", "-p", "18", &lab.def4]);
    lab.nmap(&["-6", "-sM", "-p", "19", &lab.def6]);
    let hits = s.stop();
    let a = lab.addr(&lab.att4);
    assert_eq!(kinds_on(&hits, a, 1), [ProbeKind::Syn]);
    assert_eq!(kinds_on(&hits, a, 11), [ProbeKind::Fin]);
    assert_eq!(kinds_on(&hits, a, 12), [ProbeKind::Null]);
    assert_eq!(kinds_on(&hits, a, 13), [ProbeKind::Xmas]);
    assert!(matches!(
        kinds_on(&hits, a, 16)[..],
        [ProbeKind::UnknownTcp(_)]
    ));
    assert_eq!(kinds_on(&hits, lab.addr(&lab.att6), 14), [ProbeKind::Syn]);
    assert_eq!(kinds_on(&hits, lab.addr(&lab.att6), 15), [ProbeKind::Udp]);
    assert_eq!(kinds_on(&hits, a, 18), [ProbeKind::Ack]);
    assert_eq!(
        kinds_on(&hits, lab.addr(&lab.att6), 19),
        [ProbeKind::Maimon]
    );
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
    let lab = Lab::new();
    let s = Running::start(&lab, &[Mode::Stcp, Mode::Sudp], config(), 4096);
    // 1, 79, 111 and 31337 are trap ports; 2 and 80 are not.
    lab.nmap(&["-sS", "-p", "1,2,79,80,111,31337", &lab.def4]);
    lab.nmap(&["-sU", "-p", "2,7,31337", &lab.def4]);
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
    let lab = Lab::new();
    let s = Running::start(&lab, &[Mode::Atcp, Mode::Audp], config(), 4096);
    lab.nmap(&["-sS", "--badsum", "-p", "21", &lab.def4]);
    lab.nmap(&["-sU", "--badsum", "-p", "22", &lab.def4]);
    lab.nmap(&["-6", "-sS", "--badsum", "-p", "23", &lab.def6]);
    // 8-byte fragments: the first one does not even hold the TCP flags (documented gap).
    lab.nmap(&["-sS", "-f", "-p", "24", &lab.def4]);
    // Control, same sensor: a SYN with a good checksum and no fragmentation is seen.
    lab.nmap(&["-sS", "-p", "25", &lab.def4]);
    let hits = s.stop();
    assert_eq!(kinds_on(&hits, lab.addr(&lab.att4), 25), [ProbeKind::Syn]);
    assert_eq!(hits.len(), 1, "{hits:#?}");
}

#[test]
fn clients_of_a_real_service_and_established_traffic_are_not_flagged() {
    let lab = Lab::new();
    let _svc = lab.defender_echo_service(80);
    let s = Running::start(&lab, &[Mode::Atcp], config(), 4096);
    let targets = [format!("{}:80", lab.def4), format!("[{}]:80", lab.def6)];
    let client = lab.in_att(move || {
        for target in targets {
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
    // Control, same sensor: a SYN to the closed port next to the service is a probe.
    lab.nmap(&["-sS", "-p", "81", &lab.def4]);
    let hits = s.stop();
    assert_eq!(kinds_on(&hits, lab.addr(&lab.att4), 81), [ProbeKind::Syn]);
    assert_eq!(hits.len(), 1, "{hits:#?}");
}

#[test]
fn the_hosts_own_connections_and_their_replies_are_not_flagged() {
    let lab = Lab::new();
    // The attacker runs a service on 600; the defender connects to it from local port 700
    // (a watched port) and also to a closed port (the reply is a RST).
    let peer = lab.attacker_echo_once(600);
    let s = Running::start(&lab, &[Mode::Atcp, Mode::Audp], config(), 4096);
    lab.defender_connects_out(700, 600, 601);
    peer.join().unwrap();
    // Control, same sensor: a SYN from the attacker to the watched port 700 is a probe.
    lab.nmap(&["-sS", "-p", "700", &lab.def4]);
    let hits = s.stop();
    assert_eq!(kinds_on(&hits, lab.addr(&lab.att4), 700), [ProbeKind::Syn]);
    assert_eq!(hits.len(), 1, "{hits:#?}");
}

#[test]
fn udp_answers_to_own_queries_are_not_flagged_even_after_the_socket_closed() {
    let lab = Lab::new();
    // A slow "DNS server" in the attacker namespace: answers 300 ms late.
    let server = lab.attacker_dns_answering_late(Duration::from_millis(300));
    // -sudp's default UDP_PORTS hold 32771, inside the ephemeral range.
    let s = Running::start(&lab, &[Mode::Sudp], config(), 4096);
    lab.defender_queries_dns(32771);
    let from = server.join().unwrap();
    // And an ordinary datagram from a non-service port to the same trap port.
    lab.in_att(move || {
        let other = UdpSocket::bind(("0.0.0.0", 40000)).unwrap();
        other.send_to(b"probe", from).unwrap();
    })
    .join()
    .unwrap();
    let hits = s.stop();
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0].port, 32771);
    assert_eq!(hits[0].kind, ProbeKind::Udp);
}

#[test]
fn a_service_started_or_stopped_later_is_followed_within_a_second() {
    let lab = Lab::new();
    let s = Running::start(&lab, &[Mode::Atcp], config(), 4096);
    lab.nmap(&["-sS", "-p", "81", &lab.def4]);
    assert_eq!(s.take().len(), 1);
    let svc = lab.defender_echo_service(81);
    thread::sleep(Duration::from_millis(1500));
    lab.echo_from_attacker(format!("{}:81", lab.def4).parse().unwrap());
    lab.nmap(&["-sS", "-p", "81", &lab.def4]);
    assert!(s.take().is_empty(), "port 81 has a listener now");
    drop(svc);
    thread::sleep(Duration::from_millis(1500));
    lab.nmap(&["-sS", "-p", "81", &lab.def4]);
    assert_eq!(s.stop().len(), 1, "port 81 is watched again");
}

#[test]
fn reconfigure_follows_new_port_sets_without_reopening() {
    let lab = Lab::new();
    let s = Running::start(&lab, &[Mode::Stcp], config(), 4096);
    lab.nmap(&["-sS", "-p", "1,4444", &lab.def4]);
    let before: Vec<u16> = s.take().iter().map(|h| h.port).collect();
    assert_eq!(before, [1]);
    let mut c = config();
    c.tcp_ports = vec![4444];
    s.ctl.send(SensorControl::Reconfigure(Arc::new(c))).unwrap();
    thread::sleep(Duration::from_millis(500));
    lab.nmap(&["-sS", "-p", "1,4444", &lab.def4]);
    let after: Vec<u16> = s.stop().iter().map(|h| h.port).collect();
    assert_eq!(after, [4444]);
}

#[test]
fn a_full_pipeline_counts_drops_without_blocking_the_sensor() {
    let lab = Lab::new();
    let s = Running::start(&lab, &[Mode::Atcp], config(), 1);
    lab.nmap(&["-sS", "-p", "1-200", &lab.def4]);
    let received = s.take().len();
    let dropped = s.sink.dropped();
    assert_eq!(received, 1);
    assert!(dropped >= 150, "only {dropped} counted as dropped");
    // Still reading: after draining, a new probe gets through.
    lab.nmap(&["-sS", "-p", "300", &lab.def4]);
    let later = s.stop();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].port, 300);
}

#[test]
fn packets_for_other_hosts_are_not_flagged() {
    let lab = Lab::new();
    // The attacker routes 10.77.251.0/24 (no lab uses net 251) through the defender:
    // frames carry the defender's MAC (PACKET_HOST) but the IP destination is not the
    // defender's.
    sh(&[
        "ip",
        "-n",
        &lab.att,
        "route",
        "add",
        "10.77.251.0/24",
        "via",
        &lab.def4,
    ]);
    let s = Running::start(&lab, &[Mode::Atcp, Mode::Audp], config(), 4096);
    lab.nmap(&["-sS", "-p", "1,7", "10.77.251.5"]);
    lab.nmap(&["-sU", "-p", "7", "10.77.251.5"]);
    // Control, same sensor and ports: the same probes to the defender's own address count.
    lab.nmap(&["-sS", "-p", "1", &lab.def4]);
    lab.nmap(&["-sU", "-p", "7", &lab.def4]);
    let hits = s.stop();
    let a = lab.addr(&lab.att4);
    assert_eq!(kinds_on(&hits, a, 1), [ProbeKind::Syn]);
    assert_eq!(kinds_on(&hits, a, 7), [ProbeKind::Udp]);
    assert_eq!(hits.len(), 2, "{hits:#?}");
}

#[test]
fn opening_without_cap_net_raw_fails_clearly() {
    let lab = Lab::new();
    let result = lab
        .in_def(|| {
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
    let lab = Lab::new();
    let s = Running::start(&lab, &[Mode::Atcp], config(), 16);
    let t = Instant::now();
    let hits = s.stop();
    assert!(hits.is_empty());
    assert!(t.elapsed() < Duration::from_secs(2));
}
