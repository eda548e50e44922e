//! The validated limits, compiled for lookups: which limit (and so which bucket) a
//! descriptor gets, and the Redis key of that bucket.

use crate::config::{LimitConfig, LimitsConfig};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use meshwarden_common::ratelimit::{FailureMode, Rate, Unit};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Values longer than this (after escaping) are replaced by a hash in Redis keys.
pub const MAX_KEY_VALUE: usize = 128;

/// The length of a rate's unit. Limits files use second to day; Envoy's per-request
/// `limit` override may also say week, month (30 days) or year (365 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// Length in seconds (the `w` of a `RateLimit-Policy` item).
    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => 86_400,
            Period::Week => 7 * 86_400,
            Period::Month => 30 * 86_400,
            Period::Year => 365 * 86_400,
        }
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit`.
    pub fn envoy_unit(self) -> i32 {
        match self {
            Period::Second => 1,
            Period::Minute => 2,
            Period::Hour => 3,
            Period::Day => 4,
            Period::Month => 5,
            Period::Year => 6,
            Period::Week => 7,
        }
    }

    /// The period of an Envoy unit (`None` for UNKNOWN or anything else).
    pub fn from_envoy_unit(unit: i32) -> Option<Self> {
        Some(match unit {
            1 => Period::Second,
            2 => Period::Minute,
            3 => Period::Hour,
            4 => Period::Day,
            5 => Period::Month,
            6 => Period::Year,
            7 => Period::Week,
            _ => return None,
        })
    }

    /// The unit's name: `second` ... `year`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Year => "year",
        }
    }
}

impl From<Unit> for Period {
    fn from(u: Unit) -> Self {
        match u {
            Unit::Second => Period::Second,
            Unit::Minute => Period::Minute,
            Unit::Hour => Period::Hour,
            Unit::Day => Period::Day,
        }
    }
}

/// A token bucket: `requests` per `period`, capacity `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub period: Period,
    pub burst: u64,
}

impl Quota {
    /// From a limits-file rate and optional burst (default: `rate.requests`).
    pub fn new(rate: Rate, burst: Option<u64>) -> Self {
        Self {
            requests: rate.requests,
            period: rate.unit.into(),
            burst: burst.unwrap_or(rate.requests),
        }
    }

    /// GCRA emission interval T: microseconds per request.
    pub fn emission_interval_us(&self) -> f64 {
        self.period.seconds() as f64 * 1e6 / self.requests as f64
    }

    /// GCRA burst tolerance τ = burst × T: how far ahead of now the theoretical arrival
    /// time may run, µs.
    pub fn tolerance_us(&self) -> f64 {
        self.burst as f64 * self.emission_interval_us()
    }

    /// `100 requests per second (burst 50)`.
    pub fn describe(&self) -> String {
        let noun = if self.requests == 1 {
            "request"
        } else {
            "requests"
        };
        format!(
            "{} {noun} per {} (burst {})",
            self.requests,
            self.period.as_str(),
            self.burst
        )
    }
}

/// What a limit says besides its rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitInfo {
    /// The limit's name (`current_limit.name`, the quota policy in headers).
    pub name: String,
    pub dry_run: bool,
    pub response_headers: bool,
    pub legacy_headers: bool,
    /// `None`: the server's failure mode.
    pub failure_mode: Option<FailureMode>,
}

/// The bucket a descriptor resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub info: Arc<LimitInfo>,
    pub quota: Quota,
    /// The bucket's Redis key (without the server's key prefix).
    pub key: String,
}

#[derive(Debug)]
struct CompiledLimit {
    info: Arc<LimitInfo>,
    /// (key, fixed value).
    pattern: Vec<(String, Option<String>)>,
    quota: Quota,
    /// ((entry index, value) that must all match, quota).
    overrides: Vec<(Vec<(usize, String)>, Quota)>,
}

impl CompiledLimit {
    fn new(l: &LimitConfig) -> Self {
        let pattern: Vec<(String, Option<String>)> = l
            .descriptors
            .iter()
            .map(|d| (d.key.clone(), d.value.clone()))
            .collect();
        let overrides = l
            .overrides
            .iter()
            .map(|o| {
                let conds = o
                    .descriptor_match
                    .iter()
                    .filter_map(|(k, v)| {
                        let i = pattern.iter().position(|(pk, _)| pk == k)?;
                        Some((i, v.clone()))
                    })
                    .collect();
                (conds, Quota::new(o.rate, o.burst))
            })
            .collect();
        Self {
            info: Arc::new(LimitInfo {
                name: l.name.clone(),
                dry_run: l.dry_run,
                response_headers: l.response_headers,
                legacy_headers: l.legacy_headers,
                failure_mode: l.failure_mode,
            }),
            pattern,
            quota: Quota::new(l.rate, l.burst),
            overrides,
        }
    }

    fn matches(&self, entries: &[Entry]) -> bool {
        entries.len() == self.pattern.len()
            && self
                .pattern
                .iter()
                .zip(entries)
                .all(|((k, v), e)| *k == e.key && v.as_ref().is_none_or(|v| *v == e.value))
    }

