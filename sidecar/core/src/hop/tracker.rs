//! The stream tracker: TCP segments of the hop in, [`HopRecord`]s out. Pure.
//!
//! A connection is keyed by (client, server) where the server is the end on an upstream port.
//! Each direction has a [`Reassembler`] and a protocol parser: HTTP until a `101`, WebSocket
//! after. Requests and responses pair up in order (HTTP/1.1 keep-alive). Retransmissions are
//! delivered once; out-of-order segments are reordered; bytes never seen become gaps, which
//! the parsers either skip (inside a body or payload of known length) or report as a
//! [`Loss`] record, after which HTTP resynchronises on the next message start.
use std::{collections::VecDeque, net::SocketAddr};

// Fx, not SipHash: looked up for every packet, and the keys are the hop's own 4-tuples (the
// proxy's connections to the upstream ports, local ports chosen by the kernel). A crafted
// capture given to `replay` could at worst slow that replay down.
use rustc_hash::FxHashMap as HashMap;

use super::{
    http::{Expectation, HttpEvent, HttpStream, RequestHead, Role},
    reasm::{Chunk, Reassembler},
    ws::{opcode, WsEvent, WsStream},
    CloseFrame, ConnEvent, ConnEventKind, ConnId, ExchangeOutcome, FrameCounts, HopRecord,
    HttpExchange, Loss, Segment, SessionEnd, Side, WsSession,
};

/// Counters of the tracker's own work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    pub segments: u64,
    /// Segments on no upstream port, or pure ACKs of unknown connections.
    pub ignored: u64,
    pub connections: u64,
    pub records: u64,
    pub gap_bytes: u64,
    pub duplicate_bytes: u64,
    /// Connections reported as they stood and forgotten to stay within
    /// [`TrackerLimits::max_connections`].
    pub evicted_connections: u64,
    /// Requests given up as incomplete to stay within
    /// [`TrackerLimits::max_pending_exchanges`].
    pub dropped_exchanges: u64,
    /// Close frames counted but not kept, beyond [`TrackerLimits::max_close_frames`].
    pub dropped_close_frames: u64,
}

/// Count limits on what the tracker keeps: strangers choose how many connections, pipelined
/// requests and close frames there are. At each limit something is given up and counted in
/// [`TrackerStats`]; nothing grows without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerLimits {
    /// Connections followed at once. Beyond it the least recently active eighth is reported
    /// as it stands and forgotten (amortised: one scan per eviction round).
    pub max_connections: usize,
    /// Requests on one connection still waiting for their response. Beyond it the oldest is
    /// reported `incomplete` (a proxy does not pipeline this deep; an attacker might).
    pub max_pending_exchanges: usize,
    /// Close frames kept per WebSocket session (the first ones); the rest are only counted.
    pub max_close_frames: usize,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            max_pending_exchanges: 256,
            max_close_frames: 8,
        }
    }
}

/// How far the kernel can skip a direction's payload, for its follower (live only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowHint {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Where the next frame header starts ([`FollowMode::WsFrames`]) or the body ends
    /// ([`FollowMode::Body`]).
    pub next_seq: u32,
    pub mode: FollowMode,
}

/// What the kernel follows in a direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowMode {
    /// WebSocket frames, from header to header (it sends frame headers only).
    WsFrames,
    /// An HTTP body or chunk of known length, to its end (segments wholly inside cost no
    /// record; their length comes with the next one).
    Body,
}

/// Bodies shorter than this are not handed to the kernel: arming costs a map update (a
/// system call), which a body of a few segments does not repay.
pub const BODY_FOLLOW_MIN: u64 = 32 * 1024;

struct WsTrack {
    request_id: Option<String>,
    path: String,
    origin: Option<String>,
    upgraded_ts: u64,
    client: FrameCounts,
    server: FrameCounts,
    closes: Vec<CloseFrame>,
    last_frame_ts: u64,
    longest_idle: u64,
    lost_sync: bool,
}

