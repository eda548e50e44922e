//! End-to-end tests of the ADS server over real gRPC on 127.0.0.1, driven by the envoy-types
//! ADS client stubs playing the proxy.

use super::*;
use crate::policy_set::{PolicySet, SharedPolicySet, StoredPolicy};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Node, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_client::ExtensionConfigDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{value, Any, StringValue, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

const NAMES: [&str; 4] = [
    "meshwarden.trace",
    "meshwarden.fault",
    "meshwarden.mirror",
    "meshwarden.ratelimit",
];
const WAIT: Duration = Duration::from_secs(5);
const SILENCE: Duration = Duration::from_millis(300);

fn trace_policy(name: &str, spec: serde_json::Value) -> StoredPolicy {
    crate::test_fixtures::trace(name, spec)
}

fn policy_set(generation: u64, mut policies: Vec<StoredPolicy>) -> SharedPolicySet {
    policies.sort_by(|a, b| (a.kind(), a.name()).cmp(&(b.kind(), b.name())));
    Arc::new(PolicySet {
        generation,
        policies,
        ..PolicySet::default()
    })
}

fn node(id: &str, labels: &[(&str, &str)]) -> Node {
    let fields = labels
        .iter()
        .map(|(k, v)| {
            let v = Value {
                kind: Some(value::Kind::StringValue(v.to_string())),
            };
            (k.to_string(), v)
        })
        .collect();
    Node {
        id: id.into(),
        cluster: "shop".into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Name and wire JSON of a packed `TypedExtensionConfig`.
fn decode(any: &Any) -> (String, String) {
    assert_eq!(any.type_url, TYPED_EXTENSION_CONFIG);
    let tec = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
    let wasm = Wasm::decode(tec.typed_config.unwrap().value.as_slice()).unwrap();
    let conf = wasm.config.unwrap().configuration.unwrap();
    let json = StringValue::decode(conf.value.as_slice()).unwrap().value;
    (tec.name, json)
}

fn configs(resp: &DiscoveryResponse) -> HashMap<String, String> {
    resp.resources.iter().map(decode).collect()
}

struct Harness {
    policies: watch::Sender<SharedPolicySet>,
    proxies: ProxyRegistry,
    stats: Arc<XdsStats>,
    channel: Channel,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Harness {
    async fn start(policies: Vec<StoredPolicy>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        modules::test_support::write_fake_modules(dir.path());
        let catalog = ModuleCatalog::load(dir.path()).unwrap();
        let (ptx, prx) = watch::channel(policy_set(1, policies));
        let config = SnapshotterConfig {
            module_poll: Duration::from_secs(1),
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        };
        let snapshots = spawn_snapshotter_with(prx, catalog, config);
        let proxies = ProxyRegistry::new();
        let stats = Arc::new(XdsStats::default());
        let xds = Server::new(snapshots, proxies.clone(), stats.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(xds.ads())
                .add_service(xds.ecds())
                .add_service(xds.cds())
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            policies: ptx,
            proxies,
            stats,
            channel,
            server,
            _dir: dir,
        }
    }

    fn set_policies(&self, generation: u64, policies: Vec<StoredPolicy>) {
        self.policies.send_replace(policy_set(generation, policies));
    }

    /// Opens a stream with `call` on a client of this server's channel.
    async fn open<Req, Resp, F, Fut>(&self, call: F) -> Stream<Req, Resp>
    where
        F: FnOnce(Channel, ReceiverStream<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Streaming<Resp>>, tonic::Status>>,
    {
        let (tx, rx) = mpsc::channel(16);
        let responses = call(self.channel.clone(), ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, responses }
    }

    /// A state-of-the-world ADS stream.
    async fn sotw(&self) -> Stream<DiscoveryRequest, DiscoveryResponse> {
        self.open(|c, rx| async move {
            AggregatedDiscoveryServiceClient::new(c)
                .stream_aggregated_resources(rx)
                .await
        })
        .await
    }

    /// A delta ADS stream.
    async fn delta(&self) -> Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
        self.open(|c, rx| async move {
            AggregatedDiscoveryServiceClient::new(c)
                .delta_aggregated_resources(rx)
                .await
        })
        .await
    }

    /// A state-of-the-world stream on the standalone ECDS service.
    async fn ecds_sotw(&self) -> Stream<DiscoveryRequest, DiscoveryResponse> {
        self.open(|c, rx| async move {
            ExtensionConfigDiscoveryServiceClient::new(c)
                .stream_extension_configs(rx)
                .await
        })
        .await
    }

    /// A delta stream on the standalone ECDS service.
    async fn ecds_delta(&self) -> Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
        self.open(|c, rx| async move {
            ExtensionConfigDiscoveryServiceClient::new(c)
                .delta_extension_configs(rx)
                .await
        })
        .await
    }

    /// A state-of-the-world stream on the standalone CDS service.
    async fn cds_sotw(&self) -> Stream<DiscoveryRequest, DiscoveryResponse> {
        self.open(|c, rx| async move {
            ClusterDiscoveryServiceClient::new(c)
                .stream_clusters(rx)
                .await
        })
        .await
    }

    /// Waits until `check` holds for the registry's view of the only proxy with `node_id`.
    async fn wait_status(
        &self,
        node_id: &str,
        check: impl Fn(&ProxyStatus) -> bool,
    ) -> ProxyStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self
                .proxies
                .list()
                .into_iter()
                .find(|p| p.node_id == node_id && p.disconnected_at.is_none());
            if let Some(p) = found {
                if check(&p) {
                    return p;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status condition not reached: {:#?}",
                self.proxies.list()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct Stream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    responses: Streaming<Resp>,
}

impl<Req, Resp> Stream<Req, Resp> {
    async fn send(&self, req: Req) {
        assert!(self.tx.send(req).await.is_ok(), "request stream open");
    }

    async fn next(&mut self) -> Resp {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream not closed")
    }

    async fn assert_silent(&mut self) {
        if let Ok(r) = tokio::time::timeout(SILENCE, self.responses.message()).await {
            panic!("unexpected response: {:?}", r.map(|r| r.is_some()));
        }
    }
}

fn sotw_request(
    node: Option<Node>,
    version: &str,
    nonce: &str,
    resources: &[&str],
) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        version_info: version.into(),
        resource_names: names(resources),
        type_url: TYPED_EXTENSION_CONFIG.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn nack(message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: 3,
        message: message.into(),
        details: vec![],
    })
}

fn accepted_version(p: &ProxyStatus, name: &str) -> Option<String> {
    let r = p.resources.iter().find(|r| r.name == name)?;
    r.accepted.as_ref().map(|a| a.version.clone())
}

fn sent_version(p: &ProxyStatus, name: &str) -> Option<String> {
    let r = p.resources.iter().find(|r| r.name == name)?;
    r.sent.as_ref().map(|a| a.version.clone())
}

#[tokio::test]
async fn sotw_push_ack_change_and_nack_without_resend() {
    let h = Harness::start(vec![]).await;
    let mut s = h.sotw().await;
    s.send(sotw_request(Some(node("p1", &[])), "", "", &NAMES))
        .await;
    let first = s.next().await;
    assert_eq!(first.type_url, TYPED_EXTENSION_CONFIG);
    assert_eq!(first.resources.len(), 4);
    assert!(!first.version_info.is_empty());
    let c = configs(&first);
    for name in NAMES {
        assert_eq!(c[name], r#"{"policies":[]}"#, "{name} is a pass-through");
    }

    // ACK: recorded, nothing more sent.
    s.send(sotw_request(
        None,
        &first.version_info,
        &first.nonce,
        &NAMES,
    ))
    .await;
    let p = h
        .wait_status("p1", |p| {
            NAMES.iter().all(|n| accepted_version(p, n).is_some())
        })
        .await;
    assert_eq!(p.protocol, XdsProtocol::Sotw);
    assert_eq!(p.cluster, "shop");
    s.assert_silent().await;
    assert_eq!(XdsStats::get(&h.stats.acks_total), 1);

    // A policy change is pushed with a new version; only the trace resource changed.
    h.set_policies(
        2,
        vec![trace_policy("t1", json!({"samplingPercentage": 50}))],
    );
    let second = s.next().await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    let c2 = configs(&second);
    assert!(
        c2["meshwarden.trace"].contains(r#""name":"t1""#),
        "{}",
        c2["meshwarden.trace"]
    );
    assert_eq!(c2["meshwarden.fault"], c["meshwarden.fault"]);

    // NACK: recorded against the changed resource only, and not sent again.
    s.send(DiscoveryRequest {
        error_detail: nack("on_configure failed: bad trace policy"),
        ..sotw_request(None, &first.version_info, &second.nonce, &NAMES)
    })
    .await;
    let p = h
        .wait_status("p1", |p| p.resources.iter().any(|r| r.last_nack.is_some()))
        .await;
    s.assert_silent().await;
    let trace = p
        .resources
        .iter()
        .find(|r| r.name == "meshwarden.trace")
        .unwrap();
    let nack_status = trace.last_nack.as_ref().unwrap();
    assert_eq!(nack_status.message, "on_configure failed: bad trace policy");
    assert_eq!(
        Some(nack_status.version.clone()),
        sent_version(&p, "meshwarden.trace")
    );
    assert_ne!(
        Some(nack_status.version.clone()),
        accepted_version(&p, "meshwarden.trace")
    );
    assert!(p
        .resources
        .iter()
        .filter(|r| r.name != "meshwarden.trace")
        .all(|r| r.last_nack.is_none()));
    assert_eq!(XdsStats::get(&h.stats.nacks_total), 1);

    // A further change is pushed again.
    h.set_policies(3, vec![trace_policy("t2", json!({}))]);
    let third = s.next().await;
    assert!(configs(&third)["meshwarden.trace"].contains(r#""name":"t2""#));
    assert_eq!(XdsStats::get(&h.stats.pushes_total), 3);
    assert_eq!(XdsStats::get(&h.stats.connected), 1);
}

#[tokio::test]
async fn sotw_subset_and_reconnect_at_current_version() {
    let h = Harness::start(vec![trace_policy("t1", json!({}))]).await;
    let mut s = h.sotw().await;
    s.send(sotw_request(
        Some(node("p1", &[])),
        "",
        "",
        &["meshwarden.trace"],
    ))
    .await;
    let first = s.next().await;
    assert_eq!(first.resources.len(), 1);
    assert_eq!(decode(&first.resources[0]).0, "meshwarden.trace");
    drop(s);

    // A new stream that already holds the current version gets nothing ...
    let mut s = h.sotw().await;
    s.send(sotw_request(
        Some(node("p1", &[])),
        &first.version_info,
        "",
        &["meshwarden.trace"],
    ))
    .await;
    s.assert_silent().await;
    let p = h
        .wait_status("p1", |p| accepted_version(p, "meshwarden.trace").is_some())
        .await;
    assert_eq!(p.resources.len(), 1);
    // ... until something changes.
    h.set_policies(2, vec![]);
    let next = s.next().await;
    assert_ne!(next.version_info, first.version_info);
    // One live entry for p1 (a reconnect replaces a disconnected entry of the same node).
    let live = h.proxies.list();
    assert_eq!(
        live.iter()
            .filter(|p| p.node_id == "p1" && p.disconnected_at.is_none())
            .count(),
        1
    );
}

#[tokio::test]
async fn sotw_unserved_type_does_not_break_the_stream() {
    let h = Harness::start(vec![]).await;
    let mut s = h.sotw().await;
    let cluster_type = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    s.send(DiscoveryRequest {
        node: Some(node("p1", &[])),
        type_url: cluster_type.into(),
        ..Default::default()
    })
    .await;
    let empty = s.next().await;
    assert_eq!(empty.type_url, cluster_type);
    assert!(empty.resources.is_empty());
    s.send(DiscoveryRequest {
        type_url: cluster_type.into(),
        response_nonce: empty.nonce.clone(),
        ..Default::default()
    })
    .await;
    s.send(sotw_request(None, "", "", &[])).await;
    let resp = s.next().await;
    assert_eq!(resp.type_url, TYPED_EXTENSION_CONFIG);
    assert_eq!(
        resp.resources.len(),
        meshwarden_common::Kind::ALL.len() + 1,
        "empty names mean every resource"
    );
    s.assert_silent().await;
}

#[tokio::test]
async fn selectors_give_nodes_different_configs() {
    let h = Harness::start(vec![
        trace_policy("eu-only", json!({"selector": {"labels": {"zone": "eu"}}})),
        trace_policy("everyone", json!({})),
    ])
    .await;
    let mut eu = h.sotw().await;
    let mut us = h.sotw().await;
    eu.send(sotw_request(
        Some(node("a", &[("zone", "eu")])),
        "",
        "",
        &NAMES,
    ))
    .await;
    us.send(sotw_request(
        Some(node("b", &[("zone", "us")])),
        "",
        "",
        &NAMES,
    ))
    .await;
    let eu_resp = eu.next().await;
    let us_resp = us.next().await;
    let eu_trace = configs(&eu_resp)["meshwarden.trace"].clone();
    let us_trace = configs(&us_resp)["meshwarden.trace"].clone();
    assert!(
        eu_trace.contains("eu-only") && eu_trace.contains("everyone"),
        "{eu_trace}"
    );
    assert!(
        !us_trace.contains("eu-only") && us_trace.contains("everyone"),
        "{us_trace}"
    );
    // Name order: eu-only before everyone.
    assert!(eu_trace.find("eu-only") < eu_trace.find("everyone"));
    assert_ne!(eu_resp.version_info, us_resp.version_info);
    let p = h
        .wait_status("a", |p| sent_version(p, "meshwarden.trace").is_some())
        .await;
    assert_eq!(p.labels["zone"], "eu");
    assert_eq!(
        p.resources
            .iter()
            .find(|r| r.name == "meshwarden.trace")
            .unwrap()
            .sent
            .as_ref()
            .unwrap()
            .policies,
        vec!["eu-only", "everyone"]
    );
}

fn delta_request(node: Option<Node>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node,
        type_url: TYPED_EXTENSION_CONFIG.into(),
        ..Default::default()
    }
}

fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<_> = resp.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}

#[tokio::test]
async fn delta_subscribe_skip_known_push_changes_nack_and_unsubscribe() {
    let h = Harness::start(vec![]).await;

    // Learn the current versions from a first stream.
    let mut s = h.delta().await;
    s.send(DeltaDiscoveryRequest {
        resource_names_subscribe: names(&["meshwarden.trace", "meshwarden.fault"]),
        ..delta_request(Some(node("p1", &[])))
    })
    .await;
    let first = s.next().await;
    assert_eq!(
        delta_names(&first),
        names(&["meshwarden.fault", "meshwarden.trace"])
    );
    let versions: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(s);

    // Reconnect holding the fault resource: only trace is sent.
    let mut s = h.delta().await;
    s.send(DeltaDiscoveryRequest {
        resource_names_subscribe: names(&["meshwarden.trace", "meshwarden.fault"]),
        initial_resource_versions: [(
            "meshwarden.fault".to_string(),
            versions["meshwarden.fault"].clone(),
        )]
        .into(),
        ..delta_request(Some(node("p2", &[])))
    })
    .await;
    let resp = s.next().await;
    assert_eq!(delta_names(&resp), names(&["meshwarden.trace"]));
    assert!(resp.removed_resources.is_empty());
    s.send(DeltaDiscoveryRequest {
        response_nonce: resp.nonce.clone(),
        ..delta_request(None)
    })
    .await;
    let p = h
        .wait_status("p2", |p| accepted_version(p, "meshwarden.trace").is_some())
        .await;
    assert_eq!(p.protocol, XdsProtocol::Delta);
    assert_eq!(
        accepted_version(&p, "meshwarden.fault").as_ref(),
        Some(&versions["meshwarden.fault"])
    );
    s.assert_silent().await;

    // A trace policy change sends trace only.
    h.set_policies(2, vec![trace_policy("t1", json!({}))]);
    let change = s.next().await;
    assert_eq!(delta_names(&change), names(&["meshwarden.trace"]));
    assert_ne!(change.resources[0].version, versions["meshwarden.trace"]);
    let (_, json) = decode(change.resources[0].resource.as_ref().unwrap());
    assert!(json.contains(r#""name":"t1""#));

    // NACK: recorded, not re-sent.
    s.send(DeltaDiscoveryRequest {
        response_nonce: change.nonce.clone(),
        error_detail: nack("rejected by filter"),
        ..delta_request(None)
    })
    .await;
    let p = h
        .wait_status("p2", |p| p.resources.iter().any(|r| r.last_nack.is_some()))
        .await;
    s.assert_silent().await;
    let trace = p
        .resources
        .iter()
        .find(|r| r.name == "meshwarden.trace")
        .unwrap();
    assert_eq!(
        trace.last_nack.as_ref().unwrap().message,
        "rejected by filter"
    );
    assert_eq!(
        trace.last_nack.as_ref().unwrap().version,
        change.resources[0].version
    );

    // Unsubscribing reports the removal; subscribing to more sends just that.
    s.send(DeltaDiscoveryRequest {
        resource_names_unsubscribe: names(&["meshwarden.fault"]),
        resource_names_subscribe: names(&["meshwarden.mirror"]),
        ..delta_request(None)
    })
    .await;
    let resp = s.next().await;
    assert_eq!(delta_names(&resp), names(&["meshwarden.mirror"]));
    assert_eq!(resp.removed_resources, names(&["meshwarden.fault"]));
    s.assert_silent().await;
}

#[tokio::test]
async fn delta_wildcard_gets_everything() {
    let h = Harness::start(vec![]).await;
    let mut s = h.delta().await;
    s.send(delta_request(Some(node("p1", &[])))).await;
    let resp = s.next().await;
    assert_eq!(resp.resources.len(), meshwarden_common::Kind::ALL.len() + 1);
    s.send(DeltaDiscoveryRequest {
        response_nonce: resp.nonce.clone(),
        ..delta_request(None)
    })
    .await;
    s.assert_silent().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_still_ends_up_current() {
    let h = Harness::start(vec![]).await;
    let mut s = h.sotw().await;
    s.send(sotw_request(Some(node("slow", &[])), "", "", &NAMES))
        .await;
    // Many changes while the client reads nothing.
    for g in 0..40u64 {
        h.set_policies(g + 2, vec![trace_policy(&format!("p{g}"), json!({}))]);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut last = None;
    for _ in 0..=41 {
        let resp = s.next().await;
        let trace = configs(&resp)["meshwarden.trace"].clone();
        if trace.contains(r#""name":"p39""#) {
            last = Some(resp);
            break;
        }
    }
    assert!(last.is_some(), "the latest policy set arrives");
}

#[tokio::test]
async fn first_request_without_node_is_rejected() {
    let h = Harness::start(vec![]).await;
    let mut s = h.sotw().await;
    s.send(sotw_request(None, "", "", &NAMES)).await;
    let err = tokio::time::timeout(WAIT, s.responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

fn mirror_policy(name: &str, hosts: &[&str], selector: serde_json::Value) -> StoredPolicy {
    let mirrors: Vec<_> = hosts
        .iter()
        .map(|h| json!({"target": {"host": h}}))
        .collect();
    crate::test_fixtures::stored(
        "MirrorPolicy",
        name,
        json!({"mirrors": mirrors, "selector": selector}),
    )
}

fn cluster_request(node: Option<Node>, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        version_info: version.into(),
        type_url: CLUSTER_TYPE_URL.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

/// An Istio sidecar's node: workload labels under `LABELS`, namespace under `NAMESPACE`.
fn istio_node(pod: &str, ns: &str, labels: &[(&str, &str)]) -> Node {
    let workload = Struct {
        fields: labels
            .iter()
            .map(|(k, v)| {
                let v = Value {
                    kind: Some(value::Kind::StringValue(v.to_string())),
                };
                (k.to_string(), v)
            })
            .collect(),
    };
    let s = |v: &str| Value {
        kind: Some(value::Kind::StringValue(v.into())),
    };
    Node {
        id: format!("sidecar~10.0.0.5~{pod}.{ns}~{ns}.svc.cluster.local"),
        cluster: format!("{pod}.{ns}"),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_string(), s(ns)),
                (
                    "LABELS".to_string(),
                    Value {
                        kind: Some(value::Kind::StructValue(workload)),
                    },
                ),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn standalone_ecds_sotw_push_ack_nack_and_status_say_which_service() {
    let h = Harness::start(vec![trace_policy(
        "reviews-only",
        json!({"selector": {"namespaces": ["bookinfo"], "labels": {"app": "reviews"}}}),
    )])
    .await;
    // Envoy opens one ECDS stream per filter name; the request names its type.
    let mut s = h.ecds_sotw().await;
    s.send(sotw_request(
        Some(istio_node(
            "reviews-v1-0",
            "bookinfo",
            &[("app", "reviews")],
        )),
        "",
        "",
        &["meshwarden.trace"],
    ))
    .await;
    let first = s.next().await;
    assert_eq!(first.type_url, TYPED_EXTENSION_CONFIG);
    let cfg = configs(&first);
    assert_eq!(cfg.len(), 1, "only the subscribed filter");
    assert!(cfg["meshwarden.trace"].contains(r#""name":"reviews-only""#));
    s.send(sotw_request(
        None,
        &first.version_info,
        &first.nonce,
        &["meshwarden.trace"],
    ))
    .await;
    let p = h
        .wait_status(
            "sidecar~10.0.0.5~reviews-v1-0.bookinfo~bookinfo.svc.cluster.local",
            |p| accepted_version(p, "meshwarden.trace").is_some(),
        )
        .await;
    assert_eq!(p.transport, Transport::Ecds);
    assert_eq!(p.protocol, XdsProtocol::Sotw);
    s.assert_silent().await;

    // A change is pushed; a NACK is recorded and the rejected version not re-sent.
    h.set_policies(
        2,
        vec![trace_policy(
            "reviews-only",
            json!({"selector": {"namespaces": ["bookinfo"], "labels": {"app": "reviews"}}, "samplingPercentage": 5}),
        )],
    );
    let change = s.next().await;
    s.send(DiscoveryRequest {
        error_detail: nack("bad"),
        ..sotw_request(
            None,
            &first.version_info,
            &change.nonce,
            &["meshwarden.trace"],
        )
    })
    .await;
    h.wait_status(&p.node_id, |p| {
        p.resources
            .iter()
            .any(|r| r.last_nack.as_ref().is_some_and(|n| n.message == "bad"))
    })
    .await;
    s.assert_silent().await;

    // The same labels in another namespace select nothing.
    let mut other = h.ecds_sotw().await;
    other
        .send(sotw_request(
            Some(istio_node("reviews-v1-0", "staging", &[("app", "reviews")])),
            "",
            "",
            &["meshwarden.trace"],
        ))
        .await;
    let cfg = configs(&other.next().await);
    assert_eq!(cfg["meshwarden.trace"], r#"{"policies":[]}"#);
}

#[tokio::test]
async fn standalone_ecds_delta_subscribes_by_name() {
    let h = Harness::start(vec![trace_policy("t", json!({}))]).await;
    let mut s = h.ecds_delta().await;
    s.send(DeltaDiscoveryRequest {
        resource_names_subscribe: names(&["meshwarden.fault"]),
        ..delta_request(Some(node("p1", &[])))
    })
    .await;
    let first = s.next().await;
    assert_eq!(delta_names(&first), names(&["meshwarden.fault"]));
    s.send(DeltaDiscoveryRequest {
        response_nonce: first.nonce.clone(),
        ..delta_request(None)
    })
    .await;
    let p = h
        .wait_status("p1", |p| accepted_version(p, "meshwarden.fault").is_some())
        .await;
    assert_eq!(
        (p.transport, p.protocol),
        (Transport::Ecds, XdsProtocol::Delta)
    );
    // A trace change is nothing to this stream.
    h.set_policies(2, vec![trace_policy("t2", json!({}))]);
    s.assert_silent().await;
}

#[tokio::test]
async fn a_per_type_service_serves_only_its_type() {
    let h = Harness::start(vec![]).await;
    let mut s = h.ecds_sotw().await;
    s.send(cluster_request(Some(node("p1", &[])), "", "")).await;
    let r = s.next().await;
    assert_eq!(r.type_url, CLUSTER_TYPE_URL);
    assert!(r.resources.is_empty(), "clusters are not served on ECDS");
}

#[tokio::test]
async fn clusters_over_ads_and_standalone_cds() {
    let h = Harness::start(vec![]).await;
    for standalone in [false, true] {
        let mut s = if standalone {
            h.cds_sotw().await
        } else {
            h.sotw().await
        };
        let id = format!("p-{standalone}");
        // The first request is answered even without clusters: Envoy waits for it.
        s.send(cluster_request(Some(node(&id, &[])), "", "")).await;
        let empty = s.next().await;
        assert_eq!(empty.type_url, CLUSTER_TYPE_URL);
        assert!(empty.resources.is_empty());
        s.send(cluster_request(None, &empty.version_info, &empty.nonce))
            .await;
        s.assert_silent().await;

        // Clusters of the mirror policies that select the proxy.
        h.set_policies(
            2,
            vec![
                mirror_policy("a", &["127.0.0.1:9000", "shadow.local:80"], json!({})),
                mirror_policy("b", &["127.0.0.1:9999"], json!({"nodeIds": ["other"]})),
            ],
        );
        let r = s.next().await;
        assert_eq!(
            cluster_names(&r),
            [
                "meshwarden_mirror_127.0.0.1_9000",
                "meshwarden_mirror_shadow.local_80"
            ]
        );
        // A NACK is counted and the same version is not sent again.
        let nacks = XdsStats::get(&h.stats.nacks_total);
        s.send(DiscoveryRequest {
            error_detail: nack("bad cluster"),
            ..cluster_request(None, &empty.version_info, &r.nonce)
        })
        .await;
        s.assert_silent().await;
        assert_eq!(XdsStats::get(&h.stats.nacks_total), nacks + 1);
        // Removing the policies sends an empty list.
        h.set_policies(3, vec![]);
        assert!(s.next().await.resources.is_empty());

        // Reconnecting at the current version gets nothing.
        h.set_policies(4, vec![mirror_policy("a", &["127.0.0.1:9000"], json!({}))]);
        let current = s.next().await;
        drop(s);
        let mut again = if standalone {
            h.cds_sotw().await
        } else {
            h.sotw().await
        };
        again
            .send(cluster_request(
                Some(node(&id, &[])),
                &current.version_info,
                "",
            ))
            .await;
        again.assert_silent().await;
        h.set_policies(5, vec![]);
        // Let the empty set be published before the next round's first request.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn delta_clusters_changes_and_removals() {
    let h = Harness::start(vec![]).await;
    let mut s = h.delta().await;
    let req = |node: Option<Node>, nonce: &str| DeltaDiscoveryRequest {
        node,
        type_url: CLUSTER_TYPE_URL.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    s.send(req(Some(node("p1", &[])), "")).await;
    let r = s.next().await;
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    s.send(req(None, &r.nonce)).await;
    s.assert_silent().await;
    h.set_policies(2, vec![mirror_policy("a", &["127.0.0.1:9000"], json!({}))]);
    let r = s.next().await;
    assert_eq!(
        delta_names(&r),
        names(&["meshwarden_mirror_127.0.0.1_9000"])
    );
    s.send(req(None, &r.nonce)).await;
    h.set_policies(3, vec![]);
    let r = s.next().await;
    assert!(r.resources.is_empty());
    assert_eq!(
        r.removed_resources,
        names(&["meshwarden_mirror_127.0.0.1_9000"])
    );
}
