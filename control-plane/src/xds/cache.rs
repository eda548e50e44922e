//! Snapshots: the policy set and module set every stream composes from, published by one
//! task that polls the module files and pushes a lone store write at once (leading edge)
//! while coalescing a burst of writes into few snapshots.

use super::modules::{ModuleCatalog, ModuleSet};
use super::node::{proxy_node, ProxyNode};
use super::types::ResourceTypes;
use crate::halt::halted;
use crate::policy_set::{PolicySet, SharedPolicySet, StoredPolicy};
use envoy_types::pb::envoy::config::core::v3::Node;
use meshwarden_common::{Kind, NodeInfo};
use meshwarden_xds::{Resource, Resources};
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
    types: Arc<ResourceTypes>,
    /// Composed resources by type, kind, variant and indices of the selected policies:
    /// proxies that select the same policies share one serialized resource.
    memo: Mutex<Memo>,
}

/// Key of a composed resource list: (type URL, kind — `None` for the resources made from
/// every kind together —, variant, selected policy indices).
type MemoKey = (&'static str, Option<Kind>, Option<String>, Vec<u32>);
type Memo = HashMap<MemoKey, Arc<Vec<Arc<Resource>>>>;

impl Snapshot {
    /// A snapshot of `policies` and `modules`, serving the default resource types.
    pub fn new(id: u64, policies: SharedPolicySet, modules: Arc<ModuleSet>) -> Self {
        Self::with_types(id, policies, modules, Arc::default())
    }

    /// A snapshot serving `types`.
    pub fn with_types(
        id: u64,
        policies: SharedPolicySet,
        modules: Arc<ModuleSet>,
        types: Arc<ResourceTypes>,
    ) -> Self {
        Self {
            id,
            policies,
            modules,
            types,
            memo: Mutex::default(),
        }
    }

    /// A snapshot serving `policies` with this one's modules and types: what the proxies
    /// would be sent if `policies` were published (for diffs; never served).
    pub fn with_policies(&self, policies: SharedPolicySet) -> Self {
        Self::with_types(self.id, policies, self.modules.clone(), self.types.clone())
    }

    fn selection(&self, node: &NodeInfo) -> HashMap<Kind, Vec<u32>> {
        selection(&self.policies, node)
    }

    /// The resources of `type_url` for `node`, sorted by name; `None` for a type not served.
    pub fn resources_of(&self, type_url: &str, node: &ProxyNode) -> Option<Resources> {
        let t = self.types.get(type_url)?;
        let variant = t.variant(node);
        let mut selection = self.selection(&node.info);
        let mut out: Vec<Arc<Resource>> = Vec::new();
        let mut every_kind: Vec<u32> = Vec::new();
        for &kind in t.kinds() {
            let indices = selection.remove(&kind).unwrap_or_default();
            every_kind.extend(&indices);
            let key = (t.type_url(), Some(kind), variant.clone(), indices);
            out.extend(self.memoized(key, |policies| {
                t.compose(kind, policies, &self.modules, variant.as_deref())
            }));
        }
        // Policy indices are unique across kinds, so the union identifies the selection.
        let key = (t.type_url(), None, variant.clone(), every_kind);
        out.extend(self.memoized(key, |policies| {
            let by_kind: Vec<(Kind, Vec<&StoredPolicy>)> = t
                .kinds()
                .iter()
                .map(|&k| {
                    (
                        k,
                        policies.iter().copied().filter(|p| p.kind() == k).collect(),
                    )
                })
                .collect();
            t.compose_all(&by_kind, &self.modules, variant.as_deref())
        }));
        self.types.rejections().substitute(&mut out);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Some(Arc::new(out))
    }

    /// The resources composed for `key` (composed now, from the policies at its indices, if
    /// no proxy needed them before).
    fn memoized(
        &self,
        key: MemoKey,
        compose: impl FnOnce(&[&StoredPolicy]) -> Vec<Arc<Resource>>,
    ) -> Vec<Arc<Resource>> {
        if let Some(c) = self.lock_memo().get(&key) {
            return c.as_ref().clone();
        }
        let policies: Vec<&StoredPolicy> = key
            .3
            .iter()
            .map(|&i| &self.policies.policies[i as usize])
            .collect();
        let composed = Arc::new(compose(&policies));
        self.lock_memo().insert(key, composed.clone());
        composed.as_ref().clone()
    }

    fn lock_memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Indices (into `set.policies`) of the policies selecting `node`, by kind (name order
/// within a kind): what the proxy is sent. A kind halted on `node` selects nothing: the
/// proxy gets an empty list, which it keeps honouring if it loses the control plane.
pub fn selection(set: &PolicySet, node: &NodeInfo) -> HashMap<Kind, Vec<u32>> {
    let mut selected: HashMap<Kind, Vec<u32>> = HashMap::new();
    for (i, p) in set.policies.iter().enumerate() {
        if p.doc.selector.selects(node) && !halted(&set.halts, p.kind(), node) {
            let i = u32::try_from(i).expect("fewer than 2^32 policies");
            selected.entry(p.kind()).or_default().push(i);
        }
    }
    selected
}

impl meshwarden_xds::Snapshot for Snapshot {
    type Node = ProxyNode;

    fn node(node: &Node) -> ProxyNode {
        proxy_node(node)
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn types(&self) -> &[&'static str] {
        self.types.urls()
    }

    fn resources(&self, type_url: &str, node: &ProxyNode) -> Option<Resources> {
        self.resources_of(type_url, node)
    }

    fn retry_rejected(&self, type_url: &str, node: &ProxyNode, message: &str) -> Option<Duration> {
        self.types.get(type_url)?.retry_rejected(node, message)
    }
}

/// Timing of the snapshot task.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotterConfig {
    /// How often module files are checked for changes.
    pub module_poll: Duration,
    /// After a published snapshot, changes arriving within this long of each other are
    /// coalesced; a window this long without a change ends the burst ...
    pub quiet: Duration,
    /// ... and a coalesced snapshot is published at most this long after its first change.
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

/// Spawns the snapshot task with default timing and types (must run inside a Tokio
/// runtime). The returned receiver holds snapshot 1 right away; the task ends when every
/// receiver is gone.
pub fn spawn_snapshotter(
    policies: watch::Receiver<SharedPolicySet>,
    modules: ModuleCatalog,
) -> watch::Receiver<Arc<Snapshot>> {
    spawn_snapshotter_with(policies, modules, SnapshotterConfig::default())
}

/// [`spawn_snapshotter`] with explicit timing.
pub fn spawn_snapshotter_with(
    policies: watch::Receiver<SharedPolicySet>,
    modules: ModuleCatalog,
    config: SnapshotterConfig,
) -> watch::Receiver<Arc<Snapshot>> {
    spawn_snapshotter_for(policies, modules, config, Arc::default())
}

/// [`spawn_snapshotter_with`] serving explicit resource types.
pub fn spawn_snapshotter_for(
    mut policies: watch::Receiver<SharedPolicySet>,
    modules: ModuleCatalog,
    config: SnapshotterConfig,
    types: Arc<ResourceTypes>,
) -> watch::Receiver<Arc<Snapshot>> {
    let first: SharedPolicySet = policies.borrow_and_update().clone();
    let snapshot = Snapshot::with_types(1, first, modules.current(), types.clone());
    let (tx, rx) = watch::channel(Arc::new(snapshot));
    tokio::spawn(run(policies, modules, tx, config, types));
    rx
}

async fn run(
    mut policies: watch::Receiver<SharedPolicySet>,
    catalog: ModuleCatalog,
    tx: watch::Sender<Arc<Snapshot>>,
    config: SnapshotterConfig,
    types: Arc<ResourceTypes>,
) {
    let mut publisher = Publisher {
        tx,
        types,
        catalog,
        next_id: 2,
        last_error: None,
    };
    let mut policies_open = true;
    let mut poll =
        tokio::time::interval_at(Instant::now() + config.module_poll, config.module_poll);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // Idle: wait for a change.
        tokio::select! {
            _ = publisher.tx.closed() => return,
            changed = policies.changed(), if policies_open => {
                if changed.is_err() {
                    policies_open = false;
                    continue;
                }
            }
            _ = poll.tick() => {
                if !refresh_modules(&mut publisher.catalog, &mut publisher.last_error).await {
                    continue;
                }
            }
        }
        // Leading edge: a lone change is published at once.
        publisher.publish(&mut policies).await;
        // Busy: changes arriving within `quiet` of each other are coalesced into one snapshot,
        // published at most `max_delay` after the first of them; a quiet window without any
        // change ends the burst.
        loop {
            let started = Instant::now();
            let mut pending = false;
            loop {
                let deadline = (Instant::now() + config.quiet).min(started + config.max_delay);
                tokio::select! {
                    changed = policies.changed(), if policies_open => {
                        policies_open = changed.is_ok();
                        pending |= policies_open;
                    }
                    _ = sleep_until(deadline) => break,
                }
            }
            if !pending {
                break;
            }
            publisher.publish(&mut policies).await;
        }
    }
}

/// Publishes snapshots with increasing ids.
struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    types: Arc<ResourceTypes>,
    catalog: ModuleCatalog,
    next_id: u64,
    last_error: Option<String>,
}

impl Publisher {
    async fn publish(&mut self, policies: &mut watch::Receiver<SharedPolicySet>) {
        // The version advertised must describe the module Envoy will read from disk now,
        // not the one seen at the last poll.
        refresh_modules(&mut self.catalog, &mut self.last_error).await;
        let set: Arc<PolicySet> = policies.borrow_and_update().clone();
        tracing::debug!(
            snapshot = self.next_id,
            generation = set.generation,
            policies = set.policies.len(),
            "publishing xDS snapshot"
        );
        self.tx.send_replace(Arc::new(Snapshot::with_types(
            self.next_id,
            set,
            self.catalog.current(),
            self.types.clone(),
        )));
        self.next_id += 1;
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
    use crate::xds::clusters::CLUSTER_TYPE_URL;
    use crate::xds::extension_configs::TYPED_EXTENSION_CONFIG;
    use crate::xds::modules::test_support::write_fake_modules;
    use serde_json::json;

    fn trace(name: &str, selector: serde_json::Value) -> StoredPolicy {
        crate::test_fixtures::trace(name, json!({ "selector": selector }))
    }

    fn node(id: &str, zone: &str) -> ProxyNode {
        ProxyNode {
            info: NodeInfo {
                id: id.into(),
                cluster: "shop".into(),
                labels: [("zone".to_string(), zone.to_string())].into(),
                namespace: None,
            },
            module_cluster: None,
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
            ..PolicySet::default()
        };
        let snap = Snapshot::new(1, Arc::new(set), modules);
        let ecds = |n: &ProxyNode| snap.resources_of(TYPED_EXTENSION_CONFIG, n).unwrap();
        let (eu1, eu2, us) = (
            ecds(&node("a", "eu")),
            ecds(&node("b", "eu")),
            ecds(&node("c", "us")),
        );
        let get = |r: &Resources, name: &str| r.iter().find(|r| r.name == name).unwrap().clone();
        let t = |r: &Resources| get(r, "meshwarden.trace");
        assert_eq!(t(&eu1).summary, vec!["all", "eu-only"]);
        assert_eq!(t(&us).summary, vec!["all"]);
        // Different node ids, same selection: the very same composed resource.
        assert!(Arc::ptr_eq(&t(&eu1), &t(&eu2)));
        assert_eq!(
            eu1.len(),
            Kind::ALL.len() + 1,
            "a separate filter per kind and the combined one"
        );
        assert!(get(&eu1, "meshwarden.fault").summary.is_empty());
        // Clusters are served too (none without mirror targets); other types are not.
        assert!(snap
            .resources_of(CLUSTER_TYPE_URL, &node("a", "eu"))
            .unwrap()
            .is_empty());
        assert!(snap
            .resources_of("type.googleapis.com/x", &node("a", "eu"))
            .is_none());
        // A proxy fetching modules over HTTP gets its own resource versions.
        let mut remote = node("d", "eu");
        remote.module_cluster = Some("cp-http".into());
        assert_ne!(t(&ecds(&remote)).version, t(&eu1).version);
    }

    #[test]
    fn a_halt_empties_the_halted_kinds_of_the_selected_proxies_only() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_modules(dir.path());
        let modules = ModuleCatalog::load(dir.path()).unwrap().current();
        let abort = json!({"abort": {"httpStatus": 503, "percentage": {"value": 100}}});
        let halt = crate::halt::Halt::new(
            "eu",
            &["fault".into()],
            meshwarden_common::Selector {
                labels: [("zone".to_string(), "eu".to_string())].into(),
                ..Default::default()
            },
            String::new(),
            0,
        )
        .unwrap();
        let set = PolicySet {
            generation: 1,
            policies: vec![
                trace("all", json!({})),
                crate::test_fixtures::stored("FaultPolicy", "chaos", abort),
            ],
            halts: vec![halt],
        };
        let snap = Snapshot::new(1, Arc::new(set), modules);
        let summary = |n: &ProxyNode, name: &str| {
            let r = snap.resources_of(TYPED_EXTENSION_CONFIG, n).unwrap();
            r.iter().find(|r| r.name == name).unwrap().summary.clone()
        };
        assert!(summary(&node("a", "eu"), "meshwarden.fault").is_empty());
        assert_eq!(summary(&node("a", "eu"), "meshwarden.trace"), ["all"]);
        assert_eq!(summary(&node("b", "us"), "meshwarden.fault"), ["chaos"]);
    }

    #[tokio::test]
    async fn publishes_a_lone_change_at_once_coalesces_bursts_and_sees_module_changes() {
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
        let set = |generation| {
            Arc::new(PolicySet {
                generation,
                ..PolicySet::default()
            })
        };
        // A lone change: published well before the quiet period would have ended.
        ptx.send_replace(set(1));
        tokio::time::timeout(Duration::from_millis(150), snaps.changed())
            .await
            .expect("leading edge")
            .unwrap();
        let s = snaps.borrow_and_update().clone();
        assert_eq!((s.id, s.policies.generation), (2, 1));
        // A burst right after it: one more snapshot with the last generation.
        for generation in 2..=5 {
            ptx.send_replace(set(generation));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        snaps.changed().await.unwrap();
        let s = snaps.borrow_and_update().clone();
        assert_eq!((s.id, s.policies.generation), (3, 5));
        let before = s.modules.module().sha256.clone();
        std::fs::write(dir.path().join("meshwarden.wasm"), b"new module").unwrap();
        tokio::time::timeout(Duration::from_secs(10), snaps.changed())
            .await
            .expect("module change noticed")
            .unwrap();
        let s = snaps.borrow_and_update().clone();
        assert_eq!(s.id, 4);
        assert_ne!(s.modules.module().sha256, before);
    }
}
