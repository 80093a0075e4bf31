//! The Lua library (`lua/`) and the shipped plugins (`plugins/`), tested the way
//! `portsentry --test-plugin` and the daemon's responders run them. The firewall plugins
//! work on real nftables / iptables rules inside network namespaces these tests create and
//! delete; the host's own rules are never touched. The responders run in this process; only
//! the firewall commands enter the lab's defender namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use portsentry::config::Config;
use portsentry::event::{Candidate, Hit, Mode, ProbeKind, Proto};
use portsentry::respond::lua::{HostProgram, LuaError, LuaPlugins, test_plugin};
use portsentry::respond::undo::UnblockReason;
use portsentry::respond::{Outcome, ResponseContext, Undo};

use crate::lab::{Lab, fake_sendmail, repo};

/// A config as the daemon would build it, with the repo's plugins and Lua library. Plugins
/// loaded in this process run in the portsentry binary's plugin host (this test binary is
/// not one).
fn config(dir: &Path, responders: &[&str], settings: &[(&str, &str)]) -> Config {
    HostProgram::install(HostProgram::binary(env!("CARGO_BIN_EXE_portsentry")));
    let mut c = portsentry::config::build::defaults(&dir.join("portsentry.conf"));
    c.plugin_dir = repo("plugins");
    c.lua_lib_dir = repo("lua");
    c.lua_responders = responders.iter().map(|s| s.to_string()).collect();
    for (k, v) in settings {
        c.raw.insert(k.to_string(), v.to_string());
    }
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Loads `responders` with `settings` as the daemon would, expecting it to fail.
fn load_error(responders: &[&str], settings: &[(&str, &str)]) -> LuaError {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), responders, settings);
    LuaPlugins::load(&c).expect_err("the plugin must refuse to load")
}

/// Runs `--test-plugin` and returns (exit code, report).
fn try_plugin(plugin: &Path, target: &str, config: &Config) -> (i32, String) {
    let mut out = Vec::new();
    let code = test_plugin(plugin, ip(target), 31337, Proto::Tcp, config, &mut out);
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// Runs the responders of `plugins` for one alert, as the pipeline does.
fn respond(plugins: &LuaPlugins, config: &Config, target: &str, resolved: &str) -> Vec<Outcome> {
    let alert = Candidate {
        hit: Hit::now(ip(target), 31337, Mode::Stcp, ProbeKind::Syn),
        count: 1,
        already_blocked: false,
        actionable: true,
    };
    let ctx = ResponseContext::for_alert(&alert, resolved, config);
    plugins.on_alert(&ctx);
    plugins
        .responders()
        .iter_mut()
        .map(|r| r.respond(&ctx))
        .collect()
}

// ------------------------------------------------------------------ the library

#[test]
fn lua_library_passes_its_lua_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &[], &[]);
    let (code, report) = try_plugin(&repo("tests/lua_library.lua"), "192.0.2.7", &c);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("library ok"), "{report}");
}

// ------------------------------------------------------------------ nftables

