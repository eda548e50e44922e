//! The trace stage's span export on the runtime's fake host: which requests get a span,
//! what it says, batching on size and on the tick, the queue bound, and answer counting.

use super::*;
use meshwarden_common::trace::otlp_decode::{any_value::Value as V, decode, Span};
use meshwarden_filter_runtime::fake_host::{FakeHost, SentCall};
use meshwarden_filter_runtime::pipeline::{Pipeline, Request};
use meshwarden_filter_runtime::Map;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn config(spec: Value) -> Vec<u8> {
    json!({"policies": [{"name": "t", "spec": spec, "match": {}}]})
        .to_string()
        .into_bytes()
}

fn export(extra: Value) -> Value {
    let mut e = json!({"cluster": "otel", "maxBatch": 2, "maxQueue": 4, "flushInterval": "100ms"});
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    json!({"formats": ["w3c"], "export": e})
}

fn configured(spec: Value) -> (Pipeline, &'static FakeHost) {
    let host = FakeHost::install();
    host.properties
        .borrow_mut()
        .insert("xds.cluster_name".into(), b"upstream".to_vec());
    let p = Pipeline::single(Box::new(TraceStage::default()));
    p.configure(&config(spec)).expect("valid configuration");
    (p, host)
}

/// One request through the stage, answered with `status` (`None`: reset before an
/// answer); returns the traceparent the upstream got.
fn request(
    p: &Pipeline,
    host: &FakeHost,
    id: u32,
    traceparent: &str,
    status: Option<&str>,
) -> String {
    host.begin(
        id,
        &[
            (":method", "GET"),
            (":path", "/items?x=1"),
            ("traceparent", traceparent),
        ],
    );
    let r = Rc::new(RefCell::new(p.request(id)));
    r.borrow_mut().on_request_headers(p, &r, true);
    let sent = host.get(Map::RequestHeaders, "traceparent").unwrap();
    host.advance(Duration::from_millis(3));
    if let Some(status) = status {
        host.respond(&[(":status", status)]);
        r.borrow_mut().on_response_headers(p, &r, true);
    }
    Request::on_done(&mut r.borrow_mut(), p);
    sent
}

/// Runs the root context's timer after `by`.
fn tick(p: &Pipeline, host: &FakeHost, by: Duration) {
    host.advance(by);
    p.on_tick();
}

fn spans(call: &SentCall) -> Vec<Span> {
    let req = decode(call.body.as_deref().unwrap()).expect("OTLP protobuf");
    req.resource_spans[0].scope_spans[0].spans.clone()
}

fn answer(p: &Pipeline, host: &FakeHost, token: u32, status: Option<&str>) {
    let headers: Vec<(&str, &str)> = match status {
        Some(s) => vec![(":status", s), ("x-envoy-upstream-service-time", "1")],
        None => vec![],
    };
    host.maps.borrow_mut().insert(
        Map::CallResponseHeaders,
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    );
    p.on_call_response(token, headers.len(), 0);
}

fn metric(host: &FakeHost, name: &str) -> i64 {
    host.metric(&format!("meshwarden_trace_{name}_total.policy.t"))
}

#[test]
fn a_partial_batch_leaves_on_the_tick_after_the_interval() {
    let (p, host) = configured(export(json!({})));
    assert_eq!(host.tick.get(), Duration::from_millis(50));
    let sent = request(&p, host, 1, INCOMING, Some("200"));
    tick(&p, host, Duration::from_millis(50));
    assert!(
        host.calls.borrow().is_empty(),
        "one span waits for the interval"
    );
    tick(&p, host, Duration::from_millis(60));
    let calls = host.calls.borrow().clone();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, "otel");
    assert_eq!(call.timeout, Duration::from_secs(2), "the default timeout");
    let header = |n: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header(":method"), Some("POST"));
    assert_eq!(header(":path"), Some("/v1/traces"));
    assert_eq!(header(":authority"), Some("otel"));
    assert_eq!(header("content-type"), Some("application/x-protobuf"));

    let got = spans(call);
    assert_eq!(got.len(), 1);
    let span = &got[0];
    // The span id is the parent id the upstream received; its parent is the caller's.
    let upstream_parent = sent.split('-').nth(2).unwrap();
    assert_eq!(hex(&span.span_id), upstream_parent);
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        span.end_time_unix_nano - span.start_time_unix_nano,
        3_000_000
    );
    assert_eq!(span.name, "GET /items");
    let path = Some(&V::StringValue("/items".into()));
    assert_eq!(
        span.attribute("url.path"),
        path,
        "the query is not recorded"
    );
    assert_eq!(
        span.attribute("http.response.status_code"),
        Some(&V::IntValue(200))
    );
    assert_eq!(
        span.attribute("upstream_cluster"),
        Some(&V::StringValue("upstream".into()))
    );
    assert_eq!(span.status.as_ref().unwrap().code, 1);

    answer(&p, host, call.token, Some("200"));
    assert_eq!(metric(host, "spans_exported"), 1);
    assert_eq!(metric(host, "spans_failed"), 0);
}

