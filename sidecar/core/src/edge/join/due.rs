//! Reminders of what waits in the join, oldest first (see [`Due`]).
use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use super::waits::HopWaits;
use crate::hop::RequestId;

/// Reminders to look at a waiting record again, oldest first, by request id. A record that
/// leaves by a match keeps its reminder (finding it in the queue would cost a scan); those
/// are dropped in bulk once the queue has doubled since it was last cleaned, so the queue
/// holds about what still waits, not every id of the window (at 50,000 requests a second and
/// a 30 s window, 1.5 million ids and ~100 MB before this).
#[derive(Default)]
pub(super) struct Due {
    pub(super) q: VecDeque<(u64, RequestId)>,
    /// The length at which the queue is cleaned next.
    clean_at: usize,
}

impl Due {
    /// Room for this many reminders before the first cleaning (and always at least this much
    /// growth between two): a cleaning then costs at most a few lookups per reminder pushed.
    const SLACK: usize = 4_096;

    pub(super) fn push(&mut self, at: u64, rid: RequestId, waiting: &impl Waiting) {
        if self.q.len() >= self.clean_at.max(Self::SLACK) {
            self.q.retain(|(_, r)| waiting.waits(r));
            self.clean_at = 2 * self.q.len() + Self::SLACK;
        }
        self.q.push_back((at, rid));
    }

    /// The oldest reminder's id when it is older than `cutoff`.
    pub(super) fn pop_before(&mut self, cutoff: u64) -> Option<RequestId> {
        if self.q.front().is_some_and(|(t, _)| *t < cutoff) {
            self.q.pop_front().map(|(_, rid)| rid)
        } else {
            None
        }
    }
}

/// Where records wait by request id (for cleaning [`Due`]).
pub(super) trait Waiting {
    fn waits(&self, rid: &str) -> bool;
}

impl<V> Waiting for HashMap<RequestId, V> {
    fn waits(&self, rid: &str) -> bool {
        self.contains_key(rid)
    }
}

impl Waiting for HopWaits {
    fn waits(&self, rid: &str) -> bool {
        self.contains_key(rid)
    }
}
