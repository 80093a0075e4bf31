//! The first filter: drops probes from the sources of the ignore list
//! ([`crate::config::ignore::IgnoreList`]) and from this host's own addresses, whatever the
//! files say.

use std::sync::Arc;
use std::time::Instant;

use super::{DropReason, Filter, Verdict};
use crate::config::Config;
use crate::config::ignore::IgnoreList;
use crate::event::Candidate;
use crate::local_addrs::LocalAddrs;

/// First filter: drops probes from ignored sources and from this host itself (loopback, the
/// unspecified address, any address of a local interface), whatever the ignore file says.
#[derive(Debug)]
pub struct IgnoreFilter {
    list: Arc<IgnoreList>,
    local: LocalAddrs,
}

impl IgnoreFilter {
    /// Takes the generation's ignore list and reads the local interfaces now.
    pub fn new(ignore: &Arc<IgnoreList>) -> IgnoreFilter {
        IgnoreFilter::with_local_addrs(Arc::clone(ignore), LocalAddrs::new())
    }

    /// With a given list and local address set; the set is still refreshed as it ages.
    pub fn with_local_addrs(list: Arc<IgnoreList>, local: LocalAddrs) -> IgnoreFilter {
        IgnoreFilter { list, local }
    }

    /// The decision, with the clock passed in so that the local-address refresh is testable.
    pub fn inspect_at(&mut self, candidate: &Candidate, now: Instant) -> Verdict {
        let src = candidate.hit.src.to_canonical();
        if src.is_loopback() || src.is_unspecified() || self.list.contains(src) {
            return Verdict::Drop(DropReason::Ignored);
        }
        self.local.refresh_if_stale(now);
        if self.local.contains(src) {
            return Verdict::Drop(DropReason::Ignored);
        }
        Verdict::Pass
    }
}

impl Filter for IgnoreFilter {
    fn name(&self) -> &'static str {
        "ignore"
    }

    fn inspect(&mut self, candidate: &mut Candidate, now: Instant) -> Verdict {
        self.inspect_at(candidate, now)
    }

    fn reconfigure(&mut self, _config: &Config, ignore: &Arc<IgnoreList>) {
        self.list = Arc::clone(ignore);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Hit, Mode, ProbeKind};
    use std::path::Path;
    use std::time::Duration;

    use crate::config::ignore::tests::{ip, list};

    fn alert(src: &str) -> Candidate {
        Candidate {
            hit: Hit::now(ip(src), 111, Mode::Stcp, ProbeKind::Syn),
            count: 0,
            already_blocked: false,
            actionable: true,
        }
    }

    #[test]
    fn filter_drops_listed_loopback_unspecified_and_local_sources() {
        let now = Instant::now();
        let local = LocalAddrs::from_addrs([ip("10.77.0.1"), ip("fd77::1")], now);
        let mut f = IgnoreFilter::with_local_addrs(Arc::new(list("192.168.1.5/24\n")), local);
        let ignored = Verdict::Drop(DropReason::Ignored);
        for src in [
            "192.168.1.77",
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "10.77.0.1",
            "::ffff:10.77.0.1",
            "fd77::1",
        ] {
            assert_eq!(f.inspect_at(&alert(src), now), ignored, "{src}");
        }
        for src in ["192.168.2.1", "10.77.0.2", "fd77::2", "2001:db8::1"] {
            assert_eq!(f.inspect_at(&alert(src), now), Verdict::Pass, "{src}");
        }
    }

    #[test]
    fn filter_never_passes_a_real_local_address() {
        // A namespace of its own with a known, non-loopback address, so that the set read
        // from the kernel cannot be empty and the test cannot pass vacuously.
        crate::sensor::listeners::tests::in_fresh_netns(|| {
            use crate::sensor::listeners::tests::ns_sh;
            ns_sh(&["ip", "addr", "add", "10.77.9.1/32", "dev", "lo"]);
            let local = LocalAddrs::new();
            assert!(local.contains(ip("10.77.9.1")), "{local:?}");
            let mut f = IgnoreFilter::new(&Arc::new(IgnoreList::default()));
            for a in local.iter() {
                let mut al = alert(&a.to_string());
                assert_eq!(
                    f.inspect(&mut al, Instant::now()),
                    Verdict::Drop(DropReason::Ignored),
                    "{a}"
                );
            }
            // Control: a neighbour on the same subnet is not ours and passes.
            assert_eq!(
                f.inspect(&mut alert("10.77.9.2"), Instant::now()),
                Verdict::Pass
            );
        });
    }

    #[test]
    fn filter_refreshes_local_addresses_when_stale() {
        let t0 = Instant::now();
        let stale = LocalAddrs::from_addrs([ip("203.0.113.7")], t0);
        let mut f = IgnoreFilter::with_local_addrs(Arc::new(IgnoreList::default()), stale);
        assert_eq!(
            f.inspect_at(&alert("203.0.113.7"), t0),
            Verdict::Drop(DropReason::Ignored)
        );
        // After the refresh interval the kernel's set replaces the made-up address.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(f.inspect_at(&alert("203.0.113.7"), later), Verdict::Pass);
    }

    #[test]
    fn reconfigure_applies_the_new_list_to_the_next_probe() {
        let now = Instant::now();
        let mut f = IgnoreFilter::with_local_addrs(
            Arc::new(IgnoreList::default()),
            LocalAddrs::from_addrs([], now),
        );
        assert_eq!(f.inspect_at(&alert("198.51.100.4"), now), Verdict::Pass);
        let config = crate::config::build::defaults(Path::new("x.conf"));
        f.reconfigure(&config, &Arc::new(list("198.51.100.0/24\n")));
        assert_eq!(
            f.inspect_at(&alert("198.51.100.4"), now),
            Verdict::Drop(DropReason::Ignored)
        );
    }
}
