//! The incremental (delta) protocol, for every type on one stream.
//!
//! The server tracks, per type and resource name, the version the client has or was last
//! sent (seeded from `initial_resource_versions`). A response carries only the subscribed
//! resources whose current version differs, plus `removed_resources` for names the client
//! holds that are gone or that it unsubscribed from. The first request of each type is
//! always answered, possibly with nothing, since a client may wait for it to finish
//! initialization. A NACK leaves the tracked version alone, so the rejected version is not
//! sent again; the next response waits until the content changes.

use crate::observer::StreamObserver;
use crate::resource::{aggregate_version, Resource};
use crate::snapshot::Snapshot;
use crate::stream::{response_order, Machine, Outcome, Reply, Retry, Sent, StreamState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const WILDCARD: &str = "*";

/// The client's subscription to one type.
#[derive(Debug, Default)]
struct Watch {
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// Version the client has or was last sent, by name.
    known: HashMap<String, String>,
    /// Names to report in `removed_resources` with the next response.
    removals: BTreeSet<String>,
    /// Whether the first response went out.
    answered: bool,
    /// A re-send after a transient rejection.
    retry: Option<Retry>,
}

impl Watch {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.subscribed.contains(name)
    }
}

/// What a due response carries.
struct Delta {
    changed: Vec<Arc<Resource>>,
    removed: BTreeSet<String>,
}

/// A delta stream.
pub struct DeltaStream<S: Snapshot, O: StreamObserver> {
    state: StreamState<S, O>,
    watches: BTreeMap<String, Watch>,
}

impl<S: Snapshot, O: StreamObserver> DeltaStream<S, O> {
    fn open_watch(&mut self, type_url: &str, req: &DeltaDiscoveryRequest, snapshot: &S) {
        let mut w = Watch {
            // A first request naming nothing is the legacy wildcard form.
            wildcard: req.resource_names_subscribe.is_empty(),
            ..Default::default()
        };
        let view = self.state.view(snapshot, type_url);
        for (name, version) in &req.initial_resource_versions {
            if let Some(current) = view
                .iter()
                .find(|r| r.name == *name && r.version == *version)
            {
                self.state.observer.accepted(type_url, current);
            }
            w.known.insert(name.clone(), version.clone());
        }
        self.watches.insert(type_url.to_string(), w);
    }

    fn apply_subscriptions(&mut self, type_url: &str, req: &DeltaDiscoveryRequest) {
        let Some(w) = self.watches.get_mut(type_url) else {
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
        // Names the client holds but no longer wants.
        let dropped: Vec<String> = w.known.keys().filter(|n| !w.wants(n)).cloned().collect();
        for name in dropped {
            w.known.remove(&name);
            if req.resource_names_unsubscribe.contains(&name) {
                w.removals.insert(name.clone());
            }
            self.state.observer.removed(type_url, &name);
        }
    }

    /// What the watch of `type_url` should be sent now, if anything.
    fn delta(&mut self, snapshot: &S, type_url: &str) -> Option<Delta> {
        let view = self.state.view(snapshot, type_url);
        let w = self.watches.get(type_url)?;
        if Retry::holds(w.retry.as_ref()) {
            return None;
        }
        let retrying: &[String] = match &w.retry {
            Some(r) if r.due() => &r.names,
            _ => &[],
        };
        let changed: Vec<Arc<Resource>> = view
            .iter()
            .filter(|r| {
                w.wants(&r.name)
                    && (w.known.get(&r.name) != Some(&r.version) || retrying.contains(&r.name))
            })
            .cloned()
            .collect();
        let mut removed = w.removals.clone();
        removed.extend(
            w.known
                .keys()
                .filter(|n| !view.iter().any(|r| r.name == **n))
                .cloned(),
        );
        (!w.answered || !changed.is_empty() || !removed.is_empty())
            .then_some(Delta { changed, removed })
    }
}

impl<S: Snapshot, O: StreamObserver> Machine for DeltaStream<S, O> {
    type Snap = S;
    type Obs = O;
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn new(state: StreamState<S, O>) -> Self {
        Self {
            state,
            watches: BTreeMap::new(),
        }
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest, snapshot: &S) {
        let type_url = self.state.type_of(&req.type_url).to_string();
        if !self.watches.contains_key(&type_url) {
            self.open_watch(&type_url, &req, snapshot);
        }
        // Subscription changes apply whatever the nonce: they are incremental.
        self.apply_subscriptions(&type_url, &req);
        if !req.response_nonce.is_empty() {
            let retries_left =
                Retry::left(self.watches.get(&type_url).and_then(|w| w.retry.as_ref()));
            let outcome = self.state.record_reply(
                snapshot,
                &type_url,
                &req.response_nonce,
                Reply::of(req.error_detail.as_ref()),
                None,
                retries_left,
            );
            if let Some(w) = self.watches.get_mut(&type_url) {
                match outcome {
                    Outcome::Accepted(_) => w.retry = None,
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
        types.iter().any(|t| self.delta(snapshot, t).is_some())
    }

    fn next_response(&mut self, snapshot: &S) -> Option<DeltaDiscoveryResponse> {
        let order: Vec<String> = response_order(snapshot.types(), &self.watches)
            .into_iter()
            .map(str::to_string)
            .collect();
        let (type_url, delta) = order
            .into_iter()
            .find_map(|t| self.delta(snapshot, &t).map(|d| (t, d)))?;
        let view = self.state.view(snapshot, &type_url);
        let w = self.watches.get_mut(&type_url)?;
        for r in &delta.changed {
            w.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &delta.removed {
            if w.known.remove(name).is_some() {
                self.state.observer.removed(&type_url, name);
            }
        }
        w.removals.clear();
        w.answered = true;
        // A due retry is spent (a response of other changes leaves it pending).
        if let Some(r) = w.retry.as_mut().filter(|r| r.due()) {
            r.at = None;
        }
        let system_version = aggregate_version(
            view.iter()
                .filter(|r| w.wants(&r.name))
                .map(|r| (r.name.as_str(), r.version.as_str())),
        );
        let nonce = self.state.next_nonce();
        let response = DeltaDiscoveryResponse {
            system_version_info: system_version.clone(),
            resources: delta
                .changed
                .iter()
                .map(|r| WireResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.clone(),
            removed_resources: delta.removed.into_iter().collect(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.state.record_sent(Sent {
            nonce,
            type_url,
            version: system_version,
            resources: delta.changed,
        });
        Some(response)
    }
}
