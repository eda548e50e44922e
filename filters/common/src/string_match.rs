//! String matching: exact, prefix or regular expression, one of them.

use crate::error::ValidationError;
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

/// Longest regular expression accepted, to bound compile time and memory in the proxy.
const MAX_REGEX_LEN: usize = 1024;

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

fn compile_regex(pattern: &str) -> Result<StringMatch, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!("must be at most {MAX_REGEX_LEN} characters"));
    }
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map(StringMatch::Regex)
        .map_err(|e| format!("invalid regular expression: {e}"))
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
