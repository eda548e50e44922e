//! The embedded, crash-safe policy store: one redb file in the data directory.
//!
//! Table `policies` maps `"<Kind>/<name>"` to a JSON record
//! `{"document", "version", "generation", "updated_unix_ms", "revision", "checksum"}`; table
//! `history` maps `"<Kind>/<name>\n<revision, 20 digits>"` to a JSON [`Revision`] (with its
//! own checksum); table `meta` holds the store generation. Every commit
//! ([`PolicyStore::commit`]) writes the records, their revisions and the generation in one
//! transaction with immediate durability, so once it returns the change and its history
//! survive a crash or `kill -9`, and neither exists without the other.
//!
//! The store checks itself, because serving from a damaged store would push a wrong (or
//! empty) configuration to every proxy:
//! - opening runs redb's integrity check, and a panic inside redb on damaged pages is caught
//!   and reported as corruption;
//! - every record carries a SHA-256 of its content, checked when it is read;
//! - a marker file beside the database (`meshwarden.redb.generation`) remembers the highest
//!   generation committed, so a database that is empty, replaced by an older copy or
//!   truncated to zero bytes is refused instead of being served as "no policies".
//!
//! An I/O error (a full disk) poisons a redb database until it is reopened; the store then
//! reports itself unhealthy and reopens the database before the next write (and whenever
//! [`Store::recover`] is called), so writes work again once space returns.

use crate::backend::records::{self, decode, encode, Decode};
use crate::backend::{Commit, PolicyStore, Revision};
use crate::policy_set::StoredPolicy;
use meshwarden_common::Kind;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

const POLICIES: TableDefinition<&str, &str> = TableDefinition::new("policies");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Revisions of every policy, `"<Kind>/<name>\n<revision:020>"` to JSON.
const HISTORY: TableDefinition<&str, &str> = TableDefinition::new("history");
/// Records other parts of the control plane keep across restarts (e.g. the xDS side's
/// memory of rejected configurations), key to JSON, outside the policy generation.
const AUX: TableDefinition<&str, &str> = TableDefinition::new("aux");
const GENERATION: &str = "generation";

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "meshwarden.redb";

/// Free space below which a store that failed a write stays failing.
const MIN_FREE_BYTES: u64 = 1024 * 1024;

/// Auxiliary record written to check that writes work again.
const PROBE_KEY: &str = "store-probe";

/// File beside the database holding the highest generation ever committed.
pub const GENERATION_MARKER: &str = "meshwarden.redb.generation";

/// A store failure. Writes that fail leave the store as it was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path} is already open in another meshwarden process")]
    InUse { path: PathBuf },
    #[error("store {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store record {key:?} cannot be encoded: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
    #[error("store {path} is damaged and will not be served: {detail}. Restore the data directory from a backup (or, to start with no policies on purpose, move it away).")]
    Corrupt { path: PathBuf, detail: String },
    #[error("store {path} cannot be written: {detail} (it is reopened before the next write)")]
    Unavailable { path: PathBuf, detail: String },
    /// A remote store (etcd) failed or did not answer in time. Nothing was written.
    #[error("store {location} is unreachable or failed: {detail}")]
    Remote { location: String, detail: String },
    /// The store's generation moved on since this writer read it: another replica
    /// committed first. Nothing was written; the writer reloads and tries again.
    #[error("store {location} is at generation {stored}, not {expected} as this writer expected: another replica wrote first")]
    Stale {
        location: String,
        stored: u64,
        expected: u64,
    },
    /// A change's base revision is not the stored one: another writer got there first.
    /// Nothing was written; the store stays healthy.
    #[error("conflict: {key} is at revision {found} in the store, not revision {expected} this change was based on; nothing was applied")]
    Conflict {
        key: String,
        expected: u64,
        found: u64,
    },
}

/// Whether the store can take writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    Healthy,
    /// The last write failed (and the database could not be reopened yet).
    Failing {
        error: String,
        since: SystemTime,
    },
}

/// A stored record that can no longer be served (unreadable, or its document fails today's
/// validation). It stays in the store untouched until it is overwritten or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    /// The record's key, `"<Kind>/<name>"`.
    pub key: String,
    /// Why it was not loaded.
    pub error: String,
}