struct Conn {
    id: ConnId,
    syn_ts: Option<u64>,
    synack_seen: bool,
    c2s: Direction,
    s2c: Direction,
    exchanges: VecDeque<PendingExchange>,
    next_index: u32,
    request_start_ts: Option<u64>,
    ws: Option<WsTrack>,
    first_fin: Option<Side>,
    fin_client: bool,
    fin_server: bool,
    reset_from: Option<Side>,
    /// The parsers' events of one chunk (kept from chunk to chunk: no allocation each).
    http_events: Vec<HttpEvent>,
    ws_events: Vec<WsEvent>,
    limits: TrackerLimits,
    /// Pairing given up (too many requests waited): requests and responses only counted.
    unpaired: bool,
    /// Requests and close frames given up at the limits (added to the tracker's stats).
    dropped_exchanges: u64,
    dropped_close_frames: u64,
}

/// Why a connection's records are being finished.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Closed,
    EndOfInput,
}

impl Conn {
    fn new(id: ConnId, limits: TrackerLimits) -> Self {
        Self {
            id,
            limits,
            unpaired: false,
            dropped_exchanges: 0,
            dropped_close_frames: 0,
            syn_ts: None,
            synack_seen: false,
            c2s: Direction {
                reasm: Reassembler::default(),
                proto: Proto::Http(HttpStream::new(Role::Request)),
                kernel_follows: false,
                body_end: None,
            },
            s2c: Direction {
                reasm: Reassembler::default(),
                proto: Proto::Http(HttpStream::new(Role::Response)),
                kernel_follows: false,
                body_end: None,
            },
            exchanges: VecDeque::new(),
            next_index: 0,
            request_start_ts: None,
            ws: None,
            first_fin: None,
            fin_client: false,
            fin_server: false,
            reset_from: None,
            http_events: Vec::new(),
            ws_events: Vec::new(),
        }
    }

