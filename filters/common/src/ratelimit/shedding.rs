//! `RateLimitPolicy.spec.shedding`: a concurrency limit the policy finds or derives by
//! itself, with request classes shed in priority order.
//!
//! ```yaml
//! shedding:
//!   adaptive: {}                          # or: utilization: {capacity: 200, threshold: {value: 85}}
//!   defaultShare: {value: 80}             # unclassified requests use 80 % of the limit
//!   classes:                              # first match wins
//!   - name: health
//!     match: {path: {prefix: /healthz}}
//!     share: {value: 100}                 # may use the whole limit: shed last
//!   status: 503                           # or 429
//!   retryAfter: 1s
//! ```
//!
//! The limit is either **adaptive** (the gradient algorithm of [`super::gradient`]) or a
//! **utilization** threshold of a declared capacity (`capacity × threshold`, rounded down,
//! at least 1). A request may enter while the policy's in-flight count (every class
//! together, every worker of the proxy) is below its class's share of the limit: with a
//! limit of 10, an 80 % class is shed from 8 in flight on, a 100 % class only at 10.

use super::gradient::GradientParams;
use crate::duration::DurationSpec;
use crate::error::ValidationError;
use crate::matcher::{CompiledMatch, RequestMatch};
use crate::names::PolicyName;
use crate::percentage::PercentSpec;
use crate::request::RequestHeaders;
use serde::{Deserialize, Serialize};

/// Default `adaptive.initialLimit`.
pub const DEFAULT_INITIAL_LIMIT: u64 = 20;
/// Default `adaptive.minLimit` (Envoy's `min_concurrency`).
pub const DEFAULT_MIN_LIMIT: u64 = 3;
/// Default `adaptive.maxLimit` (Envoy's `max_concurrency_limit`).
pub const DEFAULT_MAX_LIMIT: u64 = 1000;
/// Default `adaptive.sampleWindow` (Envoy's `concurrency_update_interval`).
pub const DEFAULT_SAMPLE_WINDOW: DurationSpec = DurationSpec::from_millis(100);
/// Default `adaptive.minRttInterval` (Envoy's `min_rtt_calc_interval`).
pub const DEFAULT_MIN_RTT_INTERVAL: DurationSpec = DurationSpec::from_millis(60_000);
/// Default `adaptive.minRttRequests` (Envoy's `request_count`).
pub const DEFAULT_MIN_RTT_REQUESTS: u64 = 50;
/// Default `adaptive.buffer`, percent (Envoy's `min_rtt_buffer`).
pub const DEFAULT_BUFFER_PERCENT: f64 = 25.0;
/// Largest limit or capacity.
pub const MAX_SHED_LIMIT: u64 = 1_000_000;
/// Most classes per policy.
pub const MAX_CLASSES: usize = 16;
/// Default `retryAfter`.
pub const DEFAULT_RETRY_AFTER: DurationSpec = DurationSpec::from_millis(1_000);

/// `shedding.adaptive`: the gradient algorithm's parameters (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdaptiveSpec {
    /// Limit after the first min-RTT probe (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_limit: Option<u64>,
    /// Floor of the limit, and the limit while the min RTT is measured (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_limit: Option<u64>,
    /// Ceiling of the limit (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_limit: Option<u64>,
    /// How often the limit is recomputed from the window's mean latency (default 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_window: Option<DurationSpec>,
    /// How often the min RTT is measured again (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rtt_interval: Option<DurationSpec>,
    /// Completed requests one min-RTT measurement averages (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rtt_requests: Option<u64>,
    /// Latency tolerated over the min RTT before the limit shrinks (default 25 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<PercentSpec>,
}

