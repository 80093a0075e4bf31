//! The exact wording of every log line that outside tools parse (logwatch, fail2ban, admins'
//! grep habits). 1.2's `attackalert:` / `adminalert:` lines are produced here and only here;
//! lines that 1.2 never printed are additive and marked as ours in their doc comment.

use std::fmt::Display;
use std::net::IpAddr;
use std::path::Path;

use crate::event::{Candidate, Mode, ProbeKind, Proto};
use crate::protected::Reason;

/// `resolved/ip`, as 1.2 prints a host; with `RESOLVE_HOST=0` both halves are the IP.
fn host_pair(resolved: &str, ip: IpAddr) -> String {
    format!("{resolved}/{ip}")
}

/// The detection line for an alert (classic connect, or a raw probe named by its flags).
pub fn detection(alert: &Candidate, resolved: &str) -> String {
    let hit = &alert.hit;
    let host = host_pair(resolved, hit.src);
    let proto = hit.proto().upper();
    match hit.kind {
        ProbeKind::Connect => {
            format!(
                "attackalert: Connect from host: {host} to TCP port: {}",
                hit.port
            )
        }
        ProbeKind::Udp if !hit.mode.is_raw() => {
            format!(
                "attackalert: Connect from host: {host} to UDP port: {}",
                hit.port
            )
        }
        kind => format!(
            "attackalert: {} from host: {host} to {proto} port: {}",
            kind.describe(),
            hit.port
        ),
    }
}

/// 1.2's note that a raw IPv4 probe carried IP options.
pub fn ip_options(alert: &Candidate, resolved: &str) -> String {
    format!(
        "attackalert: Packet from host: {} to {} port: {} has IP options set (detection avoidance technique).",
        host_pair(resolved, alert.hit.src),
        alert.hit.proto().upper(),
        alert.hit.port
    )
}

/// 1.2's "already blocked" line; raw and classic modes worded it differently.
pub fn already_blocked(alert: &Candidate, resolved: &str) -> String {
    if alert.hit.mode.is_raw() {
        format!(
            "attackalert: Host: {} is already blocked Ignoring",
            host_pair(resolved, alert.hit.src)
        )
    } else {
        format!(
            "attackalert: Host: {} is already blocked. Ignoring",
            alert.hit.src
        )
    }
}

/// Ours: a probe from a host whose block is being applied (or lifted) right now; no second
/// block is started.
/// Worded like 1.2's "already blocked" line of the same mode, so a grep for one finds both.
pub fn block_in_progress(alert: &Candidate, resolved: &str) -> String {
    if alert.hit.mode.is_raw() {
        format!(
            "attackalert: Host: {} block in progress Ignoring",
            host_pair(resolved, alert.hit.src)
        )
    } else {
        format!(
            "attackalert: Host: {} block in progress. Ignoring",
            alert.hit.src
        )
    }
}

/// Ours: a block was not even tried (the responders are swamped); nothing was recorded, so
/// the host's next probe asks again.
pub fn block_dropped(who: &str, why: &str) -> String {
    format!("attackalert: Host {who} not blocked: {why}; it will be blocked on its next probe")
}

/// Ours: how long a block lasts, after the responders' lines.
pub fn blocked_for(who: &str, duration: std::time::Duration, offences: u32) -> String {
    let times = if offences > 1 {
        format!(" (offence {offences})")
    } else {
        String::new()
    };
    format!(
        "attackalert: Host {who} is blocked for {}{times}",
        humantime::format_duration(round_secs(duration))
    )
}

/// Ours: a block from the journal could not be re-applied at start; it is dropped so that
/// the host's next probe blocks it again.
pub fn restore_failed(who: &str) -> String {
    format!(
        "attackalert: ERROR: could not re-apply the block of host {who}; it is not blocked now          and will be blocked again on its next probe"
    )
}

/// Ours: every block of the journal is back in force after a start (the figure admins and
/// the benchmark read).
pub fn restored(done: usize, failed: usize, took: std::time::Duration) -> String {
    format!(
        "adminalert: {done} block(s) re-applied in {} ms after start ({failed} could not be)",
        took.as_millis()
    )
}

/// Ours: the block expired and every action that could be undone was.
pub fn unblocked_expired(who: &str, lasted: std::time::Duration) -> String {
    format!(
        "attackalert: Host {who} has been unblocked (block expired after {})",
        humantime::format_duration(round_secs(lasted))
    )
}

/// Ours: a prefix is blocked whole because `hosts` of its hosts were blocked on evidence
/// that counts (`ESCALATE_AFTER_V4` / `_V6`); their host blocks are folded into it.
pub fn prefix_escalated(prefix: &str, hosts: usize, window: std::time::Duration) -> String {
    format!(
        "attackalert: Prefix {prefix} is blocked: {hosts} of its hosts were blocked within {} \
         (escalation)",
        humantime::format_duration(round_secs(window))
    )
}

/// Ours: a prefix that met the escalation rule is not blocked whole, because it holds an
/// address that must never be blocked; said once per prefix.
pub fn prefix_not_escalated(prefix: &str, why: &str) -> String {
    format!("adminalert: Prefix {prefix} not escalated, its hosts stay host blocks: {why}")
}

/// Ours (debug): a host block was taken over by the block of its prefix.
pub fn folded_into_prefix(who: &str, prefix: &str) -> String {
    format!("attackalert: Host {who} is now covered by the block of {prefix}")
}

/// Ours: `unblock` of an address that has no block of its own but lies in a blocked network.
pub fn covered_not_unblocked(who: &str, net: &str) -> String {
    format!(
        "{who} has no block of its own: it is covered by the block of {net} \
         (`portsentry unblock {net}` or `portsentry unblock --covering {who}` lifts that)"
    )
}

