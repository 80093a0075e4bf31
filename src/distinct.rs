//! How many distinct sources an interval saw, for the summary line of probes not acted on.
//!
//! An exact set of every forged source of a flood was one random insert into a table growing
//! to megabytes, per probe: at 6,000 forged SYNs a second it was about 1 µs of the sensor
//! thread's 4 a probe (issue 19). Nobody reads "28,517 sources" differently from "about
//! 28,500". So the count is exact for the few sources of a quiet interval ([`EXACT`] at most,
//! a set that stays in cache) and past that an estimate from a HyperLogLog sketch (Flajolet
//! et al., 2007): 4 KiB of registers whatever the flood, one keyed hash and one byte per
//! probe, a standard error of 1.6 %. The hash is std's SipHash with a key drawn per process:
//! the addresses are the attacker's choice, and must not be aimable at a register.

use std::collections::HashSet;
use std::hash::BuildHasher;

/// Sources counted exactly (and remembered) at most per interval.
pub const EXACT: usize = 1024;

/// Register-index bits of the sketch: 2^12 registers.
const INDEX_BITS: u32 = 12;
const REGISTERS: usize = 1 << INDEX_BITS;

/// Distinct keys seen since the last [`DistinctCount::clear`]: exact up to [`EXACT`], then
/// estimated; bounded memory either way.
#[derive(Debug)]
pub struct DistinctCount {
    exact: HashSet<u128>,
    /// More than [`EXACT`] keys were seen: `exact` is no longer kept up to date.
    over: bool,
    /// Per register, the most leading zeros (plus one) seen in the hashes it was given.
    registers: Box<[u8; REGISTERS]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for DistinctCount {
    fn default() -> DistinctCount {
        DistinctCount {
            exact: HashSet::with_capacity(EXACT),
            over: false,
            registers: Box::new([0; REGISTERS]),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

/// A count of distinct keys, and whether it is an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// The count (an estimate rounded to three significant digits when `estimated`).
    pub n: u64,
    /// More keys were seen than are counted exactly.
    pub estimated: bool,
}

impl DistinctCount {
    /// Counts `key` once, however often it is seen.
    pub fn insert(&mut self, key: u128) {
        let hash = self.hasher.hash_one(key);
        let register = (hash >> (64 - INDEX_BITS)) as usize;
        // The rest of the hash, with a stop bit so that the count of zeros is bounded.
        let rest = (hash << INDEX_BITS) | (1 << (INDEX_BITS - 1));
        let rank = u8::try_from(rest.leading_zeros() + 1).unwrap_or(u8::MAX);
        if let Some(r) = self.registers.get_mut(register) {
            *r = (*r).max(rank);
        }
        if !self.over {
            if self.exact.len() < EXACT {
                self.exact.insert(key);
            } else if !self.exact.contains(&key) {
                self.over = true;
            }
        }
    }

    /// The count so far.
    pub fn count(&self) -> Count {
        if !self.over {
            return Count {
                n: self.exact.len() as u64,
                estimated: false,
            };
        }
        // Never below what is known exactly.
        let n = self.estimate().max(EXACT as f64 + 1.0);
        Count {
            n: three_significant_digits(n),
            estimated: true,
        }
    }

    /// Starts a new interval (the memory is kept).
    pub fn clear(&mut self) {
        self.exact.clear();
        self.over = false;
        self.registers.fill(0);
    }

    /// HyperLogLog's estimate, with its linear-counting correction for small counts (64-bit
    /// hashes need no large-range correction at these sizes).
    fn estimate(&self) -> f64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            .map(|&r| 2f64.powi(-i32::from(r)))
            .sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|&&r| r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

fn three_significant_digits(n: f64) -> u64 {
    if n < 1000.0 {
        return n.round() as u64;
    }
    let scale = 10f64.powi(n.log10().floor() as i32 - 2);
    ((n / scale).round() * scale) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(n: u128) -> Count {
        let mut d = DistinctCount::default();
        for k in 0..n {
            d.insert(k * 7919 + 3);
            // Repeats change nothing.
            d.insert(k * 7919 + 3);
        }
        d.count()
    }

    #[test]
    fn up_to_the_exact_bound_the_count_is_exact() {
        assert_eq!(
            counted(0),
            Count {
                n: 0,
                estimated: false
            }
        );
        assert_eq!(counted(1).n, 1);
        assert_eq!(
            counted(EXACT as u128),
            Count {
                n: EXACT as u64,
                estimated: false
            }
        );
    }

    #[test]
    fn past_it_the_estimate_is_within_a_few_percent() {
        for n in [EXACT as u128 + 1, 5_000, 31_000, 100_000, 1_000_000] {
            let c = counted(n);
            assert!(c.estimated, "{n}");
            let error = (c.n as f64 - n as f64).abs() / n as f64;
            assert!(error < 0.05, "{n}: {c:?}, error {error}");
        }
    }

    #[test]
    fn an_interval_starts_afresh_and_memory_stays_fixed() {
        let mut d = DistinctCount::default();
        for k in 0..50_000u128 {
            d.insert(k);
        }
        assert!(d.count().estimated);
        assert!(d.exact.len() <= EXACT);
        d.clear();
        assert_eq!(
            d.count(),
            Count {
                n: 0,
                estimated: false
            }
        );
        d.insert(9);
        assert_eq!(d.count().n, 1);
    }

    #[test]
    fn estimates_are_rounded_to_three_significant_digits() {
        assert_eq!(three_significant_digits(28_517.4), 28_500);
        assert_eq!(three_significant_digits(1_025.0), 1_030);
        assert_eq!(three_significant_digits(999.6), 1_000);
        assert_eq!(three_significant_digits(123_456.0), 123_000);
    }
}
