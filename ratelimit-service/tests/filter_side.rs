//! What meshwarden's filter sends and reads for `scope: global` policies, checked against
//! this service: the filter's hand-written protobuf against prost's, and the limits the
//! control plane generates from policies against the limits file parser.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use meshwarden_common::ratelimit::rls;
use meshwarden_common::ratelimit::{global, RateLimitSpec};
use meshwarden_ratelimit_service::LimitsConfig;
use prost::Message;
use serde_json::json;

#[test]
fn the_filters_request_is_what_prost_reads() {
    let descriptors = vec![
        vec![
            ("policy".to_string(), "api".to_string()),
            ("x-tenant".to_string(), "gold ünïcode".to_string()),
        ],
        vec![("policy".to_string(), "x".repeat(300))],
    ];
    let bytes = rls::encode_request(global::DOMAIN, &descriptors);
    let req = RateLimitRequest::decode(bytes.as_slice()).expect("valid protobuf");
    assert_eq!(req.domain, "meshwarden");
    assert_eq!(req.hits_addend, 0);
    let got: Vec<Vec<(String, String)>> = req
        .descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect()
        })
        .collect();
    assert_eq!(got, descriptors);
}

#[test]
fn a_lease_is_a_per_descriptor_hits_addend_prost_reads() {
    let leased = vec![("policy".to_string(), "api".to_string())];
    let single = vec![("policy".to_string(), "other".to_string())];
    let bytes = rls::encode_request_hits(global::DOMAIN, &[(&leased, 25), (&single, 1)]);
    let req = RateLimitRequest::decode(bytes.as_slice()).expect("valid protobuf");
    assert_eq!(req.hits_addend, 0, "the request's default stays one hit");
    let hits: Vec<Option<u64>> = req
        .descriptors
        .iter()
        .map(|d| d.hits_addend.as_ref().map(|h| h.value))
        .collect();
    assert_eq!(hits, vec![Some(25), None]);
}

#[test]
fn the_filter_reads_what_prost_writes() {
    let response = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: "api".into(),
                    requests_per_unit: 100,
                    unit: Unit::Second as i32,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(PbDuration {
                    seconds: 1,
                    nanos: 500_000_001,
                }),
                ..Default::default()
            },
            DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: 7,
                ..Default::default()
            },
        ],
        raw_body: b"{\"status\":429}".to_vec(),
        ..Default::default()
    };
    let got = rls::decode_response(&response.encode_to_vec()).expect("decodes");
    assert_eq!(got.overall_code, rls::Code::OverLimit);
    assert_eq!(got.statuses.len(), 2);
    assert_eq!(got.statuses[0].code, rls::Code::OverLimit);
    assert_eq!(got.statuses[0].until_reset_ms, 1_501);
    let limit = got.statuses[0].current_limit.clone().unwrap();
    assert_eq!(
        (limit.name.as_str(), limit.requests_per_unit, limit.unit),
        ("api", 100, 1)
    );
    assert_eq!(
        (got.statuses[1].code, got.statuses[1].limit_remaining),
        (rls::Code::Ok, 7)
    );
    // And prost reads the filter's test encoder the same way.
    let back = RateLimitResponse::decode(rls::encode_response(&got).as_slice()).unwrap();
    assert_eq!(
        back.statuses[0].current_limit,
        response.statuses[0].current_limit
    );
    assert_eq!(back.statuses[1].limit_remaining, 7);
}

#[test]
fn generated_limits_are_a_valid_limits_file() {
    let spec = |v: serde_json::Value| -> RateLimitSpec { serde_json::from_value(v).unwrap() };
    let a = spec(
        json!({"rate": {"requests": 100, "unit": "second"}, "burst": 50,
        "scope": "global", "descriptors": [{"header": "x-tenant"}, {"clientAddress": {}}],
        "overrides": [{"match": {"x-tenant": "gold"}, "rate": {"requests": 1000, "unit": "second"}}],
        "dryRun": true, "failureMode": "deny"}),
    );
    let b = spec(json!({"rate": {"requests": 5, "unit": "minute"}, "scope": "global"}));
    let long = "p".repeat(200);
    let text = serde_json::to_string(&global::service_limits([
        ("api", &a),
        ("b", &b),
        (long.as_str(), &b),
    ]))
    .unwrap();
    let parsed = LimitsConfig::parse(&text).expect("the service accepts generated limits");
    assert_eq!(parsed.domains[0].domain, "meshwarden");
    assert_eq!(parsed.domains[0].limits.len(), 3);
    assert!(parsed.domains[0].limits[0].dry_run);
    let empty = serde_json::to_string(&global::service_limits([])).unwrap();
    assert_eq!(
        LimitsConfig::parse(&empty).unwrap(),
        LimitsConfig::default()
    );
}
