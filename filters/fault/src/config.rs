//! The configuration a worker runs: the validated policies plus what the filter derives for
//! each (metrics, shared-data keys, when the proxy first saw it).

use crate::metrics::FaultMetrics;
use crate::shared::{self, PolicyKeys};
use meshwarden_common::fault::FaultSpec;
use meshwarden_common::{CompiledMatch, FilterConfig, Peer, PolicyIndex, RequestHeaders};

/// One policy, ready to run.
pub struct ActivePolicy {
    pub name: String,
    pub matcher: CompiledMatch,
    pub spec: FaultSpec,
    /// Unix ms when this proxy first saw this version (the start of `ttl`).
    pub first_seen_ms: i64,
    pub metrics: FaultMetrics,
    pub keys: PolicyKeys,
}

/// The policies of one configuration, in evaluation order.
#[derive(Default)]
pub struct ActiveConfig {
    pub policies: Vec<ActivePolicy>,
    index: PolicyIndex,
}

impl ActiveConfig {
    /// Prepares each policy of a validated configuration received at `now_ms`.
    pub fn new(config: FilterConfig<FaultSpec>, now_ms: i64) -> Self {
        let index = config.index;
        let policies = config
            .policies
            .into_iter()
            .map(|p| {
                let name = p.name.to_string();
                let keys = PolicyKeys::new(&name);
                shared::init(&keys);
                ActivePolicy {
                    name: name.clone(),
                    first_seen_ms: shared::first_seen(&name, &p.version, now_ms),
                    metrics: FaultMetrics::new(&name),
                    matcher: p.matcher,
                    spec: p.spec,
                    keys,
                }
            })
            .collect();
        Self { policies, index }
    }

    /// The first policy that applies to the request from `peer` at `now_ms`: its match and
    /// source select the request and it has not expired.
    pub fn select(&self, headers: &RequestHeaders, peer: &Peer, now_ms: i64) -> Option<usize> {
        self.index
            .candidates(headers)
            .into_iter()
            .map(|i| i as usize)
            .find(|&i| {
                let p = &self.policies[i];
                p.matcher.matches(headers)
                    && p.spec.source_matches(headers, peer)
                    && !p.spec.expired(p.first_seen_ms, now_ms)
            })
    }
}
