//! Configuration: `portsentry.conf` as 1.2 wrote it, plus our additive keys.
//!
//! Two stages, as in ripgrep: [`parse()`] turns text into raw `KEY -> (value, line)` entries
//! close to the file, [`build()`] turns those into a typed, immutable [`Config`]. A `Config` is
//! a value: the daemon holds it in an `Arc` and a reload swaps in a whole new one.

pub mod build;
pub mod fleet;
pub mod ignore;
pub mod modes;
pub mod parse;
pub mod ports;
pub mod preflight;
pub mod read;
pub mod unkill;
pub mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::event::{Mode, Proto};

pub use build::{build, load};
pub use parse::{RawConfig, RawEntry, parse};

/// Default location, as Debian installs it.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/portsentry/portsentry.conf";

/// `BLOCK_TCP` / `BLOCK_UDP`: what to do once an alert crossed the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLevel {
    /// 0: log only.
    LogOnly,
    /// 1: run every responder.
    All,
    /// 2: run only `KILL_RUN_CMD` (and Lua responders).
    RunCmdOnly,
}

/// One of the KILL_* templates, kept as written so macros can be substituted per alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The value between the quotes, with `$TARGET$`-style macros still in it.
    pub text: String,
    /// Line of the config file it came from, for messages.
    pub line: usize,
}

/// A problem that does not stop the config from loading (unknown key, command not found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// File the warning is about.
    pub file: PathBuf,
    /// 1-based line, 0 when the warning is about the file as a whole.
    pub line: usize,
    /// Human-readable text.
    pub message: String,
}

/// A message longer than this many characters is cut when shown: a backstop, should some
/// message quote untrusted text whole (quotes themselves are cut to 80, see [`read::excerpt`]).
const MAX_MESSAGE_CHARS: usize = 1000;

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = read::excerpt_n(&self.message, MAX_MESSAGE_CHARS);
        if self.line > 0 {
            write!(f, "{}:{}: {message}", self.file.display(), self.line)
        } else {
            write!(f, "{}: {message}", self.file.display())
        }
    }
}

/// A malformed value or unreadable file: the config is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", ConfigWarning { file: file.clone(), line: *line, message: message.clone() })]
pub struct ConfigError {
    /// File the error is in.
    pub file: PathBuf,
    /// 1-based line, 0 when the error is about the file as a whole (unreadable, missing).
    pub line: usize,
    /// What was found and what was expected, e.g. `TCP_PORTS: "80,x": 'x' is not a port number`.
    pub message: String,
}

