//! Running under systemd, end to end: the real daemon started with a `NOTIFY_SOCKET` the test
//! binds, as systemd would (`Type=notify`, `WatchdogSec=`); the unit file checked by
//! `systemd-analyze verify`; and hosts.deny edited under the unit's `ProtectSystem=strict`
//! (the directory read-only, only the file writable), reproduced with a mount namespace.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lab::{Daemon, Lab, binary};

/// The datagram socket systemd would listen on, with every message the daemon sent and
/// when it arrived.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(lab: &Lab) -> NotifySocket {
        let path = lab.path("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into())),
                    Err(_) if Arc::strong_count(&sink) == 1 => return,
                    Err(_) => {}
                }
            }
        });
        NotifySocket { path, messages }
    }

    /// `NOTIFY_SOCKET` for the daemon.
    fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().expect("utf-8 path"))
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// The first message at index `from` or later that starts with `prefix`, with its
    /// index; panics with every message after `secs`.
    fn wait(&self, from: usize, prefix: &str, secs: u64) -> (usize, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let all = self.messages();
            if let Some((i, (_, m))) = all
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| m.starts_with(prefix))
            {
                return (i, m.clone());
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix:?} after message {from} within {secs}s: {:?}",
                all.iter().map(|(_, m)| m).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Arrival times of the `WATCHDOG=1` pings.
    fn pings(&self) -> Vec<Instant> {
        self.messages()
            .into_iter()
            .filter(|(_, m)| m == "WATCHDOG=1")
            .map(|(t, _)| t)
            .collect()
    }

    /// The first line of every message but the pings, in order.
    fn states(&self) -> Vec<String> {
        self.messages()
            .into_iter()
            .filter(|(_, m)| m != "WATCHDOG=1")
            .map(|(_, m)| m.lines().next().unwrap_or_default().to_string())
            .collect()
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock of `MONOTONIC_USEC`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// The lab's config text with `extra` first, logging only.
fn conf_text(lab: &Lab, extra: &str) -> String {
    lab.config_text(&format!(
        "{extra}\nTCP_PORTS=\"79\"\nBLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\""
    ))
}

/// Saves the config by rename, as editors do.
fn save_by_rename(lab: &Lab, extra: &str) -> PathBuf {
    let conf = lab.path("portsentry.conf");
    let tmp = lab.path(".portsentry.conf.tmp");
    std::fs::write(&tmp, conf_text(lab, extra)).expect("write temp config");
    std::fs::rename(&tmp, &conf).expect("rename config");
    conf
}

/// Starts `-tcp` with `extra` config lines and a notify socket in the environment (plus
/// `env`); returns once the daemon says it is active.
fn start(lab: &Lab, notify: &NotifySocket, env: &[(&str, &str)], extra: &str) -> Daemon {
    std::fs::write(lab.path("portsentry.ignore"), "127.0.0.1/32\n").expect("ignore");
    let conf = save_by_rename(lab, extra);
    let mut all = vec![notify.env()];
    all.extend_from_slice(env);
    let conf = conf.display().to_string();
    let d = Daemon::spawn_with(lab, &[], &all, &["-c", &conf, "-tcp"]);
    d.expect_line("adminalert: PortSentry is now active and listening.", 20);
    d
}

/// Checks that a `RELOADING=1` message carries a `MONOTONIC_USEC` taken between `before`
/// and now.
fn assert_reloading_time(message: &str, before: u64) {
    let usec: u64 = message
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("not RELOADING=1 with MONOTONIC_USEC: {message:?}"));
    assert!(
        (before..=monotonic_usec()).contains(&usec),
        "MONOTONIC_USEC={usec} is not the time the reload began (after {before})"
    );
}

