//! The combined pipeline on the runtime's fake host: stage order, local answers stopping
//! later stages, parked streams resuming through the rest of the pass, all-or-nothing
//! configuration, and the host calls a request costs.

use super::*;
use meshwarden_filter_runtime::fake_host::FakeHost;
use meshwarden_filter_runtime::pipeline::Request;
use meshwarden_filter_runtime::{connection, Flow, Map, Phase};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// A combined configuration: `{"<section>": [policies...]}` → the wire form.
fn config(sections: Value) -> Vec<u8> {
    let mut out = serde_json::Map::new();
    for (section, policies) in sections.as_object().unwrap() {
        let policies: Vec<Value> = policies
            .as_array()
            .unwrap()
            .iter()
            .map(|p| json!({"name": p["name"], "spec": p["spec"], "match": p.get("match").cloned().unwrap_or(json!({}))}))
            .collect();
        out.insert(section.clone(), json!({ "policies": policies }));
    }
    Value::Object(out).to_string().into_bytes()
}

fn configured(sections: Value) -> (Pipeline, &'static FakeHost) {
    let host = FakeHost::install();
    let p = combined();
    p.configure(&config(sections)).expect("valid configuration");
    (p, host)
}

/// Runs a request's headers through the pipeline, as the module's HTTP context does.
fn send(
    p: &Pipeline,
    host: &FakeHost,
    id: u32,
    headers: &[(&str, &str)],
) -> (Rc<RefCell<Request>>, Flow) {
    host.begin(id, headers);
    let r = Rc::new(RefCell::new(p.request(id)));
    let flow = r.borrow_mut().on_request_headers(p, &r, true);
    (r, flow)
}

fn respond(p: &Pipeline, host: &FakeHost, r: &Rc<RefCell<Request>>, status: &str) -> Flow {
    host.respond(&[(":status", status)]);
    r.borrow_mut().on_response_headers(p, r, true)
}

const GET: [(&str, &str); 3] = [
    (":method", "GET"),
    (":path", "/api"),
    (":authority", "shop"),
];

#[test]
fn stage_order_is_the_filter_chain_order() {
    let names: Vec<&str> = combined().stages().iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            "trace",
            "capture",
            "ratelimit",
            "circuitbreaker",
            "fault",
            "mirror"
        ]
    );
    for (kind, name) in Kind::CHAIN.iter().zip(names) {
        assert_eq!(
            pipeline_for_root_id(&format!("meshwarden.{name}"))
                .stages()
                .len(),
            1
        );
        assert_eq!(pipeline_for_root_id(name).stages()[0].name(), kind.filter());
    }
    assert_eq!(
        pipeline_for_root_id("meshwarden").stages().len(),
        Kind::CHAIN.len()
    );
}

#[test]
fn without_policies_a_request_costs_no_host_call() {
    let (p, host) = configured(json!({}));
    host.take_count();
    let (r, flow) = send(&p, host, 1, &GET);
    assert_eq!(flow, Flow::Continue);
    assert!(r.borrow().is_empty());
    assert_eq!(respond(&p, host, &r, "200"), Flow::Continue);
    r.borrow_mut().on_done(&p);
    assert_eq!(host.take_count(), 0);
}

#[test]
fn a_trace_only_request_reads_only_what_it_needs() {
    let (p, host) = configured(json!({"trace": [{"name": "t", "spec": {"formats": ["w3c"]}}]}));
    host.take_count();
    let (r, _) = send(&p, host, 1, &GET);
    respond(&p, host, &r, "200");
    r.borrow_mut().on_done(&p);
    let calls = host.take_count();
    // traceparent, tracestate, b3 / x-b3-traceid (adoption), random ids, the write, a counter.
    assert!(calls <= 10, "{calls} host calls");
    let tp = host
        .get(Map::RequestHeaders, "traceparent")
        .expect("traceparent set");
    assert!(tp.starts_with("00-"), "{tp}");
    assert_eq!(host.metric("meshwarden_trace_started_total.policy.t"), 1);
}

#[test]
fn a_rate_limit_answer_stops_the_later_stages() {
    let (p, host) = configured(json!({
        "trace": [{"name": "t", "spec": {}}],
        "ratelimit": [{"name": "rl", "spec": {"rate": {"requests": 1, "unit": "minute"}, "burst": 1}}],
        "fault": [{"name": "f", "spec": {"abort": {"httpStatus": 503, "percentage": {"value": 100}}}}],
    }));
    let (r1, flow) = send(&p, host, 1, &GET);
    assert_eq!(flow, Flow::Pause, "the fault aborts the first request");
    assert_eq!(host.sent.borrow().last().unwrap().status, 503);
    r1.borrow_mut().on_done(&p);
    let (_, flow) = send(&p, host, 2, &GET);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(
        host.sent.borrow().last().unwrap().status,
        429,
        "rate limited, not faulted"
    );
    assert_eq!(
        host.metric("meshwarden_fault_aborts_injected_total.policy.f"),
        1
    );
    assert_eq!(
        host.metric("meshwarden_ratelimit_limited_total.policy.rl"),
        1
    );
    // Trace ran first on both (ids on local answers too).
    assert_eq!(host.metric("meshwarden_trace_started_total.policy.t"), 2);
}

