//! Which proxies may open xDS streams, by a rule of their own (separate from the policy
//! API's users): with mutual TLS, a proxy's node id must be one of its client
//! certificate's names, so one proxy cannot claim another's node and read its
//! configuration or plant NACKs in its status; an optional allow-list of node ids and
//! clusters; and a cap on open streams, so clients inventing node ids cannot grow the
//! server without bound (disconnected ones expire, see [`super::proxies`]).

use crate::tls::PeerInfo;
use envoy_types::pb::envoy::config::core::v3::Node;
use meshwarden_xds::{Admission, XdsStats};
use std::sync::Arc;
use tonic::Status;

/// Open xDS streams allowed by default.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;

/// The xDS admission rule.
#[derive(Debug, Clone)]
pub struct XdsAccess {
    /// mTLS is on: every stream needs a verified client certificate naming its node id (a
    /// URI SAN such as a SPIFFE id, or a DNS SAN, equal to `node.id`).
    pub bind_to_certificate: bool,
    /// If non-empty (or `allow_clusters` is), only these node ids (`*` at the end matches
    /// any rest) ...
    pub allow_nodes: Vec<String>,
    /// ... or nodes of these clusters are served.
    pub allow_clusters: Vec<String>,
    /// Streams open at once, at most.
    pub max_streams: usize,
    /// The server's counters (for the number of open streams).
    pub stats: Option<Arc<XdsStats>>,
}

impl Default for XdsAccess {
    fn default() -> Self {
        Self {
            bind_to_certificate: false,
            allow_nodes: Vec::new(),
            allow_clusters: Vec::new(),
            max_streams: DEFAULT_MAX_STREAMS,
            stats: None,
        }
    }
}

impl XdsAccess {
    /// Why `node`, on a connection from `peer`, may not be served; `None` if it may.
    pub fn refusal(&self, peer: Option<&PeerInfo>, node: &Node) -> Option<Status> {
        if self.bind_to_certificate {
            let Some(identity) = peer.and_then(|p| p.identity.as_ref()) else {
                return Some(Status::unauthenticated(format!(
                    "node {:?}: xDS needs a client certificate (mutual TLS is on)",
                    node.id
                )));
            };
            if !identity.has(&node.id) {
                let names: Vec<&str> = identity.names().collect();
                return Some(Status::permission_denied(format!(
                    "node id {:?} does not match the client certificate (its names: {names:?})",
                    node.id
                )));
            }
        }
        let listed = self
            .allow_nodes
            .iter()
            .any(|pattern| matches_pattern(pattern, &node.id))
            || self.allow_clusters.contains(&node.cluster);
        if (!self.allow_nodes.is_empty() || !self.allow_clusters.is_empty()) && !listed {
            return Some(Status::permission_denied(format!(
                "node {:?} (cluster {:?}) is not on the xDS allow-list (--xds-allow-node, --xds-allow-cluster)",
                node.id, node.cluster
            )));
        }
        let open = self
            .stats
            .as_ref()
            .map_or(0, |s| XdsStats::get(&s.connected) as usize);
        if open >= self.max_streams {
            return Some(Status::resource_exhausted(format!(
                "{open} xDS streams are open, the most this control plane serves; retry later"
            )));
        }
        None
    }
}

/// `pattern` is an exact id, or a prefix followed by `*`.
fn matches_pattern(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => pattern == id,
    }
}

impl Admission for XdsAccess {
    fn admit(&self, request: &tonic::Extensions, node: &Node) -> Result<(), Status> {
        match self.refusal(request.get::<PeerInfo>(), node) {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerIdentity;

    fn node(id: &str, cluster: &str) -> Node {
        Node {
            id: id.into(),
            cluster: cluster.into(),
            ..Default::default()
        }
    }

    fn peer(names: &[&str]) -> PeerInfo {
        PeerInfo {
            remote: None,
            identity: Some(Arc::new(PeerIdentity {
                uris: names.iter().map(|n| n.to_string()).collect(),
                dns: Vec::new(),
            })),
        }
    }

    #[test]
    fn by_default_every_node_is_served() {
        assert!(XdsAccess::default()
            .refusal(None, &node("a", "c"))
            .is_none());
    }

    #[test]
    fn with_mtls_the_node_id_must_be_a_certificate_name() {
        let access = XdsAccess {
            bind_to_certificate: true,
            ..Default::default()
        };
        assert!(access
            .refusal(Some(&peer(&["edge-1"])), &node("edge-1", "c"))
            .is_none());
        let wrong = access
            .refusal(Some(&peer(&["edge-2"])), &node("edge-1", "c"))
            .unwrap();
        assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
        assert!(wrong.message().contains(r#"node id "edge-1""#), "{wrong:?}");
        assert!(wrong.message().contains("edge-2"), "{wrong:?}");
        let anonymous = access.refusal(None, &node("edge-1", "c")).unwrap();
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn an_allow_list_admits_listed_ids_prefixes_and_clusters_only() {
        let access = XdsAccess {
            allow_nodes: vec!["edge-1".into(), "shop-*".into()],
            allow_clusters: vec!["payments".into()],
            ..Default::default()
        };
        for (id, cluster) in [("edge-1", "x"), ("shop-7", "x"), ("other", "payments")] {
            assert!(access.refusal(None, &node(id, cluster)).is_none(), "{id}");
        }
        let refused = access.refusal(None, &node("edge-10", "x")).unwrap();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("allow-list"), "{refused:?}");
    }

    #[test]
    fn open_streams_are_capped() {
        let stats = Arc::new(XdsStats::default());
        stats
            .connected
            .store(2, std::sync::atomic::Ordering::Relaxed);
        let access = XdsAccess {
            max_streams: 2,
            stats: Some(stats),
            ..Default::default()
        };
        let refused = access.refusal(None, &node("a", "c")).unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    }
}
