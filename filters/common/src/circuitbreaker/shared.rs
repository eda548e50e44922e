//! A policy's breakers in the proxy's shared data, so every worker of the proxy sees one
//! state per breaker.
//!
//! Keys never change while the policy exists: `<prefix>/breaker` for a policy without
//! descriptors, `<prefix>/k/<slot>` for `slot` in `0..maxKeys` otherwise, all created when
//! the configuration is applied (Envoy never frees a shared-data key, and compare-and-swap
//! needs an existing key). A descriptor key looks for its breaker in up to [`PROBES`]
//! slots from its hash, and claims an empty or idle one (closed and untouched for
//! [`IDLE_MS`]) the first time; a key that finds none goes through unguarded
//! ([`Admitted::Overflow`]).
//!
//! Cost per request: admission reads one key (more only while a new descriptor key
//! searches its slot) and writes nothing, except when the breaker half-opens or hands out a
//! trial; recording an outcome is one compare-and-swap of the breaker (skipped without a
//! write when the breaker moved on to another generation, e.g. while it is open).

use super::breaker::{Admission, Breaker, Rules, Ticket, Transition};
use super::spec::{CircuitBreakerSpec, SlidingWindow};
use super::window::Outcome;
use crate::ratelimit::key::BucketKey;
use crate::ratelimit::store::{ensure_exists, update, Contended, SharedStore, Update};

/// Prefix of every breaker key.
pub const KEY_PREFIX: &str = "meshwarden.circuitbreaker";
/// Slots a descriptor key may use, starting at its hash.
pub const PROBES: u32 = 4;
/// A closed breaker untouched this long gives its slot up to another key (at least; the
/// duration of a time window if longer).
pub const IDLE_MS: u64 = 60_000;

/// The breakers of one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSet {
    rules: Rules,
    prefix: String,
    /// The key of the single breaker of a policy without descriptors.
    single: String,
    slots: u32,
    idle_ms: u64,
}

/// Where a request's breaker lives, and the ticket it was admitted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    /// Shared-data key of the breaker.
    pub key: String,
    /// Descriptor key owning it (empty without descriptors).
    pub owner: Vec<u8>,
    pub ticket: Ticket,
}

/// What the breakers say about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Go upstream, and record the outcome.
    Call(Guarded),
    /// Answer with the fallback.
    Reject { retry_after_ms: u64 },
    /// No breaker slot for this descriptor key: go upstream unguarded.
    Overflow,
}

impl BreakerSet {
    /// The breakers of policy `name`.
    pub fn new(name: &str, spec: &CircuitBreakerSpec) -> Self {
        let rules = Rules::of(spec);
        let window_ms = match rules.window {
            SlidingWindow::Duration(d) => d.as_millis(),
            SlidingWindow::Count(_) => 0,
        };
        let prefix = format!("{KEY_PREFIX}/{name}");
        Self {
            rules,
            single: format!("{prefix}/breaker"),
            prefix,
            slots: spec.key_slots(),
            idle_ms: IDLE_MS.max(window_ms),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Prefix of every key of the policy.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether breakers are per descriptor key.
    pub fn keyed(&self) -> bool {
        self.slots > 0
    }

    /// Every key of the policy.
    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        let single = (self.slots == 0).then(|| self.single.clone());
        single
            .into_iter()
            .chain((0..self.slots).map(|i| self.slot(i)))
    }

    fn slot(&self, i: u32) -> String {
        format!("{}/k/{i}", self.prefix)
    }

    /// Creates every key (idempotent), so later writes are true compare-and-swaps.
    pub fn prepare<S: SharedStore + ?Sized>(&self, store: &S) {
        for key in self.keys() {
            ensure_exists(store, &key);
        }
    }

    /// Admits a request whose descriptor key is `owner` (ignored without descriptors).
    pub fn admit<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        owner: &BucketKey,
        now_ms: u64,
    ) -> Result<(Admitted, Option<Transition>), Contended> {
        if !self.keyed() {
            let bytes = store.get(&self.single).0.unwrap_or_default();
            return self.admit_at(store, self.single.clone(), &[], &bytes, now_ms);
        }
        let owner = owner.as_bytes();
        let start = owner_hash(owner) % u64::from(self.slots);
        let mut free = None;
        for probe in 0..PROBES.min(self.slots) {
            let key = self.slot(((start + u64::from(probe)) % u64::from(self.slots)) as u32);
            let bytes = store.get(&key).0.unwrap_or_default();
            match Breaker::decode(&self.rules, &bytes) {
                Some(b) if b.owner() == owner => {
                    return self.admit_at(store, key, owner, &bytes, now_ms)
                }
                Some(b) if !b.idle(now_ms, self.idle_ms) => {}
                _ => {
                    free.get_or_insert(key);
                }
            }
        }
        let Some(key) = free else {
            return Ok((Admitted::Overflow, None));
        };
        // Claim the slot, unless someone else took it meanwhile.
        let claimed = update(store, &key, |cur| match Breaker::decode(&self.rules, cur) {
            Some(b) if b.owner() == owner => Update::Keep(true),
            Some(b) if !b.idle(now_ms, self.idle_ms) => Update::Keep(false),
            _ => Update::Write(Breaker::new(&self.rules, owner, now_ms).encode(), true),
        })?;
        if !claimed {
            return Ok((Admitted::Overflow, None));
        }
        let bytes = store.get(&key).0.unwrap_or_default();
        self.admit_at(store, key, owner, &bytes, now_ms)
    }

