//! CDS over ADS, state of the world and delta: the clusters for `host:port` mirror targets
//! ([`super::clusters`]). The ECDS sessions hand every Cluster-typed request to the state
//! here and ask it for due responses first, so a new target's cluster reaches the proxy
//! before the filter configuration that sends copies to it.
//!
//! Every proxy gets an answer to its first CDS request, possibly with no clusters: Envoy
//! waits for it before finishing initialization, and an empty list leaves static clusters
//! alone. After that, a response is due only when the proxy's cluster set changes; a NACK
//! is logged and counted, and the rejected version is not sent again.

use super::cache::Snapshot;
use super::clusters::{compose_clusters, mirror_hosts, ComposedCluster, CLUSTER_TYPE_URL};
use super::proxies::XdsStats;
use super::resources::aggregate_version;
use super::session::Common;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshwarden_common::Kind;
use std::collections::{BTreeSet, HashMap};

/// Whether a request is for clusters.
pub(crate) fn is_cds(type_url: &str) -> bool {
    type_url == CLUSTER_TYPE_URL
}

/// The clusters one proxy should have, recomputed once per snapshot.
#[derive(Debug, Default)]
struct Desired {
    snapshot_id: Option<u64>,
    clusters: Vec<ComposedCluster>,
    version: String,
}

impl Desired {
    fn refresh(&mut self, common: &Common, snapshot: &Snapshot) {
        if self.snapshot_id == Some(snapshot.id) {
            return;
        }
        let selected = snapshot
            .policies
            .of_kind(Kind::MirrorPolicy)
            .filter(|p| p.doc.selector.selects(&common.node));
        self.clusters = compose_clusters(&mirror_hosts(selected));
        self.version = aggregate_version(
            self.clusters
                .iter()
                .map(|c| (c.name.as_str(), c.version.as_str())),
        );
        self.snapshot_id = Some(snapshot.id);
    }
}

fn log_reply(common: &Common, version: &str, error: Option<&RpcStatus>) {
    match error {
        Some(status) => {
            XdsStats::add(&common.stats.nacks_total, 1);
            tracing::warn!(
                node = %common.node.id,
                version,
                message = %status.message,
                "proxy rejected mirror-target clusters"
            );
        }
        None => {
            XdsStats::add(&common.stats.acks_total, 1);
            tracing::debug!(node = %common.node.id, version, "proxy accepted mirror-target clusters");
        }
    }
}

fn count_push(common: &Common, resources: usize) {
    XdsStats::add(&common.stats.pushes_total, 1);
    XdsStats::add(&common.stats.resources_sent_total, resources as u64);
}

/// State-of-the-world CDS state of one stream (wildcard: every cluster of the proxy).
#[derive(Debug, Default)]
pub(crate) struct SotwCds {
    /// Set once the proxy asked for clusters.
    client_version: Option<String>,
    /// Version of the last response sent (or the client's, if it was current).
    last_version: Option<String>,
    /// Nonce and version of responses sent, to attribute replies (latest last).
    sent: Vec<(String, String)>,
    desired: Desired,
}

impl SotwCds {
    /// Handles a Cluster-typed request.
    pub fn on_request(&mut self, common: &mut Common, req: DiscoveryRequest, snapshot: &Snapshot) {
        if req.response_nonce.is_empty() {
            // (Re)subscription: a proxy already at the current version gets nothing.
            self.desired.refresh(common, snapshot);
            if self.last_version.is_none() && req.version_info == self.desired.version {
                self.last_version = Some(req.version_info.clone());
            }
            self.client_version = Some(req.version_info);
            return;
        }
        if let Some((_, version)) = self.sent.iter().find(|(n, _)| *n == req.response_nonce) {
            log_reply(common, version, req.error_detail.as_ref());
        }
    }