    fn dir(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Client => &mut self.c2s,
            Side::Server => &mut self.s2c,
        }
    }

    fn data(&mut self, side: Side, seg: &Segment<'_>, out: &mut Vec<HopRecord>) {
        let mut reasm = std::mem::take(&mut self.dir(side).reasm);
        reasm.push(seg.seq, seg.payload_len, seg.payload, &mut |chunk| {
            self.chunk(side, chunk, seg.ts_ns, out);
        });
        self.dir(side).reasm = reasm;
    }

    /// `side` acknowledged the other direction up to `seg.ack`.
    fn acked(&mut self, side: Side, seg: &Segment<'_>, out: &mut Vec<HopRecord>) {
        let other = match side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        let mut reasm = std::mem::take(&mut self.dir(other).reasm);
        reasm.acked(seg.ack, &mut |chunk| {
            self.chunk(other, chunk, seg.ts_ns, out)
        });
        self.dir(other).reasm = reasm;
    }

    fn chunk(&mut self, side: Side, chunk: Chunk<'_>, ts: u64, out: &mut Vec<HopRecord>) {
        let len = match &chunk {
            Chunk::Data(d) => d.len() as u64,
            Chunk::Gap(n) => *n,
        };
        // A response's bytes count as they come (so one cut short still has a size); a
        // message's end sets the exact length of requests and responses alike.
        if side == Side::Server {
            if let Some(x) = self.exchanges.front_mut() {
                x.response_bytes += len;
            }
        }
        // Taken out for the chunk and put back after it (an upgrade's recursive call below
        // starts from empty vectors).
        let mut http_events = std::mem::take(&mut self.http_events);
        let mut ws_events = std::mem::take(&mut self.ws_events);
        match &mut self.dir(side).proto {
            Proto::Http(parser) => {
                match chunk {
                    Chunk::Data(d) => parser.feed(d, &mut http_events),
                    Chunk::Gap(n) => parser.gap(n, &mut http_events),
                }
                // In place, not drained: a moved event costs a copy of its type's full size
                // (request heads, 200 bytes, stay in the parser for that reason too).
                for ev in &mut http_events {
                    if let HttpEvent::Upgraded { offset } = *ev {
                        self.dir(side).proto = Proto::Ws(WsStream::default());
                        if let Chunk::Data(d) = chunk {
                            if let Some(rest) = d.get(offset..).filter(|r| !r.is_empty()) {
                                self.chunk(side, Chunk::Data(rest), ts, out);
                            }
                        }
                        continue;
                    }
                    self.http_event(side, ev, ts, out);
                }
                http_events.clear();
            }
            Proto::Ws(parser) => {
                match chunk {
                    Chunk::Data(d) => parser.feed(d, &mut ws_events),
                    Chunk::Gap(n) => parser.gap(n, &mut ws_events),
                }
                for ev in ws_events.drain(..) {
                    self.ws_event(side, ev, ts, out);
                }
            }
        }
        self.http_events = http_events;
        self.ws_events = ws_events;
    }

    /// A request head was parsed: queued to pair with its response.
    fn request(&mut self, ts: u64, out: &mut Vec<HopRecord>) {
        let Proto::Http(parser) = &mut self.c2s.proto else {
            return;
        };
        let Some(head) = parser.take_request() else {
            return;
        };
        if let Proto::Http(resp) = &mut self.s2c.proto {
            resp.expect(Expectation {
                head_request: head.method == "HEAD",
                connect_request: head.method == "CONNECT",
            });
        }
        if self.unpaired {
            self.dropped_exchanges += 1;
            return;
        }
        if self.exchanges.len() >= self.limits.max_pending_exchanges {
            // Deeper than any proxy pipelines: pairing responses with requests is
            // given up for the rest of this connection (never guessed wrong), the
            // waiting requests are reported incomplete, and it is said.
            self.unpaired = true;
            self.dropped_exchanges += 1 + self.exchanges.len() as u64;
            out.push(HopRecord::Loss(Loss {
                conn: self.id.clone(),
                side: Side::Client,
                ts_ns: ts,
                bytes: 0,
                effect: format!(
                    "more than {} requests waiting for responses: the rest of this connection is not paired",
                    self.limits.max_pending_exchanges
                ),
            }));
            while let Some(x) = self.exchanges.pop_front() {
                let record = exchange_record(&self.id, x, ts, ExchangeOutcome::Incomplete);
                out.push(HopRecord::Http(record));
            }
            return;
        }
        self.exchanges.push_back(PendingExchange {
            index: self.next_index,
            request_ts: self.request_start_ts.take().unwrap_or(ts),
            head,
            response_start_ts: None,
            status: None,
            request_bytes: 0,
            response_bytes: 0,
            error_code: None,
        });
        self.next_index += 1;
    }

    /// Takes what it keeps out of `ev` (an error code's text), leaving the rest.
    fn http_event(&mut self, side: Side, ev: &mut HttpEvent, ts: u64, out: &mut Vec<HopRecord>) {
        match (side, ev) {
            (Side::Client, HttpEvent::HeadStart) => self.request_start_ts = Some(ts),
            (Side::Client, HttpEvent::Request) => self.request(ts, out),
            (Side::Server, HttpEvent::HeadStart) => {
                if let Some(x) = self.exchanges.front_mut() {
                    x.response_start_ts.get_or_insert(ts);
                }
            }
            (Side::Server, HttpEvent::Response(head)) => {
                if (100..200).contains(&head.status) && head.status != 101 {
                    return;
                }
                let Some(x) = self.exchanges.front_mut() else {
                    return;
                };
                x.status = Some(head.status);
                if head.status == 101 {
                    if let Some(x) = self.exchanges.pop_front() {
                        self.ws = Some(WsTrack {
                            request_id: x.head.request_id.as_deref().map(str::to_owned),
                            path: x.head.path.to_string(),
                            origin: x.head.origin.as_deref().map(str::to_owned),
                            upgraded_ts: ts,
                            client: FrameCounts::default(),
                            server: FrameCounts::default(),
                            closes: Vec::new(),
                            last_frame_ts: ts,
                            longest_idle: 0,
                            lost_sync: false,
                        });
                        let record = exchange_record(&self.id, x, ts, ExchangeOutcome::Upgraded);
                        out.push(HopRecord::Http(record));
                    }
                    // The client speaks WebSocket from now on too.
                    self.c2s.proto = Proto::Ws(WsStream::default());
                }
            }
            (Side::Server, HttpEvent::ErrorCode(code)) => {
                if let Some(x) = self.exchanges.front_mut() {
                    x.error_code = Some(std::mem::take(code));
                }
            }
            (Side::Client, HttpEvent::MessageEnd { bytes }) => {
                if let Some(x) = self.exchanges.back_mut() {
                    x.request_bytes = *bytes;
                }
            }
            (Side::Server, HttpEvent::MessageEnd { bytes })
                if self.exchanges.front().is_some_and(|x| x.status.is_some()) =>
            {
                if let Some(mut x) = self.exchanges.pop_front() {
                    x.response_bytes = *bytes;
                    let record = exchange_record(&self.id, x, ts, ExchangeOutcome::Complete);
                    out.push(HopRecord::Http(record));
                }
            }
            (_, HttpEvent::Lost { bytes, why }) => {
                out.push(HopRecord::Loss(Loss {
                    conn: self.id.clone(),
                    side,
                    ts_ns: ts,
                    bytes: *bytes,
                    effect: format!("http sync lost: {why}"),
                }));
                if side == Side::Server {
                    // Responses can no longer be paired with requests.
                    while let Some(x) = self.exchanges.pop_front() {
                        let record = exchange_record(&self.id, x, ts, ExchangeOutcome::Incomplete);
                        out.push(HopRecord::Http(record));
                    }
                }
            }
            _ => {}
        }
    }

    fn ws_event(&mut self, side: Side, ev: WsEvent, ts: u64, out: &mut Vec<HopRecord>) {
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        match ev {
            WsEvent::Frame(f) => {
                let counts = match side {
                    Side::Client => &mut ws.client,
                    Side::Server => &mut ws.server,
                };
                match f.opcode {
                    opcode::TEXT => counts.text += 1,
                    opcode::BINARY => counts.binary += 1,
                    opcode::CONTINUATION => counts.continuation += 1,
                    opcode::PING => counts.ping += 1,
                    opcode::PONG => counts.pong += 1,
                    opcode::CLOSE => counts.close += 1,
                    _ => {}
                }
                counts.payload_bytes += f.payload_len;
                ws.longest_idle = ws.longest_idle.max(ts.saturating_sub(ws.last_frame_ts));
                ws.last_frame_ts = ts;
            }
            WsEvent::Close { code, reason } => {
                if ws.closes.len() < self.limits.max_close_frames {
                    ws.closes.push(CloseFrame {
                        from: side,
                        ts_ns: ts,
                        code,
                        reason,
                    });
                } else {
                    self.dropped_close_frames += 1;
                }
            }
            WsEvent::Lost { bytes, why } => {
                ws.lost_sync = true;
                out.push(HopRecord::Loss(Loss {
                    conn: self.id.clone(),
                    side,
                    ts_ns: ts,
                    bytes,
                    effect: format!("websocket frame sync lost: {why}"),
                }));
            }
        }
    }

    /// Hints for directions the kernel does not follow but could from now on: WebSocket
    /// directions whose next header position is known, and HTTP bodies (or chunks) with at
    /// least [`BODY_FOLLOW_MIN`] bytes still to come.
    fn hints(&mut self, out: &mut Vec<FollowHint>) {
        let (client, server) = (self.id.client, self.id.server);
        for (dir, src, dst) in [
            (&mut self.c2s, client, server),
            (&mut self.s2c, server, client),
        ] {
            if dir.kernel_follows {
                continue;
            }
            let (ahead, mode) = match &dir.proto {
                Proto::Ws(ws) => match ws.bytes_to_next_header() {
                    Some(ahead) => (ahead, FollowMode::WsFrames),
                    None => continue,
                },
                Proto::Http(http) => match http.opaque_ahead() {
                    Some(ahead) if ahead >= BODY_FOLLOW_MIN => (ahead, FollowMode::Body),
                    _ => continue,
                },
            };
            let Some(next) = dir.reasm.next_seq() else {
                continue;
            };
            let Ok(ahead) = u32::try_from(ahead) else {
                continue;
            };
            out.push(FollowHint {
                src,
                dst,
                next_seq: next.wrapping_add(ahead),
                mode,
            });
            dir.kernel_follows = true;
            dir.body_end = (mode == FollowMode::Body).then_some(next.wrapping_add(ahead));
        }
    }

    fn fin(&mut self, side: Side) {
        self.first_fin.get_or_insert(side);
        match side {
            Side::Client => self.fin_client = true,
            Side::Server => self.fin_server = true,
        }
    }

    /// Emits what is still open on this connection.
    fn finish(mut self, ts: u64, ending: Ending, out: &mut Vec<HopRecord>) {
        for side in [Side::Client, Side::Server] {
            let mut reasm = std::mem::take(&mut self.dir(side).reasm);
            reasm.finish(&mut |chunk| self.chunk(side, chunk, ts, out));
        }
        if let Proto::Http(parser) = &mut self.s2c.proto {
            let mut events = Vec::new();
            parser.close(&mut events);
            for ev in &mut events {
                self.http_event(Side::Server, ev, ts, out);
            }
        }
        while let Some(x) = self.exchanges.pop_front() {
            let outcome = match (ending, x.status) {
                (Ending::Closed, None) => ExchangeOutcome::NoResponse,
                _ => ExchangeOutcome::Incomplete,
            };
            out.push(HopRecord::Http(exchange_record(&self.id, x, ts, outcome)));
        }
        if let Some(ws) = self.ws.take() {
            let end = if let Some(from) = self.reset_from {
                SessionEnd::Reset { from }
            } else if let Some(first) = ws.closes.first() {
                if self.first_fin.is_some() || ending == Ending::Closed {
                    SessionEnd::CloseHandshake {
                        first_close_from: first.from,
                    }
                } else {
                    SessionEnd::Open
                }
            } else if let Some(from) = self.first_fin {
                SessionEnd::FinWithoutClose { from }
            } else {
                SessionEnd::Open
            };
            out.push(HopRecord::Websocket(WsSession {
                conn: self.id.clone(),
                request_id: ws.request_id,
                path: ws.path,
                origin: ws.origin,
                upgraded_ts_ns: ws.upgraded_ts,
                end_ts_ns: ts,
                duration_ns: ts.saturating_sub(ws.upgraded_ts),
                client_frames: ws.client,
                server_frames: ws.server,
                closes: ws.closes,
                end,
                longest_idle_ns: ws.longest_idle.max(ts.saturating_sub(ws.last_frame_ts)),
                idle_before_end_ns: ts.saturating_sub(ws.last_frame_ts),
                lost_sync: ws.lost_sync,
            }));
        }
    }
}

