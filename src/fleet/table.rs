//! The decisions pulled from the fleet, as the pull thread keeps them: a bounded table of
//! decisions (by the LAPI's id) and of what the kernel's fleet sets hold, turned into one
//! transaction of interval changes per pull. Pure: decisions, a judge and the time in;
//! changes and counts out; unit-tested without a kernel or a LAPI.
//!
//! - A decision stream's `new` adds (or renews) decisions and `deleted` removes them, by
//!   id: several decisions may name one target (CAPI and a local scenario), and the target
//!   stays until the last one goes. Decisions past their end are dropped at the next pull
//!   (the kernel has expired their element on its own by then).
//! - Networks nest or are disjoint, and the kernel refuses overlapping intervals: the kernel
//!   holds only the widest of nested targets (a host inside a banned range is counted,
//!   not written), and a narrower one comes back when the wider one ends first.
//! - At most `CROWDSEC_MAX_DECISIONS` decisions are held; beyond, new ones are counted and
//!   left out (one summary line when the limit is first reached).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::respond::nftables::IntervalChanges;

/// Distinct origins counted apart; more are counted as [`OTHER_ORIGIN`].
const MAX_ORIGINS: usize = 64;
/// Where the origins beyond [`MAX_ORIGINS`] are counted.
pub const OTHER_ORIGIN: &str = "other";

/// One decision of a pull, as the table takes it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The LAPI's id of the decision.
    pub id: i64,
    /// Its host or network.
    pub target: IpNet,
    /// Time it has left.
    pub left: Duration,
    /// Who made it (`CAPI`, `crowdsec`, `cscli-import`…).
    pub origin: &'a str,
}

/// What the pull thread's judge says of a decision before the table takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take it.
    Apply,
    /// Never block this target (protected, ignored, this host's): counted, named at debug.
    Refuse(String),
    /// Blocked by this host already (its own decision coming back): nothing to do.
    Here,
}

/// What one pull did.
#[derive(Debug, Default)]
pub struct Pulled {
    /// The kernel's changes, for one transaction.
    pub changes: IntervalChanges,
    /// Decisions taken (new ones; renewals are not counted).
    pub added: usize,
    /// Decisions gone (deleted, or past their end).
    pub removed: usize,
    /// Decisions refused, with why.
    pub refused: Vec<(IpNet, String)>,
    /// Decisions for targets this host blocks already.
    pub here: usize,
    /// Decisions left out because the table was full.
    pub over_limit: usize,
    /// The table became full in this pull (say it once).
    pub limit_reached: bool,
}

impl Pulled {
    /// Whether the pull changed anything worth a log line.
    pub fn changed(&self) -> bool {
        self.added + self.removed + self.refused.len() + self.over_limit > 0
            || !self.changes.is_empty()
    }
}

/// One held decision.
#[derive(Debug, Clone, Copy)]
struct Held {
    target: IpNet,
    /// End, in ms since the Unix epoch.
    until: u64,
    /// Index into `origins`.
    origin: u16,
}

/// The decisions naming one target: almost always one.
#[derive(Debug, Clone)]
enum Ids {
    One(i64),
    Many(Vec<i64>),
}

impl Ids {
    fn iter(&self) -> impl Iterator<Item = &i64> {
        match self {
            Ids::One(id) => std::slice::from_ref(id).iter(),
            Ids::Many(v) => v.iter(),
        }
    }
}

