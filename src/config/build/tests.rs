//! Tests of the key table, one group per key, plus loading and command checks.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::parse;

/// The two keys whose absence draws a warning, appended after the test's own lines so that
/// line numbers in expected messages start at 1.
const ADVANCED: &str = "ADVANCED_PORTS_TCP=\"1024\"\nADVANCED_PORTS_UDP=\"1024\"\n";

fn try_build(text: &str) -> Result<Config, Vec<String>> {
    let raw = parse(Path::new("portsentry.conf"), &format!("{text}{ADVANCED}"))
        .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    build(&raw).map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

/// Builds, insisting on no errors and no warnings.
fn clean(text: &str) -> Config {
    let config = try_build(text).unwrap_or_else(|e| panic!("unexpected errors: {e:?}"));
    assert_eq!(warnings(&config), Vec::<String>::new());
    config
}

/// Builds, insisting on no errors; warnings are the caller's business.
fn built(text: &str) -> Config {
    try_build(text).unwrap_or_else(|e| panic!("unexpected errors: {e:?}"))
}

fn errors(text: &str) -> Vec<String> {
    match try_build(text) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e,
    }
}

/// The single error a one-line config produces.
fn error(text: &str) -> String {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs[0].clone()
}

fn warnings(config: &Config) -> Vec<String> {
    config.warnings.iter().map(ToString::to_string).collect()
}

// ---- TCP_PORTS / UDP_PORTS ----

#[test]
fn tcp_ports_reads_list_and_ranges() {
    assert_eq!(
        clean("TCP_PORTS=\"1, 11,512-515\"\n").tcp_ports,
        vec![1, 11, 512, 513, 514, 515]
    );
}

#[test]
fn tcp_ports_empty_means_no_ports() {
    assert!(clean("TCP_PORTS=\"\"\n").tcp_ports.is_empty());
}

#[test]
fn tcp_ports_over_a_hundred_are_all_kept() {
    let list: Vec<String> = (2000..2150).map(|p| p.to_string()).collect();
    let config = clean(&format!("TCP_PORTS=\"{}\"\n", list.join(",")));
    assert_eq!(config.tcp_ports.len(), 150);
}

#[test]
fn tcp_ports_malformed_forms_give_exact_errors() {
    assert_eq!(
        error("TCP_PORTS=\"80,x\"\n"),
        "portsentry.conf:1: TCP_PORTS: \"80,x\": 'x' is not a port number"
    );
    assert_eq!(
        error("TCP_PORTS=\"0\"\n"),
        "portsentry.conf:1: TCP_PORTS: \"0\": '0' is out of range (ports are 1-65535)"
    );
    assert_eq!(
        error("TCP_PORTS=\"70000\"\n"),
        "portsentry.conf:1: TCP_PORTS: \"70000\": '70000' is out of range (ports are 1-65535)"
    );
    assert_eq!(
        error("TCP_PORTS=\"515-512\"\n"),
        "portsentry.conf:1: TCP_PORTS: \"515-512\": '515-512' is a reversed range (write 512-515)"
    );
    assert_eq!(
        error("TCP_PORTS=\"1,,2\"\n"),
        "portsentry.conf:1: TCP_PORTS: \"1,,2\": empty entry in the list \
         (two commas in a row, or a comma at an end)"
    );
}

#[test]
fn udp_ports_reads_list_and_rejects_garbage() {
    assert_eq!(clean("UDP_PORTS=\"7,9,7\"\n").udp_ports, vec![7, 9]);
    assert_eq!(
        error("UDP_PORTS=\"7;9\"\n"),
        "portsentry.conf:1: UDP_PORTS: \"7;9\": '7;9' is not a port number"
    );
}

// ---- ADVANCED_PORTS_* ----

#[test]
fn advanced_ports_read_limits() {
    let c = try_build("ADVANCED_PORTS_TCP=\"2048\"\nADVANCED_PORTS_UDP=\"65535\"\n").unwrap();
    assert_eq!((c.advanced_ports_tcp, c.advanced_ports_udp), (2048, 65535));
}

#[test]
fn advanced_ports_malformed_forms_give_exact_errors() {
    assert_eq!(
        error("ADVANCED_PORTS_TCP=\"0\"\n"),
        "portsentry.conf:1: ADVANCED_PORTS_TCP: \"0\": out of range \
         (expected a whole number from 1 to 65535)"
    );
    assert_eq!(
        error("ADVANCED_PORTS_UDP=\"65536\"\n"),
        "portsentry.conf:1: ADVANCED_PORTS_UDP: \"65536\": out of range \
         (expected a whole number from 1 to 65535)"
    );
    assert_eq!(
        error("ADVANCED_PORTS_TCP=\"1,abc\"\n"),
        "portsentry.conf:1: ADVANCED_PORTS_TCP: \"1,abc\": not a whole number \
         (expected a whole number from 1 to 65535)"
    );
    assert_eq!(
        error("ADVANCED_PORTS_TCP=\"\"\n"),
        "portsentry.conf:1: ADVANCED_PORTS_TCP: \"\": not a whole number \
         (expected a whole number from 1 to 65535)"
    );
}

#[test]
fn advanced_ports_absent_default_to_1024_with_a_warning() {
    let raw = parse(Path::new("p.conf"), "ADVANCED_PORTS_UDP=\"512\"\n").unwrap();
    let config = build(&raw).unwrap();
    assert_eq!(
        (config.advanced_ports_tcp, config.advanced_ports_udp),
        (1024, 512)
    );
    assert_eq!(
        warnings(&config),
        vec![
            "p.conf: ADVANCED_PORTS_TCP not set, using the default 1024 \
              (advanced mode watches ports 1-1023)"
        ]
    );
}

// ---- ADVANCED_EXCLUDE_* ----

#[test]
fn advanced_excludes_read_lists() {
    let c = clean("ADVANCED_EXCLUDE_TCP=\"113,135-139\"\nADVANCED_EXCLUDE_UDP=\"\"\n");
    assert_eq!(c.advanced_exclude_tcp, vec![113, 135, 136, 137, 138, 139]);
    assert!(c.advanced_exclude_udp.is_empty());
    assert_eq!(
        error("ADVANCED_EXCLUDE_UDP=\"520,x\"\n"),
        "portsentry.conf:1: ADVANCED_EXCLUDE_UDP: \"520,x\": 'x' is not a port number"
    );
    assert_eq!(
        error("ADVANCED_EXCLUDE_TCP=\"113,\"\n"),
        "portsentry.conf:1: ADVANCED_EXCLUDE_TCP: \"113,\": empty entry in the list \
         (two commas in a row, or a comma at an end)"
    );
}

// ---- paths ----

#[test]
fn path_keys_take_the_value_as_written() {
    let c = clean(
        "IGNORE_FILE=\"/tmp/i\"\nHISTORY_FILE=\"h\"\nBLOCKED_FILE=\"/tmp/b\"\n\
         HOSTS_DENY_FILE=\"/tmp/hosts.deny\"\nPLUGIN_DIR=\"/tmp/plugins\"\nLUA_PATH_DIR=\"/tmp/lua\"\n",
    );
    assert_eq!(c.ignore_file, Path::new("/tmp/i"));
    assert_eq!(c.history_file, Path::new("h"));
    assert_eq!(c.blocked_file, Path::new("/tmp/b"));
    assert_eq!(c.hosts_deny_file, Path::new("/tmp/hosts.deny"));
    assert_eq!(c.plugin_dir, Path::new("/tmp/plugins"));
    assert_eq!(c.lua_lib_dir, Path::new("/tmp/lua"));
    let c = clean("BLOCK_STATE_FILE=\"/tmp/s\"\nCONTROL_SOCKET=\"/tmp/sock\"\n");
    assert_eq!(c.block_state_file, Path::new("/tmp/s"));
    assert_eq!(c.control_socket, Path::new("/tmp/sock"));
}

