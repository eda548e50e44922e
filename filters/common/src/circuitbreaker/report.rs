//! What a proxy tells the control plane about a policy's breakers, for `meshwarden
//! status`: the breakers that are not closed ([`BreakerSet::snapshot`]), sent as a unary
//! gRPC call (`BreakerStatusService.Report`) from the root context when that set changes,
//! and every [`HEARTBEAT_MS`] while it is not empty (the control plane forgets a report
//! after [`STALE_AFTER_MS`]).
//!
//! Every worker of a proxy sees the same breakers, so one report per change is enough:
//! the policy's `reported` key in shared data holds the digest and time of the last
//! report, and the worker whose compare-and-swap moves it on ([`claim`]) sends.

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

impl Snapshot {
    /// A digest of the set: a new one means a report is due.
    pub fn digest(&self) -> u64 {
        let mut parts: Vec<Vec<u8>> = vec![(self.total as u64).to_le_bytes().to_vec()];
        for b in &self.breakers {
            parts.push(b.descriptor.as_bytes().to_vec());
            parts.push(vec![b.state.gauge() as u8]);
            parts.push(b.since_ms.to_le_bytes().to_vec());
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        // Never the failed mark (0).
        crate::random::stable_hash(0x6272_6b72_6570_6f72, &refs).max(1)
    }
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
    /// Digest of the set reported; 0 if that report failed.
    digest: u64,
    at_ms: u64,
}

impl Reported {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let digest = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
        let at_ms = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self { digest, at_ms })
    }

    fn encode(self) -> Vec<u8> {
        let mut out = self.digest.to_le_bytes().to_vec();
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out
    }

    fn due(self, snapshot: &Snapshot, digest: u64, now_ms: u64) -> bool {
        let age = now_ms.saturating_sub(self.at_ms);
        if self.digest == 0 {
            age >= RETRY_MS
        } else if self.digest != digest {
            true
        } else {
            snapshot.total > 0 && age >= HEARTBEAT_MS
        }
    }
}

/// Creates the policy's `reported` key (idempotent), so [`claim`] is a true
/// compare-and-swap.
pub fn prepare<S: SharedStore + ?Sized>(store: &S, set: &BreakerSet) {
    ensure_exists(store, &set.reported_key());
}

/// Whether this worker should report `snapshot` now: `true` for exactly one worker per
/// change (or heartbeat), which must then send it.
pub fn claim<S: SharedStore + ?Sized>(
    store: &S,
    set: &BreakerSet,
    snapshot: &Snapshot,
    now_ms: u64,
) -> Result<bool, Contended> {
    let digest = snapshot.digest();
    update(store, &set.reported_key(), |cur| {
        let due = Reported::decode(cur).is_none_or(|r| r.due(snapshot, digest, now_ms));
        if due {
            Update::Write(Reported { digest, at_ms: now_ms }.encode(), true)
        } else {
            Update::Keep(false)
        }
    })
}

/// The report sent at `now_ms` failed: the next one is due after [`RETRY_MS`], whatever
/// the set.
pub fn failed<S: SharedStore + ?Sized>(
    store: &S,
    set: &BreakerSet,
    now_ms: u64,
) -> Result<(), Contended> {
    update(store, &set.reported_key(), |_| {
        Update::Write(Reported { digest: 0, at_ms: now_ms }.encode(), ())
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

    /// Opens the breaker of descriptor value `v` (a one-call window) at `now`.
    fn trip(s: &BreakerSet, store: &MemoryStore, v: &[u8], now: u64) {
        let key = BucketKey::from_values([v]);
        let Admitted::Call(g) = s.admit(store, &key, now).unwrap().0 else {
            panic!("closed admits")
        };
        s.record(store, &g, FAIL, now).unwrap();
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
        let empty = s.snapshot(&store);
        // The first look reports (even an empty set: a restarted proxy clears its rows).
        assert!(claim(&store, &s, &empty, 0).unwrap());
        assert!(!claim(&store, &s, &empty, 1).unwrap(), "one worker per change");
        assert!(
            !claim(&store, &s, &empty, HEARTBEAT_MS * 5).unwrap(),
            "an empty set is not repeated"
        );
        trip(&s, &store, b"a", 10);
        let open = s.snapshot(&store);
        assert!(claim(&store, &s, &open, 20).unwrap());
        assert!(!claim(&store, &s, &open, 21).unwrap());
        assert!(!claim(&store, &s, &open, 20 + HEARTBEAT_MS - 1).unwrap());
        assert!(claim(&store, &s, &open, 20 + HEARTBEAT_MS).unwrap(), "heartbeat");
        // A failed report is retried after RETRY_MS, not at once.
        let at = 20 + HEARTBEAT_MS;
        failed(&store, &s, at).unwrap();
        assert!(!claim(&store, &s, &open, at + RETRY_MS - 1).unwrap());
        assert!(claim(&store, &s, &open, at + RETRY_MS).unwrap());
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
            0x0a, 1, b'p', 0x12, 1, b'a', 0x1a, 9, b'h', b'a', b'l', b'f', b'_', b'o', b'p',
            b'e', b'n', 0x20, 0xac, 0x02, // since 300
            0x20, 3, // total
        ];
        assert_eq!(bytes, expected);
    }
}
