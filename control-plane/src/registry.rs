//! The policy registry: the single writer of the store and owner of the current
//! [`PolicySet`]. Readers subscribe to snapshots (`watch`) and to change events
//! (`broadcast`); both are published only after the store transaction committed.
//!
//! Methods that write block on a durable commit (fsync); call them from a blocking context
//! (`tokio::task::spawn_blocking`).
//!
//! The registry works on any [`PolicyStore`]. Every stored change of a policy gets a
//! revision in the same transaction (see [`crate::backend`]); an apply may name the
//! revision each document was based on, and is refused whole with
//! [`ApplyError::Conflict`] if any policy moved on since (optimistic concurrency). An
//! apply without expected revisions is last-writer-wins.

use crate::backend::{
    Commit, HistoryChange, PolicyChange, PolicyStore, Revision, DEFAULT_HISTORY_LIMIT,
};
use crate::halt::{Halt, HaltError, HALT_PREFIX, MAX_HALTS};
use crate::policy_set::{content_version, PolicySet, SharedPolicySet, StoredPolicy};
use crate::store::{self, InvalidRecord, Store, StoreError, StoreHealth};
use meshwarden_common::{Kind, PolicyDocument, ValidationError};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};

/// How many change events a slow watcher may fall behind before its stream is ended.
const EVENT_BUFFER: usize = 1024;

/// Attempts of a write that keeps losing the race against other replicas.
const MAX_STALE_RETRIES: u32 = 8;

/// What an apply did to one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl Outcome {
    /// Lower-case name, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// The result of applying one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub kind: Kind,
    pub name: String,
    pub outcome: Outcome,
    /// Content version of the document as applied.
    pub version: String,
    /// The policy's revision after the apply (unchanged: its current one; 0 in a dry run
    /// of a change, which assigns none).
    pub revision: u64,
}

/// Who applies, and on what the apply was based.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Compute outcomes only; store nothing.
    pub dry_run: bool,
    /// Per document (request order), the revision it was based on; `None` (or a shorter
    /// list) means no expectation: last writer wins for that document.
    pub expected_revisions: Vec<Option<u64>>,
    /// Ignore `expected_revisions`: overwrite whatever is stored.
    pub force: bool,
    /// Who applies, for the history.
    pub actor: String,
    /// Set when the apply restores an earlier revision (`rollback`).
    pub rollback_of: Option<u64>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            expected_revisions: Vec::new(),
            force: false,
            actor: ANONYMOUS.to_string(),
            rollback_of: None,
        }
    }
}

/// The actor recorded when the caller is not known (no authentication).
pub const ANONYMOUS: &str = "anonymous";

/// A document whose policy moved on since the revision it was based on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub kind: Kind,
    pub name: String,
    /// The revision the document was based on.
    pub expected: u64,
    /// The policy's revision now; `None` if it does not exist (never did, or deleted).
    pub current: Option<u64>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name, expected) = (self.kind, &self.name, self.expected);
        match self.current {
            Some(current) => write!(
                f,
                "{kind} {name:?} is at revision {current}, not revision {expected} this apply was based on"
            ),
            None => write!(
                f,
                "{kind} {name:?} does not exist now, but this apply was based on its revision {expected}"
            ),
        }
    }
}

/// Kind of a committed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
}

/// A committed change to one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub kind: Kind,
    pub name: String,
    pub change: ChangeType,
    /// Version after the change; for deletions, the version deleted (empty if the deleted
    /// record was an invalid one).
    pub version: String,
    pub generation: u64,
    /// The policy's revision made by the change (its history entry).
    pub revision: u64,
}

/// Which document of an apply request an error is about: 1-based index, plus kind and
/// name when the document got far enough to have them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    pub index: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl DocumentRef {
    /// Describes document `index` (1-based) from what `value` says about itself.
    pub fn of(index: usize, value: &Value) -> Self {
        let text = |v: &Value| v.as_str().map(str::to_string);
        Self {
            index,
            kind: text(&value["kind"]),
            name: text(&value["metadata"]["name"]),
        }
    }
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} {n:?})"),
            (Some(k), None) => write!(f, " ({k})"),
            (None, Some(n)) => write!(f, " ({n:?})"),
            (None, None) => Ok(()),
        }
    }
}

/// Why an apply was refused. Nothing is stored or published when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no policy documents given")]
    Empty,
    #[error("{doc}: {error}")]
    Invalid {
        doc: DocumentRef,
        error: ValidationError,
    },
    #[error("{doc}: {kind} {name:?} already appears as document {first}; each policy may appear once per apply")]
    Duplicate {
        doc: DocumentRef,
        first: usize,
        kind: Kind,
        name: String,
    },
    #[error("conflict: {}; nothing was applied. Get the policy again and re-apply your change, or apply with --force to overwrite", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Conflict(Vec<Conflict>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApplyError {
    /// True when the caller's input was at fault (as opposed to the store or a concurrent
    /// writer).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, ApplyError::Store(_) | ApplyError::Conflict(_))
    }
}

