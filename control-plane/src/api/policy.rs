//! `PolicyService`: the registry over gRPC.
//!
//! Writes (apply, delete) are bounded: at most [`MAX_CONCURRENT_WRITES`] are worked on at
//! once and the others wait up to [`MAX_WRITE_WAIT_SECS`] for their turn, then get
//! RESOURCE_EXHAUSTED. Requests are at most [`MAX_APPLY_REQUEST_BYTES`] on the wire and
//! each document at most [`MAX_DOCUMENT_BYTES`]; an apply that would take a kind past the
//! filter limits ([`FilterUsage`]) is refused with RESOURCE_EXHAUSTED. So the memory an
//! apply burst costs is bounded by a few requests' worth, whatever the number of callers.

use super::auth::Principal;
use super::convert;
use super::pb;
use super::pb::policy_service_server::PolicyService;
use super::targets::TargetGuard;
use super::{diff, halts};
use crate::policy_set::PolicySet;
use crate::registry::{ApplyOptions, ChangeEvent, HaltWriteError, PolicyRegistry, ANONYMOUS};
use crate::xds::{ProxyRegistry, Snapshot};
use futures::{Stream, StreamExt};
use meshwarden_common::document::KindBody;
use meshwarden_common::limits::{
    MAX_APPLY_REQUEST_BYTES, MAX_CONCURRENT_WRITES, MAX_DOCUMENT_BYTES, MAX_WRITE_WAIT_SECS,
};
use meshwarden_common::{FilterUsage, Kind, PolicyDocument};
use serde_json::Value;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch, Mutex, Semaphore, SemaphorePermit};
use tonic::{Request, Response, Status};

/// Serves [`PolicyService`] from a [`PolicyRegistry`].
#[derive(Debug, Clone)]
pub struct PolicyApi {
    registry: Arc<PolicyRegistry>,
    shutdown: Option<watch::Receiver<bool>>,
    writes: Arc<WriteGate>,
    targets: Arc<TargetGuard>,
    /// What Diff composes proxy resources from; without it Diff lists no proxies.
    xds: Option<XdsView>,
}

/// The xDS side's current snapshot and proxies, for Diff.
#[derive(Debug, Clone)]
struct XdsView {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    proxies: ProxyRegistry,
}

/// Admission of writes, and the filter-limit check of applies.
#[derive(Debug)]
struct WriteGate {
    permits: Semaphore,
    wait: Duration,
    /// Held from the limit check until the registry committed, so two applies cannot both
    /// pass the check against the same set; caches each stored policy's usage.
    usage: Mutex<UsageCache>,
}

/// [`FilterUsage`] of stored policies by (kind, name), with the version it was computed for.
type UsageCache = HashMap<(Kind, String), (String, FilterUsage)>;

/// What a document of an apply costs against the filter limits; `None` if it is invalid.
type IncomingUsage = Option<(Kind, String, FilterUsage)>;

impl PolicyApi {
    /// A service backed by `registry`.
    pub fn new(registry: Arc<PolicyRegistry>) -> Self {
        Self {
            registry,
            shutdown: None,
            writes: Arc::new(WriteGate {
                permits: Semaphore::new(MAX_CONCURRENT_WRITES),
                wait: Duration::from_secs(MAX_WRITE_WAIT_SECS),
                usage: Mutex::new(HashMap::new()),
            }),
            targets: Arc::new(TargetGuard::new(Vec::new(), Vec::new(), Vec::new())),
            xds: None,
        }
    }

    /// Lets Diff report which of `proxies` would get new resource versions, composed from
    /// the latest of `snapshots`.
    pub fn with_xds(
        mut self,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        proxies: ProxyRegistry,
    ) -> Self {
        self.xds = Some(XdsView { snapshots, proxies });
        self
    }

    /// Checks MirrorPolicy `host` targets with `guard` (by default: the built-in rules only).
    pub fn with_targets(mut self, guard: TargetGuard) -> Self {
        self.targets = Arc::new(guard);
        self
    }

    /// Ends open Watch streams once `shutdown` turns true, so a graceful server shutdown
    /// does not wait for watchers forever.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// How long a write waits for its turn (tests shorten it).
    #[cfg(test)]
    pub(super) fn with_write_wait(self, wait: Duration) -> Self {
        let writes = Arc::new(WriteGate {
            permits: Semaphore::new(MAX_CONCURRENT_WRITES),
            wait,
            usage: Mutex::new(HashMap::new()),
        });
        Self { writes, ..self }
    }