#[test]
fn notify_tells_ready_reloads_taken_and_refused_and_stopping() {
    let lab = Lab::new();
    let notify = NotifySocket::bind(&lab);
    let mut d = start(&lab, &notify, &[], "");
    let (i, ready) = notify.wait(0, "READY=1", 5);
    assert_eq!(ready, "READY=1\nSTATUS=generation 1 in force, modes tcp");

    // A good edit: RELOADING=1 when the reload begins, READY=1 with the new generation.
    let before = monotonic_usec();
    save_by_rename(&lab, "TCP_PORTS=\"79,1524\"");
    let (i, reloading) = notify.wait(i + 1, "RELOADING=1", 10);
    assert_reloading_time(&reloading, before);
    let (i, ready) = notify.wait(i + 1, "READY=1", 10);
    assert_eq!(ready, "READY=1\nSTATUS=generation 2 in force, modes tcp");

    // A bad edit of the ignore file: the reload is refused and the status names that file.
    let ignore = lab.path("portsentry.ignore");
    let before = monotonic_usec();
    std::fs::write(&ignore, "127.0.0.1/32\n10.77.0.x\n").expect("break the ignore file");
    let (i, reloading) = notify.wait(i + 1, "RELOADING=1", 10);
    assert_reloading_time(&reloading, before);
    let (i, refused) = notify.wait(i + 1, "READY=1", 10);
    let prefix = format!("READY=1\nSTATUS=reload refused: {}:2: ", ignore.display());
    assert!(
        refused.starts_with(&prefix) && refused.ends_with(", generation 2 kept"),
        "{refused:?}"
    );

    // ExecReload= runs `portsentry reload`: the same verdict, as its exit status.
    let out = lab.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (i, _) = notify.wait(i + 1, "RELOADING=1", 10);
    let (i, again) = notify.wait(i + 1, "READY=1", 10);
    assert_eq!(again, refused);

    d.signal("TERM");
    let status = d.wait_exit(10).expect("the daemon stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    notify.wait(i + 1, "STOPPING=1", 5);
    assert_eq!(
        notify.states(),
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ],
        "{:?}",
        notify.messages()
    );
    assert!(notify.pings().is_empty(), "no WATCHDOG_USEC, no pings");
}

