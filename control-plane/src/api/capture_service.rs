//! `CaptureService`: proxies report request summaries, `meshwarden capture` watches them
//! (see [`crate::capture`]).

use super::pb;
use super::pb::capture_service_server::CaptureService;
use crate::capture::{CaptureHub, Filter};
use crate::tls::PeerInfo;
use crate::xds::admission::XdsAccess;
use futures::Stream;
use std::pin::Pin;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

/// Serves [`CaptureService`] from a [`CaptureHub`].
#[derive(Debug, Clone)]
pub struct CaptureApi {
    hub: CaptureHub,
    shutdown: Option<watch::Receiver<bool>>,
    access: XdsAccess,
}

impl CaptureApi {
    /// A service over `hub`.
    pub fn new(hub: CaptureHub) -> Self {
        Self {
            hub,
            shutdown: None,
            access: XdsAccess::default(),
        }
    }

    /// Refuses reports whose node the client certificate may not claim (mutual TLS), as
    /// `access` refuses xDS streams.
    pub fn with_access(mut self, access: XdsAccess) -> Self {
        self.access = access;
        self
    }

    /// Ends open Watch streams once `shutdown` turns true, so a graceful server shutdown
    /// does not wait for watchers.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::capture_service_server::CaptureServiceServer<Self> {
        pb::capture_service_server::CaptureServiceServer::new(self)
    }
}

/// The stream of a watch.
pub type CaptureStream = Pin<Box<dyn Stream<Item = Result<pb::CaptureRecord, Status>> + Send>>;

#[tonic::async_trait]
impl CaptureService for CaptureApi {
    async fn report(
        &self,
        request: Request<pb::CaptureReportRequest>,
    ) -> Result<Response<pb::CaptureReportResponse>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let req = request.into_inner();
        if let Some(refused) = self.access.report_refusal(peer.as_ref(), &req.node_id) {
            return Err(refused);
        }
        if req.node_id.is_empty() {
            tracing::debug!(
                records = req.records.len(),
                "capture report without a node id refused"
            );
            return Err(Status::invalid_argument("node_id must not be empty"));
        }
        let accepted = self.hub.report(&req.node_id, req.records, req.dropped);
        Ok(Response::new(pb::CaptureReportResponse {
            accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
        }))
    }

    type WatchStream = CaptureStream;

    async fn watch(
        &self,
        request: Request<pb::CaptureWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let filter = Filter {
            proxy: req.proxy,
            policy: req.policy,
        };
        let (held, rx) = self.hub.subscribe(&filter, req.backlog as usize);
        let after = held.last().map_or(0, |s| s.seq);
        let backlog = held.into_iter().map(|s| Ok((*s.record).clone()));
        let stream = futures::stream::StreamExt::chain(
            futures::stream::iter(backlog),
            live(rx, filter, after, self.hub.clone()),
        );
        let stream: CaptureStream = match self.shutdown.clone() {
            Some(mut shutdown) => {
                Box::pin(futures::stream::StreamExt::take_until(stream, async move {
                    // An error means the sender is gone: shut down as well.
                    let _ = shutdown.wait_for(|down| *down).await;
                }))
            }
            None => Box::pin(stream),
        };
        Ok(Response::new(stream))
    }
}

/// Live summaries passing `filter` with a position after `after`. A watcher that falls
/// behind skips what it missed (counted) and goes on: this is a tail, not a log.
fn live(
    rx: broadcast::Receiver<crate::capture::Sequenced>,
    filter: Filter,
    after: u64,
    hub: CaptureHub,
) -> impl Stream<Item = Result<pb::CaptureRecord, Status>> + Send {
    futures::stream::unfold(rx, move |mut rx| {
        let filter = filter.clone();
        let hub = hub.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(s) if s.seq > after && filter.accepts(&s.record) => {
                        return Some((Ok((*s.record).clone()), rx))
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => hub.skipped(n),
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwarden_common::capture::{encode_report, CaptureRecord, CapturedHeader};
    use meshwarden_common::trace::SpanStatus;
    use pb::capture_service_client::CaptureServiceClient;
    use prost::Message;
    use std::time::Duration;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::Channel;

    /// A summary as the capture filter builds it.
    fn filter_record(path: &str) -> CaptureRecord {
        CaptureRecord {
            policy: "cap".into(),
            start_ns: 1_700_000_000_000_000_000,
            duration_ns: 2_000_000,
            method: "POST".into(),
            authority: "api".into(),
            path: path.into(),
            status: SpanStatus::Http(201),
            upstream_cluster: Some("backend".into()),
            upstream_host: Some("127.0.0.1:8080".into()),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            request_bytes: 10,
            response_bytes: 20,
            headers: vec![CapturedHeader {
                name: "authorization".into(),
                value: "[redacted]".into(),
                response: false,
            }],
        }
    }

    /// The report the filter sends, as the API type (the filter encodes it by hand).
    fn report(node: &str, paths: &[&str]) -> pb::CaptureReportRequest {
        let records: Vec<_> = paths.iter().map(|p| filter_record(p)).collect();
        pb::CaptureReportRequest::decode(encode_report(node, &records, 1).as_slice()).unwrap()
    }

    async fn serve(hub: CaptureHub) -> CaptureServiceClient<Channel> {
        serve_api(CaptureApi::new(hub)).await
    }

    async fn serve_api(api: CaptureApi) -> CaptureServiceClient<Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(api.into_server())
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        CaptureServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    }

    async fn next(stream: &mut tonic::Streaming<pb::CaptureRecord>) -> pb::CaptureRecord {
        tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a record in time")
            .unwrap()
            .expect("the stream goes on")
    }

    #[test]
    fn the_filters_report_is_the_api_message() {
        let req = report("n1", &["/a"]);
        assert_eq!(req.node_id, "n1");
        assert_eq!(req.dropped, 1);
        let r = &req.records[0];
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.status),
            ("POST", "/a", 201)
        );
        assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r.upstream_host, "127.0.0.1:8080");
        assert_eq!(r.headers[0].value, "[redacted]");
        assert!(!r.reset);
    }

    #[tokio::test]
    async fn a_late_watcher_gets_the_held_records_then_live_ones_filtered() {
        let hub = CaptureHub::new(100);
        let mut client = serve(hub.clone()).await;
        let accepted = client.report(report("n1", &["/early"])).await.unwrap();
        assert_eq!(accepted.into_inner().accepted, 1);
        let mut all = client
            .watch(pb::CaptureWatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut only_n2 = client
            .watch(pb::CaptureWatchRequest {
                proxy: "n2".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let early = next(&mut all).await;
        assert_eq!(
            (early.node_id.as_str(), early.path.as_str()),
            ("n1", "/early")
        );
        client.report(report("n1", &["/n1"])).await.unwrap();
        client.report(report("n2", &["/n2"])).await.unwrap();
        assert_eq!(next(&mut all).await.path, "/n1");
        assert_eq!(next(&mut all).await.path, "/n2");
        assert_eq!(next(&mut only_n2).await.path, "/n2", "n1's are left out");
    }

    #[tokio::test]
    async fn watches_end_at_shutdown() {
        let (down, shutdown) = tokio::sync::watch::channel(false);
        let hub = CaptureHub::default();
        let mut client = serve_api(CaptureApi::new(hub).with_shutdown(shutdown)).await;
        let mut stream = client
            .watch(pb::CaptureWatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        down.send(true).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the stream ends in time");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[tokio::test]
    async fn a_report_names_its_node() {
        let mut client = serve(CaptureHub::default()).await;
        let err = client
            .report(pb::CaptureReportRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
