//! Records a filter sends off the request path (trace spans, capture summaries), per policy
//! and worker: streams push them into a bounded queue ([`Outbox::push`]: never a host
//! call), the root context's tick sends them in batches ([`Outbox::flush`]) through the
//! filter's [`Transport`], and the answers are counted ([`Outbox::answered`]). A slow or
//! dead receiver fills the queue; further records are dropped and counted, so requests
//! never wait for it. [`Outboxes`] are those of one stage, across configurations.

use crate::host::now_ms;
use crate::metrics::{MetricKind, PolicyMetrics};
use meshwarden_common::batch::{BatchLimits, Batcher};
use meshwarden_common::mirror::rate::LogLimiter;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Most batches of one policy in flight at once per worker; more wait in the queue.
pub const MAX_IN_FLIGHT: usize = 4;
/// A call unanswered this long after its timeout is given up as failed.
const LOST_AFTER_MS: u64 = 5_000;
/// Longest gap between two looks at the queues: how long a full batch may wait.
const TICK: Duration = Duration::from_millis(50);

/// The per-policy counters of an outbox, each counting records.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    /// The filter's per-policy metrics.
    pub metrics: PolicyMetrics,
    /// Records the receiver accepted.
    pub sent: &'static str,
    /// Records dropped: the queue was full (or the filter dropped them before).
    pub dropped: &'static str,
    /// Records whose call failed: refused, unanswered, or rejected.
    pub failed: &'static str,
    /// What a record is, in warnings (`spans`, `reports`).
    pub records: &'static str,
}

impl Counters {
    /// Defines the three counters of every policy, so they show (as 0) before any event.
    pub fn define_all<'a>(&self, policies: impl IntoIterator<Item = &'a str>) {
        let counters = [self.sent, self.dropped, self.failed].map(|m| (m, MetricKind::Counter));
        self.metrics.define_all(policies, &counters);
    }
}

/// How a filter sends a batch, and how it judges the answer.
pub trait Transport {
    /// A record.
    type Item;
    /// What the proxy reports of an answer (number of headers, gRPC status).
    type Answer: Copy;
    /// The filter's counters.
    const COUNTERS: Counters;

    /// The receiver's cluster, for warnings.
    fn cluster(&self) -> &str;
    /// Sends `policy`'s `batch`; `dropped` records were dropped since the last batch. The
    /// call's token, or why the proxy refused it.
    fn send(&self, policy: &str, batch: &[Self::Item], dropped: u64) -> Result<u32, String>;
    /// Whether the answer accepts the batch; what went wrong otherwise.
    fn judge(&self, answer: Self::Answer) -> Result<(), String>;
}

/// A batch sent and not answered yet.
#[derive(Debug, Clone, Copy)]
struct Sent {
    records: u64,
    sent_ms: u64,
}

/// The outbox of one policy on one worker.
#[derive(Debug)]
pub struct Outbox<T: Transport> {
    policy: String,
    transport: T,
    batcher: RefCell<Batcher<T::Item>>,
    flush_interval: Duration,
    /// Longest wait for an answer before a call counts as failed.
    lost_after_ms: u64,
    in_flight: RefCell<HashMap<u32, Sent>>,
    /// Dropped since the last batch left.
    unsent_drops: Cell<u64>,
    /// Limits warnings about refused, failed and lost calls.
    warnings: RefCell<LogLimiter>,
    /// No longer looked after by the stage: records pushed now would never leave.
    detached: Cell<bool>,
}

impl<T: Transport> Outbox<T> {
    /// An empty outbox of `policy`'s records, batched as `limits` say and sent through
    /// `transport`.
    pub fn new<const F: u64>(policy: &str, transport: T, limits: BatchLimits<F>) -> Self {
        Self {
            policy: policy.to_string(),
            batcher: RefCell::new(Batcher::with_limits(limits, now_ms())),
            flush_interval: limits.flush_interval.as_duration(),
            lost_after_ms: limits.timeout.as_millis() + LOST_AFTER_MS,
            transport,
            in_flight: RefCell::default(),
            unsent_drops: Cell::new(0),
            warnings: RefCell::new(LogLimiter::per_minute(1)),
            detached: Cell::new(false),
        }
    }

    /// How often the root context should look at this outbox.
    pub fn tick(&self) -> Duration {
        self.flush_interval
    }

    /// Counts a record dropped before it reached the queue.
    pub fn drop_one(&self) {
        self.unsent_drops.set(self.unsent_drops.get() + 1);
        let c = T::COUNTERS;
        c.metrics.increment(c.dropped, &self.policy);
    }

    /// Queues a record (from a stream); a full queue drops and counts it.
    pub fn push(&self, record: T::Item) {
        let queued = !self.detached.get()
            && self
                .batcher
                .try_borrow_mut()
                .is_ok_and(|mut b| b.push(record));
        if !queued {
            self.drop_one();
        }
    }

    /// Whether nothing waits and no batch is out.
    pub fn is_idle(&self) -> bool {
        self.batcher.borrow().is_empty() && self.in_flight.borrow().is_empty()
    }

    /// The stage stops looking after this outbox.
    pub fn detach(&self) {
        self.detached.set(true);
    }

