//! What a proxy tells the control plane about a policy's breakers, for `meshwarden
//! status`: the breakers that are not closed ([`BreakerSet::snapshot`]), sent as a unary
//! gRPC call (`BreakerStatusService.Report`) from the root context when that set changes,
//! and every [`HEARTBEAT_MS`] while it is not empty (the control plane forgets a report
//! after [`STALE_AFTER_MS`]).
//!
//! Every worker of a proxy sees the same breakers, so one report per change is enough:
//! each transition bumps the policy's `transitions` count ([`note_transition`]), the
//! `reported` key holds the count and time of the last report, and the worker whose
//! compare-and-swap moves it on ([`claim`]) reads the breakers and sends. While nothing
//! changes, a tick costs two shared-data reads per policy, however many breakers it has.

use super::breaker::{Breaker, State};
use super::shared::BreakerSet;
use crate::proto::{put_len, put_message, put_uint};
use crate::ratelimit::key::describe;
use crate::ratelimit::store::{ensure_exists, update, Contended, SharedStore, Update};

/// gRPC service of the report.
pub const SERVICE: &str = "meshwarden.v1alpha1.BreakerStatusService";
/// Its method.
pub const REPORT_METHOD: &str = "Report";
/// A set that did not change is reported again this often while it is not empty.
pub const HEARTBEAT_MS: u64 = 10_000;
/// The control plane forgets a report this old (a proxy that died, or stopped reporting).
pub const STALE_AFTER_MS: u64 = 3 * HEARTBEAT_MS + 5_000;
/// After a failed report the next one waits this long.
pub const RETRY_MS: u64 = 5_000;
/// Most breakers in one report (the first by descriptor; the count says how many more).
pub const MAX_REPORTED: usize = 64;

/// A breaker that is not closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBreaker {
    /// Its descriptor values (`a,b`), empty for a policy without descriptors.
    pub descriptor: String,
    pub state: State,
    /// When it entered `state` (ms since the Unix epoch).
    pub since_ms: u64,
}

/// The breakers of one policy that are not closed, by descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// At most [`MAX_REPORTED`].
    pub breakers: Vec<OpenBreaker>,
    /// How many are not closed, including those left out.
    pub total: usize,
}

impl BreakerSet {
    /// The policy's breakers that are not closed, read from `store`.
    pub fn snapshot<S: SharedStore + ?Sized>(&self, store: &S) -> Snapshot {
        let mut breakers: Vec<OpenBreaker> = self
            .keys()
            .filter_map(|key| self.breaker(store, &key))
            .filter_map(|b| open(&b))
            .collect();
        breakers.sort_by(|a, b| a.descriptor.cmp(&b.descriptor));
        let total = breakers.len();
        breakers.truncate(MAX_REPORTED);
        Snapshot { breakers, total }
    }

    /// Shared-data key recording the policy's last report.
    pub fn reported_key(&self) -> String {
        format!("{}/reported", self.prefix())
    }

    /// Shared-data key counting the transitions of the policy's breakers.
    pub fn transitions_key(&self) -> String {
        format!("{}/transitions", self.prefix())
    }
}

fn open(b: &Breaker) -> Option<OpenBreaker> {
    Some(OpenBreaker {
        descriptor: describe(b.owner()),
        state: b.state(),
        since_ms: b.since_ms()?,
    })
}

/// The last report of a policy, as the `reported` key holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reported {
    /// The transition count the report covered.
    seq: u64,
    at_ms: u64,
    /// Some breaker was not closed.
    nonempty: bool,
    /// The report failed: the next one waits [`RETRY_MS`].
    failed: bool,
}

impl Reported {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let seq = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
        let at_ms = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        let flags = *bytes.get(16)?;
        Some(Self {
            seq,
            at_ms,
            nonempty: flags & 1 != 0,
            failed: flags & 2 != 0,
        })
    }

    fn encode(self) -> Vec<u8> {
        let mut out = self.seq.to_le_bytes().to_vec();
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.push(u8::from(self.nonempty) | (u8::from(self.failed) << 1));
        out
    }

    fn due(self, seq: u64, now_ms: u64) -> bool {
        let age = now_ms.saturating_sub(self.at_ms);
        if self.failed {
            age >= RETRY_MS
        } else {
            self.seq != seq || (self.nonempty && age >= HEARTBEAT_MS)
        }
    }
}

