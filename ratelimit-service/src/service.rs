//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: descriptors to buckets,
//! one Redis decision, and the answer Envoy turns into a 429 (or lets through).

use crate::gcra::{ceil_secs, view, BucketCall, BucketView, ScriptReply};
use crate::limits::{Limits, Period, Quota, Resolved};
use crate::metrics::{DecisionLabels, DescriptorLabels, Metrics, UNCONFIGURED_DOMAIN};
use crate::store::{RedisStore, StoreError};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use meshwarden_common::ratelimit::response::{
    legacy_fields, ratelimit_fields, Problem, QuotaItem, PROBLEM_JSON, QUOTA_EXCEEDED,
    QUOTA_EXCEEDED_TITLE,
};
use meshwarden_common::ratelimit::FailureMode;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 64;
/// Hits above this count as this many (still more than any burst).
pub const MAX_HITS: u64 = u32::MAX as u64;
/// Share of the caller's deadline (`grpc-timeout`) Redis may use.
pub const DEADLINE_SHARE: f64 = 0.75;
/// The least time Redis gets, whatever the deadline.
pub const MIN_BUDGET: Duration = Duration::from_millis(1);
/// `retry-after` when Redis is unavailable and a limit denies.
pub const FAILURE_RETRY_AFTER_SECONDS: u64 = 1;

/// The rate-limit service: limits, Redis, failure mode.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RwLock<Arc<Limits>>,
    store: RedisStore,
    failure_mode: FailureMode,
    key_prefix: String,
    metrics: Arc<Metrics>,
}

/// One descriptor that has a limit.
struct Matched {
    index: usize,
    resolved: Resolved,
    hits: u64,
}

/// A bucket's quota item for the headers, and whether it rejected the request.
struct Item {
    quota_item: QuotaItem,
    violated: bool,
    detail: String,
    response_headers: bool,
    legacy_headers: bool,
}

