//! Where in the ring a young exchange lies, found by its request id.
//!
//! An open-addressed table with linear probing, 8 bytes a slot: a tag (the id hash's high
//! bits) and the exchange's arrival number (its low 32 bits: the ring holds fewer than
//! 2^32). A lookup reads one cache line of the table where a hash map read two (its control
//! bytes and its bucket), each cold a log poll after the insert: the join's largest cost
//! with a log followed. A tag can match another id's, so every match is confirmed by the id
//! the ring's slot holds (the caller's `is`), and the probe goes on past one that is not.

/// A slot's value when nothing is in it (every tag has its top bit set).
const EMPTY: u64 = 0;

/// The smallest table (slots); it doubles when half full.
const MIN_SLOTS: usize = 1_024;

pub(super) struct YoungIndex {
    slots: Vec<u64>,
    len: usize,
}

/// The tag of an id's hash (never 0: the empty slot's value).
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32 | 0x8000_0000
}

impl YoungIndex {
    pub(super) fn new() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.len = 0;
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot a tag's probe starts at (a multiplicative mix of the tag: the table's size
    /// picks the top bits).
    fn home(&self, tag: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
    }

    /// The arrival number of slot value `v`, the ring starting at `base`.
    fn seq(v: u64, base: u64) -> u64 {
        base + u64::from((v as u32).wrapping_sub(base as u32))
    }

    /// The position and arrival number of the entry of `hash` for which `is` (given an
    /// arrival number) says yes.
    pub(super) fn find(
        &self,
        hash: u64,
        base: u64,
        mut is: impl FnMut(u64) -> bool,
    ) -> Option<(usize, u64)> {
        if self.len == 0 {
            return None;
        }
        let t = tag(hash);
        let mask = self.mask();
        let mut i = self.home(t);
        loop {
            let v = self.slots[i];
            if v == EMPTY {
                return None;
            }
            if (v >> 32) as u32 == t {
                let seq = Self::seq(v, base);
                if is(seq) {
                    return Some((i, seq));
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// The position of the entry of `hash` with arrival number `seq`.
    pub(super) fn position(&self, hash: u64, seq: u64) -> Option<usize> {
        self.find(hash, seq, |s| s == seq).map(|(i, _)| i)
    }

    /// Asks memory for the slot where a lookup of `hash` starts, without waiting for it: a
    /// hint ahead of [`YoungIndex::find`], which changes no result.
    pub(super) fn prefetch(&self, hash: u64) {
        if self.len > 0 {
            super::prefetch(&self.slots[self.home(tag(hash))], 1);
        }
    }

    /// Adds an entry (the caller knows the id has none).
    pub(super) fn insert(&mut self, hash: u64, seq: u64) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let t = tag(hash);
        let mask = self.mask();
        let mut i = self.home(t);
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = u64::from(t) << 32 | u64::from(seq as u32);
        self.len += 1;
    }

    /// Points the entry at `pos` at arrival number `seq` (the same id, arrived again).
    pub(super) fn set(&mut self, pos: usize, seq: u64) {
        let v = &mut self.slots[pos];
        *v = (*v & !0xffff_ffff) | u64::from(seq as u32);
    }

    /// Removes the entry at `pos`; the entries after it that may stand in its place move
    /// back (so a probe still ends at the first empty slot).
    pub(super) fn remove_at(&mut self, pos: usize) {
        let mask = self.mask();
        let mut hole = pos;
        let mut j = pos;
        loop {
            j = (j + 1) & mask;
            let v = self.slots[j];
            if v == EMPTY {
                break;
            }
            let home = self.home((v >> 32) as u32);
            // `v` may fill the hole when the hole lies on its probe, from its home to `j`.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = v;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; size]);
        let mask = self.mask();
        for v in old.into_iter().filter(|v| *v != EMPTY) {
            let mut i = self.home((v >> 32) as u32);
            while self.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, re-arrivals and removals of 700 ids (past the table's first growth),
    /// their hashes from few tags or many: the table finds what a map finds, every step, and
    /// a probe still ends where it should after entries moved back over a removed one
    /// (clusters that wrap round the table's end included).
    #[test]
    fn it_finds_what_a_map_finds() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for distinct_tags in [1u64, 7, 1 << 31] {
            let mut index = YoungIndex::new();
            // id -> (hash, seq); seq -> id (what the ring's slot would say).
            let mut model: HashMap<u64, (u64, u64)> = HashMap::new();
            let mut at: HashMap<u64, u64> = HashMap::new();
            let mut next_seq = 0u64;
            let hash_of = |id: u64| (id % distinct_tags).wrapping_mul(0x9e37_79b9) << 32 | id;
            for _ in 0..20_000 {
                s = crate::test_rng::step(s);
                let id = (s >> 8) % 700;
                let hash = hash_of(id);
                let found = index.find(hash, 0, |seq| at.get(&seq) == Some(&id));
                assert_eq!(found.map(|(_, seq)| seq), model.get(&id).map(|m| m.1));
                match ((s >> 20) % 3, found) {
                    (0 | 1, None) => {
                        index.insert(hash, next_seq);
                        model.insert(id, (hash, next_seq));
                        at.insert(next_seq, id);
                        next_seq += 1;
                    }
                    (0, Some((pos, old))) => {
                        index.set(pos, next_seq);
                        at.remove(&old);
                        model.insert(id, (hash, next_seq));
                        at.insert(next_seq, id);
                        next_seq += 1;
                    }
                    (_, Some((pos, seq))) => {
                        assert_eq!(index.position(hash, seq), Some(pos));
                        index.remove_at(pos);
                        model.remove(&id);
                        at.remove(&seq);
                    }
                    (_, None) => {}
                }
                assert_eq!(index.len(), model.len());
            }
            for (id, (hash, seq)) in &model {
                let found = index.find(*hash, 0, |s| at.get(&s) == Some(id));
                assert_eq!(found.map(|(_, s)| s), Some(*seq));
            }
            index.clear();
            assert_eq!(index.len(), 0);
            assert!(index.find(hash_of(1), 0, |_| true).is_none());
        }
    }
}