#[test]
fn nftables_plugin_puts_ipv4_and_ipv6_into_real_sets_with_a_timeout() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(
        dir.path(),
        &["nftables"],
        &[("NFTABLES_NETNS", &lab.def), ("NFTABLES_TIMEOUT", "1h")],
    );
    let plugin = repo("plugins/nftables.lua");

    let (code, report) = try_plugin(&plugin, "192.0.2.7", &c);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("nft add element inet portsentry_lua blocked_v4 { 192.0.2.7 timeout 1h }"),
        "{report}"
    );
    let set4 = lab.defend_stdout(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v4"]);
    assert!(set4.contains("192.0.2.7"), "{set4}");
    assert!(set4.contains("expires"), "{set4}");

    let (code, report) = try_plugin(&plugin, "2001:db8::7", &c);
    assert_eq!(code, 0, "{report}");
    let set6 = lab.defend_stdout(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v6"]);
    assert!(set6.contains("2001:db8::7"), "{set6}");

    let chain = lab.defend_stdout(&["nft", "list", "chain", "inet", "portsentry_lua", "input"]);
    assert!(chain.contains("hook input priority"), "{chain}");
    assert_eq!(
        chain.matches("ip saddr @blocked_v4 drop").count(),
        1,
        "{chain}"
    );
    assert_eq!(
        chain.matches("ip6 saddr @blocked_v6 drop").count(),
        1,
        "{chain}"
    );
}

#[test]
fn nftables_responder_is_idempotent_and_recovers_from_a_flushed_ruleset() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &["nftables"], &[("NFTABLES_NETNS", &lab.def)]);
    let plugins = LuaPlugins::load(&c).expect("nftables loads");

    for _ in 0..2 {
        match &respond(&plugins, &c, "192.0.2.7", "192.0.2.7")[0] {
            Outcome::Done(a) => {
                assert_eq!(a.responder, "lua:nftables");
                assert_eq!(
                    a.detail,
                    format!(
                        "ip netns exec {} nft add element inet portsentry_lua blocked_v4 {{ 192.0.2.7 }}",
                        lab.def
                    )
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let chain = lab.defend_stdout(&["nft", "list", "chain", "inet", "portsentry_lua", "input"]);
    assert_eq!(chain.matches("@blocked_v4").count(), 1, "{chain}");

    // Someone flushes the ruleset: the next block sets everything up again.
    lab.defend_stdout(&["nft", "flush", "ruleset"]);
    let out = respond(&plugins, &c, "192.0.2.8", "192.0.2.8");
    assert!(matches!(out[0], Outcome::Done(_)), "{out:?}");
    let set4 = lab.defend_stdout(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v4"]);
    assert!(set4.contains("192.0.2.8"), "{set4}");
    let chain = lab.defend_stdout(&["nft", "list", "chain", "inet", "portsentry_lua", "input"]);
    assert_eq!(chain.matches("@blocked_v4").count(), 1, "{chain}");
}

#[test]
fn nftables_plugin_refuses_bad_settings_when_it_loads() {
    for (key, value) in [
        ("NFTABLES_PLUGIN_TABLE", "x; flush ruleset"),
        ("NFTABLES_VERDICT", "accept"),
        ("NFTABLES_TIMEOUT", "a while"),
    ] {
        let err = load_error(&["nftables"], &[(key, value)]);
        assert_eq!(err.plugin(), Some("nftables"), "{err}");
        assert!(err.line().is_some(), "{err}");
    }
}

#[test]
fn nftables_failure_is_reported_with_the_plugin_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(
        dir.path(),
        &["nftables"],
        &[("NFTABLES_NFT", "/nonexistent/nft")],
    );
    let (code, report) = try_plugin(&repo("plugins/nftables.lua"), "192.0.2.7", &c);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("result: FAILED: lua:nftables:"), "{report}");
    assert!(report.contains("nftables.lua:"), "{report}");
    assert!(report.contains("not started"), "{report}");
}

/// Runs `plugin`'s unblock handler for `target`, as the block manager does when it ends.
fn unblock(
    plugins: &LuaPlugins,
    config: &Config,
    plugin: &str,
    target: &str,
) -> Result<String, String> {
    let alert = Candidate {
        hit: Hit::now(ip(target), 31337, Mode::Stcp, ProbeKind::Syn),
        count: 1,
        already_blocked: false,
        actionable: true,
    };
    let ctx = ResponseContext::for_alert(&alert, target, config);
    plugins.unblock(plugin, &ctx, UnblockReason::Expired)
}

/// Blocks each target through the single plugin loaded, expecting it to record its undo.
fn block_undone_by_plugin(plugins: &LuaPlugins, config: &Config, plugin: &str, targets: &[&str]) {
    for target in targets {
        match &respond(plugins, config, target, target)[0] {
            Outcome::Done(a) => assert_eq!(
                a.undo,
                Undo::Lua {
                    plugin: plugin.into()
                }
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn nftables_unblock_deletes_the_element_and_a_missing_one_is_fine() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &["nftables"], &[("NFTABLES_NETNS", &lab.def)]);
    let plugins = LuaPlugins::load(&c).expect("nftables loads");
    block_undone_by_plugin(&plugins, &c, "nftables", &["192.0.2.7", "2001:db8::7"]);
    let done = unblock(&plugins, &c, "nftables", "192.0.2.7").expect("unblocked");
    assert!(
        done.ends_with("nft delete element inet portsentry_lua blocked_v4 { 192.0.2.7 }"),
        "{done}"
    );
    let set4 = lab.defend_stdout(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v4"]);
    assert!(!set4.contains("192.0.2.7"), "{set4}");
    let set6 = lab.defend_stdout(&["nft", "list", "set", "inet", "portsentry_lua", "blocked_v6"]);
    assert!(
        set6.contains("2001:db8::7"),
        "the other block stays: {set6}"
    );
    // Again (an undo repeated after a crash), and after a flushed ruleset: already gone.
    let again = unblock(&plugins, &c, "nftables", "192.0.2.7").expect("idempotent");
    assert!(again.ends_with("(already gone)"), "{again}");
    lab.defend_stdout(&["nft", "flush", "ruleset"]);
    let flushed = unblock(&plugins, &c, "nftables", "2001:db8::7").expect("idempotent");
    assert!(flushed.ends_with("(already gone)"), "{flushed}");
}

#[test]
fn nftables_element_timeout_follows_the_block_time_left() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(
        dir.path(),
        &["nftables"],
        &[("NFTABLES_NETNS", &lab.def), ("NFTABLES_TIMEOUT", "1d")],
    );
    let plugins = LuaPlugins::load(&c).expect("nftables loads");
    let alert = Candidate {
        hit: Hit::now(ip("192.0.2.7"), 31337, Mode::Stcp, ProbeKind::Syn),
        count: 1,
        already_blocked: false,
        actionable: true,
    };
    let mut ctx = ResponseContext::for_alert(&alert, "192.0.2.7", &c);
    ctx.until = Some(std::time::SystemTime::now() + std::time::Duration::from_secs(5400));
    match plugins.responders()[0].respond(&ctx) {
        Outcome::Done(a) => assert!(a.detail.ends_with("{ 192.0.2.7 timeout 1h30m }"), "{a:?}"),
        other => panic!("{other:?}"),
    }
    // A permanent block falls back to NFTABLES_TIMEOUT.
    match &respond(&plugins, &c, "192.0.2.8", "192.0.2.8")[0] {
        Outcome::Done(a) => assert!(a.detail.ends_with("{ 192.0.2.8 timeout 1d }"), "{a:?}"),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------ iptables

#[test]
fn iptables_plugin_adds_one_rule_per_host_in_a_netns() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &["iptables"], &[("IPTABLES_NETNS", &lab.def)]);
    let plugin = repo("plugins/iptables.lua");

    for _ in 0..2 {
        let (code, report) = try_plugin(&plugin, "192.0.2.7", &c);
        assert_eq!(code, 0, "{report}");
    }
    let rules = lab.defend_stdout(&["iptables", "-w", "-S", "portsentry"]);
    assert_eq!(
        rules
            .matches("-A portsentry -s 192.0.2.7/32 -j DROP")
            .count(),
        1,
        "{rules}"
    );
    let input = lab.defend_stdout(&["iptables", "-w", "-S", "INPUT"]);
    assert_eq!(input.matches("-j portsentry").count(), 1, "{input}");

    let (code, report) = try_plugin(&plugin, "2001:db8::7", &c);
    assert_eq!(code, 0, "{report}");
    let rules6 = lab.defend_stdout(&["ip6tables", "-w", "-S", "portsentry"]);
    assert!(
        rules6.contains("-A portsentry -s 2001:db8::7/128 -j DROP"),
        "{rules6}"
    );
}

#[test]
fn iptables_responder_recreates_a_deleted_chain() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &["iptables"], &[("IPTABLES_NETNS", &lab.def)]);
    let plugins = LuaPlugins::load(&c).expect("iptables loads");
    assert!(matches!(
        respond(&plugins, &c, "192.0.2.7", "192.0.2.7")[0],
        Outcome::Done(_)
    ));
    lab.defend_stdout(&["iptables", "-w", "-F"]);
    lab.defend_stdout(&["iptables", "-w", "-X", "portsentry"]);
    let out = respond(&plugins, &c, "192.0.2.9", "192.0.2.9");
    match &out[0] {
        Outcome::Done(a) => assert!(
            a.detail
                .ends_with("iptables -w -A portsentry -s 192.0.2.9 -j DROP"),
            "{a:?}"
        ),
        other => panic!("{other:?}"),
    }
    let rules = lab.defend_stdout(&["iptables", "-w", "-S", "portsentry"]);
    assert!(rules.contains("-s 192.0.2.9/32 -j DROP"), "{rules}");
}

#[test]
fn iptables_unblock_deletes_the_rule_and_a_missing_one_is_fine() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &["iptables"], &[("IPTABLES_NETNS", &lab.def)]);
    let plugins = LuaPlugins::load(&c).expect("iptables loads");
    block_undone_by_plugin(&plugins, &c, "iptables", &["192.0.2.7", "192.0.2.8"]);
    let done = unblock(&plugins, &c, "iptables", "192.0.2.7").expect("unblocked");
    assert!(
        done.ends_with("iptables -w -D portsentry -s 192.0.2.7 -j DROP"),
        "{done}"
    );
    let rules = lab.defend_stdout(&["iptables", "-w", "-S", "portsentry"]);
    assert!(!rules.contains("192.0.2.7/32"), "{rules}");
    assert!(
        rules.contains("192.0.2.8/32"),
        "the other block stays: {rules}"
    );
    let again = unblock(&plugins, &c, "iptables", "192.0.2.7").expect("idempotent");
    assert!(again.ends_with("(already gone)"), "{again}");
    // IPv6 never blocked, its chain never made: already gone too.
    let v6 = unblock(&plugins, &c, "iptables", "2001:db8::7").expect("idempotent");
    assert!(v6.ends_with("(already gone)"), "{v6}");
}

