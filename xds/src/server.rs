//! The stream driver and the gRPC transports. One task per stream drives a protocol state
//! machine ([`crate::sotw`] or [`crate::delta`]) from client requests and snapshot changes;
//! the Aggregated Discovery Service carries every type on one stream, the per-type
//! services (ECDS, CDS) one type each. All of them share the same state machines.
//!
//! Responses go through a small bounded channel and are built only when the channel has
//! room, from the latest snapshot at that moment: a slow client makes the server skip
//! intermediate snapshots rather than queue them.

use crate::delta::DeltaStream;
use crate::observer::{Observer, StreamInfo, StreamObserver, XdsStats};
use crate::snapshot::Snapshot;
use crate::sotw::SotwStream;
use crate::stream::{Machine, StreamState};
use crate::{CLUSTER_TYPE, EXTENSION_CONFIG_TYPE};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::{
    ExtensionConfigDiscoveryService, ExtensionConfigDiscoveryServiceServer,
};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Responses a stream may have queued for its client.
pub const RESPONSE_BUFFER: usize = 8;

/// The gRPC service a stream came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Aggregated Discovery Service: every type on one stream.
    Ads,
    /// `ExtensionConfigDiscoveryService`: extension configurations only.
    Ecds,
    /// `ClusterDiscoveryService`: clusters only.
    Cds,
}

impl Transport {
    /// `"ads"`, `"ecds"` or `"cds"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ads => "ads",
            Transport::Ecds => "ecds",
            Transport::Cds => "cds",
        }
    }

    /// The one type a per-type service serves.
    fn fixed_type(self) -> Option<&'static str> {
        match self {
            Transport::Ads => None,
            Transport::Ecds => Some(EXTENSION_CONFIG_TYPE),
            Transport::Cds => Some(CLUSTER_TYPE),
        }
    }
}

/// xDS protocol variant of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// State of the world.
    Sotw,
    /// Incremental.
    Delta,
}

impl Protocol {
    /// `"sotw"` or `"delta"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        }
    }
}

/// Decides whether a stream is served, once its first request named the node: from the
/// gRPC request's extensions (the transport's peer information, such as a client
/// certificate) and that node. A refusal ends the stream with the returned status before
/// anything is sent or observed.
pub trait Admission: Send + Sync + 'static {
    fn admit(&self, request: &tonic::Extensions, node: &Node) -> Result<(), Status>;
}

/// An xDS server over snapshots of type `S`, reporting to `O`. Cheap to clone; every
/// service it hands out shares the same snapshots, observer and counters.
pub struct Server<S: Snapshot, O: Observer> {
    snapshots: watch::Receiver<Arc<S>>,
    observer: O,
    stats: Arc<XdsStats>,
    shutdown: Option<watch::Receiver<bool>>,
    admission: Option<Arc<dyn Admission>>,
}

impl<S: Snapshot, O: Observer> Clone for Server<S, O> {
    fn clone(&self) -> Self {
        Self {
            snapshots: self.snapshots.clone(),
            observer: self.observer.clone(),
            stats: self.stats.clone(),
            shutdown: self.shutdown.clone(),
            admission: self.admission.clone(),
        }
    }
}

impl<S: Snapshot, O: Observer> Server<S, O> {
    /// A server serving `snapshots`, telling `observer` about streams and counting in
    /// `stats`.
    pub fn new(snapshots: watch::Receiver<Arc<S>>, observer: O, stats: Arc<XdsStats>) -> Self {
        Self {
            snapshots,
            observer,
            stats,
            shutdown: None,
            admission: None,
        }
    }

    /// Serves only the streams `admission` admits (by default, every stream).
    pub fn with_admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Ends every open stream (cleanly, so proxies reconnect) once `shutdown` turns true or
    /// its sender is dropped; without it, long-lived streams would hold up a graceful stop.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The Aggregated Discovery Service.
    pub fn ads(&self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// The standalone Extension Config Discovery Service.
    pub fn ecds(&self) -> ExtensionConfigDiscoveryServiceServer<Self> {
        ExtensionConfigDiscoveryServiceServer::new(self.clone())
    }

    /// The standalone Cluster Discovery Service.
    pub fn cds(&self) -> ClusterDiscoveryServiceServer<Self> {
        ClusterDiscoveryServiceServer::new(self.clone())
    }

    fn spawn<M>(
        &self,
        extensions: tonic::Extensions,
        inbound: Streaming<M::Request>,
        transport: Transport,
        protocol: Protocol,
    ) -> ReceiverStream<Result<M::Response, Status>>
    where
        M: Machine<Snap = S, Obs = O::Stream>,
    {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(drive::<M, _, O>(
            extensions,
            inbound,
            tx,
            self.clone(),
            transport,
            protocol,
        ));
        ReceiverStream::new(rx)
    }
}

type SotwOut = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaOut = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

impl<S: Snapshot, O: Observer> Server<S, O> {
    fn sotw(&self, request: Request<Streaming<DiscoveryRequest>>, t: Transport) -> SotwOut {
        let (_, extensions, inbound) = request.into_parts();
        self.spawn::<SotwStream<S, O::Stream>>(extensions, inbound, t, Protocol::Sotw)
    }

