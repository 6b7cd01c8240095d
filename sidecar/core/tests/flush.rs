//! `Pipeline::flush_exchanges`: a drain's exchanges go out before the drain ends only when
//! that changes nothing of the order records come out in.
use std::net::SocketAddr;

mod common;

use common::segment;
use edgewatch_core::{
    hop::HopRecord,
    pipeline::{Mode, Pipeline, Settings, Sink},
};

/// What the sink was handed, in order: `C` a connection's record, `X` an exchange.
#[derive(Default)]
struct Order(String);

impl Sink for Order {
    fn hop(&mut self, r: &HopRecord) {
        self.0.push(match r {
            HopRecord::Conn(_) => 'C',
            HopRecord::Http(_) => 'X',
            _ => '?',
        });
    }
}

#[test]
fn exchanges_go_out_early_only_where_the_order_stays() {
    let server = SocketAddr::from(([127, 0, 0, 1], 18789));
    let client = SocketAddr::from(([127, 0, 0, 1], 40100));
    let settings = Settings {
        hop_ports: vec![18789],
        ..Settings::default()
    };
    let mut p = Pipeline::new(&settings, Mode::Live);
    let mut out = Order::default();
    let (mut c, mut s, mut ts) = (1000u32, 5000u32, 1_000_000_000u64);
    // A new connection: its record has no process yet (no connect trace), so it waits a
    // batch at the batch's end; while it is in the batch, nothing goes out early.
    p.segment(&segment(ts, client, server, c, 0, 0x02, b""));
    p.segment(&segment(ts, server, client, s, c + 1, 0x12, b""));
    (c, s) = (c + 1, s + 1);
    let mut exchange = |p: &mut Pipeline, ts: &mut u64| {
        let req = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Request-Id: 1\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        *ts += 1_000;
        p.segment(&segment(*ts, client, server, c, s, 0x18, req));
        c += req.len() as u32;
        *ts += 1_000;
        p.segment(&segment(*ts, server, client, s, c, 0x18, resp));
        s += resp.len() as u32;
    };
    exchange(&mut p, &mut ts);
    assert!(
        !p.flush_exchanges(ts, &mut out),
        "a connection's record is in the batch"
    );
    assert_eq!(out.0, "");
    p.end_batch(ts, &mut out);
    // The exchange out; the connection's record waits for its process.
    assert_eq!(out.0, "X");
    // While it waits, the next batch's exchanges wait for the batch's end too (where the
    // waiting record goes out first).
    exchange(&mut p, &mut ts);
    assert!(
        !p.flush_exchanges(ts, &mut out),
        "a record of the batch before waits"
    );
    assert_eq!(out.0, "X");
    p.end_batch(ts, &mut out);
    assert_eq!(out.0, "XCX");
    // Exchanges alone: out at once, and nothing left for the batch's end.
    exchange(&mut p, &mut ts);
    assert!(p.flush_exchanges(ts, &mut out));
    assert_eq!(out.0, "XCXX");
    p.end_batch(ts, &mut out);
    assert_eq!(out.0, "XCXX");
}
