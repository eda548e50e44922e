//! `CircuitBreakerPolicy.spec`: the fields, their defaults (Resilience4j's where they make
//! sense for a proxy) and their validation.

use super::status::StatusRange;
use crate::cluster::ControlPlaneCluster;
use crate::duration::DurationSpec;
use crate::error::ValidationError;
use crate::fault::{GrpcCode, HttpStatus, PercentSpec};
use crate::names::HeaderName;
use crate::percentage::Percentage;
use crate::ratelimit::Descriptor;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest count-based window (calls); two bits per call are kept in shared data.
pub const MAX_WINDOW_CALLS: u32 = 1000;
/// Shortest time-based window.
pub const MIN_WINDOW_DURATION: DurationSpec = DurationSpec::from_millis(1_000);
/// Longest time-based window.
pub const MAX_WINDOW_DURATION: DurationSpec = DurationSpec::from_millis(3_600_000);
/// Shortest `waitDurationInOpenState`.
pub const MIN_WAIT: DurationSpec = DurationSpec::from_millis(100);
/// Longest `waitDurationInOpenState` and `slowCallDurationThreshold`.
pub const MAX_WAIT: DurationSpec = DurationSpec::from_millis(3_600_000);
/// Most trial calls in the half-open state.
pub const MAX_HALF_OPEN_CALLS: u32 = 1000;
/// Default `maxKeys` (breakers of a policy with descriptors).
pub const DEFAULT_MAX_KEYS: u32 = 100;
/// Largest `maxKeys`: each breaker is a fixed shared-data entry of the proxy.
pub const MAX_MAX_KEYS: u32 = 10_000;
/// Most descriptors per policy.
pub const MAX_DESCRIPTORS: usize = 4;
/// Most entries of `failureStatuses` / `failureGrpcStatuses`.
pub const MAX_FAILURE_STATUSES: usize = 32;

/// Over what the failure and slow-call rates are computed: the last `count` calls, or the
/// calls of the last `duration` (kept in ten buckets of a tenth each). Written
/// `{count: 100}` or `{duration: 30s}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SlidingWindow {
    /// The last N calls (1 to 1000).
    Count(u32),
    /// The calls that ended in the last duration (1s to 1h).
    Duration(DurationSpec),
}

impl Default for SlidingWindow {
    fn default() -> Self {
        SlidingWindow::Count(100)
    }
}

/// What an open breaker answers instead of calling the upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FallbackSpec {
    /// HTTP status of the answer (default 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<HttpStatus>,
    /// gRPC status of the answer to a gRPC request (default `UNAVAILABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<GrpcCode>,
    /// HTTP body (e.g. a default JSON document); for gRPC, the `grpc-message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Extra response headers (for gRPC: extra metadata).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<HeaderName, String>,
}

/// Default fallback body.
pub const DEFAULT_FALLBACK_BODY: &str = "circuit breaker open";

impl FallbackSpec {
    /// The HTTP status (default 503).
    pub fn status(&self) -> u16 {
        self.http_status.map_or(503, HttpStatus::code)
    }

    /// The gRPC status for gRPC requests (default `UNAVAILABLE`).
    pub fn grpc(&self) -> GrpcCode {
        self.grpc_status.unwrap_or(GrpcCode::UNAVAILABLE)
    }

