//! A set of ports as a 65536-bit map: one lookup per captured packet costs a shift and a
//! mask, and the set turns into the port ranges the kernel prefilter tests.

use std::fmt;

/// Ports 0..=65535 as bits (8 KiB, allocated once per set).
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    bits: Box<[u64; 1024]>,
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet {
            bits: Box::new([0u64; 1024]),
        }
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.intervals().iter().map(|(a, b)| a..=b))
            .finish()
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut s = PortSet::default();
        for p in iter {
            s.insert(p);
        }
        s
    }
}

impl PortSet {
    /// Whether the port is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port >> 6)] & (1u64 << (port & 63)) != 0
    }

    /// Adds a port.
    pub fn insert(&mut self, port: u16) {
        self.bits[usize::from(port >> 6)] |= 1u64 << (port & 63);
    }

    /// Removes a port.
    pub fn remove(&mut self, port: u16) {
        self.bits[usize::from(port >> 6)] &= !(1u64 << (port & 63));
    }

    /// Empties the set, keeping its allocation.
    pub fn clear(&mut self) {
        self.bits.fill(0);
    }

    /// Adds every port of `other`.
    pub fn union_with(&mut self, other: &PortSet) {
        for (a, b) in self.bits.iter_mut().zip(other.bits.iter()) {
            *a |= *b;
        }
    }

    /// Number of ports in the set.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when no port is in the set.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The ports in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(move |p| self.contains(*p))
    }

    /// The set as sorted, disjoint, non-adjacent inclusive ranges.
    pub fn intervals(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for p in self.iter() {
            match out.last_mut() {
                Some((_, hi)) if u32::from(*hi) + 1 == u32::from(p) => *hi = p,
                _ => out.push((p, p)),
            }
        }
        out
    }
}

/// Merges the ranges separated by the smallest gaps until at most `max` remain, so any set
/// fits in a kernel filter of bounded size. The result covers a superset of the input; the
/// sensor still checks every packet against the exact set.
pub fn coarsen(mut ranges: Vec<(u16, u16)>, max: usize) -> Vec<(u16, u16)> {
    let max = max.max(1);
    while ranges.len() > max {
        // Gap sizes between neighbours; merge every gap at or below the smallest's size
        // that is needed, in one pass, so this stays fast for 30 000 ranges.
        let mut gaps: Vec<u32> = ranges
            .windows(2)
            .map(|w| u32::from(w[1].0) - u32::from(w[0].1))
            .collect();
        gaps.sort_unstable();
        let excess = ranges.len() - max;
        let threshold = gaps[excess - 1];
        let mut merges_left = excess;
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(max);
        for r in ranges {
            match out.last_mut() {
                Some(last)
                    if merges_left > 0 && u32::from(r.0) - u32::from(last.1) <= threshold =>
                {
                    last.1 = r.1;
                    merges_left -= 1;
                }
                _ => out.push(r),
            }
        }
        ranges = out;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_contains_len() {
        let mut s = PortSet::default();
        assert!(s.is_empty());
        s.insert(0);
        s.insert(63);
        s.insert(64);
        s.insert(65535);
        assert!(s.contains(0) && s.contains(63) && s.contains(64) && s.contains(65535));
        assert!(!s.contains(1));
        assert_eq!(s.len(), 4);
        s.remove(63);
        assert!(!s.contains(63));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 64, 65535]);
    }

    #[test]
    fn intervals_join_adjacent_ports() {
        let s: PortSet = [1, 2, 3, 5, 7, 8, 65535].into_iter().collect();
        assert_eq!(s.intervals(), vec![(1, 3), (5, 5), (7, 8), (65535, 65535)]);
        let advanced: PortSet = (1..1024u16)
            .filter(|p| ![22, 113, 139].contains(p))
            .collect();
        assert_eq!(
            advanced.intervals(),
            vec![(1, 21), (23, 112), (114, 138), (140, 1023)]
        );
    }

    #[test]
    fn coarsen_keeps_a_superset_within_the_budget() {
        let every_other: PortSet = (0..20000u16).filter(|p| p % 2 == 0).collect();
        let ranges = every_other.intervals();
        assert_eq!(ranges.len(), 10000);
        let c = coarsen(ranges, 100);
        assert!(c.len() <= 100, "{} ranges", c.len());
        for p in every_other.iter() {
            assert!(c.iter().any(|(a, b)| (*a..=*b).contains(&p)), "{p} lost");
        }
        // Sorted and disjoint.
        for w in c.windows(2) {
            assert!(w[0].1 < w[1].0);
        }
    }

    #[test]
    fn coarsen_leaves_small_sets_alone() {
        let r = vec![(1, 3), (10, 10), (20, 30)];
        assert_eq!(coarsen(r.clone(), 3), r);
        assert_eq!(coarsen(r, 1), vec![(1, 30)]);
    }
}