impl AdaptiveSpec {
    /// The parameters with defaults applied.
    pub fn params(&self) -> GradientParams {
        GradientParams {
            initial_limit: self.initial_limit.unwrap_or(DEFAULT_INITIAL_LIMIT),
            min_limit: self.min_limit.unwrap_or(DEFAULT_MIN_LIMIT),
            max_limit: self.max_limit.unwrap_or(DEFAULT_MAX_LIMIT),
            window_ns: ms_to_ns(self.sample_window.unwrap_or(DEFAULT_SAMPLE_WINDOW)),
            min_rtt_interval_ns: ms_to_ns(
                self.min_rtt_interval.unwrap_or(DEFAULT_MIN_RTT_INTERVAL),
            ),
            min_rtt_requests: self.min_rtt_requests.unwrap_or(DEFAULT_MIN_RTT_REQUESTS),
            buffer_ppm: (self
                .buffer
                .map_or(DEFAULT_BUFFER_PERCENT, |b| b.value.value())
                * 10_000.0) as u64,
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        let p = self.params();
        for (field, v) in [
            ("initialLimit", p.initial_limit),
            ("minLimit", p.min_limit),
            ("maxLimit", p.max_limit),
        ] {
            check_count(field, v, MAX_SHED_LIMIT)?;
        }
        if p.min_limit > p.max_limit {
            return Err(ValidationError::new(
                "minLimit",
                format!(
                    "must not exceed maxLimit ({}), got {}",
                    p.max_limit, p.min_limit
                ),
            ));
        }
        if !(p.min_limit..=p.max_limit).contains(&p.initial_limit) {
            return Err(ValidationError::new(
                "initialLimit",
                format!(
                    "must be from minLimit ({}) to maxLimit ({}), got {}",
                    p.min_limit, p.max_limit, p.initial_limit
                ),
            ));
        }
        check_count("minRttRequests", p.min_rtt_requests, 10_000)?;
        let windows = [
            ("sampleWindow", self.sample_window, 10, 60_000),
            ("minRttInterval", self.min_rtt_interval, 1_000, 3_600_000),
        ];
        for (field, d, lo, hi) in windows {
            if let Some(d) = d {
                if !(lo..=hi).contains(&d.as_millis()) {
                    return Err(ValidationError::new(
                        field,
                        format!(
                            "must be from {} to {}, got {d}",
                            DurationSpec::from_millis(lo),
                            DurationSpec::from_millis(hi)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn ms_to_ns(d: DurationSpec) -> u64 {
    d.as_millis().saturating_mul(1_000_000)
}

fn check_count(field: &str, v: u64, max: u64) -> Result<(), ValidationError> {
    if v == 0 || v > max {
        return Err(ValidationError::new(
            field,
            format!("must be from 1 to {max}, got {v}"),
        ));
    }
    Ok(())
}

/// `shedding.utilization`: shed once in-flight requests reach `threshold` of `capacity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UtilizationSpec {
    /// Requests the upstream can serve at once.
    pub capacity: u64,
    /// Share of the capacity to fill before shedding (default 100 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<PercentSpec>,
}

impl UtilizationSpec {
    /// `capacity × threshold`, rounded down, at least 1.
    pub fn limit(&self) -> u64 {
        let share = self.threshold.map_or(100.0, |t| t.value.value());
        ((self.capacity as f64 * share / 100.0) as u64).max(1)
    }
}

/// The answer to a shed request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub enum ShedStatus {
    /// 503 Service Unavailable (gRPC `UNAVAILABLE`).
    #[default]
    Unavailable,
    /// 429 Too Many Requests (gRPC `RESOURCE_EXHAUSTED`).
    TooManyRequests,
}

impl TryFrom<u16> for ShedStatus {
    type Error = String;
    fn try_from(v: u16) -> Result<Self, String> {
        match v {
            503 => Ok(Self::Unavailable),
            429 => Ok(Self::TooManyRequests),
            _ => Err(format!("must be 503 or 429, got {v}")),
        }
    }
}

impl From<ShedStatus> for u16 {
    fn from(s: ShedStatus) -> u16 {
        match s {
            ShedStatus::Unavailable => 503,
            ShedStatus::TooManyRequests => 429,
        }
    }
}

/// A request class: requests matching `match` may fill `share` of the limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShedClass {
    /// Name, for the problem body and logs (a DNS-1123 label).
    pub name: PolicyName,
    /// Which requests are in the class (the policy's own `match` syntax).
    #[serde(rename = "match")]
    pub request_match: RequestMatch,
    /// Share of the limit the class may fill (default 100 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<PercentSpec>,
}

/// `spec.shedding` of a `RateLimitPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SheddingSpec {
    /// Find the limit from measured latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveSpec>,
    /// Derive the limit from a declared capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<UtilizationSpec>,
    /// Request classes, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ShedClass>,
    /// Share of the limit requests in no class may fill (default 100 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_share: Option<PercentSpec>,
    /// Status of a shed request: 503 (default) or 429.
    #[serde(default, skip_serializing_if = "is_default")]
    pub status: ShedStatus,
    /// `Retry-After` of a shed request (default 1s, whole seconds, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<DurationSpec>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn share_of(p: Option<PercentSpec>) -> f64 {
    p.map_or(100.0, |p| p.value.value())
}

impl SheddingSpec {
    /// Validates; errors are relative to the `shedding` block.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match (&self.adaptive, &self.utilization) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "utilization",
                    "set either `adaptive` or `utilization`, not both",
                ))
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "",
                    "set `adaptive` (a limit found from latency) or `utilization` (a share of a declared capacity)",
                ))
            }
            (Some(a), None) => a.validate().map_err(|e| e.within("adaptive"))?,
            (None, Some(u)) => check_count("capacity", u.capacity, MAX_SHED_LIMIT)
                .map_err(|e| e.within("utilization"))?,
        }
        if self.classes.len() > MAX_CLASSES {
            return Err(ValidationError::new(
                "classes",
                format!("at most {MAX_CLASSES} classes, got {}", self.classes.len()),
            ));
        }
        let shares = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("classes[{i}].share"), c.share))
            .chain([("defaultShare".to_string(), self.default_share)]);
        for (field, share) in shares {
            if share.is_some_and(|s| s.value.value() <= 0.0) {
                return Err(ValidationError::new(
                    field,
                    "must be above 0 (a class with no share would never be admitted)",
                ));
            }
        }
        for (i, c) in self.classes.iter().enumerate() {
            let at = format!("classes[{i}]");
            if self.classes[..i].iter().any(|o| o.name == c.name) {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    format!("{:?} is already a class", c.name.as_str()),
                ));
            }
            c.request_match
                .compile()
                .map_err(|e| e.within(&format!("{at}.match")))?;
        }
        if let Some(r) = self.retry_after {
            if !(1_000..=3_600_000).contains(&r.as_millis()) {
                return Err(ValidationError::new(
                    "retryAfter",
                    format!("must be from 1s to 1h, got {r}"),
                ));
            }
        }
        Ok(())
    }
}

