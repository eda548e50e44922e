//! Per-policy metrics of the circuit-breaker filter (`meshwarden_circuitbreaker_<metric>{policy}`):
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `state` | gauge | the policy's breaker (with descriptors: the last one that changed): 0 closed, 1 half-open, 2 open |
//! | `open_breakers` | gauge | the policy's breakers not closed (open or half-open) |
//! | `opened_total` | counter | transitions to open (from closed or half-open) |
//! | `half_opened_total` | counter | transitions to half-open |
//! | `closed_total` | counter | transitions from half-open to closed |
//! | `short_circuited_total` | counter | requests answered with the fallback, upstream not called |
//! | `shadow_short_circuited_total` | counter | dry run: requests that would have been answered with the fallback |
//! | `calls_total` | counter | guarded calls that ended with a response (a call admitted before its breaker changed state is counted but does not move the new state) |
//! | `failures_total` | counter | recorded calls that failed |
//! | `slow_calls_total` | counter | recorded calls at or over the slow-call threshold |
//! | `overflow_total` | counter | requests whose descriptor key found no breaker slot (`maxKeys`), let through unguarded |
//! | `contended_total` | counter | shared data stayed contended; the request went through unguarded or its outcome was lost |
//! | `status_reports_total` | counter | reports of the open breakers sent to the control plane (for `meshwarden status`) |
//! | `status_reports_failed_total` | counter | such reports refused, unanswered or answered with an error |

use meshwarden_common::circuitbreaker::{Outcome, State, Transition};
use meshwarden_filter_runtime::{MetricKind, PolicyMetrics};

const METRICS: PolicyMetrics = PolicyMetrics::new("circuitbreaker");

const ALL: [(&str, MetricKind); 14] = [
    ("state", MetricKind::Gauge),
    ("open_breakers", MetricKind::Gauge),
    ("opened", MetricKind::Counter),
    ("half_opened", MetricKind::Counter),
    ("closed", MetricKind::Counter),
    ("short_circuited", MetricKind::Counter),
    ("shadow_short_circuited", MetricKind::Counter),
    ("calls", MetricKind::Counter),
    ("failures", MetricKind::Counter),
    ("slow_calls", MetricKind::Counter),
    ("overflow", MetricKind::Counter),
    ("contended", MetricKind::Counter),
    ("status_reports", MetricKind::Counter),
    ("status_reports_failed", MetricKind::Counter),
];

/// Defines every metric of every policy, so they show (as 0) before traffic.
pub fn define<'a>(policies: impl IntoIterator<Item = &'a str>) {
    METRICS.define_all(policies, &ALL);
}

/// Adds 1 to counter `metric` of `policy`.
pub fn count(metric: &'static str, policy: &str) {
    METRICS.increment(metric, policy);
}

/// A recorded call.
pub fn call(policy: &str, o: Outcome) {
    count("calls", policy);
    if o.failure {
        count("failures", policy);
    }
    if o.slow {
        count("slow_calls", policy);
    }
}

/// A breaker of `policy` changed state (counted once: by the worker whose write made it).
pub fn transition(policy: &str, t: &Transition) {
    METRICS.gauge_set("state", policy, t.to.gauge());
    match (t.from, t.to) {
        (State::Closed, _) => METRICS.gauge_add("open_breakers", policy, 1),
        (_, State::Closed) => METRICS.gauge_add("open_breakers", policy, -1),
        _ => {}
    }
    let metric = match t.to {
        State::Open => "opened",
        State::HalfOpen => "half_opened",
        State::Closed => "closed",
    };
    count(metric, policy);
}
