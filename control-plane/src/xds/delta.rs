//! Incremental (delta) ADS stream state.
//!
//! The server tracks, per resource name, the version the client has or was last sent
//! (seeded from `initial_resource_versions`). A response carries only the subscribed
//! resources whose current version differs, plus `removed_resources` for names the client
//! unsubscribed from. A NACK leaves the tracked version alone, so the rejected version is
//! not sent again; the next response waits until the content changes.

use super::cache::Snapshot;
use super::cds::{is_cds, DeltaCds};
use super::proxies::{XdsProtocol, XdsStats};
use super::resources::{aggregate_version, kind_of_resource, TYPED_EXTENSION_CONFIG};
use super::session::{Common, SentResponse, Session};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const WILDCARD: &str = "*";

/// The client's subscription to the served type.
#[derive(Debug, Default)]
struct Watch {
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// Version the client has or was last sent, by name.
    known: HashMap<String, String>,
    /// Names to report in `removed_resources` with the next response.
    removals: BTreeSet<String>,
}

impl Watch {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.subscribed.contains(name)
    }
}

/// A delta stream.
pub(crate) struct DeltaSession {
    common: Common,
    watch: Option<Watch>,
    /// Unserved types, with whether an (empty) answer is due.
    unserved: BTreeMap<String, bool>,
    /// Clusters for mirror targets.
    cds: DeltaCds,
}

impl DeltaSession {
    fn open_watch(&mut self, req: &DeltaDiscoveryRequest, snapshot: &Snapshot) {
        let mut w = Watch {
            // A first request naming nothing is the legacy wildcard form.
            wildcard: req.resource_names_subscribe.is_empty(),
            ..Default::default()
        };
        let view = self.common.view(snapshot).clone();
        for (name, version) in &req.initial_resource_versions {
            if let Some(current) = view.get(name).filter(|r| r.version == *version) {
                self.common.handle.accepted(current);
            }
            w.known.insert(name.clone(), version.clone());
        }
        self.watch = Some(w);
    }

    fn apply_subscriptions(&mut self, req: &DeltaDiscoveryRequest) {
        let Some(w) = self.watch.as_mut() else {
            return;
        };
        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                w.wildcard = true;
            } else {
                w.subscribed.insert(name.clone());
            }
            w.removals.remove(name);
        }
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                w.wildcard = false;
            } else {
                w.subscribed.remove(name);
            }
        }
        // Names the client holds but no longer wants, or that do not exist here.
        let dropped: Vec<String> = w
            .known
            .keys()
            .filter(|n| !w.wants(n) || kind_of_resource(n).is_none())
            .cloned()
            .collect();
        for name in dropped {
            w.known.remove(&name);
            if w.wants(&name) || req.resource_names_unsubscribe.contains(&name) {
                w.removals.insert(name.clone());
            }
            self.common.handle.forget(&name);
        }
    }

    fn on_reply(&mut self, nonce: &str, error: Option<&RpcStatus>) {
        let Some(sent) = self.common.sent_response(nonce) else {
            tracing::debug!(node = %self.common.node.id, nonce, "reply to an unknown nonce ignored");
            return;
        };
        let handle = &self.common.handle;
        match error {
            Some(status) => {
                XdsStats::add(&self.common.stats.nacks_total, 1);
                for r in &sent.resources {
                    handle.rejected(&r.name, &r.version, &status.message);
                }
                tracing::warn!(
                    node = %self.common.node.id,
                    resources = ?sent.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                    message = %status.message,
                    "proxy rejected configuration"
                );
            }
            None => {
                XdsStats::add(&self.common.stats.acks_total, 1);
                for r in &sent.resources {
                    handle.accepted(r);
                }
            }
        }
    }

    fn watch_due(&mut self, snapshot: &Snapshot) -> bool {
        let Some(w) = self.watch.as_ref() else {
            return false;
        };
        if !w.removals.is_empty() {
            return true;
        }
        self.common
            .view(snapshot)
            .iter()
            .any(|r| w.wants(&r.name) && w.known.get(&r.name) != Some(&r.version))
    }
}

impl Session for DeltaSession {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const PROTOCOL: XdsProtocol = XdsProtocol::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn new(common: Common) -> Self {
        Self {
            common,
            watch: None,
            unserved: BTreeMap::new(),
            cds: DeltaCds::default(),
        }
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest, snapshot: &Snapshot) {
        if is_cds(&req.type_url) {
            self.cds.on_request(&mut self.common, req, snapshot);
            return;
        }
        if req.type_url != TYPED_EXTENSION_CONFIG {
            self.common.unserved_type(&req.type_url);
            if req.response_nonce.is_empty() && !self.unserved.contains_key(&req.type_url) {
                self.unserved.insert(req.type_url, true);
            }
            return;
        }
        if self.watch.is_none() {
            self.open_watch(&req, snapshot);
        }
        // Subscription changes apply whatever the nonce: they are incremental.
        self.apply_subscriptions(&req);
        if !req.response_nonce.is_empty() {
            self.on_reply(&req.response_nonce, req.error_detail.as_ref());
        }
    }

    fn has_pending(&mut self, snapshot: &Snapshot) -> bool {
        self.cds.is_due(&self.common, snapshot)
            || self.unserved.values().any(|due| *due)
            || self.watch_due(snapshot)
    }

    fn next_response(&mut self, snapshot: &Snapshot) -> Option<DeltaDiscoveryResponse> {
        // Clusters first: a filter configuration may send copies to a new one.
        if let Some(r) = self.cds.next_response(&mut self.common, snapshot) {
            return Some(r);
        }
        if self.watch_due(snapshot) {
            let view = self.common.view(snapshot).clone();
            let w = self.watch.as_mut()?;
            let changed: Vec<_> = view
                .iter()
                .filter(|r| w.wants(&r.name) && w.known.get(&r.name) != Some(&r.version))
                .cloned()
                .collect();
            for r in &changed {
                w.known.insert(r.name.clone(), r.version.clone());
            }
            let removed: Vec<String> = std::mem::take(&mut w.removals).into_iter().collect();
            let system_version = aggregate_version(
                view.iter()
                    .filter(|r| w.wants(&r.name))
                    .map(|r| (r.name.as_str(), r.version.as_str())),
            );
            let nonce = self.common.next_nonce();
            let response = DeltaDiscoveryResponse {
                system_version_info: system_version.clone(),
                resources: changed
                    .iter()
                    .map(|r| Resource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.resource.clone()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: TYPED_EXTENSION_CONFIG.to_string(),
                removed_resources: removed.clone(),
                nonce: nonce.clone(),
                ..Default::default()
            };
            tracing::debug!(
                node = %self.common.node.id,
                snapshot = snapshot.id,
                changed = ?changed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                ?removed,
                "pushing configuration"
            );
            self.common.record_sent(SentResponse {
                nonce,
                version: system_version,
                resources: changed,
            });
            return Some(response);
        }
        let type_url = self
            .unserved
            .iter()
            .find(|(_, due)| **due)
            .map(|(t, _)| t.clone())?;
        self.unserved.insert(type_url.clone(), false);
        Some(DeltaDiscoveryResponse {
            type_url,
            nonce: self.common.next_nonce(),
            ..Default::default()
        })
    }
}
