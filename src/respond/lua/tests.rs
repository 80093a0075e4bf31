//! Tests of the plugin API and of the sandbox: every escape fails cleanly, names its file
//! and line, and the next event is still handled.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::event::{Candidate, Hit, Mode, ProbeKind};
use crate::respond::UnblockReason;

struct Fixture {
    dir: tempfile::TempDir,
    config: Config,
}

impl Fixture {
    fn new(plugins: &[(&str, &str)], settings: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugin_dir).expect("mkdir");
        for (name, src) in plugins {
            std::fs::write(plugin_dir.join(format!("{name}.lua")), src).expect("write plugin");
        }
        let mut config = crate::config::build::defaults(&dir.path().join("portsentry.conf"));
        config.plugin_dir = plugin_dir;
        config.lua_lib_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lua");
        config.lua_responders = plugins.iter().map(|(n, _)| n.to_string()).collect();
        config.raw.insert("LUA_CALL_TIMEOUT".into(), "300ms".into());
        for (k, v) in settings {
            config.raw.insert(k.to_string(), v.to_string());
        }
        Fixture { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn plugin_file(&self, name: &str) -> PathBuf {
        self.config.plugin_dir.join(format!("{name}.lua"))
    }

    fn load(&self) -> LuaPlugins {
        match LuaPlugins::load(&self.config) {
            Ok(p) => p,
            Err(e) => panic!("load failed: {e}"),
        }
    }
}

fn alert(ip: &str, port: u16) -> Candidate {
    let ip: IpAddr = ip.parse().expect("ip");
    Candidate {
        hit: Hit::now(ip, port, Mode::Stcp, ProbeKind::Syn),
        count: 3,
        already_blocked: false,
        actionable: true,
    }
}

/// Runs every responder for one alert, as the pipeline would, and returns the outcomes.
fn block(plugins: &LuaPlugins, config: &Config, ip: &str, port: u16) -> Vec<Outcome> {
    let a = alert(ip, port);
    let ctx = ResponseContext::for_alert(&a, ip, config);
    plugins
        .responders()
        .iter_mut()
        .map(|r| r.respond(&ctx))
        .collect()
}

fn block1(plugins: &LuaPlugins, config: &Config, ip: &str, port: u16) -> Outcome {
    block(plugins, config, ip, port).remove(0)
}

fn send_alert(plugins: &LuaPlugins, config: &Config, ip: &str, port: u16) {
    let a = alert(ip, port);
    let ctx = ResponseContext::for_alert(&a, ip, config);
    plugins.on_alert(&ctx);
}

fn done_detail(o: &Outcome) -> &str {
    match o {
        Outcome::Done(a) => &a.detail,
        other => panic!("expected Done, got {other:?}"),
    }
}

fn failed_text(o: &Outcome) -> &str {
    match o {
        Outcome::Failed(t) => t,
        other => panic!("expected Failed, got {other:?}"),
    }
}

// ---------------------------------------------------------------- outcomes

#[test]
fn block_handler_string_becomes_the_action_detail() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev) return "blocked " .. ev.ip end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    match block1(&plugins, &f.config, "192.0.2.7", 31337) {
        Outcome::Done(a) => {
            assert_eq!(a.responder, "lua:p");
            assert_eq!(a.detail, "blocked 192.0.2.7");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn setid_reads_the_mode_bits_and_no_new_privs_the_processs_flag() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev)
                 local c = portsentry.config
                 return table.concat({ tostring(portsentry.setid(c.setgid_file)),
                   tostring(portsentry.setid(c.setuid_file)), tostring(portsentry.setid(c.plain_file)),
                   tostring(portsentry.setid(c.plain_file .. ".missing")),
                   tostring(portsentry.no_new_privs()) }, " ")
               end)"#,
        )],
        &[],
    );
    let mut config = f.config.clone();
    for (key, name, mode) in [
        ("P_SETGID_FILE", "g", 0o2755),
        ("P_SETUID_FILE", "u", 0o4755),
        ("P_PLAIN_FILE", "plain", 0o755),
    ] {
        let path = f.path(name);
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        config.raw.insert(key.into(), path.display().to_string());
    }
    let plugins = LuaPlugins::load(&config).expect("load");
    // SAFETY: PR_GET_NO_NEW_PRIVS only reads this thread's flag, which the plugin's process
    // inherits.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1;
    match block1(&plugins, &config, "192.0.2.7", 1) {
        Outcome::Done(a) => assert_eq!(a.detail, format!("setgid setuid nil nil {nnp}")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn block_without_detail_records_the_commands_run() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev) portsentry.exec{"true", ev.ip} end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    let o = block1(&plugins, &f.config, "192.0.2.7", 1);
    assert_eq!(done_detail(&o), "true 192.0.2.7");
}

