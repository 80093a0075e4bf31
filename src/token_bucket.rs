//! The one token bucket of the daemon: `LOG_RATE_LIMIT` (detection lines of probes not acted
//! on), `EVENT_LOG_RATE_LIMIT` (alert events) and `BLOCK_RATE_LIMIT` (new scan blocks) are all
//! "so many a period, a burst at most, starting full". The clock is passed in (`now`), so
//! every budget is tested with a fake clock and behaves the same under replay.

use std::time::{Duration, Instant};

/// Tokens refilled at a steady rate up to a capacity; one token per line, event or block.
/// A rate of 0 means no limit: every `take` succeeds.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per `period`, as configured (0: no limit).
    per: u32,
    /// The period `per` counts over (a second, a minute).
    period: Duration,
    /// Most tokens held at once: the largest burst.
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// `per` tokens each `period`, holding at most `per` (the burst is one period's worth),
    /// full at `now`. `per == 0`: no limit.
    pub fn new(per: u32, period: Duration, now: Instant) -> TokenBucket {
        TokenBucket {
            per,
            period,
            capacity: f64::from(per),
            tokens: f64::from(per),
            refilled: now,
        }
    }

    /// `per` tokens a second (see [`TokenBucket::new`]).
    pub fn per_second(per: u32, now: Instant) -> TokenBucket {
        TokenBucket::new(per, Duration::from_secs(1), now)
    }

    /// `per` tokens a minute (see [`TokenBucket::new`]).
    pub fn per_minute(per: u32, now: Instant) -> TokenBucket {
        TokenBucket::new(per, Duration::from_secs(60), now)
    }

    /// The same bucket holding at least `burst` tokens (and full): a quiet source of a few
    /// lines a minute keeps every one of them while a low sustained rate caps a flood.
    pub fn with_burst(mut self, burst: u32) -> TokenBucket {
        self.capacity = self.capacity.max(f64::from(burst));
        self.tokens = self.capacity;
        self
    }

    /// Tokens per period as configured (0: no limit), so that a reload can tell whether the
    /// setting changed.
    pub fn per(&self) -> u32 {
        self.per
    }

    /// Tokens held as of the last refill: which of many per-key buckets (prefixes) matter
    /// least when some must be forgotten.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// Whether there is no limit.
    pub fn unlimited(&self) -> bool {
        self.per == 0
    }

    /// Tokens added a second.
    fn rate(&self) -> f64 {
        f64::from(self.per) / self.period.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Adds the tokens earned since the last refill, up to the capacity. A `now` earlier
    /// than the last refill earns nothing.
    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate()).min(self.capacity);
        self.refilled = self.refilled.max(now);
    }

    /// Whether a token is there at `now`, none taken (to look before deciding); always true
    /// with no limit.
    pub fn has_token(&mut self, now: Instant) -> bool {
        if self.unlimited() {
            return true;
        }
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes one token if there is one at `now`; always true with no limit.
    pub fn take(&mut self, now: Instant) -> bool {
        if !self.has_token(now) {
            return false;
        }
        if !self.unlimited() {
            self.tokens -= 1.0;
        }
        true
    }

    /// Full again at `now`: a bucket kept per key (a prefix's budget) can be forgotten.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    /// Time from the last refill until the next whole token (zero when one is there now);
    /// `None` with no limit.
    pub fn next_token(&self) -> Option<Duration> {
        if self.unlimited() {
            return None;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        Some(Duration::from_secs_f64(missing / self.rate()))
    }

    /// Follows a reload: the tokens earned so far are kept (up to the new capacity) rather
    /// than a fresh full bucket, so that a reload during a flood does not let a burst through.
    pub fn set_rate(&mut self, per: u32, burst: u32, now: Instant) {
        self.refill(now);
        self.per = per;
        self.capacity = f64::from(per).max(f64::from(burst));
        self.tokens = self.tokens.min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(b: &mut TokenBucket, n: usize, now: Instant) -> usize {
        (0..n).filter(|_| b.take(now)).count()
    }

    #[test]
    fn a_bucket_starts_full_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(100, t0);
        assert_eq!(
            taken(&mut b, 1000, t0),
            100,
            "the burst is one period's worth"
        );
        assert_eq!(taken(&mut b, 1000, t0 + Duration::from_millis(500)), 50);
        // Refilling never goes past the capacity, however long the bucket waited.
        assert_eq!(taken(&mut b, 1000, t0 + Duration::from_secs(3600)), 100);
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(0, t0);
        assert!(b.unlimited());
        assert_eq!(taken(&mut b, 10_000, t0), 10_000);
        assert_eq!(b.next_token(), None);
    }

    #[test]
    fn a_per_minute_bucket_says_when_the_next_token_comes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(60, t0);
        assert_eq!(b.next_token(), Some(Duration::ZERO), "full: a token now");
        assert_eq!(taken(&mut b, 100, t0), 60);
        assert_eq!(b.next_token(), Some(Duration::from_secs(1)));
        assert!(!b.take(t0 + Duration::from_millis(999)));
        assert!(b.take(t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn a_burst_larger_than_the_rate_passes_at_once_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(1, t0).with_burst(10);
        assert_eq!(taken(&mut b, 100, t0), 10);
        // A sustained flood: one a second, whatever arrives.
        let mut later = 0;
        for s in 1..=60 {
            later += taken(&mut b, 2000, t0 + Duration::from_secs(s));
        }
        assert_eq!(later, 60);
        // A burst smaller than the rate changes nothing.
        let mut b = TokenBucket::per_second(200, t0).with_burst(10);
        assert_eq!(taken(&mut b, 1000, t0), 200);
    }

    #[test]
    fn looking_takes_nothing_and_a_refilled_bucket_says_it_is_full() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(2, t0);
        assert!(b.is_full(t0));
        assert!(b.has_token(t0) && b.has_token(t0) && b.has_token(t0));
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.has_token(t0));
        assert!(!b.is_full(t0 + Duration::from_secs(30)), "one token back");
        assert!(b.is_full(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn the_clock_going_back_earns_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::per_second(5, t0);
        assert_eq!(taken(&mut b, 10, t0), 5);
        assert!(!b.take(t0 - Duration::from_secs(5)));
        assert!(b.take(t0 + Duration::from_millis(200)));
    }

    #[test]
    fn a_new_rate_keeps_what_was_spent() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(100, t0);
        assert_eq!(taken(&mut b, 100, t0), 100);
        b.set_rate(1000, 0, t0);
        assert_eq!(b.per(), 1000);
        assert_eq!(taken(&mut b, 5000, t0), 0, "no fresh burst on reload");
        assert_eq!(taken(&mut b, 5000, t0 + Duration::from_millis(10)), 10);
        // A smaller capacity clips the tokens held.
        b.set_rate(2, 0, t0 + Duration::from_secs(5));
        assert_eq!(taken(&mut b, 100, t0 + Duration::from_secs(5)), 2);
        b.set_rate(0, 0, t0 + Duration::from_secs(6));
        assert!(b.take(t0 + Duration::from_secs(6)));
    }
}