/// Why a rollback target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("{kind} {name:?} has no history")]
    NoHistory { kind: Kind, name: String },
    #[error(
        "{kind} {name:?} has no revision before its current revision {current} to roll back to"
    )]
    NothingBefore {
        kind: Kind,
        name: String,
        current: u64,
    },
    #[error("{kind} {name:?}: revision {revision} is not kept (revisions kept: {kept})")]
    NotKept {
        kind: Kind,
        name: String,
        revision: u64,
        kept: String,
    },
    #[error("{kind} {name:?}: revision {revision} is its deletion, which holds no content; use `meshwarden delete` to delete it")]
    Deletion {
        kind: Kind,
        name: String,
        revision: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a delete failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: Kind, name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters kept by the registry, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct RegistryStats {
    created: AtomicU64,
    updated: AtomicU64,
    unchanged: AtomicU64,
    rejected: AtomicU64,
    conflicts: AtomicU64,
    reloads: AtomicU64,
    stale_retries: AtomicU64,
}

impl RegistryStats {
    /// Policies applied with `outcome` since startup (dry runs excluded).
    pub fn applies(&self, outcome: Outcome) -> u64 {
        self.counter(outcome).load(Ordering::Relaxed)
    }

    /// Apply requests refused for invalid input since startup.
    pub fn rejections(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Apply requests refused since startup because a policy had moved on since the
    /// revision they were based on.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Reloads since startup that found changes made by another replica (shared store).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Writes retried since startup because another replica committed first.
    pub fn stale_retries(&self) -> u64 {
        self.stale_retries.load(Ordering::Relaxed)
    }

    fn counter(&self, outcome: Outcome) -> &AtomicU64 {
        match outcome {
            Outcome::Created => &self.created,
            Outcome::Updated => &self.updated,
            Outcome::Unchanged => &self.unchanged,
        }
    }
}

/// Owns the store and the current policy set.
#[derive(Debug)]
pub struct PolicyRegistry {
    store: Box<dyn PolicyStore>,
    /// Revisions kept per policy.
    history_limit: usize,
    /// Serialises writers; held from reading the current set until it is published.
    write: Mutex<Writer>,
    set_tx: watch::Sender<SharedPolicySet>,
    events_tx: broadcast::Sender<ChangeEvent>,
    stats: RegistryStats,
}

/// State only writers touch.
#[derive(Debug, Default)]
struct Writer {
    /// Stored records that failed to load, by key.
    invalid: BTreeMap<String, String>,
}

impl PolicyRegistry {
    /// Opens the store in `data_dir` and loads it. Records that no longer validate are
    /// logged and kept aside (see [`PolicyRegistry::invalid_records`]); the rest is served.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::from_store(Store::open(data_dir)?)
    }

    /// Loads an already opened store.
    pub fn from_store(store: impl PolicyStore + 'static) -> Result<Self, StoreError> {
        Self::from_boxed(Box::new(store))
    }

    /// Loads an already opened store of either kind (`serve --store`).
    pub fn from_boxed(store: Box<dyn PolicyStore>) -> Result<Self, StoreError> {
        let loaded = store.load()?;
        for bad in &loaded.invalid {
            tracing::error!(key = %bad.key, error = %bad.error, "stored policy not loaded");
        }
        let mut policies = loaded.policies;
        sort(&mut policies);
        tracing::info!(
            path = %store.location(),
            policies = policies.len(),
            invalid = loaded.invalid.len(),
            generation = loaded.generation,
            "policy store loaded"
        );
        let halts = load_halts(store.as_ref())?;
        if !halts.is_empty() {
            let names: Vec<&str> = halts.iter().map(|h| h.name.as_str()).collect();
            tracing::warn!(halts = ?names, "halts in force: fault injection and/or mirroring stay suspended until `meshwarden resume`");
        }
        let set = Arc::new(PolicySet {
            generation: loaded.generation,
            policies,
            halts,
        });
        let writer = Writer {
            invalid: loaded
                .invalid
                .into_iter()
                .map(|r| (r.key, r.error))
                .collect(),
        };
        Ok(Self {
            store,
            history_limit: DEFAULT_HISTORY_LIMIT,
            write: Mutex::new(writer),
            set_tx: watch::channel(set).0,
            events_tx: broadcast::channel(EVENT_BUFFER).0,
            stats: RegistryStats::default(),
        })
    }

    /// Keeps at most `limit` revisions per policy (at least 1) from now on.
    pub fn with_history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit.max(1);
        self
    }

    /// The current policy set.
    pub fn current(&self) -> SharedPolicySet {
        self.set_tx.borrow().clone()
    }

    /// Receives every policy set published from now on; `borrow()` gives the current one.
    pub fn subscribe(&self) -> watch::Receiver<SharedPolicySet> {
        self.set_tx.subscribe()
    }

    /// Receives change events committed from now on.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<ChangeEvent> {
        self.events_tx.subscribe()
    }

    /// The current set and a change receiver starting exactly after it (no change is missed
    /// or seen twice).
    pub fn snapshot_and_subscribe(&self) -> (SharedPolicySet, broadcast::Receiver<ChangeEvent>) {
        let _writer = self.lock();
        (self.current(), self.events_tx.subscribe())
    }

    /// Stored records that could not be loaded at startup and were not replaced since.
    pub fn invalid_records(&self) -> Vec<InvalidRecord> {
        self.lock()
            .invalid
            .iter()
            .map(|(key, error)| InvalidRecord {
                key: key.clone(),
                error: error.clone(),
            })
            .collect()
    }

    /// Whether the store takes writes.
    pub fn store_health(&self) -> StoreHealth {
        self.store.health()
    }

    /// Store writes that failed since startup.
    pub fn store_write_errors(&self) -> u64 {
        self.store.write_errors()
    }

    /// Auxiliary records (kept across restarts outside the policy generation) by key prefix.
    pub fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.store.aux_records(prefix)
    }

    /// Puts (`Some`) or deletes (`None`) auxiliary records durably.
    pub fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), StoreError> {
        self.store.write_aux(writes)
    }

    /// Puts a record that lives as long as this process (see [`PolicyStore::put_ephemeral`]).
    pub fn put_ephemeral(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.store.put_ephemeral(key, value)
    }

    /// Every live ephemeral record under `prefix`, of every process sharing the store.
    pub fn ephemeral_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.store.ephemeral_records(prefix)
    }

    /// Reopens the store after a failed write (e.g. once disk space is back).
    pub fn recover_store(&self) -> Result<(), StoreError> {
        let _writer = self.lock();
        self.store.recover()
    }

    /// Counters for the metrics endpoint.
    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    /// Validates every document, then creates or updates them all in one durable
    /// transaction. Documents whose content is unchanged are reported `Unchanged` and do not
    /// bump the generation; if nothing changed nothing is written or published. With
    /// `dry_run` the outcomes are computed but nothing is written.
    pub fn apply(&self, docs: Vec<Value>, dry_run: bool) -> Result<Vec<ApplyOutcome>, ApplyError> {
        let options = ApplyOptions {
            dry_run,
            ..ApplyOptions::default()
        };
        self.apply_with(docs, &options)
    }

    /// [`PolicyRegistry::apply`] with who applies, the revisions the documents were based on
    /// (checked under the writer lock: a policy that moved on refuses the whole apply with
    /// [`ApplyError::Conflict`], unless `force`) and, for a rollback, the revision restored.
    /// Every changed policy gets a new revision, written with it in one transaction.
    pub fn apply_with(
        &self,
        docs: Vec<Value>,
        options: &ApplyOptions,
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        let result = self.with_retries(
            || self.apply_inner(&docs, options),
            |e| matches!(e, ApplyError::Store(StoreError::Stale { .. })),
        );
        match &result {
            Err(e) if e.is_invalid_input() => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Err(ApplyError::Conflict(_) | ApplyError::Store(StoreError::Conflict { .. })) => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        result
    }

    fn apply_inner(
        &self,
        docs: &[Value],
        options: &ApplyOptions,
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        let parsed = validate_all(docs)?;
        let mut writer = self.lock();
        let current = self.current();
        if !options.force {
            check_expected(&current, &parsed, &options.expected_revisions)?;
        }
        let generation = current.generation + 1;
        let (mut outcomes, mut changed) = plan(&current, parsed, generation);
        if options.dry_run {
            return Ok(outcomes);
        }
        if !changed.is_empty() {
            let history: Vec<HistoryChange> = outcomes
                .iter()
                .filter(|o| o.outcome != Outcome::Unchanged)
                .map(|o| match (options.rollback_of, o.outcome) {
                    (Some(_), _) => HistoryChange::RolledBack,
                    (None, Outcome::Created) => HistoryChange::Created,
                    (None, _) => HistoryChange::Updated,
                })
                .collect();
            let changes: Vec<PolicyChange<'_>> = changed
                .iter()
                .zip(&history)
                .map(|(p, change)| PolicyChange {
                    kind: p.kind(),
                    name: p.name(),
                    policy: Some(p),
                    change: *change,
                    deleted_version: "",
                    rollback_of: options.rollback_of,
                    // A record that failed to load is replaced whatever its revision.
                    base_revision: match current.get(p.kind(), p.name()) {
                        Some(stored) => Some(stored.revision),
                        None if writer.invalid.contains_key(&store::key(p.kind(), p.name())) => {
                            None
                        }
                        None => Some(0),
                    },
                })
                .collect();
            let revisions = self.commit(generation, &changes, &options.actor)?;
            drop(changes);
            // `changed` holds the documents whose outcome is not Unchanged, in order.
            let changed_outcomes = outcomes
                .iter_mut()
                .filter(|o| o.outcome != Outcome::Unchanged);
            for ((p, o), revision) in changed.iter_mut().zip(changed_outcomes).zip(revisions) {
                p.revision = revision;
                o.revision = revision;
            }
            for p in &changed {
                writer.invalid.remove(&store::key(p.kind(), p.name()));
            }
            self.publish(merged(&current, &changed, generation));
            for (o, p) in outcomes
                .iter()
                .filter(|o| o.outcome != Outcome::Unchanged)
                .zip(&changed)
            {
                let change = match o.outcome {
                    Outcome::Created => ChangeType::Created,
                    _ => ChangeType::Updated,
                };
                self.emit(p, change, &p.version, generation);
            }
        }
        for o in &outcomes {
            self.stats
                .counter(o.outcome)
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcomes)
    }

    /// Validates `docs` as [`PolicyRegistry::apply`] does and returns, without storing or
    /// publishing anything, the outcomes and the policy set an apply would publish, with
    /// the current set it is compared against.
    pub fn preview(&self, docs: &[Value]) -> Result<Preview, ApplyError> {
        let parsed = validate_all(docs)?;
        let current = {
            let _writer = self.lock();
            self.current()
        };
        let generation = current.generation + 1;
        let (outcomes, changed) = plan(&current, parsed, generation);
        let next = if changed.is_empty() {
            current.clone()
        } else {
            Arc::new(merged(&current, &changed, generation))
        };
        Ok(Preview {
            current,
            next,
            outcomes,
        })
    }

    /// Deletes one policy (or a stored record that failed to load) in one durable
    /// transaction. Returns the new store generation.
    pub fn delete(&self, kind: Kind, name: &str) -> Result<u64, DeleteError> {
        self.delete_as(kind, name, ANONYMOUS)
    }

    /// [`PolicyRegistry::delete`] by `actor`, recorded in the policy's history (a deleted
    /// policy keeps its history, so it can be rolled back to life).
    pub fn delete_as(&self, kind: Kind, name: &str, actor: &str) -> Result<u64, DeleteError> {
        self.with_retries(
            || self.delete_once(kind, name, actor),
            |e| matches!(e, DeleteError::Store(StoreError::Stale { .. })),
        )
    }

    fn delete_once(&self, kind: Kind, name: &str, actor: &str) -> Result<u64, DeleteError> {
        let mut writer = self.lock();
        let current = self.current();
        let key = store::key(kind, name);
        let (version, base_revision) = match current.get(kind, name) {
            Some(p) => (p.version.clone(), Some(p.revision)),
            // A record that failed to load: its revision is not known here.
            None if writer.invalid.contains_key(&key) => (String::new(), None),
            None => {
                return Err(DeleteError::NotFound {
                    kind,
                    name: name.to_string(),
                })
            }
        };
        let generation = current.generation + 1;
        let change = PolicyChange {
            kind,
            name,
            policy: None,
            change: HistoryChange::Deleted,
            deleted_version: &version,
            rollback_of: None,
            base_revision,
        };
        let revision = self.commit(generation, &[change], actor)?;
        writer.invalid.remove(&key);
        let policies = current
            .policies
            .iter()
            .filter(|p| !(p.kind() == kind && p.name() == name))
            .cloned()
            .collect();
        self.publish(PolicySet {
            generation,
            policies,
            halts: current.halts.clone(),
        });
        let _ = self.events_tx.send(ChangeEvent {
            kind,
            name: name.to_string(),
            change: ChangeType::Deleted,
            version,
            generation,
            revision: revision.first().copied().unwrap_or_default(),
        });
        Ok(generation)
    }

    /// Puts `halt` in force (replacing a halt of the same name) durably, then publishes it:
    /// the xDS side recomposes the halted kinds for the selected proxies.
    pub fn halt(&self, halt: Halt) -> Result<(), HaltWriteError> {
        self.catch_up()?;
        let _writer = self.lock();
        let current = self.current();
        let mut halts: Vec<Halt> = current
            .halts
            .iter()
            .filter(|h| h.name != halt.name)
            .cloned()
            .collect();
        if halts.len() >= MAX_HALTS {
            return Err(HaltWriteError::Invalid(HaltError::TooMany));
        }
        let json = serde_json::to_string(&halt).map_err(|source| StoreError::Encode {
            key: halt.key(),
            source,
        })?;
        self.store.write_aux(&[(halt.key(), Some(json))])?;
        tracing::warn!(name = %halt.name, kinds = ?halt.kinds, selector = ?halt.selector, reason = %halt.reason, "halt in force");
        halts.push(halt);
        halts.sort_by(|a, b| a.name.cmp(&b.name));
        self.publish(PolicySet {
            halts,
            ..(*current).clone()
        });
        Ok(())
    }

    /// Lifts the halt named `name`, or every halt when `None`; returns the names lifted.
    pub fn resume(&self, name: Option<&str>) -> Result<Vec<String>, StoreError> {
        self.catch_up()?;
        let _writer = self.lock();
        let current = self.current();
        let (lifted, kept): (Vec<Halt>, Vec<Halt>) = current
            .halts
            .iter()
            .cloned()
            .partition(|h| name.is_none_or(|n| h.name == n));
        if lifted.is_empty() {
            return Ok(Vec::new());
        }
        let writes: Vec<_> = lifted.iter().map(|h| (h.key(), None)).collect();
        self.store.write_aux(&writes)?;
        let names: Vec<String> = lifted.into_iter().map(|h| h.name).collect();
        tracing::warn!(halts = ?names, "halt lifted");
        self.publish(PolicySet {
            halts: kept,
            ..(*current).clone()
        });
        Ok(names)
    }

    /// The revisions kept for one policy, oldest first; empty if it never existed. A
    /// deleted policy keeps its history.
    pub fn history(&self, kind: Kind, name: &str) -> Result<Vec<Revision>, StoreError> {
        self.store.history(kind, name)
    }

    /// One kept revision of a policy.
    pub fn revision(
        &self,
        kind: Kind,
        name: &str,
        revision: u64,
    ) -> Result<Option<Revision>, StoreError> {
        Ok(self
            .history(kind, name)?
            .into_iter()
            .find(|r| r.revision == revision))
    }

    /// The revision a rollback restores: `to`, or by default the newest revision older than
    /// the newest one that holds content (so the default undoes the last change, and
    /// restores a deleted policy).
    pub fn rollback_target(
        &self,
        kind: Kind,
        name: &str,
        to: Option<u64>,
    ) -> Result<Revision, RollbackError> {
        let history = self.history(kind, name)?;
        let Some(newest) = history.last() else {
            return Err(RollbackError::NoHistory {
                kind,
                name: name.to_string(),
            });
        };
        let target = match to {
            Some(revision) => history
                .iter()
                .find(|r| r.revision == revision)
                .ok_or_else(|| RollbackError::NotKept {
                    kind,
                    name: name.to_string(),
                    revision,
                    kept: match (history.first(), history.last()) {
                        (Some(a), Some(b)) => format!("{} to {}", a.revision, b.revision),
                        _ => "none".into(),
                    },
                })?,
            None => history
                .iter()
                .rev()
                .find(|r| r.revision < newest.revision && r.document.is_some())
                .ok_or_else(|| RollbackError::NothingBefore {
                    kind,
                    name: name.to_string(),
                    current: newest.revision,
                })?,
        };
        if target.document.is_none() {
            return Err(RollbackError::Deletion {
                kind,
                name: name.to_string(),
                revision: target.revision,
            });
        }
        Ok(target.clone())
    }

    /// Whether other processes write the store too (replicas on etcd).
    pub fn is_shared(&self) -> bool {
        self.store.changes().is_some()
    }

    /// For a shared store: a receiver that changes whenever the store may hold changes
    /// this process has not loaded; call [`PolicyRegistry::refresh`] then.
    pub fn store_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.store.changes()
    }

    /// Reloads the store and publishes what other writers (replicas sharing an etcd store)
    /// changed: the policy set, with one change event per policy created, updated or
    /// deleted, and the halts. Events are derived from the difference between the set
    /// served and the set stored, so a change is never announced twice or skipped, however
    /// often this runs. Returns whether anything changed.
    pub fn refresh(&self) -> Result<bool, StoreError> {
        let mut writer = self.lock();
        let loaded = self.store.load()?;
        let halts = load_halts(self.store.as_ref())?;
        let current = self.current();
        if loaded.generation == current.generation && halts == current.halts {
            return Ok(false);
        }
        if loaded.generation < current.generation {
            tracing::warn!(
                store = %self.store.location(),
                stored = loaded.generation,
                served = current.generation,
                "the store is at an older generation than the one served (restored from a backup?); serving what it holds"
            );
        }
        let mut policies = loaded.policies;
        sort(&mut policies);
        writer.invalid = loaded
            .invalid
            .into_iter()
            .map(|r| (r.key, r.error))
            .collect();
        let next = PolicySet {
            generation: loaded.generation,
            policies,
            halts,
        };
        let mut events = Vec::new();
        for p in &next.policies {
            match current.get(p.kind(), p.name()) {
                None => events.push((p.clone(), ChangeType::Created, p.version.clone())),
                Some(old) if old.version != p.version || old.revision != p.revision => {
                    events.push((p.clone(), ChangeType::Updated, p.version.clone()))
                }
                Some(_) => {}
            }
        }
        let deleted: Vec<&StoredPolicy> = current
            .policies
            .iter()
            .filter(|p| next.get(p.kind(), p.name()).is_none())
            .collect();
        for p in &deleted {
            let _ = self.events_tx.send(ChangeEvent {
                kind: p.kind(),
                name: p.name().to_string(),
                change: ChangeType::Deleted,
                version: p.version.clone(),
                generation: next.generation,
                revision: p.revision,
            });
        }
        let generation = next.generation;
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            generation,
            changed = events.len(),
            deleted = deleted.len(),
            "loaded changes made by another replica"
        );
        self.publish(next);
        for (p, change, version) in &events {
            self.emit(p, *change, version, generation);
        }
        Ok(true)
    }

    /// With a shared store, loads what other replicas committed before a write, so the
    /// write is checked against (and based on) the store's latest state.
    fn catch_up(&self) -> Result<(), StoreError> {
        if self.is_shared() {
            self.refresh()?;
        }
        Ok(())
    }

    /// Runs `write` after [`Self::catch_up`]; when it fails because another replica
    /// committed in between (`is_stale`), catches up and runs it again, a few times.
    fn with_retries<T, E: From<StoreError>>(
        &self,
        mut write: impl FnMut() -> Result<T, E>,
        is_stale: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.catch_up()?;
            match write() {
                Err(e) if is_stale(&e) && attempt < MAX_STALE_RETRIES => {
                    self.stats.stale_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(attempt, "another replica committed first; retrying");
                }
                result => return result,
            }
        }
    }

    fn commit(
        &self,
        generation: u64,
        changes: &[PolicyChange<'_>],
        actor: &str,
    ) -> Result<Vec<u64>, StoreError> {
        self.store.commit(&Commit {
            generation,
            changes,
            actor,
            at_unix_ms: unix_ms(),
            history_limit: self.history_limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave the store half-written (transactions
        // are atomic), so the state behind a poisoned lock is still consistent.
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, set: PolicySet) {
        self.set_tx.send_replace(Arc::new(set));
    }

    fn emit(&self, p: &StoredPolicy, change: ChangeType, version: &str, generation: u64) {
        // No receivers is fine: nobody is watching.
        let _ = self.events_tx.send(ChangeEvent {
            kind: p.kind(),
            name: p.name().to_string(),
            change,
            version: version.to_string(),
            generation,
            revision: p.revision,
        });
    }
}

/// What an apply would do: see [`PolicyRegistry::preview`].
#[derive(Debug, Clone)]
pub struct Preview {
    pub current: SharedPolicySet,
    pub next: SharedPolicySet,
    pub outcomes: Vec<ApplyOutcome>,
}

/// The outcome of each document against `current`, and the documents that change as they
/// would be stored at `generation`.
fn plan(
    current: &PolicySet,
    parsed: Vec<PolicyDocument>,
    generation: u64,
) -> (Vec<ApplyOutcome>, Vec<StoredPolicy>) {
    let now = unix_ms();
    let mut outcomes = Vec::with_capacity(parsed.len());
    let mut changed = Vec::new();
    for doc in parsed {
        let version = content_version(&doc);
        let outcome = match current.get(doc.kind(), doc.name().as_str()) {
            None => Outcome::Created,
            Some(p) if p.version == version => Outcome::Unchanged,
            Some(_) => Outcome::Updated,
        };
        outcomes.push(ApplyOutcome {
            kind: doc.kind(),
            name: doc.name().as_str().to_string(),
            outcome,
            version: version.clone(),
            revision: match outcome {
                Outcome::Unchanged => current
                    .get(doc.kind(), doc.name().as_str())
                    .map_or(0, |p| p.revision),
                _ => 0,
            },
        });
        if outcome != Outcome::Unchanged {
            changed.push(StoredPolicy {
                doc,
                version,
                generation,
                updated_unix_ms: now,
                revision: 0,
            });
        }
    }
    (outcomes, changed)
}

/// `current` with `changed` created or replaced, at `generation`.
fn merged(current: &PolicySet, changed: &[StoredPolicy], generation: u64) -> PolicySet {
    let mut policies = current.policies.clone();
    for p in changed {
        match policies
            .iter_mut()
            .find(|q| q.kind() == p.kind() && q.name() == p.name())
        {
            Some(slot) => *slot = p.clone(),
            None => policies.push(p.clone()),
        }
    }
    sort(&mut policies);
    PolicySet {
        generation,
        policies,
        halts: current.halts.clone(),
    }
}

/// Why a halt was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum HaltWriteError {
    #[error(transparent)]
    Invalid(#[from] HaltError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The documents whose policy is not at the revision they were based on.
fn check_expected(
    current: &PolicySet,
    parsed: &[PolicyDocument],
    expected: &[Option<u64>],
) -> Result<(), ApplyError> {
    let conflicts: Vec<Conflict> = parsed
        .iter()
        .zip(expected)
        .filter_map(|(doc, expected)| {
            let expected = (*expected)?;
            let now = current
                .get(doc.kind(), doc.name().as_str())
                .map(|p| p.revision);
            (now != Some(expected)).then(|| Conflict {
                kind: doc.kind(),
                name: doc.name().as_str().to_string(),
                expected,
                current: now,
            })
        })
        .collect();
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Conflict(conflicts))
    }
}

/// Reads the stored halts, sorted by name. An unreadable halt record makes the store
/// refused: serving without it would silently resume what it suspended.
fn load_halts(store: &dyn PolicyStore) -> Result<Vec<Halt>, StoreError> {
    let mut halts = Vec::new();
    for (key, json) in store.aux_records(HALT_PREFIX)? {
        let halt: Halt = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
            path: store.location().into(),
            detail: format!("halt record {key:?} is unreadable: {e}"),
        })?;
        halts.push(halt);
    }
    halts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(halts)
}