#[test]
fn empty_path_is_an_error_for_every_path_key() {
    for key in [
        "IGNORE_FILE",
        "HISTORY_FILE",
        "BLOCKED_FILE",
        "HOSTS_DENY_FILE",
        "PLUGIN_DIR",
        "LUA_PATH_DIR",
        "BLOCK_STATE_FILE",
        "CONTROL_SOCKET",
    ] {
        assert_eq!(
            error(&format!("{key}=\"\"\n")),
            format!("portsentry.conf:1: {key}: \"\": empty (expected a file or directory path)")
        );
        assert_eq!(
            error(&format!("{key}=\"  \"\n")),
            format!("portsentry.conf:1: {key}: \"  \": empty (expected a file or directory path)")
        );
    }
}

// ---- booleans ----

#[test]
fn flags_read_zero_and_one() {
    let c = clean("RESOLVE_HOST = \"1\"\nKILL_RUN_CMD_FIRST=\"1\"\nLUA_RESPONDERS_FIRST=\"1\"\n");
    assert!(c.resolve_host && c.kill_run_cmd_first && c.lua_responders_first);
    let c = clean("RESOLVE_HOST=\"0\"\nKILL_RUN_CMD_FIRST=\"0\"\nLUA_RESPONDERS_FIRST=\"0\"\n");
    assert!(!c.resolve_host && !c.kill_run_cmd_first && !c.lua_responders_first);
}

#[test]
fn flags_refuse_anything_else() {
    for key in [
        "RESOLVE_HOST",
        "KILL_RUN_CMD_FIRST",
        "LUA_RESPONDERS_FIRST",
        "PROTECT_GATEWAYS",
        "PROTECT_RESOLVERS",
        "PROTECT_ESTABLISHED",
    ] {
        for bad in ["yes", "", "2", "01"] {
            assert_eq!(
                error(&format!("{key}=\"{bad}\"\n")),
                format!("portsentry.conf:1: {key}: \"{bad}\": expected \"0\" (off) or \"1\" (on)")
            );
        }
    }
}

// ---- PROTECT_* and RESOLV_CONF ----

#[test]
fn protections_are_on_by_default_and_resolv_conf_is_the_systems() {
    let c = clean("");
    assert!(c.protect_gateways && c.protect_resolvers && c.protect_established);
    assert_eq!(c.resolv_conf, Path::new("/etc/resolv.conf"));
}

#[test]
fn each_protection_turns_off_alone() {
    let c = clean("PROTECT_GATEWAYS=\"0\"\n");
    assert!(!c.protect_gateways && c.protect_resolvers && c.protect_established);
    let c = clean("PROTECT_RESOLVERS=\"0\"\n");
    assert!(c.protect_gateways && !c.protect_resolvers && c.protect_established);
    let c = clean("PROTECT_ESTABLISHED = \"0\"\n");
    assert!(c.protect_gateways && c.protect_resolvers && !c.protect_established);
    let c = clean("PROTECT_GATEWAYS=\"1\"\nPROTECT_RESOLVERS=\"1\"\nPROTECT_ESTABLISHED=\"1\"\n");
    assert!(c.protect_gateways && c.protect_resolvers && c.protect_established);
}

#[test]
fn resolv_conf_takes_a_path_and_refuses_an_empty_one() {
    assert_eq!(
        clean("RESOLV_CONF=\"/run/systemd/resolve/resolv.conf\"\n").resolv_conf,
        Path::new("/run/systemd/resolve/resolv.conf")
    );
    assert_eq!(
        error("RESOLV_CONF=\" \"\n"),
        "portsentry.conf:1: RESOLV_CONF: \" \": empty (expected a file or directory path)"
    );
}

// ---- BLOCK_* ----

#[test]
fn block_levels_read_zero_one_two() {
    let c = clean("BLOCK_TCP=\"1\"\nBLOCK_UDP=\"2\"\n");
    assert_eq!(
        (c.block_tcp, c.block_udp),
        (BlockLevel::All, BlockLevel::RunCmdOnly)
    );
    let c = clean("BLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\"\n");
    assert_eq!(
        (c.block_tcp, c.block_udp),
        (BlockLevel::LogOnly, BlockLevel::LogOnly)
    );
}

#[test]
fn block_levels_refuse_other_values() {
    for key in ["BLOCK_TCP", "BLOCK_UDP"] {
        for bad in ["3", "", "true", "-1"] {
            assert_eq!(
                error(&format!("{key}=\"{bad}\"\n")),
                format!(
                    "portsentry.conf:1: {key}: \"{bad}\": expected \"0\" (log only), \
                     \"1\" (run every responder) or \"2\" (run KILL_RUN_CMD only)"
                )
            );
        }
    }
}

// ---- KILL_* ----

#[test]
fn kill_route_keeps_template_and_line() {
    let c = clean("# c\nKILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n");
    assert_eq!(
        c.kill_route,
        Some(Template {
            text: "/sbin/ip route add unreachable $TARGET$".into(),
            line: 2
        })
    );
}

#[test]
fn kill_route_and_hosts_deny_without_target_are_skipped_with_a_warning() {
    let c = built("KILL_ROUTE=\"/sbin/route add -host reject\"\nKILL_HOSTS_DENY=\"ALL: x\"\n");
    assert_eq!(c.kill_route, None);
    assert_eq!(c.kill_hosts_deny, None);
    assert_eq!(
        warnings(&c),
        vec![
            "portsentry.conf:1: KILL_ROUTE: no $TARGET$ in the value, so it will be skipped",
            "portsentry.conf:2: KILL_HOSTS_DENY: no $TARGET$ in the value, so it will be skipped",
        ]
    );
}

#[test]
fn empty_kill_values_mean_none() {
    let c = clean("KILL_ROUTE=\"\"\nKILL_HOSTS_DENY=\" \"\nKILL_RUN_CMD=\"\"\n");
    assert_eq!(
        (c.kill_route, c.kill_hosts_deny, c.kill_run_cmd),
        (None, None, None)
    );
}

#[test]
fn kill_hosts_deny_keeps_template() {
    let c = clean("KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n");
    assert_eq!(
        c.kill_hosts_deny,
        Some(Template {
            text: "ALL: $TARGET$ : DENY".into(),
            line: 1
        })
    );
}

#[test]
fn kill_run_cmd_needs_no_target() {
    let c = clean("KILL_RUN_CMD=\"/usr/local/bin/page-me $PORT$ $MODE$\"\n");
    assert_eq!(
        c.kill_run_cmd,
        Some(Template {
            text: "/usr/local/bin/page-me $PORT$ $MODE$".into(),
            line: 1
        })
    );
}

// ---- UNKILL_* ----

#[test]
fn unkill_route_is_derived_from_a_known_kill_route_with_its_line() {
    let c = clean("# c\nKILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n");
    assert_eq!(
        c.unkill_route,
        Some(Template {
            text: "/sbin/ip route del unreachable $TARGET$".into(),
            line: 2
        })
    );
    let c = clean("KILL_ROUTE=\"/usr/local/bin/block $TARGET$\"\n");
    assert_eq!(c.unkill_route, None);
    assert_eq!(clean("").unkill_route, None);
}

#[test]
fn explicit_unkill_route_wins_wherever_it_is_and_empty_means_none() {
    let c = clean(
        "UNKILL_ROUTE=\"/usr/local/bin/unblock $TARGET$\"\n\
         KILL_ROUTE=\"ip route add unreachable $TARGET$\"\n",
    );
    assert_eq!(
        c.unkill_route,
        Some(Template {
            text: "/usr/local/bin/unblock $TARGET$".into(),
            line: 1
        })
    );
    let c = clean("KILL_ROUTE=\"ip route add unreachable $TARGET$\"\nUNKILL_ROUTE=\"\"\n");
    assert_eq!(c.unkill_route, None);
}

#[test]
fn unkill_route_without_target_is_kept_with_a_warning() {
    let c = built("UNKILL_ROUTE=\"/usr/local/bin/flush-blocks\"\n");
    assert_eq!(
        c.unkill_route.map(|t| t.text).as_deref(),
        Some("/usr/local/bin/flush-blocks")
    );
    assert_eq!(
        warnings(&built("UNKILL_ROUTE=\"/usr/local/bin/flush-blocks\"\n")),
        vec![
            "portsentry.conf:1: UNKILL_ROUTE: no $TARGET$ in the value: \
             every block ends with the same command"
        ]
    );
}