/// Where a policy's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// A fixed limit (`utilization`).
    Fixed(u64),
    /// The shared gradient state (`adaptive`).
    Adaptive(GradientParams),
}

/// A class, compiled.
#[derive(Debug, Clone)]
struct CompiledClass {
    name: PolicyName,
    matcher: CompiledMatch,
    share: f64,
}

/// Name of the class of requests no class matches.
pub const DEFAULT_CLASS: &str = "default";

/// A validated `shedding` block, ready to decide.
#[derive(Debug, Clone)]
pub struct Shedding {
    /// Where the limit comes from.
    pub source: LimitSource,
    classes: Vec<CompiledClass>,
    default_share: f64,
    /// HTTP status of a shed request.
    pub status: u16,
    /// `Retry-After`, seconds.
    pub retry_after_seconds: u64,
}

/// The class a request falls in: its name and the share of the limit it may fill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Class<'a> {
    /// The class's name ([`DEFAULT_CLASS`] for requests in none).
    pub name: &'a str,
    /// Its position in `classes` (`None`: the default class).
    pub index: Option<usize>,
    share: f64,
}

impl Class<'_> {
    /// In-flight requests this class may reach under `limit` (at least 1).
    pub fn cap(&self, limit: u64) -> u64 {
        ((limit as f64 * self.share / 100.0) as u64).max(1)
    }
}