/// Every error found in one pass, so `--check-config` can print them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The typed configuration. Paths are absolute or relative to the working directory, exactly
/// as written; defaults are Debian 12's.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from.
    pub path: PathBuf,
    /// `TCP_PORTS`: trap ports for `-tcp` / `-stcp`.
    pub tcp_ports: Vec<u16>,
    /// `UDP_PORTS`: trap ports for `-udp` / `-sudp`.
    pub udp_ports: Vec<u16>,
    /// `ADVANCED_PORTS_TCP`: advanced mode watches 1..N-1.
    pub advanced_ports_tcp: u16,
    /// `ADVANCED_PORTS_UDP`.
    pub advanced_ports_udp: u16,
    /// `ADVANCED_EXCLUDE_TCP`: never watched in advanced mode.
    pub advanced_exclude_tcp: Vec<u16>,
    /// `ADVANCED_EXCLUDE_UDP`.
    pub advanced_exclude_udp: Vec<u16>,
    /// `IGNORE_FILE`: hosts never acted on.
    pub ignore_file: PathBuf,
    /// `HISTORY_FILE`: append-only record of blocks (fail2ban reads it).
    pub history_file: PathBuf,
    /// `BLOCKED_FILE`: the blocked set, persisted.
    pub blocked_file: PathBuf,
    /// `HOSTS_DENY_FILE` (ours): where `KILL_HOSTS_DENY` lines go.
    pub hosts_deny_file: PathBuf,
    /// `RESOLVE_HOST`: reverse-DNS the attacker for log lines.
    pub resolve_host: bool,
    /// `BLOCK_TCP`.
    pub block_tcp: BlockLevel,
    /// `BLOCK_UDP`.
    pub block_udp: BlockLevel,
    /// `KILL_ROUTE`: shell command, needs `$TARGET$`.
    pub kill_route: Option<Template>,
    /// `KILL_HOSTS_DENY`: line for hosts.deny, needs `$TARGET$`.
    pub kill_hosts_deny: Option<Template>,
    /// `KILL_RUN_CMD`: any shell command.
    pub kill_run_cmd: Option<Template>,
    /// `KILL_RUN_CMD_FIRST`: run the command before the other responders.
    pub kill_run_cmd_first: bool,
    /// `KILL_CMD_TIMEOUT` (ours): a responder command is killed after this long.
    pub kill_cmd_timeout: Duration,
    /// `PROTECT_GATEWAYS` (ours): the routing table's gateways are never blocked, so a
    /// forged probe cannot cut the host off its network.
    pub protect_gateways: bool,
    /// `PROTECT_RESOLVERS` (ours): the nameservers of `RESOLV_CONF` are never blocked, so a
    /// forged probe cannot take name resolution away.
    pub protect_resolvers: bool,
    /// `PROTECT_ESTABLISHED` (ours): a peer of an established session to a local service,
    /// older than the probe, is never blocked, so a forged SYN cannot cut an admin's session.
    pub protect_established: bool,
    /// `RESOLV_CONF` (ours): where the nameservers `PROTECT_RESOLVERS` protects are listed.
    pub resolv_conf: PathBuf,
    /// `UNKILL_ROUTE` (ours): undoes `KILL_ROUTE` when a block expires or is lifted; when
    /// absent, derived from a `KILL_ROUTE` whose undo is known (`ip route add` -> `del`);
    /// `None`: what `KILL_ROUTE` did stays.
    pub unkill_route: Option<Template>,
    /// `UNKILL_RUN_CMD` (ours): undoes `KILL_RUN_CMD`; `None`: what it did stays.
    pub unkill_run_cmd: Option<Template>,
    /// `BLOCK_TIMEOUT` (ours): how long a first block lasts; `None`: for ever, as in 1.2.
    pub block_timeout: Option<Duration>,
    /// `BLOCK_TIMEOUT_FACTOR` (ours): a repeat offender's next block lasts this many times
    /// the previous one, so persistent scanners stay out longer.
    pub block_timeout_factor: f64,
    /// `BLOCK_TIMEOUT_MAX` (ours): the longest a growing block may last.
    pub block_timeout_max: Duration,
    /// `BLOCK_TIMEOUT_JITTER` (ours): up to this much is added at random to each block, so
    /// that a botnet cannot time its return to the second.
    pub block_timeout_jitter: Duration,
    /// `FORGEABLE_SCAN_TRIGGER` (ours): distinct ports before forgeable evidence blocks.
    pub forgeable_scan_trigger: u32,
    /// `FORGEABLE_BLOCK_TIMEOUT` (ours): first-block duration on forgeable evidence; `None`:
    /// as `BLOCK_TIMEOUT`.
    pub forgeable_block_timeout: Option<Duration>,
    /// `BLOCK_RATE_LIMIT` (ours): new blocks a minute; 0: no limit.
    pub block_rate_limit: u32,
    /// `MAX_ACTIVE_BLOCKS` (ours): blocks in force at most; 0: no limit.
    pub max_active_blocks: usize,
    /// `BLOCK_RATE_LIMIT_PER_PREFIX` (ours): new blocks a minute for the hosts of one
    /// escalation prefix; 0: no limit of its own.
    pub block_rate_limit_per_prefix: u32,
    /// `SCAN_PREFIX_V4` (ours): IPv4 sources are counted by prefixes of this length.
    pub scan_prefix_v4: u8,
    /// `SCAN_PREFIX_V6` (ours): IPv6 sources are counted by prefixes of this length.
    pub scan_prefix_v6: u8,
    /// `ESCALATE_AFTER_V4` (ours): host blocks in one IPv4 prefix before it is blocked; 0: never.
    pub escalate_after_v4: u32,
    /// `ESCALATE_AFTER_V6` (ours): host blocks in one IPv6 prefix before it is blocked; 0: never.
    pub escalate_after_v6: u32,
    /// `ESCALATE_PREFIX_V4` (ours): the IPv4 prefix escalation blocks and budgets share.
    pub escalate_prefix_v4: u8,
    /// `ESCALATE_PREFIX_V6` (ours): the IPv6 prefix escalation blocks and budgets share.
    pub escalate_prefix_v6: u8,
    /// `ESCALATE_FORGEABLE` (ours): blocks on forgeable evidence count towards escalation.
    pub escalate_forgeable: bool,
    /// `LOG_RATE_LIMIT` (ours): detection lines a second for probes not acted on; 0: no limit.
    pub log_rate_limit: u32,
    /// `METRICS_LISTEN` (ours): where `GET /metrics` is served (Prometheus text format);
    /// `None`: no metrics server.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `EVENT_LOG` (ours): the JSON-lines file of alerts, blocks, unblocks and reloads that
    /// log shippers read; `None`: not written.
    pub event_log: Option<PathBuf>,
    /// `EVENT_LOG_RATE_LIMIT` (ours): alert events a second at most; 0: no limit.
    pub event_log_rate_limit: u32,
    /// `BLOCK_STATE_FILE` (ours): the JSON-lines journal of blocks, so expiry and undo
    /// survive restarts.
    pub block_state_file: PathBuf,
    /// `CONTROL_SOCKET` (ours): the unix socket `portsentry list/block/unblock` talk to.
    pub control_socket: PathBuf,
    /// `KILL_NFTABLES` (ours): block in the kernel through our own nftables sets, over
    /// netlink, without forking a command per block.
    pub kill_nftables: bool,
    /// `NFTABLES_TABLE` (ours): the inet table `KILL_NFTABLES` owns.
    pub nftables_table: String,
    /// `NFTABLES_FORWARD` (ours): also drop blocked sources on the forward hook.
    pub nftables_forward: bool,
    /// `CROWDSEC_*` (ours): the fleet's Local API, push and pull.
    pub fleet: fleet::FleetSettings,
    /// `SCAN_TRIGGER`: 0 and 1 fire on the first probe, N on the Nth distinct one.
    pub scan_trigger: u32,
    /// `SCAN_TRIGGER_WINDOW` (ours): probes older than this no longer count.
    pub scan_trigger_window: Duration,
    /// `SCAN_TRIGGER_TABLE_SIZE` (ours): sources tracked at once; the oldest is evicted.
    pub scan_trigger_table_size: usize,
    /// `PORT_BANNER`: written to the peer in classic modes, no newline added.
    pub port_banner: Option<String>,
    /// `PLUGIN_DIR` (ours): where Lua responders live.
    pub plugin_dir: PathBuf,
    /// `LUA_PATH_DIR` (ours): the Lua library plugins `require` (the repo's `lua/`).
    pub lua_lib_dir: PathBuf,
    /// `LUA_RESPONDERS` (ours): plugin names, run in this order.
    pub lua_responders: Vec<String>,
    /// `LUA_RESPONDERS_FIRST` (ours): run the plugins before the built-in responders.
    pub lua_responders_first: bool,
    /// Every key as written (upper-case name -> value), so plugins can read their own
    /// settings (`NFTABLES_TIMEOUT`, …) without the core knowing them.
    pub raw: BTreeMap<String, String>,
    /// Non-fatal findings of the build, to be logged by whoever loaded the config.
    pub warnings: Vec<ConfigWarning>,
}