#[test]
fn unkill_run_cmd_keeps_template_and_empty_means_none() {
    let c = clean("UNKILL_RUN_CMD=\"/usr/local/bin/unpage $TARGET$\"\n");
    assert_eq!(
        c.unkill_run_cmd,
        Some(Template {
            text: "/usr/local/bin/unpage $TARGET$".into(),
            line: 1
        })
    );
    assert_eq!(clean("UNKILL_RUN_CMD=\"\"\n").unkill_run_cmd, None);
}

// ---- BLOCK_TIMEOUT* ----

#[test]
fn block_timeout_reads_a_duration_and_empty_or_zero_is_permanent() {
    assert_eq!(
        clean("BLOCK_TIMEOUT=\"1h 30m\"\n").block_timeout,
        Some(Duration::from_secs(5400))
    );
    for permanent in ["", " ", "0", "0s"] {
        assert_eq!(
            clean(&format!("BLOCK_TIMEOUT=\"{permanent}\"\n")).block_timeout,
            None,
            "{permanent:?}"
        );
    }
    assert_eq!(clean("").block_timeout, None);
}

#[test]
fn block_timeout_malformed_forms_give_exact_errors() {
    assert_eq!(
        error("BLOCK_TIMEOUT=\"x\"\n"),
        "portsentry.conf:1: BLOCK_TIMEOUT: \"x\": not a duration \
         (expected number at 0); expected e.g. \"30s\", \"5m\" or \"1h\""
    );
}

#[test]
fn block_timeout_factor_reads_decimals_from_one_to_a_thousand() {
    assert_eq!(clean("").block_timeout_factor, 2.0);
    for (text, value) in [("1", 1.0), ("1.5", 1.5), (" 3 ", 3.0), ("1000", 1000.0)] {
        assert_eq!(
            clean(&format!("BLOCK_TIMEOUT_FACTOR=\"{text}\"\n")).block_timeout_factor,
            value
        );
    }
}

#[test]
fn block_timeout_factor_malformed_forms_give_exact_errors() {
    for bad in ["0.5", "1000.5", "0"] {
        assert_eq!(
            error(&format!("BLOCK_TIMEOUT_FACTOR=\"{bad}\"\n")),
            format!(
                "portsentry.conf:1: BLOCK_TIMEOUT_FACTOR: \"{bad}\": out of range \
                 (expected a number from 1 to 1000, e.g. \"2\" or \"1.5\")"
            )
        );
    }
    for bad in [
        "", "x", "-2", "1e3", "inf", "NaN", "2.", ".5", "1.2.3", "2x",
    ] {
        assert_eq!(
            error(&format!("BLOCK_TIMEOUT_FACTOR=\"{bad}\"\n")),
            format!(
                "portsentry.conf:1: BLOCK_TIMEOUT_FACTOR: \"{bad}\": not a decimal number \
                 (expected a number from 1 to 1000, e.g. \"2\" or \"1.5\")"
            )
        );
    }
}

#[test]
fn block_timeout_max_defaults_to_a_week_and_reads_durations() {
    assert_eq!(
        clean("").block_timeout_max,
        Duration::from_secs(7 * 24 * 3600)
    );
    let c = clean("BLOCK_TIMEOUT=\"1h\"\nBLOCK_TIMEOUT_MAX=\"1d\"\n");
    assert_eq!(c.block_timeout_max, Duration::from_secs(86400));
    let c = clean("BLOCK_TIMEOUT=\"1h\"\nBLOCK_TIMEOUT_MAX=\"1h\"\n");
    assert_eq!(c.block_timeout_max, Duration::from_secs(3600));
}

#[test]
fn block_timeout_max_below_block_timeout_is_an_error_on_its_line() {
    assert_eq!(
        error("BLOCK_TIMEOUT_MAX=\"1h\"\nBLOCK_TIMEOUT=\"2h\"\n"),
        "portsentry.conf:1: BLOCK_TIMEOUT_MAX: \"1h\": shorter than BLOCK_TIMEOUT (2h); \
         expected at least that"
    );
    // Without BLOCK_TIMEOUT blocks are permanent and the maximum does not matter.
    assert_eq!(
        clean("BLOCK_TIMEOUT_MAX=\"1m\"\n").block_timeout_max,
        Duration::from_secs(60)
    );
    // A malformed maximum is reported once, for what it is.
    assert_eq!(
        error("BLOCK_TIMEOUT=\"2w\"\nBLOCK_TIMEOUT_MAX=\"x\"\n"),
        "portsentry.conf:2: BLOCK_TIMEOUT_MAX: \"x\": not a duration \
         (expected number at 0); expected e.g. \"30s\", \"5m\" or \"1h\""
    );
}

#[test]
fn block_timeout_max_follows_a_longer_block_timeout_when_unset() {
    let c = clean("BLOCK_TIMEOUT=\"30d\"\n");
    assert_eq!(c.block_timeout_max, Duration::from_secs(30 * 86400));
}

#[test]
fn block_timeout_jitter_reads_a_duration_and_zero_is_none() {
    assert_eq!(clean("").block_timeout_jitter, Duration::ZERO);
    assert_eq!(
        clean("BLOCK_TIMEOUT_JITTER=\"0\"\n").block_timeout_jitter,
        Duration::ZERO
    );
    assert_eq!(
        clean("BLOCK_TIMEOUT_JITTER=\"5m\"\n").block_timeout_jitter,
        Duration::from_secs(300)
    );
}

// ---- SCAN_TRIGGER ----

#[test]
fn scan_trigger_reads_whole_numbers_from_zero() {
    assert_eq!(clean("SCAN_TRIGGER=\"0\"\n").scan_trigger, 0);
    assert_eq!(clean("SCAN_TRIGGER=\" 3 \"\n").scan_trigger, 3);
    assert_eq!(
        clean("SCAN_TRIGGER=\"4294967295\"\n").scan_trigger,
        u32::MAX
    );
}

#[test]
fn scan_trigger_malformed_forms_give_exact_errors() {
    for bad in ["-1", "1,abc", "", "2x"] {
        assert_eq!(
            error(&format!("SCAN_TRIGGER=\"{bad}\"\n")),
            format!(
                "portsentry.conf:1: SCAN_TRIGGER: \"{bad}\": not a whole number \
                 (expected a whole number from 0 to 4294967295)"
            )
        );
    }
    assert_eq!(
        error("SCAN_TRIGGER=\"4294967296\"\n"),
        "portsentry.conf:1: SCAN_TRIGGER: \"4294967296\": out of range \
         (expected a whole number from 0 to 4294967295)"
    );
}

// ---- PORT_BANNER ----

#[test]
fn port_banner_is_kept_verbatim_and_empty_means_none() {
    let c = clean("PORT_BANNER=\" ** GO AWAY ** \"\n");
    assert_eq!(c.port_banner.as_deref(), Some(" ** GO AWAY ** "));
    assert_eq!(clean("PORT_BANNER=\"\"\n").port_banner, None);
}

#[test]
fn port_banner_takes_1_kib_as_1_2_did_and_refuses_more_on_its_line() {
    let kib = "x".repeat(1024);
    assert_eq!(
        clean(&format!("PORT_BANNER=\"{kib}\"\n"))
            .port_banner
            .map(|b| b.len()),
        Some(1024)
    );
    let e = error(&format!("A=\"1\"\nPORT_BANNER=\"{kib}{kib}\"\n"));
    assert!(
        e.starts_with("portsentry.conf:2: PORT_BANNER: \"xxxx"),
        "file, line and key first: {e}"
    );
    assert!(
        e.ends_with(
            ": 2048 bytes, longer than the 1024 bytes allowed (sent as written, no newline \
             added; PortSentry 1.2 kept a 1 KiB buffer)"
        ),
        "{e}"
    );
    // Bytes, not characters: 512 two-byte characters fill the buffer.
    assert!(try_build(&format!("PORT_BANNER=\"{}\"\n", "é".repeat(512))).is_ok());
    assert!(try_build(&format!("PORT_BANNER=\"{}\"\n", "é".repeat(513))).is_err());
}