impl Shedding {
    /// Compiles a validated block.
    pub fn new(spec: &SheddingSpec) -> Self {
        let source = match (&spec.adaptive, &spec.utilization) {
            (Some(a), _) => LimitSource::Adaptive(a.params()),
            (None, Some(u)) => LimitSource::Fixed(u.limit()),
            (None, None) => LimitSource::Fixed(MAX_SHED_LIMIT),
        };
        let classes = spec
            .classes
            .iter()
            .map(|c| CompiledClass {
                name: c.name.clone(),
                matcher: c.request_match.compile().unwrap_or_default(),
                share: share_of(c.share),
            })
            .collect();
        let retry = spec.retry_after.unwrap_or(DEFAULT_RETRY_AFTER).as_millis();
        Self {
            source,
            classes,
            default_share: share_of(spec.default_share),
            status: spec.status.into(),
            retry_after_seconds: retry.div_ceil(1_000).max(1),
        }
    }

    /// The names of the classes, [`DEFAULT_CLASS`] first.
    pub fn class_names(&self) -> impl Iterator<Item = &str> {
        let named = self.classes.iter().map(|c| c.name.as_str());
        std::iter::once(DEFAULT_CLASS).chain(named)
    }

    /// What the policy does with a request of these headers, in words (`explain`):
    /// `503 (Retry-After 1 s) once class critical has 100% of the adaptive limit (3 to
    /// 1000, found from latency) in flight`.
    pub fn explain(&self, headers: &RequestHeaders) -> String {
        let class = self.classify(headers);
        let limit = match self.source {
            LimitSource::Fixed(n) => format!("the limit of {n}"),
            LimitSource::Adaptive(p) => format!(
                "the adaptive limit ({} to {}, found from latency)",
                p.min_limit, p.max_limit
            ),
        };
        format!(
            "{} (Retry-After {} s) once class {} has {}% of {limit} in flight",
            self.status, self.retry_after_seconds, class.name, class.share
        )
    }

