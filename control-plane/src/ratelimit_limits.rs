//! The limits of the global rate limit service (`meshwarden-ratelimit --config-url`),
//! generated from every `scope: global` RateLimitPolicy, so users write one policy: the
//! control plane serves them at `GET /ratelimit/config` on its HTTP port, and the filter
//! derives the descriptors it sends from the same policy with the same code
//! ([`meshwarden_common::ratelimit::global`]).

use crate::policy_set::PolicySet;
use meshwarden_common::document::KindBody;
use meshwarden_common::ratelimit::global::{service_limits, ServiceLimits};
use meshwarden_common::Kind;

/// Path of the limits on the HTTP port.
pub const PATH: &str = "/ratelimit/config";

/// The service's limits for the global RateLimitPolicies of `set`, in name order.
pub fn limits(set: &PolicySet) -> ServiceLimits {
    service_limits(
        set.of_kind(Kind::RateLimitPolicy)
            .filter_map(|p| match &p.doc.body {
                KindBody::RateLimit(spec) => Some((p.name(), spec)),
                _ => None,
            }),
    )
}

/// [`limits`] as the JSON text served (a limits file: YAML is a superset of JSON).
pub fn limits_json(set: &PolicySet) -> String {
    let mut text = serde_json::to_string_pretty(&limits(set)).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_set::StoredPolicy;
    use serde_json::json;

    fn stored(name: &str, spec: serde_json::Value) -> StoredPolicy {
        crate::test_fixtures::stored("RateLimitPolicy", name, spec)
    }

    #[test]
    fn only_global_policies_become_limits() {
        let set = PolicySet {
            generation: 1,
            policies: vec![
                stored(
                    "api",
                    json!({"rate": {"requests": 100, "unit": "second"}, "burst": 50,
                        "scope": "global", "descriptors": [{"header": "x-tenant"}]}),
                ),
                stored("local", json!({"rate": {"requests": 1, "unit": "second"}})),
            ],
            halts: vec![],
        };
        let v: serde_json::Value = serde_json::from_str(&limits_json(&set)).unwrap();
        let limits = &v["domains"][0]["limits"];
        assert_eq!(v["domains"][0]["domain"], "meshwarden");
        assert_eq!(limits.as_array().unwrap().len(), 1);
        assert_eq!(limits[0]["name"], "api");
        assert_eq!(
            limits[0]["descriptors"],
            json!([{"key": "policy", "value": "api"}, {"key": "x-tenant"}])
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&limits_json(&PolicySet::default())).unwrap(),
            json!({"domains": []})
        );
    }
}
