//! Hot reload, end to end: the config file watcher and SIGHUP, one test per kind of edit.
//! Every test edits files under a running daemon and checks what a scanner sees next.

use std::path::PathBuf;
use std::time::Duration;

use crate::lab::{Daemon, Lab};

/// Upper bound for a reload to be in force after a save (debounce included).
const RELOAD_SECS: u64 = 5;

/// The lab's config text: the lab's paths, logging only unless `extra` says otherwise.
fn conf_text(lab: &Lab, extra: &str) -> String {
    lab.config_text(&format!("{extra}\nBLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\""))
}

/// Writes the config in place (truncate and write the same inode), as `echo >` or an
/// editor with `backupcopy=yes` does.
fn write_in_place(lab: &Lab, extra: &str) -> PathBuf {
    let conf = lab.path("portsentry.conf");
    std::fs::write(&conf, conf_text(lab, extra)).expect("write config");
    conf
}

/// Saves the config as vim does by default: a new file beside it, renamed over it.
fn save_by_rename(lab: &Lab, extra: &str) {
    let tmp = lab.path(".portsentry.conf.swx");
    std::fs::write(&tmp, conf_text(lab, extra)).expect("write temp config");
    std::fs::rename(&tmp, lab.path("portsentry.conf")).expect("rename config");
}

/// Starts `-tcp` with the given config lines.
fn start(lab: &Lab, extra: &str) -> Daemon {
    if !lab.path("portsentry.ignore").exists() {
        std::fs::write(lab.path("portsentry.ignore"), "127.0.0.1/32\n").expect("ignore");
    }
    let conf = write_in_place(lab, extra);
    Daemon::start(lab, &["-c", &conf.display().to_string(), "-tcp"])
}

fn in_force(d: &Daemon, generation: u64) {
    d.expect_line(
        &format!("adminalert: configuration reloaded, generation {generation} in force"),
        RELOAD_SECS,
    );
}

/// One TCP connection from the attacker; true when it was accepted.
fn connect(lab: &Lab, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{}/{port}", lab.def4);
    lab.attack(&["timeout", "5", "bash", "-c", &script])
        .status
        .success()
}

/// Connects to a port a reload has just opened; the sensor binds it right after taking
/// the new generation, so allow it a few tries.
fn connect_new_port(lab: &Lab, port: u16) {
    for _ in 0..20 {
        if connect(lab, port) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port} never accepted a connection");
}

fn detection(lab: &Lab, port: u16) -> String {
    let a = &lab.att4;
    format!("attackalert: Connect from host: {a}/{a} to TCP port: {port}")
}

#[test]
fn write_in_place_applies_new_block_level_and_commands() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    let out = lab.path("cmd.out");
    write_in_place(
        &lab,
        &format!(
            "TCP_PORTS=\"79\"\nBLOCK_TCP=\"2\"\nKILL_RUN_CMD=\"echo ran $TARGET$ >> {}\"",
            out.display()
        ),
    );
    in_force(&d, 2);
    assert!(connect(&lab, 79));
    d.expect_line(
        &format!("attackalert: External command run for host: {}", lab.att4),
        10,
    );
    assert_eq!(lab.read("cmd.out").trim(), format!("ran {}", lab.att4));
}

#[test]
fn save_by_rename_is_seen_every_time() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    save_by_rename(&lab, "TCP_PORTS=\"79,1524\"");
    in_force(&d, 2);
    // The first rename replaced the watched inode; the next save must still be seen.
    save_by_rename(&lab, "TCP_PORTS=\"79,1524,6667\"");
    in_force(&d, 3);
    connect_new_port(&lab, 6667);
    d.expect_line(&detection(&lab, 6667), 10);
}

