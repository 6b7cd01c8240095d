//! Heap allocations per proxied keep-alive request on the sidecar's hot path, counted by a
//! counting global allocator (deterministic, unlike time on a shared machine): segments
//! through the pipeline (tracker, alert rules) and each exchange appended to the store's
//! Native columns, as the live sidecar does. Requests as nginx forwards them to the Gateway.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    fmt::Write as _,
    io::Write,
    net::SocketAddr,
};

mod common;

use common::segment;
use edgewatch_core::{
    edge::{join::JoinedRequest, EdgeRecord},
    hop::HopRecord,
    pipeline::{Mode, Pipeline, Settings, Sink},
    store::rows::{Columns, EDGE_TABLE, HTTP_TABLE, REQUEST_TABLE},
};

struct Counting;

thread_local! {
    /// Allocations made by this thread (tests run on threads of their own). Const-initialised
    /// and without a destructor: using it allocates nothing.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The store's sink: every exchange into the HTTP table's columns, written out as a block
/// per batch (the buffers kept, as the spool keeps them).
struct Store {
    columns: Columns,
    block: Vec<u8>,
    exchanges: u64,
    /// The access-log lines' table and the joined requests' (when the log is followed).
    edges: Columns,
    requests: Columns,
    edge_rows: u64,
    joined_exact: u64,
    /// Lines stored with their requests, one row each.
    folded: u64,
}

impl Sink for Store {
    fn hop(&mut self, record: &HopRecord) {
        if let HopRecord::Http(x) = record {
            self.exchanges += u64::from(self.columns.push_http("node-1", x));
        }
    }
    fn edge(&mut self, record: &EdgeRecord) {
        self.edge_rows += u64::from(self.edges.push_edge("node-1", record));
    }
    fn request(&mut self, request: &JoinedRequest) {
        if self.requests.push_request("node-1", request)
            && request.matched == edgewatch_core::edge::join::Matched::Exact
        {
            self.joined_exact += 1;
        }
    }
    fn edge_joined(&mut self, request: &JoinedRequest) {
        // As the sidecar's store: one row, the line's with its request.
        if self.edges.push_edge_joined("node-1", request) {
            self.edge_rows += 1;
            self.folded += 1;
            self.joined_exact +=
                u64::from(request.matched == edgewatch_core::edge::join::Matched::Exact);
        } else {
            panic!("a request joined as its line came is one row: {request:?}");
        }
    }
}

const CONNECTIONS: u16 = 8;
const SERVER: u16 = 18789;

/// Whose access log a load writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Nginx,
    Caddy,
}

/// Drives keep-alive connections through the pipeline, `per_batch` requests a batch.
struct Load {
    pipeline: Pipeline,
    store: Store,
    ts: u64,
    /// Per connection: (client address, client seq, server seq).
    conns: Vec<(SocketAddr, u32, u32)>,
    n: u64,
    /// Hex digits of each request's X-Request-Id.
    id_digits: usize,
    /// The upstream's address (the clients' are of the same family).
    server: SocketAddr,
    /// nginx's access-log lines for the requests of the batch (the README's JSON layout),
    /// followed and joined when `Some`: one text and the lines' ends, reused, as the tail
    /// hands a round's lines over.
    log: Option<(String, Vec<usize>, Proxy)>,
    /// Requests a batch: the ring buffer's records of as many requests drained together.
    batch: u64,
    /// Requests whose log lines are read together, after their exchanges' batches.
    log_batch: u64,
    /// Requests between two flushes of a batch's exchanges while it is read, as the live
    /// drain flushes (`Pipeline::flush_exchanges`), if any.
    flush_every: Option<u64>,
}

/// Requests a batch by default: a drain of the ring buffer on a lightly loaded machine.
const BATCH: u64 = 180;

/// Requests in a drain of the ring buffer at 25,000 requests a second (every 100 ms).
const DRAIN_BATCH: u64 = 2_500;

/// Requests in a log poll at 25,000 requests a second, the edge's `poll_interval` (250 ms) of
/// them: how far behind its exchange a line comes in the live loop, where the log is read
/// once every few drains.
const LOG_POLL_BATCH: u64 = 6_250;

impl Load {
    fn new(id_digits: usize) -> Self {
        Self::on(id_digits, [127, 0, 0, 1].into())
    }

