//! Answers to this host's own traffic are not probes, and ACK and Maimon scans are: the
//! real daemon in advanced mode, nmap and plain sockets in the lab on either side.
//! Every test has its positive control, so a daemon that saw nothing cannot pass.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::lab::{Daemon, Lab};

/// Log only: these tests look at detections, not at responders.
const LOG_ONLY: &str = "BLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\"\n";

fn start(lab: &Lab, modes: &[&str]) -> Daemon {
    let conf = lab.write_config(LOG_ONLY).display().to_string();
    let mut args = vec!["-c", conf.as_str()];
    args.extend_from_slice(modes);
    Daemon::start(lab, &args)
}

/// The detection lines naming `port` of `proto` (`TCP`/`UDP`).
fn lines_for(d: &Daemon, proto: &str, port: u16) -> Vec<String> {
    let needle = format!("to {proto} port: {port}");
    d.lines()
        .into_iter()
        .filter(|l| l.contains("attackalert:") && l.ends_with(&needle))
        .collect()
}

#[test]
fn ack_and_maimon_scans_are_detected_over_ipv4_and_ipv6() {
    let lab = Lab::new();
    let d = start(&lab, &["-atcp"]);
    let (a4, a6) = (&lab.att4, &lab.att6);
    lab.scan("-sA", "21", false);
    lab.scan("-sM", "22", false);
    lab.scan("-sA", "23", true);
    lab.scan("-sM", "24", true);
    for line in [
        format!("attackalert: TCP ACK scan from host: {a4}/{a4} to TCP port: 21"),
        format!("attackalert: TCP Maimon scan from host: {a4}/{a4} to TCP port: 22"),
        format!("attackalert: TCP ACK scan from host: {a6}/{a6} to TCP port: 23"),
        format!("attackalert: TCP Maimon scan from host: {a6}/{a6} to TCP port: 24"),
    ] {
        d.expect_line(&line, 10);
    }
    // One line per probe: nmap's retry (--max-retries 1) is not needed on an unfiltered port.
    for port in 21..=24 {
        assert_eq!(lines_for(&d, "TCP", port).len(), 1, "{:#?}", d.lines());
    }
}

