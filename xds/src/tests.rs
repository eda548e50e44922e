//! The protocol machines and the driver over a minimal snapshot: one type of resources
//! whose content the test sets, and a rule for transient rejections.

use crate::observer::NoObserver;
use crate::resource::{Resource, Resources};
use crate::server::{drive, Admission, Protocol, Server, Transport, RESPONSE_BUFFER};
use crate::snapshot::Snapshot;
use crate::{delta::DeltaStream, sotw::SotwStream, XdsStats, EXTENSION_CONFIG_TYPE};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

const TYPE: &str = EXTENSION_CONFIG_TYPE;

/// Snapshot `id` serves one resource `r` whose content is `content`.
struct TestSnapshot {
    id: u64,
    content: String,
}

impl Snapshot for TestSnapshot {
    type Node = String;

    fn node(node: &Node) -> String {
        node.id.clone()
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn types(&self) -> &[&'static str] {
        &[TYPE]
    }

    fn resources(&self, type_url: &str, _node: &String) -> Option<Resources> {
        (type_url == TYPE).then(|| {
            Arc::new(vec![Arc::new(Resource {
                name: "r".into(),
                version: self.content.clone(),
                body: Any {
                    type_url: TYPE.into(),
                    value: self.content.clone().into_bytes(),
                },
                summary: vec![],
            })])
        })
    }

    fn retry_rejected(&self, _type_url: &str, _node: &String, message: &str) -> Option<Duration> {
        (message == "not yet").then_some(Duration::from_millis(50))
    }
}

fn snapshot(id: u64) -> Arc<TestSnapshot> {
    Arc::new(TestSnapshot {
        id,
        content: format!("c{id}"),
    })
}

fn node() -> Option<Node> {
    Some(Node {
        id: "p".into(),
        ..Default::default()
    })
}

struct Stream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: mpsc::Receiver<Result<Resp, Status>>,
    task: tokio::task::JoinHandle<()>,
}

impl<Req, Resp> Stream<Req, Resp> {
    async fn next(&mut self) -> Resp {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a response in time")
            .expect("stream open")
            .expect("no error")
    }

    /// The next response if one comes within `wait`.
    async fn within(&mut self, wait: Duration) -> Option<Resp> {
        let r = tokio::time::timeout(wait, self.rx.recv()).await;
        r.ok().flatten().map(|r| r.expect("no error"))
    }

    async fn silent(&mut self) -> bool {
        self.within(Duration::from_millis(300)).await.is_none()
    }
}