    /// The load on a hop between addresses of `ip`'s family (the upstream at `ip`).
    fn on(id_digits: usize, ip: std::net::IpAddr) -> Self {
        Self::with(id_digits, ip, None)
    }

    /// The load with nginx's access log followed and joined by request id, as the README
    /// sets the sidecar up: each request also an access-log line, an edge row and a joined
    /// request row.
    fn with_log(id_digits: usize, proxy: Proxy) -> Self {
        Self::with(id_digits, [127, 0, 0, 1].into(), Some(proxy))
    }

    fn with(id_digits: usize, ip: std::net::IpAddr, log: Option<Proxy>) -> Self {
        let settings = Settings {
            hop_ports: vec![SERVER],
            join: log.is_some(),
            join_window_ns: 30_000_000_000,
            ..Settings::default()
        };
        let mut load = Self {
            pipeline: Pipeline::new(&settings, Mode::Live),
            store: Store {
                columns: Columns::new(HTTP_TABLE),
                block: Vec::new(),
                exchanges: 0,
                edges: Columns::new(EDGE_TABLE),
                requests: Columns::new(REQUEST_TABLE),
                edge_rows: 0,
                joined_exact: 0,
                folded: 0,
            },
            ts: 1_000_000_000,
            conns: Vec::new(),
            n: 0,
            id_digits,
            server: SocketAddr::new(ip, SERVER),
            log: log.map(|proxy| (String::new(), Vec::new(), proxy)),
            batch: BATCH,
            log_batch: BATCH,
            flush_every: None,
        };
        let server = load.server;
        for i in 0..CONNECTIONS {
            let client = SocketAddr::new(ip, 40000 + i);
            let (c, s) = (1000u32, 5000u32);
            load.pipeline
                .segment(&segment(load.ts, client, server, c, 0, 0x02, b""));
            load.pipeline
                .segment(&segment(load.ts, server, client, s, c + 1, 0x12, b""));
            load.pipeline
                .segment(&segment(load.ts, client, server, c + 1, s + 1, 0x10, b""));
            load.conns.push((client, c + 1, s + 1));
        }
        load
    }

    fn requests(&mut self, n: u64) {
        let server = self.server;
        let mut request = Vec::new();
        let response: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";
        for _ in 0..n {
            let i = (self.n % u64::from(CONNECTIONS)) as usize;
            let (client, c, s) = self.conns[i];
            request.clear();
            // Written into the reused buffer: making the request allocates nothing.
            write!(
                request,
                "GET /api/v1/status?page={} HTTP/1.1\r\nHost: gateway.example.com\r\n\
                 X-Request-Id: {:0w$x}\r\nX-Forwarded-For: 203.0.113.{}\r\n\
                 X-Forwarded-Proto: https\r\nUser-Agent: wrk\r\n\r\n",
                self.n % 7,
                self.n,
                self.n % 250,
                w = self.id_digits,
            )
            .expect("a Vec takes any write");
            self.ts += 30_000;
            self.pipeline
                .segment(&segment(self.ts, client, server, c, s, 0x18, &request));
            self.ts += 30_000;
            let c = c.wrapping_add(request.len() as u32);
            self.pipeline
                .segment(&segment(self.ts, server, client, s, c, 0x18, response));
            let s = s.wrapping_add(response.len() as u32);
            self.conns[i] = (client, c, s);
            if let Some((text, ends, proxy)) = self.log.as_mut() {
                if *proxy == Proxy::Caddy {
                    // As Caddy 2.6 writes its access log with the README's Caddyfile (the
                    // request id in the response's headers).
                    write!(
                        text,
                        "{{\"level\":\"info\",\"ts\":{}.{:03},\"logger\":\"http.log.access.log0\",\
                         \"msg\":\"handled request\",\"request\":{{\"remote_ip\":\"127.0.0.1\",\
                         \"remote_port\":\"50334\",\"client_ip\":\"203.0.113.{}\",\
                         \"proto\":\"HTTP/1.1\",\"method\":\"GET\",\"host\":\"gateway.example.com\",\
                         \"uri\":\"/api/v1/status?page={}\",\"headers\":{{\"User-Agent\":[\"wrk\"],\
                         \"Accept\":[\"*/*\"]}}}},\"bytes_read\":0,\"user_id\":\"\",\
                         \"duration\":0.0012,\"size\":12,\"status\":200,\"resp_headers\":{{\
                         \"Server\":[\"Caddy\"],\"X-Request-Id\":[\"{:0w$x}\"],\
                         \"Content-Type\":[\"text/plain\"]}}}}",
                        self.ts / 1_000_000_000,
                        self.ts / 1_000_000 % 1000,
                        self.n % 250,
                        self.n % 7,
                        self.n,
                        w = self.id_digits,
                    )
                    .expect("a String takes any write");
                } else {
                    // As nginx 1.22 writes the README's `log_format edgewatch escape=json`.
                    write!(
                        text,
                        "{{\"msec\":\"{}.{:03}\",\"request_id\":\"{:0w$x}\",\
                     \"remote_addr\":\"203.0.113.{}\",\"host\":\"gateway.example.com\",\
                     \"request_method\":\"GET\",\"request_uri\":\"/api/v1/status?page={}\",\
                     \"status\":\"200\",\"request_time\":\"0.001\",\
                     \"upstream_addr\":\"127.0.0.1:18789\",\"upstream_connect_time\":\"0.000\",\
                     \"upstream_header_time\":\"0.001\",\"upstream_response_time\":\"0.001\",\
                     \"body_bytes_sent\":\"12\",\"http_upgrade\":\"\"}}",
                        self.ts / 1_000_000_000,
                        self.ts / 1_000_000 % 1000,
                        self.n,
                        self.n % 250,
                        self.n % 7,
                        w = self.id_digits,
                    )
                    .expect("a String takes any write");
                }
                ends.push(text.len());
            }
            self.n += 1;
            if self.flush_every.is_some_and(|f| self.n.is_multiple_of(f)) {
                self.pipeline.flush_exchanges(self.ts, &mut self.store);
            }
            // As the live loop: the log is read right after a drain of the ring buffer.
            let poll = self.n.is_multiple_of(self.log_batch);
            if poll || self.n.is_multiple_of(self.batch) {
                self.end_batch();
            }
            if poll {
                self.read_lines();
            }
        }
        self.end_batch();
        self.read_lines();
    }

