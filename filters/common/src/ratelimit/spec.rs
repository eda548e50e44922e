//! `RateLimitPolicy.spec`: the fields, their defaults and their validation.

use super::descriptor::Descriptor;
use super::rate::{Limit, Rate, MAX_REQUESTS};
use super::shedding::SheddingSpec;
use crate::duration::DurationSpec;
use crate::error::ValidationError;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Default `maxKeys`.
pub const DEFAULT_MAX_KEYS: u32 = 10_000;
/// Largest `maxKeys` (each key is a fixed shared-data entry of the proxy).
pub const MAX_MAX_KEYS: u32 = 100_000;
/// Largest `maxConcurrent`.
pub const MAX_CONCURRENT: u64 = 1_000_000;
/// Most descriptors per policy.
pub const MAX_DESCRIPTORS: usize = 8;
/// Most overrides per policy.
pub const MAX_OVERRIDES: usize = 100;
/// Longest value an override can match.
pub const MAX_MATCH_VALUE: usize = 256;

/// What to do when shared data stays contended past the retry budget (many workers
/// updating one bucket at the very same moment, 64 times in a row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Let the request through (counted in the `failures` metric).
    #[default]
    Allow,
    /// Reject it as if it were over the limit.
    Deny,
}

/// Where a policy's buckets live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// In the proxy's shared data: each proxy the policy selects has its own buckets.
    #[default]
    Local,
    /// In the global rate limit service (`meshwarden-ratelimit`, on Redis): one set of
    /// buckets shared by every proxy the policy selects.
    Global,
}

/// Default `timeout` of a global policy's call to the rate limit service.
pub const DEFAULT_GLOBAL_TIMEOUT: DurationSpec = DurationSpec::from_millis(100);
/// Longest `timeout` of a global policy.
pub const MAX_GLOBAL_TIMEOUT: DurationSpec = DurationSpec::from_millis(5_000);

/// Fewest tokens a lease asks for (one admits the request that asked).
pub const MIN_LEASE_TOKENS: u64 = 2;
/// Most tokens a lease asks for.
pub const MAX_LEASE_TOKENS: u64 = 10_000;
/// A lease takes at most this fraction of a bucket's burst (`tokens × 4 ≤ burst`), so the
/// tail of a bucket still serves single requests and a few proxies can hold leases at once.
pub const LEASE_BURST_DIVISOR: u64 = 4;
/// Default `lease.maxAge`.
pub const DEFAULT_LEASE_MAX_AGE: DurationSpec = DurationSpec::from_millis(1_000);
/// Shortest `lease.maxAge`.
pub const MIN_LEASE_MAX_AGE: DurationSpec = DurationSpec::from_millis(10);
/// Longest `lease.maxAge`.
pub const MAX_LEASE_MAX_AGE: DurationSpec = DurationSpec::from_millis(10_000);

/// `scope: global` only: local pre-admission. A request that finds no leased token for its
/// descriptor asks the rate limit service for `tokens` hits at once; when they are granted,
/// it is admitted and the other `tokens − 1` wait in the proxy's shared data for the next
/// requests with the same descriptor, which are then admitted without a call. Unused
/// tokens are dropped after `maxAge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseSpec {
    /// Tokens per lease (`hits_addend` of the call): at least 2, at most a quarter of the
    /// burst (of the policy and of every override).
    pub tokens: u64,
    /// How long leased tokens stay usable (default `1s`, from `10ms` to `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<DurationSpec>,
}

impl LeaseSpec {
    /// `maxAge`, or its default.
    pub fn max_age(&self) -> DurationSpec {
        self.max_age.unwrap_or(DEFAULT_LEASE_MAX_AGE)
    }
}