    /// The class of a request.
    pub fn classify(&self, headers: &RequestHeaders) -> Class<'_> {
        self.classes
            .iter()
            .position(|c| c.matcher.matches(headers))
            .map_or(
                Class {
                    name: DEFAULT_CLASS,
                    index: None,
                    share: self.default_share,
                },
                |i| Class {
                    name: self.classes[i].name.as_str(),
                    index: Some(i),
                    share: self.classes[i].share,
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::from_value;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<SheddingSpec, ValidationError> {
        let s: SheddingSpec = from_value("shedding", &v)?;
        s.validate().map_err(|e| e.within("shedding"))?;
        Ok(s)
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_round_trip() {
        let s = parse(json!({"adaptive": {}})).unwrap();
        let p = s.adaptive.as_ref().unwrap().params();
        assert_eq!((p.initial_limit, p.min_limit, p.max_limit), (20, 3, 1000));
        assert_eq!(p.window_ns, 100_000_000);
        assert_eq!(p.min_rtt_requests, 50);
        assert_eq!(p.buffer_ppm, 250_000);
        let c = Shedding::new(&s);
        assert_eq!((c.status, c.retry_after_seconds), (503, 1));
        assert_eq!(serde_json::to_value(&s).unwrap(), json!({"adaptive": {}}));
        let full = json!({
            "utilization": {"capacity": 200, "threshold": {"value": 85.0}},
            "classes": [{"name": "health", "match": {"path": {"prefix": "/healthz"}}, "share": {"value": 100.0}}],
            "defaultShare": {"value": 80.0},
            "status": 429,
            "retryAfter": "2500ms"
        });
        let s = parse(full.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), full);
        let c = Shedding::new(&s);
        assert_eq!(c.source, LimitSource::Fixed(170));
        assert_eq!((c.status, c.retry_after_seconds), (429, 3));
    }

    #[test]
    fn classes_take_their_share_of_the_limit() {
        let s = parse(json!({
            "utilization": {"capacity": 10, "threshold": {"value": 80}},
            "classes": [
                {"name": "health", "match": {"path": {"exact": "/healthz"}}},
                {"name": "critical", "match": {"headers": [{"name": "x-priority", "exact": "critical"}]}, "share": {"value": 90}}
            ],
            "defaultShare": {"value": 50}
        }))
        .unwrap();
        let c = Shedding::new(&s);
        let class = |pairs: &[(&str, &str)]| {
            let h = RequestHeaders::from_text(pairs);
            let class = c.classify(&h);
            (class.name.to_string(), class.cap(8))
        };
        assert_eq!(class(&[(":path", "/healthz")]), ("health".into(), 8));
        assert_eq!(
            class(&[(":path", "/x"), ("x-priority", "critical")]),
            ("critical".into(), 7)
        );
        assert_eq!(class(&[(":path", "/x")]), ("default".into(), 4));
        assert_eq!(class(&[(":path", "/x")]).1, 4);
        assert_eq!(
            c.explain(&RequestHeaders::from_text(&[(":path", "/x")])),
            "503 (Retry-After 1 s) once class default has 50% of the limit of 8 in flight"
        );
        let tiny = Class {
            name: "t",
            index: None,
            share: 1.0,
        };
        assert_eq!(tiny.cap(8), 1, "every class can have one request in flight");
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err(json!({})),
            "shedding: set `adaptive` (a limit found from latency) or `utilization` (a share of a declared capacity)"
        );
        assert_eq!(
            err(json!({"adaptive": {}, "utilization": {"capacity": 3}})),
            "shedding.utilization: set either `adaptive` or `utilization`, not both"
        );
        assert_eq!(
            err(json!({"utilization": {"capacity": 0}})),
            "shedding.utilization.capacity: must be from 1 to 1000000, got 0"
        );
        assert_eq!(
            err(json!({"adaptive": {"minLimit": 10, "maxLimit": 5}})),
            "shedding.adaptive.minLimit: must not exceed maxLimit (5), got 10"
        );
        assert_eq!(
            err(json!({"adaptive": {"initialLimit": 2000}})),
            "shedding.adaptive.initialLimit: must be from minLimit (3) to maxLimit (1000), got 2000"
        );
        assert_eq!(
            err(json!({"adaptive": {"sampleWindow": "1ms"}})),
            "shedding.adaptive.sampleWindow: must be from 10ms to 1m, got 1ms"
        );
        assert_eq!(
            err(json!({"adaptive": {"minRttRequests": 0}})),
            "shedding.adaptive.minRttRequests: must be from 1 to 10000, got 0"
        );
        assert_eq!(
            err(json!({"adaptive": {}, "defaultShare": {"value": 0}})),
            "shedding.defaultShare: must be above 0 (a class with no share would never be admitted)"
        );
        assert!(err(json!({"adaptive": {}, "status": 500}))
            .starts_with("shedding.status: must be 503 or 429, got 500"));
        assert_eq!(
            err(json!({"adaptive": {}, "classes": [
                {"name": "a", "match": {}}, {"name": "a", "match": {}}]})),
            "shedding.classes[1].name: \"a\" is already a class"
        );
        assert!(err(json!({"adaptive": {}, "classes": [
                {"name": "a", "match": {"methods": ["get"]}}]}))
        .starts_with("shedding.classes[0].match.methods[0]:"));
        assert_eq!(
            err(json!({"adaptive": {}, "retryAfter": "100ms"})),
            "shedding.retryAfter: must be from 1s to 1h, got 100ms"
        );
        assert!(err(json!({"adaptive": {"buffer": {"value": 120}}}))
            .starts_with("shedding.adaptive.buffer.value: must be a number from 0 to 100"));
    }
}