    fn end_batch(&mut self) {
        self.pipeline.end_batch(self.ts, &mut self.store);
        self.store.block.clear();
        self.store.columns.write_block(&mut self.store.block);
    }

    fn read_lines(&mut self) {
        if let Some((text, ends, _)) = self.log.as_mut() {
            // The batch's log lines come after its exchanges, as nginx logs a request once
            // it has ended.
            let mut start = 0;
            for &end in ends.iter() {
                self.pipeline
                    .edge_line(&text[start..end], self.ts, &mut self.store)
                    .expect("the README's layout parses");
                start = end;
            }
            text.clear();
            ends.clear();
            self.pipeline.tick(self.ts, &mut self.store);
        }
        self.store.block.clear();
        self.store.edges.write_block(&mut self.store.block);
        self.store.requests.write_block(&mut self.store.block);
    }
}

/// Heap allocations per request in steady state, over 20,000 requests after as many to warm
/// up (buffers, maps and the alert rules' windows at their steady size).
fn allocations_per_request(id_digits: usize) -> f64 {
    allocations_per_request_on(Load::new(id_digits))
}

/// Where `cargo xtask bench-instructions` starts counting (callgrind dumps and zeroes its
/// counters on entering it): after a load's warm-up, so that the count is of steady state,
/// without a fresh pipeline's maps and the alert rules' windows growing. Not inlined, and
/// not empty, so the call stays.
#[inline(never)]
fn instructions_counted_from_here() {
    std::hint::black_box(());
}

fn allocations_per_request_on(mut load: Load) -> f64 {
    measure(&mut load)
}

fn measure(load: &mut Load) -> f64 {
    load.requests(20_000);
    instructions_counted_from_here();
    let measured = 20_000u64;
    let stored = load.store.exchanges;
    let before = allocations();
    load.requests(measured);
    let made = allocations() - before;
    assert_eq!(
        load.store.exchanges - stored,
        measured,
        "every exchange stored"
    );
    made as f64 / measured as f64
}