/// A per-descriptor limit: requests whose descriptor values equal every entry of `match`
/// get this rate and burst instead of the policy's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Override {
    /// Descriptor name -> exact value (`x-tenant: gold`, `method: POST`).
    #[serde(rename = "match")]
    pub descriptor_match: BTreeMap<String, String>,
    pub rate: Rate,
    /// Bucket capacity (default: `rate.requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `spec` of a `RateLimitPolicy` (besides `selector` and `match`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Token refill rate; each request takes one token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Bucket capacity: requests allowed at once after a quiet period (default:
    /// `rate.requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// One bucket per distinct combination of these values (none: one bucket).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<Descriptor>,
    /// Different limits for some descriptor values; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    /// Most distinct keys with their own bucket (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u32>,
    /// Most requests in flight at once for this policy, across all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// A concurrency limit found from latency (`adaptive`) or derived from a declared
    /// capacity (`utilization`), with request classes shed in priority order; instead of
    /// `maxConcurrent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shedding: Option<SheddingSpec>,
    /// Count and add headers, never reject.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// Add `RateLimit-Policy`/`RateLimit` to allowed responses too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub response_headers: bool,
    /// Also send `X-RateLimit-Limit`/`-Remaining`/`-Reset`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub legacy_headers: bool,
    /// Behaviour when shared data stays contended, or (`scope: global`) when the rate
    /// limit service does not answer in time (default `allow`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub failure_mode: FailureMode,
    /// `local` (default): per proxy; `global`: one limit across every selected proxy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub scope: Scope,
    /// `scope: global` only: longest wait for the rate limit service (default `100ms`,
    /// at most `5s`); then `failureMode` decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// `scope: global` only: local pre-admission from a per-proxy token lease (off by
    /// default: every request asks the rate limit service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseSpec>,
}

impl RateLimitSpec {
    /// The policy's own limit, if it has a rate.
    pub fn limit(&self) -> Option<Limit> {
        self.rate.map(|r| Limit::new(r, self.burst))
    }

    /// Whether the policy's buckets are in the global rate limit service.
    pub fn is_global(&self) -> bool {
        self.scope == Scope::Global
    }

    /// The call-out timeout of a global policy.
    pub fn global_timeout(&self) -> DurationSpec {
        self.timeout.unwrap_or(DEFAULT_GLOBAL_TIMEOUT)
    }

    /// Slots for per-key buckets: `maxKeys` with descriptors, none without (and none for
    /// a global policy, whose buckets are not in the proxy).
    pub fn key_slots(&self) -> u32 {
        if self.descriptors.is_empty() || self.is_global() {
            0
        } else {
            self.max_keys.unwrap_or(DEFAULT_MAX_KEYS)
        }
    }
}

fn check_burst(field: &str, burst: Option<u64>) -> Result<(), ValidationError> {
    match burst {
        Some(b) if b == 0 || b > MAX_REQUESTS => Err(ValidationError::new(
            field,
            format!("must be from 1 to {MAX_REQUESTS}, got {b}"),
        )),
        _ => Ok(()),
    }
}

fn check_rate(field: &str, rate: &Rate) -> Result<(), ValidationError> {
    rate.check()
        .map_err(|(sub, msg)| ValidationError::new(format!("{field}.{sub}"), msg))
}

impl KindSpec for RateLimitSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.rate.is_none() && self.max_concurrent.is_none() && self.shedding.is_none() {
            return Err(ValidationError::new(
                "",
                "set `rate` (a token bucket), `maxConcurrent` or `shedding` (a concurrency limit), or both",
            ));
        }
        if let Some(shedding) = &self.shedding {
            if self.max_concurrent.is_some() {
                return Err(ValidationError::new(
                    "shedding",
                    "set either `maxConcurrent` (a fixed limit) or `shedding`, not both",
                ));
            }
            shedding.validate().map_err(|e| e.within("shedding"))?;
        }
        if let Some(rate) = &self.rate {
            check_rate("rate", rate)?;
        }
        check_burst("burst", self.burst)?;
        let needs_rate = [
            ("burst", self.burst.is_some()),
            ("descriptors", !self.descriptors.is_empty()),
            ("overrides", !self.overrides.is_empty()),
        ];
        for (field, set) in needs_rate {
            if set && self.rate.is_none() {
                return Err(ValidationError::new(field, "needs `rate`"));
            }
        }
        if let Some(n) = self.max_concurrent {
            if n == 0 || n > MAX_CONCURRENT {
                return Err(ValidationError::new(
                    "maxConcurrent",
                    format!("must be from 1 to {MAX_CONCURRENT}, got {n}"),
                ));
            }
        }
        if let Some(n) = self.max_keys {
            if self.descriptors.is_empty() {
                return Err(ValidationError::new(
                    "maxKeys",
                    "needs `descriptors` (without them the policy has a single bucket)",
                ));
            }
            if n == 0 || n > MAX_MAX_KEYS {
                return Err(ValidationError::new(
                    "maxKeys",
                    format!("must be from 1 to {MAX_MAX_KEYS}, got {n}"),
                ));
            }
        }
        self.validate_descriptors()?;
        self.validate_overrides()?;
        self.validate_scope()
    }
}

