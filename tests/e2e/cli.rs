//! The client commands an admin reaches for, against a daemon holding blocks of three
//! origins (a scan, blocks by hand, a CrowdSec decision pulled from a real LAPI): `list`
//! filtered by address, network and origin, `status --json`, `unblock` of several targets
//! and `unblock --all [--origin O]`, `-t`; every `--json` output parsed.

use std::process::Output;

use crate::blocks::wait_for;
use crate::fleet::lapi::has_route;
use crate::fleet::pulling_daemon;
use crate::lab::{Lab, binary};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON: {e}: {out}"))
}

/// `list --json` with `args`: the targets listed, in order, hosts without their `/32` or
/// `/128` (as the table and the commands write them).
fn listed(lab: &Lab, args: &[&str]) -> Vec<String> {
    let mut all = vec!["list", "--json"];
    all.extend_from_slice(args);
    json(&lab.ctl_ok(&all))
        .as_array()
        .unwrap_or_else(|| panic!("list --json {args:?}: not an array"))
        .iter()
        .map(|b| {
            let t = b["target"].as_str().expect("target");
            t.strip_suffix("/32")
                .or_else(|| t.strip_suffix("/128"))
                .unwrap_or(t)
                .to_string()
        })
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn list_status_and_unblock_forms_against_blocks_of_several_origins() {
    let lab = Lab::new();
    let (lapi, d) = pulling_daemon(&lab);
    d.expect_line("CrowdSec LAPI http://127.0.0.1:8080: connected (pull)", 5);
    let att = lab.att4.clone();
    // A scan (a completed handshake on a trap port), two blocks by hand, a fleet decision.
    lab.connect_from(&att, 79);
    assert!(wait_for(5, || has_route(&lab, &att)), "scan block");
    lab.ctl_ok(&["block", "192.0.2.0/24", "198.51.100.7", "--for", "1h"]);
    let fleet_ip = "203.0.113.9";
    lapi.cscli_ok(&["decisions", "add", "--ip", fleet_ip, "--duration", "1h"]);
    assert!(wait_for(5, || has_route(&lab, fleet_ip)), "fleet block");

    let every = listed(&lab, &[]);
    assert_eq!(every.len(), 4, "{every:?}");
    // An address finds the block that covers it; a network the blocks inside it.
    assert_eq!(listed(&lab, &["192.0.2.77"]), ["192.0.2.0/24"]);
    assert_eq!(
        listed(&lab, &["198.51.100.0/24", &att]),
        {
            let mut want = vec![att.clone(), "198.51.100.7".to_string()];
            want.sort_by_key(|t| every.iter().position(|e| e == t));
            want
        },
        "in the daemon's order"
    );
    // By origin, alone or with an address.
    assert_eq!(listed(&lab, &["--origin", "scan"]), [att.as_str()]);
    assert_eq!(listed(&lab, &["--origin", "fleet"]), [fleet_ip]);
    assert_eq!(listed(&lab, &["--origin", "fleet:cscli"]), [fleet_ip]);
    let manual = listed(&lab, &["--origin", "manual"]);
    assert_eq!(manual.len(), 2, "{manual:?}");
    assert!(listed(&lab, &["192.0.2.77", "--origin", "scan"]).is_empty());
    let table = lab.ctl_ok(&["list", "10.99.0.1"]);
    assert_eq!(table, "no block in force matches\n");
    let rows = lab.ctl_ok(&["list", "--origin", "fleet"]);
    assert!(
        rows.lines().nth(1).is_some_and(|r| r.starts_with(fleet_ip)),
        "{rows}"
    );
    // A wrong origin is a usage error, nothing sent.
    let bad = lab.ctl(&["list", "--origin", "cron"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    let status = json(&lab.ctl_ok(&["status", "--json"]));
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(status["counters"]["blocks_active"], 4, "{status}");
    assert_eq!(status["modes"], serde_json::json!(["tcp"]), "{status}");
    assert_eq!(status["fleet"][0]["direction"], "pull", "{status}");

    // Several targets: each lifted and reported; one not blocked fails the command.
    let out = lab.ctl(&["unblock", "198.51.100.7", "10.77.250.250"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("198.51.100.7: unblocked"), "{said}");
    assert!(
        said.contains("10.77.250.250: NOT unblocked: ") && said.contains("1 unblocked, 1 failed"),
        "{said}"
    );
    assert!(!has_route(&lab, "198.51.100.7"), "{}", lab.def_routes());
    // --all of one origin leaves the others.
    let out = lab.ctl_ok(&["unblock", "--all", "--origin", "scan"]);
    assert!(out.contains(&format!("{att}: unblocked")), "{out}");
    assert!(out.contains("1 unblocked, 0 failed"), "{out}");
    assert!(!has_route(&lab, &att), "{}", lab.def_routes());
    assert!(has_route(&lab, "192.0.2.0/24") && has_route(&lab, fleet_ip));
    let out = lab.ctl_ok(&["unblock", "--all", "--origin", "scan"]);
    assert_eq!(out, "no block of origin scan in force\n");
    // --all: everything else.
    let out = lab.ctl_ok(&["unblock", "--all"]);
    assert!(out.contains("2 unblocked, 0 failed"), "{out}");
    assert!(listed(&lab, &[]).is_empty());
    assert!(!has_route(&lab, "192.0.2.0/24") && !has_route(&lab, fleet_ip));
    // Addresses and --all do not mix: a usage error, nothing lifted.
    let out = lab.ctl(&["unblock", "10.0.0.1", "--all"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn t_is_check_config_with_its_exit_codes() {
    let lab = Lab::new();
    let good = lab.write_config("TCP_PORTS=\"79\"");
    let out = std::process::Command::new(binary())
        .arg("-t")
        .arg("-c")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("configuration OK"), "{}", text(&out));
    let bad = lab.write_config("TCP_PORTS=\"1,abc\"");
    let out = std::process::Command::new(binary())
        .args(["-t", "-tcp", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(":1: TCP_PORTS:"), "{}", text(&out));
}