    /// The body (default [`DEFAULT_FALLBACK_BODY`]).
    pub fn body(&self) -> &str {
        self.body.as_deref().unwrap_or(DEFAULT_FALLBACK_BODY)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `spec` of a `CircuitBreakerPolicy` (besides `selector` and `match`). Every field is
/// optional; the defaults are Resilience4j's except the window (100 calls) and the wait.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Failure rate at or above which the breaker opens (default 50 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate_threshold: Option<PercentSpec>,
    /// Slow-call rate at or above which the breaker opens (default 100 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call_rate_threshold: Option<PercentSpec>,
    /// A call taking at least this long is slow (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call_duration_threshold: Option<DurationSpec>,
    /// The sliding window (default `{count: 100}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<SlidingWindow>,
    /// Calls the window must hold before the rates are judged (default: the count of a
    /// count window, 100 for a time window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_number_of_calls: Option<u32>,
    /// How long an open breaker answers with the fallback before it half-opens (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_duration_in_open_state: Option<DurationSpec>,
    /// Trial calls let through while half-open (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permitted_number_of_calls_in_half_open_state: Option<u32>,
    /// HTTP statuses that are failures (default `["5xx"]`); upstream resets and timeouts
    /// reach the filter as the proxy's own 503 and 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_statuses: Option<Vec<StatusRange>>,
    /// gRPC statuses that are failures (default `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`,
    /// `UNAVAILABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_grpc_statuses: Option<Vec<GrpcCode>>,
    /// One breaker per distinct combination of these values (none: one breaker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<Descriptor>,
    /// Most breakers of a policy with descriptors (default 100); requests of further keys
    /// go through unguarded (counted as `overflow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u32>,
    /// The answer of an open breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSpec>,
    /// Track state and count, never answer with the fallback.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// Where the proxy reports its open breakers for `meshwarden status` (default: the
    /// control plane through `meshwarden_xds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<StatusReportSpec>,
}

/// `spec.report` of a `CircuitBreakerPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusReportSpec {
    /// The Envoy cluster of the control plane (default `meshwarden_xds`, which the Istio
    /// EnvoyFilter adds too).
    #[serde(default)]
    pub cluster: ControlPlaneCluster,
    /// `false`: report nothing (e.g. a proxy with no meshwarden control plane).
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

impl Default for StatusReportSpec {
    fn default() -> Self {
        Self {
            cluster: ControlPlaneCluster::default(),
            enabled: true,
        }
    }
}

/// Default gRPC failure statuses.
const DEFAULT_GRPC_FAILURES: [GrpcCode; 4] = [
    GrpcCode::UNKNOWN,
    GrpcCode::DEADLINE_EXCEEDED,
    GrpcCode::INTERNAL,
    GrpcCode::UNAVAILABLE,
];

impl CircuitBreakerSpec {
    /// Where open breakers are reported; `None` if reporting is off.
    pub fn status_report(&self) -> Option<ControlPlaneCluster> {
        let report = self.report.clone().unwrap_or_default();
        report.enabled.then_some(report.cluster)
    }

    /// The failure-rate threshold.
    pub fn failure_threshold(&self) -> Percentage {
        self.failure_rate_threshold
            .map_or(Percentage::try_from(50.0).expect("in range"), |p| p.value)
    }

    /// The slow-call-rate threshold.
    pub fn slow_threshold(&self) -> Percentage {
        self.slow_call_rate_threshold
            .map_or(Percentage::ALL, |p| p.value)
    }

    /// Calls at least this long (ms) are slow.
    pub fn slow_call_ms(&self) -> u64 {
        self.slow_call_duration_threshold
            .unwrap_or(DurationSpec::from_millis(60_000))
            .as_millis()
    }

    /// The sliding window.
    pub fn window(&self) -> SlidingWindow {
        self.sliding_window.unwrap_or_default()
    }

    /// Calls needed before the rates are judged.
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_number_of_calls.unwrap_or(match self.window() {
            SlidingWindow::Count(n) => n,
            SlidingWindow::Duration(_) => 100,
        })
    }

    /// How long the breaker stays open (ms).
    pub fn wait_ms(&self) -> u64 {
        self.wait_duration_in_open_state
            .unwrap_or(DurationSpec::from_millis(60_000))
            .as_millis()
    }

    /// Trial calls while half-open.
    pub fn half_open_calls(&self) -> u32 {
        self.permitted_number_of_calls_in_half_open_state
            .unwrap_or(10)
    }

    /// Whether an HTTP status is a failure.
    pub fn is_failure_status(&self, status: u16) -> bool {
        match &self.failure_statuses {
            Some(ranges) => ranges.iter().any(|r| r.contains(status)),
            None => (500..=599).contains(&status),
        }
    }