#[test]
fn a_delayed_request_resumes_through_the_rest_of_the_pass() {
    let (p, host) = configured(json!({
        "fault": [{"name": "slow", "spec": {"delay": {"fixedDelay": "5ms", "percentage": {"value": 100}}}}],
        "mirror": [{"name": "m", "spec": {"mirrors": [{"target": {"cluster": "shadow"}}]}}],
    }));
    let (r, flow) = send(&p, host, 7, &GET);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(
        host.tick.get(),
        Duration::from_millis(1),
        "timer on while parked"
    );
    p.on_tick();
    assert!(host.resumed.borrow().is_empty(), "not due yet");
    host.advance(Duration::from_millis(6));
    p.on_tick();
    assert_eq!(*host.resumed.borrow(), [(7, Phase::Request)]);
    // The mirror saw the request after the delay; its copy goes out on the next tick.
    host.advance(Duration::from_millis(20));
    p.on_tick();
    let calls = host.calls.borrow();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "shadow");
    drop(calls);
    assert_eq!(respond(&p, host, &r, "200"), Flow::Continue);
    r.borrow_mut().on_done(&p);
    assert_eq!(host.metric("meshwarden_fault_active_faults.policy.slow"), 0);
}

#[test]
fn a_response_delay_holds_the_response_then_resumes_it() {
    let (p, host) = configured(json!({
        "fault": [{"name": "late", "spec": {"responseDelay": {"fixedDelay": "3ms", "percentage": {"value": 100}}}}],
    }));
    let (r, flow) = send(&p, host, 3, &GET);
    assert_eq!(flow, Flow::Continue);
    assert_eq!(respond(&p, host, &r, "200"), Flow::Pause);
    host.advance(Duration::from_millis(4));
    p.on_tick();
    assert_eq!(*host.resumed.borrow(), [(3, Phase::Response)]);
    r.borrow_mut().on_done(&p);
}

#[test]
fn a_stream_gone_while_parked_is_not_resumed() {
    let (p, host) = configured(json!({
        "fault": [{"name": "slow", "spec": {"delay": {"fixedDelay": "5ms", "percentage": {"value": 100}}}}],
    }));
    let (r, _) = send(&p, host, 9, &GET);
    r.borrow_mut().on_done(&p);
    drop(r);
    host.advance(Duration::from_millis(10));
    p.on_tick();
    assert!(host.resumed.borrow().is_empty());
    assert_eq!(
        host.tick.get(),
        Duration::ZERO,
        "timer off once nothing waits"
    );
}