    /// Admission at one breaker, whose current bytes were just read: no write unless the
    /// answer changes the breaker.
    fn admit_at<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        key: String,
        owner: &[u8],
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(Admitted, Option<Transition>), Contended> {
        let current = self.decode_or_new(bytes, owner, now_ms);
        let (admission, transition) = match current.peek(&self.rules, now_ms) {
            Some(a) => (a, None),
            None => update(store, &key, |cur| {
                let mut b = self.decode_or_new(cur, owner, now_ms);
                let (a, t) = b.admit(&self.rules, now_ms);
                Update::Write(b.encode(), (a, t))
            })?,
        };
        let admitted = match admission {
            Admission::Call(ticket) => Admitted::Call(Guarded {
                key,
                owner: owner.to_vec(),
                ticket,
            }),
            Admission::Reject { retry_after_ms } => Admitted::Reject { retry_after_ms },
        };
        Ok((admitted, transition))
    }

    fn decode_or_new(&self, bytes: &[u8], owner: &[u8], now_ms: u64) -> Breaker {
        Breaker::decode(&self.rules, bytes)
            .filter(|b| b.owner() == owner)
            .unwrap_or_else(|| Breaker::new(&self.rules, owner, now_ms))
    }

    /// Records how a guarded call went.
    pub fn record<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        call: &Guarded,
        outcome: Outcome,
        now_ms: u64,
    ) -> Result<Option<Transition>, Contended> {
        update(store, &call.key, |cur| {
            let b = Breaker::decode(&self.rules, cur);
            let mut b = match b {
                Some(b) if b.owner() == call.owner => b,
                // A policy without descriptors starts with an empty key.
                None if call.owner.is_empty() => Breaker::new(&self.rules, &call.owner, now_ms),
                _ => return Update::Keep(None),
            };
            if !b.wants(call.ticket) {
                return Update::Keep(None);
            }
            let t = b.record(&self.rules, call.ticket, outcome, now_ms);
            Update::Write(b.encode(), t)
        })
    }

    /// Gives back the permit of a trial that ended without an outcome.
    pub fn abandon<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        call: &Guarded,
    ) -> Result<(), Contended> {
        if !call.ticket.trial {
            return Ok(());
        }
        update(store, &call.key, |cur| {
            let mut b = match Breaker::decode(&self.rules, cur) {
                Some(b) if b.owner() == call.owner => b,
                _ => return Update::Keep(()),
            };
            if b.abandon(call.ticket) {
                Update::Write(b.encode(), ())
            } else {
                Update::Keep(())
            }
        })
    }

    /// The state of the breaker at `key` (for status and tests).
    pub fn breaker<S: SharedStore + ?Sized>(&self, store: &S, key: &str) -> Option<Breaker> {
        Breaker::decode(&self.rules, &store.get(key).0.unwrap_or_default())
    }
}