/// Ours: an operator lifted the block.
pub fn unblocked_by_operator(who: &str) -> String {
    format!("attackalert: Host {who} has been unblocked (by the operator)")
}

/// Ours: undoing one action failed; what it did may still be in force.
pub fn undo_failed(who: &str, responder: &str, why: &str) -> String {
    format!("attackalert: ERROR: could not undo {responder} for host {who}: {why}")
}

/// Ours: an action that cannot be undone stays in force after the block ends.
pub fn undo_impossible(who: &str, responder: &str, why: &str) -> String {
    format!(
        "attackalert: WARNING: {responder} for host {who} cannot be undone and stays in place: {why}"
    )
}

/// Durations in log lines to the second (`1h`, not `1h 2ms 3us`).
fn round_secs(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
}

/// `BLOCK_TCP="0"` / `BLOCK_UDP="0"`: detection only.
pub fn ignoring_response(proto: Proto) -> String {
    format!(
        "attackalert: Ignoring {} response per configuration file setting.",
        proto.upper()
    )
}

/// `KILL_ROUTE` succeeded.
pub fn blocked_via_route(ip: impl Display, command: &str) -> String {
    format!(
        "attackalert: Host {ip} has been blocked via dropped route using command: \"{command}\""
    )
}

/// `KILL_HOSTS_DENY` succeeded.
pub fn blocked_via_wrappers(ip: impl Display, line: &str) -> String {
    format!("attackalert: Host {ip} has been blocked via wrappers with string: \"{line}\"")
}

/// `KILL_RUN_CMD` succeeded.
pub fn external_command_run(ip: impl Display, command: &str) -> String {
    format!("attackalert: External command run for host: {ip} using command: \"{command}\"")
}

/// Ours: `KILL_NFTABLES` put the host into a set of its table.
pub fn blocked_via_nftables(ip: impl Display, table: &str, set: &str) -> String {
    format!("attackalert: Host {ip} has been blocked via nftables set inet {table} {set}")
}

/// Ours: `KILL_NFTABLES` is ready (at start, or after a reload changed its table or hooks).
pub fn nftables_ready(table: &str, set_size: u32, forward: bool) -> String {
    format!(
        "adminalert: nftables: blocking in table inet {table} (sets ipv4_addr and ipv6_addr, \
         {set_size} hosts each; hook input{})",
        if forward { " and forward" } else { "" }
    )
}

/// Ours: `KILL_NFTABLES="1"` but nftables cannot be used; the one line that says so.
pub fn nftables_unusable(why: impl Display) -> String {
    format!(
        "adminalert: ERROR: KILL_NFTABLES: {why}; blocking goes on with the other responders \
         (nftables is tried again at the next reload)"
    )
}

/// Ours: `KILL_NFTABLES` was turned off by a reload; what it made stays.
pub fn nftables_off(table: &str) -> String {
    format!(
        "adminalert: nftables: KILL_NFTABLES is off; table inet {table} stays, and the blocks \
         in it are still removed when they end"
    )
}

/// Ours: the journal's blocks went into the kernel's sets in one batch at start.
pub fn nftables_loaded(count: usize, table: &str, took: std::time::Duration) -> String {
    format!(
        "adminalert: {count} block(s) loaded into nftables table inet {table} in {} ms",
        took.as_millis()
    )
}

/// Ours: the one-batch load at start failed; each block is added as it is restored.
pub fn nftables_load_failed(why: impl Display) -> String {
    format!(
        "adminalert: ERROR: cannot load the journal's blocks into nftables at once: {why}; each \
         block is added as it is restored"
    )
}

/// Ours: our table vanished (`nft flush ruleset`, a firewall reload) and was made again.
pub fn nftables_remade(table: &str, why: impl Display) -> String {
    format!("adminalert: WARNING: nftables table inet {table} was made again after: {why}")
}

/// Ours: a Lua responder blocked the host (built-in responders keep their 1.2 lines).
pub fn blocked_via_plugin(ip: impl Display, responder: &str, detail: &str) -> String {
    format!("attackalert: Host {ip} has been blocked via {responder}: {detail}")
}

/// Ours: a responder failed (1.2 logged every command as a success).
pub fn responder_failed(ip: impl Display, responder: &str, why: &str) -> String {
    format!("attackalert: ERROR: {responder} failed for host: {ip}: {why}")
}

/// 1.2's line when no responder managed to block.
pub fn could_not_block(ip: impl Display) -> String {
    format!("attackalert: ERROR: Could not block host {ip} !!")
}

/// Ours: a custom responder vetoed the block.
pub fn vetoed(ip: impl Display, responder: &str, why: &str) -> String {
    format!("attackalert: Host {ip} not blocked: vetoed by {responder}: {why}")
}

/// Start-up, once every sensor is open.
pub fn active() -> &'static str {
    "adminalert: PortSentry is now active and listening."
}

/// Shutdown.
pub fn shutting_down() -> &'static str {
    "adminalert: PortSentry is shutting down"
}

/// A classic trap port is listening.
pub fn listen_mode(proto: Proto, port: u16) -> String {
    format!(
        "adminalert: Going into listen mode on {} port: {port}",
        proto.upper()
    )
}

/// Only the IPv6 socket of a trap port could be bound (another program holds the IPv4
/// port): 1.2's listen-mode line with what was really bound, additive.
pub fn listen_mode_v6_only(proto: Proto, port: u16, why: &str) -> String {
    format!("{} (IPv6 only: IPv4 port: {why})", listen_mode(proto, port))
}