#[test]
fn configuration_applies_all_or_nothing() {
    let (p, host) = configured(json!({"trace": [{"name": "t", "spec": {}}]}));
    let bad = config(json!({
        "trace": [],
        "fault": [{"name": "f", "spec": {"abort": {"httpStatus": 700, "percentage": {"value": 1}}}}],
    }));
    let err = p.configure(&bad).unwrap_err();
    assert!(err.field.starts_with("fault.policies[0]"), "{err}");
    // The trace policy still runs.
    send(&p, host, 1, &GET);
    assert_eq!(host.metric("meshwarden_trace_started_total.policy.t"), 1);
    let err = p
        .configure(br#"{"tracing": {"policies": []}}"#)
        .unwrap_err();
    assert_eq!(err.field, "tracing");
    assert!(err.message.contains("unknown section"), "{err}");
}

#[test]
fn host_calls_per_request_with_every_stage() {
    let (p, host) = configured(json!({
        "trace": [{"name": "t", "spec": {}}],
        "ratelimit": [{"name": "rl", "spec": {"rate": {"requests": 1000, "unit": "second"}, "burst": 1000}}],
        "fault": [{"name": "f", "spec": {"abort": {"httpStatus": 503, "percentage": {"value": 0.0}}}}],
        "mirror": [{"name": "m", "match": {"path": {"exact": "/never"}}, "spec": {"mirrors": [{"target": {"cluster": "shadow"}}]}}],
    }));
    host.take_count();
    let (r, _) = send(&p, host, 1, &GET);
    respond(&p, host, &r, "200");
    r.borrow_mut().on_done(&p);
    let calls = host.take_count();
    assert!(calls <= 20, "{calls} host calls");
    println!("host calls per request, every stage: {calls}");
}

#[test]
fn a_fault_scoped_to_a_peer_identity_trusts_the_certificate_not_the_headers() {
    let (p, host) = configured(json!({
        "fault": [
            {"name": "web-only", "spec": {"abort": {"httpStatus": 503, "percentage": {"value": 100}},
                "source": {"identities": ["spiffe://cluster.local/ns/shop/sa/web"]}}},
            {"name": "qa-headers", "spec": {"headerControl": {"enabled": true, "identities": ["spiffe://cluster.local/ns/qa/*"]}}},
        ],
    }));
    let peer = connection::PEER_URI_SAN.join(".");
    let forged = [
        GET[0],
        GET[1],
        GET[2],
        ("x-envoy-downstream-service-cluster", "web"),
        ("x-envoy-fault-abort-request", "418"),
    ];
    host.set_peer(Some("spiffe://cluster.local/ns/shop/sa/web"));
    let (_, flow) = send(&p, host, 1, &GET);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(host.sent.borrow().last().unwrap().status, 503);
    assert_eq!(host.property_reads(&peer), 1, "read once per request");

    host.set_peer(Some("spiffe://cluster.local/ns/shop/sa/api"));
    let (_, flow) = send(&p, host, 2, &forged);
    assert_eq!(
        flow,
        Flow::Continue,
        "a forged caller header selects nothing"
    );
    assert_eq!(host.property_reads(&peer), 2, "still once per request");

    host.set_peer(None);
    let (_, flow) = send(&p, host, 3, &forged);
    assert_eq!(
        flow,
        Flow::Continue,
        "no certificate: no header fault either"
    );

    let refused = "meshwarden_fault_header_requests_refused_total.policy.qa-headers";
    assert_eq!(
        host.metric(refused),
        2,
        "both ignored header requests counted"
    );

    host.set_peer(Some("spiffe://cluster.local/ns/qa/sa/bot"));
    let (_, flow) = send(&p, host, 4, &forged);
    assert_eq!(flow, Flow::Pause, "an allowed caller's header fault");
    assert_eq!(host.sent.borrow().last().unwrap().status, 418);
    assert_eq!(host.metric(refused), 2);
}

#[test]
fn policies_without_identities_never_read_the_peer() {
    let (p, host) = configured(json!({
        "fault": [{"name": "f", "spec": {"abort": {"httpStatus": 503, "percentage": {"value": 100}},
            "source": {"clusters": ["web"], "trustHeaders": true}}},
            {"name": "h", "spec": {"headerControl": {"enabled": true, "anyCaller": true}}}],
    }));
    host.set_peer(Some("spiffe://cluster.local/ns/shop/sa/web"));
    let (_, flow) = send(
        &p,
        host,
        1,
        &[GET[0], GET[1], ("x-envoy-fault-abort-request", "503")],
    );
    assert_eq!(flow, Flow::Pause);
    let (_, flow) = send(
        &p,
        host,
        2,
        &[GET[0], ("x-envoy-downstream-service-cluster", "web")],
    );
    assert_eq!(flow, Flow::Pause);
    assert!(host.property_reads.borrow().is_empty());
}

/// `scope: global` rate limits: the call-out to the rate limit service holds the request,
/// and its answer (or failure) decides, then the pass goes on.
mod global_ratelimit {
    use super::*;
    use meshwarden_common::ratelimit::rls::{self, Code, DescriptorStatus, Response};

    const ALLOW: &str = "meshwarden_ratelimit_allowed_total.policy.g";
    const LIMITED: &str = "meshwarden_ratelimit_limited_total.policy.g";
    const FAILURES: &str = "meshwarden_ratelimit_global_failures_total.policy.g";
    const CHECKS: &str = "meshwarden_ratelimit_global_checks_total.policy.g";
    const LATENCY: &str = "meshwarden_ratelimit_global_call_duration_us.policy.g";

    fn global(failure_mode: &str) -> (Pipeline, &'static FakeHost) {
        global_with(json!({"failureMode": failure_mode}))
    }

    /// Policy `g` (global, 100/s, burst 50, by `x-tenant`, 40 ms timeout) with `extra`
    /// spec fields, and a fault and a mirror stage after it.
    fn global_with(extra: Value) -> (Pipeline, &'static FakeHost) {
        let mut spec = json!({
            "rate": {"requests": 100, "unit": "second"}, "burst": 50, "scope": "global",
            "descriptors": [{"header": "x-tenant"}], "timeout": "40ms"});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        configured(json!({
            "ratelimit": [{"name": "g", "spec": spec}],
            "fault": [{"name": "f", "spec": {"abort": {"httpStatus": 418, "percentage": {"value": 0}}}}],
            "mirror": [{"name": "m", "spec": {"mirrors": [{"target": {"cluster": "shadow"}}]}}],
        }))
    }

    fn answer(code: Code, remaining: u32) -> Vec<u8> {
        rls::encode_response(&Response {
            overall_code: code,
            statuses: vec![DescriptorStatus {
                code,
                limit_remaining: remaining,
                until_reset_ms: 20,
                ..Default::default()
            }],
        })
    }

    /// Sends a request of tenant `acme`.
    fn acme(p: &Pipeline, host: &FakeHost, id: u32) -> (Rc<RefCell<Request>>, Flow) {
        let mut headers = GET.to_vec();
        headers.push(("x-tenant", "acme"));
        send(p, host, id, &headers)
    }

    /// Sends a request; it waits for the call-out, whose token it returns.
    fn held(p: &Pipeline, host: &'static FakeHost, id: u32) -> (Rc<RefCell<Request>>, u32) {
        let (r, flow) = acme(p, host, id);
        assert_eq!(flow, Flow::Pause, "held for the rate limit service");
        let call = host
            .grpc_calls
            .borrow()
            .last()
            .cloned()
            .expect("a call-out");
        assert_eq!(call.context, id);
        (r, call.token)
    }

    fn deliver(
        p: &Pipeline,
        host: &FakeHost,
        r: &Rc<RefCell<Request>>,
        token: u32,
        status: u32,
        message: &[u8],
    ) {
        let call = host
            .grpc_calls
            .borrow()
            .iter()
            .find(|c| c.token == token)
            .cloned()
            .unwrap();
        host.grpc_answer(&call, message);
        let size = if status == 0 { message.len() } else { 0 };
        r.borrow_mut().on_grpc_response(p, r, token, status, size);
    }

    #[test]
    fn the_call_carries_the_policys_descriptor_and_timeout() {
        let (p, host) = global("allow");
        let _ = held(&p, host, 1);
        let call = host.grpc_calls.borrow()[0].clone();
        assert_eq!(call.cluster, "meshwarden_ratelimit");
        assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
        assert_eq!(call.method, "ShouldRateLimit");
        assert_eq!(call.timeout, Duration::from_millis(40));
        assert_eq!(
            call.message,
            rls::encode_request(
                "meshwarden",
                &[vec![
                    ("policy".into(), "g".into()),
                    ("x-tenant".into(), "acme".into())
                ]]
            )
        );
    }

    #[test]
    fn an_ok_answer_resumes_through_the_rest_of_the_pass() {
        let (p, host) = global("deny");
        let (r, token) = held(&p, host, 1);
        assert!(host.resumed.borrow().is_empty());
        host.advance(Duration::from_micros(1_500));
        deliver(&p, host, &r, token, 0, &answer(Code::Ok, 42));
        assert_eq!(*host.resumed.borrow(), [(1, Phase::Request)]);
        assert!(host.sent.borrow().is_empty());
        assert_eq!((host.metric(ALLOW), host.metric(CHECKS)), (1, 1));
        assert_eq!(host.metric(LATENCY), 1_500);
        // The mirror (after the rate limit stage) saw the request.
        host.advance(Duration::from_millis(20));
        p.on_tick();
        assert_eq!(host.calls.borrow().len(), 1, "mirrored after the decision");
        // A late duplicate answer changes nothing.
        deliver(&p, host, &r, token, 0, &answer(Code::OverLimit, 0));
        assert_eq!(host.resumed.borrow().len(), 1);
        assert!(host.sent.borrow().is_empty());
        assert_eq!(respond(&p, host, &r, "200"), Flow::Continue);
        r.borrow_mut().on_done(&p);
    }

    #[test]
    fn over_limit_answers_429_and_stops_the_pass() {
        let (p, host) = global("allow");
        let (r, token) = held(&p, host, 2);
        // Body arriving meanwhile is held too.
        assert_eq!(r.borrow_mut().on_request_body(10, true), Flow::Pause);
        deliver(&p, host, &r, token, 0, &answer(Code::OverLimit, 0));
        let sent = host.sent.borrow().last().cloned().expect("a local answer");
        assert_eq!(sent.status, 429);
        let body: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body["policy"], "g");
        assert!(sent
            .headers
            .contains(&("ratelimit".to_string(), "\"g\";r=0;t=1".to_string())));
        assert!(host.resumed.borrow().is_empty(), "answered, not resumed");
        assert_eq!((host.metric(LIMITED), host.metric(ALLOW)), (1, 0));
        r.borrow_mut().on_done(&p);
    }

    /// A call answered with gRPC `status` (0: `message`) under `failureMode: <mode>`.
    fn failed_call(mode: &str, status: u32, message: &[u8]) -> (&'static FakeHost, Pipeline) {
        let (p, host) = global(mode);
        let (r, token) = held(&p, host, 3);
        deliver(&p, host, &r, token, status, message);
        assert_eq!(host.metric(FAILURES), 1);
        assert_eq!(host.metric(CHECKS), 0);
        r.borrow_mut().on_done(&p);
        (host, p)
    }

    fn denied_busy(host: &FakeHost) {
        let sent = host.sent.borrow().last().cloned().expect("denied");
        assert_eq!(sent.status, 429);
        assert!(sent
            .headers
            .contains(&("retry-after".to_string(), "1".to_string())));
        assert!(host.resumed.borrow().is_empty());
        assert_eq!(host.metric(LIMITED), 1);
    }

    #[test]
    fn a_timeout_lets_requests_through_with_failure_mode_allow() {
        // DEADLINE_EXCEEDED
        let (host, _p) = failed_call("allow", 4, b"");
        assert_eq!(*host.resumed.borrow(), [(3, Phase::Request)]);
        assert_eq!(host.metric(ALLOW), 1);
    }

    #[test]
    fn an_unreachable_service_denies_with_failure_mode_deny() {
        // UNAVAILABLE: Envoy's answer for a dead cluster and its "upstream request timeout".
        let (host, _p) = failed_call("deny", 14, b"");
        denied_busy(host);
    }

    #[test]
    fn a_malformed_answer_applies_the_failure_mode() {
        let (host, _p) = failed_call("deny", 0, b"\x0b\x0b");
        denied_busy(host);
    }

    #[test]
    fn a_refused_call_decides_at_once_and_a_gone_stream_gets_nothing() {
        let (p, host) = global("deny");
        *host.grpc_refuse.borrow_mut() = Some("ParseFailure".into());
        let mut headers = GET.to_vec();
        headers.push(("x-tenant", "acme"));
        let (r, flow) = send(&p, host, 5, &headers);
        assert_eq!(flow, Flow::Pause);
        assert_eq!(host.sent.borrow().last().unwrap().status, 429);
        assert_eq!(host.metric(FAILURES), 1);
        r.borrow_mut().on_done(&p);

        *host.grpc_refuse.borrow_mut() = None;
        let (r, token) = held(&p, host, 6);
        r.borrow_mut().on_done(&p);
        deliver(&p, host, &r, token, 0, &answer(Code::Ok, 1));
        assert!(host.resumed.borrow().is_empty());
        assert_eq!(host.sent.borrow().len(), 1);
    }

    /// `lease`: local pre-admission from leased tokens in the proxy's shared data.
    mod lease {
        use super::*;

        const REQUESTS: &str = "meshwarden_ratelimit_lease_requests_total.policy.g";
        const ADMITTED: &str = "meshwarden_ratelimit_lease_admitted_total.policy.g";

        fn leased() -> (Pipeline, &'static FakeHost) {
            global_with(json!({"lease": {"tokens": 4, "maxAge": "100ms"}}))
        }

        fn acme_entries() -> Vec<(String, String)> {
            vec![
                ("policy".into(), "g".into()),
                ("x-tenant".into(), "acme".into()),
            ]
        }

        fn calls(host: &FakeHost) -> usize {
            host.grpc_calls.borrow().len()
        }

        /// Request `id` asks for a lease, which is granted; it goes on.
        fn lease_granted(p: &Pipeline, host: &'static FakeHost, id: u32) {
            let (r, token) = held(p, host, id);
            let asked = [(&acme_entries()[..], 4)];
            assert_eq!(
                host.grpc_calls.borrow().last().unwrap().message,
                rls::encode_request_hits("meshwarden", &asked)
            );
            deliver(p, host, &r, token, 0, &answer(Code::Ok, 40));
            assert_eq!(host.resumed.borrow().last(), Some(&(id, Phase::Request)));
            r.borrow_mut().on_done(p);
        }

        /// Request `id` goes on at once, with no call-out.
        fn admitted_locally(p: &Pipeline, host: &FakeHost, id: u32) {
            let before = calls(host);
            let (r, flow) = acme(p, host, id);
            assert_eq!(flow, Flow::Continue, "request {id} admitted from the lease");
            assert_eq!(calls(host), before, "no call-out");
            r.borrow_mut().on_done(p);
        }

        #[test]
        fn a_granted_lease_admits_the_next_requests_without_call_outs() {
            let (p, host) = leased();
            lease_granted(&p, host, 1);
            for id in 2..=4 {
                admitted_locally(&p, host, id);
            }
            assert_eq!((host.metric(REQUESTS), host.metric(ADMITTED)), (1, 3));
            assert_eq!((host.metric(ALLOW), host.metric(CHECKS)), (4, 4));
            // Spent: the next request asks again.
            lease_granted(&p, host, 5);
            assert_eq!(host.metric(REQUESTS), 2);
        }

        #[test]
        fn leased_tokens_expire_after_max_age() {
            let (p, host) = leased();
            lease_granted(&p, host, 1);
            admitted_locally(&p, host, 2);
            host.advance(Duration::from_millis(100));
            lease_granted(&p, host, 3);
            assert_eq!(host.metric(ADMITTED), 1);
        }

        #[test]
        fn a_denied_lease_is_retried_with_a_single_hit() {
            let (p, host) = leased();
            let (r, token) = held(&p, host, 1);
            deliver(&p, host, &r, token, 0, &answer(Code::OverLimit, 2));
            assert!(host.sent.borrow().is_empty() && host.resumed.borrow().is_empty());
            let retry = host.grpc_calls.borrow().last().cloned().unwrap();
            assert_eq!(
                (calls(host), retry.context),
                (2, 1),
                "asked again, still held"
            );
            assert_eq!(
                retry.message,
                rls::encode_request("meshwarden", &[acme_entries()])
            );
            deliver(&p, host, &r, retry.token, 0, &answer(Code::Ok, 1));
            assert_eq!(*host.resumed.borrow(), [(1, Phase::Request)]);
            assert_eq!((host.metric(ALLOW), host.metric(REQUESTS)), (1, 1));
            r.borrow_mut().on_done(&p);
            // The tail of the bucket is used one hit per call until the rate could have
            // refilled a lease (4 tokens at 100/s: 40 ms); then a lease is asked again.
            let (r, token) = held(&p, host, 2);
            assert_eq!(
                host.grpc_calls.borrow().last().unwrap().message,
                retry.message
            );
            deliver(&p, host, &r, token, 0, &answer(Code::OverLimit, 0));
            assert_eq!(calls(host), 3, "no second call for a single hit");
            assert_eq!(host.sent.borrow().last().unwrap().status, 429);
            assert_eq!(host.metric(LIMITED), 1);
            r.borrow_mut().on_done(&p);
            host.advance(Duration::from_millis(40));
            lease_granted(&p, host, 3);
        }

        #[test]
        fn requests_meanwhile_ask_singly_and_share_the_lease_through_shared_data() {
            let (p, host) = leased();
            let (first, lease_token) = held(&p, host, 1);
            // While the lease call is out, another request asks for its own hit only.
            let (second, single_token) = held(&p, host, 2);
            assert_eq!(
                host.grpc_calls.borrow().last().unwrap().message,
                rls::encode_request("meshwarden", &[acme_entries()])
            );
            deliver(&p, host, &first, lease_token, 0, &answer(Code::Ok, 30));
            deliver(&p, host, &second, single_token, 0, &answer(Code::Ok, 29));
            assert_eq!(host.resumed.borrow().len(), 2);
            assert_eq!(host.metric(REQUESTS), 1);
            // The lease sits in the proxy's shared data: the next streams take from it.
            for id in 3..=5 {
                admitted_locally(&p, host, id);
            }
            let (r, _) = held(&p, host, 6);
            r.borrow_mut().on_done(&p);
            first.borrow_mut().on_done(&p);
            second.borrow_mut().on_done(&p);
        }
    }
}

