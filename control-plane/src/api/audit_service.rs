//! `AuditService`: the audit trail over gRPC (`meshwarden audit`).

use super::pb;
use super::pb::audit_service_server::AuditService;
use crate::audit::{AuditEntry, AuditLog};
use tonic::{Request, Response, Status};

/// Serves [`AuditService`] from an [`AuditLog`].
#[derive(Debug, Clone)]
pub struct AuditApi {
    log: AuditLog,
}

impl AuditApi {
    /// A service reading `log`.
    pub fn new(log: AuditLog) -> Self {
        Self { log }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::audit_service_server::AuditServiceServer<Self> {
        pb::audit_service_server::AuditServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let limit = request.into_inner().limit as usize;
        let log = self.log.clone();
        let entries = tokio::task::spawn_blocking(move || log.list(limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(entry)
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }
}

fn entry(e: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        identity: e.identity,
        role: e.role,
        remote: e.remote,
        action: e.action,
        kind: e.kind,
        name: e.name,
        old_version: e.old_version,
        new_version: e.new_version,
        result: e.result,
        code: e.code,
        message: e.message,
    }
}
