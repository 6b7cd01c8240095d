use super::*;
use crate::hop::{ws::encode_frame, TcpFlags};

/// Builds a TCP conversation with correct sequence numbers.
pub(crate) struct Wire {
    pub client: SocketAddr,
    pub server: SocketAddr,
    cseq: u32,
    sseq: u32,
    pub ts: u64,
    pub segs: Vec<(u64, Side, u32, u32, u8, Vec<u8>)>,
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;

impl Wire {
    pub(crate) fn new(client_port: u16) -> Self {
        Self {
            client: SocketAddr::from(([127, 0, 0, 1], client_port)),
            server: SocketAddr::from(([127, 0, 0, 1], 18789)),
            cseq: 1000,
            sseq: u32::MAX - 10, // exercises wraparound
            ts: 1_000_000_000,
            segs: Vec::new(),
        }
    }
    pub(crate) fn tick(&mut self, ns: u64) -> &mut Self {
        self.ts += ns;
        self
    }
    fn seq_of(&mut self, side: Side) -> &mut u32 {
        match side {
            Side::Client => &mut self.cseq,
            Side::Server => &mut self.sseq,
        }
    }
    pub(crate) fn raw(&mut self, side: Side, flags: u8, data: &[u8]) -> &mut Self {
        let seq = *self.seq_of(side);
        let ack = match side {
            Side::Client => self.sseq,
            Side::Server => self.cseq,
        };
        self.segs
            .push((self.ts, side, seq, ack, flags, data.to_vec()));
        let advance = data.len() as u32 + u32::from(flags & (SYN | FIN) != 0);
        *self.seq_of(side) = seq.wrapping_add(advance);
        self.ts += 10_000;
        self
    }
    pub(crate) fn handshake(&mut self) -> &mut Self {
        self.raw(Side::Client, SYN, b"")
            .raw(Side::Server, SYN | ACK, b"")
            .raw(Side::Client, ACK, b"")
    }
    pub(crate) fn send(&mut self, side: Side, data: &[u8]) -> &mut Self {
        self.raw(side, ACK | PSH, data)
    }
    pub(crate) fn fin(&mut self, side: Side) -> &mut Self {
        self.raw(side, ACK | FIN, b"")
    }
    pub(crate) fn rst(&mut self, side: Side) -> &mut Self {
        self.raw(side, RST | ACK, b"")
    }
    pub(crate) fn segment(&self, i: usize) -> Segment<'_> {
        let (ts, side, seq, ack, flags, data) = &self.segs[i];
        let (src, dst) = match side {
            Side::Client => (self.client, self.server),
            Side::Server => (self.server, self.client),
        };
        Segment {
            ts_ns: *ts,
            src,
            dst,
            seq: *seq,
            ack: if flags & ACK != 0 { *ack } else { 0 },
            flags: TcpFlags::from_byte(*flags),
            payload_len: data.len() as u32,
            payload: data,
            followed: false,
        }
    }
    /// Runs every segment through a tracker with `limits`; returns its records and stats.
    pub(crate) fn run_limited(&self, limits: TrackerLimits) -> (Vec<HopRecord>, TrackerStats) {
        let mut t = Tracker::new(&[18789]).with_limits(limits);
        let mut out = Vec::new();
        for i in 0..self.segs.len() {
            t.segment(&self.segment(i), &mut out);
        }
        t.finish(&mut out);
        (out, t.stats)
    }

    pub(crate) fn run_order(&self, order: &[usize]) -> Vec<HopRecord> {
        let mut t = Tracker::new(&[18789]);
        let mut out = Vec::new();
        for &i in order {
            t.segment(&self.segment(i), &mut out);
        }
        t.finish(&mut out);
        out
    }
    pub(crate) fn run(&self) -> Vec<HopRecord> {
        self.run_order(&(0..self.segs.len()).collect::<Vec<_>>())
    }
}

pub(crate) const UPGRADE_REQ: &[u8] =
    b"GET /?token=x HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\
    Connection: upgrade\r\nOrigin: https://gw.example\r\nX-Request-ID: abc123\r\n\r\n";
pub(crate) const UPGRADE_RESP: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

pub(crate) fn sessions(out: &[HopRecord]) -> Vec<&WsSession> {
    out.iter()
        .filter_map(|r| match r {
            HopRecord::Websocket(s) => Some(s),
            _ => None,
        })
        .collect()
}