/// One request through the pipeline answered `status` by the upstream (or locally).
fn exchange(p: &Pipeline, host: &FakeHost, id: u32, status: &str) -> Flow {
    let (r, flow) = send(p, host, id, &GET);
    if flow == Flow::Continue {
        respond(p, host, &r, status);
    }
    r.borrow_mut().on_done(p);
    flow
}

#[test]
fn an_open_breaker_answers_its_fallback_then_half_opens_and_closes() {
    let (p, host) = configured(json!({
        "circuitbreaker": [{"name": "cb", "spec": {
            "slidingWindow": {"count": 4}, "minimumNumberOfCalls": 4,
            "waitDurationInOpenState": "1s", "permittedNumberOfCallsInHalfOpenState": 2,
            "fallback": {"httpStatus": 200, "headers": {"content-type": "application/json"}, "body": "{\"items\":[]}"}
        }}],
    }));
    for id in 1..=4 {
        assert_eq!(exchange(&p, host, id, "503"), Flow::Continue);
    }
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_opened_total.policy.cb"),
        1
    );
    assert_eq!(host.metric("meshwarden_circuitbreaker_state.policy.cb"), 2);
    // Open: the fallback, at once, whatever the upstream would say.
    assert_eq!(exchange(&p, host, 5, "200"), Flow::Pause);
    let sent = host.sent.borrow().last().cloned().unwrap();
    assert_eq!(sent.status, 200);
    assert_eq!(sent.body, b"{\"items\":[]}");
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_short_circuited_total.policy.cb"),
        1
    );
    // After the wait, two trials go upstream; both succeed and the breaker closes.
    host.advance(Duration::from_millis(1000));
    let (t1, flow) = send(&p, host, 6, &GET);
    assert_eq!(flow, Flow::Continue);
    assert_eq!(host.metric("meshwarden_circuitbreaker_state.policy.cb"), 1);
    let (t2, _) = send(&p, host, 7, &GET);
    assert_eq!(
        exchange(&p, host, 8, "200"),
        Flow::Pause,
        "every trial is out"
    );
    for t in [t1, t2] {
        respond(&p, host, &t, "200");
        t.borrow_mut().on_done(&p);
    }
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_closed_total.policy.cb"),
        1
    );
    assert_eq!(host.metric("meshwarden_circuitbreaker_state.policy.cb"), 0);
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_open_breakers.policy.cb"),
        0
    );
    assert_eq!(exchange(&p, host, 9, "200"), Flow::Continue);
}

