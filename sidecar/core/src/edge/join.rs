//! Joins edge access-log records with the hop's exchanges and WebSocket sessions. Pure:
//! records and a clock in, joined requests out, deterministic for replay.
//!
//! - Exact: the edge record and the hop exchange carry the same request id (nginx
//!   `$request_id` / Caddy `{http.request.uuid}` forwarded as X-Request-ID). An upgraded
//!   exchange also waits for its WebSocket session (same request id), which ends about when the
//!   edge logs the request.
//! - Inferred (no request id on one side): same method and path, the hop request inside the
//!   edge request's time span (with a slack), and the same upstream address when the edge
//!   logged one.
//! - Unmatched records are still emitted once `window` has passed, with the reason; an edge
//!   502/504 with no exchange is joined to a refused connect to its upstream in its time span.
use std::{borrow::Cow, collections::VecDeque};

mod all;
mod due;
mod lines;
mod spares;
mod waits;

use rustc_hash::FxHashMap as HashMap;

use serde::Serialize;

pub use self::all::{join_all, join_all_limited};
use self::due::Due;
use self::lines::LineWaits;
use self::spares::Spares;
use self::waits::{HopWaits, Taken};
use super::EdgeRecord;
use crate::hop::{
    ConnEvent, ConnEventKind, ExchangeOutcome, HopRecord, HttpExchange, RequestId, WsSession,
};

/// How a joined request was put together.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Matched {
    /// By request id.
    Exact,
    /// By time, method, path and upstream (no request id on one side).
    Inferred,
    /// Only the edge saw it.
    EdgeOnly,
    /// Only the hop saw it.
    HopOnly,
}

impl Matched {
    /// The name used in output and in ClickHouse (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Matched::Exact => "exact",
            Matched::Inferred => "inferred",
            Matched::EdgeOnly => "edge_only",
            Matched::HopOnly => "hop_only",
        }
    }
}

/// One request with both views.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JoinedRequest {
    pub request_id: Option<RequestId>,
    pub matched: Matched,
    /// Why something is missing, when it is (most reasons are fixed texts: no allocation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'static, str>>,
    /// Boxed, like `hop`: a line's record (~290 bytes) is copied once, into a box from the
    /// join's pool (see [`Joiner::boxed_edge`]), and moves on as a pointer; inline, it made
    /// every request ~400 bytes, copied wherever one moved or was emitted.
    pub edge: Option<Box<EdgeRecord>>,
    /// Boxed: an exchange waits for its log line in a box from the join's pool, and moves on
    /// as a pointer (see [`Joiner::recycle`]); a 360-byte value was copied at each step.
    pub hop: Option<Box<HttpExchange>>,
    /// Boxed, like `refused`: they are rare and large, and requests move around a lot.
    pub websocket: Option<Box<WsSession>>,
    /// The refused connect that explains an edge 502/504 with no exchange.
    pub refused: Option<Box<ConnEvent>>,
}

struct HopEntry {
    exchange: Box<HttpExchange>,
    ws: Option<Box<WsSession>>,
    seen_ns: u64,
}

impl HopEntry {
    fn complete(&self) -> bool {
        self.exchange.outcome != ExchangeOutcome::Upgraded || self.ws.is_some()
    }
}

/// An edge 502/504 explained by a refused connect.
fn refused_join(e: Box<EdgeRecord>, c: ConnEvent) -> JoinedRequest {
    let reason = format!(
        "the proxy's connect to {} was refused: nothing listens there (stale upstream port)",
        c.conn.server
    );
    JoinedRequest {
        request_id: e.request_id.clone(),
        matched: Matched::Inferred,
        reason: Some(reason.into()),
        edge: Some(e),
        hop: None,
        websocket: None,
        refused: Some(Box::new(c)),
    }
}

/// Time a hop request may lie outside the edge request's span and still be inferred to be it
/// (clocks: the proxy's log time and the probe's are both the host's).
const SLACK_NS: u64 = 5_000_000;

