//! Diff mode: compare each mirror's response with the primary's (status, chosen headers, and
//! the body byte for byte or as JSON with ignored fields).

mod json;
mod pairing;
mod path;

pub use json::{first_difference, JsonDiffKind, JsonDifference};
pub use pairing::{PendingDiffs, ReadyPair, MAX_PENDING_DIFFS, PENDING_TTL_MS};
pub use path::{format_path, PathPattern, Step};

use crate::error::ValidationError;
use crate::names::HeaderName;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How bodies are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BodyMode {
    /// Bodies are not compared.
    Ignore,
    /// Byte for byte.
    #[default]
    Exact,
    /// As JSON documents (member order and number formatting do not matter), skipping
    /// `ignoreJsonFields`; bodies that are not JSON are compared byte for byte.
    Json,
}

/// `spec.diff` of a `MirrorPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiffSpec {
    /// Compare status codes (default true).
    #[serde(default = "yes")]
    pub status: bool,
    /// Response headers whose (first) values must be equal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderName>,
    /// `exact` (default), `json` or `ignore`.
    #[serde(default)]
    pub body: BodyMode,
    /// With `body: json`: fields to skip (`$.timestamp`, `$.items[*].id`, or a bare name
    /// such as `id` for that member at any depth).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_json_fields: Vec<String>,
    /// Most mismatches logged per minute per worker (default 10; 0 logs none).
    #[serde(default = "default_log_rate")]
    pub log_per_minute: u32,
}

fn yes() -> bool {
    true
}

fn default_log_rate() -> u32 {
    10
}

/// Largest `logPerMinute`.
const MAX_LOG_RATE: u32 = 600;

impl Default for DiffSpec {
    fn default() -> Self {
        Self {
            status: true,
            headers: Vec::new(),
            body: BodyMode::default(),
            ignore_json_fields: Vec::new(),
            log_per_minute: default_log_rate(),
        }
    }
}