// ------------------------------------------------------------------ mail

/// The mail plugin's config with a fake sendmail; returns it and the file the fake fills.
fn mail_config(dir: &Path, settings: &[(&str, &str)]) -> (Config, PathBuf) {
    let (sendmail, spool) = fake_sendmail(dir);
    let sendmail = sendmail.display().to_string();
    let mut all = vec![
        ("MAIL_TO", "admin@example.org"),
        ("MAIL_SENDMAIL", sendmail.as_str()),
    ];
    all.extend_from_slice(settings);
    (config(dir, &["mail"], &all), spool)
}

#[test]
fn mail_plugin_sends_through_sendmail_and_rate_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, spool) = mail_config(dir.path(), &[("MAIL_MAX", "2"), ("MAIL_PER", "1h")]);
    let plugins = LuaPlugins::load(&c).expect("mail loads");
    let mut details = Vec::new();
    for target in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        match &respond(&plugins, &c, target, target)[0] {
            Outcome::Done(a) => details.push(a.detail.clone()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(details[0], "mailed admin@example.org");
    assert_eq!(details[1], "mailed admin@example.org");
    assert!(
        details[2].starts_with("held back by the rate limit"),
        "{details:?}"
    );
    let text = std::fs::read_to_string(&spool).expect("spool");
    assert_eq!(text.matches("ARGS: -t -oi").count(), 2, "{text}");
    assert!(text.contains("To: admin@example.org"), "{text}");
    assert!(
        text.contains("Subject: portsentry: 192.0.2.1 blocked (TCP SYN/Normal scan to tcp/31337)"),
        "{text}"
    );
    assert!(!text.contains("192.0.2.3"), "{text}");
}

#[test]
fn mail_plugin_refuses_a_malformed_smtp_relay_when_it_loads() {
    for relay in ["relay example", "http://relay.example.org", "relay:port"] {
        let err = load_error(
            &["mail"],
            &[("MAIL_TO", "admin@example.org"), ("MAIL_SMTP", relay)],
        );
        assert_eq!(err.plugin(), Some("mail"), "{err}");
        assert!(err.to_string().contains("MAIL_SMTP: '"), "{relay}: {err}");
    }
    // Positive control: the forms it takes load.
    let dir = tempfile::tempdir().expect("tempdir");
    for relay in [
        "relay.example.org",
        "relay.example.org:587",
        "[2001:db8::25]:25",
        "smtps://relay.example.org:465",
    ] {
        let c = config(
            dir.path(),
            &["mail"],
            &[("MAIL_TO", "admin@example.org"), ("MAIL_SMTP", relay)],
        );
        LuaPlugins::load(&c).unwrap_or_else(|e| panic!("{relay}: {e}"));
    }
}

#[test]
fn mail_subject_cannot_inject_headers_through_the_resolved_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, spool) = mail_config(dir.path(), &[("MAIL_SUBJECT", "scan from {host}")]);
    let plugins = LuaPlugins::load(&c).expect("mail loads");
    let out = respond(
        &plugins,
        &c,
        "192.0.2.1",
        "evil.example\r\nBcc: victim@example.org",
    );
    assert!(matches!(out[0], Outcome::Done(_)), "{out:?}");
    let text = std::fs::read_to_string(&spool).expect("spool");
    let headers = text.split("\n\n").next().unwrap_or_default();
    assert!(!headers.contains("\nBcc:"), "{text}");
    assert!(!text.contains('\r'), "{text}");
    assert!(
        text.contains("Subject: scan from evil.example  Bcc: victim@example.org\n"),
        "{text}"
    );
}

