//! The configuration a filter receives over ECDS: the policies of its kind that select the
//! proxy, in evaluation order.

use crate::error::ValidationError;
use crate::index::PolicyIndex;
use crate::limits::{MAX_FILTER_CONFIG_BYTES, MAX_POLICIES_PER_FILTER, MAX_REGEXES_PER_FILTER};
use crate::matcher::{CompiledMatch, RequestMatch};
use crate::names::PolicyName;
use crate::request::RequestHeaders;
use crate::spec::{from_value, KindSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Wire form of one policy inside a filter configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WirePolicy {
    pub name: PolicyName,
    /// Content version of the policy document, for logs and metrics.
    #[serde(default)]
    pub version: String,
    #[serde(default, rename = "match")]
    pub request_match: RequestMatch,
    pub spec: Value,
}

/// Wire form of a whole filter configuration (`{"policies": [...]}`); an empty list makes
/// the filter a pass-through.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireConfig {
    #[serde(default)]
    pub policies: Vec<WirePolicy>,
}

/// A policy ready to run inside a filter.
#[derive(Debug, Clone)]
pub struct CompiledPolicy<S> {
    pub name: PolicyName,
    pub version: String,
    pub matcher: CompiledMatch,
    pub spec: S,
}

/// A validated filter configuration for kind `S`.
#[derive(Debug, Clone)]
pub struct FilterConfig<S> {
    pub policies: Vec<CompiledPolicy<S>>,
    /// Which policies can match a request (by path).
    pub index: PolicyIndex,
}

impl<S> Default for FilterConfig<S> {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            index: PolicyIndex::default(),
        }
    }
}

impl<S: KindSpec> FilterConfig<S> {
    /// Parses and validates the bytes Envoy hands to `on_configure`. Empty bytes are an
    /// empty (pass-through) configuration.
    ///
    /// The limits of [`crate::limits`] are checked first (size, before anything is parsed),
    /// so a configuration's memory in the VM stays proportional to what it holds; the
    /// bytes are deserialized straight into the wire form, with no intermediate JSON tree
    /// of the whole configuration.
    pub fn parse(bytes: &[u8]) -> Result<Self, ValidationError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        if bytes.len() > MAX_FILTER_CONFIG_BYTES {
            return Err(ValidationError::new(
                "",
                format!(
                    "configuration is {} bytes, more than the limit of {MAX_FILTER_CONFIG_BYTES} bytes",
                    bytes.len()
                ),
            ));
        }
        let not_json = |e: serde_json::Error| {
            ValidationError::new("", format!("configuration is not JSON: {e}"))
        };
        let mut de = serde_json::Deserializer::from_slice(bytes);
        #[cfg(feature = "field-paths")]
        let wire: WireConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            if e.inner().is_syntax() || e.inner().is_eof() {
                not_json(e.into_inner())
            } else {
                ValidationError::from_serde("", e)
            }
        })?;
        #[cfg(not(feature = "field-paths"))]
        let wire = WireConfig::deserialize(&mut de).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                not_json(e)
            } else {
                ValidationError::from_json("", &e)
            }
        })?;
        de.end().map_err(not_json)?;
        if wire.policies.len() > MAX_POLICIES_PER_FILTER {
            return Err(ValidationError::new(
                "policies",
                format!(
                    "{} policies, more than the limit of {MAX_POLICIES_PER_FILTER}",
                    wire.policies.len()
                ),
            ));
        }
        let regexes: usize = wire
            .policies
            .iter()
            .map(|p| p.request_match.regex_count())
            .sum();
        if regexes > MAX_REGEXES_PER_FILTER {
            return Err(ValidationError::new(
                "policies",
                format!(
                    "{regexes} regular expressions, more than the limit of {MAX_REGEXES_PER_FILTER}"
                ),
            ));
        }
        let policies = wire
            .policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let at = format!("policies[{i}]");
                let matcher = p
                    .request_match
                    .compile()
                    .map_err(|e| e.within(&format!("{at}.match")))?;
                let spec: S = from_value(&format!("{at}.spec"), &p.spec)?;
                spec.validate()
                    .map_err(|e| e.within(&format!("{at}.spec")))?;
                Ok(CompiledPolicy {
                    name: p.name,
                    version: p.version,
                    matcher,
                    spec,
                })
            })
            .collect::<Result<Vec<CompiledPolicy<S>>, ValidationError>>()?;
        let index = PolicyIndex::new(policies.iter().map(|p| &p.matcher));
        Ok(Self { policies, index })
    }

    /// The first policy (in configuration order) whose match selects the request.
    pub fn first_match(&self, req: &RequestHeaders) -> Option<&CompiledPolicy<S>> {
        self.index
            .candidates(req)
            .into_iter()
            .map(|i| &self.policies[i as usize])
            .find(|p| p.matcher.matches(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceSpec;
    use serde_json::json;

    fn policy(name: &str, path_regex: Option<&str>) -> Value {
        let m = match path_regex {
            Some(r) => json!({"path": {"regex": r}}),
            None => json!({}),
        };
        json!({"name": name, "version": "0123456789abcdef", "match": m, "spec": {}})
    }

    fn parse(policies: Vec<Value>) -> Result<FilterConfig<TraceSpec>, ValidationError> {
        FilterConfig::parse(json!({ "policies": policies }).to_string().as_bytes())
    }

    #[test]
    fn parses_and_reports_fields() {
        let c = parse(vec![policy("a", Some("/x.*")), policy("b", None)]).unwrap();
        assert_eq!(c.policies.len(), 2);
        assert!(FilterConfig::<TraceSpec>::parse(b"  ")
            .unwrap()
            .policies
            .is_empty());
        let e = FilterConfig::<TraceSpec>::parse(br#"{"policies": [}"#).unwrap_err();
        assert!(e.message.starts_with("configuration is not JSON: "), "{e}");
        let e = FilterConfig::<TraceSpec>::parse(br#"{"policies": []} x"#).unwrap_err();
        assert!(e.message.starts_with("configuration is not JSON: "), "{e}");
        let e = parse(vec![json!({"name": "a", "spec": {}, "extra": 1})]).unwrap_err();
        assert!(e.field.starts_with("policies[0]"), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse(vec![policy("a", Some("("))]).unwrap_err();
        assert_eq!(e.field, "policies[0].match.path.regex");
    }

    #[test]
    fn limits_are_enforced_before_compiling() {
        let many = (0..=MAX_POLICIES_PER_FILTER)
            .map(|i| policy(&format!("p{i}"), None))
            .collect();
        let e = parse(many).unwrap_err();
        assert_eq!(
            e.to_string(),
            "policies: 1025 policies, more than the limit of 1024"
        );
        let regexes = (0..=MAX_REGEXES_PER_FILTER / 2)
            .map(|i| {
                let mut p = policy(&format!("p{i}"), Some("a+"));
                p["match"]["authority"] = json!({"regex": "b+"});
                p
            })
            .collect();
        let e = parse(regexes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "policies: 258 regular expressions, more than the limit of 256"
        );
        let big = vec![0x20u8; MAX_FILTER_CONFIG_BYTES + 1];
        let mut big = big;
        big[0] = b'{';
        let e = FilterConfig::<TraceSpec>::parse(&big).unwrap_err();
        assert_eq!(
            e.message,
            "configuration is 4194305 bytes, more than the limit of 4194304 bytes"
        );
    }
}
