//! Stage two: raw entries -> typed [`Config`], with every error named by file and line.
//!
//! Each known key is one entry of [`KEYS`]: its name, what it is for, and how its value is
//! read, so the documentation and the tests of a key sit beside it (ripgrep's flag table).
//!
//! Reading is strict where 1.2 was lenient (1.2 read `SCAN_TRIGGER="1,abc"` as 0): a known key
//! with a malformed value is an error, and every such error is collected in one pass so
//! `--check-config` can show them all. An unknown key is only a warning (2.0 refused the
//! file, breaking 1.2 configs), except that keys named after a Lua responder listed in
//! `LUA_RESPONDERS` (`NFTABLES_TIMEOUT` for plugin `nftables`) are that plugin's settings.
//!
//! Durations (`KILL_CMD_TIMEOUT`, `SCAN_TRIGGER_WINDOW`) need a unit: `"30s"`, `"5m"`, `"1h"`,
//! `"1h 30m"` (humantime syntax). A bare number is refused with a hint to add `s`, since
//! guessing between seconds and minutes is how a one-hour window becomes a sixty-hour one.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    BlockLevel, Config, ConfigError, ConfigErrors, ConfigWarning, RawConfig, RawEntry, Template,
};

pub use super::unkill::derive_unkill_route;
use super::unkill::{NO_UNKILL_RUN_CMD, no_unkill_route_why};

/// The macro a route or hosts.deny template must contain to name the attacker.
const TARGET_MACRO: &str = "$TARGET$";

/// Default for an absent `ADVANCED_PORTS_*`, as in 1.2.
const DEFAULT_ADVANCED_PORTS: u16 = 1024;

/// `BLOCK_TIMEOUT_MAX` default: a week.
const DEFAULT_BLOCK_TIMEOUT_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// `LOG_RATE_LIMIT` default: detection lines a second for probes not acted on. One a second
/// (after a burst of [`crate::pipeline::LOG_BURST`]) keeps the internet's endless background
/// of scanning, and any forged flood, near 86,400 lines a day at most, plus the summaries.
pub const DEFAULT_LOG_RATE_LIMIT: u32 = 1;

/// `EVENT_LOG_RATE_LIMIT` default: alert events a second.
const DEFAULT_EVENT_LOG_RATE_LIMIT: u32 = 500;

/// `NFTABLES_TABLE` default: the table `KILL_NFTABLES` owns.
pub const DEFAULT_NFTABLES_TABLE: &str = "portsentry";

/// The shipped nftables plugin's own table when `NFTABLES_PLUGIN_TABLE` is unset (see
/// `plugins/nftables.lua`): not [`DEFAULT_NFTABLES_TABLE`], so that the plugin and
/// `KILL_NFTABLES` never share a table.
pub const NFTABLES_PLUGIN_DEFAULT_TABLE: &str = "portsentry_lua";

/// `KILL_CMD_TIMEOUT` minimum: a shorter one kills even `ip route add` on a busy host.
const MIN_KILL_CMD_TIMEOUT: Duration = Duration::from_millis(100);

/// Reads one value into the config. `Err` is what is wrong and what was expected; pushed
/// strings become warnings on the entry's line.
type Setter = fn(&mut Config, &RawEntry, &mut Vec<String>) -> Result<(), String>;

/// A key the daemon knows: the table that drives [`build`] and documents the file format.
pub struct KeySpec {
    /// Name as written in the file (upper case).
    pub name: &'static str,
    /// One line on what the key is for and what values it takes.
    pub doc: &'static str,
    set: Setter,
}

