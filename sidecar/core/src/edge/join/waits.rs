//! The hop exchanges waiting for their access-log line, by request id.
//!
//! An exchange waits about one log poll (a quarter second) for its line, and lines come in
//! about the order the exchanges did. Kept by value in a hash map, each ~400-byte exchange was
//! written to a random place that had gone cold, and read back from it a quarter second later:
//! the join's largest cost with a log followed (a tenth of the sidecar's time in a profile).
//! Here the young ones lie in a ring in arrival order, written and read back in sequence, and
//! a table of 8-byte slots finds them by id (see `index`). Those still waiting after
//! [`YOUNG_NS`] (upgrades waiting for their session, lines that are late or never come) move
//! to a map of their own, so one long wait does not hold the ring open behind it. Where an
//! exchange lies changes no result: every lookup sees both. The exchange itself is in a box
//! from the join's pool of spare ones (see `Joiner::recycle`): a slot is its id, its arrival,
//! and pointers, 80 bytes to write and read where it held the whole exchange (432 bytes, each
//! one copied several times on the way in and out).
use std::{collections::VecDeque, hash::BuildHasher};

use rustc_hash::FxHashMap as HashMap;

use super::HopEntry;
use crate::hop::RequestId;

mod index;
use index::YoungIndex;

/// How long an exchange stays in the ring (by its arrival) before it moves to the map. Two
/// log polls: long enough that nearly every line finds its exchange there, short enough that
/// the ring holds little more than what waits.
pub const YOUNG_NS: u64 = 500_000_000;

/// Slots the ring holds at most (80 bytes each, taken ones included: one exchange whose line
/// never comes keeps the slots behind it until it moves). Beyond, the oldest move to the map
/// early: at ~65,000 requests a second and more, the ring is this and no longer `YOUNG_NS`.
pub const MAX_RING: usize = 32_768;

/// What [`HopWaits::take_complete`] found under a request id.
// Returned and taken apart at once: boxing the exchange would cost an allocation a request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Taken {
    /// The exchange, complete, taken out (with the id it was kept under: no copy).
    Complete(RequestId, HopEntry),
    /// An upgrade still waiting for its session: left where it is (the id, copied).
    Waiting(RequestId),
    Absent,
}

/// Exchanges waiting for their other half, by request id (see the module's doc).
pub(super) struct HopWaits {
    /// Young exchanges in arrival order, each with its arrival time and id (moved in and out:
    /// no copy); `None` once taken.
    ring: Ring,
    /// The arrival number of `ring[0]`.
    base: u64,
    /// The arrival numbers of the exchanges in the ring, found by id: 8 bytes an entry, where
    /// the id itself took 48 (the slot holds the id, and is compared).
    young: YoungIndex,
    /// Exchanges that waited longer than `young_ns`.
    old: HashMap<RequestId, HopEntry>,
    /// The ids of the exchanges moved to `old` since the join last took them, with their
    /// arrival: what expiry needs reminders of (one in the ring leaves it before it is due).
    pub(super) moved: Vec<(u64, RequestId)>,
    young_ns: u64,
    max_ring: usize,
    hash: fn(&str) -> u64,
}

/// Asks the CPU to bring in the first `lines` cache lines from `x` on, and goes on without
/// waiting for them.
#[inline(always)]
fn prefetch<T>(x: &T, lines: usize) {
    let at: *const i8 = (x as *const T).cast();
    for line in 0..lines {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing the program sees and never faults, whatever the
        // address; SSE is part of every x86_64 CPU.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                at.wrapping_add(64 * line),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (at, line);
    }
}

/// The hash `young` finds an id by (and the waiting lines' table, `super::lines`).
pub(super) fn id_hash(rid: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(rid)
}

type Ring = VecDeque<(u64, Option<(RequestId, HopEntry)>)>;

/// The id of the exchange in slot `seq`, if it is still there.
fn slot_id(ring: &Ring, base: u64, seq: u64) -> Option<&str> {
    let i = usize::try_from(seq.checked_sub(base)?).ok()?;
    ring.get(i)?.1.as_ref().map(|(rid, _)| rid.as_str())
}

impl HopWaits {
    pub(super) fn new(young_ns: u64) -> Self {
        Self::with_hash(young_ns, MAX_RING, id_hash)
    }

