//! The shared policy store for replicas: etcd (`serve --store etcd://host:2379[,...]`).
//!
//! Keys, under a configurable prefix (default `/meshwarden/`):
//! - `policies/<Kind>/<name>`: the policy record (the same JSON, with its checksum, as the
//!   embedded store's, see [`super::records`]);
//! - `history/<Kind>/<name>/<revision, 20 digits>`: one entry per revision;
//! - `generation`: the store generation, written by every commit;
//! - `aux/<key>`: auxiliary records (halts, the xDS side's rejection memory);
//! - `ephemeral/<key>`: records attached to this process's lease (replica status), gone a
//!   few seconds after the process is.
//!
//! A commit reads the generation and the records it changes at one etcd revision, then
//! writes everything in one transaction guarded by the generation key's `mod_revision`:
//! if any replica committed in between, nothing is written and the commit fails with
//! [`StoreError::Stale`] (the registry reloads and retries). Every commit writes the
//! generation, so that one comparison covers every record read.
//!
//! etcd-client is async; the store owns a small runtime of its own, so the blocking
//! [`PolicyStore`] methods can be called from any thread, each bounded by a timeout. A
//! watch on the prefix (resumed from the last revision seen after a disconnect, restarted
//! from scratch after a compaction) tells the registry when another replica changed
//! something ([`PolicyStore::changes`]).

use super::records::{self, decode, encode, Decode};
use super::{Commit, PolicyStore, Revision};
use crate::store::{key, InvalidRecord, Loaded, StoreError, StoreHealth};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use meshwarden_common::Kind;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// A key and its value, as etcd holds them.
type KeyValue = (Vec<u8>, Vec<u8>);

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/meshwarden/";

/// Bound of every etcd operation (a call that takes longer fails; nothing queues).
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Time to live of this process's lease (its ephemeral records outlive it this long).
pub const LEASE_TTL_SECS: i64 = 10;

/// Longest wait between two attempts to re-establish the watch.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);

/// Parses `etcd://host:port[,host:port...]` into endpoints (`http://host:port`).
pub fn parse_url(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| format!("store URL {url:?} must start with etcd://"))?;
    let endpoints: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| format!("http://{e}"))
        .collect();
    if endpoints.is_empty() {
        return Err(format!(
            "store URL {url:?} names no endpoint (etcd://host:port[,host:port...])"
        ));
    }
    Ok(endpoints)
}

/// A policy store in etcd. See the module documentation.
pub struct EtcdStore {
    location: String,
    prefix: String,
    client: Client,
    /// Runs every etcd call; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    health: Mutex<StoreHealth>,
    write_errors: AtomicU64,
    /// Counts watched changes (and watch restarts); see [`PolicyStore::changes`].
    changes: watch::Sender<u64>,
    /// This process's lease for ephemeral records, once granted.
    lease: std::sync::Arc<Mutex<Option<i64>>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime may block; this one may be dropped on an async thread.
            runtime.shutdown_background();
        }
    }
}

impl EtcdStore {
    /// Connects to etcd at `url` (`etcd://host:port[,host:port...]`), keeping every key
    /// under `prefix`, and starts watching it.
    pub fn open(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let location = format!("{url} (prefix {prefix})");
        let endpoints = parse_url(url).map_err(|detail| StoreError::Remote {
            location: location.clone(),
            detail,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("meshwarden-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Remote {
                location: location.clone(),
                detail: format!("cannot start its runtime: {e}"),
            })?;
        // No per-request timeout here (it would also bound the watch stream): every call is
        // bounded by `call` instead.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let client = call(
            &runtime,
            &location,
            Client::connect(endpoints, Some(options)),
        )?;
        let store = Self {
            location,
            prefix: prefix.to_string(),
            client,
            runtime: Some(runtime),
            health: Mutex::new(StoreHealth::Healthy),
            write_errors: AtomicU64::new(0),
            changes: watch::channel(0).0,
            lease: Default::default(),
        };
        // Fails early (and clearly) when etcd does not answer.
        let revision = store.current_revision()?;
        store.start_watch(revision + 1);
        Ok(store)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// Runs one etcd call on the store's runtime, bounded by [`OP_TIMEOUT`].
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        call(self.runtime(), &self.location, fut)
    }