#[test]
fn plugin_without_block_handler_is_skipped() {
    let f = Fixture::new(&[("p", r#"portsentry.on("alert", function() end)"#)], &[]);
    let plugins = f.load();
    assert!(matches!(
        block1(&plugins, &f.config, "192.0.2.7", 1),
        Outcome::Skipped(_)
    ));
}

#[test]
fn returning_false_vetoes_with_the_given_reason() {
    let f = Fixture::new(
        &[(
            "allow",
            r#"portsentry.on("block", function(ev)
                 if ev.ip == "10.0.0.1" then return false, "gateway" end
               end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    assert_eq!(
        block1(&plugins, &f.config, "10.0.0.1", 1),
        Outcome::Veto("lua:allow: gateway".into())
    );
    // Not vetoed, and nothing done: skipped, so no action is recorded for it.
    assert!(matches!(
        block1(&plugins, &f.config, "10.0.0.2", 1),
        Outcome::Skipped(_)
    ));
}

#[test]
fn responders_follow_lua_responders_order() {
    let f = Fixture::new(
        &[
            ("b", r#"portsentry.on("block", function() return "b" end)"#),
            ("a", r#"portsentry.on("block", function() return "a" end)"#),
        ],
        &[],
    );
    let plugins = f.load();
    let names: Vec<String> = plugins.responders().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["lua:b", "lua:a"]);
    let details: Vec<String> = block(&plugins, &f.config, "192.0.2.1", 1)
        .iter()
        .map(|o| done_detail(o).to_string())
        .collect();
    assert_eq!(details, ["b", "a"]);
}

#[test]
fn raised_error_is_failed_with_plugin_file_and_line() {
    let f = Fixture::new(
        &[(
            "p",
            "portsentry.on('block', function(ev)\n  local x = nil\n  return x.field\nend)\n",
        )],
        &[],
    );
    let plugins = f.load();
    let text = failed_text(&block1(&plugins, &f.config, "192.0.2.7", 1)).to_string();
    let want = format!("lua:p: {}:3:", f.plugin_file("p").display());
    assert!(text.starts_with(&want), "{text}");
    assert!(text.contains("attempt to index"), "{text}");
}

#[test]
fn syntax_error_at_load_names_plugin_file_and_line() {
    let f = Fixture::new(&[("p", "local a = 1\nlocal b = = 2\n")], &[]);
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    assert_eq!(err.plugin(), Some("p"));
    assert_eq!(err.line(), Some(2));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("lua:p: {}:2:", f.plugin_file("p").display())),
        "{text}"
    );
}

#[test]
fn runtime_error_at_load_names_the_line() {
    let f = Fixture::new(&[("p", "\n\nerror('no TABLE setting')\n")], &[]);
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    assert_eq!(err.line(), Some(3));
    assert!(err.to_string().contains("no TABLE setting"), "{err}");
}

#[test]
fn missing_plugin_file_is_a_load_error() {
    let mut f = Fixture::new(&[], &[]);
    f.config.lua_responders = vec!["ghost".into()];
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    assert!(err.to_string().contains("ghost.lua"), "{err}");
    assert!(err.to_string().contains("cannot read"), "{err}");
}

#[test]
fn plugin_names_cannot_climb_out_of_the_plugin_dir() {
    let mut f = Fixture::new(&[], &[]);
    f.config.lua_responders = vec!["../../etc/passwd".into()];
    assert!(LuaPlugins::load(&f.config).is_err());
}

#[test]
fn lenient_load_keeps_the_good_plugins_working() {
    let f = Fixture::new(
        &[
            ("bad", "this is not lua"),
            (
                "good",
                r#"portsentry.on("block", function() return "ok" end)"#,
            ),
        ],
        &[],
    );
    let (plugins, errors) = LuaPlugins::load_lenient(&f.config).expect("settings ok");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].plugin(), Some("bad"));
    let out = block(&plugins, &f.config, "192.0.2.1", 1);
    assert!(failed_text(&out[0]).contains("plugin not loaded"));
    assert_eq!(done_detail(&out[1]), "ok");
}

#[test]
fn malformed_lua_limits_are_setting_errors() {
    let f = Fixture::new(&[], &[("LUA_MEMORY_LIMIT", "lots")]);
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    assert!(matches!(err, LuaError::Setting { .. }), "{err:?}");
    assert!(err.to_string().contains("LUA_MEMORY_LIMIT"));
    let f = Fixture::new(&[], &[("LUA_CALL_TIMEOUT", "soon")]);
    assert!(LuaPlugins::load(&f.config).is_err());
    assert_eq!(build::byte_size("32M"), Some(32 << 20));
    assert_eq!(build::byte_size("512 KiB"), Some(512 << 10));
    assert_eq!(build::byte_size("4096"), Some(4096));
    assert_eq!(build::byte_size("1T"), None);
}

// ---------------------------------------------------------------- sandbox escapes

/// A plugin whose block handler runs `escape` on port 1 and answers "fine" otherwise, so
/// each test can check that the next event is still handled.
fn escape_fixture(escape: &str, settings: &[(&str, &str)]) -> Fixture {
    let src = format!(
        "portsentry.on('block', function(ev)\n  if ev.port == 1 then\n{escape}\n  end\n  return 'fine'\nend)\n"
    );
    Fixture::new(&[("esc", &src)], settings)
}

/// Runs the escape (must fail) then a normal event (must succeed); returns the failure text.
fn assert_escape_fails(escape: &str, settings: &[(&str, &str)]) -> String {
    let f = escape_fixture(escape, settings);
    let plugins = f.load();
    let started = Instant::now();
    let first = block1(&plugins, &f.config, "192.0.2.7", 1);
    let text = failed_text(&first).to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(text.starts_with("lua:esc: "), "{text}");
    let second = block1(&plugins, &f.config, "192.0.2.8", 2);
    assert_eq!(done_detail(&second), "fine", "next event after: {text}");
    text
}

#[test]
fn load_of_dumped_bytecode_fails_cleanly() {
    let t = assert_escape_fails("    load(string.dump(function() end))()", &[]);
    assert!(t.contains(":3:"), "{t}");
}

#[test]
fn string_dump_is_gone_even_through_the_string_metatable() {
    let t = assert_escape_fails("    local d = ('').dump; d(print)", &[]);
    assert!(t.contains("attempt to call a nil value"), "{t}");
    let t = assert_escape_fails("    getmetatable('').__index.dump(print)", &[]);
    assert!(t.contains("attempt to call a nil value"), "{t}");
}

#[test]
fn dofile_and_loadfile_are_gone() {
    let t = assert_escape_fails("    dofile('/etc/shadow')", &[]);
    assert!(t.contains("dofile"), "{t}");
    let t = assert_escape_fails("    loadfile('/etc/shadow')()", &[]);
    assert!(t.contains("loadfile"), "{t}");
}

#[test]
fn os_execute_io_and_debug_are_gone() {
    let t = assert_escape_fails("    os.execute('touch /tmp/portsentry-pwned')", &[]);
    assert!(t.contains("execute"), "{t}");
    assert_escape_fails("    io.open('/etc/shadow')", &[]);
    assert_escape_fails("    debug.sethook()", &[]);
    assert_escape_fails("    os.exit(1)", &[]);
    assert_escape_fails("    os.getenv('HOME')", &[]);
    assert_escape_fails("    package.loadlib('libc.so.6', 'system')", &[]);
    assert_escape_fails("    require('os')", &[]);
    assert_escape_fails("    require('../../../etc/passwd')", &[]);
    assert!(!std::path::Path::new("/tmp/portsentry-pwned").exists());
}

#[test]
fn infinite_loop_is_stopped_by_the_budget() {
    let t = assert_escape_fails("    while true do end", &[]);
    assert!(t.contains("time budget"), "{t}");
    assert!(t.contains(":3:"), "{t}");
}

#[test]
fn loop_inside_a_coroutine_is_stopped() {
    let t = assert_escape_fails(
        "    local co = coroutine.wrap(function() while true do end end)\n    co()",
        &[],
    );
    assert!(t.contains("time budget"), "{t}");
}

#[test]
fn resuming_looping_coroutines_in_a_loop_is_stopped() {
    let t = assert_escape_fails(
        "    while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        &[],
    );
    assert!(t.contains("time budget"), "{t}");
}

#[test]
fn pcall_cannot_swallow_the_budget() {
    let t = assert_escape_fails(
        "    while true do pcall(function() while true do end end) end",
        &[],
    );
    assert!(t.contains("time budget"), "{t}");
    assert_escape_fails(
        "    while true do xpcall(function() while true do end end, function() while true do end end) end",
        &[],
    );
}

#[test]
fn memory_bomb_fails_and_memory_is_given_back() {
    let t = assert_escape_fails(
        "    local t = {}\n    while true do t[#t + 1] = string.rep('x', 65536) .. #t end",
        &[("LUA_MEMORY_LIMIT", "8M")],
    );
    assert!(t.contains("out of memory"), "{t}");
    let t = assert_escape_fails(
        "    local s = string.rep('x', 1 << 40)",
        &[("LUA_MEMORY_LIMIT", "8M")],
    );
    assert!(t.contains("lua:esc:"), "{t}");
}

#[test]
fn memory_bomb_retried_under_pcall_fails_at_the_first_exhaustion() {
    let t = assert_escape_fails(
        "    while true do pcall(function() local t = {} for i = 1, 1e9 do t[i] = i end end) end",
        &[("LUA_MEMORY_LIMIT", "4M")],
    );
    assert!(t.contains("out of memory"), "{t}");
}

#[test]
fn collector_cannot_be_stopped() {
    let t = assert_escape_fails("    collectgarbage('stop')", &[]);
    assert!(t.contains("not available"), "{t}");
}

#[test]
fn finalizers_are_refused_so_a_looping_gc_cannot_hang_the_plugin() {
    // Lua runs __gc with hooks off: a looping finalizer could never be stopped.
    let t = assert_escape_fails(
        "    setmetatable({}, { __gc = function() while true do end end })\n    collectgarbage()",
        &[],
    );
    assert!(t.contains("finalizers (__gc) are not available"), "{t}");
    assert!(t.contains("esc.lua:3:"), "{t}");
}

#[test]
fn metatables_of_error_objects_cannot_be_given_a_finalizer() {
    assert_escape_fails(
        "    local ok, e = pcall(portsentry.exec, 5)\n    local mt = getmetatable(e)\n    mt.__gc = function() while true do end end\n    e = nil\n    collectgarbage()\n    error('after')",
        &[],
    );
}

#[test]
fn looping_tostring_of_an_error_value_is_stopped() {
    assert_escape_fails(
        "    error(setmetatable({}, { __tostring = function() while true do end end }))",
        &[],
    );
}

#[test]
fn binary_chunk_plugin_file_is_refused() {
    let f = Fixture::new(&[("p", "\x1bLua\x54\x00")], &[]);
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    assert!(err.to_string().contains("binary"), "{err}");
}

#[test]
fn loop_at_load_time_is_a_load_error() {
    let f = Fixture::new(&[("p", "\nwhile true do end\n")], &[]);
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    assert!(err.to_string().contains("time budget"), "{err}");
    assert_eq!(err.line(), Some(2));
}

#[test]
fn plugins_do_not_share_globals() {
    let f = Fixture::new(
        &[
            (
                "a",
                "shared = 'from a'\nportsentry.on('block', function() return tostring(shared) end)",
            ),
            (
                "b",
                "portsentry.on('block', function() return tostring(shared) end)",
            ),
        ],
        &[],
    );
    let plugins = f.load();
    let out = block(&plugins, &f.config, "192.0.2.1", 1);
    assert_eq!(done_detail(&out[0]), "from a");
    assert_eq!(done_detail(&out[1]), "nil");
}

// ---------------------------------------------------------------- API

#[test]
fn event_table_carries_the_alert_and_the_plugin_config() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev)
                 return table.concat({ ev.event, ev.ip, ev.family, ev.port, ev.proto, ev.mode,
                   ev.kind, ev.count, tostring(ev.time > 1600000000), tostring(ev.host),
                   tostring(ev.already_blocked), ev.config.timeout }, "|")
               end)"#,
        )],
        &[("P_TIMEOUT", "1h")],
    );
    let plugins = f.load();
    let o = block1(&plugins, &f.config, "2001:db8::7", 31337);
    assert_eq!(
        done_detail(&o),
        "block|2001:db8::7|ipv6|31337|tcp|stcp|TCP SYN/Normal scan|3|true|nil|false|1h"
    );
}