/// Follows every connection to or from the upstream ports.
pub struct Tracker {
    ports: Vec<u16>,
    /// Boxed: a connection's state is ~950 bytes, and the map's buckets held it inline (a
    /// table of 16,384 buckets for 10,000 connections, each bucket a connection's size, every
    /// growth moving them all).
    /// Beside each box, the time of its last segment (nowhere else): eviction
    /// and expiry scan the buckets in order and read no box (a flood's eviction round read
    /// every box, cold, to find the least recently active).
    conns: HashMap<ConnKey, Held>,
    limits: TrackerLimits,
    /// Produce [`FollowHint`]s (live, where a kernel follower exists).
    hints_enabled: bool,
    hints: Vec<FollowHint>,
    pub stats: TrackerStats,
}

/// A connection by its client and server addresses.
type ConnKey = (SocketAddr, SocketAddr);
/// A followed connection in its box, and the time of its last segment.
type Held = (u64, Box<Conn>);

impl Tracker {
    /// Tracks connections whose server end uses one of `upstream_ports`.
    pub fn new(upstream_ports: &[u16]) -> Self {
        Self {
            ports: upstream_ports.to_vec(),
            conns: HashMap::default(),
            limits: TrackerLimits::default(),
            hints_enabled: false,
            hints: Vec::new(),
            stats: TrackerStats::default(),
        }
    }

