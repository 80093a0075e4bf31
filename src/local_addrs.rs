//! This host's own addresses, so that no probe (forged or not) can make the daemon block
//! itself. Debian's start script meant to copy them into the ignore file but no longer parses
//! modern `ifconfig` output; we read them from the kernel instead, and re-read them while the
//! daemon runs because interfaces come and go (DHCP, VPNs, containers).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How old the address set may get before [`LocalAddrs::refresh_if_stale`] re-reads it: short
/// enough that a new DHCP lease is covered almost at once, long enough that a flood of probes
/// costs one `getifaddrs` call every two seconds at most.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// Every address of every local interface, with the time it was last read.
#[derive(Debug, Clone, Default)]
pub struct LocalAddrs {
    addrs: HashSet<IpAddr>,
    refreshed: Option<Instant>,
}

impl LocalAddrs {
    /// Reads the interfaces now. A failure leaves the set empty (loopback and the ignore list
    /// still protect the host) and is logged; the next refresh tries again.
    pub fn new() -> LocalAddrs {
        let mut local = LocalAddrs::default();
        local.refresh_at(Instant::now());
        local
    }

    /// A fixed set that counts as fresh at `now`, for tests and for callers that already
    /// know the addresses.
    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>, now: Instant) -> LocalAddrs {
        LocalAddrs {
            addrs: addrs.into_iter().map(|ip| ip.to_canonical()).collect(),
            refreshed: Some(now),
        }
    }

    /// Whether `ip` is one of ours; an IPv4-mapped IPv6 address matches its IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip.to_canonical())
    }

    /// Number of distinct addresses known.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when no address is known (interfaces unreadable, or none configured).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The addresses, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().copied()
    }

    /// Re-reads the interfaces now, whatever the age of the set.
    pub fn refresh(&mut self) {
        self.refresh_at(Instant::now());
    }

    /// Re-reads the interfaces when the set is older than [`REFRESH_INTERVAL`] at `now`;
    /// returns whether it did. Cheap otherwise: meant to be called for every probe.
    pub fn refresh_if_stale(&mut self, now: Instant) -> bool {
        let stale = match self.refreshed {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= REFRESH_INTERVAL,
        };
        if stale {
            self.refresh_at(now);
        }
        stale
    }

    /// Reads the interfaces and stamps the set with `now`. On failure the previous set is kept
    /// (an address that was ours a moment ago is still better protected than not), and the
    /// stamp still moves so that a persistent failure is retried every interval, not per probe.
    fn refresh_at(&mut self, now: Instant) {
        self.refreshed = Some(now);
        match read_interface_addrs() {
            Ok(addrs) => self.addrs = addrs,
            Err(e) => log::warn!("cannot list local interface addresses: {e}"),
        }
    }
}

/// Every IPv4 and IPv6 address the kernel reports on any interface, up or down.
fn read_interface_addrs() -> nix::Result<HashSet<IpAddr>> {
    let mut addrs = HashSet::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(storage) = ifa.address else {
            continue;
        };
        if let Some(v4) = storage.as_sockaddr_in() {
            addrs.insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = storage.as_sockaddr_in6() {
            addrs.insert(IpAddr::V6(v6.ip()).to_canonical());
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn reads_loopback_from_the_kernel() {
        let local = LocalAddrs::new();
        assert!(local.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn ipv4_mapped_address_matches_its_ipv4_form() {
        let now = Instant::now();
        let local = LocalAddrs::from_addrs([IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1))], now);
        let mapped: IpAddr = "::ffff:10.77.0.1".parse().unwrap();
        assert!(local.contains(mapped));
        assert!(!local.contains(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2))));
        assert!(!local.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn refresh_if_stale_waits_for_the_interval() {
        let t0 = Instant::now();
        let fake = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99));
        let mut local = LocalAddrs::from_addrs([fake], t0);
        assert!(!local.refresh_if_stale(t0 + Duration::from_millis(1999)));
        assert!(local.contains(fake), "fresh set is kept as is");
        assert!(local.refresh_if_stale(t0 + REFRESH_INTERVAL));
        assert!(
            !local.contains(fake),
            "a refresh replaces the set with the kernel's"
        );
        assert!(local.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(!local.refresh_if_stale(t0 + REFRESH_INTERVAL + Duration::from_secs(1)));
    }
}
