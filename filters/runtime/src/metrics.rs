//! Per-policy metrics, named so Envoy's Prometheus endpoint shows
//! `meshwarden_<filter>_<metric>{policy="<name>"}`.
//!
//! # Naming scheme
//!
//! A Wasm module can only give Envoy a flat stat name (no tags), and Envoy files it under
//! the `wasmcustom` namespace. Each metric is therefore defined as
//!
//! ```text
//! meshwarden_<filter>_<metric>[_total].policy.<policy name>
//! ```
//!
//! (`_total` is appended to counters). Envoy shows it in `/stats` as
//! `meshwarden_trace_started_total.policy.checkout.v2: 7`. With the bootstrap's
//! `stats_config.stats_tags` entry [`STATS_TAGS_YAML`], the `.policy.<name>` suffix becomes
//! a `policy` tag, so `/stats/prometheus` shows
//! `meshwarden_trace_started_total{policy="checkout.v2"} 7` (custom namespaces get no
//! `envoy_` prefix). Policy names are DNS-1123 subdomains (`[a-z0-9.-]`), so the suffix is
//! unambiguous even with dots. Without the tag rule the metric still appears, as
//! `meshwarden_trace_started_total_policy_checkout_v2`.
//!
//! A metric with a second label (the rate limit's `shed_total` by class) is named
//! `meshwarden_<filter>_<metric>[_total].class.<class>.policy.<policy>`, and the second
//! rule of [`STATS_TAGS_YAML`] makes `.class.<class>` a `class` tag:
//! `meshwarden_ratelimit_shed_total{class="critical",policy="api"}`.
//!
//! Ids are defined lazily per VM (each Envoy worker has its own) and cached by name;
//! defining the same name again in another VM or after a reconfiguration yields the same
//! Envoy stat.

use crate::host::host;
pub use crate::host::MetricKind;
use std::cell::RefCell;
use std::collections::HashMap;

/// First part of every meshwarden stat name.
pub const PREFIX: &str = "meshwarden_";
/// Separator and tag name between a metric and its policy.
pub const POLICY_SUFFIX: &str = ".policy.";
/// Envoy tag name carrying the policy.
pub const POLICY_TAG: &str = "policy";
/// Separator and tag name between a metric and its class, before the policy.
pub const CLASS_SUFFIX: &str = ".class.";
/// Envoy tag name carrying the class.
pub const CLASS_TAG: &str = "class";
/// Regex for Envoy's `stats_config.stats_tags`: the first group (removed from the name) is
/// `.policy.<name>`, the second (the tag value) is the policy name; a `.class.<class>`
/// before it is skipped.
pub const POLICY_TAG_REGEX: &str =
    r"^wasmcustom\.meshwarden_[a-z0-9_]+(?:\.class\.[a-z0-9.-]+?)?(\.policy\.([a-z0-9.-]+))$";
/// Regex of the `class` tag: `.class.<class>` before the policy.
pub const CLASS_TAG_REGEX: &str =
    r"^wasmcustom\.meshwarden_[a-z0-9_]+(\.class\.([a-z0-9.-]+?))\.policy\.[a-z0-9.-]+$";
/// The `stats_config` body for an Envoy bootstrap (indented for a top-level
/// `stats_config:` key), turning `.policy.<name>` into a `policy` label and
/// `.class.<class>` into a `class` label.
pub const STATS_TAGS_YAML: &str = r"  stats_tags:
  - tag_name: policy
    regex: '^wasmcustom\.meshwarden_[a-z0-9_]+(?:\.class\.[a-z0-9.-]+?)?(\.policy\.([a-z0-9.-]+))$'
  - tag_name: class
    regex: '^wasmcustom\.meshwarden_[a-z0-9_]+(\.class\.([a-z0-9.-]+?))\.policy\.[a-z0-9.-]+$'";

type Ids = HashMap<(&'static str, &'static str), HashMap<String, u32>>;

thread_local! {
    /// Defined ids by (filter, metric), then policy (or labels): an event costs no
    /// allocation (a class-labelled one costs one).
    static IDS: RefCell<Ids> = RefCell::new(HashMap::new());
}

/// Metrics of one filter, labelled by policy.
#[derive(Debug, Clone, Copy)]
pub struct PolicyMetrics {
    filter: &'static str,
}

