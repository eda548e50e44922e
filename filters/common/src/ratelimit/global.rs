//! `scope: global` policies: what the filter asks the rate limit service for a request,
//! and the limits the control plane gives the service — derived here, once, from the
//! policy, so both sides always agree.
//!
//! Every global policy is one limit of the service's domain [`DOMAIN`], named after the
//! policy. A request matched by the policy sends one descriptor:
//!
//! ```text
//! [policy=<policy name>, <descriptor name>=<value>, ...]   (descriptors in policy order)
//! ```
//!
//! and the service's limit for the policy expects exactly these keys, the first with the
//! fixed value `<policy name>`, the others one bucket per distinct value, with the
//! policy's rate, burst and overrides (override `match` keys are descriptor names on both
//! sides).

use super::descriptor::Descriptor;
use super::key::hash64;
use super::spec::{FailureMode, Override, RateLimitSpec, MAX_MATCH_VALUE};
use super::Rate;
use serde::Serialize;

/// The rate-limit domain of every meshwarden global policy.
pub const DOMAIN: &str = "meshwarden";
/// The first entry's key of a global policy's descriptor (its value: the policy name).
pub const POLICY_KEY: &str = "policy";
/// The Envoy cluster of the rate limit service (HTTP/2), as `meshwarden bootstrap
/// --ratelimit-service` names it.
pub const CLUSTER: &str = "meshwarden_ratelimit";
/// Longest limit name the service accepts; longer policy names are shortened.
pub const MAX_LIMIT_NAME: usize = 128;

/// One descriptor entry: key and value.
pub type Entry = (String, String);

/// The entries of the descriptor a global policy sends for a request whose descriptor
/// values are `values` (in the policy's descriptor order).
pub fn entries(policy: &str, descriptors: &[Descriptor], values: &[&[u8]]) -> Vec<Entry> {
    let mut out = Vec::with_capacity(descriptors.len() + 1);
    out.push((POLICY_KEY.to_string(), policy.to_string()));
    for (d, v) in descriptors.iter().zip(values) {
        out.push((d.name().to_string(), entry_value(v)));
    }
    out
}

/// A descriptor value as the service gets it: the value itself when it is UTF-8 of at most
/// [`MAX_MATCH_VALUE`] bytes (every value an override can match), else `~` and a 128-bit
/// digest in hex (protobuf strings must be UTF-8; long values keep a bucket of their own
/// without long keys in Redis).
pub fn entry_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if s.len() <= MAX_MATCH_VALUE => s.to_string(),
        _ => format!(
            "~{:016x}{:016x}",
            hash64(v, 0x676c_6f62_616c_0001),
            hash64(v, 0x676c_6f62_616c_0002)
        ),
    }
}

/// The service's name for a policy's limit: the policy name, shortened to
/// [`MAX_LIMIT_NAME`] characters with a hash when longer.
pub fn limit_name(policy: &str) -> String {
    if policy.len() <= MAX_LIMIT_NAME {
        return policy.to_string();
    }
    let head: String = policy.chars().take(MAX_LIMIT_NAME - 17).collect();
    format!("{head}:{:016x}", hash64(policy.as_bytes(), 0x6e61_6d65))
}

/// One descriptor key of a service limit (the `meshwarden-ratelimit` limits file format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceKey {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One limit of the service's limits file, for one global policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLimit {
    pub name: String,
    pub descriptors: Vec<ServiceKey>,
    pub rate: Rate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    pub dry_run: bool,
    pub response_headers: bool,
    pub legacy_headers: bool,
    pub failure_mode: FailureMode,
}

/// One domain of the limits file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceDomain {
    pub domain: String,
    pub limits: Vec<ServiceLimit>,
}

/// The limits file `meshwarden-ratelimit` reads (`--config`, `--config-url`), generated
/// from the global policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceLimits {
    pub domains: Vec<ServiceDomain>,
}

