use std::path::PathBuf;

use super::*;

/// A temporary directory with plugins in it and a config (library from the repository).
struct Setup {
    dir: tempfile::TempDir,
    config: Config,
}

impl Setup {
    fn new(settings: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::build::defaults(&dir.path().join("portsentry.conf"));
        config.lua_lib_dir = repo("lua");
        config.raw.insert("LUA_CALL_TIMEOUT".into(), "2s".into());
        for (k, v) in settings {
            config.raw.insert(k.to_string(), v.to_string());
        }
        Setup { dir, config }
    }

    fn plugin(&self, name: &str, source: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.lua"));
        std::fs::write(&path, source).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `--test-plugin` on `path`; the exit code and the report.
    fn run(&self, path: &Path, dry_run: bool) -> (i32, String) {
        let options = TestOptions {
            target: "192.0.2.7".parse().unwrap(),
            port: 31337,
            proto: Proto::Tcp,
            dry_run,
        };
        let mut out = Vec::new();
        let code = test_plugin_with(path, &options, &self.config, &mut out);
        (code, String::from_utf8_lossy(&out).into_owned())
    }
}

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn dry_run_shows_commands_quoted_and_lines_without_doing_them() {
    let s = Setup::new(&[]);
    let marker = s.path("marker");
    let log = s.path("out log.txt");
    let mut s = s;
    s.config
        .raw
        .insert("DEMO_FILE".into(), log.display().to_string());
    let plugin = s.plugin(
        "demo",
        &format!(
            r#"portsentry.on("block", function(ev)
                 local r = portsentry.exec{{"touch", "{marker}"}}
                 portsentry.exec({{"sh", "-c", "echo a b; exit 3"}}, {{stdin = "one\ntwo"}})
                 portsentry.append_line(portsentry.config.file, "blocked " .. ev.ip)
                 return "touched: " .. tostring(r.ok)
               end)"#,
            marker = marker.display()
        ),
    );
    let (code, text) = s.run(&plugin, true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains(&format!("  would exec   touch {}\n", marker.display())),
        "{text}"
    );
    assert!(
        text.contains("  would exec   sh -c 'echo a b; exit 3'\n"),
        "{text}"
    );
    assert!(text.contains("stdin:  one\n"), "{text}");
    assert!(
        text.contains(&format!(
            "  would append to '{}': blocked 192.0.2.7\n",
            log.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("result: done (lua:demo): touched: true"),
        "{text}"
    );
    assert!(!marker.exists() && !log.exists(), "{text}");

    // Positive control: the same plugin without --dry-run does it all.
    let (code, text) = s.run(&plugin, false);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(marker.exists(), "{text}");
    assert!(
        text.contains("  exec   sh -c 'echo a b; exit 3' -> exit 3 in "),
        "{text}"
    );
    assert!(text.contains("stdout: a b\n"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "blocked 192.0.2.7\n"
    );
}

#[test]
fn set_takes_full_or_short_names_and_refuses_daemon_keys() {
    let mut config = crate::config::build::defaults(Path::new("p.conf"));
    let plugin = Path::new("plugins/mail.lua");
    let set = apply_settings(
        &mut config,
        plugin,
        &[
            "MAIL_TO=root".into(),
            "from=ps@example.org".into(),
            "Per=2h".into(),
        ],
    )
    .unwrap();
    assert_eq!(set, ["MAIL_TO", "MAIL_FROM", "MAIL_PER"]);
    let settings = super::super::plugin_settings(&config, "mail");
    assert_eq!(settings.get("to").map(String::as_str), Some("root"));
    assert_eq!(
        settings.get("from").map(String::as_str),
        Some("ps@example.org")
    );
    assert_eq!(settings.get("per").map(String::as_str), Some("2h"));

    let nft = Path::new("plugins/nftables.lua");
    let err = apply_settings(&mut config, nft, &["table=x".into()]).unwrap_err();
    assert!(
        err.contains("NFTABLES_TABLE is a key of the daemon's own"),
        "{err}"
    );
    assert!(apply_settings(&mut config, nft, &["plugin_table=x".into()]).is_ok());
    let err = apply_settings(&mut config, nft, &["novalue".into()]).unwrap_err();
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let err = apply_settings(&mut config, nft, &["a b=1".into()]).unwrap_err();
    assert!(err.contains("is not a setting name"), "{err}");
}

#[test]
fn io_and_os_execute_raise_a_hint_instead_of_indexing_nil() {
    let s = Setup::new(&[]);
    let plugin = s.plugin(
        "hints",
        r#"portsentry.on("block", function(ev)
             local _, a = pcall(function() return io.open("/tmp/x", "w") end)
             local _, b = pcall(function() return os.execute("id") end)
             local _, c = pcall(function() return io.write("x") end)
             portsentry.log.info("%s", a)
             portsentry.log.info("%s", b)
             portsentry.log.info("%s", c)
             return tostring(os.time() > 0) .. " " .. tostring(os.nothing)
           end)"#,
    );
    let (code, text) = s.run(&plugin, false);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains(
            "hints.lua:2: io.open is not available in plugins; use portsentry.append_line"
        ),
        "{text}"
    );
    assert!(
        text.contains("hints.lua:3: os.execute is not available in plugins; use portsentry.exec"),
        "{text}"
    );
    assert!(
        text.contains("io.write is not available in plugins; use portsentry.log.info"),
        "{text}"
    );
    // The clock functions are still there, and other missing names are plain nil.
    assert!(
        text.contains("result: done (lua:hints): true nil"),
        "{text}"
    );
}

#[test]
fn json_of_an_event_leaves_the_settings_out() {
    let s = Setup::new(&[("LEAK_TOKEN", "s3cret-token")]);
    let plugin = s.plugin(
        "leak",
        r#"portsentry.on("block", function(ev)
             portsentry.log.info("token is %s", ev.config.token)
             portsentry.log.info("%s", portsentry.json(ev))
             portsentry.log.info("%s", portsentry.json{ nested = { ev = ev }, n = 1 })
             local ok, err = pcall(portsentry.json, portsentry.config)
             return tostring(ok) .. ": " .. tostring(err)
           end)"#,
    );
    let (code, text) = s.run(&plugin, false);
    assert_eq!(code, EXIT_OK, "{text}");
    // Positive control: the handler does see the token.
    assert!(text.contains("token is s3cret-token"), "{text}");
    let json: Vec<&str> = text.lines().filter(|l| l.contains("{\"")).collect();
    assert_eq!(json.len(), 2, "{text}");
    for line in &json {
        assert!(line.contains("\"ip\":\"192.0.2.7\""), "{line}");
        assert!(
            !line.contains("s3cret") && !line.contains("config"),
            "{line}"
        );
    }
    assert!(
        text.contains("false: ") && text.contains("settings are never written out"),
        "{text}"
    );
}

