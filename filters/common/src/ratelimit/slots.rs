//! Buckets in shared data, and the bounded table of per-key buckets.
//!
//! A policy's buckets live under fixed keys that never change while the policy exists:
//! `<prefix>/bucket` (a policy without descriptors), `<prefix>/overflow`, and
//! `<prefix>/k/<slot>` for `slot` in `0..maxKeys`. Envoy never frees a shared-data key, so
//! the set of keys is what bounds memory: it is created once, and per-key buckets *reuse*
//! slots instead of adding keys.
//!
//! Each slot stores its owner (the descriptor key) next to the bucket. A key's slot search
//! starts at `hash(key) % maxKeys` and looks at up to [`PROBES`] consecutive slots:
//! the slot it already owns is used; otherwise it claims the first empty slot, or the first
//! *idle* one, whose bucket has refilled to its burst. An idle bucket is indistinguishable
//! from a new one, so taking it over loses nothing. When every candidate slot belongs to a
//! key that is still refilling, the key shares the policy's **overflow bucket** (same rate
//! and burst) with every other such key, and the request is counted as overflowed. So at
//! most `maxKeys` keys have their own bucket at any time.

use super::bucket::{Bucket, Take, BACKSTEP_TOLERANCE_NS};
use super::key::BucketKey;
use super::rate::Limit;
use super::store::{update, Contended, SharedStore, Update};

/// Slots a key may use, starting at its hash.
pub const PROBES: u32 = 8;

/// Format version of a stored bucket.
const VERSION: u8 = 1;
/// version + tokens (16) + scale + last + full_at.
const HEADER_LEN: usize = 1 + 16 + 8 + 8 + 8;

/// The shared-data keys of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
    slots: u32,
}

impl Keyspace {
    /// Keys under `prefix` with `slots` per-key slots (0 for a policy without descriptors).
    pub fn new(prefix: impl Into<String>, slots: u32) -> Self {
        Self {
            prefix: prefix.into(),
            slots,
        }
    }

    /// The single bucket of a policy without descriptors.
    pub fn single(&self) -> String {
        format!("{}/bucket", self.prefix)
    }

    /// The bucket shared by keys that found no slot.
    pub fn overflow(&self) -> String {
        format!("{}/overflow", self.prefix)
    }

    /// Per-key slot `i`.
    pub fn slot(&self, i: u32) -> String {
        format!("{}/k/{i}", self.prefix)
    }

    /// The in-flight counter.
    pub fn in_flight(&self) -> String {
        format!("{}/inflight", self.prefix)
    }

    /// Number of per-key slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Every bucket key (single, overflow, slots), for creating them up front.
    pub fn bucket_keys(&self) -> impl Iterator<Item = String> + '_ {
        [self.single(), self.overflow()]
            .into_iter()
            .chain((0..self.slots).map(|i| self.slot(i)))
    }
}

/// A bucket as stored: owner, state, and when it will be full (so any worker can tell an
/// idle slot without knowing the owner's limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub owner: Vec<u8>,
    pub bucket: Bucket,
    pub full_at_ns: u64,
}

impl Stored {
    /// Encodes for shared data.
    pub fn encode(&self) -> Vec<u8> {
        let (tokens, scale, last) = self.bucket.parts();
        let mut out = Vec::with_capacity(HEADER_LEN + self.owner.len());
        out.push(VERSION);
        out.extend_from_slice(&tokens.to_le_bytes());
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(&last.to_le_bytes());
        out.extend_from_slice(&self.full_at_ns.to_le_bytes());
        out.extend_from_slice(&self.owner);
        out
    }

    /// Decodes; `None` for an empty slot or bytes this version did not write.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let tokens = u128::from_le_bytes(bytes[1..17].try_into().expect("16 bytes"));
        Some(Self {
            bucket: Bucket::from_parts(tokens, u64_at(17), u64_at(25)),
            full_at_ns: u64_at(33),
            owner: bytes[HEADER_LEN..].to_vec(),
        })
    }

    /// The bucket could be given to another key without losing anything. A slot written
    /// clearly later than `now_ns` (the clock was set back) cannot be judged; it is treated
    /// as idle so key tracking goes on.
    fn idle(&self, now_ns: u64) -> bool {
        now_ns >= self.full_at_ns
            || now_ns.saturating_add(BACKSTEP_TOLERANCE_NS) < self.bucket.last_ns()
    }
}

/// A take from a keyed bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedTake {
    pub take: Take,
    /// The key had no slot of its own and used the overflow bucket.
    pub overflow: bool,
}

