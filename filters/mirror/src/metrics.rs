//! Per-policy counters, through the runtime's naming scheme:
//! `meshwarden_mirror_<metric>_total{policy="<name>"}`. Counters count copies (one per
//! request and target).

use meshwarden_common::mirror::SkipReason;
use meshwarden_filter_runtime::{MetricKind, PolicyMetrics};

const METRICS: PolicyMetrics = PolicyMetrics::new("mirror");

/// One counter per outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Copies sent.
    Mirrored,
    /// Copies not sent, by reason.
    Skipped(SkipReason),
    /// Copies that failed (not sent, timed out, refused, reset) or were answered with 5xx.
    Errors,
    DiffMatch,
    DiffMismatch,
    /// Comparisons impossible (a body too large to keep, or no room to track the pair).
    DiffIncomparable,
}

impl Metric {
    const ALL: [Metric; 11] = [
        Metric::Mirrored,
        Metric::Skipped(SkipReason::SampledOut),
        Metric::Skipped(SkipReason::Method),
        Metric::Skipped(SkipReason::BodyTooLarge),
        Metric::Skipped(SkipReason::RateCapped),
        Metric::Skipped(SkipReason::QueueFull),
        Metric::Skipped(SkipReason::BodyUnavailable),
        Metric::Errors,
        Metric::DiffMatch,
        Metric::DiffMismatch,
        Metric::DiffIncomparable,
    ];

    fn name(self) -> &'static str {
        match self {
            Metric::Mirrored => "mirrored",
            Metric::Skipped(SkipReason::SampledOut) => "skipped_sampled_out",
            Metric::Skipped(SkipReason::Method) => "skipped_method",
            Metric::Skipped(SkipReason::BodyTooLarge) => "skipped_body_too_large",
            Metric::Skipped(SkipReason::RateCapped) => "skipped_rate_capped",
            Metric::Skipped(SkipReason::QueueFull) => "skipped_queue_full",
            Metric::Skipped(SkipReason::BodyUnavailable) => "skipped_body_unavailable",
            Metric::Errors => "errors",
            Metric::DiffMatch => "diff_match",
            Metric::DiffMismatch => "diff_mismatch",
            Metric::DiffIncomparable => "diff_incomparable",
        }
    }
}

/// Defines every counter of `policy` so it shows (as 0) before the first request.
pub fn define(policy: &str) {
    let all: Vec<(&str, MetricKind)> = Metric::ALL
        .iter()
        .map(|m| (m.name(), MetricKind::Counter))
        .collect();
    METRICS.define_all([policy], &all);
}

/// Adds `n` to `metric` of `policy`.
pub fn add(policy: &str, metric: Metric, n: u64) {
    METRICS.add(metric.name(), policy, n);
}
