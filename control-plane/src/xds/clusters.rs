//! CDS for mirror targets: every `host:port` target of the MirrorPolicies selecting a proxy
//! becomes an Envoy `Cluster` named as the filter expects
//! ([`HostPort::cluster_name`](meshwarden_common::mirror::HostPort::cluster_name)), so users
//! edit no Envoy configuration. A proxy without such targets gets an empty cluster list,
//! which leaves its static clusters alone. (Service targets use the cluster Istio already
//! gives the proxy, and `cluster` targets an existing one: neither needs CDS.)

use super::modules::ModuleSet;
use super::types::ResourceType;
use crate::policy_set::{short_hash, StoredPolicy};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, DnsLookupFamily,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;
use meshwarden_common::document::KindBody;
use meshwarden_common::mirror::HostPort;
use meshwarden_common::Kind;
use meshwarden_xds::Resource;
use prost::Message;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Type URL of CDS resources.
pub const CLUSTER_TYPE_URL: &str = meshwarden_xds::CLUSTER_TYPE;

/// The clusters of `host:port` mirror targets.
#[derive(Debug, Clone, Copy, Default)]
pub struct MirrorClusters;

impl ResourceType for MirrorClusters {
    fn type_url(&self) -> &'static str {
        CLUSTER_TYPE_URL
    }

    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MirrorPolicy]
    }

    fn compose(
        &self,
        _kind: Kind,
        policies: &[&StoredPolicy],
        _modules: &ModuleSet,
        _variant: Option<&str>,
    ) -> Vec<Arc<Resource>> {
        compose_clusters(&mirror_hosts(policies.iter().copied()))
            .into_iter()
            .map(Arc::new)
            .collect()
    }
}

/// Connect timeout of generated clusters: a dead mirror target fails fast.
const CONNECT_TIMEOUT_MS: i32 = 500;

/// The `host:port` mirror targets of `policies` (already selected for one proxy), sorted
/// and without duplicates.
pub fn mirror_hosts<'a>(
    policies: impl IntoIterator<Item = &'a StoredPolicy>,
) -> BTreeSet<HostPort> {
    policies
        .into_iter()
        .filter_map(|p| match &p.doc.body {
            KindBody::Mirror(spec) => Some(spec.host_targets()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The clusters for `hosts` (named `meshwarden_mirror_<host>_<port>`), in name order.
pub fn compose_clusters(hosts: &BTreeSet<HostPort>) -> Vec<Resource> {
    let mut out: Vec<Resource> = hosts
        .iter()
        .map(|h| {
            let cluster = cluster_for(h);
            let version = short_hash(&cluster.encode_to_vec());
            Resource {
                name: cluster.name.clone(),
                version,
                summary: vec![h.to_string()],
                body: pack_any(cluster),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The Envoy cluster for one target: STATIC for an IP address, STRICT_DNS (IPv4 preferred)
/// for a name.
pub fn cluster_for(h: &HostPort) -> Cluster {
    let name = h.cluster_name();
    let discovery = if h.is_ip() {
        DiscoveryType::Static
    } else {
        DiscoveryType::StrictDns
    };
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: h.host.clone(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                        h.port,
                    ))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(Duration {
            seconds: 0,
            nanos: CONNECT_TIMEOUT_MS * 1_000_000,
        }),
        dns_lookup_family: if h.is_ip() {
            DnsLookupFamily::Auto as i32
        } else {
            DnsLookupFamily::V4Preferred as i32
        },
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwarden_common::PolicyDocument;
    use prost::Name;
    use serde_json::json;

    fn stored(name: &str, kind: &str, spec: serde_json::Value) -> StoredPolicy {
        let doc = PolicyDocument::from_value(&json!({
            "apiVersion": "meshwarden.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        StoredPolicy {
            version: "v".into(),
            generation: 1,
            updated_unix_ms: 0,
            revision: 1,
            doc,
        }
    }

    #[test]
    fn host_targets_become_named_clusters() {
        let policies = [
            stored(
                "a",
                "MirrorPolicy",
                json!({"mirrors": [{"target": {"host": "127.0.0.1:9000"}}, {"target": {"cluster": "existing"}}]}),
            ),
            stored(
                "b",
                "MirrorPolicy",
                json!({"mirror": {"host": "shadow.local:80"}}),
            ),
            stored(
                "c",
                "MirrorPolicy",
                json!({"mirror": {"host": "127.0.0.1:9000"}}),
            ),
            stored("t", "TracePolicy", json!({})),
        ];
        let hosts = mirror_hosts(&policies);
        assert_eq!(
            hosts.len(),
            2,
            "duplicates and cluster targets are not clusters"
        );
        let clusters = compose_clusters(&hosts);
        let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "meshwarden_mirror_127.0.0.1_9000",
                "meshwarden_mirror_shadow.local_80"
            ]
        );
        assert_eq!(clusters[0].body.type_url, CLUSTER_TYPE_URL);
        assert_eq!(Cluster::type_url(), CLUSTER_TYPE_URL);

        let c = Cluster::decode(clusters[1].body.value.as_slice()).unwrap();
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
        );
        let c = Cluster::decode(clusters[0].body.value.as_slice()).unwrap();
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        assert_eq!(c.load_assignment.unwrap().cluster_name, c.name);
    }

    #[test]
    fn versions_are_content_derived() {
        let h: BTreeSet<HostPort> = [HostPort::parse("127.0.0.1:1").unwrap()].into();
        assert_eq!(compose_clusters(&h), compose_clusters(&h));
        let other: BTreeSet<HostPort> = [HostPort::parse("127.0.0.1:2").unwrap()].into();
        assert_ne!(
            compose_clusters(&h)[0].version,
            compose_clusters(&other)[0].version
        );
        assert!(compose_clusters(&BTreeSet::new()).is_empty());
    }
}