#[test]
fn every_key_and_plugin_setting_has_a_bound_and_says_so() {
    for key in KEYS {
        let bound = key.bound();
        assert!(
            bound.bytes >= 107 && bound.bytes <= 512 * 1024,
            "{}",
            key.name
        );
        assert!(bound.sentence().starts_with("At most "), "{}", key.name);
        // One byte past the bound is refused, whatever the key.
        let e = error(&format!(
            "{}=\"{}\"\n",
            key.name,
            "1".repeat(bound.bytes + 1)
        ));
        assert!(e.contains("bytes, longer than the"), "{}: {e}", key.name);
    }
    assert_eq!(value_bound("CONTROL_SOCKET").bytes, 107, "sun_path");
    assert_eq!(value_bound("HISTORY_FILE").bytes, 4095, "PATH_MAX");
    // A plugin's setting is bounded too; an unknown key is only warned about.
    let long = "m".repeat(MAX_VALUE + 1);
    let e = error(&format!("LUA_RESPONDERS=\"mail\"\nMAIL_TO=\"{long}\"\n"));
    assert!(e.starts_with("portsentry.conf:2: MAIL_TO: "), "{e}");
    let c = built(&format!("NOT_A_KEY=\"{long}\"\n"));
    assert_eq!(warnings(&c).len(), 1);
}

// ---- durations ----

#[test]
fn durations_take_humantime_units() {
    let c = clean("KILL_CMD_TIMEOUT=\"45s\"\nSCAN_TRIGGER_WINDOW=\"1h 30m\"\n");
    assert_eq!(c.kill_cmd_timeout, Duration::from_secs(45));
    assert_eq!(c.scan_trigger_window, Duration::from_secs(5400));
    assert_eq!(
        clean("SCAN_TRIGGER_WINDOW=\"2d\"\n").scan_trigger_window,
        Duration::from_secs(172_800)
    );
}

#[test]
fn duration_bare_number_is_refused_with_a_unit_hint() {
    for key in [
        "KILL_CMD_TIMEOUT",
        "SCAN_TRIGGER_WINDOW",
        "BLOCK_TIMEOUT",
        "BLOCK_TIMEOUT_MAX",
        "BLOCK_TIMEOUT_JITTER",
    ] {
        assert_eq!(
            error(&format!("{key}=\"30\"\n")),
            format!(
                "portsentry.conf:1: {key}: \"30\": a bare number has no unit: \
                 write \"30s\" for seconds (units: s, m, h, d)"
            )
        );
    }
}

#[test]
fn duration_malformed_forms_give_exact_errors() {
    assert_eq!(
        error("KILL_CMD_TIMEOUT=\"0s\"\n"),
        "portsentry.conf:1: KILL_CMD_TIMEOUT: \"0s\": must be longer than 0s"
    );
    assert_eq!(
        error("KILL_CMD_TIMEOUT=\"\"\n"),
        "portsentry.conf:1: KILL_CMD_TIMEOUT: \"\": empty \
         (expected a duration such as \"30s\", \"5m\" or \"1h\")"
    );
    assert_eq!(
        error("SCAN_TRIGGER_WINDOW=\"abc\"\n"),
        "portsentry.conf:1: SCAN_TRIGGER_WINDOW: \"abc\": not a duration \
         (expected number at 0); expected e.g. \"30s\", \"5m\" or \"1h\""
    );
    assert!(error("SCAN_TRIGGER_WINDOW=\"5 parsecs\"\n")
        .starts_with("portsentry.conf:1: SCAN_TRIGGER_WINDOW: \"5 parsecs\": not a duration (unknown time unit \"parsecs\""));
}

#[test]
fn kill_cmd_timeout_below_100ms_is_refused() {
    assert_eq!(
        error("KILL_CMD_TIMEOUT=\"50ms\"\n"),
        "portsentry.conf:1: KILL_CMD_TIMEOUT: \"50ms\": too short (minimum 100ms)"
    );
    assert_eq!(
        clean("KILL_CMD_TIMEOUT=\"100ms\"\n").kill_cmd_timeout,
        Duration::from_millis(100)
    );
}

// ---- SCAN_TRIGGER_TABLE_SIZE ----

#[test]
fn table_size_accepts_one_to_ten_million() {
    assert_eq!(
        clean("SCAN_TRIGGER_TABLE_SIZE=\"1\"\n").scan_trigger_table_size,
        1
    );
    assert_eq!(
        clean("SCAN_TRIGGER_TABLE_SIZE=\"10000000\"\n").scan_trigger_table_size,
        10_000_000
    );
}

#[test]
fn table_size_malformed_forms_give_exact_errors() {
    for bad in ["0", "10000001"] {
        assert_eq!(
            error(&format!("SCAN_TRIGGER_TABLE_SIZE=\"{bad}\"\n")),
            format!(
                "portsentry.conf:1: SCAN_TRIGGER_TABLE_SIZE: \"{bad}\": out of range \
                 (expected a whole number from 1 to 10000000)"
            )
        );
    }
    assert_eq!(
        error("SCAN_TRIGGER_TABLE_SIZE=\"64k\"\n"),
        "portsentry.conf:1: SCAN_TRIGGER_TABLE_SIZE: \"64k\": not a whole number \
         (expected a whole number from 1 to 10000000)"
    );
}

// ---- LUA_RESPONDERS ----

#[test]
fn lua_responders_read_names_in_order() {
    let c = clean("LUA_RESPONDERS=\"nftables, mail,json-log,x_2\"\n");
    assert_eq!(
        c.lua_responders,
        vec!["nftables", "mail", "json-log", "x_2"]
    );
    assert!(clean("LUA_RESPONDERS=\"\"\n").lua_responders.is_empty());
}

#[test]
fn lua_responders_malformed_forms_give_exact_errors() {
    assert_eq!(
        error("LUA_RESPONDERS=\"mail,,x\"\n"),
        "portsentry.conf:1: LUA_RESPONDERS: \"mail,,x\": empty entry in the list \
         (two commas in a row, or a comma at an end)"
    );
    assert_eq!(
        error("LUA_RESPONDERS=\"../evil\"\n"),
        "portsentry.conf:1: LUA_RESPONDERS: \"../evil\": '../evil' is not a plugin name \
         (expected letters, digits, '_' and '-')"
    );
    assert_eq!(
        error("LUA_RESPONDERS=\"mail nftables\"\n"),
        "portsentry.conf:1: LUA_RESPONDERS: \"mail nftables\": 'mail nftables' is not a plugin \
         name (expected letters, digits, '_' and '-')"
    );
}

#[test]
fn lua_responder_listed_twice_runs_once_with_a_warning() {
    let c = built("LUA_RESPONDERS=\"mail,mail\"\n");
    assert_eq!(c.lua_responders, vec!["mail"]);
    assert_eq!(
        warnings(&c),
        vec!["portsentry.conf:1: LUA_RESPONDERS: plugin 'mail' listed twice; it runs once"]
    );
}

// ---- unknown and plugin keys ----

#[test]
fn unknown_key_warns_with_its_line_and_is_kept_in_raw() {
    let c = built("# c\nFOO=\"bar\"\n");
    assert_eq!(
        warnings(&c),
        vec!["portsentry.conf:2: unknown key FOO, ignored"]
    );
    assert_eq!(c.setting("FOO"), Some("bar"));
}

#[test]
fn lower_case_known_key_warns_with_a_hint() {
    let c = built("tcp_ports=\"1\"\n");
    assert_eq!(
        warnings(&c),
        vec![
            "portsentry.conf:1: unknown key tcp_ports, ignored \
              (keys are upper case: did you mean TCP_PORTS?)"
        ]
    );
    assert_eq!(c.tcp_ports, defaults(Path::new("x")).tcp_ports);
}

#[test]
fn plugin_prefixed_key_is_a_plugin_setting() {
    let c = clean(
        "NFTABLES_TIMEOUT=\"1h\"\nLUA_RESPONDERS=\"nftables,json-log\"\nJSON_LOG_FILE=\"/tmp/j\"\n",
    );
    assert_eq!(c.setting("NFTABLES_TIMEOUT"), Some("1h"));
    assert_eq!(c.setting("JSON_LOG_FILE"), Some("/tmp/j"));
}