/// Every known key. 1.2 keys first, in the order of Debian's file, then ours.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        name: "TCP_PORTS",
        doc: "Trap ports for -tcp/-stcp: list of ports and ranges, e.g. \"1,11,512-515\".",
        set: |c, e, _| port_list(&e.value).map(|v| c.tcp_ports = v),
    },
    KeySpec {
        name: "UDP_PORTS",
        doc: "Trap ports for -udp/-sudp: list of ports and ranges.",
        set: |c, e, _| port_list(&e.value).map(|v| c.udp_ports = v),
    },
    KeySpec {
        name: "ADVANCED_PORTS_TCP",
        doc: "Advanced TCP mode watches ports 1 to N-1 (1-65535; absent: 1024).",
        set: |c, e, _| advanced_limit(&e.value).map(|v| c.advanced_ports_tcp = v),
    },
    KeySpec {
        name: "ADVANCED_PORTS_UDP",
        doc: "Advanced UDP mode watches ports 1 to N-1 (1-65535; absent: 1024).",
        set: |c, e, _| advanced_limit(&e.value).map(|v| c.advanced_ports_udp = v),
    },
    KeySpec {
        name: "ADVANCED_EXCLUDE_TCP",
        doc: "TCP ports advanced mode never watches (ident, NetBIOS): list of ports and ranges.",
        set: |c, e, _| port_list(&e.value).map(|v| c.advanced_exclude_tcp = v),
    },
    KeySpec {
        name: "ADVANCED_EXCLUDE_UDP",
        doc: "UDP ports advanced mode never watches (RIP, NetBIOS, bootp): list of ports and ranges.",
        set: |c, e, _| port_list(&e.value).map(|v| c.advanced_exclude_udp = v),
    },
    KeySpec {
        name: "IGNORE_FILE",
        doc: "File of addresses and networks never acted on.",
        set: |c, e, _| path(&e.value).map(|v| c.ignore_file = v),
    },
    KeySpec {
        name: "HISTORY_FILE",
        doc: "Append-only record of blocks, one 1.2-format line each (fail2ban reads it).",
        set: |c, e, _| path(&e.value).map(|v| c.history_file = v),
    },
    KeySpec {
        name: "BLOCKED_FILE",
        doc: "The set of blocked hosts, kept across restarts.",
        set: |c, e, _| path(&e.value).map(|v| c.blocked_file = v),
    },
    KeySpec {
        name: "RESOLVE_HOST",
        doc: "\"1\": reverse-resolve attackers' names for log lines; \"0\": log addresses only.",
        set: |c, e, _| flag(&e.value).map(|v| c.resolve_host = v),
    },
    KeySpec {
        name: "BLOCK_UDP",
        doc: "UDP alerts: \"0\" log only, \"1\" run every responder, \"2\" run KILL_RUN_CMD only.",
        set: |c, e, _| block_level(&e.value).map(|v| c.block_udp = v),
    },
    KeySpec {
        name: "BLOCK_TCP",
        doc: "TCP alerts: \"0\" log only, \"1\" run every responder, \"2\" run KILL_RUN_CMD only.",
        set: |c, e, _| block_level(&e.value).map(|v| c.block_tcp = v),
    },
    KeySpec {
        name: "KILL_ROUTE",
        doc: "Shell command that blocks $TARGET$ (route or firewall); empty or no $TARGET$: none.",
        set: |c, e, w| {
            c.kill_route = target_template(e, w);
            Ok(())
        },
    },
    KeySpec {
        name: "KILL_HOSTS_DENY",
        doc: "Line appended to HOSTS_DENY_FILE, must contain $TARGET$ (an IPv6 target is written in brackets, as tcp_wrappers reads it: [fd98::2], [fd98::]/64); empty: none.",
        set: |c, e, w| {
            c.kill_hosts_deny = target_template(e, w);
            Ok(())
        },
    },
    KeySpec {
        name: "KILL_RUN_CMD",
        doc: "Any shell command run on an alert ($TARGET$, $PORT$, $MODE$ substituted); empty: none.",
        set: |c, e, _| {
            c.kill_run_cmd = template(e);
            Ok(())
        },
    },
    KeySpec {
        name: "KILL_RUN_CMD_FIRST",
        doc: "\"1\": run KILL_RUN_CMD before the route and hosts.deny responders; \"0\": after.",
        set: |c, e, _| flag(&e.value).map(|v| c.kill_run_cmd_first = v),
    },
    KeySpec {
        name: "SCAN_TRIGGER",
        doc: "Probes from one host tolerated before the alarm; 0 and 1 react to the first.",
        set: |c, e, _| scan_trigger(&e.value).map(|v| c.scan_trigger = v),
    },
    KeySpec {
        name: "PORT_BANNER",
        doc: "Text sent to whoever connects in -tcp/-udp modes, as written (no escapes), no \
              newline added; empty: none.",
        set: |c, e, _| {
            c.port_banner = (!e.value.is_empty()).then(|| e.value.clone());
            Ok(())
        },
    },
    KeySpec {
        name: "HOSTS_DENY_FILE",
        doc: "Where KILL_HOSTS_DENY lines go (default /etc/hosts.deny).",
        set: |c, e, _| path(&e.value).map(|v| c.hosts_deny_file = v),
    },
    KeySpec {
        name: "KILL_CMD_TIMEOUT",
        doc: "A responder command still running after this long is killed, e.g. \"30s\" (at least 100ms).",
        set: |c, e, _| kill_cmd_timeout(&e.value).map(|v| c.kill_cmd_timeout = v),
    },
    KeySpec {
        name: "PROTECT_GATEWAYS",
        doc: "\"1\": never block a gateway of the routing table, whatever a probe says; \"0\": off.",
        set: |c, e, _| flag(&e.value).map(|v| c.protect_gateways = v),
    },
    KeySpec {
        name: "PROTECT_RESOLVERS",
        doc: "\"1\": never block a nameserver listed in RESOLV_CONF; \"0\": off.",
        set: |c, e, _| flag(&e.value).map(|v| c.protect_resolvers = v),
    },
    KeySpec {
        name: "PROTECT_ESTABLISHED",
        doc: "\"1\": never block the peer of an established session to a local service that is \
              older than the probe; \"0\": off.",
        set: |c, e, _| flag(&e.value).map(|v| c.protect_established = v),
    },
    KeySpec {
        name: "RESOLV_CONF",
        doc: "File whose nameservers PROTECT_RESOLVERS protects, followed on change.",
        set: |c, e, _| path(&e.value).map(|v| c.resolv_conf = v),
    },
    KeySpec {
        name: "SCAN_TRIGGER_WINDOW",
        doc: "Probes older than this no longer count towards SCAN_TRIGGER, e.g. \"1h\".",
        set: |c, e, _| duration(&e.value).map(|v| c.scan_trigger_window = v),
    },
    KeySpec {
        name: "SCAN_TRIGGER_TABLE_SIZE",
        doc: "Sources tracked at once for SCAN_TRIGGER (1-10000000); the oldest is evicted.",
        set: |c, e, _| table_size(&e.value).map(|v| c.scan_trigger_table_size = v),
    },
    KeySpec {
        name: "PLUGIN_DIR",
        doc: "Directory holding the Lua responders named in LUA_RESPONDERS.",
        set: |c, e, _| path(&e.value).map(|v| c.plugin_dir = v),
    },
    KeySpec {
        name: "LUA_PATH_DIR",
        doc: "Directory of the Lua library every plugin can require.",
        set: |c, e, _| path(&e.value).map(|v| c.lua_lib_dir = v),
    },
    KeySpec {
        name: "LUA_RESPONDERS",
        doc: "Lua responders to run, in order: comma list of plugin names; empty: none.",
        set: |c, e, w| responder_names(&e.value, w).map(|v| c.lua_responders = v),
    },
    KeySpec {
        name: "LUA_RESPONDERS_FIRST",
        doc: "\"1\": run the Lua responders before the built-in ones; \"0\": after.",
        set: |c, e, _| flag(&e.value).map(|v| c.lua_responders_first = v),
    },
    KeySpec {
        name: "LUA_CALL_TIMEOUT",
        doc: "Time budget of one event in one Lua plugin, commands included, 10ms to 1h (default 10s).",
        set: |_, e, _| lua_call_timeout(&e.value).map(|_| ()),
    },
    KeySpec {
        name: "LUA_MEMORY_LIMIT",
        doc: "Memory limit of one Lua plugin's state, e.g. \"32M\" (at least 1M).",
        set: |_, e, _| lua_memory_limit(&e.value).map(|_| ()),
    },
    KeySpec {
        name: "UNKILL_ROUTE",
        doc: "Shell command undoing KILL_ROUTE when a block ends (same macros); absent: derived \
              from a KILL_ROUTE of a known form (ip route add, route add, iptables -I/-A, nft add \
              element); empty: what KILL_ROUTE did is never undone.",
        set: |c, e, w| {
            c.unkill_route = template(e);
            if c.unkill_route.is_some() && !e.value.contains(TARGET_MACRO) {
                w.push(format!(
                    "no {TARGET_MACRO} in the value: every block ends with the same command"
                ));
            }
            Ok(())
        },
    },
    KeySpec {
        name: "UNKILL_RUN_CMD",
        doc: "Shell command undoing KILL_RUN_CMD when a block ends (same macros); empty: none, \
              what KILL_RUN_CMD did stays.",
        set: |c, e, _| {
            c.unkill_run_cmd = template(e);
            Ok(())
        },
    },
    KeySpec {
        name: "BLOCK_TIMEOUT",
        doc: "How long a first block lasts, e.g. \"1h\"; empty or \"0\": for ever (as in 1.2).",
        set: |c, e, _| optional_duration(&e.value).map(|v| c.block_timeout = v),
    },
    KeySpec {
        name: "BLOCK_TIMEOUT_FACTOR",
        doc: "A repeat offender's next block lasts this many times the previous one (1 to 1000, \
              e.g. \"2\" or \"1.5\").",
        set: |c, e, _| timeout_factor(&e.value).map(|v| c.block_timeout_factor = v),
    },
    KeySpec {
        name: "BLOCK_TIMEOUT_MAX",
        doc: "The longest a growing block may last (default 1w, at least BLOCK_TIMEOUT).",
        set: |c, e, _| duration(&e.value).map(|v| c.block_timeout_max = v),
    },
    KeySpec {
        name: "BLOCK_TIMEOUT_JITTER",
        doc: "Up to this much is added at random to each block, so its end cannot be predicted; \
              \"0\": none.",
        set: |c, e, _| {
            optional_duration(&e.value).map(|v| c.block_timeout_jitter = v.unwrap_or_default())
        },
    },
    KeySpec {
        name: "FORGEABLE_SCAN_TRIGGER",
        doc: "Distinct ports a source must probe before forgeable evidence (a raw segment, any \
              UDP datagram) blocks it, whatever SCAN_TRIGGER says (1-65535, default 3).",
        set: |c, e, _| {
            whole_number(&e.value, 1, 65535)
                .map(|v| c.forgeable_scan_trigger = u32::try_from(v).unwrap_or(3))
        },
    },
    KeySpec {
        name: "FORGEABLE_BLOCK_TIMEOUT",
        doc: "How long a first block on forgeable evidence lasts (default 1h, escalating like \
              any block); \"0\": as BLOCK_TIMEOUT.",
        set: |c, e, _| optional_duration(&e.value).map(|v| c.forgeable_block_timeout = v),
    },
    KeySpec {
        name: "BLOCK_RATE_LIMIT",
        doc: "New blocks a minute at most (token bucket; default 60; \"0\": no limit). When \
              short, the best evidence is served first.",
        set: |c, e, _| {
            whole_number(&e.value, 0, 1_000_000)
                .map(|v| c.block_rate_limit = u32::try_from(v).unwrap_or(60))
        },
    },
    KeySpec {
        name: "MAX_ACTIVE_BLOCKS",
        doc: "Blocks in force at most (default 10000; \"0\": no limit).",
        set: |c, e, _| {
            whole_number(&e.value, 0, 10_000_000)
                .map(|v| c.max_active_blocks = usize::try_from(v).unwrap_or(10_000))
        },
    },
    KeySpec {
        name: "BLOCK_RATE_LIMIT_PER_PREFIX",
        doc: "New blocks a minute at most for the hosts of one prefix (ESCALATE_PREFIX_V4 / \
              _V6), inside BLOCK_RATE_LIMIT (default 10; \"0\": no limit of its own): one \
              attacker's prefix never spends the budget the next attacker's block needs.",
        set: |c, e, _| {
            whole_number(&e.value, 0, 1_000_000)
                .map(|v| c.block_rate_limit_per_prefix = u32::try_from(v).unwrap_or(10))
        },
    },
    KeySpec {
        name: "SCAN_PREFIX_V4",
        doc: "SCAN_TRIGGER counts the distinct ports probed by each IPv4 prefix of this length \
              (0-32, default 32: per host, as in 1.2).",
        set: |c, e, _| whole_number(&e.value, 0, 32).map(|v| c.scan_prefix_v4 = prefix_len(v)),
    },
    KeySpec {
        name: "SCAN_PREFIX_V6",
        doc: "SCAN_TRIGGER counts the distinct ports probed by each IPv6 prefix of this length \
              (0-128, default 64: a host that changes its address within its /64 is one \
              scanner).",
        set: |c, e, _| whole_number(&e.value, 0, 128).map(|v| c.scan_prefix_v6 = prefix_len(v)),
    },
    KeySpec {
        name: "ESCALATE_AFTER_V4",
        doc: "Once this many hosts of one IPv4 prefix (ESCALATE_PREFIX_V4) were blocked on \
              proven evidence within SCAN_TRIGGER_WINDOW, the prefix is blocked instead \
              (default 8; \"0\": never, e.g. behind CGNAT or on shared hosting).",
        set: |c, e, _| {
            whole_number(&e.value, 0, 65535)
                .map(|v| c.escalate_after_v4 = u32::try_from(v).unwrap_or(8))
        },
    },
    KeySpec {
        name: "ESCALATE_AFTER_V6",
        doc: "Once this many hosts of one IPv6 prefix (ESCALATE_PREFIX_V6) were blocked on \
              proven evidence within SCAN_TRIGGER_WINDOW, the prefix is blocked instead \
              (default 3; \"0\": never).",
        set: |c, e, _| {
            whole_number(&e.value, 0, 65535)
                .map(|v| c.escalate_after_v6 = u32::try_from(v).unwrap_or(3))
        },
    },
    KeySpec {
        name: "ESCALATE_PREFIX_V4",
        doc: "Length of the IPv4 prefix that escalation blocks and that shares one \
              BLOCK_RATE_LIMIT_PER_PREFIX budget (8-32, default 24).",
        set: |c, e, _| whole_number(&e.value, 8, 32).map(|v| c.escalate_prefix_v4 = prefix_len(v)),
    },
    KeySpec {
        name: "ESCALATE_PREFIX_V6",
        doc: "Length of the IPv6 prefix that escalation blocks and that shares one \
              BLOCK_RATE_LIMIT_PER_PREFIX budget (16-128, default 64).",
        set: |c, e, _| {
            whole_number(&e.value, 16, 128).map(|v| c.escalate_prefix_v6 = prefix_len(v))
        },
    },
    KeySpec {
        name: "ESCALATE_FORGEABLE",
        doc: "\"1\": host blocks made on forgeable evidence (raw segments, UDP) count towards \
              escalation too. Default \"0\": a forger must not be able to blackhole someone \
              else's prefix.",
        set: |c, e, _| flag(&e.value).map(|v| c.escalate_forgeable = v),
    },
    KeySpec {
        name: "LOG_RATE_LIMIT",
        doc: "Detection lines a second at most for probes that are not acted on, after a \
              burst of 10 (default 1; \"0\": no limit); the rest are counted in a summary \
              every 10 s that says how many lines were held back. Sources that reach the \
              trigger or a block get every line.",
        set: |c, e, _| {
            whole_number(&e.value, 0, 1_000_000)
                .map(|v| c.log_rate_limit = u32::try_from(v).unwrap_or(DEFAULT_LOG_RATE_LIMIT))
        },
    },
    KeySpec {
        name: "METRICS_LISTEN",
        doc: "Address and port where GET /metrics serves Prometheus metrics, e.g. \
              \"127.0.0.1:9736\" or \"[::1]:9736\"; empty: no metrics server.",
        set: |c, e, _| metrics_listen(&e.value).map(|v| c.metrics_listen = v),
    },
    KeySpec {
        name: "EVENT_LOG",
        doc: "File that gets one JSON object a line per alert, block, unblock and reload, for \
              log shippers; empty: none.",
        set: |c, e, _| {
            c.event_log = (!e.value.trim().is_empty()).then(|| PathBuf::from(&e.value));
            Ok(())
        },
    },
    KeySpec {
        name: "EVENT_LOG_RATE_LIMIT",
        doc: "Alert events a second at most in EVENT_LOG (default 500; \"0\": no limit); the \
              rest are counted and summarised every 10 s.",
        set: |c, e, _| {
            whole_number(&e.value, 0, 1_000_000).map(|v| {
                c.event_log_rate_limit = u32::try_from(v).unwrap_or(DEFAULT_EVENT_LOG_RATE_LIMIT)
            })
        },
    },
    KeySpec {
        name: "BLOCK_STATE_FILE",
        doc: "Journal of the blocks in force (JSON lines), so they expire and undo across restarts.",
        set: |c, e, _| path(&e.value).map(|v| c.block_state_file = v),
    },
    KeySpec {
        name: "CONTROL_SOCKET",
        doc: "Unix socket the list, block and unblock commands talk to the daemon through.",
        set: |c, e, _| path(&e.value).map(|v| c.control_socket = v),
    },
    KeySpec {
        name: "KILL_NFTABLES",
        doc: "\"1\": block hosts in the kernel through nftables sets of our own table, over \
              netlink (no command run); \"0\" (default): off.",
        set: |c, e, _| flag(&e.value).map(|v| c.kill_nftables = v),
    },
    KeySpec {
        name: "NFTABLES_TABLE",
        doc: "The inet table KILL_NFTABLES owns (default portsentry); no other table is touched.",
        set: |c, e, _| nftables_table_name(&e.value).map(|()| c.nftables_table = e.value.clone()),
    },
    KeySpec {
        name: "NFTABLES_FORWARD",
        doc: "\"1\": KILL_NFTABLES also drops blocked sources on the forward hook (routers, \
              containers); \"0\" (default): input hook only.",
        set: |c, e, _| flag(&e.value).map(|v| c.nftables_forward = v),
    },
    KeySpec {
        name: "CROWDSEC_LAPI_URL",
        doc: "Base URL of the CrowdSec Local API the fleet shares blocks through, e.g. \
              \"http://127.0.0.1:8080\"; empty: no fleet.",
        set: |c, e, _| {
            c.fleet.lapi_url = if e.value.trim().is_empty() {
                None
            } else {
                Some(super::fleet::check_lapi_url(&e.value)?)
            };
            Ok(())
        },
    },
    KeySpec {
        name: "CROWDSEC_MACHINE_ID",
        doc: "Machine login that pushes this host's blocks as decisions (with \
              CROWDSEC_PASSWORD_FILE); empty: no push.",
        set: |c, e, _| {
            let id = e.value.trim();
            if id.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err("expected a machine name without spaces".into());
            }
            c.fleet.machine_id = (!id.is_empty()).then(|| id.to_string());
            Ok(())
        },
    },
    KeySpec {
        name: "CROWDSEC_PASSWORD_FILE",
        doc: "File holding the machine's password (mode 0600; one readable by every user is \
              refused); read at start and reload, never logged.",
        set: |c, e, _| optional_path(&e.value).map(|v| c.fleet.password_file = v),
    },
    KeySpec {
        name: "CROWDSEC_BOUNCER_KEY_FILE",
        doc: "File holding the bouncer API key that pulls the fleet's decisions (mode 0600); \
              empty: no pull.",
        set: |c, e, _| optional_path(&e.value).map(|v| c.fleet.bouncer_key_file = v),
    },
    KeySpec {
        name: "CROWDSEC_POLL_INTERVAL",
        doc: "Time between two pulls of the decision stream (default 10s; 1s to 1h).",
        set: |c, e, _| {
            let d = duration(&e.value)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
                return Err("expected between 1s and 1h".into());
            }
            c.fleet.poll_interval = d;
            Ok(())
        },
    },
    KeySpec {
        name: "CROWDSEC_OUTBOX_FILE",
        doc: "Where pushes wait while the LAPI is unreachable, kept across restarts (default \
              crowdsec.outbox beside BLOCK_STATE_FILE).",
        set: |c, e, _| optional_path(&e.value).map(|v| c.fleet.outbox_file = v),
    },
    KeySpec {
        name: "CROWDSEC_MAX_DECISIONS",
        doc: "Pulled CrowdSec decisions held at most (default 200000); beyond, newer ones are \
              left out, with one line. They never count against MAX_ACTIVE_BLOCKS.",
        set: |c, e, _| {
            whole_number(&e.value, 1, 10_000_000).map(|v| {
                c.fleet.max_decisions =
                    usize::try_from(v).unwrap_or(super::fleet::DEFAULT_MAX_DECISIONS)
            })
        },
    },
    KeySpec {
        name: "CROWDSEC_ORIGINS",
        doc: "Origins of the decisions pulled, comma-separated exact names as the LAPI records \
              them (crowdsec, cscli, cscli-import, CAPI, lists); empty (default): all.",
        set: |c, e, _| super::fleet::word_list(&e.value).map(|v| c.fleet.origins = v),
    },
    KeySpec {
        name: "CROWDSEC_SCENARIOS_CONTAINING",
        doc: "Pull only decisions whose scenario contains one of these comma-separated words \
              (case-insensitive); empty (default): all.",
        set: |c, e, _| super::fleet::word_list(&e.value).map(|v| c.fleet.scenarios_containing = v),
    },
    KeySpec {
        name: "CROWDSEC_SCENARIOS_NOT_CONTAINING",
        doc: "Leave out decisions whose scenario contains one of these comma-separated words \
              (case-insensitive); empty (default): none left out.",
        set: |c, e, _| {
            super::fleet::word_list(&e.value).map(|v| c.fleet.scenarios_not_containing = v)
        },
    },
    KeySpec {
        name: "CROWDSEC_PULL_RESPONDERS",
        doc: "Responders also run for each pulled CrowdSec decision, comma-separated: \
              hosts_deny, run_cmd, route (route with KILL_NFTABLES only); empty (default): \
              none. Costs one run a decision (a process for a command).",
        set: |c, e, _| {
            let names = super::fleet::word_list(&e.value)?;
            if let Some(bad) = names
                .iter()
                .find(|n| !super::fleet::PULL_RESPONDER_NAMES.contains(&n.as_str()))
            {
                return Err(format!(
                    "\"{bad}\" is not a responder: expected hosts_deny, run_cmd or route"
                ));
            }
            c.fleet.pull_responders = names;
            Ok(())
        },
    },
    KeySpec {
        name: "CROWDSEC_CA_CERT",
        doc: "PEM file of the certificate authority an https:// LAPI's certificate is checked \
              against, besides the system's; empty: the system's only.",
        set: |c, e, _| optional_path(&e.value).map(|v| c.fleet.ca_cert = v),
    },
    KeySpec {
        name: "CROWDSEC_CERT",
        doc: "PEM client certificate for a LAPI that asks for one (with CROWDSEC_KEY).",
        set: |c, e, _| optional_path(&e.value).map(|v| c.fleet.cert = v),
    },
    KeySpec {
        name: "CROWDSEC_KEY",
        doc: "PEM private key of CROWDSEC_CERT (mode 0600; one readable by every user is \
              refused).",
        set: |c, e, _| optional_path(&e.value).map(|v| c.fleet.key = v),
    },
];

