//! Streams waiting for their injected delay to end, ordered by deadline. The filter keeps
//! one queue per worker and drains it from its timer tick.
//!
//! Proxy timers are coarse: Envoy's event loop measures time with a coarse clock, so a 1 ms
//! tick really fires every 1–4 ms depending on the kernel's tick rate. Releasing a stream at
//! the first tick after its deadline would make every delay late by up to a whole tick
//! (4 ms). Instead the queue releases a stream at the tick *nearest* its deadline: the one
//! due within half the expected tick gap. Delays are then accurate to ± half a tick, and
//! right on average.

use std::collections::BTreeMap;

/// Items keyed by a stream id, each with a deadline (any unit; the filter uses µs).
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

    /// Removes and returns every entry due at `now`, earliest first.
    pub fn pop_due(&mut self, now: u64) -> Vec<(u32, T)> {
        let later = self.by_deadline.split_off(&(now.saturating_add(1), 0));
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

/// Learns how far apart timer ticks really are (an exponentially weighted average of the
/// observed gaps) to decide which streams the current tick should release.
#[derive(Debug, Clone)]
pub struct TickClock {
    /// Expected gap between ticks, in the queue's unit.
    gap: u64,
    /// When the previous tick (or the timer start) happened.
    last: Option<u64>,
    /// Gaps longer than this are pauses of the timer, not ticks.
    max_gap: u64,
}

impl TickClock {
    /// A clock expecting ticks every `period` (the requested tick period), ignoring gaps
    /// longer than `max_gap`.
    pub fn new(period: u64, max_gap: u64) -> Self {
        Self {
            gap: period,
            last: None,
            max_gap,
        }
    }

    /// The timer was (re)started at `now`.
    pub fn started(&mut self, now: u64) {
        self.last = Some(now);
    }

    /// A tick happened at `now`: learns from the gap since the previous one and returns the
    /// release horizon, the latest deadline this tick should release (`now` + half a gap).
    pub fn tick(&mut self, now: u64) -> u64 {
        if let Some(gap) = self
            .last
            .map(|l| now.saturating_sub(l))
            .filter(|g| *g <= self.max_gap)
        {
            // gap' = 7/8 gap + 1/8 observed
            self.gap = (self.gap * 7 + gap) / 8;
        }
        self.last = Some(now);
        now.saturating_add(self.gap / 2)
    }

    /// The expected gap between ticks.
    pub fn expected_gap(&self) -> u64 {
        self.gap
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

    #[test]
    fn tick_clock_learns_the_real_gap_and_centres_releases() {
        let mut c = TickClock::new(1000, 50_000);
        c.started(0);
        let mut now = 0;
        for _ in 0..100 {
            now += 4000;
            c.tick(now);
        }
        assert!(
            (3900..=4000).contains(&c.expected_gap()),
            "{}",
            c.expected_gap()
        );
        now += 4000;
        let horizon = c.tick(now);
        assert!((now + 1950..=now + 2000).contains(&horizon));
        // A long pause (timer stopped) is not a gap.
        c.started(now + 1_000_000);
        c.tick(now + 1_004_000);
        assert!((3900..=4000).contains(&c.expected_gap()));
        c.tick(now + 2_000_000);
        assert!((3900..=4000).contains(&c.expected_gap()));
    }

    #[test]
    fn centred_release_error_is_at_most_half_a_gap() {
        // Ticks every 4 ms; deadlines at every µs offset of a tick interval.
        let gap = 4000;
        for offset in (0..gap).step_by(97) {
            let deadline = 100_000 + offset;
            let mut q = DelayQueue::default();
            q.push(1, deadline, ());
            let mut c = TickClock::new(gap, 50_000);
            c.started(0);
            let mut now = 0;
            let released_at = loop {
                now += gap;
                let horizon = c.tick(now);
                if !q.pop_due(horizon).is_empty() {
                    break now;
                }
            };
            let error = released_at as i64 - deadline as i64;
            assert!(
                error.abs() <= (gap / 2) as i64,
                "offset {offset}: error {error}"
            );
        }
    }
}