    /// Whether a response is due.
    pub fn is_due(&mut self, common: &Common, snapshot: &Snapshot) -> bool {
        if self.client_version.is_none() {
            return false;
        }
        self.desired.refresh(common, snapshot);
        self.last_version.as_deref() != Some(self.desired.version.as_str())
    }

    /// The due response, if any, recorded as sent.
    pub fn next_response(
        &mut self,
        common: &mut Common,
        snapshot: &Snapshot,
    ) -> Option<DiscoveryResponse> {
        if !self.is_due(common, snapshot) {
            return None;
        }
        let nonce = common.next_nonce();
        let version = self.desired.version.clone();
        self.last_version = Some(version.clone());
        self.sent.push((nonce.clone(), version.clone()));
        if self.sent.len() > 8 {
            self.sent.remove(0);
        }
        count_push(common, self.desired.clusters.len());
        tracing::debug!(node = %common.node.id, %version, clusters = self.desired.clusters.len(), "pushing mirror-target clusters");
        Some(DiscoveryResponse {
            version_info: version,
            resources: self
                .desired
                .clusters
                .iter()
                .map(|c| c.resource.clone())
                .collect(),
            type_url: CLUSTER_TYPE_URL.to_string(),
            nonce,
            ..Default::default()
        })
    }
}

/// Delta CDS state of one stream. Envoy subscribes to clusters with a wildcard; explicit
/// names are honoured too.
#[derive(Debug, Default)]
pub(crate) struct DeltaCds {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// Version the client has or was last sent, by name.
    known: HashMap<String, String>,
    /// Whether the first response (needed even when empty) went out.
    answered: bool,
    sent: Vec<(String, String)>,
    desired: Desired,
}

