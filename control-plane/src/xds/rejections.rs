//! What proxies rejected, remembered beyond one stream and one process.
//!
//! Two facts are kept, bounded, and persisted in the store's auxiliary records:
//! - **rejected versions**: resource name and version a proxy NACKed, with Envoy's message
//!   and the version that proxy held before (its last accepted). Whenever a proxy's
//!   composition yields a rejected version, the previous good one is served instead, or
//!   nothing if none is known; so a rejected version is never sent again — after a
//!   reconnect, a control-plane restart, or to a proxy that starts fresh — until the content
//!   changes.
//! - **NACKs per proxy**: the last rejection of each node and resource, so `status` keeps
//!   showing it after the proxy reconnects or the control plane restarts.

use super::proxies::NackStatus;
use envoy_types::pb::google::protobuf::Any;
use meshwarden_xds::Resource;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Rejected versions remembered (the oldest is forgotten first).
pub const MAX_REJECTED_VERSIONS: usize = 1_000;
/// Per-proxy NACKs remembered (the oldest is forgotten first).
pub const MAX_NACKS: usize = 10_000;
/// Persistence writes that may wait; more are dropped (and the memory stays in-process).
const PERSIST_QUEUE: usize = 1_024;

/// Auxiliary-record writes: key and new value (`None` deletes).
type AuxWrites = Vec<(String, Option<String>)>;

const REJECTED_PREFIX: &str = "xds-rejected\n";
const NACK_PREFIX: &str = "xds-nack\n";

/// Where the memory is persisted: auxiliary records by key.
pub trait AuxStore: Send + Sync + 'static {
    /// Every record whose key starts with `prefix`.
    fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, String>;
    /// Puts (`Some`) or deletes (`None`) records.
    fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), String>;
}