fn start_sotw(
    server: Server<TestSnapshot, NoObserver>,
) -> Stream<DiscoveryRequest, DiscoveryResponse> {
    let (tx, req_rx) = mpsc::channel(16);
    let (resp_tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    let inbound = ReceiverStream::new(req_rx).map(Ok);
    let task = tokio::spawn(
        drive::<SotwStream<TestSnapshot, NoObserver>, _, NoObserver>(
            tonic::Extensions::default(),
            inbound,
            resp_tx,
            server,
            Transport::Ads,
            Protocol::Sotw,
        ),
    );
    Stream { tx, rx, task }
}

fn start_delta(
    server: Server<TestSnapshot, NoObserver>,
) -> Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
    let (tx, req_rx) = mpsc::channel(16);
    let (resp_tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    let inbound = ReceiverStream::new(req_rx).map(Ok);
    let task = tokio::spawn(
        drive::<DeltaStream<TestSnapshot, NoObserver>, _, NoObserver>(
            tonic::Extensions::default(),
            inbound,
            resp_tx,
            server,
            Transport::Ecds,
            Protocol::Delta,
        ),
    );
    Stream { tx, rx, task }
}

fn sotw_request(version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(),
        type_url: TYPE.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| RpcStatus {
            message: m.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_slow_client_gets_a_bounded_queue_then_the_latest_state() {
    let (snap_tx, snap_rx) = watch::channel(snapshot(1));
    let stats = Arc::new(XdsStats::default());
    let mut s = start_sotw(Server::new(snap_rx, NoObserver, stats.clone()));
    s.tx.send(sotw_request("", "", None)).await.unwrap();
    for id in 2..=200 {
        snap_tx.send_replace(snapshot(id));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut queued = 0;
    while s.rx.try_recv().is_ok() {
        queued += 1;
    }
    assert!(queued <= RESPONSE_BUFFER, "{queued} responses queued");
    // With room again, the latest state follows, and nothing after it.
    let last = s.next().await;
    assert_eq!(last.version_info.len(), 16);
    assert_eq!(last.resources[0].value, b"c200");
    assert!(s.silent().await);
    assert!(XdsStats::get(&stats.pushes_total) <= RESPONSE_BUFFER as u64 + 1);
    drop(s.tx);
    s.task.await.unwrap();
    assert_eq!(XdsStats::get(&stats.connected), 0);
}

/// Admits the nodes whose id the request's `String` extension names.
struct NodeFromExtensions;

impl Admission for NodeFromExtensions {
    fn admit(&self, request: &tonic::Extensions, node: &Node) -> Result<(), Status> {
        match request.get::<String>() {
            Some(id) if *id == node.id => Ok(()),
            _ => Err(Status::permission_denied(format!("not {}", node.id))),
        }
    }
}

#[tokio::test]
async fn a_stream_the_admission_refuses_gets_its_status_and_nothing_else() {
    let (_snap_tx, snap_rx) = watch::channel(snapshot(1));
    let stats = Arc::new(XdsStats::default());
    let server = Server::new(snap_rx, NoObserver, stats.clone())
        .with_admission(Arc::new(NodeFromExtensions));
    for (claimed, admitted) in [("p", true), ("someone-else", false)] {
        let (resp_tx, mut rx) = mpsc::channel(RESPONSE_BUFFER);
        let mut extensions = tonic::Extensions::default();
        extensions.insert(claimed.to_string());
        let first = futures::stream::iter([Ok(sotw_request("", "", None))])
            .chain(futures::stream::pending());
        let task = tokio::spawn(
            drive::<SotwStream<TestSnapshot, NoObserver>, _, NoObserver>(
                extensions,
                Box::pin(first),
                resp_tx,
                server.clone(),
                Transport::Ads,
                Protocol::Sotw,
            ),
        );
        let reply = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if admitted {
            assert_eq!(reply.unwrap().resources.len(), 1);
            task.abort();
        } else {
            let status = reply.unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert_eq!(status.message(), "not p");
            task.await.unwrap();
            assert!(rx.recv().await.is_none(), "the stream ends");
        }
    }
    assert_eq!(
        XdsStats::get(&stats.streams_total),
        1,
        "a refused stream is never opened"
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let (_snap_tx, snap_rx) = watch::channel(snapshot(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = Server::new(snap_rx, NoObserver, Arc::default()).with_shutdown(stop_rx);
    let mut s = start_delta(server);
    s.tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: TYPE.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    s.next().await;
    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("stream ended")
        .unwrap();
    assert!(s.rx.recv().await.is_none());
}

#[tokio::test]
async fn sotw_resends_after_a_transient_rejection_but_never_after_a_real_one() {
    let (_snap_tx, snap_rx) = watch::channel(snapshot(1));
    let stats = Arc::new(XdsStats::default());
    let mut s = start_sotw(Server::new(snap_rx, NoObserver, stats.clone()));
    s.tx.send(sotw_request("", "", None)).await.unwrap();
    let first = s.next().await;
    s.tx.send(sotw_request("", &first.nonce, Some("not yet")))
        .await
        .unwrap();
    let again = s.next().await;
    assert_eq!(again.version_info, first.version_info);
    assert_ne!(again.nonce, first.nonce);
    s.tx.send(sotw_request("", &again.nonce, Some("broken")))
        .await
        .unwrap();
    assert!(s.silent().await, "a real rejection is not re-sent");
    assert_eq!(XdsStats::get(&stats.nacks_total), 2);
}

/// On a paused clock: the retries back off up to 8 s; the test takes no real time.
#[tokio::test(start_paused = true)]
async fn delta_resends_after_a_transient_rejection_a_bounded_number_of_times() {
    let (_snap_tx, snap_rx) = watch::channel(snapshot(1));
    let mut s = start_delta(Server::new(snap_rx, NoObserver, Arc::default()));
    s.tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: TYPE.into(),
        resource_names_subscribe: vec!["r".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut sent = 0;
    let mut last = s.next().await;
    loop {
        assert_eq!(last.resources.len(), 1, "the rejected resource again");
        sent += 1;
        s.tx.send(DeltaDiscoveryRequest {
            type_url: TYPE.into(),
            response_nonce: last.nonce.clone(),
            error_detail: Some(RpcStatus {
                message: "not yet".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let before = tokio::time::Instant::now();
        match s.within(Duration::from_secs(10)).await {
            Some(r) => {
                // Each retry waits at least as long as the one before (backoff).
                assert!(before.elapsed() >= Duration::from_millis(50));
                last = r;
            }
            None => break,
        }
        assert!(sent <= 20, "retries are bounded");
    }
    assert_eq!(sent, 1 + crate::stream::MAX_RETRIES);
}

#[tokio::test(start_paused = true)]
async fn changes_wait_for_the_retry_of_a_transient_rejection() {
    let (snap_tx, snap_rx) = watch::channel(snapshot(1));
    let mut s = start_sotw(Server::new(snap_rx, NoObserver, Arc::default()));
    s.tx.send(sotw_request("", "", None)).await.unwrap();
    let first = s.next().await;
    s.tx.send(sotw_request("", &first.nonce, Some("not yet")))
        .await
        .unwrap();
    tokio::task::yield_now().await;
    let rejected_at = tokio::time::Instant::now();
    // New content while the client is busy: held until the retry, which carries it.
    snap_tx.send_replace(snapshot(2));
    let next = s.within(Duration::from_secs(5)).await.expect("the retry");
    assert!(
        rejected_at.elapsed() >= Duration::from_millis(50),
        "held until the retry"
    );
    assert_eq!(next.resources[0].value, b"c2");
    assert!(s.silent().await);
}

#[tokio::test]
async fn an_unserved_type_is_answered_once_with_nothing() {
    let (snap_tx, snap_rx) = watch::channel(snapshot(1));
    let mut s = start_sotw(Server::new(snap_rx, NoObserver, Arc::default()));
    let other = "type.googleapis.com/envoy.config.listener.v3.Listener";
    s.tx.send(DiscoveryRequest {
        type_url: other.into(),
        ..sotw_request("", "", None)
    })
    .await
    .unwrap();
    let r = s.next().await;
    assert_eq!(r.type_url, other);
    assert!(r.resources.is_empty());
    snap_tx.send_replace(snapshot(2));
    assert!(s.silent().await);
}

mod fuzzing_properties {
    use proptest::prelude::*;

    /// Length-prefixed request bytes: mostly well-formed requests (so streams get past
    /// their first message), some raw bytes.
    fn input() -> impl Strategy<Value = Vec<u8>> {
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        use prost::Message;
        let request = (
            prop::sample::select(vec![
                crate::EXTENSION_CONFIG_TYPE,
                crate::CLUSTER_TYPE,
                "type.googleapis.com/other",
                "",
            ]),
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", ""]), 0..3),
            prop::sample::select(vec!["", "1", "nonce-1", "x"]),
            prop::option::of(prop::sample::select(vec!["retry", "bad"])),
        )
            .prop_map(|(type_url, names, nonce, error)| {
                DiscoveryRequest {
                    node: Some(super::Node {
                        id: "n".into(),
                        cluster: "c".into(),
                        ..Default::default()
                    }),
                    type_url: type_url.into(),
                    resource_names: names.into_iter().map(String::from).collect(),
                    response_nonce: nonce.into(),
                    error_detail: error.map(|m| envoy_types::pb::google::rpc::Status {
                        code: 3,
                        message: m.into(),
                        details: vec![],
                    }),
                    ..Default::default()
                }
                .encode_to_vec()
            });
        (
            any::<u8>(),
            prop::collection::vec(
                prop_oneof![3 => request, 1 => prop::collection::vec(any::<u8>(), 0..40)],
                0..6,
            ),
        )
            .prop_map(|(mode, messages)| {
                let mut out = vec![mode & 0x7f];
                for m in messages {
                    let m = &m[..m.len().min(255)];
                    out.push(m.len() as u8);
                    out.extend_from_slice(m);
                }
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn sotw_streams_survive_any_requests(data in input()) {
            crate::fuzzing::requests(&data);
        }

        #[test]
        fn delta_streams_survive_any_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut data = data;
            if let Some(first) = data.first_mut() {
                *first |= 0x80;
            }
            crate::fuzzing::requests(&data);
        }
    }
}