impl DeltaCds {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Handles a Cluster-typed request.
    pub fn on_request(
        &mut self,
        common: &mut Common,
        req: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) {
        if !self.subscribed {
            self.subscribed = true;
            self.wildcard = req.resource_names_subscribe.is_empty();
            self.known = req.initial_resource_versions.clone().into_iter().collect();
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                self.known.remove(name);
            }
        }
        if !req.response_nonce.is_empty() {
            if let Some((_, version)) = self.sent.iter().find(|(n, _)| *n == req.response_nonce) {
                log_reply(common, version, req.error_detail.as_ref());
            }
        }
        self.desired.refresh(common, snapshot);
    }

    /// The changed clusters and the names to remove.
    fn delta(
        &mut self,
        common: &Common,
        snapshot: &Snapshot,
    ) -> (Vec<ComposedCluster>, Vec<String>) {
        self.desired.refresh(common, snapshot);
        let changed: Vec<ComposedCluster> = self
            .desired
            .clusters
            .iter()
            .filter(|c| self.wants(&c.name) && self.known.get(&c.name) != Some(&c.version))
            .cloned()
            .collect();
        let present: BTreeSet<&str> = self
            .desired
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let mut removed: Vec<String> = self
            .known
            .keys()
            .filter(|n| !present.contains(n.as_str()))
            .cloned()
            .collect();
        removed.sort();
        (changed, removed)
    }

    /// Whether a response is due.
    pub fn is_due(&mut self, common: &Common, snapshot: &Snapshot) -> bool {
        if !self.subscribed {
            return false;
        }
        let (changed, removed) = self.delta(common, snapshot);
        !self.answered || !changed.is_empty() || !removed.is_empty()
    }

    /// The due response, if any, recorded as sent.
    pub fn next_response(
        &mut self,
        common: &mut Common,
        snapshot: &Snapshot,
    ) -> Option<DeltaDiscoveryResponse> {
        if !self.is_due(common, snapshot) {
            return None;
        }
        let (changed, removed) = self.delta(common, snapshot);
        for c in &changed {
            self.known.insert(c.name.clone(), c.version.clone());
        }
        for name in &removed {
            self.known.remove(name);
        }
        self.answered = true;
        let nonce = common.next_nonce();
        let version = self.desired.version.clone();
        self.sent.push((nonce.clone(), version.clone()));
        if self.sent.len() > 8 {
            self.sent.remove(0);
        }
        count_push(common, changed.len());
        tracing::debug!(
            node = %common.node.id,
            changed = ?changed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ?removed,
            "pushing mirror-target clusters"
        );
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources: changed
                .into_iter()
                .map(|c| Resource {
                    name: c.name,
                    version: c.version,
                    resource: Some(c.resource),
                    ..Default::default()
                })
                .collect(),
            type_url: CLUSTER_TYPE_URL.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_set::{content_version, PolicySet, StoredPolicy};
    use crate::xds::modules::{ModuleInfo, ModuleSet};
    use crate::xds::proxies::{ProxyRegistry, XdsProtocol};
    use meshwarden_common::{NodeInfo, PolicyDocument};
    use serde_json::json;
    use std::sync::Arc;

    fn modules() -> Arc<ModuleSet> {
        Arc::new(
            ModuleSet::new(
                Kind::ALL
                    .into_iter()
                    .map(|kind| ModuleInfo {
                        kind,
                        path: format!("/m/{}.wasm", kind.filter()).into(),
                        sha256: "0".into(),
                    })
                    .collect(),
            )
            .unwrap(),
        )
    }

    fn mirror(name: &str, hosts: &[&str], node_ids: &[&str]) -> StoredPolicy {
        let mirrors: Vec<_> = hosts
            .iter()
            .map(|h| json!({"target": {"host": h}}))
            .collect();
        let doc = PolicyDocument::from_value(&json!({
            "apiVersion": "meshwarden.dev/v1alpha1", "kind": "MirrorPolicy",
            "metadata": {"name": name},
            "spec": {"mirrors": mirrors, "selector": {"nodeIds": node_ids}},
        }))
        .unwrap();
        StoredPolicy {
            version: content_version(&doc),
            doc,
            generation: 1,
            updated_unix_ms: 0,
        }
    }

    fn snapshot(id: u64, policies: Vec<StoredPolicy>) -> Snapshot {
        let set = PolicySet {
            generation: id,
            policies,
        };
        Snapshot::new(id, Arc::new(set), modules())
    }

    fn common(id: &str) -> Common {
        let node = NodeInfo {
            id: id.into(),
            cluster: "c".into(),
            labels: Default::default(),
        };
        let handle = ProxyRegistry::new().connect(&node, XdsProtocol::Sotw);
        Common::new(node, handle, Arc::new(XdsStats::default()))
    }

    fn sotw_req(version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            response_nonce: nonce.into(),
            type_url: CLUSTER_TYPE_URL.into(),
            ..Default::default()
        }
    }

    fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use prost::Message;
        r.resources
            .iter()
            .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
            .collect()
    }

    #[test]
    fn sotw_answers_the_first_request_even_without_clusters() {
        let mut c = common("p1");
        let snap = snapshot(1, vec![]);
        let mut cds = SotwCds::default();
        assert!(!cds.is_due(&c, &snap), "nothing before the proxy asks");
        cds.on_request(&mut c, sotw_req("", ""), &snap);
        let r = cds.next_response(&mut c, &snap).unwrap();
        assert!(r.resources.is_empty());
        assert_eq!(r.type_url, CLUSTER_TYPE_URL);
        assert!(!r.version_info.is_empty());
        cds.on_request(&mut c, sotw_req(&r.version_info, &r.nonce), &snap);
        assert!(cds.next_response(&mut c, &snap).is_none());
        assert_eq!(XdsStats::get(&c.stats.acks_total), 1);
    }

    #[test]
    fn sotw_pushes_the_clusters_of_selecting_policies_and_drops_them_again() {
        let mut c = common("p1");
        let mut cds = SotwCds::default();
        let empty = snapshot(1, vec![]);
        cds.on_request(&mut c, sotw_req("", ""), &empty);
        let first = cds.next_response(&mut c, &empty).unwrap();
        cds.on_request(&mut c, sotw_req(&first.version_info, &first.nonce), &empty);

        let with = snapshot(
            2,
            vec![
                mirror("a", &["127.0.0.1:9000", "shadow.local:80"], &[]),
                mirror("b", &["127.0.0.1:9999"], &["other-proxy"]),
            ],
        );
        let r = cds.next_response(&mut c, &with).unwrap();
        assert_eq!(
            cluster_names(&r),
            [
                "meshwarden_mirror_127.0.0.1_9000",
                "meshwarden_mirror_shadow.local_80"
            ]
        );
        // A NACK is counted and the same version is not sent again.
        let mut nack = sotw_req(&first.version_info, &r.nonce);
        nack.error_detail = Some(RpcStatus {
            message: "bad cluster".into(),
            ..Default::default()
        });
        cds.on_request(&mut c, nack, &with);
        assert_eq!(XdsStats::get(&c.stats.nacks_total), 1);
        assert!(cds.next_response(&mut c, &with).is_none());
        // Removing the policy sends an empty list.
        let r = cds.next_response(&mut c, &snapshot(3, vec![])).unwrap();
        assert!(r.resources.is_empty());
    }

    #[test]
    fn sotw_reconnect_at_the_current_version_gets_nothing() {
        let mut c = common("p1");
        let snap = snapshot(1, vec![mirror("a", &["127.0.0.1:9000"], &[])]);
        let mut first = SotwCds::default();
        first.on_request(&mut c, sotw_req("", ""), &snap);
        let version = first.next_response(&mut c, &snap).unwrap().version_info;
        let mut again = SotwCds::default();
        again.on_request(&mut c, sotw_req(&version, ""), &snap);
        assert!(!again.is_due(&c, &snap));
    }

    fn delta_req(
        subscribe: &[&str],
        nonce: &str,
        initial: &[(&str, &str)],
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: CLUSTER_TYPE_URL.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            initial_resource_versions: initial
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn delta_sends_changes_and_removals_and_answers_an_empty_first_request() {
        let mut c = common("p1");
        let mut cds = DeltaCds::default();
        let empty = snapshot(1, vec![]);
        cds.on_request(&mut c, delta_req(&[], "", &[]), &empty);
        let r = cds.next_response(&mut c, &empty).unwrap();
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
        assert!(cds.next_response(&mut c, &empty).is_none());

        let one = snapshot(2, vec![mirror("a", &["127.0.0.1:9000"], &[])]);
        let r = cds.next_response(&mut c, &one).unwrap();
        assert_eq!(r.resources.len(), 1);
        assert_eq!(r.resources[0].name, "meshwarden_mirror_127.0.0.1_9000");
        cds.on_request(&mut c, delta_req(&[], &r.nonce, &[]), &one);
        assert!(cds.next_response(&mut c, &one).is_none());

        let r = cds.next_response(&mut c, &snapshot(3, vec![])).unwrap();
        assert!(r.resources.is_empty());
        assert_eq!(r.removed_resources, ["meshwarden_mirror_127.0.0.1_9000"]);
    }

    #[test]
    fn delta_reconnect_keeps_current_clusters_and_removes_stale_ones() {
        let mut c = common("p1");
        let snap = snapshot(1, vec![mirror("a", &["127.0.0.1:9000"], &[])]);
        let current = compose_clusters(&mirror_hosts(&snap.policies.policies));
        let mut cds = DeltaCds::default();
        cds.on_request(
            &mut c,
            delta_req(
                &["*"],
                "",
                &[
                    (current[0].name.as_str(), current[0].version.as_str()),
                    ("meshwarden_mirror_gone_1", "x"),
                ],
            ),
            &snap,
        );
        let r = cds.next_response(&mut c, &snap).unwrap();
        assert!(r.resources.is_empty(), "the current cluster is not resent");
        assert_eq!(r.removed_resources, ["meshwarden_mirror_gone_1"]);
    }
}
