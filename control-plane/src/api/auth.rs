//! Who may use the policy API, and for what.
//!
//! Callers are authenticated by a bearer token (`authorization: Bearer <token>`) or by
//! their verified mTLS client certificate, against the entries of a token file
//! (`serve --token-file`):
//!
//! ```yaml
//! users:
//! - name: ci-payments            # shown in the audit trail
//!   sha256: 9f86d08...           # hex SHA-256 of the token (the token itself is never stored)
//!   role: editor                 # viewer | editor | admin
//!   kinds: [FaultPolicy]         # editor only: these kinds (default: all)
//!   namePrefixes: [payments-]    # editor only: policies whose name starts so (default: all)
//! - name: platform-admin
//!   identity: spiffe://mesh/ns/ops/sa/admin   # a client certificate's URI or DNS name
//!   role: admin
//! ```
//!
//! Roles: `viewer` reads (get, list, watch, diff, status, audit); `editor` also applies
//! and deletes, within its kinds and name prefixes, and may halt and resume (an emergency
//! stop changes no policy); `admin` may do everything, including calls added later. Missing or unknown credentials are UNAUTHENTICATED; a role that does not allow
//! the call is PERMISSION_DENIED, naming what was refused.

use crate::tls::PeerInfo;
use meshwarden_common::Kind;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tonic::Status;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token file entry's name (or, with auth off, `anonymous`).
    pub name: String,
    pub role: Role,
    /// Editor only: the kinds it may write (`None`: every kind).
    pub kinds: Option<Vec<Kind>>,
    /// Editor only: name prefixes it may write (`None`: every name).
    pub name_prefixes: Option<Vec<String>>,
}

