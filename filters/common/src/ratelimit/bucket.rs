//! Token-bucket arithmetic, exact to the nanosecond.
//!
//! Tokens are kept in fixed point: one token is `unit` nanoseconds' worth of units (the
//! bucket's *scale*), and every elapsed nanosecond adds exactly `requests` units. A refill
//! therefore never rounds, however small the step or slow the rate (1 request per day
//! refilled every microsecond still adds up), and the state is plain integers that every
//! worker computes identically.
//!
//! The bucket refills lazily when a request looks at it, starts full, and never holds more
//! than `burst` tokens. A time earlier than the last update adds nothing. Workers read the
//! clock a moment before they write, so a slightly earlier time is normal and is simply
//! ignored; a time more than [`BACKSTEP_TOLERANCE_NS`] earlier means the clock was set
//! back, and the bucket re-anchors there, so refilling resumes at once instead of stalling
//! until the clock catches up.

use super::rate::Limit;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A time this much earlier than a bucket's last update means the clock was set back.
pub const BACKSTEP_TOLERANCE_NS: u64 = NANOS_PER_SECOND;

/// A bucket's state: tokens (fixed point, at `scale` units per token) as of `last_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    tokens: u128,
    scale: u64,
    last_ns: u64,
}

/// The result of asking a bucket for one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// A token was taken.
    pub allowed: bool,
    /// Whole tokens left afterwards (the `r` of a `RateLimit` item).
    pub remaining: u64,
    /// Nanoseconds until the next whole token is added; 0 if the bucket is full.
    pub next_token_ns: u64,
}

impl Take {
    /// Whole seconds, rounded up, until another token is available (the `t` of a
    /// `RateLimit` item and, for a denied request, the `Retry-After`).
    pub fn reset_seconds(&self) -> u64 {
        self.next_token_ns.div_ceil(NANOS_PER_SECOND)
    }
}

impl Bucket {
    /// A full bucket for `limit` at `now_ns`.
    pub fn full(limit: &Limit, now_ns: u64) -> Self {
        Self {
            tokens: limit.capacity(),
            scale: limit.scale(),
            last_ns: now_ns,
        }
    }

    /// A bucket from stored parts; the caller adapts it with [`Bucket::adapt`].
    pub fn from_parts(tokens: u128, scale: u64, last_ns: u64) -> Self {
        Self {
            tokens,
            scale,
            last_ns,
        }
    }

    /// The stored parts: (tokens, scale, last_ns).
    pub fn parts(&self) -> (u128, u64, u64) {
        (self.tokens, self.scale, self.last_ns)
    }

