//! Test lab: a defender and an attacker network namespace joined by a veth pair, with
//! addresses that exist only there (10.77.N.0/24, fd77:N::/64), and the real daemon binary
//! started inside the defender. Everything is torn down on drop, also when a test fails.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static NEXT_LAB: AtomicU32 = AtomicU32::new(1);

/// Runs a command, panicking with its output when it fails (set-up steps only).
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    succeeded(args, out)
}

/// Returns the output of `args`, or panics with it when the command failed.
fn succeeded(args: &[&str], out: Output) -> Output {
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Adds an IPv4 /24 and an IPv6 /64 address to `dev` in `ns` (no duplicate address
/// detection: the address is usable at once).
fn add_addrs(ns: &str, dev: &str, a4: &str, a6: &str) {
    for (addr, extra) in [
        (format!("{a4}/24"), None),
        (format!("{a6}/64"), Some("nodad")),
    ] {
        let mut args = vec!["ip", "-n", ns, "addr", "add", &addr, "dev", dev];
        args.extend(extra);
        sh(&args);
    }
}

/// Runs `f` on a new thread inside the named network namespace (setns affects only that
/// thread).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace fd; setns changes only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// The repository's copy of `rel` (plugins, Lua library, test scripts).
pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Writes an executable fake `sendmail` into `dir` that appends its arguments and the
/// message to a spool file; returns (script, spool).
pub fn fake_sendmail(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("sendmail");
    let spool = dir.join("spool");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"ARGS: $*\" >> '{0}'\ncat >> '{0}'\necho '-----' >> '{0}'\n",
            spool.display()
        ),
    )
    .expect("write fake sendmail");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (script, spool)
}

