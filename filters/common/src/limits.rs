//! Resource limits, in one place so the CLI, the control plane's API and the filters agree.
//!
//! Each limit bounds the memory or time one input can cost somewhere:
//!
//! - input size: a file the CLI reads ([`MAX_INPUT_FILE_BYTES`]), a YAML document's
//!   nesting ([`MAX_YAML_DEPTH`]), one policy document ([`MAX_DOCUMENT_BYTES`]) and one apply
//!   request ([`MAX_APPLY_REQUEST_BYTES`]);
//! - regular expressions: pattern length ([`MAX_REGEX_PATTERN_BYTES`]), compiled program
//!   size ([`MAX_REGEX_PROGRAM_BYTES`]) and group nesting ([`MAX_REGEX_NESTING`]);
//! - one filter's configuration, which every Envoy worker's Wasm VM holds (and Wasm linear
//!   memory never shrinks, so its peak is what a proxy keeps): policies
//!   ([`MAX_POLICIES_PER_FILTER`]), regular expressions ([`MAX_REGEXES_PER_FILTER`]) and
//!   bytes ([`MAX_FILTER_CONFIG_BYTES`]). The control plane enforces them over all stored
//!   policies of a kind, which bounds every proxy's configuration of that kind; the filter
//!   enforces them again on what it receives.
//!
//! [`FilterUsage`] measures a policy against the filter limits.

use crate::document::PolicyDocument;
use crate::error::ValidationError;
use crate::filter_config::WirePolicy;
use std::io::Write;

/// Largest policy document, as JSON text (what the API receives per document).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Largest apply request on the wire (the policy API's gRPC decoding limit); larger inputs
/// must be split into several applies.
pub const MAX_APPLY_REQUEST_BYTES: usize = 2 << 20;
/// Largest file (or stdin) the CLI reads for `apply -f`.
pub const MAX_INPUT_FILE_BYTES: u64 = 4 << 20;
/// Deepest nesting of YAML/JSON collections the CLI parses (policies need fewer than 10).
pub const MAX_YAML_DEPTH: usize = 64;
/// Longest regular expression pattern, in bytes.
pub const MAX_REGEX_PATTERN_BYTES: usize = 1000;
/// Largest compiled regular expression (its NFA), in bytes. Counted repetitions (`{n}`,
/// `{n,m}`) copy their operand, so `[a-z]{700}` is near the limit while `[a-z]{1,64}` takes
/// about a fifth of it. Matching needs about as much again, per filter VM.
pub const MAX_REGEX_PROGRAM_BYTES: usize = 32 * 1024;
/// Deepest nesting of groups and other constructs inside one regular expression.
pub const MAX_REGEX_NESTING: u32 = 32;
/// Most policies of one kind: in the store, and so in one proxy's filter configuration.
/// (Per-request cost does not grow with it: the filters index policies by path.)
pub const MAX_POLICIES_PER_FILTER: usize = 1024;
/// Most regular expressions (`regex` string matches) over the policies of one kind.
pub const MAX_REGEXES_PER_FILTER: usize = 256;
/// Largest filter configuration (the JSON a filter receives), in bytes; the control plane
/// counts the policies of one kind as they would appear in it.
pub const MAX_FILTER_CONFIG_BYTES: usize = 4 << 20;
/// Apply and delete requests the control plane works on at once; more wait.
pub const MAX_CONCURRENT_WRITES: usize = 4;
/// How long an apply or delete waits for its turn before it is refused with
/// RESOURCE_EXHAUSTED.
pub const MAX_WRITE_WAIT_SECS: u64 = 10;

/// `{"policies":[` and `]}` around the policies of a filter configuration.
const WIRE_CONFIG_OVERHEAD: usize = r#"{"policies":[]}"#.len();
/// Content versions are 16 hex digits.
const VERSION_PLACEHOLDER: &str = "0000000000000000";

/// What policies cost against the filter limits: their number, their regular expressions
/// and their bytes in the filter configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterUsage {
    pub policies: usize,
    pub regexes: usize,
    /// Bytes of the policies in the filter configuration's JSON, each with its separator.
    pub bytes: usize,
}

