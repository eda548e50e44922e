//! Zipkin v2 JSON (`POST /api/v2/spans`) of the proxy's spans.

use super::otlp::SERVICE_NAME;
use super::span::{ProxySpan, SpanStatus};
use serde_json::{json, Map, Value};

/// A JSON array of Zipkin v2 spans, each tagged with `policy`.
pub fn encode_spans(policy: &str, spans: &[ProxySpan]) -> Vec<u8> {
    let list: Vec<Value> = spans.iter().map(|s| span(policy, s)).collect();
    serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
}

fn span(policy: &str, s: &ProxySpan) -> Value {
    let mut tags = Map::new();
    let mut tag = |k: &str, v: String| {
        tags.insert(k.to_string(), Value::String(v));
    };
    tag("http.method", s.method.clone());
    tag("http.path", s.path.clone());
    match s.status {
        SpanStatus::Http(code) => tag("http.status_code", code.to_string()),
        SpanStatus::Reset => {}
    }
    if let Some(c) = &s.upstream_cluster {
        tag("upstream_cluster", c.clone());
    }
    if let Some(h) = &s.upstream_host {
        tag("upstream_address", h.clone());
    }
    tag("meshwarden.policy", policy.to_string());
    if s.status.is_error() {
        let what = match s.status {
            SpanStatus::Http(code) => code.to_string(),
            SpanStatus::Reset => "stream reset before a response".into(),
        };
        tag("error", what);
    }
    let mut v = json!({
        "traceId": s.trace_id.to_hex(),
        "id": s.span_id.to_hex(),
        "name": s.name(),
        "kind": "CLIENT",
        "timestamp": s.start_ns / 1_000,
        // Zipkin drops a zero duration: round up to at least 1 µs.
        "duration": s.duration_ns().div_ceil(1_000).max(1),
        "localEndpoint": {"serviceName": SERVICE_NAME},
        "tags": tags,
    });
    if let Some(parent) = s.parent {
        v["parentId"] = Value::String(parent.to_hex());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::otlp::tests::span;

    #[test]
    fn spans_are_zipkin_v2_json() {
        let bytes = encode_spans(
            "p",
            &[
                span(SpanStatus::Http(200), true),
                span(SpanStatus::Reset, false),
            ],
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let ok = &v[0];
        assert_eq!(ok["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ok["id"], "00f067aa0ba902b7");
        assert_eq!(ok["parentId"], "b7ad6b7169203331");
        assert_eq!(ok["name"], "GET /api/items");
        assert_eq!(ok["timestamp"], 1_700_000_000_123_456u64);
        assert_eq!(ok["duration"], 100_000);
        assert_eq!(ok["tags"]["http.status_code"], "200");
        assert_eq!(ok["tags"]["meshwarden.policy"], "p");
        assert!(ok["tags"].get("error").is_none());
        let reset = &v[1];
        assert!(reset.get("parentId").is_none());
        assert!(reset["tags"]["error"].as_str().unwrap().contains("reset"));
    }
}