/// A dual-stack TCP service in the defender namespace (a thread of the test) that echoes
/// what each client sends until the guard drops.
pub struct EchoService {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EchoService {
    fn start(lab: &Lab, port: u16) -> EchoService {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = lab.in_def(move || {
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
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("service up");
        EchoService {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Two namespaces and a temp dir for the daemon's files.
pub struct Lab {
    /// Defender namespace name (the daemon runs here).
    pub def: String,
    /// Attacker namespace name (nmap runs here).
    pub att: String,
    /// Defender IPv4 address.
    pub def4: String,
    /// Attacker IPv4 address.
    pub att4: String,
    /// Defender IPv6 address.
    pub def6: String,
    /// Attacker IPv6 address.
    pub att6: String,
    /// The attacker's end of the veth (for `nmap -e` with a spoofed `-S` source).
    pub att_dev: String,
    /// The defender's end of the veth (for routes to more attacker networks).
    pub def_dev: String,
    /// The third octet of the IPv4 net and the second group of the IPv6 one.
    net: u32,
    /// Temp dir holding config, history, hosts.deny, syslog socket.
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// Creates the namespaces and the link between them.
    pub fn new() -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the end-to-end tests need root (network namespaces, raw sockets); \
             CI runs them as root after scripts/setup-deps.sh"
        );
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let net = (std::process::id() % 200 + n) % 250 + 1;
        let (vd, va) = (format!("vd{tag}"), format!("va{tag}"));
        let lab = Lab {
            def: format!("psd{tag}"),
            att: format!("psa{tag}"),
            def4: format!("10.77.{net}.1"),
            att4: format!("10.77.{net}.2"),
            def6: format!("fd77:{net}::1"),
            att6: format!("fd77:{net}::2"),
            att_dev: va.clone(),
            def_dev: vd.clone(),
            net,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        sh(&["ip", "netns", "add", &lab.def]);
        sh(&["ip", "netns", "add", &lab.att]);
        sh(&[
            "ip", "link", "add", &vd, "type", "veth", "peer", "name", &va,
        ]);
        sh(&["ip", "link", "set", &vd, "netns", &lab.def]);
        sh(&["ip", "link", "set", &va, "netns", &lab.att]);
        for (ns, dev, a4, a6) in [
            (&lab.def, &vd, &lab.def4, &lab.def6),
            (&lab.att, &va, &lab.att4, &lab.att6),
        ] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            add_addrs(ns, dev, a4, a6);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        lab
    }

    /// Gives the attacker one more address of each family (`10.77.N.host`, `fd77:N::host`,
    /// host 3 and up), so that each scan of a test can come from its own source: the
    /// daemon then blocks, logs and records each one separately. Returns (IPv4, IPv6).
    pub fn add_attacker_addrs(&self, host: u8) -> (String, String) {
        assert!(host > 2, "hosts 1 and 2 are the lab's own addresses");
        let a4 = format!("10.77.{}.{host}", self.net);
        let a6 = format!("fd77:{}::{host}", self.net);
        add_addrs(&self.att, &self.att_dev, &a4, &a6);
        (a4, a6)
    }

    /// Joins this lab's defender to `other`'s defender with a veth pair, addresses
    /// 10.79.N.1/24 here and 10.79.N.2/24 there (N: this lab's net), so that a service on
    /// one defender (a shared CrowdSec LAPI) is reachable from the other. Returns (here,
    /// there). Gone with the namespaces.
    pub fn link_defenders(&self, other: &Lab) -> (String, String) {
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let (here_dev, there_dev) = (format!("vl{tag}"), format!("vm{tag}"));
        sh(&[
            "ip", "link", "add", &here_dev, "type", "veth", "peer", "name", &there_dev,
        ]);
        sh(&["ip", "link", "set", &here_dev, "netns", &self.def]);
        sh(&["ip", "link", "set", &there_dev, "netns", &other.def]);
        let (here, there) = (
            format!("10.79.{}.1", self.net),
            format!("10.79.{}.2", self.net),
        );
        for (ns, dev, addr) in [
            (&self.def, &here_dev, &here),
            (&other.def, &there_dev, &there),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        (here, there)
    }

    /// The lab's number: the third octet of its IPv4 net (10.77.N.0/24) and the second group
    /// of its IPv6 one (fd77:N::/64), for tests that name other nets of the lab's own.
    pub fn net(&self) -> u32 {
        self.net
    }

    /// A path inside the lab's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a program in the attacker namespace and returns its output (bounded in time).
    pub fn attack(&self, args: &[&str]) -> Output {
        let mut cmd = vec!["timeout", "120", "ip", "netns", "exec", &self.att];
        cmd.extend_from_slice(args);
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .expect("cannot run attacker command")
    }

    /// Runs nmap in the attacker namespace with `args` after the options every test wants
    /// (no DNS, no ping, one retry, aggressive timing: scans stay quick), and returns its
    /// output; panics with nmap's message when it fails.
    pub fn nmap(&self, args: &[&str]) -> Output {
        let mut all = vec!["nmap", "-n", "-Pn", "--max-retries", "1", "-T4"];
        all.extend_from_slice(args);
        succeeded(&all, self.attack(&all))
    }

    /// Runs nmap from the attacker against the defender: `kind` is the scan flag (`-sT`,
    /// `-sU`, `-sS`…), over IPv6 when `v6`.
    pub fn scan(&self, kind: &str, ports: &str, v6: bool) -> Output {
        if v6 {
            self.nmap(&["-6", kind, "-p", ports, &self.def6])
        } else {
            self.nmap(&[kind, "-p", ports, &self.def4])
        }
    }

    /// True when an HTTP GET of `url` from the attacker namespace succeeds (2 s timeout).
    pub fn fetch(&self, url: &str) -> bool {
        self.attack(&[
            "python3",
            "-c",
            &format!("import urllib.request;urllib.request.urlopen('{url}',timeout=2).read()"),
        ])
        .status
        .success()
    }

    /// Runs `f` on a new thread that entered the defender namespace (in-process sensors,
    /// sockets); the test's own threads stay where they are.
    pub fn in_def<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        in_netns(&self.def, f)
    }

    /// Runs `f` on a new thread that entered the attacker namespace.
    pub fn in_att<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        in_netns(&self.att, f)
    }

    /// A TCP service in the attacker namespace on `port` that echoes one 4-byte message of
    /// one connection, then ends; returns once it listens.
    pub fn attacker_echo_once(&self, port: u16) -> JoinHandle<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let peer = self.in_att(move || {
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind the attacker's service");
            let _ = tx.send(());
            let (mut c, _) = l.accept().expect("accept");
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).expect("read");
            c.write_all(&buf).expect("write");
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the attacker's service is up");
        peer
    }

    /// A slow "DNS server" on UDP port 53 in the attacker namespace: answers one query
    /// `delay` late, then ends; returns once it is bound. The thread yields the query's
    /// source.
    pub fn attacker_dns_answering_late(&self, delay: Duration) -> JoinHandle<SocketAddr> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let server = self.in_att(move || {
            let s = UdpSocket::bind(("0.0.0.0", 53)).expect("bind 53");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = tx.send(());
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf).expect("a query");
            std::thread::sleep(delay);
            s.send_to(&buf[..n], from).expect("answer");
            from
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the DNS server is up");
        server
    }

    /// The defender's own TCP traffic: a connection from local port `from_port` to the
    /// attacker's `echo_port` (one message echoed), and a connection attempt to the
    /// attacker's closed `closed_port` (answered by a RST).
    pub fn defender_connects_out(&self, from_port: u16, echo_port: u16, closed_port: u16) {
        let (def4, att4) = (self.addr(&self.def4), self.addr(&self.att4));
        self.in_def(move || {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.set_reuse_address(true).unwrap();
            sock.bind(&SocketAddr::new(def4, from_port).into())
                .expect("bind the local port");
            let peer = SocketAddr::new(att4, echo_port);
            sock.connect_timeout(&peer.into(), Duration::from_secs(5))
                .expect("connect to the attacker's service");
            let mut c: TcpStream = sock.into();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).expect("echo");
            let closed = SocketAddr::new(att4, closed_port);
            assert!(TcpStream::connect_timeout(&closed, Duration::from_secs(5)).is_err());
        })
        .join()
        .expect("the defender's client");
    }

    /// The defender sends a DNS query to the attacker from local UDP port `from_port`
    /// (0: ephemeral) and closes the socket at once, so that the answer finds no socket.
    pub fn defender_queries_dns(&self, from_port: u16) {
        let (def4, att4) = (self.addr(&self.def4), self.addr(&self.att4));
        self.in_def(move || {
            let q = UdpSocket::bind((def4, from_port)).expect("bind the query socket");
            q.send_to(b"query", (att4, 53)).expect("send the query");
        })
        .join()
        .expect("the defender's query");
    }

    /// One of the lab's address strings, parsed.
    pub fn addr(&self, text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|e| panic!("lab address {text}: {e}"))
    }

    /// Starts an [`EchoService`] on `port` in the defender namespace; returns once it listens.
    pub fn defender_echo_service(&self, port: u16) -> EchoService {
        EchoService::start(self, port)
    }

    /// Connects from the attacker namespace to `addr`, sends a word and reads it back.
    pub fn echo_from_attacker(&self, addr: SocketAddr) {
        self.in_att(move || {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            c.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            c.read_exact(&mut back)
                .unwrap_or_else(|e| panic!("echo from {addr}: {e}"));
            assert_eq!(&back, b"hello");
        })
        .join()
        .expect("attacker client");
    }

    /// Waits (5 s at most) until a TCP socket listens on `port` in the defender namespace,
    /// so that a service started in the background is really up before the test goes on.
    pub fn wait_tcp_listener(&self, port: u16) {
        let filter = format!("sport = :{port}");
        for _ in 0..100 {
            let out = self.defend(&["ss", "-Hltn", &filter]);
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nothing listens on TCP port {port} in the defender namespace after 5 s");
    }

    /// Runs a program in the defender namespace (set-up and inspection).
    pub fn defend(&self, args: &[&str]) -> Output {
        let mut cmd = vec!["timeout", "60", "ip", "netns", "exec", &self.def];
        cmd.extend_from_slice(args);
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .expect("cannot run defender command")
    }

    /// Runs a program in the defender namespace and returns its stdout; panics with its
    /// stderr when it fails (inspection of rules and sets).
    pub fn defend_stdout(&self, args: &[&str]) -> String {
        let out = succeeded(args, self.defend(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a background program in the defender namespace, killed when the guard drops.
    pub fn spawn_in_def(&self, args: &[&str]) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.def])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in defender");
        ChildGuard(child)
    }

    /// Routes in the defender namespace, both families.
    pub fn def_routes(&self) -> String {
        let v4 = self.defend(&["ip", "route", "show"]);
        let v6 = self.defend(&["ip", "-6", "route", "show"]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&v4.stdout),
            String::from_utf8_lossy(&v6.stdout)
        )
    }

    /// A config with the lab's file paths after the given extra lines; the extra lines come
    /// first so that they win (the first occurrence of a key wins).
    pub fn config_text(&self, extra: &str) -> String {
        format!(
            "{extra}\n\
             IGNORE_FILE=\"{ignore}\"\n\
             HISTORY_FILE=\"{history}\"\n\
             BLOCKED_FILE=\"{blocked}\"\n\
             HOSTS_DENY_FILE=\"{deny}\"\n\
             BLOCK_STATE_FILE=\"{state}\"\n\
             CONTROL_SOCKET=\"{socket}\"\n\
             RESOLVE_HOST=\"0\"\n\
             SCAN_TRIGGER=\"0\"\n",
            ignore = self.path("portsentry.ignore").display(),
            history = self.path("portsentry.history").display(),
            blocked = self.path("portsentry.blocked").display(),
            deny = self.path("hosts.deny").display(),
            state = self.path("portsentry.state").display(),
            socket = self.path("ctl.sock").display(),
        )
    }

    /// Writes [`Lab::config_text`] as the lab's `portsentry.conf` (and an ignore file if
    /// there is none yet).
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let conf = self.path("portsentry.conf");
        std::fs::write(&conf, self.config_text(extra)).expect("write config");
        if !self.path("portsentry.ignore").exists() {
            std::fs::write(self.path("portsentry.ignore"), "127.0.0.1/32\n0.0.0.0\n")
                .expect("write ignore");
        }
        conf
    }

