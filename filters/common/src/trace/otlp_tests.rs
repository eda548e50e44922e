use super::*;
use crate::trace::ids::{SpanId, TraceId};
use crate::trace::otlp_decode::{any_value::Value as V, attribute, decode};

pub(crate) fn span(status: SpanStatus, parent: bool) -> ProxySpan {
    ProxySpan {
        trace_id: TraceId::parse_hex(b"4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        span_id: SpanId::parse_hex(b"00f067aa0ba902b7").unwrap(),
        parent: parent.then(|| SpanId::parse_hex(b"b7ad6b7169203331").unwrap()),
        start_ns: 1_700_000_000_123_456_789,
        end_ns: 1_700_000_000_223_456_789,
        status,
        method: "GET".into(),
        path: "/api/items".into(),
        upstream_cluster: Some("upstream".into()),
        upstream_host: Some("127.0.0.1:8080".into()),
    }
}

#[test]
fn requests_round_trip_through_prost() {
    let spans = [
        span(SpanStatus::Http(200), true),
        span(SpanStatus::Http(503), false),
    ];
    let req = decode(&encode_request("checkout", &spans)).expect("valid protobuf");
    assert_eq!(req.resource_spans.len(), 1);
    let rs = &req.resource_spans[0];
    let resource = rs.resource.as_ref().unwrap();
    assert_eq!(
        attribute(&resource.attributes, "service.name"),
        Some(&V::StringValue(SERVICE_NAME.into()))
    );
    let ss = &rs.scope_spans[0];
    assert_eq!(ss.scope.as_ref().unwrap().name, SCOPE);
    assert_eq!(ss.spans.len(), 2);

    let ok = &ss.spans[0];
    assert_eq!(ok.trace_id, spans[0].trace_id.0);
    assert_eq!(ok.span_id, spans[0].span_id.0);
    assert_eq!(ok.parent_span_id, spans[0].parent.unwrap().0);
    assert_eq!(ok.name, "GET /api/items");
    assert_eq!(ok.kind, 3);
    assert_eq!(ok.start_time_unix_nano, spans[0].start_ns);
    assert_eq!(ok.end_time_unix_nano, spans[0].end_ns);
    assert_eq!(ok.status.as_ref().unwrap().code, 1);
    assert_eq!(
        ok.attribute("http.response.status_code"),
        Some(&V::IntValue(200))
    );
    assert_eq!(
        ok.attribute("http.request.method"),
        Some(&V::StringValue("GET".into()))
    );
    assert_eq!(
        ok.attribute("url.path"),
        Some(&V::StringValue("/api/items".into()))
    );
    assert_eq!(
        ok.attribute("upstream_cluster"),
        Some(&V::StringValue("upstream".into()))
    );
    assert_eq!(
        ok.attribute("upstream_address"),
        Some(&V::StringValue("127.0.0.1:8080".into()))
    );
    assert_eq!(
        ok.attribute("meshwarden.policy"),
        Some(&V::StringValue("checkout".into()))
    );

    let failed = &ss.spans[1];
    assert!(
        failed.parent_span_id.is_empty(),
        "a root span has no parent"
    );
    assert_eq!(failed.status.as_ref().unwrap().code, 2);
}

#[test]
fn resets_are_errors_without_a_status_code() {
    let mut s = span(SpanStatus::Reset, true);
    s.upstream_cluster = None;
    s.upstream_host = None;
    let req = decode(&encode_request("p", &[s])).unwrap();
    let got = &req.resource_spans[0].scope_spans[0].spans[0];
    let status = got.status.as_ref().unwrap();
    assert_eq!(status.code, 2);
    assert!(status.message.contains("reset"));
    assert_eq!(got.attribute("http.response.status_code"), None);
    assert_eq!(got.attribute("upstream_cluster"), None);
}

#[test]
fn an_empty_batch_is_still_a_valid_request() {
    let req = decode(&encode_request("p", &[])).unwrap();
    assert!(req.resource_spans[0].scope_spans[0].spans.is_empty());
}
