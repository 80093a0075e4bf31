//! The systemd unit's sandbox, emulated: every shipped plugin (`plugins/*.lua`) run end to
//! end by the real daemon under what `conf/portsentry.service` sets up — the whole file
//! system read-only but for the unit's writable paths, `no_new_privs`, and the unit's
//! capability set — with bubblewrap (`bwrap`, from scripts/setup-deps.sh) inside the lab's
//! defender namespace. The sandbox is read from the unit file itself, so a unit that loses
//! a path a plugin needs fails here (the negative controls below take lines out).
//!
//! What the emulation maps: `ProtectSystem=strict` is a read-only bind of `/`;
//! `ProtectHome=yes` and `PrivateTmp=yes` are empty tmpfs; `StateDirectory=`,
//! `LogsDirectory=` and `RuntimeDirectory=` are directories of the lab mounted at their
//! place (over an empty tmpfs of `/var/lib`, `/var/log` or `/run` when the host has no such
//! directory to mount on: the test never writes the host's own); `ReadWritePaths=` are the
//! host's paths bound writable (a `-` one only when it exists); `CapabilityBoundingSet=` is
//! the only capabilities the daemon and its children have; `NoNewPrivileges=yes` is what
//! bwrap always sets; `ExecStartPre=+…` runs outside the sandbox first and the other
//! `ExecStartPre=` (the config check) inside it. The lab's own directory (config, sockets,
//! the daemon's files) is bound back in over the private /tmp. Not emulated: the seccomp
//! and namespace filters (`SystemCallFilter=`, `RestrictAddressFamilies=`…).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::blocks::wait_for;
use crate::lab::{Daemon, Lab, binary, fake_sendmail, repo};

/// The unit file's text.
#[derive(Clone)]
struct Unit {
    text: String,
}

impl Unit {
    fn shipped() -> Unit {
        Unit {
            text: std::fs::read_to_string(repo("conf/portsentry.service"))
                .expect("read conf/portsentry.service"),
        }
    }

    /// The value of every `key=` line, in order.
    fn values(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}=");
        self.text
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_string())
            .collect()
    }

    /// The words of every `key=` line.
    fn words(&self, key: &str) -> Vec<String> {
        self.values(key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect()
    }

    fn is(&self, key: &str, value: &str) -> bool {
        self.values(key).last().is_some_and(|v| v == value)
    }

    /// The unit without its `key=` lines whose value contains `containing` (negative
    /// controls).
    fn without(&self, key: &str, containing: &str) -> Unit {
        let prefix = format!("{key}=");
        Unit {
            text: self
                .text
                .lines()
                .filter(|l| !(l.trim().starts_with(&prefix) && l.contains(containing)))
                .map(|l| format!("{l}\n"))
                .collect(),
        }
    }
}

/// The emulation of one unit in one lab: the bwrap command line the daemon runs under.
struct Sandbox {
    bwrap: Vec<String>,
    /// Where `/var/log/portsentry` (`LogsDirectory=`) really is.
    log_dir: PathBuf,
}

