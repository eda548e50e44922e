//! Leased tokens of `scope: global` policies with a `lease` (local pre-admission), in the
//! proxy's shared data, so every worker of the proxy draws from the same lease.
//!
//! A policy with a lease has fixed slots `<prefix>/lease/<i>` ([`LEASE_SLOTS`] with
//! descriptors, one without), created with the policy; like the local limiter's per-key
//! buckets they are reused, never added. A descriptor's slot is found from its hash by
//! probing up to [`PROBES`] slots. Each slot holds its owner (the descriptor key), the
//! tokens left, when they expire, and whether a lease call is on its way for it:
//!
//! - [`claim`] takes a live token ([`Claim::Token`]: no call); otherwise it marks the slot
//!   *asking* until the call's timeout and tells the request to ask for a lease
//!   ([`Claim::Ask`]); while another request of the proxy is already asking, or when no
//!   slot is free, the request asks for a single hit ([`Claim::Single`]). So a proxy has
//!   at most one lease call in flight per descriptor, and at most one lease of unused
//!   tokens per descriptor.
//! - [`grant`] stores a granted lease's spare tokens and clears the mark; [`cancel`]
//!   clears it (no answer), or keeps requests asking singly a while longer (a denied lease:
//!   the bucket has fewer tokens than a lease, and asking again at once would only cost a
//!   second call per request).
//!
//! Expired tokens are dropped: they were debited from the global bucket when leased, so a
//! lease can only make the proxies admit *fewer* requests than the global limit, never more.

use super::store::{update, Contended, SharedStore, Update};

/// Lease slots of a global policy with descriptors (one per descriptor value at a time).
pub const LEASE_SLOTS: u32 = 1024;
/// Slots a descriptor may use, starting at its hash.
pub const PROBES: u32 = 4;

/// Format version of a stored slot.
const VERSION: u8 = 1;
/// version + tokens + remaining + expires + asking_until.
const HEADER_LEN: usize = 1 + 4 + 4 + 8 + 8;

/// The lease slots of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSpace {
    prefix: String,
    slots: u32,
}

impl LeaseSpace {
    /// Slots under `<policy prefix>/lease/`: [`LEASE_SLOTS`] if the policy has
    /// descriptors, else one.
    pub fn new(policy_prefix: &str, has_descriptors: bool) -> Self {
        Self {
            prefix: format!("{policy_prefix}/lease"),
            slots: if has_descriptors { LEASE_SLOTS } else { 1 },
        }
    }

    /// Slot `i`'s key.
    pub fn slot(&self, i: u32) -> String {
        format!("{}/{i}", self.prefix)
    }

    /// Every slot key, for creating them up front.
    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.slots).map(|i| self.slot(i))
    }

    /// The slots `owner` (whose hash is `hash`) may use, in probe order.
    fn candidates(&self, hash: u64) -> impl Iterator<Item = String> + '_ {
        let n = self.slots.max(1);
        let start = (hash % u64::from(n)) as u32;
        (0..PROBES.min(n)).map(move |k| self.slot((start + k) % n))
    }
}

/// One slot as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Slot {
    tokens: u32,
    /// The service's `limit_remaining` when the lease was granted (for response headers).
    remaining: u32,
    expires_ns: u64,
    /// A lease call is on its way until then.
    asking_until_ns: u64,
    owner: Vec<u8>,
}

impl Slot {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.owner.len());
        out.push(VERSION);
        out.extend_from_slice(&self.tokens.to_le_bytes());
        out.extend_from_slice(&self.remaining.to_le_bytes());
        out.extend_from_slice(&self.expires_ns.to_le_bytes());
        out.extend_from_slice(&self.asking_until_ns.to_le_bytes());
        out.extend_from_slice(&self.owner);
        out
    }

    /// `None` for an empty slot or bytes this version did not write.
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Some(Self {
            tokens: u32_at(1),
            remaining: u32_at(5),
            expires_ns: u64_at(9),
            asking_until_ns: u64_at(17),
            owner: bytes[HEADER_LEN..].to_vec(),
        })
    }

    /// Tokens usable at `now_ns` (none once expired).
    fn live_tokens(&self, now_ns: u64) -> u32 {
        if now_ns < self.expires_ns {
            self.tokens
        } else {
            0
        }
    }

    fn asking(&self, now_ns: u64) -> bool {
        now_ns < self.asking_until_ns
    }

    /// Another owner may take the slot: no live token, nobody asking.
    fn free(&self, now_ns: u64) -> bool {
        self.live_tokens(now_ns) == 0 && !self.asking(now_ns)
    }
}

/// What a request does about a lease policy's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It took a leased token: admitted, no call. `remaining`: the service's count of
    /// tokens left when the lease was granted.
    Token { remaining: u32 },
    /// No token: it asks the service for a lease (the slot is marked as asking).
    Ask,
    /// No token, and a lease is already asked for (or every slot is taken): it asks the
    /// service for a single hit.
    Single,
}

/// What one slot said while probing for an owner.
enum Probe {
    Decided(Claim),
    Other { free: bool },
}