/// Ports listed in a [`bind_summary`] per reason, at most.
const SUMMARY_PORTS: usize = 20;

/// Classic trap ports that could not be bound, summed up in one line (not one per port: a
/// descriptor shortage would otherwise log tens of thousands), grouped by reason; the others
/// go on.
pub fn bind_summary(
    proto: Proto,
    tried: usize,
    failed: &std::collections::BTreeMap<String, Vec<u16>>,
) -> String {
    let count: usize = failed.values().map(Vec::len).sum();
    let groups: Vec<String> = failed
        .iter()
        .map(|(why, ports)| {
            let mut shown: Vec<String> = ports
                .iter()
                .take(SUMMARY_PORTS)
                .map(u16::to_string)
                .collect();
            if ports.len() > SUMMARY_PORTS {
                shown.push(format!("… {} more", ports.len() - SUMMARY_PORTS));
            }
            format!("{} ({why})", shown.join(", "))
        })
        .collect();
    format!(
        "adminalert: ERROR: could not bind {count} of {tried} {} ports: {}. Attempting to continue",
        proto.upper(),
        groups.join("; ")
    )
}

/// Modes as a comma-separated list of their 1.2 names.
fn mode_list(modes: &[Mode]) -> String {
    modes
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ours: the version and modes, first line of a run.
pub fn starting(version: &str, modes: &[Mode]) -> String {
    format!(
        "adminalert: PortSentry {version} is starting in mode(s): {}",
        mode_list(modes)
    )
}

/// Ours: on reload, the modes file names other modes than those running.
pub fn modes_need_restart(file: &std::path::Path, wanted: &[Mode], running: &[Mode]) -> String {
    format!(
        "adminalert: WARNING: {} now asks for mode(s) {}: modes change only with a restart; still running {}",
        file.display(),
        mode_list(wanted),
        mode_list(running)
    )
}

// ---- raw-capture sensors (stealth and advanced modes) ----
/// 1.2, stealth start-up, once per trap port.
pub fn stealth_listen(proto: Proto, port: u16) -> String {
    format!(
        "adminalert: Going into stealth listen mode on {} port: {port}",
        proto.upper()
    )
}

/// 1.2, stealth start-up: the trap port has a real listener and is not watched.
pub fn stealth_port_in_use(port: u16) -> String {
    format!(
        "adminalert: ERROR: Socket {port} is in use and will not be monitored. Attempting to continue"
    )
}

/// 1.2, advanced start-up.
pub fn advanced_monitor_first(limit: u16) -> String {
    format!("adminalert: Advanced mode will monitor first {limit} ports")
}

/// 1.2, advanced start-up, once per ADVANCED_EXCLUDE_* port.
pub fn advanced_exclude(port: u16) -> String {
    format!("adminalert: Advanced mode will manually exclude port: {port}")
}

/// 1.2, advanced start-up with an empty exclude list.
pub fn advanced_exclude_none() -> String {
    "adminalert: Advanced mode will manually exclude no ports".to_string()
}

/// 1.2, advanced start-up, once per port with a listener and per excluded port.
pub fn advanced_ignored(proto: Proto, port: u16) -> String {
    format!(
        "adminalert: Advanced Stealth scan detection mode activated. Ignored {} port: {port}",
        proto.upper()
    )
}

/// Ours: a service started listening on a watched port, which is no longer watched.
pub fn listener_appeared(proto: Proto, port: u16) -> String {
    format!(
        "adminalert: A service now listens on {} port: {port}. It is no longer watched",
        proto.upper()
    )
}

/// Ours: the service on a watched port went away; the port is watched again.
pub fn listener_gone(proto: Proto, port: u16) -> String {
    format!(
        "adminalert: No service listens on {} port: {port} any more. It is watched again",
        proto.upper()
    )
}

/// Ours: probes reported without asking the kernel whether a socket takes them (the raw
/// sensor's live check failed); they may include answers to this host's own traffic.
pub fn live_check_failed(count: u64, seconds: u64, err: &str) -> String {
    format!(
        "adminalert: WARNING: {count} probes in the last {seconds} s were reported without checking for a live socket: {err}"
    )
}

/// Ours: the kernel dropped captured packets because the socket buffer was full.
pub fn kernel_dropped(count: u64, seconds: u64) -> String {
    format!(
        "adminalert: WARNING: the kernel dropped {count} captured packets in the last {seconds} s (capture buffer full)"
    )
}

/// Ours: the raw sensor follows a reloaded config.
pub fn reconfigured(modes: &str) -> String {
    format!("adminalert: Raw sensor ({modes}) now follows the reloaded configuration")
}

/// Ours: the listener or address tables could not be read; the last snapshot is kept.
pub fn refresh_failed(what: &str, err: &str) -> String {
    format!("adminalert: ERROR: cannot refresh {what}: {err}. Keeping the previous view")
}

/// `27480` as `27,480`: summary lines are read by people counting orders of magnitude.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Ours: probes below the forgeable trigger in the last interval, and how many of their
/// lines `LOG_RATE_LIMIT` held back. `sources` is an estimate when `estimated` (a flood's
/// count, see [`crate::distinct`]).
pub fn not_acted_on(
    probes: u64,
    sources: u64,
    estimated: bool,
    logged: u64,
    seconds: u64,
) -> String {
    format!(
        "adminalert: {} probes from {}{} sources not acted on in the last {seconds} s: below the \
         trigger ({} logged, {} lines held back by LOG_RATE_LIMIT)",
        thousands(probes),
        if estimated { "about " } else { "" },
        thousands(sources),
        thousands(logged),
        thousands(probes.saturating_sub(logged))
    )
}

/// Ours: scan blocks held back by `BLOCK_RATE_LIMIT` / `MAX_ACTIVE_BLOCKS` in the last
/// interval; the best of them are blocked as the budget allows.
pub fn blocks_deferred(sources: u64, seconds: u64, waiting: usize, why: &str) -> String {
    format!(
        "adminalert: {} sources not blocked in the last {seconds} s: {why}; {} waiting, the best \
         evidence first",
        thousands(sources),
        thousands(waiting as u64)
    )
}

/// Ours: events not written to `EVENT_LOG` in the last interval: alert events over
/// `EVENT_LOG_RATE_LIMIT`, and events the writer's queue had no room for.
pub fn events_not_written(
    path: &std::path::Path,
    over_rate: u64,
    queue_full: u64,
    seconds: u64,
) -> String {
    format!(
        "adminalert: WARNING: {} events not written to {} in the last {seconds} s ({} alert \
         events over EVENT_LOG_RATE_LIMIT, {} because the writer was behind)",
        thousands(over_rate + queue_full),
        path.display(),
        thousands(over_rate),
        thousands(queue_full)
    )
}

/// Ours: alerts lost because the responders were behind.
pub fn alerts_dropped(count: u64, seconds: u64) -> String {
    format!(
        "adminalert: WARNING: {count} alerts dropped in the last {seconds} s because the responders were behind"
    )
}

// ---- protected addresses ----
/// Ours: why an address is protected, as the protected line words it.
/// Why an address is protected, in words (`default gateway`, `nameserver`, …).
pub fn protection_reason(reason: Reason) -> String {
    match reason {
        Reason::DefaultGateway => "default gateway".to_string(),
        Reason::Router => "gateway of a route".to_string(),
        Reason::Resolver => "nameserver".to_string(),
        Reason::Established { port } => format!("established session to TCP port {port}"),
    }
}

/// Ours: a probe from a protected address was not acted on (logged once per address per
/// hour, so a forged flood "from" the gateway costs one line).
pub fn protected(alert: &Candidate, reason: Reason) -> String {
    let hit = &alert.hit;
    format!(
        "attackalert: Host {} is protected ({}) and will not be blocked: {} to {} port {}",
        hit.src.to_canonical(),
        protection_reason(reason),
        hit.kind.describe(),
        hit.proto().upper(),
        hit.port
    )
}

/// `a, b` or `none`.
fn address_list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "none".to_string();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ours: the gateways and nameservers now protected, at start and whenever they change
/// (peers of established sessions change too often to be listed).
pub fn protected_addresses(
    default_gateways: &[IpAddr],
    routers: &[IpAddr],
    nameservers: &[IpAddr],
) -> String {
    format!(
        "adminalert: Protected addresses, never blocked: default gateway(s): {}; other \
         gateway(s): {}; nameserver(s): {}",
        address_list(default_gateways),
        address_list(routers),
        address_list(nameservers)
    )
}

/// Ours: `RESOLV_CONF` does not exist (yet): no nameserver is protected until it does.
pub fn resolv_conf_missing(path: &std::path::Path) -> String {
    format!(
        "adminalert: WARNING: {} not found: no nameserver is protected until it exists",
        path.display()
    )
}

/// Ours: more peers of established sessions than the table holds; the rest are not
/// protected until room frees up.
pub fn established_peers_full(capacity: usize) -> String {
    format!(
        "adminalert: WARNING: more than {capacity} peers of established sessions; the others \
         are not protected until sessions end"
    )
}

// ---- the daemon's own operation: files, threads, reloads (all ours unless noted) ----
/// Ours: a problem that does not stop anything, worded by whoever found it (a config key
/// that is ignored, a journal line skipped).
pub fn warning(what: impl Display) -> String {
    format!("adminalert: WARNING: {what}")
}

/// 1.2: no trap port of a protocol could be bound; the daemon stops.
pub fn nothing_bound(proto: &str) -> String {
    format!("adminalert: ERROR: could not bind ANY {proto} sockets. Shutting down.")
}

/// Ours: a classic trap port was dropped by a reload.
pub fn no_longer_listening(proto: Proto, port: u16) -> String {
    format!(
        "adminalert: No longer listening on {} port: {port}",
        proto.upper()
    )
}

/// Ours: the classic sensor's poll failed; it waits a moment and polls again.
pub fn poll_failed(err: impl Display) -> String {
    format!("adminalert: ERROR: poll failed: {err}")
}

/// Ours: the kernel refused the new capture prefilter; the old one stays attached.
pub fn prefilter_refused(err: impl Display) -> String {
    format!(
        "adminalert: ERROR: cannot update the capture prefilter: {err}. Keeping the previous one"
    )
}

/// Ours: the new capture prefilter could not be built; the old one stays attached.
pub fn prefilter_not_built(err: impl Display) -> String {
    format!("adminalert: ERROR: {err}. Keeping the previous prefilter")
}

/// Ours: waiting on the capture socket failed; the raw sensor tries again.
pub fn capture_wait_failed(err: impl Display) -> String {
    format!("adminalert: ERROR: waiting on the capture socket: {err}")
}

/// Ours: reading the capture socket failed; the raw sensor tries again.
pub fn capture_read_failed(err: impl Display) -> String {
    format!("adminalert: ERROR: reading the capture socket: {err}")
}

/// Ours: the last line of a start refused for its configuration (after the errors).
pub fn config_refused_not_starting() -> &'static str {
    "adminalert: configuration refused, not starting"
}

