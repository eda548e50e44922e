//! Policy documents as users write them (Kubernetes style).

use crate::error::ValidationError;
use crate::matcher::RequestMatch;
use crate::names::PolicyName;
use crate::selector::Selector;
use crate::spec::{from_value, KindSpec};
use crate::{capture, circuitbreaker, fault, mirror, ratelimit, trace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The only API version this release understands.
pub const API_VERSION: &str = "meshwarden.dev/v1alpha1";

/// Policy kinds, one per filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    TracePolicy,
    FaultPolicy,
    MirrorPolicy,
    RateLimitPolicy,
    CircuitBreakerPolicy,
    CapturePolicy,
}

impl Kind {
    /// Every kind, in declaration order (listings, storage).
    pub const ALL: [Kind; 6] = [
        Kind::TracePolicy,
        Kind::FaultPolicy,
        Kind::MirrorPolicy,
        Kind::RateLimitPolicy,
        Kind::CircuitBreakerPolicy,
        Kind::CapturePolicy,
    ];

    /// Every kind, in the order a request meets them — the single source of the filter
    /// chain's order, for the combined module and the separate filters alike: trace first
    /// (every request gets an id, local answers too), capture (it sees that id and every
    /// request, local answers of later stages too), then rate limiting (shed load before
    /// doing anything else), the circuit breaker (a request refused by the rate limit is
    /// not an upstream call; an injected fault after it counts as one), faults, and the
    /// mirror last (only requests that really go upstream are copied).
    pub const CHAIN: [Kind; 6] = [
        Kind::TracePolicy,
        Kind::CapturePolicy,
        Kind::RateLimitPolicy,
        Kind::CircuitBreakerPolicy,
        Kind::FaultPolicy,
        Kind::MirrorPolicy,
    ];

