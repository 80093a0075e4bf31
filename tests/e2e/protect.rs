//! Protected addresses, end to end: the real daemon in advanced mode, blocking on the first
//! probe, and forged nmap SYN scans "from" the defender's gateways, its nameservers and the
//! peer of an established session. Those are logged as protected, once, and never blocked;
//! the same scan from an unprotected address in the same test is blocked (the control).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::lab::{Daemon, Lab};

/// Blocks on the first probe by an unreachable route in the defender namespace.
const BLOCKING: &str = "SCAN_TRIGGER=\"0\"\n\
                        BLOCK_TCP=\"1\"\n\
                        KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n";

/// The ports every forged scan probes: several, so that "logged once" means something.
const PORTS: &str = "1-3";

/// Writes the lab's config with `extra` first and starts `-atcp` on it.
fn start(lab: &Lab, extra: &str) -> Daemon {
    let conf = lab.write_config(&format!("{extra}\n{BLOCKING}"));
    Daemon::start(lab, &["-c", &conf.display().to_string(), "-atcp"])
}

/// A SYN scan of [`PORTS`] sent from the attacker namespace with source `src`.
fn forged_scan(lab: &Lab, src: &str) {
    let target = if src.contains(':') {
        &lab.def6
    } else {
        &lab.def4
    };
    let mut args = vec!["-sS", "-S", src, "-e", &lab.att_dev, "-p", PORTS, target];
    if src.contains(':') {
        args.insert(0, "-6");
    }
    lab.nmap(&args);
}

/// Waits until the control source is blocked: its probes came after the ones sent before
/// it, so by then the daemon has judged those too.
fn expect_blocked(d: &Daemon, lab: &Lab, src: &str) {
    d.expect_line(
        &format!(
            "attackalert: Host {src} has been blocked via dropped route using command: \
             \"/sbin/ip route add unreachable {src}\""
        ),
        10,
    );
    assert!(
        lab.def_routes().contains(&format!("unreachable {src} ")),
        "no route for the control {src}:\n{}",
        lab.def_routes()
    );
    // The history line follows the journal commit, a moment after the responder's line.
    let wanted = format!(" Host: {src}/{src} Port: ");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !lab.read("portsentry.history").contains(&wanted) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        lab.read("portsentry.history").contains(&wanted),
        "no history line for the control {src}"
    );
}

/// `src` was logged as protected for `reason` exactly once, and not blocked: no detection
/// line, no route, no history line.
fn expect_protected_once(d: &Daemon, lab: &Lab, src: &str, reason: &str) {
    let line = format!(
        "attackalert: Host {src} is protected ({reason}) and will not be blocked: \
         TCP SYN/Normal scan to TCP port "
    );
    d.expect_line(&line, 10);
    assert_eq!(d.count(&line), 1, "logged once: {:#?}", d.lines());
    assert_eq!(d.count(&format!("Host {src} is protected")), 1);
    assert_eq!(
        d.count(&format!("from host: {src}/")),
        0,
        "{:#?}",
        d.lines()
    );
    assert_eq!(d.count(&format!("Host {src} has been blocked")), 0);
    let routes = lab.def_routes();
    assert!(
        !routes.contains(&format!("unreachable {src} ")),
        "{src} blocked:\n{routes}"
    );
    let history = lab.read("portsentry.history");
    assert!(
        !history.contains(&format!("/{src} Port: ")),
        "{src} in the history:\n{history}"
    );
}