/// The longest silence between pings from `from` to `to` (the edges count as pings, so a
/// silence that is still going on counts too).
fn longest_silence(pings: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = pings
        .iter()
        .copied()
        .filter(|t| (from..=to).contains(t))
        .collect();
    times.insert(0, from);
    times.push(to);
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// A small ext4 file system, loop-mounted in the lab, that the test can freeze: every write
/// to it (and every open for writing) then waits, as on a hung file system, until it is
/// thawed. Thawed and unmounted on drop, whatever the test did.
struct FreezableFs {
    mount: PathBuf,
}

impl FreezableFs {
    fn new(lab: &Lab) -> FreezableFs {
        let image = lab.path("fs.img");
        let mount = lab.path("fs");
        std::fs::create_dir(&mount).expect("mount point");
        for cmd in [
            vec!["truncate", "-s", "16M", image.to_str().unwrap()],
            vec!["mkfs.ext4", "-q", "-F", image.to_str().unwrap()],
            vec![
                "mount",
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        ] {
            let out = Command::new(cmd[0]).args(&cmd[1..]).output().expect(cmd[0]);
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        FreezableFs { mount }
    }

    fn freeze(&self, on: bool) {
        let flag = if on { "-f" } else { "-u" };
        let out = Command::new("fsfreeze")
            .arg(flag)
            .arg(&self.mount)
            .output()
            .expect("fsfreeze");
        assert!(
            out.status.success(),
            "fsfreeze {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for FreezableFs {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).output();
        let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
    }
}

/// `portsentry block <targets> --for 1h` on a thread of its own (it waits for the
/// responders); the thread yields the client's exit status.
fn block_in_background(lab: &Lab, targets: Vec<String>) -> std::thread::JoinHandle<bool> {
    let sock = lab.path("ctl.sock");
    std::thread::spawn(move || {
        Command::new(binary())
            .arg("block")
            .args(&targets)
            .args(["--for", "1h", "--socket"])
            .arg(&sock)
            .output()
            .expect("run the block client")
            .status
            .success()
    })
}

fn targets(net: u8, n: u8) -> Vec<String> {
    (1..=n).map(|h| format!("192.0.{net}.{h}")).collect()
}

#[test]
fn watchdog_pings_while_threads_move_and_stops_while_the_responder_pool_is_wedged() {
    let lab = Lab::new();
    let notify = NotifySocket::bind(&lab);
    // Mounted before the start: the daemon's own mount namespace (`ip netns exec`) gets it.
    let fs = FreezableFs::new(&lab);
    // Commands that hang are killed at KILL_CMD_TIMEOUT (1 s here), so a responder step may
    // last 1 s + 2 s of margin before its worker counts as stuck.
    let mut d = start(
        &lab,
        &notify,
        &[("WATCHDOG_USEC", "1000000")],
        "KILL_CMD_TIMEOUT=\"1s\"\nKILL_RUN_CMD=\"sleep 60\"",
    );
    notify.wait(0, "READY=1", 5);

    // Idle: a ping every half interval.
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let idle = notify.pings().iter().filter(|t| **t >= t0).count();
    assert!(idle >= 4, "{idle} pings in 3 s of idling");

    // Sixteen blocks whose command hangs until it is killed: every worker is busy for two
    // rounds of 1 s, never past its limit, and systemd never misses a ping.
    let t1 = Instant::now();
    let ok = block_in_background(&lab, targets(2, 16))
        .join()
        .expect("client");
    assert!(!ok, "the commands timed out, the blocks failed");
    d.expect_line("timed out after 1s", 5);
    std::thread::sleep(Duration::from_millis(1500));
    let silence = longest_silence(&notify.pings(), t1, Instant::now());
    assert!(
        silence < Duration::from_secs(1),
        "a {silence:?} silence while commands were killed at their timeout"
    );
    assert_eq!(d.count("watchdog:"), 0, "{:?}", d.lines());

    // Now a responder that never comes back: hosts.deny is on a frozen file system, as on a
    // hung one. Eight blocks take every worker; three seconds later the
    // pool counts as wedged and the pings stop.
    let deny = fs.mount.join("hosts.deny");
    std::fs::write(&deny, "").expect("hosts.deny");
    fs.freeze(true);
    save_by_rename(
        &lab,
        &format!(
            "KILL_CMD_TIMEOUT=\"1s\"\nKILL_HOSTS_DENY=\"ALL: $TARGET$\"\nHOSTS_DENY_FILE=\"{}\"",
            deny.display()
        ),
    );
    d.expect_line("generation 2 in force", 10);
    let wedged_at = Instant::now();
    let client = block_in_background(&lab, targets(3, 8));
    let line = d.expect_line(
        "adminalert: WARNING: watchdog: every responder worker is stuck",
        10,
    );
    assert!(line.contains("(limit 3.0s)"), "{line}");
    let stopped_after = wedged_at.elapsed();
    assert!(
        stopped_after >= Duration::from_secs(3) && stopped_after < Duration::from_secs(6),
        "wedge seen after {stopped_after:?}"
    );
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let after = notify.pings().iter().filter(|t| **t > quiet_from).count();
    assert_eq!(after, 0, "no ping while the pool is wedged");

    // The daemon keeps running: it answers, and still sees and logs a scan.
    let status = lab.ctl_ok(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.trim_start().starts_with("generation") && l.trim_end().ends_with(" 2")),
        "{status}"
    );
    assert!(lab.connect_from(&lab.att4, 79));
    d.expect_line(
        &format!(
            "attackalert: Connect from host: {0}/{0} to TCP port: 79",
            lab.att4
        ),
        10,
    );
    assert!(d.exited.is_none() && d.wait_exit(0).is_none());

    // The file answers again: the jobs finish and the pings come back.
    fs.freeze(false);
    let blocked = client.join().expect("client");
    assert!(blocked, "every block went through once the file answered");
    d.expect_line("adminalert: watchdog: every thread is moving again", 5);
    let back = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(notify.pings().iter().any(|t| *t > back), "pings resumed");

    let n = notify.messages().len();
    d.signal("TERM");
    let status = d.wait_exit(10).expect("the daemon stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    notify.wait(n, "STOPPING=1", 5);
}

/// The unit with its `/usr/sbin/portsentry` pointed at the binary under test (verify wants
/// every Exec path to exist).
fn unit_for_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(crate::lab::repo("conf/portsentry.service"))
        .expect("read conf/portsentry.service");
    let unit = dir.join("portsentry.service");
    std::fs::write(&unit, text.replace("/usr/sbin/portsentry", binary())).expect("write unit");
    unit
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_test(dir.path());
    let text = std::fs::read_to_string(&unit).expect("unit");
    for line in [
        "Type=notify",
        "ExecReload=",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "EnvironmentFile=-/etc/default/portsentry",
    ] {
        assert!(text.contains(line), "{line} missing");
    }
    // --man=no: the man pages named in Documentation= come with the package, not a checkout.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd, scripts/setup-deps.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn hosts_deny_line_is_taken_out_when_only_the_file_is_writable() {
    // What ProtectSystem=strict with ReadWritePaths=/etc/hosts.deny does: the directory is a
    // read-only mount, the file a writable bind mount on top of it (nothing can be created
    // beside it, nothing renamed over it). Done here in a mount namespace of the daemon's own.
    let lab = Lab::new();
    let etc = lab.path("etc");
    std::fs::create_dir(&etc).expect("mkdir");
    let deny = etc.join("hosts.deny");
    std::fs::write(&deny, "sshd: 10.0.0.1\n").expect("hosts.deny");
    let inode = std::fs::metadata(&deny).expect("stat").ino();
    let script = "mount --bind -o ro \"$1\" \"$1\" && mount --bind \"$2\" \"$2\" && \
                  mount -o remount,bind,rw \"$2\" && shift 2 && exec \"$@\"";
    let (etc_s, deny_s) = (etc.display().to_string(), deny.display().to_string());
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        &etc_s,
        &deny_s,
    ];
    // The set-up really forbids the rename way: a file cannot be created beside hosts.deny.
    let probe = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .args(["touch", &format!("{etc_s}/probe")])
        .output()
        .expect("unshare");
    assert!(
        !probe.status.success()
            && String::from_utf8_lossy(&probe.stderr).contains("Read-only file system"),
        "{probe:?}"
    );

    std::fs::write(lab.path("portsentry.ignore"), "127.0.0.1/32\n").expect("ignore");
    let conf = lab.path("portsentry.conf");
    std::fs::write(
        &conf,
        conf_text(
            &lab,
            &format!("HOSTS_DENY_FILE=\"{deny_s}\"\nKILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\""),
        ),
    )
    .expect("config");
    let conf = conf.display().to_string();
    let d = Daemon::spawn_with(&lab, &wrapper, &[], &["-c", &conf, "-tcp"]);
    d.expect_line("adminalert: PortSentry is now active and listening.", 20);

    lab.ctl_ok(&["block", "192.0.2.7", "--for", "1h"]);
    assert_eq!(
        std::fs::read_to_string(&deny).expect("read"),
        "sshd: 10.0.0.1\nALL: 192.0.2.7 : DENY\n"
    );
    let out = lab.ctl_ok(&["unblock", "192.0.2.7"]);
    assert!(out.contains("removed \"ALL: 192.0.2.7 : DENY\""), "{out}");
    assert_eq!(
        std::fs::read_to_string(&deny).expect("read"),
        "sshd: 10.0.0.1\n"
    );
    assert_eq!(std::fs::metadata(&deny).expect("stat").ino(), inode);
    assert_eq!(d.count("cannot remove"), 0, "{:?}", d.lines());
}