#[test]
fn plugin_key_of_an_unlisted_plugin_is_unknown() {
    let c = built("LUA_RESPONDERS=\"mail\"\nNFTABLES_TIMEOUT=\"1h\"\n");
    assert_eq!(
        warnings(&c),
        vec!["portsentry.conf:2: unknown key NFTABLES_TIMEOUT, ignored"]
    );
    assert_eq!(c.setting("NFTABLES_TIMEOUT"), Some("1h"));
}

#[test]
fn every_key_goes_into_raw() {
    let c = clean("TCP_PORTS=\"1\"\nKILL_RUN_CMD=\"\"\n");
    assert_eq!(c.setting("TCP_PORTS"), Some("1"));
    assert_eq!(c.setting("KILL_RUN_CMD"), Some(""));
    assert_eq!(c.setting("ADVANCED_PORTS_TCP"), Some("1024"));
}

// ---- whole-file behaviour ----

#[test]
fn all_errors_are_collected_in_one_pass() {
    assert_eq!(
        errors("TCP_PORTS=\"x\"\nBLOCK_TCP=\"1\"\nBLOCK_UDP=\"9\"\nSCAN_TRIGGER=\"a\"\n"),
        vec![
            "portsentry.conf:1: TCP_PORTS: \"x\": 'x' is not a port number",
            "portsentry.conf:3: BLOCK_UDP: \"9\": expected \"0\" (log only), \
             \"1\" (run every responder) or \"2\" (run KILL_RUN_CMD only)",
            "portsentry.conf:4: SCAN_TRIGGER: \"a\": not a whole number \
             (expected a whole number from 0 to 4294967295)",
        ]
    );
}

// ---- METRICS_LISTEN / EVENT_LOG / EVENT_LOG_RATE_LIMIT ----

#[test]
fn metrics_listen_takes_an_address_and_port_of_either_family_and_empty_is_off() {
    assert_eq!(
        clean("METRICS_LISTEN=\"127.0.0.1:9736\"\n").metrics_listen,
        Some("127.0.0.1:9736".parse().unwrap())
    );
    assert_eq!(
        clean("METRICS_LISTEN=\"[::1]:9736\"\n").metrics_listen,
        Some("[::1]:9736".parse().unwrap())
    );
    assert_eq!(clean("METRICS_LISTEN=\"\"\n").metrics_listen, None);
    assert_eq!(clean("").metrics_listen, None, "off by default");
}

#[test]
fn metrics_listen_malformed_forms_give_exact_errors() {
    let expected = "expected an IP address and a port, e.g. \"127.0.0.1:9736\" or \"[::1]:9736\"";
    for value in [
        "localhost:9736",
        "127.0.0.1",
        "::1:9736",
        "127.0.0.1:99999",
        "9736",
    ] {
        assert_eq!(
            error(&format!("METRICS_LISTEN=\"{value}\"\n")),
            format!(
                "portsentry.conf:1: METRICS_LISTEN: \"{value}\": not an address and port ({expected})"
            )
        );
    }
    assert_eq!(
        error("METRICS_LISTEN=\"127.0.0.1:0\"\n"),
        format!(
            "portsentry.conf:1: METRICS_LISTEN: \"127.0.0.1:0\": port 0 is not a fixed port ({expected})"
        )
    );
}

#[test]
fn event_log_takes_a_path_and_empty_is_off() {
    assert_eq!(
        clean("EVENT_LOG=\"/var/log/portsentry/events.jsonl\"\n").event_log,
        Some(std::path::PathBuf::from("/var/log/portsentry/events.jsonl"))
    );
    assert_eq!(clean("EVENT_LOG=\"\"\n").event_log, None);
    assert_eq!(clean("").event_log, None, "off by default");
}

#[test]
fn event_log_rate_limit_reads_whole_numbers_and_defaults_to_500() {
    assert_eq!(clean("").event_log_rate_limit, 500);
    assert_eq!(
        clean("EVENT_LOG_RATE_LIMIT=\"0\"\n").event_log_rate_limit,
        0
    );
    assert_eq!(
        error("EVENT_LOG_RATE_LIMIT=\"-1\"\n"),
        "portsentry.conf:1: EVENT_LOG_RATE_LIMIT: \"-1\": not a whole number \
         (expected a whole number from 0 to 1000000)"
    );
}

#[test]
fn absent_keys_keep_debian_defaults() {
    let c = clean("");
    let d = defaults(Path::new("portsentry.conf"));
    assert_eq!(c.tcp_ports, d.tcp_ports);
    assert_eq!(c.block_tcp, BlockLevel::LogOnly);
    assert_eq!(c.kill_cmd_timeout, Duration::from_secs(30));
}

#[test]
fn every_table_key_builds_from_a_valid_value() {
    let sample = |name: &str| match name {
        "TCP_PORTS" | "UDP_PORTS" | "ADVANCED_EXCLUDE_TCP" | "ADVANCED_EXCLUDE_UDP" => "1,2-3",
        "ADVANCED_PORTS_TCP"
        | "ADVANCED_PORTS_UDP"
        | "SCAN_TRIGGER_TABLE_SIZE"
        | "BLOCK_RATE_LIMIT"
        | "MAX_ACTIVE_BLOCKS"
        | "LOG_RATE_LIMIT"
        | "EVENT_LOG_RATE_LIMIT"
        | "CROWDSEC_MAX_DECISIONS"
        | "BLOCK_RATE_LIMIT_PER_PREFIX" => "100",
        "SCAN_PREFIX_V4" | "ESCALATE_PREFIX_V4" => "24",
        "SCAN_PREFIX_V6" | "ESCALATE_PREFIX_V6" => "56",
        "ESCALATE_AFTER_V4" | "ESCALATE_AFTER_V6" => "5",
        "ESCALATE_FORGEABLE" => "1",
        "CROWDSEC_ORIGINS" => "CAPI,crowdsec",
        "CROWDSEC_PULL_RESPONDERS" => "hosts_deny",
        "CROWDSEC_SCENARIOS_CONTAINING" | "CROWDSEC_SCENARIOS_NOT_CONTAINING" => "ssh,http",
        "METRICS_LISTEN" => "[::1]:9736",
        "FORGEABLE_SCAN_TRIGGER" => "4",
        "RESOLVE_HOST"
        | "KILL_RUN_CMD_FIRST"
        | "LUA_RESPONDERS_FIRST"
        | "SCAN_TRIGGER"
        | "KILL_NFTABLES"
        | "NFTABLES_FORWARD" => "1",
        "NFTABLES_TABLE" => "ps_blocks",
        "BLOCK_TCP" | "BLOCK_UDP" => "2",
        "KILL_ROUTE" | "KILL_HOSTS_DENY" | "KILL_RUN_CMD" | "UNKILL_ROUTE" | "UNKILL_RUN_CMD" => {
            "x $TARGET$"
        }
        "KILL_CMD_TIMEOUT"
        | "SCAN_TRIGGER_WINDOW"
        | "LUA_CALL_TIMEOUT"
        | "BLOCK_TIMEOUT"
        | "BLOCK_TIMEOUT_MAX"
        | "BLOCK_TIMEOUT_JITTER"
        | "FORGEABLE_BLOCK_TIMEOUT"
        | "CROWDSEC_POLL_INTERVAL" => "5m",
        "CROWDSEC_LAPI_URL" => "http://127.0.0.1:8080",
        "CROWDSEC_MACHINE_ID" => "host-1",
        "BLOCK_TIMEOUT_FACTOR" => "1.5",
        "LUA_MEMORY_LIMIT" => "16M",
        "LUA_RESPONDERS" => "mail",
        "PROTECT_GATEWAYS" | "PROTECT_RESOLVERS" | "PROTECT_ESTABLISHED" => "0",
        _ => "/some/path",
    };
    let text: String = KEYS
        .iter()
        .map(|k| format!("{}=\"{}\"\n", k.name, sample(k.name)))
        .collect();
    let raw = parse(Path::new("all.conf"), &text).unwrap();
    let c = build(&raw).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.raw.len(), KEYS.len());
    assert_eq!(c.scan_trigger_window, Duration::from_secs(300));
    assert_eq!(c.block_udp, BlockLevel::RunCmdOnly);
}

