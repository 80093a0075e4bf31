//! A full disk, end to end: the daemon started with its history, blocked file and block
//! journal on a small tmpfs the test fills listens, blocks a scanner and a host by hand (the
//! kernel's route table checked), says its journal is failing (log, `status`, metrics) and
//! keeps the entries it cannot write; once space is freed the journal holds every block made
//! meanwhile, and a restart puts them all back in the kernel.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::blocks::wait_for;
use crate::lab::{Daemon, Lab, binary, sh};
use crate::metrics::{metrics, value};

/// A tmpfs of `size` mounted in the lab, unmounted on drop whatever the test did. Mounted
/// before the daemon starts, so that its mount namespace (`ip netns exec`) has it too; what
/// the test writes or deletes there the daemon sees.
struct SmallFs {
    mount: PathBuf,
}

impl SmallFs {
    fn new(lab: &Lab, size: &str) -> SmallFs {
        let mount = lab.path("state");
        std::fs::create_dir(&mount).expect("mount point");
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0750"),
            "tmpfs",
            mount.to_str().expect("utf-8 path"),
        ]);
        SmallFs { mount }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    /// Fills every free page with a filler file.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path("filler")).expect("filler");
        for chunk in [64 * 1024, 4096, 1] {
            let block = vec![0u8; chunk];
            while f.write_all(&block).is_ok() {}
        }
        // Nothing is left: even one more page for a new file is refused.
        let probe = std::fs::write(self.path("probe"), [0u8; 8192]);
        assert!(probe.is_err(), "the tmpfs is not full");
        let _ = std::fs::remove_file(self.path("probe"));
    }

    fn free(&self) {
        std::fs::remove_file(self.path("filler")).expect("remove the filler");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
    }
}

fn has_route(lab: &Lab, ip: &str) -> bool {
    lab.def_routes()
        .lines()
        .any(|l| l.starts_with(&format!("unreachable {ip} ")) || l == format!("unreachable {ip}"))
}

/// The targets the journal at `path` replays to as blocks in force (as `list` names them).
fn journaled(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut active = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: torn line {line:?}"));
        let target = v["target"].as_str().unwrap_or_default().to_string();
        match v["op"].as_str() {
            Some("block") => {
                active.insert(target, ());
            }
            Some("unblock") => {
                active.remove(&target);
            }
            _ => {}
        }
    }
    active.into_keys().collect()
}

/// Pads the journal with blank lines (replay skips them) to a whole number of pages, so
/// that on the full tmpfs its very next entry needs a page that is not there.
fn pad_to_page(path: &Path) {
    let len = std::fs::metadata(path).expect("journal").len() as usize;
    let pad = (4096 - len % 4096) % 4096;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("journal");
    f.write_all(&vec![b'\n'; pad]).expect("pad");
}

