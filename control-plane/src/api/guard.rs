//! A tower layer in front of every gRPC service of the policy API (not xDS, not
//! reflection): authenticates the caller ([`super::auth::Authenticator`]), checks its role for the
//! method called, checks an editor's kinds and name prefixes against the policies an
//! apply or delete touches (read from the request itself, before the service sees it), and
//! records every apply and delete, accepted or refused, in the [`AuditLog`].
//!
//! The authenticated [`Principal`] is handed to the service in the request's extensions
//! (an `Arc<Principal>`), so the policy history records who made each change.
//!
//! Methods are classed by name; a method not listed here (a new one) needs `admin`, so
//! nothing is open by accident.

use super::auth::{Principal, Role, TokenFileWatch};
use super::pb;
use crate::audit::{AuditEntry, AuditLog};
use crate::registry::PolicyRegistry;
use crate::tls::PeerInfo;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use meshwarden_common::limits::MAX_APPLY_REQUEST_BYTES;
use meshwarden_common::Kind;
use prost::Message;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::Status;

/// The gRPC package this layer guards.
const GUARDED: [&str; 1] = ["/meshwarden.v1alpha1."];

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reading: viewer.
    Read,
    /// Apply, delete or rollback: editor, within its scope; audited.
    Write(Verb),
    /// Halt and resume (an emergency stop of faults and mirrors, no policy changes):
    /// editor, whatever its scope.
    Operate,
    /// Anything else: admin.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Apply,
    Delete,
    Rollback,
}

/// The access `path` (`/package.Service/Method`) needs; `None` if it is not guarded.
fn access(path: &str) -> Option<Access> {
    if !GUARDED.iter().any(|p| path.starts_with(p)) {
        return None;
    }
    let (service, method) = path.trim_start_matches('/').rsplit_once('/')?;
    let service = service.rsplit('.').next().unwrap_or(service);
    Some(match (service, method) {
        ("PolicyService", "Apply") => Access::Write(Verb::Apply),
        ("PolicyService", "Delete") => Access::Write(Verb::Delete),
        ("PolicyService", "Rollback") => Access::Write(Verb::Rollback),
        ("PolicyService", "Halt" | "Resume") => Access::Operate,
        ("PolicyService", "Get" | "List" | "Watch" | "Diff" | "ListHalts" | "History")
        | ("ProxyStatusService", _)
        | ("AuditService", _) => Access::Read,
        _ => Access::Admin,
    })
}

/// Shared state of the layer.
#[derive(Debug)]
struct State {
    /// `None`: authentication is off, every caller is an anonymous admin.
    auth: Option<Arc<TokenFileWatch>>,
    audit: AuditLog,
    registry: Arc<PolicyRegistry>,
}

/// The layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct ApiGuardLayer {
    state: Arc<State>,
}

impl ApiGuardLayer {
    /// Guards with `auth` (`None`: no authentication) and records in `audit`; old and new
    /// versions are read from `registry`.
    pub fn new(
        auth: Option<Arc<TokenFileWatch>>,
        audit: AuditLog,
        registry: Arc<PolicyRegistry>,
    ) -> Self {
        Self {
            state: Arc::new(State {
                auth,
                audit,
                registry,
            }),
        }
    }
}

impl<S> tower::Layer<S> for ApiGuardLayer {
    type Service = ApiGuard<S>;

