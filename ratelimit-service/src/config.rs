//! The limits file: which descriptors of which domain get which token bucket.
//!
//! ```yaml
//! domains:
//! - domain: edge                         # RateLimitRequest.domain (the Envoy filter's `domain`)
//!   limits:
//!   - name: api-per-tenant               # quota policy name (RateLimit-Policy, statuses)
//!     descriptors:                       # the descriptor's entries, in this order
//!     - key: tenant                      #   one bucket per distinct value
//!     rate: {requests: 100, unit: second}
//!     burst: 200                         # bucket capacity (default: rate.requests)
//!     overrides:                         # first match wins
//!     - match: {tenant: gold}
//!       rate: {requests: 1000, unit: second}
//!       burst: 2000
//! ```
//!
//! The fields `rate`, `burst`, `overrides`, `dryRun`, `responseHeaders`, `legacyHeaders`
//! and `failureMode` mean what they mean in a `RateLimitPolicy`, so the control plane can
//! generate this file from policies.

use meshwarden_common::ratelimit::rate::MAX_REQUESTS;
use meshwarden_common::ratelimit::spec::{MAX_DESCRIPTORS, MAX_MATCH_VALUE, MAX_OVERRIDES};
use meshwarden_common::ratelimit::{FailureMode, Override, Rate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// Most domains in one file.
pub const MAX_DOMAINS: usize = 1_000;
/// Most limits per domain.
pub const MAX_LIMITS: usize = 10_000;
/// Longest domain, limit name or descriptor key.
pub const MAX_NAME: usize = 128;
/// Largest limits file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// An invalid or unreadable limits file. `Invalid` names the offending field
/// (`domains[0].limits[2].rate.requests`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is too large to be a limits file.
    #[error("{path}: {size} bytes, more than the {MAX_FILE_BYTES} a limits file may have")]
    TooLarge { path: PathBuf, size: u64 },
    /// A field is malformed or out of range.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole limits file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// One entry per rate-limit domain.
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
}

/// The limits of one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainConfig {
    /// The `domain` of the requests these limits apply to.
    pub domain: String,
    /// Tried in order; a descriptor gets the first limit whose `descriptors` it matches.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
}

/// One descriptor entry a limit expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DescriptorKey {
    /// The entry's key (`tenant`, `generic_key`, `remote_address`, ...).
    pub key: String,
    /// Only this value matches; without it every value matches and each distinct value
    /// gets its own bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A token bucket (or one per distinct descriptor value) for descriptors of one shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitConfig {
    /// Unique in the domain: `[A-Za-z0-9._:/-]`, at most 128 characters.
    pub name: String,
    /// The descriptor's entries, in order: a descriptor matches when it has exactly these
    /// keys in this order (and the fixed values where given).
    pub descriptors: Vec<DescriptorKey>,
    /// Refill rate (the default for values without an override).
    pub rate: Rate,
    /// Bucket capacity (default: `rate.requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Other rates for some values (`match` by descriptor key); the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    /// Never answer OVER_LIMIT because of this limit; the bucket is still kept.
    #[serde(default)]
    pub dry_run: bool,
    /// Ask Envoy to add `RateLimit-Policy`/`RateLimit` to allowed responses too.
    #[serde(default)]
    pub response_headers: bool,
    /// Also send `X-RateLimit-Limit`/`-Remaining`/`-Reset`.
    #[serde(default)]
    pub legacy_headers: bool,
    /// When Redis is slow or down (default: the server's `--failure-mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

impl LimitsConfig {
    /// Parses and validates YAML (or JSON) text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: LimitsConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path.is_empty() {
                "(file)".to_string()
            } else {
                path
            };
            // serde_yaml already names nested fields in its message: keep one path.
            let message = e.into_inner().to_string();
            let message = match message.split_once(": ") {
                Some((path, rest)) if !path.contains(' ') && field.starts_with(path) => {
                    rest.to_string()
                }
                _ => message,
            };
            ConfigError::invalid(field, message)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.domains.len() > MAX_DOMAINS {
            return Err(ConfigError::invalid(
                "domains",
                format!("at most {MAX_DOMAINS} domains, got {}", self.domains.len()),
            ));
        }
        let mut seen = HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            let at = format!("domains[{i}]");
            check_name(&format!("{at}.domain"), &d.domain)?;
            if !seen.insert(d.domain.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{at}.domain"),
                    format!("{:?} is already a domain", d.domain),
                ));
            }
            d.validate(&at)?;
        }
        Ok(())
    }
}