impl RateLimiter {
    /// A service deciding with `limits` in `store`; `failure_mode` applies to limits that
    /// do not set their own; every bucket key starts with `key_prefix`.
    pub fn new(
        limits: Limits,
        store: RedisStore,
        failure_mode: FailureMode,
        key_prefix: impl Into<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            limits: RwLock::new(Arc::new(limits)),
            store,
            failure_mode,
            key_prefix: key_prefix.into(),
            metrics,
        }
    }

    /// Replaces the limits; decisions in progress finish with the old ones. Buckets keep
    /// their state (a bucket is its key: domain, limit name and descriptor values).
    pub fn set_limits(&self, limits: Limits) {
        let limits = Arc::new(limits);
        match self.limits.write() {
            Ok(mut g) => *g = limits,
            Err(poisoned) => *poisoned.into_inner() = limits,
        }
    }

    fn limits(&self) -> Arc<Limits> {
        match self.limits.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The Redis store (for health checks).
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// Decides one request. Errors are `INVALID_ARGUMENT` for malformed requests only;
    /// Redis trouble gives the failure mode's answer.
    pub async fn decide(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        self.decide_within(req, None).await
    }

    /// [`RateLimiter::decide`] for a caller that gives up after `deadline` (its
    /// `grpc-timeout`): Redis gets at most [`DEADLINE_SHARE`] of it, so the failure mode
    /// answers before the caller's own error path does.
    pub async fn decide_within(
        &self,
        req: &RateLimitRequest,
        deadline: Option<Duration>,
    ) -> Result<RateLimitResponse, Status> {
        let budget = deadline.map(|d| d.mul_f64(DEADLINE_SHARE).max(MIN_BUDGET));
        check_request(req)?;
        let limits = self.limits();
        let domain_label = if limits.has_domain(&req.domain) {
            req.domain.clone()
        } else {
            UNCONFIGURED_DOMAIN.to_string()
        };
        let default_hits = if req.hits_addend == 0 {
            1
        } else {
            u64::from(req.hits_addend)
        };
        let mut matched = Vec::new();
        for (index, d) in req.descriptors.iter().enumerate() {
            let request_quota = request_quota(index, d)?;
            let Some(resolved) = limits.resolve(&req.domain, &d.entries, request_quota) else {
                continue;
            };
            let hits = d
                .hits_addend
                .as_ref()
                .map_or(default_hits, |h| h.value)
                .min(MAX_HITS);
            matched.push(Matched {
                index,
                resolved,
                hits,
            });
        }
        let mut statuses = vec![
            DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            };
            req.descriptors.len()
        ];
        if matched.is_empty() {
            self.count_decision(&domain_label, "ok");
            return Ok(RateLimitResponse {
                overall_code: Code::Ok as i32,
                statuses,
                ..Default::default()
            });
        }
        let calls: Vec<BucketCall> = matched
            .iter()
            .map(|m| BucketCall {
                key: format!("{}{}", self.key_prefix, m.resolved.key),
                quota: m.resolved.quota,
                hits: m.hits,
                enforcing: !m.resolved.info.dry_run,
                refund: req.descriptors[m.index].is_negative_hits,
            })
            .collect();
        match self.store.decide(&calls, budget).await {
            Ok(reply) => Ok(self.answer(&domain_label, &matched, &reply, statuses)),
            Err(e) => Ok(self.failure(&domain_label, &matched, &e, &mut statuses)),
        }
    }

    fn count_decision(&self, domain: &str, outcome: &'static str) {
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                domain: domain.to_string(),
                outcome,
            })
            .inc();
    }

    fn count_descriptor(&self, domain: &str, limit: &str, result: &'static str) {
        self.metrics
            .descriptors
            .get_or_create(&DescriptorLabels {
                domain: domain.to_string(),
                limit: limit.to_string(),
                result,
            })
            .inc();
    }

    /// The answer from Redis' decision.
    fn answer(
        &self,
        domain: &str,
        matched: &[Matched],
        reply: &ScriptReply,
        mut statuses: Vec<DescriptorStatus>,
    ) -> RateLimitResponse {
        let mut items = Vec::with_capacity(matched.len());
        for (m, b) in matched.iter().zip(&reply.buckets) {
            let info = &m.resolved.info;
            let quota = &m.resolved.quota;
            let stored = reply.committed && b.fits;
            let v = view(quota, m.hits, b, stored);
            let violated = !b.fits && !info.dry_run;
            let result = match (b.fits, info.dry_run) {
                (true, _) => "ok",
                (false, false) => "over_limit",
                (false, true) => "dry_run_over_limit",
            };
            self.count_descriptor(domain, &info.name, result);
            // A dry-run limit that is over says so in its own status (the overall code
            // stays OK): meshwarden's filter counts it as shadow-limited.
            statuses[m.index] = DescriptorStatus {
                code: if b.fits { Code::Ok } else { Code::OverLimit } as i32,
                current_limit: Some(current_limit(&info.name, quota)),
                limit_remaining: u32::try_from(v.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(pb_duration(v.until_full)),
                ..Default::default()
            };
            items.push(item(m, &v, violated));
        }
        let mut response = RateLimitResponse {
            statuses,
            ..Default::default()
        };
        if reply.committed {
            self.count_decision(domain, "ok");
            response.overall_code = Code::Ok as i32;
            response.response_headers_to_add = allowed_headers(&items);
        } else {
            self.count_decision(domain, "over_limit");
            response.overall_code = Code::OverLimit as i32;
            let (headers, body) = rejection(&items, None);
            response.response_headers_to_add = headers;
            response.raw_body = body;
        }
        response
    }

    /// The answer without Redis: each limit's failure mode (the server's by default).
    fn failure(
        &self,
        domain: &str,
        matched: &[Matched],
        error: &StoreError,
        statuses: &mut [DescriptorStatus],
    ) -> RateLimitResponse {
        let mut items = Vec::new();
        for m in matched {
            let info = &m.resolved.info;
            let mode = info.failure_mode.unwrap_or(self.failure_mode);
            if mode == FailureMode::Deny && !info.dry_run {
                statuses[m.index] = DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: Some(current_limit(&info.name, &m.resolved.quota)),
                    ..Default::default()
                };
                let retry = Duration::from_secs(FAILURE_RETRY_AFTER_SECONDS);
                items.push(Item {
                    quota_item: QuotaItem {
                        name: info.name.clone(),
                        quota: m.resolved.quota.requests,
                        window_seconds: Some(m.resolved.quota.period.seconds()),
                        concurrent: false,
                        remaining: 0,
                        reset_seconds: Some(ceil_secs(retry)),
                    },
                    violated: true,
                    detail: format!(
                        "The rate-limit store is unavailable and policy {} denies requests meanwhile; retry after {FAILURE_RETRY_AFTER_SECONDS} s.",
                        info.name
                    ),
                    response_headers: info.response_headers,
                    legacy_headers: info.legacy_headers,
                });
            }
        }
        let statuses = statuses.to_vec();
        if items.is_empty() {
            self.count_decision(domain, "failure_allowed");
            tracing::debug!(%error, "rate-limit store failed; allowed");
            RateLimitResponse {
                overall_code: Code::Ok as i32,
                statuses,
                ..Default::default()
            }
        } else {
            self.count_decision(domain, "failure_denied");
            tracing::debug!(%error, "rate-limit store failed; denied");
            let (headers, body) = rejection(&items, Some(FAILURE_RETRY_AFTER_SECONDS));
            RateLimitResponse {
                overall_code: Code::OverLimit as i32,
                statuses,
                response_headers_to_add: headers,
                raw_body: body,
                ..Default::default()
            }
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        self.decide_within(request.get_ref(), deadline)
            .await
            .map(Response::new)
    }
}

