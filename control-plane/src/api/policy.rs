//! `PolicyService`: the registry over gRPC.

use super::convert;
use super::pb;
use super::pb::policy_service_server::PolicyService;
use crate::registry::{ChangeEvent, PolicyRegistry};
use futures::{Stream, StreamExt};
use meshwarden_common::Kind;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

/// Serves [`PolicyService`] from a [`PolicyRegistry`].
#[derive(Debug, Clone)]
pub struct PolicyApi {
    registry: Arc<PolicyRegistry>,
    shutdown: Option<watch::Receiver<bool>>,
}

impl PolicyApi {
    /// A service backed by `registry`.
    pub fn new(registry: Arc<PolicyRegistry>) -> Self {
        Self {
            registry,
            shutdown: None,
        }
    }

    /// Ends open Watch streams once `shutdown` turns true, so a graceful server shutdown
    /// does not wait for watchers forever.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::policy_service_server::PolicyServiceServer<Self> {
        pb::policy_service_server::PolicyServiceServer::new(self)
    }
}

/// Stream of Watch events.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ChangeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = request.into_inner();
        let docs = req
            .documents_json
            .iter()
            .enumerate()
            .map(|(i, text)| {
                serde_json::from_str(text).map_err(|e| {
                    Status::invalid_argument(format!("document {}: not valid JSON: {e}", i + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let registry = self.registry.clone();
        let outcomes = tokio::task::spawn_blocking(move || registry.apply(docs, req.dry_run))
            .await
            .map_err(convert::join_error)?
            .map_err(convert::apply_error)?;
        for o in &outcomes {
            tracing::info!(kind = %o.kind, name = %o.name, outcome = o.outcome.as_str(), version = %o.version, dry_run = req.dry_run, "apply");
        }
        Ok(Response::new(pb::ApplyResponse {
            results: outcomes.iter().map(convert::apply_result).collect(),
            generation: self.registry.current().generation,
        }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Policy>, Status> {
        let req = request.into_inner();
        let kind = convert::kind(&req.kind)?;
        let set = self.registry.current();
        let policy = set
            .get(kind, &req.name)
            .ok_or_else(|| Status::not_found(format!("{kind} {:?} not found", req.name)))?;
        Ok(Response::new(convert::policy(policy)))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let filter = convert::kind_filter(&request.into_inner().kind)?;
        let set = self.registry.current();
        let policies = set
            .policies
            .iter()
            .filter(|p| filter.is_none_or(|k| p.kind() == k))
            .map(convert::policy)
            .collect();
        Ok(Response::new(pb::ListResponse {
            policies,
            generation: set.generation,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = request.into_inner();
        let kind = convert::kind(&req.kind)?;
        let registry = self.registry.clone();
        let name = req.name.clone();
        let generation = tokio::task::spawn_blocking(move || registry.delete(kind, &name))
            .await
            .map_err(convert::join_error)?
            .map_err(convert::delete_error)?;
        tracing::info!(kind = %kind, name = %req.name, generation, "delete");
        Ok(Response::new(pb::DeleteResponse { generation }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let filter = convert::kind_filter(&req.kind)?;
        let (set, rx) = self.registry.snapshot_and_subscribe();
        let initial: Vec<_> = if req.send_initial {
            set.policies
                .iter()
                .filter(|p| filter.is_none_or(|k| p.kind() == k))
                .map(|p| {
                    Ok(pb::ChangeEvent {
                        kind: p.kind().to_string(),
                        name: p.name().to_string(),
                        r#type: pb::change_event::Type::Created.into(),
                        version: p.version.clone(),
                        generation: p.generation,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let stream = futures::stream::iter(initial).chain(changes(rx, filter));
        let stream: WatchStream = match self.shutdown.clone() {
            Some(mut shutdown) => Box::pin(stream.take_until(async move {
                // An error means the sender is gone: shut down as well.
                let _ = shutdown.wait_for(|down| *down).await;
            })),
            None => Box::pin(stream),
        };
        Ok(Response::new(stream))
    }
}

/// Committed changes of `filter`'s kind (all kinds if `None`). A watcher that falls too far
/// behind gets ABORTED and must list and watch again.
fn changes(
    rx: broadcast::Receiver<ChangeEvent>,
    filter: Option<Kind>,
) -> impl Stream<Item = Result<pb::ChangeEvent, Status>> + Send {
    futures::stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(ev) if filter.is_none_or(|k| ev.kind == k) => {
                    return Some((Ok(convert::change_event(&ev)), Some(rx)))
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let status = Status::aborted(format!(
                        "watch fell {n} events behind; list again and restart the watch"
                    ));
                    return Some((Err(status), None));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