/// Ours: the control socket could not be made; the daemon runs without it.
pub fn no_control_socket(err: impl Display) -> String {
    format!(
        "adminalert: WARNING: no control socket ({err}); status, list, block and unblock are \
         unavailable"
    )
}

/// Ours: the configuration files cannot be watched; only SIGHUP reloads.
pub fn config_not_watched(err: impl Display) -> String {
    format!("adminalert: WARNING: cannot watch the configuration files ({err}); reload with SIGHUP")
}

/// Ours: a reload is in force (the line the reload tests and admins wait for).
pub fn config_reloaded(generation: u64, millis: u128) -> String {
    format!("adminalert: configuration reloaded, generation {generation} in force ({millis} ms)")
}

/// Ours: one reason a reload was refused.
pub fn reload_refused(err: impl Display) -> String {
    format!("adminalert: ERROR: reload refused: {err}")
}

/// Ours: a reload that applied some files and refused others names both sides.
pub fn reload_partly_applied(refused: &[String], applied: &[String]) -> String {
    format!(
        "adminalert: ERROR: {} refused, its last good version stays in force; {} applied",
        refused.join(", "),
        applied.join(", ")
    )
}

/// Ours: the CrowdSec LAPI answered after failing (`direction`: push or pull).
pub fn fleet_reachable_again(url: &str, direction: &str) -> String {
    format!("adminalert: CrowdSec LAPI {url}: reachable again ({direction})")
}

