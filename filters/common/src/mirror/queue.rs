//! Bounded per-worker state for copies on their way out: a byte budget shared by bodies being
//! copied, copies waiting to be dispatched and captured responses, and a queue with a length
//! cap. When a bound is hit the copy is dropped (and counted), never the primary.

use std::collections::VecDeque;

/// Most copies waiting for dispatch, per worker.
pub const MAX_QUEUED: usize = 512;
/// Most copies dispatched and not yet answered, per worker.
pub const MAX_IN_FLIGHT: usize = 256;
/// Most bytes held for mirroring (request bodies and captured responses), per worker.
pub const MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;

/// A byte budget.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    limit: usize,
    used: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit, used: 0 }
    }

    /// Reserves `n` bytes if they fit.
    pub fn try_reserve(&mut self, n: usize) -> bool {
        match self.used.checked_add(n) {
            Some(total) if total <= self.limit => {
                self.used = total;
                true
            }
            _ => false,
        }
    }

    /// Returns `n` bytes (saturating, so a double release cannot underflow).
    pub fn release(&mut self, n: usize) {
        self.used = self.used.saturating_sub(n);
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used
    }
}

impl Default for ByteBudget {
    fn default() -> Self {
        Self::new(MAX_BUFFERED_BYTES)
    }
}

/// A FIFO with a length cap.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> BoundedQueue<T> {
    /// A queue holding at most `cap` items.
    pub fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            cap,
        }
    }

    /// Appends, or gives the item back when full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.cap {
            return Err(item);
        }
        self.items.push_back(item);
        Ok(())
    }

    /// Takes the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<T> Default for BoundedQueue<T> {
    fn default() -> Self {
        Self::new(MAX_QUEUED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_what_does_not_fit() {
        let mut b = ByteBudget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert!(b.try_reserve(40));
        b.release(100);
        assert_eq!(b.used(), 0);
        b.release(5);
        assert_eq!(b.used(), 0);
        assert!(!b.try_reserve(usize::MAX));
    }

    #[test]
    fn queue_is_fifo_and_bounded() {
        let mut q = BoundedQueue::new(2);
        assert!(q.push(1).is_ok());
        assert!(q.push(2).is_ok());
        assert_eq!(q.push(3), Err(3));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some(2));
        assert!(q.is_empty());
    }
}
