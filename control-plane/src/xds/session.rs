//! Pieces shared by the state-of-the-world and delta stream state machines.

use super::cache::{NodeResources, Snapshot};
use super::proxies::{ProxyHandle, XdsProtocol, XdsStats};
use super::resources::ComposedResource;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use meshwarden_common::NodeInfo;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

/// How many sent responses a stream remembers to attribute late ACKs/NACKs.
const RECENT_RESPONSES: usize = 16;

/// The protocol-specific state machine of one stream. It never does I/O: the driver feeds
/// it requests and snapshots and asks for a response when the client can take one.
pub(crate) trait Session: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const PROTOCOL: XdsProtocol;

    /// The node of a request (set on the first request of a stream).
    fn node(request: &Self::Request) -> Option<&Node>;
    fn new(common: Common) -> Self;
    fn on_request(&mut self, request: Self::Request, snapshot: &Snapshot);
    /// Whether a response is due. Must not change what [`Session::next_response`] returns.
    fn has_pending(&mut self, snapshot: &Snapshot) -> bool;
    /// The due response, built from `snapshot` and recorded as sent.
    fn next_response(&mut self, snapshot: &Snapshot) -> Option<Self::Response>;
}

/// Converts Envoy's node: id, cluster and the top-level string metadata values as labels.
pub fn node_info(node: &Node) -> NodeInfo {
    let labels = node
        .metadata
        .iter()
        .flat_map(|m| m.fields.iter())
        .filter_map(|(k, v)| match &v.kind {
            Some(ValueKind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect();
    NodeInfo {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        labels,
    }
}

/// A response the client has not necessarily answered yet.
#[derive(Debug)]
pub(crate) struct SentResponse {
    pub nonce: String,
    pub version: String,
    pub resources: Vec<Arc<ComposedResource>>,
}

/// State every session has: the proxy, its registry entry, counters, nonces, the resources
/// composed for it from the current snapshot and the responses recently sent.
pub(crate) struct Common {
    pub node: NodeInfo,
    pub handle: ProxyHandle,
    pub stats: Arc<XdsStats>,
    nonces: u64,
    view: Option<(u64, NodeResources)>,
    recent: VecDeque<SentResponse>,
    warned_types: HashSet<String>,
}

impl Common {
    pub fn new(node: NodeInfo, handle: ProxyHandle, stats: Arc<XdsStats>) -> Self {
        Self {
            node,
            handle,
            stats,
            nonces: 0,
            view: None,
            recent: VecDeque::new(),
            warned_types: HashSet::new(),
        }
    }

    /// A fresh nonce, unique within the stream.
    pub fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    /// The proxy's resources in `snapshot`, composed once per snapshot.
    pub fn view(&mut self, snapshot: &Snapshot) -> &NodeResources {
        if self.view.as_ref().is_none_or(|(id, _)| *id != snapshot.id) {
            self.view = Some((snapshot.id, snapshot.resources_for(&self.node)));
        }
        &self.view.as_ref().expect("just set").1
    }

    /// Records a response as sent: registry, counters and the recent-response ring.
    pub fn record_sent(&mut self, response: SentResponse) {
        for r in &response.resources {
            self.handle.sent(r);
        }
        XdsStats::add(&self.stats.pushes_total, 1);
        XdsStats::add(
            &self.stats.resources_sent_total,
            response.resources.len() as u64,
        );
        if self.recent.len() == RECENT_RESPONSES {
            self.recent.pop_front();
        }
        self.recent.push_back(response);
    }

    /// A recently sent response by nonce.
    pub fn sent_response(&self, nonce: &str) -> Option<&SentResponse> {
        self.recent.iter().rev().find(|r| r.nonce == nonce)
    }

    /// Notes a request for a type this server does not serve: warned about once per process
    /// and type, then logged at debug level once per stream.
    pub fn unserved_type(&mut self, type_url: &str) {
        if !self.warned_types.insert(type_url.to_string()) {
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
                node = %self.node.id,
                type_url,
                "proxy asked for a resource type this control plane does not serve; answering with no resources"
            );
        } else {
            tracing::debug!(node = %self.node.id, type_url, "unserved resource type requested");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    #[test]
    fn node_labels_are_top_level_strings() {
        let s = |v: &str| Value {
            kind: Some(ValueKind::StringValue(v.into())),
        };
        let node = Node {
            id: "p1".into(),
            cluster: "shop".into(),
            metadata: Some(Struct {
                fields: [
                    ("zone".to_string(), s("eu")),
                    (
                        "n".to_string(),
                        Value {
                            kind: Some(ValueKind::NumberValue(1.0)),
                        },
                    ),
                ]
                .into(),
            }),
            ..Default::default()
        };
        let info = node_info(&node);
        assert_eq!(info.id, "p1");
        assert_eq!(info.cluster, "shop");
        assert_eq!(info.labels.len(), 1);
        assert_eq!(info.labels["zone"], "eu");
    }
}