    /// From the root context's tick: gives up overdue calls, then sends every due batch
    /// while fewer than [`MAX_IN_FLIGHT`] are out.
    pub fn flush(&self) {
        let now = now_ms();
        self.expire(now);
        while self.in_flight.borrow().len() < MAX_IN_FLIGHT {
            let Some(batch) = self.batcher.borrow_mut().take_due(now) else {
                break;
            };
            self.send(&batch, now);
        }
    }

    fn send(&self, batch: &[T::Item], now: u64) {
        let records = batch.len() as u64;
        let dropped = self.unsent_drops.replace(0);
        match self.transport.send(&self.policy, batch, dropped) {
            Ok(token) => {
                let sent = Sent {
                    records,
                    sent_ms: now,
                };
                self.in_flight.borrow_mut().insert(token, sent);
            }
            Err(e) => {
                self.count_failed(records);
                self.warn(now, &format!("not sent ({e}); does the cluster exist?"));
            }
        }
    }

    /// Counts the answer to call `token`; `false` if it is not this outbox's.
    pub fn answered(&self, token: u32, answer: T::Answer) -> bool {
        let Some(sent) = self.in_flight.borrow_mut().remove(&token) else {
            return false;
        };
        match self.transport.judge(answer) {
            Ok(()) => {
                let c = T::COUNTERS;
                c.metrics.add(c.sent, &self.policy, sent.records);
            }
            Err(what) => {
                self.count_failed(sent.records);
                self.warn(now_ms(), &what);
            }
        }
        true
    }

    /// Calls whose answer is overdue (every call has a timeout, so it never comes).
    fn expire(&self, now: u64) {
        let limit = self.lost_after_ms;
        let lost: u64 = {
            let mut in_flight = self.in_flight.borrow_mut();
            let before: u64 = in_flight.values().map(|s| s.records).sum();
            in_flight.retain(|_, s| now.saturating_sub(s.sent_ms) <= limit);
            before - in_flight.values().map(|s| s.records).sum::<u64>()
        };
        self.count_failed(lost);
    }

    fn count_failed(&self, records: u64) {
        let c = T::COUNTERS;
        c.metrics.add(c.failed, &self.policy, records);
    }

    fn warn(&self, now: u64, what: &str) {
        if self.warnings.borrow_mut().allow(now) {
            log::warn!(
                "{} filter: policy {}: {} to cluster {} {what}",
                T::COUNTERS.metrics.filter(),
                self.policy,
                T::COUNTERS.records,
                self.transport.cluster()
            );
        }
    }
}

impl<T: Transport + PartialEq> Outbox<T> {
    /// Whether this outbox serves `policy` through `transport` (so a new configuration
    /// keeps it, queue and calls in flight included).
    pub fn serves(&self, policy: &str, transport: &T) -> bool {
        self.policy == policy && self.transport == *transport
    }
}

/// The outboxes of one stage: those of the current configuration, and those a new
/// configuration replaced, until their queue and calls are done.
pub struct Outboxes<T: Transport> {
    current: RefCell<Vec<Rc<Outbox<T>>>>,
    draining: RefCell<Vec<Rc<Outbox<T>>>>,
}

impl<T: Transport> Default for Outboxes<T> {
    fn default() -> Self {
        Self {
            current: RefCell::default(),
            draining: RefCell::default(),
        }
    }
}

impl<T: Transport + PartialEq> Outboxes<T> {
    /// For a new configuration: the current outbox serving `policy` through `transport`
    /// (whose equality covers `limits`), or a new one.
    pub fn get_or_new<const F: u64>(
        &self,
        policy: &str,
        transport: T,
        limits: BatchLimits<F>,
    ) -> Rc<Outbox<T>> {
        let current = self.current.borrow();
        current
            .iter()
            .find(|o| o.serves(policy, &transport))
            .cloned()
            .unwrap_or_else(|| Rc::new(Outbox::new(policy, transport, limits)))
    }
}

impl<T: Transport> Outboxes<T> {
    /// Makes `next` the current outboxes; the current ones not among them drain.
    pub fn replace(&self, next: Vec<Rc<Outbox<T>>>) {
        let old = std::mem::replace(&mut *self.current.borrow_mut(), next);
        let current = self.current.borrow();
        let replaced = old
            .into_iter()
            .filter(|o| !current.iter().any(|c| Rc::ptr_eq(c, o)));
        self.draining.borrow_mut().extend(replaced);
    }

    /// The current outboxes, then the draining ones.
    fn all(&self) -> Vec<Rc<Outbox<T>>> {
        let current = self.current.borrow();
        let draining = self.draining.borrow();
        current.iter().chain(draining.iter()).cloned().collect()
    }

    /// How often the root context should tick: `None` without outboxes.
    pub fn tick_every(&self) -> Option<Duration> {
        self.all().iter().map(|o| o.tick().min(TICK)).min()
    }

    /// From the root context's tick: flushes every outbox, then lets go of the drained ones.
    pub fn on_tick(&self) {
        for o in self.all() {
            o.flush();
        }
        self.draining.borrow_mut().retain(|o| {
            let busy = !o.is_idle();
            if !busy {
                o.detach();
            }
            busy
        });
    }

    /// Counts the answer to call `token`; `false` if it is none of these outboxes'.
    pub fn answered(&self, token: u32, answer: T::Answer) -> bool {
        self.all().iter().any(|o| o.answered(token, answer))
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
