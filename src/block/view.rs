//! The blocked set as the filters see it: a read-only view that only the block manager
//! writes. Filters ask it once per alert, without a message round trip; the manager stays
//! the one owner of block state and the authority on races (a host confirmed a moment ago
//! that the view does not show yet is still answered "already blocked" by the manager).
//!
//! Hosts are one hash lookup; networks (blocks made by hand or imported) are looked up once
//! per prefix length in use, so a large imported list costs a handful of lookups, not a scan.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ipnet::IpNet;

use super::Target;

#[derive(Debug, Default)]
struct Set {
    hosts: HashSet<IpAddr>,
    /// Networks by prefix length (IPv4 and IPv6 lengths kept apart by the family bit).
    nets: BTreeMap<(bool, u8), HashSet<IpNet>>,
}

impl Set {
    fn contains(&self, ip: IpAddr) -> bool {
        if self.hosts.contains(&ip) {
            return true;
        }
        self.nets.iter().any(|(&(v4, len), nets)| {
            v4 == ip.is_ipv4() && IpNet::new(ip, len).is_ok_and(|n| nets.contains(&n.trunc()))
        })
    }
}

/// Read side of the blocked set; cheap to clone, shared by the filters.
#[derive(Debug, Clone, Default)]
pub struct BlockView {
    set: Arc<RwLock<Set>>,
}

impl BlockView {
    /// An empty view; the manager that owns it fills it.
    pub fn new() -> BlockView {
        BlockView::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Set> {
        // Every write is one insert or remove: a panic cannot leave it half done.
        crate::sync::read(&self.set)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Set> {
        crate::sync::write(&self.set)
    }

    /// Whether a confirmed block covers `ip` (an IPv4-mapped address matches its IPv4 form).
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.read().contains(ip.to_canonical())
    }

    /// Number of blocks in force (hosts and networks).
    pub fn len(&self) -> usize {
        let s = self.read();
        s.hosts.len() + s.nets.values().map(HashSet::len).sum::<usize>()
    }

    /// True when nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Manager only: a block is in force.
    pub(crate) fn insert(&self, target: Target) {
        let mut s = self.write();
        if target.prefix_len() == target.max_prefix_len() {
            s.hosts.insert(target.addr());
        } else {
            let key = (target.addr().is_ipv4(), target.prefix_len());
            s.nets.entry(key).or_default().insert(target.trunc());
        }
    }

    /// Manager only: a block was lifted.
    pub(crate) fn remove(&self, target: &Target) {
        let mut s = self.write();
        if target.prefix_len() == target.max_prefix_len() {
            s.hosts.remove(&target.addr());
        } else {
            let key = (target.addr().is_ipv4(), target.prefix_len());
            if let Some(nets) = s.nets.get_mut(&key) {
                nets.remove(&target.trunc());
                if nets.is_empty() {
                    s.nets.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::parse_target;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hosts_and_networks_of_both_families_are_found_and_lifted() {
        let v = BlockView::new();
        for t in ["10.0.0.5", "192.0.2.0/24", "fd77::/64", "2001:db8::7"] {
            v.insert(parse_target(t).unwrap());
        }
        assert_eq!(v.len(), 4);
        assert!(v.is_blocked(ip("10.0.0.5")));
        assert!(v.is_blocked(ip("::ffff:10.0.0.5")), "mapped form matches");
        assert!(!v.is_blocked(ip("10.0.0.6")));
        assert!(v.is_blocked(ip("192.0.2.200")));
        assert!(!v.is_blocked(ip("192.0.3.1")));
        assert!(v.is_blocked(ip("fd77::1234")));
        assert!(!v.is_blocked(ip("fd78::1")));
        assert!(v.is_blocked(ip("2001:db8::7")));
        // An IPv6 address whose high bits look like an IPv4 /24 is not in it.
        assert!(!v.is_blocked(ip("c000:200::1")));
        v.remove(&parse_target("192.0.2.0/24").unwrap());
        v.remove(&parse_target("10.0.0.5").unwrap());
        assert!(!v.is_blocked(ip("192.0.2.200")));
        assert!(!v.is_blocked(ip("10.0.0.5")));
        assert!(v.is_blocked(ip("fd77::1")), "other blocks stay");
        assert_eq!(v.len(), 2);
    }
}