/// Everything read from the store at startup.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Store generation: incremented by every committed change.
    pub generation: u64,
    /// Valid policies, in key order.
    pub policies: Vec<StoredPolicy>,
    /// Records that were not loaded.
    pub invalid: Vec<InvalidRecord>,
}

/// Key prefix of one policy's history entries.
fn history_prefix(key: &str) -> String {
    format!("{key}\n")
}

/// Key of one history entry (zero-padded, so key order is revision order).
fn history_key(key: &str, revision: u64) -> String {
    format!("{key}\n{revision:020}")
}

/// The store key of a policy.
pub fn key(kind: Kind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// An open store. The file is locked: a second process cannot open it.
#[derive(Debug)]
pub struct Store {
    /// `None` while the database is closed after an I/O error, until it is reopened.
    db: Mutex<Option<Database>>,
    path: PathBuf,
    marker: PathBuf,
    health: Mutex<StoreHealth>,
    write_errors: AtomicU64,
}

/// Runs redb code that may panic on damaged pages, turning a panic into corruption.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("the database engine failed on its pages");
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        })
    })
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    let mut db = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::Corrupt {
                path: path.to_path_buf(),
                detail,
            }
        }
        e => StoreError::Open {
            path: path.to_path_buf(),
            source: e.into(),
        },
    })?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(path = %path.display(), "store repaired by its integrity check")
        }
        Err(e) => {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("integrity check failed: {e}"),
            })
        }
    }
    Ok(db)
}