#[test]
fn resolved_host_is_in_the_event_when_known() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev) return ev.host end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    let a = alert("192.0.2.7", 1);
    let ctx = ResponseContext::for_alert(&a, "scanner.example", &f.config);
    let o = plugins.responders()[0].respond(&ctx);
    assert_eq!(done_detail(&o), "scanner.example");
}

#[test]
fn settings_are_read_by_short_name_full_name_or_table() {
    let f = Fixture::new(
        &[(
            "nft-x",
            r#"portsentry.on("block", function()
                 return table.concat({ portsentry.config.timeout,
                   portsentry.setting("TIMEOUT"), portsentry.setting("NFT_X_TIMEOUT"),
                   portsentry.setting("missing", "dflt"), tostring(portsentry.setting("missing")),
                   tostring(portsentry.config.other) }, ",")
               end)"#,
        )],
        &[("NFT_X_TIMEOUT", "5m"), ("NFTX_OTHER", "not mine")],
    );
    let plugins = f.load();
    assert_eq!(
        done_detail(&block1(&plugins, &f.config, "192.0.2.1", 1)),
        "5m,5m,5m,dflt,nil,nil"
    );
}

#[test]
fn exec_returns_status_and_output() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function()
                 local r = portsentry.exec{"sh", "-c", "echo out; echo err >&2; exit 3"}
                 return string.format("%s %d %q %q", tostring(r.ok), r.status, r.stdout, r.stderr)
               end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    assert_eq!(
        done_detail(&block1(&plugins, &f.config, "192.0.2.1", 1)),
        "false 3 \"out\\\n\" \"err\\\n\""
    );
}

