//! The gRPC Aggregated Discovery Service: one task per stream drives a protocol state
//! machine ([`super::sotw`] or [`super::delta`]) from client requests and snapshot changes.
//!
//! Responses go through a small bounded channel and are built only when the channel has
//! room, from the latest snapshot at that moment: a slow client makes the server skip
//! intermediate snapshots rather than queue them.

use super::cache::Snapshot;
use super::delta::DeltaSession;
use super::proxies::{ProxyRegistry, XdsStats};
use super::session::{node_info, Common, Session};
use super::sotw::SotwSession;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Responses a stream may have queued for its client.
pub const RESPONSE_BUFFER: usize = 8;

/// ADS server for the meshwarden ECDS resources.
#[derive(Debug, Clone)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    proxies: ProxyRegistry,
    stats: Arc<XdsStats>,
    shutdown: Option<watch::Receiver<bool>>,
}

impl AdsServer {
    /// A server serving `snapshots`, recording streams in `proxies` and counting in `stats`.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        proxies: ProxyRegistry,
        stats: Arc<XdsStats>,
    ) -> Self {
        Self {
            snapshots,
            proxies,
            stats,
            shutdown: None,
        }
    }

    /// Ends every open stream (cleanly, so proxies reconnect) once `shutdown` turns true or
    /// its sender is dropped; without it, long-lived streams would hold up a graceful stop.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    fn spawn<S: Session>(
        &self,
        inbound: Streaming<S::Request>,
    ) -> ReceiverStream<Result<S::Response, Status>> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(drive::<S, _>(inbound, tx, self.clone()));
        ReceiverStream::new(rx)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(
            self.spawn::<SotwSession>(request.into_inner()),
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(
            self.spawn::<DeltaSession>(request.into_inner()),
        ))
    }
}

/// Runs one stream until the client goes away.
async fn drive<S, I>(
    mut inbound: I,
    tx: mpsc::Sender<Result<S::Response, Status>>,
    server: AdsServer,
) where
    S: Session,
    I: Stream<Item = Result<S::Request, Status>> + Unpin,
{
    let AdsServer {
        mut snapshots,
        proxies,
        stats,
        mut shutdown,
    } = server;
    let first = tokio::select! {
        message = inbound.next() => message,
        () = shutting_down(&mut shutdown) => return,
    };
    let first = match first {
        Some(Ok(request)) => request,
        Some(Err(status)) => {
            tracing::debug!(%status, "xDS stream failed before its first request");
            return;
        }
        None => return,
    };
    let Some(node) = S::node(&first).map(node_info) else {
        let status =
            Status::invalid_argument("the first request of an xDS stream must carry the node");
        let _ = tx.send(Err(status)).await;
        return;
    };
    let _connected = stats.stream_opened();
    let handle = proxies.connect(&node, S::PROTOCOL);
    tracing::info!(
        node = %node.id,
        cluster = %node.cluster,
        protocol = S::PROTOCOL.as_str(),
        stream = handle.stream_id(),
        "proxy connected"
    );
    let node_id = node.id.clone();
    let mut session = S::new(Common::new(node, handle, stats));
    let mut snapshot = snapshots.borrow_and_update().clone();
    let mut snapshots_open = true;
    session.on_request(first, &snapshot);
    loop {
        let pending = session.has_pending(&snapshot);
        tokio::select! {
            message = inbound.next() => match message {
                Some(Ok(request)) => session.on_request(request, &snapshot),
                Some(Err(status)) => {
                    tracing::debug!(node = %node_id, %status, "xDS stream error");
                    break;
                }
                None => break,
            },
            changed = snapshots.changed(), if snapshots_open => match changed {
                Ok(()) => snapshot = snapshots.borrow_and_update().clone(),
                Err(_) => snapshots_open = false,
            },
            permit = tx.reserve(), if pending => match permit {
                Ok(permit) => {
                    if let Some(response) = session.next_response(&snapshot) {
                        permit.send(Ok(response));
                    }
                }
                Err(_) => break,
            },
            _ = tx.closed() => break,
            () = shutting_down(&mut shutdown) => break,
        }
    }
    tracing::info!(node = %node_id, protocol = S::PROTOCOL.as_str(), "proxy disconnected");
}

