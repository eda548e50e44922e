//! `FaultPolicy.spec`: the fields, their defaults and their validation.

use super::grpc::GrpcCode;
use super::timestamp::Timestamp;
use crate::duration::DurationSpec;
use crate::error::ValidationError;
use crate::names::HeaderName;
use crate::peer::{IdentityPattern, Peer, MAX_IDENTITIES};
use crate::percentage::Percentage;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest delay a policy may configure (request or response phase, or a header cap).
pub const MAX_DELAY_MS: u64 = 3_600_000;
/// Largest abort/override body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most extra headers on an abort/override response.
pub const MAX_EXTRA_HEADERS: usize = 32;
/// Longest extra header value.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// `spec` of a `FaultPolicy` (besides `selector` and `match`). Sub-blocks are boxed to keep
/// the spec small where it sits next to other kinds.
///
/// Field names follow Istio's `VirtualService.http[].fault` (`delay.fixedDelay`,
/// `delay.percentage.value`, `abort.httpStatus`, `abort.grpcStatus`) so an Istio user's
/// numbers mean the same here; the rest are meshwarden's safety and targeting additions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// Delay the request before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Box<DelaySpec>>,
    /// Answer the request locally instead of forwarding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Box<AbortSpec>>,
    /// Delay the upstream's response before it is sent downstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_delay: Option<Box<DelaySpec>>,
    /// Replace the upstream's response status (and optionally body/headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_override: Option<Box<ResponseOverrideSpec>>,
    /// Only requests from these downstream clusters/nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Box<SourceSpec>>,
    /// Select by a hash of a request header instead of at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Box<StickySpec>>,
    /// Let callers request faults with Envoy's `x-envoy-fault-*` headers, within caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_control: Option<Box<HeaderControlSpec>>,
    /// Most requests under fault at once across all workers of a proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_faults: Option<u32>,
    /// Stop injecting this long after the proxy received this version of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<DurationSpec>,
    /// Stop injecting at this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Suspend injection while the real upstream error ratio is too high.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Box<GuardSpec>>,
    /// Count what would be injected, inject nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

pub use crate::percentage::PercentSpec;

/// A delay: fixed (optionally with uniform jitter) or uniform over a range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelaySpec {
    /// The delay (`250ms`, `1.5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<DurationSpec>,
    /// With `fixedDelay`: add a uniform offset in `[-jitter, +jitter]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<DurationSpec>,
    /// Instead of `fixedDelay`: uniform in `[min, max]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<DelayRange>,
    /// Share of matching requests delayed (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<PercentSpec>,
}

/// Bounds of a uniformly distributed delay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayRange {
    pub min: DurationSpec,
    pub max: DurationSpec,
}

/// An HTTP status from 200 to 599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u16")]
pub struct HttpStatus(u16);

impl HttpStatus {
    /// The status for `code`, if it is from 200 to 599.
    pub fn new(code: u64) -> Option<Self> {
        (200..=599).contains(&code).then_some(Self(code as u16))
    }

    /// The numeric status.
    pub fn code(self) -> u16 {
        self.0
    }
}

impl TryFrom<i64> for HttpStatus {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        u64::try_from(v)
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| format!("must be an HTTP status from 200 to 599, got {v}"))
    }
}

impl From<HttpStatus> for u16 {
    fn from(s: HttpStatus) -> u16 {
        s.0
    }
}

/// An abort: a local answer with an HTTP status, or a gRPC trailers-only answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortSpec {
    /// HTTP status, 200–599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<HttpStatus>,
    /// gRPC status by name (`UNAVAILABLE`) or number (`14`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<GrpcCode>,
    /// Share of matching requests aborted (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<PercentSpec>,
    /// HTTP body (default `fault filter abort`); for gRPC, the `grpc-message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Extra response headers (for gRPC: extra metadata).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<HeaderName, String>,
}

/// Replace the upstream's response status after it answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseOverrideSpec {
    /// The status sent downstream instead of the upstream's.
    pub http_status: HttpStatus,
    /// Share of matching requests whose response is replaced (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<PercentSpec>,
    /// Replace the body too (the upstream's body is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Extra response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<HeaderName, String>,
}

