//! Token-bucket arithmetic for the `maxPerSecond` cap (shared by every worker through the
//! proxy's shared data, updated with compare-and-swap) and for rate-limited logging.
//!
//! The bucket holds up to one period's worth of tokens (`per_period`), starts full and refills
//! continuously, so the long-run rate never exceeds `per_period` per `period_ms` and bursts
//! never exceed `per_period`. Tokens are kept in millionths to refill smoothly.

/// Fixed-point scale of stored tokens.
const SCALE: u128 = 1_000_000;

/// A refill rate: `per_period` tokens every `period_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_period: u64,
    pub period_ms: u64,
}

impl Rate {
    /// `n` per second.
    pub const fn per_second(n: u64) -> Self {
        Self {
            per_period: n,
            period_ms: 1_000,
        }
    }

    /// `n` per minute.
    pub const fn per_minute(n: u64) -> Self {
        Self {
            per_period: n,
            period_ms: 60_000,
        }
    }

    fn capacity(self) -> u128 {
        u128::from(self.per_period) * SCALE
    }
}

/// Bucket state: tokens (scaled) and the time they were last brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    tokens: u128,
    last_ms: u64,
}

/// Encoded size of a [`Bucket`] in shared data.
pub const ENCODED_LEN: usize = 24;

impl Bucket {
    /// A full bucket at time `now_ms`.
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        Self {
            tokens: rate.capacity(),
            last_ms: now_ms,
        }
    }

    /// Whole tokens available.
    pub fn available(&self) -> u64 {
        (self.tokens / SCALE) as u64
    }

    /// Brings the bucket up to `now_ms` and takes one token if there is one. A clock that
    /// steps back (another worker wrote a later time) adds nothing.
    pub fn try_take(&mut self, rate: Rate, now_ms: u64) -> bool {
        self.refill(rate, now_ms);
        if self.tokens >= SCALE {
            self.tokens -= SCALE;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if rate.period_ms > 0 {
            let add = u128::from(elapsed) * rate.capacity() / u128::from(rate.period_ms);
            self.tokens = self.tokens.saturating_add(add);
        }
        // A lowered limit takes effect at once.
        self.tokens = self.tokens.min(rate.capacity());
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Bytes for shared data.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[..16].copy_from_slice(&self.tokens.to_le_bytes());
        out[16..].copy_from_slice(&self.last_ms.to_le_bytes());
        out
    }

    /// Parses bytes written by [`Bucket::encode`]; anything else is `None`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let tokens = u128::from_le_bytes(bytes[..16].try_into().ok()?);
        let last_ms = u64::from_le_bytes(bytes[16..].try_into().ok()?);
        Some(Self { tokens, last_ms })
    }
}

/// One compare-and-swap step of taking a token from a shared bucket: given the stored bytes
/// (`None` if the key does not exist yet or holds garbage), returns whether a token was taken
/// and the bytes to store.
pub fn take_shared(stored: Option<&[u8]>, rate: Rate, now_ms: u64) -> (bool, [u8; ENCODED_LEN]) {
    let mut bucket = stored
        .and_then(Bucket::decode)
        .unwrap_or_else(|| Bucket::full(rate, now_ms));
    let taken = bucket.try_take(rate, now_ms);
    (taken, bucket.encode())
}

/// A per-worker limiter for log lines (no sharing needed).
#[derive(Debug, Clone)]
pub struct LogLimiter {
    rate: Rate,
    bucket: Option<Bucket>,
}

impl LogLimiter {
    /// At most `per_minute` lines a minute (bursts up to that many).
    pub fn per_minute(per_minute: u64) -> Self {
        Self {
            rate: Rate::per_minute(per_minute),
            bucket: None,
        }
    }

    /// Whether a line may be written at `now_ms`.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let rate = self.rate;
        self.bucket
            .get_or_insert_with(|| Bucket::full(rate, now_ms))
            .try_take(rate, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_one_burst_then_refills_at_the_rate() {
        let rate = Rate::per_second(10);
        let mut b = Bucket::full(rate, 1_000);
        let burst = (0..20).filter(|_| b.try_take(rate, 1_000)).count();
        assert_eq!(burst, 10);
        assert!(!b.try_take(rate, 1_050), "half a token after 50 ms");
        assert!(b.try_take(rate, 1_100), "one token after 100 ms");
        // Over 10 s at most 10/s + the initial burst.
        let mut taken = 0;
        for t in (1_100..11_100).step_by(7) {
            while b.try_take(rate, t) {
                taken += 1;
            }
        }
        assert!((99..=101).contains(&taken), "{taken}");
    }

    #[test]
    fn idle_time_never_saves_more_than_one_period() {
        let rate = Rate::per_second(5);
        let mut b = Bucket::full(rate, 0);
        assert!(b.try_take(rate, 0));
        let later = (0..100).filter(|_| b.try_take(rate, 3_600_000)).count();
        assert_eq!(later, 5);
    }

    #[test]
    fn clock_steps_back_do_not_mint_tokens() {
        let rate = Rate::per_second(1);
        let mut b = Bucket::full(rate, 10_000);
        assert!(b.try_take(rate, 10_000));
        assert!(!b.try_take(rate, 9_000));
        assert!(!b.try_take(rate, 10_500));
        assert!(b.try_take(rate, 11_000));
    }

    #[test]
    fn lowering_the_rate_caps_saved_tokens() {
        let mut b = Bucket::full(Rate::per_second(100), 0);
        let low = Rate::per_second(2);
        let n = (0..10).filter(|_| b.try_take(low, 0)).count();
        assert_eq!(n, 2);
    }

    #[test]
    fn shared_state_round_trips_and_garbage_starts_full() {
        let rate = Rate::per_second(2);
        let (t1, s1) = take_shared(None, rate, 0);
        let (t2, s2) = take_shared(Some(&s1), rate, 0);
        let (t3, _) = take_shared(Some(&s2), rate, 0);
        assert!(t1 && t2 && !t3);
        let (t, _) = take_shared(Some(b"junk"), rate, 0);
        assert!(t);
        assert_eq!(Bucket::decode(&s2).unwrap().available(), 0);
    }

    #[test]
    fn log_limiter_allows_the_configured_lines_per_minute() {
        let mut l = LogLimiter::per_minute(3);
        let n = (0..10).filter(|_| l.allow(0)).count();
        assert_eq!(n, 3);
        assert!(!l.allow(10_000));
        assert!(l.allow(20_000));
    }
}