#[test]
fn a_full_batch_leaves_at_the_next_tick() {
    let (p, host) = configured(export(json!({})));
    request(&p, host, 1, INCOMING, Some("200"));
    request(&p, host, 2, INCOMING, Some("503"));
    request(&p, host, 3, INCOMING, None);
    tick(&p, host, Duration::ZERO);
    let calls = host.calls.borrow().clone();
    assert_eq!(calls.len(), 1, "one full batch; the third span waits");
    let got = spans(&calls[0]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].status.as_ref().unwrap().code, 2, "a 503 is an error");
    tick(&p, host, Duration::from_millis(100));
    let calls = host.calls.borrow().clone();
    assert_eq!(calls.len(), 2);
    let reset = &spans(&calls[1])[0];
    assert_eq!(
        reset.status.as_ref().unwrap().code,
        2,
        "a reset is an error"
    );
    assert_eq!(reset.attribute("http.response.status_code"), None);
}

#[test]
fn unsampled_and_unexported_requests_make_no_span() {
    let (p, host) = configured(export(json!({})));
    request(
        &p,
        host,
        1,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        Some("200"),
    );
    tick(&p, host, Duration::from_secs(1));
    assert!(host.calls.borrow().is_empty());

    let (p, host) = configured(json!({"formats": ["w3c"]}));
    assert_eq!(host.tick.get(), Duration::ZERO, "no export, no timer");
    request(&p, host, 1, INCOMING, Some("200"));
    tick(&p, host, Duration::from_secs(1));
    assert!(host.calls.borrow().is_empty());
}

#[test]
fn a_2xx_answer_exports_anything_else_fails() {
    let (p, host) = configured(export(
        json!({"maxBatch": 1, "maxQueue": 8, "timeout": "1s"}),
    ));
    for id in 1..=3 {
        request(&p, host, id, INCOMING, Some("200"));
    }
    tick(&p, host, Duration::ZERO);
    let calls = host.calls.borrow().clone();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].cluster, "otel");
    assert_eq!(calls[0].timeout, Duration::from_secs(1));
    answer(&p, host, calls[0].token, None);
    answer(&p, host, calls[1].token, Some("500"));
    answer(&p, host, calls[2].token, Some("204"));
    assert_eq!(metric(host, "spans_failed"), 2);
    assert_eq!(metric(host, "spans_exported"), 1);
}

#[test]
fn zipkin_batches_are_json_to_the_zipkin_path() {
    let (p, host) = configured(export(json!({"format": "zipkin", "maxBatch": 1})));
    request(&p, host, 1, INCOMING, Some("201"));
    tick(&p, host, Duration::ZERO);
    let call = host.calls.borrow()[0].clone();
    assert!(call
        .headers
        .contains(&(":path".into(), "/api/v2/spans".into())));
    let body: Value = serde_json::from_slice(call.body.as_deref().unwrap()).unwrap();
    assert_eq!(body[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(body[0]["parentId"], "00f067aa0ba902b7");
    assert_eq!(body[0]["tags"]["http.status_code"], "201");
}

#[test]
fn an_unchanged_export_keeps_its_queue_across_configurations() {
    let (p, host) = configured(export(json!({})));
    request(&p, host, 1, INCOMING, Some("200"));
    p.configure(&config(export(json!({})))).unwrap();
    tick(&p, host, Duration::from_millis(200));
    assert_eq!(host.calls.borrow().len(), 1, "the queued span survived");
}

#[test]
fn export_in_propagate_mode_is_rejected() {
    let _host = FakeHost::install();
    let p = Pipeline::single(Box::new(TraceStage::default()));
    let mut spec = export(json!({}));
    spec["mode"] = json!("propagate");
    let err = p.configure(&config(spec)).unwrap_err();
    assert!(err.to_string().contains("export"), "{err}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