/// Which callers a policy targets: by the identity of the peer certificate (which a client
/// cannot forge), and/or by headers a calling proxy sets (which any client can set, so they
/// are read only when the policy says it trusts them). Every criterion set must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Peer certificate identities (the URI SAN: a SPIFFE id under Istio), any of which
    /// matches; `spiffe://cluster.local/ns/shop/*` matches every identity under it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityPattern>,
    /// Downstream service clusters, any of which matches (needs `trustHeaders`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Downstream service nodes, any of which matches (needs `trustHeaders`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Trust `clusterHeader` and `nodeHeader`: only where every hop in front of this proxy
    /// is one you run that sets or strips them, since any client can send them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_headers: bool,
    /// Header carrying the downstream cluster.
    #[serde(default = "default_cluster_header")]
    pub cluster_header: HeaderName,
    /// Header carrying the downstream node.
    #[serde(default = "default_node_header")]
    pub node_header: HeaderName,
}

fn default_cluster_header() -> HeaderName {
    HeaderName::try_from("x-envoy-downstream-service-cluster".to_string()).expect("valid literal")
}

fn default_node_header() -> HeaderName {
    HeaderName::try_from("x-envoy-downstream-service-node".to_string()).expect("valid literal")
}

/// What sticky selection does with a request that lacks the key header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MissingKey {
    /// Never inject (default): only identified callers are ever faulted.
    #[default]
    Skip,
    /// Fall back to a random draw.
    Random,
}

/// Sticky selection: the same key value (with the same seed) is always or never selected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickySpec {
    /// The header whose first value is hashed, such as `x-user-id`.
    pub header: HeaderName,
    /// Changes which keys are selected; keep it to keep the same population.
    #[serde(default)]
    pub seed: u64,
    /// `skip` (default) or `random`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub when_missing: MissingKey,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Caller-requested faults via Envoy's `x-envoy-fault-*` headers, capped by this policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderControlSpec {
    /// Must be `true` for the headers to have any effect.
    #[serde(default)]
    pub enabled: bool,
    /// Longest delay a header may request (longer requests are clamped); default 1s.
    #[serde(default = "default_max_delay")]
    pub max_delay: DurationSpec,
    /// Highest percentage a header may request (higher requests are clamped); default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percentage: Option<PercentSpec>,
    /// HTTP statuses a header may request; unset allows 200–599, `[]` allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_statuses: Option<Vec<HttpStatus>>,
    /// gRPC statuses a header may request; unset allows all, `[]` allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_grpc_statuses: Option<Vec<GrpcCode>>,
    /// Callers whose headers are honoured: peer certificate identities (URI SAN), exact or
    /// `.../*`. Requests from anyone else (clear text included) get no header fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityPattern>,
    /// Honour the headers from any caller that can reach the proxy, instead of `identities`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_caller: bool,
}

fn default_max_delay() -> DurationSpec {
    DurationSpec::from_millis(1000)
}

/// Suspend injection while the real (not injected) upstream 5xx ratio is too high.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardSpec {
    /// Suspend while errors / responses over the window exceeds this (0 to 1).
    pub max_error_ratio: f64,
    /// Sliding window length; default 10s.
    #[serde(default = "default_window")]
    pub window: DurationSpec,
    /// Fewer responses than this in the window never suspend; default 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
}

fn default_window() -> DurationSpec {
    DurationSpec::from_millis(10_000)
}

fn default_min_requests() -> u32 {
    20
}

impl KindSpec for FaultSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        let header_enabled = self.header_control.as_ref().is_some_and(|h| h.enabled);
        if self.delay.is_none()
            && self.abort.is_none()
            && self.response_delay.is_none()
            && self.response_override.is_none()
            && !header_enabled
        {
            return Err(ValidationError::new(
                "",
                "set at least one of delay, abort, responseDelay, responseOverride or headerControl (enabled: true)",
            ));
        }
        if let Some(d) = &self.delay {
            d.validate().map_err(|e| e.within("delay"))?;
        }
        if let Some(a) = &self.abort {
            a.validate().map_err(|e| e.within("abort"))?;
        }
        if let Some(d) = &self.response_delay {
            d.validate().map_err(|e| e.within("responseDelay"))?;
        }
        if let Some(o) = &self.response_override {
            require_percentage(&o.percentage).map_err(|e| e.within("responseOverride"))?;
            validate_payload(&o.body, &o.headers).map_err(|e| e.within("responseOverride"))?;
        }
        if let Some(s) = &self.source {
            s.validate().map_err(|e| e.within("source"))?;
        }
        if let Some(h) = &self.header_control {
            h.validate().map_err(|e| e.within("headerControl"))?;
        }
        if self.max_active_faults == Some(0) {
            return Err(ValidationError::new(
                "maxActiveFaults",
                "must be at least 1 (use dryRun: true to inject nothing)",
            ));
        }
        if self.ttl.is_some_and(|t| t.as_millis() == 0) {
            return Err(ValidationError::new("ttl", "must be longer than 0"));
        }
        if let Some(g) = &self.guard {
            g.validate().map_err(|e| e.within("guard"))?;
        }
        Ok(())
    }
}