fn read_u64<S: SharedStore + ?Sized>(store: &S, key: &str) -> u64 {
    store
        .get(key)
        .0
        .and_then(|b| Some(u64::from_le_bytes(b.get(0..8)?.try_into().ok()?)))
        .unwrap_or(0)
}

/// Creates the policy's `reported` and `transitions` keys (idempotent), so writes are true
/// compare-and-swaps.
pub fn prepare<S: SharedStore + ?Sized>(store: &S, set: &BreakerSet) {
    ensure_exists(store, &set.reported_key());
    ensure_exists(store, &set.transitions_key());
}

/// Counts a transition of one of the policy's breakers (by the worker whose write made
/// it), so the next tick reports the new set.
pub fn note_transition<S: SharedStore + ?Sized>(
    store: &S,
    set: &BreakerSet,
) -> Result<(), Contended> {
    update(store, &set.transitions_key(), |cur| {
        let n = cur
            .get(0..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        Update::Write(n.wrapping_add(1).to_le_bytes().to_vec(), ())
    })
}

/// The set this worker should report now, if any: `Some` for exactly one worker per
/// change (or heartbeat), which must then send it. Costs two shared-data reads when
/// nothing is due; the breakers are read only when a report is.
pub fn claim<S: SharedStore + ?Sized>(
    store: &S,
    set: &BreakerSet,
    now_ms: u64,
) -> Result<Option<Snapshot>, Contended> {
    let seq = read_u64(store, &set.transitions_key());
    let mut snapshot: Option<Snapshot> = None;
    update(store, &set.reported_key(), |cur| {
        if Reported::decode(cur).is_some_and(|r| !r.due(seq, now_ms)) {
            return Update::Keep(None);
        }
        let snap = snapshot.get_or_insert_with(|| set.snapshot(store)).clone();
        let reported = Reported {
            seq,
            at_ms: now_ms,
            nonempty: snap.total > 0,
            failed: false,
        };
        Update::Write(reported.encode(), Some(snap))
    })
}

/// The report sent at `now_ms` failed: the next one is due after [`RETRY_MS`], whatever
/// the set.
pub fn failed<S: SharedStore + ?Sized>(
    store: &S,
    set: &BreakerSet,
    now_ms: u64,
) -> Result<(), Contended> {
    update(store, &set.reported_key(), |cur| {
        let mut r = Reported::decode(cur).unwrap_or(Reported {
            seq: 0,
            at_ms: now_ms,
            nonempty: false,
            failed: true,
        });
        r.failed = true;
        r.at_ms = now_ms;
        Update::Write(r.encode(), ())
    })
}

/// `meshwarden.v1alpha1.BreakerReport{node_id = 1, policy = 2, breakers = 3, total = 4}`,
/// each breaker an `OpenBreaker{policy = 1, descriptor = 2, state = 3, since_unix_ms = 4}`.
pub fn encode_report(node_id: &str, policy: &str, snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, 1, node_id.as_bytes());
    put_len(&mut out, 2, policy.as_bytes());
    for b in &snapshot.breakers {
        put_message(&mut out, 3, |m| {
            put_len(m, 1, policy.as_bytes());
            if !b.descriptor.is_empty() {
                put_len(m, 2, b.descriptor.as_bytes());
            }
            put_len(m, 3, b.state.as_str().as_bytes());
            put_uint(m, 4, b.since_ms);
        });
    }
    put_uint(&mut out, 4, snapshot.total as u64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuitbreaker::{Admitted, CircuitBreakerSpec, Outcome};
    use crate::ratelimit::key::BucketKey;
    use crate::ratelimit::store::MemoryStore;
    use serde_json::json;

    const FAIL: Outcome = Outcome {
        failure: true,
        slow: false,
    };

    fn set(spec: serde_json::Value) -> BreakerSet {
        let spec: CircuitBreakerSpec = serde_json::from_value(spec).unwrap();
        BreakerSet::new("p", &spec)
    }

    /// Opens the breaker of descriptor value `v` (a one-call window) at `now`, noting the
    /// transition as the filter does.
    fn trip(s: &BreakerSet, store: &MemoryStore, v: &[u8], now: u64) {
        let key = BucketKey::from_values([v]);
        let Admitted::Call(g) = s.admit(store, &key, now).unwrap().0 else {
            panic!("closed admits")
        };
        if s.record(store, &g, FAIL, now).unwrap().is_some() {
            note_transition(store, s).unwrap();
        }
    }

    fn keyed() -> BreakerSet {
        set(json!({
            "slidingWindow": {"count": 1}, "descriptors": [{"header": "x-tenant"}],
            "maxKeys": 8, "waitDurationInOpenState": "1s"
        }))
    }

    #[test]
    fn snapshots_list_breakers_that_are_not_closed() {
        let s = keyed();
        let store = MemoryStore::new();
        s.prepare(&store);
        assert_eq!(s.snapshot(&store), Snapshot::default());
        trip(&s, &store, b"b", 100);
        trip(&s, &store, b"a", 200);
        let snap = s.snapshot(&store);
        assert_eq!(snap.total, 2);
        let described: Vec<(&str, State, u64)> = snap
            .breakers
            .iter()
            .map(|b| (b.descriptor.as_str(), b.state, b.since_ms))
            .collect();
        assert_eq!(
            described,
            [("a", State::Open, 200), ("b", State::Open, 100)]
        );
    }

    #[test]
    fn one_worker_claims_each_change_and_heartbeats_follow() {
        let s = keyed();
        let store = MemoryStore::new();
        s.prepare(&store);
        prepare(&store, &s);
        let claimed = |now| claim(&store, &s, now).unwrap();
        // The first look reports (even an empty set: a restarted proxy clears its rows).
        assert_eq!(claimed(0), Some(Snapshot::default()));
        assert_eq!(claimed(1), None, "one worker per change");
        assert_eq!(
            claimed(HEARTBEAT_MS * 5),
            None,
            "an empty set is not repeated"
        );
        trip(&s, &store, b"a", 10);
        let open = claimed(20).expect("a transition is a change");
        assert_eq!(open.total, 1);
        assert_eq!(claimed(21), None);
        assert_eq!(claimed(20 + HEARTBEAT_MS - 1), None);
        assert_eq!(claimed(20 + HEARTBEAT_MS), Some(open), "heartbeat");
        // A failed report is retried after RETRY_MS, not at once.
        let at = 20 + HEARTBEAT_MS;
        failed(&store, &s, at).unwrap();
        assert_eq!(claimed(at + RETRY_MS - 1), None);
        assert!(claimed(at + RETRY_MS).is_some());
    }

    #[test]
    fn without_a_change_a_look_reads_two_keys_however_many_breakers() {
        let s = set(json!({
            "slidingWindow": {"count": 1}, "descriptors": [{"header": "x-tenant"}],
            "maxKeys": 1000
        }));
        let store = MemoryStore::new();
        s.prepare(&store);
        prepare(&store, &s);
        assert!(claim(&store, &s, 0).unwrap().is_some());
        let before = store.reads();
        assert_eq!(claim(&store, &s, 1).unwrap(), None);
        assert_eq!(store.reads() - before, 2);
    }

    #[test]
    fn reports_encode_as_the_control_plane_decodes_them() {
        let snap = Snapshot {
            breakers: vec![OpenBreaker {
                descriptor: "a".into(),
                state: State::HalfOpen,
                since_ms: 300,
            }],
            total: 3,
        };
        let bytes = encode_report("node-1", "p", &snap);
        let expected: &[u8] = &[
            0x0a, 6, b'n', b'o', b'd', b'e', b'-', b'1', // node_id
            0x12, 1, b'p', // policy
            0x1a, 20, // breakers[0]
            0x0a, 1, b'p', 0x12, 1, b'a', 0x1a, 9, b'h', b'a', b'l', b'f', b'_', b'o', b'p', b'e',
            b'n', 0x20, 0xac, 0x02, // since 300
            0x20, 3, // total
        ];
        assert_eq!(bytes, expected);
    }
}
