//! How long a block lasts: `BLOCK_TIMEOUT` for a first offence, `BLOCK_TIMEOUT_FACTOR` times
//! the previous block for a repeat offender (fail2ban's `bantime.increment`), capped at
//! `BLOCK_TIMEOUT_MAX`, plus up to `BLOCK_TIMEOUT_JITTER` of random extra so that a botnet
//! cannot time its return to the second. Unset or `0`: permanent, as in 1.2.

use std::time::Duration;

use crate::config::Config;

/// The duration rules of one config generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DurationPolicy {
    /// First-offence duration; `None`: blocks are permanent.
    pub base: Option<Duration>,
    /// Growth per repeat offence.
    pub factor: f64,
    /// Longest block (jitter aside).
    pub max: Duration,
    /// Most random extra.
    pub jitter: Duration,
}

/// What the policy knows of a host's past blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Past {
    /// Blocks so far.
    pub offences: u32,
    /// Length of the last one (`None`: permanent or unknown).
    pub last: Option<Duration>,
}

impl DurationPolicy {
    /// The policy a config asks for.
    pub fn from_config(config: &Config) -> DurationPolicy {
        DurationPolicy {
            base: config.block_timeout,
            factor: config.block_timeout_factor,
            max: config.block_timeout_max,
            jitter: config.block_timeout_jitter,
        }
    }

    /// The duration (without jitter) of the next block of a host with this past; `None`
    /// for a permanent block.
    pub fn next(&self, past: Option<Past>) -> Option<Duration> {
        let base = self.base?;
        let Some(past) = past.filter(|p| p.offences > 0) else {
            return Some(base.min(self.max.max(base)));
        };
        let previous = past.last.unwrap_or(base).max(base);
        let grown = previous.as_secs_f64() * self.factor.max(1.0);
        let cap = self.max.max(base);
        Some(if grown.is_finite() && grown < cap.as_secs_f64() {
            Duration::from_secs_f64(grown)
        } else {
            cap
        })
    }

    /// [`DurationPolicy::next`] with the random extra added.
    pub fn next_with_jitter(&self, past: Option<Past>) -> Option<Duration> {
        let d = self.next(past)?;
        let jitter_ms = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
        Some(d + Duration::from_millis(fastrand::u64(0..=jitter_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: Option<u64>, factor: f64, max: u64, jitter: u64) -> DurationPolicy {
        DurationPolicy {
            base: base.map(Duration::from_secs),
            factor,
            max: Duration::from_secs(max),
            jitter: Duration::from_secs(jitter),
        }
    }

    fn past(offences: u32, last: u64) -> Option<Past> {
        Some(Past {
            offences,
            last: Some(Duration::from_secs(last)),
        })
    }

    #[test]
    fn unset_timeout_means_permanent_whatever_the_past() {
        let p = policy(None, 2.0, 3600, 0);
        assert_eq!(p.next(None), None);
        assert_eq!(p.next(past(3, 10)), None);
        assert_eq!(p.next_with_jitter(None), None);
    }

    #[test]
    fn repeat_offender_gets_factor_times_the_previous_block_up_to_the_cap() {
        let p = policy(Some(3), 2.0, 20, 0);
        assert_eq!(p.next(None), Some(Duration::from_secs(3)));
        assert_eq!(p.next(past(1, 3)), Some(Duration::from_secs(6)));
        assert_eq!(p.next(past(2, 6)), Some(Duration::from_secs(12)));
        assert_eq!(p.next(past(3, 12)), Some(Duration::from_secs(20)), "capped");
        assert_eq!(p.next(past(9, 20)), Some(Duration::from_secs(20)));
        // A previous block shorter than the base (the base was raised) starts from the base.
        assert_eq!(p.next(past(1, 1)), Some(Duration::from_secs(6)));
        // A previous permanent block of unknown length starts from the base too.
        let unknown = Some(Past {
            offences: 1,
            last: None,
        });
        assert_eq!(p.next(unknown), Some(Duration::from_secs(6)));
    }

    #[test]
    fn a_huge_factor_saturates_at_the_cap_instead_of_overflowing() {
        let p = policy(Some(3600), 1000.0, 7 * 86400, 0);
        assert_eq!(
            p.next(past(40, 7 * 86400)),
            Some(Duration::from_secs(7 * 86400))
        );
    }

    #[test]
    fn jitter_adds_at_most_its_amount() {
        let p = policy(Some(10), 2.0, 100, 5);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = p.next_with_jitter(None).unwrap();
            assert!(
                d >= Duration::from_secs(10) && d <= Duration::from_secs(15),
                "{d:?}"
            );
            seen.insert(d.as_millis());
        }
        assert!(seen.len() > 10, "the extra varies: {seen:?}");
    }
}