/// A path where empty means "none".
fn optional_path(value: &str) -> Result<Option<PathBuf>, String> {
    let text = value.trim();
    Ok((!text.is_empty()).then(|| PathBuf::from(text)))
}

/// Which `CROWDSEC_*` keys go together: push needs the URL, a machine and its password file;
/// pull needs the URL and a bouncer key file; a URL with neither does nothing. Errors are on
/// the line of the key that is alone.
fn fleet_pass(raw: &RawConfig, config: &Config, errors: &mut Vec<ConfigError>) {
    let line = |key: &str| {
        raw.entries
            .iter()
            .find(|e| e.key == key)
            .map_or(0, |e| e.line)
    };
    let f = &config.fleet;
    let mut fail = |key: &str, message: String| {
        errors.push(ConfigError {
            file: raw.path.clone(),
            line: line(key),
            message: format!("{key}: {message}"),
        })
    };
    let push_keys = [
        ("CROWDSEC_MACHINE_ID", f.machine_id.is_some()),
        ("CROWDSEC_PASSWORD_FILE", f.password_file.is_some()),
    ];
    match push_keys {
        [(_, true), (other, false)] | [(other, false), (_, true)] => fail(
            if other == "CROWDSEC_MACHINE_ID" {
                "CROWDSEC_PASSWORD_FILE"
            } else {
                "CROWDSEC_MACHINE_ID"
            },
            format!("set without {other} (push needs both)"),
        ),
        _ => {}
    }
    if f.cert.is_some() != f.key.is_some() {
        let (set, missing) = if f.cert.is_some() {
            ("CROWDSEC_CERT", "CROWDSEC_KEY")
        } else {
            ("CROWDSEC_KEY", "CROWDSEC_CERT")
        };
        fail(
            set,
            format!("set without {missing} (a client certificate needs both)"),
        );
    }
    let push = f.machine_id.is_some() && f.password_file.is_some();
    let pull = f.bouncer_key_file.is_some();
    if f.lapi_url.is_none() {
        for (key, set) in push_keys
            .into_iter()
            .chain([("CROWDSEC_BOUNCER_KEY_FILE", pull)])
        {
            if set {
                fail(key, "set without CROWDSEC_LAPI_URL".into());
            }
        }
    } else if !push && !pull && f.machine_id.is_none() && f.password_file.is_none() {
        fail(
            "CROWDSEC_LAPI_URL",
            "set, but neither push (CROWDSEC_MACHINE_ID and CROWDSEC_PASSWORD_FILE) nor pull \
             (CROWDSEC_BOUNCER_KEY_FILE) is configured"
                .into(),
        );
    }
}