impl Store {
    /// Opens (or creates) the store in `dir`, creating the directory if needed. A database
    /// file that exists but is empty, or fails redb's integrity check, is refused.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Corrupt {
                path,
                detail: "the database file is empty (0 bytes)".into(),
            });
        }
        let db = guarded(&path, || open_database(&path))?;
        let store = Self {
            db: Mutex::new(Some(db)),
            marker: dir.join(GENERATION_MARKER),
            path,
            health: Mutex::new(StoreHealth::Healthy),
            write_errors: AtomicU64::new(0),
        };
        guarded(&store.path, || store.create_tables())?;
        Ok(store)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether writes currently work.
    pub fn health(&self) -> StoreHealth {
        lock(&self.health).clone()
    }

    /// Writes that failed since the process started.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let guard = lock(&self.db);
        let db = self.database(&guard)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(POLICIES).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?;
        txn.open_table(AUX).map_err(redb::Error::from)?;
        txn.open_table(HISTORY).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Every auxiliary record whose key starts with `prefix`.
    pub fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        guarded(&self.path, || {
            let guard = lock(&self.db);
            let db = self.database(&guard)?;
            let txn = db.begin_read().map_err(redb::Error::from)?;
            let table = txn.open_table(AUX).map_err(redb::Error::from)?;
            let mut out = Vec::new();
            for entry in table.range(prefix..).map_err(redb::Error::from)? {
                let (k, v) = entry.map_err(redb::Error::from)?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push((k.value().to_string(), v.value().to_string()));
            }
            Ok(out)
        })
    }

    /// Puts (`Some`) or deletes (`None`) auxiliary records in one durable transaction.
    pub fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), StoreError> {
        guarded(&self.path, || {
            let guard = lock(&self.db);
            let db = self.database(&guard)?;
            let mut txn = db.begin_write().map_err(redb::Error::from)?;
            txn.set_durability(Durability::Immediate)
                .map_err(redb::Error::from)?;
            {
                let mut table = txn.open_table(AUX).map_err(redb::Error::from)?;
                for (key, value) in writes {
                    match value {
                        Some(v) => table.insert(key.as_str(), v.as_str()).map(drop),
                        None => table.remove(key.as_str()).map(drop),
                    }
                    .map_err(redb::Error::from)?;
                }
            }
            txn.commit().map_err(redb::Error::from)?;
            Ok(())
        })
    }

    fn database<'a>(
        &self,
        guard: &'a MutexGuard<'_, Option<Database>>,
    ) -> Result<&'a Database, StoreError> {
        guard.as_ref().ok_or_else(|| StoreError::Unavailable {
            path: self.path.clone(),
            detail: "the database is closed after an I/O error".into(),
        })
    }

    /// The highest generation ever committed, from the marker file (0 without one).
    fn marked_generation(&self) -> Result<u64, StoreError> {
        match std::fs::read_to_string(&self.marker) {
            Ok(text) => text.trim().parse().map_err(|_| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("{} does not hold a generation", self.marker.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::Unavailable {
                path: self.path.clone(),
                detail: format!("cannot read {}: {e}", self.marker.display()),
            }),
        }
    }

    /// Records `generation` in the marker file (atomically replaced). Best effort: the
    /// marker is a lower bound, so a stale one only weakens the check.
    fn mark_generation(&self, generation: u64) {
        let tmp = self.marker.with_extension("generation.tmp");
        let written = std::fs::write(&tmp, format!("{generation}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.marker));
        if let Err(e) = written {
            tracing::warn!(marker = %self.marker.display(), error = %e, "cannot update the store generation marker");
        }
    }

    /// Reads every record, re-validating each document with [`PolicyDocument::from_value`].
    /// A document that no longer validates is reported in [`Loaded::invalid`], not dropped
    /// from the store; a damaged record (checksum mismatch, unreadable) or a generation
    /// below the marker's makes the whole load fail with [`StoreError::Corrupt`].
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let loaded = guarded(&self.path, || self.load_unguarded())?;
        let marked = self.marked_generation()?;
        if loaded.generation < marked {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "it is at generation {} but generation {marked} was committed before ({}): the file was replaced, emptied or rolled back",
                    loaded.generation,
                    self.marker.display()
                ),
            });
        }
        if loaded.generation > marked {
            self.mark_generation(loaded.generation);
        }
        Ok(loaded)
    }

    fn load_unguarded(&self) -> Result<Loaded, StoreError> {
        let guard = lock(&self.db);
        let db = self.database(&guard)?;
        let txn = db.begin_read().map_err(redb::Error::from)?;
        let meta = txn.open_table(META).map_err(redb::Error::from)?;
        let generation = meta
            .get(GENERATION)
            .map_err(redb::Error::from)?
            .map(|g| g.value())
            .unwrap_or(0);
        let table = txn.open_table(POLICIES).map_err(redb::Error::from)?;
        let mut loaded = Loaded {
            generation,
            ..Loaded::default()
        };
        for entry in table.iter().map_err(redb::Error::from)? {
            let (k, v) = entry.map_err(redb::Error::from)?;
            let key = k.value().to_string();
            match decode(&key, v.value()) {
                Ok(policy) => loaded.policies.push(policy),
                Err(Decode::Invalid(error)) => loaded.invalid.push(InvalidRecord { key, error }),
                Err(Decode::Damaged(detail)) => {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("record {key:?}: {detail}"),
                    })
                }
            }
        }
        Ok(loaded)
    }

    /// Reopens the database if a write failed; `Ok` once writes can work again.
    pub fn recover(&self) -> Result<(), StoreError> {
        let mut guard = lock(&self.db);
        if guard.is_some() && matches!(self.health(), StoreHealth::Healthy) {
            return Ok(());
        }
        // The old handle holds the file lock; it must go before the file is opened again.
        if let Some(db) = guard.take() {
            drop(db);
        }
        let reopened = guarded(&self.path, || open_database(&self.path)).and_then(|db| {
            *guard = Some(db);
            drop(guard);
            self.check_writable()
        });
        match reopened {
            Ok(()) => {
                *lock(&self.health) = StoreHealth::Healthy;
                tracing::info!(path = %self.path.display(), "store reopened; writes work again");
                Ok(())
            }
            Err(e) => {
                self.set_failing(&e);
                lock(&self.db).take();
                Err(e)
            }
        }
    }

    /// Whether a write can succeed now: enough free space on the filesystem, and a small
    /// durable write goes through.
    fn check_writable(&self) -> Result<(), StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if let Ok(fs) = rustix::fs::statvfs(dir) {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            if free < MIN_FREE_BYTES {
                return Err(StoreError::Unavailable {
                    path: self.path.clone(),
                    detail: format!(
                        "only {} KiB free on its filesystem (at least {} KiB needed)",
                        free / 1024,
                        MIN_FREE_BYTES / 1024
                    ),
                });
            }
        }
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.write_aux(&[(PROBE_KEY.to_string(), Some(stamp.to_string()))])
    }

    fn set_failing(&self, e: &StoreError) {
        let mut health = lock(&self.health);
        if matches!(*health, StoreHealth::Healthy) {
            *health = StoreHealth::Failing {
                error: e.to_string(),
                since: SystemTime::now(),
            };
        }
    }

    /// Writes `commit` (records, their revisions, the generation) in one durable
    /// transaction: all of it is on disk when this returns `Ok`, none of it otherwise. After
    /// a failed write (e.g. a full disk) the database is reopened before this one.
    fn commit_durably(&self, commit: &Commit<'_>) -> Result<Vec<u64>, StoreError> {
        if !matches!(self.health(), StoreHealth::Healthy) {
            self.recover()?;
        }
        let result = guarded(&self.path, || self.commit_records(commit));
        match &result {
            Ok(_) => self.mark_generation(commit.generation),
            // Refused on purpose (compare-and-swap), not a failure of the store.
            Err(StoreError::Conflict { .. } | StoreError::Stale { .. }) => {}
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), error = %e, "store write failed");
                self.set_failing(e);
                // A failed write poisons the handle; close it so `recover` can reopen.
                lock(&self.db).take();
            }
        }
        result
    }

    fn commit_records(&self, commit: &Commit<'_>) -> Result<Vec<u64>, StoreError> {
        let guard = lock(&self.db);
        let db = self.database(&guard)?;
        let mut txn = db.begin_write().map_err(redb::Error::from)?;
        txn.set_durability(Durability::Immediate)
            .map_err(redb::Error::from)?;
        let mut revisions = Vec::with_capacity(commit.changes.len());
        {
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            let stored = meta
                .get(GENERATION)
                .map_err(redb::Error::from)?
                .map_or(0, |g| g.value());
            if stored + 1 != commit.generation {
                return Err(StoreError::Stale {
                    location: self.path.display().to_string(),
                    stored,
                    expected: commit.generation.saturating_sub(1),
                });
            }
            meta.insert(GENERATION, commit.generation)
                .map_err(redb::Error::from)?;
        }
        {
            let mut table = txn.open_table(POLICIES).map_err(redb::Error::from)?;
            let mut history = txn.open_table(HISTORY).map_err(redb::Error::from)?;
            for change in commit.changes {
                let key = key(change.kind, change.name);
                if let Some(expected) = change.base_revision {
                    let found = stored_revision(&table, &key)?;
                    if found != expected {
                        return Err(StoreError::Conflict {
                            key,
                            expected,
                            found,
                        });
                    }
                }
                let revision = last_revision(&table, &history, &key)? + 1;
                match change.policy {
                    Some(p) => {
                        let (_, json) = encode(p, revision)?;
                        table
                            .insert(key.as_str(), json.as_str())
                            .map_err(redb::Error::from)?;
                    }
                    None => {
                        table.remove(key.as_str()).map_err(redb::Error::from)?;
                    }
                }
                let entry = Revision::of(commit, change, revision);
                let json = records::encode_revision(&key, &entry)?;
                history
                    .insert(history_key(&key, revision).as_str(), json.as_str())
                    .map_err(redb::Error::from)?;
                prune_history(&mut history, &key, commit.history_limit.max(1))?;
                revisions.push(revision);
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(revisions)
    }

    fn read_history(&self, key: &str) -> Result<Vec<Revision>, StoreError> {
        let guard = lock(&self.db);
        let db = self.database(&guard)?;
        let txn = db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(HISTORY).map_err(redb::Error::from)?;
        let prefix = history_prefix(key);
        let mut out = Vec::new();
        for entry in table.range(prefix.as_str()..).map_err(redb::Error::from)? {
            let (k, v) = entry.map_err(redb::Error::from)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let revision =
                records::decode_revision(v.value()).map_err(|detail| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("history entry {:?}: {detail}", k.value()),
                })?;
            out.push(revision);
        }
        Ok(out)
    }
}

