//! This host's own addresses, from one source for the whole process: the ignore filter's
//! "never block a local address" rule, the refusal of a manual block of one of them, and the
//! raw sensor's "is this packet for us" check all read them here. Debian's start script meant
//! to copy them into the ignore file but no longer parses modern `ifconfig` output; we read
//! them from the kernel (`getifaddrs`) instead, and re-read them while the daemon runs
//! because interfaces come and go (DHCP, VPNs, containers).
//!
//! The kernel is asked at most once per [`REFRESH_INTERVAL`] whoever asks: the last read is
//! kept in a process-wide cache that every [`LocalAddrs`] holder takes its snapshot from, so
//! two threads never disagree for longer than one interval and a flood of probes cannot
//! multiply the reads. The read is tagged with the network namespace it was made in: the
//! daemon's threads share one, but a thread that entered another (tests run sensors in
//! private namespaces) must not take a neighbour's addresses for its own.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log_lines;

/// How old the address set may get before it is re-read: short enough that a new DHCP lease
/// is covered almost at once (the raw sensor's listener refresh runs at the same pace), long
/// enough that a flood of probes costs one `getifaddrs` call a second at most.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A set of addresses as read at one time, shared by every holder until the next read.
type Set = Arc<HashSet<IpAddr>>;

/// One read of the kernel's list: the addresses, when (real time, whatever clock the holders
/// pass in) and in which network namespace.
struct Read {
    set: Set,
    at: Instant,
    netns: Option<(u64, u64)>,
}

/// The last read.
static LAST_READ: Mutex<Option<Read>> = Mutex::new(None);

/// The calling thread's network namespace (device and inode of its `ns/net` link); `None`
/// without `/proc`, where every thread counts as in the same one.
fn netns() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The process-wide set, re-read from the kernel when older than `max_age`
/// (`Duration::ZERO`: always). A failed read keeps the previous set (an address that was ours
/// a moment ago is still better protected than not) but moves its stamp, so a persistent
/// failure is retried once per interval, not per probe; the caller that saw it gets the error.
fn shared(max_age: Duration) -> Result<Set, nix::Error> {
    let mut last = crate::sync::lock(&LAST_READ);
    let now = Instant::now();
    let netns = netns();
    if let Some(read) = last.as_ref()
        && !max_age.is_zero()
        && read.netns == netns
        && now.saturating_duration_since(read.at) < max_age
    {
        return Ok(Arc::clone(&read.set));
    }
    match read_interface_addrs() {
        Ok(addrs) => {
            let set = Arc::new(addrs);
            *last = Some(Read {
                set: Arc::clone(&set),
                at: now,
                netns,
            });
            Ok(set)
        }
        Err(e) => {
            let set = last
                .take()
                .filter(|read| read.netns == netns)
                .map(|read| read.set)
                .unwrap_or_default();
            *last = Some(Read {
                set,
                at: now,
                netns,
            });
            Err(e)
        }
    }
}

/// Every address of every local interface, as one holder last took it from the process-wide
/// read, with the time (on the holder's clock) it did so.
#[derive(Debug, Clone, Default)]
pub struct LocalAddrs {
    addrs: Set,
    refreshed: Option<Instant>,
    /// Never re-read: the addresses of another host, or of a capture (replay).
    fixed: bool,
}

impl FromIterator<IpAddr> for LocalAddrs {
    /// A fixed set that counts as fresh now (tests, benches).
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        LocalAddrs::from_addrs(iter, Instant::now())
    }
}

impl LocalAddrs {
    /// Reads the interfaces now. A failure is logged and leaves the last set read (empty at
    /// first: loopback and the ignore list still protect the host); the next refresh tries
    /// again.
    pub fn new() -> LocalAddrs {
        let mut local = LocalAddrs::default();
        local.refresh();
        local
    }

    /// Reads the interfaces now, failing if the kernel does not answer: for a caller that
    /// must not start blind (the raw sensor cannot tell probes for us without them).
    pub fn read() -> Result<LocalAddrs, nix::Error> {
        Ok(LocalAddrs {
            addrs: shared(Duration::ZERO)?,
            refreshed: Some(Instant::now()),
            fixed: false,
        })
    }