/// A dual-stack TCP service in the attacker namespace on `port` that, for each of `count`
/// connections, reads `bytes` and echoes them back in pieces, then closes first (so that the
/// defender's side sees a FIN+ACK and the bare ACKs of a bulk transfer). Returns once it
/// listens.
fn attacker_bulk_echo(lab: &Lab, port: u16, count: usize, bytes: usize) -> JoinHandle<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let server = lab.in_att(move || {
        let l = TcpListener::bind(("::", port)).expect("bind the attacker's service");
        let _ = tx.send(());
        for _ in 0..count {
            let (mut c, _) = l.accept().expect("accept");
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = vec![0u8; bytes];
            c.read_exact(&mut buf).expect("read the upload");
            for chunk in buf.chunks(16 * 1024) {
                c.write_all(chunk).expect("echo");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the attacker's service is up");
    server
}

/// A TCP connection from `local` to `remote` (call it in the defender namespace).
fn connect_from(local: SocketAddr, remote: SocketAddr) -> TcpStream {
    let domain = if local.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    sock.set_reuse_address(true).unwrap();
    sock.bind(&local.into()).expect("bind the local port");
    sock.connect_timeout(&remote.into(), Duration::from_secs(5))
        .expect("connect to the attacker's service");
    let c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Uploads `bytes` on `c`, reads them back, waits for the peer to close first, and keeps
/// the half-closed socket `linger` longer before closing it.
fn upload_and_wait_for_the_close(mut c: TcpStream, bytes: usize, linger: Duration) {
    let data = vec![0x5au8; bytes];
    c.write_all(&data).expect("upload");
    let mut back = vec![0u8; bytes];
    c.read_exact(&mut back).expect("echo");
    let mut end = [0u8; 1];
    assert_eq!(c.read(&mut end).expect("the peer's FIN"), 0);
    thread::sleep(linger);
}

/// The defender connects from `local` to `remote`, uploads `bytes`, reads them back and
/// closes after the peer did.
fn defender_uploads(lab: &Lab, local: SocketAddr, remote: SocketAddr, bytes: usize) {
    lab.in_def(move || {
        upload_and_wait_for_the_close(connect_from(local, remote), bytes, Duration::ZERO)
    })
    .join()
    .expect("the defender's client");
}

#[test]
fn own_connections_from_privileged_ports_are_not_taken_for_ack_scans() {
    let lab = Lab::new();
    let server = attacker_bulk_echo(&lab, 600, 2, 256 * 1024);
    let d = start(&lab, &["-atcp"]);
    let (def4, def6) = (lab.addr(&lab.def4), lab.addr(&lab.def6));
    let (att4, att6) = (lab.addr(&lab.att4), lab.addr(&lab.att6));
    // From local ports 700 and 701 (watched): the peer's SYN+ACK, bare ACKs, data and
    // FIN+ACK all come back to a watched port.
    defender_uploads(
        &lab,
        SocketAddr::new(def4, 700),
        SocketAddr::new(att4, 600),
        256 * 1024,
    );
    defender_uploads(
        &lab,
        SocketAddr::new(def6, 701),
        SocketAddr::new(att6, 600),
        256 * 1024,
    );
    server.join().expect("the attacker's service");
    // Control: an ACK scan of the port next to them, from the same peer, is seen; its line
    // also shows that the daemon has handled everything before it.
    lab.scan("-sA", "702", false);
    let a4 = &lab.att4;
    d.expect_line(
        &format!("attackalert: TCP ACK scan from host: {a4}/{a4} to TCP port: 702"),
        10,
    );
    for port in [700, 701] {
        assert!(lines_for(&d, "TCP", port).is_empty(), "{:#?}", d.lines());
    }
    assert_eq!(d.count(" scan from host: "), 1, "{:#?}", d.lines());
}

#[test]
fn a_connection_older_than_the_daemon_is_recognised_by_its_socket() {
    let lab = Lab::new();
    let server = attacker_bulk_echo(&lab, 600, 1, 256 * 1024);
    let (local, remote) = (
        SocketAddr::new(lab.addr(&lab.def4), 705),
        SocketAddr::new(lab.addr(&lab.att4), 600),
    );
    // Connected before the daemon starts: the daemon never saw its SYN, so no flow vouches
    // for the peer's ACKs; the kernel's socket table does. The daemon asks after the segment
    // arrived: the socket is kept a second after the end, as a real client's outlives its
    // last segment by far more than the daemon's delay (which a loaded test machine and a
    // debug build stretch to tens of milliseconds).
    let (up, is_up) = crossbeam_channel::bounded(1);
    let (go, start_upload) = crossbeam_channel::bounded::<()>(1);
    let client = lab.in_def(move || {
        let c = connect_from(local, remote);
        let _ = up.send(());
        start_upload.recv().expect("go");
        upload_and_wait_for_the_close(c, 256 * 1024, Duration::from_secs(1));
    });
    is_up
        .recv_timeout(Duration::from_secs(5))
        .expect("connected");
    let d = start(&lab, &["-atcp"]);
    go.send(()).expect("go");
    client.join().expect("the defender's client");
    server.join().expect("the attacker's service");
    lab.scan("-sM", "706", false);
    let a4 = &lab.att4;
    d.expect_line(
        &format!("attackalert: TCP Maimon scan from host: {a4}/{a4} to TCP port: 706"),
        10,
    );
    assert!(lines_for(&d, "TCP", 705).is_empty(), "{:#?}", d.lines());
}

/// A UDP "DNS server" on port 53 of the attacker (both families) that answers each of
/// `count` queries as late as the query asks (its text: a number of milliseconds); returns
/// once it is bound.
fn attacker_dns(lab: &Lab, count: usize) -> JoinHandle<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let server = lab.in_att(move || {
        let s = UdpSocket::bind(("::", 53)).expect("bind 53"); // dual stack
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = tx.send(());
        let mut answers = Vec::new();
        for _ in 0..count {
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf).expect("a query");
            let delay = String::from_utf8_lossy(&buf[..n]).parse().expect("a delay");
            let s = s.try_clone().expect("clone");
            answers.push(thread::spawn(move || {
                thread::sleep(Duration::from_millis(delay));
                s.send_to(&buf[..n], from).expect("answer");
            }));
        }
        for a in answers {
            a.join().expect("answer sent");
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the DNS server is up");
    server
}

/// How the defender's query socket lives: milliseconds from bind to query, from query to
/// close, and how late the attacker answers.
struct Query {
    before: u64,
    after: u64,
    answer_after: u64,
}

/// The defender binds `local`, sends one query to the attacker's port 53 as `q` says, then
/// closes the socket. Runs in the background.
fn defender_query(lab: &Lab, local: SocketAddr, server: IpAddr, q: Query) -> JoinHandle<()> {
    lab.in_def(move || {
        let s = UdpSocket::bind(local).expect("bind the query socket");
        thread::sleep(Duration::from_millis(q.before));
        s.send_to(q.answer_after.to_string().as_bytes(), (server, 53))
            .expect("send the query");
        thread::sleep(Duration::from_millis(q.after));
    })
}

#[test]
fn answers_to_own_udp_queries_are_never_flagged_and_a_scan_from_port_53_is() {
    let lab = Lab::new();
    let dns = attacker_dns(&lab, 4);
    let d = start(&lab, &["-audp"]);
    let (def4, def6) = (lab.addr(&lab.def4), lab.addr(&lab.def6));
    let (att4, att6) = (lab.addr(&lab.att4), lab.addr(&lab.att6));
    let q = |before, after, answer_after| Query {
        before,
        after,
        answer_after,
    };
    // Answers later than 1.5 s come after the listener poll has seen the socket gone.
    let queries = [
        // Held 1 s: the answer comes while the socket is open.
        defender_query(&lab, SocketAddr::new(def4, 700), att4, q(0, 1000, 300)),
        // Closed at once: the answer comes after the socket is gone.
        defender_query(&lab, SocketAddr::new(def4, 701), att4, q(0, 0, 300)),
        defender_query(&lab, SocketAddr::new(def6, 702), att6, q(0, 0, 1500)),
        // Opened 1.5 s before the query (the listener poll has seen it and stopped watching
        // the port), closed at once: the late answer is still no probe.
        defender_query(&lab, SocketAddr::new(def4, 703), att4, q(1500, 0, 1500)),
    ];
    for q in queries {
        q.join().expect("the defender's query");
    }
    dns.join().expect("the DNS server");
    thread::sleep(Duration::from_millis(500));
    // Control: nmap's UDP scan from source port 53 (1.2-era rules took any datagram from
    // port 53 for an answer).
    lab.nmap(&["-sU", "-g", "53", "-p", "704", &lab.def4]);
    let a4 = &lab.att4;
    d.expect_line(
        &format!("attackalert: UDP scan from host: {a4}/{a4} to UDP port: 704"),
        10,
    );
    for port in 700..=703 {
        assert!(lines_for(&d, "UDP", port).is_empty(), "{:#?}", d.lines());
    }
}

#[test]
fn a_datagram_to_a_socket_opened_within_the_last_second_is_not_a_probe() {
    let lab = Lab::new();
    let d = start(&lab, &["-audp"]);
    let def4 = lab.addr(&lab.def4);
    // The defender opens a service on UDP port 705 and a client sends to it at once,
    // before the listener poll can have seen the socket; the socket reads it and stays
    // open a while, as a service does (the daemon asks the kernel after the datagram was
    // delivered: a socket closed by then is gone).
    let (tx, rx) = crossbeam_channel::bounded(1);
    let service = lab.in_def(move || {
        let s = UdpSocket::bind((def4, 705)).expect("bind 705");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = tx.send(());
        let mut buf = [0u8; 64];
        let n = s.recv_from(&mut buf).expect("the client's datagram").0;
        thread::sleep(Duration::from_secs(1));
        n
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("bound");
    lab.in_att(move || {
        let c = UdpSocket::bind(("0.0.0.0", 40000)).expect("bind the client");
        c.send_to(b"hello", (def4, 705)).expect("send");
    })
    .join()
    .expect("the client");
    assert_eq!(service.join().expect("the service"), 5);
    // Control: the same datagram to the closed port next to it is a probe.
    lab.in_att(move || {
        let c = UdpSocket::bind(("0.0.0.0", 40001)).expect("bind the client");
        c.send_to(b"hello", (def4, 706)).expect("send");
    })
    .join()
    .expect("the prober");
    let a4 = &lab.att4;
    d.expect_line(
        &format!("attackalert: UDP scan from host: {a4}/{a4} to UDP port: 706"),
        10,
    );
    assert!(lines_for(&d, "UDP", 705).is_empty(), "{:#?}", d.lines());
}
