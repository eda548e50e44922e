//! What a policy does to one request: targeting, expiry and the faults selected.

use super::header_control::AbortStatus;
use super::select::{Random, Salt, Selector};
use super::spec::{FaultSpec, HttpStatus};
use crate::peer::Peer;
use crate::request::RequestHeaders;

/// Body of an abort when the policy sets none (the same text as Envoy's fault filter).
pub const DEFAULT_ABORT_BODY: &str = "fault filter abort";

/// An abort chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortPlan {
    pub status: AbortStatus,
    /// Requested by `x-envoy-fault-*` headers (then the policy's body/headers do not apply).
    pub from_header: bool,
}

/// The faults selected for one request. Delay comes first; an abort is sent when the delay
/// ends (as Envoy's fault filter does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub delay_ms: Option<u64>,
    pub abort: Option<AbortPlan>,
    pub response_delay_ms: Option<u64>,
    pub response_override: bool,
    /// The request asked for faults with `x-envoy-fault-*` headers but its caller is not
    /// allowed to (`headerControl.identities`); the headers were ignored.
    pub header_request_refused: bool,
}

impl FaultPlan {
    /// Whether no fault was selected.
    pub fn is_empty(&self) -> bool {
        self.delay_ms.is_none()
            && self.abort.is_none()
            && self.response_delay_ms.is_none()
            && !self.response_override
    }
}

/// A local answer to send for an abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortResponse<'a> {
    Http {
        status: u16,
        body: &'a str,
        headers: Vec<(&'a str, &'a str)>,
    },
    /// A trailers-only gRPC answer (HTTP 200, `grpc-status`, `grpc-message`).
    Grpc {
        code: u8,
        message: &'a str,
        headers: Vec<(&'a str, &'a str)>,
    },
}

impl FaultSpec {
    /// Whether the request comes from a targeted caller (always, without `source`): its
    /// peer certificate identity (read from `peer` only if the policy names identities)
    /// and, when the policy trusts them, its caller headers.
    pub fn source_matches(&self, headers: &RequestHeaders, peer: &Peer) -> bool {
        let Some(src) = &self.source else {
            return true;
        };
        let one_of = |list: &[String], header: &str| {
            list.is_empty()
                || (src.trust_headers
                    && headers
                        .get(header)
                        .is_some_and(|v| list.iter().any(|l| l.as_bytes() == v)))
        };
        one_of(&src.clusters, src.cluster_header.as_str())
            && one_of(&src.nodes, src.node_header.as_str())
            && (src.identities.is_empty() || peer.matches_any(&src.identities))
    }