#[test]
fn exec_check_raises_with_the_callers_line() {
    let f = Fixture::new(
        &[(
            "p",
            "portsentry.on('block', function()\n  portsentry.exec{'false', check = true}\nend)\n",
        )],
        &[],
    );
    let plugins = f.load();
    let t = failed_text(&block1(&plugins, &f.config, "192.0.2.1", 1)).to_string();
    assert!(t.contains("p.lua:2:"), "{t}");
    assert!(t.contains("command `false` failed: exit 1"), "{t}");
}

#[test]
fn exec_rejects_unknown_options_and_bad_arguments() {
    for bad in [
        "portsentry.exec{'true', timout = '1s'}",
        "portsentry.exec{}",
        "portsentry.exec('true')",
        "portsentry.exec{'true', {}}",
        "portsentry.exec{'true', netns = '../x'}",
        "portsentry.exec{'true', timeout = 'soon'}",
    ] {
        let t = assert_escape_fails(&format!("    {bad}"), &[]);
        assert!(t.contains("portsentry.exec"), "{bad}: {t}");
        assert!(t.contains("esc.lua:3:"), "{bad}: {t}");
    }
}

#[test]
fn exec_timeout_is_capped_by_the_call_budget() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function()
                 local r = portsentry.exec{"sleep", "10", timeout = "30s"}
                 return tostring(r.timed_out)
               end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    let started = Instant::now();
    let o = block1(&plugins, &f.config, "192.0.2.1", 1);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Either the handler saw the timeout, or the budget check after it fired.
    match o {
        Outcome::Done(a) => assert_eq!(a.detail, "true"),
        Outcome::Failed(t) => assert!(t.contains("time budget"), "{t}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exec_feeds_stdin() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function()
                 return portsentry.exec{"tr", "a-z", "A-Z", stdin = "hello"}.stdout
               end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    assert_eq!(
        done_detail(&block1(&plugins, &f.config, "192.0.2.1", 1)),
        "HELLO"
    );
}

#[test]
fn duration_now_and_json_helpers() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function()
                 assert(portsentry.duration("1h 30m") == 5400)
                 assert(portsentry.duration(2.5) == 2.5)
                 assert(portsentry.duration("90") == 90)
                 assert(not pcall(portsentry.duration, "soon"))
                 assert(portsentry.now() > 1600000000)
                 return portsentry.json({ b = 1, a = { "x", true }, c = "q\"" })
               end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    assert_eq!(
        done_detail(&block1(&plugins, &f.config, "192.0.2.1", 1)),
        r#"{"a":["x",true],"b":1,"c":"q\""}"#
    );
}

#[test]
fn on_outside_loading_and_unknown_events_raise() {
    let f = Fixture::new(&[("p", "portsentry.on('blok', function() end)")], &[]);
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    assert!(err.to_string().contains("unknown event 'blok'"), "{err}");
    assert_eq!(err.line(), Some(1));
    let t = assert_escape_fails("    portsentry.on('block', print)", &[]);
    assert!(
        t.contains("only be registered while the plugin loads"),
        "{t}"
    );
}

#[test]
fn log_lines_and_print_are_traced() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev)
                 portsentry.log.info("blocking %s on port %d", ev.ip, ev.port)
                 portsentry.log.warn("plain")
                 print("a", 1, nil)
               end)"#,
        )],
        &[],
    );
    let (name, h) = load_file(&f.plugin_file("p"), &f.config, false).expect("load");
    assert_eq!(name, "p");
    let a = alert("192.0.2.7", 31337);
    let ctx = ResponseContext::for_alert(&a, "192.0.2.7", &f.config);
    let report = h
        .call(EventData::from_context(EventName::Block, &ctx))
        .expect("answer");
    let logs: Vec<(String, String)> = report
        .trace
        .iter()
        .filter_map(|t| match t {
            TraceEntry::Log { level, message } => Some((level.clone(), message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        logs,
        [
            ("info".into(), "blocking 192.0.2.7 on port 31337".into()),
            ("warn".into(), "plain".into()),
            ("info".into(), "a\t1\tnil".into()),
        ]
    );
}

#[test]
fn log_with_a_bad_format_points_at_the_caller() {
    let t = assert_escape_fails("    portsentry.log.info('%d', 'x')", &[]);
    assert!(t.contains("esc.lua:3:"), "{t}");
}

#[test]
fn append_line_writes_only_to_configured_files() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("alert", function(ev)
                 portsentry.append_line(portsentry.config.file, ev.ip .. " " .. ev.port)
               end)
               portsentry.on("block", function(ev)
                 if ev.port == 1 then portsentry.append_line("/etc/passwd", "x") end
                 if ev.port == 2 then portsentry.append_line(portsentry.config.file, "a\nb") end
                 return "fine"
               end)"#,
        )],
        &[],
    );
    let log = f.path("alerts.log");
    let mut config = f.config.clone();
    config
        .raw
        .insert("P_FILE".into(), log.display().to_string());
    let plugins = LuaPlugins::load(&config).expect("load");
    send_alert(&plugins, &config, "192.0.2.7", 31337);
    send_alert(&plugins, &config, "2001:db8::1", 22);
    assert!(plugins.flush(Duration::from_secs(5)));
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "192.0.2.7 31337\n2001:db8::1 22\n"
    );
    let t = failed_text(&block1(&plugins, &config, "192.0.2.7", 1)).to_string();
    assert!(t.contains("not a file configured for this plugin"), "{t}");
    let t = failed_text(&block1(&plugins, &config, "192.0.2.7", 2)).to_string();
    assert!(t.contains("single line"), "{t}");
}

#[test]
fn require_finds_library_and_plugin_dir_modules_with_their_own_env() {
    let f = Fixture::new(
        &[(
            "p",
            r#"local helper = require("helper")
                   local again = require("helper")
                   portsentry.on("block", function()
                     return helper.greet() .. " " .. tostring(helper == again) .. " " .. tostring(leaked)
                   end)"#,
        )],
        &[],
    );
    std::fs::write(
        f.config.plugin_dir.join("helper.lua"),
        "leaked = true\nlocal M = {}\nfunction M.greet() return 'hi' end\nreturn M\n",
    )
    .expect("write");
    // `helper` is in LUA_RESPONDERS' directory but is not itself a responder.
    let plugins = f.load();
    assert_eq!(
        done_detail(&block1(&plugins, &f.config, "192.0.2.1", 1)),
        "hi true nil"
    );
}