#[test]
fn mail_plugin_stays_quiet_for_restored_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, spool) = mail_config(dir.path(), &[]);
    let plugins = LuaPlugins::load(&c).expect("mail loads");
    let alert = Candidate {
        hit: Hit::now(ip("192.0.2.1"), 31337, Mode::Stcp, ProbeKind::Syn),
        count: 1,
        already_blocked: false,
        actionable: true,
    };
    let mut ctx = ResponseContext::for_alert(&alert, "192.0.2.1", &c);
    ctx.restored = true;
    match plugins.responders()[0].respond(&ctx) {
        Outcome::Done(a) => {
            assert_eq!(a.detail, "restored block: no mail");
            assert_eq!(
                a.undo,
                Undo::Lua {
                    plugin: "mail".into()
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!spool.exists(), "no mail was sent");
    assert_eq!(
        unblock(&plugins, &c, "mail", "192.0.2.1"),
        Ok("lua:mail: nothing to undo (a mail cannot be unsent)".into())
    );
}

#[test]
fn mail_plugin_without_recipient_fails_to_load() {
    let err = load_error(&["mail"], &[]);
    assert!(err.to_string().contains("MAIL_TO"), "{err}");
}

#[test]
fn mail_failure_of_sendmail_is_a_failed_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(
        dir.path(),
        &["mail"],
        &[("MAIL_TO", "root"), ("MAIL_SENDMAIL", "/bin/false")],
    );
    let (code, report) = try_plugin(&repo("plugins/mail.lua"), "192.0.2.7", &c);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("command `/bin/false -t -oi` failed: exit 1"),
        "{report}"
    );
}

