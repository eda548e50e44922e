//! A tower layer in front of every gRPC service of the policy API (not xDS, not
//! reflection): authenticates the caller ([`super::auth::Authenticator`]), checks its role for the
//! method called, checks an editor's kinds and name prefixes against the policies an
//! apply or delete touches (read from the request itself, before the service sees it), and
//! records every apply, delete, halt and resume, accepted or refused, in the [`AuditLog`].
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

/// Proxies' reports (capture summaries, open breakers) pass like xDS does (proxies hold no
/// API token); each service bounds what one report can add.
const PROXY_REPORTS: [&str; 2] = [
    "/meshwarden.v1alpha1.CaptureService/Report",
    "/meshwarden.v1alpha1.BreakerStatusService/Report",
];

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reading: viewer.
    Read,
    /// Apply, delete or rollback: editor, within its scope; audited.
    Write(Verb),
    /// Halt and resume (an emergency stop of faults and mirrors, no policy changes):
    /// editor, whatever its scope; audited.
    Operate(Op),
    /// Anything else: admin.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Apply,
    Delete,
    Rollback,
}

/// An operation on halts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Halt,
    Resume,
}

/// The access `path` (`/package.Service/Method`) needs; `None` if it is not guarded.
fn access(path: &str) -> Option<Access> {
    if !GUARDED.iter().any(|p| path.starts_with(p)) || PROXY_REPORTS.contains(&path) {
        return None;
    }
    let (service, method) = path.trim_start_matches('/').rsplit_once('/')?;
    let service = service.rsplit('.').next().unwrap_or(service);
    Some(match (service, method) {
        ("PolicyService", "Apply") => Access::Write(Verb::Apply),
        ("PolicyService", "Delete") => Access::Write(Verb::Delete),
        ("PolicyService", "Rollback") => Access::Write(Verb::Rollback),
        ("PolicyService", "Halt") => Access::Operate(Op::Halt),
        ("PolicyService", "Resume") => Access::Operate(Op::Resume),
        ("PolicyService", "Get" | "List" | "Watch" | "Diff" | "ListHalts" | "History")
        | ("ProxyStatusService", _)
        | ("AuditService", _)
        | ("CaptureService", "Watch") => Access::Read,
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
        Access::Read | Access::Admin => {
            let role = match access {
                Access::Read => Role::Viewer,
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
        Access::Operate(op) => return operate(&state, inner, op, principal, request).await,
        Access::Write(verb) => verb,
    };

    let (mut parts, bytes) = match read_body(request).await {
        Ok(read) => read,
        Err(status) => return Ok(status.into_http()),
    };
    let attempt = Attempt::read(verb, &bytes);
    let old = attempt.versions(&state.registry);
    let record = AuditRecord {
        state: &state,
        caller: Caller::new(principal.as_ref().ok(), peer.as_ref()),
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

/// The request's head and its whole (bounded) body; an oversized or unreadable body is
/// refused as the service itself would refuse it (tonic's decoding limit).
async fn read_body(
    request: Request<Body>,
) -> Result<(tonic::codegen::http::request::Parts, tonic::codegen::Bytes), Status> {
    let (parts, body) = request.into_parts();
    match Limited::new(body, MAX_APPLY_REQUEST_BYTES + 5)
        .collect()
        .await
    {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(_) => Err(Status::out_of_range(format!(
            "request larger than {MAX_APPLY_REQUEST_BYTES} bytes, or unreadable"
        ))),
    }
}

/// A halt or resume: checked against the caller's role, passed on, and recorded in the
/// audit trail either way.
async fn operate<S>(
    state: &State,
    mut inner: S,
    op: Op,
    principal: Result<Arc<Principal>, Status>,
    request: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
{
    let peer = request.extensions().get::<PeerInfo>().cloned();
    let caller = Caller::new(principal.as_ref().ok(), peer.as_ref());
    let (parts, bytes) = match read_body(request).await {
        Ok(read) => read,
        Err(status) => {
            caller
                .record(
                    state,
                    vec![Operation::unreadable(op).entry(&caller, &status)],
                )
                .await;
            return Ok(status.into_http());
        }
    };
    let operation = Operation::read(op, &bytes);
    if let Err(status) = principal.and_then(|p| p.require(Role::Editor, operation.action())) {
        caller
            .record(state, vec![operation.entry(&caller, &status)])
            .await;
        return Ok(status.into_http());
    }
    let response = inner
        .call(Request::from_parts(parts, Body::new(Full::new(bytes))))
        .await?;
    let status = refusal_of(&response).unwrap_or_else(|| Status::ok(""));
    caller
        .record(state, vec![operation.entry(&caller, &status)])
        .await;
    Ok(response)
}

/// A halt or resume request, as far as it can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Operation {
    op: Op,
    /// The halt's name (`default` when the request names none); for a resume, empty
    /// means every halt.
    name: String,
    /// The kinds halted, as requested (empty: every haltable kind).
    kinds: Vec<String>,
    unreadable: bool,
}

impl Operation {
    fn unreadable(op: Op) -> Self {
        Self {
            op,
            name: String::new(),
            kinds: Vec::new(),
            unreadable: true,
        }
    }

    /// Reads the one gRPC message of `body`.
    fn read(op: Op, body: &[u8]) -> Self {
        let Some(message) = grpc_message(body) else {
            return Self::unreadable(op);
        };
        match op {
            Op::Halt => match pb::HaltRequest::decode(message) {
                Ok(req) => {
                    let halt = req.halt.unwrap_or_default();
                    Self {
                        op,
                        name: if halt.name.is_empty() {
                            crate::halt::DEFAULT_HALT_NAME.to_string()
                        } else {
                            halt.name
                        },
                        kinds: halt.kinds,
                        unreadable: false,
                    }
                }
                Err(_) => Self::unreadable(op),
            },
            Op::Resume => match pb::ResumeRequest::decode(message) {
                Ok(req) => Self {
                    op,
                    name: req.name,
                    kinds: Vec::new(),
                    unreadable: false,
                },
                Err(_) => Self::unreadable(op),
            },
        }
    }

    fn action(&self) -> &'static str {
        match self.op {
            Op::Halt => "halt",
            Op::Resume => "resume",
        }
    }

    /// The audit entry of this operation ending with `status`.
    fn entry(&self, caller: &Caller, status: &Status) -> AuditEntry {
        let kinds = if self.op == Op::Halt && self.kinds.is_empty() && !self.unreadable {
            crate::halt::HALTABLE
                .iter()
                .map(|k| k.to_string())
                .collect()
        } else {
            self.kinds
                .iter()
                .map(|k| Kind::parse(k).map_or_else(|| k.clone(), |k| k.to_string()))
                .collect::<Vec<_>>()
        };
        let result = match (status.code(), self.op) {
            (tonic::Code::Ok, Op::Halt) => "halted",
            (tonic::Code::Ok, Op::Resume) => "resumed",
            _ => "refused",
        };
        let name = match (self.op, self.name.is_empty(), self.unreadable) {
            (Op::Resume, true, false) => "*".to_string(),
            _ => self.name.clone(),
        };
        caller.entry(self.action(), kinds.join(","), name, result, status)
    }
}

/// The one message of a unary gRPC request body (uncompressed: the server offers no
/// compression).
fn grpc_message(body: &[u8]) -> Option<&[u8]> {
    match body {
        [0, a, b, c, d, rest @ ..]
            if rest.len() == u32::from_be_bytes([*a, *b, *c, *d]) as usize =>
        {
            Some(rest)
        }
        _ => None,
    }
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
        let Some(message) = grpc_message(body) else {
            return attempt;
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

/// Who made a request, as the audit trail names them.
struct Caller {
    identity: String,
    role: String,
    remote: String,
}

impl Caller {
    fn new(principal: Option<&Arc<Principal>>, peer: Option<&PeerInfo>) -> Self {
        let (identity, role) = match principal {
            Some(p) => (p.name.clone(), p.role.as_str().to_string()),
            None => ("anonymous".to_string(), String::new()),
        };
        let remote = peer
            .and_then(|p| p.remote)
            .map(|a| a.to_string())
            .unwrap_or_default();
        Self {
            identity,
            role,
            remote,
        }
    }

    /// An entry of this caller's `action` on `kind`/`name`, now (versions empty).
    fn entry(
        &self,
        action: &str,
        kind: String,
        name: String,
        result: &str,
        status: &Status,
    ) -> AuditEntry {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        AuditEntry {
            seq: 0,
            at_unix_ms: at,
            identity: self.identity.clone(),
            role: self.role.clone(),
            remote: self.remote.clone(),
            action: action.to_string(),
            kind,
            name,
            old_version: String::new(),
            new_version: String::new(),
            result: result.to_string(),
            code: code_name(status.code()),
            message: status.message().to_string(),
        }
    }

    /// Records `entries` in the trail (off the async threads).
    async fn record(&self, state: &State, entries: Vec<AuditEntry>) {
        let audit = state.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.record(entries)).await;
    }
}

/// Records one attempt in the audit trail.
struct AuditRecord<'a> {
    state: &'a State,
    caller: Caller,
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
                    old_version: old.clone(),
                    new_version,
                    ..self.caller.entry(
                        self.attempt.verb(),
                        target.map(|(k, _)| k.to_string()).unwrap_or_default(),
                        target.map(|(_, n)| n.clone()).unwrap_or_default(),
                        &result,
                        status,
                    )
                }
            })
            .collect();
        self.caller.record(self.state, entries).await;
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
        assert_eq!(p("PolicyService/Halt"), Some(Access::Operate(Op::Halt)));
        assert_eq!(p("PolicyService/Resume"), Some(Access::Operate(Op::Resume)));
        assert_eq!(p("PolicyService/SomethingNew"), Some(Access::Admin));
        assert_eq!(p("CaptureService/Watch"), Some(Access::Read));
        assert_eq!(p("CaptureService/Report"), None, "proxies report like xDS");
        assert_eq!(p("BreakerStatusService/Report"), None);
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
    fn halts_and_resumes_are_read_for_the_audit_trail() {
        let caller = Caller::new(None, None);
        let halt = pb::HaltRequest {
            halt: Some(pb::Halt {
                kinds: vec!["fault".into()],
                ..Default::default()
            }),
        };
        let op = Operation::read(Op::Halt, &frame(&halt));
        let e = op.entry(&caller, &Status::ok(""));
        assert_eq!(
            (
                e.action.as_str(),
                e.kind.as_str(),
                e.name.as_str(),
                e.result.as_str()
            ),
            ("halt", "FaultPolicy", "default", "halted")
        );
        let e = Operation::read(Op::Halt, &frame(&pb::HaltRequest::default()))
            .entry(&caller, &Status::permission_denied("no"));
        assert_eq!(e.kind, "FaultPolicy,MirrorPolicy");
        assert_eq!(
            (e.result.as_str(), e.code.as_str()),
            ("refused", "PERMISSION_DENIED")
        );
        let resume = Operation::read(Op::Resume, &frame(&pb::ResumeRequest::default()));
        let e = resume.entry(&caller, &Status::ok(""));
        assert_eq!((e.name.as_str(), e.result.as_str()), ("*", "resumed"));
        let junk = Operation::read(Op::Resume, b"\x01junk");
        assert!(junk.unreadable);
        assert_eq!(junk.entry(&caller, &Status::invalid_argument("x")).name, "");
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