#[test]
fn require_errors_name_the_module_file_and_line() {
    let f = Fixture::new(&[("p", "require('broken')")], &[]);
    std::fs::write(f.config.plugin_dir.join("broken.lua"), "\nlocal x = \n").expect("write");
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("broken.lua:"), "{text}");
    let f = Fixture::new(&[("p", "\nrequire('nowhere')")], &[]);
    let err = LuaPlugins::load(&f.config).expect_err("must fail");
    assert!(
        err.to_string().contains("module 'nowhere' not found"),
        "{err}"
    );
    assert_eq!(err.line(), Some(2));
}

// ---------------------------------------------------------------- threads and queues

#[test]
fn on_alert_never_blocks_and_counts_drops() {
    let f = Fixture::new(
        &[(
            "slow",
            r#"portsentry.on("alert", function() portsentry.exec{"sleep", "0.2"} end)"#,
        )],
        &[("LUA_CALL_TIMEOUT", "2s")],
    );
    let plugins = f.load();
    let started = Instant::now();
    for i in 0..(QUEUE_SIZE + 50) {
        send_alert(
            &plugins,
            &f.config,
            "192.0.2.7",
            u16::try_from(i % 1000).unwrap_or(1),
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(plugins.dropped() >= 40, "dropped {}", plugins.dropped());
}

#[test]
fn dropping_the_handle_finishes_queued_work_then_the_thread_exits() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("alert", function(ev)
                 portsentry.append_line(portsentry.config.file, tostring(ev.port))
               end)"#,
        )],
        &[],
    );
    let log = f.path("out.log");
    let mut config = f.config.clone();
    config
        .raw
        .insert("P_FILE".into(), log.display().to_string());
    let plugins = LuaPlugins::load(&config).expect("load");
    for port in 1..=5 {
        send_alert(&plugins, &config, "192.0.2.7", port);
    }
    drop(plugins);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text == "1\n2\n3\n4\n5\n" {
            break;
        }
        assert!(Instant::now() < deadline, "got {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn alert_failures_do_not_stop_later_alerts() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("alert", function(ev)
                 if ev.port == 1 then while true do end end
                 portsentry.append_line(portsentry.config.file, tostring(ev.port))
               end)"#,
        )],
        &[],
    );
    let log = f.path("out.log");
    let mut config = f.config.clone();
    config
        .raw
        .insert("P_FILE".into(), log.display().to_string());
    let plugins = LuaPlugins::load(&config).expect("load");
    send_alert(&plugins, &config, "192.0.2.7", 1);
    send_alert(&plugins, &config, "192.0.2.7", 2);
    assert!(plugins.flush(Duration::from_secs(5)));
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "2\n");
}

// ---------------------------------------------------------------- --test-plugin

#[test]
fn test_plugin_reports_commands_logs_and_result() {
    let f = Fixture::new(
        &[(
            "demo",
            r#"portsentry.on("alert", function(ev) portsentry.log.info("saw %s", ev.ip) end)
               portsentry.on("block", function(ev)
                 portsentry.exec{"echo", "block", ev.ip}
                 return "echoed " .. ev.ip
               end)"#,
        )],
        &[("DEMO_COLOR", "blue")],
    );
    let mut out = Vec::new();
    let code = test_plugin(
        &f.plugin_file("demo"),
        "192.0.2.7".parse().expect("ip"),
        31337,
        crate::event::Proto::Tcp,
        &f.config,
        &mut out,
    );
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, plugin_test::EXIT_OK, "{text}");
    assert!(text.contains("DEMO_COLOR=\"blue\""), "{text}");
    assert!(text.contains("handles: alert, block"), "{text}");
    assert!(text.contains("log    info: saw 192.0.2.7"), "{text}");
    assert!(
        text.contains("exec   echo block 192.0.2.7 -> exit 0"),
        "{text}"
    );
    assert!(text.contains("stdout: block 192.0.2.7"), "{text}");
    assert!(
        text.contains("result: done (lua:demo): echoed 192.0.2.7"),
        "{text}"
    );
}

#[test]
fn test_plugin_exit_codes_distinguish_load_and_handler_failures() {
    let f = Fixture::new(
        &[
            ("broken", "local = 1"),
            (
                "raises",
                "portsentry.on('block', function() error('nope') end)",
            ),
        ],
        &[],
    );
    let ip: IpAddr = "192.0.2.7".parse().expect("ip");
    let mut out = Vec::new();
    let code = test_plugin(
        &f.plugin_file("broken"),
        ip,
        1,
        crate::event::Proto::Udp,
        &f.config,
        &mut out,
    );
    let text = String::from_utf8_lossy(&out).to_string();
    assert_eq!(code, plugin_test::EXIT_LOAD_FAILED, "{text}");
    assert!(text.contains("broken.lua:1:"), "{text}");
    let mut out = Vec::new();
    let code = test_plugin(
        &f.plugin_file("raises"),
        ip,
        1,
        crate::event::Proto::Udp,
        &f.config,
        &mut out,
    );
    let text = String::from_utf8_lossy(&out).to_string();
    assert_eq!(code, plugin_test::EXIT_HANDLER_FAILED, "{text}");
    assert!(text.contains("raises.lua:1: nope"), "{text}");
    assert!(text.contains("UDP scan"), "{text}");
}

/// A plugin whose block handler escapes the Lua budget on port 1 (`escape`, a statement)
/// and answers `"ok"` otherwise; 300 ms budget.
fn escaping_plugin(escape: &str) -> Fixture {
    Fixture::new(
        &[(
            "p",
            &format!(
                r#"portsentry.on("block", function(ev)
                     if ev.port == 1 then
                       {escape}
                     end
                     return "ok"
                   end)"#
            ),
        )],
        &[],
    )
}

