//! The adaptive concurrency limit of `shedding.adaptive`: the gradient algorithm of Envoy's
//! `adaptive_concurrency` filter, on the caller's clock, with its state in one fixed-size
//! shared-data record per policy so every worker of the proxy shares one limit.
//!
//! - **Min RTT probe.** The policy starts by pinning the limit to `minLimit` until
//!   `minRttRequests` requests *admitted during the probe* have completed; their mean
//!   latency is the `minRtt`, the latency of the upstream when it is not queueing. The
//!   probe repeats every `minRttInterval` so a slower (or faster) upstream is re-measured.
//! - **Sample windows.** Outside a probe, the latencies of completed requests are summed
//!   over `sampleWindow`; when a completion finds the window over, the window's mean
//!   latency `sample` updates the limit:
//!
//!   ```text
//!   gradient = clamp(minRtt × (1 + buffer) / sample, 0.5, 2)
//!   limit    = clamp(limit × gradient + √(limit × gradient), minLimit, maxLimit)
//!   ```
//!
//!   Latency near `minRtt` grows the limit (up to doubling per window, plus the √ headroom
//!   that lets a queue form and be measured); latency well above it shrinks it (at most
//!   halving per window). For an upstream whose latency rises with concurrency the limit
//!   settles where the two balance (see the tests).
//! - **No growth while unused** (from Netflix's concurrency-limits): a window whose peak
//!   in-flight count stayed below half the limit does not grow it, so a quiet period (or
//!   the tail of a burst) does not inflate the limit far beyond what was ever tested.
//!
//! The mean (not a percentile) keeps the record fixed-size and each completion one
//! compare-and-swap. Windows close lazily, on the first completion after their end: an idle
//! policy does no work.

use super::store::{update, Contended, SharedStore, Update};

/// Parameters of the algorithm, from the validated spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradientParams {
    /// Limit before the first window (after the first probe).
    pub initial_limit: u64,
    /// Floor of the limit; the limit during a min-RTT probe.
    pub min_limit: u64,
    /// Ceiling of the limit.
    pub max_limit: u64,
    /// Length of a sample window, ns.
    pub window_ns: u64,
    /// Time between min-RTT probes, ns.
    pub min_rtt_interval_ns: u64,
    /// Completed requests a probe measures.
    pub min_rtt_requests: u64,
    /// Latency tolerated over `minRtt` before the limit shrinks, parts per million
    /// (250000: 25 %).
    pub buffer_ppm: u64,
}

/// Words in the shared record.
const WORDS: usize = 8;
/// Fixed point of the stored limit (thousandths of a request, so √ growth accumulates).
const MILLI: f64 = 1000.0;

/// The shared state of one policy's adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GradientState {
    /// Limit in thousandths (0: not yet set, `initialLimit`).
    limit_milli: u64,
    /// Measured min RTT, ns (0: not measured yet).
    min_rtt_ns: u64,
    /// Start of the current window or probe, ns.
    since_ns: u64,
    /// Sum of latencies in the current window or probe, ns.
    sum_ns: u64,
    /// Completions in the current window or probe.
    count: u64,
    /// Whether a min-RTT probe is running (1) or not (0).
    probing: u64,
    /// When the next probe starts, ns.
    next_probe_ns: u64,
    /// Most requests in flight seen by a completion in the current window.
    peak: u64,
}

impl GradientState {
    /// Decodes the record; anything malformed (or absent) is the initial state: a probe.
    pub fn decode(bytes: &[u8]) -> Self {
        let mut w = [0u64; WORDS];
        if bytes.len() == WORDS * 8 {
            for (i, chunk) in bytes.chunks_exact(8).enumerate() {
                w[i] = chunk.try_into().map(u64::from_le_bytes).unwrap_or_default();
            }
        } else {
            w[5] = 1;
        }
        Self {
            limit_milli: w[0],
            min_rtt_ns: w[1],
            since_ns: w[2],
            sum_ns: w[3],
            count: w[4],
            probing: u64::from(w[5] != 0),
            next_probe_ns: w[6],
            peak: w[7],
        }
    }

