//! Every log line the raw sensor writes, in one place. The `adminalert:` lines that 1.2
//! also wrote are word for word (1.2's trailing space after the exclude line is dropped);
//! the others are ours. The lead collects these into `report.rs`.

use crate::event::Proto;

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

/// Ours: the pipeline was behind and probes were dropped (the channel was full).
pub fn probes_dropped(count: u64, seconds: u64) -> String {
    format!(
        "adminalert: WARNING: {count} probes dropped in the last {seconds} s because the detection pipeline was behind"
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
