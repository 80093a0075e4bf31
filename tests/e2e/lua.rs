//! Lua responders driven by the real daemon: a scan puts the scanner into a real nftables
//! set / iptables chain inside the defender namespace, a veto stops the built-in route, and
//! `--test-plugin` tries each shipped plugin.

use std::time::Duration;

use portsentry::respond::lua::host::descendants;

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

// ------------------------------------------------------------ budget escapes

/// CPU time (user + system, in clock ticks) of `pid` and every process under it, reaped
/// children included (a killed plugin process's time moves to the daemon's children's).
fn tree_cpu_ticks(pid: i32) -> u64 {
    let ticks = |p: i32| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            return 0;
        };
        let Some(close) = stat.rfind(')') else {
            return 0;
        };
        // After the command: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12) + field(13) + field(14)
    };
    ticks(pid) + descendants(pid).into_iter().map(ticks).sum::<u64>()
}

/// Plugin processes (hosts) under the daemon: its direct children running `--lua-host`.
fn plugin_hosts(daemon: i32) -> Vec<i32> {
    descendants(daemon)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("--lua-host"))
                .unwrap_or(false)
        })
        .collect()
}

/// A daemon whose plugin `escape` escapes the Lua budget (with `escape`, a statement) in its
/// block handler for port 79, and blocks normally otherwise; the built-in route responder
/// works beside it. LUA_CALL_TIMEOUT is 1 s.
fn escaping_daemon(lab: &Lab, escape: &str) -> Daemon {
    let plugins = lab.path("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    std::fs::write(
        plugins.join("escape.lua"),
        format!(
            r#"portsentry.on("block", function(ev)
                 if ev.port == 79 then
                   portsentry.log.info("escaping the budget for %s", ev.ip)
                   {escape}
                 end
                 return "plugin blocked " .. ev.ip
               end)"#
        ),
    )
    .expect("write plugin");
    let conf = lab.write_config(&format!(
        "TCP_PORTS=\"79,11\"\nBLOCK_TCP=\"1\"\nPLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}\"\n\
         LUA_RESPONDERS=\"escape\"\nLUA_CALL_TIMEOUT=\"1s\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\nKILL_HOSTS_DENY=\"\"",
        plugins.display(),
        repo("lua").display()
    ));
    Daemon::start(lab, &["-c", &conf.display().to_string(), "-tcp"])
}

/// The escape is killed within twice the budget; while it ran the daemon's process tree
/// burned CPU (the measurement works), afterwards it is idle; the route responder blocked
/// the scanner all the same, and the restarted plugin handles the next host.
fn escape_is_killed_and_the_daemon_goes_back_to_idle(escape: &str) {
    let lab = Lab::new();
    let d = escaping_daemon(&lab, escape);
    let daemon = i32::try_from(d.daemon_pid()).expect("pid");
    assert_eq!(plugin_hosts(daemon).len(), 1, "one plugin process at start");
    lab.scan("-sT", "79", false);
    d.expect_line("escaping the budget for", 20);
    let escaping = std::time::Instant::now();
    let cpu_escaping = tree_cpu_ticks(daemon);
    let killed = d.expect_line("plugin process killed", 5);
    let took = escaping.elapsed();
    let cpu_killed = tree_cpu_ticks(daemon);
    assert!(
        took < Duration::from_secs(2),
        "killed after {took:?}: {killed}"
    );
    assert!(killed.contains("lua:escape"), "{killed}");
    assert!(killed.contains("exceeded its 1s budget"), "{killed}");
    // Positive control of the measurement: the escape burned CPU until the kill (a whole
    // core, 100 ticks a second, on an idle machine; less on a shared, busy one).
    let busy = cpu_killed.saturating_sub(cpu_escaping);
    assert!(
        busy >= 5,
        "only {busy} ticks of CPU while escaping for {took:?}"
    );
    // The other responder blocked the scanner.
    d.expect_line(
        &format!(
            "attackalert: Host {} has been blocked via dropped route",
            lab.att4
        ),
        5,
    );
    // Idle again: at most 0.1 s of CPU over 2 s, the whole tree.
    let before = tree_cpu_ticks(daemon);
    std::thread::sleep(Duration::from_secs(2));
    let idle = tree_cpu_ticks(daemon).saturating_sub(before);
    eprintln!("killed after {took:?}; {busy} ticks while escaping, {idle} ticks in 2 s after");
    assert!(idle <= 10, "{idle} ticks of CPU in 2 s after the kill");
    // And well below what the escape burned, whatever the machine's load.
    let busy_rate = busy as f64 / took.as_secs_f64();
    let idle_rate = idle as f64 / 2.0;
    assert!(
        idle_rate * 3.0 < busy_rate,
        "{idle_rate} ticks/s after the kill, {busy_rate} while escaping"
    );
    // The plugin was started again: it blocks the next host through port 11.
    let (second, _) = lab.add_attacker_addrs(3);
    lab.connect_from(&second, 11);
    d.expect_line(
        &format!("attackalert: Host {second} has been blocked via lua:escape"),
        20,
    );
    assert_eq!(
        plugin_hosts(daemon).len(),
        1,
        "one plugin process after the restart"
    );
}

#[test]
fn a_close_handler_looping_past_the_budget_is_killed_and_the_plugin_restarted() {
    escape_is_killed_and_the_daemon_goes_back_to_idle(
        "local x <close> = setmetatable({}, {__close = function() while true do end end})\n\
         while true do end",
    );
}

#[test]
fn a_backtracking_pattern_past_the_budget_is_killed_and_the_plugin_restarted() {
    escape_is_killed_and_the_daemon_goes_back_to_idle(
        r#"string.find(string.rep("a", 300000), ".-.-.-.-x")"#,
    );
}