/// A rejected version and what to serve instead.
#[derive(Debug, Clone)]
struct Rejected {
    message: String,
    at: SystemTime,
    /// The version the rejecting proxy held before.
    fallback: Option<Arc<Resource>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredResource {
    name: String,
    version: String,
    type_url: String,
    /// Hex of the packed resource.
    value: String,
    summary: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredRejected {
    message: String,
    at_unix_ms: u64,
    fallback: Option<StoredResource>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredNack {
    version: String,
    message: String,
    at_unix_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// By (resource name, version).
    rejected: HashMap<(String, String), Rejected>,
    /// By (node id, resource name).
    nacks: HashMap<(String, String), NackStatus>,
}

/// The memory of rejections, shared by the snapshots (which substitute) and the streams
/// (which record). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Rejections {
    inner: Arc<Mutex<Inner>>,
    persist: Option<mpsc::Sender<AuxWrites>>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn rejected_key(name: &str, version: &str) -> String {
    format!("{REJECTED_PREFIX}{name}\n{version}")
}

fn nack_key(node: &str, name: &str) -> String {
    format!("{NACK_PREFIX}{node}\n{name}")
}

/// The two parts after a key's prefix.
fn key_parts<'a>(key: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('\n')
}

impl Rejections {
    /// A memory persisted to `store`: loads what it holds and writes changes from a
    /// background task (must run inside a Tokio runtime).
    pub fn persisted(store: Arc<dyn AuxStore>) -> Result<Self, String> {
        let mut inner = Inner::default();
        for (key, json) in store.aux_records(REJECTED_PREFIX)? {
            let (Some((name, version)), Ok(r)) = (
                key_parts(&key, REJECTED_PREFIX),
                serde_json::from_str::<StoredRejected>(&json),
            ) else {
                continue;
            };
            let fallback = r.fallback.and_then(|f| {
                Some(Arc::new(Resource {
                    body: Any {
                        type_url: f.type_url,
                        value: hex::decode(f.value).ok()?,
                    },
                    name: f.name,
                    version: f.version,
                    summary: f.summary,
                }))
            });
            inner.rejected.insert(
                (name.to_string(), version.to_string()),
                Rejected {
                    message: r.message,
                    at: from_unix_ms(r.at_unix_ms),
                    fallback,
                },
            );
        }
        for (key, json) in store.aux_records(NACK_PREFIX)? {
            let (Some((node, name)), Ok(n)) = (
                key_parts(&key, NACK_PREFIX),
                serde_json::from_str::<StoredNack>(&json),
            ) else {
                continue;
            };
            inner.nacks.insert(
                (node.to_string(), name.to_string()),
                NackStatus {
                    version: n.version,
                    message: n.message,
                    at: from_unix_ms(n.at_unix_ms),
                },
            );
        }
        let (tx, mut rx) = mpsc::channel::<AuxWrites>(PERSIST_QUEUE);
        tokio::spawn(async move {
            while let Some(mut writes) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    writes.extend(more);
                }
                let store = store.clone();
                let written = tokio::task::spawn_blocking(move || store.write_aux(&writes)).await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(error = %e, "cannot persist rejected configurations");
                }
            }
        });
        tracing::info!(
            rejected_versions = inner.rejected.len(),
            nacks = inner.nacks.len(),
            "remembered rejections loaded"
        );
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            persist: Some(tx),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, writes: AuxWrites) {
        if let Some(tx) = &self.persist {
            if tx.try_send(writes).is_err() {
                tracing::warn!(
                    "rejection memory persistence is behind; a change stays in memory only"
                );
            }
        }
    }

    /// Records that node `node` rejected `version` of resource `name` while holding
    /// `previous` (its last accepted version of it, if any).
    pub fn record(
        &self,
        node: &str,
        name: &str,
        version: &str,
        message: &str,
        previous: Option<Arc<Resource>>,
    ) {
        let at = SystemTime::now();
        let mut writes = Vec::new();
        let mut inner = self.lock();
        let key = (name.to_string(), version.to_string());
        let fallback = previous
            .filter(|p| p.version != version)
            .or_else(|| inner.rejected.get(&key).and_then(|r| r.fallback.clone()));
        let stored = StoredRejected {
            message: message.to_string(),
            at_unix_ms: unix_ms(at),
            fallback: fallback.as_ref().map(|f| StoredResource {
                name: f.name.clone(),
                version: f.version.clone(),
                type_url: f.body.type_url.clone(),
                value: hex::encode(&f.body.value),
                summary: f.summary.clone(),
            }),
        };
        writes.push((
            rejected_key(name, version),
            serde_json::to_string(&stored).ok(),
        ));
        inner.rejected.insert(
            key,
            Rejected {
                message: message.to_string(),
                at,
                fallback,
            },
        );
        let nack = NackStatus {
            version: version.to_string(),
            message: message.to_string(),
            at,
        };
        let stored = StoredNack {
            version: nack.version.clone(),
            message: nack.message.clone(),
            at_unix_ms: unix_ms(at),
        };
        writes.push((nack_key(node, name), serde_json::to_string(&stored).ok()));
        inner
            .nacks
            .insert((node.to_string(), name.to_string()), nack);
        evict(&mut inner.rejected, MAX_REJECTED_VERSIONS, |r| r.at)
            .into_iter()
            .for_each(|(n, v)| writes.push((rejected_key(&n, &v), None)));
        evict(&mut inner.nacks, MAX_NACKS, |n| n.at)
            .into_iter()
            .for_each(|(n, r)| writes.push((nack_key(&n, &r), None)));
        drop(inner);
        self.save(writes);
    }

    /// The last NACK of each resource of `node`, for status.
    pub fn nacks_of(&self, node: &str) -> Vec<(String, NackStatus)> {
        self.lock()
            .nacks
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|((_, name), nack)| (name.clone(), nack.clone()))
            .collect()
    }

    /// Whether `version` of `name` was rejected, and Envoy's message.
    pub fn rejection(&self, name: &str, version: &str) -> Option<String> {
        self.lock()
            .rejected
            .get(&(name.to_string(), version.to_string()))
            .map(|r| r.message.clone())
    }

    /// Replaces every rejected version in `resources` by the version served before it, or
    /// drops it when none is known.
    pub fn substitute(&self, resources: &mut Vec<Arc<Resource>>) {
        let inner = self.lock();
        if inner.rejected.is_empty() {
            return;
        }
        resources.retain_mut(
            |r| match inner.rejected.get(&(r.name.clone(), r.version.clone())) {
                None => true,
                Some(rejected) => match &rejected.fallback {
                    Some(previous) => {
                        *r = previous.clone();
                        true
                    }
                    None => false,
                },
            },
        );
    }
}

