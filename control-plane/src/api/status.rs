//! `ProxyStatusService`: the xDS server's view of its proxies.

use super::pb;
use super::pb::proxy_status_service_server::ProxyStatusService;
use crate::breakers::{attach, BreakerBoard};
use crate::replicas::ReplicaStatus;
use crate::xds::{ProxyRegistry, ProxyStatus, ResourceStatus};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// Serves [`ProxyStatusService`] from the xDS server's [`ProxyRegistry`] and, with
/// replicas, from the status the other replicas publish to the shared store.
#[derive(Debug, Clone)]
pub struct ProxyStatusApi {
    proxies: ProxyRegistry,
    replicas: Option<ReplicaStatus>,
    breakers: BreakerBoard,
}

impl ProxyStatusApi {
    /// A service reporting `proxies`.
    pub fn new(proxies: ProxyRegistry) -> Self {
        Self {
            proxies,
            replicas: None,
            breakers: BreakerBoard::default(),
        }
    }

    /// Shows the open breakers proxies reported into `board`.
    pub fn with_breakers(mut self, board: BreakerBoard) -> Self {
        self.breakers = board;
        self
    }

    /// Also reports the proxies of every other replica sharing the store.
    pub fn with_replicas(mut self, replicas: ReplicaStatus) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::proxy_status_service_server::ProxyStatusServiceServer<Self> {
        pb::proxy_status_service_server::ProxyStatusServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl ProxyStatusService for ProxyStatusApi {
    async fn list_proxies(
        &self,
        _request: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        let mut proxies: Vec<pb::ProxyStatus> = self.proxies.list().iter().map(proxy).collect();
        let mut reports = self.breakers.held();
        if let Some(replicas) = self.replicas.clone() {
            for p in &mut proxies {
                p.replica = replicas.replica_id().to_string();
            }
            let others = tokio::task::spawn_blocking(move || {
                replicas
                    .others()
                    .and_then(|o| Ok((o, replicas.other_breakers()?)))
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
            match others {
                Ok((others, their_reports)) => {
                    proxies.extend(others);
                    reports.extend(their_reports);
                }
                // This replica's own proxies are still worth showing.
                Err(e) => tracing::warn!(error = %e, "cannot read the other replicas' status"),
            }
        }
        attach(&mut proxies, reports);
        Ok(Response::new(pb::ListProxiesResponse { proxies }))
    }
}

/// One proxy stream as the API reports it.
pub fn proxy(p: &ProxyStatus) -> pb::ProxyStatus {
    pb::ProxyStatus {
        node_id: p.node_id.clone(),
        cluster: p.cluster.clone(),
        labels: p
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        protocol: p.protocol.as_str().to_string(),
        transport: p.transport.as_str().to_string(),
        connected: p.disconnected_at.is_none(),
        connected_at_unix_ms: unix_ms(Some(p.connected_at)),
        filters: p.resources.iter().map(filter).collect(),
        disconnected_at_unix_ms: unix_ms(p.disconnected_at),
        replica: String::new(),
        open_breakers: Vec::new(),
        open_breaker_count: 0,
    }
}

fn filter(r: &ResourceStatus) -> pb::FilterStatus {
    let version =
        |v: Option<&crate::xds::VersionStatus>| v.map(|v| v.version.clone()).unwrap_or_default();
    pb::FilterStatus {
        name: r.name.clone(),
        sent_version: version(r.sent.as_ref()),
        accepted_version: version(r.accepted.as_ref()),
        nacked_version: r
            .last_nack
            .as_ref()
            .map(|n| n.version.clone())
            .unwrap_or_default(),
        last_error: r
            .last_nack
            .as_ref()
            .map(|n| n.message.clone())
            .unwrap_or_default(),
        last_nack_at_unix_ms: unix_ms(r.last_nack.as_ref().map(|n| n.at)),
        sent_at_unix_ms: unix_ms(r.sent.as_ref().map(|v| v.at)),
        accepted_at_unix_ms: unix_ms(r.accepted.as_ref().map(|v| v.at)),
        accepted_policies: r
            .accepted
            .as_ref()
            .map(|v| v.policies.clone())
            .unwrap_or_default(),
    }
}

/// Milliseconds since the Unix epoch; 0 for `None` (or times before the epoch).
pub(crate) fn unix_ms(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
