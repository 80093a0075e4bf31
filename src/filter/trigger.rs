//! SCAN_TRIGGER: how many distinct probes a source may send before the alarm.
//!
//! 1.2 kept one ring of the last 50 hits from anyone, so fifty hits from others erased a slow
//! scanner's count, and 2.0 counted per host forever. Here each source has its own state: the
//! distinct (protocol, port) pairs it probed within `SCAN_TRIGGER_WINDOW`. `0` and `1` fire on
//! the first probe, `N` on the Nth distinct one, as in 1.2's common cases.
//!
//! Evidence has a weight: only a completed handshake proves the source. A source whose probes
//! are all forgeable (raw segments, UDP datagrams) reaches the log threshold at
//! `SCAN_TRIGGER` as in 1.2, but may be *acted on* only once it has probed
//! `max(SCAN_TRIGGER, FORGEABLE_SCAN_TRIGGER)` distinct ports: one forged packet "from" the
//! gateway can no longer blackhole it, and a flood of one-packet forged sources blocks nobody.
//!
//! Sources are counted by prefix (`SCAN_PREFIX_V4`, default 32: per host as in 1.2;
//! `SCAN_PREFIX_V6`, default 64): a scanner that takes a new address of its /64 for every probe
//! is still one scanner, and its ports add up. Being *proven* stays a property of a host: one
//! completed handshake from a prefix does not make forged probes "from" its neighbours
//! actionable at the lower threshold.
//!
//! The table has a fixed capacity (`SCAN_TRIGGER_TABLE_SIZE`), as scanlogd's does: a flood of
//! forged sources evicts the least recently seen ones and never grows memory. Each source keeps
//! at most as many probes as the higher threshold, which is all the decision needs. The
//! table is a [`Lru`]: under a flood, a probe costs one hash lookup and a few index writes,
//! and a full table allocates nothing (an evicted source's memory goes to the newcomer).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::lru::Lru;
use super::{DropReason, Filter, Verdict};
use crate::config::Config;
use crate::config::ignore::IgnoreList;
use crate::event::{Candidate, Proto};

/// What the table concluded about one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Distinct (protocol, port) probes from this source within the window, this one
    /// included; capped at `max(SCAN_TRIGGER, 1)`.
    pub count: u32,
    /// The source (its prefix) has reached the trigger (now or earlier, within the window).
    pub fired: bool,
    /// The evidence is enough to act on: the trigger for a source that proved itself, the
    /// forgeable trigger otherwise.
    pub actionable: bool,
}

/// A time in the table: milliseconds since its [`Clock`]'s epoch (the precision of
/// `SCAN_TRIGGER_WINDOW` that matters), at most [`STAMP_MAX`].
type Stamp = u64;

/// Stamps need 40 bits: 34 years of milliseconds.
const STAMP_BITS: u32 = 40;
const STAMP_MAX: Stamp = (1 << STAMP_BITS) - 1;

/// Turns the `Instant`s passed in into [`Stamp`]s. An `Instant` is 16 bytes; a source's
/// times as stamps let a probe fit in 8 bytes and a whole source in a cache line or so,
/// which is what a flood of forged one-packet sources pays for: every probe is a new source.
#[derive(Debug, Default)]
struct Clock {
    /// The first time seen (times before it count as the epoch itself).
    epoch: Option<Instant>,
}

impl Clock {
    fn stamp(&mut self, now: Instant) -> Stamp {
        let epoch = *self.epoch.get_or_insert(now);
        let ms = now.saturating_duration_since(epoch).as_millis();
        Stamp::try_from(ms).unwrap_or(STAMP_MAX).min(STAMP_MAX)
    }
}

/// One distinct probe and when it was last seen, packed in 8 bytes: the stamp in the low
/// [`STAMP_BITS`], the port above it, the protocol in the top bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe(u64);

impl Probe {
    const UDP: u64 = 1 << 63;

    fn new(proto: Proto, port: u16, seen: Stamp) -> Probe {
        let proto = match proto {
            Proto::Tcp => 0,
            Proto::Udp => Self::UDP,
        };
        Probe(proto | u64::from(port) << STAMP_BITS | seen.min(STAMP_MAX))
    }

    fn seen(self) -> Stamp {
        self.0 & STAMP_MAX
    }

    /// The same (protocol, port), whenever seen.
    fn same_port(self, other: Probe) -> bool {
        self.0 >> STAMP_BITS == other.0 >> STAMP_BITS
    }
}

/// Per-source state, kept small (80 bytes with its key and links in the table's slot, 176
/// before): a flood of forged sources writes one of these per probe.
#[derive(Debug)]
struct Source {
    /// Last probe of any kind; a source silent for longer than the window starts afresh.
    last_seen: Stamp,
    /// Distinct probes within the window, at most `needed()` of them. Inline up to
    /// [`INLINE_PROBES`]: under a flood of forged sources every probe is a new source, and a
    /// heap block of its own per source was a malloc, a cache miss and, as the thread's heap
    /// grew page by page, an `mprotect` call.
    probes: SmallVec<[Probe; INLINE_PROBES]>,
    /// The trigger was reached; later probes pass until the source goes quiet for a window.
    fired: bool,
    /// The actionable threshold was reached (sticky like `fired`).
    actionable: bool,
    /// Some host of this prefix completed a handshake: its hosts are in the table's
    /// `proven` map (rare, so kept out of the slot).
    has_proven: bool,
}

