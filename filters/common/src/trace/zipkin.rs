//! Zipkin v2 JSON (`POST /api/v2/spans`) of the proxy's spans, written by hand: the
//! modules otherwise only parse JSON, and building a serde_json `Value` to serialize this
//! one array cost ~5 KB of every module. The tests parse the output with serde_json.

use super::otlp::SERVICE_NAME;
use super::span::{ProxySpan, SpanStatus};
use std::fmt::Write;

/// A JSON array of Zipkin v2 spans, each tagged with `policy`.
pub fn encode_spans(policy: &str, spans: &[ProxySpan]) -> Vec<u8> {
    let mut out = String::from("[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        put_span(&mut out, policy, s);
    }
    out.push(']');
    out.into_bytes()
}

fn put_span(out: &mut String, policy: &str, s: &ProxySpan) {
    // Zipkin drops a zero duration: round up to at least 1 µs.
    let duration_us = s.duration_ns().div_ceil(1_000).max(1);
    out.push('{');
    put_field(out, "traceId", &s.trace_id.to_hex());
    out.push(',');
    put_field(out, "id", &s.span_id.to_hex());
    if let Some(parent) = s.parent {
        out.push(',');
        put_field(out, "parentId", &parent.to_hex());
    }
    out.push(',');
    put_field(out, "name", &s.name());
    out.push(',');
    put_field(out, "kind", "CLIENT");
    let _ = write!(
        out,
        ",\"timestamp\":{},\"duration\":{duration_us}",
        s.start_ns / 1_000
    );
    out.push_str(",\"localEndpoint\":{");
    put_field(out, "serviceName", SERVICE_NAME);
    out.push_str("},\"tags\":{");
    put_field(out, "http.method", &s.method);
    out.push(',');
    put_field(out, "http.path", &s.path);
    if let SpanStatus::Http(code) = s.status {
        out.push(',');
        put_field(out, "http.status_code", &code.to_string());
    }
    if let Some(c) = &s.upstream_cluster {
        out.push(',');
        put_field(out, "upstream_cluster", c);
    }
    if let Some(h) = &s.upstream_host {
        out.push(',');
        put_field(out, "upstream_address", h);
    }
    out.push(',');
    put_field(out, "meshwarden.policy", policy);
    if s.status.is_error() {
        let what = match s.status {
            SpanStatus::Http(code) => code.to_string(),
            SpanStatus::Reset => "stream reset before a response".into(),
        };
        out.push(',');
        put_field(out, "error", &what);
    }
    out.push_str("}}");
}

/// `"key":"value"`.
fn put_field(out: &mut String, key: &str, value: &str) {
    put_string(out, key);
    out.push(':');
    put_string(out, value);
}

/// A JSON string literal of `s` (quotes, backslashes and control characters escaped).
fn put_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::otlp::tests::span;
    use serde_json::Value;

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

    #[test]
    fn odd_text_is_escaped() {
        let mut s = span(SpanStatus::Http(200), false);
        s.path = "/a\"b\\c\n\u{1}é".into();
        let v: Value = serde_json::from_slice(&encode_spans("p\"q", &[s.clone()])).unwrap();
        assert_eq!(v[0]["tags"]["http.path"], s.path.as_str());
        assert_eq!(v[0]["tags"]["meshwarden.policy"], "p\"q");
        let empty: Value = serde_json::from_slice(&encode_spans("p", &[])).unwrap();
        assert_eq!(empty, serde_json::json!([]));
    }
}