fn owner_hash(owner: &[u8]) -> u64 {
    crate::ratelimit::key::hash64(owner, 0x6272_6561_6b65_7273)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuitbreaker::breaker::State;
    use crate::ratelimit::store::MemoryStore;
    use serde_json::json;

    fn set(spec: serde_json::Value) -> BreakerSet {
        let spec: CircuitBreakerSpec = serde_json::from_value(spec).unwrap();
        BreakerSet::new("p", &spec)
    }

    const FAIL: Outcome = Outcome {
        failure: true,
        slow: false,
    };
    const OK: Outcome = Outcome {
        failure: false,
        slow: false,
    };

    fn key(v: &[u8]) -> BucketKey {
        BucketKey::from_values([v])
    }

    fn call(s: &BreakerSet, store: &MemoryStore, owner: &[u8], now: u64) -> Admitted {
        s.admit(store, &key(owner), now).unwrap().0
    }

    #[test]
    fn closed_admission_reads_and_never_writes() {
        let s = set(json!({"slidingWindow": {"count": 4}, "minimumNumberOfCalls": 4}));
        let store = MemoryStore::new();
        s.prepare(&store);
        let before = store.get("meshwarden.circuitbreaker/p/breaker").1;
        for _ in 0..10 {
            assert!(matches!(call(&s, &store, b"", 0), Admitted::Call(_)));
        }
        assert_eq!(store.get("meshwarden.circuitbreaker/p/breaker").1, before);
    }

    #[test]
    fn failures_open_the_breaker_for_every_worker_then_trials_close_it() {
        let s = set(json!({
            "slidingWindow": {"count": 4}, "minimumNumberOfCalls": 4,
            "waitDurationInOpenState": "1s", "permittedNumberOfCallsInHalfOpenState": 2
        }));
        let store = MemoryStore::new();
        s.prepare(&store);
        let mut transitions = Vec::new();
        for _ in 0..4 {
            let Admitted::Call(g) = call(&s, &store, b"", 10) else {
                panic!("closed admits")
            };
            transitions.extend(s.record(&store, &g, FAIL, 10).unwrap());
        }
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].to, State::Open);
        assert_eq!(
            call(&s, &store, b"", 500),
            Admitted::Reject {
                retry_after_ms: 510
            }
        );
        // After the wait: two trials, then rejections until they end.
        let (Admitted::Call(t1), Some(t)) = s.admit(&store, &key(b""), 1010).unwrap() else {
            panic!("half-opens")
        };
        assert_eq!(t.to, State::HalfOpen);
        let Admitted::Call(t2) = call(&s, &store, b"", 1011) else {
            panic!("second trial")
        };
        assert!(matches!(
            call(&s, &store, b"", 1012),
            Admitted::Reject { .. }
        ));
        assert_eq!(s.record(&store, &t1, OK, 1020).unwrap(), None);
        let t = s.record(&store, &t2, OK, 1021).unwrap().unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        assert!(matches!(call(&s, &store, b"", 1030), Admitted::Call(_)));
    }

    #[test]
    fn descriptor_keys_get_their_own_breakers_and_the_slot_cap_holds() {
        let s = set(json!({
            "slidingWindow": {"count": 2}, "minimumNumberOfCalls": 2,
            "descriptors": [{"header": "x-tenant"}], "maxKeys": 2
        }));
        let store = MemoryStore::new();
        s.prepare(&store);
        assert_eq!(store.len(), 2);
        for _ in 0..2 {
            let Admitted::Call(g) = call(&s, &store, b"a", 0) else {
                panic!()
            };
            s.record(&store, &g, FAIL, 0).unwrap();
        }
        assert!(matches!(call(&s, &store, b"a", 1), Admitted::Reject { .. }));
        assert!(matches!(call(&s, &store, b"b", 1), Admitted::Call(_)));
        // Both slots are taken (a is open, b is fresh): c goes unguarded.
        assert_eq!(call(&s, &store, b"c", 2), Admitted::Overflow);
        // Once b is idle, c takes its slot.
        assert!(matches!(
            call(&s, &store, b"c", 2 + IDLE_MS),
            Admitted::Call(_)
        ));
        assert_eq!(store.len(), 2, "no key beyond maxKeys");
    }

    #[test]
    fn an_abandoned_trial_gives_its_permit_back() {
        let s = set(json!({
            "slidingWindow": {"count": 1}, "waitDurationInOpenState": "100ms",
            "permittedNumberOfCallsInHalfOpenState": 1
        }));
        let store = MemoryStore::new();
        s.prepare(&store);
        let Admitted::Call(g) = call(&s, &store, b"", 0) else {
            panic!()
        };
        s.record(&store, &g, FAIL, 0).unwrap();
        let Admitted::Call(trial) = call(&s, &store, b"", 100) else {
            panic!()
        };
        assert!(matches!(
            call(&s, &store, b"", 101),
            Admitted::Reject { .. }
        ));
        s.abandon(&store, &trial).unwrap();
        assert!(matches!(call(&s, &store, b"", 102), Admitted::Call(_)));
    }

    #[test]
    fn workers_racing_open_the_breaker_exactly_once() {
        let s = std::sync::Arc::new(set(json!({
            "slidingWindow": {"count": 100}, "minimumNumberOfCalls": 100,
            "failureRateThreshold": {"value": 50}
        })));
        let store = std::sync::Arc::new(MemoryStore::new());
        s.prepare(&*store);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (s, store) = (s.clone(), store.clone());
                std::thread::spawn(move || {
                    let mut opened = 0;
                    for _ in 0..200 {
                        if let Admitted::Call(g) = s.admit(&*store, &key(b""), 0).unwrap().0 {
                            let t = s.record(&*store, &g, FAIL, 0).unwrap();
                            opened += usize::from(t.is_some_and(|t| t.to == State::Open));
                        }
                    }
                    opened
                })
            })
            .collect();
        let opened: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(opened, 1);
        let b = s
            .breaker(&*store, "meshwarden.circuitbreaker/p/breaker")
            .unwrap();
        assert_eq!(b.state(), State::Open);
    }
}
