//! State every stream has, whatever its protocol: the node, the observer, counters, nonces,
//! the resources composed for it from the current snapshot, and the responses recently sent.

use crate::observer::{StreamObserver, XdsStats};
use crate::resource::{Resource, Resources};
use crate::snapshot::Snapshot;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

/// How many sent responses a stream remembers to attribute late ACKs/NACKs.
const RECENT_RESPONSES: usize = 16;

/// How many times in a row a transiently rejected resource set is sent again.
pub(crate) const MAX_RETRIES: u32 = 10;

/// Longest wait between two retries.
pub(crate) const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(8);

/// A response the client has not necessarily answered yet.
#[derive(Debug)]
pub(crate) struct Sent {
    pub nonce: String,
    pub type_url: String,
    pub version: String,
    pub resources: Vec<Arc<Resource>>,
}

/// A pending re-send after a transient rejection.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    /// When to send again; `None` once sent (awaiting the reply).
    pub at: Option<tokio::time::Instant>,
    /// Names of the rejected resources.
    pub names: Vec<String>,
    /// Retries so far in this run of rejections.
    pub attempts: u32,
}

impl Retry {
    /// Whether another retry may follow `retry`.
    pub fn left(retry: Option<&Retry>) -> bool {
        retry.map_or(0, |r| r.attempts) < MAX_RETRIES
    }

    /// Schedules the next retry after a transient rejection of `names`: `delay` after the
    /// first rejection, doubling with every further one (at most [`MAX_RETRY_DELAY`]).
    pub fn after(
        previous: Option<&Retry>,
        delay: std::time::Duration,
        names: Vec<String>,
    ) -> Retry {
        let attempts = previous.map_or(0, |r| r.attempts) + 1;
        let backoff = delay
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(MAX_RETRY_DELAY);
        Retry {
            at: Some(tokio::time::Instant::now() + backoff),
            names,
            attempts,
        }
    }

    /// Whether responses of this type wait: while a run of retries is on, the next response
    /// is the retry itself (with the latest content), so a client still busy with the cause
    /// of its rejection (fetching a module) is not handed more of the same.
    pub fn holds(retry: Option<&Retry>) -> bool {
        retry.is_some_and(|r| !r.due())
    }

    /// When the first of `retries` falls due, if any is scheduled.
    pub fn earliest<'a>(
        retries: impl Iterator<Item = Option<&'a Retry>>,
    ) -> Option<tokio::time::Instant> {
        retries.filter_map(|r| r.and_then(|r| r.at)).min()
    }

    /// Whether the retry is due.
    pub fn due(&self) -> bool {
        self.at.is_some_and(|at| tokio::time::Instant::now() >= at)
    }

    /// Notes a response going out: a due retry is spent (its attempts still count until
    /// an ACK); any other response carries new content, which ends the run of retries.
    pub fn on_send(retry: &mut Option<Retry>) {
        match retry {
            Some(r) if r.due() => r.at = None,
            _ => *retry = None,
        }
    }
}

/// What a reply meant.
pub(crate) enum Outcome {
    /// The client holds these resources now.
    Accepted(Vec<Arc<Resource>>),
    /// The client rejected the response for good.
    Rejected,
    /// The client rejected the response for now: send these names again after `delay`.
    Transient {
        names: Vec<String>,
        delay: std::time::Duration,
    },
    /// A reply to a response this stream does not remember.
    Unknown,
}

/// What a client said about a response.
pub(crate) enum Reply<'a> {
    Ack,
    Nack(&'a RpcStatus),
}

impl<'a> Reply<'a> {
    pub fn of(error: Option<&'a RpcStatus>) -> Self {
        error.map_or(Reply::Ack, Reply::Nack)
    }
}

/// Shared per-stream state.
pub(crate) struct StreamState<S: Snapshot, O: StreamObserver> {
    pub node_id: String,
    pub node: S::Node,
    pub observer: O,
    pub stats: Arc<XdsStats>,
    /// The one type a per-type service serves; `None` on an aggregated stream.
    pub fixed_type: Option<&'static str>,
    nonces: u64,
    views: HashMap<String, (u64, Option<Resources>)>,
    recent: VecDeque<Sent>,
    warned: HashSet<String>,
}

impl<S: Snapshot, O: StreamObserver> StreamState<S, O> {
    pub fn new(
        node_id: String,
        node: S::Node,
        observer: O,
        stats: Arc<XdsStats>,
        fixed_type: Option<&'static str>,
    ) -> Self {
        Self {
            node_id,
            node,
            observer,
            stats,
            fixed_type,
            nonces: 0,
            views: HashMap::new(),
            recent: VecDeque::new(),
            warned: HashSet::new(),
        }
    }