    /// A fixed set that counts as fresh at `now`, for tests and for callers that already
    /// know the addresses.
    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>, now: Instant) -> LocalAddrs {
        LocalAddrs {
            addrs: Arc::new(addrs.into_iter().map(|ip| ip.to_canonical()).collect()),
            refreshed: Some(now),
            fixed: false,
        }
    }

    /// A set that is never re-read from this machine's interfaces: the addresses a replay
    /// found in a capture, which belong to the host that took it.
    pub fn fixed(addrs: impl IntoIterator<Item = IpAddr>) -> LocalAddrs {
        LocalAddrs {
            fixed: true,
            ..LocalAddrs::from_addrs(addrs, Instant::now())
        }
    }

    /// Whether `ip` is this host's: loopback (Linux answers the whole 127.0.0.0/8 on `lo`)
    /// or an interface address; an IPv4-mapped IPv6 address matches its IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || self.addrs.contains(&ip)
    }

    /// Number of distinct interface addresses known.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when no interface address is known (interfaces unreadable, or none configured).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The interface addresses, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().copied()
    }

    /// Re-reads the interfaces now, whatever the age of the set.
    pub fn refresh(&mut self) {
        if self.fixed {
            return;
        }
        self.take(Duration::ZERO, Instant::now());
    }

    /// Takes a fresh snapshot when this one is older than [`REFRESH_INTERVAL`] at `now`;
    /// returns whether it did. Cheap otherwise: meant to be called for every probe. The
    /// snapshot comes from the process-wide read, itself at most one interval old.
    pub fn refresh_if_stale(&mut self, now: Instant) -> bool {
        if self.fixed {
            return false;
        }
        let stale = match self.refreshed {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= REFRESH_INTERVAL,
        };
        if stale {
            self.take(REFRESH_INTERVAL, now);
        }
        stale
    }

    /// Takes the process-wide set (re-read if older than `max_age`) and stamps this holder
    /// with `now`; on failure keeps the process-wide last read and says why.
    fn take(&mut self, max_age: Duration, now: Instant) {
        self.refreshed = Some(now);
        match shared(max_age) {
            Ok(set) => self.addrs = set,
            Err(e) => {
                log::warn!(
                    "{}",
                    log_lines::refresh_failed("the host addresses", &e.to_string())
                );
                if let Some(read) = crate::sync::lock(&LAST_READ).as_ref() {
                    self.addrs = Arc::clone(&read.set);
                }
            }
        }
    }

    /// Whether two holders share one read of the kernel's list (tests of the single source).
    #[cfg(test)]
    fn same_read(&self, other: &LocalAddrs) -> bool {
        Arc::ptr_eq(&self.addrs, &other.addrs)
    }
}

/// Every IPv4 and IPv6 address the kernel reports on any interface, up or down, in the
/// calling thread's network namespace.
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

    /// An address of this machine that is not loopback, if it has one.
    fn a_non_loopback_address() -> Option<IpAddr> {
        read_interface_addrs()
            .unwrap()
            .into_iter()
            .find(|ip| !ip.is_loopback())
    }

    #[test]
    fn reads_this_machines_interface_addresses_from_the_kernel() {
        let local = LocalAddrs::read().unwrap();
        // `lo` carries 127.0.0.1 in every namespace that has it up; it must be in the list
        // itself, not only through the loopback rule.
        assert!(local.iter().any(|ip| ip == IpAddr::V4(Ipv4Addr::LOCALHOST)));
        if let Some(ip) = a_non_loopback_address() {
            assert!(local.contains(ip), "{ip}");
        }
        assert!(!local.contains(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    }

    #[test]
    fn ipv4_mapped_address_matches_its_ipv4_form_and_loopback_is_always_ours() {
        let now = Instant::now();
        let local = LocalAddrs::from_addrs([IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1))], now);
        let mapped: IpAddr = "::ffff:10.77.0.1".parse().unwrap();
        assert!(local.contains(mapped));
        assert!(!local.contains(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2))));
        assert!(local.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(local.contains(IpAddr::V4(Ipv4Addr::new(127, 3, 2, 1))));
        assert!(!local.contains(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }

    #[test]
    fn refresh_if_stale_waits_for_the_interval() {
        let t0 = Instant::now();
        let fake = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99));
        let mut local = LocalAddrs::from_addrs([fake], t0);
        assert!(!local.refresh_if_stale(t0 + REFRESH_INTERVAL - Duration::from_millis(1)));
        assert!(local.contains(fake), "fresh set is kept as is");
        assert!(local.refresh_if_stale(t0 + REFRESH_INTERVAL));
        assert!(
            !local.contains(fake),
            "a refresh replaces the set with the kernel's"
        );
        assert!(local.iter().any(|ip| ip == IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(!local.refresh_if_stale(t0 + REFRESH_INTERVAL * 3 / 2));
    }

    #[test]
    fn holders_refreshing_within_one_interval_share_one_kernel_read() {
        // Positive control: a forced read is a new read.
        let first = LocalAddrs::read().unwrap();
        let forced = LocalAddrs::read().unwrap();
        assert!(!first.same_read(&forced));
        // Two stale holders (the ignore filter's, the raw sensor's) refreshing right after
        // take the same read, not one each. Another test's forced read may land between the
        // two refreshes now and then: a few tries tell that from a second source.
        let shared = (0..5).any(|_| {
            let long_ago = Instant::now();
            let later = long_ago + REFRESH_INTERVAL;
            let mut filter = LocalAddrs::from_addrs([], long_ago);
            let mut sensor = LocalAddrs::from_addrs([], long_ago);
            assert!(filter.refresh_if_stale(later));
            assert!(sensor.refresh_if_stale(later));
            filter.same_read(&sensor)
        });
        assert!(shared, "each holder read the kernel itself");
    }

    #[test]
    fn a_thread_in_another_network_namespace_reads_its_own_addresses() {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // Positive control: here `lo` is up, so 127.0.0.1 is in the kernel's list, and the
        // process-wide read holds it.
        let here = LocalAddrs::read().unwrap();
        assert!(here.iter().any(|ip| ip == localhost));
        let there = std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread's network namespace.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "needs root"
            );
            let mut holder = LocalAddrs::from_addrs([], Instant::now());
            assert!(holder.refresh_if_stale(Instant::now() + REFRESH_INTERVAL));
            holder.iter().collect::<Vec<IpAddr>>()
        })
        .join()
        .unwrap();
        // A fresh namespace has only `lo`, down and without an address: nothing of ours.
        assert_eq!(there, Vec::<IpAddr>::new());
    }
}
