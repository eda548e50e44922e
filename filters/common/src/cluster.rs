//! The Envoy cluster through which a proxy's filters call the control plane (capture
//! reports, breaker status): `meshwarden_xds`, the xDS cluster of meshwarden's own
//! bootstrap and, in Istio, the cluster the shipped EnvoyFilter adds for the control plane
//! Service.

use crate::error::ValidationError;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// The xDS cluster of meshwarden's own bootstrap.
pub const DEFAULT_CLUSTER: &str = "meshwarden_xds";

pub use crate::grpc::MAX_CLUSTER_LEN;

/// A cluster name: 1 to [`MAX_CLUSTER_LEN`] printable ASCII characters without spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ControlPlaneCluster(String);

impl ControlPlaneCluster {
    /// `name`, if it is a valid cluster name.
    pub fn new(name: &str) -> Result<Self, ValidationError> {
        let printable = name.bytes().all(|b| b.is_ascii_graphic());
        if name.is_empty() || name.len() > MAX_CLUSTER_LEN || !printable {
            return Err(ValidationError::new(
                "",
                format!(
                    "must be 1 to {MAX_CLUSTER_LEN} printable ASCII characters without spaces, got {name:?}"
                ),
            ));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ControlPlaneCluster {
    fn default() -> Self {
        Self(DEFAULT_CLUSTER.to_string())
    }
}

impl fmt::Display for ControlPlaneCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ControlPlaneCluster {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::new(&name).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(ControlPlaneCluster::default().as_str(), "meshwarden_xds");
        let istio = "outbound|18000||meshwarden.meshwarden-system.svc.cluster.local";
        assert_eq!(ControlPlaneCluster::new(istio).unwrap().as_str(), istio);
        for bad in ["", "a b", "é", &"x".repeat(MAX_CLUSTER_LEN + 1)] {
            let e = ControlPlaneCluster::new(bad).unwrap_err();
            assert!(e.message.contains("printable ASCII"), "{bad:?}: {e}");
        }
        let e = serde_json::from_str::<ControlPlaneCluster>("\"a b\"").unwrap_err();
        assert!(e.to_string().contains("printable ASCII"), "{e}");
    }
}