fn require_percentage(p: &Option<PercentSpec>) -> Result<(), ValidationError> {
    match p {
        Some(_) => Ok(()),
        None => Err(ValidationError::new(
            "percentage",
            "is required, e.g. percentage: {value: 100} (Istio treats a missing percentage as 0 %)",
        )),
    }
}

impl DelaySpec {
    fn validate(&self) -> Result<(), ValidationError> {
        let in_bounds = |field: &str, d: DurationSpec| {
            if d.as_millis() > MAX_DELAY_MS {
                Err(ValidationError::new(field, "must be at most 1h"))
            } else {
                Ok(())
            }
        };
        match (&self.fixed_delay, &self.range) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "",
                    "set only one of fixedDelay or range",
                ))
            }
            (None, None) => return Err(ValidationError::new("", "set fixedDelay or range")),
            (Some(fixed), None) => {
                if fixed.as_millis() == 0 {
                    return Err(ValidationError::new("fixedDelay", "must be at least 1ms"));
                }
                in_bounds("fixedDelay", *fixed)?;
                if let Some(j) = self.jitter {
                    if j > *fixed {
                        return Err(ValidationError::new(
                            "jitter",
                            format!("must not exceed fixedDelay ({fixed})"),
                        ));
                    }
                }
            }
            (None, Some(r)) => {
                if self.jitter.is_some() {
                    return Err(ValidationError::new(
                        "jitter",
                        "only applies to fixedDelay; widen range instead",
                    ));
                }
                if r.max.as_millis() == 0 {
                    return Err(ValidationError::new("range.max", "must be at least 1ms"));
                }
                if r.min > r.max {
                    return Err(ValidationError::new(
                        "range.min",
                        format!("must not exceed range.max ({})", r.max),
                    ));
                }
                in_bounds("range.max", r.max)?;
            }
        }
        require_percentage(&self.percentage)
    }

    /// The delay in milliseconds for a uniform 64-bit draw.
    pub fn sample_millis(&self, draw: u64) -> u64 {
        let (lo, hi) = match (self.fixed_delay, self.jitter, self.range) {
            (Some(f), Some(j), _) => (
                f.as_millis().saturating_sub(j.as_millis()),
                f.as_millis() + j.as_millis(),
            ),
            (Some(f), None, _) => (f.as_millis(), f.as_millis()),
            (None, _, Some(r)) => (r.min.as_millis(), r.max.as_millis()),
            (None, _, None) => (0, 0),
        };
        lo + draw % (hi - lo + 1)
    }

    /// The configured percentage (0 % if unset, which validation forbids).
    pub fn percentage(&self) -> Percentage {
        self.percentage.map_or(Percentage::NONE, |p| p.value)
    }
}

impl AbortSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        match (self.http_status, self.grpc_status) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "",
                    "set only one of httpStatus or grpcStatus",
                ))
            }
            (None, None) => return Err(ValidationError::new("", "set httpStatus or grpcStatus")),
            _ => {}
        }
        require_percentage(&self.percentage)?;
        validate_payload(&self.body, &self.headers)
    }

    /// The configured percentage (0 % if unset, which validation forbids).
    pub fn percentage(&self) -> Percentage {
        self.percentage.map_or(Percentage::NONE, |p| p.value)
    }
}

impl ResponseOverrideSpec {
    /// The configured percentage (0 % if unset, which validation forbids).
    pub fn percentage(&self) -> Percentage {
        self.percentage.map_or(Percentage::NONE, |p| p.value)
    }
}

/// Headers a policy may not set on a generated response: pseudo-headers and framing,
/// which the proxy computes itself.
const RESERVED_HEADERS: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "grpc-status",
];