    /// Whether a gRPC status is a failure.
    pub fn is_failure_grpc(&self, code: u8) -> bool {
        let list = self
            .failure_grpc_statuses
            .as_deref()
            .unwrap_or(&DEFAULT_GRPC_FAILURES);
        list.iter().any(|c| c.number() == code)
    }

    /// Breakers of a policy with descriptors (0 without descriptors: one breaker).
    pub fn key_slots(&self) -> u32 {
        if self.descriptors.is_empty() {
            0
        } else {
            self.max_keys.unwrap_or(DEFAULT_MAX_KEYS)
        }
    }

    /// The fallback answer.
    pub fn fallback(&self) -> FallbackSpec {
        self.fallback.clone().unwrap_or_default()
    }
}

fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ValidationError> {
    if v < lo || v > hi {
        return Err(ValidationError::new(
            field,
            format!("must be from {lo} to {hi}, got {v}"),
        ));
    }
    Ok(())
}

fn positive(field: &str, p: Option<PercentSpec>) -> Result<(), ValidationError> {
    match p {
        Some(p) if p.value.value() <= 0.0 => Err(ValidationError::new(
            format!("{field}.value"),
            "must be above 0 (a breaker at 0 % would open on any call)",
        )),
        _ => Ok(()),
    }
}

impl KindSpec for CircuitBreakerSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        positive("failureRateThreshold", self.failure_rate_threshold)?;
        positive("slowCallRateThreshold", self.slow_call_rate_threshold)?;
        if let Some(d) = self.slow_call_duration_threshold {
            range(
                "slowCallDurationThreshold",
                d,
                DurationSpec::from_millis(1),
                MAX_WAIT,
            )?;
        }
        match self.sliding_window {
            Some(SlidingWindow::Count(n)) => {
                range("slidingWindow.count", n, 1, MAX_WINDOW_CALLS)?;
            }
            Some(SlidingWindow::Duration(d)) => {
                range(
                    "slidingWindow.duration",
                    d,
                    MIN_WINDOW_DURATION,
                    MAX_WINDOW_DURATION,
                )?;
            }
            None => {}
        }
        if let Some(n) = self.minimum_number_of_calls {
            let most = match self.window() {
                SlidingWindow::Count(size) => size,
                SlidingWindow::Duration(_) => u32::MAX,
            };
            if n == 0 || n > most {
                return Err(ValidationError::new(
                    "minimumNumberOfCalls",
                    format!("must be from 1 to the window's count ({most}), got {n}"),
                ));
            }
        }
        if let Some(d) = self.wait_duration_in_open_state {
            range("waitDurationInOpenState", d, MIN_WAIT, MAX_WAIT)?;
        }
        if let Some(n) = self.permitted_number_of_calls_in_half_open_state {
            range(
                "permittedNumberOfCallsInHalfOpenState",
                n,
                1,
                MAX_HALF_OPEN_CALLS,
            )?;
        }
        if let Some(list) = &self.failure_statuses {
            if list.len() > MAX_FAILURE_STATUSES {
                return Err(ValidationError::new(
                    "failureStatuses",
                    format!("at most {MAX_FAILURE_STATUSES} entries"),
                ));
            }
        }
        if let Some(list) = &self.failure_grpc_statuses {
            if list.len() > MAX_FAILURE_STATUSES {
                return Err(ValidationError::new(
                    "failureGrpcStatuses",
                    format!("at most {MAX_FAILURE_STATUSES} entries"),
                ));
            }
        }
        if self.descriptors.len() > MAX_DESCRIPTORS {
            return Err(ValidationError::new(
                "descriptors",
                format!("at most {MAX_DESCRIPTORS} descriptors"),
            ));
        }
        if let Some(n) = self.max_keys {
            if self.descriptors.is_empty() {
                return Err(ValidationError::new(
                    "maxKeys",
                    "needs `descriptors` (without them the policy has a single breaker)",
                ));
            }
            range("maxKeys", n, 1, MAX_MAX_KEYS)?;
        }
        if let Some(f) = &self.fallback {
            crate::fault::spec::validate_payload(&f.body, &f.headers)
                .map_err(|e| e.within("fallback"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<CircuitBreakerSpec, ValidationError> {
        let s: CircuitBreakerSpec = crate::spec::from_value("", &v)?;
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn empty_spec_takes_the_defaults() {
        let s = parse(json!({})).unwrap();
        assert_eq!(s.failure_threshold().value(), 50.0);
        assert_eq!(s.slow_threshold().value(), 100.0);
        assert_eq!(s.slow_call_ms(), 60_000);
        assert_eq!(s.window(), SlidingWindow::Count(100));
        assert_eq!(s.minimum_calls(), 100);
        assert_eq!(s.wait_ms(), 60_000);
        assert_eq!(s.half_open_calls(), 10);
        assert!(s.is_failure_status(500) && s.is_failure_status(599));
        assert!(!s.is_failure_status(404) && !s.is_failure_status(200));
        assert!(s.is_failure_grpc(14) && !s.is_failure_grpc(5));
        assert_eq!(s.key_slots(), 0);
        assert_eq!(s.fallback().status(), 503);
        assert_eq!(s.status_report().unwrap().as_str(), "meshwarden_xds");
        let off = parse(json!({"report": {"enabled": false}})).unwrap();
        assert_eq!(off.status_report(), None);
    }

    #[test]
    fn full_spec_round_trips() {
        let v = json!({
            "failureRateThreshold": {"value": 25.0},
            "slowCallRateThreshold": {"value": 80.0},
            "slowCallDurationThreshold": "500ms",
            "slidingWindow": {"duration": "10s"},
            "minimumNumberOfCalls": 5,
            "waitDurationInOpenState": "1s",
            "permittedNumberOfCallsInHalfOpenState": 2,
            "failureStatuses": [503, "5xx", "429-430"],
            "failureGrpcStatuses": ["UNAVAILABLE"],
            "descriptors": [{"authority": {}}],
            "maxKeys": 10,
            "fallback": {"httpStatus": 200, "headers": {"content-type": "application/json"}, "body": "{}"},
            "dryRun": true,
            "report": {"cluster": "outbound|18000||cp.ns.svc.cluster.local", "enabled": true}
        });
        let s = parse(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        assert!(s.is_failure_status(429) && !s.is_failure_status(431));
        assert_eq!(s.minimum_calls(), 5);
        assert_eq!(s.key_slots(), 10);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"failureRateThreshold": {"value": 0}}),
                "failureRateThreshold.value",
            ),
            (
                json!({"slowCallRateThreshold": {"value": 0}}),
                "slowCallRateThreshold.value",
            ),
            (
                json!({"slidingWindow": {"count": 0}}),
                "slidingWindow.count",
            ),
            (
                json!({"slidingWindow": {"count": 1001}}),
                "slidingWindow.count",
            ),
            (
                json!({"slidingWindow": {"duration": "500ms"}}),
                "slidingWindow.duration",
            ),
            (
                json!({"slidingWindow": {"count": 10}, "minimumNumberOfCalls": 11}),
                "minimumNumberOfCalls",
            ),
            (json!({"minimumNumberOfCalls": 0}), "minimumNumberOfCalls"),
            (
                json!({"waitDurationInOpenState": "10ms"}),
                "waitDurationInOpenState",
            ),
            (
                json!({"slowCallDurationThreshold": "0s"}),
                "slowCallDurationThreshold",
            ),
            (
                json!({"permittedNumberOfCallsInHalfOpenState": 0}),
                "permittedNumberOfCallsInHalfOpenState",
            ),
            (json!({"maxKeys": 5}), "maxKeys"),
            (
                json!({"descriptors": [{"method": {}}], "maxKeys": 0}),
                "maxKeys",
            ),
            (
                json!({"fallback": {"headers": {"content-length": "1"}}}),
                "fallback.headers.content-length",
            ),
            (
                json!({"fallback": {"httpStatus": 99}}),
                "fallback.httpStatus",
            ),
            (json!({"failureStatuses": ["6xx"]}), "failureStatuses[0]"),
            (json!({"report": {"cluster": "a b"}}), "report.cluster"),
        ];
        for (v, field) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.field.starts_with(field), "{v}: {e:?}");
        }
    }
}
