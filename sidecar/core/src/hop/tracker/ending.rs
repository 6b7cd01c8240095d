//! How connections leave the tracker other than by their own end: evicted at the count
//! limit, expired when idle, or reported as they stand when the input ends.
use super::{ConnKey, Ending, Held, Tracker};
use crate::hop::HopRecord;

impl Tracker {
    /// At [`TrackerLimits::max_connections`](super::TrackerLimits::max_connections): reports
    /// the least recently active eighth of the connections as they stand and forgets them
    /// (counted).
    pub(super) fn make_room(&mut self, out: &mut Vec<HopRecord>) {
        let max = self.limits.max_connections.max(1);
        if self.conns.len() < max {
            return;
        }
        // The cutoff from the times alone (8 bytes a connection where the keys made 72), then
        // one pass over the buckets takes the connections at or before it: as many as `evict`,
        // ties included up to that count.
        let mut seen: Vec<u64> = self.conns.values().map(|(seen, _)| *seen).collect();
        let evict = (max / 8).max(1).min(seen.len());
        let (below, &mut cutoff, _) = seen.select_nth_unstable(evict - 1);
        let mut ties = evict - below.iter().filter(|s| **s < cutoff).count();
        let mut gone: Vec<(ConnKey, Held)> = self
            .conns
            .extract_if(|_, (seen, _)| {
                *seen < cutoff
                    || (*seen == cutoff && ties > 0 && {
                        ties -= 1;
                        true
                    })
            })
            .collect();
        // Oldest first, as they stood.
        gone.sort_unstable_by_key(|(key, (seen, _))| (*seen, *key));
        for (_, (ts, conn)) in gone {
            self.account(&conn);
            self.stats.evicted_connections += 1;
            let before = out.len();
            conn.finish(ts, Ending::EndOfInput, out);
            self.stats.records += (out.len() - before) as u64;
        }
    }

    /// The input ended: emits every connection's records as they stand.
    pub fn finish(&mut self, out: &mut Vec<HopRecord>) {
        // Each connection's start read once, beside its box: sorting by a key inside the boxes
        // read two cold boxes a comparison, n log n of them (a flood of 40,000 new connections
        // cost 2.5x one of 20,000).
        let mut conns: Vec<(u64, Held)> = self
            .conns
            .drain()
            .map(|(_, (last, c))| (c.id.first_seen_ns, (last, c)))
            .collect();
        conns.sort_unstable_by_key(|(first_seen, _)| *first_seen);
        for (_, (ts, conn)) in conns {
            self.account(&conn);
            let before = out.len();
            conn.finish(ts, Ending::EndOfInput, out);
            self.stats.records += (out.len() - before) as u64;
        }
    }

    /// Emits connections idle since before `cutoff_ns` (the live path calls this periodically
    /// so a connection whose end was never seen does not stay forever).
    pub fn expire(&mut self, cutoff_ns: u64, out: &mut Vec<HopRecord>) {
        // Taken out in the one pass that finds them (as eviction does), not looked up again.
        let stale: Vec<(ConnKey, Held)> = self
            .conns
            .extract_if(|_, (seen, _)| *seen < cutoff_ns)
            .collect();
        for (_, (ts, conn)) in stale {
            self.account(&conn);
            conn.finish(ts, Ending::EndOfInput, out);
        }
    }
}