/// Ours: the CrowdSec LAPI answered for the first time.
pub fn fleet_connected(url: &str, direction: &str) -> String {
    format!("adminalert: CrowdSec LAPI {url}: connected ({direction})")
}

/// Ours: the CrowdSec LAPI failed; said once per change of state, not per attempt.
pub fn fleet_failing(url: &str, err: impl Display, direction: &str) -> String {
    format!("adminalert: WARNING: CrowdSec LAPI {url}: {err}, will retry ({direction})")
}

/// Ours: a reload changed the `CROWDSEC_*` settings or the secrets in their files.
pub fn fleet_settings_changed() -> &'static str {
    "adminalert: CrowdSec settings changed, restarting the fleet threads"
}

/// Ours: one direction of the fleet could not start (`direction`: push or pull).
pub fn fleet_not_started(direction: &str, err: impl Display) -> String {
    format!("adminalert: ERROR: CrowdSec {direction} not started: {err}")
}

/// Ours: one direction of the fleet is off because its settings or secret file are not
/// usable.
pub fn fleet_off(direction: &str, err: impl Display) -> String {
    format!("adminalert: ERROR: {err}; CrowdSec {direction} is off")
}

/// Ours: changes the pusher still has to deliver after a restart.
pub fn fleet_backlog(waiting: usize) -> String {
    format!(
        "adminalert: CrowdSec push: {waiting} change(s) from before the restart still to deliver"
    )
}

/// Ours: the outbox could not be written (`and_then`: what it means for those changes).
pub fn fleet_outbox_unwritable(
    path: &std::path::Path,
    err: impl Display,
    and_then: &str,
) -> String {
    format!(
        "adminalert: ERROR: cannot write the CrowdSec outbox {}: {err}{and_then}",
        path.display()
    )
}

/// Ours: the bounded outbox dropped its oldest changes.
pub fn fleet_outbox_full(dropped: u64) -> String {
    format!(
        "adminalert: WARNING: CrowdSec outbox full: {dropped} oldest undelivered change(s) dropped"
    )
}

/// Ours: a lifted block whose LAPI decision ids are unknown (the lookup after the post
/// failed, or an outbox from an older version) is deleted by scope, value and origin, which
/// also deletes other portsentry hosts' decisions for it; said once per start of the pusher.
pub fn fleet_delete_fallback(value: &str) -> String {
    format!(
        "adminalert: WARNING: CrowdSec decision ids for {value} unknown; deleted by scope, \
         value and origin portsentry instead, which also removes other portsentry hosts' \
         decisions for it (said once)"
    )
}

/// Ours: the LAPI refused one change too many times in a row, or refused changes for good.
pub fn fleet_refused(url: &str, what: impl Display) -> String {
    format!("adminalert: ERROR: CrowdSec LAPI {url} refused {what}; dropped")
}

/// Ours: a pulled decision names an address this host does not block (protected, ignored,
/// its own); said once per address.
pub fn fleet_decision_not_applied(target: &str, source: &str, why: &str) -> String {
    format!("CrowdSec decision for {target} ({source}) not applied: {why}")
}

/// The numbers of [`fleet_pulled`]'s line.
#[derive(Debug, Clone, Copy)]
pub struct FleetPullCounts {
    /// Decisions taken.
    pub added: usize,
    /// Decisions gone.
    pub removed: usize,
    /// Decisions refused.
    pub refused: usize,
    /// Decisions left out (`CROWDSEC_MAX_DECISIONS`).
    pub over_limit: usize,
    /// Decisions in force after the pull.
    pub held: usize,
}

/// Ours: one pull of the decision stream that changed something (one line a pull, never
/// one a decision): decisions added and removed, refused, left out, what is in force per
/// origin, how long the pull took (request, parse, apply) and the kernel's part of it.
pub fn fleet_pulled(
    n: &FleetPullCounts,
    per_origin: &[(String, u64)],
    took: std::time::Duration,
    kernel: std::time::Duration,
) -> String {
    let FleetPullCounts {
        added,
        removed,
        refused,
        over_limit,
        held,
    } = *n;
    let origins = if per_origin.is_empty() {
        String::new()
    } else {
        let each: Vec<String> = per_origin.iter().map(|(o, n)| format!("{o} {n}")).collect();
        format!(" ({})", each.join(", "))
    };
    let over = if over_limit > 0 {
        format!(", {over_limit} over CROWDSEC_MAX_DECISIONS")
    } else {
        String::new()
    };
    format!(
        "CrowdSec pull: {added} decisions added, {removed} removed, {refused} refused{over}; \
         {held} in force{origins}; {} ms (kernel {} ms)",
        took.as_millis(),
        kernel.as_millis()
    )
}