#[test]
fn forged_scans_from_the_gateways_and_nameservers_are_logged_as_protected_never_blocked() {
    let lab = Lab::new();
    let (gw4, gw6) = lab.add_attacker_addrs(3);
    let (ns4, ns6) = lab.add_attacker_addrs(4);
    let (c4, c6) = lab.add_attacker_addrs(5);
    for args in [
        vec!["ip", "route", "add", "default", "via", &gw4],
        vec!["ip", "-6", "route", "add", "default", "via", &gw6],
    ] {
        let out = lab.defend(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let resolv = lab.path("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "# written by the test\nsearch lab.example\nnameserver {ns4}\n\
             ; nameserver {c4}\nnameserver {ns6}\noptions ndots:1 timeout:1\n"
        ),
    )
    .expect("write resolv.conf");
    let d = start(&lab, &format!("RESOLV_CONF=\"{}\"", resolv.display()));
    d.expect_line(
        &format!(
            "adminalert: Protected addresses, never blocked: default gateway(s): {gw4}, {gw6}; \
             other gateway(s): none; nameserver(s): {ns4}, {ns6}"
        ),
        5,
    );
    thread::scope(|s| {
        for src in [&gw4, &gw6, &ns4, &ns6] {
            let lab = &lab;
            s.spawn(move || forged_scan(lab, src));
        }
    });
    // The controls: the same scans from addresses nothing protects.
    forged_scan(&lab, &c4);
    forged_scan(&lab, &c6);
    expect_blocked(&d, &lab, &c4);
    expect_blocked(&d, &lab, &c6);
    for (src, reason) in [
        (&gw4, "default gateway"),
        (&gw6, "default gateway"),
        (&ns4, "nameserver"),
        (&ns6, "nameserver"),
    ] {
        expect_protected_once(&d, &lab, src, reason);
    }
}

#[test]
fn resolv_conf_edits_are_followed_and_a_reload_can_turn_resolvers_off() {
    let lab = Lab::new();
    let (old, _) = lab.add_attacker_addrs(3);
    let (new, _) = lab.add_attacker_addrs(4);
    let resolv = lab.path("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {old}\n")).expect("write resolv.conf");
    let extra = format!("RESOLV_CONF=\"{}\"", resolv.display());
    let d = start(&lab, &extra);
    d.expect_line(&format!("nameserver(s): {old}"), 5);
    // DHCP hands out another server: the file is rewritten by rename, as resolvconf does.
    let tmp = lab.path("resolv.conf.new");
    std::fs::write(&tmp, format!("nameserver {new}\n")).expect("write new resolv.conf");
    std::fs::rename(&tmp, &resolv).expect("rename resolv.conf");
    d.expect_line(&format!("nameserver(s): {new}"), 5);
    forged_scan(&lab, &new);
    // The old server is no longer listed: it is blocked like anyone.
    forged_scan(&lab, &old);
    expect_blocked(&d, &lab, &old);
    expect_protected_once(&d, &lab, &new, "nameserver");
    // PROTECT_RESOLVERS="0" by a reload (the config watcher sees the save).
    let conf = lab.path("portsentry.conf");
    let text = lab.config_text(&format!("PROTECT_RESOLVERS=\"0\"\n{extra}\n{BLOCKING}"));
    std::fs::write(&conf, text).expect("rewrite config");
    d.expect_line(
        "adminalert: configuration reloaded, generation 2 in force",
        10,
    );
    forged_scan(&lab, &new);
    expect_blocked(&d, &lab, &new);
}

/// An admin's session: a TCP connection from `src` in the attacker namespace to a service
/// on `port` in the defender namespace, held open until [`Session::still_alive`].
struct Session {
    check: Sender<()>,
    client: Option<JoinHandle<bool>>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl Session {
    fn open(lab: &Lab, src: &str, port: u16) -> Session {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (up_tx, up) = bounded(1);
        let server = lab.in_def(move || {
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind the service");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = up_tx.send(());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((mut c, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                c.set_nonblocking(false).expect("blocking");
                c.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        up.recv_timeout(Duration::from_secs(5)).expect("service up");
        let (check, checked): (Sender<()>, Receiver<()>) = bounded(1);
        let (connected_tx, connected) = bounded(1);
        let src: IpAddr = lab.addr(src);
        let dst = SocketAddr::new(lab.addr(&lab.def4), port);
        let client = lab.in_att(move || {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.bind(&SocketAddr::new(src, 0).into()).expect("bind");
            sock.connect_timeout(&dst.into(), Duration::from_secs(3))
                .expect("connect to the service");
            let mut c: TcpStream = sock.into();
            c.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let echo = |c: &mut TcpStream, word: &[u8]| {
                let mut back = vec![0u8; word.len()];
                c.write_all(word).is_ok() && c.read_exact(&mut back).is_ok() && back == word
            };
            let first = echo(&mut c, b"login");
            let _ = connected_tx.send(first);
            if checked.recv_timeout(Duration::from_secs(60)).is_err() {
                return false;
            }
            echo(&mut c, b"still here")
        });
        assert!(
            connected
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or(false),
            "the session did not start"
        );
        Session {
            check,
            client: Some(client),
            stop,
            server: Some(server),
        }
    }

    /// Whether the session still carries data; ends it.
    fn still_alive(mut self) -> bool {
        let _ = self.check.send(());
        self.client
            .take()
            .is_some_and(|c| c.join().unwrap_or(false))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.check.send(());
        if let Some(c) = self.client.take() {
            let _ = c.join();
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

#[test]
fn forged_scan_carrying_an_established_peers_address_does_not_cut_its_session() {
    let lab = Lab::new();
    let (admin, _) = lab.add_attacker_addrs(3);
    let (control, _) = lab.add_attacker_addrs(4);
    let d = start(&lab, "");
    // A service outside the watched ports (advanced mode watches 1-1023), so that the
    // session's own SYN is no probe.
    let session = Session::open(&lab, &admin, 2222);
    // The daemon reads sessions every 2 s: let it see this one before the forged probes.
    thread::sleep(Duration::from_millis(2700));
    forged_scan(&lab, &admin);
    forged_scan(&lab, &control);
    expect_blocked(&d, &lab, &control);
    expect_protected_once(&d, &lab, &admin, "established session to TCP port 2222");
    assert!(session.still_alive(), "the admin's session was cut");
}
