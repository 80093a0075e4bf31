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
    let (blocked, after, _, _, _) = block_and_unblock(
        &lab,
        &kill,
        Some("/sbin/ip route del unreachable $TARGET$"),
        &targets[..1],
    );
    assert!(
        blocked.contains(&format!("unreachable {} ", targets[0])),
        "{blocked}"
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