#[test]
fn added_trap_port_is_opened_and_catches_a_scan() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    assert!(!connect(&lab, 1524), "not a trap port yet");
    save_by_rename(&lab, "TCP_PORTS=\"79,1524\"");
    in_force(&d, 2);
    d.expect_line("adminalert: Going into listen mode on TCP port: 1524", 5);
    connect_new_port(&lab, 1524);
    lab.scan("-sT", "1524", false);
    d.expect_line(&detection(&lab, 1524), 10);
}

#[test]
fn removed_trap_port_is_closed_and_the_others_stay_open() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79,1524\"");
    assert!(connect(&lab, 1524));
    d.expect_line(&detection(&lab, 1524), 10);
    save_by_rename(&lab, "TCP_PORTS=\"79\"");
    in_force(&d, 2);
    d.expect_line("adminalert: No longer listening on TCP port: 1524", 5);
    assert!(
        !connect(&lab, 1524),
        "connection to a removed port is refused"
    );
    let out = lab.scan("-sT", "1524", false);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1524/tcp closed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(connect(&lab, 79), "an unchanged port stays open");
    d.expect_line(&detection(&lab, 79), 10);
    assert_eq!(
        d.count("Going into listen mode on TCP port: 79"),
        1,
        "not reopened"
    );
}

#[test]
fn scanner_added_to_ignore_file_is_ignored_from_the_next_probe() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    assert!(connect(&lab, 79));
    d.expect_line(&detection(&lab, 79), 10);
    std::fs::write(
        lab.path("portsentry.ignore"),
        format!("127.0.0.1/32\n{}/32\n", lab.att4),
    )
    .expect("ignore");
    in_force(&d, 2);
    assert!(connect(&lab, 79));
    assert!(connect(&lab, 79));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.count(&detection(&lab, 79)), 1, "{:?}", d.lines());
    // Out of the ignore file again, then into the static file beside it.
    std::fs::write(lab.path("portsentry.ignore"), "127.0.0.1/32\n").expect("ignore");
    in_force(&d, 3);
    assert!(connect(&lab, 79));
    d.expect_line(&detection(&lab, 79), 10);
    std::fs::write(
        lab.path("portsentry.ignore.static"),
        format!("{}\n", lab.att4),
    )
    .expect("static ignore");
    in_force(&d, 4);
    assert!(connect(&lab, 79));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.count(&detection(&lab, 79)), 2, "{:?}", d.lines());
}

#[test]
fn file_completed_100ms_after_a_half_write_is_not_reported_as_an_error() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    let text = conf_text(&lab, "TCP_PORTS=\"79,1524\"");
    // Cut inside the first value: on its own, this half is refused (no closing quote).
    let (first, rest) = text.split_at(text.find("1524").expect("port"));
    let mut f = std::fs::File::create(lab.path("portsentry.conf")).expect("create");
    std::io::Write::write_all(&mut f, first.as_bytes()).expect("first half");
    std::thread::sleep(Duration::from_millis(100));
    std::io::Write::write_all(&mut f, rest.as_bytes()).expect("second half");
    drop(f);
    in_force(&d, 2);
    connect_new_port(&lab, 1524);
    // One reload, of the whole file: the half was never read.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.count("in force"), 1, "{:?}", d.lines());
    assert_eq!(d.count("reload refused"), 0, "{:?}", d.lines());
}

#[test]
fn broken_config_keeps_the_old_one_names_file_and_line_then_the_fix_applies() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    let conf = lab.path("portsentry.conf");
    write_in_place(&lab, "TCP_PORTS=\"79,1524\"\nSCAN_TRIGGER_WINDOW=\"10\"");
    let err = d.expect_line("adminalert: ERROR: reload refused:", RELOAD_SECS);
    assert!(
        err.contains(&format!("{}:2: SCAN_TRIGGER_WINDOW", conf.display())),
        "{err}"
    );
    d.expect_line("adminalert: ERROR: keeping configuration generation 1", 5);
    // The old generation still works, and nothing of the new one was applied.
    assert!(connect(&lab, 79));
    d.expect_line(&detection(&lab, 79), 10);
    assert!(
        !connect(&lab, 1524),
        "port of the refused config not opened"
    );
    assert_eq!(d.count("in force"), 0);
    write_in_place(&lab, "TCP_PORTS=\"79,1524\"\nSCAN_TRIGGER_WINDOW=\"10s\"");
    in_force(&d, 2);
    connect_new_port(&lab, 1524);
    d.expect_line(&detection(&lab, 1524), 10);
}