impl PolicyStore for Store {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        Store::load(self)
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<Vec<u64>, StoreError> {
        self.commit_durably(commit)
    }

    fn history(&self, kind: Kind, name: &str) -> Result<Vec<Revision>, StoreError> {
        guarded(&self.path, || self.read_history(&key(kind, name)))
    }

    fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        Store::aux_records(self, prefix)
    }

    fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), StoreError> {
        Store::write_aux(self, writes)
    }

    fn health(&self) -> StoreHealth {
        Store::health(self)
    }

    fn write_errors(&self) -> u64 {
        Store::write_errors(self)
    }

    fn recover(&self) -> Result<(), StoreError> {
        Store::recover(self)
    }
}

/// The last revision committed for `key`: the newest history entry, or (for a record
/// written before history existed) the record's own revision; 0 if there is neither.
fn last_revision(
    policies: &redb::Table<&str, &str>,
    history: &redb::Table<&str, &str>,
    key: &str,
) -> Result<u64, StoreError> {
    let prefix = history_prefix(key);
    let newest = history
        .range(prefix.as_str()..history_key(key, u64::MAX).as_str())
        .map_err(redb::Error::from)?
        .next_back()
        .transpose()
        .map_err(redb::Error::from)?
        .and_then(|(k, _)| k.value().strip_prefix(&prefix)?.parse::<u64>().ok());
    match newest {
        Some(revision) => Ok(revision),
        None => stored_revision(policies, key),
    }
}