/// The longest value a key takes, and why: nothing read from a file is unbounded, and a
/// value past its bound is an error on its line rather than a surprise later (a 10 MB
/// `PORT_BANNER` written to every scanner, a socket path the kernel cannot bind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueBound {
    /// Bytes at most, as the value is written between the quotes (no escapes are read).
    pub bytes: usize,
    /// What the bound follows, for the error and the documentation; empty for the default.
    pub why: &'static str,
}

impl ValueBound {
    /// The documentation's sentence: `At most 1024 bytes (…).`
    pub fn sentence(&self) -> String {
        if self.why.is_empty() {
            format!("At most {} bytes.", self.bytes)
        } else {
            format!("At most {} bytes ({}).", self.bytes, self.why)
        }
    }
}

/// `PORT_BANNER` at most: PortSentry 1.2 copied it into a fixed 1 KiB buffer.
pub const MAX_PORT_BANNER: usize = 1024;

/// Any value without a bound of its own (plugin settings included): far above every real
/// number, duration, name, URL or list.
pub const MAX_VALUE: usize = 4096;

/// The bound of a key's value (see [`ValueBound`]); keys without one of their own (plugin
/// settings included) get [`MAX_VALUE`].
pub fn value_bound(key: &str) -> ValueBound {
    let (bytes, why) = match key {
        "PORT_BANNER" => (
            MAX_PORT_BANNER,
            "sent as written, no newline added; PortSentry 1.2 kept a 1 KiB buffer",
        ),
        "TCP_PORTS" | "UDP_PORTS" | "ADVANCED_EXCLUDE_TCP" | "ADVANCED_EXCLUDE_UDP" => {
            (512 * 1024, "room for every port listed one by one")
        }
        "CONTROL_SOCKET" => (107, "a unix socket path: the kernel's sun_path"),
        "IGNORE_FILE"
        | "HISTORY_FILE"
        | "BLOCKED_FILE"
        | "HOSTS_DENY_FILE"
        | "RESOLV_CONF"
        | "PLUGIN_DIR"
        | "LUA_PATH_DIR"
        | "EVENT_LOG"
        | "BLOCK_STATE_FILE"
        | "CROWDSEC_PASSWORD_FILE"
        | "CROWDSEC_BOUNCER_KEY_FILE"
        | "CROWDSEC_OUTBOX_FILE" => (4095, "a path: the kernel's PATH_MAX"),
        "KILL_ROUTE" | "KILL_HOSTS_DENY" | "KILL_RUN_CMD" | "UNKILL_ROUTE" | "UNKILL_RUN_CMD" => (
            MAX_VALUE,
            "a command or line, before its macros are replaced",
        ),
        _ => (MAX_VALUE, ""),
    };
    ValueBound { bytes, why }
}

