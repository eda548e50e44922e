//! The capture stage on the runtime's fake host: what a summary says (and never says),
//! sampling, the per-proxy rate cap, the bounded queue, batching on the tick, and answer
//! counting.

use super::*;
use meshwarden_filter_runtime::fake_host::FakeHost;
use meshwarden_filter_runtime::pipeline::{Pipeline, Request};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;

fn configured(spec: Value) -> (Pipeline, &'static FakeHost) {
    let host = FakeHost::install();
    host.properties
        .borrow_mut()
        .insert("xds.node.id".into(), b"node-1".to_vec());
    let p = Pipeline::single(Box::new(CaptureStage::default()));
    let config = json!({"policies": [{"name": "cap", "spec": spec, "match": {}}]});
    p.configure(config.to_string().as_bytes())
        .expect("valid configuration");
    (p, host)
}

/// One request through the stage, answered 200.
fn request(p: &Pipeline, host: &FakeHost, id: u32) {
    host.begin(
        id,
        &[
            (":method", "GET"),
            (":path", "/items?token=q"),
            (":authority", "api"),
            ("authorization", "Bearer s3cret"),
            ("user-agent", "curl"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
    );
    let r = Rc::new(RefCell::new(p.request(id)));
    r.borrow_mut().on_request_headers(p, &r, true);
    host.respond(&[(":status", "200"), ("set-cookie", "sid=abc")]);
    r.borrow_mut().on_response_headers(p, &r, true);
    Request::on_done(&mut r.borrow_mut(), p);
}

fn tick(p: &Pipeline, host: &FakeHost, ms: u64) {
    host.advance(std::time::Duration::from_millis(ms));
    p.on_tick();
}

fn metric(host: &FakeHost, name: &str) -> i64 {
    host.metric(&format!("meshwarden_capture_{name}_total.policy.cap"))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn summaries_are_reported_from_the_tick_with_credentials_redacted() {
    let (p, host) = configured(json!({"headers": ["authorization", "user-agent", "set-cookie"]}));
    request(&p, host, 1);
    assert!(
        host.grpc_calls.borrow().is_empty(),
        "nothing on the request path"
    );
    tick(&p, host, 250);
    let calls = host.grpc_calls.borrow().clone();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, "meshwarden_xds", "the xDS cluster by default");
    assert_eq!(call.service, "meshwarden.v1alpha1.CaptureService");
    assert_eq!(call.method, "Report");
    let m = &call.message;
    for text in [
        "node-1",
        "GET",
        "/items",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "curl",
    ] {
        assert!(contains(m, text), "{text} is in the report");
    }
    for secret in ["s3cret", "sid=abc", "token=q"] {
        assert!(!contains(m, secret), "{secret} never leaves the proxy");
    }
    assert!(contains(m, "[redacted]"));
    p.on_grpc_call_response(call.token, 0);
    assert_eq!(metric(host, "captured"), 1);
    assert_eq!(metric(host, "failed"), 0);
}

#[test]
fn zero_percent_captures_nothing() {
    let (p, host) = configured(json!({"samplingPercentage": 0}));
    (1..=20).for_each(|i| request(&p, host, i));
    tick(&p, host, 1_000);
    assert!(host.grpc_calls.borrow().is_empty());
    assert_eq!(metric(host, "dropped"), 0, "not sampled is not dropped");
}

#[test]
fn the_rate_cap_drops_and_counts_the_rest_of_the_second() {
    let (p, host) =
        configured(json!({"maxPerSecond": 5, "report": {"maxBatch": 100, "maxQueue": 100}}));
    (1..=30).for_each(|i| request(&p, host, i));
    assert_eq!(metric(host, "dropped"), 25);
    tick(&p, host, 250);
    let calls = host.grpc_calls.borrow().clone();
    assert_eq!(calls.len(), 1, "one batch of the 5 admitted");
    p.on_grpc_call_response(calls[0].token, 0);
    assert_eq!(metric(host, "captured"), 5);
}

#[test]
fn a_full_queue_drops_and_failed_reports_are_counted() {
    let (p, host) = configured(json!({"report": {"maxBatch": 2, "maxQueue": 2}}));
    (1..=3).for_each(|i| request(&p, host, i));
    assert_eq!(metric(host, "dropped"), 1);
    tick(&p, host, 60);
    let token = host.grpc_calls.borrow()[0].token;
    p.on_grpc_call_response(token, 14);
    assert_eq!(metric(host, "failed"), 2, "UNAVAILABLE: the batch failed");
    *host.grpc_refuse.borrow_mut() = Some("no cluster".into());
    request(&p, host, 4);
    tick(&p, host, 300);
    assert_eq!(metric(host, "failed"), 3, "a refused call fails its batch");
}