#[test]
fn a_closed_breaker_costs_one_shared_read_per_request_and_one_write_per_outcome() {
    let (p, host) = configured(json!({
        "circuitbreaker": [{"name": "cb", "spec": {}}],
    }));
    let writes = || host.shared.borrow().values().map(|(_, cas)| *cas).max();
    let before = writes();
    let (r, _) = send(&p, host, 1, &GET);
    assert_eq!(writes(), before, "admission writes nothing while closed");
    respond(&p, host, &r, "200");
    r.borrow_mut().on_done(&p);
    assert_ne!(writes(), before, "the outcome is one write");
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_calls_total.policy.cb"),
        1
    );
}

#[test]
fn a_dry_run_breaker_counts_but_never_answers() {
    let (p, host) = configured(json!({
        "circuitbreaker": [{"name": "cb", "spec": {
            "slidingWindow": {"count": 1}, "dryRun": true
        }}],
    }));
    assert_eq!(exchange(&p, host, 1, "500"), Flow::Continue);
    assert_eq!(exchange(&p, host, 2, "200"), Flow::Continue);
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_shadow_short_circuited_total.policy.cb"),
        1
    );
    assert!(host.sent.borrow().is_empty());
}

#[test]
fn grpc_failures_in_trailers_open_the_breaker_and_grpc_callers_get_a_grpc_fallback() {
    use meshwarden_filter_runtime::Host;
    let (p, host) = configured(json!({
        "circuitbreaker": [{"name": "cb", "spec": {
            "slidingWindow": {"count": 2}, "fallback": {"grpcStatus": "RESOURCE_EXHAUSTED"}
        }}],
    }));
    let grpc = [
        (":method", "POST"),
        (":path", "/pkg.Svc/Call"),
        (":authority", "shop"),
        ("content-type", "application/grpc"),
    ];
    for id in 1..=2 {
        let (r, flow) = send(&p, host, id, &grpc);
        assert_eq!(flow, Flow::Continue);
        respond(&p, host, &r, "200");
        host.set_header(Map::ResponseTrailers, "grpc-status", Some(b"14"));
        r.borrow_mut().on_response_trailers();
        r.borrow_mut().on_done(&p);
    }
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_failures_total.policy.cb"),
        2
    );
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_opened_total.policy.cb"),
        1
    );
    let (_, flow) = send(&p, host, 3, &grpc);
    assert_eq!(flow, Flow::Pause);
    let sent = host.sent.borrow().last().cloned().unwrap();
    assert_eq!((sent.status, sent.grpc_status), (200, Some(8)));
    assert_eq!(sent.body, b"circuit breaker open");
}