    /// Takes every write permit, as that many slow writes in progress would (tests).
    #[cfg(test)]
    pub(super) async fn occupy_writes(&self) -> SemaphorePermit<'_> {
        self.writes
            .permits
            .acquire_many(MAX_CONCURRENT_WRITES as u32)
            .await
            .expect("semaphore open")
    }

    /// The tonic server for this service; requests larger than [`MAX_APPLY_REQUEST_BYTES`]
    /// are refused before they are read.
    pub fn into_server(self) -> pb::policy_service_server::PolicyServiceServer<Self> {
        pb::policy_service_server::PolicyServiceServer::new(self)
            .max_decoding_message_size(MAX_APPLY_REQUEST_BYTES)
    }

    /// Waits (boundedly) for one of the write permits.
    async fn write_permit(&self, what: &str) -> Result<SemaphorePermit<'_>, Status> {
        match tokio::time::timeout(self.writes.wait, self.writes.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Status::unavailable("the control plane is shutting down")),
            Err(_) => {
                tracing::warn!(
                    what,
                    limit = MAX_CONCURRENT_WRITES,
                    "write refused: too many concurrent writes"
                );
                Err(Status::resource_exhausted(format!(
                    "{what} refused: the control plane works on at most {MAX_CONCURRENT_WRITES} apply/delete requests at once and this one waited {} s for its turn; retry later",
                    self.writes.wait.as_secs_f64()
                )))
            }
        }
    }
}

/// Refuses a document over [`MAX_DOCUMENT_BYTES`], naming it.
fn check_document_sizes(texts: &[String]) -> Result<(), Status> {
    for (i, text) in texts.iter().enumerate() {
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(Status::invalid_argument(format!(
                "document {}: {} bytes of JSON, more than the limit of {MAX_DOCUMENT_BYTES} bytes per policy document",
                i + 1,
                text.len()
            )));
        }
    }
    Ok(())
}

/// Parses the documents of an apply (dropping each text once parsed) and validates them
/// enough to know what they would cost against the filter limits. Invalid documents get no
/// usage: the registry refuses them with its own message.
fn parse_documents(
    texts: Vec<String>,
    targets: &TargetGuard,
) -> Result<(Vec<Value>, Vec<IncomingUsage>), Status> {
    let mut values = Vec::with_capacity(texts.len());
    let mut usages = Vec::with_capacity(texts.len());
    for (i, text) in texts.into_iter().enumerate() {
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            Status::invalid_argument(format!("document {}: not valid JSON: {e}", i + 1))
        })?;
        drop(text);
        let doc = PolicyDocument::from_value(&value).ok();
        if let Some(doc) = &doc {
            check_targets(i, doc, targets)?;
        }
        usages.push(doc.map(|doc| {
            (
                doc.kind(),
                doc.name().as_str().to_string(),
                FilterUsage::of(&doc),
            )
        }));
        values.push(value);
    }
    Ok((values, usages))
}

/// Refuses a MirrorPolicy whose `host` target the guard denies, naming the field.
fn check_targets(index: usize, doc: &PolicyDocument, targets: &TargetGuard) -> Result<(), Status> {
    let KindBody::Mirror(spec) = &doc.body else {
        return Ok(());
    };
    for (field, target) in spec.host_targets_at() {
        if let Some(why) = targets.refusal(&target.host, target.port) {
            return Err(Status::invalid_argument(format!(
                "document {} (MirrorPolicy {:?}): spec.{field}: {why}",
                index + 1,
                doc.name().as_str()
            )));
        }
    }
    Ok(())
}

