//! A compiled mirror policy and the per-request decision: which targets get a copy, and why
//! the others do not. Counters count copies (one per request and target).

use super::body::declared_too_large;
use super::diff::CompiledDiff;
use super::headers::HeaderRewrite;
use super::method::MethodFilter;
use super::sampling::sticky_hash;
use super::target::ResolvedTarget;
use crate::duration::DurationSpec;
use crate::percentage::Percentage;
use crate::random::Random;
use crate::request::RequestHeaders;

/// A target ready to dispatch to.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledTarget {
    pub target: ResolvedTarget,
    /// The Envoy cluster copies are sent to.
    pub cluster: String,
    pub percentage: Percentage,
}

/// Sticky sampling settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    /// Lowercase header name.
    pub header: String,
    pub seed: u64,
}

/// A validated `MirrorPolicy`, as the filter runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledMirror {
    pub targets: Vec<CompiledTarget>,
    pub sticky: Option<Sticky>,
    pub methods: MethodFilter,
    pub max_body_bytes: usize,
    pub max_per_second: Option<u32>,
    pub timeout: DurationSpec,
    pub headers: HeaderRewrite,
    pub diff: Option<CompiledDiff>,
}

/// Why a copy was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Not selected by the target's percentage.
    SampledOut,
    /// The method is not mirrored by this policy (or is a tunnel/upgrade).
    Method,
    /// The request body is larger than `maxBodyBytes`.
    BodyTooLarge,
    /// `maxPerSecond` reached.
    RateCapped,
    /// The worker's queue, in-flight or buffer bounds were reached.
    QueueFull,
    /// Part of the request body went by before the mirror saw the request (an earlier stage
    /// held the request, e.g. an injected delay), so no complete copy can be made.
    BodyUnavailable,
}

impl SkipReason {
    /// Every reason, for defining metrics up front.
    pub const ALL: [SkipReason; 6] = [
        SkipReason::SampledOut,
        SkipReason::Method,
        SkipReason::BodyTooLarge,
        SkipReason::RateCapped,
        SkipReason::QueueFull,
        SkipReason::BodyUnavailable,
    ];

    /// The metric label: `sampled_out`, `method`, `body_too_large`, `rate_capped`,
    /// `queue_full`, `body_unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::SampledOut => "sampled_out",
            SkipReason::Method => "method",
            SkipReason::BodyTooLarge => "body_too_large",
            SkipReason::RateCapped => "rate_capped",
            SkipReason::QueueFull => "queue_full",
            SkipReason::BodyUnavailable => "body_unavailable",
        }
    }
}

/// The decision taken on a request's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Indices of the targets that get a copy (so far; body size, rate cap and queue bounds
    /// are checked later).
    pub chosen: Vec<usize>,
    /// One entry per copy not sent.
    pub skipped: Vec<SkipReason>,
}

impl CompiledMirror {
    /// Decides which targets get a copy of a request, from its headers. `random` yields
    /// uniformly distributed draws for non-sticky sampling.
    pub fn select(&self, req: &RequestHeaders, random: &mut impl Random) -> Selection {
        let n = self.targets.len();
        if !self
            .methods
            .allows(req.method(), req.get("upgrade").is_some())
        {
            return Selection {
                chosen: Vec::new(),
                skipped: vec![SkipReason::Method; n],
            };
        }
        let sticky_value = self
            .sticky
            .as_ref()
            .and_then(|s| req.get(&s.header).map(|v| (s.seed, v)));
        let mut sel = Selection::default();
        for (i, t) in self.targets.iter().enumerate() {
            let draw = match sticky_value {
                Some((seed, value)) => sticky_hash(seed, value, i),
                None => random.next_u64(),
            };
            if t.percentage.selects(draw) {
                sel.chosen.push(i);
            } else {
                sel.skipped.push(SkipReason::SampledOut);
            }
        }
        if !sel.chosen.is_empty()
            && declared_too_large(req.get("content-length"), self.max_body_bytes)
        {
            sel.skipped.extend(std::iter::repeat_n(
                SkipReason::BodyTooLarge,
                sel.chosen.len(),
            ));
            sel.chosen.clear();
        }
        sel
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::MirrorSpec;
    use crate::random::SplitMix64;
    use crate::spec::from_value;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> CompiledMirror {
        from_value::<MirrorSpec>("spec", &v)
            .unwrap()
            .compile()
            .unwrap()
    }

    fn req(method: &str, extra: &[(&str, &str)]) -> RequestHeaders {
        let mut pairs = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), b"/".to_vec()),
        ];
        pairs.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
        );
        RequestHeaders::new(pairs)
    }

    /// A deterministic generator for tests.
    fn rng(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    #[test]
    fn unsafe_methods_are_skipped_for_every_target() {
        let p = policy(
            json!({"mirrors": [{"target": {"cluster": "a"}}, {"target": {"cluster": "b"}}]}),
        );
        let s = p.select(&req("POST", &[]), &mut rng(1));
        assert!(s.chosen.is_empty());
        assert_eq!(s.skipped, vec![SkipReason::Method, SkipReason::Method]);
        let s = p.select(&req("GET", &[("upgrade", "websocket")]), &mut rng(1));
        assert_eq!(s.skipped.len(), 2);
        assert_eq!(p.select(&req("GET", &[]), &mut rng(1)).chosen, vec![0, 1]);
    }

    #[test]
    fn random_sampling_follows_each_percentage() {
        let p = policy(json!({"mirrors": [
            {"target": {"cluster": "a"}, "percentage": {"value": 25}},
            {"target": {"cluster": "b"}, "percentage": {"value": 0}}
        ]}));
        let mut r = rng(9);
        let n = 40_000;
        let mut hits = 0;
        for _ in 0..n {
            let s = p.select(&req("GET", &[]), &mut r);
            assert!(!s.chosen.contains(&1));
            hits += s.chosen.len();
            assert_eq!(s.chosen.len() + s.skipped.len(), 2);
        }
        // 25 % of 40 000 = 10 000, sd ≈ 87: allow 4 sd.
        assert!((9_650..=10_350).contains(&hits), "{hits}");
    }

    #[test]
    fn sticky_sampling_is_stable_per_user() {
        let p = policy(json!({
            "mirrors": [{"target": {"cluster": "a"}, "percentage": {"value": 50}}],
            "sticky": {"header": "x-user", "seed": 3}
        }));
        for u in 0..200 {
            let user = format!("user-{u}");
            let first = p
                .select(&req("GET", &[("x-user", &user)]), &mut rng(u))
                .chosen;
            for k in 0..5 {
                assert_eq!(
                    p.select(&req("GET", &[("x-user", &user)]), &mut rng(k * 1000 + u))
                        .chosen,
                    first
                );
            }
        }
    }

    #[test]
    fn declared_large_bodies_are_skipped_up_front() {
        let p = policy(
            json!({"mirrors": [{"target": {"cluster": "a"}}], "allowUnsafeMethods": true, "maxBodyBytes": 10}),
        );
        let s = p.select(&req("POST", &[("content-length", "11")]), &mut rng(1));
        assert_eq!(s.skipped, vec![SkipReason::BodyTooLarge]);
        let s = p.select(&req("POST", &[("content-length", "10")]), &mut rng(1));
        assert_eq!(s.chosen, vec![0]);
    }

    #[test]
    fn reason_labels_are_stable() {
        let labels: Vec<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "sampled_out",
                "method",
                "body_too_large",
                "rate_capped",
                "queue_full",
                "body_unavailable"
            ]
        );
    }
}