    fn with_hash(young_ns: u64, max_ring: usize, hash: fn(&str) -> u64) -> Self {
        Self {
            ring: VecDeque::new(),
            base: 0,
            young: YoungIndex::new(),
            old: HashMap::default(),
            moved: Vec::new(),
            young_ns,
            max_ring,
            hash,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// The index position and arrival number of the young exchange under `rid`.
    fn find_young(&self, rid: &str) -> Option<(usize, u64)> {
        let (ring, base) = (&self.ring, self.base);
        self.young.find((self.hash)(rid), base, |seq| {
            slot_id(ring, base, seq) == Some(rid)
        })
    }

    /// Asks memory for where a lookup of `rid` starts (a hint: see `Joiner::prefetch`).
    pub(super) fn prefetch(&self, rid: &str) {
        self.young.prefetch((self.hash)(rid));
    }

    /// Asks memory for the young exchange under `rid`, when where it lies is already in
    /// the caches (asked for with [`HopWaits::prefetch`] a while before): what the line's
    /// row reads of it.
    pub(super) fn prefetch_exchange(&self, rid: &str) {
        if let Some(seq) = self.young_seq(rid) {
            if let Some(Some((_, e))) = self.slot(seq) {
                prefetch(
                    &*e.exchange,
                    std::mem::size_of::<crate::hop::HttpExchange>().div_ceil(64),
                );
            }
        }
    }

    /// The arrival number of the young exchange under `rid`.
    fn young_seq(&self, rid: &str) -> Option<u64> {
        self.find_young(rid).map(|(_, seq)| seq)
    }

    /// Keeps `entry` waiting under `rid` (arrived at its `seen_ns`); returns the exchange that
    /// waited under it before, if one did.
    pub(super) fn insert(&mut self, rid: RequestId, entry: HopEntry) -> Option<HopEntry> {
        let arrived = entry.seen_ns;
        self.settle(arrived);
        let seq = self.base + self.ring.len() as u64;
        match self.find_young(&rid) {
            None => {
                self.young.insert((self.hash)(&rid), seq);
                let before = if self.old.is_empty() {
                    None
                } else {
                    self.old.remove(&rid)
                };
                self.ring.push_back((arrived, Some((rid, entry))));
                before
            }
            Some((pos, prev)) => {
                self.young.set(pos, seq);
                self.ring.push_back((arrived, Some((rid, entry))));
                self.take_slot(prev).map(|(_, e)| e)
            }
        }
    }

    /// Takes the exchange waiting under `rid`, with its id.
    pub(super) fn remove_entry(&mut self, rid: &str) -> Option<(RequestId, HopEntry)> {
        // Nothing waits (a flood of lines whose exchanges never come): no id hashed.
        if self.len() == 0 {
            return None;
        }
        if let Some((pos, seq)) = self.find_young(rid) {
            self.young.remove_at(pos);
            return self.take_slot(seq);
        }
        if self.old.is_empty() {
            return None;
        }
        self.old.remove_entry(rid)
    }

    pub(super) fn remove(&mut self, rid: &str) -> Option<HopEntry> {
        self.remove_entry(rid).map(|(_, e)| e)
    }

    /// The exchange under `rid` taken out if it is complete; one lookup when it is.
    pub(super) fn take_complete(&mut self, rid: &str) -> Taken {
        if let Some((pos, seq)) = self.find_young(rid) {
            let i = usize::try_from(seq - self.base).unwrap_or(usize::MAX);
            if let Some((key, e)) = self.ring.get(i).and_then(|(_, e)| e.as_ref()) {
                if !e.complete() {
                    return Taken::Waiting(key.clone());
                }
                self.young.remove_at(pos);
                return match self.take_slot(seq) {
                    Some((key, e)) => Taken::Complete(key, e),
                    None => Taken::Absent,
                };
            }
        }
        if self.old.is_empty() {
            return Taken::Absent;
        }
        match self.old.get_key_value(rid) {
            None => Taken::Absent,
            Some((key, e)) if !e.complete() => Taken::Waiting(key.clone()),
            Some(_) => match self.old.remove_entry(rid) {
                Some((key, e)) => Taken::Complete(key, e),
                None => Taken::Absent,
            },
        }
    }

    pub(super) fn get(&self, rid: &str) -> Option<&HopEntry> {
        match self.young_seq(rid) {
            Some(seq) => self.slot(seq).and_then(|s| s.as_ref()).map(|(_, e)| e),
            None => self.old.get(rid),
        }
    }

    pub(super) fn get_mut(&mut self, rid: &str) -> Option<&mut HopEntry> {
        match self.young_seq(rid) {
            Some(seq) => {
                let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
                self.ring
                    .get_mut(i)
                    .and_then(|(_, s)| s.as_mut())
                    .map(|(_, e)| e)
            }
            None => self.old.get_mut(rid),
        }
    }

    pub(super) fn contains_key(&self, rid: &str) -> bool {
        self.young_seq(rid).is_some() || (!self.old.is_empty() && self.old.contains_key(rid))
    }

    /// Every waiting exchange: the young in arrival order, then the old.
    pub(super) fn values(&self) -> impl Iterator<Item = &HopEntry> {
        self.ring
            .iter()
            .filter_map(|(_, e)| e.as_ref().map(|(_, e)| e))
            .chain(self.old.values())
    }

    /// Takes every waiting exchange: the young in arrival order, then the old.
    pub(super) fn take_all(&mut self) -> Vec<HopEntry> {
        self.young.clear();
        self.base += self.ring.len() as u64;
        let mut all: Vec<HopEntry> = self
            .ring
            .drain(..)
            .filter_map(|(_, e)| e.map(|(_, e)| e))
            .collect();
        all.extend(self.old.drain().map(|(_, e)| e));
        all
    }

    /// The ring slot of arrival number `seq`.
    fn slot(&self, seq: u64) -> Option<&Option<(RequestId, HopEntry)>> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.ring.get(i).map(|(_, s)| s)
    }

    /// Takes the exchange in slot `seq`, then drops the taken slots at the ring's front.
    fn take_slot(&mut self, seq: u64) -> Option<(RequestId, HopEntry)> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let taken = self.ring.get_mut(i).and_then(|(_, s)| s.take());
        debug_assert!(taken.is_some(), "a young id points at an empty slot");
        while self.ring.front().is_some_and(|(_, s)| s.is_none()) {
            self.ring.pop_front();
            self.base += 1;
        }
        taken
    }