impl Sandbox {
    fn new(lab: &Lab, unit: &Unit) -> Sandbox {
        assert!(
            unit.is("ProtectSystem", "strict"),
            "the unit's ProtectSystem="
        );
        assert!(
            unit.is("NoNewPrivileges", "yes"),
            "bwrap always sets no_new_privs: the emulation needs NoNewPrivileges=yes"
        );
        // ExecStartPre=+…: outside the sandbox, before it is set up.
        for pre in unit.values("ExecStartPre") {
            let flags: String = pre.chars().take_while(|c| "+-!@:".contains(*c)).collect();
            if !flags.contains('+') {
                continue;
            }
            let argv: Vec<&str> = pre[flags.len()..].split_whitespace().collect();
            let out = Command::new(argv[0])
                .args(&argv[1..])
                .output()
                .expect(argv[0]);
            assert!(
                out.status.success() || flags.contains('-'),
                "ExecStartPre={pre}: {out:?}"
            );
        }
        let mut args: Vec<String> = [
            "bwrap",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "--dev-bind",
            "/dev",
            "/dev",
            "--proc",
            "/proc",
        ]
        .map(String::from)
        .to_vec();
        let mut tmpfs: BTreeSet<String> = BTreeSet::new();
        if unit.is("ProtectHome", "yes") {
            for d in ["/home", "/root", "/run/user"] {
                if Path::new(d).is_dir() {
                    tmpfs.insert(d.into());
                }
            }
        }
        if unit.is("PrivateTmp", "yes") {
            tmpfs.extend(["/tmp".into(), "/var/tmp".into()]);
        }
        // The lab: config, control and syslog sockets, the daemon's own files.
        let lab_dir = lab.dir.path().display().to_string();
        let mut binds = vec![(lab_dir.clone(), lab_dir)];
        let mut log_dir = None;
        for (key, base) in [
            ("StateDirectory", "/var/lib"),
            ("LogsDirectory", "/var/log"),
            ("RuntimeDirectory", "/run"),
        ] {
            for name in unit.words(key) {
                let stand_in = lab.path(&format!("unit/{key}/{name}"));
                std::fs::create_dir_all(&stand_in).expect("stand-in directory");
                let place = format!("{base}/{name}");
                if !Path::new(&place).is_dir() {
                    tmpfs.insert(base.into());
                }
                if key == "LogsDirectory" && name == "portsentry" {
                    log_dir = Some(stand_in.clone());
                }
                binds.push((stand_in.display().to_string(), place));
            }
        }
        for path in unit.words("ReadWritePaths") {
            let (optional, path) = match path.strip_prefix('-') {
                Some(p) => (true, p.to_string()),
                None => (false, path),
            };
            if Path::new(&path).exists() {
                binds.push((path.clone(), path));
            } else {
                assert!(optional, "ReadWritePaths={path}: missing on this host");
            }
        }
        for t in tmpfs {
            args.extend(["--tmpfs".into(), t]);
        }
        for (from, to) in binds {
            args.extend(["--bind".into(), from, to]);
        }
        args.extend(["--cap-drop".into(), "ALL".into()]);
        for cap in unit.words("CapabilityBoundingSet") {
            args.extend(["--cap-add".into(), cap]);
        }
        Sandbox {
            bwrap: args,
            log_dir: log_dir.unwrap_or_else(|| lab.path("no-logs-directory")),
        }
    }

    fn args(&self) -> Vec<&str> {
        self.bwrap.iter().map(String::as_str).collect()
    }

    /// Runs `argv` in the sandbox, in the defender namespace.
    fn run(&self, lab: &Lab, argv: &[&str]) -> std::process::Output {
        let mut all = self.args();
        all.extend_from_slice(argv);
        lab.defend(&all)
    }
}

/// A config with classic TCP on port 79 and the Lua responders `extra` names, built-in
/// responders off, plugins and library from the repository.
fn plugin_config(lab: &Lab, extra: &str) -> String {
    std::fs::write(lab.path("portsentry.ignore"), "127.0.0.1/32\n").expect("ignore");
    lab.write_config(&format!(
        "{extra}\n\
         PLUGIN_DIR=\"{}\"\n\
         LUA_PATH_DIR=\"{}\"\n\
         TCP_PORTS=\"79\"\n\
         BLOCK_TCP=\"1\"\n\
         KILL_ROUTE=\"\"\n\
         KILL_HOSTS_DENY=\"\"\n",
        repo("plugins").display(),
        repo("lua").display()
    ))
    .display()
    .to_string()
}

