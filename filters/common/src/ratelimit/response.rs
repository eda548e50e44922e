//! What clients see: the IETF `RateLimit-Policy`/`RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers, -07 and later), the legacy `X-RateLimit-*` trio,
//! and the `application/problem+json` body of a 429 or 503.

use serde::Serialize;

/// Problem type of a 429.
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
/// Problem type of a 503 from the concurrency limit.
pub const TEMPORARY_REDUCED_CAPACITY: &str =
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity";
/// Title of a 429 body.
pub const QUOTA_EXCEEDED_TITLE: &str =
    "Request cannot be satisfied as assigned quota has been exceeded";
/// Title of a 503 body.
pub const REDUCED_CAPACITY_TITLE: &str =
    "Request cannot be satisfied due to temporary server capacity constraints";
/// `content-type` of rejection bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Suffix of the quota-policy name of a policy's concurrency limit.
pub const CONCURRENT_SUFFIX: &str = "/concurrent";
/// gRPC `RESOURCE_EXHAUSTED`, for requests over a rate.
pub const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
/// gRPC `UNAVAILABLE`, for requests over a concurrency limit.
pub const GRPC_UNAVAILABLE: u32 = 14;

/// One quota policy as the headers describe it, with its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaItem {
    /// `<policy>` for a rate, `<policy>/concurrent` for a concurrency limit.
    pub name: String,
    /// `q`: requests per window, or requests at once.
    pub quota: u64,
    /// `w`: window in seconds (rates only).
    pub window_seconds: Option<u64>,
    /// Quota unit `concurrent-requests` instead of the default `requests`.
    pub concurrent: bool,
    /// `r`: what is left.
    pub remaining: u64,
    /// `t`: seconds until more quota (rates only).
    pub reset_seconds: Option<u64>,
}

impl QuotaItem {
    /// The `RateLimit-Policy` list member: `"api";q=100;w=1`.
    pub fn policy_member(&self) -> String {
        let mut s = format!("{};q={}", sf_string(&self.name), self.quota);
        if self.concurrent {
            s.push_str(";qu=\"concurrent-requests\"");
        }
        if let Some(w) = self.window_seconds {
            s.push_str(&format!(";w={w}"));
        }
        s
    }

    /// The `RateLimit` list member: `"api";r=0;t=1`.
    pub fn limit_member(&self) -> String {
        let mut s = format!("{};r={}", sf_string(&self.name), self.remaining);
        if let Some(t) = self.reset_seconds {
            s.push_str(&format!(";t={t}"));
        }
        s
    }
}

/// A Structured Field string: quoted, with `\` and `"` escaped, other bytes outside
/// printable ASCII dropped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `ratelimit-policy` and `ratelimit` fields listing `items` (none if `items` is empty).
pub fn ratelimit_fields(items: &[QuotaItem]) -> Vec<(String, String)> {
    if items.is_empty() {
        return Vec::new();
    }
    let join = |f: fn(&QuotaItem) -> String| items.iter().map(f).collect::<Vec<_>>().join(", ");
    vec![
        ("ratelimit-policy".into(), join(QuotaItem::policy_member)),
        ("ratelimit".into(), join(QuotaItem::limit_member)),
    ]
}

/// `x-ratelimit-limit`, `-remaining` and `-reset` (draft-polli-03 style) for one item.
pub fn legacy_fields(item: &QuotaItem) -> Vec<(String, String)> {
    let mut out = vec![
        ("x-ratelimit-limit".into(), item.quota.to_string()),
        ("x-ratelimit-remaining".into(), item.remaining.to_string()),
    ];
    if let Some(t) = item.reset_seconds {
        out.push(("x-ratelimit-reset".into(), t.to_string()));
    }
    out
}

/// An RFC 9457 problem body naming the policy and the violated quota policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The meshwarden policy that rejected the request.
    pub policy: String,
    /// Names of the quota policies (as in `RateLimit-Policy`) that were exceeded.
    #[serde(rename = "violated-policies")]
    pub violated_policies: Vec<String>,
}

impl Problem {
    /// The compact JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_item() -> QuotaItem {
        QuotaItem {
            name: "api".into(),
            quota: 100,
            window_seconds: Some(60),
            concurrent: false,
            remaining: 0,
            reset_seconds: Some(3),
        }
    }

    #[test]
    fn structured_fields_follow_the_draft() {
        let conc = QuotaItem {
            name: "api/concurrent".into(),
            quota: 50,
            window_seconds: None,
            concurrent: true,
            remaining: 7,
            reset_seconds: None,
        };
        assert_eq!(
            ratelimit_fields(&[rate_item(), conc]),
            vec![
                (
                    "ratelimit-policy".to_string(),
                    "\"api\";q=100;w=60, \"api/concurrent\";q=50;qu=\"concurrent-requests\""
                        .to_string()
                ),
                (
                    "ratelimit".to_string(),
                    "\"api\";r=0;t=3, \"api/concurrent\";r=7".to_string()
                ),
            ]
        );
        assert!(ratelimit_fields(&[]).is_empty());
        assert_eq!(sf_string("a\"b\\c\u{e9}"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn legacy_fields_are_plain_numbers() {
        assert_eq!(
            legacy_fields(&rate_item()),
            vec![
                ("x-ratelimit-limit".to_string(), "100".to_string()),
                ("x-ratelimit-remaining".to_string(), "0".to_string()),
                ("x-ratelimit-reset".to_string(), "3".to_string()),
            ]
        );
    }

    #[test]
    fn problem_json_keeps_member_order() {
        let p = Problem {
            problem_type: QUOTA_EXCEEDED,
            title: QUOTA_EXCEEDED_TITLE,
            status: 429,
            detail: "d".into(),
            policy: "api".into(),
            violated_policies: vec!["api".into()],
        };
        assert_eq!(
            p.to_json(),
            format!(
                "{{\"type\":\"{QUOTA_EXCEEDED}\",\"title\":\"{QUOTA_EXCEEDED_TITLE}\",\"status\":429,\"detail\":\"d\",\"policy\":\"api\",\"violated-policies\":[\"api\"]}}"
            )
        );
    }
}