impl DiffSpec {
    /// Validates and compiles. Error fields are relative to `diff`.
    pub fn compile(&self) -> Result<CompiledDiff, ValidationError> {
        if !self.ignore_json_fields.is_empty() && self.body != BodyMode::Json {
            return Err(ValidationError::new(
                "ignoreJsonFields",
                "only applies with `body: json`",
            ));
        }
        let ignore = self
            .ignore_json_fields
            .iter()
            .enumerate()
            .map(|(i, p)| {
                PathPattern::parse(p)
                    .map_err(|m| ValidationError::new(format!("ignoreJsonFields[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, h) in self.headers.iter().enumerate() {
            if h.as_str().starts_with(':') {
                return Err(ValidationError::new(
                    format!("headers[{i}]"),
                    "pseudo-headers cannot be compared; use `status` for :status",
                ));
            }
            if self.headers[..i].contains(h) {
                return Err(ValidationError::new(
                    format!("headers[{i}]"),
                    format!("{h} is listed twice"),
                ));
            }
        }
        if self.log_per_minute > MAX_LOG_RATE {
            return Err(ValidationError::new(
                "logPerMinute",
                format!("must be at most {MAX_LOG_RATE}"),
            ));
        }
        if !self.status && self.headers.is_empty() && self.body == BodyMode::Ignore {
            return Err(ValidationError::new(
                "",
                "compares nothing; enable `status`, list `headers` or set `body`",
            ));
        }
        Ok(CompiledDiff {
            status: self.status,
            headers: self
                .headers
                .iter()
                .map(|h| h.as_str().to_string())
                .collect(),
            body: self.body,
            ignore,
            log_per_minute: self.log_per_minute,
        })
    }
}

/// A validated diff configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledDiff {
    pub status: bool,
    /// Lowercase header names.
    pub headers: Vec<String>,
    pub body: BodyMode,
    pub ignore: Vec<PathPattern>,
    pub log_per_minute: u32,
}

/// What was kept of one response for comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedResponse {
    pub status: u16,
    /// First value of each compared header present (lowercase names).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (empty when bodies are ignored).
    pub body: Vec<u8>,
    /// The body was larger than the capture limit, so it cannot be compared.
    pub body_truncated: bool,
}

impl CapturedResponse {
    /// Bytes held (for memory accounting).
    pub fn weight(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl CompiledDiff {
    /// Whether response bodies need capturing.
    pub fn wants_body(&self) -> bool {
        self.body != BodyMode::Ignore
    }

    /// Picks the compared headers (first values) out of a response's headers.
    pub fn pick_headers(&self, all: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        self.headers
            .iter()
            .filter_map(|name| {
                all.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| (name.clone(), v.clone()))
            })
            .collect()
    }

    /// Compares a mirror's response with the primary's.
    pub fn compare(&self, primary: &CapturedResponse, mirror: &CapturedResponse) -> DiffOutcome {
        if self.status && primary.status != mirror.status {
            return DiffOutcome::Mismatch(Difference::Status);
        }
        for name in &self.headers {
            if primary.header(name) != mirror.header(name) {
                return DiffOutcome::Mismatch(Difference::Header(name.clone()));
            }
        }
        if self.body == BodyMode::Ignore {
            return DiffOutcome::Match;
        }
        if primary.body_truncated || mirror.body_truncated {
            return DiffOutcome::Incomparable;
        }
        if primary.body == mirror.body {
            return DiffOutcome::Match;
        }
        if self.body == BodyMode::Json {
            let parsed = (
                serde_json::from_slice::<serde_json::Value>(&primary.body),
                serde_json::from_slice::<serde_json::Value>(&mirror.body),
            );
            return match parsed {
                (Ok(a), Ok(b)) => match first_difference(&a, &b, &self.ignore) {
                    None => DiffOutcome::Match,
                    Some(d) => DiffOutcome::Mismatch(Difference::Json(d)),
                },
                (Err(_), Ok(_)) => DiffOutcome::Mismatch(Difference::NotJson("primary")),
                (_, Err(_)) => DiffOutcome::Mismatch(Difference::NotJson("mirror")),
            };
        }
        let at = primary
            .body
            .iter()
            .zip(&mirror.body)
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| primary.body.len().min(mirror.body.len()));
        DiffOutcome::Mismatch(Difference::Body { offset: at })
    }
}

/// The result of one comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffOutcome {
    Match,
    Mismatch(Difference),
    /// A body was too large to capture; neither match nor mismatch.
    Incomparable,
}

/// The first difference found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Status,
    /// The named header's first value differs (or is missing on one side).
    Header(String),
    /// Bodies differ byte-wise, first at `offset`.
    Body {
        offset: usize,
    },
    /// JSON bodies differ.
    Json(JsonDifference),
    /// With `body: json`, this side's body is not JSON (and the bodies differ).
    NotJson(&'static str),
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Status => f.write_str("status differs"),
            Difference::Header(h) => write!(f, "header {h} differs"),
            Difference::Body { offset } => write!(f, "body differs at byte {offset}"),
            Difference::Json(d) => write!(f, "body {d}"),
            Difference::NotJson(side) => write!(f, "{side} body is not JSON"),
        }
    }
}

