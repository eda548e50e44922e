//! The Resilience4j state machine of one breaker, as plain data with a caller-supplied
//! clock (milliseconds), and its byte form in shared data.
//!
//! ```text
//!            failure or slow-call rate >= threshold
//!            (window holds >= minimumNumberOfCalls)
//!   CLOSED ─────────────────────────────────────────▶ OPEN
//!     ▲                                                │ waitDurationInOpenState,
//!     │ trials below both thresholds                   │ then the next request
//!     │                                                ▼
//!     └──────────────────────────────────────────── HALF_OPEN ──▶ OPEN (trials over a threshold)
//! ```
//!
//! Every transition bumps the breaker's *generation*; a call remembers the generation that
//! admitted it, and its outcome is only recorded if the breaker is still in that
//! generation (calls admitted while closed that end after the breaker opened are not
//! counted, nor are they trials).

use super::spec::{CircuitBreakerSpec, SlidingWindow};
use super::window::{Outcome, Totals, Window};
use std::fmt;

/// A half-open round whose every trial was handed out this long ago without all of them
/// ending (a worker lost them) starts over.
pub const HALF_OPEN_STALE_MS: u64 = 60_000;
/// A record written this far in the future was written before the clock was set back.
const BACKSTEP_MS: u64 = 1_000;

/// The rules of a breaker, from its policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub failure_threshold: f64,
    pub slow_threshold: f64,
    pub slow_call_ms: u64,
    pub minimum_calls: u32,
    pub wait_ms: u64,
    pub half_open_calls: u32,
    pub window: SlidingWindow,
}

impl Rules {
    /// The rules of `spec`.
    pub fn of(spec: &CircuitBreakerSpec) -> Self {
        Self {
            failure_threshold: spec.failure_threshold().value(),
            slow_threshold: spec.slow_threshold().value(),
            slow_call_ms: spec.slow_call_ms(),
            minimum_calls: spec.minimum_calls(),
            wait_ms: spec.wait_ms(),
            half_open_calls: spec.half_open_calls(),
            window: spec.window(),
        }
    }

    /// Why `totals` trip the breaker, if they do.
    fn trips(&self, t: &Totals, minimum: u32) -> Option<Reason> {
        if t.calls < minimum.max(1) {
            return None;
        }
        if t.failure_rate() >= self.failure_threshold {
            return Some(Reason::FailureRate(t.failure_rate()));
        }
        if t.slow_rate() >= self.slow_threshold {
            return Some(Reason::SlowCallRate(t.slow_rate()));
        }
        None
    }
}

/// The three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The `state` gauge's value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// Failures per 100 calls.
    FailureRate(f64),
    /// Slow calls per 100 calls.
    SlowCallRate(f64),
    /// The open state's wait is over.
    WaitOver,
    /// The trial calls were below both thresholds.
    TrialsSucceeded,
    /// A half-open round's trials were lost (never ended); a new round starts.
    TrialsLost,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FailureRate(r) => write!(f, "failure rate {r:.1}%"),
            Reason::SlowCallRate(r) => write!(f, "slow-call rate {r:.1}%"),
            Reason::WaitOver => f.write_str("wait in open state over"),
            Reason::TrialsSucceeded => f.write_str("trial calls succeeded"),
            Reason::TrialsLost => f.write_str("trial calls lost"),
        }
    }
}

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

/// What a request gets from the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go upstream; record the outcome with this ticket.
    Call(Ticket),
    /// Open (or half-open with every trial handed out): answer with the fallback.
    Reject {
        /// Until the breaker half-opens (0 while half-open).
        retry_after_ms: u64,
    },
}

/// What a call that went upstream remembers, to record its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub generation: u32,
    /// A half-open trial call.
    pub trial: bool,
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        since_ms: u64,
    },
    HalfOpen {
        since_ms: u64,
        admitted: u16,
        done: Totals,
    },
}

/// One breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    phase: Phase,
    generation: u32,
    /// Last write (ms): an idle closed breaker's slot may go to another key.
    last_ms: u64,
    /// The descriptor key owning this breaker (empty for a policy without descriptors).
    owner: Vec<u8>,
    window: Window,
}