#[test]
fn broken_ignore_file_is_refused_naming_its_line() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    let ignore = lab.path("portsentry.ignore");
    std::fs::write(&ignore, format!("127.0.0.1\n{}/33\n", lab.att4)).expect("ignore");
    let err = d.expect_line("adminalert: ERROR: reload refused:", RELOAD_SECS);
    assert!(err.contains(&format!("{}:2: ", ignore.display())), "{err}");
    assert!(err.contains("prefix length 33"), "{err}");
    assert!(connect(&lab, 79), "the old ignore list is still in force");
    d.expect_line(&detection(&lab, 79), 10);
}

#[test]
fn deleted_config_is_a_refused_reload_and_its_return_applies() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    std::fs::remove_file(lab.path("portsentry.conf")).expect("remove");
    d.expect_line("cannot read the configuration file", RELOAD_SECS);
    d.expect_line("keeping configuration generation 1", 5);
    assert!(connect(&lab, 79));
    d.expect_line(&detection(&lab, 79), 10);
    save_by_rename(&lab, "TCP_PORTS=\"79,1524\"");
    in_force(&d, 2);
    connect_new_port(&lab, 1524);
}

#[test]
fn sighup_reloads_and_reading_the_files_does_not_trigger_the_watcher() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    d.signal("HUP");
    in_force(&d, 2);
    // The reload read every watched file; reads must not look like edits.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(d.count("in force"), 1, "{:?}", d.lines());
    d.signal("HUP");
    in_force(&d, 3);
    assert!(connect(&lab, 79));
    d.expect_line(&detection(&lab, 79), 10);
}

#[test]
fn trigger_counts_and_blocked_set_survive_reloads() {
    let lab = Lab::new();
    let out = lab.path("cmd.out");
    let blocking = |ports: &str| {
        format!(
            "TCP_PORTS=\"{ports}\"\nSCAN_TRIGGER=\"3\"\nBLOCK_TCP=\"2\"\n\
             KILL_RUN_CMD=\"echo ran $TARGET$ >> {}\"",
            out.display()
        )
    };
    let d = start(&lab, &blocking("79,111,1524"));
    assert!(connect(&lab, 79));
    assert!(connect(&lab, 111));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.count("attackalert:"), 0, "below the trigger");
    save_by_rename(&lab, &blocking("79,111,1524,6667"));
    in_force(&d, 2);
    assert!(connect(&lab, 1524));
    d.expect_line(&detection(&lab, 1524), 10);
    d.expect_line("attackalert: External command run for host:", 10);
    save_by_rename(&lab, &blocking("79,111,1524"));
    in_force(&d, 3);
    assert!(connect(&lab, 79));
    d.expect_line(
        &format!(
            "attackalert: Host: {} is already blocked. Ignoring",
            lab.att4
        ),
        10,
    );
    assert_eq!(lab.read("cmd.out").lines().count(), 1, "blocked once");
}