#[test]
fn on_a_full_disk_the_daemon_blocks_keeps_its_journal_entries_and_writes_them_once_space_returns() {
    let lab = Lab::new();
    let fs = SmallFs::new(&lab, "4m");
    let (state, history, blocked) = (
        fs.path("portsentry.state"),
        fs.path("portsentry.history"),
        fs.path("portsentry.blocked"),
    );
    let listen: SocketAddr = "127.0.0.1:9741".parse().unwrap();
    let conf = lab
        .write_config(&format!(
            "BLOCK_STATE_FILE=\"{}\"\nHISTORY_FILE=\"{}\"\nBLOCKED_FILE=\"{}\"\n\
             METRICS_LISTEN=\"{listen}\"\nTCP_PORTS=\"79,111\"\nBLOCK_TCP=\"1\"\n\
             KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\nKILL_HOSTS_DENY=\"\"",
            state.display(),
            history.display(),
            blocked.display()
        ))
        .display()
        .to_string();
    let (earlier, _) = lab.add_attacker_addrs(21);
    let (by_hand, _) = lab.add_attacker_addrs(22);
    let scanner = lab.att4.clone();

    // A first run, with room: one block journaled before the disk fills up.
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    lab.ctl_ok(&["block", &earlier, "--for", "1h"]);
    d.stop();
    assert_eq!(journaled(&state), [format!("{earlier}/32")]);
    pad_to_page(&state);
    let before = std::fs::read(&state).expect("journal");
    fs.fill();

    // --check-config warns about the full file system but passes.
    let out = Command::new(binary())
        .args(["--check-config", "-c", &conf, "-tcp"])
        .output()
        .expect("check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "BLOCK_STATE_FILE: \"{}\": its file system is full",
            state.display()
        )),
        "{err}"
    );

    // The start goes on and says so; the restored block comes back into the kernel.
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    d.expect_line("its file system is full", 5);
    d.expect_line(
        &format!(
            "ERROR: cannot write blocked file {}: No space left on device",
            blocked.display()
        ),
        5,
    );
    d.expect_line(
        &format!(
            "ERROR: cannot write block state file {}: No space left on device",
            state.display()
        ),
        10,
    );
    assert!(
        wait_for(5, || has_route(&lab, &earlier)),
        "{}",
        lab.def_routes()
    );

    // Detection and blocking as usual: a scanner and a block by hand.
    assert!(lab.connect_from(&scanner, 79));
    d.expect_line(
        &format!("Host {scanner} has been blocked via dropped route"),
        10,
    );
    assert!(has_route(&lab, &scanner), "{}", lab.def_routes());
    assert!(!lab.connect_from(&scanner, 111), "the scanner is cut off");
    lab.ctl_ok(&["block", &by_hand, "--for", "1h"]);
    assert!(has_route(&lab, &by_hand));

    // The journal is untouched, every entry waits in memory, and that shows.
    assert_eq!(
        std::fs::read(&state).expect("journal"),
        before,
        "not truncated"
    );
    let status = lab.ctl_ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("journal:"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains("failing since ")
            && line.contains("No space left on device")
            && line.contains("3 block(s) not yet journaled"),
        "{line}"
    );
    assert!(status.contains("history file:"), "{status}");
    let m = metrics(&lab, listen, 5);
    assert_eq!(value(&m, "portsentry_blocks_unjournaled", &[]), 3.0);
    assert_eq!(
        value(&m, "portsentry_file_write_failing", &[("file", "journal")]),
        1.0
    );

    // Space again: the next retry writes everything, in order.
    fs.free();
    d.expect_line(
        &format!("block state file {} can be written again", state.display()),
        15,
    );
    assert!(
        wait_for(10, || {
            lab.ctl_ok(&["status"])
                .lines()
                .any(|l| l.starts_with("journal:") && l.contains(" ok ("))
        }),
        "{}",
        lab.ctl_ok(&["status"])
    );
    let text = std::fs::read(&state).expect("journal");
    assert!(
        text.starts_with(&before),
        "what was journaled before is whole"
    );
    let mut expected = vec![
        format!("{earlier}/32"),
        format!("{by_hand}/32"),
        format!("{scanner}/32"),
    ];
    expected.sort();
    assert_eq!(journaled(&state), expected);
    assert!(
        wait_for(10, || std::fs::read_to_string(&history)
            .unwrap_or_default()
            .contains(&format!("/{scanner} Port: 79 TCP Blocked"))),
        "the history line waited too"
    );
    assert!(
        wait_for(5, || std::fs::read_to_string(&blocked)
            .unwrap_or_default()
            .lines()
            .count()
            == 3),
        "BLOCKED_FILE lists the three blocks"
    );
    let m = metrics(&lab, listen, 5);
    assert_eq!(value(&m, "portsentry_blocks_unjournaled", &[]), 0.0);

    // A restart restores every block made while the disk was full.
    let mut d = d;
    d.stop();
    lab.defend(&["ip", "route", "flush", "type", "unreachable"]);
    assert!(!lab.def_routes().contains("unreachable"));
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    assert!(
        wait_for(5, || [&earlier, &by_hand, &scanner]
            .iter()
            .all(|ip| has_route(&lab, ip))),
        "{}",
        lab.def_routes()
    );
    d.expect_line("restoring 3 block(s)", 5);
    assert_eq!(d.count("cannot write"), 0, "{:?}", d.lines());
}