/// Validates every document and rejects repeated (kind, name) pairs.
fn validate_all(docs: &[Value]) -> Result<Vec<PolicyDocument>, ApplyError> {
    if docs.is_empty() {
        return Err(ApplyError::Empty);
    }
    let mut seen: HashMap<(Kind, String), usize> = HashMap::new();
    let mut parsed = Vec::with_capacity(docs.len());
    for (i, value) in docs.iter().enumerate() {
        let index = i + 1;
        let doc = PolicyDocument::from_value(value).map_err(|error| ApplyError::Invalid {
            doc: DocumentRef::of(index, value),
            error,
        })?;
        let id = (doc.kind(), doc.name().as_str().to_string());
        if let Some(&first) = seen.get(&id) {
            return Err(ApplyError::Duplicate {
                doc: DocumentRef::of(index, value),
                first,
                kind: id.0,
                name: id.1,
            });
        }
        seen.insert(id, index);
        parsed.push(doc);
    }
    Ok(parsed)
}

fn sort(policies: &mut [StoredPolicy]) {
    policies.sort_by(|a, b| (a.kind(), a.name()).cmp(&(b.kind(), b.name())));
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl crate::xds::AuxStore for PolicyRegistry {
    fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, String> {
        PolicyRegistry::aux_records(self, prefix).map_err(|e| e.to_string())
    }

    fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), String> {
        PolicyRegistry::write_aux(self, writes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trace(name: &str, sampling: Value) -> Value {
        json!({
            "apiVersion": meshwarden_common::API_VERSION,
            "kind": "TracePolicy",
            "metadata": {"name": name},
            "spec": {"samplingPercentage": sampling},
        })
    }

    fn registry() -> (tempfile::TempDir, PolicyRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let reg = PolicyRegistry::open(dir.path()).unwrap();
        (dir, reg)
    }

    fn outcomes(r: &[ApplyOutcome]) -> Vec<(&str, Outcome)> {
        r.iter().map(|o| (o.name.as_str(), o.outcome)).collect()
    }

    #[test]
    fn apply_creates_updates_and_is_idempotent() {
        let (_dir, reg) = registry();
        let mut sets = reg.subscribe();
        let r = reg
            .apply(vec![trace("a", json!(10)), trace("b", json!(20))], false)
            .unwrap();
        assert_eq!(
            outcomes(&r),
            [("a", Outcome::Created), ("b", Outcome::Created)]
        );
        assert!(sets.has_changed().unwrap());
        assert_eq!(sets.borrow_and_update().generation, 1);

        let r = reg
            .apply(vec![trace("a", json!(10)), trace("b", json!(30))], false)
            .unwrap();
        assert_eq!(
            outcomes(&r),
            [("a", Outcome::Unchanged), ("b", Outcome::Updated)]
        );
        let set = reg.current();
        assert_eq!(set.generation, 2);
        assert_eq!(set.get(Kind::TracePolicy, "a").unwrap().generation, 1);
        assert_eq!(set.get(Kind::TracePolicy, "b").unwrap().generation, 2);
        sets.borrow_and_update();

        let r = reg
            .apply(vec![trace("a", json!(10)), trace("b", json!(30))], false)
            .unwrap();
        assert_eq!(
            outcomes(&r),
            [("a", Outcome::Unchanged), ("b", Outcome::Unchanged)]
        );
        assert_eq!(
            reg.current().generation,
            2,
            "no-op apply does not bump the generation"
        );
        assert!(
            !sets.has_changed().unwrap(),
            "no-op apply publishes nothing"
        );
        assert_eq!(reg.stats().applies(Outcome::Unchanged), 3);
    }

    #[test]
    fn invalid_document_rejects_the_whole_apply() {
        let (_dir, reg) = registry();
        reg.apply(vec![trace("keep", json!(5))], false).unwrap();
        let err = reg
            .apply(
                vec![trace("keep", json!(6)), trace("checkout", json!(150))],
                false,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "document 2 (TracePolicy \"checkout\"): spec.samplingPercentage: must be a number from 0 to 100, got 150"
        );
        let set = reg.current();
        assert_eq!(set.generation, 1);
        assert_eq!(set.policies.len(), 1);
        assert_eq!(
            set.policies[0].doc.to_value()["spec"]["samplingPercentage"].as_f64(),
            Some(5.0)
        );
        assert_eq!(reg.stats().rejections(), 1);
    }

    #[test]
    fn errors_name_what_is_known_of_the_document() {
        let (_dir, reg) = registry();
        let err = reg
            .apply(vec![json!({"kind": "TracePolicy"})], false)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("document 1 (TracePolicy): "),
            "{err}"
        );
        let err = reg.apply(vec![json!(42)], false).unwrap_err();
        assert!(err.to_string().starts_with("document 1: "), "{err}");
        assert!(matches!(reg.apply(vec![], false), Err(ApplyError::Empty)));
    }

    #[test]
    fn duplicates_within_one_request_are_rejected() {
        let (_dir, reg) = registry();
        let err = reg
            .apply(
                vec![
                    trace("a", json!(1)),
                    trace("b", json!(1)),
                    trace("a", json!(2)),
                ],
                false,
            )
            .unwrap_err();
        assert!(
            matches!(err, ApplyError::Duplicate { first: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("document 3 (TracePolicy \"a\")"),
            "{err}"
        );
        assert!(reg.current().policies.is_empty());
    }

    #[test]
    fn dry_run_reports_without_writing() {
        let (_dir, reg) = registry();
        let r = reg.apply(vec![trace("a", json!(1))], true).unwrap();
        assert_eq!(outcomes(&r), [("a", Outcome::Created)]);
        assert_eq!(reg.current().generation, 0);
        assert!(reg.current().policies.is_empty());
    }

    #[test]
    fn preview_shows_the_set_an_apply_would_publish() {
        let (_dir, reg) = registry();
        reg.apply(vec![trace("a", json!(1)), trace("b", json!(1))], false)
            .unwrap();
        let sets = reg.subscribe();
        let p = reg
            .preview(&[
                trace("a", json!(1)),
                trace("b", json!(2)),
                trace("c", json!(3)),
            ])
            .unwrap();
        assert_eq!(
            outcomes(&p.outcomes),
            [
                ("a", Outcome::Unchanged),
                ("b", Outcome::Updated),
                ("c", Outcome::Created)
            ]
        );
        assert_eq!((p.current.generation, p.next.generation), (1, 2));
        let names: Vec<_> = p.next.policies.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(!sets.has_changed().unwrap(), "a preview publishes nothing");
        assert_eq!(reg.current().policies.len(), 2);
        let same = reg.preview(&[trace("a", json!(1))]).unwrap();
        assert!(Arc::ptr_eq(&same.current, &same.next));
    }

    #[test]
    fn delete_removes_and_reports_missing() {
        let (dir, reg) = registry();
        reg.apply(vec![trace("a", json!(1)), trace("b", json!(1))], false)
            .unwrap();
        let mut events = reg.subscribe_changes();
        assert_eq!(reg.delete(Kind::TracePolicy, "a").unwrap(), 2);
        let ev = events.try_recv().unwrap();
        assert_eq!(
            (ev.name.as_str(), ev.change, ev.generation),
            ("a", ChangeType::Deleted, 2)
        );
        assert_eq!(ev.revision, 2, "the deletion is the policy's revision 2");
        assert!(matches!(
            reg.delete(Kind::TracePolicy, "a"),
            Err(DeleteError::NotFound { .. })
        ));
        assert!(matches!(
            reg.delete(Kind::FaultPolicy, "b"),
            Err(DeleteError::NotFound { .. })
        ));
        drop(reg);
        let reg = PolicyRegistry::open(dir.path()).unwrap();
        let names: Vec<_> = reg
            .current()
            .policies
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(reg.current().generation, 2);
    }

    #[test]
    fn halts_are_published_survive_reopen_and_keep_across_applies() {
        let (dir, reg) = registry();
        let sets = reg.subscribe();
        let halt = |name: &str| {
            Halt::new(
                name,
                &[],
                meshwarden_common::Selector::default(),
                "drill".into(),
                1,
            )
            .unwrap()
        };
        reg.halt(halt("b")).unwrap();
        reg.halt(halt("a")).unwrap();
        assert!(sets.has_changed().unwrap());
        reg.apply(vec![trace("t", json!(1))], false).unwrap();
        let names = |reg: &PolicyRegistry| -> Vec<String> {
            reg.current().halts.iter().map(|h| h.name.clone()).collect()
        };
        assert_eq!(names(&reg), ["a", "b"], "an apply keeps the halts");
        assert_eq!(
            reg.current().generation,
            1,
            "halts do not bump the generation"
        );
        drop(reg);
        let reg = PolicyRegistry::open(dir.path()).unwrap();
        assert_eq!(names(&reg), ["a", "b"]);
        assert_eq!(reg.resume(Some("a")).unwrap(), ["a"]);
        assert!(reg.resume(Some("a")).unwrap().is_empty());
        assert_eq!(reg.resume(None).unwrap(), ["b"]);
        drop(reg);
        let reg = PolicyRegistry::open(dir.path()).unwrap();
        assert!(reg.current().halts.is_empty());
    }

    #[test]
    fn events_follow_commits_in_order() {
        let (_dir, reg) = registry();
        let (set, mut events) = reg.snapshot_and_subscribe();
        assert_eq!(set.generation, 0);
        reg.apply(vec![trace("a", json!(1))], false).unwrap();
        reg.apply(vec![trace("a", json!(2)), trace("b", json!(2))], false)
            .unwrap();
        let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| (e.name, e.change, e.generation))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_string(), ChangeType::Created, 1),
                ("a".to_string(), ChangeType::Updated, 2),
                ("b".to_string(), ChangeType::Created, 2),
            ]
        );
    }

    /// One embedded store shared by two registries in this process, standing in for
    /// replicas on etcd: it says it is shared, so the registries catch up before writes.
    #[derive(Debug, Clone)]
    struct SharedStore(Arc<Store>, watch::Sender<u64>);

    impl PolicyStore for SharedStore {
        fn location(&self) -> String {
            self.0.location()
        }
        fn load(&self) -> Result<store::Loaded, StoreError> {
            PolicyStore::load(self.0.as_ref())
        }
        fn commit(&self, commit: &Commit<'_>) -> Result<Vec<u64>, StoreError> {
            PolicyStore::commit(self.0.as_ref(), commit)
        }
        fn history(&self, kind: Kind, name: &str) -> Result<Vec<Revision>, StoreError> {
            PolicyStore::history(self.0.as_ref(), kind, name)
        }
        fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
            self.0.aux_records(prefix)
        }
        fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), StoreError> {
            self.0.write_aux(writes)
        }
        fn health(&self) -> StoreHealth {
            self.0.health()
        }
        fn write_errors(&self) -> u64 {
            self.0.write_errors()
        }
        fn recover(&self) -> Result<(), StoreError> {
            self.0.recover()
        }
        fn changes(&self) -> Option<watch::Receiver<u64>> {
            Some(self.1.subscribe())
        }
    }

    /// Two registries ("replicas") on one shared store.
    fn replicas() -> (tempfile::TempDir, PolicyRegistry, PolicyRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedStore(
            Arc::new(Store::open(dir.path()).unwrap()),
            watch::channel(0).0,
        );
        let a = PolicyRegistry::from_store(shared.clone()).unwrap();
        let b = PolicyRegistry::from_store(shared).unwrap();
        (dir, a, b)
    }

    #[test]
    fn a_replica_refresh_publishes_the_difference_once() {
        let (_dir, a, b) = replicas();
        let (_, mut events) = b.snapshot_and_subscribe();
        a.apply(vec![trace("x", json!(1)), trace("y", json!(1))], false)
            .unwrap();
        a.apply(vec![trace("x", json!(2))], false).unwrap();
        assert!(b.refresh().unwrap());
        assert!(!b.refresh().unwrap(), "nothing new: nothing published");
        a.delete(Kind::TracePolicy, "y").unwrap();
        assert!(b.refresh().unwrap());
        let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| (e.name, e.change, e.generation, e.revision))
            .collect();
        // The two changes to x collapse into one update to the stored state.
        assert_eq!(
            got,
            [
                ("x".to_string(), ChangeType::Created, 2, 2),
                ("y".to_string(), ChangeType::Created, 2, 1),
                ("y".to_string(), ChangeType::Deleted, 3, 1),
            ]
        );
        assert_eq!(b.current().generation, 3);
        assert_eq!(sampling(&b, "x"), Some(2.0));
        // Halts written on one replica reach the other.
        let halt = Halt::new(
            "freeze",
            &[],
            meshwarden_common::Selector::default(),
            "drill".into(),
            1,
        )
        .unwrap();
        a.halt(halt).unwrap();
        b.refresh().unwrap();
        assert_eq!(b.current().halts.len(), 1);
    }

    #[test]
    fn a_replica_behind_catches_up_before_writing_and_still_detects_conflicts() {
        let (_dir, a, b) = replicas();
        a.apply(vec![trace("x", json!(1))], false).unwrap();
        // b has not refreshed: its write catches up first (generation 2, not a stale 1),
        // and is based on the revision a wrote.
        let out = b.apply(vec![trace("x", json!(2))], false).unwrap();
        assert_eq!((out[0].outcome, out[0].revision), (Outcome::Updated, 2));
        assert_eq!(b.current().generation, 2);
        // A copy based on revision 1 is refused on either replica.
        for reg in [&a, &b] {
            let options = ApplyOptions {
                expected_revisions: vec![Some(1)],
                ..ApplyOptions::default()
            };
            let err = reg
                .apply_with(vec![trace("x", json!(3))], &options)
                .unwrap_err();
            assert!(matches!(err, ApplyError::Conflict(_)), "{err}");
        }
        a.refresh().unwrap();
        assert_eq!(sampling(&a, "x"), Some(2.0));
    }

    fn sampling(reg: &PolicyRegistry, name: &str) -> Option<f64> {
        reg.current()
            .get(Kind::TracePolicy, name)
            .and_then(|p| p.doc.to_value()["spec"]["samplingPercentage"].as_f64())
    }

    /// Rolls `name` back through the registry as the API does: the target, then an apply.
    fn rollback(reg: &PolicyRegistry, name: &str, to: Option<u64>) -> Vec<ApplyOutcome> {
        let target = reg.rollback_target(Kind::TracePolicy, name, to).unwrap();
        let options = ApplyOptions {
            rollback_of: Some(target.revision),
            actor: "ops".into(),
            ..ApplyOptions::default()
        };
        reg.apply_with(vec![target.document.unwrap()], &options)
            .unwrap()
    }

    #[test]
    fn history_is_bounded_and_rollback_restores_content() {
        let dir = tempfile::tempdir().unwrap();
        let reg = PolicyRegistry::open(dir.path())
            .unwrap()
            .with_history_limit(3);
        for pct in 1..=5 {
            let r = reg.apply(vec![trace("a", json!(pct))], false).unwrap();
            assert_eq!(r[0].revision, pct as u64);
        }
        let kept: Vec<u64> = reg
            .history(Kind::TracePolicy, "a")
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(kept, [3, 4, 5]);
        let r = rollback(&reg, "a", None);
        assert_eq!((r[0].outcome, r[0].revision), (Outcome::Updated, 6));
        assert_eq!(sampling(&reg, "a"), Some(4.0));
        let newest = reg.history(Kind::TracePolicy, "a").unwrap().pop().unwrap();
        assert_eq!(
            (newest.change, newest.rollback_of, newest.actor.as_str()),
            (HistoryChange::RolledBack, Some(4), "ops")
        );
        assert!(matches!(
            reg.rollback_target(Kind::TracePolicy, "a", Some(1)),
            Err(RollbackError::NotKept { revision: 1, .. })
        ));
        assert!(matches!(
            reg.rollback_target(Kind::TracePolicy, "nope", None),
            Err(RollbackError::NoHistory { .. })
        ));
        // Reopened: the rollback and its revision were committed together.
        drop(reg);
        let reg = PolicyRegistry::open(dir.path()).unwrap();
        assert_eq!(
            reg.current().get(Kind::TracePolicy, "a").unwrap().revision,
            6
        );
        assert_eq!(
            reg.history(Kind::TracePolicy, "a")
                .unwrap()
                .last()
                .unwrap()
                .revision,
            6
        );
    }

    #[test]
    fn a_deleted_policy_keeps_its_history_and_rolls_back_to_life() {
        let (_dir, reg) = registry();
        reg.apply(vec![trace("a", json!(7))], false).unwrap();
        reg.delete_as(Kind::TracePolicy, "a", "alice").unwrap();
        assert!(reg.current().get(Kind::TracePolicy, "a").is_none());
        let history = reg.history(Kind::TracePolicy, "a").unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(
            (history[1].change, history[1].actor.as_str()),
            (HistoryChange::Deleted, "alice")
        );
        assert!(matches!(
            reg.rollback_target(Kind::TracePolicy, "a", Some(2)),
            Err(RollbackError::Deletion { revision: 2, .. })
        ));
        let r = rollback(&reg, "a", None);
        assert_eq!((r[0].outcome, r[0].revision), (Outcome::Created, 3));
        assert_eq!(sampling(&reg, "a"), Some(7.0));
        // Re-created by an apply, the numbering continues.
        reg.delete(Kind::TracePolicy, "a").unwrap();
        let r = reg.apply(vec![trace("a", json!(8))], false).unwrap();
        assert_eq!(r[0].revision, 5);
    }

    #[test]
    fn an_apply_based_on_a_stale_revision_conflicts_and_changes_nothing() {
        let (_dir, reg) = registry();
        reg.apply(vec![trace("a", json!(1)), trace("b", json!(1))], false)
            .unwrap();
        reg.apply(vec![trace("b", json!(2))], false).unwrap();
        let based = |force| ApplyOptions {
            expected_revisions: vec![Some(1), Some(1)],
            force,
            ..ApplyOptions::default()
        };
        let docs = || vec![trace("a", json!(3)), trace("b", json!(3))];
        let err = reg.apply_with(docs(), &based(false)).unwrap_err();
        let ApplyError::Conflict(conflicts) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            conflicts,
            &[Conflict {
                kind: Kind::TracePolicy,
                name: "b".into(),
                expected: 1,
                current: Some(2)
            }]
        );
        assert!(!err.is_invalid_input());
        assert_eq!(reg.stats().conflicts(), 1);
        assert_eq!(
            (sampling(&reg, "a"), reg.current().generation),
            (Some(1.0), 2)
        );
        let r = reg.apply_with(docs(), &based(true)).unwrap();
        assert_eq!((r[0].revision, r[1].revision), (2, 3));
    }

    #[test]
    fn racing_applies_based_on_one_revision_have_exactly_one_winner() {
        let (_dir, reg) = registry();
        let reg = Arc::new(reg);
        reg.apply(vec![trace("race", json!(0))], false).unwrap();
        for round in 0..100u64 {
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let racers: Vec<_> = [1, 2]
                .map(|n| {
                    let (reg, barrier) = (reg.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let options = ApplyOptions {
                            expected_revisions: vec![Some(round + 1)],
                            ..ApplyOptions::default()
                        };
                        barrier.wait();
                        reg.apply_with(vec![trace("race", json!(n * 10 + round % 10))], &options)
                    })
                })
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            let won: Vec<_> = racers.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(won.len(), 1, "round {round}: {racers:?}");
            assert!(racers
                .iter()
                .any(|r| matches!(r, Err(ApplyError::Conflict(_)))));
            assert_eq!(won[0][0].revision, round + 2);
            assert_eq!(
                reg.current()
                    .get(Kind::TracePolicy, "race")
                    .unwrap()
                    .version,
                won[0][0].version
            );
        }
    }
}
