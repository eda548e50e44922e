//! What the control plane knows about the proxies it serves: one entry per xDS stream (ADS,
//! or a standalone ECDS or CDS stream) with the filter configuration versions sent,
//! accepted and rejected, and rejections of any other type. Entries of closed streams stay
//! (marked disconnected) for a while so status can show them. The registry is the xDS
//! server's [`Observer`].

use super::extension_configs::TYPED_EXTENSION_CONFIG;
use super::node::node_info;
use super::rejections::Rejections;
use meshwarden_common::NodeInfo;
use meshwarden_xds::{Observer, Resource, StreamInfo, StreamObserver, Transport};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

pub use meshwarden_xds::{Protocol as XdsProtocol, XdsStats};

/// How long a disconnected proxy stays listed by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(600);

/// Disconnected streams kept for status at most (the oldest go first), so clients that
/// connect with ever new node ids cannot grow the registry without bound.
pub const MAX_DISCONNECTED: usize = 10_000;

/// A resource version together with the policies it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStatus {
    pub version: String,
    /// Policy names in the resource, in evaluation order.
    pub policies: Vec<String>,
    pub at: SystemTime,
}

/// A rejected resource version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackStatus {
    pub version: String,
    /// Envoy's `error_detail.message`.
    pub message: String,
    pub at: SystemTime,
}

/// One resource of one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    /// `meshwarden.<filter>`.
    pub name: String,
    /// Last version sent.
    pub sent: Option<VersionStatus>,
    /// Last version the proxy accepted.
    pub accepted: Option<VersionStatus>,
    /// Last rejection, kept after later versions are accepted.
    pub last_nack: Option<NackStatus>,
}

/// One proxy stream as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Unique per control-plane process.
    pub stream_id: u64,
    pub node_id: String,
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    pub protocol: XdsProtocol,
    /// The gRPC service the stream uses.
    pub transport: Transport,
    pub connected_at: SystemTime,
    /// Set once the stream closed.
    pub disconnected_at: Option<SystemTime>,
    /// By resource name.
    pub resources: Vec<ResourceStatus>,
}

/// Upper bounds (seconds) of the push latency histogram: 5 ms to about 41 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Labels of a push latency series: the filter resource (`meshwarden.fault`, ...).
pub type LatencyLabels = Vec<(String, String)>;

/// Time from a policy change (an apply, delete, halt or resume committed) until a proxy
/// acknowledged the resource version that change produced: one observation per proxy and
/// filter resource that got a new version.
#[derive(Debug)]
pub struct PushLatency {
    last_change: Mutex<Option<Instant>>,
    histogram: Family<LatencyLabels, Histogram, fn() -> Histogram>,
}

impl Default for PushLatency {
    fn default() -> Self {
        Self {
            last_change: Mutex::new(None),
            histogram: Family::new_with_constructor(latency_buckets),
        }
    }
}

impl PushLatency {
    /// A policy change was committed now.
    pub fn note_change(&self) {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn last_change(&self) -> Option<Instant> {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The histograms by resource, for the metrics endpoint.
    pub fn histograms(&self) -> &Family<LatencyLabels, Histogram, fn() -> Histogram> {
        &self.histogram
    }

    fn observe(&self, resource: &str, latency: Duration) {
        self.histogram
            .get_or_create(&vec![("resource".to_string(), resource.to_string())])
            .observe(latency.as_secs_f64());
    }
}

#[derive(Debug)]
struct Entry {
    status: ProxyStatus,
    disconnected: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    streams: HashMap<u64, Entry>,
}

/// Registry of proxy streams; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct ProxyRegistry {
    inner: Arc<Mutex<Inner>>,
    retention: Duration,
    max_disconnected: usize,
    rejections: Rejections,
    latency: Arc<PushLatency>,
}

impl Default for ProxyRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyRegistry {
    /// A registry keeping disconnected proxies for [`DEFAULT_RETENTION`].
    pub fn new() -> Self {
        Self::with_retention(DEFAULT_RETENTION)
    }

    /// A registry keeping disconnected proxies for `retention`.
    pub fn with_retention(retention: Duration) -> Self {
        Self {
            inner: Arc::default(),
            retention,
            max_disconnected: MAX_DISCONNECTED,
            rejections: Rejections::default(),
            latency: Arc::default(),
        }
    }