pub(crate) fn exchanges(out: &[HopRecord]) -> Vec<&HttpExchange> {
    out.iter()
        .filter_map(|r| match r {
            HopRecord::Http(x) => Some(x),
            _ => None,
        })
        .collect()
}

pub(crate) fn healthy_session() -> Wire {
    let mut w = Wire::new(40000);
    w.handshake()
        .send(Side::Client, UPGRADE_REQ)
        .tick(2_000_000)
        .send(Side::Server, UPGRADE_RESP)
        .send(
            Side::Server,
            &encode_frame(true, 1, None, br#"{"event":"connect.challenge"}"#),
        )
        .send(
            Side::Client,
            &encode_frame(true, 1, Some([1, 2, 3, 4]), br#"{"method":"connect"}"#),
        )
        .send(
            Side::Server,
            &encode_frame(true, 1, None, br#"{"ok":true}"#),
        )
        .tick(5_000_000_000)
        .send(
            Side::Client,
            &encode_frame(true, 8, Some([5, 6, 7, 8]), &close_payload(1000, "bye")),
        )
        .send(
            Side::Server,
            &encode_frame(true, 8, None, &close_payload(1000, "")),
        )
        .fin(Side::Server)
        .fin(Side::Client);
    w
}

#[test]
fn healthy_upgrade_messages_and_clean_close() {
    let out = healthy_session().run();
    assert!(
        matches!(
            out[0],
            HopRecord::Conn(ConnEvent {
                kind: ConnEventKind::Connected { latency_ns: 10_000 },
                ..
            })
        ),
        "{out:#?}"
    );
    let x = exchanges(&out);
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].status, Some(101));
    assert_eq!(x[0].outcome, ExchangeOutcome::Upgraded);
    assert_eq!(x[0].request_id.as_deref(), Some("abc123"));
    assert_eq!(x[0].path, "/?token=REDACTED");
    assert!(x[0].upgrade_websocket && x[0].connection_upgrade);
    assert_eq!(x[0].ttfb_ns, Some(2_010_000));
    let s = sessions(&out);
    assert_eq!(s.len(), 1);
    let s = s[0];
    assert_eq!((s.client_frames.text, s.client_frames.close), (1, 1));
    assert_eq!((s.server_frames.text, s.server_frames.close), (2, 1));
    assert_eq!(s.closes[0].from, Side::Client);
    assert_eq!(s.closes[0].code, Some(1000));
    assert_eq!(s.closes[0].reason, "bye");
    assert_eq!(
        s.end,
        SessionEnd::CloseHandshake {
            first_close_from: Side::Client
        }
    );
    assert!(s.longest_idle_ns >= 5_000_000_000);
    assert_eq!(s.request_id.as_deref(), Some("abc123"));
    assert!(!s.lost_sync);
}

#[test]
fn idle_timeout_fin_without_close_frame() {
    let mut w = Wire::new(40001);
    w.handshake()
        .send(Side::Client, UPGRADE_REQ)
        .send(Side::Server, UPGRADE_RESP)
        .send(Side::Server, &encode_frame(true, 1, None, b"{}"))
        .tick(60_000_000_000)
        .fin(Side::Client)
        .fin(Side::Server);
    let out = w.run();
    let s = sessions(&out);
    assert_eq!(s[0].end, SessionEnd::FinWithoutClose { from: Side::Client });
    assert!(s[0].idle_before_end_ns >= 60_000_000_000, "{:?}", s[0]);
    assert!(s[0].closes.is_empty());
}

#[test]
fn refused_connect() {
    let mut w = Wire::new(40002);
    w.raw(Side::Client, SYN, b"").rst(Side::Server);
    let out = w.run();
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(matches!(
        &out[0],
        HopRecord::Conn(ConnEvent {
            kind: ConnEventKind::Refused,
            ..
        })
    ));
}

#[test]
fn upstream_reset_mid_session() {
    let mut w = Wire::new(40003);
    w.handshake()
        .send(Side::Client, UPGRADE_REQ)
        .send(Side::Server, UPGRADE_RESP)
        .send(
            Side::Client,
            &encode_frame(true, 1, Some([1, 1, 1, 1]), b"hi"),
        )
        .rst(Side::Server);
    let out = w.run();
    assert!(out.iter().any(|r| matches!(
        r,
        HopRecord::Conn(ConnEvent {
            kind: ConnEventKind::Reset { from: Side::Server },
            ..
        })
    )));
    assert_eq!(
        sessions(&out)[0].end,
        SessionEnd::Reset { from: Side::Server }
    );
}

#[test]
fn keep_alive_requests_and_missing_upgrade_headers() {
    let mut w = Wire::new(40004);
    w.handshake()
        .send(
            Side::Client,
            b"GET /a HTTP/1.1\r\nHost: gw\r\nX-Request-ID: r1\r\n\r\n",
        )
        .tick(1_000_000)
        .send(
            Side::Server,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        )
        .send(
            Side::Client,
            b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        )
        .send(
            Side::Server,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        // The runbook's half-path: a WebSocket request that lost its Upgrade header.
        .send(
            Side::Client,
            b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .send(
            Side::Server,
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
        )
        .fin(Side::Server)
        .fin(Side::Client);
    let out = w.run();
    let x = exchanges(&out);
    assert_eq!(x.len(), 3, "{out:#?}");
    assert_eq!((x[0].index, x[1].index, x[2].index), (0, 1, 2));
    assert_eq!(x[0].request_id.as_deref(), Some("r1"));
    assert_eq!(x[0].ttfb_ns, Some(1_010_000));
    assert!(x.iter().all(|x| x.outcome == ExchangeOutcome::Complete));
    assert_eq!(x[1].method, "POST");
    assert_eq!(x[2].status, Some(426));
    assert!(!x[2].upgrade_websocket);
    assert!(sessions(&out).is_empty());
}

#[test]
fn retransmissions_and_reordering_change_nothing() {
    let w = healthy_session();
    let clean = w.run();
    let n = w.segs.len();
    // Every data segment twice.
    let doubled: Vec<usize> = (0..n).flat_map(|i| [i, i]).collect();
    assert_eq!(w.run_order(&doubled), clean);
    // Swap two data segments of the server (101 and the first frame).
    let mut swapped: Vec<usize> = (0..n).collect();
    swapped.swap(4, 5);
    assert_eq!(w.run_order(&swapped), clean);
}

#[test]
fn frame_header_split_across_segments() {
    let mut w = Wire::new(40005);
    let frame = encode_frame(true, 2, None, &[9u8; 300]);
    w.handshake()
        .send(Side::Client, UPGRADE_REQ)
        .send(Side::Server, UPGRADE_RESP)
        .send(Side::Server, &frame[..1])
        .send(Side::Server, &frame[1..3])
        .send(Side::Server, &frame[3..])
        .fin(Side::Server)
        .fin(Side::Client);
    let out = w.run();
    let s = sessions(&out);
    assert_eq!(s[0].server_frames.binary, 1);
    assert_eq!(s[0].server_frames.payload_bytes, 300);
}

#[test]
fn lost_segment_is_reported_and_http_resynchronises() {
    let mut w = Wire::new(40006);
    w.handshake()
        .send(Side::Client, b"GET /a HTTP/1.1\r\nHo")
        .send(Side::Client, b"st: gw\r\n\r\n")
        .send(Side::Client, b"GET /b HTTP/1.1\r\n\r\n")
        .send(
            Side::Server,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .fin(Side::Client)
        .fin(Side::Server);
    // Drop segment 4 (the middle of the first head).
    let order: Vec<usize> = (0..w.segs.len()).filter(|i| *i != 4).collect();
    let out = w.run_order(&order);
    assert!(
        out.iter()
            .any(|r| matches!(r, HopRecord::Loss(l) if l.side == Side::Client)),
        "{out:#?}"
    );
    let x = exchanges(&out);
    assert_eq!(x.len(), 1, "{out:#?}");
    assert_eq!(x[0].path, "/b");
    assert_eq!(x[0].status, Some(200));
}

#[test]
fn truncated_payloads_skip_bodies_by_length() {
    // Capture only the first 64 bytes of each segment: bodies are skipped, heads survive.
    let mut w = Wire::new(40007);
    let mut body = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 5000));
    w.handshake()
        .send(Side::Client, b"GET /big HTTP/1.1\r\n\r\n")
        .send(Side::Server, &body)
        .send(Side::Client, b"GET /next HTTP/1.1\r\n\r\n")
        .send(Side::Server, b"HTTP/1.1 204 No Content\r\n\r\n")
        .fin(Side::Client)
        .fin(Side::Server);
    let mut t = Tracker::new(&[18789]);
    let mut out = Vec::new();
    for i in 0..w.segs.len() {
        let mut seg = w.segment(i);
        seg.payload = &seg.payload[..seg.payload.len().min(64)];
        t.segment(&seg, &mut out);
    }
    t.finish(&mut out);
    let x = exchanges(&out);
    assert_eq!(x.len(), 2, "{out:#?}");
    assert_eq!((x[0].status, x[1].status), (Some(200), Some(204)));
    assert!(x.iter().all(|x| x.outcome == ExchangeOutcome::Complete));
    assert!(!out.iter().any(|r| matches!(r, HopRecord::Loss(_))));
}
#[test]
fn close_frames_beyond_the_limit_are_counted_not_kept() {
    let mut w = Wire::new(40001);
    w.handshake()
        .send(Side::Client, UPGRADE_REQ)
        .send(Side::Server, UPGRADE_RESP);
    for i in 0..50u16 {
        w.send(
            Side::Server,
            &encode_frame(true, 8, None, &close_payload(1000 + i, "bye")),
        );
    }
    let limits = TrackerLimits {
        max_close_frames: 4,
        ..TrackerLimits::default()
    };
    let (out, stats) = w.run_limited(limits);
    let s = sessions(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].closes.len(), 4);
    assert_eq!(
        s[0].server_frames.close, 50,
        "every close frame still counted"
    );
    assert_eq!(stats.dropped_close_frames, 46);
}

#[test]
fn requests_pipelined_beyond_the_limit_give_up_pairing_and_say_so() {
    let mut w = Wire::new(40002);
    w.handshake();
    for i in 0..10 {
        w.send(
            Side::Client,
            format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
    }
    // Responses come back: none may be paired with the wrong request.
    for _ in 0..10 {
        w.send(
            Side::Server,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
    }
    let limits = TrackerLimits {
        max_pending_exchanges: 4,
        ..TrackerLimits::default()
    };
    let (out, stats) = w.run_limited(limits);
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 4, "the four waiting requests are reported");
    assert!(xs
        .iter()
        .all(|x| x.outcome == ExchangeOutcome::Incomplete && x.status.is_none()));
    assert!(out
        .iter()
        .any(|r| matches!(r, HopRecord::Loss(l) if l.effect.contains("not paired"))));
    assert_eq!(stats.dropped_exchanges, 10);
}

#[test]
fn connections_beyond_the_limit_are_reported_early_and_counted() {
    let limits = TrackerLimits {
        max_connections: 16,
        ..TrackerLimits::default()
    };
    let mut t = Tracker::new(&[18789]).with_limits(limits);
    let mut out = Vec::new();
    for port in 0..1000u16 {
        let mut w = Wire::new(20000 + port);
        w.tick(u64::from(port) * 1_000).handshake();
        w.send(Side::Client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        for i in 0..w.segs.len() {
            t.segment(&w.segment(i), &mut out);
        }
        assert!(t.conns.len() <= 16, "{}", t.conns.len());
    }
    assert!(t.stats.evicted_connections >= 1000 - 16);
    t.finish(&mut out);
    // Every connection's request is reported once, evicted or not.
    assert_eq!(exchanges(&out).len(), 1000);
}

/// Ports of the connections whose exchanges `out` holds, in order.
fn exchange_ports(out: &[HopRecord]) -> Vec<u16> {
    exchanges(out)
        .iter()
        .map(|x| x.conn.client.port())
        .collect()
}

#[test]
fn eviction_takes_the_least_recently_active_oldest_first() {
    // 16 connections (the limit), connection i opened and sent a request at i ms (`starts`);
    // the first two are active again later; a 17th makes room for itself: an eighth (2) go.
    let run = |starts: [u64; 16]| {
        let limits = TrackerLimits {
            max_connections: 16,
            ..TrackerLimits::default()
        };
        let mut t = Tracker::new(&[18789]).with_limits(limits);
        let mut out = Vec::new();
        let mut wires: Vec<Wire> = (0..16u16)
            .map(|i| {
                let mut w = Wire::new(30_000 + i);
                w.tick(starts[usize::from(i)] * 1_000_000)
                    .handshake()
                    .send(Side::Client, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
                w
            })
            .collect();
        for w in &wires {
            for i in 0..w.segs.len() {
                t.segment(&w.segment(i), &mut out);
            }
        }
        for w in &mut wires[..2] {
            let from = w.segs.len();
            w.tick(100_000_000)
                .send(Side::Client, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
            for i in from..w.segs.len() {
                t.segment(&w.segment(i), &mut out);
            }
        }
        assert!(exchanges(&out).is_empty(), "{out:?}");
        out.clear();
        let mut late = Wire::new(30_016);
        late.tick(200_000_000).handshake();
        for i in 0..late.segs.len() {
            t.segment(&late.segment(i), &mut out);
        }
        (t, out)
    };
    // Connections 2 and 3 were the least recently active (0 and 1 were opened first).
    let starts: [u64; 16] = std::array::from_fn(|i| i as u64);
    let (t, out) = run(starts);
    assert_eq!(exchange_ports(&out), [30_002, 30_002 + 1]);
    assert_eq!(t.stats.evicted_connections, 2);
    assert_eq!(t.conns.len(), 15);
    // Three tied for least recently active: two of them go, as many as the round takes.
    let mut starts = starts;
    starts[2..5].fill(2);
    let (mut t, out) = run(starts);
    let gone = exchange_ports(&out);
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(
        gone.iter().all(|p| (30_002..30_005).contains(p)),
        "{gone:?}"
    );
    assert_eq!(t.stats.evicted_connections, 2);
    let mut rest = Vec::new();
    t.finish(&mut rest);
    let mut all: Vec<u16> = gone.into_iter().chain(exchange_ports(&rest)).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        16,
        "every connection's request reported once: {all:?}"
    );
}

#[test]
fn request_and_response_sizes_are_each_messages_own() {
    // A POST whose head and body share a segment, then a GET; the two responses arrive in
    // one segment. Each exchange has its own message's length, head and body.
    let post = b"POST /a HTTP/1.1\r\nHost: up\r\nContent-Length: 5\r\n\r\nhello";
    let get = b"GET /b HTTP/1.1\r\nHost: up\r\n\r\n";
    let first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let second = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let mut w = Wire::new(41020);
    let both = [&first[..], &second[..]].concat();
    w.handshake()
        .send(Side::Client, post)
        .send(Side::Client, get)
        .send(Side::Server, &both)
        .fin(Side::Client)
        .fin(Side::Server);
    let out = w.run();
    let x = exchanges(&out);
    assert_eq!(x.len(), 2, "{out:?}");
    assert_eq!(
        (x[0].request_bytes, x[0].response_bytes),
        (post.len() as u64, first.len() as u64)
    );
    assert_eq!(
        (x[1].request_bytes, x[1].response_bytes),
        (get.len() as u64, second.len() as u64)
    );
    // A chunked upload split across segments: the framing counts too.
    let mut w = Wire::new(41021);
    let head = b"PUT /c HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n";
    w.handshake()
        .send(Side::Client, head)
        .send(Side::Client, b"3\r\nabc\r\n")
        .send(Side::Client, b"0\r\n\r\n")
        .send(Side::Server, first)
        .fin(Side::Client)
        .fin(Side::Server);
    let out = w.run();
    let x = exchanges(&out);
    assert_eq!(x[0].request_bytes, (head.len() + 8 + 5) as u64, "{out:?}");
}

#[test]
fn a_connection_waits_in_a_box_not_in_the_maps_bucket() {
    fn bucket<K, V, S>(_: &std::collections::HashMap<K, V, S>) -> usize {
        std::mem::size_of::<(K, V)>()
    }
    let tracker = Tracker::new(&[18789]);
    // The key (two addresses), a pointer and the last segment's time: a connection's ~950
    // bytes inline made every bucket of the table, empty or not, that large.
    let b = bucket(&tracker.conns);
    assert!(b <= 80, "a bucket of the connection map is {b} bytes");
    assert!(std::mem::size_of::<Conn>() > 4 * b);
}
