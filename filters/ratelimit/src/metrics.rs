//! Per-policy metrics of the rate-limit filter (`meshwarden_ratelimit_<metric>{policy}`):
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `allowed_total` | counter | requests the policy matched that went upstream |
//! | `limited_total` | counter | requests the policy answered 429 |
//! | `concurrency_limited_total` | counter | requests the policy answered 503 |
//! | `shadow_limited_total` | counter | dry run: requests the policy would have rejected |
//! | `overflow_total` | counter | requests whose key found no bucket of its own (`maxKeys`) |
//! | `failures_total` | counter | shared data stayed contended; `failureMode` decided |
//! | `in_flight` | gauge | requests in flight under the policy's `maxConcurrent` or `shedding` |
//! | `concurrency_limit` | gauge | `shedding`: the policy's current limit (the adaptive one as last seen by a request) |
//! | `shed_total{class}` | counter | `shedding`: requests shed (answered 503 or 429) by class name (`default`: in no class) |
//! | `global_checks_total` | counter | `scope: global`: requests the rate limit service decided |
//! | `global_failures_total` | counter | `scope: global`: no usable answer (error, timeout, malformed); `failureMode` decided (also in `failures_total`) |
//! | `global_call_duration_us` | histogram | `scope: global`: time from the call to its answer, µs |
//! | `lease_requests_total` | counter | `lease`: calls asking the rate limit service for a lease of tokens |
//! | `lease_admitted_total` | counter | `lease`: requests admitted with a leased token, without a call |

use meshwarden_common::ratelimit::{GlobalCall, Limiter, PolicyEvents};
use meshwarden_filter_runtime::{MetricKind, PolicyMetrics};

const METRICS: PolicyMetrics = PolicyMetrics::new("ratelimit");

const ALL: [(&str, MetricKind); 7] = [
    ("allowed", MetricKind::Counter),
    ("limited", MetricKind::Counter),
    ("concurrency_limited", MetricKind::Counter),
    ("shadow_limited", MetricKind::Counter),
    ("overflow", MetricKind::Counter),
    ("failures", MetricKind::Counter),
    ("in_flight", MetricKind::Gauge),
];

const SHEDDING: [(&str, MetricKind); 1] = [("concurrency_limit", MetricKind::Gauge)];

/// Requests shed, by class (`meshwarden_ratelimit_shed_total{policy,class}`).
const SHED: &str = "shed";

const GLOBAL: [(&str, MetricKind); 3] = [
    ("global_checks", MetricKind::Counter),
    ("global_failures", MetricKind::Counter),
    ("global_call_duration_us", MetricKind::Histogram),
];

const LEASE: [(&str, MetricKind); 2] = [
    ("lease_requests", MetricKind::Counter),
    ("lease_admitted", MetricKind::Counter),
];

/// Defines every metric of every policy (the `global_*` ones for global policies, the
/// `lease_*` ones for policies with a lease), so they show (as 0) before traffic.
pub fn define(limiter: &Limiter) {
    METRICS.define_all(limiter.policies().iter().map(|p| p.name.as_str()), &ALL);
    METRICS.define_all(
        limiter
            .policies()
            .iter()
            .filter(|p| p.is_global())
            .map(|p| p.name.as_str()),
        &GLOBAL,
    );
    METRICS.define_all(
        limiter
            .policies()
            .iter()
            .filter(|p| p.lease_tokens().is_some())
            .map(|p| p.name.as_str()),
        &LEASE,
    );
    for p in limiter.policies() {
        if let Some(classes) = p.shed_class_names() {
            METRICS.define_all([p.name.as_str()], &SHEDDING);
            for class in classes {
                let _ = METRICS.class_id(SHED, class, p.name.as_str());
            }
        }
    }
}

fn count_each(limiter: &Limiter, metric: &'static str, policies: impl Iterator<Item = usize>) {
    for i in policies {
        if let Some(p) = limiter.policies().get(i) {
            METRICS.increment(metric, p.name.as_str());
        }
    }
}

/// Counts the leases a call about to be sent asks for.
pub fn lease_requests(limiter: &Limiter, call: &GlobalCall) {
    count_each(
        limiter,
        "lease_requests",
        call.asking.iter().map(|(i, _)| *i),
    );
}

/// Counts an admitted request's leased tokens.
pub fn lease_admitted(limiter: &Limiter, call: &GlobalCall) {
    count_each(
        limiter,
        "lease_admitted",
        call.leased.iter().map(|(i, _)| *i),
    );
}

/// Records a rate limit service call's duration (µs) for each of its policies (`None`:
/// it could not be sent).
pub fn global_call(limiter: &Limiter, call: &GlobalCall, elapsed_us: Option<u64>) {
    let Some(us) = elapsed_us else {
        return;
    };
    for i in &call.policies {
        if let Some(p) = limiter.policies().get(*i) {
            METRICS.record("global_call_duration_us", p.name.as_str(), us);
        }
    }
}

/// Counts one request's outcome for each policy that matched it.
pub fn record(events: &[PolicyEvents]) {
    for e in events {
        let p = e.policy.as_str();
        let flags = [
            ("allowed", e.allowed),
            ("limited", e.limited),
            ("concurrency_limited", e.concurrency_limited),
            ("shadow_limited", e.shadow_limited),
            ("overflow", e.overflow),
            ("failures", e.failure),
            ("global_checks", e.global_checked),
            ("global_failures", e.global_failure),
        ];
        for (metric, set) in flags {
            if set {
                METRICS.increment(metric, p);
            }
        }
        if e.entered {
            METRICS.gauge_add("in_flight", p, 1);
        }
        if let Some(limit) = e.shed_limit {
            METRICS.gauge_set("concurrency_limit", p, limit);
        }
        if let Some(class) = &e.shed_class {
            METRICS.increment_class(SHED, class, p);
        }
    }
}

/// A request left a policy's in-flight count (`released == false`: the shared counter
/// stayed contended and could not be lowered).
pub fn left(policy: &str, released: bool) {
    if released {
        METRICS.gauge_add("in_flight", policy, -1);
    } else {
        METRICS.increment("failures", policy);
        log::warn!("ratelimit filter: could not release an in-flight count of policy {policy}");
    }
}