    fn k(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn generation_key(&self) -> String {
        self.k("generation")
    }

    fn policy_key(&self, key: &str) -> String {
        self.k(&format!("policies/{key}"))
    }

    fn history_prefix(&self, key: &str) -> String {
        self.k(&format!("history/{key}/"))
    }

    fn current_revision(&self) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let key = self.generation_key();
        let response = self.run(async move { client.get(key, None).await })?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Watches the prefix from `start`, notifying [`Self::changes`] of every change but
    /// those of ephemeral records; resumes after a disconnect from the next revision, and
    /// after a compaction from now (the registry reloads in full whenever notified, so
    /// nothing is lost or applied twice).
    fn start_watch(&self, start: i64) {
        let mut client = self.client.clone();
        let prefix = self.prefix.clone();
        let ephemeral = self.k("ephemeral/").into_bytes();
        let changes = self.changes.clone();
        let location = self.location.clone();
        self.runtime().spawn(async move {
            let mut next = start;
            let mut backoff = Duration::from_millis(100);
            loop {
                let options = WatchOptions::new().with_prefix().with_start_revision(next);
                match client.watch(prefix.as_bytes(), Some(options)).await {
                    Ok(mut stream) => loop {
                        match stream.message().await {
                            Ok(Some(response)) => {
                                backoff = Duration::from_millis(100);
                                if response.compact_revision() > 0 {
                                    tracing::warn!(store = %location, compacted = response.compact_revision(), "etcd history compacted past the watch; reloading in full");
                                    next = 0;
                                    changes.send_modify(|n| *n += 1);
                                    break;
                                }
                                if response.canceled() {
                                    break;
                                }
                                if let Some(header) = response.header() {
                                    next = next.max(header.revision() + 1);
                                }
                                let relevant = response.events().iter().any(|e| {
                                    e.kv().is_none_or(|kv| !kv.key().starts_with(&ephemeral))
                                });
                                if relevant {
                                    changes.send_modify(|n| *n += 1);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(store = %location, error = %e, "etcd watch interrupted; resuming");
                                break;
                            }
                        }
                    },
                    Err(e) => {
                        tracing::warn!(store = %location, error = %e, "cannot watch etcd; retrying");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
                if next == 0 {
                    // After a compaction: watch from now on (the reload reads the rest).
                    let key = prefix.clone() + "generation";
                    if let Ok(Ok(r)) = tokio::time::timeout(OP_TIMEOUT, client.get(key, None)).await {
                        next = r.header().map_or(0, |h| h.revision() + 1);
                    }
                }
                // Something may have been missed while disconnected: reload.
                changes.send_modify(|n| *n += 1);
            }
        });
    }

    /// Records the outcome of a write for [`PolicyStore::health`].
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) => *lock(&self.health) = StoreHealth::Healthy,
            Err(StoreError::Conflict { .. } | StoreError::Stale { .. }) => {}
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(store = %self.location, error = %e, "store write failed");
                let mut health = lock(&self.health);
                if matches!(*health, StoreHealth::Healthy) {
                    *health = StoreHealth::Failing {
                        error: e.to_string(),
                        since: SystemTime::now(),
                    };
                }
            }
        }
        result
    }