    fn quota_for(&self, entries: &[Entry]) -> Quota {
        self.overrides
            .iter()
            .find(|(conds, _)| conds.iter().all(|(i, v)| entries[*i].value == *v))
            .map_or(self.quota, |(_, q)| *q)
    }
}

/// Every domain's limits, ready for lookups.
#[derive(Debug, Default)]
pub struct Limits {
    domains: HashMap<String, Vec<CompiledLimit>>,
}

impl Limits {
    /// Compiles a validated configuration.
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            domains: config
                .domains
                .iter()
                .map(|d| {
                    (
                        d.domain.clone(),
                        d.limits.iter().map(CompiledLimit::new).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Whether `domain` has limits (configured, possibly with none).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// Names of every limit of `domain`, in file order.
    pub fn limit_names(&self, domain: &str) -> Vec<&str> {
        self.domains
            .get(domain)
            .map(|ls| ls.iter().map(|l| l.info.name.as_str()).collect())
            .unwrap_or_default()
    }

    /// The bucket of a descriptor: the first limit of `domain` whose `descriptors` the
    /// entries match, with the first matching override's quota, or `request_quota` (Envoy's
    /// per-descriptor `limit`) when given. `None`: no limit applies.
    pub fn resolve(
        &self,
        domain: &str,
        entries: &[Entry],
        request_quota: Option<Quota>,
    ) -> Option<Resolved> {
        let limit = self
            .domains
            .get(domain)?
            .iter()
            .find(|l| l.matches(entries))?;
        let quota = request_quota.unwrap_or_else(|| limit.quota_for(entries));
        let mut key = format!("{domain}|{}", limit.info.name);
        for e in entries {
            key.push('|');
            push_component(&mut key, &e.key);
            key.push('=');
            push_component(&mut key, &e.value);
        }
        if let Some(q) = request_quota {
            // A request-supplied limit gets its own bucket: differently sized buckets
            // never share a key.
            let _ = write!(key, "|~{}/{}/{}", q.requests, q.period.as_str(), q.burst);
        }
        Some(Resolved {
            info: limit.info.clone(),
            quota,
            key,
        })
    }
}

/// Appends `s` to a key: `%`, `|`, `=`, `#`, `~` and control bytes percent-escaped, so
/// components cannot run into each other; if that is longer than [`MAX_KEY_VALUE`], `#`
/// and the first 128 bits of its SHA-256 instead, so keys stay short whatever clients send.
fn push_component(key: &mut String, s: &str) {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '|' | '=' | '#' | '~') || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(escaped, "%{b:02X}");
            }
        } else {
            escaped.push(c);
        }
    }
    if escaped.len() <= MAX_KEY_VALUE {
        key.push_str(&escaped);
    } else {
        key.push('#');
        for b in &Sha256::digest(s.as_bytes())[..16] {
            let _ = write!(key, "{b:02x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let c = LimitsConfig::parse(
            r#"
domains:
- domain: edge
  limits:
  - name: gold-api
    descriptors: [{key: policy, value: api}, {key: tenant, value: gold}]
    rate: {requests: 7, unit: second}
  - name: api-per-tenant
    descriptors: [{key: policy, value: api}, {key: tenant}]
    rate: {requests: 100, unit: second}
    burst: 50
    overrides:
    - match: {tenant: silver}
      rate: {requests: 1000, unit: minute}
    - match: {tenant: bronze}
      rate: {requests: 10, unit: hour}
      burst: 3
  - name: per-tenant-method
    descriptors: [{key: tenant}, {key: method}]
    rate: {requests: 1, unit: day}
    overrides:
    - match: {tenant: a, method: POST}
      rate: {requests: 2, unit: day}
    dryRun: true
- domain: other
"#,
        )
        .unwrap();
        Limits::new(&c)
    }

    fn entries(kv: &[(&str, &str)]) -> Vec<Entry> {
        kv.iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

    fn resolve(domain: &str, kv: &[(&str, &str)]) -> Option<Resolved> {
        limits().resolve(domain, &entries(kv), None)
    }

    #[test]
    fn first_matching_limit_and_override_win() {
        let r = resolve("edge", &[("policy", "api"), ("tenant", "acme")]).unwrap();
        assert_eq!(r.info.name, "api-per-tenant");
        assert_eq!(
            r.quota,
            Quota {
                requests: 100,
                period: Period::Second,
                burst: 50
            }
        );
        assert_eq!(r.key, "edge|api-per-tenant|policy=api|tenant=acme");

        // The fixed-value limit comes first for gold.
        let g = resolve("edge", &[("policy", "api"), ("tenant", "gold")]).unwrap();
        assert_eq!(g.info.name, "gold-api");
        assert_eq!(g.quota.requests, 7);
        assert_eq!(g.quota.burst, 7);

        // Overrides: the burst defaults to the override's own rate.
        let s = resolve("edge", &[("policy", "api"), ("tenant", "silver")]).unwrap();
        assert_eq!(
            (s.quota.requests, s.quota.period, s.quota.burst),
            (1000, Period::Minute, 1000)
        );
        let b = resolve("edge", &[("policy", "api"), ("tenant", "bronze")]).unwrap();
        assert_eq!(
            (b.quota.requests, b.quota.period, b.quota.burst),
            (10, Period::Hour, 3)
        );
        // Same bucket key family whatever the override.
        assert_eq!(s.key, "edge|api-per-tenant|policy=api|tenant=silver");

        // Multi-key override: all entries must match.
        let m = resolve("edge", &[("tenant", "a"), ("method", "POST")]).unwrap();
        assert_eq!(m.quota.requests, 2);
        assert!(m.info.dry_run);
        let m = resolve("edge", &[("tenant", "a"), ("method", "GET")]).unwrap();
        assert_eq!(m.quota.requests, 1);
    }

    #[test]
    fn shape_must_match_exactly() {
        assert!(resolve("edge", &[("policy", "web"), ("tenant", "acme")]).is_none());
        assert!(resolve("edge", &[("tenant", "acme"), ("policy", "api")]).is_none());
        assert!(resolve("edge", &[("policy", "api")]).is_none());
        assert!(resolve("edge", &[("policy", "api"), ("tenant", "a"), ("x", "y")]).is_none());
        assert!(resolve("other", &[("policy", "api"), ("tenant", "a")]).is_none());
        assert!(resolve("nope", &[("policy", "api"), ("tenant", "a")]).is_none());
        let l = limits();
        assert!(l.has_domain("other") && !l.has_domain("nope"));
        assert_eq!(
            l.limit_names("edge"),
            vec!["gold-api", "api-per-tenant", "per-tenant-method"]
        );
    }

    #[test]
    fn distinct_values_get_distinct_unambiguous_keys() {
        let a = resolve("edge", &[("tenant", "a|method=b"), ("method", "c")]).unwrap();
        let b = resolve("edge", &[("tenant", "a"), ("method", "b|method=c")]).unwrap();
        assert_ne!(a.key, b.key);
        assert_eq!(
            a.key,
            "edge|per-tenant-method|tenant=a%7Cmethod%3Db|method=c"
        );
        let c = resolve("edge", &[("tenant", "%7C"), ("method", "\n")]).unwrap();
        assert_eq!(c.key, "edge|per-tenant-method|tenant=%257C|method=%0A");
        // Long values are hashed; equal values hash equally, different ones differently.
        let long1 = "x".repeat(1000);
        let long2 = format!("{}y", "x".repeat(999));
        let k1 = resolve("edge", &[("tenant", &long1), ("method", "GET")])
            .unwrap()
            .key;
        let k1b = resolve("edge", &[("tenant", &long1), ("method", "GET")])
            .unwrap()
            .key;
        let k2 = resolve("edge", &[("tenant", &long2), ("method", "GET")])
            .unwrap()
            .key;
        assert_eq!(k1, k1b);
        assert_ne!(k1, k2);
        assert!(k1.len() < 100, "{k1}");
        assert!(k1.starts_with("edge|per-tenant-method|tenant=#"), "{k1}");
        // A short value that looks like a hash is escaped, so it cannot collide.
        let hashed = k1
            .trim_start_matches("edge|per-tenant-method|tenant=")
            .trim_end_matches("|method=GET");
        assert!(hashed.starts_with('#') && hashed.len() == 33, "{hashed}");
        let fake = resolve("edge", &[("tenant", hashed), ("method", "GET")]).unwrap();
        assert_ne!(fake.key, k1);
    }

    #[test]
    fn request_quota_replaces_the_limit_in_its_own_bucket() {
        let q = Quota {
            requests: 3,
            period: Period::Week,
            burst: 3,
        };
        let r = limits()
            .resolve(
                "edge",
                &entries(&[("policy", "api"), ("tenant", "acme")]),
                Some(q),
            )
            .unwrap();
        assert_eq!(r.quota, q);
        assert_eq!(
            r.key,
            "edge|api-per-tenant|policy=api|tenant=acme|~3/week/3"
        );
        // Without a configured limit, a request quota does nothing.
        assert!(limits()
            .resolve("edge", &entries(&[("x", "y")]), Some(q))
            .is_none());
    }

    #[test]
    fn gcra_parameters() {
        let q = Quota {
            requests: 100,
            period: Period::Second,
            burst: 50,
        };
        assert_eq!(q.emission_interval_us(), 10_000.0);
        assert_eq!(q.tolerance_us(), 500_000.0);
        assert_eq!(q.describe(), "100 requests per second (burst 50)");
        let q = Quota {
            requests: 1,
            period: Period::Year,
            burst: 1,
        };
        assert_eq!(q.emission_interval_us(), 365.0 * 86_400.0 * 1e6);
        assert_eq!(q.describe(), "1 request per year (burst 1)");
        for u in 1..=7 {
            assert_eq!(Period::from_envoy_unit(u).unwrap().envoy_unit(), u);
        }
        assert_eq!(Period::from_envoy_unit(0), None);
        assert_eq!(Period::from_envoy_unit(8), None);
    }
}
