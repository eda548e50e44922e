//! `TracePolicy.spec.export`: where and how the trace filter sends the spans of the proxy
//! hop (one per sampled request in `newSpan` mode), batched from the root context.

use crate::batch::BatchLimits;
use crate::error::ValidationError;
use serde::{Deserialize, Serialize};

/// Longest cluster name, path or authority accepted.
const MAX_NAME_LEN: usize = 255;

/// The wire format of exported spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExportFormat {
    /// OTLP/HTTP protobuf: `POST /v1/traces`, `application/x-protobuf`,
    /// `ExportTraceServiceRequest`.
    #[default]
    Otlp,
    /// Zipkin v2 JSON: `POST /api/v2/spans`, `application/json`.
    Zipkin,
}

impl ExportFormat {
    /// The name policies use (`otlp`, `zipkin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Otlp => "otlp",
            Self::Zipkin => "zipkin",
        }
    }

    /// The collector's usual path for this format.
    pub fn default_path(self) -> &'static str {
        match self {
            Self::Otlp => "/v1/traces",
            Self::Zipkin => "/api/v2/spans",
        }
    }

    /// The request's `content-type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Otlp => "application/x-protobuf",
            Self::Zipkin => "application/json",
        }
    }
}

/// `spec.export` of a `TracePolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportSpec {
    /// The Envoy cluster of the collector (it must exist on the proxy: a bootstrap cluster
    /// or, in Istio, `outbound|4318||otel-collector.NAMESPACE.svc.cluster.local`).
    pub cluster: String,
    /// `otlp` (default) or `zipkin`.
    #[serde(default)]
    pub format: ExportFormat,
    /// Request path; default `/v1/traces` (OTLP) or `/api/v2/spans` (Zipkin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `:authority` of the call-out; default the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// `maxBatch` (default 64), `flushInterval` (default 1s), `maxQueue` (default 1024;
    /// more spans are dropped and counted in `meshwarden_trace_spans_dropped_total`) and
    /// `timeout` (default 2s).
    #[serde(flatten)]
    pub limits: ExportLimits,
}

/// The batching fields of `export`: `flushInterval` defaults to 1s.
pub type ExportLimits = BatchLimits<1000>;

impl ExportSpec {
    /// An export to `cluster` in `format` with every default.
    pub fn new(cluster: impl Into<String>, format: ExportFormat) -> Self {
        Self {
            cluster: cluster.into(),
            format,
            path: None,
            authority: None,
            limits: ExportLimits::default(),
        }
    }

    /// The request path.
    pub fn path(&self) -> &str {
        self.path
            .as_deref()
            .unwrap_or_else(|| self.format.default_path())
    }

    /// The request `:authority`.
    pub fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.cluster)
    }

    /// Checks every field; errors name the field relative to `export`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_text("cluster", &self.cluster, |_| true)?;
        if let Some(path) = &self.path {
            check_text("path", path, |p| p.starts_with('/')).map_err(|e| {
                ValidationError::new(
                    e.field,
                    "must start with / and have no spaces or control characters (e.g. /v1/traces)",
                )
            })?;
        }
        if let Some(authority) = &self.authority {
            check_text("authority", authority, |_| true)?;
        }
        self.limits.validate()
    }
}

/// A non-empty, bounded value of printable ASCII without spaces that `ok` accepts.
pub(crate) fn check_text(
    field: &str,
    v: &str,
    ok: impl Fn(&str) -> bool,
) -> Result<(), ValidationError> {
    let printable = v.bytes().all(|b| b.is_ascii_graphic());
    if v.is_empty() || v.len() > MAX_NAME_LEN || !printable || !ok(v) {
        return Err(ValidationError::new(
            field,
            format!(
                "must be 1 to {MAX_NAME_LEN} printable ASCII characters without spaces, got {v:?}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<ExportSpec, String> {
        let s: ExportSpec = serde_json::from_value(v).map_err(|e| e.to_string())?;
        s.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }

    #[test]
    fn defaults_follow_the_format() {
        let s = parse(json!({"cluster": "otel"})).unwrap();
        assert_eq!(s, ExportSpec::new("otel", ExportFormat::Otlp));
        assert_eq!(s.path(), "/v1/traces");
        assert_eq!(s.authority(), "otel");
        let z = parse(
            json!({"cluster": "zipkin", "format": "zipkin", "authority": "zipkin:9411",
            "maxBatch": 10, "maxQueue": 10, "flushInterval": "250ms", "timeout": "1s"}),
        )
        .unwrap();
        assert_eq!(z.path(), "/api/v2/spans");
        assert_eq!(z.format.as_str(), "zipkin");
        assert_eq!(z.format.content_type(), "application/json");
        assert_eq!(z.authority(), "zipkin:9411");
        assert_eq!(z.limits.flush_interval.as_millis(), 250);
        assert_eq!(z.limits.max_batch, 10);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |v| parse(v).unwrap_err();
        assert!(err(json!({})).contains("cluster"));
        assert!(err(json!({"cluster": ""})).starts_with("cluster:"));
        assert!(err(json!({"cluster": "a b"})).starts_with("cluster:"));
        assert!(err(json!({"cluster": "c", "path": "v1"})).starts_with("path:"));
        assert!(err(json!({"cluster": "c", "authority": "a\n"})).starts_with("authority:"));
        // The batching fields: `crate::batch` tests them; here that they are checked.
        assert!(err(json!({"cluster": "c", "maxBatch": 0})).starts_with("maxBatch:"));
        assert!(err(json!({"cluster": "c", "timeout": "2m"})).starts_with("timeout:"));
        assert!(err(json!({"cluster": "c", "format": "jaeger"})).contains("unknown variant"));
        assert!(err(json!({"cluster": "c", "endpoint": "x"})).contains("unknown field"));
    }
}
