//! Conversions between the registry's types and the API messages, and error mapping.

use super::pb;
use crate::backend::Revision;
use crate::policy_set::StoredPolicy;
use crate::registry::{
    ApplyError, ApplyOutcome, ChangeEvent, ChangeType, DeleteError, Outcome, RollbackError,
};
use meshwarden_common::Kind;
use tonic::Status;

/// A stored policy as returned by Get/List.
pub fn policy(p: &StoredPolicy) -> pb::Policy {
    pb::Policy {
        kind: p.kind().to_string(),
        name: p.name().to_string(),
        document_json: p.doc.to_value().to_string(),
        version: p.version.clone(),
        generation: p.generation,
        updated_unix_ms: p.updated_unix_ms,
        revision: p.revision,
    }
}

/// One kept revision of a policy.
pub fn revision(r: &Revision) -> pb::PolicyRevision {
    pb::PolicyRevision {
        revision: r.revision,
        change: r.change.as_str().to_string(),
        actor: r.actor.clone(),
        at_unix_ms: r.at_unix_ms,
        generation: r.generation,
        version: r.version.clone(),
        document_json: r
            .document
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        rollback_of: r.rollback_of.unwrap_or(0),
    }
}

/// A kept revision shown as a policy (`get --revision`).
pub fn revision_policy(kind: Kind, name: &str, r: &Revision) -> pb::Policy {
    pb::Policy {
        kind: kind.to_string(),
        name: name.to_string(),
        document_json: r
            .document
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        version: r.version.clone(),
        generation: r.generation,
        updated_unix_ms: r.at_unix_ms,
        revision: r.revision,
    }
}

/// One apply result.
pub fn apply_result(o: &ApplyOutcome) -> pb::ApplyResult {
    let outcome = match o.outcome {
        Outcome::Created => pb::apply_result::Outcome::Created,
        Outcome::Updated => pb::apply_result::Outcome::Updated,
        Outcome::Unchanged => pb::apply_result::Outcome::Unchanged,
    };
    pb::ApplyResult {
        kind: o.kind.to_string(),
        name: o.name.clone(),
        outcome: outcome.into(),
        version: o.version.clone(),
        revision: o.revision,
    }
}

/// One change event.
pub fn change_event(e: &ChangeEvent) -> pb::ChangeEvent {
    let ty = match e.change {
        ChangeType::Created => pb::change_event::Type::Created,
        ChangeType::Updated => pb::change_event::Type::Updated,
        ChangeType::Deleted => pb::change_event::Type::Deleted,
    };
    pb::ChangeEvent {
        kind: e.kind.to_string(),
        name: e.name.clone(),
        r#type: ty.into(),
        version: e.version.clone(),
        generation: e.generation,
        revision: e.revision,
    }
}

/// A required kind, parsed leniently (`trace`, `tracepolicy`, `TracePolicy`).
pub fn kind(s: &str) -> Result<Kind, Status> {
    Kind::parse(s).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown kind {s:?}; expected one of {}",
            Kind::ALL.map(Kind::as_str).join(", ")
        ))
    })
}

/// An optional kind filter: empty means every kind.
pub fn kind_filter(s: &str) -> Result<Option<Kind>, Status> {
    if s.is_empty() {
        Ok(None)
    } else {
        kind(s).map(Some)
    }
}

/// Invalid input becomes INVALID_ARGUMENT with the registry's message, a conflict with a
/// concurrent writer ABORTED; store failures become INTERNAL.
pub fn apply_error(e: ApplyError) -> Status {
    if matches!(
        e,
        ApplyError::Conflict(_) | ApplyError::Store(crate::store::StoreError::Conflict { .. })
    ) {
        tracing::info!(error = %e, "apply refused: conflict");
        Status::aborted(e.to_string())
    } else if e.is_invalid_input() {
        Status::invalid_argument(e.to_string())
    } else {
        tracing::error!(error = %e, "apply failed");
        Status::internal(e.to_string())
    }
}

/// NOT_FOUND for a missing policy; store failures become INTERNAL.
pub fn delete_error(e: DeleteError) -> Status {
    match e {
        DeleteError::NotFound { .. } => Status::not_found(e.to_string()),
        DeleteError::Store(_) => {
            tracing::error!(error = %e, "delete failed");
            Status::internal(e.to_string())
        }
    }
}

/// NOT_FOUND for a revision that cannot be rolled back to; store failures become INTERNAL.
pub fn rollback_error(e: RollbackError) -> Status {
    match e {
        RollbackError::Store(e) => store_error(e),
        RollbackError::Deletion { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::not_found(e.to_string()),
    }
}

/// A store failure outside apply/delete (halts): INTERNAL.
pub fn store_error(e: crate::store::StoreError) -> Status {
    tracing::error!(error = %e, "store write failed");
    Status::internal(e.to_string())
}

/// A blocking task that panicked or was cancelled.
pub fn join_error(e: tokio::task::JoinError) -> Status {
    tracing::error!(error = %e, "registry task failed");
    Status::internal(format!("registry task failed: {e}"))
}
