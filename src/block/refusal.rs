//! What may never be blocked whole, whatever asks: the one check behind blocks by hand,
//! escalated prefixes and decisions pulled from a fleet, so that each refuses the same
//! addresses with the same words.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::config::ignore::IgnoreList;
use crate::local_addrs::LocalAddrs;
use crate::protected::Snapshot;

/// Why `target` (an address or a network) must never be blocked except by a probe of its
/// own, if so: loopback or the unspecified address, this host's own addresses, a protected
/// address inside it, or an ignore-list entry overlapping it. The one check behind blocks
/// by hand and decisions pulled from a fleet, so that both refuse the same addresses with
/// the same words.
pub fn refusal(
    target: &ipnet::IpNet,
    local: &LocalAddrs,
    protect: &Snapshot,
    ignore: &IgnoreList,
) -> Option<String> {
    let addr = target.addr();
    let host = target.prefix_len() == target.max_prefix_len();
    let loopback = match addr {
        IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    };
    if addr.is_loopback() || addr.is_unspecified() || (!host && target.contains(&loopback)) {
        return Some("refused: loopback or unspecified address".into());
    }
    if host {
        if local.contains(addr) {
            return Some(format!(
                "refused: {} is this host's own address",
                addr.to_canonical()
            ));
        }
    } else if let Some(ip) = local.iter().find(|ip| target.contains(ip)) {
        return Some(format!("refused: {ip} is this host's own address"));
    }
    let protected = if host {
        protect
            .protection_at(addr, SystemTime::now())
            .map(|r| (addr.to_canonical(), r))
    } else {
        protect.protected_in(target)
    };
    if let Some((ip, reason)) = protected {
        return Some(format!(
            "refused: {ip} is protected ({})",
            crate::log_lines::protection_reason(reason)
        ));
    }
    if let Some(entry) = ignore
        .entries()
        .iter()
        .find(|e| e.contains(&addr) || target.contains(&e.addr()))
    {
        return Some(format!(
            "refused: in the ignore list ({})",
            crate::record::target_text(entry)
        ));
    }
    None
}