impl FilterUsage {
    /// The usage of one validated policy.
    pub fn of(doc: &PolicyDocument) -> Self {
        let wire = WirePolicy {
            name: doc.name().clone(),
            version: VERSION_PLACEHOLDER.to_string(),
            request_match: doc.request_match.clone(),
            spec: doc.body_value(),
        };
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, &wire).expect("wire policies always serialize");
        Self {
            policies: 1,
            regexes: doc.request_match.regex_count(),
            // A comma separates it from the next policy.
            bytes: counter.0 + 1,
        }
    }

    /// The sum of two usages.
    pub fn plus(self, other: Self) -> Self {
        Self {
            policies: self.policies + other.policies,
            regexes: self.regexes + other.regexes,
            bytes: self.bytes + other.bytes,
        }
    }

    /// Size of the whole filter configuration holding these policies.
    pub fn config_bytes(&self) -> usize {
        WIRE_CONFIG_OVERHEAD + self.bytes.saturating_sub(1)
    }

    /// Checks the filter limits; `what` names the set (`"TracePolicy policies"`). The
    /// error's field is empty: the set, not one field, is too large.
    pub fn check(&self, what: &str) -> Result<(), ValidationError> {
        if self.policies > MAX_POLICIES_PER_FILTER {
            return Err(ValidationError::new(
                "",
                format!(
                    "{what} would number {}, more than the limit of {MAX_POLICIES_PER_FILTER} per kind",
                    self.policies
                ),
            ));
        }
        if self.regexes > MAX_REGEXES_PER_FILTER {
            return Err(ValidationError::new(
                "",
                format!(
                    "{what} would hold {} regular expressions, more than the limit of {MAX_REGEXES_PER_FILTER} per kind; use exact or prefix matches where possible",
                    self.regexes
                ),
            ));
        }
        if self.config_bytes() > MAX_FILTER_CONFIG_BYTES {
            return Err(ValidationError::new(
                "",
                format!(
                    "{what} would take {} bytes of filter configuration, more than the limit of {MAX_FILTER_CONFIG_BYTES} bytes per kind",
                    self.config_bytes()
                ),
            ));
        }
        Ok(())
    }
}

/// Counts bytes written, keeping none.
struct ByteCounter(usize);

impl Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter_config::WireConfig;
    use serde_json::json;

    fn doc(name: &str, spec: serde_json::Value) -> PolicyDocument {
        PolicyDocument::from_value(&json!({"apiVersion": crate::API_VERSION,
            "kind": "TracePolicy", "metadata": {"name": name}, "spec": spec}))
        .unwrap()
    }

    #[test]
    fn usage_counts_the_exact_filter_configuration_bytes() {
        let docs = [
            doc("a", json!({})),
            doc(
                "b",
                json!({"match": {"path": {"regex": "/x[0-9]+"},
                "headers": [{"name": "x-u", "regex": "u.*"}, {"name": "x-v", "exact": "1"}]}}),
            ),
        ];
        let total = docs
            .iter()
            .map(FilterUsage::of)
            .fold(FilterUsage::default(), FilterUsage::plus);
        assert_eq!((total.policies, total.regexes), (2, 2));
        let wire = WireConfig {
            policies: docs
                .iter()
                .map(|d| WirePolicy {
                    name: d.name().clone(),
                    version: VERSION_PLACEHOLDER.into(),
                    request_match: d.request_match.clone(),
                    spec: d.body_value(),
                })
                .collect(),
        };
        let json = serde_json::to_string(&wire).unwrap();
        assert_eq!(total.config_bytes(), json.len());
        assert_eq!(FilterUsage::default().config_bytes(), WIRE_CONFIG_OVERHEAD);
    }

    #[test]
    fn each_limit_names_itself() {
        let over = |u: FilterUsage| u.check("TracePolicy policies").unwrap_err().message;
        let m = over(FilterUsage {
            policies: MAX_POLICIES_PER_FILTER + 1,
            ..Default::default()
        });
        assert!(m.contains("limit of 1024 per kind"), "{m}");
        let m = over(FilterUsage {
            regexes: MAX_REGEXES_PER_FILTER + 1,
            ..Default::default()
        });
        assert!(m.contains("257 regular expressions"), "{m}");
        let m = over(FilterUsage {
            bytes: MAX_FILTER_CONFIG_BYTES,
            ..Default::default()
        });
        assert!(m.contains("limit of 4194304 bytes"), "{m}");
        FilterUsage {
            policies: MAX_POLICIES_PER_FILTER,
            regexes: MAX_REGEXES_PER_FILTER,
            bytes: MAX_FILTER_CONFIG_BYTES - WIRE_CONFIG_OVERHEAD + 1,
        }
        .check("x")
        .unwrap();
    }
}