/// Format version of a stored breaker.
const VERSION: u8 = 1;
/// version, phase, generation, since, last, admitted, trial calls/failures/slow, owner length.
const HEADER_LEN: usize = 1 + 1 + 4 + 8 + 8 + 2 + 2 + 2 + 2 + 2;

impl Breaker {
    /// A closed breaker with an empty window, owned by `owner`.
    pub fn new(rules: &Rules, owner: &[u8], now_ms: u64) -> Self {
        Self {
            phase: Phase::Closed,
            generation: 0,
            last_ms: now_ms,
            owner: owner.to_vec(),
            window: Window::new(rules.window),
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// When the breaker entered its state (ms); `None` while closed.
    pub fn since_ms(&self) -> Option<u64> {
        match self.phase {
            Phase::Closed => None,
            Phase::Open { since_ms } | Phase::HalfOpen { since_ms, .. } => Some(since_ms),
        }
    }

    /// The owning descriptor key.
    pub fn owner(&self) -> &[u8] {
        &self.owner
    }

    /// The window's totals at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> Totals {
        self.window.totals(now_ms)
    }

    /// Whether the breaker is closed and untouched for `idle_ms`: it holds nothing worth
    /// keeping, and its slot may go to another key.
    pub fn idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.phase == Phase::Closed && now_ms.saturating_sub(self.last_ms) >= idle_ms
    }

    fn transition(&mut self, to: Phase, reason: Reason, rules: &Rules) -> Transition {
        let from = self.state();
        self.phase = to;
        self.generation = self.generation.wrapping_add(1);
        self.window = Window::new(rules.window);
        Transition {
            from,
            to: self.state(),
            reason,
        }
    }

    /// The admission of a request at `now_ms`, without changing anything: `None` when
    /// the answer needs a write (the breaker half-opens, or hands out a trial).
    pub fn peek(&self, rules: &Rules, now_ms: u64) -> Option<Admission> {
        match self.phase {
            Phase::Closed => Some(Admission::Call(Ticket {
                generation: self.generation,
                trial: false,
            })),
            Phase::Open { since_ms } => {
                let left = open_left(since_ms, rules.wait_ms, now_ms);
                (left > 0).then_some(Admission::Reject {
                    retry_after_ms: left,
                })
            }
            Phase::HalfOpen {
                since_ms, admitted, ..
            } => {
                let full = u32::from(admitted) >= rules.half_open_calls;
                let stale = now_ms.saturating_sub(since_ms) >= HALF_OPEN_STALE_MS;
                (full && !stale).then_some(Admission::Reject { retry_after_ms: 0 })
            }
        }
    }

    /// Admits a request at `now_ms`: closed lets it through, open rejects it until the
    /// wait is over and then half-opens with it as the first trial, half-open lets
    /// `permittedNumberOfCallsInHalfOpenState` trials through and rejects the rest.
    pub fn admit(&mut self, rules: &Rules, now_ms: u64) -> (Admission, Option<Transition>) {
        if let Some(a) = self.peek(rules, now_ms) {
            return (a, None);
        }
        self.last_ms = now_ms;
        let first_trial = Phase::HalfOpen {
            since_ms: now_ms,
            admitted: 1,
            done: Totals::default(),
        };
        let transition = match self.phase {
            Phase::Open { .. } => Some(self.transition(first_trial, Reason::WaitOver, rules)),
            Phase::HalfOpen {
                since_ms,
                admitted,
                done,
            } if u32::from(admitted) < rules.half_open_calls => {
                self.phase = Phase::HalfOpen {
                    since_ms,
                    admitted: admitted + 1,
                    done,
                };
                None
            }
            // Every trial was handed out long ago: a new round.
            Phase::HalfOpen { .. } => Some(self.transition(first_trial, Reason::TrialsLost, rules)),
            Phase::Closed => None,
        };
        let ticket = Ticket {
            generation: self.generation,
            trial: true,
        };
        (Admission::Call(ticket), transition)
    }

    /// Whether recording for `ticket` would change anything (a cheap check before a
    /// shared-data write).
    pub fn wants(&self, ticket: Ticket) -> bool {
        ticket.generation == self.generation && !matches!(self.phase, Phase::Open { .. })
    }

