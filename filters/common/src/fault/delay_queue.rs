//! Streams waiting for their injected delay to end, ordered by deadline. The filter keeps
//! one queue per worker and drains it from its timer tick.

use std::collections::BTreeMap;

/// Items keyed by a stream id, each with a deadline in milliseconds.
#[derive(Debug, Clone)]
pub struct DelayQueue<T> {
    /// (deadline, stream id) -> item. The id makes keys unique.
    by_deadline: BTreeMap<(u64, u32), T>,
    /// stream id -> deadline, to remove a stream that went away.
    deadline_of: BTreeMap<u32, u64>,
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        Self {
            by_deadline: BTreeMap::new(),
            deadline_of: BTreeMap::new(),
        }
    }
}

impl<T> DelayQueue<T> {
    /// Queues `item` for stream `id` until `deadline_ms`, replacing any earlier entry of `id`.
    pub fn push(&mut self, id: u32, deadline_ms: u64, item: T) {
        self.remove(id);
        self.by_deadline.insert((deadline_ms, id), item);
        self.deadline_of.insert(id, deadline_ms);
    }

    /// Removes stream `id` (it finished or was reset), returning its item.
    pub fn remove(&mut self, id: u32) -> Option<T> {
        let deadline = self.deadline_of.remove(&id)?;
        self.by_deadline.remove(&(deadline, id))
    }

    /// Removes and returns every entry due at `now_ms`, earliest first.
    pub fn pop_due(&mut self, now_ms: u64) -> Vec<(u32, T)> {
        let later = self.by_deadline.split_off(&(now_ms.saturating_add(1), 0));
        let due = std::mem::replace(&mut self.by_deadline, later);
        due.into_iter()
            .map(|((_, id), item)| {
                self.deadline_of.remove(&id);
                (id, item)
            })
            .collect()
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.keys().next().map(|(d, _)| *d)
    }

    /// Number of waiting streams.
    pub fn len(&self) -> usize {
        self.deadline_of.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.deadline_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut q = DelayQueue::default();
        q.push(1, 300, "c");
        q.push(2, 100, "a");
        q.push(3, 200, "b");
        assert_eq!(q.next_deadline(), Some(100));
        assert!(q.pop_due(99).is_empty());
        assert_eq!(q.pop_due(200), vec![(2, "a"), (3, "b")]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_due(u64::MAX), vec![(1, "c")]);
        assert!(q.is_empty());
    }

    #[test]
    fn remove_and_replace() {
        let mut q = DelayQueue::default();
        q.push(7, 100, 1);
        q.push(7, 50, 2);
        assert_eq!(q.len(), 1);
        assert_eq!(q.remove(7), Some(2));
        assert_eq!(q.remove(7), None);
        q.push(8, 10, 3);
        q.push(9, 10, 4);
        assert_eq!(
            q.pop_due(10).len(),
            2,
            "equal deadlines are kept apart by id"
        );
    }
}