    /// The instant (Unix ms) injection stops, given when this proxy first saw this version of
    /// the policy: the earlier of `first_seen + ttl` and `expiresAt`.
    pub fn deadline_ms(&self, first_seen_ms: i64) -> Option<i64> {
        let ttl = self.ttl.map(|t| {
            first_seen_ms.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
        });
        let at = self.expires_at.as_ref().map(|t| t.unix_millis());
        match (ttl, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the policy has expired at `now_ms`.
    pub fn expired(&self, first_seen_ms: i64, now_ms: i64) -> bool {
        self.deadline_ms(first_seen_ms).is_some_and(|d| now_ms >= d)
    }

    /// Selects the faults for a request that matched this policy. Header-requested faults
    /// (when enabled, valid and sent by an allowed `peer`) replace the configured ones of
    /// the same type.
    pub fn plan<E: Random>(
        &self,
        headers: &RequestHeaders,
        peer: &Peer,
        entropy: &mut E,
    ) -> FaultPlan {
        let requested = self
            .header_control
            .as_ref()
            .map(|h| h.read(headers, peer))
            .unwrap_or_default();
        let mut sel = Selector::new(self.sticky.as_deref(), headers, entropy);
        let mut plan = FaultPlan {
            header_request_refused: requested.refused,
            ..FaultPlan::default()
        };

        if let Some((ms, pct)) = requested.delay {
            plan.delay_ms = sel.selects(pct, Salt::Delay).then_some(ms);
        } else if let Some(d) = &self.delay {
            if sel.selects(d.percentage(), Salt::Delay) {
                plan.delay_ms = Some(d.sample_millis(sel.random()));
            }
        }

        if let Some((status, pct)) = requested.abort {
            plan.abort = sel.selects(pct, Salt::Abort).then_some(AbortPlan {
                status,
                from_header: true,
            });
        } else if let Some(a) = &self.abort {
            if sel.selects(a.percentage(), Salt::Abort) {
                let status = match (a.http_status, a.grpc_status) {
                    (_, Some(g)) => AbortStatus::Grpc(g),
                    (Some(h), None) => AbortStatus::Http(h),
                    (None, None) => AbortStatus::Http(HttpStatus::new(503).expect("valid status")),
                };
                plan.abort = Some(AbortPlan {
                    status,
                    from_header: false,
                });
            }
        }

        // Response-phase faults only make sense for requests that reach the upstream.
        if plan.abort.is_none() {
            if let Some(d) = &self.response_delay {
                if sel.selects(d.percentage(), Salt::ResponseDelay) {
                    plan.response_delay_ms = Some(d.sample_millis(sel.random()));
                }
            }
            if let Some(o) = &self.response_override {
                plan.response_override = sel.selects(o.percentage(), Salt::ResponseOverride);
            }
        }
        plan
    }

    /// The local answer for an abort.
    pub fn abort_response(&self, abort: &AbortPlan) -> AbortResponse<'_> {
        let configured = self.abort.as_ref().filter(|_| !abort.from_header);
        let body = configured
            .and_then(|a| a.body.as_deref())
            .unwrap_or(DEFAULT_ABORT_BODY);
        let headers = configured
            .map(|a| {
                a.headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        match abort.status {
            AbortStatus::Http(s) => AbortResponse::Http {
                status: s.code(),
                body,
                headers,
            },
            AbortStatus::Grpc(g) => AbortResponse::Grpc {
                code: g.number(),
                message: body,
                headers,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::select::SplitMix64;
    use crate::spec::{from_value, KindSpec};
    use serde_json::{json, Value};

    fn spec(v: Value) -> FaultSpec {
        let s: FaultSpec = from_value("spec", &v).unwrap();
        s.validate().unwrap();
        s
    }

    fn req(pairs: &[(&str, &str)]) -> RequestHeaders {
        RequestHeaders::from_text(pairs)
    }

    #[test]
    fn independent_percentages() {
        let s = spec(json!({
            "delay": {"fixedDelay": "100ms", "percentage": {"value": 30}},
            "abort": {"httpStatus": 503, "percentage": {"value": 10}},
        }));
        let mut rng = SplitMix64(3);
        let h = req(&[]);
        let (mut delays, mut aborts, mut both) = (0, 0, 0);
        let n = 100_000;
        for _ in 0..n {
            let p = s.plan(&h, &Peer::default(), &mut rng);
            delays += usize::from(p.delay_ms == Some(100));
            aborts += usize::from(p.abort.is_some());
            both += usize::from(p.delay_ms.is_some() && p.abort.is_some());
        }
        assert!((29_000..31_000).contains(&delays), "{delays}");
        assert!((9_500..10_500).contains(&aborts), "{aborts}");
        // Independent: P(both) ≈ 3 %.
        assert!((2_700..3_300).contains(&both), "{both}");
    }

    #[test]
    fn header_faults_replace_configured_ones() {
        let s = spec(json!({
            "abort": {"httpStatus": 503, "percentage": {"value": 0}},
            "headerControl": {"enabled": true, "maxDelay": "50ms", "anyCaller": true},
        }));
        let mut rng = SplitMix64(3);
        let p = s.plan(
            &req(&[
                ("x-envoy-fault-abort-request", "429"),
                ("x-envoy-fault-delay-request", "900"),
            ]),
            &Peer::default(),
            &mut rng,
        );
        assert_eq!(p.delay_ms, Some(50));
        let abort = p.abort.unwrap();
        assert!(abort.from_header);
        assert_eq!(
            s.abort_response(&abort),
            AbortResponse::Http {
                status: 429,
                body: DEFAULT_ABORT_BODY,
                headers: vec![]
            }
        );
        assert!(s.plan(&req(&[]), &Peer::default(), &mut rng).is_empty());
    }

    #[test]
    fn abort_response_uses_the_policy_payload() {
        let s = spec(
            json!({"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}, "body": "try later", "headers": {"x-a": "1"}}}),
        );
        let p = s.plan(&req(&[]), &Peer::default(), &mut SplitMix64(0));
        assert_eq!(
            s.abort_response(&p.abort.unwrap()),
            AbortResponse::Grpc {
                code: 14,
                message: "try later",
                headers: vec![("x-a", "1")]
            }
        );
        assert!(!p.response_override);
    }

    #[test]
    fn response_faults_skip_aborted_requests() {
        let s = spec(json!({
            "abort": {"httpStatus": 503, "percentage": {"value": 50}},
            "responseDelay": {"fixedDelay": "10ms", "percentage": {"value": 100}},
            "responseOverride": {"httpStatus": 500, "percentage": {"value": 100}},
        }));
        let mut rng = SplitMix64(11);
        for _ in 0..1000 {
            let p = s.plan(&req(&[]), &Peer::default(), &mut rng);
            assert_eq!(p.abort.is_some(), p.response_delay_ms.is_none());
            assert_eq!(p.abort.is_some(), !p.response_override);
        }
    }

    #[test]
    fn source_targeting_by_trusted_headers() {
        let s = spec(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 100}}, "source": {"clusters": ["web"], "nodes": ["n1", "n2"], "trustHeaders": true}}),
        );
        let anon = Peer::default();
        assert!(s.source_matches(
            &req(&[
                ("x-envoy-downstream-service-cluster", "web"),
                ("x-envoy-downstream-service-node", "n2")
            ]),
            &anon
        ));
        assert!(!s.source_matches(
            &req(&[("x-envoy-downstream-service-cluster", "web")]),
            &anon
        ));
        assert!(!s.source_matches(
            &req(&[
                ("x-envoy-downstream-service-cluster", "api"),
                ("x-envoy-downstream-service-node", "n1")
            ]),
            &anon
        ));
        let custom = spec(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 100}}, "source": {"clusters": ["web"], "clusterHeader": "x-caller", "trustHeaders": true}}),
        );
        assert!(custom.source_matches(&req(&[("x-caller", "web")]), &anon));
        assert!(
            spec(json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}}))
                .source_matches(&req(&[]), &anon)
        );
    }

    #[test]
    fn source_targeting_by_peer_identity_ignores_caller_headers() {
        let s = spec(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 100}}, "source": {"identities": ["spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/qa/*"]}}),
        );
        let forged = req(&[("x-envoy-downstream-service-cluster", "web")]);
        let web = Peer::known(Some("spiffe://cluster.local/ns/shop/sa/web"));
        let qa = Peer::known(Some("spiffe://cluster.local/ns/qa/sa/bot"));
        let api = Peer::known(Some("spiffe://cluster.local/ns/shop/sa/api"));
        assert!(s.source_matches(&req(&[]), &web));
        assert!(s.source_matches(&req(&[]), &qa));
        assert!(!s.source_matches(&forged, &api));
        assert!(!s.source_matches(&forged, &Peer::default()));
        // A policy that did not opt in to trusting headers never reads them.
        let mut untrusted = s.clone();
        let src = untrusted.source.as_mut().unwrap();
        src.clusters = vec!["web".into()];
        assert!(!untrusted.source_matches(&forged, &web));
    }

    #[test]
    fn header_faults_only_for_allowed_callers() {
        let s = spec(json!({
            "headerControl": {"enabled": true, "identities": ["spiffe://cluster.local/ns/qa/*"]},
        }));
        let h = req(&[("x-envoy-fault-abort-request", "503")]);
        let mut rng = SplitMix64(1);
        let qa = Peer::known(Some("spiffe://cluster.local/ns/qa/sa/bot"));
        assert!(s.plan(&h, &qa, &mut rng).abort.is_some());
        let prod = Peer::known(Some("spiffe://cluster.local/ns/prod/sa/web"));
        assert!(s.plan(&h, &prod, &mut rng).is_empty());
        assert!(s.plan(&h, &Peer::default(), &mut rng).is_empty());
    }

    #[test]
    fn ttl_and_expiry() {
        let s =
            spec(json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}, "ttl": "10s"}));
        assert_eq!(s.deadline_ms(1_000), Some(11_000));
        assert!(!s.expired(1_000, 10_999));
        assert!(s.expired(1_000, 11_000));
        let s = spec(
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}, "ttl": "1h", "expiresAt": "1970-01-01T00:00:05Z"}),
        );
        assert_eq!(s.deadline_ms(0), Some(5_000), "the earlier deadline wins");
        let s = spec(json!({"abort": {"httpStatus": 503, "percentage": {"value": 1}}}));
        assert!(!s.expired(0, i64::MAX));
    }

    #[test]
    fn sticky_users_get_a_stable_plan() {
        let s = spec(json!({
            "abort": {"httpStatus": 503, "percentage": {"value": 50}},
            "sticky": {"header": "x-user-id", "seed": 42},
        }));
        let mut rng = SplitMix64(5);
        for u in 0..200 {
            let id = format!("u{u}");
            let h = req(&[("x-user-id", &id)]);
            let first = s.plan(&h, &Peer::default(), &mut rng);
            for _ in 0..3 {
                assert_eq!(s.plan(&h, &Peer::default(), &mut rng), first);
            }
        }
        assert!(
            s.plan(&req(&[]), &Peer::default(), &mut rng).is_empty(),
            "no key, no fault"
        );
    }

    #[test]
    fn header_requested_percentages_never_exceed_the_cap() {
        let s = spec(json!({
            "headerControl": {"enabled": true, "maxDelay": "20ms", "maxPercentage": {"value": 10}, "allowedStatuses": [503], "anyCaller": true},
        }));
        let h = req(&[
            ("x-envoy-fault-abort-request", "503"),
            ("x-envoy-fault-abort-request-percentage", "100"),
            ("x-envoy-fault-delay-request", "99999999"),
            ("x-envoy-fault-delay-request-percentage", "1e2"),
        ]);
        let mut rng = SplitMix64(17);
        let n = 50_000;
        let (mut aborts, mut delays) = (0, 0);
        for _ in 0..n {
            let p = s.plan(&h, &Peer::default(), &mut rng);
            aborts += usize::from(p.abort.is_some());
            if let Some(ms) = p.delay_ms {
                assert_eq!(ms, 20);
                delays += 1;
            }
        }
        // 10 % cap: 5,000 expected; a 99.9 % binomial bound is about ±220.
        assert!((4_700..5_300).contains(&aborts), "{aborts}");
        assert!((4_700..5_300).contains(&delays), "{delays}");
    }
}
