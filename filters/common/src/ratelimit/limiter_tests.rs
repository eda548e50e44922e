//! Tests of whole decisions: policies, headers, bodies, dry run, concurrency.

use super::limiter::{Decision, Limiter, Request, Verdict};
use super::spec::RateLimitSpec;
use super::store::MemoryStore;
use crate::filter_config::FilterConfig;
use crate::request::RequestHeaders;
use serde_json::{json, Value};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;

fn limiter(policies: Value) -> (Limiter, MemoryStore) {
    let cfg =
        FilterConfig::<RateLimitSpec>::parse(json!({"policies": policies}).to_string().as_bytes())
            .expect("valid config");
    let l = Limiter::new(&cfg);
    let store = MemoryStore::new();
    l.prepare(&store);
    (l, store)
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"name": name, "spec": spec})
}

fn headers(pairs: &[(&str, &str)]) -> RequestHeaders {
    let mut all = vec![
        (":path".to_string(), b"/".to_vec()),
        (":method".to_string(), b"GET".to_vec()),
    ];
    all.extend(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
    );
    RequestHeaders::new(all)
}

fn check(l: &Limiter, s: &MemoryStore, h: &RequestHeaders, now: u64) -> Verdict {
    l.check(
        s,
        &Request {
            headers: h,
            peer: Some(b"10.0.0.1:5000"),
        },
        now,
    )
}