/// Removes the oldest entries beyond `max`; returns their keys.
fn evict<V>(
    map: &mut HashMap<(String, String), V>,
    max: usize,
    at: impl Fn(&V) -> SystemTime,
) -> Vec<(String, String)> {
    if map.len() <= max {
        return Vec::new();
    }
    let mut by_age: Vec<((String, String), SystemTime)> =
        map.iter().map(|(k, v)| (k.clone(), at(v))).collect();
    by_age.sort_by_key(|(_, t)| *t);
    let excess = map.len() - max;
    by_age
        .into_iter()
        .take(excess)
        .map(|(k, _)| {
            map.remove(&k);
            k
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct MemStore(Mutex<std::collections::BTreeMap<String, String>>);

    impl AuxStore for MemStore {
        fn aux_records(&self, prefix: &str) -> Result<Vec<(String, String)>, String> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }

        fn write_aux(&self, writes: &[(String, Option<String>)]) -> Result<(), String> {
            let mut m = self.0.lock().unwrap();
            for (k, v) in writes {
                match v {
                    Some(v) => m.insert(k.clone(), v.clone()),
                    None => m.remove(k),
                };
            }
            Ok(())
        }
    }

    fn resource(name: &str, version: &str) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.into(),
            version: version.into(),
            body: Any {
                type_url: "t".into(),
                value: version.as_bytes().to_vec(),
            },
            summary: vec!["p".into()],
        })
    }

    #[tokio::test]
    async fn rejected_versions_are_replaced_by_the_last_good_one_across_restarts() {
        let store = Arc::new(MemStore::default());
        let memory = Rejections::persisted(store.clone()).unwrap();
        memory.record(
            "p1",
            "meshwarden.trace",
            "v2",
            "bad",
            Some(resource("meshwarden.trace", "v1")),
        );
        memory.record("p1", "meshwarden.fault", "f2", "bad too", None);
        // Wait for the background write.
        for _ in 0..100 {
            if store.aux_records("").unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let again = Rejections::persisted(store).unwrap();
        let mut served = vec![
            resource("meshwarden.fault", "f2"),
            resource("meshwarden.mirror", "m1"),
            resource("meshwarden.trace", "v2"),
        ];
        again.substitute(&mut served);
        let got: Vec<_> = served
            .iter()
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect();
        assert_eq!(
            got,
            [("meshwarden.mirror", "m1"), ("meshwarden.trace", "v1")]
        );
        assert_eq!(served[1].body.value, b"v1");
        let nacks = again.nacks_of("p1");
        assert_eq!(nacks.len(), 2);
        assert_eq!(
            again.rejection("meshwarden.trace", "v2").as_deref(),
            Some("bad")
        );
    }

    #[test]
    fn memory_is_bounded() {
        let memory = Rejections::default();
        for i in 0..(MAX_REJECTED_VERSIONS + 10) {
            memory.record(&format!("n{i}"), "r", &format!("v{i}"), "m", None);
        }
        assert_eq!(memory.lock().rejected.len(), MAX_REJECTED_VERSIONS);
        assert!(
            memory.rejection("r", "v0").is_none(),
            "the oldest went first"
        );
    }
}