    /// Push latency: told of policy changes, observed at each proxy's ACK.
    pub fn push_latency(&self) -> Arc<PushLatency> {
        self.latency.clone()
    }

    /// Keeps at most `max` disconnected streams (default [`MAX_DISCONNECTED`]).
    pub fn with_max_disconnected(mut self, max: usize) -> Self {
        self.max_disconnected = max;
        self
    }

    /// Records rejections in (and shows remembered ones from) `rejections`.
    pub fn with_rejections(mut self, rejections: Rejections) -> Self {
        self.rejections = rejections;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every known stream, connected or recently disconnected, by node id then stream id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut inner = self.lock();
        self.prune(&mut inner);
        let mut out: Vec<ProxyStatus> = inner.streams.values().map(|e| e.status.clone()).collect();
        out.sort_by(|a, b| (&a.node_id, a.stream_id).cmp(&(&b.node_id, b.stream_id)));
        out
    }

    /// Number of open streams.
    pub fn connected_count(&self) -> usize {
        let inner = self.lock();
        inner
            .streams
            .values()
            .filter(|e| e.disconnected.is_none())
            .count()
    }

    fn prune(&self, inner: &mut Inner) {
        let retention = self.retention;
        inner
            .streams
            .retain(|_, e| e.disconnected.is_none_or(|at| at.elapsed() < retention));
        if inner.streams.len() <= self.max_disconnected {
            return;
        }
        let mut gone: Vec<(Instant, u64)> = inner
            .streams
            .iter()
            .filter_map(|(id, e)| Some((e.disconnected?, *id)))
            .collect();
        if gone.len() > self.max_disconnected {
            gone.sort_unstable();
            let excess = gone.len() - self.max_disconnected;
            for (_, id) in gone.into_iter().take(excess) {
                inner.streams.remove(&id);
            }
        }
    }

    /// Registers a new ADS stream; see [`ProxyRegistry::connect_via`].
    pub fn connect(&self, node: &NodeInfo, protocol: XdsProtocol) -> ProxyHandle {
        self.connect_via(node, Transport::Ads, protocol)
    }