impl Source {
    fn new(now: Stamp) -> Source {
        Source {
            last_seen: now,
            probes: SmallVec::new(),
            fired: false,
            actionable: false,
            has_proven: false,
        }
    }

    /// Starts afresh at `now` (a source quiet for a window, or an evicted one's slot taken
    /// by a newcomer), keeping the vector's memory. The caller forgets its proven hosts.
    fn reset(&mut self, now: Stamp) {
        self.last_seen = now;
        self.probes.clear();
        self.fired = false;
        self.actionable = false;
        self.has_proven = false;
    }
}

/// Proven hosts of the prefixes that have some (see [`Source::has_proven`]), each list at
/// most [`PROVEN_HOSTS`] long; an entry lives as long as its source does in the table.
type ProvenHosts = HashMap<u128, Vec<IpAddr>>;

/// Probes a source keeps without a heap block: the shipped triggers need at most 3.
const INLINE_PROBES: usize = 4;

/// Proven hosts remembered per prefix at most.
const PROVEN_HOSTS: usize = 16;

/// Per-source SCAN_TRIGGER state with a fixed capacity and least-recently-seen eviction.
/// Time is passed in, so the behaviour is deterministic under test.
#[derive(Debug)]
pub struct TriggerTable {
    trigger: u32,
    /// `FORGEABLE_SCAN_TRIGGER` (0: as `trigger`).
    forgeable: u32,
    window: Duration,
    /// `SCAN_PREFIX_V4` / `SCAN_PREFIX_V6`: sources are keyed by their prefix.
    prefix_v4: u8,
    prefix_v6: u8,
    /// Per prefix (its network address), the least recently seen evicted first.
    sources: Lru<u128, Source>,
    /// The hosts of a prefix a completed handshake came from: they are not forged.
    proven: ProvenHosts,
    clock: Clock,
}

impl TriggerTable {
    /// A table for `SCAN_TRIGGER = trigger`, counting probes younger than `window` (zero means
    /// probes never expire, only eviction forgets them) and tracking at most `capacity`
    /// sources (at least one).
    pub fn new(trigger: u32, window: Duration, capacity: usize) -> TriggerTable {
        TriggerTable {
            trigger,
            forgeable: 0,
            window,
            prefix_v4: 32,
            prefix_v6: 128,
            sources: Lru::new(capacity),
            proven: ProvenHosts::new(),
            clock: Clock::default(),
        }
    }

    /// The same table with a forgeable-evidence trigger (`FORGEABLE_SCAN_TRIGGER`).
    pub fn with_forgeable(mut self, forgeable: u32) -> TriggerTable {
        self.forgeable = forgeable;
        self
    }

    /// The same table counting sources by prefixes of these lengths (`SCAN_PREFIX_V4`,
    /// `SCAN_PREFIX_V6`).
    pub fn with_prefixes(mut self, v4: u8, v6: u8) -> TriggerTable {
        self.prefix_v4 = v4.min(32);
        self.prefix_v6 = v6.min(128);
        self
    }

    /// The table a config asks for.
    pub fn from_config(config: &Config) -> TriggerTable {
        TriggerTable::new(
            config.scan_trigger,
            config.scan_trigger_window,
            config.scan_trigger_table_size,
        )
        .with_forgeable(config.forgeable_scan_trigger)
        .with_prefixes(config.scan_prefix_v4, config.scan_prefix_v6)
    }

    /// The key of `src` (canonical): the network address of its prefix.
    /// Held as one `u128` ([`super::addr_key`]).
    fn key(&self, src: IpAddr) -> u128 {
        let len = if src.is_ipv4() {
            self.prefix_v4
        } else {
            self.prefix_v6
        };
        super::addr_key(ipnet::IpNet::new(src, len).map_or(src, |n| n.network()))
    }

    /// Distinct probes a source must send to fire: 0 and 1 both mean the first.
    fn log_needed(&self) -> usize {
        usize::try_from(self.trigger.max(1)).unwrap_or(usize::MAX)
    }

    /// Distinct probes before forgeable evidence may be acted on: never fewer than the
    /// trigger itself.
    fn forgeable_needed(&self) -> usize {
        usize::try_from(self.forgeable.max(self.trigger).max(1)).unwrap_or(usize::MAX)
    }

    /// Probes kept per source: enough for the higher threshold.
    fn needed(&self) -> usize {
        self.log_needed().max(self.forgeable_needed())
    }

