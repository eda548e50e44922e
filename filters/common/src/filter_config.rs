//! The configuration a filter receives over ECDS: the policies of its kind that select the
//! proxy, in evaluation order.

use crate::error::ValidationError;
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
}

impl<S> Default for FilterConfig<S> {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
        }
    }
}

impl<S: KindSpec> FilterConfig<S> {
    /// Parses and validates the bytes Envoy hands to `on_configure`. Empty bytes are an
    /// empty (pass-through) configuration.
    pub fn parse(bytes: &[u8]) -> Result<Self, ValidationError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ValidationError::new("", format!("configuration is not JSON: {e}")))?;
        let wire: WireConfig = from_value("", &value)?;
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
            .collect::<Result<_, ValidationError>>()?;
        Ok(Self { policies })
    }

    /// The first policy (in configuration order) whose match selects the request.
    pub fn first_match(&self, req: &RequestHeaders) -> Option<&CompiledPolicy<S>> {
        self.policies.iter().find(|p| p.matcher.matches(req))
    }
}