    /// Registers a new stream. Older disconnected entries of the same node and transport
    /// are dropped; the returned handle marks the entry disconnected when dropped.
    pub fn connect_via(
        &self,
        node: &NodeInfo,
        transport: Transport,
        protocol: XdsProtocol,
    ) -> ProxyHandle {
        let mut inner = self.lock();
        self.prune(&mut inner);
        inner.streams.retain(|_, e| {
            e.disconnected.is_none()
                || e.status.node_id != node.id
                || e.status.cluster != node.cluster
                || e.status.transport != transport
        });
        inner.next_id += 1;
        let stream_id = inner.next_id;
        // NACKs remembered from earlier streams and processes stay visible.
        let mut resources: Vec<ResourceStatus> = self
            .rejections
            .nacks_of(&node.id)
            .into_iter()
            .map(|(name, nack)| ResourceStatus {
                name,
                sent: None,
                accepted: None,
                last_nack: Some(nack),
            })
            .collect();
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        inner.streams.insert(
            stream_id,
            Entry {
                status: ProxyStatus {
                    stream_id,
                    node_id: node.id.clone(),
                    cluster: node.cluster.clone(),
                    labels: node.labels.clone(),
                    protocol,
                    transport,
                    connected_at: SystemTime::now(),
                    disconnected_at: None,
                    resources,
                },
                disconnected: None,
            },
        );
        ProxyHandle {
            registry: self.clone(),
            stream_id,
            node_id: node.id.clone(),
            accepted: HashMap::new(),
            last_sent: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    fn update(&self, stream_id: u64, name: &str, f: impl FnOnce(&mut ResourceStatus)) {
        let mut inner = self.lock();
        let Some(entry) = inner.streams.get_mut(&stream_id) else {
            return;
        };
        let resources = &mut entry.status.resources;
        let i = match resources.binary_search_by(|r| r.name.as_str().cmp(name)) {
            Ok(i) => i,
            Err(i) => {
                resources.insert(
                    i,
                    ResourceStatus {
                        name: name.to_string(),
                        sent: None,
                        accepted: None,
                        last_nack: None,
                    },
                );
                i
            }
        };
        f(&mut resources[i]);
    }
}

/// Records the progress of one stream; marks it disconnected on drop.
#[derive(Debug)]
pub struct ProxyHandle {
    registry: ProxyRegistry,
    stream_id: u64,
    node_id: String,
    /// The version of each resource the proxy holds, as served (for rejections' fallback).
    accepted: HashMap<String, Arc<Resource>>,
    /// The last version of each filter resource sent, and when.
    last_sent: HashMap<String, (String, Instant)>,
    /// New versions sent and not acknowledged yet, with the instant their change began.
    pending: HashMap<String, (String, Instant)>,
}

fn version_status(r: &Resource) -> VersionStatus {
    VersionStatus {
        version: r.version.clone(),
        policies: r.summary.clone(),
        at: SystemTime::now(),
    }
}

impl Observer for ProxyRegistry {
    type Stream = ProxyHandle;

    fn opened(&self, info: StreamInfo<'_>) -> ProxyHandle {
        self.connect_via(&node_info(info.node), info.transport, info.protocol)
    }
}

/// Status rows show filter configurations; other types only when rejected.
fn tracked(type_url: &str) -> bool {
    type_url == TYPED_EXTENSION_CONFIG
}

impl StreamObserver for ProxyHandle {
    fn stream_id(&self) -> u64 {
        self.stream_id
    }

    fn sent(&mut self, type_url: &str, resource: &Arc<Resource>) {
        if tracked(type_url) {
            self.mark_sent(resource);
            self.start_push(resource);
        }
    }

    fn accepted(&mut self, type_url: &str, resource: &Arc<Resource>) {
        self.accepted
            .insert(resource.name.clone(), resource.clone());
        if tracked(type_url) {
            self.mark_accepted(resource);
            if let Some((version, since)) = self.pending.remove(&resource.name) {
                if version == resource.version {
                    self.registry
                        .latency
                        .observe(&resource.name, since.elapsed());
                }
            }
        }
    }

    /// Remembered beyond the stream: the version is not served again (see
    /// [`Rejections`]).
    fn rejected(&mut self, _type_url: &str, name: &str, version: &str, message: &str) {
        let previous = self.accepted.get(name).cloned();
        self.registry
            .rejections
            .record(&self.node_id, name, version, message, previous);
        self.mark_rejected(name, version, message);
    }

    fn removed(&mut self, _type_url: &str, name: &str) {
        self.accepted.remove(name);
        self.forget(name);
    }
}

impl ProxyHandle {
    /// Starts timing a new version of a resource this stream already had: from the last
    /// policy change if it came after the previous version was sent, else from now (a
    /// module change). A stream's first version is no push of a change and is not timed.
    fn start_push(&mut self, r: &Resource) {
        let now = Instant::now();
        let previous = self
            .last_sent
            .insert(r.name.clone(), (r.version.clone(), now));
        if let Some((version, at)) = previous {
            if version != r.version {
                let since = self
                    .registry
                    .latency
                    .last_change()
                    .filter(|c| *c > at)
                    .unwrap_or(now);
                self.pending
                    .insert(r.name.clone(), (r.version.clone(), since));
            }
        }
    }

    /// The stream's id in [`ProxyStatus::stream_id`].
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// A resource version was sent.
    pub fn mark_sent(&self, r: &Resource) {
        self.registry.update(self.stream_id, &r.name, |s| {
            s.sent = Some(version_status(r))
        });
    }

    /// The proxy holds (accepted) a resource version.
    pub fn mark_accepted(&self, r: &Resource) {
        self.registry.update(self.stream_id, &r.name, |s| {
            s.accepted = Some(version_status(r))
        });
    }

    /// The proxy rejected a resource version.
    pub fn mark_rejected(&self, name: &str, version: &str, message: &str) {
        self.registry.update(self.stream_id, name, |s| {
            s.last_nack = Some(NackStatus {
                version: version.to_string(),
                message: message.to_string(),
                at: SystemTime::now(),
            })
        });
    }

    /// The proxy no longer wants a resource (delta unsubscribe).
    pub fn forget(&self, name: &str) {
        let mut inner = self.registry.lock();
        if let Some(entry) = inner.streams.get_mut(&self.stream_id) {
            entry.status.resources.retain(|r| r.name != name);
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(entry) = inner.streams.get_mut(&self.stream_id) {
            entry.disconnected = Some(Instant::now());
            entry.status.disconnected_at = Some(SystemTime::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;

    fn resource(version: &str) -> Resource {
        Resource {
            name: "meshwarden.trace".into(),
            version: version.into(),
            body: Any::default(),
            summary: vec!["p".into()],
        }
    }

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            cluster: "c".into(),
            ..Default::default()
        }
    }

    #[test]
    fn tracks_sent_accepted_and_rejected() {
        let reg = ProxyRegistry::new();
        let h = reg.connect(&node("a"), XdsProtocol::Sotw);
        h.mark_sent(&resource("v1"));
        h.mark_accepted(&resource("v1"));
        h.mark_sent(&resource("v2"));
        h.mark_rejected("meshwarden.trace", "v2", "bad");
        let list = reg.list();
        assert_eq!(list.len(), 1);
        let r = &list[0].resources[0];
        assert_eq!(r.sent.as_ref().unwrap().version, "v2");
        assert_eq!(r.accepted.as_ref().unwrap().version, "v1");
        assert_eq!(r.last_nack.as_ref().unwrap().message, "bad");
        assert_eq!(reg.connected_count(), 1);
    }

    #[test]
    fn a_changed_version_is_timed_from_the_change_to_its_ack() {
        let reg = ProxyRegistry::new();
        let mut h = reg.connect(&node("a"), XdsProtocol::Sotw);
        let url = TYPED_EXTENSION_CONFIG;
        let (v1, v2, v3) = (
            Arc::new(resource("v1")),
            Arc::new(resource("v2")),
            Arc::new(resource("v3")),
        );
        let count = |reg: &ProxyRegistry| {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register(
                "push_latency",
                "test",
                reg.push_latency().histograms().clone(),
            );
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text.lines()
                .find(|l| l.starts_with("push_latency_count{resource=\"meshwarden.trace\"}"))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
                .unwrap_or_else(|| "0".into())
        };
        h.sent(url, &v1);
        h.accepted(url, &v1);
        assert_eq!(count(&reg), "0", "a stream's first version is not a push");
        std::thread::sleep(Duration::from_millis(5));
        reg.push_latency().note_change();
        std::thread::sleep(Duration::from_millis(20));
        h.sent(url, &v2);
        h.accepted(url, &v2);
        assert_eq!(count(&reg), "1");
        let text = {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register("p", "t", reg.push_latency().histograms().clone());
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        assert!(
            text.contains("p_bucket{le=\"0.005\",resource=\"meshwarden.trace\"} 0"),
            "timed from the change, 20 ms before the send: {text}"
        );
        // A NACKed version is not observed.
        h.sent(url, &v3);
        h.rejected(url, "meshwarden.trace", "v3", "bad");
        h.accepted(url, &v1);
        assert_eq!(count(&reg), "1");
    }

    #[test]
    fn disconnected_entries_linger_then_go() {
        let reg = ProxyRegistry::with_retention(Duration::from_millis(50));
        drop(reg.connect(&node("a"), XdsProtocol::Delta));
        let list = reg.list();
        assert!(list[0].disconnected_at.is_some());
        assert_eq!(reg.connected_count(), 0);
        std::thread::sleep(Duration::from_millis(80));
        assert!(reg.list().is_empty());
    }

    #[test]
    fn disconnected_entries_are_capped() {
        let reg = ProxyRegistry::new().with_max_disconnected(100);
        for i in 0..150 {
            drop(reg.connect(&node(&format!("fake-{i}")), XdsProtocol::Sotw));
        }
        let _live = reg.connect(&node("live"), XdsProtocol::Sotw);
        let list = reg.list();
        assert_eq!(list.len(), 101);
        assert!(list.iter().any(|p| p.node_id == "live"));
        assert!(
            !list.iter().any(|p| p.node_id == "fake-0"),
            "oldest went first"
        );
    }

    #[test]
    fn reconnect_replaces_a_disconnected_entry() {
        let reg = ProxyRegistry::new();
        drop(reg.connect(&node("a"), XdsProtocol::Sotw));
        let _b = reg.connect(&node("b"), XdsProtocol::Sotw);
        let _a = reg.connect(&node("a"), XdsProtocol::Sotw);
        let list = reg.list();
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|p| p.disconnected_at.is_none()));
    }
}