    /// Other count limits than the defaults.
    pub fn with_limits(mut self, limits: TrackerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Also produce [`FollowHint`]s for the kernel's follower (take them with
    /// [`Tracker::take_hints`]).
    pub fn with_kernel_hints(mut self) -> Self {
        self.hints_enabled = true;
        self
    }

    /// Hints produced since the last call.
    pub fn take_hints(&mut self) -> Vec<FollowHint> {
        std::mem::take(&mut self.hints)
    }

    /// Processes one segment; finished records are appended to `out`.
    pub fn segment(&mut self, seg: &Segment<'_>, out: &mut Vec<HopRecord>) {
        self.stats.segments += 1;
        let before = out.len();
        self.segment_inner(seg, out);
        self.stats.records += (out.len() - before) as u64;
    }

    /// Long because it is the per-segment state machine of a connection (open, data in each
    /// direction, close, reset), kept in one place so its transitions read in order.
    fn segment_inner(&mut self, seg: &Segment<'_>, out: &mut Vec<HopRecord>) {
        let (client, server, from) = if self.ports.contains(&seg.dst.port()) {
            (seg.src, seg.dst, Side::Client)
        } else if self.ports.contains(&seg.src.port()) {
            (seg.dst, seg.src, Side::Server)
        } else {
            self.stats.ignored += 1;
            return;
        };
        let key = (client, server);
        let ts = seg.ts_ns;
        let new_id = || ConnId {
            client,
            server,
            first_seen_ns: ts,
        };
        if seg.flags.syn && !seg.flags.ack && from == Side::Client {
            if let Some((_, old)) = self.conns.get(&key) {
                if old.c2s.reasm.next_seq() == Some(seg.seq.wrapping_add(1)) {
                    return; // a retransmitted SYN
                }
            }
            if let Some((_, old)) = self.conns.remove(&key) {
                self.account(&old);
                old.finish(ts, Ending::EndOfInput, out);
            }
            self.make_room(out);
            let mut conn = Box::new(Conn::new(new_id(), self.limits));
            conn.syn_ts = Some(ts);
            conn.c2s.reasm.start_at(seg.seq.wrapping_add(1));
            self.conns.insert(key, (ts, conn));
            self.stats.connections += 1;
            return;
        }
        if seg.flags.rst {
            let Some((_, mut conn)) = self.conns.remove(&key) else {
                out.push(HopRecord::Conn(ConnEvent {
                    conn: new_id(),
                    ts_ns: ts,
                    kind: ConnEventKind::Reset { from },
                    process: None,
                }));
                return;
            };
            if from == Side::Server && conn.syn_ts.is_some() && !conn.synack_seen {
                out.push(HopRecord::Conn(ConnEvent {
                    conn: conn.id.clone(),
                    ts_ns: ts,
                    kind: ConnEventKind::Refused,
                    process: None,
                }));
                self.account(&conn);
                return;
            }
            if seg.payload_len > 0 {
                conn.data(from, seg, out);
            }
            out.push(HopRecord::Conn(ConnEvent {
                conn: conn.id.clone(),
                ts_ns: ts,
                kind: ConnEventKind::Reset { from },
                process: None,
            }));
            conn.reset_from = Some(from);
            self.account(&conn);
            conn.finish(ts, Ending::Closed, out);
            return;
        }
        let conn = match self.conns.get_mut(&key) {
            // One lookup for a known connection (nearly every segment).
            Some((seen, conn)) => {
                *seen = ts;
                conn
            }
            None if seg.payload_len == 0 => {
                // A pure ACK or FIN of a connection we never saw (or already finished).
                self.stats.ignored += 1;
                return;
            }
            None => {
                self.make_room(out);
                self.stats.connections += 1;
                let conn = Box::new(Conn::new(new_id(), self.limits));
                &mut self.conns.entry(key).insert_entry((ts, conn)).into_mut().1
            }
        };
        if seg.flags.syn && seg.flags.ack && from == Side::Server {
            conn.s2c.reasm.start_at(seg.seq.wrapping_add(1));
            if !conn.synack_seen {
                conn.synack_seen = true;
                if let Some(syn) = conn.syn_ts {
                    out.push(HopRecord::Conn(ConnEvent {
                        conn: conn.id.clone(),
                        ts_ns: ts,
                        kind: ConnEventKind::Connected {
                            latency_ns: ts.saturating_sub(syn),
                        },
                        process: None,
                    }));
                }
            }
            return;
        }
        if seg.flags.ack {
            conn.acked(from, seg, out);
        }
        if seg.payload_len > 0 {
            if !seg.followed {
                conn.dir(from).unfollowed(seg);
            }
            conn.data(from, seg, out);
            if self.hints_enabled {
                conn.hints(&mut self.hints);
            }
        }
        if seg.flags.fin {
            conn.dir(from)
                .reasm
                .fin_at(seg.seq.wrapping_add(seg.payload_len));
            conn.fin(from);
            if conn.fin_client && conn.fin_server {
                if let Some((_, conn)) = self.conns.remove(&key) {
                    self.account(&conn);
                    conn.finish(ts, Ending::Closed, out);
                }
            }
        }
    }

    fn account(&mut self, conn: &Conn) {
        self.stats.dropped_exchanges += conn.dropped_exchanges;
        self.stats.dropped_close_frames += conn.dropped_close_frames;
        for d in [&conn.c2s, &conn.s2c] {
            self.stats.gap_bytes += d.reasm.stats.gap_bytes;
            self.stats.duplicate_bytes += d.reasm.stats.duplicate_bytes;
        }
    }
}

mod direction;
mod ending;
#[cfg(test)]
mod follow_tests;
mod record;
use direction::{Direction, Proto};
use record::{exchange_record, PendingExchange};

#[cfg(test)]
pub(crate) mod tests;