impl KeySpec {
    /// The longest value this key takes ([`value_bound`]), shown beside its doc line.
    pub fn bound(&self) -> ValueBound {
        value_bound(self.name)
    }
}

/// The error of a value past its key's bound, `None` within it.
fn over_bound(key: &str, value: &str) -> Option<String> {
    let bound = value_bound(key);
    (value.len() > bound.bytes).then(|| {
        let why = if bound.why.is_empty() {
            String::new()
        } else {
            format!(" ({})", bound.why)
        };
        format!(
            "{} bytes, longer than the {} bytes allowed{why}",
            value.len(),
            bound.bytes
        )
    })
}

/// Looks a key up in [`KEYS`].
pub fn key_spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

/// Debian 12's defaults: what a key that is absent from the file means.
pub fn defaults(path: &Path) -> Config {
    Config {
        path: path.to_path_buf(),
        tcp_ports: vec![
            1, 11, 15, 79, 111, 119, 143, 540, 635, 1080, 1524, 2000, 5742, 6667, 12345, 12346,
            20034, 27665, 31337, 32771, 32772, 32773, 32774, 40421, 49724, 54320,
        ],
        udp_ports: vec![
            1, 7, 9, 69, 161, 162, 513, 635, 640, 641, 700, 37444, 34555, 31335, 32770, 32771,
            32772, 32773, 32774, 31337, 54321,
        ],
        advanced_ports_tcp: DEFAULT_ADVANCED_PORTS,
        advanced_ports_udp: DEFAULT_ADVANCED_PORTS,
        advanced_exclude_tcp: vec![113, 139],
        advanced_exclude_udp: vec![520, 138, 137, 67],
        ignore_file: PathBuf::from("/etc/portsentry/portsentry.ignore"),
        history_file: PathBuf::from("/var/lib/portsentry/portsentry.history"),
        blocked_file: PathBuf::from("/var/lib/portsentry/portsentry.blocked"),
        hosts_deny_file: PathBuf::from("/etc/hosts.deny"),
        resolve_host: false,
        block_tcp: BlockLevel::LogOnly,
        block_udp: BlockLevel::LogOnly,
        kill_route: None,
        kill_hosts_deny: None,
        kill_run_cmd: None,
        kill_run_cmd_first: false,
        kill_cmd_timeout: Duration::from_secs(30),
        protect_gateways: true,
        protect_resolvers: true,
        protect_established: true,
        resolv_conf: PathBuf::from("/etc/resolv.conf"),
        unkill_route: None,
        unkill_run_cmd: None,
        block_timeout: None,
        block_timeout_factor: 2.0,
        block_timeout_max: DEFAULT_BLOCK_TIMEOUT_MAX,
        block_timeout_jitter: Duration::ZERO,
        forgeable_scan_trigger: 3,
        forgeable_block_timeout: Some(Duration::from_secs(3600)),
        block_rate_limit: 60,
        max_active_blocks: 10_000,
        block_rate_limit_per_prefix: 10,
        scan_prefix_v4: 32,
        scan_prefix_v6: 64,
        escalate_after_v4: 8,
        escalate_after_v6: 3,
        escalate_prefix_v4: 24,
        escalate_prefix_v6: 64,
        escalate_forgeable: false,
        log_rate_limit: DEFAULT_LOG_RATE_LIMIT,
        metrics_listen: None,
        event_log: None,
        event_log_rate_limit: DEFAULT_EVENT_LOG_RATE_LIMIT,
        block_state_file: PathBuf::from("/var/lib/portsentry/portsentry.state"),
        control_socket: PathBuf::from("/run/portsentry/portsentry.sock"),
        kill_nftables: false,
        nftables_table: DEFAULT_NFTABLES_TABLE.to_string(),
        nftables_forward: false,
        scan_trigger: 0,
        scan_trigger_window: Duration::from_secs(3600),
        scan_trigger_table_size: 65536,
        port_banner: None,
        plugin_dir: PathBuf::from("/etc/portsentry/plugins"),
        lua_lib_dir: PathBuf::from("/usr/share/portsentry/lua"),
        lua_responders: Vec::new(),
        lua_responders_first: false,
        fleet: super::fleet::FleetSettings::default(),
        raw: BTreeMap::new(),
        warnings: Vec::new(),
    }
}

