//! `BreakerStatusService`: proxies report their open circuit breakers (see
//! [`crate::breakers`]).

use super::pb;
use super::pb::breaker_status_service_server::BreakerStatusService;
use crate::breakers::{BreakerBoard, ReportError};
use crate::tls::PeerInfo;
use crate::xds::admission::XdsAccess;
use tonic::{Request, Response, Status};

/// Serves [`BreakerStatusService`] into a [`BreakerBoard`].
#[derive(Debug, Clone)]
pub struct BreakerStatusApi {
    board: BreakerBoard,
    access: XdsAccess,
}

impl BreakerStatusApi {
    /// A service keeping reports in `board`.
    pub fn new(board: BreakerBoard) -> Self {
        Self {
            board,
            access: XdsAccess::default(),
        }
    }

    /// Refuses reports whose node the client certificate may not claim (mutual TLS), as
    /// `access` refuses xDS streams.
    pub fn with_access(mut self, access: XdsAccess) -> Self {
        self.access = access;
        self
    }

    /// The tonic server for this service.
    pub fn into_server(
        self,
    ) -> pb::breaker_status_service_server::BreakerStatusServiceServer<Self> {
        pb::breaker_status_service_server::BreakerStatusServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl BreakerStatusService for BreakerStatusApi {
    async fn report(
        &self,
        request: Request<pb::BreakerReport>,
    ) -> Result<Response<pb::BreakerReportResponse>, Status> {
        let peer = request.extensions().get::<PeerInfo>();
        if let Some(refused) = self.access.report_refusal(peer, &request.get_ref().node_id) {
            return Err(refused);
        }
        match self.board.report(request.into_inner()) {
            Ok(()) => Ok(Response::new(pb::BreakerReportResponse {})),
            Err(e @ ReportError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e @ ReportError::Full) => Err(Status::resource_exhausted(e.to_string())),
        }
    }
}