pub(crate) fn validate_payload(
    body: &Option<String>,
    headers: &BTreeMap<HeaderName, String>,
) -> Result<(), ValidationError> {
    if body.as_ref().is_some_and(|b| b.len() > MAX_BODY_BYTES) {
        return Err(ValidationError::new(
            "body",
            format!("must be at most {MAX_BODY_BYTES} bytes"),
        ));
    }
    if headers.len() > MAX_EXTRA_HEADERS {
        return Err(ValidationError::new(
            "headers",
            format!("at most {MAX_EXTRA_HEADERS} headers"),
        ));
    }
    for (name, value) in headers {
        let at = format!("headers.{name}");
        if name.as_str().starts_with(':') || RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(ValidationError::new(
                at,
                "is set by the proxy and cannot be configured",
            ));
        }
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(ValidationError::new(
                at,
                format!("value must be at most {MAX_HEADER_VALUE_BYTES} bytes"),
            ));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ValidationError::new(
                at,
                "value must not contain control characters",
            ));
        }
    }
    Ok(())
}

impl SourceSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.identities.is_empty() && self.clusters.is_empty() && self.nodes.is_empty() {
            return Err(ValidationError::new(
                "",
                "set identities, clusters or nodes",
            ));
        }
        validate_identities(&self.identities)?;
        for (list, values) in [("clusters", &self.clusters), ("nodes", &self.nodes)] {
            if let Some(i) = values.iter().position(String::is_empty) {
                return Err(ValidationError::new(
                    format!("{list}[{i}]"),
                    "must not be empty",
                ));
            }
        }
        let by_header = !self.clusters.is_empty() || !self.nodes.is_empty();
        if by_header && !self.trust_headers {
            return Err(ValidationError::new(
                "trustHeaders",
                format!(
                    "clusters and nodes are read from the {} and {} request headers, which any client can set; select callers by identities (their peer certificate), or set trustHeaders: true if every hop in front of this proxy sets or strips those headers",
                    self.cluster_header.as_str(),
                    self.node_header.as_str()
                ),
            ));
        }
        if self.trust_headers && !by_header {
            return Err(ValidationError::new(
                "trustHeaders",
                "only applies to clusters and nodes; set one of them or remove trustHeaders",
            ));
        }
        Ok(())
    }
}

fn validate_identities(identities: &[IdentityPattern]) -> Result<(), ValidationError> {
    if identities.len() > MAX_IDENTITIES {
        return Err(ValidationError::new(
            "identities",
            format!("at most {MAX_IDENTITIES} identities"),
        ));
    }
    Ok(())
}

impl HeaderControlSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.max_delay.as_millis() > MAX_DELAY_MS {
            return Err(ValidationError::new("maxDelay", "must be at most 1h"));
        }
        validate_identities(&self.identities)?;
        if self.any_caller && !self.identities.is_empty() {
            return Err(ValidationError::new(
                "anyCaller",
                "set only one of identities or anyCaller",
            ));
        }
        if self.enabled && !self.any_caller && self.identities.is_empty() {
            return Err(ValidationError::new(
                "identities",
                "name the callers allowed to request faults with x-envoy-fault-* headers (their peer certificate identities, e.g. spiffe://cluster.local/ns/qa/*), or set anyCaller: true to let any client that reaches the proxy request them",
            ));
        }
        Ok(())
    }

    /// Whether `peer` may request faults with headers.
    pub fn caller_allowed(&self, peer: &Peer) -> bool {
        self.any_caller || peer.matches_any(&self.identities)
    }

    /// The percentage cap (100 % unless configured).
    pub fn max_percentage(&self) -> Percentage {
        self.max_percentage.map_or(Percentage::ALL, |p| p.value)
    }
}