/// Takes a token from the bucket stored at `key` (owner `owner`), creating it full if the
/// key is empty or holds another owner's state.
pub fn take_at<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    owner: &[u8],
    limit: &Limit,
    now_ns: u64,
) -> Result<Take, Contended> {
    update(store, key, |bytes| {
        let (bucket, take) = take_from(Stored::decode(bytes), owner, limit, now_ns);
        Update::Write(bucket.encode(), take)
    })
}

/// Applies a take to a stored bucket; a missing bucket, or another owner's, is replaced by
/// a full one.
fn take_from(stored: Option<Stored>, owner: &[u8], limit: &Limit, now_ns: u64) -> (Stored, Take) {
    let mut bucket = match stored {
        Some(s) if s.owner == owner => s.bucket,
        _ => Bucket::full(limit, now_ns),
    };
    let take = bucket.try_take(limit, now_ns);
    let stored = Stored {
        owner: owner.to_vec(),
        full_at_ns: bucket.full_at_ns(limit),
        bucket,
    };
    (stored, take)
}

/// What a slot holds for the key looking at it.
enum SlotView {
    Own,
    Free,
    Busy,
}

fn view(bytes: &[u8], owner: &[u8], now_ns: u64) -> SlotView {
    match Stored::decode(bytes) {
        None => SlotView::Free,
        Some(s) if s.owner == owner => SlotView::Own,
        Some(s) if s.idle(now_ns) => SlotView::Free,
        Some(_) => SlotView::Busy,
    }
}

