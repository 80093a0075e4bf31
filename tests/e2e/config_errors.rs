//! Bad configuration: a clear message naming file and line, a non-zero exit, nothing started.

use std::process::Command;
use std::time::Duration;

use crate::lab::{Daemon, Lab, binary};

#[test]
fn check_config_names_file_line_and_problem_and_fails() {
    let lab = Lab::new();
    let conf = lab.write_config("TCP_PORTS=\"1,abc\"\nBLOCK_UDP=\"7\"");
    let out = Command::new(binary())
        .args(["--check-config", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = conf.display().to_string();
    assert!(
        err.contains(&format!(
            "{name}:1: TCP_PORTS: \"1,abc\": 'abc' is not a port number"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{name}:2: BLOCK_UDP")),
        "every error at once: {err}"
    );
}

#[test]
fn check_config_accepts_the_shipped_config_shape() {
    let lab = Lab::new();
    let conf = lab.write_config("TCP_PORTS=\"1,11,512-515\"");
    let out = Command::new(binary())
        .args(["--check-config", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_config_at_start_exits_non_zero_before_opening_any_port() {
    let lab = Lab::new();
    let conf = lab.write_config("TCP_PORTS=\"79\"\nSCAN_TRIGGER=\"many\"");
    let mut d = Daemon::spawn(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
    let status = d.wait_exit(20).expect("daemon exits");
    assert_eq!(status.code(), Some(1));
    let log = d.lines().join("\n");
    assert!(
        log.contains(&format!("{}:2: SCAN_TRIGGER", conf.display())),
        "{log}"
    );
    assert!(!log.contains("Going into listen mode"), "{log}");
    assert!(!log.contains("now active"), "{log}");
}

#[test]
fn no_mode_and_no_defaults_file_is_a_usage_error() {
    let lab = Lab::new();
    let conf = lab.write_config("");
    let out = Command::new(binary())
        .args(["-c"])
        .arg(&conf)
        .arg("--modes-file")
        .arg(lab.path("absent"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass -tcp, -udp"));
}

/// Runs `portsentry --check-config -c <conf> <flags>` under `timeout 20` (a check that hangs
/// exits 124); returns the exit code and stderr.
fn check(conf: &std::path::Path, flags: &[&str]) -> (i32, String) {
    let out = Command::new("timeout")
        .args(["20", binary(), "--check-config", "-c"])
        .arg(conf)
        .args(flags)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mkfifo(path: &std::path::Path) {
    let out = Command::new("mkfifo").arg(path).output().unwrap();
    assert!(out.status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_fifo_or_dev_zero_as_ignore_file_is_refused_at_once_by_check_and_start() {
    let lab = Lab::new();
    let fifo = lab.path("fifo.ignore");
    mkfifo(&fifo);
    for ignore in [fifo.clone(), "/dev/zero".into()] {
        let conf = lab.write_config(&format!(
            "TCP_PORTS=\"79\"\nIGNORE_FILE=\"{}\"",
            ignore.display()
        ));
        let (code, err) = check(&conf, &["-tcp"]);
        assert_eq!(code, 1, "refused, not hung (124): {err}");
        assert!(
            err.contains(&format!(
                "{}: cannot read ignore file: is a",
                ignore.display()
            )),
            "{err}"
        );
        let mut d = Daemon::spawn(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
        assert_eq!(d.wait_exit(20).and_then(|s| s.code()), Some(1));
        let log = d.lines().join("\n");
        assert!(log.contains("not a regular file"), "{log}");
        assert!(!log.contains("now active"), "{log}");
    }
    // Positive control: a regular ignore file at the same config passes.
    let conf = lab.write_config("TCP_PORTS=\"79\"");
    assert_eq!(check(&conf, &["-tcp"]).0, 0);
}

#[test]
fn check_config_reports_config_ignore_and_plugin_errors_in_one_run() {
    let lab = Lab::new();
    std::fs::write(lab.path("portsentry.ignore"), "10.0.0.1\nnot-an-address\n").unwrap();
    let conf = lab.write_config(&format!(
        "TCP_PORTS=\"1,abc\"\nLUA_RESPONDERS=\"nope\"\nPLUGIN_DIR=\"{}\"",
        lab.path("plugins").display()
    ));
    let (code, err) = check(&conf, &["-tcp"]);
    assert_eq!(code, 1, "{err}");
    let ignore = lab.path("portsentry.ignore").display().to_string();
    assert!(
        err.contains(&format!("{}:1: TCP_PORTS", conf.display())),
        "{err}"
    );
    assert!(err.contains(&format!("{ignore}:2: ")), "{err}");
    // The config is fixed: the ignore error and the missing plugin are both still reported.
    let conf = lab.write_config(&format!(
        "TCP_PORTS=\"1\"\nLUA_RESPONDERS=\"nope\"\nPLUGIN_DIR=\"{}\"",
        lab.path("plugins").display()
    ));
    let (code, err) = check(&conf, &["-tcp"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{ignore}:2: ")), "{err}");
    assert!(err.contains("nope"), "the plugin error too: {err}");
    assert!(err.contains("2 error(s)"), "{err}");
}

#[test]
fn a_huge_garbage_line_in_the_ignore_file_is_quoted_short() {
    let lab = Lab::new();
    let line = "z".repeat(10_000_000);
    std::fs::write(lab.path("portsentry.ignore"), format!("10.0.0.1\n{line}\n")).unwrap();
    let conf = lab.write_config("TCP_PORTS=\"79\"");
    let (code, err) = check(&conf, &["-tcp"]);
    assert_eq!(code, 1);
    assert!(err.len() < 2_000, "{} bytes of stderr", err.len());
    assert!(err.contains(":2: \"zzzz"), "{err}");
    assert!(err.contains("… (10000000 bytes)"), "{err}");
}

/// What `--check-config` and the start say about one config; both must refuse it with the
/// same `file:line: message`.
fn check_and_start_refuse(lab: &Lab, extra: &str, wrapper: &[&str], needle: &str) {
    let conf = lab.write_config(extra);
    let name = conf.display().to_string();
    let mut cmd: Vec<&str> = wrapper.to_vec();
    cmd.extend([binary(), "--check-config", "-c", &name, "-tcp"]);
    let out = Command::new("timeout")
        .arg("60")
        .args(&cmd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{extra}: check: {err}");
    let said = err
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{extra}: check does not say {needle:?}: {err}"))
        .to_string();
    let dir = lab.dir.path().display().to_string();
    assert!(said.starts_with(&dir), "names the file: {said}");
    let mut d = Daemon::spawn_with(lab, wrapper, &[], &["-c", &name, "-tcp"]);
    assert_eq!(
        d.wait_exit(30).and_then(|s| s.code()),
        Some(1),
        "{extra}: start: {:?}",
        d.lines()
    );
    let log = d.lines().join("\n");
    assert!(
        log.contains(&said),
        "{extra}: start does not say {said:?}: {log}"
    );
    assert!(!log.contains("now active"), "{log}");
    assert!(d.count("could not bind") <= 1, "{log}");
}

#[test]
fn check_config_and_start_agree_on_what_a_file_makes_fail() {
    let lab = Lab::new();
    std::fs::create_dir(lab.path("plugins")).unwrap();
    std::fs::create_dir(lab.path("history.d")).unwrap();
    check_and_start_refuse(
        &lab,
        &format!(
            "TCP_PORTS=\"79\"\nLUA_RESPONDERS=\"nope\"\nPLUGIN_DIR=\"{}\"",
            lab.path("plugins").display()
        ),
        &[],
        "nope",
    );
    check_and_start_refuse(&lab, "TCP_PORTS=\"\"", &[], "TCP_PORTS: no port to watch");
    check_and_start_refuse(
        &lab,
        "TCP_PORTS=\"1-65535\"",
        &["prlimit", "--nofile=4096:4096"],
        "131070 listening sockets",
    );
    check_and_start_refuse(
        &lab,
        &format!(
            "TCP_PORTS=\"79\"\nHISTORY_FILE=\"{}\"",
            lab.path("history.d").display()
        ),
        &[],
        "HISTORY_FILE",
    );
    check_and_start_refuse(
        &lab,
        "TCP_PORTS=\"79\"\nKILL_CMD_TIMEOUT=\"1ns\"",
        &[],
        "minimum 100ms",
    );
    // Positive control: the same lab with a valid config passes the check and starts.
    let conf = lab.write_config("TCP_PORTS=\"79\"");
    assert_eq!(check(&conf, &["-tcp"]).0, 0);
    let mut d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
    d.stop();
}

#[test]
fn a_port_held_on_ipv4_logs_what_was_really_bound_and_failures_are_summed_up() {
    let lab = Lab::new();
    let script = "import socket,time\n\
                  s=socket.socket()\n\
                  s.bind(('0.0.0.0',4444)); s.listen()\n\
                  t=socket.socket(socket.AF_INET6); t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
                  t.bind(('::',4445)); t.listen()\n\
                  time.sleep(120)";
    let _holder = lab.spawn_in_def(&["python3", "-c", script]);
    lab.wait_tcp_listener(4444);
    lab.wait_tcp_listener(4445);
    let conf = lab.write_config("TCP_PORTS=\"79,4444,4445\"");
    let d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
    // Positive control: a free port keeps 1.2's line byte for byte.
    let free = d.expect_line("Going into listen mode on TCP port: 79", 5);
    assert!(
        free.ends_with("adminalert: Going into listen mode on TCP port: 79"),
        "{free}"
    );
    d.expect_line(
        "adminalert: Going into listen mode on TCP port: 4444 (IPv6 only: IPv4 port: \
         Address already in use (EADDRINUSE))",
        5,
    );
    assert_eq!(
        d.count("listen mode on TCP port: 4445"),
        0,
        "{:?}",
        d.lines()
    );
    d.expect_line(
        "adminalert: ERROR: could not bind 1 of 3 TCP ports: 4445 (Address already in use \
         (EADDRINUSE)). Attempting to continue",
        5,
    );
}

#[test]
fn check_config_without_modes_still_checks_the_output_files() {
    let lab = Lab::new();
    std::fs::create_dir(lab.path("history.d")).unwrap();
    let conf = lab.write_config(&format!(
        "TCP_PORTS=\"79\"\nHISTORY_FILE=\"{}\"",
        lab.path("history.d").display()
    ));
    let no_modes = ["--modes-file", "/nonexistent/portsentry"];
    let (code, err) = check(&conf, &no_modes);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:2: HISTORY_FILE: \"{}\": is a directory",
            conf.display(),
            lab.path("history.d").display()
        )),
        "{err}"
    );
    assert!(
        err.contains("checks that depend on the modes are skipped"),
        "{err}"
    );
    // Positive control: the same without the directory passes.
    let conf = lab.write_config("TCP_PORTS=\"79\"");
    let (code, err) = check(&conf, &no_modes);
    assert_eq!(code, 0, "{err}");
}

/// What the attacker reads from the defender's `port` until the daemon closes it.
fn banner_from(lab: &Lab, port: u16) -> Vec<u8> {
    let dst: std::net::SocketAddr = format!("{}:{port}", lab.def4).parse().unwrap();
    lab.in_att(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2))
            .expect("connect to the trap port");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
    .join()
    .expect("attacker client")
}

#[test]
fn a_2_kib_port_banner_is_refused_by_check_and_start_while_1_kib_is_sent_whole() {
    let lab = Lab::new();
    let kib = "B".repeat(1024);
    let conf = lab.write_config(&format!("TCP_PORTS=\"79\"\nPORT_BANNER=\"{kib}{kib}\""));
    let expected = format!("{}:2: PORT_BANNER: \"BBBB", conf.display());
    let why = "2048 bytes, longer than the 1024 bytes allowed";
    let (code, err) = check(&conf, &["-tcp"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&expected) && err.contains(why), "{err}");
    let mut d = Daemon::spawn(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
    let status = d.wait_exit(20).expect("daemon exits");
    assert_eq!(status.code(), Some(1));
    let log = d.lines().join("\n");
    assert!(log.contains(&expected) && log.contains(why), "{log}");
    assert!(!log.contains("Going into listen mode"), "{log}");
    // Positive control: the largest banner allowed passes both and reaches the scanner whole.
    let conf = lab.write_config(&format!("TCP_PORTS=\"79\"\nPORT_BANNER=\"{kib}\""));
    let (code, err) = check(&conf, &["-tcp"]);
    assert_eq!(code, 0, "{err}");
    let _d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
    assert_eq!(banner_from(&lab, 79), kib.as_bytes());
}
