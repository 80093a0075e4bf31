//! Test lab: a defender and an attacker network namespace joined by a veth pair, with
//! addresses that exist only there (10.77.N.0/24, fd77:N::/64), and the real daemon binary
//! started inside the defender. Everything is torn down on drop, also when a test fails.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT_LAB: AtomicU32 = AtomicU32::new(1);

/// Runs a command, panicking with its output when it fails (set-up steps only).
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
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
    /// Temp dir holding config, history, hosts.deny, syslog socket.
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// Creates the namespaces and the link between them.
    pub fn new() -> Lab {
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let net = (std::process::id() % 200 + n) % 250 + 1;
        let lab = Lab {
            def: format!("psd{tag}"),
            att: format!("psa{tag}"),
            def4: format!("10.77.{net}.1"),
            att4: format!("10.77.{net}.2"),
            def6: format!("fd77:{net}::1"),
            att6: format!("fd77:{net}::2"),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        sh(&["ip", "netns", "add", &lab.def]);
        sh(&["ip", "netns", "add", &lab.att]);
        let (vd, va) = (format!("vd{tag}"), format!("va{tag}"));
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
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a4}/24"),
                "dev",
                dev,
            ]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        lab
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

    /// Runs nmap from the attacker against the defender: `kind` is the scan flag (`-sT`,
    /// `-sU`, `-sS`…), over IPv6 when `v6`. One try per probe keeps scans quick.
    pub fn scan(&self, kind: &str, ports: &str, v6: bool) -> Output {
        let target = if v6 { &self.def6 } else { &self.def4 };
        let mut args = vec![
            "nmap",
            "-n",
            "-Pn",
            kind,
            "-p",
            ports,
            "--max-retries",
            "1",
            target,
        ];
        if v6 {
            args.insert(1, "-6");
        }
        self.attack(&args)
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

    /// Writes the daemon's config with the lab's file paths plus the given extra lines.
    /// The extra lines come first so that they win (first occurrence of a key wins).
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let conf = self.path("portsentry.conf");
        let text = format!(
            "{extra}\n\
             IGNORE_FILE=\"{ignore}\"\n\
             HISTORY_FILE=\"{history}\"\n\
             BLOCKED_FILE=\"{blocked}\"\n\
             HOSTS_DENY_FILE=\"{deny}\"\n\
             RESOLVE_HOST=\"0\"\n\
             SCAN_TRIGGER=\"0\"\n",
            ignore = self.path("portsentry.ignore").display(),
            history = self.path("portsentry.history").display(),
            blocked = self.path("portsentry.blocked").display(),
            deny = self.path("hosts.deny").display(),
        );
        std::fs::write(&conf, text).expect("write config");
        if !self.path("portsentry.ignore").exists() {
            std::fs::write(self.path("portsentry.ignore"), "127.0.0.1/32\n0.0.0.0\n")
                .expect("write ignore");
        }
        conf
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
            .args(["300", "ip", "netns", "exec", &lab.def, binary()])
            .args(args)
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

    fn daemon_pid(&self) -> u32 {
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