/// Ours: what `CROWDSEC_PULL_RESPONDERS` did after a pull.
pub fn fleet_responders_ran(applied: usize, undone: usize, failed: usize) -> String {
    format!("CrowdSec pull responders: {applied} applied, {undone} undone, {failed} failed")
}

/// Ours: the fleet's decision table is full: said once when it fills up.
pub fn fleet_limit_reached(max: usize) -> String {
    format!(
        "adminalert: WARNING: CROWDSEC_MAX_DECISIONS ({max}) reached: newer CrowdSec decisions \
         are left out until older ones end (raise it, or narrow CROWDSEC_ORIGINS)"
    )
}

/// Ours: the kernel refused the fleet's changes (and their rewrite).
pub fn fleet_kernel_failed(err: impl Display) -> String {
    format!("adminalert: ERROR: CrowdSec decisions not applied to the kernel: {err}")
}

/// Ours: pulled decisions have no way into the kernel.
pub fn fleet_no_kernel_room(why: impl Display) -> String {
    format!("adminalert: WARNING: CrowdSec decisions are pulled but not applied: {why}")
}

/// Ours: after a refused reload, the generation still in force.
pub fn keeping_generation(generation: u64) -> String {
    format!("adminalert: ERROR: keeping configuration generation {generation}")
}

/// Ours: the modes file could not be read at a reload; the running modes stay.
pub fn modes_unchanged(err: impl Display) -> String {
    format!("adminalert: WARNING: {err}; modes unchanged")
}

/// Ours: the syslog socket cannot be reached; lines go to stderr only.
pub fn syslog_unavailable(path: &Path, err: impl Display) -> String {
    format!(
        "adminalert: syslog socket {} unavailable ({err}); logging to stderr only",
        path.display()
    )
}

/// Ours: the config file watcher failed and was made again.
pub fn config_watcher_restarted() -> &'static str {
    "adminalert: WARNING: config file watcher restarted"
}

/// Ours: the config file watcher failed and could not be made again.
pub fn config_watcher_lost(err: impl Display) -> String {
    format!("adminalert: ERROR: config file watcher lost ({err}); reload with SIGHUP")
}

/// Ours: `EVENT_LOG` was turned off by a reload.
pub fn event_log_closed(old: &Path) -> String {
    format!("adminalert: no longer writing events to {}", old.display())
}

/// Ours: `EVENT_LOG` is (now) written to `path`.
pub fn event_log_opened(path: &Path) -> String {
    format!("adminalert: writing events to {}", path.display())
}

/// Ours: a reload named an event log that cannot be opened; the old one is kept.
pub fn event_log_open_failed_keeping(path: &Path, err: impl Display, old: &Path) -> String {
    format!(
        "adminalert: ERROR: cannot open event log {}: {err}; still writing {}",
        path.display(),
        old.display()
    )
}

/// Ours: the event log cannot be opened and there is no other.
pub fn event_log_open_failed(path: &Path, err: impl Display) -> String {
    format!(
        "adminalert: ERROR: cannot open event log {}: {err}; no events are written until a \
         reload opens it",
        path.display()
    )
}

/// Ours: an event could not be encoded (it is skipped).
pub fn event_encode_failed(err: impl Display) -> String {
    format!("adminalert: ERROR: cannot encode an event: {err}")
}

/// Ours: writing the event log failed (said once until a write succeeds again).
pub fn event_log_write_failed(path: &Path, err: impl Display) -> String {
    format!(
        "adminalert: ERROR: cannot write event log {}: {err}",
        path.display()
    )
}

/// Ours: `NOTIFY_SOCKET` is set but cannot be used.
pub fn notify_socket_unusable(target: &str, err: impl Display) -> String {
    format!("adminalert: WARNING: NOTIFY_SOCKET \"{target}\" unusable ({err})")
}

/// Ours: the systemd watchdog thread could not be started.
pub fn watchdog_thread_failed(err: impl Display) -> String {
    format!(
        "adminalert: ERROR: cannot start the watchdog thread ({err}); systemd will restart the \
         daemon when WatchdogSec= passes"
    )
}

/// Ours: every thread moves again; systemd's watchdog is pinged again.
pub fn watchdog_resumed() -> &'static str {
    "adminalert: watchdog: every thread is moving again, pinging systemd"
}

/// Ours: a thread is stuck; systemd's watchdog is no longer pinged.
pub fn watchdog_stopped(why: impl Display) -> String {
    format!("adminalert: WARNING: watchdog: {why}; no longer telling systemd the daemon is alive")
}

/// Ours: `METRICS_LISTEN` was turned off by a reload.
pub fn metrics_stopped(was: impl Display) -> String {
    format!("adminalert: metrics server on {was} stopped")
}

/// Ours: the metrics are served at `addr`.
pub fn metrics_serving(addr: impl Display) -> String {
    format!("adminalert: metrics served on http://{addr}/metrics")
}

/// Ours: `METRICS_LISTEN` cannot be bound; `now` says what is served instead.
pub fn metrics_listen_failed(addr: impl Display, err: impl Display, now: &str) -> String {
    format!("adminalert: ERROR: METRICS_LISTEN: cannot listen on {addr}: {err}; {now}")
}