    /// Runs the control client (`portsentry <args>`) against the lab daemon's socket.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let sock = self.path("ctl.sock");
        Command::new("timeout")
            .arg("120")
            .arg(binary())
            .args(args)
            .arg("--socket")
            .arg(&sock)
            .output()
            .expect("run the control client")
    }

    /// Runs the control client and returns its stdout; panics with its output on failure.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "portsentry {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Opens a TCP connection from the attacker namespace, from source address `src`, to
    /// the defender's `port` (IPv4 or IPv6 by `src`); true when it was accepted within 2 s.
    pub fn connect_from(&self, src: &str, port: u16) -> bool {
        let src: IpAddr = self.addr(src);
        let dst = if src.is_ipv4() {
            self.addr(&self.def4)
        } else {
            self.addr(&self.def6)
        };
        self.in_att(move || {
            let domain = if src.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
            sock.bind(&SocketAddr::new(src, 0).into())
                .expect("bind source");
            sock.connect_timeout(&SocketAddr::new(dst, port).into(), Duration::from_secs(2))
                .is_ok()
        })
        .join()
        .expect("attacker client")
    }

    /// Reads a file of the lab, empty when missing.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes still inside the namespaces die with them.
        for ns in [&self.def, &self.att] {
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Kills a background child on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real daemon binary running in the defender namespace, with its stderr and syslog
/// output collected.
pub struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    syslog: Arc<Mutex<Vec<String>>>,
    /// Exit status once the daemon ended.
    pub exited: Option<std::process::ExitStatus>,
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portsentry")
}

impl Daemon {
    /// Starts `portsentry <args>` in the defender namespace with a private syslog socket, and
    /// waits until it says it is active (or exits).
    pub fn start(lab: &Lab, args: &[&str]) -> Daemon {
        let d = Daemon::spawn(lab, args);
        d.expect_line("adminalert: PortSentry is now active and listening.", 20);
        d
    }