    fn commit_once(&self, commit: &Commit<'_>) -> Result<Vec<u64>, StoreError> {
        let generation_key = self.generation_key();
        // Read phase: the generation, then every record and history the commit touches, all
        // at the generation read's revision.
        let mut client = self.client.clone();
        let gk = generation_key.clone();
        let first = self.run(async move { client.get(gk, None).await })?;
        let at = first.header().map_or(0, |h| h.revision());
        let (stored, generation_mod) = match first.kvs().first() {
            Some(kv) => (
                std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| self.corrupt("the generation record is unreadable"))?,
                kv.mod_revision(),
            ),
            None => (0, 0),
        };
        if stored + 1 != commit.generation {
            return Err(StoreError::Stale {
                location: self.location.clone(),
                stored,
                expected: commit.generation.saturating_sub(1),
            });
        }
        let keys: Vec<String> = commit.changes.iter().map(|c| key(c.kind, c.name)).collect();
        let mut client = self.client.clone();
        let reads: Vec<(String, String)> = keys
            .iter()
            .map(|k| (self.policy_key(k), self.history_prefix(k)))
            .collect();
        let read = self.run(async move {
            let mut out = Vec::with_capacity(reads.len());
            for (record, history) in reads {
                let r = client
                    .get(record, Some(GetOptions::new().with_revision(at)))
                    .await?;
                let h = client
                    .get(
                        history,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_keys_only()
                                .with_revision(at),
                        ),
                    )
                    .await?;
                let record = r
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                let history: Vec<Vec<u8>> = h.kvs().iter().map(|kv| kv.key().to_vec()).collect();
                out.push((record, history));
            }
            Ok(out)
        })?;
        // Write phase.
        let mut ops = Vec::new();
        let mut revisions = Vec::with_capacity(commit.changes.len());
        for ((change, key), (record, history)) in commit.changes.iter().zip(&keys).zip(read) {
            let found = record.as_deref().map_or(0, records::record_revision);
            if let Some(expected) = change.base_revision {
                if found != expected {
                    return Err(StoreError::Conflict {
                        key: key.clone(),
                        expected,
                        found,
                    });
                }
            }
            let prefix = self.history_prefix(key);
            let newest = history
                .last()
                .and_then(|k| std::str::from_utf8(k.strip_prefix(prefix.as_bytes())?).ok())
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0);
            let revision = newest.max(found) + 1;
            match change.policy {
                Some(p) => {
                    let (_, json) = encode(p, revision)?;
                    ops.push(TxnOp::put(self.policy_key(key), json, None));
                }
                None => ops.push(TxnOp::delete(self.policy_key(key), None)),
            }
            let entry = Revision::of(commit, change, revision);
            ops.push(TxnOp::put(
                format!("{prefix}{revision:020}"),
                records::encode_revision(key, &entry)?,
                None,
            ));
            let keep = commit.history_limit.max(1);
            let total = history.len() + 1;
            for old in history.iter().take(total.saturating_sub(keep)) {
                ops.push(TxnOp::delete(old.clone(), None));
            }
            revisions.push(revision);
        }
        ops.push(TxnOp::put(
            generation_key.clone(),
            commit.generation.to_string(),
            None,
        ));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                generation_key,
                CompareOp::Equal,
                generation_mod,
            )])
            .and_then(ops);
        let mut client = self.client.clone();
        let response = self
            .run(async move { client.txn(txn).await })
            .map_err(|e| match e {
                StoreError::Remote { location, detail }
                    if detail.contains("too many operations") =>
                {
                    StoreError::Remote {
                        location,
                        detail: format!("{detail}: this apply changes more policies than one etcd transaction may hold (etcd's --max-txn-ops); apply them in smaller files"),
                    }
                }
                e => e,
            })?;
        if !response.succeeded() {
            return Err(StoreError::Stale {
                location: self.location.clone(),
                stored: commit.generation,
                expected: commit.generation - 1,
            });
        }
        Ok(revisions)
    }

    fn corrupt(&self, detail: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.location.clone().into(),
            detail: detail.to_string(),
        }
    }

    /// Every key/value under `prefix`, in key order.
    fn range(&self, prefix: String) -> Result<Vec<KeyValue>, StoreError> {
        let mut client = self.client.clone();
        let response = self.run(async move {
            client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
        })?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect())
    }

    /// The lease ephemeral records are attached to, granted (and kept alive) on first use.
    fn lease(&self) -> Result<i64, StoreError> {
        if let Some(id) = *lock(&self.lease) {
            return Ok(id);
        }
        let mut client = self.client.clone();
        let id = self
            .run(async move { client.lease_grant(LEASE_TTL_SECS, None).await })?
            .id();
        *lock(&self.lease) = Some(id);
        let mut client = self.client.clone();
        let slot = self.lease.clone();
        let location = self.location.clone();
        self.runtime().spawn(async move {
            let ended = async {
                let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
                loop {
                    keeper.keep_alive().await?;
                    match stream.message().await? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Ok::<(), etcd_client::Error>(()),
                    }
                    tokio::time::sleep(Duration::from_secs((LEASE_TTL_SECS / 3).max(1) as u64))
                        .await;
                }
            }
            .await;
            tracing::warn!(store = %location, lease = id, result = ?ended, "etcd lease lost; a new one is granted on the next publish");
            let mut slot = lock(&slot);
            if *slot == Some(id) {
                *slot = None;
            }
        });
        Ok(id)
    }
}