    fn layer(&self, inner: S) -> ApiGuard<S> {
        ApiGuard {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The guarded service.
#[derive(Debug, Clone)]
pub struct ApiGuard<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> tower::Service<Request<Body>> for ApiGuard<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(access) = access(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        // The service that was polled ready handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(guarded(state, inner, access, request))
    }
}

async fn guarded<S>(
    state: Arc<State>,
    mut inner: S,
    access: Access,
    request: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
{
    let peer = request.extensions().get::<PeerInfo>().cloned();
    let principal = match &state.auth {
        None => Ok(Arc::new(Principal::anonymous_admin())),
        Some(auth) => auth.get().authenticate(
            &tonic::metadata::MetadataMap::from_headers(request.headers().clone()),
            peer.as_ref(),
        ),
    };
    let path = request.uri().path().to_string();
    let verb = match access {
        Access::Read | Access::Operate | Access::Admin => {
            let role = match access {
                Access::Read => Role::Viewer,
                Access::Operate => Role::Editor,
                _ => Role::Admin,
            };
            let mut request = request;
            return match principal.and_then(|p| {
                p.require(role, &method_name(&path))?;
                Ok(p)
            }) {
                Ok(p) => {
                    request.extensions_mut().insert(p);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            };
        }
        Access::Write(verb) => verb,
    };

    let (mut parts, body) = request.into_parts();
    let bytes = match Limited::new(body, MAX_APPLY_REQUEST_BYTES + 5)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            // As the service itself answers an oversized request (tonic's decoding limit).
            return Ok(Status::out_of_range(format!(
                "request larger than {MAX_APPLY_REQUEST_BYTES} bytes, or unreadable"
            ))
            .into_http());
        }
    };
    let attempt = Attempt::read(verb, &bytes);
    let old = attempt.versions(&state.registry);
    let record = AuditRecord {
        state: &state,
        principal: principal.as_ref().ok().cloned(),
        peer: peer.as_ref(),
        attempt: &attempt,
        old: &old,
    };
    let checked = principal.and_then(|p| attempt.authorize(&p).map(|()| p));
    match checked {
        Ok(p) => {
            parts.extensions.insert(p);
        }
        Err(status) => {
            record.refused(&status).await;
            return Ok(status.into_http());
        }
    }
    let response = inner
        .call(Request::from_parts(parts, Body::new(Full::new(bytes))))
        .await?;
    match refusal_of(&response) {
        Some(status) => record.refused(&status).await,
        None => record.accepted().await,
    }
    Ok(response)
}

/// `Service/Method` of a path, for messages.
fn method_name(path: &str) -> String {
    let path = path.trim_start_matches('/');
    match path.rsplit_once('/') {
        Some((service, method)) => {
            format!("{}/{method}", service.rsplit('.').next().unwrap_or(service))
        }
        None => path.to_string(),
    }
}

/// The error a (trailers-only) response carries, if any.
fn refusal_of(response: &Response<Body>) -> Option<Status> {
    let status = Status::from_header_map(response.headers())?;
    (status.code() != tonic::Code::Ok).then_some(status)
}

/// The policies an apply or delete request names.
#[derive(Debug)]
struct Attempt {
    verb: Verb,
    dry_run: bool,
    /// (kind, name) per document; `None` for a document whose kind and name cannot be told.
    targets: Vec<Option<(Kind, String)>>,
    /// The request itself could not be decoded.
    unreadable: bool,
}

impl Attempt {
    /// Reads the one gRPC message of `body` (uncompressed: the server offers no compression).
    fn read(verb: Verb, body: &[u8]) -> Self {
        let mut attempt = Attempt {
            verb,
            dry_run: false,
            targets: Vec::new(),
            unreadable: true,
        };
        let message = match body {
            [0, a, b, c, d, rest @ ..]
                if rest.len() == u32::from_be_bytes([*a, *b, *c, *d]) as usize =>
            {
                rest
            }
            _ => return attempt,
        };
        match verb {
            Verb::Apply => {
                let Ok(req) = pb::ApplyRequest::decode(message) else {
                    return attempt;
                };
                attempt.dry_run = req.dry_run;
                attempt.targets = req.documents_json.iter().map(|d| identify(d)).collect();
            }
            Verb::Delete => {
                let Ok(req) = pb::DeleteRequest::decode(message) else {
                    return attempt;
                };
                attempt.targets = vec![Kind::parse(&req.kind).map(|k| (k, req.name))];
            }
            Verb::Rollback => {
                let Ok(req) = pb::RollbackRequest::decode(message) else {
                    return attempt;
                };
                attempt.dry_run = req.dry_run;
                attempt.targets = vec![Kind::parse(&req.kind).map(|k| (k, req.name))];
            }
        }
        attempt.unreadable = false;
        attempt
    }

    fn verb(&self) -> &'static str {
        match (self.verb, self.dry_run) {
            (Verb::Apply, false) => "apply",
            (Verb::Apply, true) => "apply --dry-run",
            (Verb::Delete, _) => "delete",
            (Verb::Rollback, false) => "rollback",
            (Verb::Rollback, true) => "rollback --dry-run",
        }
    }

    /// Refuses unless `principal` may write every policy named.
    fn authorize(&self, principal: &Principal) -> Result<(), Status> {
        principal.require(Role::Editor, self.verb())?;
        if principal.role == Role::Admin
            || (principal.kinds.is_none() && principal.name_prefixes.is_none())
        {
            // Unidentifiable documents are refused by the service itself.
            return Ok(());
        }
        if self.unreadable {
            return Err(Status::invalid_argument(format!(
                "{} refused: the request cannot be read",
                self.verb()
            )));
        }
        for (i, target) in self.targets.iter().enumerate() {
            let Some((kind, name)) = target else {
                return Err(Status::permission_denied(format!(
                    "{} refused: document {} has no recognisable kind and metadata.name, so {:?}'s limits cannot be checked",
                    self.verb(),
                    i + 1,
                    principal.name
                )));
            };
            principal.may_write(self.verb(), *kind, name)?;
        }
        Ok(())
    }

    /// The current content version of each target.
    fn versions(&self, registry: &PolicyRegistry) -> Vec<String> {
        let set = registry.current();
        self.targets
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|(kind, name)| set.get(*kind, name))
                    .map(|p| p.version.clone())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// The kind and name of a JSON policy document, read the way the registry reads them.
fn identify(document: &str) -> Option<(Kind, String)> {
    let value: serde_json::Value = serde_json::from_str(document).ok()?;
    let kind = Kind::parse(value.get("kind")?.as_str()?)?;
    let name = value.get("metadata")?.get("name")?.as_str()?;
    Some((kind, name.to_string()))
}

/// Records one attempt in the audit trail.
struct AuditRecord<'a> {
    state: &'a State,
    principal: Option<Arc<Principal>>,
    peer: Option<&'a PeerInfo>,
    attempt: &'a Attempt,
    old: &'a [String],
}

impl AuditRecord<'_> {
    async fn refused(&self, status: &Status) {
        self.write(|_, _| ("refused".into(), String::new()), status)
            .await;
    }

