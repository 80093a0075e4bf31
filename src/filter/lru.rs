//! A map with a fixed capacity that forgets its least recently used entry, for the
//! per-source SCAN_TRIGGER table.
//!
//! During a flood of forged sources every probe touches the table: a lookup, a move to the
//! most recent end, and, once it is full, an eviction. Kept as a `HashMap` plus a `BTreeMap`
//! of ages, that was three tree operations and an allocation per probe (issue 19 measured
//! the trigger table as most of the filters' 3.5 µs a probe). Here the entries live in
//! one vector, linked from the oldest to the newest by indices: a touch and an eviction are
//! a few index writes, and an evicted entry's slot, with whatever memory its value holds, is
//! handed to the newcomer, so a full table allocates nothing more.
//!
//! The index is a std `HashMap` (SipHash, keyed per process): its keys are addresses an
//! attacker chooses.

use std::collections::HashMap;
use std::hash::Hash;

/// No slot: the end of the list.
const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    /// Toward the oldest.
    older: u32,
    /// Toward the newest.
    newer: u32,
}

/// A bounded map that evicts its least recently used entry; see the module doc.
#[derive(Debug)]
pub struct Lru<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Slot<K, V>>,
    oldest: u32,
    newest: u32,
    capacity: usize,
}

impl<K: Hash + Eq + Copy, V> Lru<K, V> {
    /// An empty map holding at most `capacity` entries (at least one, and no more than
    /// indices can address).
    pub fn new(capacity: usize) -> Lru<K, V> {
        Lru {
            index: HashMap::new(),
            slots: Vec::new(),
            oldest: NIL,
            newest: NIL,
            capacity: Self::bounded(capacity),
        }
    }

    fn bounded(capacity: usize) -> usize {
        capacity.clamp(1, NIL as usize)
    }