    fn delta(&self, request: Request<Streaming<DeltaDiscoveryRequest>>, t: Transport) -> DeltaOut {
        let (_, extensions, inbound) = request.into_parts();
        self.spawn::<DeltaStream<S, O::Stream>>(extensions, inbound, t, Protocol::Delta)
    }
}

#[tonic::async_trait]
impl<S: Snapshot, O: Observer> AggregatedDiscoveryService for Server<S, O> {
    type StreamAggregatedResourcesStream = SotwOut;
    type DeltaAggregatedResourcesStream = DeltaOut;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwOut>, Status> {
        Ok(Response::new(self.sotw(request, Transport::Ads)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaOut>, Status> {
        Ok(Response::new(self.delta(request, Transport::Ads)))
    }
}

#[tonic::async_trait]
impl<S: Snapshot, O: Observer> ExtensionConfigDiscoveryService for Server<S, O> {
    type StreamExtensionConfigsStream = SotwOut;
    type DeltaExtensionConfigsStream = DeltaOut;

    async fn stream_extension_configs(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwOut>, Status> {
        Ok(Response::new(self.sotw(request, Transport::Ecds)))
    }

    async fn delta_extension_configs(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaOut>, Status> {
        Ok(Response::new(self.delta(request, Transport::Ecds)))
    }

    async fn fetch_extension_configs(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(unary_unsupported())
    }
}

#[tonic::async_trait]
impl<S: Snapshot, O: Observer> ClusterDiscoveryService for Server<S, O> {
    type StreamClustersStream = SotwOut;
    type DeltaClustersStream = DeltaOut;

    async fn stream_clusters(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwOut>, Status> {
        Ok(Response::new(self.sotw(request, Transport::Cds)))
    }

    async fn delta_clusters(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaOut>, Status> {
        Ok(Response::new(self.delta(request, Transport::Cds)))
    }

    async fn fetch_clusters(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(unary_unsupported())
    }
}

fn unary_unsupported() -> Status {
    Status::unimplemented("REST-style fetch is not served; use the streaming xDS APIs")
}

/// Runs one stream until the client goes away. `extensions` are the gRPC request's (for
/// the admission check).
pub(crate) async fn drive<M, I, O>(
    extensions: tonic::Extensions,
    mut inbound: I,
    tx: mpsc::Sender<Result<M::Response, Status>>,
    server: Server<M::Snap, O>,
    transport: Transport,
    protocol: Protocol,
) where
    M: Machine<Obs = O::Stream>,
    O: Observer,
    I: Stream<Item = Result<M::Request, Status>> + Unpin,
{
    let Server {
        mut snapshots,
        observer,
        stats,
        mut shutdown,
        admission,
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
    let Some(node) = M::node(&first).cloned() else {
        let status =
            Status::invalid_argument("the first request of an xDS stream must carry the node");
        let _ = tx.send(Err(status)).await;
        return;
    };
    if let Some(refusal) = admission.and_then(|a| a.admit(&extensions, &node).err()) {
        tracing::warn!(
            node = %node.id,
            cluster = %node.cluster,
            transport = transport.as_str(),
            reason = refusal.message(),
            "xDS stream refused"
        );
        let _ = tx.send(Err(refusal)).await;
        return;
    }
    let _connected = stats.stream_opened();
    let stream_observer = observer.opened(StreamInfo {
        node: &node,
        transport,
        protocol,
    });
    tracing::info!(
        node = %node.id,
        cluster = %node.cluster,
        transport = transport.as_str(),
        protocol = protocol.as_str(),
        stream = stream_observer.stream_id(),
        "proxy connected"
    );
    let state = StreamState::new(
        node.id.clone(),
        <M::Snap as Snapshot>::node(&node),
        stream_observer,
        stats,
        transport.fixed_type(),
    );
    let mut machine = M::new(state);
    let mut snapshot = snapshots.borrow_and_update().clone();
    let mut snapshots_open = true;
    machine.on_request(first, &snapshot);
    loop {
        let pending = machine.has_pending(&snapshot);
        let wakeup = machine.next_wakeup();
        tokio::select! {
            () = tokio::time::sleep_until(wakeup.unwrap_or_else(tokio::time::Instant::now)), if wakeup.is_some() && !pending => {}
            message = inbound.next() => match message {
                Some(Ok(request)) => machine.on_request(request, &snapshot),
                Some(Err(status)) => {
                    tracing::debug!(node = %node.id, %status, "xDS stream error");
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
                    if let Some(response) = machine.next_response(&snapshot) {
                        permit.send(Ok(response));
                    }
                }
                Err(_) => break,
            },
            _ = tx.closed() => break,
            () = shutting_down(&mut shutdown) => break,
        }
    }
    tracing::info!(
        node = %node.id,
        transport = transport.as_str(),
        protocol = protocol.as_str(),
        "proxy disconnected"
    );
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