#[test]
fn history_and_blocked_files_follow_a_reload_keeping_the_blocked_set() {
    let lab = Lab::new();
    let out = lab.path("cmd.out");
    let extra = |dir: &str| {
        format!(
            "TCP_PORTS=\"79,111\"\nBLOCK_TCP=\"2\"\nKILL_RUN_CMD=\"echo ran >> {out}\"\n\
             HISTORY_FILE=\"{d}/history\"\nBLOCKED_FILE=\"{d}/blocked\"",
            out = out.display(),
            d = lab.path(dir).display()
        )
    };
    let d = start(&lab, &extra("one"));
    assert!(connect(&lab, 79));
    d.expect_line("attackalert: External command run for host:", 10);
    save_by_rename(&lab, &extra("two"));
    in_force(&d, 2);
    d.expect_line("adminalert: history file is now", 5);
    assert!(connect(&lab, 111));
    d.expect_line("is already blocked. Ignoring", 10);
    let host = format!("/{} Port: 79 TCP Blocked", lab.att4);
    assert!(lab.read("one/history").contains(&host));
    assert!(
        lab.read("two/blocked").contains(&host),
        "the new blocked file gets the blocks in memory"
    );
    // A path that cannot be opened refuses the reload, naming the key's line.
    std::fs::write(lab.path("two/dir-not-file"), "").expect("file");
    let bad = extra("two").replace("two/history", "two/dir-not-file/history");
    save_by_rename(&lab, &bad);
    let err = d.expect_line("adminalert: ERROR: reload refused:", RELOAD_SECS);
    assert!(err.contains(":4: HISTORY_FILE:"), "{err}");
}