#[test]
fn a_request_costs_no_allocation_with_the_proxies_request_ids() {
    // Method, path, Host and X-Forwarded-* are kept inline (up to 24 bytes), and so is an
    // X-Request-Id of up to 40 bytes: nginx's `$request_id` (32 hex digits) and Caddy's
    // `{http.request.uuid}` (36 characters) cost nothing. A longer id is the one allocation
    // left (which shows the count counts).
    let short = allocations_per_request(16);
    let caddy = allocations_per_request(36);
    let long = allocations_per_request(48);
    // Last: `cargo xtask bench-instructions` counts this load's measured requests.
    let nginx = allocations_per_request(32);
    // Read by `cargo xtask bench` into its summary table.
    println!(
        "summary: alloc per_request_id16={short:.3} per_request_id32={nginx:.3} \
         per_request_id36={caddy:.3} per_request_id48={long:.3}"
    );
    assert!(short < 0.01, "{short} allocations per request");
    assert!(nginx < 0.01, "{nginx} allocations per request");
    assert!(caddy < 0.01, "{caddy} allocations per request");
    assert!(
        (0.99..1.01).contains(&long),
        "{long} allocations per request with a 48-byte id"
    );
}

/// Every line of a logged load became a row, every request was joined exactly (not timed
/// out), and each line came after its exchange: one row a request, the line's with its
/// request.
fn assert_all_joined(load: &Load) {
    assert_eq!(load.store.edge_rows, load.n, "edge rows");
    assert_eq!(load.store.joined_exact, load.n, "exact joins");
    assert_eq!(
        load.store.folded, load.n,
        "lines stored with their requests"
    );
}

#[test]
fn a_request_with_its_access_log_line_joined_costs_no_allocation() {
    // The README's setup: nginx's JSON access log followed. Each request is also a line
    // parsed (borrowed fields, the record's strings inline), joined by its request id (the
    // id inline, in the join's maps and reminders too), and one edge row that carries it.
    let per_request = |id_digits: usize, proxy: Proxy| {
        let mut load = Load::with_log(id_digits, proxy);
        let made = measure(&mut load);
        assert_all_joined(&load);
        made
    };
    let long = per_request(48, Proxy::Nginx);
    // Caddy's line, its request id a UUID's length (36 characters).
    let caddy = per_request(36, Proxy::Caddy);
    // Last: `cargo xtask bench-instructions` counts this load's measured requests.
    let nginx = per_request(32, Proxy::Nginx);
    println!(
        "summary: alloc per_logged_request_id32={nginx:.3} per_logged_request_id48={long:.3} \
         per_caddy_logged_request={caddy:.3}"
    );
    assert!(
        nginx < 0.01,
        "{nginx} allocations per request with its line"
    );
    assert!(
        caddy < 0.01,
        "{caddy} allocations per request with its Caddy line"
    );
    // A 48-byte id is on the heap wherever it is kept: the exchange's, the line's record's,
    // and the join's reminder, at most (which shows the count counts here too).
    assert!(
        (1.99..4.01).contains(&long),
        "{long} allocations per request with its line and a 48-byte id"
    );
}

/// The same with a log poll's requests a batch (each line 6,250 requests after its exchange
/// at most, as live): the join holds that many exchanges in steady state without allocating,
/// and pairs every line. `cargo xtask bench-instructions` simulates the caches on this load
/// and on the one above: what a line costs in memory when its exchange has gone cold.
#[test]
fn a_request_with_its_line_a_log_poll_behind_costs_no_allocation() {
    let mut load = Load::with_log(32, Proxy::Nginx);
    load.batch = DRAIN_BATCH;
    load.log_batch = LOG_POLL_BATCH;
    // The live drain's flush every 128 records.
    load.flush_every = Some(64);
    let made = measure(&mut load);
    assert_all_joined(&load);
    println!("summary: alloc per_logged_request_poll_behind={made:.3}");
    assert!(
        made < 0.01,
        "{made} allocations per request with its line a poll behind"
    );
}

#[test]
fn a_request_over_ipv6_costs_no_allocation() {
    // The addresses go into the row as text: IPv6 ones are formatted on the stack too.
    let per_request =
        allocations_per_request_on(Load::on(32, std::net::Ipv6Addr::LOCALHOST.into()));
    // The longest text an IPv6 address takes (eight groups, 39 bytes).
    let widest: std::net::IpAddr = "ffff:fffe:fffd:fffc:fffb:fffa:fff9:fff8"
        .parse()
        .expect("an address");
    let long = allocations_per_request_on(Load::on(32, widest));
    println!("summary: alloc per_request_ipv6={per_request:.3}");
    assert!(per_request < 0.01, "{per_request} allocations per request");
    assert!(long < 0.01, "{long} allocations per request");
}