#[test]
fn a_client_certificate_needs_its_key_and_filters_are_word_lists() {
    let raw = parse(
        Path::new("p.conf"),
        "CROWDSEC_LAPI_URL=\"https://h:1\"\nCROWDSEC_BOUNCER_KEY_FILE=\"/k\"\n\
         CROWDSEC_CERT=\"/c.pem\"\nCROWDSEC_ORIGINS=\"CAPI, lists\"\n",
    )
    .unwrap();
    let errors = build(&raw).unwrap_err().0;
    assert_eq!(
        errors[0].to_string(),
        "p.conf:3: CROWDSEC_CERT: set without CROWDSEC_KEY (a client certificate needs both)"
    );
    let raw = parse(
        Path::new("p.conf"),
        "CROWDSEC_ORIGINS=\"CAPI, lists\"\nCROWDSEC_MAX_DECISIONS=\"0\"\n",
    )
    .unwrap();
    let errors = build(&raw).unwrap_err().0;
    assert!(
        errors[0].to_string().starts_with(
            "p.conf:2: CROWDSEC_MAX_DECISIONS: \"0\": out of range (expected a whole number from 1"
        ),
        "{errors:?}"
    );
    let raw = parse(Path::new("p.conf"), "CROWDSEC_ORIGINS=\"CAPI, lists\"\n").unwrap();
    assert_eq!(build(&raw).unwrap().fleet.origins, ["CAPI", "lists"]);
}

#[test]
fn lua_limits_are_checked_with_their_line() {
    let raw = parse(
        Path::new("p.conf"),
        "LUA_CALL_TIMEOUT=\"5ms\"\nLUA_MEMORY_LIMIT=\"lots\"\n",
    )
    .unwrap();
    let errors = build(&raw).unwrap_err().0;
    assert_eq!(
        errors[0].to_string(),
        "p.conf:1: LUA_CALL_TIMEOUT: \"5ms\": expected between 10ms and 1h"
    );
    assert!(
        errors[1]
            .to_string()
            .starts_with("p.conf:2: LUA_MEMORY_LIMIT: \"lots\": expected a size")
    );
    assert_eq!(byte_size("512 KiB"), Some(512 << 10));
}

#[test]
fn key_table_has_unique_names_and_docs() {
    for (i, k) in KEYS.iter().enumerate() {
        assert!(!k.doc.is_empty(), "{} has no doc", k.name);
        assert!(
            KEYS[..i].iter().all(|o| o.name != k.name),
            "{} twice",
            k.name
        );
        assert_eq!(k.name, k.name.to_ascii_uppercase());
    }
    assert_eq!(KEYS.len(), 73);
}

// ---- load ----

#[test]
fn load_of_a_missing_file_is_an_error_on_line_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.conf");
    let errs = load(&path).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 0);
    assert_eq!(errs[0].file, path);
    assert!(
        errs[0]
            .message
            .starts_with("cannot read the configuration file: No such file"),
        "{}",
        errs[0].message
    );
}

#[test]
fn load_of_a_fifo_or_dev_zero_is_refused_at_once_naming_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portsentry.conf");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let p = path.clone();
    let errs = crate::config::read::tests::within_5s(move || load(&p))
        .unwrap_err()
        .0;
    assert_eq!(
        errs[0].to_string(),
        format!(
            "{}: cannot read the configuration file: is a FIFO, not a regular file",
            path.display()
        )
    );
    let errs = crate::config::read::tests::within_5s(|| load(Path::new("/dev/zero")))
        .unwrap_err()
        .0;
    assert!(
        errs[0].message.contains("is a character device"),
        "{}",
        errs[0]
    );
    // Positive control: a regular file at the same path loads.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, format!("TCP_PORTS=\"1\"\n{ADVANCED}")).unwrap();
    assert_eq!(load(&path).unwrap().tcp_ports, vec![1]);
}

#[test]
fn a_huge_value_is_quoted_as_a_short_excerpt() {
    let value = "x".repeat(1_000_000);
    let err = error(&format!("TCP_PORTS=\"{value}\"\n"));
    assert!(
        err.len() < 500,
        "{} bytes: {}",
        err.len(),
        &err[..400.min(err.len())]
    );
    assert!(
        err.contains("… (1000000 bytes)"),
        "{}",
        &err[..400.min(err.len())]
    );
}

#[test]
fn kill_cmd_timeout_of_one_nanosecond_is_refused_with_file_and_line() {
    assert_eq!(
        error("KILL_CMD_TIMEOUT=\"1ns\"\n"),
        "portsentry.conf:1: KILL_CMD_TIMEOUT: \"1ns\": too short (minimum 100ms)"
    );
}

#[test]
fn load_reports_syntax_and_value_errors_together_in_line_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.conf");
    std::fs::write(
        &path,
        "BLOCK_TCP=\"7\"\r\nTCP_PORTS=1\r\nSCAN_TRIGGER=\"x\"",
    )
    .unwrap();
    let errs: Vec<usize> = load(&path).unwrap_err().0.iter().map(|e| e.line).collect();
    assert_eq!(errs, vec![1, 2, 3]);
}

#[test]
fn load_reads_non_utf8_bytes_lossily() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.conf");
    let mut bytes = b"# r\xe9glages\nBLOCK_TCP=\"1\"\n".to_vec();
    bytes.extend_from_slice(ADVANCED.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.block_tcp, BlockLevel::All);
    assert!(c.warnings.is_empty());
}

// ---- command_warnings ----

fn command_config(route: &str, cmd: &str) -> Config {
    built(&format!("KILL_ROUTE=\"{route}\"\nKILL_RUN_CMD=\"{cmd}\"\n"))
}

fn command_messages(config: &Config) -> Vec<String> {
    command_warnings(config)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn command_warnings_flag_a_missing_program_with_line() {
    let c = command_config(
        "/nonexistent/route add $TARGET$",
        "no-such-program-portsentry-test $TARGET$",
    );
    assert_eq!(
        command_messages(&c),
        vec![
            "portsentry.conf:1: KILL_ROUTE: program \"/nonexistent/route\" does not exist",
            "portsentry.conf:2: KILL_RUN_CMD: program \"no-such-program-portsentry-test\" \
             not found on $PATH",
        ]
    );
}

#[test]
fn command_warnings_accept_existing_programs() {
    let c = command_config("/bin/sh -c 'echo $TARGET$'", "sh -c true");
    assert_eq!(command_messages(&c), Vec::<String>::new());
}

#[test]
fn command_warnings_flag_a_file_that_is_not_executable() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let c = command_config("", &format!("{} $TARGET$", script.display()));
    assert_eq!(
        command_messages(&c),
        vec![format!(
            "portsentry.conf:2: KILL_RUN_CMD: program \"{}\" is not an executable file",
            script.display()
        )]
    );
}

#[test]
fn command_warnings_skip_shell_syntax_builtins_and_assignments() {
    let c = command_config("(route -n | grep $TARGET$)", "echo $TARGET$ | /bin/cat");
    assert!(command_warnings(&c).is_empty());
    let c = command_config("LANG=C /nonexistent/x $TARGET$", "$HOME/bin/x");
    assert_eq!(
        command_messages(&c),
        vec!["portsentry.conf:1: KILL_ROUTE: program \"/nonexistent/x\" does not exist"]
    );
}

#[test]
fn command_warnings_fall_back_to_whitespace_on_bad_quoting() {
    let c = command_config("/nonexistent/y 'unclosed $TARGET$", "");
    assert_eq!(
        command_messages(&c),
        vec!["portsentry.conf:1: KILL_ROUTE: program \"/nonexistent/y\" does not exist"]
    );
}

#[test]
fn command_warnings_ignore_hosts_deny_line() {
    let c = built("KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n");
    assert!(command_warnings(&c).is_empty());
}

