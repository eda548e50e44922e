//! The few OTLP messages the trace filter sends (`ExportTraceServiceRequest` of
//! opentelemetry-proto `collector/trace/v1`, with `ResourceSpans`, `ScopeSpans`, `Span`,
//! `Status`, `KeyValue` and `AnyValue`), in protobuf wire format, by hand.
//!
//! Why not `prost` with generated types: the same reason as the rate limit service's
//! messages ([`crate::ratelimit::rls`]) — every byte of the module is paid on every
//! configuration push in every proxy, and these messages are only ever written, never
//! read. The tests decode the output with `prost` against message definitions written
//! from the `.proto` files.

use super::span::{ProxySpan, SpanStatus};
use crate::proto::{put_fixed64, put_len, put_message, put_uint};

/// Scope (instrumentation library) name in exported spans.
pub const SCOPE: &str = "meshwarden.trace";
/// `service.name` of exported spans.
pub const SERVICE_NAME: &str = "meshwarden-proxy";

/// `Span.SpanKind`: the proxy calls the upstream for the client.
const SPAN_KIND_CLIENT: u64 = 3;
/// `Status.StatusCode`.
const STATUS_OK: u64 = 1;
const STATUS_ERROR: u64 = 2;

/// An `AnyValue` of a span attribute.
enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

/// An `ExportTraceServiceRequest` carrying `spans`, each tagged with `policy`.
pub fn encode_request(policy: &str, spans: &[ProxySpan]) -> Vec<u8> {
    let mut out = Vec::new();
    put_message(&mut out, 1, |rs| {
        put_message(rs, 1, |resource| {
            put_attribute(resource, 1, "service.name", Value::Str(SERVICE_NAME));
        });
        put_message(rs, 2, |ss| {
            put_message(ss, 1, |scope| put_len(scope, 1, SCOPE.as_bytes()));
            for span in spans {
                put_message(ss, 2, |m| put_span(m, policy, span));
            }
        });
    });
    out
}

fn put_span(out: &mut Vec<u8>, policy: &str, span: &ProxySpan) {
    put_len(out, 1, &span.trace_id.0);
    put_len(out, 2, &span.span_id.0);
    if let Some(parent) = span.parent {
        put_len(out, 4, &parent.0);
    }
    put_len(out, 5, span.name().as_bytes());
    put_uint(out, 6, SPAN_KIND_CLIENT);
    put_fixed64(out, 7, span.start_ns);
    put_fixed64(out, 8, span.end_ns.max(span.start_ns));
    put_attribute(out, 9, "http.request.method", Value::Str(&span.method));
    put_attribute(out, 9, "url.path", Value::Str(&span.path));
    if let SpanStatus::Http(code) = span.status {
        put_attribute(out, 9, "http.response.status_code", Value::Int(code.into()));
    }
    if let Some(cluster) = &span.upstream_cluster {
        put_attribute(out, 9, "upstream_cluster", Value::Str(cluster));
    }
    if let Some(host) = &span.upstream_host {
        put_attribute(out, 9, "upstream_address", Value::Str(host));
    }
    put_attribute(out, 9, "meshwarden.policy", Value::Str(policy));
    put_message(out, 15, |status| {
        if span.status == SpanStatus::Reset {
            put_len(status, 2, b"stream reset before a response");
        }
        let code = if span.status.is_error() {
            STATUS_ERROR
        } else {
            STATUS_OK
        };
        put_uint(status, 3, code);
    });
}

/// A `KeyValue` as repeated `field`.
fn put_attribute(out: &mut Vec<u8>, field: u64, key: &str, value: Value<'_>) {
    put_message(out, field, |kv| {
        put_len(kv, 1, key.as_bytes());
        put_message(kv, 2, |v| match value {
            Value::Str(s) => put_len(v, 1, s.as_bytes()),
            // int64 is a plain varint of the two's complement.
            Value::Int(i) => {
                crate::proto::put_tag(v, 3, crate::proto::VARINT);
                crate::proto::put_varint(v, i as u64);
            }
        });
    });
}

#[cfg(test)]
#[path = "otlp_tests.rs"]
pub(crate) mod tests;
