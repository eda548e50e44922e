//! `FaultPolicy.spec`. Not implemented in this release: every FaultPolicy is rejected with a clear
//! message, so nothing is pushed that the filter would not enforce.

use crate::error::ValidationError;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `spec` of a `FaultPolicy` (placeholder until the filter lands).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FaultSpec(Map<String, Value>);

impl KindSpec for FaultSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        Err(ValidationError::new(
            "",
            "FaultPolicy is not supported by this release of meshwarden yet",
        ))
    }
}
