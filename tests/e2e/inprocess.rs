//! The in-process responders against the commands they stand for: `KILL_ROUTE` over
//! rtnetlink leaves the kernel's tables as `ip route` / `route` leave them, blocks and
//! undo alike, and logs and records the command it stands for; any other `KILL_ROUTE`
//! still runs as a command.

use crate::lab::{Daemon, Lab};

/// A host and a network of each family inside the lab's own addresses (`10.77.N.x`,
/// `fd77:N::x`), never the lab's two hosts.
fn targets(lab: &Lab) -> Vec<String> {
    let net4 = lab.def4.trim_end_matches(".1");
    let net6 = lab.def6.trim_end_matches("::1");
    vec![
        format!("{net4}.41"),
        format!("{net4}.128/26"),
        format!("{net6}::41"),
        format!("{net6}:0:1::/64"),
    ]
}

/// Runs a daemon with `kill_route` (and `unkill_route` when given), blocks `targets` by
/// hand, and returns the defender's route tables after the blocks and after their undo,
/// with the daemon's log, the `unblock` answers and which blocks were made.
fn block_and_unblock(
    lab: &Lab,
    kill_route: &str,
    unkill_route: Option<&str>,
    targets: &[String],
) -> (String, String, Vec<String>, String, Vec<bool>) {
    let unkill = unkill_route.map_or(String::new(), |u| format!("UNKILL_ROUTE=\"{u}\"\n"));
    let conf = lab.write_config(&format!(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nKILL_HOSTS_DENY=\"\"\nKILL_NFTABLES=\"0\"\n\
         KILL_ROUTE=\"{kill_route}\"\n{unkill}"
    ));
    let mut d = Daemon::start(lab, &["-c", &conf.display().to_string(), "-tcp"]);
    let made: Vec<bool> = targets
        .iter()
        .map(|t| lab.ctl(&["block", t]).status.success())
        .collect();
    let blocked = lab.def_routes();
    let mut answers = String::new();
    for (t, _) in targets.iter().zip(&made).filter(|(_, m)| **m) {
        answers += &lab.ctl_ok(&["unblock", t]);
    }
    let after = lab.def_routes();
    d.stop();
    (blocked, after, d.lines(), answers, made)
}

#[test]
fn in_process_kill_route_leaves_the_tables_the_command_leaves_and_logs_the_command() {
    let lab = Lab::new();
    let targets = targets(&lab);
    let before = lab.def_routes();
    for (kill, unkill) in [
        (
            "/sbin/ip route add unreachable $TARGET$",
            "/sbin/ip route del unreachable $TARGET$",
        ),
        (
            "ip route add blackhole $TARGET$",
            "ip route del blackhole $TARGET$",
        ),
        (
            "/sbin/route add -host $TARGET$ reject",
            "/sbin/route del -host $TARGET$ reject",
        ),
    ] {
        // The same command through the shell: `exec` makes it a form not taken over.
        let (cmd_blocked, cmd_after, cmd_log, _, cmd_made) = block_and_unblock(
            &lab,
            &format!("exec {kill}"),
            Some(&format!("exec {unkill}")),
            &targets,
        );
        let (nl_blocked, nl_after, nl_log, nl_answers, nl_made) =
            block_and_unblock(&lab, kill, None, &targets);
        assert_eq!(nl_made, cmd_made, "{kill}: the same blocks made");
        assert_eq!(nl_blocked, cmd_blocked, "{kill}: blocked");
        assert_eq!(nl_after, cmd_after, "{kill}: undone");
        assert_eq!(nl_after, before, "{kill}: nothing left behind");
        // Positive control: the blocks were there (net-tools takes only the IPv4 host: its
        // command fails for the rest, and so does the in-process form, by running it).
        let host4 = &targets[0];
        assert!(
            cmd_blocked.contains(&format!("{host4} ")),
            "{kill}: {cmd_blocked}"
        );
        for t in &targets {
            let shown = t.as_str();
            if !cmd_blocked.contains(shown) {
                continue;
            }
            let line = format!(
                "attackalert: Host {shown} has been blocked via dropped route using command: \"{}\"",
                kill.replace("$TARGET$", shown)
            );
            assert!(
                nl_log.iter().any(|l| l.ends_with(&line)),
                "{line} in {nl_log:#?}"
            );
            let cmd_line = line.replace("command: \"", "command: \"exec ");
            assert!(cmd_log.iter().any(|l| l.ends_with(&cmd_line)), "{cmd_line}");
        }
        assert!(
            nl_answers.contains("over rtnetlink"),
            "the undo went over rtnetlink: {nl_answers}"
        );
    }
}