/// Builds the typed config from raw entries; `Err` holds every malformed value at once.
pub fn build(raw: &RawConfig) -> Result<Config, ConfigErrors> {
    let (config, errors) = build_collect(raw);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads, parses and builds a config file, reporting syntax and value errors together.
/// A missing or unreadable file is an error on line 0.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match load_collect(path) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// As [`load`], but keeps the config as far as it could be read (defaults where a value was
/// refused) beside every error, so that `--check-config` goes on, in the same run, to what
/// depends on it (plugins, ports, output files). `None`: the file could not be read at all.
pub fn load_collect(path: &Path) -> (Option<Config>, Vec<ConfigError>) {
    let bytes = match super::read::read_regular(path, super::read::TEXT_CAP, "configuration file") {
        Ok(bytes) => bytes,
        Err(e) => {
            let error = ConfigError {
                file: path.to_path_buf(),
                line: 0,
                message: format!("cannot read the configuration file: {}", e.reason()),
            };
            return (None, vec![error]);
        }
    };
    let (raw, mut errors) = super::parse::parse_collect(path, &bytes);
    let (config, build_errors) = build_collect(&raw);
    errors.extend(build_errors);
    errors.sort_by_key(|e| e.line);
    (Some(config), errors)
}

/// The build pass: the config as far as it could be read, and every error found.
fn build_collect(raw: &RawConfig) -> (Config, Vec<ConfigError>) {
    let mut config = defaults(&raw.path);
    config.warnings = raw.warnings.clone();
    let mut errors = Vec::new();
    let plugin_prefixes = plugin_prefixes(raw);
    for entry in &raw.entries {
        config.raw.insert(entry.key.clone(), entry.value.clone());
        let warn = |config: &mut Config, message: String| {
            config.warnings.push(ConfigWarning {
                file: raw.path.clone(),
                line: entry.line,
                message,
            });
        };
        let spec = key_spec(&entry.key);
        let setting = spec.is_some()
            || plugin_prefixes
                .iter()
                .any(|p| entry.key.starts_with(p.as_str()));
        if let Some(what) = over_bound(&entry.key, &entry.value).filter(|_| setting) {
            // Refused before it is read: the default stays in force.
            config.raw.remove(&entry.key);
            errors.push(ConfigError {
                file: raw.path.clone(),
                line: entry.line,
                message: format!(
                    "{}: \"{}\": {what}",
                    entry.key,
                    super::read::excerpt(&entry.value)
                ),
            });
            continue;
        }
        match spec {
            Some(spec) => {
                let mut notes = Vec::new();
                if let Err(what) = (spec.set)(&mut config, entry, &mut notes) {
                    errors.push(ConfigError {
                        file: raw.path.clone(),
                        line: entry.line,
                        message: format!(
                            "{}: \"{}\": {}",
                            entry.key,
                            super::read::excerpt(&entry.value),
                            super::read::clip_message(&what)
                        ),
                    });
                }
                for note in notes {
                    warn(&mut config, format!("{}: {note}", entry.key));
                }
            }
            None if setting => {}
            None => {
                let hint = key_spec(&entry.key.to_ascii_uppercase())
                    .map(|k| format!(" (keys are upper case: did you mean {}?)", k.name))
                    .unwrap_or_default();
                warn(
                    &mut config,
                    format!(
                        "unknown key {}, ignored{hint}",
                        super::read::excerpt(&entry.key)
                    ),
                );
            }
        }
    }
    block_timeout_pass(raw, &mut config, &mut errors);
    nftables_pass(raw, &mut config, &mut errors);
    fleet_pass(raw, &config, &mut errors);
    if !raw.entries.iter().any(|e| e.key == "UNKILL_ROUTE") {
        config.unkill_route = config.kill_route.as_ref().and_then(|kill| {
            derive_unkill_route(&kill.text).map(|text| Template {
                text,
                line: kill.line,
            })
        });
    }
    for key in ["ADVANCED_PORTS_TCP", "ADVANCED_PORTS_UDP"] {
        if !raw.entries.iter().any(|e| e.key == key) {
            config.warnings.push(ConfigWarning {
                file: raw.path.clone(),
                line: 0,
                message: format!(
                    "{key} not set, using the default {DEFAULT_ADVANCED_PORTS} \
                     (advanced mode watches ports 1-{})",
                    DEFAULT_ADVANCED_PORTS - 1
                ),
            });
        }
    }
    (config, errors)
}

/// Rules between the `BLOCK_TIMEOUT*` keys. A `BLOCK_TIMEOUT_MAX` below `BLOCK_TIMEOUT` is an
/// error on its line; when only `BLOCK_TIMEOUT` is set and longer than the default maximum,
/// the maximum follows it (blocks then never grow, rather than being cut short).
fn block_timeout_pass(raw: &RawConfig, config: &mut Config, errors: &mut Vec<ConfigError>) {
    let Some(first) = config.block_timeout else {
        return;
    };
    match raw.entries.iter().find(|e| e.key == "BLOCK_TIMEOUT_MAX") {
        Some(entry) if config.block_timeout_max < first && duration(&entry.value).is_ok() => errors
            .push(ConfigError {
                file: raw.path.clone(),
                line: entry.line,
                message: format!(
                    "{}: \"{}\": shorter than BLOCK_TIMEOUT ({}); expected at least that",
                    entry.key,
                    entry.value,
                    humantime::format_duration(first)
                ),
            }),
        Some(_) => {}
        None => config.block_timeout_max = config.block_timeout_max.max(first),
    }
}

/// `KILL_NFTABLES` beside the shipped `nftables` plugin. `NFTABLES_TABLE` and
/// `NFTABLES_FORWARD` are built-in keys, never plugin settings (a plugin is never handed a
/// key of [`KEYS`]); the plugin names its table in `NFTABLES_PLUGIN_TABLE`. Both managing
/// one table would have them fight over its chains: refused. With the plugin listed and
/// `KILL_NFTABLES` off, a `NFTABLES_TABLE` is most likely written for the plugin (it read
/// that key before the built-in responder existed): a warning says where the setting went.
fn nftables_pass(raw: &RawConfig, config: &mut Config, errors: &mut Vec<ConfigError>) {
    if !config.lua_responders.iter().any(|p| p == "nftables") {
        return;
    }
    let entry = |key: &str| raw.entries.iter().find(|e| e.key == key);
    let plugin_entry = entry("NFTABLES_PLUGIN_TABLE");
    let plugin_table = plugin_entry.map_or(NFTABLES_PLUGIN_DEFAULT_TABLE, |e| e.value.as_str());
    if config.kill_nftables && plugin_table == config.nftables_table {
        let how = if plugin_entry.is_some() {
            "NFTABLES_TABLE and NFTABLES_PLUGIN_TABLE name the same table"
        } else {
            "NFTABLES_TABLE names the plugin's default table"
        };
        errors.push(ConfigError {
            file: raw.path.clone(),
            line: plugin_entry
                .or(entry("NFTABLES_TABLE"))
                .map_or(0, |e| e.line),
            message: format!(
                "{how}: KILL_NFTABLES and the nftables plugin would both manage table inet \
                 {plugin_table}; give each a table of its own"
            ),
        });
    } else if !config.kill_nftables
        && let Some(e) = entry("NFTABLES_TABLE")
    {
        config.warnings.push(ConfigWarning {
            file: raw.path.clone(),
            line: e.line,
            message: format!(
                "NFTABLES_TABLE is the table of the built-in responder (KILL_NFTABLES, off \
                 here), not a setting of the nftables plugin: the plugin reads its table from \
                 NFTABLES_PLUGIN_TABLE (default {NFTABLES_PLUGIN_DEFAULT_TABLE})"
            ),
        });
    }
}

/// `NFTABLES_` for plugin `nftables`: the prefix of settings that belong to a listed Lua
/// responder. A `-` in a plugin name becomes `_`, since keys cannot hold `-`.
fn plugin_prefixes(raw: &RawConfig) -> Vec<String> {
    let Some(entry) = raw.entries.iter().find(|e| e.key == "LUA_RESPONDERS") else {
        return Vec::new();
    };
    entry
        .value
        .split(',')
        .map(str::trim)
        .filter(|name| valid_plugin_name(name))
        .map(|name| format!("{}_", name.to_ascii_uppercase().replace('-', "_")))
        .collect()
}

/// Problems with the programs the KILL_ROUTE and KILL_RUN_CMD commands start, for
/// `--check-config`: a typo in a path otherwise shows up only at the first attack.
///
/// Commands run through `/bin/sh -c` as 1.2's `system()` did, so only the first word of the
/// first command is checked (after any `NAME=value` assignments); shell syntax, builtins and
/// words holding a `$` cannot be judged and are skipped. A bare name is searched in `$PATH`
/// and in the standard system directories (the daemon runs as root, whose path holds the
/// `sbin` directories that a user's `$PATH` may lack).
///
/// When `BLOCK_TIMEOUT` is set, it also names each responder in use whose blocks cannot be
/// undone, so the admin learns before the first expiry that a route or rule will stay.
pub fn command_warnings(config: &Config) -> Vec<ConfigWarning> {
    // A derived UNKILL_ROUTE runs KILL_ROUTE's program: checking it again would repeat that
    // warning.
    let explicit_unkill = config.raw.contains_key("UNKILL_ROUTE");
    let unkill_route = config.unkill_route.as_ref().filter(|_| explicit_unkill);
    let programs = [
        ("KILL_ROUTE", config.kill_route.as_ref()),
        ("UNKILL_ROUTE", unkill_route),
        ("KILL_RUN_CMD", config.kill_run_cmd.as_ref()),
        ("UNKILL_RUN_CMD", config.unkill_run_cmd.as_ref()),
    ]
    .into_iter()
    .filter_map(|(key, template)| {
        let template = template?;
        let program = first_program(&template.text)?;
        let problem = program_problem(&program)?;
        Some(ConfigWarning {
            file: config.path.clone(),
            line: template.line,
            message: format!("{key}: program \"{program}\" {problem}"),
        })
    });
    programs.chain(undo_warnings(config)).collect()
}

/// The responders in use whose blocks would outlive their end, when blocks end at all.
fn undo_warnings(config: &Config) -> Vec<ConfigWarning> {
    if config.block_timeout.is_none() {
        return Vec::new();
    }
    let levels = [config.block_tcp, config.block_udp];
    let route_runs = levels.contains(&BlockLevel::All);
    let command_runs = route_runs || levels.contains(&BlockLevel::RunCmdOnly);
    [
        (
            "KILL_ROUTE",
            config.kill_route.as_ref(),
            route_runs && config.unkill_route.is_none(),
            no_unkill_route_why(config),
        ),
        (
            "KILL_RUN_CMD",
            config.kill_run_cmd.as_ref(),
            command_runs && config.unkill_run_cmd.is_none(),
            NO_UNKILL_RUN_CMD,
        ),
    ]
    .into_iter()
    .filter_map(|(key, template, kept, why)| {
        let template = template.filter(|_| kept)?;
        Some(ConfigWarning {
            file: config.path.clone(),
            line: template.line,
            message: format!(
                "{key}: blocks that expire or are unblocked keep what this command did ({why})"
            ),
        })
    })
    .collect()
}

/// Shell syntax and builtins: the first word is not a program we can look for.
const SHELL_WORDS: &[&str] = &[
    "if", "for", "while", "until", "case", "!", "{", "(", "[", "[[", ":", ".", "true", "false",
    "echo", "printf", "test", "exec", "eval", "command", "cd", "set", "export", "source",
];

/// The program a shell command line starts, if it can be told without running a shell.
fn first_program(command: &str) -> Option<String> {
    let words = shell_words::split(command)
        .unwrap_or_else(|_| command.split_whitespace().map(str::to_owned).collect());
    let first = words.into_iter().find(|w| !is_assignment(w))?;
    let syntax = first.starts_with('(') || first.starts_with('{') || first.contains('$');
    (!syntax && !SHELL_WORDS.contains(&first.as_str())).then_some(first)
}

/// `NAME=value` before a command sets its environment; it is not the program.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
    })
}