    /// Records one proven probe (a completed handshake) from `src` at `now`; see
    /// [`TriggerTable::observe_evidence`].
    pub fn observe(&mut self, src: IpAddr, proto: Proto, port: u16, now: Instant) -> Observation {
        self.observe_evidence(src, proto, port, true, now)
    }

    /// Records one probe from `src` at `now` and says whether the source has crossed the
    /// trigger, and whether its evidence is enough to act on (`proven`: this probe was a
    /// completed handshake). An IPv4-mapped IPv6 source counts as its IPv4 address.
    pub fn observe_evidence(
        &mut self,
        src: IpAddr,
        proto: Proto,
        port: u16,
        proven: bool,
        now: Instant,
    ) -> Observation {
        let src = src.to_canonical();
        let key = self.key(src);
        let needed = self.needed();
        let (log_needed, forgeable_needed) = (self.log_needed(), self.forgeable_needed());
        // A window under a millisecond (but not zero: never) is one.
        let window = match self.window.as_millis() {
            0 if !self.window.is_zero() => 1,
            ms => u64::try_from(ms).unwrap_or(u64::MAX),
        };
        let now = self.clock.stamp(now);
        let expired = |seen: Stamp| window != 0 && now.saturating_sub(seen) > window;

        let proven_hosts = &mut self.proven;
        let s = match self.sources.touch(&key) {
            Some(s) => {
                if expired(s.last_seen) {
                    forget_proven(proven_hosts, key, s);
                    s.reset(now);
                } else {
                    s.probes.retain(|p| !expired(p.seen()));
                    s.last_seen = now;
                }
                s
            }
            None => self.sources.insert_with(
                key,
                || Source::new(now),
                |evicted, s| {
                    forget_proven(proven_hosts, evicted, s);
                    s.reset(now);
                },
            ),
        };
        record_probe(s, Probe::new(proto, port, now), needed);
        let hosts = if proven || s.has_proven {
            Some(proven_hosts.entry(key).or_default())
        } else {
            None
        };
        judge(s, hosts, src, proven, log_needed, forgeable_needed)
    }

    /// Changes the settings and keeps every source's probes: a reload does not reset a slow
    /// scanner's count. A smaller capacity evicts the least recently seen sources; a smaller
    /// trigger keeps each source's most recent probes.
    pub fn reconfigure(&mut self, trigger: u32, window: Duration, capacity: usize) {
        self.trigger = trigger;
        self.reconfigure_tail(window, capacity);
    }

    /// Follows a change of `SCAN_PREFIX_V4` / `_V6`: the counts of the old prefixes mean
    /// nothing for the new ones, so the table starts afresh (only when they changed).
    pub fn reconfigure_prefixes(&mut self, v4: u8, v6: u8) {
        let (v4, v6) = (v4.min(32), v6.min(128));
        if (v4, v6) != (self.prefix_v4, self.prefix_v6) {
            self.prefix_v4 = v4;
            self.prefix_v6 = v6;
            self.sources.clear();
            self.proven.clear();
        }
    }

    /// [`TriggerTable::reconfigure`] with the forgeable trigger too.
    pub fn reconfigure_evidence(
        &mut self,
        trigger: u32,
        forgeable: u32,
        window: Duration,
        capacity: usize,
    ) {
        self.trigger = trigger;
        self.forgeable = forgeable;
        self.reconfigure_tail(window, capacity);
    }

    fn reconfigure_tail(&mut self, window: Duration, capacity: usize) {
        self.window = window;
        while self.sources.len() > capacity.max(1) {
            if let Some((key, s)) = self.sources.pop_oldest() {
                forget_proven(&mut self.proven, key, &s);
            }
        }
        self.sources.set_capacity(capacity);
        let needed = self.needed();
        for s in self.sources.values_mut() {
            if s.probes.len() > needed {
                s.probes.sort_by_key(|p| std::cmp::Reverse(p.seen()));
                s.probes.truncate(needed);
            }
        }
    }

    /// Sources currently tracked; never above the capacity.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// True when no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The most sources tracked at once.
    pub fn capacity(&self) -> usize {
        self.sources.capacity()
    }

    /// Whether `src` (its prefix) is tracked (not yet evicted).
    pub fn contains(&self, src: IpAddr) -> bool {
        self.sources.contains(&self.key(src.to_canonical()))
    }
}

fn count_of(s: &Source) -> u32 {
    u32::try_from(s.probes.len()).unwrap_or(u32::MAX)
}

/// Forgets the proven hosts of `key` as its source goes (evicted or quiet for a window).
fn forget_proven(proven: &mut ProvenHosts, key: u128, s: &Source) {
    if s.has_proven {
        proven.remove(&key);
    }
}

