//! The audit trail: every apply, delete, halt and resume, accepted or refused (authentication and
//! authorisation refusals included), with who, when, what, the content versions before and
//! after, and the result. Entries are logged (one structured line each, JSON with
//! `--log-format json`) and kept, the last [`MAX_ENTRIES`], in the store's auxiliary
//! records, so they survive restarts; `meshwarden audit` reads them.

use crate::xds::AuxStore;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Entries kept (the oldest go first).
pub const MAX_ENTRIES: usize = 10_000;

/// Key prefix of audit entries among the auxiliary records.
const PREFIX: &str = "audit\n";

/// One attempt on one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Increasing over the store's life.
    pub seq: u64,
    pub at_unix_ms: i64,
    /// Token file entry, or `anonymous` (auth off, or no valid credentials).
    pub identity: String,
    /// `viewer`, `editor`, `admin`, or empty if not authenticated.
    pub role: String,
    /// The client's address.
    pub remote: String,
    /// `apply`, `apply --dry-run`, `delete`, `halt` or `resume`.
    pub action: String,
    /// Empty if the request could not be read; for a halt, the halted kinds (`A,B`).
    pub kind: String,
    /// The policy's name; for a halt or resume, the halt's (`*`: every halt).
    pub name: String,
    /// Content version before (empty: there was no such policy).
    pub old_version: String,
    /// Content version after (empty: none, or nothing changed hands).
    pub new_version: String,
    /// `created`, `configured`, `unchanged`, `deleted`, `dry-run`, `halted`, `resumed`, or
    /// `refused`.
    pub result: String,
    /// The gRPC status code (`OK`, `UNAUTHENTICATED`, `PERMISSION_DENIED`, ...).
    pub code: String,
    /// The refusal's message.
    pub message: String,
}

/// The audit trail (cheap to clone: shared).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Mutex<Inner>>,
    store: Option<Arc<dyn AuxStore>>,
    max: usize,
    /// With replicas sharing a store: this replica's id, part of its entries' keys (so
    /// replicas never overwrite each other's entries), and `list` reads the store.
    replica: Option<String>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    entries: VecDeque<AuditEntry>,
}

impl AuditLog {
    /// A trail kept in memory only.
    pub fn in_memory() -> Self {
        Self {
            inner: Arc::default(),
            store: None,
            max: MAX_ENTRIES,
            replica: None,
        }
    }

    /// A trail persisted in `store`, loading the entries kept there.
    pub fn persisted(store: Arc<dyn AuxStore>) -> Result<Self, String> {
        let entries = load(store.as_ref())?;
        let next_seq = entries.iter().map(|e| e.seq).max().map_or(1, |s| s + 1);
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                next_seq,
                entries: entries.into(),
            })),
            store: Some(store),
            max: MAX_ENTRIES,
            replica: None,
        })
    }

    /// For replica `id` of a shared store: its entries are stored under keys of its own,
    /// and [`AuditLog::list`] reads every replica's from the store.
    pub fn for_replica(mut self, id: &str) -> Self {
        self.replica = Some(id.to_string());
        self
    }

    fn key(&self, seq: u64) -> String {
        match &self.replica {
            Some(id) => format!("{PREFIX}{id}\n{seq:020}"),
            None => format!("{PREFIX}{seq:020}"),
        }
    }

    /// Keeps at most `max` entries (tests).
    pub fn with_max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Records `entries` (their `seq` is assigned here): logs each, keeps it, and writes
    /// it to the store. Blocking (one store transaction); call off the async threads.
    pub fn record(&self, entries: Vec<AuditEntry>) {
        let mut writes = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            for mut e in entries {
                e.seq = inner.next_seq;
                inner.next_seq += 1;
                tracing::info!(
                    target: "meshwarden::audit",
                    seq = e.seq,
                    identity = %e.identity,
                    role = %e.role,
                    remote = %e.remote,
                    action = %e.action,
                    kind = %e.kind,
                    name = %e.name,
                    old_version = %e.old_version,
                    new_version = %e.new_version,
                    result = %e.result,
                    code = %e.code,
                    message = %e.message,
                    "audit"
                );
                let json = serde_json::to_string(&e).expect("entries serialize");
                writes.push((self.key(e.seq), Some(json)));
                if e.seq > self.max as u64 {
                    writes.push((self.key(e.seq - self.max as u64), None));
                }
                inner.entries.push_back(e);
                while inner.entries.len() > self.max {
                    inner.entries.pop_front();
                }
            }
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.write_aux(&writes) {
                tracing::error!(error = %e, "cannot store audit entries (they are in the log)");
            }
        }
    }

    /// The last `limit` entries (all if 0), oldest first. For a replica, every replica's
    /// entries, read from the store (blocking; call off the async threads).
    pub fn list(&self, limit: usize) -> Vec<AuditEntry> {
        let skip = |n: usize| match limit {
            0 => 0,
            l => n.saturating_sub(l),
        };
        if let (Some(_), Some(store)) = (&self.replica, &self.store) {
            match load(store.as_ref()) {
                Ok(entries) => {
                    let n = entries.len();
                    return entries.into_iter().skip(skip(n)).collect();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the replicas' audit trail; showing this replica's")
                }
            }
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .iter()
            .skip(skip(inner.entries.len()))
            .cloned()
            .collect()
    }
}

/// Every stored entry, oldest first (by time, then sequence number).
fn load(store: &dyn AuxStore) -> Result<Vec<AuditEntry>, String> {
    let mut entries: Vec<AuditEntry> = store
        .aux_records(PREFIX)?
        .into_iter()
        .filter_map(|(_, json)| serde_json::from_str(&json).ok())
        .collect();
    entries.sort_by_key(|e| (e.at_unix_ms, e.seq));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_unix_ms: 1,
            identity: "ci".into(),
            role: "editor".into(),
            remote: "127.0.0.1:1".into(),
            action: "apply".into(),
            kind: "FaultPolicy".into(),
            name: name.into(),
            old_version: String::new(),
            new_version: "v1".into(),
            result: "created".into(),
            code: "OK".into(),
            message: String::new(),
        }
    }

    #[test]
    fn entries_survive_a_restart_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(crate::registry::PolicyRegistry::open(dir.path()).unwrap());
        let log = AuditLog::persisted(registry.clone()).unwrap().with_max(3);
        for i in 0..5 {
            log.record(vec![entry(&format!("p{i}"))]);
        }
        let names = |l: &AuditLog| l.list(0).into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(&log), ["p2", "p3", "p4"]);
        assert_eq!(log.list(1)[0].seq, 5);
        drop(log);
        let again = AuditLog::persisted(registry.clone()).unwrap().with_max(3);
        assert_eq!(names(&again), ["p2", "p3", "p4"]);
        again.record(vec![entry("p5")]);
        assert_eq!(again.list(1)[0].seq, 6, "numbering goes on after a restart");
        assert_eq!(registry.aux_records(PREFIX).unwrap().len(), 3);
    }
}