/// Starts the daemon under the sandbox as the unit does: the config check first (the
/// unit's `ExecStartPre=`), inside the sandbox too; then the daemon, until it is active.
fn start(lab: &Lab, sandbox: &Sandbox, conf: &str) -> Daemon {
    let check = sandbox.run(lab, &[binary(), "--check-config", "-c", conf, "-tcp"]);
    assert!(
        check.status.success(),
        "--check-config under the sandbox: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let d = Daemon::spawn_wrapped(lab, &[], &sandbox.args(), &[], &["-c", conf, "-tcp"]);
    d.expect_line("adminalert: PortSentry is now active and listening.", 20);
    d
}

#[test]
fn the_emulation_is_the_units_read_only_system_no_new_privs_and_capability_set() {
    let lab = Lab::new();
    let sandbox = Sandbox::new(&lab, &Unit::shipped());
    let out = sandbox.run(
        &lab,
        &[
            "sh",
            "-c",
            "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; \
             touch /etc/portsentry-sandbox-probe 2>&1; \
             touch /var/log/portsentry/probe && echo logs-writable; \
             touch /var/lib/portsentry/probe && echo state-writable",
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    // CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13), nothing else.
    assert!(text.contains("CapEff:\t0000000000003400"), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(!Path::new("/etc/portsentry-sandbox-probe").exists());
    assert!(
        text.contains("logs-writable") && text.contains("state-writable"),
        "{text}"
    );
    assert!(
        sandbox.log_dir.join("probe").exists(),
        "the lab's stand-in took it"
    );
}

#[test]
fn jsonlog_writes_to_its_default_file_in_the_units_logs_directory() {
    let lab = Lab::new();
    let unit = Unit::shipped();
    let sandbox = Sandbox::new(&lab, &unit);
    let conf = plugin_config(
        &lab,
        "LUA_RESPONDERS=\"jsonlog\"\nJSONLOG_EVENTS=\"alert,block\"",
    );
    let d = start(&lab, &sandbox, &conf);
    let att = lab.att4.clone();
    lab.connect_from(&att, 79);
    d.expect_line(&format!("Host {att} has been blocked"), 10);
    let file = sandbox.log_dir.join("alerts.jsonl");
    let lines = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        lines
            .lines()
            .any(|l| l.contains("\"event\":\"block\"") && l.contains(&att)),
        "{}: {lines}",
        file.display()
    );

    // Negative control: without LogsDirectory= the same block fails, /var/log being
    // read-only (and, here, without a portsentry directory the package would have made).
    let lab = Lab::new();
    let sandbox = Sandbox::new(&lab, &unit.without("LogsDirectory", "portsentry"));
    let conf = plugin_config(&lab, "LUA_RESPONDERS=\"jsonlog\"\nJSONLOG_EVENTS=\"block\"");
    let d = start(&lab, &sandbox, &conf);
    lab.connect_from(&lab.att4, 79);
    let failed = d.expect_line("lua:jsonlog failed for host", 10);
    assert!(
        failed.contains("/var/log/portsentry/alerts.jsonl: Read-only file system")
            || failed.contains("/var/log/portsentry/alerts.jsonl: No such file or directory"),
        "{failed}"
    );
}

/// The rule the iptables plugin adds for `ip`, as `-S` lists it.
fn iptables_rule(lab: &Lab, program: &str, ip: &str) -> bool {
    let out = lab.defend(&[program, "-w", "-S", "portsentry"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == format!("-A portsentry -s {ip}/32 -j DROP"))
}

#[test]
fn iptables_blocks_with_the_nft_and_the_legacy_backend() {
    for program in ["iptables-nft", "iptables-legacy"] {
        let lab = Lab::new();
        let sandbox = Sandbox::new(&lab, &Unit::shipped());
        let conf = plugin_config(
            &lab,
            &format!("LUA_RESPONDERS=\"iptables\"\nIPTABLES_IPTABLES=\"{program}\""),
        );
        let d = start(&lab, &sandbox, &conf);
        let att = lab.att4.clone();
        assert!(lab.connect_from(&att, 79));
        d.expect_line(&format!("Host {att} has been blocked"), 10);
        assert!(
            iptables_rule(&lab, program, &att),
            "{program}: {:?}",
            d.lines()
        );
        assert!(
            !lab.connect_from(&att, 79),
            "{program}: the rule drops the scanner"
        );
        assert_eq!(d.count("FAILED"), 0, "{program}: {:?}", d.lines());
        // The legacy backend's lock is the host's own, shared with every other iptables.
        if program == "iptables-legacy" {
            assert!(Path::new("/run/xtables.lock").exists());
        }
    }
}

#[test]
fn nftables_puts_the_scanner_in_its_set() {
    let lab = Lab::new();
    let sandbox = Sandbox::new(&lab, &Unit::shipped());
    let conf = plugin_config(&lab, "LUA_RESPONDERS=\"nftables\"");
    let d = start(&lab, &sandbox, &conf);
    let att = lab.att4.clone();
    assert!(lab.connect_from(&att, 79));
    d.expect_line(&format!("Host {att} has been blocked"), 10);
    let set = lab.defend_stdout(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v4"]);
    assert!(set.contains(&att), "{set}");
    assert!(!lab.connect_from(&att, 79), "the set drops the scanner");
}

#[test]
fn allowlist_vetoes_the_block_of_a_listed_host() {
    let lab = Lab::new();
    let sandbox = Sandbox::new(&lab, &Unit::shipped());
    let att = lab.att4.clone();
    let conf = plugin_config(
        &lab,
        &format!(
            "LUA_RESPONDERS=\"allowlist,jsonlog\"\nALLOWLIST_NETS=\"{att}\"\n\
             JSONLOG_EVENTS=\"block\""
        ),
    );
    let d = start(&lab, &sandbox, &conf);
    lab.connect_from(&att, 79);
    d.expect_line(&format!("not blocking {att}: in the allow-list"), 10);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !sandbox.log_dir.join("alerts.jsonl").exists(),
        "no responder after the veto ran"
    );
    assert!(lab.connect_from(&att, 79), "not blocked");
}

/// A one-message SMTP server on 127.0.0.1:`port` in the defender namespace (curl's dialogue:
/// EHLO, MAIL, RCPT…, DATA, QUIT); the thread yields the envelope and the message.
fn smtp_server(lab: &Lab, port: u16) -> std::thread::JoinHandle<String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let server = lab.in_def(move || {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind the SMTP port");
        l.set_nonblocking(true).expect("nonblocking");
        let _ = tx.send(());
        let deadline = Instant::now() + Duration::from_secs(60);
        let conn = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("no SMTP client: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut out = conn.try_clone().expect("clone");
        let mut seen = String::new();
        let mut reader = BufReader::new(conn);
        out.write_all(b"220 test ESMTP\r\n").expect("greet");
        let mut in_data = false;
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            seen.push_str(&line);
            let upper = line.to_ascii_uppercase();
            let answer: &[u8] = if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    b"250 queued\r\n"
                } else {
                    b""
                }
            } else if upper.starts_with("DATA") {
                in_data = true;
                b"354 go on\r\n"
            } else if upper.starts_with("QUIT") {
                let _ = out.write_all(b"221 bye\r\n");
                break;
            } else {
                b"250 ok\r\n"
            };
            out.write_all(answer).expect("answer");
            line.clear();
        }
        seen
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the SMTP server is up");
    server
}

#[test]
fn mail_says_at_load_that_a_setgid_mta_cannot_queue_and_sends_through_an_smtp_relay() {
    // A local MTA's setgid helper: the plugin sees the mode bit and no_new_privs at load.
    let lab = Lab::new();
    let sandbox = Sandbox::new(&lab, &Unit::shipped());
    let (sendmail, _) = fake_sendmail(lab.dir.path());
    std::fs::set_permissions(&sendmail, std::fs::Permissions::from_mode(0o2755)).expect("chmod");
    let conf = plugin_config(
        &lab,
        &format!(
            "LUA_RESPONDERS=\"mail\"\nMAIL_TO=\"admin@example.org\"\nMAIL_SENDMAIL=\"{}\"",
            sendmail.display()
        ),
    );
    let d = start(&lab, &sandbox, &conf);
    let warning = d.expect_line(
        &format!(
            "lua:mail: {} is setgid, but portsentry runs with no_new_privs",
            sendmail.display()
        ),
        5,
    );
    assert!(
        warning.contains("MAIL_SMTP=\"relay.example.org:25\"")
            && warning.contains("NoNewPrivileges=no")
            && warning.contains("/var/spool/postfix/maildrop"),
        "{warning}"
    );
    // Positive control: outside the sandbox (no no_new_privs) the plugin says nothing.
    let out = Command::new(binary())
        .args(["--check-config", "-c", &conf, "-tcp"])
        .output()
        .expect("check-config");
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no_new_privs"),
        "{out:?}"
    );
    drop(d);

    // Through a relay: curl talks SMTP from inside the sandbox, no MTA involved.
    let lab = Lab::new();
    let sandbox = Sandbox::new(&lab, &Unit::shipped());
    let server = smtp_server(&lab, 2525);
    let conf = plugin_config(
        &lab,
        &format!(
            "LUA_RESPONDERS=\"mail\"\nMAIL_TO=\"admin@example.org\"\n\
             MAIL_SMTP=\"127.0.0.1:2525\"\nMAIL_SENDMAIL=\"{}\"",
            sendmail.display()
        ),
    );
    let d = start(&lab, &sandbox, &conf);
    let att = lab.att4.clone();
    lab.connect_from(&att, 79);
    d.expect_line(&format!("Host {att} has been blocked"), 10);
    let seen = server.join().expect("SMTP server");
    assert!(seen.contains("RCPT TO:<admin@example.org>"), "{seen}");
    assert!(
        seen.contains(&format!("Subject: portsentry: {att} blocked")),
        "{seen}"
    );
    assert!(
        wait_for(5, || d
            .count("mailed admin@example.org through smtp://127.0.0.1:2525")
            > 0
            || d.count("FAILED") > 0)
            && d.count("FAILED") == 0,
        "{:?}",
        d.lines()
    );
    assert_eq!(d.count("no_new_privs"), 0, "a relay needs no local MTA");
}