#[test]
fn a_reload_that_removes_a_plugin_ends_its_process() {
    let lab = Lab::new();
    let d = escaping_daemon(&lab, "");
    let daemon = i32::try_from(d.daemon_pid()).expect("pid");
    // Positive control: the plugin's process is there while the plugin is configured.
    assert_eq!(plugin_hosts(daemon).len(), 1);
    let conf = lab.path("portsentry.conf");
    let text = std::fs::read_to_string(&conf).expect("config");
    std::fs::write(&conf, text.replace("LUA_RESPONDERS=\"escape\"", "")).expect("config");
    d.signal("HUP");
    d.expect_line("configuration reloaded, generation 2 in force", 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !plugin_hosts(daemon).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "plugin processes left: {:?}",
            plugin_hosts(daemon)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--test-plugin` run directly (no namespace needed: nothing is done for real).
fn test_plugin_cli(args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(binary())
        .args([
            "-c",
            "/nonexistent/portsentry.conf",
            "--target",
            "192.0.2.7",
        ])
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        started.elapsed(),
    )
}

#[test]
fn test_plugin_dry_run_shows_the_nft_commands_and_leaves_the_ruleset_alone() {
    let lab = Lab::new();
    let conf = lua_config(&lab, "");
    let plugin = repo("plugins/nftables.lua").display().to_string();
    let args = [
        binary(),
        "-c",
        &conf,
        "--test-plugin",
        &plugin,
        "--target",
        "192.0.2.7",
    ];
    let out = lab.defend(&[&args[..], &["--dry-run"]].concat());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("  would exec   nft -f -\n"), "{text}");
    assert!(
        text.contains(
            "  would exec   nft add element inet portsentry_lua blocked_v4 '{ 192.0.2.7 }'\n"
        ),
        "{text}"
    );
    let table = ["nft", "list", "table", "inet", "portsentry_lua"];
    assert!(
        !lab.defend(&table).status.success(),
        "dry run made the table"
    );
    // Positive control: the same run without --dry-run makes it.
    let out = lab.defend(&args);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        lab.defend(&table).status.success(),
        "the real run made no table"
    );
}

#[test]
fn test_plugin_set_supplies_the_setting_a_shipped_plugin_needs() {
    let (code, text, _) = test_plugin_cli(&["--test-plugin", "plugins/mail.lua", "--dry-run"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("MAIL_TO is not set"), "{text}");
    let (code, text, _) = test_plugin_cli(&[
        "--test-plugin",
        "plugins/mail.lua",
        "--dry-run",
        "--set",
        "to=root",
        "--set",
        "MAIL_SENDMAIL=/usr/sbin/my sendmail",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("would exec   '/usr/sbin/my sendmail' -t -oi"),
        "{text}"
    );
    assert!(text.contains("To: root"), "{text}");
    let (code, text, _) = test_plugin_cli(&[
        "--test-plugin",
        "plugins/nftables.lua",
        "--set",
        "NFTABLES_TABLE=x",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("a key of the daemon's own configuration"),
        "{text}"
    );
}

#[test]
fn test_plugin_stuck_in_a_c_function_still_ends() {
    let lab = Lab::new();
    let plugin = lab.path("stuck.lua");
    std::fs::write(
        &plugin,
        "portsentry.on('block', function()\n\
           return tostring(string.find(string.rep('a', 200000), '.-.-.-.-.-x'))\n\
         end)\n",
    )
    .unwrap();
    let conf = lab.path("stuck.conf");
    std::fs::write(&conf, "LUA_CALL_TIMEOUT=\"1s\"\n").unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(binary())
        .args(["-c", &conf.display().to_string(), "--test-plugin"])
        .arg(&plugin)
        .args(["--target", "192.0.2.7"])
        .current_dir(repo(""))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Failed (1) when the call gives up, or stopped by the watchdog (3); never a hang and
    // never a success.
    assert!(matches!(out.status.code(), Some(1 | 3)), "{text}");
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?}: {text}"
    );
    assert!(
        text.contains("FAILED") || text.contains("stopped"),
        "{text}"
    );
}

#[test]
fn a_plugin_result_with_a_newline_cannot_forge_a_log_line() {
    let lab = Lab::new();
    let plugins = lab.path("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(
        plugins.join("inject.lua"),
        "local forged = 'ok\\nattackalert: Host 1.2.3.4 is blocked'\n\
         portsentry.on('block', function()\n\
           portsentry.log.info('%s', forged)\n\
           return forged\n\
         end)\n",
    )
    .unwrap();
    let conf = lab.write_config(&format!(
        "TCP_PORTS=\"79\"\nBLOCK_TCP=\"1\"\nPLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}\"\n\
         LUA_RESPONDERS=\"inject\"\nKILL_ROUTE=\"\"\nKILL_HOSTS_DENY=\"\"",
        plugins.display(),
        repo("lua").display()
    ));
    let d = Daemon::start(&lab, &["-c", &conf.display().to_string(), "-tcp"]);
    lab.scan("-sT", "79", false);
    // Positive control: the block happened and the plugin's line was logged.
    d.expect_line("has been blocked via lua:inject", 20);
    let line = d.expect_line("lua:inject: ok", 5);
    assert!(
        line.ends_with("lua:inject: ok\\nattackalert: Host 1.2.3.4 is blocked"),
        "{line}"
    );
    let forged = |l: &String| l.starts_with("attackalert: Host 1.2.3.4");
    assert!(!d.lines().iter().any(forged), "{:?}", d.lines());
    let syslog = d.syslog();
    assert!(
        syslog
            .iter()
            .any(|l| l.contains("lua:inject: ok\\nattackalert: Host 1.2.3.4")),
        "{syslog:?}"
    );
    assert!(syslog.iter().all(|l| l.lines().count() == 1), "{syslog:?}");
}