#[test]
fn a_kill_route_of_another_form_still_runs_as_a_command_and_check_config_says_which() {
    let lab = Lab::new();
    let marker = lab.path("ran");
    let kill = format!(
        "/sbin/ip route add unreachable $TARGET$ && echo $TARGET$ >> {}",
        marker.display()
    );
    let targets = targets(&lab);
    let (blocked, after, lines, _, made) = block_and_unblock(
        &lab,
        &kill,
        Some("/sbin/ip route del unreachable $TARGET$"),
        &targets[..1],
    );
    assert!(
        blocked.contains(&format!("unreachable {} ", targets[0])),
        "{blocked}\nblock answered success: {made:?}\ndaemon: {lines:#?}"
    );
    assert!(!after.contains(&targets[0]), "{after}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        format!("{}\n", targets[0]),
        "the command ran, through the shell"
    );
    let check = |kill: &str| {
        let conf = lab.write_config(&format!("KILL_ROUTE=\"{kill}\"\n"));
        let out = std::process::Command::new(crate::lab::binary())
            .args(["--check-config", "-c", &conf.display().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = check(&kill);
    assert!(said.contains("runs as a command through /bin/sh"), "{said}");
    let said = check("/sbin/ip route add unreachable $TARGET$");
    assert!(
        said.contains("is done in-process over rtnetlink (no command runs)"),
        "{said}"
    );
}

/// Writes the lab's journal: a block of each of `targets` made by hand, in this order, each
/// ending `left` from now.
fn journal_blocks(lab: &Lab, targets: &[String], left: std::time::Duration) {
    use portsentry::block::journal::{Entry, Journal};
    use portsentry::block::{BlockRecord, Origin};
    let (mut journal, _) = Journal::open(&lab.path("portsentry.state")).expect("journal");
    let base = std::time::SystemTime::now();
    let entries: Vec<Entry> = targets
        .iter()
        .zip(0u64..)
        .map(|(t, i)| {
            let since = base + std::time::Duration::from_millis(i);
            Entry::Block(BlockRecord {
                members: Vec::new(),
                target: portsentry::record::parse_target(t).expect("target"),
                since,
                until: Some(base + left),
                offences: 1,
                origin: Origin::Manual,
                trigger: None,
                reason: "test".into(),
                actions: Vec::new(),
            })
        })
        .collect();
    journal.append(&entries).expect("append");
}

/// tcpdmatch's verdict on each client.
fn verdicts(lab: &Lab, clients: &[String]) -> Vec<String> {
    clients
        .iter()
        .map(|c| crate::hosts_deny::tcpd_verdict(lab, c.split('/').next().unwrap_or(c)))
        .collect()
}

#[test]
fn hosts_deny_batches_leave_the_file_and_verdicts_that_blocks_one_by_one_leave() {
    let lab = Lab::new();
    std::fs::write(lab.path("hosts.allow"), "").unwrap();
    let net4 = lab.def4.trim_end_matches(".1").to_string();
    let net6 = lab.def6.trim_end_matches("::1").to_string();
    let mut targets: Vec<String> = (40..70)
        .flat_map(|h| [format!("{net4}.{h}"), format!("{net6}::{h}")])
        .collect();
    targets.push(format!("{net4}.128/26"));
    let bystander = format!("{net4}.99");
    // A file with the admin's own lines, the last without its newline.
    let original = format!("# by hand\nsshd: {net4}.200\nALL: {bystander} : ALLOW");
    let conf = lab.write_config(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nKILL_ROUTE=\"\"\nKILL_NFTABLES=\"0\"\n\
         KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"",
    );
    let conf = conf.display().to_string();
    let mut probes = targets.clone();
    probes.push(bystander.clone());

    // One by one: blocks made by hand, each its own job, then lifted one by one.
    std::fs::write(lab.path("hosts.deny"), &original).unwrap();
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    for t in &targets {
        lab.ctl_ok(&["block", t, "--for", "1h"]);
    }
    let single_blocked = lab.read("hosts.deny");
    let single_verdicts = verdicts(&lab, &probes);
    for t in &targets {
        lab.ctl_ok(&["unblock", t]);
    }
    let single_after = lab.read("hosts.deny");
    d.stop();

    // In batches: the same blocks restored from the journal at start, then expiring
    // together.
    std::fs::remove_file(lab.path("portsentry.state")).unwrap();
    std::fs::write(lab.path("hosts.deny"), &original).unwrap();
    journal_blocks(&lab, &targets, std::time::Duration::from_secs(6));
    let mut d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    d.expect_line(&format!("{} block(s) re-applied", targets.len()), 10);
    let batch_blocked = lab.read("hosts.deny");
    let batch_verdicts = verdicts(&lab, &probes);
    assert!(
        crate::blocks::wait_for(20, || d.count("(block expired after") >= targets.len()),
        "every block expires"
    );
    let batch_after = lab.read("hosts.deny");
    d.stop();

    assert_eq!(batch_blocked, single_blocked);
    assert_eq!(batch_verdicts, single_verdicts);
    assert_eq!(batch_after, single_after);
    // Positive controls: every blocked client denied, the bystander granted, and the
    // admin's lines back as they were (the missing newline mended by the first append).
    let (blocked, others) = single_verdicts.split_at(targets.len());
    assert!(blocked.iter().all(|v| v == "denied"), "{single_verdicts:?}");
    assert_eq!(others, ["granted"]);
    assert_eq!(single_after, format!("{original}\n"));
    assert_eq!(
        single_blocked.lines().count(),
        3 + targets.len(),
        "{single_blocked}"
    );
}
