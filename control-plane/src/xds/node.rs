//! A proxy's identity from Envoy's `node`, for a plain Envoy, an Istio sidecar and an Istio
//! gateway alike:
//!
//! | field | plain Envoy | Istio sidecar / gateway |
//! |---|---|---|
//! | id | `node.id` | `sidecar~IP~POD.NS~NS.svc.cluster.local` (`router~…` for a gateway) |
//! | cluster | `node.cluster` | `APP.NS` (the `app` label, else the workload name) |
//! | labels | top-level string entries of `node.metadata` | those, plus the workload labels under `node.metadata.LABELS` |
//! | namespace | `node.metadata.NAMESPACE` | `node.metadata.NAMESPACE`, else the id's last part |
//!
//! Where a top-level metadata entry and a workload label share a key, the workload label
//! wins (it is what the user wrote on the pod).

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use envoy_types::pb::google::protobuf::Struct;
use meshwarden_common::NodeInfo;

/// Metadata key of an Istio proxy's workload labels.
pub const LABELS_KEY: &str = "LABELS";
/// Metadata key of an Istio proxy's namespace.
pub const NAMESPACE_KEY: &str = "NAMESPACE";
/// Metadata key naming the Envoy cluster through which a proxy fetches modules from the
/// control plane's HTTP port (Istio: `ISTIO_META_MESHWARDEN_MODULE_CLUSTER`).
pub const MODULE_CLUSTER_KEY: &str = "MESHWARDEN_MODULE_CLUSTER";

/// A proxy as the control plane composes for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyNode {
    /// What selectors see.
    pub info: NodeInfo,
    /// Set when the proxy asked for modules over HTTP through this cluster.
    pub module_cluster: Option<String>,
}

/// Converts Envoy's node.
pub fn proxy_node(node: &Node) -> ProxyNode {
    let metadata = node.metadata.as_ref();
    let mut labels = string_entries(metadata);
    let workload = metadata
        .and_then(|m| m.fields.get(LABELS_KEY))
        .and_then(|v| match &v.kind {
            Some(ValueKind::StructValue(s)) => Some(string_entries(Some(s))),
            _ => None,
        })
        .unwrap_or_default();
    labels.extend(workload);
    ProxyNode::from_parts(&node.id, &node.cluster, labels)
}

impl ProxyNode {
    /// A proxy from its id, cluster and merged labels (as status lists them): the
    /// namespace and module cluster are derived the way [`proxy_node`] derives them.
    pub fn from_parts(
        id: &str,
        cluster: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Self {
        let namespace = labels
            .get(NAMESPACE_KEY)
            .filter(|ns| !ns.is_empty())
            .cloned()
            .or_else(|| istio_namespace(id));
        let module_cluster = labels
            .get(MODULE_CLUSTER_KEY)
            .filter(|c| !c.is_empty())
            .cloned();
        ProxyNode {
            info: NodeInfo {
                id: id.to_string(),
                cluster: cluster.to_string(),
                labels,
                namespace,
            },
            module_cluster,
        }
    }
}

/// Converts Envoy's node into what selectors see.
pub fn node_info(node: &Node) -> NodeInfo {
    proxy_node(node).info
}

fn string_entries(s: Option<&Struct>) -> std::collections::BTreeMap<String, String> {
    s.iter()
        .flat_map(|m| m.fields.iter())
        .filter_map(|(k, v)| match &v.kind {
            Some(ValueKind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

/// The namespace in an Istio node id `TYPE~IP~POD.NS~NS.svc.cluster.local`.
pub(crate) fn istio_namespace(id: &str) -> Option<String> {
    let parts: Vec<&str> = id.split('~').collect();
    let [kind, _, _, domain] = parts.as_slice() else {
        return None;
    };
    if !matches!(*kind, "sidecar" | "router" | "waypoint") {
        return None;
    }
    let ns = domain.split('.').next()?;
    (!ns.is_empty()).then(|| ns.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(ValueKind::StringValue(v.into())),
        }
    }

    fn st(entries: &[(&str, Value)]) -> Struct {
        Struct {
            fields: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn plain_envoy_labels_are_top_level_strings() {
        let node = Node {
            id: "p1".into(),
            cluster: "shop".into(),
            metadata: Some(st(&[
                ("zone", s("eu")),
                (
                    "n",
                    Value {
                        kind: Some(ValueKind::NumberValue(1.0)),
                    },
                ),
            ])),
            ..Default::default()
        };
        let p = proxy_node(&node);
        assert_eq!(p.info.id, "p1");
        assert_eq!(p.info.cluster, "shop");
        assert_eq!(p.info.labels.len(), 1);
        assert_eq!(p.info.labels["zone"], "eu");
        assert_eq!(p.info.namespace, None);
        assert_eq!(p.module_cluster, None);
    }

    #[test]
    fn istio_sidecar_workload_labels_and_namespace() {
        let labels = Value {
            kind: Some(ValueKind::StructValue(st(&[
                ("app", s("reviews")),
                ("version", s("v2")),
            ]))),
        };
        let node = Node {
            id: "sidecar~10.0.0.5~reviews-v2-0.bookinfo~bookinfo.svc.cluster.local".into(),
            cluster: "reviews.bookinfo".into(),
            metadata: Some(st(&[
                ("NAMESPACE", s("bookinfo")),
                ("ISTIO_VERSION", s("1.29.1")),
                ("LABELS", labels),
                (
                    MODULE_CLUSTER_KEY,
                    s("outbound|18001||meshwarden.meshwarden-system.svc.cluster.local"),
                ),
            ])),
            ..Default::default()
        };
        let p = proxy_node(&node);
        assert_eq!(p.info.namespace.as_deref(), Some("bookinfo"));
        assert_eq!(p.info.labels["app"], "reviews");
        assert_eq!(p.info.labels["version"], "v2");
        assert_eq!(p.info.labels["ISTIO_VERSION"], "1.29.1");
        assert_eq!(
            p.module_cluster.as_deref(),
            Some("outbound|18001||meshwarden.meshwarden-system.svc.cluster.local")
        );
    }

    #[test]
    fn namespace_falls_back_to_the_istio_node_id() {
        let node = Node {
            id: "router~10.0.0.9~ingress-0.istio-system~istio-system.svc.cluster.local".into(),
            ..Default::default()
        };
        assert_eq!(node_info(&node).namespace.as_deref(), Some("istio-system"));
        let plain = Node {
            id: "a~b~c~d.e".into(),
            ..Default::default()
        };
        assert_eq!(node_info(&plain).namespace, None);
    }
}