fn check_name(field: &str, s: &str) -> Result<(), ConfigError> {
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(ConfigError::invalid(
            field,
            format!("must be 1 to {MAX_NAME} characters, got {}", s.len()),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:/-".contains(*c)))
    {
        return Err(ConfigError::invalid(
            field,
            format!("{s:?} has {c:?}; use letters, digits and . _ : / -"),
        ));
    }
    Ok(())
}

fn check_rate(field: &str, rate: &Rate) -> Result<(), ConfigError> {
    rate.check()
        .map_err(|(sub, msg)| ConfigError::invalid(format!("{field}.{sub}"), msg))
}

fn check_burst(field: &str, burst: Option<u64>) -> Result<(), ConfigError> {
    match burst {
        Some(b) if b == 0 || b > MAX_REQUESTS => Err(ConfigError::invalid(
            field,
            format!("must be from 1 to {MAX_REQUESTS}, got {b}"),
        )),
        _ => Ok(()),
    }
}

fn check_value(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.len() > MAX_MATCH_VALUE {
        return Err(ConfigError::invalid(
            field,
            format!("at most {MAX_MATCH_VALUE} bytes, got {}", v.len()),
        ));
    }
    Ok(())
}

impl DomainConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.limits.len() > MAX_LIMITS {
            return Err(ConfigError::invalid(
                format!("{at}.limits"),
                format!("at most {MAX_LIMITS} limits, got {}", self.limits.len()),
            ));
        }
        let mut names = HashSet::new();
        for (j, l) in self.limits.iter().enumerate() {
            let lat = format!("{at}.limits[{j}]");
            check_name(&format!("{lat}.name"), &l.name)?;
            if !names.insert(l.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{lat}.name"),
                    format!("{:?} is already a limit of this domain", l.name),
                ));
            }
            l.validate(&lat)?;
            if let Some(k) = self.limits[..j].iter().position(|e| e.shadows(l)) {
                return Err(ConfigError::invalid(
                    format!("{lat}.descriptors"),
                    format!(
                        "every descriptor it matches is matched first by {at}.limits[{k}] ({:?}), so it never applies; put it first",
                        self.limits[k].name
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl LimitConfig {
    /// Whether every descriptor `later` matches is also matched by `self`.
    fn shadows(&self, later: &LimitConfig) -> bool {
        self.descriptors.len() == later.descriptors.len()
            && self
                .descriptors
                .iter()
                .zip(&later.descriptors)
                .all(|(a, b)| {
                    a.key == b.key
                        && match (&a.value, &b.value) {
                            (None, _) => true,
                            (Some(x), Some(y)) => x == y,
                            (Some(_), None) => false,
                        }
                })
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.descriptors.is_empty() || self.descriptors.len() > MAX_DESCRIPTORS {
            return Err(ConfigError::invalid(
                format!("{at}.descriptors"),
                format!(
                    "must have 1 to {MAX_DESCRIPTORS} entries, got {}",
                    self.descriptors.len()
                ),
            ));
        }
        let mut keys = BTreeSet::new();
        for (k, d) in self.descriptors.iter().enumerate() {
            let dat = format!("{at}.descriptors[{k}]");
            if d.key.is_empty() || d.key.len() > MAX_NAME {
                return Err(ConfigError::invalid(
                    format!("{dat}.key"),
                    format!("must be 1 to {MAX_NAME} bytes, got {}", d.key.len()),
                ));
            }
            if !keys.insert(d.key.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{dat}.key"),
                    format!("{:?} is already a key of this limit", d.key),
                ));
            }
            if let Some(v) = &d.value {
                check_value(&format!("{dat}.value"), v)?;
            }
        }
        check_rate(&format!("{at}.rate"), &self.rate)?;
        check_burst(&format!("{at}.burst"), self.burst)?;
        self.validate_overrides(at)
    }

    fn validate_overrides(&self, at: &str) -> Result<(), ConfigError> {
        if self.overrides.len() > MAX_OVERRIDES {
            return Err(ConfigError::invalid(
                format!("{at}.overrides"),
                format!(
                    "at most {MAX_OVERRIDES} overrides, got {}",
                    self.overrides.len()
                ),
            ));
        }
        let variable: Vec<&str> = self
            .descriptors
            .iter()
            .filter(|d| d.value.is_none())
            .map(|d| d.key.as_str())
            .collect();
        for (i, o) in self.overrides.iter().enumerate() {
            let oat = format!("{at}.overrides[{i}]");
            if o.descriptor_match.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{oat}.match"),
                    "must name at least one descriptor key",
                ));
            }
            for (key, value) in &o.descriptor_match {
                let fat = format!("{oat}.match.{key}");
                if !variable.contains(&key.as_str()) {
                    let why = if self.descriptors.iter().any(|d| &d.key == key) {
                        "has a fixed value in `descriptors`".to_string()
                    } else {
                        "is not a descriptor key of this limit".to_string()
                    };
                    return Err(ConfigError::invalid(
                        fat,
                        format!(
                            "{key:?} {why}; keys with one bucket per value: {}",
                            if variable.is_empty() {
                                "none".to_string()
                            } else {
                                variable.join(", ")
                            }
                        ),
                    ));
                }
                check_value(&fat, value)?;
            }
            if let Some(k) = self.overrides[..i]
                .iter()
                .position(|e| e.descriptor_match == o.descriptor_match)
            {
                return Err(ConfigError::invalid(
                    format!("{oat}.match"),
                    format!("same as {at}.overrides[{k}].match, which wins; remove one"),
                ));
            }
            check_rate(&format!("{oat}.rate"), &o.rate)?;
            check_burst(&format!("{oat}.burst"), o.burst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwarden_common::ratelimit::Unit;

    const FULL: &str = r#"
domains:
- domain: edge
  limits:
  - name: api-per-tenant
    descriptors:
    - key: policy
      value: api
    - key: tenant
    rate: {requests: 100, unit: second}
    burst: 200
    overrides:
    - match: {tenant: gold}
      rate: {requests: 1000, unit: minute}
      burst: 2000
    dryRun: true
    responseHeaders: true
    legacyHeaders: true
    failureMode: deny
  - name: per-ip
    descriptors: [{key: remote_address}]
    rate: {requests: 5, unit: day}
- domain: internal
"#;

    fn err(yaml: &str) -> String {
        LimitsConfig::parse(yaml).unwrap_err().to_string()
    }

    fn one_limit(body: &str) -> String {
        format!(
            "domains:\n- domain: d\n  limits:\n  - name: l\n{}",
            body.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )
    }

    #[test]
    fn full_file_parses_with_defaults() {
        let c = LimitsConfig::parse(FULL).unwrap();
        assert_eq!(c.domains.len(), 2);
        let l = &c.domains[0].limits[0];
        assert_eq!(l.descriptors[0].value.as_deref(), Some("api"));
        assert_eq!(l.descriptors[1].value, None);
        assert_eq!(l.burst, Some(200));
        assert_eq!(l.overrides[0].rate.unit, Unit::Minute);
        assert_eq!(l.failure_mode, Some(FailureMode::Deny));
        assert!(l.dry_run && l.response_headers && l.legacy_headers);
        let p = &c.domains[0].limits[1];
        assert_eq!(p.burst, None);
        assert!(!p.dry_run && p.failure_mode.is_none());
        assert!(c.domains[1].limits.is_empty());
        assert_eq!(LimitsConfig::parse("").unwrap(), LimitsConfig::default());
        // Serializes back to the same thing (the control plane will write these files).
        let again = LimitsConfig::parse(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn type_errors_name_the_field() {
        let cases = [
            (
                one_limit("descriptors: [{key: a}]\nrate: {requests: 1, unit: minutes}"),
                "domains[0].limits[0].rate.unit: unknown variant `minutes`, expected one of `second`, `minute`, `hour`, `day` at line 6 column 31",
            ),
            (
                one_limit("descriptors: [{key: a}]\nrate: {requests: 1, unit: second}\nbrust: 3"),
                "domains[0].limits[0].brust: unknown field `brust`, expected one of `name`, `descriptors`, `rate`, `burst`, `overrides`, `dryRun`, `responseHeaders`, `legacyHeaders`, `failureMode` at line 7 column 5",
            ),
            (
                one_limit("descriptors: [{key: a}]"),
                "domains[0].limits[0]: missing field `rate` at line 4 column 5",
            ),
            (
                one_limit("descriptors: [{key: a}]\nrate: {requests: 1, unit: second}\nburst: -1"),
                "domains[0].limits[0].burst: invalid type: integer `-1`, expected u64 at line 7 column 12",
            ),
            (
                "domains: {}".to_string(),
                "domains: invalid type: map, expected a sequence at line 1 column 10",
            ),
            (
                "nope: 1".to_string(),
                "nope: unknown field `nope`, expected `domains`",
            ),
            (
                "domains: [".to_string(),
                "domains: did not find expected node content at line 2 column 1, while parsing a flow node",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(err(&yaml), want, "for\n{yaml}");
        }
    }

    #[test]
    fn range_errors_name_the_field() {
        let rate = "rate: {requests: 10, unit: second}";
        let cases = [
            (
                one_limit("descriptors: [{key: a}]\nrate: {requests: 0, unit: second}"),
                "domains[0].limits[0].rate.requests: must be from 1 to 1000000000, got 0",
            ),
            (
                one_limit(&format!("descriptors: [{{key: a}}]\n{rate}\nburst: 0")),
                "domains[0].limits[0].burst: must be from 1 to 1000000000, got 0",
            ),
            (
                one_limit(&format!("descriptors: []\n{rate}")),
                "domains[0].limits[0].descriptors: must have 1 to 8 entries, got 0",
            ),
            (
                one_limit(&format!("descriptors: [{{key: a}}, {{key: a}}]\n{rate}")),
                "domains[0].limits[0].descriptors[1].key: \"a\" is already a key of this limit",
            ),
            (
                one_limit(&format!("descriptors: [{{key: \"\"}}]\n{rate}")),
                "domains[0].limits[0].descriptors[0].key: must be 1 to 128 bytes, got 0",
            ),
            (
                one_limit(&format!(
                    "descriptors: [{{key: a}}]\n{rate}\noverrides:\n- match: {{b: x}}\n  {rate}"
                )),
                "domains[0].limits[0].overrides[0].match.b: \"b\" is not a descriptor key of this limit; keys with one bucket per value: a",
            ),
            (
                one_limit(&format!(
                    "descriptors: [{{key: a, value: v}}]\n{rate}\noverrides:\n- match: {{a: x}}\n  {rate}"
                )),
                "domains[0].limits[0].overrides[0].match.a: \"a\" has a fixed value in `descriptors`; keys with one bucket per value: none",
            ),
            (
                one_limit(&format!(
                    "descriptors: [{{key: a}}]\n{rate}\noverrides:\n- match: {{}}\n  {rate}"
                )),
                "domains[0].limits[0].overrides[0].match: must name at least one descriptor key",
            ),
            (
                one_limit(&format!(
                    "descriptors: [{{key: a}}]\n{rate}\noverrides:\n- match: {{a: x}}\n  {rate}\n- match: {{a: x}}\n  {rate}"
                )),
                "domains[0].limits[0].overrides[1].match: same as domains[0].limits[0].overrides[0].match, which wins; remove one",
            ),
            (
                one_limit(&format!(
                    "descriptors: [{{key: a}}]\n{rate}\noverrides:\n- match: {{a: x}}\n  rate: {{requests: 2000000000, unit: hour}}"
                )),
                "domains[0].limits[0].overrides[0].rate.requests: must be from 1 to 1000000000, got 2000000000",
            ),
            (
                one_limit(&format!(
                    "descriptors: [{{key: a}}]\n{rate}\noverrides:\n- match: {{a: x}}\n  {rate}\n  burst: 0"
                )),
                "domains[0].limits[0].overrides[0].burst: must be from 1 to 1000000000, got 0",
            ),
            (
                "domains: [{domain: a}, {domain: a}]".to_string(),
                "domains[1].domain: \"a\" is already a domain",
            ),
            (
                "domains: [{domain: \"a b\"}]".to_string(),
                "domains[0].domain: \"a b\" has ' '; use letters, digits and . _ : / -",
            ),
            (
                format!(
                    "domains:\n- domain: d\n  limits:\n  - {{name: x, descriptors: [{{key: a}}], {rate}}}\n  - {{name: x, descriptors: [{{key: b}}], {rate}}}"
                ),
                "domains[0].limits[1].name: \"x\" is already a limit of this domain",
            ),
            (
                format!(
                    "domains:\n- domain: d\n  limits:\n  - {{name: all, descriptors: [{{key: a}}], {rate}}}\n  - {{name: gold, descriptors: [{{key: a, value: gold}}], {rate}}}"
                ),
                "domains[0].limits[1].descriptors: every descriptor it matches is matched first by domains[0].limits[0] (\"all\"), so it never applies; put it first",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(err(&yaml), want, "for\n{yaml}");
        }
        // The specific limit first, then the general one: fine.
        LimitsConfig::parse(&format!(
            "domains:\n- domain: d\n  limits:\n  - {{name: gold, descriptors: [{{key: a, value: gold}}], {rate}}}\n  - {{name: all, descriptors: [{{key: a}}], {rate}}}"
        ))
        .unwrap();
        let long = "x".repeat(MAX_MATCH_VALUE + 1);
        assert_eq!(
            err(&one_limit(&format!(
                "descriptors: [{{key: a, value: {long}}}]\n{rate}"
            ))),
            "domains[0].limits[0].descriptors[0].value: at most 256 bytes, got 257"
        );
    }

    #[test]
    fn load_reports_the_path() {
        let e = LimitsConfig::load(Path::new("/nonexistent/limits.yaml")).unwrap_err();
        assert!(
            e.to_string().starts_with("read /nonexistent/limits.yaml: "),
            "{e}"
        );
    }
}
