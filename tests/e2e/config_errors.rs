//! Bad configuration: a clear message naming file and line, a non-zero exit, nothing started.

use std::process::Command;

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
