//! The [`PolicyStore`] contract as tests any implementation runs against a fresh, empty
//! store: the redb store runs them (`store.rs`), an etcd store will run the same ones.

use super::{Commit, HistoryChange, PolicyChange, PolicyStore};
use crate::policy_set::StoredPolicy;
use crate::store::StoreError;
use crate::test_fixtures::trace;
use meshwarden_common::Kind;
use serde_json::json;

/// A TracePolicy `name` sampling `pct` percent.
fn sampled(name: &str, pct: u32) -> StoredPolicy {
    trace(name, json!({ "samplingPercentage": pct }))
}

/// A change creating or updating `p` (the history type does not matter to a store), based
/// on `base_revision` if given.
pub(crate) fn put<'a>(p: &'a StoredPolicy, base_revision: Option<u64>) -> PolicyChange<'a> {
    PolicyChange {
        kind: p.kind(),
        name: p.name(),
        policy: Some(p),
        change: HistoryChange::Updated,
        deleted_version: "",
        rollback_of: None,
        base_revision,
    }
}

/// A change deleting the TracePolicy `name`.
pub(crate) fn delete(name: &str) -> PolicyChange<'_> {
    PolicyChange {
        kind: Kind::TracePolicy,
        name,
        policy: None,
        change: HistoryChange::Deleted,
        deleted_version: "v",
        rollback_of: None,
        base_revision: None,
    }
}

fn commit(
    store: &dyn PolicyStore,
    generation: u64,
    changes: &[PolicyChange<'_>],
    history_limit: usize,
) -> Result<Vec<u64>, StoreError> {
    store.commit(&Commit {
        generation,
        changes,
        actor: "tester",
        at_unix_ms: 1_700_000_000_000,
        history_limit,
    })
}

fn revisions(store: &dyn PolicyStore, name: &str) -> Vec<u64> {
    let history = store.history(Kind::TracePolicy, name).unwrap();
    history.iter().map(|r| r.revision).collect()
}

/// Revisions are per policy, from 1, continue after a delete, and each commit's
/// revisions and records are read back together.
pub fn revisions_are_per_policy_and_continue_after_a_delete(store: &dyn PolicyStore) {
    let (a1, b1) = (sampled("a", 1), sampled("b", 1));
    assert_eq!(
        commit(store, 1, &[put(&a1, None), put(&b1, None)], 50).unwrap(),
        [1, 1]
    );
    let a2 = sampled("a", 2);
    assert_eq!(commit(store, 2, &[put(&a2, None)], 50).unwrap(), [2]);
    assert_eq!(commit(store, 3, &[delete("a")], 50).unwrap(), [3]);
    let a4 = sampled("a", 4);
    assert_eq!(commit(store, 4, &[put(&a4, None)], 50).unwrap(), [4]);
    let loaded = store.load().unwrap();
    assert_eq!(loaded.generation, 4);
    let stored: Vec<_> = loaded
        .policies
        .iter()
        .map(|p| (p.name(), p.revision))
        .collect();
    assert_eq!(stored, [("a", 4), ("b", 1)]);
    let history = store.history(Kind::TracePolicy, "a").unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|r| (r.revision, r.change, r.generation, r.document.is_some()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, HistoryChange::Updated, 1, true),
            (2, HistoryChange::Updated, 2, true),
            (3, HistoryChange::Deleted, 3, false),
            (4, HistoryChange::Updated, 4, true),
        ]
    );
    assert_eq!(
        (history[1].version.as_str(), history[1].actor.as_str()),
        (a2.version.as_str(), "tester")
    );
    assert!(store
        .history(Kind::TracePolicy, "never")
        .unwrap()
        .is_empty());
}

/// At most `history_limit` revisions are kept per policy; numbering is not affected.
pub fn history_is_bounded_per_policy(store: &dyn PolicyStore) {
    for g in 1..=8u32 {
        let p = sampled("a", g);
        commit(store, u64::from(g), &[put(&p, None)], 3).unwrap();
    }
    let other = sampled("other", 1);
    commit(store, 9, &[put(&other, None)], 3).unwrap();
    assert_eq!(revisions(store, "a"), [6, 7, 8]);
    assert_eq!(revisions(store, "other"), [1]);
}

/// A change whose base revision is not the stored one fails the whole commit with
/// [`StoreError::Conflict`]; nothing of it is written and the store stays healthy.
pub fn a_stale_base_revision_writes_nothing(store: &dyn PolicyStore) {
    let a1 = sampled("a", 1);
    commit(store, 1, &[put(&a1, Some(0))], 50).unwrap();
    let (b, a2) = (sampled("b", 1), sampled("a", 2));
    let err = commit(store, 2, &[put(&b, Some(0)), put(&a2, Some(0))], 50).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 0,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.health(), crate::store::StoreHealth::Healthy);
    let loaded = store.load().unwrap();
    assert_eq!((loaded.generation, loaded.policies.len()), (1, 1));
    assert!(revisions(store, "b").is_empty());
    assert_eq!(
        commit(store, 2, &[put(&b, Some(0)), put(&a2, Some(1))], 50).unwrap(),
        [1, 2]
    );
}

/// A commit whose generation is not the stored one plus one (another process committed
/// since this one loaded) fails with [`StoreError::Stale`] and writes nothing.
pub fn a_stale_generation_writes_nothing(store: &dyn PolicyStore) {
    let a1 = sampled("a", 1);
    commit(store, 1, &[put(&a1, None)], 50).unwrap();
    let a2 = sampled("a", 2);
    for generation in [1, 3] {
        let err = commit(store, generation, &[put(&a2, None)], 50).unwrap_err();
        assert!(
            matches!(err, StoreError::Stale { stored: 1, .. }),
            "generation {generation}: {err}"
        );
    }
    assert_eq!(store.health(), crate::store::StoreHealth::Healthy);
    let loaded = store.load().unwrap();
    assert_eq!(loaded.generation, 1);
    assert_eq!(loaded.policies[0].version, a1.version);
    assert_eq!(revisions(store, "a"), [1]);
    assert_eq!(commit(store, 2, &[put(&a2, Some(1))], 50).unwrap(), [2]);
}

/// Every contract test, each on a fresh store from `fresh`.
pub fn run_all<S: PolicyStore>(mut fresh: impl FnMut() -> S) {
    revisions_are_per_policy_and_continue_after_a_delete(&fresh());
    history_is_bounded_per_policy(&fresh());
    a_stale_base_revision_writes_nothing(&fresh());
    a_stale_generation_writes_nothing(&fresh());
}
