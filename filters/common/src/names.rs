//! Validated names: policy names and HTTP header names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A policy name: a DNS-1123 subdomain as in Kubernetes (dot-separated labels
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 253 characters in all). It appears in metric names, so it is kept strict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PolicyName(String);

impl PolicyName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PolicyName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > 253 {
            return Err(format!("must be at most 253 characters, got {}", s.len()));
        }
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if let Some(bad) = s.chars().find(|c| !ok_char(*c)) {
            return Err(format!(
                "{s:?} contains {bad:?}; use lowercase letters, digits, '-' and '.'"
            ));
        }
        let alnum =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
            return Err(format!("{s:?} must start and end with a letter or digit"));
        }
        // Every dot-separated label is itself `[a-z0-9]([-a-z0-9]*[a-z0-9])?`: no empty
        // label (`a..b`), none starting or ending with '-' (`a.-b`, `a-.b`).
        if s.split('.')
            .any(|label| !alnum(label.chars().next()) || !alnum(label.chars().last()))
        {
            return Err(format!(
                "{s:?} must have a letter or digit on both sides of every '.'"
            ));
        }
        Ok(Self(s))
    }
}

impl From<PolicyName> for String {
    fn from(n: PolicyName) -> String {
        n.0
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An HTTP header name: an RFC 9110 token, stored lowercase (HTTP/2 and Envoy's header maps
/// are lowercase). Pseudo-headers such as `:path` are accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderName(String);

impl HeaderName {
    /// The lowercase name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HeaderName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let body = s.strip_prefix(':').unwrap_or(&s);
        if body.is_empty() {
            return Err("header name must not be empty".into());
        }
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if let Some(bad) = body.chars().find(|c| !token(*c)) {
            return Err(format!(
                "header name {s:?} contains {bad:?}, which is not allowed"
            ));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl From<HeaderName> for String {
    fn from(n: HeaderName) -> String {
        n.0
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_follow_dns_1123() {
        assert!(PolicyName::try_from("checkout-trace".to_string()).is_ok());
        assert!(PolicyName::try_from("a.b-1".to_string()).is_ok());
        assert!(PolicyName::try_from("checkout.v2.eu-1".to_string()).is_ok());
        for bad in [
            "",
            "Upper",
            "-lead",
            "trail-",
            "sp ace",
            "under_score",
            "a..b",
            "a.-b",
            "a-.b",
            ".a",
            "a.",
        ] {
            assert!(PolicyName::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert!(PolicyName::try_from("a".repeat(254)).is_err());
        assert_eq!(
            PolicyName::try_from("a..b".to_string()).unwrap_err(),
            r#""a..b" must have a letter or digit on both sides of every '.'"#
        );
    }

    #[test]
    fn header_names_are_tokens_stored_lowercase() {
        let h = HeaderName::try_from("X-Trace-Id".to_string()).unwrap();
        assert_eq!(h.as_str(), "x-trace-id");
        assert!(HeaderName::try_from(":path".to_string()).is_ok());
        for bad in ["", ":", "bad header", "x:y", "é"] {
            assert!(HeaderName::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
