//! The access-log lines waiting for their exchange, by request id.
//!
//! A line waits in a box (its record is ~290 bytes); the table holds, per line, the id's
//! hash, since when it waits, and the box: 24 bytes a bucket. Keyed by the id itself it held
//! the id too (48 bytes inline), 64 bytes a bucket: 4 MiB at 40,000 lines whose exchange never
//! comes, past a core's L2 cache (2 MiB on the development VM), so that a flood's every lookup
//! and insert went further out (`cargo bench --bench floods`). The id is compared in the box,
//! which is read only when the whole 64-bit hash matches: on a hit, which takes the box anyway,
//! or on a collision.
use hashbrown::HashTable;

use super::{due::Waiting, waits::id_hash, EdgeRecord};

/// A line waiting: its id's hash, since when it waits, and its record.
struct Line {
    hash: u64,
    seen_ns: u64,
    rec: Box<EdgeRecord>,
}

/// Lines waiting for their exchange, found by the request id in their record.
pub(super) struct LineWaits {
    table: HashTable<Line>,
    hash: fn(&str) -> u64,
}

impl Default for LineWaits {
    fn default() -> Self {
        Self::with_hash(id_hash)
    }
}

impl LineWaits {
    /// With another hash (tests give one that collides).
    pub(super) fn with_hash(hash: fn(&str) -> u64) -> Self {
        Self {
            table: HashTable::new(),
            hash,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The hash a line waiting under `rid` is found by (and reminded of: see [`Due`]).
    ///
    /// [`Due`]: super::due::Due
    pub(super) fn hash(&self, rid: &str) -> u64 {
        (self.hash)(rid)
    }

    /// `rec` waits from `seen_ns` under its request id, whose hash is `hash`. The line that
    /// waited under the same id, if any, is handed back with since when it waited.
    pub(super) fn insert(
        &mut self,
        hash: u64,
        seen_ns: u64,
        rec: Box<EdgeRecord>,
    ) -> Option<(u64, Box<EdgeRecord>)> {
        debug_assert_eq!(rec.request_id.as_deref().map(self.hash), Some(hash));
        // (The join keeps lines without an id apart and hands none here; one would still
        // wait, under `hash`, and leave by its reminder, never found by an id.)
        let there = match rec.request_id.as_deref() {
            Some(rid) => self.table.find_mut(hash, |l| is(l, hash, rid)),
            None => None,
        };
        if let Some(there) = there {
            let old = std::mem::replace(there, Line { hash, seen_ns, rec });
            return Some((old.seen_ns, old.rec));
        }
        self.table
            .insert_unique(hash, Line { hash, seen_ns, rec }, |l| l.hash);
        None
    }

    /// Takes the line waiting under `rid`, with since when it waited.
    pub(super) fn remove(&mut self, rid: &str) -> Option<(u64, Box<EdgeRecord>)> {
        let hash = (self.hash)(rid);
        let (line, _) = self
            .table
            .find_entry(hash, |l| is(l, hash, rid))
            .ok()?
            .remove();
        Some((line.seen_ns, line.rec))
    }

    /// Takes a line whose id hashes to `hash` and that waits since before `cutoff`: every
    /// such line is due, whichever it is (lines whose ids hash alike each have a reminder of
    /// their own). Found in the table alone, no box read.
    pub(super) fn remove_due(&mut self, hash: u64, cutoff: u64) -> Option<Box<EdgeRecord>> {
        let found = self
            .table
            .find_entry(hash, |l| l.hash == hash && l.seen_ns < cutoff);
        Some(found.ok()?.remove().0.rec)
    }

    pub(super) fn contains_key(&self, rid: &str) -> bool {
        let hash = (self.hash)(rid);
        self.table.find(hash, |l| is(l, hash, rid)).is_some()
    }

    /// Since when each line waits (read from the table alone: no box is read).
    pub(super) fn seen_times(&self) -> impl Iterator<Item = u64> + '_ {
        self.table.iter().map(|l| l.seen_ns)
    }

    /// The waiting records.
    pub(super) fn records(&self) -> impl Iterator<Item = &EdgeRecord> + '_ {
        self.table.iter().map(|l| &*l.rec)
    }
}

/// `l` is the line under `rid` (hash `hash`): the box is read only when the hashes match.
fn is(l: &Line, hash: u64, rid: &str) -> bool {
    l.hash == hash && l.rec.request_id.as_deref() == Some(rid)
}

impl Waiting<u64> for LineWaits {
    fn waits(&self, hash: &u64) -> bool {
        self.table.find(*hash, |l| l.hash == *hash).is_some()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(rid: &str, status: u16) -> Box<EdgeRecord> {
        Box::new(super::super::tests::edge(Some(rid), status, "/", 0))
    }

    /// Every id hashes alike: lines are told apart by the id in their box alone.
    fn same(_: &str) -> u64 {
        7
    }

    #[test]
    fn lines_whose_ids_hash_alike_are_told_apart_by_their_ids() {
        for mut w in [LineWaits::default(), LineWaits::with_hash(same)] {
            let (a, b) = (w.hash("a"), w.hash("b"));
            assert!(w.insert(a, 10, line("a", 200)).is_none());
            assert!(w.insert(b, 20, line("b", 502)).is_none());
            assert_eq!(w.len(), 2);
            assert!(w.contains_key("a") && w.contains_key("b") && !w.contains_key("c"));
            assert!(w.waits(&a) && w.waits(&b) && w.count() == 2);
            // A second line under "a" takes its place; the first comes back.
            let (seen, old) = w.insert(a, 30, line("a", 404)).expect("the line under a");
            assert_eq!((seen, old.status), (10, 200));
            assert_eq!(w.len(), 2);
            let mut times: Vec<u64> = w.seen_times().collect();
            times.sort_unstable();
            assert_eq!(times, [20, 30]);
            // Due by a hash and a cutoff: only a line waiting since before the cutoff.
            assert!(w.remove_due(a, 20).is_none(), "none waits since before 20");
            // Under a's hash, a line waiting since before 31: a's, or b's when they hash alike.
            let status = w.remove_due(a, 31).map(|r| r.status);
            assert!(
                status == Some(404) || (a == b && status == Some(502)),
                "{status:?}"
            );
            assert_eq!(w.len(), 1);
            assert_eq!(w.records().count(), 1);
            assert!(w.remove("c").is_none());
        }
        // Ids that hash alike: each comes out by its own id.
        let mut w = LineWaits::with_hash(same);
        for (i, rid) in ["x", "y", "z"].into_iter().enumerate() {
            assert!(w.insert(7, i as u64, line(rid, 200 + i as u16)).is_none());
        }
        assert_eq!(w.remove("y").map(|(s, r)| (s, r.status)), Some((1, 201)));
        assert!(w.remove("y").is_none() && w.contains_key("x") && w.contains_key("z"));
        assert_eq!(w.remove_due(7, 1).map(|r| r.status), Some(200));
        assert!(w.remove_due(7, 2).is_none(), "z waits since 2");
        assert!(!w.is_empty() && !w.waits(&8));
    }
}