    /// When the state was last brought up to date.
    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }

    /// Converts a bucket stored under another limit (the policy changed its unit or burst)
    /// to `limit`: the same fraction of a token per token, capped at the new burst.
    pub fn adapt(&mut self, limit: &Limit) {
        let scale = limit.scale();
        if self.scale != scale {
            self.tokens = if self.scale == 0 {
                limit.capacity()
            } else {
                self.tokens.saturating_mul(u128::from(scale)) / u128::from(self.scale)
            };
            self.scale = scale;
        }
        self.tokens = self.tokens.min(limit.capacity());
    }

    /// Brings the bucket up to `now_ns`.
    pub fn refill(&mut self, limit: &Limit, now_ns: u64) {
        self.adapt(limit);
        if now_ns <= self.last_ns {
            // Another worker wrote with a slightly later reading: nothing to add. The clock
            // was set back: add nothing and re-anchor.
            if self.last_ns - now_ns > BACKSTEP_TOLERANCE_NS {
                self.last_ns = now_ns;
            }
            return;
        }
        let elapsed = u128::from(now_ns - self.last_ns);
        let add = elapsed.saturating_mul(u128::from(limit.rate.requests));
        self.tokens = self.tokens.saturating_add(add).min(limit.capacity());
        self.last_ns = now_ns;
    }

    /// Whole tokens available (after [`Bucket::refill`]).
    pub fn available(&self) -> u64 {
        u64::try_from(self.tokens / u128::from(self.scale.max(1))).unwrap_or(u64::MAX)
    }

    /// When the bucket will be full if nobody takes from it.
    pub fn full_at_ns(&self, limit: &Limit) -> u64 {
        let missing = limit.capacity().saturating_sub(self.tokens);
        let ns = missing.div_ceil(u128::from(limit.rate.requests));
        self.last_ns
            .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Refills to `now_ns` and takes one token if a whole one is there.
    pub fn try_take(&mut self, limit: &Limit, now_ns: u64) -> Take {
        self.refill(limit, now_ns);
        let one = u128::from(limit.scale());
        let allowed = self.tokens >= one;
        if allowed {
            self.tokens -= one;
        }
        Take {
            allowed,
            remaining: self.available(),
            next_token_ns: self.next_token_ns(limit),
        }
    }

    /// Nanoseconds until the next whole token (0 when full).
    fn next_token_ns(&self, limit: &Limit) -> u64 {
        if self.tokens >= limit.capacity() {
            return 0;
        }
        let one = u128::from(limit.scale());
        let missing = one - self.tokens % one;
        u64::try_from(missing.div_ceil(u128::from(limit.rate.requests))).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::rate::{Rate, Unit};

    const S: u64 = 1_000_000_000;

    fn limit(requests: u64, unit: Unit, burst: u64) -> Limit {
        Limit::new(Rate { requests, unit }, Some(burst))
    }

    #[test]
    fn starts_full_and_allows_exactly_burst_at_once() {
        let l = limit(100, Unit::Second, 50);
        let mut b = Bucket::full(&l, 1_000 * S);
        let allowed = (0..80)
            .filter(|_| b.try_take(&l, 1_000 * S).allowed)
            .count();
        assert_eq!(allowed, 50);
        let t = b.try_take(&l, 1_000 * S);
        assert!(!t.allowed);
        assert_eq!(t.remaining, 0);
        assert_eq!(t.next_token_ns, 10_000_000, "one token per 10 ms");
        assert_eq!(t.reset_seconds(), 1);
    }

    #[test]
    fn refills_at_the_rate_and_caps_at_burst() {
        let l = limit(100, Unit::Second, 50);
        let mut b = Bucket::full(&l, 0);
        for _ in 0..50 {
            assert!(b.try_take(&l, 0).allowed);
        }
        // 250 ms later: 25 tokens.
        b.refill(&l, S / 4);
        assert_eq!(b.available(), 25);
        // An hour later: capped at the burst.
        b.refill(&l, 3_600 * S);
        assert_eq!(b.available(), 50);
        assert_eq!(b.full_at_ns(&l), 3_600 * S);
    }

    #[test]
    fn admitted_over_time_is_rate_times_duration_plus_burst() {
        let l = limit(100, Unit::Second, 50);
        let mut b = Bucket::full(&l, 0);
        // 10x overload for 10 s: a request every 1 ms.
        let admitted = (0..10_000u64)
            .filter(|i| b.try_take(&l, i * 1_000_000).allowed)
            .count();
        // 50 + 100/s over 9.999 s.
        assert_eq!(admitted, 50 + 999);
    }

    #[test]
    fn fixed_point_never_loses_tiny_refills() {
        // 1 request per second, asked every 97 ns: each step adds a tiny fraction of a
        // token (a micro-token fixed point would round every step down to nothing).
        let l = limit(1, Unit::Second, 1);
        let mut b = Bucket::full(&l, 0);
        assert!(b.try_take(&l, 0).allowed);
        let mut now = 0;
        let step = 97;
        while now + step < S {
            now += step;
            assert!(
                !b.try_take(&l, now).allowed,
                "no token before a second at {now}"
            );
        }
        assert!(b.try_take(&l, S).allowed);
        let day = 86_400 * S;
        // 7 per day: the period is not a whole number of nanoseconds.
        let l = limit(7, Unit::Day, 7);
        let mut b = Bucket::full(&l, 0);
        for _ in 0..7 {
            assert!(b.try_take(&l, 0).allowed);
        }
        let mut admitted = 0;
        for i in 1..=70_000u64 {
            if b.try_take(&l, i * (day / 10_000)).allowed {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 49, "7 days' worth, to the token");
    }

    #[test]
    fn clock_going_backwards_adds_nothing_and_does_not_stall() {
        let l = limit(10, Unit::Second, 10);
        let mut b = Bucket::full(&l, 10_000 * S);
        for _ in 0..10 {
            assert!(b.try_take(&l, 10_000 * S).allowed);
        }
        // The clock steps back an hour: no tokens appear.
        assert!(!b.try_take(&l, 10_000 * S - 3_600 * S).allowed);
        // ...and 100 ms of real time later one token is there, not an hour later.
        assert!(b.try_take(&l, 10_000 * S - 3_600 * S + S / 10).allowed);
        assert!(!b.try_take(&l, 10_000 * S - 3_600 * S + S / 10).allowed);
    }

    #[test]
    fn slightly_stale_clock_readings_never_add_tokens() {
        let l = limit(100, Unit::Second, 1);
        let mut b = Bucket::full(&l, 10 * S);
        assert!(b.try_take(&l, 10 * S).allowed);
        // Workers alternate between a reading 5 ms late and one 5 ms early.
        let mut admitted = 0;
        for i in 1..=1_000u64 {
            let now = 10 * S + i * 1_000_000;
            let skewed = if i % 2 == 0 {
                now - 5_000_000
            } else {
                now + 5_000_000
            };
            admitted += usize::from(b.try_take(&l, skewed).allowed);
        }
        // 1 s of refill at 100/s, plus at most the 5 ms lead of the last reading.
        assert!((99..=101).contains(&admitted), "{admitted}");
    }

    #[test]
    fn adapts_to_a_changed_limit() {
        let per_second = limit(10, Unit::Second, 10);
        let mut b = Bucket::full(&per_second, 0);
        for _ in 0..5 {
            b.try_take(&per_second, 0);
        }
        // Same bucket read under a per-minute limit with burst 3: 5 tokens capped to 3.
        let per_minute = limit(10, Unit::Minute, 3);
        b.refill(&per_minute, 0);
        assert_eq!(b.available(), 3);
        // Under a bigger burst the 5 tokens are kept.
        let mut b2 = Bucket::full(&per_second, 0);
        for _ in 0..5 {
            b2.try_take(&per_second, 0);
        }
        b2.refill(&limit(10, Unit::Hour, 100), 0);
        assert_eq!(b2.available(), 5);
    }

    #[test]
    fn reset_is_time_to_next_token_rounded_up() {
        let l = limit(1, Unit::Minute, 2);
        let mut b = Bucket::full(&l, 0);
        let t = b.try_take(&l, 0);
        assert_eq!((t.allowed, t.remaining, t.reset_seconds()), (true, 1, 60));
        let t = b.try_take(&l, 15 * S);
        assert_eq!(
            (t.allowed, t.remaining, t.reset_seconds()),
            (true, 0, 60 - 15)
        );
        let t = b.try_take(&l, 15 * S + 1);
        assert_eq!((t.allowed, t.remaining, t.reset_seconds()), (false, 0, 45));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let l = limit(1_000_000_000, Unit::Day, 1_000_000_000);
        let mut b = Bucket::full(&l, 0);
        assert!(b.try_take(&l, u64::MAX).allowed);
        assert_eq!(b.available(), 1_000_000_000 - 1);
        let mut b = Bucket::from_parts(u128::MAX, 1, 0);
        b.refill(&l, 5);
        assert_eq!(b.available(), 1_000_000_000);
    }
}