    /// Moves the exchanges that arrived more than `young_ns` before `now_ns` from the ring to
    /// the map, and the oldest while the ring is full (and drops taken slots at the front).
    fn settle(&mut self, now_ns: u64) {
        let before = now_ns.saturating_sub(self.young_ns);
        while let Some(at) = self.ring.front().map(|(at, _)| *at) {
            if at >= before && self.ring.len() < self.max_ring {
                break;
            }
            let seq = self.base;
            let Some((_, slot)) = self.ring.pop_front() else {
                break;
            };
            self.base += 1;
            let Some((rid, e)) = slot else {
                continue;
            };
            let pos = self.young.position((self.hash)(&rid), seq);
            debug_assert!(pos.is_some(), "a young exchange not indexed");
            if let Some(pos) = pos {
                self.young.remove_at(pos);
            }
            self.moved.push((at, rid.clone()));
            self.old.insert(rid, e);
        }
    }

    /// Moves the exchanges that arrived before `cutoff` to the map (expiry looks there, by
    /// the reminders of `moved`).
    pub(super) fn settle_before(&mut self, cutoff: u64) {
        self.settle(cutoff.saturating_add(self.young_ns));
    }

    /// Slots in the ring, taken ones included (tests: the ring stays short).
    #[cfg(test)]
    pub(super) fn ring_len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hop::{ConnId, ExchangeOutcome, HttpExchange};

    fn entry(rid: &str, seen_ns: u64, upgraded: bool) -> HopEntry {
        HopEntry {
            exchange: Box::new(HttpExchange {
                conn: ConnId {
                    client: "127.0.0.1:40000".parse().expect("addr"),
                    server: "127.0.0.1:18789".parse().expect("addr"),
                    first_seen_ns: 0,
                },
                index: 0,
                request_ts_ns: seen_ns,
                method: "GET".into(),
                path: "/".into(),
                host: None,
                origin: None,
                request_id: Some(RequestId::new(rid)),
                x_forwarded_for: None,
                x_forwarded_proto: None,
                upgrade_websocket: upgraded,
                connection_upgrade: upgraded,
                status: Some(if upgraded { 101 } else { 200 }),
                ttfb_ns: None,
                total_ns: None,
                request_bytes: 0,
                response_bytes: 0,
                outcome: if upgraded {
                    ExchangeOutcome::Upgraded
                } else {
                    ExchangeOutcome::Complete
                },
                error_code: None,
            }),
            ws: None,
            seen_ns,
        }
    }

