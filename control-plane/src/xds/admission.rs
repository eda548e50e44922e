//! Which proxies may open xDS streams, by a rule of their own (separate from the policy
//! API's users): with mutual TLS, a proxy's node must be the one its client certificate
//! names ([`NodeBinding`]), so one proxy cannot claim another's node and read its
//! configuration or plant NACKs in its status; an optional allow-list of node ids and
//! clusters; and a cap on open streams, so clients inventing node ids cannot grow the
//! server without bound (disconnected ones expire, see [`super::proxies`]).

use super::node::{istio_namespace, proxy_node};
use crate::tls::{PeerIdentity, PeerInfo};
use envoy_types::pb::envoy::config::core::v3::Node;
use meshwarden_xds::{Admission, XdsStats};
use std::sync::Arc;
use tonic::Status;

/// Open xDS streams allowed by default.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;

/// Metadata key of an Istio proxy's service account.
pub const SERVICE_ACCOUNT_KEY: &str = "SERVICE_ACCOUNT";

/// How a proxy's node is bound to its client certificate when mutual TLS is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeBinding {
    /// The node id is one of the certificate's names (a URI SAN such as a SPIFFE id, or a
    /// DNS SAN).
    #[default]
    Exact,
    /// Istio's workload certificates: node ids (`sidecar~IP~POD.NS~NS.svc.DOMAIN`) are not
    /// certificate names, so, as istiod checks its own xDS clients, the certificate's
    /// SPIFFE id `spiffe://TRUST-DOMAIN/ns/NS/sa/SA` must name the namespace of the node id
    /// and of the `NAMESPACE` metadata, and the `SERVICE_ACCOUNT` metadata if present.
    /// A proxy can then claim only nodes of its own namespace and service account.
    Istio,
}

