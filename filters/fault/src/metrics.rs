//! Per-policy metrics, named by the runtime's scheme:
//! `meshwarden_fault_<metric>[_total]{policy="<name>"}`.

use meshwarden_filter_runtime::{MetricKind, PolicyMetrics};

const METRICS: PolicyMetrics = PolicyMetrics::new("fault");

/// Aborts answered (HTTP or gRPC).
pub const ABORTS_INJECTED: &str = "aborts_injected";
/// Requests delayed.
pub const DELAYS_INJECTED: &str = "delays_injected";
/// Upstream responses delayed.
pub const RESPONSE_DELAYS_INJECTED: &str = "response_delays_injected";
/// Upstream responses replaced.
pub const RESPONSES_OVERRIDDEN: &str = "responses_overridden";
/// Requests whose faults the guard held back.
pub const SUPPRESSED_BY_GUARD: &str = "suppressed_by_guard";
/// Requests that would have been faulted in dry run.
pub const WOULD_INJECT: &str = "would_inject";
/// Requests whose faults `maxActiveFaults` held back.
pub const FAULTS_OVERFLOW: &str = "faults_overflow";
/// Requests whose `x-envoy-fault-*` headers were ignored: their caller is not allowed to ask.
pub const HEADER_REQUESTS_REFUSED: &str = "header_requests_refused";
/// Requests under fault right now (gauge).
pub const ACTIVE_FAULTS: &str = "active_faults";

const ALL: [(&str, MetricKind); 9] = [
    (ABORTS_INJECTED, MetricKind::Counter),
    (DELAYS_INJECTED, MetricKind::Counter),
    (RESPONSE_DELAYS_INJECTED, MetricKind::Counter),
    (RESPONSES_OVERRIDDEN, MetricKind::Counter),
    (SUPPRESSED_BY_GUARD, MetricKind::Counter),
    (WOULD_INJECT, MetricKind::Counter),
    (FAULTS_OVERFLOW, MetricKind::Counter),
    (HEADER_REQUESTS_REFUSED, MetricKind::Counter),
    (ACTIVE_FAULTS, MetricKind::Gauge),
];

/// The metrics of one policy.
pub struct FaultMetrics {
    policy: String,
}

impl FaultMetrics {
    /// Defines the policy's metrics (so they show as 0 before the first event).
    pub fn new(policy: &str) -> Self {
        METRICS.define_all([policy], &ALL);
        Self {
            policy: policy.to_string(),
        }
    }

    /// Adds 1 to a counter.
    pub fn inc(&self, counter: &'static str) {
        METRICS.increment(counter, &self.policy);
    }

    /// Moves the active-faults gauge by `delta`.
    pub fn active(&self, delta: i64) {
        METRICS.gauge_add(ACTIVE_FAULTS, &self.policy, delta);
    }
}