impl Config {
    /// The prefix `SCAN_TRIGGER` counts `ip` in (`SCAN_PREFIX_V4` / `_V6`; an IPv4-mapped
    /// address counts as its IPv4 form).
    pub fn scan_prefix(&self, ip: std::net::IpAddr) -> ipnet::IpNet {
        prefix_of(ip, self.scan_prefix_v4, self.scan_prefix_v6)
    }

    /// The prefix escalation would block for `ip`, and whose hosts share one
    /// `BLOCK_RATE_LIMIT_PER_PREFIX` budget (`ESCALATE_PREFIX_V4` / `_V6`).
    pub fn escalation_prefix(&self, ip: std::net::IpAddr) -> ipnet::IpNet {
        prefix_of(ip, self.escalate_prefix_v4, self.escalate_prefix_v6)
    }

    /// Host blocks in `ip`'s escalation prefix that make it blocked whole; 0: never.
    pub fn escalate_after(&self, ip: std::net::IpAddr) -> u32 {
        if ip.to_canonical().is_ipv4() {
            self.escalate_after_v4
        } else {
            self.escalate_after_v6
        }
    }

    /// Which responders block a probe of this protocol (`BLOCK_TCP` / `BLOCK_UDP`).
    pub fn block_level(&self, proto: Proto) -> BlockLevel {
        match proto {
            Proto::Tcp => self.block_tcp,
            Proto::Udp => self.block_udp,
        }
    }

    /// Trap ports of a classic or stealth mode's protocol.
    pub fn trap_ports(&self, proto: Proto) -> &[u16] {
        match proto {
            Proto::Tcp => &self.tcp_ports,
            Proto::Udp => &self.udp_ports,
        }
    }

    /// Advanced-mode limit and excludes for a protocol.
    pub fn advanced(&self, proto: Proto) -> (u16, &[u16]) {
        match proto {
            Proto::Tcp => (self.advanced_ports_tcp, &self.advanced_exclude_tcp),
            Proto::Udp => (self.advanced_ports_udp, &self.advanced_exclude_udp),
        }
    }

    /// The ports a mode watches before listeners are taken out (raw modes take those out
    /// themselves, from the kernel's socket tables).
    pub fn watched_ports(&self, mode: Mode) -> Vec<u16> {
        match mode {
            Mode::Tcp | Mode::Udp | Mode::Stcp | Mode::Sudp => {
                self.trap_ports(mode.proto()).to_vec()
            }
            Mode::Atcp | Mode::Audp => {
                let (limit, exclude) = self.advanced(mode.proto());
                (1..limit).filter(|p| !exclude.contains(p)).collect()
            }
        }
    }

    /// A plugin setting by full key name (`NFTABLES_TIMEOUT`).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.raw.get(key).map(String::as_str)
    }

    /// Directory holding the config file, for files named relative to it.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }
}

/// `ip` (IPv4-mapped as IPv4) truncated to the length of its family.
fn prefix_of(ip: std::net::IpAddr, v4: u8, v6: u8) -> ipnet::IpNet {
    let ip = ip.to_canonical();
    let len = if ip.is_ipv4() {
        v4.min(32)
    } else {
        v6.min(128)
    };
    ipnet::IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| ipnet::IpNet::from(ip))
}