    /// Entries held; never above the capacity.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The most entries held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether `key` is held (without making it recent).
    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// The value of `key`, now the most recently used.
    pub fn touch(&mut self, key: &K) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.unlink(i);
        self.link_newest(i);
        Some(&mut self.slots[i as usize].value)
    }

    /// Adds `key` (not held yet) as the most recently used entry. When the map is full, the
    /// least recently used entry is evicted and its key and value handed to `recycle`, the
    /// value to become the newcomer's (its memory reused); otherwise the value is `make()`.
    pub fn insert_with(
        &mut self,
        key: K,
        make: impl FnOnce() -> V,
        recycle: impl FnOnce(K, &mut V),
    ) -> &mut V {
        debug_assert!(!self.index.contains_key(&key));
        let i = if self.slots.len() >= self.capacity && self.oldest != NIL {
            let i = self.oldest;
            self.unlink(i);
            let slot = &mut self.slots[i as usize];
            self.index.remove(&slot.key);
            let evicted = std::mem::replace(&mut slot.key, key);
            recycle(evicted, &mut slot.value);
            i
        } else {
            if self.slots.len() == self.slots.capacity() {
                // Grow by doubling, but never past the capacity.
                let more = self
                    .slots
                    .len()
                    .max(4)
                    .min(self.capacity - self.slots.len());
                self.slots.reserve_exact(more);
            }
            let i = u32::try_from(self.slots.len()).unwrap_or(NIL);
            self.slots.push(Slot {
                key,
                value: make(),
                older: NIL,
                newer: NIL,
            });
            i
        };
        self.index.insert(key, i);
        self.link_newest(i);
        &mut self.slots[i as usize].value
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        if self.oldest == NIL {
            return None;
        }
        let i = self.oldest;
        self.unlink(i);
        let last = u32::try_from(self.slots.len() - 1).unwrap_or(NIL);
        if i != last {
            // The last slot moves into the hole: whoever pointed at it points here now.
            self.slots.swap(i as usize, last as usize);
            self.relink_moved(i);
        }
        let slot = self.slots.pop()?;
        self.index.remove(&slot.key);
        Some((slot.key, slot.value))
    }

    /// Changes the capacity; a smaller one evicts the least recently used entries, and
    /// memory held for far more entries than the new capacity is given back.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = Self::bounded(capacity);
        while self.slots.len() > self.capacity {
            self.pop_oldest();
        }
        if self.slots.capacity() > self.capacity.saturating_mul(2) {
            self.slots.shrink_to(self.capacity);
        }
        if self.index.capacity() > self.capacity.saturating_mul(2) {
            self.index.shrink_to(self.capacity);
        }
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.oldest = NIL;
        self.newest = NIL;
    }

    /// Every value, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots.iter_mut().map(|s| &mut s.value)
    }

    /// Entries the memory held now has room for: (slots, index), for tests of memory bounds.
    #[cfg(test)]
    pub fn allocated(&self) -> (usize, usize) {
        (self.slots.capacity(), self.index.capacity())
    }

    /// Keys from the least to the most recently used (tests and status).
    pub fn keys_oldest_first(&self) -> impl Iterator<Item = K> + '_ {
        let mut at = self.oldest;
        std::iter::from_fn(move || {
            let slot = self.slots.get(at as usize)?;
            at = slot.newer;
            Some(slot.key)
        })
    }

    /// Takes slot `i` out of the list (its own links are left stale).
    fn unlink(&mut self, i: u32) {
        let (older, newer) = {
            let s = &self.slots[i as usize];
            (s.older, s.newer)
        };
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
    }

    /// Puts slot `i` (not in the list) at the newest end.
    fn link_newest(&mut self, i: u32) {
        let prev = self.newest;
        {
            let s = &mut self.slots[i as usize];
            s.older = prev;
            s.newer = NIL;
        }
        match prev {
            NIL => self.oldest = i,
            p => self.slots[p as usize].newer = i,
        }
        self.newest = i;
    }

    /// Slot `i` holds the entry that was in the last slot: its neighbours (and the ends, and
    /// the index) point here now.
    fn relink_moved(&mut self, i: u32) {
        let (older, newer, key) = {
            let s = &self.slots[i as usize];
            (s.older, s.newer, s.key)
        };
        match older {
            NIL => self.oldest = i,
            o => self.slots[o as usize].newer = i,
        }
        match newer {
            NIL => self.newest = i,
            n => self.slots[n as usize].older = i,
        }
        self.index.insert(key, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(l: &Lru<u32, String>) -> Vec<u32> {
        l.keys_oldest_first().collect()
    }

    fn add(l: &mut Lru<u32, String>, k: u32) {
        l.insert_with(k, || format!("v{k}"), |_, v| *v = format!("v{k}"));
    }

    #[test]
    fn a_slot_adds_its_key_and_two_links_to_the_value() {
        // What the trigger table's per-source size (see trigger.rs) is counted from.
        assert_eq!(std::mem::size_of::<Slot<u128, [u64; 7]>>(), 16 + 8 + 56);
    }

    #[test]
    fn a_full_map_evicts_the_least_recently_used_and_reuses_its_value() {
        let mut l = Lru::new(3);
        for k in 1..=3 {
            add(&mut l, k);
        }
        assert_eq!(keys(&l), [1, 2, 3]);
        // A touch makes 1 the newest: 2 is evicted next.
        assert_eq!(l.touch(&1).map(|v| v.clone()), Some("v1".to_string()));
        assert_eq!(keys(&l), [2, 3, 1]);
        let mut recycled = None;
        l.insert_with(
            4,
            || unreachable!("full: a slot is reused"),
            |old, v| {
                assert_eq!(old, 2, "the least recently used key is evicted");
                recycled = Some(v.clone());
                *v = "v4".into();
            },
        );
        assert_eq!(
            recycled.as_deref(),
            Some("v2"),
            "the evicted value is handed over"
        );
        assert_eq!(keys(&l), [3, 1, 4]);
        assert!(!l.contains(&2) && l.contains(&4));
        assert_eq!(l.touch(&4).map(|v| v.clone()), Some("v4".to_string()));
        assert_eq!(l.touch(&2), None);
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn the_capacity_bounds_the_entries_whatever_the_stream() {
        let mut l = Lru::new(100);
        for k in 0..10_000u32 {
            // A mix of new keys and touches of recent ones.
            if k % 3 == 0 && k > 10 {
                let _ = l.touch(&(k - 5));
            }
            add(&mut l, k);
            assert!(l.len() <= 100);
        }
        assert_eq!(l.len(), 100);
        assert!(l.slots.capacity() <= 100, "{}", l.slots.capacity());
        let held = keys(&l);
        assert_eq!(held.len(), 100, "the list holds every entry once");
        assert_eq!(held.last(), Some(&9_999));
        for k in &held {
            assert!(l.contains(k));
        }
    }

    #[test]
    fn popping_and_shrinking_keep_the_order_and_the_index() {
        let mut l = Lru::new(5);
        for k in 1..=5 {
            add(&mut l, k);
        }
        let _ = l.touch(&1);
        let _ = l.touch(&3);
        assert_eq!(keys(&l), [2, 4, 5, 1, 3]);
        // The oldest (slot 1) is removed and the last slot moves into its place.
        assert_eq!(l.pop_oldest(), Some((2, "v2".to_string())));
        assert_eq!(keys(&l), [4, 5, 1, 3]);
        for k in [4, 5, 1, 3] {
            assert_eq!(l.touch(&k).cloned(), Some(format!("v{k}")));
        }
        assert_eq!(keys(&l), [4, 5, 1, 3]);
        l.set_capacity(2);
        assert_eq!(keys(&l), [1, 3]);
        assert_eq!(l.capacity(), 2);
        add(&mut l, 9);
        assert_eq!(keys(&l), [3, 9]);
        l.clear();
        assert!(l.is_empty() && l.pop_oldest().is_none());
        add(&mut l, 7);
        assert_eq!(keys(&l), [7]);
        assert_eq!(l.pop_oldest(), Some((7, "v7".to_string())));
        assert_eq!(keys(&l), Vec::<u32>::new());
    }
}