/// The revision of the record stored under `key` (0 if there is none, or it predates
/// revisions).
fn stored_revision(policies: &redb::Table<&str, &str>, key: &str) -> Result<u64, StoreError> {
    Ok(policies
        .get(key)
        .map_err(redb::Error::from)?
        .map_or(0, |v| records::record_revision(v.value())))
}

/// Removes the oldest entries of `key` beyond `limit`.
fn prune_history(
    history: &mut redb::Table<&str, &str>,
    key: &str,
    limit: usize,
) -> Result<(), StoreError> {
    let prefix = history_prefix(key);
    let keys: Vec<String> = history
        .range(prefix.as_str()..history_key(key, u64::MAX).as_str())
        .map_err(redb::Error::from)?
        .map(|e| e.map(|(k, _)| k.value().to_string()))
        .collect::<Result<_, _>>()
        .map_err(redb::Error::from)?;
    for old in keys.iter().take(keys.len().saturating_sub(limit)) {
        history.remove(old.as_str()).map_err(redb::Error::from)?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is one assignment, so the state is consistent even after a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{HistoryChange, PolicyChange};
    use crate::policy_set::content_version;
    use meshwarden_common::PolicyDocument;
    use serde_json::json;

    fn policy(name: &str, sampling: u32, generation: u64) -> StoredPolicy {
        let doc = PolicyDocument::from_value(&json!({
            "apiVersion": meshwarden_common::API_VERSION,
            "kind": "TracePolicy",
            "metadata": {"name": name},
            "spec": {"samplingPercentage": sampling},
        }))
        .unwrap();
        StoredPolicy {
            version: content_version(&doc),
            doc,
            generation,
            updated_unix_ms: 1_700_000_000_000 + generation as i64,
            revision: 0,
        }
    }

    /// A change creating or updating `p`.
    fn changed(p: &StoredPolicy) -> PolicyChange<'_> {
        crate::backend::contract::put(p, None)
    }

    use crate::backend::contract::delete;

    /// Commits `changes` by `tester` at `generation`, keeping `limit` revisions (default 50).
    fn commit(
        store: &Store,
        generation: u64,
        changes: &[PolicyChange<'_>],
        limit: &[usize],
    ) -> Vec<u64> {
        PolicyStore::commit(
            store,
            &Commit {
                generation,
                changes,
                actor: "tester",
                at_unix_ms: 1_700_000_000_000,
                history_limit: limit.first().copied().unwrap_or(50),
            },
        )
        .unwrap()
    }

    fn put(store: &Store, generation: u64, policies: &[&StoredPolicy]) -> Vec<u64> {
        let changes: Vec<_> = policies.iter().map(|p| changed(p)).collect();
        commit(store, generation, &changes, &[])
    }

    #[test]
    fn every_commit_keeps_a_revision_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(
                put(&store, 1, &[&policy("a", 10, 1), &policy("b", 10, 1)]),
                [1, 1]
            );
            assert_eq!(put(&store, 2, &[&policy("a", 20, 2)]), [2]);
            assert_eq!(commit(&store, 3, &[delete("a")], &[]), [3]);
        }
        // Reopened: the records and their history were committed together.
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.generation, 3);
        let names: Vec<_> = loaded
            .policies
            .iter()
            .map(|p| (p.name(), p.revision))
            .collect();
        assert_eq!(names, [("b", 1)]);
        let history = store.history(Kind::TracePolicy, "a").unwrap();
        let seen: Vec<_> = history
            .iter()
            .map(|r| {
                (
                    r.revision,
                    r.generation,
                    r.document.is_some(),
                    r.actor.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, 1, true, "tester"),
                (2, 2, true, "tester"),
                (3, 3, false, "tester")
            ]
        );
        assert_eq!(
            history[1].document.as_ref().unwrap()["spec"]["samplingPercentage"].as_f64(),
            Some(20.0)
        );
        assert_eq!(history[1].version, policy("a", 20, 2).version);
    }

    #[test]
    fn keeps_the_store_contract() {
        let dirs: std::cell::RefCell<Vec<tempfile::TempDir>> = Default::default();
        crate::backend::contract::run_all(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            dirs.borrow_mut().push(dir);
            store
        });
    }

    #[test]
    fn an_altered_history_entry_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, 1, &[&policy("a", 10, 1)]);
        let key = history_key("TracePolicy/a", 1);
        let altered = {
            let guard = lock(&store.db);
            let txn = guard.as_ref().unwrap().begin_read().unwrap();
            let t = txn.open_table(HISTORY).unwrap();
            let v = t
                .get(key.as_str())
                .unwrap()
                .unwrap()
                .value()
                .replace("10", "90");
            v
        };
        {
            let guard = lock(&store.db);
            let txn = guard.as_ref().unwrap().begin_write().unwrap();
            txn.open_table(HISTORY)
                .unwrap()
                .insert(key.as_str(), altered.as_str())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = store
            .history(Kind::TracePolicy, "a")
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn empty_store_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nested/data")).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.generation, 0);
        assert!(loaded.policies.is_empty() && loaded.invalid.is_empty());
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (policy("a", 10, 1), policy("b", 20, 1));
        {
            let store = Store::open(dir.path()).unwrap();
            put(&store, 1, &[&a, &b]);
            let a2 = policy("a", 30, 2);
            let deleted = [delete("b")];
            commit(&store, 2, &[changed(&a2)], &[]);
            commit(&store, 3, &deleted, &[]);
        }
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.generation, 3);
        let mut a2 = policy("a", 30, 2);
        a2.revision = 2;
        assert_eq!(loaded.policies, vec![a2]);
        assert!(loaded.invalid.is_empty());
    }

    #[test]
    fn second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        // redb locks the file per process; within one process it reports the same error.
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    }

    #[test]
    fn invalid_records_are_reported_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, 1, &[&policy("ok", 1, 1)]);
        // Simulate a record written by another build (no checksum, stricter validation).
        let bad = json!({"document": {"apiVersion": "meshwarden.dev/v1alpha1", "kind": "TracePolicy",
            "metadata": {"name": "bad"}, "spec": {"samplingPercentage": 150}},
            "version": "x", "generation": 1, "updated_unix_ms": 0});
        raw_insert(&store, "TracePolicy/bad", &bad.to_string());
        let loaded = store.load().unwrap();
        assert_eq!(loaded.policies.len(), 1);
        let keys: Vec<_> = loaded.invalid.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["TracePolicy/bad"]);
        assert!(loaded.invalid[0].error.contains("spec.samplingPercentage"));
    }

    #[test]
    fn a_record_that_no_longer_loads_can_be_replaced_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bad = json!({"document": {"apiVersion": "meshwarden.dev/v1alpha1", "kind": "TracePolicy",
            "metadata": {"name": "bad"}, "spec": {"samplingPercentage": 150}},
            "version": "x", "generation": 1, "updated_unix_ms": 0, "revision": 3});
        raw_insert(&store, "TracePolicy/bad", &bad.to_string());
        let reg = crate::registry::PolicyRegistry::from_store(store).unwrap();
        assert_eq!(reg.invalid_records().len(), 1);
        let r = reg
            .apply(vec![policy("bad", 10, 0).doc.to_value()], false)
            .unwrap();
        assert_eq!(
            r[0].revision, 4,
            "numbering continues from the record's revision"
        );
        assert!(reg.invalid_records().is_empty());
        reg.delete(Kind::TracePolicy, "bad").unwrap();
        let revisions: Vec<_> = reg
            .history(Kind::TracePolicy, "bad")
            .unwrap()
            .iter()
            .map(|r| (r.revision, r.change))
            .collect();
        assert_eq!(
            revisions,
            [(4, HistoryChange::Created), (5, HistoryChange::Deleted)]
        );
    }

    fn raw_insert(store: &Store, key: &str, value: &str) {
        let guard = lock(&store.db);
        let txn = guard.as_ref().unwrap().begin_write().unwrap();
        txn.open_table(POLICIES)
            .unwrap()
            .insert(key, value)
            .unwrap();
        txn.commit().unwrap();
    }

    fn raw_get(store: &Store, key: &str) -> String {
        let guard = lock(&store.db);
        let txn = guard.as_ref().unwrap().begin_read().unwrap();
        let t = txn.open_table(POLICIES).unwrap();
        let v = t.get(key).unwrap().unwrap().value().to_string();
        v
    }

    #[test]
    fn unreadable_and_altered_records_make_the_store_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, 1, &[&policy("ok", 10, 1)]);
        // A digit altered inside the record: still valid JSON and a valid document.
        let altered = raw_get(&store, "TracePolicy/ok").replace("10", "90");
        raw_insert(&store, "TracePolicy/ok", &altered);
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains("TracePolicy/ok"),
            "{err}"
        );
        raw_insert(&store, "TracePolicy/ok", "not json");
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("unreadable record"), "{err}");
    }

    #[test]
    fn aux_records_round_trip_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write_aux(&[
                    ("a\n1".into(), Some("x".into())),
                    ("a\n2".into(), Some("y".into())),
                    ("b\n1".into(), Some("z".into())),
                ])
                .unwrap();
            store.write_aux(&[("a\n2".into(), None)]).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.aux_records("a\n").unwrap(),
            vec![("a\n1".to_string(), "x".to_string())]
        );
        assert_eq!(store.aux_records("b\n").unwrap().len(), 1);
    }

    #[test]
    fn an_empty_or_rolled_back_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            put(&store, 1, &[&policy("a", 10, 1)]);
            put(&store, 2, &[&policy("b", 10, 2)]);
        }
        let db = dir.path().join(DB_FILE);
        // Zero bytes: refused at open.
        let saved = std::fs::read(&db).unwrap();
        std::fs::write(&db, b"").unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("empty (0 bytes)"), "{err}");
        // A fresh database where one with policies was: refused at load.
        std::fs::remove_file(&db).unwrap();
        let err = Store::open(dir.path())
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("generation 0 but generation 2"), "{err}");
        // The real file back: served.
        std::fs::write(&db, saved).unwrap();
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded.policies.len(), 2);
    }

    #[test]
    fn flipped_bytes_are_reported_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for g in 1..=20 {
                put(&store, g, &[&policy(&format!("p{g}"), 10, g)]);
            }
        }
        let db = dir.path().join(DB_FILE);
        let clean = std::fs::read(&db).unwrap();
        // Flip bytes at many places; every outcome is a clean load or a clear error.
        let mut refused = 0;
        for at in (0..clean.len()).step_by(clean.len() / 64 + 1) {
            let mut bytes = clean.clone();
            for b in bytes.iter_mut().skip(at).take(16) {
                *b ^= 0xA5;
            }
            std::fs::write(&db, &bytes).unwrap();
            match Store::open(dir.path()).and_then(|s| s.load()) {
                Ok(loaded) => assert_eq!(loaded.generation, 20),
                Err(e) => {
                    refused += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        assert!(refused > 0, "some damage is detected");
    }
}