    /// The kind's name as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TracePolicy => "TracePolicy",
            Kind::FaultPolicy => "FaultPolicy",
            Kind::MirrorPolicy => "MirrorPolicy",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::CircuitBreakerPolicy => "CircuitBreakerPolicy",
            Kind::CapturePolicy => "CapturePolicy",
        }
    }

    /// The short name of the filter enforcing this kind (`trace`, `fault`, ...), used in
    /// resource names (`meshwarden.trace`), module file names and metrics.
    pub fn filter(self) -> &'static str {
        match self {
            Kind::TracePolicy => "trace",
            Kind::FaultPolicy => "fault",
            Kind::MirrorPolicy => "mirror",
            Kind::RateLimitPolicy => "ratelimit",
            Kind::CircuitBreakerPolicy => "circuitbreaker",
            Kind::CapturePolicy => "capture",
        }
    }

    /// Parses a kind name, accepting the filter short name too, case-insensitively
    /// (`trace`, `TracePolicy`, `tracepolicy`).
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let singular = match lower.strip_suffix("policies") {
            Some(stem) => format!("{stem}policy"),
            None => lower,
        };
        Kind::ALL
            .into_iter()
            .find(|k| singular == k.as_str().to_ascii_lowercase() || singular == k.filter())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metadata` of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: PolicyName,
    /// Free-form labels for the user's own bookkeeping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The kind-specific part of a validated policy.
#[derive(Debug, Clone, PartialEq)]
pub enum KindBody {
    Trace(trace::TraceSpec),
    Fault(fault::FaultSpec),
    Mirror(mirror::MirrorSpec),
    RateLimit(ratelimit::RateLimitSpec),
    CircuitBreaker(circuitbreaker::CircuitBreakerSpec),
    Capture(capture::CaptureSpec),
}

/// A validated policy document. Only constructible through [`PolicyDocument::from_value`],
/// so holding one means it passed every check the filters apply.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    pub metadata: Metadata,
    pub selector: Selector,
    pub request_match: RequestMatch,
    pub body: KindBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    api_version: String,
    kind: String,
    metadata: Value,
    #[serde(default)]
    spec: Option<Value>,
}

impl PolicyDocument {
    /// Validates a document given as a JSON value (YAML is converted by the caller).
    pub fn from_value(value: &Value) -> Result<Self, ValidationError> {
        let env: Envelope = from_value("", value)?;
        if env.api_version != API_VERSION {
            return Err(ValidationError::new(
                "apiVersion",
                format!("must be {API_VERSION:?}, got {:?}", env.api_version),
            ));
        }
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == env.kind)
            .ok_or_else(|| {
                ValidationError::new(
                    "kind",
                    format!(
                        "unknown kind {:?}; expected one of {}",
                        env.kind,
                        Kind::ALL.map(Kind::as_str).join(", ")
                    ),
                )
            })?;
        let metadata: Metadata = from_value("metadata", &env.metadata)?;
        let mut spec = match env.spec {
            Some(Value::Object(m)) => m,
            Some(Value::Null) | None => Map::new(),
            Some(_) => return Err(ValidationError::new("spec", "must be a mapping")),
        };
        let selector: Selector = take(&mut spec, "selector")?;
        selector.validate().map_err(|e| e.within("spec.selector"))?;
        let request_match: RequestMatch = take(&mut spec, "match")?;
        request_match
            .compile()
            .map_err(|e| e.within("spec.match"))?;
        let rest = Value::Object(spec);
        let body = match kind {
            Kind::TracePolicy => KindBody::Trace(parse_body(&rest)?),
            Kind::FaultPolicy => KindBody::Fault(parse_body(&rest)?),
            Kind::MirrorPolicy => KindBody::Mirror(parse_body(&rest)?),
            Kind::RateLimitPolicy => KindBody::RateLimit(parse_body(&rest)?),
            Kind::CircuitBreakerPolicy => KindBody::CircuitBreaker(parse_body(&rest)?),
            Kind::CapturePolicy => KindBody::Capture(parse_body(&rest)?),
        };
        Ok(Self {
            metadata,
            selector,
            request_match,
            body,
        })
    }

    /// The document's kind.
    pub fn kind(&self) -> Kind {
        match self.body {
            KindBody::Trace(_) => Kind::TracePolicy,
            KindBody::Fault(_) => Kind::FaultPolicy,
            KindBody::Mirror(_) => Kind::MirrorPolicy,
            KindBody::RateLimit(_) => Kind::RateLimitPolicy,
            KindBody::CircuitBreaker(_) => Kind::CircuitBreakerPolicy,
            KindBody::Capture(_) => Kind::CapturePolicy,
        }
    }

    /// The policy name.
    pub fn name(&self) -> &PolicyName {
        &self.metadata.name
    }

    /// The kind-specific body as JSON (what the filter receives as `spec`).
    pub fn body_value(&self) -> Value {
        let v = match &self.body {
            KindBody::Trace(s) => serde_json::to_value(s),
            KindBody::Fault(s) => serde_json::to_value(s),
            KindBody::Mirror(s) => serde_json::to_value(s),
            KindBody::RateLimit(s) => serde_json::to_value(s),
            KindBody::CircuitBreaker(s) => serde_json::to_value(s),
            KindBody::Capture(s) => serde_json::to_value(s),
        };
        let mut v = v.expect("policy specs always serialize");
        normalize_negative_zero(&mut v);
        v
    }

    /// The canonical JSON form of the whole document (defaults filled in, keys sorted), used
    /// for storage, display and content-derived versions.
    pub fn to_value(&self) -> Value {
        let mut spec = match self.body_value() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if self.selector != Selector::default() {
            spec.insert(
                "selector".into(),
                serde_json::to_value(&self.selector).expect("serializable"),
            );
        }
        if self.request_match != RequestMatch::default() {
            spec.insert(
                "match".into(),
                serde_json::to_value(&self.request_match).expect("serializable"),
            );
        }
        serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": self.kind().as_str(),
            "metadata": self.metadata,
            "spec": spec,
        })
    }
}

/// Rewrites every `-0.0` as `0.0`: equal numbers, so they must give equal canonical bytes
/// (and content versions).
fn normalize_negative_zero(value: &mut Value) {
    match value {
        Value::Number(n) if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) => {
            *n = serde_json::Number::from_f64(0.0).expect("0.0 is finite");
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_negative_zero),
        Value::Object(map) => map.values_mut().for_each(normalize_negative_zero),
        _ => {}
    }
}

fn take<T: for<'de> Deserialize<'de> + Default>(
    spec: &mut Map<String, Value>,
    key: &str,
) -> Result<T, ValidationError> {
    match spec.remove(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => from_value(&format!("spec.{key}"), &v),
    }
}

fn parse_body<S: KindSpec>(rest: &Value) -> Result<S, ValidationError> {
    let s: S = from_value("spec", rest)?;
    s.validate().map_err(|e| e.within("spec"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(kind: &str, spec: Value) -> Value {
        json!({"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "p1"}, "spec": spec})
    }

    #[test]
    fn minimal_trace_policy_is_valid_and_round_trips() {
        let d = PolicyDocument::from_value(&doc("TracePolicy", json!({}))).unwrap();
        assert_eq!(d.kind(), Kind::TracePolicy);
        let again = PolicyDocument::from_value(&d.to_value()).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn negative_zero_has_the_canonical_form_of_zero() {
        let fault = |value: Value| {
            let spec = json!({"abort": {"httpStatus": 503, "percentage": {"value": value}}});
            PolicyDocument::from_value(&doc("FaultPolicy", spec))
                .unwrap()
                .to_value()
                .to_string()
        };
        let zero = fault(json!(0));
        assert_eq!(fault(json!(-0.0)), zero);
        assert_eq!(fault(json!(0.0)), zero);
        assert!(!zero.contains("-0"), "{zero}");
    }

    #[test]
    fn envelope_errors_name_the_field() {
        let mut v = doc("TracePolicy", json!({}));
        v["apiVersion"] = json!("v1");
        assert_eq!(
            PolicyDocument::from_value(&v).unwrap_err().field,
            "apiVersion"
        );
        let e = PolicyDocument::from_value(&doc("Nope", json!({}))).unwrap_err();
        assert_eq!(e.field, "kind");
        let mut v = doc("TracePolicy", json!({}));
        v["metadata"]["name"] = json!("Bad_Name");
        assert_eq!(
            PolicyDocument::from_value(&v).unwrap_err().field,
            "metadata.name"
        );
        let mut v = doc("TracePolicy", json!({}));
        v["extra"] = json!(1);
        assert!(PolicyDocument::from_value(&v)
            .unwrap_err()
            .message
            .contains("extra"));
    }

    #[test]
    fn selector_and_match_errors_are_prefixed() {
        let e =
            PolicyDocument::from_value(&doc("TracePolicy", json!({"selector": {"nodeIds": "x"}})))
                .unwrap_err();
        assert_eq!(e.field, "spec.selector.nodeIds");
        let e = PolicyDocument::from_value(&doc(
            "TracePolicy",
            json!({"match": {"path": {"regex": "("}}}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "spec.match.path.regex");
        let e = PolicyDocument::from_value(&doc("TracePolicy", json!({"bogus": 1}))).unwrap_err();
        assert_eq!(e.field, "spec.bogus");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn kind_names_parse_leniently() {
        assert_eq!(Kind::parse("trace"), Some(Kind::TracePolicy));
        assert_eq!(Kind::parse("RateLimitPolicy"), Some(Kind::RateLimitPolicy));
        assert_eq!(Kind::parse("faultpolicies"), Some(Kind::FaultPolicy));
        assert_eq!(Kind::parse("x"), None);
        assert_eq!(
            Kind::parse("circuitbreaker"),
            Some(Kind::CircuitBreakerPolicy)
        );
        assert_eq!(Kind::parse("capture"), Some(Kind::CapturePolicy));
        assert_eq!(
            Kind::parse("CircuitBreakerPolicies"),
            Some(Kind::CircuitBreakerPolicy)
        );
    }
}