/// Marks the thresholds a source (prefix) has reached, sticky until it goes quiet for a
/// window, and whether `host`'s probe may be acted on: at the trigger when `host` proved
/// itself, at the forgeable trigger otherwise (the prefix's ports counted either way).
/// `hosts` are the prefix's proven hosts, when it has some or this probe proves one.
fn judge(
    s: &mut Source,
    hosts: Option<&mut Vec<IpAddr>>,
    host: IpAddr,
    proven: bool,
    log_needed: usize,
    forgeable_needed: usize,
) -> Observation {
    let mut host_proven = proven;
    if let Some(hosts) = hosts {
        let known = hosts.contains(&host);
        host_proven |= known;
        if proven && !known && hosts.len() < PROVEN_HOSTS {
            hosts.push(host);
        }
        s.has_proven = !hosts.is_empty();
    }
    let held = s.probes.len();
    if held >= log_needed {
        s.fired = true;
    }
    if s.fired && held >= forgeable_needed {
        // Enough distinct ports that even forged evidence is acted on: sticky.
        s.actionable = true;
    }
    let actionable = s.actionable || (s.fired && host_proven && held >= log_needed);
    Observation {
        count: count_of(s),
        fired: s.fired,
        actionable,
    }
}

/// Adds or refreshes one (proto, port) in a source's probes. A repeated port only refreshes
/// its time. Once the set is full, a new port replaces the oldest one, so the set follows the
/// scanner without growing.
fn record_probe(s: &mut Source, probe: Probe, needed: usize) {
    if let Some(p) = s.probes.iter_mut().find(|p| p.same_port(probe)) {
        *p = probe;
    } else if s.probes.len() < needed {
        s.probes.push(probe);
    } else if let Some(oldest) = s.probes.iter_mut().min_by_key(|p| p.seen()) {
        *oldest = probe;
    }
}

/// Second filter: counts each source's distinct probes and drops them until the trigger.
#[derive(Debug)]
pub struct TriggerFilter {
    table: TriggerTable,
}

impl TriggerFilter {
    /// A filter with the config's trigger, window and table size.
    pub fn new(config: &Config) -> TriggerFilter {
        TriggerFilter {
            table: TriggerTable::from_config(config),
        }
    }

    /// The decision, with the clock passed in: fills `count` and `actionable`, drops below
    /// the trigger.
    pub fn inspect_at(&mut self, candidate: &mut Candidate, now: Instant) -> Verdict {
        let hit = &candidate.hit;
        let proven = hit.kind.is_proven();
        let obs = self
            .table
            .observe_evidence(hit.src, hit.proto(), hit.port, proven, now);
        candidate.count = obs.count;
        candidate.actionable = obs.actionable;
        if obs.fired {
            Verdict::Pass
        } else {
            Verdict::Drop(DropReason::BelowTrigger)
        }
    }

    /// The state, for status reports and tests.
    pub fn table(&self) -> &TriggerTable {
        &self.table
    }
}

