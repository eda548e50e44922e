//! `RateLimitPolicy.spec`. Not implemented in this release: every RateLimitPolicy is rejected with a clear
//! message, so nothing is pushed that the filter would not enforce.

use crate::error::ValidationError;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `spec` of a `RateLimitPolicy` (placeholder until the filter lands).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RateLimitSpec(Map<String, Value>);

impl KindSpec for RateLimitSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        Err(ValidationError::new(
            "",
            "RateLimitPolicy is not supported by this release of meshwarden yet",
        ))
    }
}