/// Resolves once shutdown was signalled (or its sender is gone); never without a signal.
async fn shutting_down(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            let _ = rx.wait_for(|down| *down).await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_set::{content_version, PolicySet, StoredPolicy};
    use crate::xds::modules::{ModuleInfo, ModuleSet};
    use crate::xds::resources::TYPED_EXTENSION_CONFIG;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use meshwarden_common::{Kind, PolicyDocument};
    use std::time::Duration;

    fn snapshot(id: u64, modules: &Arc<ModuleSet>) -> Arc<Snapshot> {
        let doc = PolicyDocument::from_value(&serde_json::json!({
            "apiVersion": "meshwarden.dev/v1alpha1",
            "kind": "TracePolicy",
            "metadata": {"name": format!("p{id}")},
        }))
        .unwrap();
        let policy = StoredPolicy {
            version: content_version(&doc),
            doc,
            generation: id,
            updated_unix_ms: 0,
        };
        let set = PolicySet {
            generation: id,
            policies: vec![policy],
        };
        Arc::new(Snapshot::new(id, Arc::new(set), modules.clone()))
    }

    #[tokio::test]
    async fn a_slow_client_gets_a_bounded_queue_then_the_latest_state() {
        let modules = Arc::new(
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
        );
        let (snap_tx, snap_rx) = watch::channel(snapshot(1, &modules));
        let stats = Arc::new(XdsStats::default());
        let server = AdsServer::new(snap_rx, ProxyRegistry::new(), stats.clone());
        let (req_tx, req_rx) = mpsc::channel(4);
        let (resp_tx, mut resp_rx) = mpsc::channel(RESPONSE_BUFFER);
        let inbound = ReceiverStream::new(req_rx).map(Ok);
        let task = tokio::spawn(drive::<SotwSession, _>(inbound, resp_tx, server));
        req_tx
            .send(DiscoveryRequest {
                node: Some(Node {
                    id: "slow".into(),
                    ..Default::default()
                }),
                type_url: TYPED_EXTENSION_CONFIG.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        for id in 2..=200 {
            snap_tx.send_replace(snapshot(id, &modules));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut queued = 0;
        while resp_rx.try_recv().is_ok() {
            queued += 1;
        }
        assert!(queued <= RESPONSE_BUFFER, "{queued} responses queued");
        // With room again, the latest state follows, and nothing after it.
        let last = tokio::time::timeout(Duration::from_secs(5), resp_rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let tec = last
            .resources
            .iter()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .collect::<String>();
        assert!(tec.contains("p200"), "latest policy missing");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), resp_rx.recv())
                .await
                .is_err()
        );
        assert!(XdsStats::get(&stats.pushes_total) <= RESPONSE_BUFFER as u64 + 1);
        drop(req_tx);
        task.await.unwrap();
        assert_eq!(XdsStats::get(&stats.connected), 0);
    }

    #[tokio::test]
    async fn shutdown_ends_open_streams() {
        let modules = Arc::new(
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
        );
        let (_snap_tx, snap_rx) = watch::channel(snapshot(1, &modules));
        let (stop_tx, stop_rx) = watch::channel(false);
        let server =
            AdsServer::new(snap_rx, ProxyRegistry::new(), Arc::default()).with_shutdown(stop_rx);
        let (req_tx, req_rx) = mpsc::channel(4);
        let (resp_tx, mut resp_rx) = mpsc::channel(RESPONSE_BUFFER);
        let inbound = ReceiverStream::new(req_rx).map(Ok);
        let task = tokio::spawn(drive::<DeltaSession, _>(inbound, resp_tx, server));
        req_tx
            .send(DeltaDiscoveryRequest {
                node: Some(Node::default()),
                type_url: TYPED_EXTENSION_CONFIG.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(resp_rx.recv().await.is_some());
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stream ended")
            .unwrap();
        assert!(resp_rx.recv().await.is_none());
    }
}