/// The service limit of a policy, or `None` if it is not a global policy with a rate.
pub fn service_limit(policy: &str, spec: &RateLimitSpec) -> Option<ServiceLimit> {
    if !spec.is_global() {
        return None;
    }
    let rate = spec.rate?;
    let mut descriptors = vec![ServiceKey {
        key: POLICY_KEY.into(),
        value: Some(policy.into()),
    }];
    descriptors.extend(spec.descriptors.iter().map(|d| ServiceKey {
        key: d.name().into(),
        value: None,
    }));
    Some(ServiceLimit {
        name: limit_name(policy),
        descriptors,
        rate,
        burst: spec.burst,
        overrides: spec.overrides.clone(),
        dry_run: spec.dry_run,
        response_headers: spec.response_headers,
        legacy_headers: spec.legacy_headers,
        failure_mode: spec.failure_mode,
    })
}

/// The limits file for `policies` (name, spec): one limit per global policy, in the
/// order given; no domain at all without global policies.
pub fn service_limits<'a>(
    policies: impl IntoIterator<Item = (&'a str, &'a RateLimitSpec)>,
) -> ServiceLimits {
    let limits: Vec<ServiceLimit> = policies
        .into_iter()
        .filter_map(|(name, spec)| service_limit(name, spec))
        .collect();
    if limits.is_empty() {
        return ServiceLimits::default();
    }
    ServiceLimits {
        domains: vec![ServiceDomain {
            domain: DOMAIN.into(),
            limits,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> RateLimitSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn entries_follow_the_policy() {
        let s = spec(
            json!({"rate": {"requests": 1, "unit": "second"}, "scope": "global",
            "descriptors": [{"header": "x-tenant"}, {"method": {}}]}),
        );
        assert_eq!(
            entries("api", &s.descriptors, &[b"gold", b"GET"]),
            vec![
                ("policy".to_string(), "api".to_string()),
                ("x-tenant".to_string(), "gold".to_string()),
                ("method".to_string(), "GET".to_string()),
            ]
        );
        assert_eq!(entries("api", &[], &[]).len(), 1);
    }

    #[test]
    fn odd_values_become_digests() {
        assert_eq!(entry_value(b""), "");
        let long = vec![b'a'; MAX_MATCH_VALUE + 1];
        let d = entry_value(&long);
        assert!(d.starts_with('~') && d.len() == 33, "{d}");
        assert_ne!(d, entry_value(&long[1..]));
        assert_eq!(d, entry_value(&long));
        assert!(entry_value(&[0xff, 0xfe]).starts_with('~'));
        assert_eq!(entry_value(&[b'b'; MAX_MATCH_VALUE]).len(), MAX_MATCH_VALUE);
    }

    #[test]
    fn limits_file_has_one_limit_per_global_policy() {
        let global = spec(
            json!({"rate": {"requests": 100, "unit": "second"}, "burst": 50,
            "scope": "global", "descriptors": [{"header": "x-tenant"}],
            "overrides": [{"match": {"x-tenant": "gold"}, "rate": {"requests": 5, "unit": "second"}}],
            "failureMode": "deny"}),
        );
        let local = spec(json!({"rate": {"requests": 1, "unit": "second"}}));
        assert_eq!(service_limits([("l", &local)]), ServiceLimits::default());
        let file = service_limits([("api", &global), ("l", &local)]);
        assert_eq!(
            serde_json::to_value(&file).unwrap(),
            json!({"domains": [{"domain": "meshwarden", "limits": [{
                "name": "api",
                "descriptors": [{"key": "policy", "value": "api"}, {"key": "x-tenant"}],
                "rate": {"requests": 100, "unit": "second"},
                "burst": 50,
                "overrides": [{"match": {"x-tenant": "gold"}, "rate": {"requests": 5, "unit": "second"}}],
                "dryRun": false, "responseHeaders": false, "legacyHeaders": false,
                "failureMode": "deny"
            }]}]})
        );
    }

    #[test]
    fn long_policy_names_are_shortened() {
        let name = "a".repeat(200);
        let short = limit_name(&name);
        assert_eq!(short.len(), MAX_LIMIT_NAME);
        assert_ne!(short, limit_name(&"a".repeat(201)));
        assert_eq!(limit_name("api"), "api");
    }
}
