//! The embedded, crash-safe policy store: one redb file in the data directory.
//!
//! Table `policies` maps `"<Kind>/<name>"` to a JSON record
//! `{"document", "version", "generation", "updated_unix_ms"}`; table `meta` holds the store
//! generation. Every [`Store::commit`] is one transaction with immediate durability, so once
//! it returns the change survives a crash or `kill -9`.

use crate::policy_set::{content_version, StoredPolicy};
use meshwarden_common::{Kind, PolicyDocument};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const POLICIES: TableDefinition<&str, &str> = TableDefinition::new("policies");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "meshwarden.redb";

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
}

/// The stored form of one policy.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    document: serde_json::Value,
    version: String,
    generation: u64,
    updated_unix_ms: i64,
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

/// One change inside a [`Store::commit`].
#[derive(Debug, Clone)]
pub enum Write<'a> {
    /// Create or replace a policy.
    Put(&'a StoredPolicy),
    /// Remove the record with this key, if present.
    Delete(String),
}

/// The store key of a policy.
pub fn key(kind: Kind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// An open store. The file is locked: a second process cannot open it.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            e => StoreError::Open {
                path: path.clone(),
                source: e.into(),
            },
        })?;
        let store = Self { db, path };
        store.create_tables()?;
        Ok(store)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(POLICIES).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Reads every record, re-validating each document with [`PolicyDocument::from_value`].
    /// A record that fails is reported in [`Loaded::invalid`], not dropped from the store.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
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
                Err(error) => loaded.invalid.push(InvalidRecord { key, error }),
            }
        }
        Ok(loaded)
    }

    /// Applies `writes` and sets the store generation to `generation`, in one durable
    /// transaction: all of it is on disk when this returns `Ok`, none of it otherwise.
    pub fn commit(&self, generation: u64, writes: &[Write<'_>]) -> Result<(), StoreError> {
        let records = writes
            .iter()
            .map(|w| match w {
                Write::Put(p) => encode(p).map(|(k, v)| (k, Some(v))),
                Write::Delete(k) => Ok((k.clone(), None)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut txn = self.db.begin_write().map_err(redb::Error::from)?;
        txn.set_durability(Durability::Immediate)
            .map_err(redb::Error::from)?;
        {
            let mut table = txn.open_table(POLICIES).map_err(redb::Error::from)?;
            for (key, value) in &records {
                match value {
                    Some(v) => table.insert(key.as_str(), v.as_str()),
                    None => table.remove(key.as_str()),
                }
                .map_err(redb::Error::from)?;
            }
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            meta.insert(GENERATION, generation)
                .map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}

fn encode(p: &StoredPolicy) -> Result<(String, String), StoreError> {
    let key = key(p.kind(), p.name());
    let record = Record {
        document: p.doc.to_value(),
        version: p.version.clone(),
        generation: p.generation,
        updated_unix_ms: p.updated_unix_ms,
    };
    let json = serde_json::to_string(&record).map_err(|source| StoreError::Encode {
        key: key.clone(),
        source,
    })?;
    Ok((key, json))
}

/// Decodes and re-validates one record. The version is recomputed from the document, so it
/// always matches what this build would compute for the same content.
fn decode(key: &str, json: &str) -> Result<StoredPolicy, String> {
    let record: Record =
        serde_json::from_str(json).map_err(|e| format!("unreadable record: {e}"))?;
    let doc = PolicyDocument::from_value(&record.document)
        .map_err(|e| format!("document no longer valid: {e}"))?;
    let expected = self::key(doc.kind(), doc.name().as_str());
    if expected != key {
        return Err(format!("record holds {expected}, not {key}"));
    }
    Ok(StoredPolicy {
        version: content_version(&doc),
        doc,
        generation: record.generation,
        updated_unix_ms: record.updated_unix_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
        }
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
            store.commit(1, &[Write::Put(&a), Write::Put(&b)]).unwrap();
            let a2 = policy("a", 30, 2);
            store
                .commit(
                    2,
                    &[Write::Put(&a2), Write::Delete(key(Kind::TracePolicy, "b"))],
                )
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.generation, 2);
        assert_eq!(loaded.policies, vec![policy("a", 30, 2)]);
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
        store.commit(1, &[Write::Put(&policy("ok", 1, 1))]).unwrap();
        // Simulate records written by another build.
        let txn = store.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(POLICIES).unwrap();
            let bad = json!({"document": {"apiVersion": "meshwarden.dev/v1alpha1", "kind": "TracePolicy",
                "metadata": {"name": "bad"}, "spec": {"samplingPercentage": 150}},
                "version": "x", "generation": 1, "updated_unix_ms": 0});
            t.insert("TracePolicy/bad", bad.to_string().as_str())
                .unwrap();
            t.insert("TracePolicy/junk", "not json").unwrap();
        }
        txn.commit().unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.policies.len(), 1);
        let keys: Vec<_> = loaded.invalid.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["TracePolicy/bad", "TracePolicy/junk"]);
        assert!(loaded.invalid[0].error.contains("spec.samplingPercentage"));
    }
}
