//! `CapturePolicy.spec`: which requests a proxy summarises, which headers go with them,
//! how many per second, and where the summaries are reported.

use crate::batch::BatchLimits;
use crate::cluster::ControlPlaneCluster;
use crate::error::ValidationError;
use crate::names::HeaderName;
use crate::percentage::Percentage;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};

/// Most headers in the allow-list (and in `redact`).
pub const MAX_HEADERS: usize = 32;
/// Longest `report.cluster` (the longest a gRPC call-out may name).
#[cfg(test)]
use crate::grpc::MAX_CLUSTER_LEN;
/// Largest `maxPerSecond`.
pub const MAX_PER_SECOND: u32 = 10_000;

/// Headers whose values are never sent in clear, whatever the policy says.
pub const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

/// `spec` of a `CapturePolicy` (besides `selector` and `match`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureSpec {
    /// Percentage of matching requests summarised (default 100).
    #[serde(default)]
    pub sampling_percentage: Percentage,
    /// Request and response headers whose values go with a summary (default none). The
    /// credentials in [`ALWAYS_REDACTED`] and those in `redact` are sent as `[redacted]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderName>,
    /// More headers of `headers` whose values are never sent in clear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<HeaderName>,
    /// Most summaries per second and proxy (1 to 10,000, default 100); more are dropped and
    /// counted in `meshwarden_capture_dropped_total`.
    #[serde(default = "default_max_per_second")]
    pub max_per_second: u32,
    /// Where and how summaries are reported (default: the control plane's xDS cluster).
    #[serde(default)]
    pub report: ReportSpec,
}

fn default_max_per_second() -> u32 {
    100
}

impl Default for CaptureSpec {
    fn default() -> Self {
        Self {
            sampling_percentage: Percentage::default(),
            headers: Vec::new(),
            redact: Vec::new(),
            max_per_second: default_max_per_second(),
            report: ReportSpec::default(),
        }
    }
}

impl KindSpec for CaptureSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        check_names("headers", &self.headers)?;
        check_names("redact", &self.redact)?;
        if let Some((i, name)) = self
            .redact
            .iter()
            .enumerate()
            .find(|(_, n)| !self.headers.contains(n))
        {
            return Err(ValidationError::new(
                format!("redact[{i}]"),
                format!("{name} is not in headers: only listed headers are captured"),
            ));
        }
        if !(1..=MAX_PER_SECOND).contains(&self.max_per_second) {
            return Err(ValidationError::new(
                "maxPerSecond",
                format!(
                    "must be from 1 to {MAX_PER_SECOND}, got {}",
                    self.max_per_second
                ),
            ));
        }
        self.report.validate().map_err(|e| e.within("report"))
    }
}

impl CaptureSpec {
    /// Whether the value of `name` (lowercase) is never sent in clear.
    pub fn is_redacted(&self, name: &str) -> bool {
        ALWAYS_REDACTED.contains(&name) || self.redact.iter().any(|r| r.as_str() == name)
    }
}

/// At most [`MAX_HEADERS`] names, none twice.
fn check_names(field: &str, names: &[HeaderName]) -> Result<(), ValidationError> {
    if names.len() > MAX_HEADERS {
        return Err(ValidationError::new(
            field,
            format!("lists {} headers, at most {MAX_HEADERS}", names.len()),
        ));
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                format!("{n} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// `spec.report` of a `CapturePolicy`: the gRPC call-out to the control plane's
/// `CaptureService.Report`, batched from the root context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportSpec {
    /// The Envoy cluster of the control plane (default `meshwarden_xds`, which the Istio
    /// EnvoyFilter adds too).
    #[serde(default)]
    pub cluster: ControlPlaneCluster,
    /// `maxBatch` (default 64), `flushInterval` (default 200ms: summaries show within a
    /// second), `maxQueue` (default 1024; more are dropped and counted) and `timeout`
    /// (default 2s).
    #[serde(flatten)]
    pub limits: ReportLimits,
}

/// The batching fields of `report`: `flushInterval` defaults to 200ms.
pub type ReportLimits = BatchLimits<200>;

impl ReportSpec {
    /// Checks every field; errors name the field relative to `report`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.limits.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<CaptureSpec, String> {
        let s: CaptureSpec = crate::spec::from_value("", &v).map_err(|e| e.to_string())?;
        s.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }

    #[test]
    fn defaults_report_to_the_xds_cluster() {
        let s = parse(json!({})).unwrap();
        assert_eq!(s, CaptureSpec::default());
        assert_eq!(s.report.cluster.as_str(), "meshwarden_xds");
        assert_eq!(s.max_per_second, 100);
        assert_eq!(s.report.limits.flush_interval.as_millis(), 200);
        assert_eq!(s.sampling_percentage, Percentage::ALL);
        let round = serde_json::to_value(&s).unwrap();
        assert_eq!(parse(round).unwrap(), s);
    }

    #[test]
    fn credentials_are_always_redacted_and_more_can_be() {
        let s = parse(
            json!({"headers": ["Authorization", "x-api-key", "user-agent"],
            "redact": ["x-api-key"]}),
        )
        .unwrap();
        for name in ALWAYS_REDACTED {
            assert!(s.is_redacted(name), "{name}");
        }
        assert!(s.is_redacted("x-api-key"));
        assert!(!s.is_redacted("user-agent"));
        assert_eq!(
            s.headers[0].as_str(),
            "authorization",
            "names are lowercased"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |v| parse(v).unwrap_err();
        assert!(err(json!({"samplingPercentage": 101})).starts_with("samplingPercentage:"));
        assert!(err(json!({"headers": ["a b"]})).starts_with("headers[0]:"));
        assert!(err(json!({"headers": ["a", "A"]})).starts_with("headers[1]:"));
        let many: Vec<String> = (0..33).map(|i| format!("h{i}")).collect();
        assert!(err(json!({ "headers": many })).starts_with("headers:"));
        assert!(err(json!({"headers": ["a"], "redact": ["b"]})).starts_with("redact[0]:"));
        assert!(err(json!({"maxPerSecond": 0})).starts_with("maxPerSecond:"));
        assert!(err(json!({"maxPerSecond": 10001})).starts_with("maxPerSecond:"));
        assert!(err(json!({"report": {"cluster": ""}})).starts_with("report.cluster:"));
        let long = "c".repeat(MAX_CLUSTER_LEN + 1);
        assert!(err(json!({"report": {"cluster": long}})).starts_with("report.cluster:"));
        // The batching fields: `crate::batch` tests them; here that they are checked.
        assert!(err(json!({"report": {"maxQueue": 1}})).starts_with("report.maxQueue:"));
        assert!(err(json!({"report": {"report": 1}})).contains("unknown field"));
        assert!(err(json!({"body": true})).contains("unknown field"));
    }
}
