//! The state-of-the-world protocol, for every type on one stream.
//!
//! A response carries every requested resource of its type; its `version_info` is the
//! aggregate of their versions, so it is the same on every replica. A response is due when
//! that aggregate differs from the last one sent (or, before anything was sent, from the
//! version the client reports), so every first request gets an answer, possibly empty. A
//! NACK therefore never triggers a resend: the next response waits until the content
//! changes.

use crate::observer::StreamObserver;
use crate::resource::{aggregate_version, Resource};
use crate::snapshot::Snapshot;
use crate::stream::{response_order, Machine, Outcome, Reply, Retry, Sent, StreamState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The client's subscription to one type.
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
    /// A re-send after a transient rejection.
    retry: Option<Retry>,
}

/// A state-of-the-world stream.
pub struct SotwStream<S: Snapshot, O: StreamObserver> {
    state: StreamState<S, O>,
    watches: BTreeMap<String, Watch>,
}

fn subscription(names: &[String]) -> Option<BTreeSet<String>> {
    if names.is_empty() || names.iter().any(|n| n == "*") {
        None
    } else {
        Some(names.iter().cloned().collect())
    }
}

impl<S: Snapshot, O: StreamObserver> SotwStream<S, O> {
    /// The resources and aggregate version the watch of `type_url` should have now.
    fn desired(&mut self, snapshot: &S, type_url: &str) -> Option<(Vec<Arc<Resource>>, String)> {
        let names = self.watches.get(type_url)?.names.clone();
        let resources: Vec<Arc<Resource>> = self
            .state
            .view(snapshot, type_url)
            .iter()
            .filter(|r| names.as_ref().is_none_or(|n| n.contains(&r.name)))
            .cloned()
            .collect();
        let version = aggregate_version(
            resources
                .iter()
                .map(|r| (r.name.as_str(), r.version.as_str())),
        );
        Some((resources, version))
    }

    fn due(&mut self, snapshot: &S, type_url: &str) -> bool {
        let Some((_, version)) = self.desired(snapshot, type_url) else {
            return false;
        };
        let w = &self.watches[type_url];
        if w.retry.as_ref().is_some_and(Retry::due) {
            return true;
        }
        if Retry::holds(w.retry.as_ref()) {
            return false;
        }
        match &w.last_version {
            Some(last) => *last != version,
            None => w.client_version != version,
        }
    }

    /// Before the first response: a client already at the current version (reconnect) gets
    /// nothing, and is recorded as holding it.
    fn adopt_client_version(&mut self, snapshot: &S, type_url: &str) {
        let Some((resources, version)) = self.desired(snapshot, type_url) else {
            return;
        };
        let w = self
            .watches
            .get_mut(type_url)
            .expect("desired implies a watch");
        if w.last_version.is_some() || w.client_version != version {
            return;
        }
        for r in &resources {
            self.state.observer.accepted(type_url, r);
            w.accepted.insert(r.name.clone(), r.version.clone());
        }
        w.last_version = Some(version);
    }
}

impl<S: Snapshot, O: StreamObserver> Machine for SotwStream<S, O> {
    type Snap = S;
    type Obs = O;
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn new(state: StreamState<S, O>) -> Self {
        Self {
            state,
            watches: BTreeMap::new(),
        }
    }

    fn on_request(&mut self, req: DiscoveryRequest, snapshot: &S) {
        let type_url = self.state.type_of(&req.type_url).to_string();
        let names = subscription(&req.resource_names);
        match self.watches.get_mut(&type_url) {
            None => {
                self.watches.insert(
                    type_url.clone(),
                    Watch {
                        names,
                        client_version: req.version_info,
                        last_nonce: None,
                        last_version: None,
                        accepted: HashMap::new(),
                        retry: None,
                    },
                );
                self.adopt_client_version(snapshot, &type_url);
            }
            Some(w) if req.response_nonce.is_empty() => {
                // A new subscription request before any response was seen.
                w.names = names;
                w.client_version = req.version_info;
                self.adopt_client_version(snapshot, &type_url);
            }
            Some(w) => {
                if w.last_nonce.as_deref() == Some(req.response_nonce.as_str()) {
                    // Only a reply to the latest response may change the subscription;
                    // older ones are stale (the client will answer the newer one too).
                    w.names = names;
                }
                match self.state.record_reply(
                    snapshot,
                    &type_url,
                    &req.response_nonce,
                    Reply::of(req.error_detail.as_ref()),
                    Some(&w.accepted),
                    Retry::left(w.retry.as_ref()),
                ) {
                    Outcome::Accepted(resources) => {
                        w.retry = None;
                        for r in resources {
                            w.accepted.insert(r.name.clone(), r.version.clone());
                        }
                    }
                    Outcome::Transient { names, delay } => {
                        w.retry = Some(Retry::after(w.retry.as_ref(), delay, names));
                    }
                    Outcome::Rejected => w.retry = None,
                    Outcome::Unknown => {}
                }
            }
        }
    }

    fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        Retry::earliest(self.watches.values().map(|w| w.retry.as_ref()))
    }

    fn has_pending(&mut self, snapshot: &S) -> bool {
        let types: Vec<String> = self.watches.keys().cloned().collect();
        types.iter().any(|t| self.due(snapshot, t))
    }

    fn next_response(&mut self, snapshot: &S) -> Option<DiscoveryResponse> {
        let order: Vec<String> = response_order(snapshot.types(), &self.watches)
            .into_iter()
            .map(str::to_string)
            .collect();
        let type_url = order.into_iter().find(|t| self.due(snapshot, t))?;
        let (resources, version) = self.desired(snapshot, &type_url)?;
        let nonce = self.state.next_nonce();
        let w = self.watches.get_mut(&type_url)?;
        Retry::on_send(&mut w.retry);
        w.last_nonce = Some(nonce.clone());
        w.last_version = Some(version.clone());
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: resources.iter().map(|r| r.body.clone()).collect(),
            type_url: type_url.clone(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.state.record_sent(Sent {
            nonce,
            type_url,
            version,
            resources,
        });
        Some(response)
    }
}
