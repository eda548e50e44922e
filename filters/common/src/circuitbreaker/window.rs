//! Sliding windows of call outcomes, in a compact byte form for shared data.
//!
//! - count-based: the last N outcomes in a ring of two bits each (failed, slow), so the
//!   largest window (1000 calls) is 250 bytes;
//! - time-based: ten buckets of a tenth of the window each (calls, failures, slow calls),
//!   120 bytes whatever the traffic. A call is counted in the bucket of the moment its
//!   outcome is recorded; the window's totals are those of the buckets not older than the
//!   window.

use super::spec::SlidingWindow;

/// Buckets of a time-based window.
pub const BUCKETS: usize = 10;

/// How one call went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The call failed (a failure status, a reset, a timeout).
    pub failure: bool,
    /// The call took at least the slow-call threshold.
    pub slow: bool,
}

/// Calls and how many of them failed or were slow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

impl Totals {
    /// Adds one outcome.
    pub fn add(&mut self, o: Outcome) {
        self.calls = self.calls.saturating_add(1);
        self.failures = self.failures.saturating_add(u32::from(o.failure));
        self.slow = self.slow.saturating_add(u32::from(o.slow));
    }

    /// Failures per 100 calls (0 without calls).
    pub fn failure_rate(&self) -> f64 {
        rate(self.failures, self.calls)
    }

    /// Slow calls per 100 calls (0 without calls).
    pub fn slow_rate(&self) -> f64 {
        rate(self.slow, self.calls)
    }
}

fn rate(n: u32, calls: u32) -> f64 {
    if calls == 0 {
        0.0
    } else {
        f64::from(n) * 100.0 / f64::from(calls)
    }
}

/// A sliding window of outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// An empty window of the configured shape.
    pub fn new(shape: SlidingWindow) -> Self {
        match shape {
            SlidingWindow::Count(n) => Window::Count(CountWindow::new(n)),
            SlidingWindow::Duration(d) => Window::Time(TimeWindow::new(d.as_millis())),
        }
    }

    /// Records an outcome at `now_ms`.
    pub fn record(&mut self, o: Outcome, now_ms: u64) {
        match self {
            Window::Count(w) => w.record(o),
            Window::Time(w) => w.record(o, now_ms),
        }
    }

    /// The totals at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now_ms),
        }
    }

    /// Appends the encoded window to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Window::Count(w) => w.encode(out),
            Window::Time(w) => w.encode(out),
        }
    }

    /// Decodes a window of `shape`; `None` if the bytes hold another shape (the policy's
    /// window changed) or are malformed.
    pub fn decode(shape: SlidingWindow, bytes: &[u8]) -> Option<Self> {
        match shape {
            SlidingWindow::Count(n) => CountWindow::decode(n, bytes).map(Window::Count),
            SlidingWindow::Duration(d) => {
                TimeWindow::decode(d.as_millis(), bytes).map(Window::Time)
            }
        }
    }
}

/// The last `size` outcomes, two bits each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountWindow {
    size: u16,
    len: u16,
    head: u16,
    bits: Vec<u8>,
}

const COUNT_TAG: u8 = b'c';
const TIME_TAG: u8 = b't';

impl CountWindow {
    fn new(size: u32) -> Self {
        let size = size.clamp(1, u32::from(u16::MAX)) as u16;
        Self {
            size,
            len: 0,
            head: 0,
            bits: vec![0; usize::from(size).div_ceil(4)],
        }
    }

    fn get(&self, i: u16) -> Outcome {
        let b = self.bits[usize::from(i / 4)] >> ((i % 4) * 2);
        Outcome {
            failure: b & 1 != 0,
            slow: b & 2 != 0,
        }
    }

    fn record(&mut self, o: Outcome) {
        let i = self.head;
        let shift = (i % 4) * 2;
        let byte = &mut self.bits[usize::from(i / 4)];
        *byte &= !(3 << shift);
        *byte |= (u8::from(o.failure) | (u8::from(o.slow) << 1)) << shift;
        self.head = (self.head + 1) % self.size;
        self.len = (self.len + 1).min(self.size);
    }

    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        // The recorded calls are the `len` slots before `head` (all of them once full).
        for k in 0..self.len {
            let i = (self.head + self.size - 1 - k) % self.size;
            t.add(self.get(i));
        }
        t
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(COUNT_TAG);
        for v in [self.size, self.len, self.head] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.bits);
    }

    fn decode(size: u32, bytes: &[u8]) -> Option<Self> {
        let fresh = Self::new(size);
        if bytes.len() != 7 + fresh.bits.len() || bytes[0] != COUNT_TAG {
            return None;
        }
        let at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let (stored_size, len, head) = (at(1), at(3), at(5));
        if stored_size != fresh.size || len > stored_size || head >= stored_size {
            return None;
        }
        Some(Self {
            len,
            head,
            bits: bytes[7..].to_vec(),
            ..fresh
        })
    }
}

/// Ten buckets covering the last `window_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    bucket_ms: u64,
    /// Index (`now_ms / bucket_ms`) of the newest bucket written.
    newest: u64,
    buckets: [Totals; BUCKETS],
}

impl TimeWindow {
    fn new(window_ms: u64) -> Self {
        Self {
            bucket_ms: (window_ms / BUCKETS as u64).max(1),
            newest: 0,
            buckets: [Totals::default(); BUCKETS],
        }
    }