    /// Records the outcome of a call admitted with `ticket`, at `now_ms`; the transition it
    /// causes, if any. Calls of an earlier generation change nothing.
    pub fn record(
        &mut self,
        rules: &Rules,
        ticket: Ticket,
        outcome: Outcome,
        now_ms: u64,
    ) -> Option<Transition> {
        if !self.wants(ticket) {
            return None;
        }
        self.last_ms = now_ms;
        match self.phase {
            Phase::Closed => {
                self.window.record(outcome, now_ms);
                let totals = self.window.totals(now_ms);
                let reason = rules.trips(&totals, rules.minimum_calls)?;
                Some(self.transition(Phase::Open { since_ms: now_ms }, reason, rules))
            }
            Phase::HalfOpen {
                since_ms,
                admitted,
                mut done,
            } if ticket.trial => {
                done.add(outcome);
                if done.calls < rules.half_open_calls {
                    self.phase = Phase::HalfOpen {
                        since_ms,
                        admitted,
                        done,
                    };
                    return None;
                }
                Some(match rules.trips(&done, rules.half_open_calls) {
                    Some(reason) => {
                        self.transition(Phase::Open { since_ms: now_ms }, reason, rules)
                    }
                    None => self.transition(Phase::Closed, Reason::TrialsSucceeded, rules),
                })
            }
            _ => None,
        }
    }

    /// A trial that went upstream but ended without an outcome (the caller went away):
    /// its permit goes back.
    pub fn abandon(&mut self, ticket: Ticket) -> bool {
        if !ticket.trial || ticket.generation != self.generation {
            return false;
        }
        match &mut self.phase {
            Phase::HalfOpen { admitted, .. } if *admitted > 0 => {
                *admitted -= 1;
                true
            }
            _ => false,
        }
    }

    /// The bytes stored in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let (phase, since, admitted, done) = match self.phase {
            Phase::Closed => (0u8, 0, 0, Totals::default()),
            Phase::Open { since_ms } => (1, since_ms, 0, Totals::default()),
            Phase::HalfOpen {
                since_ms,
                admitted,
                done,
            } => (2, since_ms, admitted, done),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + self.owner.len() + 260);
        out.push(VERSION);
        out.push(phase);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&since.to_le_bytes());
        out.extend_from_slice(&self.last_ms.to_le_bytes());
        for v in [
            admitted,
            clamp16(done.calls),
            clamp16(done.failures),
            clamp16(done.slow),
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&clamp16(self.owner.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.owner[..self.owner.len().min(usize::from(u16::MAX))]);
        self.window.encode(&mut out);
        out
    }

    /// Decodes stored bytes; `None` for an empty value or bytes this version did not
    /// write. A window of another shape (the policy changed) is replaced by an empty one.
    pub fn decode(rules: &Rules, bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let generation = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes"));
        let since_ms = u64_at(6);
        let phase = match bytes[1] {
            0 => Phase::Closed,
            1 => Phase::Open { since_ms },
            2 => Phase::HalfOpen {
                since_ms,
                admitted: u16_at(22),
                done: Totals {
                    calls: u32::from(u16_at(24)),
                    failures: u32::from(u16_at(26)),
                    slow: u32::from(u16_at(28)),
                },
            },
            _ => return None,
        };
        let owner_end = HEADER_LEN + usize::from(u16_at(30));
        let owner = bytes.get(HEADER_LEN..owner_end)?.to_vec();
        let window = Window::decode(rules.window, &bytes[owner_end..])
            .unwrap_or_else(|| Window::new(rules.window));
        Some(Self {
            phase,
            generation,
            last_ms: u64_at(14),
            owner,
            window,
        })
    }
}

fn clamp16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Milliseconds an open breaker still waits (0: over). A breaker opened clearly in the
/// future was opened before the clock was set back; its wait counts as over.
fn open_left(since_ms: u64, wait_ms: u64, now_ms: u64) -> u64 {
    if now_ms.saturating_add(BACKSTEP_MS) < since_ms {
        return 0;
    }
    since_ms.saturating_add(wait_ms).saturating_sub(now_ms)
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