impl RateLimitSpec {
    fn validate_scope(&self) -> Result<(), ValidationError> {
        if !self.is_global() {
            for (field, set) in [
                ("timeout", self.timeout.is_some()),
                ("lease", self.lease.is_some()),
            ] {
                if set {
                    return Err(ValidationError::new(field, "needs `scope: global`"));
                }
            }
            return Ok(());
        }
        if self.rate.is_none() {
            return Err(ValidationError::new(
                "scope",
                "a global policy needs `rate` (its token bucket is the shared one)",
            ));
        }
        let per_proxy = [
            ("maxConcurrent", self.max_concurrent.is_some()),
            ("shedding", self.shedding.is_some()),
            ("maxKeys", self.max_keys.is_some()),
        ];
        for (field, set) in per_proxy {
            if set {
                return Err(ValidationError::new(
                    field,
                    "is per proxy; a `scope: global` policy cannot have it (put it in a local policy)",
                ));
            }
        }
        if let Some(t) = self.timeout {
            if t.as_millis() == 0 || t > MAX_GLOBAL_TIMEOUT {
                return Err(ValidationError::new(
                    "timeout",
                    format!("must be from 1ms to {MAX_GLOBAL_TIMEOUT}, got {t}"),
                ));
            }
        }
        match &self.lease {
            Some(lease) => self.validate_lease(lease),
            None => Ok(()),
        }
    }

    fn validate_lease(&self, lease: &LeaseSpec) -> Result<(), ValidationError> {
        let n = lease.tokens;
        if !(MIN_LEASE_TOKENS..=MAX_LEASE_TOKENS).contains(&n) {
            return Err(ValidationError::new(
                "lease.tokens",
                format!("must be from {MIN_LEASE_TOKENS} to {MAX_LEASE_TOKENS}, got {n}"),
            ));
        }
        let bursts = self.limit().into_iter().map(|l| ("burst", l.burst)).chain(
            self.overrides
                .iter()
                .map(|o| ("an override's burst", Limit::new(o.rate, o.burst).burst)),
        );
        for (what, burst) in bursts {
            if n.saturating_mul(LEASE_BURST_DIVISOR) > burst {
                return Err(ValidationError::new(
                    "lease.tokens",
                    format!("must be at most 1/{LEASE_BURST_DIVISOR} of {what} ({burst}), got {n}"),
                ));
            }
        }
        let age = lease.max_age();
        if age < MIN_LEASE_MAX_AGE || age > MAX_LEASE_MAX_AGE {
            return Err(ValidationError::new(
                "lease.maxAge",
                format!("must be from {MIN_LEASE_MAX_AGE} to {MAX_LEASE_MAX_AGE}, got {age}"),
            ));
        }
        Ok(())
    }