/// Refuses an apply that would take a kind past the filter limits (unless it does not make
/// an already exceeded kind worse). Updates `cache` to the stored policies of `current`.
fn check_limits(
    cache: &mut UsageCache,
    current: &PolicySet,
    incoming: &[IncomingUsage],
) -> Result<(), Status> {
    let mut stored = UsageCache::with_capacity(current.policies.len());
    let mut before: HashMap<Kind, FilterUsage> = HashMap::new();
    for p in &current.policies {
        let key = (p.kind(), p.name().to_string());
        let usage = match cache.remove(&key) {
            Some((version, usage)) if version == p.version => usage,
            _ => FilterUsage::of(&p.doc),
        };
        let total = before.entry(p.kind()).or_default();
        *total = total.plus(usage);
        stored.insert(key, (p.version.clone(), usage));
    }
    *cache = stored;
    let mut after = before.clone();
    for (kind, name, usage) in incoming.iter().flatten() {
        let total = after.entry(*kind).or_default();
        let replaced = cache
            .get(&(*kind, name.clone()))
            .map(|(_, u)| *u)
            .unwrap_or_default();
        *total = FilterUsage {
            policies: total.policies + usage.policies - replaced.policies,
            regexes: total.regexes + usage.regexes - replaced.regexes,
            bytes: total.bytes + usage.bytes - replaced.bytes,
        };
    }
    for kind in Kind::ALL {
        let (old, new) = (
            before.get(&kind).copied().unwrap_or_default(),
            after.get(&kind).copied().unwrap_or_default(),
        );
        let grows =
            new.policies > old.policies || new.regexes > old.regexes || new.bytes > old.bytes;
        if !grows {
            continue;
        }
        if let Err(e) = new.check(&format!("{kind} policies")) {
            tracing::warn!(%kind, error = %e, "apply refused: filter limits");
            return Err(Status::resource_exhausted(format!(
                "apply refused: {e} (the limits bound every proxy's {} filter configuration); delete or merge {kind} policies first",
                kind.filter()
            )));
        }
    }
    Ok(())
}

/// The caller's identity as the guard authenticated it (`anonymous` without the guard).
fn actor<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .map_or_else(|| ANONYMOUS.to_string(), |p| p.name.clone())
}

/// The expected revisions of an apply request, one per document (0: none).
fn expected_revisions(req: &pb::ApplyRequest) -> Result<Vec<Option<u64>>, Status> {
    let (given, docs) = (req.expected_revisions.len(), req.documents_json.len());
    if given != 0 && given != docs {
        return Err(Status::invalid_argument(format!(
            "expected_revisions: {given} given for {docs} documents; give one per document (0 for none) or none"
        )));
    }
    Ok(req
        .expected_revisions
        .iter()
        .map(|&r| (r != 0).then_some(r))
        .collect())
}

impl PolicyApi {
    /// Applies `texts` with `options`: sizes, target and filter-limit checks, then the
    /// registry (validation, conflicts, one durable commit). Apply and Rollback share it.
    async fn apply_documents(
        &self,
        texts: Vec<String>,
        options: ApplyOptions,
    ) -> Result<pb::ApplyResponse, Status> {
        let dry_run = options.dry_run;
        check_document_sizes(&texts)?;
        let _permit = self.write_permit("apply").await?;
        let targets = self.targets.clone();
        let (docs, usages) = tokio::task::spawn_blocking(move || parse_documents(texts, &targets))
            .await
            .map_err(convert::join_error)??;
        let mut cache = self.writes.usage.lock().await;
        // With an invalid document the registry refuses the whole apply with its own message.
        if usages.iter().all(Option::is_some) {
            check_limits(&mut cache, &self.registry.current(), &usages)?;
        }
        let registry = self.registry.clone();
        let outcomes = tokio::task::spawn_blocking(move || registry.apply_with(docs, &options))
            .await
            .map_err(convert::join_error)?
            .map_err(convert::apply_error)?;
        drop(cache);
        for o in &outcomes {
            tracing::info!(kind = %o.kind, name = %o.name, outcome = o.outcome.as_str(), version = %o.version, revision = o.revision, dry_run, "apply");
        }
        Ok(pb::ApplyResponse {
            results: outcomes.iter().map(convert::apply_result).collect(),
            generation: self.registry.current().generation,
        })
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
        let actor = actor(&request);
        let req = request.into_inner();
        let options = ApplyOptions {
            dry_run: req.dry_run,
            expected_revisions: expected_revisions(&req)?,
            force: req.force,
            actor,
            rollback_of: None,
        };
        let response = self.apply_documents(req.documents_json, options).await?;
        Ok(Response::new(response))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let actor = actor(&request);
        let req = request.into_inner();
        let kind = convert::kind(&req.kind)?;
        let registry = self.registry.clone();
        let name = req.name.clone();
        let to = (req.to_revision != 0).then_some(req.to_revision);
        let target = tokio::task::spawn_blocking(move || registry.rollback_target(kind, &name, to))
            .await
            .map_err(convert::join_error)?
            .map_err(convert::rollback_error)?;
        let document = target
            .document
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let options = ApplyOptions {
            dry_run: req.dry_run,
            actor,
            rollback_of: Some(target.revision),
            ..ApplyOptions::default()
        };
        let response = self.apply_documents(vec![document], options).await?;
        tracing::info!(%kind, name = %req.name, to = target.revision, dry_run = req.dry_run, "rollback");
        Ok(Response::new(response))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = request.into_inner();
        let kind = convert::kind(&req.kind)?;
        let registry = self.registry.clone();
        let name = req.name.clone();
        let history = tokio::task::spawn_blocking(move || registry.history(kind, &name))
            .await
            .map_err(convert::join_error)?
            .map_err(convert::store_error)?;
        if history.is_empty() {
            return Err(Status::not_found(format!(
                "{kind} {:?} has no history",
                req.name
            )));
        }
        Ok(Response::new(pb::HistoryResponse {
            revisions: history.iter().map(convert::revision).collect(),
        }))
    }