impl Filter for TriggerFilter {
    fn name(&self) -> &'static str {
        "trigger"
    }

    fn inspect(&mut self, candidate: &mut Candidate, now: Instant) -> Verdict {
        self.inspect_at(candidate, now)
    }

    fn reconfigure(&mut self, c: &Config, _ignore: &Arc<IgnoreList>) {
        self.table
            .reconfigure_prefixes(c.scan_prefix_v4, c.scan_prefix_v6);
        self.table.reconfigure_evidence(
            c.scan_trigger,
            c.forgeable_scan_trigger,
            c.scan_trigger_window,
            c.scan_trigger_table_size,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Hit, Mode, ProbeKind};
    use std::net::Ipv4Addr;
    use std::path::Path;

    const HOUR: Duration = Duration::from_secs(3600);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_v6_prefix_rotating_its_address_adds_up_its_ports() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(3, HOUR, 10).with_prefixes(32, 64);
        assert!(!t.observe(ip("2001:db8:1:2::a"), Proto::Tcp, 1, t0).fired);
        assert!(!t.observe(ip("2001:db8:1:2::b"), Proto::Tcp, 2, t0).fired);
        let third = t.observe(ip("2001:db8:1:2:ffff::c"), Proto::Tcp, 3, t0);
        assert!(third.fired && third.actionable, "{third:?}");
        assert_eq!(third.count, 3);
        // Control: another /64 starts from nothing, and so does IPv4 per host at /32.
        assert!(!t.observe(ip("2001:db8:1:3::a"), Proto::Tcp, 4, t0).fired);
        assert!(!t.observe(ip("10.0.0.1"), Proto::Tcp, 1, t0).fired);
        assert!(!t.observe(ip("10.0.0.2"), Proto::Tcp, 2, t0).fired);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_proven_neighbour_does_not_make_forged_probes_of_its_prefix_actionable() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 10)
            .with_forgeable(5)
            .with_prefixes(24, 64);
        let proven = t.observe_evidence(ip("10.0.0.1"), Proto::Tcp, 1, true, t0);
        assert!(!proven.fired);
        // A forged probe "from" the neighbour: the prefix fires, but it is no proof.
        let forged = t.observe_evidence(ip("10.0.0.2"), Proto::Tcp, 2, false, t0);
        assert!(forged.fired && !forged.actionable, "{forged:?}");
        // The proven host itself is actionable at the trigger (positive control).
        let again = t.observe_evidence(ip("10.0.0.1"), Proto::Tcp, 3, true, t0);
        assert!(again.actionable, "{again:?}");
        // Forged evidence reaching the forgeable trigger is acted on, from any host.
        t.observe_evidence(ip("10.0.0.3"), Proto::Tcp, 4, false, t0);
        let fifth = t.observe_evidence(ip("10.0.0.4"), Proto::Tcp, 5, false, t0);
        assert!(fifth.actionable, "{fifth:?}");
    }

    #[test]
    fn changing_the_prefix_lengths_starts_the_table_afresh() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 10).with_prefixes(32, 64);
        t.observe(ip("10.0.0.1"), Proto::Tcp, 1, t0);
        t.reconfigure_prefixes(32, 64);
        assert_eq!(t.len(), 1, "unchanged lengths keep the counts");
        t.reconfigure_prefixes(24, 64);
        assert!(t.is_empty());
        assert!(!t.observe(ip("10.0.0.1"), Proto::Tcp, 1, t0).fired);
        assert!(t.observe(ip("10.0.0.9"), Proto::Tcp, 2, t0).fired);
    }

    #[test]
    fn trigger_of_zero_fires_on_first_probe() {
        let mut t = TriggerTable::new(0, HOUR, 10);
        let o = t.observe(ip("10.0.0.1"), Proto::Tcp, 111, Instant::now());
        assert_eq!(
            o,
            Observation {
                count: 1,
                fired: true,
                actionable: true
            }
        );
    }

    #[test]
    fn trigger_of_one_fires_on_first_probe() {
        let mut t = TriggerTable::new(1, HOUR, 10);
        assert!(
            t.observe(ip("10.0.0.1"), Proto::Udp, 7, Instant::now())
                .fired
        );
    }

    #[test]
    fn trigger_of_three_fires_on_third_distinct_port() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(3, HOUR, 10);
        let src = ip("10.0.0.1");
        assert_eq!(
            t.observe(src, Proto::Tcp, 1, t0),
            Observation {
                count: 1,
                fired: false,
                actionable: false
            }
        );
        assert_eq!(
            t.observe(src, Proto::Tcp, 2, t0),
            Observation {
                count: 2,
                fired: false,
                actionable: false
            }
        );
        assert_eq!(
            t.observe(src, Proto::Tcp, 3, t0),
            Observation {
                count: 3,
                fired: true,
                actionable: true
            }
        );
    }

    #[test]
    fn repeated_port_does_not_count() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 10);
        let src = ip("10.0.0.1");
        for i in 0..5 {
            let o = t.observe(src, Proto::Tcp, 111, secs(t0, i));
            assert_eq!(
                o,
                Observation {
                    count: 1,
                    fired: false,
                    actionable: false
                }
            );
        }
        assert!(t.observe(src, Proto::Tcp, 112, secs(t0, 6)).fired);
    }

    #[test]
    fn same_port_on_other_protocol_is_distinct() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 10);
        let src = ip("10.0.0.1");
        assert!(!t.observe(src, Proto::Tcp, 53, t0).fired);
        assert!(t.observe(src, Proto::Udp, 53, t0).fired);
    }

    #[test]
    fn sources_are_counted_separately() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 10);
        assert!(!t.observe(ip("10.0.0.1"), Proto::Tcp, 1, t0).fired);
        assert!(!t.observe(ip("10.0.0.2"), Proto::Tcp, 2, t0).fired);
        assert!(t.observe(ip("10.0.0.1"), Proto::Tcp, 3, t0).fired);
    }

    #[test]
    fn ipv4_mapped_source_shares_state_with_ipv4() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 10);
        assert!(!t.observe(ip("10.0.0.1"), Proto::Tcp, 1, t0).fired);
        assert!(t.observe(ip("::ffff:10.0.0.1"), Proto::Tcp, 2, t0).fired);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn probes_older_than_the_window_no_longer_count() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(3, Duration::from_secs(60), 10);
        let src = ip("10.0.0.1");
        t.observe(src, Proto::Tcp, 1, t0);
        t.observe(src, Proto::Tcp, 2, secs(t0, 30));
        // Port 1 is 61 s old: it left the window, so this is the 2nd distinct probe.
        let o = t.observe(src, Proto::Tcp, 3, secs(t0, 61));
        assert_eq!(
            o,
            Observation {
                count: 2,
                fired: false,
                actionable: false
            }
        );
        assert!(t.observe(src, Proto::Tcp, 4, secs(t0, 62)).fired);
    }

    #[test]
    fn a_slow_scanner_within_the_window_is_caught() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(3, HOUR, 1000);
        let src = ip("10.0.0.1");
        t.observe(src, Proto::Tcp, 1, t0);
        // Others probing in between do not erase the count (1.2's ring of 50 did).
        for i in 0..100u32 {
            t.observe(
                IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)),
                Proto::Tcp,
                1,
                t0,
            );
        }
        t.observe(src, Proto::Tcp, 2, secs(t0, 1200));
        assert!(t.observe(src, Proto::Tcp, 3, secs(t0, 2400)).fired);
    }

    #[test]
    fn fired_source_keeps_passing_until_quiet_for_a_window() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, Duration::from_secs(60), 10);
        let src = ip("10.0.0.1");
        t.observe(src, Proto::Tcp, 1, t0);
        assert!(t.observe(src, Proto::Tcp, 2, secs(t0, 1)).fired);
        // Repeated and new ports after firing keep passing, every 50 s for a long time.
        for i in 1..20u64 {
            let o = t.observe(src, Proto::Tcp, 2 + (i as u16 % 2), secs(t0, 1 + 50 * i));
            assert!(o.fired, "probe {i}");
            assert!(o.count <= 2);
        }
        // Silent for more than the window: starts afresh.
        let later = secs(t0, 1 + 50 * 19 + 61);
        assert_eq!(
            t.observe(src, Proto::Tcp, 9, later),
            Observation {
                count: 1,
                fired: false,
                actionable: false
            }
        );
    }

    #[test]
    fn a_window_under_a_millisecond_still_expires() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, Duration::from_micros(500), 10);
        let src = ip("10.0.0.1");
        t.observe(src, Proto::Tcp, 1, t0);
        // Positive control: at once, the second port fires.
        assert!(t.observe(src, Proto::Tcp, 2, t0).fired);
        let later = t0 + Duration::from_millis(5);
        t.observe(src, Proto::Tcp, 3, later);
        assert!(
            !t.observe(src, Proto::Tcp, 4, later + Duration::from_millis(5))
                .fired
        );
    }

    #[test]
    fn zero_window_never_expires_probes() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, Duration::ZERO, 10);
        let src = ip("10.0.0.1");
        t.observe(src, Proto::Tcp, 1, t0);
        assert!(t.observe(src, Proto::Tcp, 2, secs(t0, 10 * 86400)).fired);
    }

    #[test]
    fn full_table_evicts_the_least_recently_seen_source() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 3);
        let (a, b, c, d) = (
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            ip("10.0.0.3"),
            ip("10.0.0.4"),
        );
        t.observe(a, Proto::Tcp, 1, t0);
        t.observe(b, Proto::Tcp, 1, t0);
        t.observe(c, Proto::Tcp, 1, t0);
        // `a` probes again: `b` is now the least recently seen.
        t.observe(a, Proto::Tcp, 1, secs(t0, 1));
        t.observe(d, Proto::Tcp, 1, secs(t0, 2));
        assert_eq!(t.len(), 3);
        assert!(t.contains(a) && t.contains(c) && t.contains(d));
        assert!(!t.contains(b));
        // `a` kept its count through the churn.
        assert!(t.observe(a, Proto::Tcp, 2, secs(t0, 3)).fired);
        // `b` starts afresh.
        assert_eq!(
            t.observe(b, Proto::Tcp, 2, secs(t0, 4)),
            Observation {
                count: 1,
                fired: false,
                actionable: false
            }
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_million_forged_sources() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(3, HOUR, 1000);
        for i in 0..1_000_000u32 {
            t.observe(
                IpAddr::V4(Ipv4Addr::from(i)),
                Proto::Tcp,
                (i % 1024) as u16,
                t0,
            );
            assert!(t.len() <= 1000);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.sources.keys_oldest_first().count(), 1000);
        let (slots, index) = t.sources.allocated();
        assert!(slots <= 1000 && index < 4096, "{slots} {index}");
        // The survivors are the most recent ones.
        assert!(t.contains(IpAddr::V4(Ipv4Addr::from(999_999))));
        assert!(!t.contains(IpAddr::V4(Ipv4Addr::from(998_999))));
    }

    #[test]
    fn a_source_is_small() {
        // A forged flood writes one per probe: key, links and state in 80 bytes.
        assert!(
            std::mem::size_of::<Source>() <= 56,
            "{}",
            std::mem::size_of::<Source>()
        );
        assert_eq!(std::mem::size_of::<Probe>(), 8);
    }

    #[test]
    fn a_probe_keeps_its_port_protocol_and_time() {
        let p = Probe::new(Proto::Udp, 65535, 12_345);
        assert_eq!(p.seen(), 12_345);
        assert!(p.same_port(Probe::new(Proto::Udp, 65535, 0)));
        assert!(!p.same_port(Probe::new(Proto::Tcp, 65535, 12_345)));
        assert!(!p.same_port(Probe::new(Proto::Udp, 65534, 12_345)));
        // Past 34 years the stamp stays at its most.
        assert_eq!(Probe::new(Proto::Tcp, 1, u64::MAX).seen(), STAMP_MAX);
        assert!(Probe::new(Proto::Tcp, 1, u64::MAX).same_port(Probe::new(Proto::Tcp, 1, 0)));
    }

    #[test]
    fn an_evicted_prefix_forgets_its_proven_hosts() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 2).with_forgeable(5);
        let host = ip("10.0.0.1");
        // Proven once: its next probe (the second port) is acted on at the trigger.
        assert!(!t.observe_evidence(host, Proto::Tcp, 1, true, t0).fired);
        assert!(
            t.observe_evidence(host, Proto::Tcp, 2, false, t0)
                .actionable
        );
        assert_eq!(t.proven.len(), 1);
        // Two other sources evict it: its proof goes with it.
        t.observe_evidence(ip("10.0.0.2"), Proto::Tcp, 1, false, t0);
        t.observe_evidence(ip("10.0.0.3"), Proto::Tcp, 1, false, t0);
        assert!(!t.contains(host));
        assert!(t.proven.is_empty(), "{:?}", t.proven);
        // Back, forged: counted afresh and not acted on at the trigger.
        t.observe_evidence(host, Proto::Tcp, 1, false, t0);
        let o = t.observe_evidence(host, Proto::Tcp, 2, false, t0);
        assert!(o.fired && !o.actionable, "{o:?}");
    }

    #[test]
    fn a_prefix_quiet_for_a_window_forgets_its_proven_hosts() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, Duration::from_secs(60), 10).with_forgeable(5);
        let host = ip("10.0.0.1");
        t.observe_evidence(host, Proto::Tcp, 1, true, t0);
        assert!(
            t.observe_evidence(host, Proto::Tcp, 2, false, t0)
                .actionable
        );
        let later = secs(t0, 61);
        t.observe_evidence(host, Proto::Tcp, 1, false, later);
        assert!(t.proven.is_empty());
        let o = t.observe_evidence(host, Proto::Tcp, 2, false, later);
        assert!(o.fired && !o.actionable, "{o:?}");
        // Shrinking the table forgets the proofs of the sources it drops.
        t.observe_evidence(ip("10.0.0.9"), Proto::Tcp, 1, true, later);
        assert_eq!(t.proven.len(), 1);
        t.observe_evidence(host, Proto::Tcp, 3, false, later);
        t.reconfigure(2, Duration::from_secs(60), 1);
        assert!(t.contains(host));
        assert!(t.proven.is_empty() && t.len() == 1);
    }

    #[test]
    fn ports_per_source_are_capped_at_the_trigger() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(4, HOUR, 10);
        let src = ip("10.0.0.1");
        for port in 1..=1000u16 {
            t.observe(src, Proto::Tcp, port, t0);
        }
        let s = t.sources.touch(&t.key(src)).unwrap();
        assert_eq!(s.probes.len(), 4);
        assert!(s.probes.capacity() <= 8);
    }

    #[test]
    fn reconfigure_keeps_counts() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(3, HOUR, 10);
        let src = ip("10.0.0.1");
        t.observe(src, Proto::Tcp, 1, t0);
        t.observe(src, Proto::Tcp, 2, t0);
        t.reconfigure(4, HOUR, 10);
        assert_eq!(
            t.observe(src, Proto::Tcp, 3, t0),
            Observation {
                count: 3,
                fired: false,
                actionable: false
            }
        );
        assert!(t.observe(src, Proto::Tcp, 4, t0).fired);
    }

    #[test]
    fn reconfigure_to_a_lower_trigger_fires_on_the_next_probe() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(5, HOUR, 10);
        let src = ip("10.0.0.1");
        for port in 1..=3 {
            t.observe(src, Proto::Tcp, port, secs(t0, u64::from(port)));
        }
        t.reconfigure(2, HOUR, 10);
        assert_eq!(
            t.sources.touch(&t.key(src)).map(|s| s.probes.len()),
            Some(2),
            "kept the most recent probes"
        );
        assert!(t.observe(src, Proto::Tcp, 3, secs(t0, 4)).fired);
    }

    #[test]
    fn shrinking_capacity_evicts_the_oldest() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(2, HOUR, 10);
        for i in 1..=5u8 {
            t.observe(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
                Proto::Tcp,
                1,
                secs(t0, u64::from(i)),
            );
        }
        t.reconfigure(2, HOUR, 2);
        assert_eq!(t.len(), 2);
        assert!(t.contains(ip("10.0.0.4")) && t.contains(ip("10.0.0.5")));
        assert!(t.observe(ip("10.0.0.5"), Proto::Tcp, 2, secs(t0, 6)).fired);
        assert_eq!(t.len(), 2);
    }

    fn alert(src: &str, port: u16, mode: Mode) -> Candidate {
        Candidate {
            hit: Hit::now(ip(src), port, mode, ProbeKind::Syn),
            count: 0,
            already_blocked: false,
            actionable: true,
        }
    }

    fn config(trigger: u32) -> Config {
        let mut c = crate::config::build::defaults(Path::new("x.conf"));
        c.scan_trigger = trigger;
        c
    }

    #[test]
    fn filter_drops_below_trigger_and_fills_count() {
        let t0 = Instant::now();
        let mut f = TriggerFilter::new(&config(2));
        let mut a = alert("10.0.0.1", 1, Mode::Stcp);
        assert_eq!(
            f.inspect_at(&mut a, t0),
            Verdict::Drop(DropReason::BelowTrigger)
        );
        assert_eq!(a.count, 1);
        let mut b = alert("10.0.0.1", 2, Mode::Stcp);
        assert_eq!(f.inspect_at(&mut b, t0), Verdict::Pass);
        assert_eq!(b.count, 2);
        // After firing, later probes keep passing so the daemon can say "already blocked".
        let mut c = alert("10.0.0.1", 2, Mode::Stcp);
        assert_eq!(f.inspect_at(&mut c, t0), Verdict::Pass);
    }

    #[test]
    fn filter_counts_tcp_and_udp_modes_together() {
        let t0 = Instant::now();
        let mut f = TriggerFilter::new(&config(2));
        let mut a = alert("10.0.0.1", 7, Mode::Audp);
        assert_eq!(
            f.inspect_at(&mut a, t0),
            Verdict::Drop(DropReason::BelowTrigger)
        );
        let mut b = alert("10.0.0.1", 7, Mode::Atcp);
        assert_eq!(f.inspect_at(&mut b, t0), Verdict::Pass);
    }

    #[test]
    fn filter_reconfigure_keeps_counts() {
        let t0 = Instant::now();
        let mut f = TriggerFilter::new(&config(3));
        f.inspect_at(&mut alert("10.0.0.1", 1, Mode::Stcp), t0);
        f.inspect_at(&mut alert("10.0.0.1", 2, Mode::Stcp), t0);
        let mut c = config(3);
        c.scan_trigger_table_size = 5;
        f.reconfigure(&c, &Default::default());
        assert_eq!(f.table().capacity(), 5);
        let mut a = alert("10.0.0.1", 3, Mode::Stcp);
        assert_eq!(f.inspect_at(&mut a, t0), Verdict::Pass);
        assert_eq!(a.count, 3);
    }

    #[test]
    fn forgeable_evidence_is_logged_at_the_trigger_but_acted_on_at_the_forgeable_trigger() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(0, HOUR, 10).with_forgeable(3);
        let src = ip("10.0.0.1");
        let o = t.observe_evidence(src, Proto::Tcp, 1, false, t0);
        assert!(o.fired && !o.actionable, "{o:?}");
        assert!(
            !t.observe_evidence(src, Proto::Tcp, 1, false, t0).actionable,
            "same port"
        );
        assert!(!t.observe_evidence(src, Proto::Udp, 2, false, t0).actionable);
        let o = t.observe_evidence(src, Proto::Tcp, 3, false, t0);
        assert_eq!(
            o,
            Observation {
                count: 3,
                fired: true,
                actionable: true
            }
        );
        // Another source's one forged packet stays below.
        assert!(
            !t.observe_evidence(ip("10.0.0.2"), Proto::Tcp, 9, false, t0)
                .actionable
        );
    }

    #[test]
    fn a_handshake_proves_the_source_and_acts_at_the_1_2_trigger() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(0, HOUR, 10).with_forgeable(3);
        assert!(
            t.observe_evidence(ip("10.0.0.1"), Proto::Tcp, 1, true, t0)
                .actionable
        );
        // A source that proved itself is judged by the 1.2 trigger for its raw probes too.
        let src = ip("10.0.0.2");
        assert!(!t.observe_evidence(src, Proto::Tcp, 1, false, t0).actionable);
        assert!(t.observe_evidence(src, Proto::Tcp, 2, true, t0).actionable);
        assert!(t.observe_evidence(src, Proto::Tcp, 3, false, t0).actionable);
    }

    #[test]
    fn the_forgeable_trigger_is_never_below_scan_trigger() {
        let t0 = Instant::now();
        let mut t = TriggerTable::new(5, HOUR, 10).with_forgeable(3);
        let src = ip("10.0.0.1");
        for port in 1..=4 {
            let o = t.observe_evidence(src, Proto::Tcp, port, false, t0);
            assert!(!o.fired && !o.actionable, "{port}: {o:?}");
        }
        let o = t.observe_evidence(src, Proto::Tcp, 5, false, t0);
        assert!(o.fired && o.actionable);
    }

    #[test]
    fn filter_marks_raw_probes_below_the_forgeable_trigger_as_not_actionable() {
        let mut config = crate::config::build::defaults(Path::new("p.conf"));
        config.scan_trigger = 0;
        config.forgeable_scan_trigger = 2;
        let mut f = TriggerFilter::new(&config);
        let t0 = Instant::now();
        let alert = |port, kind| Candidate {
            hit: Hit::now(ip("10.0.0.9"), port, Mode::Stcp, kind),
            count: 0,
            already_blocked: false,
            actionable: true,
        };
        let mut first = alert(1, ProbeKind::Syn);
        assert_eq!(f.inspect_at(&mut first, t0), Verdict::Pass);
        assert!(!first.actionable);
        let mut second = alert(2, ProbeKind::Fin);
        assert_eq!(f.inspect_at(&mut second, t0), Verdict::Pass);
        assert!(second.actionable);
    }
}