/// Why a program cannot run, or `None` when it looks fine.
fn program_problem(program: &str) -> Option<&'static str> {
    if program.contains('/') {
        let path = Path::new(program);
        if !path.exists() {
            Some("does not exist")
        } else if !is_executable(path) {
            Some("is not an executable file")
        } else {
            None
        }
    } else {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let standard = [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ];
        let found = std::env::split_paths(&path_var)
            .chain(standard.iter().map(PathBuf::from))
            .any(|dir| is_executable(&dir.join(program)));
        (!found).then_some("not found on $PATH")
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// ---- value readers: `Err` says what is wrong and what was expected ----

fn port_list(value: &str) -> Result<Vec<u16>, String> {
    super::ports::parse_port_list(value)
}

/// A prefix length already checked against its family's bound.
fn prefix_len(v: u64) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

fn flag(value: &str) -> Result<bool, String> {
    match value.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err("expected \"0\" (off) or \"1\" (on)".into()),
    }
}

fn block_level(value: &str) -> Result<BlockLevel, String> {
    match value.trim() {
        "0" => Ok(BlockLevel::LogOnly),
        "1" => Ok(BlockLevel::All),
        "2" => Ok(BlockLevel::RunCmdOnly),
        _ => Err(
            "expected \"0\" (log only), \"1\" (run every responder) or \"2\" (run KILL_RUN_CMD only)"
                .into(),
        ),
    }
}

