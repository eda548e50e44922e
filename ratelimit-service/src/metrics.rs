//! Prometheus metrics served on `/metrics`.
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `meshwarden_rls_decisions_total` | counter | `domain`, `outcome` = `ok`, `over_limit`, `failure_allowed`, `failure_denied` |
//! | `meshwarden_rls_descriptors_total` | counter | `domain`, `limit`, `result` = `ok`, `over_limit`, `dry_run_over_limit` |
//! | `meshwarden_rls_redis_duration_seconds` | histogram | — (every script call that reached Redis) |
//! | `meshwarden_rls_redis_errors_total` | counter | `kind` = `timeout`, `overloaded`, `connection`, `server`, `reply` |
//! | `meshwarden_rls_redis_in_flight` | gauge | — |
//! | `meshwarden_rls_redis_up` | gauge | — (1 when the last health check or call succeeded) |
//! | `meshwarden_rls_config_reloads_total` | counter | `result` = `ok`, `error` |
//! | `meshwarden_rls_config_fetches_total` | counter | `result` = `ok`, `error` (`--config-url` polls) |
//!
//! `domain` is a configured domain or `(unconfigured)`, and `limit` a configured limit
//! name, so label sets stay bounded whatever clients send.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::encode`] output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `domain` label of requests for a domain the limits file does not have.
pub const UNCONFIGURED_DOMAIN: &str = "(unconfigured)";

/// Labels of `decisions_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub domain: String,
    pub outcome: &'static str,
}

/// Labels of `descriptors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DescriptorLabels {
    pub domain: String,
    pub limit: String,
    pub result: &'static str,
}

/// Labels of `redis_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Labels of `config_reloads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric of the service.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub descriptors: Family<DescriptorLabels, Counter>,
    pub redis_duration: Histogram,
    pub redis_errors: Family<KindLabels, Counter>,
    pub redis_in_flight: Gauge,
    pub redis_up: Gauge,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_fetches: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let descriptors = Family::<DescriptorLabels, Counter>::default();
        // 50 µs to ~1.6 s.
        let redis_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let redis_errors = Family::<KindLabels, Counter>::default();
        let redis_in_flight = Gauge::default();
        let redis_up = Gauge::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();
        let config_fetches = Family::<ResultLabels, Counter>::default();
        registry.register(
            "meshwarden_rls_decisions",
            "ShouldRateLimit answers by domain and outcome",
            decisions.clone(),
        );
        registry.register(
            "meshwarden_rls_descriptors",
            "Descriptors decided against a limit, by result",
            descriptors.clone(),
        );
        registry.register(
            "meshwarden_rls_redis_duration_seconds",
            "Time of each decision script call to Redis, errors and timeouts included",
            redis_duration.clone(),
        );
        registry.register(
            "meshwarden_rls_redis_errors",
            "Redis calls that gave no decision, by kind",
            redis_errors.clone(),
        );
        registry.register(
            "meshwarden_rls_redis_in_flight",
            "Redis calls waiting for an answer",
            redis_in_flight.clone(),
        );
        registry.register(
            "meshwarden_rls_redis_up",
            "1 when the last Redis health check or call succeeded",
            redis_up.clone(),
        );
        registry.register(
            "meshwarden_rls_config_reloads",
            "Limits file reloads by result",
            config_reloads.clone(),
        );
        registry.register(
            "meshwarden_rls_config_fetches",
            "Polls of --config-url by result (an error keeps the last good limits)",
            config_fetches.clone(),
        );
        Self {
            registry,
            decisions,
            descriptors,
            redis_duration,
            redis_errors,
            redis_in_flight,
            redis_up,
            config_reloads,
            config_fetches,
        }
    }

    /// Counts one Redis error.
    pub fn redis_error(&self, kind: &'static str) {
        self.redis_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
