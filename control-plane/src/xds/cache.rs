//! Snapshots: the policy set and module set every stream composes from, published by one
//! task that debounces bursts of store writes and polls the module files.

use super::modules::{ModuleCatalog, ModuleSet};
use super::resources::{compose, ComposedResource};
use crate::policy_set::{PolicySet, SharedPolicySet};
use meshwarden_common::{Kind, NodeInfo};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

/// Everything the xDS streams serve at one point in time.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot of this process (not shared across
    /// replicas; resource versions are).
    pub id: u64,
    pub policies: SharedPolicySet,
    pub modules: Arc<ModuleSet>,
    /// Composed resources by (kind, indices of the selected policies): proxies that select
    /// the same policies share one serialized resource.
    memo: Mutex<Memo>,
}

/// Composed resources by kind and indices of the selected policies.
type Memo = HashMap<(Kind, Vec<u32>), Arc<ComposedResource>>;

/// The resources of one proxy, in [`Kind::ALL`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResources {
    resources: Vec<Arc<ComposedResource>>,
}

impl NodeResources {
    /// Looks a resource up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<ComposedResource>> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// Every resource, in [`Kind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ComposedResource>> {
        self.resources.iter()
    }
}

impl Snapshot {
    /// A snapshot of `policies` and `modules`.
    pub fn new(id: u64, policies: SharedPolicySet, modules: Arc<ModuleSet>) -> Self {
        Self {
            id,
            policies,
            modules,
            memo: Mutex::default(),
        }
    }

    /// The four resources for `node`; composition is shared between proxies selecting the
    /// same policies.
    pub fn resources_for(&self, node: &NodeInfo) -> NodeResources {
        let mut selected: HashMap<Kind, Vec<u32>> = HashMap::new();
        for (i, p) in self.policies.policies.iter().enumerate() {
            if p.doc.selector.selects(node) {
                let i = u32::try_from(i).expect("fewer than 2^32 policies");
                selected.entry(p.kind()).or_default().push(i);
            }
        }
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        let resources = Kind::ALL
            .into_iter()
            .map(|kind| {
                let key = (kind, selected.remove(&kind).unwrap_or_default());
                if let Some(r) = memo.get(&key) {
                    return r.clone();
                }
                let policies = key.1.iter().map(|&i| &self.policies.policies[i as usize]);
                let r = Arc::new(compose(kind, policies, &self.modules));
                memo.insert(key, r.clone());
                r
            })
            .collect();
        NodeResources { resources }
    }
}

/// Timing of the snapshot task.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotterConfig {
    /// How often module files are checked for changes.
    pub module_poll: Duration,
    /// A burst of policy changes ends after this long without another one ...
    pub quiet: Duration,
    /// ... or this long after its first change, whichever comes first.
    pub max_delay: Duration,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        Self {
            module_poll: Duration::from_secs(2),
            quiet: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        }
    }
}

/// Spawns the snapshot task with default timing (must run inside a Tokio runtime). The
/// returned receiver holds snapshot 1 right away; the task ends when every receiver is gone.
pub fn spawn_snapshotter(
    policies: watch::Receiver<SharedPolicySet>,
    modules: ModuleCatalog,
) -> watch::Receiver<Arc<Snapshot>> {
    spawn_snapshotter_with(policies, modules, SnapshotterConfig::default())
}

/// [`spawn_snapshotter`] with explicit timing.
pub fn spawn_snapshotter_with(
    mut policies: watch::Receiver<SharedPolicySet>,
    modules: ModuleCatalog,
    config: SnapshotterConfig,
) -> watch::Receiver<Arc<Snapshot>> {
    let first: SharedPolicySet = policies.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Arc::new(Snapshot::new(1, first, modules.current())));
    tokio::spawn(run(policies, modules, tx, config));
    rx
}

async fn run(
    mut policies: watch::Receiver<SharedPolicySet>,
    mut catalog: ModuleCatalog,
    tx: watch::Sender<Arc<Snapshot>>,
    config: SnapshotterConfig,
) {
    let mut next_id = 2;
    let mut policies_open = true;
    let mut last_error: Option<String> = None;
    let mut poll =
        tokio::time::interval_at(Instant::now() + config.module_poll, config.module_poll);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            changed = policies.changed(), if policies_open => {
                if changed.is_err() {
                    policies_open = false;
                    continue;
                }
            }
            _ = poll.tick() => {
                if !refresh_modules(&mut catalog, &mut last_error).await {
                    continue;
                }
            }
        }
        let started = Instant::now();
        loop {
            let deadline = (Instant::now() + config.quiet).min(started + config.max_delay);
            tokio::select! {
                changed = policies.changed(), if policies_open => {
                    policies_open = changed.is_ok();
                }
                _ = sleep_until(deadline) => break,
            }
        }
        // The version advertised must describe the module Envoy will read from disk now,
        // not the one seen at the last poll.
        refresh_modules(&mut catalog, &mut last_error).await;
        let set: Arc<PolicySet> = policies.borrow_and_update().clone();
        tracing::debug!(
            snapshot = next_id,
            generation = set.generation,
            policies = set.policies.len(),
            "publishing xDS snapshot"
        );
        tx.send_replace(Arc::new(Snapshot::new(next_id, set, catalog.current())));
        next_id += 1;
    }
}