impl Principal {
    /// The caller when authentication is off: anyone who reaches the port, as admin.
    pub fn anonymous_admin() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Admin,
            kinds: None,
            name_prefixes: None,
        }
    }

    /// Refuses unless the role is at least `role`; `what` names the call.
    pub fn require(&self, role: Role, what: &str) -> Result<(), Status> {
        if self.role >= role {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{what} refused: {:?} is a {}, {what} needs {}",
            self.name,
            self.role.as_str(),
            role.as_str()
        )))
    }

    /// Refuses unless this caller may write (apply or delete) `kind` `name`.
    pub fn may_write(&self, verb: &str, kind: Kind, name: &str) -> Result<(), Status> {
        self.require(Role::Editor, &format!("{verb} of {kind} {name:?}"))?;
        if self.role == Role::Admin {
            return Ok(());
        }
        if let Some(kinds) = &self.kinds {
            if !kinds.contains(&kind) {
                return Err(Status::permission_denied(format!(
                    "{verb} of {kind} {name:?} refused: {:?} may only write {}",
                    self.name,
                    kinds
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if let Some(prefixes) = &self.name_prefixes {
            if !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                return Err(Status::permission_denied(format!(
                    "{verb} of {kind} {name:?} refused: {:?} may only write policies named {}",
                    self.name,
                    prefixes
                        .iter()
                        .map(|p| format!("{p}*"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read --token-file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--token-file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    users: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    name: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    role: Role,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    #[serde(default)]
    name_prefixes: Option<Vec<String>>,
}

/// The callers of a token file, by token hash and by certificate identity.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<[u8; 32], Arc<Principal>>,
    identities: HashMap<String, Arc<Principal>>,
}

impl Authenticator {
    /// Parses a token file's text; the error names the entry and field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokenFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut auth = Self::default();
        for (i, e) in file.users.into_iter().enumerate() {
            let at = format!("users[{i}] ({:?})", e.name);
            if e.name.is_empty() {
                return Err(format!("users[{i}].name: must not be empty"));
            }
            if e.role != Role::Editor && (e.kinds.is_some() || e.name_prefixes.is_some()) {
                return Err(format!(
                    "{at}: kinds and namePrefixes limit editors only (role is {})",
                    e.role.as_str()
                ));
            }
            let kinds = match e.kinds {
                Some(kinds) => Some(
                    kinds
                        .iter()
                        .map(|k| {
                            Kind::parse(k).ok_or_else(|| format!("{at}.kinds: unknown kind {k:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                None => None,
            };
            let principal = Arc::new(Principal {
                name: e.name.clone(),
                role: e.role,
                kinds,
                name_prefixes: e.name_prefixes,
            });
            match (e.sha256, e.identity) {
                (Some(hex_hash), None) => {
                    let hash = hex::decode(hex_hash.trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            format!("{at}.sha256: must be 64 hex digits (sha256sum of the token)")
                        })?;
                    if auth.tokens.insert(hash, principal).is_some() {
                        return Err(format!("{at}.sha256: the same token is listed twice"));
                    }
                }
                (None, Some(identity)) if !identity.is_empty() => {
                    if auth
                        .identities
                        .insert(identity.clone(), principal)
                        .is_some()
                    {
                        return Err(format!("{at}.identity: {identity:?} is listed twice"));
                    }
                }
                _ => return Err(format!("{at}: needs exactly one of sha256 or identity")),
            }
        }
        Ok(auth)
    }

    /// The caller of a request with `metadata` from `peer`: its bearer token if it sent
    /// one (a wrong token is refused even with a certificate), else its client certificate.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Arc<Principal>, Status> {
        if let Some(value) = metadata.get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header must be `Bearer <token>`")
                })?;
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            return self
                .tokens
                .get(&hash)
                .cloned()
                .ok_or_else(|| Status::unauthenticated("unknown token"));
        }
        if let Some(identity) = peer.and_then(|p| p.identity.as_ref()) {
            if let Some(p) = identity.names().find_map(|n| self.identities.get(n)) {
                return Ok(p.clone());
            }
            return Err(Status::unauthenticated(format!(
                "the client certificate ({}) is not in the token file",
                identity.primary().unwrap_or("no names")
            )));
        }
        Err(Status::unauthenticated(
            "credentials required: a bearer token (--token or MESHWARDEN_TOKEN) or a client certificate listed in the server's token file",
        ))
    }
}

/// A token file's callers, read again when the file changes (tokens rotated, users added
/// or removed) without a restart. A file that no longer parses is logged and the previous
/// users kept.
#[derive(Debug)]
pub struct TokenFileWatch {
    path: std::path::PathBuf,
    current: std::sync::RwLock<Arc<Authenticator>>,
    /// The text the current users were read from.
    loaded: std::sync::Mutex<String>,
}

impl TokenFileWatch {
    /// Reads the token file (YAML or JSON) at `path`; it must be valid now.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = read(path)?;
        let auth = Authenticator::parse(&text).map_err(|message| TokenFileError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            current: std::sync::RwLock::new(Arc::new(auth)),
            loaded: std::sync::Mutex::new(text),
        })
    }

    /// The current users.
    pub fn get(&self) -> Arc<Authenticator> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again if its text changed; `Ok(true)` if the users changed.
    pub fn reload_if_changed(&self) -> Result<bool, TokenFileError> {
        let text = read(&self.path)?;
        if *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) == text {
            return Ok(false);
        }
        let auth = Authenticator::parse(&text).map_err(|message| TokenFileError::Invalid {
            path: self.path.display().to_string(),
            message,
        })?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = text;
        Ok(true)
    }

    /// Checks the file every `interval` until `shutdown`, logging reloads and failures.
    pub fn spawn_watch(
        self: &Arc<Self>,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = async { let _ = shutdown.wait_for(|down| *down).await; } => return,
                }
                let watch = this.clone();
                match tokio::task::spawn_blocking(move || watch.reload_if_changed()).await {
                    Ok(Ok(true)) => {
                        tracing::info!(path = %this.path.display(), "token file reloaded")
                    }
                    Ok(Ok(false)) | Err(_) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "token file changed but cannot be used; keeping the previous users")
                    }
                }
            }
        });
    }
}

