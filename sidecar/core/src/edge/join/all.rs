//! Whole sets joined offline, in the data's own time order (see [`join_all`]).
use super::{JoinLimits, JoinStats, JoinedRequest, Joiner};
use crate::{edge::EdgeRecord, hop::HopRecord};

/// Joins whole sets offline (`edgewatch replay --access-log`): both sides merged in time
/// order, the window measured in the data's own time, so the result is deterministic.
pub fn join_all(hop: Vec<HopRecord>, edges: Vec<EdgeRecord>, window_ns: u64) -> Vec<JoinedRequest> {
    join_all_limited(hop, edges, window_ns, JoinLimits::default()).0
}

/// [`join_all`] with the count limits of the config (`[edge]`), and what the join gave up.
pub fn join_all_limited(
    mut hop: Vec<HopRecord>,
    mut edges: Vec<EdgeRecord>,
    window_ns: u64,
    limits: JoinLimits,
) -> (Vec<JoinedRequest>, JoinStats) {
    edges.sort_by_key(|e| e.end_ts_ns);
    hop.sort_by_key(HopRecord::end_ts_ns);
    let mut joiner = Joiner::with_limits(window_ns, limits);
    let mut out = Vec::new();
    let mut edges = edges.into_iter().peekable();
    let mut hops = hop.into_iter().peekable();
    loop {
        let next_edge = edges.peek().map(|e| e.end_ts_ns);
        let next_hop = hops.peek().map(|r| r.end_ts_ns());
        // The earlier of the two goes first; a hop record before a line of the same time.
        let edge_first = match (next_edge, next_hop) {
            (None, None) => break,
            (Some(e), Some(h)) => e < h,
            (e, _) => e.is_some(),
        };
        if edge_first {
            if let (Some(rec), Some(e)) = (edges.next(), next_edge) {
                joiner.edge(rec, e, &mut out);
                joiner.expire(e, &mut out);
            }
        } else if let (Some(r), Some(h)) = (hops.next(), next_hop) {
            joiner.hop(r, h, &mut out);
            joiner.expire(h, &mut out);
        }
    }
    joiner.finish(&mut out);
    (out, joiner.stats)
}