/// Blocks port 1 (the escape) and checks the plugin process was killed within the budget
/// plus the grace, then port 2 (positive control: the restarted plugin answers).
fn assert_killed_then_restarted(f: &Fixture) {
    let plugins = f.load();
    let started = Instant::now();
    let out = block1(&plugins, &f.config, "192.0.2.7", 1);
    let took = started.elapsed();
    let text = failed_text(&out);
    assert!(text.contains("lua:p:"), "{text}");
    assert!(
        text.contains("exceeded its 300ms budget") && text.contains("plugin process killed"),
        "{text}"
    );
    assert!(took < Duration::from_millis(300) + GRACE * 2, "{took:?}");
    assert_eq!(
        done_detail(&block1(&plugins, &f.config, "192.0.2.7", 2)),
        "ok"
    );
}

#[test]
fn a_close_handler_that_loops_is_killed_and_the_plugin_restarted() {
    let f = escaping_plugin(
        "local x <close> = setmetatable({}, {__close = function() while true do end end})\n\
         while true do end",
    );
    assert_killed_then_restarted(&f);
}

#[test]
fn a_backtracking_pattern_in_one_c_call_is_killed_and_the_plugin_restarted() {
    let f = escaping_plugin(r#"string.find(string.rep("a", 100000), ".-.-.-.-x")"#);
    assert_killed_then_restarted(&f);
}

/// The process id of the plugin's host, as the plugin's own commands see it.
fn host_pid(plugins: &LuaPlugins, config: &Config, port: u16) -> i32 {
    let out = block1(plugins, config, "192.0.2.7", port);
    done_detail(&out).trim().parse().expect("a pid")
}

const PID_PLUGIN: &str = r#"portsentry.on("block", function(ev)
     if ev.port == 9 then
       portsentry.exec{"sh", "-c", "kill -9 $PPID"}
       return "still here"
     end
     return portsentry.exec{"sh", "-c", "echo $PPID"}.stdout
   end)"#;

#[test]
fn a_plugin_process_that_dies_is_reported_and_started_again() {
    let f = Fixture::new(&[("p", PID_PLUGIN)], &[]);
    let plugins = f.load();
    let first = host_pid(&plugins, &f.config, 1);
    let text = failed_text(&block1(&plugins, &f.config, "192.0.2.7", 9)).to_string();
    assert!(
        text.contains("plugin process was killed by SIGKILL"),
        "{text}"
    );
    let second = host_pid(&plugins, &f.config, 1);
    assert_ne!(first, second);
}

#[test]
fn a_plugin_that_keeps_dying_is_restarted_after_a_growing_delay() {
    assert_eq!(restart_delay(1), Duration::ZERO);
    assert!(restart_delay(2) > Duration::ZERO);
    assert!(restart_delay(3) > restart_delay(2));
    assert_eq!(restart_delay(1000), RESTART_DELAY_MAX);
    let f = Fixture::new(&[("p", PID_PLUGIN)], &[]);
    let plugins = f.load();
    // First death: restarted at once. Second in a row: the next event is refused, not
    // started, until the delay has passed.
    failed_text(&block1(&plugins, &f.config, "192.0.2.7", 9));
    failed_text(&block1(&plugins, &f.config, "192.0.2.7", 9));
    let text = failed_text(&block1(&plugins, &f.config, "192.0.2.7", 1)).to_string();
    assert!(text.contains("being restarted"), "{text}");
    std::thread::sleep(restart_delay(3));
    host_pid(&plugins, &f.config, 1);
}

#[test]
fn dropping_the_plugins_ends_their_processes() {
    let f = Fixture::new(&[("p", PID_PLUGIN)], &[]);
    let plugins = f.load();
    let pid = host_pid(&plugins, &f.config, 1);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(plugins);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "plugin process {pid} still there"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_plugin_process_holds_none_of_the_daemons_descriptors() {
    // A descriptor the daemon holds without close-on-exec (as a C library might open it):
    // only the host's own clean-up keeps it from the plugin.
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev)
                 return portsentry.exec{"sh", "-c",
                   "for f in /proc/$PPID/fd/*; do readlink $f; done"}.stdout
               end)"#,
        )],
        &[],
    );
    let secret = f.path("daemon-secret");
    let leaked = std::fs::File::create(&secret).expect("create");
    nix::fcntl::fcntl(
        &leaked,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clear close-on-exec");
    let name = secret.display().to_string();
    // Positive control: this process holds it, and the listing shows such paths.
    let own = std::fs::read_dir("/proc/self/fd")
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|p| p == secret);
    assert!(own, "the test's own descriptor is not listed");
    let plugins = f.load();
    let out = block1(&plugins, &f.config, "192.0.2.7", 1);
    let links = done_detail(&out);
    assert!(
        links.contains("socket:"),
        "the host's pipe is listed: {links}"
    );
    assert!(!links.contains(&name), "{links}");
    drop(leaked);
}

#[test]
fn a_plugin_process_is_limited_in_address_space_cpu_and_core_files() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev)
                 return portsentry.exec{"cat", "/proc/self/limits"}.stdout
               end)"#,
        )],
        &[("LUA_MEMORY_LIMIT", "8M")],
    );
    // `cat` inherits the limits of the plugin process that runs it.
    let plugins = f.load();
    let out = block1(&plugins, &f.config, "192.0.2.7", 1);
    let limits = done_detail(&out);
    let soft = |name: &str| -> String {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next())
            .unwrap_or_else(|| panic!("{name} not in {limits}"))
            .to_string()
    };
    let space = 8 * 1024 * 1024 + host::ADDRESS_SPACE_HEADROOM;
    assert_eq!(soft("Max address space"), space.to_string());
    assert_eq!(soft("Max cpu time"), host::CPU_SECONDS.to_string());
    assert_eq!(soft("Max core file size"), "0");
}

#[test]
fn pcall_cannot_swallow_running_out_of_memory() {
    let hog = "function() local t = {} for i = 1, 1e9 do t[i] = i end end";
    for catch in [
        format!("pcall({hog})"),
        format!("xpcall({hog}, function(e) return 'fine' end)"),
        format!("coroutine.resume(coroutine.create({hog}))"),
        format!("pcall(coroutine.wrap({hog}))"),
    ] {
        let f = Fixture::new(
            &[(
                "p",
                &format!(
                    r#"portsentry.on("block", function(ev)
                         if ev.port == 1 then {catch} end
                         return "ok"
                       end)"#
                ),
            )],
            &[("LUA_MEMORY_LIMIT", "4M")],
        );
        let plugins = f.load();
        let out = block1(&plugins, &f.config, "192.0.2.7", 1);
        let text = failed_text(&out);
        assert!(
            text.contains("out of memory") && text.contains("LUA_MEMORY_LIMIT"),
            "{catch}: {text}"
        );
        // Positive control: the same plugin without the allocation succeeds.
        assert_eq!(
            done_detail(&block1(&plugins, &f.config, "192.0.2.7", 2)),
            "ok",
            "{catch}"
        );
    }
}