/// A followed WebSocket segment as the TC program writes it: one frame header at offset 0 of
/// a `payload_len`-byte segment from `from` to `to`.
fn ws_record(
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    header: &[u8],
    payload_len: u32,
) -> Vec<u8> {
    use edgewatch_common::{
        kind, EventHeader, HopSegmentHeader, HopWsEvent, EVENT_VERSION, WS_CLOSE_BYTES,
        WS_HEADER_SLOT, WS_MAX_HEADERS,
    };
    let v4 = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&ip.octets());
            b
        }
        std::net::IpAddr::V6(ip) => ip.octets(),
    };
    let mut e = HopWsEvent {
        hdr: HopSegmentHeader {
            header: EventHeader {
                kind: kind::HOP_SEGMENT_WS,
                version: EVENT_VERSION,
                _pad: 0,
                ts_ns: 1,
            },
            ifindex: 1,
            seq,
            ack: 0,
            payload_len,
            cap_len: 0,
            sport: from.port(),
            dport: to.port(),
            family: 2,
            tcp_flags: 0x18,
            direction: 0,
            saddr: v4(from),
            daddr: v4(to),
            elided: 0,
        },
        n_headers: 1,
        close_off: 0,
        close_len: 0,
        _pad: 0,
        header_off: [0; WS_MAX_HEADERS],
        header_len: [0; WS_MAX_HEADERS],
        headers: [[0; WS_HEADER_SLOT]; WS_MAX_HEADERS],
        close: [0; WS_CLOSE_BYTES],
    };
    e.header_len[0] = header.len() as u32;
    e.headers[0][..header.len()].copy_from_slice(header);
    // SAFETY: HopWsEvent is repr(C) plain data; viewing it as bytes is sound.
    unsafe {
        std::slice::from_raw_parts(
            (&e as *const HopWsEvent).cast::<u8>(),
            std::mem::size_of::<HopWsEvent>(),
        )
    }
    .to_vec()
}

#[test]
fn a_followed_websocket_frame_costs_no_allocation() {
    // One upgraded connection; then text frames of 100 bytes each way, each a followed
    // segment record (its frame header only) decoded and put through the pipeline as live.
    use edgewatch_core::probe::events::{decode, ProbeEvent};
    let mut load = Load::new(16);
    let server = SocketAddr::from(([127, 0, 0, 1], SERVER));
    let (client, c, s) = load.conns[0];
    let upgrade: &[u8] = b"GET /gateway HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    let switched: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    load.pipeline
        .segment(&segment(1, client, server, c, s, 0x18, upgrade));
    load.pipeline
        .segment(&segment(2, server, client, s, c, 0x18, switched));
    let (mut c, mut s) = (
        c.wrapping_add(upgrade.len() as u32),
        s.wrapping_add(switched.len() as u32),
    );
    let to_client = [0x81u8, 100];
    let to_server = [0x81u8, 0x80 | 100, 1, 2, 3, 4];
    // Returns the allocations the frames cost (their records' bytes not counted).
    let mut frames = |load: &mut Load, n: u64| {
        let mut made = 0;
        for i in 0..n {
            let (record, ts) = if i % 2 == 0 {
                let r = ws_record(server, client, s, &to_client, 102);
                s = s.wrapping_add(102);
                (r, 3 + i)
            } else {
                let r = ws_record(client, server, c, &to_server, 106);
                c = c.wrapping_add(106);
                (r, 3 + i)
            };
            // The record's bytes stand for the ring buffer: made before the count starts.
            let before = allocations();
            let Ok(ProbeEvent::Hop(packet)) = decode(&record) else {
                panic!("decode")
            };
            load.pipeline.hop_packet(&packet, ts);
            if i % 180 == 179 {
                load.end_batch();
            }
            made += allocations() - before;
        }
        made
    };
    frames(&mut load, 20_000);
    let per_frame = frames(&mut load, 20_000) as f64 / 20_000.0;
    println!("summary: alloc per_ws_frame={per_frame:.3}");
    assert!(per_frame < 0.01, "{per_frame} allocations per frame");
}
