//! State one worker's VM shares between its root context (which sends copies and receives
//! their answers) and its streams (which prepare copies): loaded policies, the bounded queue,
//! copies in flight, pending diffs and the byte budget.

use crate::metrics::{self, Metric};
use meshwarden_common::mirror::diff::{
    describe_mismatch, DiffOutcome, PendingDiffs, ReadyPair, MAX_PENDING_DIFFS,
};
use meshwarden_common::mirror::queue::{BoundedQueue, ByteBudget};
use meshwarden_common::mirror::rate::LogLimiter;
use meshwarden_common::mirror::{CompiledMirror, SkipReason};
use meshwarden_common::random::SplitMix64;
use meshwarden_common::{CompiledMatch, PolicyIndex};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A loaded policy.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub matcher: CompiledMatch,
    pub plan: CompiledMirror,
    /// Limits mismatch log lines (diff mode).
    pub log: RefCell<LogLimiter>,
}

impl Policy {
    /// Adds `n` to one of this policy's counters.
    pub fn count(&self, metric: Metric, n: u64) {
        metrics::add(&self.name, metric, n);
    }

    /// Counts `n` copies not sent for `reason`.
    pub fn skipped(&self, reason: SkipReason, n: usize) {
        self.count(Metric::Skipped(reason), n as u64);
    }
}

/// Bytes reserved in the worker's budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Rc<RefCell<ByteBudget>>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut b) = self.budget.try_borrow_mut() {
            b.release(self.bytes);
        }
    }
}

/// A copied request body, shared by the copies to each target.
#[derive(Debug)]
pub struct HeldBody {
    pub data: Vec<u8>,
    _reservation: Reservation,
}

/// A copy waiting to be sent.
#[derive(Debug)]
pub struct Copy {
    pub policy: Rc<Policy>,
    pub target: usize,
    pub request_id: u64,
    pub headers: Rc<Vec<(String, String)>>,
    pub body: Option<Rc<HeldBody>>,
    pub queued_ms: u64,
    pub diff: bool,
}

/// A copy sent and not answered yet.
#[derive(Debug)]
pub struct InFlight {
    pub policy: Rc<Policy>,
    pub target: usize,
    pub request_id: u64,
    pub diff: bool,
    pub sent_ms: u64,
}

/// What a pending diff needs to report a mismatch.
#[derive(Debug, Clone)]
pub struct DiffContext {
    pub policy: Rc<Policy>,
    pub path: String,
    /// The request's trace id, for the mismatch log line.
    pub trace_id: String,
}

/// The per-worker state.
#[derive(Debug)]
pub struct Worker {
    pub policies: Rc<Vec<Rc<Policy>>>,
    /// Which policies can match a request (by path).
    pub index: Rc<PolicyIndex>,
    pub queue: BoundedQueue<Copy>,
    pub in_flight: HashMap<u32, InFlight>,
    pub diffs: PendingDiffs<DiffContext>,
    /// Limits warnings about copies the proxy refused to send (e.g. unknown cluster).
    pub send_warnings: LogLimiter,
    next_request: u64,
    rng: SplitMix64,
}

/// Shared handles.
#[derive(Debug, Clone)]
pub struct Shared {
    pub worker: Rc<RefCell<Worker>>,
    pub budget: Rc<RefCell<ByteBudget>>,
}

impl Shared {
    pub fn new() -> Self {
        let rng = meshwarden_filter_runtime::random::next_u64();
        Self {
            worker: Rc::new(RefCell::new(Worker {
                policies: Rc::new(Vec::new()),
                index: Rc::default(),
                queue: BoundedQueue::default(),
                in_flight: HashMap::new(),
                diffs: PendingDiffs::new(MAX_PENDING_DIFFS),
                send_warnings: LogLimiter::per_minute(1),
                next_request: 1,
                rng: SplitMix64(rng),
            })),
            budget: Rc::new(RefCell::new(ByteBudget::default())),
        }
    }

    /// Wraps a body whose bytes are already reserved.
    pub fn hold(&self, data: Vec<u8>) -> HeldBody {
        let bytes = data.len();
        HeldBody {
            data,
            _reservation: Reservation {
                budget: self.budget.clone(),
                bytes,
            },
        }
    }
}

impl Worker {
    /// A fresh request number.
    pub fn next_request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// The worker's generator (SplitMix64 seeded from the host's randomness).
    pub fn random(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }
}

/// Records the comparison of one pair: counters and a rate-limited log line.
pub fn record_pair(pair: ReadyPair<DiffContext>, now_ms: u64) {
    let policy = &pair.context.policy;
    let Some(diff) = &policy.plan.diff else {
        return;
    };
    match diff.compare(&pair.primary, &pair.mirror) {
        DiffOutcome::Match => policy.count(Metric::DiffMatch, 1),
        DiffOutcome::Incomparable => policy.count(Metric::DiffIncomparable, 1),
        DiffOutcome::Mismatch(d) => {
            policy.count(Metric::DiffMismatch, 1);
            if policy.log.borrow_mut().allow(now_ms) {
                log::info!(
                    "{} target={} trace={}",
                    describe_mismatch(
                        &policy.name,
                        &pair.context.path,
                        &pair.primary,
                        &pair.mirror,
                        &d
                    ),
                    policy.plan.targets[pair.target].target,
                    pair.context.trace_id
                );
            }
        }
    }
}