/// The xDS admission rule.
#[derive(Debug, Clone)]
pub struct XdsAccess {
    /// mTLS is on: every stream needs a verified client certificate that names its node
    /// as `binding` says.
    pub bind_to_certificate: bool,
    /// How the node is bound to the certificate.
    pub binding: NodeBinding,
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
            binding: NodeBinding::Exact,
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
        if let Some(status) = self.binding_refusal(peer, node) {
            return Some(status);
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

    /// Why a proxy report (capture summaries, open breakers) naming `node_id`, on a
    /// connection from `peer`, is refused: with mutual TLS, the node must be one the client
    /// certificate may claim, as for xDS (with `istio` binding: by the node id's namespace,
    /// since a report carries no metadata). `None` if it is accepted.
    pub fn report_refusal(&self, peer: Option<&PeerInfo>, node_id: &str) -> Option<Status> {
        let node = Node {
            id: node_id.to_string(),
            ..Default::default()
        };
        self.binding_refusal(peer, &node)
    }

    /// The certificate binding part of [`Self::refusal`].
    fn binding_refusal(&self, peer: Option<&PeerInfo>, node: &Node) -> Option<Status> {
        if self.bind_to_certificate {
            let Some(identity) = peer.and_then(|p| p.identity.as_ref()) else {
                return Some(Status::unauthenticated(format!(
                    "node {:?}: xDS needs a client certificate (mutual TLS is on)",
                    node.id
                )));
            };
            let mismatch = match self.binding {
                NodeBinding::Exact => (!identity.has(&node.id))
                    .then(|| "does not match the client certificate".to_string()),
                NodeBinding::Istio => istio_mismatch(identity, node),
            };
            if let Some(why) = mismatch {
                let names: Vec<&str> = identity.names().collect();
                return Some(Status::permission_denied(format!(
                    "node id {:?} {why} (its names: {names:?})",
                    node.id
                )));
            }
        }
        None
    }
}

/// Why `node` is not a node the Istio workload certificate `identity` may claim.
fn istio_mismatch(identity: &PeerIdentity, node: &Node) -> Option<String> {
    let Some((namespace, account)) = identity.uris.iter().find_map(|u| spiffe_workload(u)) else {
        return Some(
            "needs a client certificate with a SPIFFE id spiffe://TRUST-DOMAIN/ns/NS/sa/SA \
             (--xds-node-binding istio)"
                .to_string(),
        );
    };
    let Some(id_namespace) = istio_namespace(&node.id) else {
        return Some(
            "is not an Istio proxy id TYPE~IP~POD.NS~NS.svc.DOMAIN (--xds-node-binding istio)"
                .to_string(),
        );
    };
    let proxy = proxy_node(node);
    let claimed = [Some(id_namespace.as_str()), proxy.info.namespace.as_deref()];
    if let Some(other) = claimed.into_iter().flatten().find(|ns| *ns != namespace) {
        return Some(format!(
            "claims namespace {other:?}, the client certificate is of namespace {namespace:?}"
        ));
    }
    match proxy.info.labels.get(SERVICE_ACCOUNT_KEY) {
        Some(sa) if sa != account => Some(format!(
            "claims service account {sa:?}, the client certificate is of {account:?}"
        )),
        _ => None,
    }
}

/// The namespace and service account of a SPIFFE id `spiffe://TRUST-DOMAIN/ns/NS/sa/SA`.
fn spiffe_workload(uri: &str) -> Option<(&str, &str)> {
    let path = uri.strip_prefix("spiffe://")?;
    let mut parts = path.split('/');
    let (Some(domain), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (!domain.is_empty() && !ns.is_empty() && !sa.is_empty()).then_some((ns, sa))
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
    fn reports_are_bound_like_streams_but_not_limited_like_them() {
        let access = XdsAccess {
            bind_to_certificate: true,
            allow_clusters: vec!["shop".into()],
            max_streams: 0,
            ..Default::default()
        };
        let edge = peer(&["edge-1"]);
        assert!(access.report_refusal(Some(&edge), "edge-1").is_none());
        let other = access.report_refusal(Some(&edge), "edge-2").unwrap();
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        let none = access.report_refusal(None, "edge-1").unwrap();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(XdsAccess::default().report_refusal(None, "x").is_none());
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

    fn istio_node(id: &str, metadata: &[(&str, &str)]) -> Node {
        use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
        let fields = metadata
            .iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.to_string())),
                };
                (k.to_string(), value)
            })
            .collect();
        Node {
            metadata: Some(Struct { fields }),
            ..node(id, "web.shop")
        }
    }

    #[test]
    fn with_istio_binding_the_spiffe_id_names_the_nodes_namespace_and_service_account() {
        let access = XdsAccess {
            bind_to_certificate: true,
            binding: NodeBinding::Istio,
            ..Default::default()
        };
        let web = peer(&["spiffe://cluster.local/ns/shop/sa/web"]);
        let id = "sidecar~10.0.0.7~web-0.shop~shop.svc.cluster.local";
        let own = [("NAMESPACE", "shop"), ("SERVICE_ACCOUNT", "web")];
        assert!(access.refusal(Some(&web), &istio_node(id, &own)).is_none());
        assert!(access.refusal(Some(&web), &istio_node(id, &[])).is_none());
        let gateway = "router~10.0.0.9~gw-0.shop~shop.svc.cluster.local";
        assert!(access
            .refusal(Some(&web), &istio_node(gateway, &[]))
            .is_none());

        let refused = |peer: &PeerInfo, id: &str, metadata: &[(&str, &str)]| {
            let status = access
                .refusal(Some(peer), &istio_node(id, metadata))
                .unwrap();
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            status.message().to_string()
        };
        let other_ns = "sidecar~10.0.0.8~pay-0.payments~payments.svc.cluster.local";
        assert!(refused(&web, other_ns, &[]).contains(r#"claims namespace "payments""#));
        let claims_meta = refused(&web, id, &[("NAMESPACE", "payments")]);
        assert!(
            claims_meta.contains(r#"claims namespace "payments""#),
            "{claims_meta}"
        );
        let claims_sa = refused(&web, id, &[("SERVICE_ACCOUNT", "admin")]);
        assert!(
            claims_sa.contains(r#"claims service account "admin""#),
            "{claims_sa}"
        );
        assert!(refused(&web, "edge-1", &[]).contains("not an Istio proxy id"));
        let dns_only = peer(&["web.shop.svc"]);
        assert!(refused(&dns_only, id, &[]).contains("SPIFFE id"));
        let too_deep = peer(&["spiffe://cluster.local/ns/shop/sa/web/x"]);
        assert!(refused(&too_deep, id, &[]).contains("SPIFFE id"));
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