#[test]
fn command_warnings_check_explicit_undo_programs_only() {
    let c = built(
        "KILL_ROUTE=\"/nonexistent/ip route add unreachable $TARGET$\"\n\
         UNKILL_RUN_CMD=\"/nonexistent/unpage $TARGET$\"\n",
    );
    assert_eq!(
        command_messages(&c),
        vec![
            "portsentry.conf:1: KILL_ROUTE: program \"/nonexistent/ip\" does not exist",
            "portsentry.conf:2: UNKILL_RUN_CMD: program \"/nonexistent/unpage\" does not exist",
        ],
        "the derived UNKILL_ROUTE is not checked again"
    );
    let c = built("UNKILL_ROUTE=\"/nonexistent/unroute $TARGET$\"\n");
    assert_eq!(
        command_messages(&c),
        vec!["portsentry.conf:1: UNKILL_ROUTE: program \"/nonexistent/unroute\" does not exist"]
    );
}

/// The `--check-config` warning about a responder whose blocks outlive their end.
fn kept(line: usize, key: &str, why: &str) -> String {
    format!(
        "portsentry.conf:{line}: {key}: blocks that expire or are unblocked keep what this \
         command did ({why})"
    )
}

#[test]
fn command_warnings_name_responders_whose_blocks_cannot_expire() {
    let c = built(
        "BLOCK_TCP=\"1\"\nBLOCK_TIMEOUT=\"1h\"\n\
         KILL_ROUTE=\"/bin/sh -c 'echo $TARGET$'\"\nKILL_RUN_CMD=\"/bin/true $TARGET$\"\n",
    );
    assert_eq!(
        command_messages(&c),
        vec![
            kept(
                3,
                "KILL_ROUTE",
                "no UNKILL_ROUTE and KILL_ROUTE is not a form whose undo is known"
            ),
            kept(4, "KILL_RUN_CMD", "no UNKILL_RUN_CMD"),
        ]
    );
}

#[test]
fn command_warnings_on_undo_need_a_timeout_and_a_responder_that_runs() {
    let route = "KILL_ROUTE=\"/bin/sh -c 'echo $TARGET$'\"\nKILL_RUN_CMD=\"/bin/true\"\n";
    // Permanent blocks: nothing to undo.
    assert!(command_warnings(&built(&format!("BLOCK_TCP=\"1\"\n{route}"))).is_empty());
    // Log only: nothing is blocked.
    let c = built(&format!("BLOCK_TIMEOUT=\"1h\"\n{route}"));
    assert!(command_warnings(&c).is_empty());
    // Level 2 runs only the command.
    let c = built(&format!("BLOCK_UDP=\"2\"\nBLOCK_TIMEOUT=\"1h\"\n{route}"));
    assert_eq!(
        command_messages(&c),
        vec![kept(4, "KILL_RUN_CMD", "no UNKILL_RUN_CMD")]
    );
    // Undo known: no warning.
    let c = built(
        "BLOCK_TCP=\"1\"\nBLOCK_TIMEOUT=\"1h\"\nKILL_ROUTE=\"/bin/ip route add unreachable $TARGET$\"\n\
         KILL_RUN_CMD=\"/bin/true $TARGET$\"\nUNKILL_RUN_CMD=\"/bin/true $TARGET$\"\n",
    );
    assert_eq!(command_messages(&c), Vec::<String>::new());
}

#[test]
fn command_warnings_say_when_unkill_route_was_emptied_on_purpose() {
    let c = built(
        "BLOCK_TCP=\"1\"\nBLOCK_TIMEOUT=\"1h\"\n\
         KILL_ROUTE=\"/bin/ip route add unreachable $TARGET$\"\nUNKILL_ROUTE=\"\"\n",
    );
    assert_eq!(
        command_messages(&c),
        vec![kept(3, "KILL_ROUTE", "UNKILL_ROUTE is empty")]
    );
}

// ---- the shipped file ----

fn shipped_conf() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/portsentry.conf")
}

#[test]
fn shipped_config_loads_without_errors_or_warnings() {
    let c = load(&shipped_conf()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warnings(&c), Vec::<String>::new());
    assert_eq!(c.block_tcp, BlockLevel::All);
    assert_eq!(c.block_udp, BlockLevel::All);
    assert_eq!(
        c.kill_route.as_ref().map(|t| t.text.as_str()),
        Some("/sbin/ip route add unreachable $TARGET$")
    );
    assert_eq!(
        c.kill_hosts_deny.as_ref().map(|t| t.text.as_str()),
        Some("ALL: $TARGET$ : DENY")
    );
    assert_eq!(c.kill_run_cmd, None);
    assert_eq!(
        c.unkill_route.as_ref().map(|t| t.text.as_str()),
        Some("/sbin/ip route del unreachable $TARGET$")
    );
    assert_eq!(c.block_timeout, None, "1.2: blocks are permanent");
    assert!(c.kill_nftables, "shipped on, beside route and hosts.deny");
    assert_eq!(c.nftables_table, "portsentry");
    assert!(!c.nftables_forward);
    assert!(c.lua_responders.is_empty());
    let d = defaults(&shipped_conf());
    assert_eq!(c.tcp_ports, d.tcp_ports);
    assert_eq!(c.udp_ports, d.udp_ports);
    assert_eq!(c.advanced_exclude_tcp, d.advanced_exclude_tcp);
    assert_eq!(c.advanced_exclude_udp, d.advanced_exclude_udp);
    assert_eq!(c.plugin_dir, d.plugin_dir);
    assert_eq!(c.lua_lib_dir, d.lua_lib_dir);
    assert_eq!(c.block_timeout_factor, d.block_timeout_factor);
    assert_eq!(c.block_timeout_max, d.block_timeout_max);
    assert_eq!(c.block_timeout_jitter, d.block_timeout_jitter);
    assert_eq!(c.block_state_file, d.block_state_file);
    assert_eq!(c.control_socket, d.control_socket);
}

#[test]
fn shipped_config_documents_every_key() {
    let text = std::fs::read_to_string(shipped_conf()).unwrap();
    // A setting line for the key, live or commented out (`KEY="..."`, `#KEY = "..."`).
    let shown = |name: &str| {
        text.lines().any(|l| {
            l.trim_start_matches('#')
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    for key in KEYS {
        assert!(shown(key.name), "{} not in conf/portsentry.conf", key.name);
    }
    for example in [
        "NFTABLES_TIMEOUT",
        "NFTABLES_PLUGIN_TABLE",
        "MAIL_TO",
        "JSONLOG_FILE",
    ] {
        assert!(
            text.contains(&format!("#{example}=")),
            "{example} example missing"
        );
    }
}

#[test]
fn shipped_ignore_files_hold_only_addresses_and_networks() {
    for name in ["conf/portsentry.ignore", "conf/portsentry.ignore.static"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut entries = Vec::new();
        for line in text.lines() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let ok =
                entry.parse::<std::net::IpAddr>().is_ok() || entry.parse::<ipnet::IpNet>().is_ok();
            assert!(ok, "{name}: {entry:?} is not an address or network");
            entries.push(entry.to_owned());
        }
        assert_eq!(
            entries,
            vec!["127.0.0.1/32", "0.0.0.0", "::1", "::"],
            "{name}"
        );
    }
}

#[test]
fn shipped_default_file_selects_advanced_modes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/default-portsentry");
    let raw = crate::config::parse::parse_bytes(&path, &std::fs::read(&path).unwrap()).unwrap();
    let pairs: Vec<(&str, &str)> = raw
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(pairs, vec![("TCP_MODE", "atcp"), ("UDP_MODE", "audp")]);
    assert!(raw.warnings.is_empty());
}

#[test]
fn evidence_and_budget_keys_have_safe_defaults_and_checked_values() {
    let c = build(&parse(Path::new("p.conf"), "").unwrap()).unwrap();
    assert_eq!(c.forgeable_scan_trigger, 3);
    assert_eq!(c.forgeable_block_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(c.block_rate_limit, 60);
    assert_eq!(c.max_active_blocks, 10_000);
    assert_eq!(
        c.log_rate_limit, 1,
        "one line a second keeps a flood readable"
    );
    let c = build(
        &parse(
            Path::new("p.conf"),
            "FORGEABLE_BLOCK_TIMEOUT=\"0\"\nBLOCK_RATE_LIMIT=\"0\"\nFORGEABLE_SCAN_TRIGGER=\"1\"\n",
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(c.forgeable_block_timeout, None, "0: as BLOCK_TIMEOUT");
    assert_eq!(c.block_rate_limit, 0, "0: no limit");
    assert_eq!(c.forgeable_scan_trigger, 1);
    let errors = build(
        &parse(
            Path::new("p.conf"),
            "FORGEABLE_SCAN_TRIGGER=\"0\"\nBLOCK_RATE_LIMIT=\"-1\"\nLOG_RATE_LIMIT=\"lots\"\n",
        )
        .unwrap(),
    )
    .unwrap_err()
    .0;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0]
            .to_string()
            .starts_with("p.conf:1: FORGEABLE_SCAN_TRIGGER: \"0\": out of range")
    );
    assert!(
        errors[1]
            .to_string()
            .starts_with("p.conf:2: BLOCK_RATE_LIMIT: \"-1\": not a whole number")
    );
    assert!(
        errors[2]
            .to_string()
            .starts_with("p.conf:3: LOG_RATE_LIMIT:")
    );
}

#[test]
fn nftables_keys_default_to_off_table_portsentry_input_only() {
    let c = clean("");
    assert!(!c.kill_nftables, "1.2 configs: off");
    assert_eq!(c.nftables_table, "portsentry");
    assert!(!c.nftables_forward);
    let c = clean("KILL_NFTABLES=\"1\"\nNFTABLES_TABLE=\"ps-4.blocks\"\nNFTABLES_FORWARD=\"1\"\n");
    assert!(c.kill_nftables && c.nftables_forward);
    assert_eq!(c.nftables_table, "ps-4.blocks");
}

#[test]
fn nftables_keys_refuse_what_nft_could_not_name() {
    let errors = build(
        &parse(
            Path::new("p.conf"),
            "KILL_NFTABLES=\"yes\"\nNFTABLES_TABLE=\"my table\"\nNFTABLES_TABLE=\"\"\n\
             NFTABLES_FORWARD=\"2\"\n",
        )
        .unwrap(),
    )
    .unwrap_err()
    .0;
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        texts[0],
        "p.conf:1: KILL_NFTABLES: \"yes\": expected \"0\" (off) or \"1\" (on)"
    );
    assert_eq!(
        texts[1],
        "p.conf:2: NFTABLES_TABLE: \"my table\": not a table name: use a letter or '_' first, \
         then letters, digits, '_', '-' or '.', at most 255 of them"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("p.conf:4: NFTABLES_FORWARD:")),
        "{texts:?}"
    );
}

