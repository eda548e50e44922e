//! Prometheus metrics of the control plane, read from their sources at scrape time:
//! the policy registry (policies per kind, applies, rejections, store generation) and the
//! xDS server (proxies, pushes, ACKs, NACKs).

use crate::registry::{Outcome, PolicyRegistry};
use crate::store::StoreHealth;
use crate::xds::{ProxyRegistry, XdsStats};
use meshwarden_common::Kind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;

/// Content type of [`Metrics::encode`] output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics registry served on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics with the policy registry's collector registered.
    pub fn new(policies: Arc<PolicyRegistry>) -> Self {
        let mut m = Self::default();
        m.register(Box::new(PolicyCollector { policies }));
        m
    }

    /// Adds a collector (e.g. the xDS server's).
    pub fn register(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Writes one unlabelled gauge.
pub fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Writes one unlabelled counter (`_total` is appended to `name`).
pub fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes a gauge family with one label.
pub fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, i64)],
) -> fmt::Result {
    let mut family =
        enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (value, n) in values {
        let labels = [(label, *value)];
        ConstGauge::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes a counter family with one label (`_total` is appended to `name`).
pub fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> fmt::Result {
    let mut family =
        enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, n) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Saturating conversion for gauges.
pub fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Reads the policy registry on each scrape.
#[derive(Debug)]
struct PolicyCollector {
    policies: Arc<PolicyRegistry>,
}

impl Collector for PolicyCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let set = self.policies.current();
        let per_kind: Vec<(&str, i64)> = Kind::ALL
            .iter()
            .map(|&k| (k.as_str(), to_i64(set.of_kind(k).count())))
            .collect();
        gauge_family(
            &mut enc,
            "meshwarden_policies",
            "Stored policies, by kind.",
            "kind",
            &per_kind,
        )?;
        let stats = self.policies.stats();
        let outcomes: Vec<(&str, u64)> = [Outcome::Created, Outcome::Updated, Outcome::Unchanged]
            .iter()
            .map(|&o| (o.as_str(), stats.applies(o)))
            .collect();
        counter_family(
            &mut enc,
            "meshwarden_policy_applies",
            "Policies applied, by outcome (dry runs excluded).",
            "outcome",
            &outcomes,
        )?;
        counter(
            &mut enc,
            "meshwarden_policy_rejections",
            "Apply requests refused because a document was invalid.",
            stats.rejections(),
        )?;
        counter(
            &mut enc,
            "meshwarden_policy_conflicts",
            "Apply requests refused because a policy had changed since the revision they were based on (optimistic concurrency).",
            stats.conflicts(),
        )?;
        counter(
            &mut enc,
            "meshwarden_store_reloads",
            "Reloads of a shared store (replicas on etcd) that found changes made by another replica.",
            stats.reloads(),
        )?;
        counter(
            &mut enc,
            "meshwarden_store_stale_retries",
            "Writes retried because another replica committed first (shared store).",
            stats.stale_retries(),
        )?;
        gauge(
            &mut enc,
            "meshwarden_store_generation",
            "Store generation: incremented by every committed change.",
            to_i64(set.generation),
        )?;
        gauge(
            &mut enc,
            "meshwarden_store_invalid_records",
            "Stored records that failed validation at startup and are not served.",
            to_i64(self.policies.invalid_records().len()),
        )?;
        let halted: Vec<(&str, i64)> = crate::halt::HALTABLE
            .iter()
            .map(|&k| {
                (
                    k.as_str(),
                    to_i64(set.halts.iter().filter(|h| h.kinds.contains(&k)).count()),
                )
            })
            .collect();
        gauge_family(
            &mut enc,
            "meshwarden_halts",
            "Halts in force (`meshwarden halt`), by halted kind; above 0 the kind is suspended on the halts' proxies.",
            "kind",
            &halted,
        )?;
        let healthy = matches!(self.policies.store_health(), StoreHealth::Healthy);
        gauge(
            &mut enc,
            "meshwarden_store_healthy",
            "1 while the store takes writes, 0 after a failed write until it recovers.",
            i64::from(healthy),
        )?;
        counter(
            &mut enc,
            "meshwarden_store_write_errors",
            "Store writes that failed (e.g. a full disk).",
            self.policies.store_write_errors(),
        )
    }
}

