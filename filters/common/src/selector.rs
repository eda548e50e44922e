//! Which proxies a policy is pushed to.

use crate::error::ValidationError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The identity a proxy presents to the control plane, from Envoy's `node`: id, cluster,
/// labels and namespace. How each comes from a plain Envoy, an Istio sidecar and an Istio
/// gateway is the control plane's business (`meshwarden_cp::xds::node`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    /// The Kubernetes namespace, for proxies that run in one.
    pub namespace: Option<String>,
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
    /// Labels that must all be present with these values: node metadata entries, and an
    /// Istio proxy's workload labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Kubernetes namespaces (an Istio proxy's `NAMESPACE`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

impl Selector {
    /// Checks the values that have a fixed form: namespaces are DNS-1123 labels.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (i, ns) in self.namespaces.iter().enumerate() {
            let ok = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !ns.starts_with('-')
                && !ns.ends_with('-');
            if !ok {
                return Err(ValidationError::new(
                    format!("namespaces[{i}]"),
                    format!(
                        "{ns:?} is not a Kubernetes namespace name (DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the proxy is selected.
    pub fn selects(&self, node: &NodeInfo) -> bool {
        (self.node_ids.is_empty() || self.node_ids.contains(&node.id))
            && (self.clusters.is_empty() || self.clusters.contains(&node.cluster))
            && (self.namespaces.is_empty()
                || node
                    .namespace
                    .as_ref()
                    .is_some_and(|ns| self.namespaces.contains(ns)))
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
            namespace: None,
        }
    }

    #[test]
    fn empty_selects_all() {
        assert!(Selector::default().selects(&node("a", "b", &[])));
    }

    #[test]
    fn every_set_condition_must_hold() {
        let s = Selector {
            clusters: vec!["shop".into()],
            labels: [("zone".to_string(), "eu".to_string())].into(),
            ..Default::default()
        };
        assert!(s.selects(&node("p1", "shop", &[("zone", "eu"), ("x", "y")])));
        assert!(!s.selects(&node("p1", "shop", &[("zone", "us")])));
        assert!(!s.selects(&node("p1", "cart", &[("zone", "eu")])));
        assert!(!s.selects(&node("p1", "shop", &[])));
    }

    #[test]
    fn namespaces_must_be_dns_labels() {
        let bad = |ns: &str| {
            Selector {
                namespaces: vec!["ok".into(), ns.into()],
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .to_string()
        };
        assert!(bad("Shop").contains("namespaces[1]"), "{}", bad("Shop"));
        assert!(bad("a.b").contains("DNS-1123"));
        assert!(bad("-a").contains("namespaces[1]"));
        assert!(bad(&"a".repeat(64)).contains("namespaces[1]"));
    }

    #[test]
    fn namespaces_need_a_proxy_in_one_of_them() {
        let s = Selector {
            namespaces: vec!["shop".into(), "cart".into()],
            ..Default::default()
        };
        let mut n = node("p1", "c", &[]);
        assert!(
            !s.selects(&n),
            "a proxy outside any namespace is not selected"
        );
        n.namespace = Some("cart".into());
        assert!(s.selects(&n));
        n.namespace = Some("other".into());
        assert!(!s.selects(&n));
    }
}
