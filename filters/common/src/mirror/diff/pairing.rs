//! Pairing primary and mirror responses. They finish in either order (the primary in its
//! stream, each mirror in a call-out answered in the root context); whichever comes second
//! completes a pair. Entries are bounded in number, bytes (through the worker's budget) and
//! age.

use super::CapturedResponse;
use crate::mirror::queue::ByteBudget;
use std::collections::HashMap;
use std::rc::Rc;

/// Most requests awaiting a comparison, per worker.
pub const MAX_PENDING_DIFFS: usize = 1024;
/// Entries older than this are dropped (a mirror or primary that never finished).
pub const PENDING_TTL_MS: u64 = 60_000;

/// A primary and a mirror response, ready to compare.
#[derive(Debug, Clone)]
pub struct ReadyPair<C> {
    pub context: C,
    /// Index of the mirror target.
    pub target: usize,
    pub primary: Rc<CapturedResponse>,
    pub mirror: CapturedResponse,
}

#[derive(Debug)]
struct Entry<C> {
    context: C,
    created_ms: u64,
    /// Copies dispatched (or about to be) and not answered yet.
    outstanding: u32,
    primary: Option<Rc<CapturedResponse>>,
    /// Mirror answers that arrived before the primary finished.
    waiting: Vec<(usize, CapturedResponse)>,
    /// Bytes reserved for this entry.
    reserved: usize,
}

/// Requests awaiting comparison, keyed by a per-worker request number. `C` is what the
/// caller wants back with each pair (policy, path, ...).
#[derive(Debug)]
pub struct PendingDiffs<C> {
    entries: HashMap<u64, Entry<C>>,
    max_entries: usize,
}

impl<C: Clone> PendingDiffs<C> {
    /// An empty table holding at most `max_entries` requests.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries,
        }
    }

    /// Requests being tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts tracking request `id` with `copies` mirror copies. Returns false (and tracks
    /// nothing) when the table is full or `id` is already tracked.
    pub fn open(&mut self, id: u64, context: C, copies: u32, now_ms: u64) -> bool {
        if copies == 0 || self.entries.len() >= self.max_entries || self.entries.contains_key(&id) {
            return false;
        }
        self.entries.insert(
            id,
            Entry {
                context,
                created_ms: now_ms,
                outstanding: copies,
                primary: None,
                waiting: Vec::new(),
                reserved: 0,
            },
        );
        true
    }

    /// Records the primary's response; returns the pairs it completes.
    pub fn primary(
        &mut self,
        id: u64,
        resp: CapturedResponse,
        budget: &mut ByteBudget,
    ) -> Vec<ReadyPair<C>> {
        let Some(e) = self.entries.get_mut(&id) else {
            return Vec::new();
        };
        if e.primary.is_some() {
            return Vec::new();
        }
        let resp = Rc::new(keep_within(resp, budget, &mut e.reserved));
        e.primary = Some(resp.clone());
        let ready = e
            .waiting
            .drain(..)
            .map(|(target, mirror)| ReadyPair {
                context: e.context.clone(),
                target,
                primary: resp.clone(),
                mirror,
            })
            .collect();
        self.remove_if_done(id, budget);
        ready
    }

    /// Records mirror `target`'s response; returns the pair if the primary is already in.
    pub fn mirror(
        &mut self,
        id: u64,
        target: usize,
        resp: CapturedResponse,
        budget: &mut ByteBudget,
    ) -> Option<ReadyPair<C>> {
        let e = self.entries.get_mut(&id)?;
        e.outstanding = e.outstanding.saturating_sub(1);
        let ready = match &e.primary {
            Some(p) => Some(ReadyPair {
                context: e.context.clone(),
                target,
                primary: p.clone(),
                mirror: resp,
            }),
            None => {
                let kept = keep_within(resp, budget, &mut e.reserved);
                e.waiting.push((target, kept));
                None
            }
        };
        self.remove_if_done(id, budget);
        ready
    }

    /// A copy of request `id` will never be answered (dropped or failed).
    pub fn mirror_failed(&mut self, id: u64, budget: &mut ByteBudget) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.outstanding = e.outstanding.saturating_sub(1);
            self.remove_if_done(id, budget);
        }
    }

    /// The primary of request `id` will never finish (stream reset); forget it.
    pub fn abandon(&mut self, id: u64, budget: &mut ByteBudget) {
        if let Some(e) = self.entries.remove(&id) {
            budget.release(e.reserved);
        }
    }

    /// Drops entries older than `ttl_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64, budget: &mut ByteBudget) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            let keep = now_ms.saturating_sub(e.created_ms) < ttl_ms;
            if !keep {
                budget.release(e.reserved);
            }
            keep
        });
        before - self.entries.len()
    }

    fn remove_if_done(&mut self, id: u64, budget: &mut ByteBudget) {
        let done = self
            .entries
            .get(&id)
            .is_some_and(|e| e.outstanding == 0 && (e.primary.is_some() || e.waiting.is_empty()));
        if done {
            if let Some(e) = self.entries.remove(&id) {
                budget.release(e.reserved);
            }
        }
    }
}