/// Takes a leased token for `owner` at `now_ns`, or decides how to ask the service; a
/// request told to [`Claim::Ask`] keeps the slot's mark until `asking_until_ns`.
pub fn claim<S: SharedStore + ?Sized>(
    store: &S,
    space: &LeaseSpace,
    owner: &[u8],
    hash: u64,
    now_ns: u64,
    asking_until_ns: u64,
) -> Result<Claim, Contended> {
    let mut first_free = None;
    for key in space.candidates(hash) {
        let probe = update(store, &key, |bytes| match Slot::decode(bytes) {
            Some(mut s) if s.owner == owner => {
                let live = s.live_tokens(now_ns);
                if live > 0 {
                    s.tokens = live - 1;
                    let remaining = s.remaining;
                    Update::Write(s.encode(), Probe::Decided(Claim::Token { remaining }))
                } else if s.asking(now_ns) {
                    Update::Keep(Probe::Decided(Claim::Single))
                } else {
                    s.tokens = 0;
                    s.asking_until_ns = asking_until_ns;
                    Update::Write(s.encode(), Probe::Decided(Claim::Ask))
                }
            }
            Some(s) => Update::Keep(Probe::Other {
                free: s.free(now_ns),
            }),
            None => Update::Keep(Probe::Other { free: true }),
        })?;
        match probe {
            Probe::Decided(c) => return Ok(c),
            Probe::Other { free: true } if first_free.is_none() => first_free = Some(key),
            Probe::Other { .. } => {}
        }
    }
    let Some(key) = first_free else {
        return Ok(Claim::Single);
    };
    // Claim the free slot, unless someone took it meanwhile.
    update(store, &key, |bytes| {
        let slot = Slot::decode(bytes);
        if slot
            .as_ref()
            .is_some_and(|s| s.owner != owner && !s.free(now_ns))
        {
            return Update::Keep(Claim::Single);
        }
        if slot
            .as_ref()
            .is_some_and(|s| s.owner == owner && s.asking(now_ns))
        {
            return Update::Keep(Claim::Single);
        }
        let s = Slot {
            asking_until_ns,
            owner: owner.to_vec(),
            ..Slot::default()
        };
        Update::Write(s.encode(), Claim::Ask)
    })
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Spare tokens (the lease's size less the one the asking request used).
    pub tokens: u32,
    /// The service's `limit_remaining` in its answer.
    pub remaining: u32,
    /// When the spare tokens expire.
    pub expires_ns: u64,
}

/// Stores a granted lease's spare tokens in `owner`'s slot (added to any it still has)
/// and clears the asking mark. `false` if `owner` has no slot any more and none is free:
/// the tokens are dropped.
pub fn grant<S: SharedStore + ?Sized>(
    store: &S,
    space: &LeaseSpace,
    owner: &[u8],
    hash: u64,
    g: Grant,
    now_ns: u64,
) -> Result<bool, Contended> {
    for pass_claims_free in [false, true] {
        for key in space.candidates(hash) {
            let stored = update(store, &key, |bytes| {
                let slot = Slot::decode(bytes);
                let (old, mine) = match &slot {
                    Some(s) if s.owner == owner => (s.live_tokens(now_ns), true),
                    Some(s) => (0, pass_claims_free && s.free(now_ns)),
                    None => (0, pass_claims_free),
                };
                if !mine {
                    return Update::Keep(false);
                }
                let s = Slot {
                    tokens: old.saturating_add(g.tokens),
                    remaining: g.remaining,
                    expires_ns: g.expires_ns,
                    asking_until_ns: 0,
                    owner: owner.to_vec(),
                };
                Update::Write(s.encode(), true)
            })?;
            if stored {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Ends `owner`'s asking mark at `until_ns` (0: now, the lease call got no answer; later:
/// a denied lease, requests ask for single hits until then).
pub fn cancel<S: SharedStore + ?Sized>(
    store: &S,
    space: &LeaseSpace,
    owner: &[u8],
    hash: u64,
    until_ns: u64,
) -> Result<(), Contended> {
    for key in space.candidates(hash) {
        let found = update(store, &key, |bytes| match Slot::decode(bytes) {
            Some(mut s) if s.owner == owner => {
                s.asking_until_ns = until_ns;
                Update::Write(s.encode(), true)
            }
            _ => Update::Keep(false),
        })?;
        if found {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::store::MemoryStore;

    const MS: u64 = 1_000_000;

    fn space() -> LeaseSpace {
        LeaseSpace::new("meshwarden.ratelimit/g", true)
    }

    fn grant_of(tokens: u32, expires_ns: u64) -> Grant {
        Grant {
            tokens,
            remaining: 7,
            expires_ns,
        }
    }

    #[test]
    fn ask_once_then_take_the_spare_tokens_until_none_is_left() {
        let (store, sp) = (MemoryStore::new(), space());
        assert_eq!(claim(&store, &sp, b"acme", 1, 0, 100 * MS), Ok(Claim::Ask));
        // While the lease call is on its way, others ask for one hit.
        assert_eq!(
            claim(&store, &sp, b"acme", 1, MS, 100 * MS),
            Ok(Claim::Single)
        );
        assert_eq!(
            grant(&store, &sp, b"acme", 1, grant_of(2, 1_000 * MS), 2 * MS),
            Ok(true)
        );
        for _ in 0..2 {
            assert_eq!(
                claim(&store, &sp, b"acme", 1, 3 * MS, 100 * MS),
                Ok(Claim::Token { remaining: 7 })
            );
        }
        assert_eq!(
            claim(&store, &sp, b"acme", 1, 3 * MS, 100 * MS),
            Ok(Claim::Ask)
        );
        // Every slot is fixed: one key per slot, created by the probes' writes only.
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn expired_tokens_are_dropped_and_a_cancel_lets_the_next_request_ask() {
        let (store, sp) = (MemoryStore::new(), space());
        assert_eq!(claim(&store, &sp, b"k", 9, 0, 50 * MS), Ok(Claim::Ask));
        assert_eq!(
            grant(&store, &sp, b"k", 9, grant_of(5, 10 * MS), MS),
            Ok(true)
        );
        assert_eq!(
            claim(&store, &sp, b"k", 9, 10 * MS, 60 * MS),
            Ok(Claim::Ask)
        );
        cancel(&store, &sp, b"k", 9, 0).unwrap();
        assert_eq!(
            claim(&store, &sp, b"k", 9, 11 * MS, 61 * MS),
            Ok(Claim::Ask)
        );
        // An asking mark that outlived its call (the stream went away) lapses.
        assert_eq!(
            claim(&store, &sp, b"k", 9, 61 * MS, 99 * MS),
            Ok(Claim::Ask)
        );
        // After a denied lease, requests ask singly until the given time.
        cancel(&store, &sp, b"k", 9, 80 * MS).unwrap();
        let at = |now| claim(&store, &sp, b"k", 9, now, 99 * MS);
        assert_eq!(at(79 * MS), Ok(Claim::Single));
        assert_eq!(at(80 * MS), Ok(Claim::Ask));
    }

    #[test]
    fn descriptors_with_one_hash_probe_for_free_slots_and_then_ask_singly() {
        let (store, sp) = (MemoryStore::new(), space());
        for (i, owner) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            assert_eq!(
                claim(&store, &sp, *owner, 5, 0, 50 * MS),
                Ok(Claim::Ask),
                "{i}"
            );
        }
        assert_eq!(claim(&store, &sp, b"e", 5, 0, 50 * MS), Ok(Claim::Single));
        assert_eq!(store.len(), PROBES as usize);
        // Once a slot is free again (nobody asking, no live token) another key takes it.
        cancel(&store, &sp, b"c", 5, 0).unwrap();
        assert_eq!(claim(&store, &sp, b"e", 5, MS, 50 * MS), Ok(Claim::Ask));
        // "c" lost its slot; its late grant finds none free and is dropped.
        assert_eq!(
            grant(&store, &sp, b"c", 5, grant_of(3, 90 * MS), 2 * MS),
            Ok(false)
        );
        // A grant adds to the tokens still there.
        assert_eq!(
            grant(&store, &sp, b"a", 5, grant_of(3, 90 * MS), 2 * MS),
            Ok(true)
        );
        assert_eq!(
            grant(&store, &sp, b"a", 5, grant_of(3, 95 * MS), 3 * MS),
            Ok(true)
        );
        let taken = (0..8)
            .filter(|_| {
                matches!(
                    claim(&store, &sp, b"a", 5, 4 * MS, 50 * MS),
                    Ok(Claim::Token { .. })
                )
            })
            .count();
        assert_eq!(taken, 6);
    }

    #[test]
    fn odd_slot_bytes_are_free_slots_and_a_policy_without_descriptors_has_one() {
        let store = MemoryStore::new();
        let single = LeaseSpace::new("p", false);
        assert_eq!(
            single.keys().collect::<Vec<_>>(),
            vec!["p/lease/0".to_string()]
        );
        store.set("p/lease/0", b"\x09garbage", None).unwrap();
        assert_eq!(claim(&store, &single, b"", 77, 0, MS), Ok(Claim::Ask));
        assert_eq!(space().keys().count(), LEASE_SLOTS as usize);
    }

    #[test]
    fn workers_racing_on_one_lease_take_each_token_once() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let sp = space();
        assert_eq!(claim(&*store, &sp, b"t", 3, 0, MS), Ok(Claim::Ask));
        assert_eq!(
            grant(&*store, &sp, b"t", 3, grant_of(400, 1_000 * MS), 0),
            Ok(true)
        );
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (store, sp) = (store.clone(), sp.clone());
                std::thread::spawn(move || {
                    // Until the lease is used up (a contended attempt just tries again).
                    let mut tokens = 0;
                    for _ in 0..10_000 {
                        match claim(&*store, &sp, b"t", 3, MS, 2 * MS) {
                            Ok(Claim::Token { .. }) => tokens += 1,
                            Ok(_) => break,
                            Err(Contended) => {}
                        }
                    }
                    tokens
                })
            })
            .collect();
        let tokens: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(tokens, 400);
    }
}
