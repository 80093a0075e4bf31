//! The protected addresses as their readers see them: sources never acted on (gateways,
//! nameservers, peers of established sessions), published as immutable snapshots. Plain data
//! and a read handle, in a module of their own so that data flows one way: the protect filter
//! ([`crate::filter::protect`]) fills it, and both the filters and the block manager (which
//! refuses manual and fleet blocks of these addresses) read it, without the block side
//! importing a filter.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// One protected peer: the local port of (one of) its sessions and when it was first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Local (service) port of a session of this peer.
    pub port: u16,
    /// End of the read that first listed the peer established.
    pub first_seen: SystemTime,
}

/// Why an address is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Next hop of a default route.
    DefaultGateway,
    /// Next hop of another route.
    Router,
    /// A nameserver of `RESOLV_CONF`.
    Resolver,
    /// Peer of an established session to a local service, older than the probe.
    Established {
        /// The local (service) port of the session.
        port: u16,
    },
}

/// The protected addresses at one moment, as the refresher read them. Immutable: a new one
/// replaces it whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    gateways: HashMap<IpAddr, Reason>,
    resolvers: HashSet<IpAddr>,
    peers: Arc<HashMap<IpAddr, Peer>>,
}

impl Snapshot {
    /// Gathers the three kinds (each empty when its `PROTECT_*` key is off); a default
    /// gateway that is also another route's next hop is named as the default gateway.
    pub fn new(
        default_gateways: &BTreeSet<IpAddr>,
        routers: &BTreeSet<IpAddr>,
        resolvers: &[IpAddr],
        peers: Arc<HashMap<IpAddr, Peer>>,
    ) -> Snapshot {
        let mut by_ip = HashMap::new();
        for ip in routers {
            by_ip.insert(ip.to_canonical(), Reason::Router);
        }
        for ip in default_gateways {
            by_ip.insert(ip.to_canonical(), Reason::DefaultGateway);
        }
        Snapshot {
            gateways: by_ip,
            resolvers: resolvers.iter().map(|ip| ip.to_canonical()).collect(),
            peers,
        }
    }

    /// Why a probe from `ip` seen at `at` must not be acted on, if it must not: a gateway,
    /// then a nameserver, then a peer whose session was seen before `at`.
    pub fn protection_at(&self, ip: IpAddr, at: SystemTime) -> Option<Reason> {
        let ip = ip.to_canonical();
        if let Some(reason) = self.gateways.get(&ip) {
            return Some(*reason);
        }
        if self.resolvers.contains(&ip) {
            return Some(Reason::Resolver);
        }
        self.peers
            .get(&ip)
            .filter(|p| at > p.first_seen)
            .map(|p| Reason::Established { port: p.port })
    }

    /// A protected address inside `net`, if any (blocks of whole networks made by hand or
    /// pulled from a fleet must not cover the gateway either); sessions count whatever
    /// their age, since a network block would cut them now.
    pub fn protected_in(&self, net: &ipnet::IpNet) -> Option<(IpAddr, Reason)> {
        let inside = |ip: &IpAddr| net.contains(ip);
        self.gateways
            .iter()
            .find(|(ip, _)| inside(ip))
            .map(|(ip, r)| (*ip, *r))
            .or_else(|| {
                self.resolvers
                    .iter()
                    .find(|ip| inside(ip))
                    .map(|ip| (*ip, Reason::Resolver))
            })
            .or_else(|| {
                self.peers
                    .iter()
                    .find(|(ip, _)| inside(ip))
                    .map(|(ip, p)| (*ip, Reason::Established { port: p.port }))
            })
    }
}

/// Read side of the protected addresses; cheap to clone. Readers see the latest snapshot
/// the refresher published.
#[derive(Debug, Clone, Default)]
pub struct ProtectView {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    current: RwLock<Arc<Snapshot>>,
    /// Bumped on every publish, so the filter re-reads the lock only when it changed.
    version: AtomicU64,
}

impl ProtectView {
    /// A view of nothing protected, until a refresher publishes into it.
    pub fn new() -> ProtectView {
        ProtectView::default()
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // Every write swaps one Arc: a panic cannot leave it half done.
        let guard = crate::sync::read(&self.shared.current);
        Arc::clone(&guard)
    }

    /// Why `ip` must never be blocked now, if so: for blocks that come from no probe (made by
    /// hand, pulled from a fleet), where any established session is older than the request.
    pub fn protection(&self, ip: IpAddr) -> Option<Reason> {
        self.protection_at(ip, SystemTime::now())
    }

    /// Why a probe from `ip` seen at `at` must not be acted on, if so.
    pub fn protection_at(&self, ip: IpAddr, at: SystemTime) -> Option<Reason> {
        self.snapshot().protection_at(ip, at)
    }

    /// Bumped on every publish: a reader re-reads the lock only when it changed.
    pub(crate) fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    /// Replaces the snapshot; only the protect refresher (and tests) call it.
    pub(crate) fn publish(&self, snapshot: Arc<Snapshot>) {
        *crate::sync::write(&self.shared.current) = snapshot;
        self.shared.version.fetch_add(1, Ordering::Release);
    }
}
