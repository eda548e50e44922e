//! The proxy's shared data as the limiter sees it: a key-value map with compare-and-swap,
//! shared by every worker thread of one Envoy. The filter implements [`SharedStore`] over
//! `get_shared_data`/`set_shared_data`; tests use [`MemoryStore`].

use std::collections::HashMap;
use std::sync::Mutex;

/// Most compare-and-swap attempts on one key before giving up (the policy's
/// `failureMode` then decides).
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// A write lost a compare-and-swap race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// Every attempt to update a key lost its race.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shared data stayed contended for {MAX_CAS_ATTEMPTS} compare-and-swap attempts")]
pub struct Contended;

/// Shared data with compare-and-swap, as the proxy-wasm ABI defines it: a read returns the
/// value and a version (`cas`); a write with that version fails if anyone wrote since. A
/// write without a version (or to a key that does not exist) always succeeds.
pub trait SharedStore {
    /// The value (None or empty if unset) and its version.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` if `cas` still matches.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;
}

/// What an update function decides after reading a key.
pub enum Update<T> {
    /// Write these bytes (compare-and-swap) and return the value.
    Write(Vec<u8>, T),
    /// Leave the key as it is and return the value.
    Keep(T),
}

/// Read-modify-write of one key with compare-and-swap, retried up to
/// [`MAX_CAS_ATTEMPTS`] times. `f` sees the current bytes (empty if unset).
pub fn update<S, T, F>(store: &S, key: &str, mut f: F) -> Result<T, Contended>
where
    S: SharedStore + ?Sized,
    F: FnMut(&[u8]) -> Update<T>,
{
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (value, cas) = store.get(key);
        match f(value.as_deref().unwrap_or_default()) {
            Update::Keep(t) => return Ok(t),
            Update::Write(bytes, t) => {
                if store.set(key, &bytes, cas).is_ok() {
                    return Ok(t);
                }
            }
        }
    }
    Err(Contended)
}

/// Makes sure `key` exists (empty if it did not), so later writes are true
/// compare-and-swaps: the ABI cannot compare against a key that does not exist yet.
pub fn ensure_exists<S: SharedStore + ?Sized>(store: &S, key: &str) {
    if store.get(key).1.is_none() {
        let _ = store.set(key, &[], None);
    }
}

/// An in-memory [`SharedStore`] with the proxy's semantics, safe to share between threads
/// (tests use it to stand in for Envoy workers).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    map: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    reads: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys exist.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// No key exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many reads ([`SharedStore::get`]) it has served.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().map.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let mut inner = self.lock();
        inner.reads += 1;
        match inner.map.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        let mut inner = self.lock();
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        let next = inner.next_cas;
        match inner.map.get_mut(key) {
            Some(entry) => {
                if cas.is_some_and(|c| c != entry.1) {
                    return Err(CasMismatch);
                }
                *entry = (value.to_vec(), next);
            }
            None => {
                inner.map.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_semantics() {
        let s = MemoryStore::new();
        assert_eq!(s.get("k"), (None, None));
        s.set("k", b"a", None).unwrap();
        let (v, cas) = s.get("k");
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        s.set("k", b"b", cas).unwrap();
        assert_eq!(s.set("k", b"c", cas), Err(CasMismatch), "stale version");
        assert_eq!(s.get("k").0.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn update_retries_lost_races_and_gives_up_eventually() {
        struct Hostile(MemoryStore);
        impl SharedStore for Hostile {
            fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
                let r = self.0.get(key);
                // Someone else writes right after every read.
                let _ = self.0.set(key, b"other", None);
                r
            }
            fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
                self.0.set(key, value, cas)
            }
        }
        let h = Hostile(MemoryStore::new());
        ensure_exists(&h.0, "k");
        let r = update(&h, "k", |_| Update::Write(b"mine".to_vec(), ()));
        assert_eq!(r, Err(Contended));
        let s = MemoryStore::new();
        let n = update(&s, "k", |cur| Update::Write(b"x".to_vec(), cur.len())).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn ensure_exists_creates_once() {
        let s = MemoryStore::new();
        ensure_exists(&s, "k");
        s.set("k", b"v", None).unwrap();
        ensure_exists(&s, "k");
        assert_eq!(s.get("k").0.as_deref(), Some(&b"v"[..]));
    }
}
