//! State-of-the-world ADS stream state.
//!
//! A response carries every requested resource; its `version_info` is the aggregate of their
//! versions, so it is the same on every replica. A response is due when that aggregate
//! differs from the last one sent (or, before anything was sent, from the version the client
//! reports). A NACK therefore never triggers a resend: the next response waits until the
//! content changes.

use super::cache::{NodeResources, Snapshot};
use super::cds::{is_cds, SotwCds};
use super::proxies::{XdsProtocol, XdsStats};
use super::resources::{aggregate_version, ComposedResource, TYPED_EXTENSION_CONFIG};
use super::session::{Common, SentResponse, Session};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The client's subscription to the served type.
#[derive(Debug)]
struct Watch {
    /// Requested names; `None` means every resource (wildcard).
    names: Option<BTreeSet<String>>,
    /// `version_info` of the request that opened the watch.
    client_version: String,
    /// Nonce of the last response sent.
    last_nonce: Option<String>,
    /// Aggregate version of the last response sent (or the client's, if it was current).
    last_version: Option<String>,
    /// Versions the client accepted, by resource name.
    accepted: HashMap<String, String>,
}

/// A state-of-the-world stream.
pub(crate) struct SotwSession {
    common: Common,
    watch: Option<Watch>,
    /// Unserved types, with whether an (empty) answer is due.
    unserved: BTreeMap<String, bool>,
    /// Clusters for mirror targets.
    cds: SotwCds,
}

fn subscription(names: &[String]) -> Option<BTreeSet<String>> {
    if names.is_empty() || names.iter().any(|n| n == "*") {
        None
    } else {
        Some(names.iter().cloned().collect())
    }
}

fn selected(view: &NodeResources, names: &Option<BTreeSet<String>>) -> Vec<Arc<ComposedResource>> {
    view.iter()
        .filter(|r| names.as_ref().is_none_or(|n| n.contains(&r.name)))
        .cloned()
        .collect()
}

fn version_of(resources: &[Arc<ComposedResource>]) -> String {
    aggregate_version(
        resources
            .iter()
            .map(|r| (r.name.as_str(), r.version.as_str())),
    )
}

impl SotwSession {
    /// The resources and aggregate version the watch should have now.
    fn desired(&mut self, snapshot: &Snapshot) -> Option<(Vec<Arc<ComposedResource>>, String)> {
        let names = &self.watch.as_ref()?.names;
        let resources = selected(self.common.view(snapshot), names);
        let version = version_of(&resources);
        Some((resources, version))
    }

    fn watch_due(&mut self, snapshot: &Snapshot) -> bool {
        let Some((_, version)) = self.desired(snapshot) else {
            return false;
        };
        let w = self.watch.as_ref().expect("desired implies a watch");
        match &w.last_version {
            Some(last) => *last != version,
            None => w.client_version != version,
        }
    }

    /// Before the first response: a client already at the current version (reconnect) gets
    /// nothing, and is recorded as holding it.
    fn adopt_client_version(&mut self, snapshot: &Snapshot) {
        let Some((resources, version)) = self.desired(snapshot) else {
            return;
        };
        let w = self.watch.as_mut().expect("desired implies a watch");
        if w.last_version.is_some() || w.client_version != version {
            return;
        }
        for r in &resources {
            self.common.handle.accepted(r);
            w.accepted.insert(r.name.clone(), r.version.clone());
        }
        w.last_version = Some(version);
    }