/// The table. See the module doc.
#[derive(Debug)]
pub struct DecisionTable {
    max: usize,
    /// Whether kernel elements expire on their own (nftables timeouts; routes do not).
    kernel_expires: bool,
    decisions: HashMap<i64, Held>,
    by_target: HashMap<IpNet, Ids>,
    /// (end, id), soonest first; stale entries (renewed or gone) are skipped.
    expiries: BinaryHeap<Reverse<(u64, i64)>>,
    /// What the kernel's fleet sets hold: each element and its end (ms).
    kernel: HashMap<IpNet, u64>,
    /// Networks (not hosts) among the targets, per family (IPv4, IPv6), by prefix length:
    /// the only lengths a target can be covered at.
    range_lens: [BTreeMap<u8, usize>; 2],
    origins: Vec<String>,
    per_origin: Vec<u64>,
    /// The limit was reached and said; re-armed once the table has room again.
    full: bool,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn fam(t: &IpNet) -> usize {
    match t {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

fn is_range(t: &IpNet) -> bool {
    t.prefix_len() < t.max_prefix_len()
}

impl DecisionTable {
    /// An empty table holding at most `max` decisions, for a kernel whose elements expire
    /// on their own (`kernel_expires`: nftables timeouts) or must be deleted (routes).
    pub fn new(max: usize, kernel_expires: bool) -> DecisionTable {
        DecisionTable {
            max,
            kernel_expires,
            decisions: HashMap::new(),
            by_target: HashMap::new(),
            expiries: BinaryHeap::new(),
            kernel: HashMap::new(),
            range_lens: [BTreeMap::new(), BTreeMap::new()],
            origins: Vec::new(),
            per_origin: Vec::new(),
            full: false,
        }
    }

    /// Decisions held.
    pub fn len(&self) -> usize {
        self.decisions.len()
    }

    /// True when no decision is held.
    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty()
    }

    /// Elements the kernel's fleet sets hold (as the table wrote them).
    pub fn elements(&self) -> usize {
        self.kernel.len()
    }

    /// Decisions held per origin, largest first (origins with none left out).
    pub fn counts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .origins
            .iter()
            .zip(&self.per_origin)
            .filter(|(_, n)| **n > 0)
            .map(|(o, n)| (o.clone(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// The elements the kernel holds (as the table wrote them), each with its end.
    pub fn written(&self) -> impl Iterator<Item = (&IpNet, SystemTime)> {
        self.kernel
            .iter()
            .map(|(t, &until)| (t, SystemTime::UNIX_EPOCH + Duration::from_millis(until)))
    }

    /// Whether `target` is held (by any decision).
    pub fn holds(&self, target: &IpNet) -> bool {
        self.by_target.contains_key(&target.trunc())
    }

    /// Takes one pull of the stream at `now`: with `startup`, the answer holds every active
    /// decision and replaces the table (and the kernel's fleet sets, emptied in the same
    /// transaction); otherwise `new` adds or renews decisions and `deleted` (ids) removes
    /// them. Decisions past their end are dropped first. `judge` says, for each new
    /// decision's target and origin, whether to take it.
    pub fn pull<'a>(
        &mut self,
        startup: bool,
        new: impl IntoIterator<Item = Incoming<'a>>,
        deleted: impl IntoIterator<Item = i64>,
        mut judge: impl FnMut(&IpNet, &str) -> Verdict,
        now: SystemTime,
    ) -> Pulled {
        let now = ms(now);
        let mut out = Pulled::default();
        let mut touched: Vec<IpNet> = Vec::new();
        if startup {
            let kept_origins = std::mem::take(&mut self.origins);
            *self = DecisionTable::new(self.max, self.kernel_expires);
            self.origins = kept_origins;
            self.per_origin = vec![0; self.origins.len()];
        } else {
            out.removed += self.expire(now, &mut touched);
        }
        for d in new {
            let target = d.target.trunc();
            let renewal = self
                .decisions
                .get(&d.id)
                .is_some_and(|h| h.target == target);
            if !renewal {
                match judge(&target, d.origin) {
                    Verdict::Apply => {}
                    Verdict::Refuse(why) => {
                        out.refused.push((target, why));
                        continue;
                    }
                    Verdict::Here => {
                        out.here += 1;
                        continue;
                    }
                }
                if self.decisions.len() >= self.max {
                    out.over_limit += 1;
                    continue;
                }
                out.added += 1;
            }
            let left = u64::try_from(d.left.as_millis()).unwrap_or(u64::MAX);
            self.take(
                d.id,
                target,
                now.saturating_add(left),
                d.origin,
                &mut touched,
            );
        }
        for id in deleted {
            if self.drop_id(id, &mut touched) {
                out.removed += 1;
            }
        }
        if out.over_limit > 0 && !self.full {
            self.full = true;
            out.limit_reached = true;
        } else if self.decisions.len() < self.max - self.max / 10 {
            self.full = false;
        }
        if startup {
            out.changes = self.rewrite_at(now);
        } else if touched.iter().any(is_range) {
            let all: HashSet<IpNet> = self
                .by_target
                .keys()
                .chain(self.kernel.keys())
                .copied()
                .collect();
            for t in all {
                self.settle(t, now, &mut out.changes);
            }
        } else {
            touched.sort_unstable();
            touched.dedup();
            for t in touched {
                self.settle(t, now, &mut out.changes);
            }
        }
        out
    }

    /// The changes that make the kernel's fleet sets hold exactly what the table wants now,
    /// whatever they hold: emptied, then filled, in one transaction. For a start, and after
    /// a transaction the kernel refused (an element expired or deleted under our feet).
    pub fn rewrite(&mut self, now: SystemTime) -> IntervalChanges {
        self.rewrite_at(ms(now))
    }

    fn rewrite_at(&mut self, now: u64) -> IntervalChanges {
        self.kernel.clear();
        let mut changes = IntervalChanges {
            flush: true,
            ..IntervalChanges::default()
        };
        let targets: Vec<IpNet> = self.by_target.keys().copied().collect();
        for t in targets {
            self.settle(t, now, &mut changes);
        }
        changes
    }

    /// Drops the decisions past their end; returns how many.
    fn expire(&mut self, now: u64, touched: &mut Vec<IpNet>) -> usize {
        let mut n = 0;
        while let Some(Reverse((until, id))) = self.expiries.peek().copied() {
            if until > now {
                break;
            }
            self.expiries.pop();
            if self.decisions.get(&id).is_some_and(|h| h.until == until)
                && self.drop_id(id, touched)
            {
                n += 1;
            }
        }
        n
    }

    fn origin_index(&mut self, origin: &str) -> u16 {
        if let Some(i) = self.origins.iter().position(|o| o == origin) {
            return i as u16;
        }
        let name = if self.origins.len() < MAX_ORIGINS - 1 {
            origin
        } else {
            OTHER_ORIGIN
        };
        if let Some(i) = self.origins.iter().position(|o| o == name) {
            return i as u16;
        }
        self.origins.push(name.to_string());
        self.per_origin.push(0);
        (self.origins.len() - 1) as u16
    }

    fn take(&mut self, id: i64, target: IpNet, until: u64, origin: &str, touched: &mut Vec<IpNet>) {
        if let Some(h) = self.decisions.get_mut(&id) {
            if h.target == target {
                if h.until != until {
                    h.until = until;
                    self.expiries.push(Reverse((until, id)));
                    touched.push(target);
                }
                return;
            }
            self.drop_id(id, touched);
        }
        let origin = self.origin_index(origin);
        self.per_origin[origin as usize] += 1;
        self.decisions.insert(
            id,
            Held {
                target,
                until,
                origin,
            },
        );
        self.expiries.push(Reverse((until, id)));
        match self.by_target.get_mut(&target) {
            Some(Ids::One(other)) => {
                let other = *other;
                self.by_target.insert(target, Ids::Many(vec![other, id]));
            }
            Some(Ids::Many(v)) => v.push(id),
            None => {
                self.by_target.insert(target, Ids::One(id));
                if is_range(&target) {
                    *self.range_lens[fam(&target)]
                        .entry(target.prefix_len())
                        .or_default() += 1;
                }
            }
        }
        touched.push(target);
    }

    /// Forgets a decision; false when it was not held.
    fn drop_id(&mut self, id: i64, touched: &mut Vec<IpNet>) -> bool {
        let Some(h) = self.decisions.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_origin.get_mut(h.origin as usize) {
            *n = n.saturating_sub(1);
        }
        let last = match self.by_target.get_mut(&h.target) {
            Some(Ids::Many(v)) => {
                v.retain(|&x| x != id);
                if let [one] = v[..] {
                    self.by_target.insert(h.target, Ids::One(one));
                }
                false
            }
            Some(Ids::One(_)) => true,
            None => false,
        };
        if last {
            self.by_target.remove(&h.target);
            if is_range(&h.target) {
                let lens = &mut self.range_lens[fam(&h.target)];
                if let Some(n) = lens.get_mut(&h.target.prefix_len()) {
                    *n -= 1;
                    if *n == 0 {
                        lens.remove(&h.target.prefix_len());
                    }
                }
            }
        }
        touched.push(h.target);
        true
    }

    /// Whether a wider held target contains `t`.
    fn covered(&self, t: &IpNet) -> bool {
        self.range_lens[fam(t)]
            .range(..t.prefix_len())
            .any(|(&len, _)| {
                IpNet::new(t.addr(), len)
                    .is_ok_and(|wider| self.by_target.contains_key(&wider.trunc()))
            })
    }

    /// The end the kernel element of `t` should have, if the kernel should hold it.
    fn wanted(&self, t: &IpNet) -> Option<u64> {
        let ids = self.by_target.get(t)?;
        if self.covered(t) {
            return None;
        }
        ids.iter()
            .filter_map(|id| self.decisions.get(id))
            .map(|h| h.until)
            .max()
    }

    /// Brings the kernel's element of `t` in line with the table, writing the change.
    /// Elements past their end are gone from the kernel already: they are forgotten, not
    /// deleted (a delete of an absent element would fail the whole transaction).
    fn settle(&mut self, t: IpNet, now: u64, changes: &mut IntervalChanges) {
        let want = self.wanted(&t).filter(|&w| w > now);
        let have = self.kernel.get(&t).copied();
        let present = |h: u64| h > now || !self.kernel_expires;
        match (want, have) {
            (Some(w), Some(h)) if w == h => {}
            (Some(w), have) => {
                if have.is_some_and(present) && !changes.flush {
                    changes.remove.push(t);
                }
                changes.add.push((t, Some(Duration::from_millis(w - now))));
                self.kernel.insert(t, w);
            }
            (None, Some(h)) => {
                if present(h) && !changes.flush {
                    changes.remove.push(t);
                }
                self.kernel.remove(&t);
            }
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn net(s: &str) -> IpNet {
        crate::record::parse_target(s).unwrap()
    }

    fn d(id: i64, target: &str, secs: u64) -> Incoming<'static> {
        Incoming {
            id,
            target: net(target),
            left: Duration::from_secs(secs),
            origin: "CAPI",
        }
    }

    fn apply(_: &IpNet, _: &str) -> Verdict {
        Verdict::Apply
    }

    fn added(p: &Pulled) -> Vec<(String, u64)> {
        let mut v: Vec<_> = p
            .changes
            .add
            .iter()
            .map(|(n, t)| (n.to_string(), t.map_or(0, |t| t.as_secs())))
            .collect();
        v.sort();
        v
    }

    fn removed(p: &Pulled) -> Vec<String> {
        let mut v: Vec<_> = p.changes.remove.iter().map(|n| n.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn startup_replaces_everything_in_one_flush_and_later_pulls_send_only_the_difference() {
        let mut t = DecisionTable::new(100, true);
        let p = t.pull(
            true,
            [d(1, "10.77.0.1", 60), d(2, "10.77.0.2", 120)],
            [],
            apply,
            at(0),
        );
        assert!(p.changes.flush);
        assert_eq!(
            added(&p),
            [("10.77.0.1/32".into(), 60), ("10.77.0.2/32".into(), 120)]
        );
        assert_eq!((p.added, t.len(), t.elements()), (2, 2, 2));
        // A later pull: one new, one deleted.
        let p = t.pull(false, [d(3, "fd77::3", 30)], [1], apply, at(10));
        assert!(!p.changes.flush);
        assert_eq!(added(&p), [("fd77::3/128".into(), 30)]);
        assert_eq!(removed(&p), ["10.77.0.1/32"]);
        assert_eq!((p.added, p.removed), (1, 1));
        // Nothing new: nothing to do, and a deletion delivered twice is no change.
        let p = t.pull(false, [], [1], apply, at(11));
        assert!(!p.changed(), "{p:?}");
    }

    #[test]
    fn a_target_stays_until_its_last_decision_goes_and_a_renewal_rewrites_its_timeout() {
        let mut t = DecisionTable::new(100, true);
        t.pull(true, [d(1, "10.77.0.1", 60)], [], apply, at(0));
        let p = t.pull(false, [d(2, "10.77.0.1", 300)], [], apply, at(0));
        assert_eq!(
            removed(&p),
            ["10.77.0.1/32"],
            "replaced with the longer end"
        );
        assert_eq!(added(&p), [("10.77.0.1/32".into(), 300)]);
        let p = t.pull(false, [], [2], apply, at(1));
        assert_eq!(
            added(&p),
            [("10.77.0.1/32".into(), 59)],
            "back to the other one"
        );
        let p = t.pull(false, [], [1], apply, at(2));
        assert_eq!(removed(&p), ["10.77.0.1/32"]);
        assert!(t.is_empty());
        assert_eq!(t.elements(), 0);
    }

    #[test]
    fn decisions_past_their_end_are_forgotten_without_a_delete() {
        let mut t = DecisionTable::new(100, true);
        t.pull(
            true,
            [d(1, "10.77.0.1", 5), d(2, "10.77.0.2", 500)],
            [],
            apply,
            at(0),
        );
        let p = t.pull(false, [], [], apply, at(6));
        assert_eq!(p.removed, 1);
        assert!(p.changes.is_empty(), "the kernel expired it: {p:?}");
        assert_eq!((t.len(), t.elements()), (1, 1));
    }

    #[test]
    fn the_kernel_holds_only_the_widest_of_nested_targets() {
        let mut t = DecisionTable::new(100, true);
        let p = t.pull(
            true,
            [
                d(1, "10.77.1.5", 600),
                d(2, "10.77.1.0/24", 60),
                d(3, "10.77.2.9", 60),
            ],
            [],
            apply,
            at(0),
        );
        assert_eq!(
            added(&p),
            [("10.77.1.0/24".into(), 60), ("10.77.2.9/32".into(), 60)]
        );
        assert_eq!((t.len(), t.elements()), (3, 2));
        // A wider range arrives: it replaces both.
        let p = t.pull(false, [d(4, "10.77.0.0/16", 30)], [], apply, at(1));
        assert_eq!(removed(&p), ["10.77.1.0/24", "10.77.2.9/32"]);
        assert_eq!(added(&p), [("10.77.0.0/16".into(), 30)]);
        // It goes: the narrower ones are back with their own ends.
        let p = t.pull(false, [], [4], apply, at(2));
        assert_eq!(removed(&p), ["10.77.0.0/16"]);
        assert_eq!(
            added(&p),
            [("10.77.1.0/24".into(), 58), ("10.77.2.9/32".into(), 58)]
        );
        // The /24 ends first: the host inside it is written, with its own time.
        let p = t.pull(false, [], [], apply, at(61));
        assert_eq!(added(&p), [("10.77.1.5/32".into(), 539)]);
        assert!(removed(&p).is_empty(), "expired ones are not deleted");
    }

    #[test]
    fn refused_and_local_targets_are_counted_and_never_written() {
        let mut t = DecisionTable::new(100, true);
        let judge = |n: &IpNet, _: &str| match n.to_string().as_str() {
            "10.77.0.1/32" => Verdict::Refuse("refused: 10.77.0.1 is protected (gateway)".into()),
            "10.77.0.2/32" => Verdict::Here,
            _ => Verdict::Apply,
        };
        let p = t.pull(
            true,
            [
                d(1, "10.77.0.1", 60),
                d(2, "10.77.0.2", 60),
                d(3, "10.77.0.3", 60),
            ],
            [],
            judge,
            at(0),
        );
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].0, net("10.77.0.1"));
        assert_eq!((p.here, p.added), (1, 1));
        assert_eq!(added(&p), [("10.77.0.3/32".into(), 60)]);
    }

    #[test]
    fn the_limit_leaves_new_decisions_out_and_is_said_once() {
        let mut t = DecisionTable::new(2, true);
        let p = t.pull(
            true,
            [
                d(1, "10.77.0.1", 60),
                d(2, "10.77.0.2", 60),
                d(3, "10.77.0.3", 60),
            ],
            [],
            apply,
            at(0),
        );
        assert_eq!((p.added, p.over_limit, p.limit_reached), (2, 1, true));
        let p = t.pull(false, [d(4, "10.77.0.4", 60)], [], apply, at(1));
        assert_eq!((p.over_limit, p.limit_reached), (1, false), "said once");
        // A renewal of a held decision still goes in.
        let p = t.pull(false, [d(1, "10.77.0.1", 600)], [], apply, at(1));
        assert_eq!(p.over_limit, 0);
        assert_eq!(added(&p), [("10.77.0.1/32".into(), 600)]);
    }

    #[test]
    fn counts_are_kept_per_origin() {
        let mut t = DecisionTable::new(100, true);
        let mut mine = d(3, "10.77.0.3", 60);
        mine.origin = "crowdsec";
        t.pull(
            true,
            [d(1, "10.77.0.1", 60), d(2, "10.77.0.2", 60), mine],
            [],
            apply,
            at(0),
        );
        assert_eq!(
            t.counts(),
            [("CAPI".to_string(), 2), ("crowdsec".to_string(), 1)]
        );
        t.pull(false, [], [1, 2], apply, at(1));
        assert_eq!(t.counts(), [("crowdsec".to_string(), 1)]);
    }

    #[test]
    fn routes_that_outlive_their_decision_are_deleted() {
        let mut t = DecisionTable::new(100, false);
        t.pull(true, [d(1, "10.77.0.1", 5)], [], apply, at(0));
        let p = t.pull(false, [], [], apply, at(6));
        assert_eq!(removed(&p), ["10.77.0.1/32"]);
    }

    #[test]
    fn a_rewrite_holds_everything_wanted_after_a_flush() {
        let mut t = DecisionTable::new(100, true);
        t.pull(
            true,
            [d(1, "10.77.0.1", 60), d(2, "10.77.0.0/24", 60)],
            [],
            apply,
            at(0),
        );
        let c = t.rewrite(at(1));
        assert!(c.flush && c.remove.is_empty());
        assert_eq!(
            c.add,
            [(net("10.77.0.0/24"), Some(Duration::from_secs(59)))]
        );
    }
}