/// A `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn check_request(req: &RateLimitRequest) -> Result<(), Status> {
    if req.domain.is_empty() {
        return Err(Status::invalid_argument("domain: must not be empty"));
    }
    if req.descriptors.is_empty() || req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(Status::invalid_argument(format!(
            "descriptors: must have 1 to {MAX_DESCRIPTORS}, got {}",
            req.descriptors.len()
        )));
    }
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            return Err(Status::invalid_argument(format!(
                "descriptors[{i}].entries: must have 1 to {MAX_ENTRIES}, got {}",
                d.entries.len()
            )));
        }
        if let Some(j) = d.entries.iter().position(|e| e.key.is_empty()) {
            return Err(Status::invalid_argument(format!(
                "descriptors[{i}].entries[{j}].key: must not be empty"
            )));
        }
    }
    Ok(())
}

/// Envoy's per-descriptor `limit` (from route metadata): its rate, burst = rate.
fn request_quota(index: usize, d: &RateLimitDescriptor) -> Result<Option<Quota>, Status> {
    let Some(l) = &d.limit else {
        return Ok(None);
    };
    let period = Period::from_envoy_unit(l.unit).ok_or_else(|| {
        Status::invalid_argument(format!(
            "descriptors[{index}].limit.unit: unknown unit {}",
            l.unit
        ))
    })?;
    if l.requests_per_unit == 0 {
        return Err(Status::invalid_argument(format!(
            "descriptors[{index}].limit.requests_per_unit: must be at least 1"
        )));
    }
    let requests = u64::from(l.requests_per_unit);
    Ok(Some(Quota {
        requests,
        period,
        burst: requests,
    }))
}

fn current_limit(name: &str, quota: &Quota) -> RateLimit {
    RateLimit {
        name: name.to_string(),
        requests_per_unit: u32::try_from(quota.requests).unwrap_or(u32::MAX),
        unit: quota.period.envoy_unit(),
    }
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn item(m: &Matched, v: &BucketView, violated: bool) -> Item {
    let info = &m.resolved.info;
    let quota = &m.resolved.quota;
    let t = if violated {
        // Until the hits fit; if they never can, until the bucket is full.
        ceil_secs(v.retry_after.unwrap_or(v.until_full)).max(1)
    } else {
        ceil_secs(v.next_token)
    };
    Item {
        quota_item: QuotaItem {
            name: info.name.clone(),
            quota: quota.requests,
            window_seconds: Some(quota.period.seconds()),
            concurrent: false,
            remaining: v.remaining,
            reset_seconds: Some(t),
        },
        violated,
        detail: format!(
            "Too many requests for policy {}: the limit is {}; retry after {t} s.",
            info.name,
            quota.describe()
        ),
        response_headers: info.response_headers,
        legacy_headers: info.legacy_headers,
    }
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value: value.to_string(),
        ..Default::default()
    }
}