#[test]
fn adaptive_shedding_measures_the_min_rtt_at_the_floor_then_admits_the_initial_limit() {
    let (p, host) = configured(json!({
        "ratelimit": [{"name": "shed", "spec": {"shedding": {"adaptive": {
            "minLimit": 2, "initialLimit": 4, "minRttRequests": 2
        }}}}],
    }));
    let shed_answer = |id| {
        let (_, flow) = send(&p, host, id, &GET);
        assert_eq!(flow, Flow::Pause);
        let sent = host.sent.borrow().last().cloned().unwrap();
        assert_eq!(sent.status, 503);
        assert!(sent
            .headers
            .iter()
            .any(|(k, v)| k == "retry-after" && v == "1"));
    };
    // The min-RTT probe: 2 in flight at most.
    let probe: Vec<_> = (1..=2).map(|id| send(&p, host, id, &GET)).collect();
    assert!(probe.iter().all(|(_, f)| *f == Flow::Continue));
    shed_answer(3);
    assert_eq!(
        host.metric("meshwarden_ratelimit_concurrency_limit.policy.shed"),
        2
    );
    host.advance(Duration::from_millis(30));
    for (r, _) in &probe {
        respond(&p, host, r, "200");
        r.borrow_mut().on_done(&p);
    }
    // Measured: now the initial limit.
    let admitted: Vec<_> = (4..=7).map(|id| send(&p, host, id, &GET)).collect();
    assert!(admitted.iter().all(|(_, f)| *f == Flow::Continue));
    assert_eq!(host.metric("meshwarden_ratelimit_in_flight.policy.shed"), 4);
    shed_answer(8);
    assert_eq!(
        host.metric("meshwarden_ratelimit_concurrency_limit.policy.shed"),
        4
    );
    assert_eq!(
        host.metric("meshwarden_ratelimit_shed_total.class.default.policy.shed"),
        2,
        "requests in no class are shed as `default`"
    );
    for (r, _) in &admitted {
        r.borrow_mut().on_done(&p);
    }
    assert_eq!(host.metric("meshwarden_ratelimit_in_flight.policy.shed"), 0);
}