/// Runs `fut` on `runtime` and waits for it (from any thread) at most [`OP_TIMEOUT`].
fn call<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    location: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let result = tokio::time::timeout(OP_TIMEOUT, fut).await;
        let _ = tx.send(result);
    });
    let remote = |detail: String| StoreError::Remote {
        location: location.to_string(),
        detail,
    };
    match rx.recv_timeout(OP_TIMEOUT + Duration::from_secs(1)) {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(remote(e.to_string())),
        Ok(Err(_)) | Err(_) => Err(remote(format!(
            "no answer within {} s",
            OP_TIMEOUT.as_secs()
        ))),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PolicyStore for EtcdStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let policies_prefix = self.k("policies/");
        let generation_key = self.generation_key();
        let mut client = self.client.clone();
        // Both reads in one transaction: one consistent revision.
        let response = self.run(async move {
            client
                .txn(Txn::new().and_then([
                    TxnOp::get(generation_key, None),
                    TxnOp::get(policies_prefix, Some(GetOptions::new().with_prefix())),
                ]))
                .await
        })?;
        let responses = response.op_responses();
        let (Some(TxnOpResponse::Get(generation)), Some(TxnOpResponse::Get(policies))) =
            (responses.first(), responses.get(1))
        else {
            return Err(self.corrupt("etcd answered a read with something else"));
        };
        let generation = match generation.kvs().first() {
            Some(kv) => std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| self.corrupt("the generation record is unreadable"))?,
            None => 0,
        };
        let mut loaded = Loaded {
            generation,
            ..Loaded::default()
        };
        let strip = self.k("policies/");
        for kv in policies.kvs() {
            let key = String::from_utf8_lossy(
                kv.key().strip_prefix(strip.as_bytes()).unwrap_or(kv.key()),
            )
            .into_owned();
            let json = String::from_utf8_lossy(kv.value());
            match decode(&key, &json) {
                Ok(policy) => loaded.policies.push(policy),
                Err(Decode::Invalid(error)) => loaded.invalid.push(InvalidRecord { key, error }),
                Err(Decode::Damaged(detail)) => {
                    return Err(self.corrupt(&format!("record {key:?}: {detail}")))
                }
            }
        }
        Ok(loaded)
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<Vec<u64>, StoreError> {
        let result = self.commit_once(commit);
        self.note(result)
    }

    fn history(&self, kind: Kind, name: &str) -> Result<Vec<Revision>, StoreError> {
        let prefix = self.history_prefix(&key(kind, name));
        self.range(prefix)?
            .into_iter()
            .map(|(k, v)| {
                records::decode_revision(&String::from_utf8_lossy(&v)).map_err(|detail| {
                    self.corrupt(&format!(
                        "history entry {:?}: {detail}",
                        String::from_utf8_lossy(&k)
                    ))
                })
            })
            .collect()
    }

    fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let strip = self.k("aux/");
        Ok(self
            .range(format!("{strip}{prefix}"))?
            .into_iter()
            .map(|(k, v)| {
                let k = k.strip_prefix(strip.as_bytes()).unwrap_or(&k);
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|(k, v)| {
                let key = self.k(&format!("aux/{k}"));
                match v {
                    Some(v) => TxnOp::put(key, v.clone(), None),
                    None => TxnOp::delete(key, None),
                }
            })
            .collect();
        let mut client = self.client.clone();
        let result = self
            .run(async move { client.txn(Txn::new().and_then(ops)).await })
            .map(|_| ());
        self.note(result)
    }

    fn health(&self) -> StoreHealth {
        lock(&self.health).clone()
    }

    fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    fn recover(&self) -> Result<(), StoreError> {
        let result = self.current_revision().map(|_| ());
        if result.is_ok() {
            *lock(&self.health) = StoreHealth::Healthy;
        }
        result
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    fn put_ephemeral(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let full = self.k(&format!("ephemeral/{key}"));
        for attempt in 0..2 {
            let lease = self.lease()?;
            let mut client = self.client.clone();
            let (k, v) = (full.clone(), value.clone());
            match self.run(async move {
                client
                    .put(k, v, Some(PutOptions::new().with_lease(lease)))
                    .await
            }) {
                Ok(_) => return Ok(()),
                // The lease expired (e.g. etcd was down longer than its TTL): grant anew.
                Err(StoreError::Remote { detail, .. })
                    if attempt == 0 && detail.contains("lease not found") =>
                {
                    *lock(&self.lease) = None;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn ephemeral_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let strip = self.k("ephemeral/");
        Ok(self
            .range(format!("{strip}{prefix}"))?
            .into_iter()
            .map(|(k, v)| {
                let k = k.strip_prefix(strip.as_bytes()).unwrap_or(&k);
                (String::from_utf8_lossy(k).into_owned(), v)
            })
            .collect())
    }
}