/// Ours: a first start imported 1.2's blocked file into the block state file.
pub fn legacy_blocks_imported(count: usize, from: &Path) -> String {
    format!(
        "adminalert: imported {count} block(s) from {} as permanent blocks",
        from.display()
    )
}

/// Ours: a reload changed `BLOCK_STATE_FILE`, which only a restart applies.
pub fn state_file_needs_restart(still: &Path) -> String {
    format!(
        "adminalert: WARNING: BLOCK_STATE_FILE changes only with a restart; still using {}",
        still.display()
    )
}

/// Ours: a reload moved `HISTORY_FILE`.
pub fn history_file_moved(new: &Path, old: &Path) -> String {
    format!(
        "adminalert: history file is now {} (was {})",
        new.display(),
        old.display()
    )
}

/// Ours: a reload named a history file that cannot be opened (`err` names it).
pub fn history_open_failed(err: impl Display, still: &Path) -> String {
    format!(
        "adminalert: ERROR: cannot open history file {err}; still writing {}",
        still.display()
    )
}

/// Ours: a reload moved `BLOCKED_FILE`.
pub fn blocked_file_moved(new: &Path, old: &Path) -> String {
    format!(
        "adminalert: blocked file is now {} (was {})",
        new.display(),
        old.display()
    )
}

/// Ours: blocks of the journal being restored at start.
pub fn restoring(restored: usize, from: &Path, expired: usize) -> String {
    format!(
        "adminalert: restoring {restored} block(s) from {}; {expired} expired while stopped",
        from.display()
    )
}

/// Ours: an entry the block state file cannot hold (a time after 9999) was left out; `err`
/// names the file and the target.
pub fn state_file_entry_refused(err: impl Display) -> String {
    format!(
        "adminalert: ERROR: {err}; the block is in force but will not be restored after a \
         restart"
    )
}

/// Ours: a file the daemon keeps writing (`what`: block state file, history file, blocked
/// file) cannot be written or opened (a full or read-only disk, a permission); detection and
/// blocking go on, `kept` says what happens meanwhile.
pub fn file_write_failing(what: &str, path: &Path, err: impl Display, kept: &str) -> String {
    format!(
        "adminalert: ERROR: cannot write {what} {}: {err}; detection and blocking go on; \
         {kept}",
        path.display()
    )
}

/// Ours: once a minute while a file still cannot be written.
pub fn file_still_failing(
    what: &str,
    path: &Path,
    since: std::time::SystemTime,
    err: impl Display,
    kept: &str,
) -> String {
    format!(
        "adminalert: ERROR: {what} {} still cannot be written (failing since {}): {err}; {kept}",
        path.display(),
        humantime::format_rfc3339_seconds(since)
    )
}

/// Ours: a file that could not be written takes writes again; `done` says what was caught up.
pub fn file_writable_again(
    what: &str,
    path: &Path,
    after: std::time::Duration,
    done: &str,
) -> String {
    format!(
        "adminalert: {what} {} can be written again after {} of failures; {done}",
        path.display(),
        humantime::format_duration(round_secs(after))
    )
}

/// Ours: the block state file exists but cannot be read at start.
pub fn state_file_unread(path: &Path, err: impl Display) -> String {
    format!(
        "adminalert: ERROR: cannot read block state file {}: {err}; its blocks are not \
         restored now (they come back at the next start that can read it) and it is only \
         appended to, never rewritten, until then",
        path.display()
    )
}

/// Ours: the daemon stops while the block state file still cannot be written.
pub fn state_file_lost_at_stop(path: &Path, blocks: u64) -> String {
    format!(
        "adminalert: ERROR: stopping while block state file {} still cannot be written: {blocks} \
         block(s) made or changed since it failed are not in it and will not be restored at \
         the next start",
        path.display()
    )
}

/// Ours: the daemon stops while the history file still cannot be written.
pub fn history_lost_at_stop(path: &Path, lines: usize) -> String {
    format!(
        "adminalert: ERROR: stopping while history file {} still cannot be written: {lines} \
         line(s) that waited for it are lost",
        path.display()
    )
}

/// Ours: the resolver thread could not be started; hosts are logged by address.
pub fn resolver_thread_failed(err: impl Display) -> String {
    format!("adminalert: ERROR: cannot start the resolver thread ({err}); logging IPs")
}

/// Ours: one responder worker could not be started; the pool runs with fewer.
pub fn responder_thread_failed(n: usize, err: impl Display) -> String {
    format!("adminalert: ERROR: cannot start responder thread {n}: {err}")
}

/// Ours: the protected addresses were not read in time at start; the daemon goes on.
pub fn protected_not_ready(seconds: u64) -> String {
    format!("adminalert: WARNING: protected addresses not read within {seconds} s; going on")
}