    fn record(&mut self, o: Outcome, now_ms: u64) {
        let idx = now_ms / self.bucket_ms;
        if idx > self.newest {
            let stale = (idx - self.newest).min(BUCKETS as u64);
            for k in 0..stale {
                self.buckets[((idx - k) % BUCKETS as u64) as usize] = Totals::default();
            }
            self.newest = idx;
        }
        // A clock set back lands in the newest bucket rather than in a stale one.
        let idx = if self.newest - idx >= BUCKETS as u64 {
            self.newest
        } else {
            idx
        };
        self.buckets[(idx % BUCKETS as u64) as usize].add(o);
    }

    fn totals(&self, now_ms: u64) -> Totals {
        let now = (now_ms / self.bucket_ms).max(self.newest);
        let mut t = Totals::default();
        for back in 0..BUCKETS as u64 {
            let Some(idx) = self.newest.checked_sub(back) else {
                break;
            };
            if now - idx >= BUCKETS as u64 {
                break;
            }
            let b = self.buckets[(idx % BUCKETS as u64) as usize];
            t.calls = t.calls.saturating_add(b.calls);
            t.failures = t.failures.saturating_add(b.failures);
            t.slow = t.slow.saturating_add(b.slow);
        }
        t
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(TIME_TAG);
        out.extend_from_slice(&self.bucket_ms.to_le_bytes());
        out.extend_from_slice(&self.newest.to_le_bytes());
        for b in &self.buckets {
            for v in [b.calls, b.failures, b.slow] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn decode(window_ms: u64, bytes: &[u8]) -> Option<Self> {
        let mut w = Self::new(window_ms);
        if bytes.len() != 17 + BUCKETS * 12 || bytes[0] != TIME_TAG {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        if u64_at(1) != w.bucket_ms {
            return None;
        }
        w.newest = u64_at(9);
        for (k, b) in w.buckets.iter_mut().enumerate() {
            let at = 17 + k * 12;
            *b = Totals {
                calls: u32_at(at),
                failures: u32_at(at + 4),
                slow: u32_at(at + 8),
            };
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::DurationSpec;

    const OK: Outcome = Outcome {
        failure: false,
        slow: false,
    };
    const FAIL: Outcome = Outcome {
        failure: true,
        slow: false,
    };
    const SLOW: Outcome = Outcome {
        failure: false,
        slow: true,
    };

    fn round_trip(w: &Window, shape: SlidingWindow) -> Window {
        let mut bytes = Vec::new();
        w.encode(&mut bytes);
        Window::decode(shape, &bytes).expect("decodes")
    }

    #[test]
    fn count_window_keeps_the_last_n_calls() {
        let shape = SlidingWindow::Count(5);
        let mut w = Window::new(shape);
        assert_eq!(w.totals(0), Totals::default());
        for o in [FAIL, FAIL, SLOW, OK] {
            w.record(o, 0);
        }
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 4,
                failures: 2,
                slow: 1
            }
        );
        // Three more: the two failures fall out.
        for o in [OK, OK, OK] {
            w.record(o, 0);
        }
        let w = round_trip(&w, shape);
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 5,
                failures: 0,
                slow: 1
            }
        );
        let mut bytes = Vec::new();
        Window::new(SlidingWindow::Count(1000)).encode(&mut bytes);
        assert_eq!(bytes.len(), 257, "two bits per call");
    }

    #[test]
    fn time_window_forgets_buckets_older_than_the_window() {
        let shape = SlidingWindow::Duration(DurationSpec::from_millis(1000));
        let mut w = Window::new(shape);
        w.record(FAIL, 10_000);
        w.record(FAIL, 10_050);
        w.record(OK, 10_550);
        assert_eq!(w.totals(10_600).calls, 3);
        assert_eq!(w.totals(10_600).failures, 2);
        // 1 s after the first bucket it is gone; the 10_550 one stays until 11_500.
        assert_eq!(w.totals(11_000).calls, 1);
        assert_eq!(w.totals(11_499).calls, 1);
        assert_eq!(w.totals(11_500).calls, 0);
        // Recording much later clears every bucket.
        w.record(SLOW, 50_000);
        let w = round_trip(&w, shape);
        assert_eq!(
            w.totals(50_000),
            Totals {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
    }

    #[test]
    fn time_window_survives_a_clock_set_back() {
        let mut w = Window::new(SlidingWindow::Duration(DurationSpec::from_millis(1000)));
        w.record(FAIL, 100_000);
        w.record(FAIL, 1_000);
        assert_eq!(w.totals(100_000).failures, 2);
    }

    #[test]
    fn another_shape_does_not_decode() {
        let mut bytes = Vec::new();
        Window::new(SlidingWindow::Count(5)).encode(&mut bytes);
        assert!(Window::decode(SlidingWindow::Count(6), &bytes).is_none());
        let d = SlidingWindow::Duration(DurationSpec::from_millis(1000));
        assert!(Window::decode(d, &bytes).is_none());
        assert!(Window::decode(SlidingWindow::Count(5), &bytes[..3]).is_none());
        let mut t = Vec::new();
        Window::new(d).encode(&mut t);
        assert!(
            Window::decode(SlidingWindow::Duration(DurationSpec::from_millis(2000)), &t).is_none()
        );
    }
}