/// Reads the xDS server's counters and proxy registry on each scrape.
#[derive(Debug)]
pub struct XdsCollector {
    stats: Arc<XdsStats>,
    proxies: ProxyRegistry,
}

impl XdsCollector {
    /// A collector for one xDS server.
    pub fn new(stats: Arc<XdsStats>, proxies: ProxyRegistry) -> Self {
        Self { stats, proxies }
    }
}

impl Collector for XdsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.stats;
        gauge(
            &mut enc,
            "meshwarden_xds_connected_proxies",
            "ADS streams open now.",
            to_i64(XdsStats::get(&s.connected)),
        )?;
        let counters = [
            (
                "meshwarden_xds_streams",
                "ADS streams opened.",
                &s.streams_total,
            ),
            (
                "meshwarden_xds_pushes",
                "Responses carrying meshwarden resources.",
                &s.pushes_total,
            ),
            (
                "meshwarden_xds_resources_sent",
                "Resources sent, summed over responses.",
                &s.resources_sent_total,
            ),
            (
                "meshwarden_xds_acks",
                "Responses the proxies accepted.",
                &s.acks_total,
            ),
            (
                "meshwarden_xds_nacks",
                "Responses the proxies rejected.",
                &s.nacks_total,
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut enc, name, help, XdsStats::get(value))?;
        }
        // A resource is rejecting when its last NACK is newer than its last ACK.
        let rejecting = self
            .proxies
            .list()
            .iter()
            .filter(|p| p.disconnected_at.is_none())
            .flat_map(|p| &p.resources)
            .filter(|r| match (&r.last_nack, &r.accepted) {
                (Some(n), Some(a)) => n.at >= a.at,
                (Some(_), None) => true,
                (None, _) => false,
            })
            .count();
        gauge(
            &mut enc,
            "meshwarden_xds_rejected_resources",
            "Resources on connected proxies whose latest version was rejected (NACK).",
            to_i64(rejecting),
        )?;
        let latency = self.proxies.push_latency();
        let family = latency.histograms();
        family.encode(enc.encode_descriptor(
            "meshwarden_xds_push_latency_seconds",
            "From a committed policy change (apply, delete, halt, resume) to a proxy's ACK of the resource version it produced; one observation per proxy and filter resource.",
            None,
            family.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exposes_policy_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(PolicyRegistry::open(dir.path()).unwrap());
        let doc = json!({"apiVersion": meshwarden_common::API_VERSION, "kind": "TracePolicy",
            "metadata": {"name": "a"}, "spec": {}});
        reg.apply(vec![doc.clone()], false).unwrap();
        reg.apply(vec![doc], false).unwrap();
        let _ = reg.apply(vec![json!({})], false);
        let fault_only = crate::halt::Halt::new(
            "f",
            &["fault".into()],
            meshwarden_common::Selector::default(),
            String::new(),
            0,
        )
        .unwrap();
        reg.halt(fault_only).unwrap();
        let mut metrics = Metrics::new(reg);
        metrics.register(Box::new(XdsCollector::new(
            Arc::new(XdsStats::default()),
            ProxyRegistry::new(),
        )));
        let text = metrics.encode().unwrap();
        for line in [
            "meshwarden_policies{kind=\"TracePolicy\"} 1",
            "meshwarden_policies{kind=\"FaultPolicy\"} 0",
            "meshwarden_policy_applies_total{outcome=\"created\"} 1",
            "meshwarden_policy_applies_total{outcome=\"unchanged\"} 1",
            "meshwarden_policy_rejections_total 1",
            "meshwarden_policy_conflicts_total 0",
            "meshwarden_store_reloads_total 0",
            "meshwarden_store_generation 1",
            "meshwarden_store_invalid_records 0",
            "meshwarden_halts{kind=\"FaultPolicy\"} 1",
            "meshwarden_halts{kind=\"MirrorPolicy\"} 0",
            "meshwarden_xds_connected_proxies 0",
            "meshwarden_xds_nacks_total 0",
            "meshwarden_xds_rejected_resources 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