/// Count limits of the join: request ids and how many of them come are chosen by strangers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinLimits {
    /// Records waiting for their other half, all kinds together. Beyond it the oldest eighth
    /// is emitted at once, unmatched, with the reason, and counted.
    pub max_pending: usize,
    /// Records without a request id waiting to be inferred (each new one is compared with
    /// every waiting one, so this bound also bounds that work).
    pub max_without_id: usize,
}

impl Default for JoinLimits {
    fn default() -> Self {
        Self {
            max_pending: 50_000,
            max_without_id: 2_048,
        }
    }
}

/// What the join gave up or noticed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JoinStats {
    /// A second record with a request id already waiting: the earlier one was emitted, unmatched,
    /// instead of being replaced silently.
    pub duplicate_request_ids: u64,
    /// Records emitted before their window ended, to stay within [`JoinLimits`].
    pub shed: u64,
}

/// The join state.
pub struct Joiner {
    window_ns: u64,
    limits: JoinLimits,
    pub stats: JoinStats,
    /// Lines waiting for their exchange, each in a box of its own: inline, a line's ~370
    /// bytes made every bucket of the table that large (26 MB of table, and every growth
    /// moving them all, at 40,000 lines whose ids never come). A line rarely waits: its
    /// exchange is nearly always drained before it is read.
    /// Since when each waits is kept in the table, beside the box: shedding and expiry read
    /// it for every waiting line they look at, and a box's is a cache miss each. The id is
    /// the one in the box (see [`lines`]).
    edges: LineWaits,
    /// Exchanges waiting for their line, young ones in arrival order (see [`waits`]).
    hops: HopWaits,
    /// When to look at a waiting record again, oldest first: expiry pops these instead of
    /// scanning the maps (linear in the records, however many wait).
    edge_due: Due<u64>,
    /// Exchanges get theirs as they leave the ring for the map (`HopWaits::moved`): one
    /// matched in the ring, nearly all of them, never had one to push and clean away.
    hop_aged: Due,
    /// Exchanges looked at again later (their session came; an upgrade still waiting).
    hop_due: Due,
    edges_without_id: VecDeque<(Box<EdgeRecord>, u64)>,
    hops_without_id: VecDeque<HopEntry>,
    /// Sessions whose exchange has not been seen (yet), by request id.
    orphan_ws: HashMap<RequestId, (WsSession, u64)>,
    orphan_due: Due,
    refused: VecDeque<(ConnEvent, u64)>,
    /// Waiting edge records with status 502/504 (a refused connect may explain them).
    waiting_5xx: usize,
    /// Boxes of exchanges whose requests went out, for the next exchanges to wait in (see
    /// [`Joiner::recycle`]); the last one given back is used first, while it is in the caches.
    /// Each waits empty: its exchange is dropped as it comes back (see [`spares`]).
    spare: Spares<HttpExchange>,
    /// The same for the lines' records: a line waits, and goes out with its request, in a box
    /// (a request is then 112 bytes, not ~400, wherever it moves or is emitted).
    #[allow(
        clippy::vec_box,
        reason = "a pool of the boxes themselves: each is handed out and given back whole"
    )]
    spare_edges: Vec<Box<EdgeRecord>>,
}

/// Spare exchange boxes kept at most (~370 bytes each, 6 MiB), and as many of the lines' (~300
/// bytes each, 5 MiB): half a second of requests at ~30,000 a second. A log poll gives back at
/// once the boxes of the requests since the one before, 200 or 300 ms as the drain's beats
/// fall (with a quarter second's 8,192 kept, the allocation of new ones was 1% of the
/// sidecar's samples at 29,000 requests a second). At higher rates the rest are freed and
/// allocated again.
pub const MAX_SPARE: usize = 16_384;

impl Joiner {
    /// Records wait at most `window_ns` for their other half.
    pub fn new(window_ns: u64) -> Self {
        Self::with_limits(window_ns, JoinLimits::default())
    }

