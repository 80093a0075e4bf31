//! Lua responders driven by the real daemon: a scan puts the scanner into a real nftables
//! set / iptables chain inside the defender namespace, a veto stops the built-in route, and
//! `--test-plugin` tries each shipped plugin.

use std::time::Duration;

use crate::lab::{ChildGuard, Daemon, Lab, binary, fake_sendmail, repo};

fn lua_config(lab: &Lab, extra: &str) -> String {
    lab.write_config(&format!(
        "{extra}\n\
         TCP_PORTS=\"79,11\"\n\
         BLOCK_TCP=\"1\"\n\
         PLUGIN_DIR=\"{plugins}\"\n\
         LUA_PATH_DIR=\"{lua}\"\n\
         KILL_HOSTS_DENY=\"\"\n\
         KILL_ROUTE=\"\"\n",
        plugins = repo("plugins").display(),
        lua = repo("lua").display(),
    ))
    .display()
    .to_string()
}

/// True when an HTTP fetch from the attacker to the defender's service succeeds.
fn attacker_reaches_service(lab: &Lab) -> bool {
    lab.fetch(&format!("http://{}:8080/", lab.def4))
}

fn wait_for_service(lab: &Lab) {
    for _ in 0..50 {
        if attacker_reaches_service(lab) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the defender's service never answered");
}

/// A classic-mode daemon with one firewall plugin and a real service on port 8080 that the
/// attacker can reach; then a connect scan from the attacker (IPv4), blocked by the plugin.
fn scanned_with_plugin(lab: &Lab, plugin: &str) -> (Daemon, ChildGuard) {
    let conf = lua_config(lab, &format!("LUA_RESPONDERS=\"{plugin}\""));
    let service = lab.spawn_in_def(&["python3", "-m", "http.server", "--bind", "::", "8080"]);
    let d = Daemon::start(lab, &["-c", &conf, "-tcp"]);
    wait_for_service(lab);
    lab.scan("-sT", "79", false);
    d.expect_line(
        &format!(
            "attackalert: Host {} has been blocked via lua:{plugin}",
            lab.att4
        ),
        20,
    );
    (d, service)
}

#[test]
fn scan_puts_the_scanner_into_a_real_nftables_set_and_its_next_connection_is_dropped() {
    let lab = Lab::new();
    let (d, _service) = scanned_with_plugin(&lab, "nftables");
    let set = lab.defend(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v4"]);
    let listing = String::from_utf8_lossy(&set.stdout);
    assert!(listing.contains(&lab.att4), "{listing}");
    assert!(!attacker_reaches_service(&lab), "the scanner is dropped");
    // IPv6 goes to the other set.
    lab.scan("-sT", "79", true);
    d.expect_line(
        &format!(
            "attackalert: Host {} has been blocked via lua:nftables",
            lab.att6
        ),
        20,
    );
    let set6 = lab.defend(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v6"]);
    assert!(String::from_utf8_lossy(&set6.stdout).contains(&lab.att6));
    let history = lab.read("portsentry.history");
    assert_eq!(history.lines().count(), 2, "{history}");
}

#[test]
fn scan_puts_the_scanner_into_an_iptables_chain() {
    let lab = Lab::new();
    let (_d, _service) = scanned_with_plugin(&lab, "iptables");
    let rules = lab.defend(&["iptables", "-S", "portsentry"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains(&format!("-s {}/32", lab.att4)), "{rules}");
    assert!(!attacker_reaches_service(&lab), "the scanner is dropped");
}

#[test]
fn allowlist_veto_stops_the_built_in_route() {
    let lab = Lab::new();
    let conf = lua_config(
        &lab,
        &format!(
            "LUA_RESPONDERS=\"allowlist\"\nLUA_RESPONDERS_FIRST=\"1\"\nALLOWLIST_NETS=\"{}/24\"\n\
             KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"",
            lab.att4
        ),
    );
    let d = Daemon::start(&lab, &["-c", &conf, "-tcp"]);
    lab.scan("-sT", "79", false);
    d.expect_line(
        &format!(
            "attackalert: Host {} not blocked: vetoed by lua:allowlist",
            lab.att4
        ),
        20,
    );
    // The IPv6 scanner is not on the list: the route is added for it.
    lab.scan("-sT", "79", true);
    d.expect_line(
        &format!(
            "attackalert: Host {} has been blocked via dropped route",
            lab.att6
        ),
        20,
    );
    let routes = lab.def_routes();
    assert!(
        !routes.contains(&format!("unreachable {}", lab.att4)),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("unreachable {}", lab.att6)),
        "{routes}"
    );
    assert_eq!(lab.read("portsentry.history").lines().count(), 1);
}

#[test]
fn broken_plugin_at_start_refuses_the_start_as_check_config_does() {
    let lab = Lab::new();
    let plugins = lab.path("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(
        plugins.join("broken.lua"),
        "portsentry.on('block', function(\n",
    )
    .unwrap();
    let conf = lab.write_config(&format!(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nPLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}\"\n\
         LUA_RESPONDERS=\"broken\"\nKILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n\
         KILL_HOSTS_DENY=\"\"",
        plugins.display(),
        repo("lua").display()
    ));
    // A security daemon must not run silently without a responder it was told to run.
    let mut d = Daemon::spawn(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
    assert_eq!(d.wait_exit(20).and_then(|s| s.code()), Some(1));
    let log = d.lines().join("\n");
    assert!(log.contains("broken.lua:"), "{log}");
    assert!(log.contains("configuration refused, not starting"), "{log}");
    assert!(!log.contains("now active"), "{log}");
    // Positive control: the fixed plugin starts.
    std::fs::write(
        plugins.join("broken.lua"),
        "portsentry.on('block', function(ev) end)\n",
    )
    .unwrap();
    let mut d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
    d.stop();
}

/// `portsentry --test-plugin` for one shipped plugin, run inside the defender namespace.
fn try_plugin(lab: &Lab, plugin: &str, settings: &str) -> (i32, String) {
    let conf = lua_config(lab, settings);
    let out = lab.defend(&[
        binary(),
        "-c",
        &conf,
        "--test-plugin",
        &repo(&format!("plugins/{plugin}.lua")).display().to_string(),
        "--target",
        "192.0.2.7",
        "--port",
        "31337",
    ]);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn test_plugin_runs_each_shipped_plugin_without_an_attack() {
    let lab = Lab::new();
    let (code, out) = try_plugin(&lab, "nftables", "");
    assert_eq!(code, 0, "{out}");
    let set = lab.defend(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v4"]);
    assert!(
        String::from_utf8_lossy(&set.stdout).contains("192.0.2.7"),
        "{out}"
    );

    let (code, out) = try_plugin(&lab, "iptables", "");
    assert_eq!(code, 0, "{out}");
    let rules = lab.defend(&["iptables", "-S", "portsentry"]);
    assert!(
        String::from_utf8_lossy(&rules.stdout).contains("192.0.2.7/32"),
        "{out}"
    );

    let json = lab.path("events.json");
    let (code, out) = try_plugin(
        &lab,
        "jsonlog",
        &format!("JSONLOG_FILE=\"{}\"", json.display()),
    );
    assert_eq!(code, 0, "{out}");
    let line = std::fs::read_to_string(&json).unwrap();
    let event: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(event["ip"], "192.0.2.7");
    assert_eq!(event["port"], 31337);

    let (sendmail, mailbox) = fake_sendmail(lab.dir.path());
    let (code, out) = try_plugin(
        &lab,
        "mail",
        &format!(
            "MAIL_TO=\"root@localhost\"\nMAIL_SENDMAIL=\"{}\"",
            sendmail.display()
        ),
    );
    assert_eq!(code, 0, "{out}");
    let mail = std::fs::read_to_string(&mailbox).unwrap();
    assert!(
        mail.contains("To: root@localhost") && mail.contains("192.0.2.7"),
        "{mail}"
    );

    let (code, out) = try_plugin(&lab, "allowlist", "ALLOWLIST_NETS=\"192.0.2.0/24\"");
    assert_eq!(code, 0, "{out}");
    assert!(out.to_lowercase().contains("veto"), "{out}");
}
