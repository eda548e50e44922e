//! String matching: exact, prefix or regular expression, one of them.

use crate::error::ValidationError;
use crate::limits::{MAX_REGEX_NESTING, MAX_REGEX_PATTERN_BYTES, MAX_REGEX_PROGRAM_BYTES};
use serde::{Deserialize, Serialize};

/// How a policy writes a string match: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A regular expression (RE2-like syntax, `regex-lite`) that must match the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A validated, ready-to-run string match.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
}

impl StringMatchSpec {
    /// Checks that exactly one form is set and compiles it.
    pub fn compile(&self) -> Result<StringMatch, ValidationError> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Ok(StringMatch::Exact(e.clone())),
            (None, Some(p), None) => Ok(StringMatch::Prefix(p.clone())),
            (None, None, Some(r)) => compile_regex(r).map_err(|m| ValidationError::new("regex", m)),
            (None, None, None) => Err(ValidationError::new(
                "",
                "set one of exact, prefix or regex",
            )),
            _ => Err(ValidationError::new(
                "",
                "set only one of exact, prefix or regex",
            )),
        }
    }
}

/// Compiles an anchored regular expression within the limits that bound its compile time
/// and memory in every filter VM (see [`crate::limits`]).
fn compile_regex(pattern: &str) -> Result<StringMatch, String> {
    if pattern.len() > MAX_REGEX_PATTERN_BYTES {
        return Err(format!(
            "pattern is {} bytes, more than the limit of {MAX_REGEX_PATTERN_BYTES} bytes",
            pattern.len()
        ));
    }
    regex_lite::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_REGEX_PROGRAM_BYTES)
        .nest_limit(MAX_REGEX_NESTING)
        .build()
        .map(StringMatch::Regex)
        .map_err(|e| {
            let e = e.to_string();
            if e.contains("size limit") {
                format!(
                    "compiled program is larger than the limit of {MAX_REGEX_PROGRAM_BYTES} bytes; use smaller counted repetitions ({{n}}, {{n,m}}) or fewer alternatives"
                )
            } else if e.contains("nesting") {
                format!("nested more than the limit of {MAX_REGEX_NESTING} levels")
            } else {
                format!("invalid regular expression: {e}")
            }
        })
}

impl StringMatch {
    /// Whether `value` matches. Non-UTF-8 values only match prefix/exact byte-wise.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            StringMatch::Exact(e) => value == e.as_bytes(),
            StringMatch::Prefix(p) => value.starts_with(p.as_bytes()),
            StringMatch::Regex(r) => std::str::from_utf8(value).is_ok_and(|v| r.is_match(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatchSpec {
        StringMatchSpec {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: regex.map(Into::into),
        }
    }

    #[test]
    fn exactly_one_form() {
        assert!(spec(None, None, None).compile().is_err());
        assert!(spec(Some("a"), Some("b"), None).compile().is_err());
        assert!(spec(Some("a"), None, None).compile().is_ok());
    }

    #[test]
    fn regex_is_anchored_and_validated() {
        let m = spec(None, None, Some("/api/v[0-9]+")).compile().unwrap();
        assert!(m.matches(b"/api/v2"));
        assert!(!m.matches(b"/api/v2/x"));
        let err = spec(None, None, Some("(")).compile().unwrap_err();
        assert_eq!(err.field, "regex");
        assert!(!m.matches(&[0xff, 0xfe]));
    }

    #[test]
    fn regex_limits_name_the_limit() {
        let at = |p: &str| spec(None, None, Some(p)).compile().map(|_| ());
        // Length: bytes, not characters.
        at(&"a".repeat(MAX_REGEX_PATTERN_BYTES)).unwrap();
        let err = at(&"é".repeat(MAX_REGEX_PATTERN_BYTES / 2 + 1)).unwrap_err();
        assert_eq!(err.field, "regex");
        assert_eq!(
            err.message,
            "pattern is 1002 bytes, more than the limit of 1000 bytes"
        );
        // Program size: counted repetitions multiply.
        at("[a-z]{1,64}").unwrap();
        at("[a-z]{700}").unwrap();
        let err = at("(?:[a-z]{100}){100}").unwrap_err();
        assert!(
            err.message
                .starts_with("compiled program is larger than the limit of 32768 bytes"),
            "{err}"
        );
        let err = at("a{1000}{1000}{1000}").unwrap_err();
        assert!(err.message.contains("32768"), "{err}");
        // Nesting.
        at(&format!("{}a{}", "(".repeat(20), ")".repeat(20))).unwrap();
        let err = at(&format!("{}a{}", "(".repeat(40), ")".repeat(40))).unwrap_err();
        assert_eq!(err.message, "nested more than the limit of 32 levels");
    }

    #[test]
    fn prefix_and_exact_work_on_bytes() {
        assert!(spec(None, Some("/a"), None)
            .compile()
            .unwrap()
            .matches(b"/abc"));
        assert!(spec(Some("x"), None, None).compile().unwrap().matches(b"x"));
        assert!(!spec(Some("x"), None, None)
            .compile()
            .unwrap()
            .matches(b"xy"));
    }
}