    /// Records an ACK or NACK of a response sent on this stream.
    fn on_reply(&mut self, nonce: &str, error: Option<&RpcStatus>) {
        let Some(w) = self.watch.as_mut() else {
            return;
        };
        let Some(sent) = self.common.sent_response(nonce) else {
            tracing::debug!(node = %self.common.node.id, nonce, "reply to an unknown nonce ignored");
            return;
        };
        let handle = &self.common.handle;
        match error {
            Some(status) => {
                XdsStats::add(&self.common.stats.nacks_total, 1);
                let changed: Vec<_> = sent
                    .resources
                    .iter()
                    .filter(|r| w.accepted.get(&r.name) != Some(&r.version))
                    .collect();
                let blamed = if changed.is_empty() {
                    sent.resources.iter().collect()
                } else {
                    changed
                };
                for r in &blamed {
                    handle.rejected(&r.name, &r.version, &status.message);
                }
                tracing::warn!(
                    node = %self.common.node.id,
                    version = %sent.version,
                    resources = ?blamed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                    message = %status.message,
                    "proxy rejected configuration"
                );
            }
            None => {
                XdsStats::add(&self.common.stats.acks_total, 1);
                for r in &sent.resources {
                    handle.accepted(r);
                    w.accepted.insert(r.name.clone(), r.version.clone());
                }
                tracing::debug!(node = %self.common.node.id, version = %sent.version, "proxy accepted configuration");
            }
        }
    }
}

impl Session for SotwSession {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: XdsProtocol = XdsProtocol::Sotw;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn new(common: Common) -> Self {
        Self {
            common,
            watch: None,
            unserved: BTreeMap::new(),
            cds: SotwCds::default(),
        }
    }

    fn on_request(&mut self, req: DiscoveryRequest, snapshot: &Snapshot) {
        if is_cds(&req.type_url) {
            self.cds.on_request(&mut self.common, req, snapshot);
            return;
        }
        if req.type_url != TYPED_EXTENSION_CONFIG {
            self.common.unserved_type(&req.type_url);
            if req.response_nonce.is_empty() {
                self.unserved.insert(req.type_url, true);
            }
            return;
        }
        let names = subscription(&req.resource_names);
        match self.watch.as_mut() {
            None => {
                self.watch = Some(Watch {
                    names,
                    client_version: req.version_info,
                    last_nonce: None,
                    last_version: None,
                    accepted: HashMap::new(),
                });
                self.adopt_client_version(snapshot);
            }
            Some(w) if req.response_nonce.is_empty() => {
                // A new subscription request before any response was seen.
                w.names = names;
                w.client_version = req.version_info;
                self.adopt_client_version(snapshot);
            }
            Some(w) => {
                let latest = w.last_nonce.as_deref() == Some(req.response_nonce.as_str());
                if latest {
                    // Only a reply to the latest response may change the subscription;
                    // older ones are stale (the client will answer the newer response too).
                    w.names = names;
                }
                self.on_reply(&req.response_nonce, req.error_detail.as_ref());
            }
        }
    }

    fn has_pending(&mut self, snapshot: &Snapshot) -> bool {
        self.cds.is_due(&self.common, snapshot)
            || self.unserved.values().any(|due| *due)
            || self.watch_due(snapshot)
    }

    fn next_response(&mut self, snapshot: &Snapshot) -> Option<DiscoveryResponse> {
        // Clusters first: a filter configuration may send copies to a new one.
        if let Some(r) = self.cds.next_response(&mut self.common, snapshot) {
            return Some(r);
        }
        if self.watch_due(snapshot) {
            let (resources, version) = self.desired(snapshot)?;
            let nonce = self.common.next_nonce();
            let w = self.watch.as_mut()?;
            w.last_nonce = Some(nonce.clone());
            w.last_version = Some(version.clone());
            let response = DiscoveryResponse {
                version_info: version.clone(),
                resources: resources.iter().map(|r| r.resource.clone()).collect(),
                type_url: TYPED_EXTENSION_CONFIG.to_string(),
                nonce: nonce.clone(),
                ..Default::default()
            };
            tracing::debug!(
                node = %self.common.node.id,
                version = %version,
                snapshot = snapshot.id,
                resources = resources.len(),
                "pushing configuration"
            );
            self.common.record_sent(SentResponse {
                nonce,
                version,
                resources,
            });
            return Some(response);
        }
        let type_url = self
            .unserved
            .iter()
            .find(|(_, due)| **due)
            .map(|(t, _)| t.clone())?;
        self.unserved.insert(type_url.clone(), false);
        Some(DiscoveryResponse {
            type_url,
            nonce: self.common.next_nonce(),
            ..Default::default()
        })
    }
}