// ------------------------------------------------------------------ jsonlog

#[test]
fn jsonlog_plugin_writes_one_json_line_per_alert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.json");
    let log_text = log.display().to_string();
    let c = config(
        dir.path(),
        &["jsonlog"],
        &[
            ("JSONLOG_FILE", &log_text),
            ("JSONLOG_EVENTS", "alert,block"),
        ],
    );
    let plugins = LuaPlugins::load(&c).expect("jsonlog loads");
    let out = respond(&plugins, &c, "192.0.2.7", "scanner.example");
    assert_eq!(
        out,
        [Outcome::Done(portsentry::respond::Action {
            responder: "lua:jsonlog".into(),
            detail: format!("logged to {log_text}"),
            undo: portsentry::respond::Undo::Impossible {
                why: "lua:jsonlog registers no unblock handler".into()
            },
        })]
    );
    respond(&plugins, &c, "2001:db8::7", "2001:db8::7");
    assert!(plugins.flush(std::time::Duration::from_secs(5)));
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let alerts: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "alert").collect();
    assert_eq!(alerts.len(), 2);
    let first = alerts
        .iter()
        .find(|l| l["ip"] == "192.0.2.7")
        .expect("alert for 192.0.2.7");
    assert_eq!(first["family"], "ipv4");
    assert_eq!(first["port"], 31337);
    assert_eq!(first["proto"], "tcp");
    assert_eq!(first["mode"], "stcp");
    assert_eq!(first["kind"], "TCP SYN/Normal scan");
    assert_eq!(first["host"], "scanner.example");
    assert!(
        first["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(
        lines
            .iter()
            .any(|l| l["ip"] == "2001:db8::7" && l["family"] == "ipv6" && l.get("host").is_none()),
        "{text}"
    );
}