    async fn accepted(&self) {
        let current = self.state.registry.current();
        let dry_run = self.attempt.dry_run;
        let verb = self.attempt.verb;
        self.write(
            |target, old| {
                let new = target
                    .and_then(|(kind, name)| current.get(*kind, name))
                    .map(|p| p.version.clone())
                    .unwrap_or_default();
                let result = match (verb, dry_run) {
                    (Verb::Delete, _) => "deleted",
                    (_, true) => "dry-run",
                    _ if old.is_empty() => "created",
                    _ if *old == new => "unchanged",
                    _ => "configured",
                };
                let new = if dry_run || verb == Verb::Delete {
                    String::new()
                } else {
                    new
                };
                (result.to_string(), new)
            },
            &Status::ok(""),
        )
        .await;
    }

    /// One entry per target (one for an unreadable request), `outcome` giving each its
    /// result and new version.
    async fn write(
        &self,
        outcome: impl Fn(Option<&(Kind, String)>, &String) -> (String, String),
        status: &Status,
    ) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let (identity, role) = match &self.principal {
            Some(p) => (p.name.clone(), p.role.as_str().to_string()),
            None => ("anonymous".to_string(), String::new()),
        };
        let remote = self
            .peer
            .and_then(|p| p.remote)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let none = String::new();
        let targets: Vec<Option<&(Kind, String)>> = if self.attempt.targets.is_empty() {
            vec![None]
        } else {
            self.attempt.targets.iter().map(Option::as_ref).collect()
        };
        let entries = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let old = self.old.get(i).unwrap_or(&none);
                let (result, new_version) = outcome(target, old);
                AuditEntry {
                    seq: 0,
                    at_unix_ms: at,
                    identity: identity.clone(),
                    role: role.clone(),
                    remote: remote.clone(),
                    action: self.attempt.verb().to_string(),
                    kind: target.map(|(k, _)| k.to_string()).unwrap_or_default(),
                    name: target.map(|(_, n)| n.clone()).unwrap_or_default(),
                    old_version: old.clone(),
                    new_version,
                    result,
                    code: code_name(status.code()),
                    message: status.message().to_string(),
                }
            })
            .collect();
        let audit = self.state.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.record(entries)).await;
    }
}

