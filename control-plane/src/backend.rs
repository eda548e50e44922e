//! The storage interface the registry is written against: [`PolicyStore`], a narrow set
//! of methods for policies, their history and auxiliary records. The embedded redb
//! [`crate::store::Store`] implements it, and so does [`etcd::EtcdStore`] for replicas; the
//! registry, API and xDS code do not know which one runs.
//!
//! Contract every implementation keeps:
//! - [`PolicyStore::commit`] is atomic and durable: the policy records, the store
//!   generation and one history [`Revision`] per change are all written, or none is;
//!   once it returns `Ok` they survive a crash.
//! - Revisions are numbered per policy (`kind`/`name`), from 1, one more than the last one
//!   ever committed for that policy, deleted or not; a number is never reused. The store
//!   assigns them inside the transaction and returns them.
//! - A change with a `base_revision` is compare-and-swap: if the policy's stored revision
//!   (0 when there is no record) is not that one, nothing of the commit is written and it
//!   fails with [`StoreError::Conflict`]. A writer whose view is stale (another replica
//!   wrote meanwhile) therefore cannot overwrite a change it has not seen.
//! - A commit's generation must be the stored generation plus one; otherwise another
//!   process committed since this one loaded, nothing is written and it fails with
//!   [`StoreError::Stale`] (the registry reloads and retries).
//! - At most `history_limit` revisions are kept per policy (the oldest go first, in the
//!   same transaction); the newest is always kept, so numbering continues after a delete.

#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod etcd;
pub(crate) mod records;

use crate::policy_set::StoredPolicy;
use crate::store::{Loaded, StoreError, StoreHealth};
use meshwarden_common::Kind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Revisions kept per policy unless configured otherwise (`serve --history-limit`).
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// What a revision did to its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryChange {
    /// The policy was created (it did not exist before).
    Created,
    /// Its content changed.
    Updated,
    /// It was deleted; the revision holds no document.
    Deleted,
    /// Its content was set back to that of an earlier revision (`rollback_of`).
    RolledBack,
}

impl HistoryChange {
    /// Lower-case name, as shown by `meshwarden history`.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryChange::Created => "created",
            HistoryChange::Updated => "updated",
            HistoryChange::Deleted => "deleted",
            HistoryChange::RolledBack => "rolled-back",
        }
    }
}

impl fmt::Display for HistoryChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored change of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Per-policy revision number, from 1.
    pub revision: u64,
    pub change: HistoryChange,
    /// Who made the change: the API caller's identity (`anonymous` without authentication).
    pub actor: String,
    /// When it was committed, milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    /// Store generation of the commit.
    pub generation: u64,
    /// Content version after the change; for a deletion, the version deleted (empty if the
    /// deleted record could not be loaded).
    pub version: String,
    /// The canonical document after the change; `None` for a deletion. Kept as JSON: an
    /// old revision is validated again when it is rolled back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<serde_json::Value>,
    /// For a rollback, the revision whose content was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

impl Revision {
    /// The history entry `commit` writes for `change` at `revision` (the same in every
    /// store).
    pub(crate) fn of(commit: &Commit<'_>, change: &PolicyChange<'_>, revision: u64) -> Self {
        let (version, document) = match change.policy {
            Some(p) => (p.version.clone(), Some(p.doc.to_value())),
            None => (change.deleted_version.to_string(), None),
        };
        Revision {
            revision,
            change: change.change,
            actor: commit.actor.to_string(),
            at_unix_ms: commit.at_unix_ms,
            generation: commit.generation,
            version,
            document,
            rollback_of: change.rollback_of,
        }
    }
}

/// One policy change inside a [`Commit`].
#[derive(Debug, Clone)]
pub struct PolicyChange<'a> {
    pub kind: Kind,
    pub name: &'a str,
    /// The new content; `None` deletes the policy (or the record that failed to load).
    pub policy: Option<&'a StoredPolicy>,
    pub change: HistoryChange,
    /// For a deletion, the version deleted (kept in the history).
    pub deleted_version: &'a str,
    /// For a rollback, the revision restored.
    pub rollback_of: Option<u64>,
    /// The revision the writer saw as current (0: no record); `None` skips the check.
    pub base_revision: Option<u64>,
}

/// Everything one transaction writes.
#[derive(Debug, Clone)]
pub struct Commit<'a> {
    /// Store generation after the commit.
    pub generation: u64,
    pub changes: &'a [PolicyChange<'a>],
    /// Who made the changes.
    pub actor: &'a str,
    /// When, milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    /// Revisions kept per policy (at least 1).
    pub history_limit: usize,
}

/// A durable store of policies, their history and auxiliary records. See the module
/// documentation for the contract.
pub trait PolicyStore: Send + Sync + fmt::Debug {
    /// Where the store is (a path, a URL), for messages and logs.
    fn location(&self) -> String;

    /// Reads every policy record and the store generation.
    fn load(&self) -> Result<Loaded, StoreError>;

    /// Writes `commit` in one durable transaction and returns the revision assigned to each
    /// change, in order.
    fn commit(&self, commit: &Commit<'_>) -> Result<Vec<u64>, StoreError>;

    /// The revisions kept for one policy, oldest first (empty if it never existed).
    fn history(&self, kind: Kind, name: &str) -> Result<Vec<Revision>, StoreError>;

    /// Every auxiliary record whose key starts with `prefix`, in key order.
    fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Puts (`Some`) or deletes (`None`) auxiliary records in one durable transaction.
    fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), StoreError>;

    /// Whether writes currently work.
    fn health(&self) -> StoreHealth;

    /// Writes that failed since the process started.
    fn write_errors(&self) -> u64;

    /// Makes writes work again after a failure, if the cause is gone.
    fn recover(&self) -> Result<(), StoreError>;

    /// For a store other processes write too (etcd): a receiver whose value changes
    /// whenever the store may hold something this process has not loaded. The registry then
    /// reloads ([`crate::registry::PolicyRegistry::refresh`]). `None`: only this process
    /// writes (the embedded store).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Puts a record that lives only as long as this process (a lease in etcd): replica
    /// status. A store only this process uses keeps nothing.
    fn put_ephemeral(&self, _key: &str, _value: Vec<u8>) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every live ephemeral record whose key starts with `prefix`, of every process.
    fn ephemeral_records(&self, _prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }
}