    /// The same, with other count limits.
    pub fn with_limits(window_ns: u64, limits: JoinLimits) -> Self {
        Self {
            window_ns,
            limits,
            stats: JoinStats::default(),
            edges: LineWaits::default(),
            hops: HopWaits::new(waits::YOUNG_NS),
            edge_due: Due::default(),
            hop_aged: Due::default(),
            hop_due: Due::default(),
            edges_without_id: VecDeque::new(),
            hops_without_id: VecDeque::new(),
            orphan_ws: HashMap::default(),
            orphan_due: Due::default(),
            refused: VecDeque::new(),
            waiting_5xx: 0,
            spare: Spares::new(MAX_SPARE),
            spare_edges: Vec::new(),
        }
    }

    /// Gives back the box of an emitted request's exchange once the request has been handled,
    /// for the next exchange to wait in: with every box given back, an exchange costs no
    /// allocation in steady state. (Its contents are dropped now, while they are in the
    /// caches, not when the box is reused.)
    pub fn recycle(&mut self, exchange: Box<HttpExchange>) {
        self.spare.give(exchange);
    }

    /// Gives back the exchange and line boxes of joined requests that have been handled (each
    /// request's `hop` and `edge` are taken; the rest of it is left as it was).
    pub fn recycle_handled(&mut self, handled: &mut [JoinedRequest]) {
        for r in handled {
            if let Some(x) = r.hop.take() {
                self.recycle(x);
            }
            if let Some(e) = r.edge.take() {
                if self.spare_edges.len() < MAX_SPARE {
                    self.spare_edges.push(e);
                }
            }
        }
    }

    /// Asks memory for where the join looks up request id `rid`, without waiting: called
    /// with the next line (or exchange) while this one is handled, it puts the join's cold
    /// read for it (a line's exchange arrived a log poll before; an exchange's id lands at a
    /// random place) under way early. A hint: it changes no result.
    pub fn prefetch(&self, rid: &str) {
        self.hops.prefetch(rid);
    }

    /// Asks memory for the exchange waiting under `rid`, when [`Joiner::prefetch`] was
    /// called with `rid` a while before: called with the next line while this one is
    /// handled (and `prefetch` with the line after it), the exchange a line's row reads is
    /// in the caches when its turn comes. A hint: it changes no result.
    pub fn prefetch_exchange(&self, rid: &str) {
        self.hops.prefetch_exchange(rid);
    }

    /// `x` in a box, a spare one when there is one.
    fn boxed(&mut self, x: HttpExchange) -> Box<HttpExchange> {
        self.spare.boxed(x)
    }

    /// `rec` in a box for [`Joiner::edge_or`], a spare one when there is one (the boxes of
    /// handled requests' lines come back by [`Joiner::recycle_handled`]).
    pub fn boxed_edge(&mut self, rec: EdgeRecord) -> Box<EdgeRecord> {
        match self.spare_edges.pop() {
            Some(mut b) => {
                *b = rec;
                b
            }
            None => Box::new(rec),
        }
    }

    /// Keeps an edge record waiting under its request id, whose hash is `hash`; one already
    /// waiting under it is emitted.
    fn wait_edge(
        &mut self,
        hash: u64,
        rec: Box<EdgeRecord>,
        now_ns: u64,
        out: &mut Vec<JoinedRequest>,
    ) {
        if matches!(rec.status, 502 | 504) {
            self.waiting_5xx += 1;
        }
        self.edge_due.push(now_ns, hash, &self.edges);
        if let Some((_, old)) = self.edges.insert(hash, now_ns, rec) {
            self.stats.duplicate_request_ids += 1;
            self.edge_left(&old);
            let mut j = self.edge_unmatched_or_partial(old, None);
            j.reason = Some(
                format!(
                    "another edge log line carried the same request id; {}",
                    j.reason.as_deref().unwrap_or("")
                )
                .into(),
            );
            out.push(j);
        }
        self.shed_if_full(now_ns, out);
    }

    /// Keeps a hop exchange waiting under `rid`; one already waiting under it is emitted.
    fn wait_hop(&mut self, rid: RequestId, entry: HopEntry, out: &mut Vec<JoinedRequest>) {
        let now_ns = entry.seen_ns;
        let old = self.hops.insert(rid, entry);
        self.remind_moved();
        if let Some(old) = old {
            self.stats.duplicate_request_ids += 1;
            out.push(joined(
                None,
                Some(old),
                Matched::HopOnly,
                Some("a later exchange on the hop carried the same request id".into()),
            ));
        }
        self.shed_if_full(now_ns, out);
    }

