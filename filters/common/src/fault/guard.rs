//! The error-ratio guard: a sliding window of real upstream responses, compact enough to
//! live in proxy shared data so every worker sees (and feeds) the same window.

use super::spec::GuardSpec;

/// Buckets per window: the window slides in steps of a tenth of its length.
pub const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// `now_ms / bucket_ms` of the period this bucket counts.
    index: u64,
    total: u32,
    errors: u32,
}

/// Counts of responses and errors over a sliding window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardWindow {
    bucket_ms: u64,
    buckets: [Bucket; BUCKETS],
}

/// Encoded size: bucket length + buckets of (index, total, errors).
const ENCODED_LEN: usize = 8 + BUCKETS * 16;

impl GuardWindow {
    /// An empty window of `window_ms` (at least `BUCKETS` ms).
    pub fn new(window_ms: u64) -> Self {
        Self {
            bucket_ms: (window_ms / BUCKETS as u64).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// Decodes a window stored by [`GuardWindow::encode`]. Anything else (absent, corrupt,
    /// or stored for another window length) gives an empty window.
    pub fn decode(bytes: Option<&[u8]>, window_ms: u64) -> Self {
        let mut w = Self::new(window_ms);
        let Some(b) = bytes.filter(|b| b.len() == ENCODED_LEN) else {
            return w;
        };
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if u64_at(0) != w.bucket_ms {
            return w;
        }
        for (k, bucket) in w.buckets.iter_mut().enumerate() {
            let at = 8 + k * 16;
            *bucket = Bucket {
                index: u64_at(at),
                total: u32_at(at + 8),
                errors: u32_at(at + 12),
            };
        }
        w
    }

    /// The bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&self.bucket_ms.to_le_bytes());
        for b in &self.buckets {
            out.extend_from_slice(&b.index.to_le_bytes());
            out.extend_from_slice(&b.total.to_le_bytes());
            out.extend_from_slice(&b.errors.to_le_bytes());
        }
        out
    }

    /// Counts one response at `now_ms`.
    pub fn record(&mut self, now_ms: u64, is_error: bool) {
        let index = now_ms / self.bucket_ms;
        let b = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if b.index != index {
            *b = Bucket {
                index,
                total: 0,
                errors: 0,
            };
        }
        b.total = b.total.saturating_add(1);
        b.errors = b.errors.saturating_add(u32::from(is_error));
    }

    /// (responses, errors) over the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> (u64, u64) {
        let current = now_ms / self.bucket_ms;
        self.buckets
            .iter()
            .filter(|b| b.index <= current && current - b.index < BUCKETS as u64 && b.total > 0)
            .fold((0, 0), |(t, e), b| {
                (t + u64::from(b.total), e + u64::from(b.errors))
            })
    }
}

impl GuardSpec {
    /// Whether injection is suspended given the window's counts.
    pub fn trips(&self, total: u64, errors: u64) -> bool {
        total >= u64::from(self.min_requests)
            && (errors as f64) > self.max_error_ratio * total as f64
    }

    /// Whether an upstream status counts as an error (5xx).
    pub fn is_error(status: u16) -> bool {
        (500..=599).contains(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::DurationSpec;

    fn guard() -> GuardSpec {
        GuardSpec {
            max_error_ratio: 0.2,
            window: DurationSpec::from_millis(10_000),
            min_requests: 20,
        }
    }

    #[test]
    fn trips_only_above_ratio_with_enough_requests() {
        let g = guard();
        assert!(!g.trips(19, 19), "below minRequests");
        assert!(!g.trips(100, 20), "exactly at the ratio is allowed");
        assert!(g.trips(100, 21));
        assert!(!g.trips(0, 0));
    }

    #[test]
    fn window_slides() {
        let mut w = GuardWindow::new(10_000);
        for i in 0..50 {
            w.record(1_000_000 + i * 100, i % 2 == 0);
        }
        assert_eq!(w.totals(1_005_000), (50, 25));
        // 10 s after the last sample everything has slid out.
        assert_eq!(w.totals(1_004_900 + 10_000), (0, 0));
        // Half-way: only the later half remains.
        let (t, _) = w.totals(1_000_000 + 12_600);
        assert!(t > 0 && t < 50, "{t}");
        // Recording after a long gap reuses stale buckets.
        w.record(2_000_000, true);
        assert_eq!(w.totals(2_000_000), (1, 1));
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let mut w = GuardWindow::new(2000);
        w.record(5000, true);
        w.record(5300, false);
        let bytes = w.encode();
        assert_eq!(GuardWindow::decode(Some(&bytes), 2000), w);
        // Stored for another window length: start over.
        assert_eq!(
            GuardWindow::decode(Some(&bytes), 3000),
            GuardWindow::new(3000)
        );
        assert_eq!(
            GuardWindow::decode(Some(b"junk"), 2000),
            GuardWindow::new(2000)
        );
        assert_eq!(GuardWindow::decode(None, 2000), GuardWindow::new(2000));
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let mut w = GuardWindow::new(1000);
        w.record(10_000, true);
        assert_eq!(w.totals(5_000), (0, 0));
        w.record(0, false);
        assert_eq!(w.totals(0).0, 1);
    }
}