fn read(path: &Path) -> Result<String, TokenFileError> {
    std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerIdentity;

    #[test]
    fn a_changed_token_file_is_read_again_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        let write = |token: &str| {
            std::fs::write(
                &path,
                format!(
                    "users: [{{name: ci, sha256: {}, role: editor}}]",
                    hash(token)
                ),
            )
            .unwrap()
        };
        write("old");
        let watch = TokenFileWatch::load(&path).unwrap();
        assert!(!watch.reload_if_changed().unwrap());
        write("new");
        assert!(watch.reload_if_changed().unwrap());
        assert!(watch.get().authenticate(&bearer("new"), None).is_ok());
        assert!(watch.get().authenticate(&bearer("old"), None).is_err());
        std::fs::write(&path, "users: [{name: ci}]").unwrap();
        assert!(watch.reload_if_changed().is_err());
        assert!(
            watch.get().authenticate(&bearer("new"), None).is_ok(),
            "previous users kept"
        );
    }

    fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn file() -> Authenticator {
        Authenticator::parse(&format!(
            r#"
users:
- {{name: viewer, sha256: {}, role: viewer}}
- {{name: team-a, sha256: {}, role: editor, kinds: [fault], namePrefixes: [team-a-]}}
- {{name: ops, identity: "spiffe://mesh/ops", role: admin}}
"#,
            hash("v-token"),
            hash("a-token")
        ))
        .unwrap()
    }

    fn bearer(token: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    }

    #[test]
    fn tokens_and_certificates_map_to_principals() {
        let auth = file();
        let p = auth.authenticate(&bearer("v-token"), None).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("viewer", Role::Viewer));
        let peer = PeerInfo {
            remote: None,
            identity: Some(Arc::new(PeerIdentity {
                uris: vec!["spiffe://mesh/ops".into()],
                dns: vec![],
            })),
        };
        assert_eq!(
            auth.authenticate(&Default::default(), Some(&peer))
                .unwrap()
                .role,
            Role::Admin
        );
        for (metadata, peer) in [(bearer("wrong"), Some(&peer)), (Default::default(), None)] {
            let err = auth.authenticate(&metadata, peer).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
    }

    #[test]
    fn roles_and_editor_scopes_are_enforced_with_a_message_naming_the_refusal() {
        let auth = file();
        let viewer = auth.authenticate(&bearer("v-token"), None).unwrap();
        let err = viewer
            .may_write("apply", Kind::FaultPolicy, "team-a-x")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message()
                .contains(r#"apply of FaultPolicy "team-a-x" refused"#),
            "{err:?}"
        );
        assert!(err.message().contains("viewer"), "{err:?}");

        let team = auth.authenticate(&bearer("a-token"), None).unwrap();
        assert!(team
            .may_write("apply", Kind::FaultPolicy, "team-a-x")
            .is_ok());
        let other = team
            .may_write("delete", Kind::FaultPolicy, "team-b-x")
            .unwrap_err();
        assert!(other.message().contains("team-a-*"), "{other:?}");
        let kind = team
            .may_write("apply", Kind::MirrorPolicy, "team-a-x")
            .unwrap_err();
        assert!(
            kind.message().contains("may only write FaultPolicy"),
            "{kind:?}"
        );
        assert!(team.require(Role::Admin, "halt").is_err());
    }

    #[test]
    fn bad_files_name_the_entry_and_field() {
        for (text, want) in [
            (
                "users: [{name: a, role: viewer}]",
                "exactly one of sha256 or identity",
            ),
            (
                "users: [{name: a, sha256: xyz, role: viewer}]",
                "users[0] (\"a\").sha256",
            ),
            (
                "users: [{name: a, identity: x, role: root}]",
                "unknown variant",
            ),
            (
                "users: [{name: a, identity: x, role: viewer, kinds: [fault]}]",
                "editors only",
            ),
            (
                "users: [{name: a, identity: x, role: editor, kinds: [nope]}]",
                "unknown kind",
            ),
        ] {
            let err = Authenticator::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