/// Keeps a response if its bytes fit in the budget; otherwise keeps it without its body,
/// marked truncated (so the comparison says "incomparable" instead of guessing).
fn keep_within(
    mut resp: CapturedResponse,
    budget: &mut ByteBudget,
    reserved: &mut usize,
) -> CapturedResponse {
    let w = resp.weight();
    if budget.try_reserve(w) {
        *reserved += w;
    } else {
        resp.body = Vec::new();
        resp.headers.clear();
        resp.body_truncated = true;
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(status: u16, body: &str) -> CapturedResponse {
        CapturedResponse {
            status,
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn primary_first_then_mirrors() {
        let mut b = ByteBudget::new(1_000);
        let mut t = PendingDiffs::new(10);
        assert!(t.open(1, "/a", 2, 0));
        assert!(t.primary(1, r(200, "p"), &mut b).is_empty());
        assert_eq!(b.used(), 1);
        let p = t.mirror(1, 0, r(200, "m0"), &mut b).unwrap();
        assert_eq!((p.context, p.target, p.primary.status), ("/a", 0, 200));
        assert_eq!(t.len(), 1);
        let p = t.mirror(1, 1, r(500, "m1"), &mut b).unwrap();
        assert_eq!(p.mirror.status, 500);
        assert!(t.is_empty());
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn mirrors_first_then_primary() {
        let mut b = ByteBudget::new(1_000);
        let mut t = PendingDiffs::new(10);
        t.open(7, (), 2, 0);
        assert!(t.mirror(7, 1, r(200, "xx"), &mut b).is_none());
        t.mirror_failed(7, &mut b);
        assert_eq!(b.used(), 2);
        let ready = t.primary(7, r(200, "p"), &mut b);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].target, 1);
        assert!(t.is_empty());
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn unknown_ids_and_late_answers_are_ignored() {
        let mut b = ByteBudget::new(1_000);
        let mut t: PendingDiffs<()> = PendingDiffs::new(10);
        assert!(t.mirror(9, 0, r(200, ""), &mut b).is_none());
        assert!(t.primary(9, r(200, ""), &mut b).is_empty());
        t.open(1, (), 1, 0);
        t.abandon(1, &mut b);
        assert!(t.mirror(1, 0, r(200, ""), &mut b).is_none());
    }

    #[test]
    fn table_is_bounded_and_entries_expire() {
        let mut b = ByteBudget::new(1_000);
        let mut t = PendingDiffs::new(2);
        assert!(t.open(1, (), 1, 0));
        assert!(!t.open(1, (), 1, 0), "duplicate id");
        assert!(t.open(2, (), 1, 10));
        assert!(!t.open(3, (), 1, 10), "full");
        assert!(!t.open(4, (), 0, 10), "no copies, nothing to track");
        t.mirror(1, 0, r(200, "abc"), &mut b);
        assert_eq!(t.expire(PENDING_TTL_MS + 5, PENDING_TTL_MS, &mut b), 1);
        assert_eq!(b.used(), 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn over_budget_responses_are_kept_as_truncated() {
        let mut b = ByteBudget::new(3);
        let mut t = PendingDiffs::new(2);
        t.open(1, (), 1, 0);
        t.primary(1, r(200, "toolarge"), &mut b);
        let p = t.mirror(1, 0, r(200, "m"), &mut b).unwrap();
        assert!(p.primary.body_truncated);
        assert_eq!(p.primary.status, 200);
        assert_eq!(b.used(), 0);
    }
}
