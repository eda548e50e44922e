//! `MirrorPolicy.spec`. Not implemented in this release: every MirrorPolicy is rejected with a clear
//! message, so nothing is pushed that the filter would not enforce.

use crate::error::ValidationError;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `spec` of a `MirrorPolicy` (placeholder until the filter lands).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MirrorSpec(Map<String, Value>);

impl KindSpec for MirrorSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        Err(ValidationError::new(
            "",
            "MirrorPolicy is not supported by this release of meshwarden yet",
        ))
    }
}