#[test]
fn jsonlog_refuses_an_empty_file_setting() {
    // No JSONLOG_FILE at all means the default file (see plugin_test's tests); an empty
    // one is a mistake.
    let err = load_error(&["jsonlog"], &[("JSONLOG_FILE", "")]);
    assert!(err.to_string().contains("JSONLOG_FILE is empty"), "{err}");
}

// ------------------------------------------------------------------ allowlist (veto)

#[test]
fn allowlist_vetoes_listed_hosts_and_passes_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.json");
    let log_text = log.display().to_string();
    let c = config(
        dir.path(),
        &["allowlist", "jsonlog"],
        &[
            ("ALLOWLIST_NETS", "192.0.2.1, 10.0.0.0/8 2001:db8::/32"),
            ("JSONLOG_FILE", &log_text),
            ("JSONLOG_EVENTS", "block"),
        ],
    );
    let plugins = LuaPlugins::load(&c).expect("plugins load");
    let out = respond(&plugins, &c, "10.1.2.3", "10.1.2.3");
    assert_eq!(
        out[0],
        Outcome::Veto("lua:allowlist: 10.1.2.3 is in the allow-list (10.0.0.0/8)".into())
    );
    let out = respond(&plugins, &c, "2001:db8::5", "2001:db8::5");
    assert!(matches!(out[0], Outcome::Veto(_)), "{out:?}");
    let out = respond(&plugins, &c, "192.0.2.99", "192.0.2.99");
    assert!(matches!(out[0], Outcome::Skipped(_)), "{out:?}");
    assert!(matches!(out[1], Outcome::Done(_)), "{out:?}");

    let (code, report) = try_plugin(&repo("plugins/allowlist.lua"), "192.0.2.1", &c);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("result: veto: lua:allowlist: 192.0.2.1 is in the allow-list"),
        "{report}"
    );
}

#[test]
fn allowlist_with_a_bad_network_fails_to_load() {
    let err = load_error(&["allowlist"], &[("ALLOWLIST_NETS", "10.0.0.0/99")]);
    assert!(err.to_string().contains("ALLOWLIST_NETS"), "{err}");
}