#[test]
fn a_shed_grpc_call_gets_the_grpc_status_of_the_configured_answer() {
    let (p, host) = configured(json!({
        "ratelimit": [{"name": "shed", "spec": {"shedding": {
            "utilization": {"capacity": 1}, "status": 429, "retryAfter": "2s"
        }}}],
    }));
    let grpc = [
        (":method", "POST"),
        (":path", "/shop.Cart/Add"),
        (":authority", "shop"),
        ("content-type", "application/grpc"),
    ];
    let (first, flow) = send(&p, host, 1, &grpc);
    assert_eq!(flow, Flow::Continue);
    let (_, flow) = send(&p, host, 2, &grpc);
    assert_eq!(flow, Flow::Pause);
    let sent = host.sent.borrow().last().cloned().unwrap();
    assert_eq!((sent.status, sent.grpc_status), (200, Some(8)));
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "retry-after" && v == "2"));
    first.borrow_mut().on_done(&p);
    assert_eq!(send(&p, host, 3, &grpc).1, Flow::Continue);
}

#[test]
fn open_breakers_are_reported_once_per_change_from_the_tick() {
    let (p, host) = configured(json!({
        "circuitbreaker": [{"name": "cb", "spec": {
            "slidingWindow": {"count": 2}, "minimumNumberOfCalls": 2,
            "waitDurationInOpenState": "1s"
        }}],
    }));
    host.properties
        .borrow_mut()
        .insert("xds.node.id".into(), b"node-1".to_vec());
    let reports = || {
        host.grpc_calls
            .borrow()
            .iter()
            .filter(|c| c.service == "meshwarden.v1alpha1.BreakerStatusService")
            .cloned()
            .collect::<Vec<_>>()
    };
    let answer = |n: usize, status: u32| {
        let call = reports()[n].clone();
        assert_eq!(call.method, "Report");
        p.on_grpc_call_response(call.token, status);
        call
    };
    // The first look reports the empty set, then nothing until a breaker changes.
    p.on_tick();
    answer(0, 0);
    host.advance(Duration::from_millis(500));
    p.on_tick();
    assert_eq!(reports().len(), 1);
    for id in 1..=2 {
        exchange(&p, host, id, "503");
    }
    host.advance(Duration::from_millis(500));
    p.on_tick();
    let open = answer(1, 0);
    let text = String::from_utf8_lossy(&open.message);
    assert!(text.contains("node-1") && text.contains("cb") && text.contains("open"));
    // After the wait the next request half-opens the breaker: a change. A failed report
    // is counted and retried later, not at once.
    host.advance(Duration::from_millis(1000));
    p.on_tick();
    assert_eq!(reports().len(), 2, "the wait alone changes nothing");
    let (trial, _) = send(&p, host, 3, &GET);
    host.advance(Duration::from_millis(500));
    p.on_tick();
    assert_eq!(reports().len(), 3);
    assert!(String::from_utf8_lossy(&reports()[2].message).contains("half_open"));
    answer(2, 14);
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_status_reports_failed_total.policy.cb"),
        1
    );
    host.advance(Duration::from_millis(500));
    p.on_tick();
    assert_eq!(reports().len(), 3);
    host.advance(Duration::from_millis(5000));
    p.on_tick();
    assert_eq!(reports().len(), 4);
    assert_eq!(
        host.metric("meshwarden_circuitbreaker_status_reports_total.policy.cb"),
        4
    );
    trial.borrow_mut().on_done(&p);
}