    /// The type a request is about: its own type URL, or the service's type when it names
    /// none.
    pub fn type_of<'r>(&self, type_url: &'r str) -> &'r str {
        match (type_url.is_empty(), self.fixed_type) {
            (true, Some(fixed)) => fixed,
            _ => type_url,
        }
    }

    /// A fresh nonce, unique within the stream.
    pub fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    /// The node's resources of `type_url` in `snapshot` (composed once per snapshot); empty
    /// for a type this stream does not serve.
    pub fn view(&mut self, snapshot: &S, type_url: &str) -> Resources {
        let fresh = self
            .views
            .get(type_url)
            .is_some_and(|(id, _)| *id == snapshot.id());
        if !fresh {
            let served = self.fixed_type.is_none_or(|t| t == type_url);
            let resources = served
                .then(|| snapshot.resources(type_url, &self.node))
                .flatten();
            if resources.is_none() {
                self.unserved_type(type_url);
            }
            self.views
                .insert(type_url.to_string(), (snapshot.id(), resources));
        }
        self.views[type_url].1.clone().unwrap_or_default()
    }

    /// Records a response as sent: observer, counters and the recent-response ring.
    pub fn record_sent(&mut self, sent: Sent) {
        for r in &sent.resources {
            self.observer.sent(&sent.type_url, r);
        }
        XdsStats::add(&self.stats.pushes_total, 1);
        XdsStats::add(
            &self.stats.resources_sent_total,
            sent.resources.len() as u64,
        );
        tracing::debug!(
            node = %self.node_id,
            type_url = %sent.type_url,
            version = %sent.version,
            resources = ?sent.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            "pushing resources"
        );
        if self.recent.len() == RECENT_RESPONSES {
            self.recent.pop_front();
        }
        self.recent.push_back(sent);
    }

    /// Counts and reports a reply to the response `nonce` of `type_url`. A NACK is blamed
    /// on the resources whose version differs from `accepted` (all of them if none differs,
    /// or without `accepted`); a rejection the snapshot calls transient is not reported as
    /// one, and comes back as [`Outcome::Transient`] for the caller to schedule a re-send.
    pub fn record_reply(
        &mut self,
        snapshot: &S,
        type_url: &str,
        nonce: &str,
        reply: Reply<'_>,
        accepted: Option<&HashMap<String, String>>,
        retries_left: bool,
    ) -> Outcome {
        let Some(sent) = self
            .recent
            .iter()
            .rev()
            .find(|r| r.nonce == nonce && r.type_url == type_url)
        else {
            tracing::debug!(node = %self.node_id, nonce, type_url, "reply to an unknown nonce ignored");
            return Outcome::Unknown;
        };
        match reply {
            Reply::Ack => {
                XdsStats::add(&self.stats.acks_total, 1);
                for r in &sent.resources {
                    self.observer.accepted(type_url, r);
                }
                tracing::debug!(node = %self.node_id, type_url, version = %sent.version, "proxy accepted configuration");
                Outcome::Accepted(sent.resources.clone())
            }
            Reply::Nack(status) => {
                XdsStats::add(&self.stats.nacks_total, 1);
                let changed: Vec<&Arc<Resource>> = sent
                    .resources
                    .iter()
                    .filter(|r| accepted.is_some_and(|a| a.get(&r.name) != Some(&r.version)))
                    .collect();
                let blamed = if changed.is_empty() {
                    sent.resources.iter().collect()
                } else {
                    changed
                };
                let names: Vec<String> = blamed.iter().map(|r| r.name.clone()).collect();
                let transient = retries_left
                    .then(|| snapshot.retry_rejected(type_url, &self.node, &status.message))
                    .flatten();
                if let Some(delay) = transient {
                    tracing::info!(
                        node = %self.node_id,
                        type_url,
                        resources = ?names,
                        message = %status.message.escape_debug(),
                        "proxy rejected configuration for now; sending it again"
                    );
                    return Outcome::Transient { names, delay };
                }
                for r in &blamed {
                    self.observer
                        .rejected(type_url, &r.name, &r.version, &status.message);
                }
                tracing::warn!(
                    node = %self.node_id,
                    type_url,
                    version = %sent.version,
                    resources = ?names,
                    message = %status.message.escape_debug(),
                    "proxy rejected configuration"
                );
                Outcome::Rejected
            }
        }
    }

    /// Notes a request for a type this stream does not serve: warned about once per process
    /// and type, then logged at debug level once per stream.
    fn unserved_type(&mut self, type_url: &str) {
        if !self.warned.insert(type_url.to_string()) {
            return;
        }
        static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
        let first = WARNED
            .get_or_init(Mutex::default)
            .lock()
            .map(|mut w| w.insert(type_url.to_string()))
            .unwrap_or(false);
        if first {
            tracing::warn!(
                node = %self.node_id,
                type_url,
                "proxy asked for a resource type this service does not serve; answering with no resources"
            );
        } else {
            tracing::debug!(node = %self.node_id, type_url, "unserved resource type requested");
        }
    }
}

/// The protocol state machine of one stream. It never does I/O: the driver feeds it
/// requests and snapshots and asks for a response when the client can take one.
pub(crate) trait Machine: Send + 'static {
    type Snap: Snapshot;
    type Obs: StreamObserver;
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// The node of a request (set on the first request of a stream).
    fn node(request: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    /// When a response falls due by itself (a retry after a transient rejection).
    fn next_wakeup(&self) -> Option<tokio::time::Instant>;
    fn new(state: StreamState<Self::Snap, Self::Obs>) -> Self;
    fn on_request(&mut self, request: Self::Request, snapshot: &Self::Snap);
    /// Whether a response is due. Must not change what [`Machine::next_response`] returns.
    fn has_pending(&mut self, snapshot: &Self::Snap) -> bool;
    /// The due response, built from `snapshot` and recorded as sent.
    fn next_response(&mut self, snapshot: &Self::Snap) -> Option<Self::Response>;
}

/// The type URLs with a watch on this stream, in the order their responses go out: the
/// snapshot's order first, then any others (unserved types) by name.
pub(crate) fn response_order<'a, W>(
    snapshot_types: &[&'static str],
    watches: &'a std::collections::BTreeMap<String, W>,
) -> Vec<&'a str> {
    let mut order: Vec<&str> = snapshot_types
        .iter()
        .filter_map(|t| watches.get_key_value(*t).map(|(k, _)| k.as_str()))
        .collect();
    order.extend(
        watches
            .keys()
            .map(String::as_str)
            .filter(|t| !snapshot_types.contains(t)),
    );
    order
}