/// Re-reads changed module files off the async threads; true if a module changed.
async fn refresh_modules(catalog: &mut ModuleCatalog, last_error: &mut Option<String>) -> bool {
    let mut work = catalog.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let result = work.refresh();
        (work, result)
    })
    .await;
    let Ok((refreshed, result)) = outcome else {
        return false;
    };
    match result {
        Ok(changed) => {
            *catalog = refreshed;
            *last_error = None;
            if changed {
                tracing::info!("wasm module changed on disk; pushing new resource versions");
            }
            changed
        }
        Err(e) => {
            let text = e.to_string();
            if last_error.as_deref() != Some(text.as_str()) {
                tracing::warn!("{text}; keeping the previous module");
                *last_error = Some(text);
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_set::{content_version, StoredPolicy};
    use crate::xds::modules::test_support::write_fake_modules;
    use meshwarden_common::PolicyDocument;
    use serde_json::json;

    fn trace(name: &str, selector: serde_json::Value) -> StoredPolicy {
        let doc = PolicyDocument::from_value(&json!({
            "apiVersion": "meshwarden.dev/v1alpha1",
            "kind": "TracePolicy",
            "metadata": {"name": name},
            "spec": {"selector": selector},
        }))
        .unwrap();
        StoredPolicy {
            version: content_version(&doc),
            doc,
            generation: 1,
            updated_unix_ms: 0,
        }
    }

    fn node(id: &str, zone: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            cluster: "shop".into(),
            labels: [("zone".to_string(), zone.to_string())].into(),
        }
    }

    #[test]
    fn selection_and_sharing() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_modules(dir.path());
        let modules = ModuleCatalog::load(dir.path()).unwrap().current();
        let set = PolicySet {
            generation: 1,
            policies: vec![
                trace("all", json!({})),
                trace("eu-only", json!({"labels": {"zone": "eu"}})),
            ],
        };
        let snap = Snapshot::new(1, Arc::new(set), modules);
        let eu1 = snap.resources_for(&node("a", "eu"));
        let eu2 = snap.resources_for(&node("b", "eu"));
        let us = snap.resources_for(&node("c", "us"));
        let t = |r: &NodeResources| r.get("meshwarden.trace").unwrap().clone();
        assert_eq!(t(&eu1).policies, vec!["all", "eu-only"]);
        assert_eq!(t(&us).policies, vec!["all"]);
        // Different node ids, same selection: the very same composed resource.
        assert!(Arc::ptr_eq(&t(&eu1), &t(&eu2)));
        assert_eq!(eu1.iter().count(), 4);
        assert!(eu1.get("meshwarden.fault").unwrap().policies.is_empty());
    }

    #[tokio::test]
    async fn debounces_bursts_and_sees_module_changes() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_modules(dir.path());
        let catalog = ModuleCatalog::load(dir.path()).unwrap();
        let (ptx, prx) = watch::channel(Arc::new(PolicySet::default()));
        let config = SnapshotterConfig {
            module_poll: Duration::from_millis(50),
            quiet: Duration::from_millis(300),
            max_delay: Duration::from_secs(3),
        };
        let mut snaps = spawn_snapshotter_with(prx, catalog, config);
        assert_eq!(snaps.borrow_and_update().id, 1);
        for generation in 1..=5 {
            ptx.send_replace(Arc::new(PolicySet {
                generation,
                policies: vec![],
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        snaps.changed().await.unwrap();
        let s = snaps.borrow_and_update().clone();
        assert_eq!((s.id, s.policies.generation), (2, 5));
        let before = s.modules.get(Kind::MirrorPolicy).sha256.clone();
        std::fs::write(dir.path().join("meshwarden_mirror.wasm"), b"new mirror").unwrap();
        tokio::time::timeout(Duration::from_secs(10), snaps.changed())
            .await
            .expect("module change noticed")
            .unwrap();
        let s = snaps.borrow_and_update().clone();
        assert_eq!(s.id, 3);
        assert_ne!(s.modules.get(Kind::MirrorPolicy).sha256, before);
    }
}