    async fn diff(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let req = request.into_inner();
        check_document_sizes(&req.documents_json)?;
        let targets = self.targets.clone();
        let registry = self.registry.clone();
        let preview = tokio::task::spawn_blocking(move || {
            let (docs, usages) = parse_documents(req.documents_json, &targets)?;
            if usages.iter().all(Option::is_some) {
                check_limits(&mut UsageCache::new(), &registry.current(), &usages)?;
            }
            registry.preview(&docs).map_err(convert::apply_error)
        })
        .await
        .map_err(convert::join_error)??;
        let proxies = match &self.xds {
            Some(xds) => {
                let current = xds.snapshots.borrow().clone();
                let next = current.with_policies(preview.next.clone());
                let current = current.with_policies(preview.current.clone());
                let list = xds.proxies.list();
                tokio::task::spawn_blocking(move || diff::proxy_diffs(&current, &next, &list))
                    .await
                    .map_err(convert::join_error)?
            }
            None => Vec::new(),
        };
        Ok(Response::new(pb::DiffResponse {
            policies: diff::policy_diffs(&preview),
            proxies,
            generation: preview.current.generation,
        }))
    }

    async fn halt(
        &self,
        request: Request<pb::HaltRequest>,
    ) -> Result<Response<pb::HaltResponse>, Status> {
        let req = request.into_inner().halt.unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let halt = halts::from_pb(req, now)?;
        let _permit = self.write_permit("halt").await?;
        let registry = self.registry.clone();
        let stored = halt.clone();
        tokio::task::spawn_blocking(move || registry.halt(stored))
            .await
            .map_err(convert::join_error)?
            .map_err(|e| match e {
                HaltWriteError::Invalid(e) => Status::failed_precondition(e.to_string()),
                HaltWriteError::Store(e) => convert::store_error(e),
            })?;
        Ok(Response::new(pb::HaltResponse {
            halt: Some(halts::to_pb(&halt)),
        }))
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeResponse>, Status> {
        let name = request.into_inner().name;
        let _permit = self.write_permit("resume").await?;
        let registry = self.registry.clone();
        let resumed = tokio::task::spawn_blocking(move || {
            registry.resume((!name.is_empty()).then_some(name.as_str()))
        })
        .await
        .map_err(convert::join_error)?
        .map_err(convert::store_error)?;
        Ok(Response::new(pb::ResumeResponse { resumed }))
    }

    async fn list_halts(
        &self,
        _request: Request<pb::ListHaltsRequest>,
    ) -> Result<Response<pb::ListHaltsResponse>, Status> {
        let halts = self
            .registry
            .current()
            .halts
            .iter()
            .map(halts::to_pb)
            .collect();
        Ok(Response::new(pb::ListHaltsResponse { halts }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Policy>, Status> {
        let req = request.into_inner();
        let kind = convert::kind(&req.kind)?;
        if req.revision != 0 {
            let registry = self.registry.clone();
            let (name, revision) = (req.name.clone(), req.revision);
            let found =
                tokio::task::spawn_blocking(move || registry.revision(kind, &name, revision))
                    .await
                    .map_err(convert::join_error)?
                    .map_err(convert::store_error)?;
            return match found {
                Some(r) if r.document.is_some() => {
                    Ok(Response::new(convert::revision_policy(kind, &req.name, &r)))
                }
                Some(_) => Err(Status::not_found(format!(
                    "{kind} {:?}: revision {revision} is its deletion and holds no content",
                    req.name
                ))),
                None => Err(Status::not_found(format!(
                    "{kind} {:?}: revision {revision} is not kept (see `meshwarden history`)",
                    req.name
                ))),
            };
        }
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
        let actor = actor(&request);
        let req = request.into_inner();
        let kind = convert::kind(&req.kind)?;
        let _permit = self.write_permit("delete").await?;
        let registry = self.registry.clone();
        let name = req.name.clone();
        let generation =
            tokio::task::spawn_blocking(move || registry.delete_as(kind, &name, &actor))
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
                        revision: p.revision,
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