impl GuardSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if !(0.0..=1.0).contains(&self.max_error_ratio) {
            return Err(ValidationError::new(
                "maxErrorRatio",
                format!("must be a ratio from 0 to 1, got {}", self.max_error_ratio),
            ));
        }
        let w = self.window.as_millis();
        if !(100..=MAX_DELAY_MS).contains(&w) {
            return Err(ValidationError::new("window", "must be from 100ms to 1h"));
        }
        if self.min_requests == 0 {
            return Err(ValidationError::new("minRequests", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::from_value;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<FaultSpec, ValidationError> {
        let s: FaultSpec = from_value("spec", &v)?;
        s.validate().map_err(|e| e.within("spec"))?;
        Ok(s)
    }

    fn err(v: Value) -> ValidationError {
        parse(v).expect_err("should be rejected")
    }

    #[test]
    fn istio_shaped_policy_parses_and_round_trips() {
        let s = parse(json!({
            "delay": {"fixedDelay": "250ms", "percentage": {"value": 12.5}},
            "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 0.0001}},
        }))
        .unwrap();
        assert_eq!(
            s.delay.as_ref().unwrap().fixed_delay.unwrap().as_millis(),
            250
        );
        assert_eq!(s.abort.as_ref().unwrap().grpc_status.unwrap().number(), 14);
        let again = parse(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn full_policy_parses() {
        let s = parse(json!({
            "delay": {"range": {"min": "100ms", "max": "1s"}, "percentage": {"value": 5}},
            "abort": {"httpStatus": 503, "percentage": {"value": 1}, "body": "oops", "headers": {"Retry-After": "1"}},
            "responseDelay": {"fixedDelay": "1s", "jitter": "100ms", "percentage": {"value": 50}},
            "responseOverride": {"httpStatus": 500, "percentage": {"value": 2}},
            "source": {"clusters": ["frontend"], "trustHeaders": true, "identities": ["spiffe://cluster.local/ns/shop/*"]},
            "sticky": {"header": "x-user-id", "seed": 42, "whenMissing": "random"},
            "headerControl": {"enabled": true, "maxDelay": "2s", "allowedStatuses": [503], "maxPercentage": {"value": 10}, "identities": ["spiffe://cluster.local/ns/qa/sa/tester"]},
            "maxActiveFaults": 10,
            "ttl": "10m",
            "expiresAt": "2030-01-01T00:00:00Z",
            "guard": {"maxErrorRatio": 0.2, "window": "10s", "minRequests": 20},
            "dryRun": true,
        }))
        .unwrap();
        assert_eq!(
            s.source.unwrap().cluster_header.as_str(),
            "x-envoy-downstream-service-cluster"
        );
        assert!(s
            .abort
            .unwrap()
            .headers
            .contains_key(&HeaderName::try_from("retry-after".to_string()).unwrap()));
    }

    #[test]
    fn errors_name_the_field_and_problem() {
        let e = err(json!({"abort": {"httpStatus": 700, "percentage": {"value": 1}}}));
        assert_eq!(e.field, "spec.abort.httpStatus");
        assert!(e.message.contains("200 to 599"), "{e}");
        let e = err(json!({"abort": {"httpStatus": 199, "percentage": {"value": 1}}}));
        assert_eq!(e.field, "spec.abort.httpStatus");
        let e = err(json!({"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}}));
        assert_eq!(e.field, "spec.delay.percentage.value");
        assert!(e.message.contains("0 to 100"), "{e}");
        let e = err(json!({"delay": {"fixedDelay": "soon", "percentage": {"value": 1}}}));
        assert_eq!(e.field, "spec.delay.fixedDelay");
        let e = err(json!({"delay": {"fixedDelay": "1s"}}));
        assert_eq!(e.field, "spec.delay.percentage");
        assert!(e.message.contains("required"));
        let e = err(json!({"abort": {"grpcStatus": "NOPE", "percentage": {"value": 1}}}));
        assert_eq!(e.field, "spec.abort.grpcStatus");
        let e = err(
            json!({"abort": {"httpStatus": 503, "grpcStatus": 14, "percentage": {"value": 1}}}),
        );
        assert_eq!(e.field, "spec.abort");
        let e = err(json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}, "ttl": "0s"}));
        assert_eq!(e.field, "spec.ttl");
        let e = err(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}, "expiresAt": "tomorrow"}),
        );
        assert_eq!(e.field, "spec.expiresAt");
        let e = err(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}, "guard": {"maxErrorRatio": 2}}),
        );
        assert_eq!(e.field, "spec.guard.maxErrorRatio");
        let e = err(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}, "headers": {":status": "1"}}}),
        );
        assert_eq!(e.field, "spec.abort.headers.:status");
        let e = err(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}, "headers": {"x": "a\nb"}}}),
        );
        assert_eq!(e.field, "spec.abort.headers.x");
        let e = err(
            json!({"delay": {"fixedDelay": "10ms", "jitter": "20ms", "percentage": {"value": 1}}}),
        );
        assert_eq!(e.field, "spec.delay.jitter");
        let e = err(
            json!({"delay": {"range": {"min": "2s", "max": "1s"}, "percentage": {"value": 1}}}),
        );
        assert_eq!(e.field, "spec.delay.range.min");
        let e = err(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}, "maxActiveFaults": 0}),
        );
        assert_eq!(e.field, "spec.maxActiveFaults");
        let e =
            err(json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}, "source": {}}));
        assert_eq!(e.field, "spec.source");
        let e = err(
            json!({"headerControl": {"enabled": true, "allowedStatuses": [100], "anyCaller": true}}),
        );
        assert_eq!(e.field, "spec.headerControl.allowedStatuses[0]");
        let e = err(json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}, "bogus": 1}));
        assert_eq!(e.field, "spec.bogus");
    }

    #[test]
    fn an_empty_policy_is_rejected() {
        let e = err(json!({}));
        assert_eq!(e.field, "spec");
        assert!(e.message.contains("at least one"));
        let e = err(json!({"headerControl": {"enabled": false}}));
        assert_eq!(e.field, "spec");
        assert!(parse(json!({"headerControl": {"enabled": true, "anyCaller": true}})).is_ok());
    }

    #[test]
    fn caller_identity_comes_from_the_certificate_unless_headers_are_trusted() {
        let abort = json!({"httpStatus": 503, "percentage": {"value": 1}});
        let e = err(json!({"abort": abort, "source": {"clusters": ["web"]}}));
        assert_eq!(e.field, "spec.source.trustHeaders");
        assert!(e.message.contains("any client can set"), "{e}");
        let e = err(
            json!({"abort": abort, "source": {"identities": ["spiffe://a/b"], "trustHeaders": true}}),
        );
        assert_eq!(e.field, "spec.source.trustHeaders");
        let e = err(json!({"abort": abort, "source": {"identities": ["spiffe://a/*/b"]}}));
        assert_eq!(e.field, "spec.source.identities[0]");
        let e = err(json!({"abort": abort, "source": {"identities": ["web"]}}));
        assert_eq!(e.field, "spec.source.identities[0]");
        let many: Vec<String> = (0..=MAX_IDENTITIES)
            .map(|i| format!("spiffe://t/{i}"))
            .collect();
        let e = err(json!({"abort": abort, "source": {"identities": many}}));
        assert_eq!(e.field, "spec.source.identities");
        assert!(
            parse(json!({"abort": abort, "source": {"identities": ["spiffe://t/ns/shop/*"]}}))
                .is_ok()
        );
        assert!(parse(
            json!({"abort": abort, "source": {"clusters": ["web"], "trustHeaders": true}})
        )
        .is_ok());
    }

    #[test]
    fn header_control_names_its_callers() {
        let e = err(json!({"headerControl": {"enabled": true}}));
        assert_eq!(e.field, "spec.headerControl.identities");
        assert!(e.message.contains("anyCaller: true"), "{e}");
        let e = err(
            json!({"headerControl": {"enabled": true, "anyCaller": true, "identities": ["spiffe://t/qa"]}}),
        );
        assert_eq!(e.field, "spec.headerControl.anyCaller");
        let s = parse(
            json!({"headerControl": {"enabled": true, "identities": ["spiffe://t/ns/qa/*"]}}),
        )
        .unwrap();
        let hc = s.header_control.unwrap();
        assert!(hc.caller_allowed(&Peer::known(Some("spiffe://t/ns/qa/sa/x"))));
        assert!(!hc.caller_allowed(&Peer::known(Some("spiffe://t/ns/prod/sa/x"))));
        assert!(!hc.caller_allowed(&Peer::known(None)));
    }

    #[test]
    fn delay_samples_stay_in_bounds() {
        let fixed = DelaySpec {
            fixed_delay: Some(DurationSpec::from_millis(100)),
            ..Default::default()
        };
        assert_eq!(fixed.sample_millis(u64::MAX), 100);
        let jitter = DelaySpec {
            fixed_delay: Some(DurationSpec::from_millis(100)),
            jitter: Some(DurationSpec::from_millis(10)),
            ..Default::default()
        };
        let range = DelaySpec {
            range: Some(DelayRange {
                min: DurationSpec::from_millis(5),
                max: DurationSpec::from_millis(7),
            }),
            ..Default::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for draw in (0..1000u64).chain([u64::MAX, u64::MAX - 1]) {
            let j = jitter.sample_millis(draw.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert!((90..=110).contains(&j));
            let r = range.sample_millis(draw);
            assert!((5..=7).contains(&r));
            seen.insert(r);
        }
        assert_eq!(seen.len(), 3, "every value of the range occurs");
    }
}