    /// An edge record stops waiting.
    fn edge_left(&mut self, e: &EdgeRecord) {
        if matches!(e.status, 502 | 504) {
            self.waiting_5xx = self.waiting_5xx.saturating_sub(1);
        }
    }

    /// Takes the edge record waiting under `rid`.
    fn take_edge(&mut self, rid: &str) -> Option<(Box<EdgeRecord>, u64)> {
        let (seen_ns, e) = self.edges.remove(rid)?;
        self.edge_left(&e);
        Some((e, seen_ns))
    }

    /// Over [`JoinLimits::max_pending`]: the oldest eighth of what waits goes out now.
    fn shed_if_full(&mut self, now_ns: u64, out: &mut Vec<JoinedRequest>) {
        let max = self.limits.max_pending.max(8);
        if self.pending() <= max {
            return;
        }
        let mut seen: Vec<u64> = self
            .edges
            .seen_times()
            .chain(self.hops.values().map(|h| h.seen_ns))
            .chain(self.orphan_ws.values().map(|(_, s)| *s))
            .chain(self.edges_without_id.iter().map(|(_, s)| *s))
            .chain(self.hops_without_id.iter().map(|h| h.seen_ns))
            .collect();
        let k = (max / 8).clamp(1, seen.len());
        seen.select_nth_unstable(k - 1);
        let cutoff = seen[k - 1].saturating_add(1).min(now_ns.saturating_add(1));
        let before = out.len();
        self.expire_before(cutoff, true, out);
        self.stats.shed += (out.len() - before) as u64;
    }

    /// Records waiting for their other half.
    pub fn pending(&self) -> usize {
        self.edges.len()
            + self.hops.len()
            + self.edges_without_id.len()
            + self.hops_without_id.len()
            + self.orphan_ws.len()
    }

    /// An edge access-log record arrived.
    pub fn edge(&mut self, rec: EdgeRecord, now_ns: u64, out: &mut Vec<JoinedRequest>) {
        let rec = self.boxed_edge(rec);
        self.edge_or(rec, now_ns, out, |_| {});
    }

    /// [`Joiner::edge`], telling the two cases apart with one lookup: true when `rec`'s
    /// request is complete at once (joined by its request id to an exchange that waited for
    /// it complete, or a line whose log names no upstream, alone for good) and is the one
    /// this call pushed; otherwise `alone` gets the record first, before it waits or joins
    /// some other way, and the call returns false.
    pub fn edge_or(
        &mut self,
        rec: Box<EdgeRecord>,
        now_ns: u64,
        out: &mut Vec<JoinedRequest>,
        alone: impl FnOnce(&EdgeRecord),
    ) -> bool {
        // The proxy answered it itself: nothing will come to wait for (a flood of such lines
        // would otherwise fill the table and shed what does wait), and its request is
        // complete now, out with the line.
        if rec.no_upstream {
            out.push(served_by_the_proxy(rec));
            return true;
        }
        let Some(rid) = rec.request_id.as_deref() else {
            alone(&rec);
            if let Some(i) = self
                .hops_without_id
                .iter()
                .position(|h| infers(&rec, &h.exchange))
            {
                if let Some(h) = self.hops_without_id.remove(i) {
                    out.push(joined(Some(rec), Some(h), Matched::Inferred, None));
                }
                return false;
            }
            if self.edges_without_id.len() >= self.limits.max_without_id {
                if let Some((e, _)) = self.edges_without_id.pop_front() {
                    self.stats.shed += 1;
                    out.push(self.edge_unmatched_or_partial(e, None));
                }
            }
            self.edges_without_id.push_back((rec, now_ns));
            self.shed_if_full(now_ns, out);
            return false;
        };
        // One lookup in the common case (the exchange is there and complete).
        match self.hops.take_complete(rid) {
            Taken::Complete(key, h) => {
                // The map's key becomes the record's id: no copy.
                let mut j = joined_without_id(Some(rec), Some(h), Matched::Exact, None);
                j.request_id = Some(key);
                out.push(j);
                true
            }
            Taken::Waiting(key) => {
                // An upgrade still waiting for its session: both wait.
                alone(&rec);
                let hash = self.edges.hash(&key);
                self.wait_edge(hash, rec, now_ns, out);
                false
            }
            Taken::Absent => {
                alone(&rec);
                // A 502/504 that a refused connect already explains: no exchange will come.
                if matches!(rec.status, 502 | 504) {
                    if let Some(c) = self.refused_for(&rec) {
                        out.push(refused_join(rec, c));
                        return false;
                    }
                }
                let hash = self.edges.hash(rid);
                self.wait_edge(hash, rec, now_ns, out);
                false
            }
        }
    }