fn allowed(v: &Verdict) -> bool {
    matches!(v.decision, Decision::Allow { .. })
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn rejection_is_exactly_as_documented() {
    let (l, s) = limiter(json!([policy(
        "api",
        json!({"rate": {"requests": 2, "unit": "minute"}, "legacyHeaders": true})
    )]));
    let h = headers(&[]);
    assert!(allowed(&check(&l, &s, &h, T0)));
    assert!(allowed(&check(&l, &s, &h, T0)));
    let v = check(&l, &s, &h, T0 + 10 * S);
    let Decision::Reject(r) = &v.decision else {
        panic!("expected a rejection")
    };
    assert_eq!(r.status, 429);
    assert_eq!(r.grpc_status, 8);
    assert_eq!(
        r.http_headers(),
        [
            ("content-type", "application/problem+json"),
            ("retry-after", "20"),
            ("ratelimit-policy", "\"api\";q=2;w=60"),
            ("ratelimit", "\"api\";r=0;t=20"),
            ("x-ratelimit-limit", "2"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "20"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(
        r.body(),
        r#"{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Request cannot be satisfied as assigned quota has been exceeded","status":429,"detail":"Too many requests for policy api: the limit is 2 requests per minute (burst 2); retry after 20 s.","policy":"api","violated-policies":["api"]}"#
    );
    assert_eq!(r.grpc_message(), "Too many requests for policy api: the limit is 2 requests per minute (burst 2); retry after 20 s.");
    assert!(v.events[0].limited && !v.events[0].allowed);
}

#[test]
fn descriptors_key_buckets_and_overrides_apply() {
    let (l, s) = limiter(json!([policy(
        "tenants",
        json!({
            "rate": {"requests": 1, "unit": "hour"},
            "descriptors": [{"header": "x-tenant"}],
            "overrides": [{"match": {"x-tenant": "gold"}, "rate": {"requests": 3, "unit": "hour"}}],
        })
    )]));
    let count = |tenant: &str| {
        let h = headers(&[("x-tenant", tenant)]);
        (0..10).filter(|_| allowed(&check(&l, &s, &h, T0))).count()
    };
    assert_eq!(count("a"), 1);
    assert_eq!(count("b"), 1, "another tenant has its own bucket");
    assert_eq!(count("gold"), 3, "the override applies");
    assert_eq!(count(""), 1);
    let h = headers(&[]);
    assert!(
        !allowed(&check(&l, &s, &h, T0)),
        "no header shares the empty value's bucket"
    );
}

#[test]
fn combined_descriptors_and_client_address() {
    let (l, s) = limiter(json!([policy(
        "combo",
        json!({
            "rate": {"requests": 1, "unit": "hour"},
            "descriptors": [{"header": "x-tenant"}, {"clientAddress": {}}],
        })
    )]));
    let h1 = headers(&[("x-tenant", "a"), ("x-forwarded-for", "192.0.2.1")]);
    let h2 = headers(&[("x-tenant", "a"), ("x-forwarded-for", "192.0.2.2")]);
    let h3 = headers(&[("x-tenant", "a")]); // peer address 10.0.0.1
    for h in [&h1, &h2, &h3] {
        assert!(allowed(&check(&l, &s, h, T0)));
        assert!(!allowed(&check(&l, &s, h, T0)));
    }
}

#[test]
fn cap_on_keys_overflows_into_one_shared_bucket() {
    let (l, s) = limiter(json!([policy(
        "capped",
        json!({
            "rate": {"requests": 1, "unit": "hour"},
            "descriptors": [{"header": "x-key"}],
            "maxKeys": 10,
        })
    )]));
    let keys_before = s.len();
    let mut overflowed = 0;
    let mut admitted = 0;
    for i in 0..2_000 {
        let v = check(&l, &s, &headers(&[("x-key", &format!("k{i}"))]), T0 + i);
        overflowed += usize::from(v.events[0].overflow);
        admitted += usize::from(allowed(&v));
    }
    assert_eq!(s.len(), keys_before, "shared data did not grow");
    assert_eq!(overflowed, 2_000 - 10);
    assert_eq!(admitted, 10 + 1);
}

#[test]
fn allowed_responses_carry_headers_when_asked() {
    let (l, s) = limiter(json!([
        policy("quiet", json!({"rate": {"requests": 10, "unit": "second"}})),
        policy(
            "loud",
            json!({"rate": {"requests": 100, "unit": "minute"}, "burst": 5, "responseHeaders": true, "legacyHeaders": true, "maxConcurrent": 4})
        ),
    ]));
    let v = check(&l, &s, &headers(&[]), T0);
    let Decision::Allow { response_headers } = &v.decision else {
        panic!()
    };
    assert_eq!(
        header(response_headers, "ratelimit-policy"),
        Some("\"loud\";q=100;w=60, \"loud/concurrent\";q=4;qu=\"concurrent-requests\"")
    );
    assert_eq!(
        header(response_headers, "ratelimit"),
        Some("\"loud\";r=4;t=1, \"loud/concurrent\";r=3")
    );
    assert_eq!(
        header(response_headers, "x-ratelimit-remaining"),
        Some("3"),
        "the tightest item"
    );
    assert_eq!(v.held.len(), 1);
    assert_eq!(v.events.len(), 2);
    assert!(v.events.iter().all(|e| e.allowed));
}

#[test]
fn dry_run_never_rejects_and_counts() {
    let (l, s) = limiter(json!([policy(
        "shadow",
        json!({"rate": {"requests": 5, "unit": "hour"}, "maxConcurrent": 2, "dryRun": true})
    )]));
    let mut shadow = 0;
    let mut held = Vec::new();
    for _ in 0..20 {
        let v = check(&l, &s, &headers(&[]), T0);
        assert!(allowed(&v));
        shadow += usize::from(v.events[0].shadow_limited);
        held.extend(v.held);
    }
    assert_eq!(
        shadow,
        20 - 2,
        "rate: 15 over; concurrency: 18 over (shadow once per request)"
    );
    assert_eq!(held.len(), 20, "dry run still counts requests in flight");
    let v = check(&l, &s, &headers(&[]), T0);
    let Decision::Allow { response_headers } = &v.decision else {
        panic!()
    };
    assert_eq!(
        header(response_headers, "ratelimit"),
        Some("\"shadow\";r=0;t=720, \"shadow/concurrent\";r=0")
    );
}

#[test]
fn concurrency_limit_rejects_above_the_limit_and_recovers() {
    let (l, s) = limiter(json!([policy("pool", json!({"maxConcurrent": 3}))]));
    let h = headers(&[]);
    let verdicts: Vec<Verdict> = (0..5).map(|_| check(&l, &s, &h, T0)).collect();
    assert_eq!(verdicts.iter().filter(|v| allowed(v)).count(), 3);
    let Decision::Reject(r) = &verdicts[4].decision else {
        panic!()
    };
    assert_eq!(r.status, 503);
    assert_eq!(r.grpc_status, 14);
    assert_eq!(header(&r.headers, "retry-after"), Some("1"));
    assert_eq!(
        header(&r.headers, "ratelimit-policy"),
        Some("\"pool/concurrent\";q=3;qu=\"concurrent-requests\"")
    );
    assert_eq!(
        header(&r.headers, "ratelimit"),
        Some("\"pool/concurrent\";r=0")
    );
    assert_eq!(
        r.body(),
        r#"{"type":"https://iana.org/assignments/http-problem-types#temporary-reduced-capacity","title":"Request cannot be satisfied due to temporary server capacity constraints","status":503,"detail":"Too many requests in flight for policy pool: the limit is 3 at once; retry after 1 s.","policy":"pool","violated-policies":["pool/concurrent"]}"#
    );
    assert!(verdicts[4].events[0].concurrency_limited);
    // Requests finish: room again.
    for v in &verdicts[..3] {
        assert!(l.release(&s, &v.held, 0).iter().all(|(_, ok)| *ok));
    }
    assert!(allowed(&check(&l, &s, &h, T0)));
}

#[test]
fn a_rejection_by_one_policy_releases_what_others_took() {
    let (l, s) = limiter(json!([
        policy("wide", json!({"maxConcurrent": 100})),
        policy("narrow", json!({"maxConcurrent": 1})),
    ]));
    let first = check(&l, &s, &headers(&[]), T0);
    assert!(allowed(&first));
    let second = check(&l, &s, &headers(&[]), T0);
    assert!(!allowed(&second));
    assert!(second.held.is_empty());
    l.release(&s, &first.held, 0);
    // Nothing leaked: "wide" is back to 0 in flight, so 100 fit again alongside.
    let again = check(&l, &s, &headers(&[]), T0);
    let Decision::Allow { .. } = again.decision else {
        panic!()
    };
    assert_eq!(again.held.len(), 2);
}

#[test]
fn rate_rejections_take_no_concurrency_slot() {
    let (l, s) = limiter(json!([policy(
        "both",
        json!({"rate": {"requests": 1, "unit": "hour"}, "maxConcurrent": 5})
    )]));
    let first = check(&l, &s, &headers(&[]), T0);
    assert_eq!(first.held.len(), 1);
    for _ in 0..10 {
        let v = check(&l, &s, &headers(&[]), T0);
        assert!(v.held.is_empty());
        let Decision::Reject(r) = v.decision else {
            panic!()
        };
        assert_eq!(r.status, 429);
    }
}

#[test]
fn only_matching_policies_apply() {
    let (l, s) = limiter(json!([
        {"name": "admin", "match": {"path": {"prefix": "/admin"}}, "spec": {"rate": {"requests": 1, "unit": "hour"}}},
    ]));
    for _ in 0..5 {
        let v = check(&l, &s, &headers(&[]), T0);
        assert!(allowed(&v) && v.events.is_empty());
    }
    let admin = RequestHeaders::new(vec![(":path".into(), b"/admin/x".to_vec())]);
    assert!(allowed(&check(&l, &s, &admin, T0)));
    assert!(!allowed(&check(&l, &s, &admin, T0)));
}

#[test]
fn workers_sharing_the_store_admit_rate_times_duration_plus_burst() {
    let (l, s) = limiter(json!([policy(
        "api",
        json!({"rate": {"requests": 10000, "unit": "second"}, "burst": 50})
    )]));
    // Four threads as Envoy workers racing on one store. Time is virtual so the result does
    // not depend on how fast this machine is: each check takes the next 10 µs tick (100,000
    // checks/s offered, 10x the limit) for 300 ms of virtual time.
    const TICK_NS: u64 = 10_000;
    const CHECKS: u64 = 30_000;
    let ticks = std::sync::atomic::AtomicU64::new(0);
    let admitted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let (l, s, admitted, ticks) = (&l, &s, &admitted, &ticks);
            scope.spawn(move || {
                let h = headers(&[]);
                loop {
                    let tick = ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if tick >= CHECKS {
                        break;
                    }
                    if allowed(&check(l, s, &h, T0 + tick * TICK_NS)) {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let elapsed = (CHECKS * TICK_NS) as f64 / 1e9;
    let n = admitted.into_inner() as f64;
    let expected = 50.0 + 10_000.0 * elapsed;
    assert!(n <= expected + 1.0, "admitted {n}, at most {expected}");
    assert!(
        n >= expected * 0.98,
        "admitted {n}, expected about {expected}"
    );
}

mod global {
    use super::*;
    use crate::ratelimit::limiter::GlobalAnswer;
    use crate::ratelimit::rls::{self, Code, DescriptorStatus};

    fn req(h: &RequestHeaders) -> Request<'_> {
        Request {
            headers: h,
            peer: None,
        }
    }

    fn status(code: Code, remaining: u32) -> DescriptorStatus {
        DescriptorStatus {
            code,
            limit_remaining: remaining,
            until_reset_ms: 400,
            ..Default::default()
        }
    }

    fn limiters() -> (Limiter, MemoryStore) {
        limiter(json!([
            policy(
                "local",
                json!({"rate": {"requests": 1, "unit": "minute"}, "responseHeaders": true})
            ),
            policy(
                "tenants",
                json!({"rate": {"requests": 100, "unit": "second"}, "burst": 50, "scope": "global",
                    "descriptors": [{"header": "x-tenant"}], "responseHeaders": true,
                    "overrides": [{"match": {"x-tenant": "gold"}, "rate": {"requests": 5, "unit": "second"}}]})
            ),
            policy(
                "shadow",
                json!({"rate": {"requests": 1, "unit": "second"}, "scope": "global", "dryRun": true,
                    "timeout": "300ms"})
            ),
            json!({"name": "strict", "match": {"headers": [{"name": "x-strict", "exact": "1"}]},
                "spec": {"rate": {"requests": 1, "unit": "second"}, "scope": "global",
                    "failureMode": "deny"}}),
        ]))
    }

    #[test]
    fn the_call_names_each_global_policy_and_its_descriptor_values() {
        let (l, s) = limiters();
        let h = headers(&[("x-tenant", "gold")]);
        let matched = l.matched(&req(&h));
        assert_eq!(matched, vec![0, 1, 2]);
        let call = l.global_call(&s, &req(&h), &matched, T0).unwrap();
        assert_eq!(call.policies, vec![1, 2]);
        assert_eq!(call.timeout_ms, 300);
        let expected = rls::encode_request(
            "meshwarden",
            &[
                vec![
                    ("policy".into(), "tenants".into()),
                    ("x-tenant".into(), "gold".into()),
                ],
                vec![("policy".into(), "shadow".into())],
            ],
        );
        assert_eq!(call.message, expected);
        let (local_only, _) = limiter(json!([policy(
            "l",
            json!({"rate": {"requests": 1, "unit": "second"}})
        )]));
        assert!(!local_only.has_global());
        assert_eq!(
            local_only.global_call(&MemoryStore::new(), &req(&h), &[0], T0),
            None
        );
    }

    #[test]
    fn over_limit_answers_429_like_a_local_limit_and_dry_run_only_counts() {
        let (l, s) = limiters();
        let h = headers(&[("x-tenant", "gold")]);
        let matched = l.matched(&req(&h));
        let call = l.global_call(&s, &req(&h), &matched, T0).unwrap();
        let answer = call.answer::<()>(Ok(rls::Response {
            overall_code: Code::OverLimit,
            statuses: vec![status(Code::OverLimit, 0), status(Code::OverLimit, 0)],
        }));
        let v = l.decide(&s, &req(&h), T0, &matched, &answer);
        let Decision::Reject(r) = &v.decision else {
            panic!("expected a rejection: {v:?}")
        };
        assert_eq!(r.status, 429);
        assert_eq!(header(&r.headers, "retry-after"), Some("1"));
        assert_eq!(
            header(&r.headers, "ratelimit-policy"),
            Some("\"tenants\";q=5;w=1"),
            "the override's limit"
        );
        assert_eq!(header(&r.headers, "ratelimit"), Some("\"tenants\";r=0;t=1"));
        assert_eq!(r.problem.policy, "tenants");
        assert_eq!(r.problem.violated_policies, vec!["tenants"]);
        assert!(v.events[1].limited && v.events[1].global_checked);
        assert!(v.events[2].shadow_limited && !v.events[2].limited);
        assert!(!v.events[0].limited, "the local policy took its token");
    }

    #[test]
    fn ok_answers_allow_with_headers_and_local_limits_still_apply() {
        let (l, s) = limiters();
        let h = headers(&[("x-tenant", "a")]);
        let matched = l.matched(&req(&h));
        let call = l.global_call(&s, &req(&h), &matched, T0).unwrap();
        let ok = call.answer::<()>(Ok(rls::Response {
            overall_code: Code::Ok,
            statuses: vec![status(Code::Ok, 41), status(Code::Ok, 0)],
        }));
        let v = l.decide(&s, &req(&h), T0, &matched, &ok);
        let Decision::Allow { response_headers } = &v.decision else {
            panic!("expected allow: {v:?}")
        };
        assert_eq!(
            header(response_headers, "ratelimit"),
            Some("\"local\";r=0;t=60, \"tenants\";r=41;t=1, \"shadow\";r=0;t=1"),
            "dry run shows its headers, like a local dry run"
        );
        assert!(v.events.iter().all(|e| e.allowed && !e.failure));
        // The local policy (1/minute) rejects the next request whatever the service says.
        let v = l.decide(&s, &req(&h), T0, &matched, &ok);
        let Decision::Reject(r) = &v.decision else {
            panic!("expected a rejection")
        };
        assert_eq!(r.problem.policy, "local");
    }

    #[test]
    fn no_answer_applies_each_policys_failure_mode() {
        let (l, s) = limiters();
        let h = headers(&[("x-strict", "1")]);
        let matched = l.matched(&req(&h));
        let call = l.global_call(&s, &req(&h), &matched, T0).unwrap();
        assert_eq!(call.policies, vec![1, 2, 3]);
        // A status missing is no answer at all.
        let short = call.answer::<()>(Ok(rls::Response {
            overall_code: Code::Ok,
            statuses: vec![status(Code::Ok, 1)],
        }));
        assert_eq!(short, GlobalAnswer::Unavailable);
        for (k, answer) in [short, call.answer::<&str>(Err("timeout"))]
            .into_iter()
            .enumerate()
        {
            let v = l.decide(&s, &req(&h), T0 + 120 * S * k as u64, &matched, &answer);
            let Decision::Reject(r) = &v.decision else {
                panic!("strict denies: {v:?}")
            };
            assert_eq!(r.status, 429);
            assert_eq!(r.problem.violated_policies, vec!["strict"]);
            assert!(
                r.problem.detail.contains("did not answer"),
                "{}",
                r.problem.detail
            );
            let failed: Vec<bool> = v.events.iter().map(|e| e.global_failure).collect();
            assert_eq!(failed, vec![false, true, true, true]);
        }
        // Without the deny policy, the others allow.
        let h = headers(&[]);
        let matched = l.matched(&req(&h));
        let v = l.decide(
            &s,
            &req(&h),
            T0 + 600 * S,
            &matched,
            &GlobalAnswer::Unavailable,
        );
        assert!(allowed(&v), "{v:?}");
        assert!(v.events[1].failure && v.events[1].allowed);
    }

    /// `lease`: leased tokens admit without calls; a denied lease asks again singly.
    mod lease {
        use super::*;
        use crate::ratelimit::limiter::{GlobalCall, Settled};

        const MS: u64 = 1_000_000;

        fn leased() -> (Limiter, MemoryStore) {
            limiter(json!([policy(
                "g",
                json!({"rate": {"requests": 100, "unit": "second"}, "scope": "global",
                    "descriptors": [{"header": "x-tenant"}], "timeout": "50ms",
                    "lease": {"tokens": 5, "maxAge": "200ms"}})
            )]))
        }

        fn call(l: &Limiter, s: &MemoryStore, h: &RequestHeaders, now: u64) -> GlobalCall {
            l.global_call(s, &req(h), &[0], now)
                .expect("a global policy")
        }

        fn ok(remaining: u32) -> Result<rls::Response, ()> {
            Ok(rls::Response {
                overall_code: Code::Ok,
                statuses: vec![status(Code::Ok, remaining)],
            })
        }

        fn entries(tenant: &str) -> Vec<(String, String)> {
            vec![
                ("policy".into(), "g".into()),
                ("x-tenant".into(), tenant.into()),
            ]
        }

        /// Asks for a lease at `now` and has it granted.
        fn lease_taken(l: &Limiter, s: &MemoryStore, h: &RequestHeaders, now: u64) {
            let c = call(l, s, h, now);
            assert_eq!(c.asking.len(), 1, "asks for a lease: {c:?}");
            assert!(matches!(l.settle(s, &c, ok(90), now), Settled::Answer(_)));
        }

        #[test]
        fn a_granted_lease_admits_the_next_requests_without_calls() {
            let (l, s) = leased();
            let h = headers(&[("x-tenant", "acme")]);
            let first = call(&l, &s, &h, T0);
            let asked = [(&entries("acme")[..], 5)];
            assert_eq!(
                first.message,
                rls::encode_request_hits("meshwarden", &asked)
            );
            assert_eq!(first.timeout_ms, 50);
            let Settled::Answer(answer) = l.settle(&s, &first, ok(90), T0) else {
                panic!("granted")
            };
            assert!(allowed(&l.decide(&s, &req(&h), T0, &[0], &answer)));
            for k in 1..=4 {
                let c = call(&l, &s, &h, T0 + k * MS);
                assert!(!c.needs_call(), "leased token {k}");
                let v = l.decide(&s, &req(&h), T0, &[0], &c.leased_answer());
                assert!(allowed(&v) && v.events[0].global_checked, "{v:?}");
            }
            // The lease is spent: the next request asks again; another tenant has its own.
            assert_eq!(call(&l, &s, &h, T0 + 5 * MS).asking.len(), 1);
            let other = headers(&[("x-tenant", "zed")]);
            assert_eq!(call(&l, &s, &other, T0 + 5 * MS).asking.len(), 1);
        }

        #[test]
        fn leased_tokens_expire_after_max_age() {
            let (l, s) = leased();
            let h = headers(&[("x-tenant", "acme")]);
            lease_taken(&l, &s, &h, T0);
            assert!(!call(&l, &s, &h, T0 + 199 * MS).needs_call());
            assert_eq!(call(&l, &s, &h, T0 + 200 * MS).asking.len(), 1);
        }

        #[test]
        fn a_denied_lease_asks_again_for_one_hit() {
            let (l, s) = leased();
            let h = headers(&[("x-tenant", "acme")]);
            let c = call(&l, &s, &h, T0);
            // Meanwhile another request of the proxy asks for its own hit only.
            let meanwhile = call(&l, &s, &h, T0 + MS);
            assert!(meanwhile.asking.is_empty() && meanwhile.needs_call());
            assert_eq!(
                meanwhile.message,
                rls::encode_request("meshwarden", &[entries("acme")])
            );
            let over = Ok::<_, ()>(rls::Response {
                overall_code: Code::OverLimit,
                statuses: vec![status(Code::OverLimit, 3)],
            });
            let Settled::Retry(single) = l.settle(&s, &c, over, T0 + 2 * MS) else {
                panic!("a single-hit retry")
            };
            assert_eq!(single.message, meanwhile.message);
            assert!(single.asking.is_empty());
            assert!(matches!(
                l.settle(&s, &single, ok(2), T0 + 3 * MS),
                Settled::Answer(GlobalAnswer::Statuses(_))
            ));
            // The proxy's next requests ask singly until 5 tokens could have refilled
            // (50 ms at 100/s), then ask for a lease again.
            let next = call(&l, &s, &h, T0 + 51 * MS);
            assert!(next.asking.is_empty() && next.needs_call());
            assert_eq!(call(&l, &s, &h, T0 + 52 * MS).asking.len(), 1);
        }

        #[test]
        fn no_answer_to_a_lease_applies_the_failure_mode_and_clears_the_mark() {
            let (l, s) = leased();
            let h = headers(&[("x-tenant", "acme")]);
            let c = call(&l, &s, &h, T0);
            assert_eq!(
                l.settle::<_, &str>(&s, &c, Err("timeout"), T0 + 50 * MS),
                Settled::Answer(GlobalAnswer::Unavailable)
            );
            assert_eq!(call(&l, &s, &h, T0 + 51 * MS).asking.len(), 1);
        }

        #[test]
        fn a_lease_with_another_policy_over_the_limit_is_not_kept() {
            let (l, s) = limiter(json!([
                policy(
                    "g",
                    json!({"rate": {"requests": 100, "unit": "second"}, "scope": "global",
                        "lease": {"tokens": 5}})
                ),
                policy(
                    "strict",
                    json!({"rate": {"requests": 1, "unit": "second"}, "scope": "global"})
                ),
            ]));
            let h = headers(&[]);
            let c = l.global_call(&s, &req(&h), &[0, 1], T0).unwrap();
            assert_eq!(c.policies, vec![0, 1]);
            let over = Ok::<_, ()>(rls::Response {
                overall_code: Code::OverLimit,
                statuses: vec![status(Code::Ok, 95), status(Code::OverLimit, 0)],
            });
            // The service charged nothing (all or nothing): no tokens kept, no retry.
            assert!(matches!(l.settle(&s, &c, over, T0), Settled::Answer(_)));
            let again = l.global_call(&s, &req(&h), &[0, 1], T0 + MS).unwrap();
            assert_eq!(again.asking.len(), 1);
        }
    }
}
