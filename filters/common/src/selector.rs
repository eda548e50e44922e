//! Which proxies a policy is pushed to.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The identity a proxy presents to the control plane: Envoy's `node` (id, cluster, and the
/// string values of its metadata, used as labels).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
}

/// The `selector` block of every policy. Each list that is set must contain the proxy's
/// value, and every label must equal the proxy's metadata value. An empty selector selects
/// every proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Envoy node ids (`--service-node`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_ids: Vec<String>,
    /// Envoy node clusters (`--service-cluster`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Node metadata entries that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    /// Whether the proxy is selected.
    pub fn selects(&self, node: &NodeInfo) -> bool {
        (self.node_ids.is_empty() || self.node_ids.contains(&node.id))
            && (self.clusters.is_empty() || self.clusters.contains(&node.cluster))
            && self
                .labels
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cluster: &str, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            cluster: cluster.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn empty_selects_all() {
        assert!(Selector::default().selects(&node("a", "b", &[])));
    }

    #[test]
    fn every_set_condition_must_hold() {
        let s = Selector {
            node_ids: vec![],
            clusters: vec!["shop".into()],
            labels: [("zone".to_string(), "eu".to_string())].into(),
        };
        assert!(s.selects(&node("p1", "shop", &[("zone", "eu"), ("x", "y")])));
        assert!(!s.selects(&node("p1", "shop", &[("zone", "us")])));
        assert!(!s.selects(&node("p1", "cart", &[("zone", "eu")])));
        assert!(!s.selects(&node("p1", "shop", &[])));
    }
}