#[test]
fn a_multi_line_result_or_log_stays_one_line_in_the_report() {
    let s = Setup::new(&[]);
    let plugin = s.plugin(
        "inject",
        r#"local forged = "ok\nattackalert: Host 1.2.3.4 is blocked"
           portsentry.on("block", function(ev)
             portsentry.log.info("%s", forged)
             return forged
           end)"#,
    );
    let (code, text) = s.run(&plugin, false);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains("log    info: ok\\nattackalert: Host 1.2.3.4 is blocked\n"),
        "{text}"
    );
    assert!(
        text.contains("result: done (lua:inject): ok\\nattackalert: Host 1.2.3.4 is blocked\n"),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("attackalert:")),
        "{text}"
    );
}

#[test]
fn shipped_plugins_run_out_of_the_box_or_name_their_setting() {
    let s = Setup::new(&[]);
    let (code, text) = s.run(&repo("plugins/nftables.lua"), true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(text.contains("  would exec   nft -f -\n"), "{text}");
    assert!(
        text.contains(
            "  would exec   nft add element inet portsentry_lua blocked_v4 '{ 192.0.2.7 }'"
        ),
        "{text}"
    );

    let (code, text) = s.run(&repo("plugins/jsonlog.lua"), true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains("would append to /var/log/portsentry/alerts.jsonl: {\""),
        "{text}"
    );

    let (code, text) = s.run(&repo("plugins/mail.lua"), true);
    assert_eq!(code, EXIT_LOAD_FAILED, "{text}");
    assert!(text.contains("MAIL_TO is not set"), "{text}");
    assert!(!text.contains("traceback"), "{text}");

    let (code, text) = s.run(&repo("plugins/allowlist.lua"), true);
    assert_eq!(code, EXIT_LOAD_FAILED, "{text}");
    assert!(text.contains("ALLOWLIST_NETS is not set"), "{text}");

    // With the setting given (as --set does), both work.
    let mut s = s;
    apply_settings(
        &mut s.config,
        &repo("plugins/mail.lua"),
        &["to=root".into()],
    )
    .unwrap();
    apply_settings(
        &mut s.config,
        &repo("plugins/allowlist.lua"),
        &["nets=192.0.2.0/24".into()],
    )
    .unwrap();
    let (code, text) = s.run(&repo("plugins/mail.lua"), true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains("would exec   /usr/sbin/sendmail -t -oi"),
        "{text}"
    );
    let (code, text) = s.run(&repo("plugins/allowlist.lua"), true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains("result: veto: lua:allowlist: 192.0.2.7 is in the allow-list"),
        "{text}"
    );
}

#[test]
fn append_line_accepts_the_plugins_default_file_but_no_other() {
    let s = Setup::new(&[]);
    let plugin = s.plugin(
        "defaults",
        r#"local file = portsentry.setting("file", "/tmp/portsentry-default.jsonl")
           portsentry.on("block", function(ev)
             portsentry.append_line(file, "x")
             local ok, err = pcall(portsentry.append_line, "/tmp/other", "x")
             return tostring(ok) .. " " .. tostring(err)
           end)"#,
    );
    let (code, text) = s.run(&plugin, true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains("would append to /tmp/portsentry-default.jsonl: x"),
        "{text}"
    );
    assert!(
        text.contains("false") && text.contains("'/tmp/other' is not a file configured"),
        "{text}"
    );
}

#[test]
fn the_watchdog_leaves_room_for_every_call() {
    let s = Setup::new(&[]);
    // Load, alert and block, each bounded by the longest call.
    assert!(watchdog_limit(&s.config) > super::super::longest_call(&s.config) * 3);
}