#[test]
fn broken_lua_plugin_keeps_the_previous_version_and_its_fix_applies() {
    let lab = Lab::new();
    let plugins = lab.path("plugins");
    std::fs::create_dir(&plugins).expect("plugins dir");
    let plugin = plugins.join("tag.lua");
    let version = |v: &str| {
        format!(
            "portsentry.on('alert', function(ev)\n  \
             portsentry.append_line(portsentry.config.file, '{v} ' .. ev.ip)\nend)\n"
        )
    };
    std::fs::write(&plugin, version("v1")).expect("plugin");
    let lua = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua");
    let d = start(
        &lab,
        &format!(
            "TCP_PORTS=\"79\"\nPLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}\"\n\
             LUA_RESPONDERS=\"tag\"\nTAG_FILE=\"{}\"",
            plugins.display(),
            lua.display(),
            lab.path("tag.out").display()
        ),
    );
    let tagged = |n: usize| {
        for _ in 0..100 {
            if lab.read("tag.out").lines().count() >= n {
                return lab.read("tag.out");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tag.out: {:?}; log: {:?}", lab.read("tag.out"), d.lines());
    };
    assert!(connect(&lab, 79));
    assert!(tagged(1).ends_with(&format!("v1 {}\n", lab.att4)));
    // Vim-style save of a plugin with a syntax error on line 2.
    let tmp = plugins.join(".tag.lua.swp");
    std::fs::write(
        &tmp,
        "portsentry.on('alert', function(ev)\n  local = 1\nend)\n",
    )
    .expect("broken plugin");
    std::fs::rename(&tmp, &plugin).expect("rename plugin");
    let err = d.expect_line("adminalert: ERROR: reload refused:", RELOAD_SECS);
    assert!(err.contains("tag.lua:2"), "{err}");
    d.expect_line("keeping configuration generation 1", 5);
    assert!(connect(&lab, 79));
    assert!(
        tagged(2).ends_with(&format!("v1 {}\n", lab.att4)),
        "the previous plugin code still runs"
    );
    std::fs::write(&tmp, version("v3")).expect("fixed plugin");
    std::fs::rename(&tmp, &plugin).expect("rename plugin");
    in_force(&d, 2);
    assert!(connect(&lab, 79));
    assert!(tagged(3).ends_with(&format!("v3 {}\n", lab.att4)));
}

#[test]
fn modes_file_asking_for_other_modes_is_reported_as_needing_a_restart() {
    let lab = Lab::new();
    std::fs::write(lab.path("portsentry.ignore"), "127.0.0.1/32\n").expect("ignore");
    let conf = write_in_place(&lab, "TCP_PORTS=\"79\"");
    let modes = lab.path("default-portsentry");
    std::fs::write(&modes, "TCP_MODE=\"tcp\"\n").expect("modes file");
    let d = Daemon::start(
        &lab,
        &[
            "-c",
            &conf.display().to_string(),
            "--modes-file",
            &modes.display().to_string(),
        ],
    );
    d.expect_line("is starting in mode(s): tcp", 5);
    std::fs::write(&modes, "TCP_MODE=\"atcp\"\nUDP_MODE=\"audp\"\n").expect("modes file");
    d.signal("HUP");
    in_force(&d, 2);
    d.expect_line(
        &format!(
            "adminalert: WARNING: {} now asks for mode(s) atcp, audp: modes change only with a restart; still running tcp",
            modes.display()
        ),
        5,
    );
    // The running mode goes on.
    assert!(connect(&lab, 79));
    d.expect_line(&detection(&lab, 79), 10);
}

#[test]
fn ignore_edit_applies_while_a_broken_config_stays_refused() {
    let lab = Lab::new();
    let (other4, _) = lab.add_attacker_addrs(9);
    let d = start(&lab, "TCP_PORTS=\"79\"");
    let conf = lab.path("portsentry.conf");
    write_in_place(&lab, "TCP_PORTS=\"79,x\"");
    d.expect_line("keeping configuration generation 1", RELOAD_SECS);
    // The emergency brake: the scanner goes into the ignore file while the config is broken.
    let ignore = lab.path("portsentry.ignore");
    std::fs::write(&ignore, format!("127.0.0.1/32\n{}/32\n", lab.att4)).expect("ignore");
    let said = d.expect_line("its last good version stays in force", RELOAD_SECS);
    assert!(
        said.contains(&format!(
            "{} refused, its last good version stays in force; {} applied",
            conf.display(),
            ignore.display()
        )),
        "{said}"
    );
    in_force(&d, 2);
    // The ignored scanner is not reported; another source is (positive control).
    assert!(lab.connect_from(&lab.att4.clone(), 79));
    assert!(lab.connect_from(&other4, 79));
    d.expect_line(
        &format!("attackalert: Connect from host: {other4}/{other4} to TCP port: 79"),
        10,
    );
    assert_eq!(d.count(&detection(&lab, 79)), 0, "{:?}", d.lines());
}

#[test]
fn a_fifo_named_at_reload_is_refused_and_later_reloads_and_sigterm_still_work() {
    let lab = Lab::new();
    let mut d = start(&lab, "TCP_PORTS=\"79\"");
    let fifo = lab.path("fifo.ignore");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    write_in_place(
        &lab,
        &format!("TCP_PORTS=\"79\"\nIGNORE_FILE=\"{}\"", fifo.display()),
    );
    let err = d.expect_line("adminalert: ERROR: reload refused:", RELOAD_SECS);
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    // A later valid edit still reloads (nothing is stuck on the FIFO)…
    write_in_place(&lab, "TCP_PORTS=\"79,1524\"");
    in_force(&d, 2);
    connect_new_port(&lab, 1524);
    // …and SIGTERM still stops the daemon.
    d.signal("TERM");
    assert!(d.wait_exit(10).is_some(), "{:?}", d.lines());
}

#[test]
fn a_reload_that_would_refuse_a_start_is_refused_and_the_ports_stay_open() {
    let lab = Lab::new();
    let d = start(&lab, "TCP_PORTS=\"79\"");
    let conf = lab.path("portsentry.conf");
    write_in_place(&lab, "TCP_PORTS=\"\"");
    let err = d.expect_line("adminalert: ERROR: reload refused:", RELOAD_SECS);
    assert!(
        err.contains(&format!(
            "{}:1: TCP_PORTS: no port to watch in -tcp mode",
            conf.display()
        )),
        "{err}"
    );
    d.expect_line("keeping configuration generation 1", 5);
    assert!(
        connect(&lab, 79),
        "the trap port of generation 1 is still open"
    );
    d.expect_line(&detection(&lab, 79), 10);
}
