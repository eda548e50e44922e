//! Per-worker state shared by the root context and the streams it creates: the current
//! configuration, the streams waiting out an injected delay, and the random generator.
//! Each Envoy worker runs its own VM, so nothing here is shared across workers.

use crate::config::ActiveConfig;
use meshwarden_common::fault::{AbortPlan, DelayQueue, SplitMix64, TickClock};
use std::rc::Rc;
use std::time::Duration;

/// Timer period while streams are waiting: the granularity of injected delays.
pub const TICK: Duration = Duration::from_millis(1);
/// A longer gap between ticks is a stall, not the timer's granularity.
const MAX_TICK_GAP_US: u64 = 20_000;

/// What to do when a stream's delay ends.
#[derive(Debug, Clone, Copy)]
pub enum Wake {
    /// Forward the request.
    ResumeRequest,
    /// Answer the request locally (a delay followed by an abort).
    Abort(AbortPlan),
    /// Send the upstream's response on.
    ResumeResponse,
    /// Replace the upstream's response (a response delay followed by an override with body).
    OverrideResponse,
}

/// A stream waiting for its delay to end.
pub struct Waiting {
    pub wake: Wake,
    /// The configuration the stream matched (it may have been replaced since).
    pub config: Rc<ActiveConfig>,
    pub policy: usize,
}

/// One worker's state.
pub struct Worker {
    pub config: Rc<ActiveConfig>,
    pub waiting: DelayQueue<Waiting>,
    pub rng: SplitMix64,
    /// The timer's real granularity, learned from its ticks (µs).
    pub clock: TickClock,
    ticking: bool,
}

impl Worker {
    /// An empty (pass-through) worker state.
    pub fn new(seed: u64) -> Self {
        Self {
            config: Rc::new(ActiveConfig::default()),
            waiting: DelayQueue::default(),
            rng: SplitMix64(seed),
            clock: TickClock::new(TICK.as_micros() as u64, MAX_TICK_GAP_US),
            ticking: false,
        }
    }

    /// Parks stream `id` until `deadline_us` (Unix µs), starting the timer if it is idle.
    pub fn park(&mut self, id: u32, now_us: u64, deadline_us: u64, waiting: Waiting) {
        self.waiting.push(id, deadline_us, waiting);
        if !self.ticking {
            self.ticking =
                meshwarden_filter_runtime::proxy_wasm::hostcalls::set_tick_period(TICK).is_ok();
            self.clock.started(now_us);
        }
    }

    /// Takes the streams this tick (at `now_us`) should release: those due within half the
    /// timer's real granularity, so delays are right on average.
    pub fn release_due(&mut self, now_us: u64) -> Vec<(u32, Waiting)> {
        let horizon = self.clock.tick(now_us);
        self.waiting.pop_due(horizon)
    }

    /// Stops the timer when nothing waits.
    pub fn idle_timer(&mut self) {
        if self.ticking && self.waiting.is_empty() {
            self.ticking =
                meshwarden_filter_runtime::proxy_wasm::hostcalls::set_tick_period(Duration::ZERO)
                    .is_err();
        }
    }
}
