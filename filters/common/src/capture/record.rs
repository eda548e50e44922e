//! One request summary and the `CaptureService.Report` request that carries a batch of
//! them to the control plane (`proto/meshwarden/v1alpha1/capture.proto`), hand-encoded
//! like the other call-outs so the filter modules need no protobuf library.

use super::redact::CapturedHeader;
use crate::proto::{put_len, put_message, put_uint};
use crate::trace::SpanStatus;

/// gRPC service of `Report` and `Watch`.
pub const SERVICE: &str = "meshwarden.v1alpha1.CaptureService";
/// The method the filter calls.
pub const REPORT_METHOD: &str = "Report";

/// What a proxy saw of one request (never a body). Text fields are bounded, valid UTF-8
/// (see [`crate::trace::span::field_text`]); the path has no query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    /// The policy that captured it.
    pub policy: String,
    /// Unix nanoseconds when the request headers arrived.
    pub start_ns: u64,
    /// Nanoseconds until the stream ended.
    pub duration_ns: u64,
    pub method: String,
    pub authority: String,
    /// The path without its query (which may carry secrets).
    pub path: String,
    /// The response status, or a reset.
    pub status: SpanStatus,
    /// The upstream cluster, if the request was routed.
    pub upstream_cluster: Option<String>,
    /// The upstream host (`ip:port`), if one was picked.
    pub upstream_host: Option<String>,
    /// The trace id as 32 lowercase hex digits, if the request carries one.
    pub trace_id: Option<String>,
    /// Request bytes received (headers and body, as Envoy counts them).
    pub request_bytes: u64,
    /// Response bytes sent.
    pub response_bytes: u64,
    /// The allow-listed headers, credentials redacted.
    pub headers: Vec<CapturedHeader>,
}

/// `meshwarden.v1alpha1.ReportRequest{node_id = 1, records = 2, dropped = 3}`: `dropped`
/// is how many summaries this worker dropped since its last report.
pub fn encode_report(node_id: &str, records: &[CaptureRecord], dropped: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, 1, node_id.as_bytes());
    for r in records {
        put_message(&mut out, 2, |m| encode_record(m, r));
    }
    put_uint(&mut out, 3, dropped);
    out
}

/// `meshwarden.v1alpha1.CaptureRecord` (field 2, `node_id`, is the control plane's to
/// fill in; a reset is status 0 with `reset = 15`).
fn encode_record(out: &mut Vec<u8>, r: &CaptureRecord) {
    put_str(out, 1, &r.policy);
    put_uint(out, 3, r.start_ns);
    put_uint(out, 4, r.duration_ns);
    put_str(out, 5, &r.method);
    put_str(out, 6, &r.authority);
    put_str(out, 7, &r.path);
    match r.status {
        SpanStatus::Http(code) => put_uint(out, 8, u64::from(code)),
        SpanStatus::Reset => put_uint(out, 15, 1),
    }
    put_str(out, 9, r.upstream_host.as_deref().unwrap_or_default());
    put_str(out, 10, r.upstream_cluster.as_deref().unwrap_or_default());
    put_str(out, 11, r.trace_id.as_deref().unwrap_or_default());
    put_uint(out, 12, r.request_bytes);
    put_uint(out, 13, r.response_bytes);
    for h in &r.headers {
        put_message(out, 14, |m| {
            put_str(m, 1, &h.name);
            put_str(m, 2, &h.value);
            put_uint(m, 3, u64::from(h.response));
        });
    }
}

/// A string field, left out when empty (like proto3 does).
fn put_str(out: &mut Vec<u8>, field: u64, s: &str) {
    if !s.is_empty() {
        put_len(out, field, s.as_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct ReportRequest {
        #[prost(string, tag = "1")]
        node_id: String,
        #[prost(message, repeated, tag = "2")]
        records: Vec<Record>,
        #[prost(uint64, tag = "3")]
        dropped: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Record {
        #[prost(string, tag = "1")]
        policy: String,
        #[prost(uint64, tag = "3")]
        start_unix_nanos: u64,
        #[prost(uint64, tag = "4")]
        duration_nanos: u64,
        #[prost(string, tag = "5")]
        method: String,
        #[prost(string, tag = "6")]
        authority: String,
        #[prost(string, tag = "7")]
        path: String,
        #[prost(uint32, tag = "8")]
        status: u32,
        #[prost(string, tag = "9")]
        upstream_host: String,
        #[prost(string, tag = "10")]
        upstream_cluster: String,
        #[prost(string, tag = "11")]
        trace_id: String,
        #[prost(uint64, tag = "12")]
        request_bytes: u64,
        #[prost(uint64, tag = "13")]
        response_bytes: u64,
        #[prost(message, repeated, tag = "14")]
        headers: Vec<Header>,
        #[prost(bool, tag = "15")]
        reset: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Header {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        value: String,
        #[prost(bool, tag = "3")]
        response: bool,
    }

    /// A summary of `GET /items` answered `status`.
    pub(crate) fn record(status: SpanStatus) -> CaptureRecord {
        CaptureRecord {
            policy: "cap".into(),
            start_ns: 1_700_000_000_000_000_000,
            duration_ns: 1_500_000,
            method: "GET".into(),
            authority: "api".into(),
            path: "/items".into(),
            status,
            upstream_cluster: Some("backend".into()),
            upstream_host: Some("10.0.0.1:80".into()),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            request_bytes: 120,
            response_bytes: 3_000,
            headers: vec![CapturedHeader {
                name: "authorization".into(),
                value: "[redacted]".into(),
                response: false,
            }],
        }
    }

    #[test]
    fn prost_reads_what_the_filter_writes() {
        let bytes = encode_report(
            "node-1",
            &[record(SpanStatus::Http(201)), record(SpanStatus::Reset)],
            7,
        );
        let req = ReportRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(req.node_id, "node-1");
        assert_eq!(req.dropped, 7);
        assert_eq!(req.records.len(), 2);
        let r = &req.records[0];
        assert_eq!(
            (
                r.policy.as_str(),
                r.method.as_str(),
                r.path.as_str(),
                r.status
            ),
            ("cap", "GET", "/items", 201)
        );
        assert_eq!(r.start_unix_nanos, 1_700_000_000_000_000_000);
        assert_eq!(r.duration_nanos, 1_500_000);
        assert_eq!(r.authority, "api");
        assert_eq!(r.upstream_host, "10.0.0.1:80");
        assert_eq!(r.upstream_cluster, "backend");
        assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((r.request_bytes, r.response_bytes), (120, 3_000));
        assert_eq!(r.headers[0].name, "authorization");
        assert_eq!(r.headers[0].value, "[redacted]");
        assert!(!r.reset);
        assert!(req.records[1].reset && req.records[1].status == 0);
    }

    #[test]
    fn an_empty_report_still_names_the_node() {
        let req = ReportRequest::decode(encode_report("n", &[], 0).as_slice()).unwrap();
        assert_eq!(req.node_id, "n");
        assert!(req.records.is_empty());
    }
}