/// One log line for a mismatch: policy, path, both statuses and the first difference.
pub fn describe_mismatch(
    policy: &str,
    path: &str,
    primary: &CapturedResponse,
    mirror: &CapturedResponse,
    diff: &Difference,
) -> String {
    let path: String = path.chars().take(256).collect();
    format!(
        "mirror diff: policy={policy} path={path} primary_status={} mirror_status={} first_difference=\"{diff}\"",
        primary.status, mirror.status
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, ct: &str, body: &str) -> CapturedResponse {
        CapturedResponse {
            status,
            headers: vec![("content-type".into(), ct.as_bytes().to_vec())],
            body: body.as_bytes().to_vec(),
            body_truncated: false,
        }
    }

    fn spec(body: BodyMode, ignore: &[&str]) -> CompiledDiff {
        DiffSpec {
            headers: vec![HeaderName::try_from("content-type".to_string()).unwrap()],
            body,
            ignore_json_fields: ignore.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
        .compile()
        .unwrap()
    }

    #[test]
    fn status_headers_then_body_are_compared() {
        let d = spec(BodyMode::Exact, &[]);
        let p = resp(200, "application/json", "{\"a\":1}");
        assert_eq!(d.compare(&p, &p.clone()), DiffOutcome::Match);
        assert_eq!(
            d.compare(&p, &resp(500, "text/plain", "x")),
            DiffOutcome::Mismatch(Difference::Status)
        );
        assert_eq!(
            d.compare(&p, &resp(200, "text/plain", "{\"a\":1}")),
            DiffOutcome::Mismatch(Difference::Header("content-type".into()))
        );
        assert_eq!(
            d.compare(&p, &resp(200, "application/json", "{\"a\":2}")),
            DiffOutcome::Mismatch(Difference::Body { offset: 5 })
        );
        assert_eq!(
            d.compare(&p, &resp(200, "application/json", "{\"a\":1}\n")),
            DiffOutcome::Mismatch(Difference::Body { offset: 7 })
        );
    }

    #[test]
    fn json_mode_ignores_formatting_order_and_listed_fields() {
        let d = spec(BodyMode::Json, &["$.ts", "id"]);
        let p = resp(
            200,
            "application/json",
            r#"{"a":1,"b":[1,2],"ts":5,"id":"x"}"#,
        );
        let m = resp(
            200,
            "application/json",
            r#"{ "b": [1, 2], "a": 1.0, "ts": 6, "id": "y" }"#,
        );
        assert_eq!(d.compare(&p, &m), DiffOutcome::Match);
        let m = resp(200, "application/json", r#"{"a":1,"b":[1,3],"ts":5}"#);
        match d.compare(&p, &m) {
            DiffOutcome::Mismatch(Difference::Json(j)) => assert_eq!(j.path, "$.b[1]"),
            other => panic!("{other:?}"),
        }
        let m = resp(200, "application/json", "not json");
        assert_eq!(
            d.compare(&p, &m),
            DiffOutcome::Mismatch(Difference::NotJson("mirror"))
        );
    }

    #[test]
    fn truncated_bodies_are_incomparable_and_ignore_mode_skips_bodies() {
        let d = spec(BodyMode::Exact, &[]);
        let p = resp(200, "a", "x");
        let mut m = resp(200, "a", "");
        m.body_truncated = true;
        assert_eq!(d.compare(&p, &m), DiffOutcome::Incomparable);
        let d = spec(BodyMode::Ignore, &[]);
        assert_eq!(d.compare(&p, &resp(200, "a", "y")), DiffOutcome::Match);
    }

    #[test]
    fn diff_spec_validation_names_fields() {
        let e = DiffSpec {
            ignore_json_fields: vec!["id".into()],
            ..Default::default()
        }
        .compile()
        .unwrap_err();
        assert_eq!(e.field, "ignoreJsonFields");
        let e = DiffSpec {
            body: BodyMode::Json,
            ignore_json_fields: vec!["$.".into()],
            ..Default::default()
        }
        .compile()
        .unwrap_err();
        assert_eq!(e.field, "ignoreJsonFields[0]");
        let e = DiffSpec {
            status: false,
            body: BodyMode::Ignore,
            ..Default::default()
        }
        .compile()
        .unwrap_err();
        assert!(e.message.contains("compares nothing"));
    }

    #[test]
    fn picks_first_values_of_compared_headers() {
        let d = spec(BodyMode::Exact, &[]);
        let got = d.pick_headers(&[
            ("Content-Type".into(), b"a".to_vec()),
            ("content-type".into(), b"b".to_vec()),
            ("x".into(), b"c".to_vec()),
        ]);
        assert_eq!(got, vec![("content-type".to_string(), b"a".to_vec())]);
    }

    #[test]
    fn mismatch_lines_are_bounded() {
        let p = resp(200, "a", "");
        let line = describe_mismatch(
            "p",
            &"/x".repeat(500),
            &p,
            &resp(500, "a", ""),
            &Difference::Status,
        );
        assert!(line.len() < 400, "{line}");
        assert!(line.contains("primary_status=200 mirror_status=500"));
    }
}