impl PolicyMetrics {
    /// Metrics of filter `filter` (`trace`, `fault`, ...).
    pub const fn new(filter: &'static str) -> Self {
        Self { filter }
    }

    /// The filter's name (`trace`, `fault`, ...).
    pub const fn filter(&self) -> &'static str {
        self.filter
    }

    /// The Envoy stat name of `metric` for `policy`.
    pub fn stat_name(&self, metric: &str, kind: MetricKind, policy: &str) -> String {
        stat_name(self.filter, metric, kind, policy)
    }

    /// Defines (once per VM) and returns the id of a metric; `None` if the host refuses.
    pub fn id(&self, metric: &'static str, kind: MetricKind, policy: &str) -> Option<u32> {
        let name = || self.stat_name(metric, kind, policy);
        self.cached(metric, policy, name, kind)
    }

    /// [`Self::id`] of counter `metric` of `policy` labelled `class`.
    pub fn class_id(&self, metric: &'static str, class: &str, policy: &str) -> Option<u32> {
        let labels = format!("{CLASS_SUFFIX}{class}{POLICY_SUFFIX}{policy}");
        let name = || format!("{PREFIX}{}_{metric}_total{labels}", self.filter);
        self.cached(metric, &labels, name, MetricKind::Counter)
    }

    /// The id of `metric` under `key` (its labels), defining it as `name` the first time.
    fn cached(
        &self,
        metric: &'static str,
        key: &str,
        name: impl FnOnce() -> String,
        kind: MetricKind,
    ) -> Option<u32> {
        IDS.with(|ids| {
            let mut ids = ids.borrow_mut();
            let by_key = ids.entry((self.filter, metric)).or_default();
            if let Some(id) = by_key.get(key) {
                return Some(*id);
            }
            let id = host().define_metric(kind, &name())?;
            by_key.insert(key.to_string(), id);
            Some(id)
        })
    }

    /// Adds 1 to counter `metric` of `policy` labelled `class`.
    pub fn increment_class(&self, metric: &'static str, class: &str, policy: &str) {
        if let Some(id) = self.class_id(metric, class, policy) {
            host().add_metric(id, 1);
        }
    }

    /// Defines every `(metric, kind)` for every policy, so they show up (as 0) before the
    /// first event.
    pub fn define_all<'a>(
        &self,
        policies: impl IntoIterator<Item = &'a str>,
        metrics: &[(&'static str, MetricKind)],
    ) {
        for policy in policies {
            for (metric, kind) in metrics {
                let _ = self.id(metric, *kind, policy);
            }
        }
    }

    /// Adds 1 to counter `metric` of `policy`.
    pub fn increment(&self, metric: &'static str, policy: &str) {
        self.add(metric, policy, 1);
    }

    /// Adds `n` to counter `metric` of `policy`.
    pub fn add(&self, metric: &'static str, policy: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(id) = self.id(metric, MetricKind::Counter, policy) {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            host().add_metric(id, n);
        }
    }

    /// Adds `delta` (may be negative) to gauge `metric` of `policy`.
    pub fn gauge_add(&self, metric: &'static str, policy: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.id(metric, MetricKind::Gauge, policy) {
            host().add_metric(id, delta);
        }
    }

    /// Sets gauge `metric` of `policy` (last writer wins across workers).
    pub fn gauge_set(&self, metric: &'static str, policy: &str, value: u64) {
        if let Some(id) = self.id(metric, MetricKind::Gauge, policy) {
            host().record_metric(id, value);
        }
    }

    /// Records `value` in histogram `metric` of `policy`.
    pub fn record(&self, metric: &'static str, policy: &str, value: u64) {
        if let Some(id) = self.id(metric, MetricKind::Histogram, policy) {
            host().record_metric(id, value);
        }
    }
}

/// `meshwarden_<filter>_<metric>[_total].policy.<policy>`.
pub fn stat_name(filter: &str, metric: &str, kind: MetricKind, policy: &str) -> String {
    let total = if kind == MetricKind::Counter {
        "_total"
    } else {
        ""
    };
    format!("{PREFIX}{filter}_{metric}{total}{POLICY_SUFFIX}{policy}")
}