#[test]
fn plugins_and_responders_can_move_to_the_pipeline_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<LuaPlugins>();
    send::<LuaResponder>();
    send_sync::<LuaError>();
}

#[test]
fn a_plugin_cannot_flood_the_log_or_the_disk_in_one_event() {
    let f = Fixture::new(
        &[(
            "p",
            r#"portsentry.on("block", function(ev)
                 if ev.port == 1 then
                   for i = 1, 10000 do portsentry.log.info("line %d", i) end
                   return string.rep("d", 5000)
                 end
                 local line = string.rep("x", 60000)
                 while true do portsentry.append_line(portsentry.config.file, line) end
               end)"#,
        )],
        &[],
    );
    let log = f.path("big.log");
    let mut config = f.config.clone();
    config
        .raw
        .insert("P_FILE".into(), log.display().to_string());
    let (_, h) = load_file(&f.plugin_file("p"), &config, false).expect("load");
    let a = alert("192.0.2.7", 1);
    let ctx = ResponseContext::for_alert(&a, "192.0.2.7", &config);
    let report = h
        .call(EventData::from_context(EventName::Block, &ctx))
        .expect("answer");
    let logs = report
        .trace
        .iter()
        .filter(|t| matches!(t, TraceEntry::Log { .. }))
        .count();
    assert_eq!(logs, sandbox::MAX_LOG_LINES);
    match block_outcome("p", &report, false) {
        Outcome::Done(a) => assert!(a.detail.len() < 1100, "{}", a.detail.len()),
        other => panic!("{other:?}"),
    }
    let a = alert("192.0.2.7", 2);
    let ctx = ResponseContext::for_alert(&a, "192.0.2.7", &config);
    let report = h
        .call(EventData::from_context(EventName::Block, &ctx))
        .expect("answer");
    match &report.outcome {
        CallOutcome::Failed(e) => {
            assert!(e.to_string().contains("bytes appended in one event"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let size = std::fs::metadata(&log).expect("log").len();
    assert!(size <= sandbox::MAX_APPEND_BYTES as u64, "{size}");
}

#[test]
fn json_of_deep_or_cyclic_tables_fails_cleanly() {
    let t = assert_escape_fails(
        "    local t = {} local c = t\n    for i = 1, 1000 do c.x = {} c = c.x end\n    portsentry.json(t)",
        &[],
    );
    assert!(t.contains("portsentry.json"), "{t}");
    let t = assert_escape_fails("    local t = {} t.self = t\n    portsentry.json(t)", &[]);
    assert!(t.contains("portsentry.json"), "{t}");
    let t = assert_escape_fails("    portsentry.json({ f = print })", &[]);
    assert!(t.contains("portsentry.json"), "{t}");
}

// ---------------------------------------------------------------- unblock

/// A plugin recording its block and unblock events in `P_FILE`.
const RECORDER: &str = r#"
local file = portsentry.config.file
portsentry.on("block", function(ev)
  portsentry.append_line(file, "block " .. ev.ip .. " " .. tostring(ev.timeout) .. " "
    .. tostring(ev.restored) .. " " .. tostring(ev.reason))
  return "added " .. ev.ip
end)
portsentry.on("unblock", function(ev)
  portsentry.append_line(file, table.concat({ ev.event, ev.ip, ev.family, ev.port, ev.proto,
    ev.mode, ev.reason, tostring(ev.timeout), tostring(ev.restored) }, " "))
  return "removed " .. ev.ip
end)
"#;

fn recorder() -> (Fixture, PathBuf) {
    let f = Fixture::new(&[("p", RECORDER)], &[]);
    let file = f.path("events.log");
    let mut f = f;
    f.config
        .raw
        .insert("P_FILE".into(), file.display().to_string());
    (f, file)
}

#[test]
fn plugin_with_an_unblock_handler_records_a_lua_undo() {
    let (f, _) = recorder();
    let plugins = f.load();
    match block1(&plugins, &f.config, "192.0.2.7", 31337) {
        Outcome::Done(a) => assert_eq!(a.undo, Undo::Lua { plugin: "p".into() }),
        other => panic!("{other:?}"),
    }
}

#[test]
fn plugin_without_an_unblock_handler_records_an_impossible_undo_naming_it() {
    let f = Fixture::new(
        &[(
            "noundo",
            r#"portsentry.on("block", function(ev) return "blocked " .. ev.ip end)"#,
        )],
        &[],
    );
    let plugins = f.load();
    match block1(&plugins, &f.config, "192.0.2.7", 31337) {
        Outcome::Done(a) => assert_eq!(
            a.undo,
            Undo::Impossible {
                why: "lua:noundo registers no unblock handler".into()
            }
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unblock_handler_gets_the_block_fields_and_the_reason() {
    let (f, file) = recorder();
    let plugins = f.load();
    let a = alert("2001:db8::7", 31337);
    let mut ctx = ResponseContext::for_alert(&a, "2001:db8::7", &f.config);
    ctx.until = Some(std::time::SystemTime::now() + Duration::from_secs(600));
    for reason in [UnblockReason::Expired, UnblockReason::Unblock] {
        assert_eq!(
            plugins.unblock("p", &ctx, reason),
            Ok("lua:p: removed 2001:db8::7".to_string())
        );
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "unblock 2001:db8::7 ipv6 31337 tcp stcp expired nil false\n\
         unblock 2001:db8::7 ipv6 31337 tcp stcp unblock nil false\n"
    );
}

#[test]
fn unblock_through_undo_action_calls_the_plugin() {
    let (f, file) = recorder();
    let plugins = f.load();
    let a = alert("192.0.2.7", 79);
    let ctx = ResponseContext::for_alert(&a, "192.0.2.7", &f.config);
    let action = match block1(&plugins, &f.config, "192.0.2.7", 79) {
        Outcome::Done(a) => a,
        other => panic!("{other:?}"),
    };
    let outcome = crate::respond::undo::undo_action(
        &action,
        &ctx,
        UnblockReason::Expired,
        &plugins,
        &crate::respond::nftables::NftHandle::closed(),
        Duration::from_secs(1),
    );
    assert_eq!(
        outcome,
        crate::respond::undo::UndoOutcome::Done("lua:p: removed 192.0.2.7".into())
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.ends_with("unblock 192.0.2.7 ipv4 79 tcp stcp expired nil false\n"),
        "{text}"
    );
}

#[test]
fn unblock_failures_name_the_plugin() {
    let f = Fixture::new(
        &[
            (
                "raises",
                r#"portsentry.on("block", function() return "x" end)
                   portsentry.on("unblock", function() error("nft is gone") end)"#,
            ),
            (
                "refuses",
                r#"portsentry.on("unblock", function() return false, "not mine" end)"#,
            ),
            (
                "blockonly",
                r#"portsentry.on("block", function() return "x" end)"#,
            ),
        ],
        &[],
    );
    let plugins = f.load();
    let a = alert("192.0.2.7", 1);
    let ctx = ResponseContext::for_alert(&a, "192.0.2.7", &f.config);
    let err = plugins
        .unblock("raises", &ctx, UnblockReason::Unblock)
        .expect_err("raised");
    assert!(
        err.contains("lua:raises:") && err.contains("nft is gone"),
        "{err}"
    );
    assert!(err.contains("raises.lua:2"), "{err}");
    assert_eq!(
        plugins.unblock("refuses", &ctx, UnblockReason::Unblock),
        Err("lua:refuses: the unblock handler returned false: not mine".into())
    );
    assert_eq!(
        plugins.unblock("blockonly", &ctx, UnblockReason::Unblock),
        Err("lua:blockonly: the plugin no longer registers an unblock handler".into())
    );
}

#[test]
fn block_event_carries_timeout_and_restored() {
    let (f, file) = recorder();
    let plugins = f.load();
    let a = alert("192.0.2.7", 79);
    let mut ctx = ResponseContext::for_alert(&a, "192.0.2.7", &f.config);
    let mut responders = plugins.responders();
    assert!(matches!(responders[0].respond(&ctx), Outcome::Done(_)));
    ctx.until = Some(std::time::SystemTime::now() + Duration::from_millis(3_599_500));
    ctx.restored = true;
    assert!(matches!(responders[0].respond(&ctx), Outcome::Done(_)));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "block 192.0.2.7 nil false nil\nblock 192.0.2.7 3600 true nil\n"
    );
}

#[test]
fn network_targets_reach_plugins_as_cidr_text() {
    let (f, file) = recorder();
    let plugins = f.load();
    let a = alert("192.0.2.7", 0);
    let mut ctx = ResponseContext::for_alert(&a, "192.0.2.7", &f.config);
    ctx.target = crate::record::parse_target("192.0.2.0/24").unwrap();
    plugins
        .unblock("p", &ctx, UnblockReason::Unblock)
        .expect("unblocked");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("unblock 192.0.2.0/24 ipv4 0 "), "{text}");
}

#[test]
fn prefix_blocks_reach_plugins_with_their_length_and_member_hosts_and_hosts_with_none() {
    let f = Fixture::new(
        &[(
            "p",
            r#"local function say(ev)
                 return table.concat({ ev.event, ev.target, ev.ip, ev.prefix_len, #ev.members,
                   table.concat(ev.members, ",") }, " ")
               end
               portsentry.on("block", say)
               portsentry.on("unblock", say)"#,
        )],
        &[],
    );
    let plugins = f.load();
    let members: Vec<IpAddr> = ["2001:db8:1:2::5", "2001:db8:1:2::9", "2001:db8:1:2::a"]
        .iter()
        .map(|m| m.parse().unwrap())
        .collect();
    let a = alert("2001:db8:1:2::a", 79);
    let ctx = ResponseContext {
        target: crate::record::parse_target("2001:db8:1:2::/64").unwrap(),
        members: &members,
        ..ResponseContext::for_alert(&a, "2001:db8:1:2::/64", &f.config)
    };
    let said = "2001:db8:1:2::/64 2001:db8:1:2::/64 64 3 \
                2001:db8:1:2::5,2001:db8:1:2::9,2001:db8:1:2::a";
    let o = plugins.responders()[0].respond(&ctx);
    assert_eq!(done_detail(&o), format!("block {said}"));
    assert_eq!(
        plugins.unblock("p", &ctx, UnblockReason::Expired),
        Ok(format!("lua:p: unblock {said}"))
    );
    let v4 = ["10.77.5.3".parse().unwrap()];
    let a = alert("10.77.5.3", 79);
    let ctx = ResponseContext {
        target: crate::record::parse_target("10.77.5.0/24").unwrap(),
        members: &v4,
        ..ResponseContext::for_alert(&a, "10.77.5.0/24", &f.config)
    };
    let o = plugins.responders()[0].respond(&ctx);
    assert_eq!(
        done_detail(&o),
        "block 10.77.5.0/24 10.77.5.0/24 24 1 10.77.5.3"
    );
    // A host: its address, the full length, no members.
    let o = block1(&plugins, &f.config, "192.0.2.7", 79);
    assert_eq!(done_detail(&o), "block 192.0.2.7 192.0.2.7 32 0 ");
    let o = block1(&plugins, &f.config, "2001:db8::7", 79);
    assert_eq!(done_detail(&o), "block 2001:db8::7 2001:db8::7 128 0 ");
}

#[test]
fn blocking_plugins_without_unblock_are_warned_about_when_blocks_expire() {
    let mut f = Fixture::new(
        &[
            ("undoes", RECORDER),
            (
                "keeps",
                r#"portsentry.on("block", function() return "x" end)"#,
            ),
            ("notifies", r#"portsentry.on("alert", function() end)"#),
        ],
        &[],
    );
    assert!(
        f.load().undo_warnings(&f.config).is_empty(),
        "permanent blocks"
    );
    f.config.block_timeout = Some(Duration::from_secs(3600));
    let warnings: Vec<String> = f
        .load()
        .undo_warnings(&f.config)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        vec![format!(
            "{}: lua:keeps: blocks that expire or are unblocked keep what this plugin did \
             (it registers no \"unblock\" handler)",
            f.plugin_file("keeps").display()
        )]
    );
}