/// Ours: the protected-address refresher did not confirm a reload in time.
pub fn protected_slow_to_reload() -> &'static str {
    "adminalert: WARNING: protected addresses are slow to follow the reload"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Hit;
    use std::net::Ipv4Addr;

    fn alert(mode: Mode, kind: ProbeKind) -> Candidate {
        Candidate {
            hit: Hit::now(IpAddr::V4(Ipv4Addr::new(10, 9, 8, 6)), 135, mode, kind),
            count: 1,
            already_blocked: false,
            actionable: true,
        }
    }

    #[test]
    fn summary_numbers_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(27480), "27,480");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(
            not_acted_on(19_990, 19_990, false, 10, 10),
            "adminalert: 19,990 probes from 19,990 sources not acted on in the last 10 s: below \
             the trigger (10 logged, 19,980 lines held back by LOG_RATE_LIMIT)"
        );
        assert_eq!(
            not_acted_on(31_000, 28_500, true, 15, 10),
            "adminalert: 31,000 probes from about 28,500 sources not acted on in the last 10 s: \
             below the trigger (15 logged, 30,985 lines held back by LOG_RATE_LIMIT)"
        );
    }

    #[test]
    fn raw_syn_line_matches_1_2() {
        let a = alert(Mode::Atcp, ProbeKind::Syn);
        assert_eq!(
            detection(&a, "10.9.8.6"),
            "attackalert: TCP SYN/Normal scan from host: 10.9.8.6/10.9.8.6 to TCP port: 135"
        );
        assert_eq!(
            already_blocked(&a, "10.9.8.6"),
            "attackalert: Host: 10.9.8.6/10.9.8.6 is already blocked Ignoring"
        );
    }

    #[test]
    fn null_scan_has_no_stray_space() {
        let a = alert(Mode::Stcp, ProbeKind::Null);
        assert!(detection(&a, "x").starts_with("attackalert: TCP NULL scan from host: x/"));
    }

    #[test]
    fn classic_lines_match_1_2() {
        let a = alert(Mode::Tcp, ProbeKind::Connect);
        assert_eq!(
            detection(&a, "h.example"),
            "attackalert: Connect from host: h.example/10.9.8.6 to TCP port: 135"
        );
        assert_eq!(
            already_blocked(&a, "h.example"),
            "attackalert: Host: 10.9.8.6 is already blocked. Ignoring"
        );
        let u = alert(Mode::Udp, ProbeKind::Udp);
        assert_eq!(
            detection(&u, "10.9.8.6"),
            "attackalert: Connect from host: 10.9.8.6/10.9.8.6 to UDP port: 135"
        );
        let su = alert(Mode::Sudp, ProbeKind::Udp);
        assert_eq!(
            detection(&su, "10.9.8.6"),
            "attackalert: UDP scan from host: 10.9.8.6/10.9.8.6 to UDP port: 135"
        );
    }

    #[test]
    fn protected_line_names_host_reason_and_probe() {
        let a = alert(Mode::Stcp, ProbeKind::Syn);
        assert_eq!(
            protected(&a, Reason::DefaultGateway),
            "attackalert: Host 10.9.8.6 is protected (default gateway) and will not be blocked: \
             TCP SYN/Normal scan to TCP port 135"
        );
        assert!(
            protected(&a, Reason::Established { port: 22 })
                .contains("(established session to TCP port 22)")
        );
        let u = alert(Mode::Sudp, ProbeKind::Udp);
        assert!(
            protected(&u, Reason::Resolver)
                .ends_with("(nameserver) and will not be blocked: UDP scan to UDP port 135")
        );
    }

    #[test]
    fn protected_addresses_line_lists_each_kind() {
        let gw: IpAddr = "10.77.1.1".parse().unwrap();
        let ns: IpAddr = "fd77::53".parse().unwrap();
        assert_eq!(
            protected_addresses(&[gw], &[], &[gw, ns]),
            "adminalert: Protected addresses, never blocked: default gateway(s): 10.77.1.1; \
             other gateway(s): none; nameserver(s): 10.77.1.1, fd77::53"
        );
    }

    #[test]
    fn responder_lines_match_1_2() {
        let ip: IpAddr = "fd77::5".parse().unwrap();
        assert_eq!(
            blocked_via_wrappers(ip, "ALL: fd77::5 : DENY"),
            "attackalert: Host fd77::5 has been blocked via wrappers with string: \"ALL: fd77::5 : DENY\""
        );
        assert_eq!(
            ignoring_response(Proto::Udp),
            "attackalert: Ignoring UDP response per configuration file setting."
        );
        assert_eq!(
            listen_mode(Proto::Tcp, 1),
            "adminalert: Going into listen mode on TCP port: 1"
        );
    }

    #[test]
    fn operational_lines_keep_the_wording_tools_and_tests_wait_for() {
        // 1.2's own wording, then ours that the end-to-end tests and admins grep for.
        assert_eq!(
            nothing_bound("TCP"),
            "adminalert: ERROR: could not bind ANY TCP sockets. Shutting down."
        );
        assert_eq!(
            no_longer_listening(Proto::Tcp, 1524),
            "adminalert: No longer listening on TCP port: 1524"
        );
        assert_eq!(
            config_reloaded(2, 15),
            "adminalert: configuration reloaded, generation 2 in force (15 ms)"
        );
        assert_eq!(
            warning("portsentry.conf:3: FOO: unknown key"),
            "adminalert: WARNING: portsentry.conf:3: FOO: unknown key"
        );
        assert_eq!(
            file_write_failing(
                "block state file",
                Path::new("/var/lib/portsentry/blocks"),
                "No space left on device (os error 28)",
                "2 entries kept"
            ),
            "adminalert: ERROR: cannot write block state file /var/lib/portsentry/blocks: No \
             space left on device (os error 28); detection and blocking go on; 2 entries kept"
        );
        assert_eq!(
            file_still_failing(
                "history file",
                Path::new("/h"),
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
                "Read-only file system (os error 30)",
                "3 line(s) kept"
            ),
            "adminalert: ERROR: history file /h still cannot be written (failing since \
             2023-11-14T22:13:20Z): Read-only file system (os error 30); 3 line(s) kept"
        );
        assert_eq!(
            file_writable_again(
                "blocked file",
                Path::new("/b"),
                std::time::Duration::from_millis(61_600),
                "it lists the blocks in force again"
            ),
            "adminalert: blocked file /b can be written again after 1m 2s of failures; it lists \
             the blocks in force again"
        );
    }
}