    /// What a waiting exchange is, for comparing with the model.
    fn key(e: &HopEntry) -> (String, u64, bool) {
        (
            e.exchange.request_id.as_deref().unwrap_or("").to_owned(),
            e.seen_ns,
            e.complete(),
        )
    }

    /// A ring slot holds the exchange's id and pointers, not the exchange: what the ring writes
    /// and reads back a log poll later, cold, stays small.
    #[test]
    fn a_slot_is_small() {
        let slot = std::mem::size_of::<(u64, Option<(RequestId, HopEntry)>)>();
        assert!(slot <= 96, "a ring slot is {slot} bytes");
    }

    /// Random inserts, lookups, takes and session arrivals, with time moving on unevenly:
    /// the ring-and-map gives what one plain map gives, every step.
    #[test]
    fn it_answers_as_one_map_would() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..24 {
            let young = [1, 50, 1_000][round % 3];
            // Every other round, a hash that 64 ids share 3 ways: young ids collide. Every
            // fourth, a ring of 8 slots.
            let max_ring = if round % 4 == 3 { 8 } else { MAX_RING };
            let mut w = if round % 2 == 0 {
                HopWaits::new(young)
            } else {
                HopWaits::with_hash(young, max_ring, |id| id.len() as u64 % 3)
            };
            let mut model: std::collections::HashMap<String, HopEntry> = Default::default();
            let mut now = 0u64;
            // Insert times within `young` of now: the ring holds no more slots than these.
            let mut recent = VecDeque::new();
            for _ in 0..4_000 {
                s = crate::test_rng::step(s);
                now += s % 7;
                let rid = format!("r{}", (s >> 8) % 64);
                // Hints on whatever state this is: they read, and change nothing.
                w.prefetch(&rid);
                w.prefetch_exchange(&rid);
                match (s >> 20) % 6 {
                    0 | 1 => {
                        let upgraded = (s >> 30).is_multiple_of(5);
                        let got = w.insert(RequestId::new(&rid), entry(&rid, now, upgraded));
                        let want = model.insert(rid.clone(), entry(&rid, now, upgraded));
                        assert_eq!(got.as_ref().map(key), want.as_ref().map(key));
                        recent.push_back(now);
                        while recent
                            .front()
                            .is_some_and(|t| *t < now.saturating_sub(young))
                        {
                            recent.pop_front();
                        }
                        assert!(
                            w.ring_len() <= recent.len(),
                            "young {young}: the ring holds old slots"
                        );
                        assert!(w.ring_len() <= max_ring, "the ring over its bound");
                    }
                    2 => {
                        let got = w.remove_entry(&rid);
                        let want = model.remove(&rid);
                        assert_eq!(
                            got.as_ref().map(|(k, e)| (k.to_string(), key(e))),
                            want.as_ref().map(|e| (rid.clone(), key(e)))
                        );
                    }
                    3 => {
                        let want = model.get(&rid).map(key);
                        match w.take_complete(&rid) {
                            Taken::Complete(k, e) => {
                                assert_eq!(k.as_str(), rid);
                                assert_eq!(Some(key(&e)), want);
                                assert!(e.complete());
                                model.remove(&rid);
                            }
                            Taken::Waiting(k) => {
                                assert_eq!(k.as_str(), rid);
                                assert_eq!(want.map(|k| k.2), Some(false));
                            }
                            Taken::Absent => assert_eq!(want, None),
                        }
                    }
                    4 => {
                        // What a session's arrival changes (the join sets `ws` and the time):
                        // the change is seen from then on.
                        for e in [w.get_mut(&rid), model.get_mut(&rid)].into_iter().flatten() {
                            e.exchange.outcome = ExchangeOutcome::Complete;
                            e.seen_ns = now;
                        }
                    }
                    _ => {
                        assert_eq!(w.get(&rid).map(key), model.get(&rid).map(key));
                        assert_eq!(w.contains_key(&rid), model.contains_key(&rid));
                    }
                }
                assert_eq!(w.len(), model.len());
                let mut all: Vec<_> = w.values().map(key).collect();
                let mut want: Vec<_> = model.values().map(key).collect();
                all.sort();
                want.sort();
                assert_eq!(all, want);
            }
            let mut rest: Vec<_> = w.take_all().iter().map(key).collect();
            let mut want: Vec<_> = model.values().map(key).collect();
            rest.sort();
            want.sort();
            assert_eq!(rest, want);
            assert_eq!(w.len(), 0);
        }
    }
}