/// `PERMISSION_DENIED` and the like.
fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    if out == "OK" || code == tonic::Code::Ok {
        "OK".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_classed_and_unknown_ones_need_admin() {
        let p = |m: &str| access(&format!("/meshwarden.v1alpha1.{m}"));
        assert_eq!(p("PolicyService/Apply"), Some(Access::Write(Verb::Apply)));
        assert_eq!(p("PolicyService/Delete"), Some(Access::Write(Verb::Delete)));
        assert_eq!(
            p("PolicyService/Rollback"),
            Some(Access::Write(Verb::Rollback))
        );
        assert_eq!(p("PolicyService/History"), Some(Access::Read));
        assert_eq!(p("PolicyService/List"), Some(Access::Read));
        assert_eq!(p("ProxyStatusService/ListProxies"), Some(Access::Read));
        assert_eq!(p("PolicyService/Halt"), Some(Access::Operate));
        assert_eq!(p("PolicyService/Resume"), Some(Access::Operate));
        assert_eq!(p("PolicyService/SomethingNew"), Some(Access::Admin));
        assert_eq!(
            access(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
            ),
            None
        );
        assert_eq!(
            access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    fn frame(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn an_apply_is_read_for_its_targets_and_duplicate_keys_do_not_hide_one() {
        let req = pb::ApplyRequest {
            documents_json: vec![
                r#"{"kind":"FaultPolicy","metadata":{"name":"team-a-x"}}"#.into(),
                // serde_json keeps the last of duplicate keys, as the registry does.
                r#"{"kind":"FaultPolicy","kind":"MirrorPolicy","metadata":{"name":"team-a-y"}}"#
                    .into(),
                "not json".into(),
            ],
            dry_run: true,
            ..Default::default()
        };
        let attempt = Attempt::read(Verb::Apply, &frame(&req));
        assert!(!attempt.unreadable && attempt.dry_run);
        assert_eq!(
            attempt.targets,
            [
                Some((Kind::FaultPolicy, "team-a-x".to_string())),
                Some((Kind::MirrorPolicy, "team-a-y".to_string())),
                None
            ]
        );
        assert!(Attempt::read(Verb::Apply, b"\x01junk").unreadable);
    }

    #[test]
    fn a_rollback_is_a_write_of_the_policy_it_names() {
        let req = pb::RollbackRequest {
            kind: "fault".into(),
            name: "team-b-x".into(),
            to_revision: 3,
            dry_run: false,
        };
        let attempt = Attempt::read(Verb::Rollback, &frame(&req));
        assert_eq!(attempt.verb(), "rollback");
        assert_eq!(
            attempt.targets,
            [Some((Kind::FaultPolicy, "team-b-x".to_string()))]
        );
        let editor = Principal {
            name: "team-a".into(),
            role: Role::Editor,
            kinds: None,
            name_prefixes: Some(vec!["team-a-".into()]),
        };
        let err = attempt.authorize(&editor).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message()
                .starts_with("rollback of FaultPolicy \"team-b-x\" refused"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn codes_are_named_as_grpc_does() {
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