/// Items with distinct names, first one kept.
fn distinct<'a>(items: impl Iterator<Item = &'a Item>) -> Vec<&'a Item> {
    let mut out: Vec<&Item> = Vec::new();
    for i in items {
        if !out.iter().any(|o| o.quota_item.name == i.quota_item.name) {
            out.push(i);
        }
    }
    out
}

/// `RateLimit-Policy`/`RateLimit` (and the legacy trio) of the limits that asked for
/// headers on allowed responses.
fn allowed_headers(items: &[Item]) -> Vec<HeaderValue> {
    let shown = distinct(items.iter().filter(|i| i.response_headers));
    let quota_items: Vec<QuotaItem> = shown.iter().map(|i| i.quota_item.clone()).collect();
    let mut fields = ratelimit_fields(&quota_items);
    if let Some(first) = shown.first().filter(|i| i.legacy_headers) {
        fields.extend(legacy_fields(&first.quota_item));
    }
    fields.iter().map(|(k, v)| header(k, v)).collect()
}

/// Headers and problem body of a 429: `retry-after` (the longest wait, at least 1 s or
/// `retry_after`), `RateLimit-Policy`/`RateLimit` of the violated limits, the legacy trio
/// of the first if it asks for them, `content-type: application/problem+json`.
fn rejection(items: &[Item], retry_after: Option<u64>) -> (Vec<HeaderValue>, Vec<u8>) {
    let violated = distinct(items.iter().filter(|i| i.violated));
    let quota_items: Vec<QuotaItem> = violated.iter().map(|i| i.quota_item.clone()).collect();
    let wait = retry_after.unwrap_or_else(|| {
        quota_items
            .iter()
            .filter_map(|q| q.reset_seconds)
            .max()
            .unwrap_or(1)
            .max(1)
    });
    let mut fields = vec![
        ("content-type".to_string(), PROBLEM_JSON.to_string()),
        ("retry-after".to_string(), wait.to_string()),
    ];
    fields.extend(ratelimit_fields(&quota_items));
    let Some(first) = violated.first() else {
        return (
            fields.iter().map(|(k, v)| header(k, v)).collect(),
            Vec::new(),
        );
    };
    if first.legacy_headers {
        fields.extend(legacy_fields(&first.quota_item));
    }
    let problem = Problem {
        problem_type: QUOTA_EXCEEDED,
        title: QUOTA_EXCEEDED_TITLE,
        status: 429,
        detail: first.detail.clone(),
        policy: first.quota_item.name.clone(),
        violated_policies: quota_items.iter().map(|q| q.name.clone()).collect(),
    };
    (
        fields.iter().map(|(k, v)| header(k, v)).collect(),
        problem.to_json().into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;
    use crate::store::StoreOptions;
    use crate::testing::{descriptor, request};
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;

    const LIMITS: &str = r#"
domains:
- domain: edge
  limits:
  - name: per-tenant
    descriptors: [{key: tenant}]
    rate: {requests: 10, unit: minute}
  - name: strict
    descriptors: [{key: path}]
    rate: {requests: 10, unit: minute}
    failureMode: deny
    legacyHeaders: true
  - name: shadow
    descriptors: [{key: shadow}]
    rate: {requests: 1, unit: minute}
    failureMode: deny
    dryRun: true
"#;

    /// A limiter whose Redis is a closed loopback port: every call fails at once.
    fn limiter(mode: FailureMode) -> RateLimiter {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = RedisStore::new(
            &StoreOptions {
                url: format!("redis://127.0.0.1:{port}"),
                timeout: Duration::from_millis(50),
                connect_timeout: Duration::from_millis(100),
                max_in_flight: 4,
            },
            metrics.clone(),
        )
        .unwrap();
        let limits = Limits::new(&LimitsConfig::parse(LIMITS).unwrap());
        RateLimiter::new(limits, store, mode, "t:", metrics)
    }

    fn headers(r: &RateLimitResponse) -> Vec<(String, String)> {
        r.response_headers_to_add
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    }

    #[tokio::test]
    async fn malformed_requests_are_invalid_arguments() {
        let l = limiter(FailureMode::Allow);
        let cases = [
            (
                request("", vec![descriptor(&[("a", "b")])]),
                "domain: must not be empty",
            ),
            (
                request("edge", vec![]),
                "descriptors: must have 1 to 64, got 0",
            ),
            (
                request("edge", vec![descriptor(&[("a", "b")]), descriptor(&[])]),
                "descriptors[1].entries: must have 1 to 64, got 0",
            ),
            (
                request("edge", vec![descriptor(&[("a", "b"), ("", "c")])]),
                "descriptors[0].entries[1].key: must not be empty",
            ),
            (
                request(
                    "edge",
                    vec![RateLimitDescriptor {
                        limit: Some(RateLimitOverride {
                            requests_per_unit: 5,
                            unit: 0,
                        }),
                        ..descriptor(&[("tenant", "a")])
                    }],
                ),
                "descriptors[0].limit.unit: unknown unit 0",
            ),
            (
                request(
                    "edge",
                    vec![RateLimitDescriptor {
                        limit: Some(RateLimitOverride {
                            requests_per_unit: 0,
                            unit: 1,
                        }),
                        ..descriptor(&[("tenant", "a")])
                    }],
                ),
                "descriptors[0].limit.requests_per_unit: must be at least 1",
            ),
        ];
        for (req, want) in cases {
            let s = l.decide(&req).await.unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert_eq!(s.message(), want);
        }
        let many = request("edge", vec![descriptor(&[("a", "b")]); MAX_DESCRIPTORS + 1]);
        assert!(l.decide(&many).await.is_err());
    }

    #[tokio::test]
    async fn descriptors_without_limits_need_no_redis() {
        let l = limiter(FailureMode::Deny);
        let r = l
            .decide(&request(
                "edge",
                vec![
                    descriptor(&[("other", "x")]),
                    descriptor(&[("tenant", "a"), ("x", "y")]),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 2);
        assert!(r
            .statuses
            .iter()
            .all(|s| s.code == Code::Ok as i32 && s.current_limit.is_none()));
        let r = l
            .decide(&request("nowhere", vec![descriptor(&[("tenant", "a")])]))
            .await
            .unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
        let text = l.metrics.encode();
        assert!(
            text.contains("meshwarden_rls_decisions_total{domain=\"edge\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "meshwarden_rls_decisions_total{domain=\"(unconfigured)\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(
            !text.contains("meshwarden_rls_redis_errors_total{"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn redis_down_applies_each_limits_failure_mode() {
        let l = limiter(FailureMode::Allow);
        // per-tenant: the server's mode (allow); shadow: deny, but dry-run never denies.
        let started = std::time::Instant::now();
        let r = l
            .decide(&request(
                "edge",
                vec![
                    descriptor(&[("tenant", "a")]),
                    descriptor(&[("shadow", "x")]),
                ],
            ))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert!(r.response_headers_to_add.is_empty() && r.raw_body.is_empty());

        // strict: deny.
        let r = l
            .decide(&request(
                "edge",
                vec![
                    descriptor(&[("tenant", "a")]),
                    descriptor(&[("path", "/x")]),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
        assert_eq!(r.statuses[1].current_limit.as_ref().unwrap().name, "strict");
        assert_eq!(
            headers(&r),
            vec![
                ("content-type".to_string(), PROBLEM_JSON.to_string()),
                ("retry-after".to_string(), "1".to_string()),
                (
                    "ratelimit-policy".to_string(),
                    "\"strict\";q=10;w=60".to_string()
                ),
                ("ratelimit".to_string(), "\"strict\";r=0;t=1".to_string()),
                ("x-ratelimit-limit".to_string(), "10".to_string()),
                ("x-ratelimit-remaining".to_string(), "0".to_string()),
                ("x-ratelimit-reset".to_string(), "1".to_string()),
            ]
        );
        let body: serde_json::Value = serde_json::from_slice(&r.raw_body).unwrap();
        assert_eq!(body["status"], 429);
        assert_eq!(body["policy"], "strict");
        assert_eq!(body["violated-policies"], serde_json::json!(["strict"]));
        assert!(body["detail"].as_str().unwrap().contains("unavailable"));

        // Server mode deny applies to limits without their own.
        let d = limiter(FailureMode::Deny);
        let r = d
            .decide(&request("edge", vec![descriptor(&[("tenant", "a")])]))
            .await
            .unwrap();
        assert_eq!(r.overall_code, Code::OverLimit as i32);

        let text = l.metrics.encode();
        assert!(text.contains("outcome=\"failure_allowed\"} 1"), "{text}");
        assert!(text.contains("outcome=\"failure_denied\"} 1"), "{text}");
        assert!(
            text.contains("meshwarden_rls_redis_errors_total{kind=\"connection\"}")
                || text.contains("meshwarden_rls_redis_errors_total{kind=\"timeout\"}"),
            "{text}"
        );
    }

    fn test_item(name: &str, remaining: u64, t: u64, violated: bool, legacy: bool) -> Item {
        Item {
            quota_item: QuotaItem {
                name: name.into(),
                quota: 100,
                window_seconds: Some(1),
                concurrent: false,
                remaining,
                reset_seconds: Some(t),
            },
            violated,
            detail: format!("detail of {name}"),
            response_headers: !violated,
            legacy_headers: legacy,
        }
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("20m"), Some(Duration::from_millis(20)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("500u"), Some(Duration::from_micros(500)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "-1m", "1x", "1.5S", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rejection_lists_violated_limits_once_and_waits_for_the_longest() {
        let items = [
            test_item("a", 5, 0, false, false),
            test_item("b", 0, 3, true, true),
            test_item("c", 0, 7, true, false),
            test_item("b", 0, 9, true, true),
        ];
        let (h, body) = rejection(&items, None);
        let h: Vec<(String, String)> = h.into_iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(
            h,
            vec![
                ("content-type".to_string(), PROBLEM_JSON.to_string()),
                ("retry-after".to_string(), "7".to_string()),
                (
                    "ratelimit-policy".to_string(),
                    "\"b\";q=100;w=1, \"c\";q=100;w=1".to_string()
                ),
                (
                    "ratelimit".to_string(),
                    "\"b\";r=0;t=3, \"c\";r=0;t=7".to_string()
                ),
                ("x-ratelimit-limit".to_string(), "100".to_string()),
                ("x-ratelimit-remaining".to_string(), "0".to_string()),
                ("x-ratelimit-reset".to_string(), "3".to_string()),
            ]
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("{{\"type\":\"{QUOTA_EXCEEDED}\",\"title\":\"{QUOTA_EXCEEDED_TITLE}\",\"status\":429,\"detail\":\"detail of b\",\"policy\":\"b\",\"violated-policies\":[\"b\",\"c\"]}}")
        );
        // Allowed: only the limits asking for headers.
        let h: Vec<(String, String)> = allowed_headers(&items)
            .into_iter()
            .map(|h| (h.key, h.value))
            .collect();
        assert_eq!(
            h,
            vec![
                (
                    "ratelimit-policy".to_string(),
                    "\"a\";q=100;w=1".to_string()
                ),
                ("ratelimit".to_string(), "\"a\";r=5;t=0".to_string()),
            ]
        );
        assert!(allowed_headers(&items[1..3]).is_empty());
    }
}
