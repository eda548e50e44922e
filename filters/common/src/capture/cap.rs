//! `maxPerSecond`: how many summaries one proxy sends per clock second, counted in the
//! proxy's shared data so every worker draws from one allowance. A fixed one-second window
//! keeps the state to one key of 12 bytes; the caller supplies the clock.

use crate::ratelimit::store::{update, Contended, SharedStore, Update};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The per-proxy allowance of one capture policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCap {
    key: String,
    max_per_second: u32,
}

/// One window as stored: the second it counts (little-endian u64) and how many summaries
/// it admitted (little-endian u32). Anything else in the key starts a fresh window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    second: u64,
    count: u32,
}

impl Window {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let second = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let count = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
        (bytes.len() == 12).then_some(Self { second, count })
    }

    fn encode(self) -> Vec<u8> {
        let mut out = self.second.to_le_bytes().to_vec();
        out.extend_from_slice(&self.count.to_le_bytes());
        out
    }
}

impl RateCap {
    /// The allowance of `max_per_second` kept under shared-data `key` (one per policy).
    pub fn new(key: impl Into<String>, max_per_second: u32) -> Self {
        Self {
            key: key.into(),
            max_per_second,
        }
    }

    /// The shared-data key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether one more summary may be sent at `now_ns` (Unix nanoseconds); takes it from
    /// the allowance if so. `Err` when the key stayed contended (the caller drops the
    /// summary and counts it).
    pub fn admit<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        now_ns: u64,
    ) -> Result<bool, Contended> {
        let second = now_ns / NANOS_PER_SECOND;
        update(store, &self.key, |bytes| {
            let current = Window::decode(bytes)
                .filter(|w| w.second == second)
                .unwrap_or(Window { second, count: 0 });
            if current.count >= self.max_per_second {
                return Update::Keep(false);
            }
            let next = Window {
                count: current.count + 1,
                ..current
            };
            Update::Write(next.encode(), true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::store::MemoryStore;

    const S: u64 = NANOS_PER_SECOND;

    fn admitted(cap: &RateCap, store: &MemoryStore, n: usize, now_ns: u64) -> usize {
        (0..n).filter(|_| cap.admit(store, now_ns).unwrap()).count()
    }

    #[test]
    fn a_burst_gets_the_allowance_of_its_second() {
        let store = MemoryStore::new();
        let cap = RateCap::new("capture.p", 20);
        assert_eq!(admitted(&cap, &store, 200, 100 * S + 1), 20);
        assert_eq!(admitted(&cap, &store, 5, 100 * S + S / 2), 0, "same second");
        assert_eq!(admitted(&cap, &store, 30, 101 * S), 20, "next second");
    }

    #[test]
    fn workers_share_one_allowance() {
        let store = MemoryStore::new();
        let a = RateCap::new("capture.p", 10);
        let b = RateCap::new("capture.p", 10);
        let other = RateCap::new("capture.q", 10);
        assert_eq!(admitted(&a, &store, 6, 7 * S), 6);
        assert_eq!(admitted(&b, &store, 6, 7 * S), 4);
        assert_eq!(
            admitted(&other, &store, 3, 7 * S),
            3,
            "policies count apart"
        );
    }

    #[test]
    fn odd_stored_bytes_start_a_fresh_window() {
        use crate::ratelimit::store::SharedStore;
        let store = MemoryStore::new();
        store.set("capture.p", b"\xff\x00junk", None).unwrap();
        let cap = RateCap::new("capture.p", 2);
        assert_eq!(admitted(&cap, &store, 5, 3 * S), 2);
        assert_eq!(cap.key(), "capture.p");
    }

    #[test]
    fn a_clock_set_back_starts_that_second_afresh() {
        let store = MemoryStore::new();
        let cap = RateCap::new("capture.p", 1);
        assert_eq!(admitted(&cap, &store, 3, 50 * S), 1);
        assert_eq!(admitted(&cap, &store, 3, 40 * S), 1);
    }
}
