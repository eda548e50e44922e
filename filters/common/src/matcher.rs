//! Which requests a policy applies to.

use crate::error::ValidationError;
use crate::names::HeaderName;
use crate::request::RequestHeaders;
use crate::string_match::{StringMatch, StringMatchSpec};
use serde::{Deserialize, Serialize};

/// The `match` block of every policy. Every condition that is set must hold; an empty match
/// selects every request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    /// Path (without query string): `exact`, `prefix` or `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatchSpec>,
    /// HTTP methods, any of which matches (uppercase, e.g. `GET`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    /// The `:authority` (host) of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatchSpec>,
}

/// One header condition: the header is present (`present: true`), absent (`present: false`),
/// or its first value matches `exact`/`prefix`/`regex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatchSpec {
    pub name: HeaderName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone)]
enum HeaderCondition {
    Present(bool),
    Value(StringMatch),
}

/// A compiled `match` block.
#[derive(Debug, Clone, Default)]
pub struct CompiledMatch {
    path: Option<StringMatch>,
    methods: Vec<String>,
    headers: Vec<(HeaderName, HeaderCondition)>,
    authority: Option<StringMatch>,
}

impl RequestMatch {
    /// Validates and compiles; errors carry paths relative to the match block.
    pub fn compile(&self) -> Result<CompiledMatch, ValidationError> {
        let path = self
            .path
            .as_ref()
            .map(|p| p.compile().map_err(|e| e.within("path")))
            .transpose()?;
        let authority = self
            .authority
            .as_ref()
            .map(|a| a.compile().map_err(|e| e.within("authority")))
            .transpose()?;
        for (i, m) in self.methods.iter().enumerate() {
            let valid = !m.is_empty()
                && m.len() <= 32
                && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
            if !valid {
                return Err(ValidationError::new(
                    format!("methods[{i}]"),
                    format!("{m:?} is not an HTTP method; use uppercase such as GET or POST"),
                ));
            }
        }
        let headers = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                h.compile()
                    .map(|c| (h.name.clone(), c))
                    .map_err(|e| e.within(&format!("headers[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(CompiledMatch {
            path,
            methods: self.methods.clone(),
            headers,
            authority,
        })
    }
}

impl RequestMatch {
    /// How many regular expressions the block holds (path, authority and header values),
    /// counted against [`crate::limits::MAX_REGEXES_PER_FILTER`].
    pub fn regex_count(&self) -> usize {
        let is_regex = |m: &Option<StringMatchSpec>| m.as_ref().is_some_and(|m| m.regex.is_some());
        usize::from(is_regex(&self.path))
            + usize::from(is_regex(&self.authority))
            + self.headers.iter().filter(|h| h.regex.is_some()).count()
    }
}

impl HeaderMatchSpec {
    fn compile(&self) -> Result<HeaderCondition, ValidationError> {
        let value = StringMatchSpec {
            exact: self.exact.clone(),
            prefix: self.prefix.clone(),
            regex: self.regex.clone(),
        };
        let has_value = value != StringMatchSpec::default();
        match (self.present, has_value) {
            (Some(p), false) => Ok(HeaderCondition::Present(p)),
            (None, true) => value.compile().map(HeaderCondition::Value),
            (Some(_), true) => Err(ValidationError::new(
                "present",
                "set either present or one of exact, prefix, regex, not both",
            )),
            (None, false) => Err(ValidationError::new(
                "",
                "set present, or one of exact, prefix or regex",
            )),
        }
    }
}

/// A path condition a [`crate::index::PolicyIndex`] can look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKey<'a> {
    Exact(&'a [u8]),
    Prefix(&'a [u8]),
}

impl CompiledMatch {
    /// The path condition, if it is an exact path or a prefix.
    pub fn path_key(&self) -> Option<PathKey<'_>> {
        match self.path.as_ref()? {
            StringMatch::Exact(p) => Some(PathKey::Exact(p.as_bytes())),
            StringMatch::Prefix(p) => Some(PathKey::Prefix(p.as_bytes())),
            _ => None,
        }
    }

    /// Whether the request satisfies every condition.
    pub fn matches(&self, req: &RequestHeaders) -> bool {
        if let Some(p) = &self.path {
            if !p.matches(req.path()) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.as_bytes() == req.method()) {
            return false;
        }
        if let Some(a) = &self.authority {
            if !a.matches(req.authority()) {
                return false;
            }
        }
        self.headers.iter().all(|(name, cond)| match cond {
            HeaderCondition::Present(p) => req.get(name.as_str()).is_some() == *p,
            HeaderCondition::Value(m) => req.get(name.as_str()).is_some_and(|v| m.matches(v)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, method: &str, extra: &[(&str, &str)]) -> RequestHeaders {
        let mut pairs = vec![
            (":path".to_string(), path.as_bytes().to_vec()),
            (":method".to_string(), method.as_bytes().to_vec()),
            (":authority".to_string(), b"shop.local".to_vec()),
        ];
        pairs.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
        );
        RequestHeaders::new(pairs)
    }

    fn compile(json: &str) -> Result<CompiledMatch, ValidationError> {
        serde_json::from_str::<RequestMatch>(json)
            .unwrap()
            .compile()
    }

    #[test]
    fn empty_match_selects_everything() {
        assert!(compile("{}").unwrap().matches(&req("/", "GET", &[])));
    }

    #[test]
    fn all_conditions_must_hold() {
        let m = compile(
            r#"{"path":{"prefix":"/api"},"methods":["GET","POST"],
                "headers":[{"name":"x-user","regex":"u[0-9]+"},{"name":"x-debug","present":false}],
                "authority":{"exact":"shop.local"}}"#,
        )
        .unwrap();
        assert!(m.matches(&req("/api/x?q=1", "GET", &[("x-user", "u42")])));
        assert!(!m.matches(&req("/web", "GET", &[("x-user", "u42")])));
        assert!(!m.matches(&req("/api", "PUT", &[("x-user", "u42")])));
        assert!(!m.matches(&req("/api", "GET", &[("x-user", "admin")])));
        assert!(!m.matches(&req("/api", "GET", &[("x-user", "u1"), ("x-debug", "1")])));
    }

    #[test]
    fn regexes_are_counted() {
        let m: RequestMatch = serde_json::from_str(
            r#"{"path":{"regex":"/a.*"},"authority":{"prefix":"x"},
                "headers":[{"name":"a","regex":"1"},{"name":"b","exact":"2"},{"name":"c","regex":"3"}]}"#,
        )
        .unwrap();
        assert_eq!(m.regex_count(), 3);
        assert_eq!(RequestMatch::default().regex_count(), 0);
    }

    #[test]
    fn errors_name_the_field() {
        let e = compile(r#"{"headers":[{"name":"x","present":true,"exact":"y"}]}"#).unwrap_err();
        assert_eq!(e.field, "headers[0].present");
        let e = compile(r#"{"methods":["get"]}"#).unwrap_err();
        assert_eq!(e.field, "methods[0]");
        let e = compile(r#"{"path":{"regex":"("}}"#).unwrap_err();
        assert_eq!(e.field, "path.regex");
    }
}