#[test]
fn built_in_nftables_keys_are_never_the_nftables_plugins_settings() {
    let c = clean(
        "LUA_RESPONDERS=\"nftables\"\nKILL_NFTABLES=\"1\"\nNFTABLES_TABLE=\"ps\"\n\
         NFTABLES_FORWARD=\"1\"\nNFTABLES_PLUGIN_TABLE=\"custom\"\nNFTABLES_TIMEOUT=\"1h\"\n",
    );
    assert_eq!(c.nftables_table, "ps");
    let settings = crate::respond::lua::plugin_settings(&c, "nftables");
    let keys: Vec<&str> = settings.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["plugin_table", "timeout"]);
}

#[test]
fn kill_nftables_and_the_plugin_may_not_share_a_table() {
    for (text, line, how) in [
        (
            "LUA_RESPONDERS=\"nftables\"\nKILL_NFTABLES=\"1\"\nNFTABLES_TABLE=\"t\"\n\
             NFTABLES_PLUGIN_TABLE=\"t\"\n",
            4,
            "NFTABLES_TABLE and NFTABLES_PLUGIN_TABLE name the same table",
        ),
        (
            "LUA_RESPONDERS=\"nftables\"\nKILL_NFTABLES=\"1\"\nNFTABLES_TABLE=\"portsentry_lua\"\n",
            3,
            "NFTABLES_TABLE names the plugin's default table",
        ),
    ] {
        let errors = build(&parse(Path::new("p.conf"), text).unwrap())
            .unwrap_err()
            .0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, line);
        assert!(errors[0].message.starts_with(how), "{}", errors[0]);
        assert!(
            errors[0]
                .message
                .ends_with("would both manage table inet t; give each a table of its own")
                || errors[0].message.contains("table inet portsentry_lua;"),
            "{}",
            errors[0]
        );
    }
    // The defaults differ: both on, no clash.
    clean("LUA_RESPONDERS=\"nftables\"\nKILL_NFTABLES=\"1\"\n");
}

#[test]
fn nftables_table_written_for_the_plugin_is_told_where_the_setting_went() {
    let c = built("LUA_RESPONDERS=\"nftables\"\nNFTABLES_TABLE=\"mine\"\n");
    assert_eq!(
        warnings(&c),
        vec![
            "portsentry.conf:2: NFTABLES_TABLE is the table of the built-in responder \
             (KILL_NFTABLES, off here), not a setting of the nftables plugin: the plugin reads \
             its table from NFTABLES_PLUGIN_TABLE (default portsentry_lua)"
        ]
    );
}

#[test]
fn the_plugins_default_table_is_the_one_the_config_checks_against() {
    let plugin =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/nftables.lua"))
            .unwrap();
    assert!(
        plugin.contains(&format!(
            "local tbl = cfg.plugin_table or \"{NFTABLES_PLUGIN_DEFAULT_TABLE}\""
        )),
        "plugins/nftables.lua and NFTABLES_PLUGIN_DEFAULT_TABLE disagree"
    );
}

#[test]
fn crowdsec_keys_go_together_and_errors_name_the_lonely_key() {
    let errors = |text: &str| -> Vec<String> {
        let raw = parse(Path::new("f.conf"), text).unwrap();
        match build(&raw) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    };
    let ok = "CROWDSEC_LAPI_URL=\"http://127.0.0.1:8080/\"\nCROWDSEC_BOUNCER_KEY_FILE=\"/k\"\n";
    assert_eq!(errors(ok), Vec::<String>::new());
    let raw = parse(Path::new("f.conf"), ok).unwrap();
    let c = build(&raw).unwrap();
    assert_eq!(c.fleet.lapi_url.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(c.fleet.poll_interval, Duration::from_secs(10));
    assert_eq!(
        errors("CROWDSEC_LAPI_URL=\"http://h:1\"\nCROWDSEC_MACHINE_ID=\"m\"\n"),
        ["f.conf:2: CROWDSEC_MACHINE_ID: set without CROWDSEC_PASSWORD_FILE (push needs both)"]
    );
    assert_eq!(
        errors("\nCROWDSEC_BOUNCER_KEY_FILE=\"/k\"\n"),
        ["f.conf:2: CROWDSEC_BOUNCER_KEY_FILE: set without CROWDSEC_LAPI_URL"]
    );
    assert_eq!(
        errors("CROWDSEC_LAPI_URL=\"http://h:1\"\n"),
        [
            "f.conf:1: CROWDSEC_LAPI_URL: set, but neither push (CROWDSEC_MACHINE_ID and \
          CROWDSEC_PASSWORD_FILE) nor pull (CROWDSEC_BOUNCER_KEY_FILE) is configured"
        ]
    );
    let bad = errors("CROWDSEC_LAPI_URL=\"127.0.0.1:8080\"\nCROWDSEC_POLL_INTERVAL=\"10\"\n");
    assert!(
        bad[0].starts_with("f.conf:1: CROWDSEC_LAPI_URL: \"127.0.0.1:8080\": expected a URL"),
        "{bad:?}"
    );
    assert!(
        bad[1].starts_with("f.conf:2: CROWDSEC_POLL_INTERVAL: \"10\": a bare number"),
        "{bad:?}"
    );
}

#[test]
fn a_huge_unknown_key_is_quoted_short_and_any_message_is_capped() {
    let key = "A".repeat(1_000_000);
    let c = built(&format!("{key}=\"x\"\n"));
    let w = warnings(&c);
    assert!(w[0].len() < 300, "{} bytes", w[0].len());
    assert!(
        w[0].contains("… (1000000 bytes), ignored"),
        "{}",
        &w[0][..200]
    );
    let long = ConfigWarning {
        file: "f".into(),
        line: 1,
        message: "x".repeat(5000),
    };
    assert!(long.to_string().ends_with("… (5000 bytes)"));
    assert!(long.to_string().len() < 1100);
}