/// A whole number in `min..=max`, digits only: no sign, no spaces inside, no trailing text.
fn whole_number(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let text = value.trim();
    let expected = format!("expected a whole number from {min} to {max}");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not a whole number ({expected})"));
    }
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("out of range ({expected})")),
    }
}

/// `NFTABLES_TABLE`: the kernel takes any 255 bytes, but `nft` can only name a table with
/// an identifier, so keep to names the admin can type.
pub fn nftables_table_name(value: &str) -> Result<(), String> {
    let starts_well = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_well = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if starts_well && rest_well && value.len() <= 255 {
        Ok(())
    } else {
        Err(
            "not a table name: use a letter or '_' first, then letters, digits, '_', '-' or \
             '.', at most 255 of them"
                .into(),
        )
    }
}

fn advanced_limit(value: &str) -> Result<u16, String> {
    let n = whole_number(value, 1, 65535)?;
    u16::try_from(n).map_err(|_| "out of range (expected a whole number from 1 to 65535)".into())
}

fn scan_trigger(value: &str) -> Result<u32, String> {
    let n = whole_number(value, 0, u64::from(u32::MAX))?;
    u32::try_from(n).map_err(|_| format!("out of range (expected at most {})", u32::MAX))
}

fn table_size(value: &str) -> Result<usize, String> {
    let n = whole_number(value, 1, 10_000_000)?;
    usize::try_from(n).map_err(|_| "out of range (expected 1 to 10000000)".into())
}

fn path(value: &str) -> Result<PathBuf, String> {
    if value.trim().is_empty() {
        Err("empty (expected a file or directory path)".into())
    } else {
        Ok(PathBuf::from(value))
    }
}

fn duration(value: &str) -> Result<Duration, String> {
    let text = value.trim();
    if text.is_empty() {
        return Err("empty (expected a duration such as \"30s\", \"5m\" or \"1h\")".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "a bare number has no unit: write \"{text}s\" for seconds (units: s, m, h, d)"
        ));
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("not a duration ({e}); expected e.g. \"30s\", \"5m\" or \"1h\""))?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

/// A duration where empty, `"0"` or any zero duration means "none" (`BLOCK_TIMEOUT`:
/// permanent; `BLOCK_TIMEOUT_JITTER`: no jitter).
fn optional_duration(value: &str) -> Result<Option<Duration>, String> {
    let text = value.trim();
    if text.is_empty() || text == "0" {
        return Ok(None);
    }
    match duration(text) {
        Err(_) if humantime::parse_duration(text).is_ok_and(|d| d.is_zero()) => Ok(None),
        other => other.map(Some),
    }
}

/// `METRICS_LISTEN`: an IP address and a port (`127.0.0.1:9736`, `[::1]:9736`); empty: off.
/// No host names: the address must not depend on DNS at start.
fn metrics_listen(value: &str) -> Result<Option<std::net::SocketAddr>, String> {
    let text = value.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let expected = "expected an IP address and a port, e.g. \"127.0.0.1:9736\" or \"[::1]:9736\"";
    let addr: std::net::SocketAddr = text
        .parse()
        .map_err(|_| format!("not an address and port ({expected})"))?;
    if addr.port() == 0 {
        return Err(format!("port 0 is not a fixed port ({expected})"));
    }
    Ok(Some(addr))
}

fn kill_cmd_timeout(value: &str) -> Result<Duration, String> {
    let d = duration(value)?;
    if d < MIN_KILL_CMD_TIMEOUT {
        return Err("too short (minimum 100ms)".into());
    }
    Ok(d)
}

/// `BLOCK_TIMEOUT_FACTOR`: a plain decimal (`2`, `1.5`) from 1 to 1000; no sign, exponent,
/// `inf` or `nan`, which `f64::from_str` would take.
fn timeout_factor(value: &str) -> Result<f64, String> {
    let text = value.trim();
    let expected = "expected a number from 1 to 1000, e.g. \"2\" or \"1.5\"";
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || text.ends_with('.') {
        return Err(format!("not a decimal number ({expected})"));
    }
    match text.parse::<f64>() {
        Ok(f) if (1.0..=1000.0).contains(&f) => Ok(f),
        _ => Err(format!("out of range ({expected})")),
    }
}

/// `LUA_CALL_TIMEOUT`: a duration between 10 ms and 1 h. Shared with the Lua loader, which
/// reads the value from `Config::raw`.
pub fn lua_call_timeout(value: &str) -> Result<Duration, String> {
    let d = duration(value)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err("expected between 10ms and 1h".into());
    }
    Ok(d)
}

/// `LUA_MEMORY_LIMIT`: a size of at least 1 MiB.
pub fn lua_memory_limit(value: &str) -> Result<usize, String> {
    match byte_size(value) {
        Some(n) if n >= 1 << 20 => Ok(n),
        Some(_) => Err("expected at least 1M".into()),
        None => Err("expected a size like \"32M\", \"512K\" or a number of bytes".into()),
    }
}

/// Parses `32M`, `32MiB`, `512K`, `1G` or a plain number of bytes.
pub fn byte_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let n: usize = t[..digits].parse().ok()?;
    let unit = t[digits..].trim().to_ascii_uppercase();
    let mult: usize = match unit.as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Plugin names: file names without `.lua`, letters, digits, `_` and `-`.
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn responder_names(value: &str, warnings: &mut Vec<String>) -> Result<Vec<String>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(
                "empty entry in the list (two commas in a row, or a comma at an end)".into(),
            );
        }
        if !valid_plugin_name(name) {
            return Err(format!(
                "'{name}' is not a plugin name (expected letters, digits, '_' and '-')"
            ));
        }
        if names.iter().any(|n| n == name) {
            warnings.push(format!("plugin '{name}' listed twice; it runs once"));
        } else {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// KILL_RUN_CMD: anything, empty meaning none.
fn template(entry: &RawEntry) -> Option<Template> {
    (!entry.value.trim().is_empty()).then(|| Template {
        text: entry.value.clone(),
        line: entry.line,
    })
}

/// KILL_ROUTE / KILL_HOSTS_DENY: without `$TARGET$` they would act on no host, so 1.2 skipped
/// them; so do we, but say so.
fn target_template(entry: &RawEntry, warnings: &mut Vec<String>) -> Option<Template> {
    let template = template(entry)?;
    if template.text.contains(TARGET_MACRO) {
        Some(template)
    } else {
        warnings.push(format!(
            "no {TARGET_MACRO} in the value, so it will be skipped"
        ));
        None
    }
}

#[cfg(test)]
mod tests;