/// Takes a token from `key`'s own bucket, claiming a slot for it if it has none, or from
/// the overflow bucket when every candidate slot is busy.
pub fn take_keyed<S: SharedStore + ?Sized>(
    store: &S,
    space: &Keyspace,
    key: &BucketKey,
    limit: &Limit,
    now_ns: u64,
) -> Result<KeyedTake, Contended> {
    let owner = key.as_bytes();
    let n = space.slots();
    if n == 0 {
        let take = take_at(store, &space.overflow(), &[], limit, now_ns)?;
        return Ok(KeyedTake {
            take,
            overflow: true,
        });
    }
    let start = key.slot_hash() % u64::from(n);
    let probes = PROBES.min(n);
    // Two passes at most: a claim can lose its slot to another key between the scan and
    // the write; the second scan then sees that and moves on.
    for _ in 0..2 {
        let mut free = None;
        let mut own = None;
        for p in 0..probes {
            let i = ((start + u64::from(p)) % u64::from(n)) as u32;
            let (bytes, _) = store.get(&space.slot(i));
            match view(bytes.as_deref().unwrap_or_default(), owner, now_ns) {
                SlotView::Own => {
                    own = Some(i);
                    break;
                }
                SlotView::Free => {
                    free.get_or_insert(i);
                    // A never-used slot ends the search: slots are never emptied, so the
                    // key cannot own one further on.
                    if bytes.as_deref().is_none_or(|b| Stored::decode(b).is_none()) {
                        break;
                    }
                }
                SlotView::Busy => {}
            }
        }
        let Some(i) = own.or(free) else { break };
        let claimed = update(store, &space.slot(i), |bytes| {
            match view(bytes, owner, now_ns) {
                SlotView::Busy => Update::Keep(None),
                SlotView::Own | SlotView::Free => {
                    let (stored, take) = take_from(Stored::decode(bytes), owner, limit, now_ns);
                    Update::Write(stored.encode(), Some(take))
                }
            }
        })?;
        if let Some(take) = claimed {
            return Ok(KeyedTake {
                take,
                overflow: false,
            });
        }
    }
    let take = take_at(store, &space.overflow(), &[], limit, now_ns)?;
    Ok(KeyedTake {
        take,
        overflow: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::rate::{Rate, Unit};
    use crate::ratelimit::store::{ensure_exists, MemoryStore};

    const S: u64 = 1_000_000_000;

    fn limit(requests: u64, unit: Unit, burst: u64) -> Limit {
        Limit::new(Rate { requests, unit }, Some(burst))
    }

    fn key(s: &str) -> BucketKey {
        BucketKey::from_values([s.as_bytes()])
    }

    fn prepared(slots: u32) -> (MemoryStore, Keyspace) {
        let store = MemoryStore::new();
        let space = Keyspace::new("rl/p", slots);
        for k in space.bucket_keys() {
            ensure_exists(&store, &k);
        }
        (store, space)
    }

    #[test]
    fn stored_buckets_round_trip_and_reject_garbage() {
        let l = limit(5, Unit::Minute, 5);
        let s = Stored {
            owner: b"tenant".to_vec(),
            bucket: Bucket::full(&l, 42),
            full_at_ns: 42,
        };
        assert_eq!(Stored::decode(&s.encode()), Some(s.clone()));
        assert_eq!(Stored::decode(b""), None);
        assert_eq!(Stored::decode(&[9; 60]), None, "unknown version");
        assert_eq!(Stored::decode(&s.encode()[..20]), None, "truncated");
    }

    #[test]
    fn distinct_keys_get_distinct_buckets() {
        let (store, space) = prepared(100);
        let l = limit(2, Unit::Minute, 2);
        for k in ["a", "b", "c"] {
            for _ in 0..2 {
                let t = take_keyed(&store, &space, &key(k), &l, 0).unwrap();
                assert!(t.take.allowed && !t.overflow, "{k}");
            }
            assert!(
                !take_keyed(&store, &space, &key(k), &l, 0)
                    .unwrap()
                    .take
                    .allowed
            );
        }
    }

    #[test]
    fn cap_holds_under_a_flood_of_new_keys() {
        let (store, space) = prepared(20);
        let before = store.len();
        let l = limit(1, Unit::Hour, 1);
        let mut own = 0;
        let mut allowed = 0;
        for i in 0..5_000 {
            let t = take_keyed(&store, &space, &key(&format!("k{i}")), &l, i * 1_000).unwrap();
            own += usize::from(!t.overflow);
            allowed += usize::from(t.take.allowed);
        }
        assert_eq!(store.len(), before, "no shared-data key was added");
        assert_eq!(own, 20, "exactly maxKeys keys got their own bucket");
        assert_eq!(
            allowed,
            20 + 1,
            "own buckets plus the overflow bucket's burst"
        );
        // A tracked key keeps its (empty) bucket; a new key lands in the drained overflow.
        let t = take_keyed(&store, &space, &key("k0"), &l, 6 * S).unwrap();
        assert!(!t.overflow && !t.take.allowed);
        let t = take_keyed(&store, &space, &key("brand-new"), &l, 6 * S).unwrap();
        assert!(t.overflow && !t.take.allowed);
    }

    #[test]
    fn idle_slots_are_reused_without_losing_state() {
        let (store, space) = prepared(1);
        let l = limit(1, Unit::Second, 1);
        assert!(
            take_keyed(&store, &space, &key("a"), &l, 0)
                .unwrap()
                .take
                .allowed
        );
        // "a" is refilling: "b" overflows.
        assert!(
            take_keyed(&store, &space, &key("b"), &l, S / 2)
                .unwrap()
                .overflow
        );
        // One second later "a" is full again (idle): "b" takes the slot over.
        let t = take_keyed(&store, &space, &key("b"), &l, S).unwrap();
        assert!(!t.overflow && t.take.allowed);
        // "a" comes back to a fresh bucket, which is what it would have had.
        let t = take_keyed(&store, &space, &key("a"), &l, 3 * S).unwrap();
        assert!(!t.overflow && t.take.allowed);
    }

    #[test]
    fn a_key_keeps_its_slot_when_an_earlier_candidate_frees_up() {
        let (store, space) = prepared(2);
        let l = limit(1, Unit::Second, 1);
        // Find two keys with the same start slot.
        let a = key("a");
        let b = (0..)
            .map(|i| key(&format!("b{i}")))
            .find(|k| k.slot_hash() % 2 == a.slot_hash() % 2)
            .unwrap();
        assert!(take_keyed(&store, &space, &a, &l, 0).unwrap().take.allowed);
        assert!(take_keyed(&store, &space, &b, &l, 0).unwrap().take.allowed);
        // At 1 s "a"'s slot is idle, but "b" still owns the next one and keeps using it:
        // b took its token at 0 and has exactly one again, no more.
        let t = take_keyed(&store, &space, &b, &l, S).unwrap();
        assert!(t.take.allowed && !t.overflow);
        assert!(!take_keyed(&store, &space, &b, &l, S).unwrap().take.allowed);
    }

    #[test]
    fn workers_racing_on_one_bucket_admit_exactly_the_burst() {
        let (store, space) = prepared(0);
        let l = limit(1, Unit::Hour, 1_000);
        let allowed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        // A take that lost 64 races in a row took nothing; skip it.
                        if take_at(&store, &space.single(), &[], &l, 5).is_ok_and(|t| t.allowed) {
                            allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 1_000);
    }

    #[test]
    fn clock_far_behind_a_slot_makes_it_reusable() {
        let (store, space) = prepared(1);
        let l = limit(1, Unit::Hour, 1);
        assert!(
            take_keyed(&store, &space, &key("a"), &l, 100 * S)
                .unwrap()
                .take
                .allowed
        );
        // Clock steps back a minute: "a"'s slot cannot be judged; "b" may use it.
        let t = take_keyed(&store, &space, &key("b"), &l, 40 * S).unwrap();
        assert!(!t.overflow && t.take.allowed);
    }
}
