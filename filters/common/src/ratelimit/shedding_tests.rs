//! Whole decisions with `shedding`: the utilization share, class priority, the answer, and
//! an adaptive limit fed by releases that converges on a synthetic upstream.

use super::limiter::{Decision, Limiter, Request, Verdict};
use super::spec::RateLimitSpec;
use super::store::MemoryStore;
use crate::filter_config::FilterConfig;
use crate::request::RequestHeaders;
use serde_json::{json, Value};

const MS: u64 = 1_000_000;

fn limiter(spec: Value) -> (Limiter, MemoryStore) {
    let cfg = FilterConfig::<RateLimitSpec>::parse(
        json!({"policies": [{"name": "shed", "spec": spec}]})
            .to_string()
            .as_bytes(),
    )
    .expect("valid config");
    let l = Limiter::new(&cfg);
    let store = MemoryStore::new();
    l.prepare(&store);
    (l, store)
}

fn check(l: &Limiter, s: &MemoryStore, h: &RequestHeaders, now: u64) -> Verdict {
    l.check(
        s,
        &Request {
            headers: h,
            peer: None,
        },
        now,
    )
}

fn allowed(v: &Verdict) -> bool {
    matches!(v.decision, Decision::Allow { .. })
}

fn normal() -> RequestHeaders {
    RequestHeaders::from_text(&[(":path", "/work"), (":method", "GET")])
}

fn critical() -> RequestHeaders {
    RequestHeaders::from_text(&[
        (":path", "/work"),
        (":method", "GET"),
        ("x-priority", "critical"),
    ])
}

fn classes() -> Value {
    json!([{"name": "critical", "match": {"headers": [{"name": "x-priority", "exact": "critical"}]}}])
}

#[test]
fn utilization_sheds_at_the_share_of_capacity() {
    let (l, s) =
        limiter(json!({"shedding": {"utilization": {"capacity": 10, "threshold": {"value": 80}}}}));
    let verdicts: Vec<Verdict> = (0..20).map(|_| check(&l, &s, &normal(), 0)).collect();
    assert_eq!(verdicts.iter().filter(|v| allowed(v)).count(), 8);
    let shed = &verdicts[8];
    assert_eq!(shed.events[0].shed_class.as_deref(), Some("default"));
    assert_eq!(shed.events[0].shed_limit, Some(8));
    assert!(shed.events[0].concurrency_limited);
    let Decision::Reject(r) = &shed.decision else {
        panic!()
    };
    assert_eq!((r.status, r.grpc_status), (503, 14));
    assert!(r.headers.contains(&("retry-after".into(), "1".into())));
    assert_eq!(
        r.problem.detail,
        "Too many requests in flight for policy shed: class default may have 8 of the current limit of 8 at once; retry after 1 s."
    );
    // Completions make room again.
    l.release(&s, &verdicts[0].held, 0);
    assert!(allowed(&check(&l, &s, &normal(), 0)));
}

#[test]
fn the_critical_class_is_admitted_while_normal_requests_are_shed() {
    let (l, s) = limiter(json!({"shedding": {
        "utilization": {"capacity": 10},
        "classes": classes(),
        "defaultShare": {"value": 50},
        "status": 429,
        "retryAfter": "3s"
    }}));
    let normal_admitted = (0..10)
        .filter(|_| allowed(&check(&l, &s, &normal(), 0)))
        .count();
    assert_eq!(normal_admitted, 5);
    let shed = check(&l, &s, &normal(), 0);
    let Decision::Reject(r) = &shed.decision else {
        panic!()
    };
    assert_eq!((r.status, r.grpc_status), (429, 8));
    assert!(r.headers.contains(&("retry-after".into(), "3".into())));
    let critical_admitted = (0..10)
        .filter(|_| allowed(&check(&l, &s, &critical(), 0)))
        .count();
    assert_eq!(
        critical_admitted, 5,
        "critical requests fill the rest of the limit"
    );
    let v = check(&l, &s, &critical(), 0);
    assert_eq!(v.events[0].shed_class.as_deref(), Some("critical"));
}

#[test]
fn shedding_is_exclusive_with_max_concurrent_and_global_scope() {
    let parse = |spec: Value| {
        FilterConfig::<RateLimitSpec>::parse(
            json!({"policies": [{"name": "p", "spec": spec}]})
                .to_string()
                .as_bytes(),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let shedding = json!({"adaptive": {}});
    assert!(
        parse(json!({"maxConcurrent": 3, "shedding": shedding})).contains(
            "spec.shedding: set either `maxConcurrent` (a fixed limit) or `shedding`, not both"
        )
    );
    assert!(parse(
        json!({"rate": {"requests": 1, "unit": "second"}, "scope": "global", "shedding": shedding})
    )
    .contains("spec.shedding: is per proxy"));
    assert!(parse(json!({"shedding": {"adaptive": {"maxLimit": 0}}}))
        .contains("spec.shedding.adaptive.maxLimit: must be from 1 to 1000000, got 0"));
}

/// A synthetic upstream whose latency is `base + k × in-flight`: every step the load
/// (always more than the limit) is offered, the admitted requests run together, and they
/// complete (released) after the latency their number implies.
#[test]
fn the_adaptive_limit_converges_through_releases() {
    let (l, s) = limiter(json!({"shedding": {"adaptive": {
        "minLimit": 2, "initialLimit": 50, "minRttRequests": 10, "sampleWindow": "100ms"
    }}}));
    let (base, k, offered) = (20 * MS, 5 * MS, 60);
    let mut now = 1_000 * MS;
    let mut admitted_per_step = Vec::new();
    let mut limits = Vec::new();
    for _ in 0..300 {
        let verdicts: Vec<Verdict> = (0..offered)
            .map(|_| check(&l, &s, &normal(), now))
            .collect();
        let admitted: Vec<&Verdict> = verdicts.iter().filter(|v| allowed(v)).collect();
        let shed = verdicts
            .iter()
            .filter(|v| v.events[0].shed_class.is_some())
            .count();
        assert_eq!(admitted.len() + shed, offered);
        limits.push(verdicts[0].events[0].shed_limit.unwrap());
        admitted_per_step.push(admitted.len() as u64);
        now += base + k * admitted.len() as u64;
        for v in admitted {
            assert!(l.release(&s, &v.held, now).iter().all(|(_, ok)| *ok));
        }
    }
    assert_eq!(limits[0], 2, "starts by measuring the min RTT at the floor");
    let tail = &limits[200..];
    let (lo, hi) = (*tail.iter().min().unwrap(), *tail.iter().max().unwrap());
    assert!(
        lo >= 4 && hi <= 12,
        "limit settles well below the offered {offered}: {lo}..={hi}"
    );
    assert!(admitted_per_step[200..].iter().all(|n| *n <= hi));
}