    /// Starts without waiting for the active line.
    pub fn spawn(lab: &Lab, args: &[&str]) -> Daemon {
        Daemon::spawn_with(lab, &[], &[], args)
    }

    /// Starts with extra environment variables (`NOTIFY_SOCKET`…) and with the daemon
    /// command put after `wrapper` (e.g. `unshare --mount sh -c '…; exec "$@"' sh`), without
    /// waiting for the active line.
    pub fn spawn_with(lab: &Lab, wrapper: &[&str], env: &[(&str, &str)], args: &[&str]) -> Daemon {
        Daemon::spawn_wrapped(lab, wrapper, &[], env, args)
    }

    /// [`Daemon::spawn_with`] with a second wrapper inside the defender namespace, right
    /// before the binary (`ip netns exec NS <inner…> portsentry …`): a sandbox such as
    /// `bwrap …` that must be set up in the namespace the daemon runs in.
    pub fn spawn_wrapped(
        lab: &Lab,
        wrapper: &[&str],
        inner: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Daemon {
        let sock_path = lab.path("log.sock");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).expect("bind syslog socket");
        sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let syslog = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&syslog);
        let sock_for_thread = sock;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                match sock_for_thread.recv(&mut buf) {
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        if Arc::strong_count(&sink) == 1 {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        let mut child = Command::new("timeout")
            .arg("300")
            .args(wrapper)
            .args(["ip", "netns", "exec", &lab.def])
            .args(inner)
            .arg(binary())
            .args(args)
            .envs(env.iter().copied())
            .arg("--syslog-socket")
            .arg(&sock_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("stderr pipe");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            stderr,
            syslog,
            exited: None,
        }
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Every syslog datagram so far.
    pub fn syslog(&self) -> Vec<String> {
        self.syslog.lock().unwrap().clone()
    }

    /// The first syslog datagram containing `needle`, found without copying the others
    /// (benchmarks poll logs of 100,000 lines).
    pub fn syslog_line(&self, needle: &str) -> Option<String> {
        self.syslog
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Waits for a stderr line containing `needle`; panics with the log on timeout.
    pub fn expect_line(&self, needle: &str, secs: u64) -> String {
        match self.wait_line(needle, secs) {
            Some(l) => l,
            None => panic!(
                "no line containing {needle:?} within {secs}s; log:\n{}",
                self.lines().join("\n")
            ),
        }
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_line(&self, needle: &str, secs: u64) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Number of stderr lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits for the process to exit on its own (start-up failures).
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
                // Let the reader thread pick up the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends a signal to the daemon (through `ip netns exec`, which execs it: same pid).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.daemon_pid().to_string()])
            .status();
    }

    /// The daemon's own pid (not the `timeout` wrapper's).
    pub fn daemon_pid(&self) -> u32 {
        // `timeout` is the direct child; the daemon is its only child.
        let out = Command::new("pgrep")
            .args(["-P", &self.child.id().to_string()])
            .output()
            .ok();
        out.and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
        })
        .unwrap_or(self.child.id())
    }

    /// Asks the daemon to stop and waits for it.
    pub fn stop(&mut self) {
        self.signal("TERM");
        if self.wait_exit(10).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.signal("KILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