    /// The fixed-size record.
    pub fn encode(&self) -> Vec<u8> {
        [
            self.limit_milli,
            self.min_rtt_ns,
            self.since_ns,
            self.sum_ns,
            self.count,
            self.probing,
            self.next_probe_ns,
            self.peak,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
    }

    fn stored_limit(&self, p: &GradientParams) -> f64 {
        if self.limit_milli == 0 {
            p.initial_limit as f64
        } else {
            self.limit_milli as f64 / MILLI
        }
    }

    /// Requests allowed in flight now (`minLimit` during a probe).
    pub fn limit(&self, p: &GradientParams) -> u64 {
        if self.probing != 0 {
            return p.min_limit;
        }
        (self.stored_limit(p) as u64).clamp(p.min_limit, p.max_limit)
    }

    /// Measured min RTT in ns, if a probe has completed.
    pub fn min_rtt_ns(&self) -> Option<u64> {
        (self.min_rtt_ns > 0).then_some(self.min_rtt_ns)
    }

    /// Whether a min-RTT probe is running.
    pub fn is_probing(&self) -> bool {
        self.probing != 0
    }

    /// Records a request admitted at `admitted_ns` that completed at `now_ns` with
    /// `in_flight` requests in flight (itself included); closes the probe or window it
    /// completes and starts the next probe when due.
    pub fn complete(&mut self, p: &GradientParams, admitted_ns: u64, now_ns: u64, in_flight: u64) {
        let latency = now_ns.saturating_sub(admitted_ns);
        if self.probing != 0 {
            // Requests admitted before the probe ran under the old, higher limit.
            if admitted_ns >= self.since_ns {
                self.add(latency);
            }
            if self.count >= p.min_rtt_requests {
                self.min_rtt_ns = (self.sum_ns / self.count).max(1);
                self.probing = 0;
                self.next_probe_ns = now_ns.saturating_add(p.min_rtt_interval_ns);
                self.restart(now_ns);
            }
            return;
        }
        self.add(latency);
        self.peak = self.peak.max(in_flight);
        if now_ns.saturating_sub(self.since_ns) < p.window_ns {
            return;
        }
        let sample = (self.sum_ns / self.count.max(1)).max(1) as f64;
        let target = self.min_rtt_ns as f64 * (1.0 + p.buffer_ppm as f64 / 1e6);
        let gradient = (target / sample).clamp(0.5, 2.0);
        let current = self.stored_limit(p);
        let unused = (self.peak as f64) * 2.0 < current;
        if !(unused && gradient >= 1.0) {
            let scaled = current * gradient;
            let next = (scaled + scaled.sqrt()).clamp(p.min_limit as f64, p.max_limit as f64);
            self.limit_milli = ((next * MILLI) as u64).max(1);
        }
        self.restart(now_ns);
        if now_ns >= self.next_probe_ns {
            self.probing = 1;
        }
    }

    fn add(&mut self, latency_ns: u64) {
        self.sum_ns = self.sum_ns.saturating_add(latency_ns);
        self.count = self.count.saturating_add(1);
    }

    fn restart(&mut self, now_ns: u64) {
        self.since_ns = now_ns;
        self.sum_ns = 0;
        self.count = 0;
        self.peak = 0;
    }
}

/// Reads a policy's state from shared data.
pub fn read<S: SharedStore + ?Sized>(store: &S, key: &str) -> GradientState {
    GradientState::decode(store.get(key).0.as_deref().unwrap_or_default())
}

/// Records a completion in shared data (one compare-and-swap); returns the state after it.
pub fn complete<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    p: &GradientParams,
    (admitted_ns, now_ns): (u64, u64),
    in_flight: u64,
) -> Result<GradientState, Contended> {
    update(store, key, |bytes| {
        let mut s = GradientState::decode(bytes);
        s.complete(p, admitted_ns, now_ns, in_flight);
        Update::Write(s.encode(), s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::store::{ensure_exists, MemoryStore};

    const MS: u64 = 1_000_000;

    fn params() -> GradientParams {
        GradientParams {
            initial_limit: 20,
            min_limit: 3,
            max_limit: 1000,
            window_ns: 100 * MS,
            min_rtt_interval_ns: 60_000 * MS,
            min_rtt_requests: 10,
            buffer_ppm: 250_000,
        }
    }

    /// Drives the state with a synthetic upstream whose latency is `base + k × in-flight`
    /// under a load that always fills the limit: each step, `limit` requests run in parallel
    /// and complete together. Returns the limits seen, one per step.
    fn drive(
        p: &GradientParams,
        s: &mut GradientState,
        base_ms: u64,
        k_ms: u64,
        steps: usize,
    ) -> Vec<u64> {
        let mut now = 1_000 * MS;
        let mut seen = Vec::new();
        for _ in 0..steps {
            let n = s.limit(p);
            let latency = (base_ms + k_ms * n) * MS;
            let admitted = now;
            now += latency;
            for i in 0..n {
                s.complete(p, admitted, now, n - i);
            }
            seen.push(s.limit(p));
        }
        seen
    }

    #[test]
    fn starts_with_a_probe_at_the_floor_then_uses_the_initial_limit() {
        let p = params();
        let mut s = GradientState::decode(&[]);
        assert!(s.is_probing());
        assert_eq!(s.limit(&p), 3);
        for _ in 0..10 {
            s.complete(&p, 0, 35 * MS, 20);
        }
        assert!(!s.is_probing());
        assert_eq!(s.min_rtt_ns(), Some(35 * MS));
        assert_eq!(s.limit(&p), 20);
        assert_eq!(GradientState::decode(&s.encode()), s);
    }

    #[test]
    fn converges_under_latency_that_rises_with_concurrency() {
        let p = params();
        let mut s = GradientState::decode(&[]);
        let seen = drive(&p, &mut s, 20, 5, 400);
        // min RTT at the floor: 20 + 5×3 = 35 ms; the balance point is about 8.5.
        let tail = &seen[300..];
        let (lo, hi) = (*tail.iter().min().unwrap(), *tail.iter().max().unwrap());
        assert!(lo >= 5 && hi <= 12, "limit oscillates in {lo}..={hi}");
        // From a high start too.
        let mut high = s;
        high.limit_milli = 500_000;
        let seen = drive(&p, &mut high, 20, 5, 400);
        assert!(
            seen[300..].iter().all(|l| (5..=12).contains(l)),
            "{:?}",
            &seen[300..]
        );
    }

    #[test]
    fn grows_to_the_ceiling_when_latency_does_not_rise() {
        let mut p = params();
        p.max_limit = 200;
        let mut s = GradientState::decode(&[]);
        let seen = drive(&p, &mut s, 30, 0, 60);
        assert_eq!(*seen.last().unwrap(), 200);
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let p = params();
        let mut s = GradientState::decode(&[]);
        for _ in 0..10 {
            s.complete(&p, 0, 30 * MS, 2);
        }
        assert_eq!(s.limit(&p), 20);
        // Fast answers, but never more than 9 in flight: below half of 20, no growth.
        for w in 1..=50 {
            s.complete(&p, w * 100 * MS, w * 100 * MS + 30 * MS, 9);
        }
        assert_eq!(s.limit(&p), 20);
        // 10 in flight (half the limit): it grows.
        s.complete(&p, 6_070 * MS, 6_100 * MS, 10);
        assert!(s.limit(&p) > 20);
    }

    #[test]
    fn probes_again_after_the_interval_and_ignores_older_requests() {
        let mut p = params();
        p.min_rtt_interval_ns = 1_000 * MS;
        let mut s = GradientState::decode(&[]);
        drive(&p, &mut s, 20, 5, 5);
        assert!(!s.is_probing());
        // Completions past the interval start a new probe when their window closes.
        let t = 10_000 * MS;
        s.complete(&p, t - 50 * MS, t, 20);
        assert!(s.is_probing());
        assert_eq!(s.limit(&p), 3);
        // A request admitted before the probe does not count.
        s.complete(&p, t - 500 * MS, t + 10 * MS, 20);
        assert_eq!(s.count, 0);
        for i in 0..10 {
            s.complete(&p, t + i, t + 100 * MS, 20);
        }
        assert!(!s.is_probing());
        assert_eq!(
            s.min_rtt_ns(),
            Some(100 * MS - 5),
            "mean of 100 ms - 0..9 ns, rounded down"
        );
    }

    #[test]
    fn odd_bytes_are_the_initial_state() {
        let p = params();
        for bytes in [&[][..], &[1, 2, 3][..], &[0xff; 65][..]] {
            let s = GradientState::decode(bytes);
            assert!(s.is_probing());
            assert_eq!(s.limit(&p), 3);
        }
        let mut s = GradientState::decode(&[0xff; 64]);
        assert_eq!(s.limit(&p), 3, "probing flag set");
        s.complete(&p, u64::MAX, 0, 20);
        s.complete(&p, 0, u64::MAX, 20);
    }

    #[test]
    fn shared_record_round_trips() {
        let p = params();
        let store = MemoryStore::new();
        ensure_exists(&store, "g");
        assert!(read(&store, "g").is_probing());
        for _ in 0..10 {
            complete(&store, "g", &p, (0, 40 * MS), 1).unwrap();
        }
        let s = read(&store, "g");
        assert_eq!(s.min_rtt_ns(), Some(40 * MS));
        assert_eq!(s.limit(&p), 20);
    }
}
