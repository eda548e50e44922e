//! The contract every policy kind's `spec` fulfils.

use crate::error::ValidationError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A kind-specific policy body (everything in `spec` but `selector` and `match`).
///
/// Deserialization checks shape and field-level types (unknown fields are rejected);
/// [`KindSpec::validate`] checks what types alone cannot express. The same code runs in the
/// control plane's API and in the filter's `on_configure`.
pub trait KindSpec: Serialize + DeserializeOwned + Clone + std::fmt::Debug {
    /// Cross-field checks. Error paths are relative to `spec`.
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

/// Deserializes `value` as `T`, reporting the failing field under `prefix`.
pub fn from_value<T: DeserializeOwned>(
    prefix: &str,
    value: &serde_json::Value,
) -> Result<T, ValidationError> {
    #[cfg(feature = "field-paths")]
    return serde_path_to_error::deserialize(value)
        .map_err(|e| ValidationError::from_serde(prefix, e));
    #[cfg(not(feature = "field-paths"))]
    T::deserialize(value).map_err(|e| ValidationError::from_json(prefix, &e))
}
