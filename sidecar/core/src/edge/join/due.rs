//! Reminders of what waits in the join, oldest first (see [`Due`]).
use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use super::waits::HopWaits;
use crate::hop::RequestId;

/// Reminders to look at a waiting record again, oldest first, by a key that finds it (its
/// request id; a waiting line's, the id's hash: 16 bytes a reminder, not 56). A record that
/// leaves by a match keeps its reminder (finding it in the queue would cost a scan); those
/// are dropped in bulk once the queue has doubled since it was last cleaned, so the queue
/// holds about what still waits, not every id of the window (at 50,000 requests a second and
/// a 30 s window, 1.5 million ids and ~100 MB before this).
pub(super) struct Due<K = RequestId> {
    pub(super) q: VecDeque<(u64, K)>,
    /// The length at which the queue is cleaned next.
    clean_at: usize,
}

impl<K> Default for Due<K> {
    fn default() -> Self {
        Self {
            q: VecDeque::new(),
            clean_at: 0,
        }
    }
}

impl<K> Due<K> {
    /// Room for this many reminders before the first cleaning (and always at least this much
    /// growth between two): a cleaning then costs at most a few lookups per reminder pushed.
    const SLACK: usize = 4_096;

    pub(super) fn push(&mut self, at: u64, key: K, waiting: &impl Waiting<K>) {
        // Every waiting record has a reminder here, so a queue no more than twice what waits
        // has at most half to drop: then it is not cleaned yet, which spares a flood of
        // records that all wait (ids that never match) a lookup of each reminder at every
        // cleaning, while the queue stays within about twice what waits.
        if self.q.len() >= self.clean_at.max(Self::SLACK) && self.q.len() > 2 * waiting.count() {
            self.q.retain(|(_, r)| waiting.waits(r));
            self.clean_at = 2 * self.q.len() + Self::SLACK;
        }
        self.q.push_back((at, key));
    }

    /// The oldest reminder's key when it is older than `cutoff`.
    pub(super) fn pop_before(&mut self, cutoff: u64) -> Option<K> {
        if self.q.front().is_some_and(|(t, _)| *t < cutoff) {
            self.q.pop_front().map(|(_, key)| key)
        } else {
            None
        }
    }
}

impl super::Joiner {
    /// Reminders queued (for records still waiting, and some of records already gone): at
    /// most about twice what waits, plus a constant.
    pub fn reminders(&self) -> usize {
        self.edge_due.q.len()
            + self.hop_aged.q.len()
            + self.hop_due.q.len()
            + self.orphan_due.q.len()
    }

    /// Reminders of the exchanges that moved from the ring to the map.
    pub(super) fn remind_moved(&mut self) {
        if self.hops.moved.is_empty() {
            return;
        }
        let mut moved = std::mem::take(&mut self.hops.moved);
        for (at, rid) in moved.drain(..) {
            self.hop_aged.push(at, rid, &self.hops);
        }
        self.hops.moved = moved;
    }
}

/// The older of two queues' oldest reminders, when it is older than `cutoff`: their keys in
/// the order of their times, as if they were one queue.
pub(super) fn pop_either_before<K>(a: &mut Due<K>, b: &mut Due<K>, cutoff: u64) -> Option<K> {
    let first = |d: &Due<K>| d.q.front().map(|(t, _)| *t);
    match (first(a), first(b)) {
        (Some(ta), Some(tb)) if tb < ta => b.pop_before(cutoff),
        (Some(_), _) => a.pop_before(cutoff),
        (None, _) => b.pop_before(cutoff),
    }
}

/// Where records wait by key `K` (for cleaning [`Due`]).
pub(super) trait Waiting<K = RequestId> {
    /// Some record waits under `key`.
    fn waits(&self, key: &K) -> bool;
    /// How many records wait.
    fn count(&self) -> usize;
}

impl<V> Waiting for HashMap<RequestId, V> {
    fn waits(&self, rid: &RequestId) -> bool {
        self.contains_key(rid)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Waiting for HopWaits {
    fn waits(&self, rid: &RequestId) -> bool {
        self.contains_key(rid)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Records waiting under ids `0..waiting`, counting the lookups made in them.
    struct Ids {
        waiting: usize,
        lookups: Cell<usize>,
    }

    impl Waiting for Ids {
        fn waits(&self, rid: &RequestId) -> bool {
            self.lookups.set(self.lookups.get() + 1);
            rid.parse::<usize>().is_ok_and(|i| i < self.waiting)
        }
        fn count(&self) -> usize {
            self.waiting
        }
    }

    #[test]
    fn a_queue_of_records_that_all_wait_is_not_looked_through() {
        let mut due = Due::default();
        let mut ids = Ids {
            waiting: 0,
            lookups: Cell::new(0),
        };
        // A flood of ids that never match: each waits, so no cleaning could drop a reminder.
        for i in 0..50_000 {
            due.push(i as u64, RequestId::from(i.to_string()), &ids);
            ids.waiting = i + 1;
        }
        assert_eq!(ids.lookups.get(), 0, "no reminder looked up");
        assert_eq!(due.q.len(), 50_000);
        // Then all but 1,000 leave (matched or expired): the next push cleans the queue.
        ids.waiting = 1_000;
        due.push(50_000, RequestId::from("50000"), &ids);
        assert_eq!(ids.lookups.get(), 50_000);
        assert_eq!(due.q.len(), 1_001);
        // And the queue stays within about twice what waits, plus the slack.
        for i in 50_001..100_000 {
            due.push(i as u64, RequestId::from(i.to_string()), &ids);
            assert!(
                due.q.len() <= 2 * ids.waiting + 2 * Due::<RequestId>::SLACK + 1,
                "{}",
                due.q.len()
            );
        }
    }
}