    fn validate_descriptors(&self) -> Result<(), ValidationError> {
        if self.descriptors.len() > MAX_DESCRIPTORS {
            return Err(ValidationError::new(
                "descriptors",
                format!(
                    "at most {MAX_DESCRIPTORS} descriptors, got {}",
                    self.descriptors.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, d) in self.descriptors.iter().enumerate() {
            if !seen.insert(d.name()) {
                return Err(ValidationError::new(
                    format!("descriptors[{i}]"),
                    format!("{:?} is already a descriptor", d.name()),
                ));
            }
        }
        Ok(())
    }

    fn validate_overrides(&self) -> Result<(), ValidationError> {
        if self.overrides.len() > MAX_OVERRIDES {
            return Err(ValidationError::new(
                "overrides",
                format!(
                    "at most {MAX_OVERRIDES} overrides, got {}",
                    self.overrides.len()
                ),
            ));
        }
        let names: Vec<&str> = self.descriptors.iter().map(Descriptor::name).collect();
        for (i, o) in self.overrides.iter().enumerate() {
            let at = format!("overrides[{i}]");
            if o.descriptor_match.is_empty() {
                return Err(ValidationError::new(
                    format!("{at}.match"),
                    "must name at least one descriptor",
                ));
            }
            for (name, value) in &o.descriptor_match {
                if !names.contains(&name.as_str()) {
                    return Err(ValidationError::new(
                        format!("{at}.match.{name}"),
                        format!(
                            "{name:?} is not a descriptor of this policy; descriptors: {}",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
                if value.len() > MAX_MATCH_VALUE {
                    return Err(ValidationError::new(
                        format!("{at}.match.{name}"),
                        format!("at most {MAX_MATCH_VALUE} bytes, got {}", value.len()),
                    ));
                }
            }
            check_rate(&format!("{at}.rate"), &o.rate)?;
            check_burst(&format!("{at}.burst"), o.burst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::rate::Unit;
    use crate::spec::from_value;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<RateLimitSpec, ValidationError> {
        let s: RateLimitSpec = from_value("spec", &v)?;
        s.validate().map_err(|e| e.within("spec"))?;
        Ok(s)
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn full_policy_parses_with_defaults_and_round_trips() {
        let s = parse(json!({
            "rate": {"requests": 100, "unit": "second"},
            "burst": 50,
            "descriptors": [{"header": "x-tenant"}, {"clientAddress": {}}],
            "overrides": [{"match": {"x-tenant": "gold"}, "rate": {"requests": 1000, "unit": "minute"}}],
            "maxConcurrent": 20,
            "dryRun": true,
            "responseHeaders": true,
            "legacyHeaders": true,
            "failureMode": "deny"
        }))
        .unwrap();
        assert_eq!(s.limit().unwrap().burst, 50);
        assert_eq!(s.key_slots(), DEFAULT_MAX_KEYS);
        assert_eq!(s.overrides[0].rate.unit, Unit::Minute);
        let again = parse(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(again, s);
        let minimal = parse(json!({"rate": {"requests": 5, "unit": "day"}})).unwrap();
        assert_eq!(minimal.limit().unwrap().burst, 5);
        assert_eq!(minimal.key_slots(), 0);
        assert_eq!(minimal.failure_mode, FailureMode::Allow);
        assert_eq!(
            serde_json::to_value(&minimal).unwrap(),
            json!({"rate": {"requests": 5, "unit": "day"}})
        );
        assert!(parse(json!({"maxConcurrent": 3})).is_ok());
        let global = parse(
            json!({"rate": {"requests": 5, "unit": "second"}, "scope": "global",
            "descriptors": [{"header": "x-tenant"}], "timeout": "250ms"}),
        )
        .unwrap();
        assert!(global.is_global());
        assert_eq!(global.key_slots(), 0);
        assert_eq!(global.global_timeout().as_millis(), 250);
        assert_eq!(minimal.scope, Scope::Local);
        assert_eq!(minimal.global_timeout(), DEFAULT_GLOBAL_TIMEOUT);
    }

    #[test]
    fn global_scope_errors_name_the_field() {
        let rate = json!({"requests": 5, "unit": "second"});
        assert_eq!(
            err(json!({"maxConcurrent": 3, "scope": "global"})),
            "spec.scope: a global policy needs `rate` (its token bucket is the shared one)"
        );
        assert!(
            err(json!({"rate": rate, "scope": "global", "maxConcurrent": 3}))
                .starts_with("spec.maxConcurrent: is per proxy")
        );
        assert!(err(
            json!({"rate": rate, "scope": "global", "descriptors": [{"path": {}}], "maxKeys": 3})
        )
        .starts_with("spec.maxKeys: is per proxy"));
        assert_eq!(
            err(json!({"rate": rate, "timeout": "1s"})),
            "spec.timeout: needs `scope: global`"
        );
        assert_eq!(
            err(json!({"rate": rate, "scope": "global", "timeout": "6s"})),
            "spec.timeout: must be from 1ms to 5s, got 6s"
        );
        assert!(err(json!({"rate": rate, "scope": "planet"}))
            .starts_with("spec.scope: unknown variant `planet`"));
    }

    #[test]
    fn lease_parses_and_errors_name_the_field() {
        let base = json!({"rate": {"requests": 100, "unit": "second"}, "scope": "global",
            "descriptors": [{"header": "x-tenant"}]});
        let with = |lease: Value| {
            let mut v = base.clone();
            v["lease"] = lease;
            v
        };
        let s = parse(with(json!({"tokens": 25}))).unwrap();
        let lease = s.lease.unwrap();
        assert_eq!((lease.tokens, lease.max_age()), (25, DEFAULT_LEASE_MAX_AGE));
        assert_eq!(parse(serde_json::to_value(&s).unwrap()).unwrap(), s);
        let s = parse(with(json!({"tokens": 2, "maxAge": "250ms"}))).unwrap();
        assert_eq!(s.lease.unwrap().max_age().as_millis(), 250);
        assert_eq!(
            err(json!({"rate": {"requests": 100, "unit": "second"}, "lease": {"tokens": 5}})),
            "spec.lease: needs `scope: global`"
        );
        assert_eq!(
            err(with(json!({"tokens": 1}))),
            "spec.lease.tokens: must be from 2 to 10000, got 1"
        );
        assert_eq!(
            err(with(json!({"tokens": 26}))),
            "spec.lease.tokens: must be at most 1/4 of burst (100), got 26"
        );
        let mut low = with(json!({"tokens": 10}));
        low["overrides"] = json!([{"match": {"x-tenant": "free"},
            "rate": {"requests": 10, "unit": "second"}, "burst": 20}]);
        assert_eq!(
            err(low),
            "spec.lease.tokens: must be at most 1/4 of an override's burst (20), got 10"
        );
        assert_eq!(
            err(with(json!({"tokens": 5, "maxAge": "11s"}))),
            "spec.lease.maxAge: must be from 10ms to 10s, got 11s"
        );
        assert_eq!(
            err(with(json!({"tokens": 5, "maxAge": "5ms"}))),
            "spec.lease.maxAge: must be from 10ms to 10s, got 5ms"
        );
        assert!(err(with(json!({"tokens": 5, "max": "1s"})))
            .starts_with("spec.lease.max: unknown field `max`"));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err(json!({})),
            "spec: set `rate` (a token bucket), `maxConcurrent` or `shedding` (a concurrency limit), or both"
        );
        assert_eq!(
            err(json!({"rate": {"requests": 0, "unit": "second"}})),
            "spec.rate.requests: must be from 1 to 1000000000, got 0"
        );
        assert!(err(json!({"rate": {"requests": 1, "unit": "week"}}))
            .starts_with("spec.rate.unit: unknown variant `week`"));
        assert!(err(json!({"rate": {"requests": -1, "unit": "second"}}))
            .starts_with("spec.rate.requests: invalid value"));
        assert_eq!(
            err(json!({"rate": {"requests": 1, "unit": "second"}, "burst": 0})),
            "spec.burst: must be from 1 to 1000000000, got 0"
        );
        assert_eq!(
            err(json!({"maxConcurrent": 3, "burst": 2})),
            "spec.burst: needs `rate`"
        );
        assert_eq!(
            err(json!({"maxConcurrent": 0})),
            "spec.maxConcurrent: must be from 1 to 1000000, got 0"
        );
        assert_eq!(
            err(json!({"rate": {"requests": 1, "unit": "second"}, "maxKeys": 10})),
            "spec.maxKeys: needs `descriptors` (without them the policy has a single bucket)"
        );
        assert_eq!(
            err(
                json!({"rate": {"requests": 1, "unit": "second"}, "descriptors": [{"path": {}}], "maxKeys": 100001})
            ),
            "spec.maxKeys: must be from 1 to 100000, got 100001"
        );
        assert_eq!(
            err(
                json!({"rate": {"requests": 1, "unit": "second"}, "descriptors": [{"path": {}}, {"path": {}}]})
            ),
            "spec.descriptors[1]: \"path\" is already a descriptor"
        );
        assert!(err(json!({"rate": {"requests": 1, "unit": "second"}, "descriptors": [{"header": "bad header"}]}))
            .starts_with("spec.descriptors[0].header: header name"));
        assert_eq!(
            err(json!({"rate": {"requests": 1, "unit": "second"}, "descriptors": [{"method": {}}],
                "overrides": [{"match": {"x-tenant": "gold"}, "rate": {"requests": 2, "unit": "second"}}]})),
            "spec.overrides[0].match.x-tenant: \"x-tenant\" is not a descriptor of this policy; descriptors: method"
        );
        assert_eq!(
            err(
                json!({"rate": {"requests": 1, "unit": "second"}, "descriptors": [{"method": {}}],
                "overrides": [{"match": {}, "rate": {"requests": 2, "unit": "second"}}]})
            ),
            "spec.overrides[0].match: must name at least one descriptor"
        );
        assert_eq!(
            err(
                json!({"rate": {"requests": 1, "unit": "second"}, "descriptors": [{"method": {}}],
                "overrides": [{"match": {"method": "GET"}, "rate": {"requests": 2, "unit": "second"}, "burst": 0}]})
            ),
            "spec.overrides[0].burst: must be from 1 to 1000000000, got 0"
        );
        assert!(
            err(json!({"rate": {"requests": 1, "unit": "second"}, "failureMode": "maybe"}))
                .starts_with("spec.failureMode: unknown variant `maybe`")
        );
        assert!(
            err(json!({"rate": {"requests": 1, "unit": "second"}, "burts": 3}))
                .starts_with("spec.burts: unknown field `burts`"),
            "{}",
            err(json!({"burts": 3}))
        );
    }
}