    /// A hop record arrived (exchanges and WebSocket sessions are used, and refused connects
    /// are remembered to explain edge 502s).
    pub fn hop(&mut self, rec: HopRecord, now_ns: u64, out: &mut Vec<JoinedRequest>) {
        match rec {
            HopRecord::Http(x) => {
                let mut entry = HopEntry {
                    exchange: self.boxed(x),
                    ws: None,
                    seen_ns: now_ns,
                };
                let Some(rid) = entry.exchange.request_id.clone() else {
                    if let Some(i) = self
                        .edges_without_id
                        .iter()
                        .position(|(e, _)| infers(e, &entry.exchange))
                    {
                        if let Some((e, _)) = self.edges_without_id.remove(i) {
                            out.push(joined(Some(e), Some(entry), Matched::Inferred, None));
                        }
                        return;
                    }
                    if self.hops_without_id.len() >= self.limits.max_without_id {
                        if let Some(h) = self.hops_without_id.pop_front() {
                            self.stats.shed += 1;
                            out.push(joined(
                                None,
                                Some(h),
                                Matched::HopOnly,
                                Some("no request id; given up early (too many waiting)".into()),
                            ));
                        }
                    }
                    self.hops_without_id.push_back(entry);
                    self.shed_if_full(now_ns, out);
                    return;
                };
                // (Empty maps are skipped: hashing the id is the join's main cost.)
                if !self.orphan_ws.is_empty() {
                    if let Some((ws, _)) = self.orphan_ws.remove(&rid) {
                        entry.ws = Some(Box::new(ws));
                    }
                }
                if entry.complete() && !self.edges.is_empty() {
                    if let Some((e, _)) = self.take_edge(&rid) {
                        out.push(joined(Some(e), Some(entry), Matched::Exact, None));
                        return;
                    }
                }
                self.wait_hop(rid, entry, out);
            }
            HopRecord::Websocket(s) => {
                let Some(rid) = s.request_id.as_deref().map(RequestId::new) else {
                    return;
                };
                match self.hops.get_mut(&rid) {
                    Some(h) => {
                        h.ws = Some(Box::new(s));
                        h.seen_ns = now_ns;
                        if self.edges.contains_key(&rid) {
                            let h = self.hops.remove(&rid);
                            let e = self.take_edge(&rid).map(|(e, _)| e);
                            out.push(joined(e, h, Matched::Exact, None));
                        } else {
                            self.hop_due.push(now_ns, rid, &self.hops);
                        }
                    }
                    None => {
                        self.orphan_due.push(now_ns, rid.clone(), &self.orphan_ws);
                        self.orphan_ws.insert(rid, (s, now_ns));
                        self.shed_if_full(now_ns, out);
                    }
                }
            }
            HopRecord::Conn(c) if c.kind == ConnEventKind::Refused => {
                self.refused.push_back((c, now_ns));
                if self.refused.len() > self.limits.max_pending {
                    self.refused.pop_front();
                    self.stats.shed += 1;
                }
                if self.waiting_5xx == 0 {
                    return;
                }
                // An edge 502/504 that came first and waits for an exchange that will not come.
                let explained: Vec<RequestId> = self
                    .edges
                    .records()
                    .filter(|e| {
                        matches!(e.status, 502 | 504)
                            && e.request_id
                                .as_deref()
                                .is_some_and(|rid| !self.hops.contains_key(rid))
                            && self.refused_position(e).is_some()
                    })
                    .filter_map(|e| e.request_id.clone())
                    .collect();
                for rid in explained {
                    if let Some((seen_ns, e)) = self.edges.remove(&rid) {
                        match self.refused_for(&e) {
                            Some(c) => {
                                self.edge_left(&e);
                                out.push(refused_join(e, c));
                            }
                            None => {
                                // Back as it was (its reminder is still queued).
                                let hash = self.edges.hash(&rid);
                                self.edges.insert(hash, seen_ns, e);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Emits what waited longer than the window, with the reason.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<JoinedRequest>) {
        let cutoff = now_ns.saturating_sub(self.window_ns);
        self.expire_before(cutoff, false, out);
        // Refused connects are only needed for the edge lines that may still come.
        let keep_from = cutoff.saturating_sub(self.window_ns);
        while self.refused.front().is_some_and(|(_, s)| *s < keep_from) {
            self.refused.pop_front();
        }
    }

    /// Emits what has waited since before `cutoff`: from the due queues, oldest first, so the
    /// work is proportional to what is emitted (plus reminders of records already gone).
    /// `all`: upgraded exchanges still waiting for their session go too (shedding).
    fn expire_before(&mut self, cutoff: u64, all: bool, out: &mut Vec<JoinedRequest>) {
        while let Some(hash) = self.edge_due.pop_before(cutoff) {
            // One lookup: a newer reminder exists for a record that waits since later.
            let Some(e) = self.edges.remove_due(hash, cutoff) else {
                continue;
            };
            self.edge_left(&e);
            let h = e
                .request_id
                .as_deref()
                .and_then(|rid| self.hops.remove(rid));
            out.push(self.edge_unmatched_or_partial(e, h));
        }
        let mut again = Vec::new();
        self.hops.settle_before(cutoff);
        self.remind_moved();
        while let Some(rid) = due::pop_either_before(&mut self.hop_aged, &mut self.hop_due, cutoff)
        {
            let Some(h) = self.hops.get(&rid) else {
                continue;
            };
            if h.seen_ns >= cutoff {
                continue;
            }
            if !h.complete() && !all {
                // An upgrade whose session goes on: looked at again a window later.
                again.push(rid);
                continue;
            }
            if let Some(h) = self.hops.remove(&rid) {
                let reason = if h.complete() {
                    "no edge log line with this request id"
                } else {
                    "websocket still open, no edge log line yet; given up early (too many waiting)"
                };
                out.push(joined(None, Some(h), Matched::HopOnly, Some(reason.into())));
            }
        }
        let recheck = cutoff.saturating_add(self.window_ns);
        for rid in again {
            self.hop_due.push(recheck, rid, &self.hops);
        }
        while self
            .edges_without_id
            .front()
            .is_some_and(|(_, s)| *s < cutoff)
        {
            if let Some((e, _)) = self.edges_without_id.pop_front() {
                out.push(self.edge_unmatched_or_partial(e, None));
            }
        }
        while self
            .hops_without_id
            .front()
            .is_some_and(|h| h.seen_ns < cutoff)
        {
            if let Some(h) = self.hops_without_id.pop_front() {
                out.push(joined(
                    None,
                    Some(h),
                    Matched::HopOnly,
                    Some("no request id and no edge line matched by time, method and path".into()),
                ));
            }
        }
        while let Some(rid) = self.orphan_due.pop_before(cutoff) {
            if self.orphan_ws.get(&rid).is_some_and(|(_, s)| *s < cutoff) {
                self.orphan_ws.remove(&rid);
            }
        }
    }

    /// The input ended: everything still waiting is emitted.
    pub fn finish(&mut self, out: &mut Vec<JoinedRequest>) {
        // Everything that waits comes out: room for it at once, not by doublings that move
        // what is already out.
        out.reserve(self.pending());
        self.expire(u64::MAX, out);
        // Upgraded exchanges whose session never ended.
        for h in self.hops.take_all() {
            out.push(joined(
                None,
                Some(h),
                Matched::HopOnly,
                Some("websocket still open, no edge log line yet".into()),
            ));
        }
    }

    fn edge_unmatched_or_partial(
        &mut self,
        e: Box<EdgeRecord>,
        h: Option<HopEntry>,
    ) -> JoinedRequest {
        if let Some(h) = h {
            // The exchange came but its WebSocket session did not.
            return joined(
                Some(e),
                Some(h),
                Matched::Exact,
                Some("websocket session end not seen on the hop".into()),
            );
        }
        if matches!(e.status, 502 | 504) {
            if let Some(c) = self.refused_for(&e) {
                return refused_join(e, c);
            }
        }
        let reason = if e.request_id.is_some() {
            "no exchange on the hop with this request id (not forwarded upstream, or the upstream was not watched)"
        } else {
            "no request id and no hop exchange matched by time, method and path"
        };
        joined(Some(e), None, Matched::EdgeOnly, Some(reason.into()))
    }

    /// Where the refused connect to the edge record's upstream in its time span is.
    fn refused_position(&self, e: &EdgeRecord) -> Option<usize> {
        let start = e
            .start_ts_ns()
            .unwrap_or(e.end_ts_ns)
            .saturating_sub(SLACK_NS);
        let end = e.end_ts_ns + SLACK_NS;
        self.refused.iter().position(|(c, _)| {
            (start..=end).contains(&c.ts_ns)
                && e.upstream_addr
                    .as_deref()
                    .is_none_or(|u| u.contains(&c.conn.server.to_string()))
        })
    }

    /// Finds (and takes) a refused connect to the edge record's upstream in its time span.
    fn refused_for(&mut self, e: &EdgeRecord) -> Option<ConnEvent> {
        let i = self.refused_position(e)?;
        self.refused.remove(i).map(|(c, _)| c)
    }
}

/// A line whose log says the proxy used no upstream, out at once: no exchange can be its.
fn served_by_the_proxy(e: Box<EdgeRecord>) -> JoinedRequest {
    joined(
        Some(e),
        None,
        Matched::EdgeOnly,
        Some("the proxy answered it itself (its log names no upstream)".into()),
    )
}

/// Whether an edge record without request id (or a hop exchange without one) is plausibly the
/// same request.
fn infers(e: &EdgeRecord, x: &HttpExchange) -> bool {
    let same_method = e.method.as_deref() == Some(x.method.as_str());
    let same_path = e.path.as_deref() == Some(x.path.as_str());
    let same_upstream = e
        .upstream_addr
        .as_deref()
        .is_none_or(|u| u.contains(&x.conn.server.to_string()));
    let start = e
        .start_ts_ns()
        .unwrap_or(e.end_ts_ns)
        .saturating_sub(SLACK_NS);
    let in_span = (start..=e.end_ts_ns + SLACK_NS).contains(&x.request_ts_ns);
    same_method && same_path && same_upstream && in_span
}

fn joined(
    e: Option<Box<EdgeRecord>>,
    h: Option<HopEntry>,
    matched: Matched,
    reason: Option<Cow<'static, str>>,
) -> JoinedRequest {
    let mut j = joined_without_id(e, h, matched, reason);
    j.request_id = j
        .edge
        .as_ref()
        .and_then(|e| e.request_id.clone())
        .or_else(|| j.hop.as_ref().and_then(|x| x.request_id.clone()));
    j
}

/// [`joined`] with `request_id` left for the caller to set.
fn joined_without_id(
    e: Option<Box<EdgeRecord>>,
    h: Option<HopEntry>,
    matched: Matched,
    reason: Option<Cow<'static, str>>,
) -> JoinedRequest {
    let (hop, websocket) = match h {
        Some(h) => (Some(h.exchange), h.ws),
        None => (None, None),
    };
    JoinedRequest {
        request_id: None,
        matched,
        reason,
        edge: e,
        hop,
        websocket,
        refused: None,
    }
}

#[cfg(test)]
mod tests;
