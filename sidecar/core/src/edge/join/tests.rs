use super::*;
use crate::{
    edge::EdgeFormat,
    hop::{ConnId, FrameCounts, SessionEnd, Side},
};

const S: u64 = 1_000_000_000;

fn conn(server_port: u16) -> ConnId {
    ConnId {
        client: "127.0.0.1:40000".parse().expect("addr"),
        server: format!("127.0.0.1:{server_port}").parse().expect("addr"),
        first_seen_ns: 100 * S,
    }
}

/// A line of the README's layout (also the waiting lines' table's tests', `super::lines`).
pub(super) fn edge(rid: Option<&str>, status: u16, path: &str, end: u64) -> EdgeRecord {
    EdgeRecord {
        format: EdgeFormat::NginxJson,
        end_ts_ns: end,
        request_id: rid.map(RequestId::new),
        client: Some("203.0.113.9".into()),
        host: Some("gw".into()),
        method: Some("GET".into()),
        path: Some(path.into()),
        status,
        request_time_ns: Some(S / 10),
        upstream_addr: Some("127.0.0.1:18789".into()),
        no_upstream: false,
        upstream_connect_ns: Some(0),
        upstream_header_ns: Some(S / 100),
        upstream_response_ns: Some(S / 10),
        bytes_sent: Some(2),
        upgrade: None,
    }
}

fn exchange(rid: Option<&str>, status: u16, path: &str, ts: u64) -> HopRecord {
    HopRecord::Http(HttpExchange {
        conn: conn(18789),
        index: 0,
        request_ts_ns: ts,
        method: "GET".into(),
        path: path.into(),
        host: Some("gw".into()),
        origin: None,
        request_id: rid.map(Into::into),
        x_forwarded_for: None,
        x_forwarded_proto: None,
        upgrade_websocket: status == 101,
        connection_upgrade: status == 101,
        status: Some(status),
        ttfb_ns: Some(S / 100),
        total_ns: Some(S / 50),
        request_bytes: 100,
        response_bytes: 50,
        outcome: if status == 101 {
            ExchangeOutcome::Upgraded
        } else {
            ExchangeOutcome::Complete
        },
        error_code: None,
    })
}

fn session(rid: &str) -> HopRecord {
    HopRecord::Websocket(WsSession {
        conn: conn(18789),
        request_id: Some(rid.into()),
        path: "/ws".into(),
        origin: None,
        upgraded_ts_ns: 100 * S,
        end_ts_ns: 160 * S,
        duration_ns: 60 * S,
        client_frames: FrameCounts::default(),
        server_frames: FrameCounts::default(),
        closes: Vec::new(),
        end: SessionEnd::FinWithoutClose { from: Side::Client },
        longest_idle_ns: 60 * S,
        idle_before_end_ns: 60 * S,
        lost_sync: false,
    })
}

#[test]
fn exact_join_in_either_order() {
    for edge_first in [true, false] {
        let mut j = Joiner::new(10 * S);
        let mut out = Vec::new();
        let e = edge(Some("r1"), 200, "/a", 101 * S);
        let h = exchange(Some("r1"), 200, "/a", 100 * S + S / 20);
        if edge_first {
            j.edge(e, 101 * S, &mut out);
            j.hop(h.clone(), 101 * S, &mut out);
        } else {
            j.hop(h.clone(), 101 * S, &mut out);
            j.edge(e, 101 * S, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].matched, Matched::Exact);
        assert!(out[0].edge.is_some() && out[0].hop.is_some());
        assert_eq!(j.pending(), 0);
    }
}

#[test]
fn upgrades_wait_for_their_session() {
    let mut j = Joiner::new(10 * S);
    let mut out = Vec::new();
    j.hop(exchange(Some("w1"), 101, "/ws", 100 * S), 100 * S, &mut out);
    j.edge(edge(Some("w1"), 101, "/ws", 160 * S), 160 * S, &mut out);
    assert!(out.is_empty(), "the session has not ended yet");
    j.hop(session("w1"), 160 * S, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].websocket.is_some());
    assert_eq!(out[0].matched, Matched::Exact);
}

#[test]
fn unmatched_records_are_emitted_with_a_reason() {
    let mut j = Joiner::new(10 * S);
    let mut out = Vec::new();
    j.edge(edge(Some("e1"), 200, "/a", 100 * S), 100 * S, &mut out);
    j.hop(exchange(Some("h1"), 200, "/b", 100 * S), 100 * S, &mut out);
    j.expire(105 * S, &mut out);
    assert!(out.is_empty(), "still inside the window");
    j.expire(111 * S, &mut out);
    assert_eq!(out.len(), 2);
    let kinds: Vec<Matched> = out.iter().map(|r| r.matched).collect();
    assert!(kinds.contains(&Matched::EdgeOnly) && kinds.contains(&Matched::HopOnly));
    assert!(out.iter().all(|r| r.reason.is_some()));
}

#[test]
fn edge_502_is_explained_by_a_refused_connect() {
    let mut j = Joiner::new(10 * S);
    let mut out = Vec::new();
    let refused = HopRecord::Conn(ConnEvent {
        conn: conn(18789),
        ts_ns: 100 * S - S / 20,
        kind: ConnEventKind::Refused,
        process: None,
    });
    j.hop(refused.clone(), 100 * S, &mut out);
    j.edge(edge(Some("x"), 502, "/", 100 * S), 100 * S, &mut out);
    assert_eq!(out.len(), 1, "explained at once: no exchange will come");
    j.expire(200 * S, &mut out);
    assert_eq!(out.len(), 1);
    // The other order: the log line is read before the refused connect arrives.
    let mut j = Joiner::new(10 * S);
    j.edge(edge(Some("y"), 502, "/", 100 * S), 100 * S, &mut out);
    assert_eq!(out.len(), 1, "waits");
    j.hop(refused, 100 * S, &mut out);
    assert_eq!(out.len(), 2, "joined as soon as the refusal is seen");
    assert_eq!(out[1].request_id.as_deref(), Some("y"));
    assert!(out[1].refused.is_some());
    assert!(out[0].refused.is_some());
    assert!(out[0]
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("refused")));
}

#[test]
fn without_request_ids_the_fallback_infers() {
    let mut j = Joiner::new(10 * S);
    let mut out = Vec::new();
    j.hop(
        exchange(None, 200, "/a", 100 * S - S / 20),
        100 * S,
        &mut out,
    );
    // Wrong path: not this one.
    j.edge(edge(None, 200, "/other", 100 * S), 100 * S, &mut out);
    assert!(out.is_empty());
    j.edge(edge(None, 200, "/a", 100 * S), 100 * S, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].matched, Matched::Inferred);
    // Out of the edge request's time span: not inferred.
    j.hop(exchange(None, 200, "/other", 300 * S), 300 * S, &mut out);
    assert_eq!(out.len(), 1);
    j.finish(&mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(j.pending(), 0);
}

#[test]
fn a_duplicate_request_id_is_emitted_and_counted_not_replaced() {
    let mut j = Joiner::new(30 * S);
    let mut out = Vec::new();
    j.edge(edge(Some("dup"), 200, "/a", 100 * S), 100 * S, &mut out);
    j.edge(edge(Some("dup"), 200, "/b", 101 * S), 101 * S, &mut out);
    assert_eq!(out.len(), 1, "the first one is reported at once");
    assert_eq!(
        out[0].edge.as_ref().and_then(|e| e.path.as_deref()),
        Some("/a")
    );
    assert!(out[0]
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("same request id")));
    assert_eq!(j.stats.duplicate_request_ids, 1);
    // The second still joins its exchange.
    j.hop(exchange(Some("dup"), 200, "/b", 101 * S), 101 * S, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].matched, Matched::Exact);
    // The same on the hop side.
    j.hop(exchange(Some("h"), 200, "/c", 102 * S), 102 * S, &mut out);
    j.hop(exchange(Some("h"), 200, "/d", 103 * S), 103 * S, &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].matched, Matched::HopOnly);
    assert_eq!(j.stats.duplicate_request_ids, 2);
}

#[test]
fn a_flood_of_unmatched_ids_stays_within_the_limit_and_loses_no_record() {
    let limits = JoinLimits {
        max_pending: 1_000,
        max_without_id: 100,
    };
    let mut j = Joiner::with_limits(3_600 * S, limits);
    let mut out = Vec::new();
    let n = 20_000u64;
    for i in 0..n {
        let t = 100 * S + i;
        j.edge(edge(Some(&format!("rid-{i}")), 200, "/", t), t, &mut out);
        j.hop(
            exchange(Some(&format!("other-{i}")), 200, "/", t),
            t,
            &mut out,
        );
        j.edge(edge(None, 200, &format!("/x{i}"), t), t, &mut out);
        j.expire(t, &mut out);
        assert!(j.pending() <= 1_000 + 1, "{}", j.pending());
    }
    assert!(j.stats.shed > 0);
    j.finish(&mut out);
    // Every record came out exactly once, matched or not.
    assert_eq!(out.len() as u64, 3 * n);
    assert_eq!(j.pending(), 0);
}

/// A line of a request nginx answered itself (`$upstream_addr` logged empty).
fn answered_by_the_proxy(rid: Option<&str>, path: &str, end: u64) -> EdgeRecord {
    EdgeRecord {
        upstream_addr: None,
        upstream_connect_ns: None,
        upstream_header_ns: None,
        upstream_response_ns: None,
        no_upstream: true,
        ..edge(rid, 301, path, end)
    }
}

#[test]
fn a_line_that_names_no_upstream_goes_out_at_once() {
    for rid in [Some("r301"), None] {
        let mut j = Joiner::new(30 * S);
        let mut out = Vec::new();
        // Complete at once: the line goes with its request (one row), never alone first.
        let line = Box::new(answered_by_the_proxy(rid, "/", 101 * S));
        let mut alone = 0;
        assert!(
            j.edge_or(line, 101 * S, &mut out, |_| alone += 1),
            "{rid:?}"
        );
        assert_eq!(alone, 0);
        assert_eq!(out.len(), 1, "{rid:?}");
        assert_eq!(out[0].matched, Matched::EdgeOnly);
        assert!(
            out[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("itself")),
            "{:?}",
            out[0].reason
        );
        assert_eq!(j.pending(), 0);
    }
    // A line that does not say waits for its exchange, as before.
    let mut j = Joiner::new(30 * S);
    let mut out = Vec::new();
    let unsaid = EdgeRecord {
        upstream_addr: None,
        ..edge(Some("r"), 200, "/", 101 * S)
    };
    j.edge(unsaid, 101 * S, &mut out);
    assert!(out.is_empty());
    j.hop(exchange(Some("r"), 200, "/", 101 * S), 101 * S, &mut out);
    assert_eq!(out[0].matched, Matched::Exact);
}

#[test]
fn lines_the_proxy_answered_itself_shed_nothing_that_waits() {
    // A WebSocket's exchange waits for its session's end; redirects and files nginx serves
    // itself come by the thousand meanwhile (a window is 30 s by default).
    let limits = JoinLimits {
        max_pending: 64,
        max_without_id: 16,
    };
    let mut j = Joiner::with_limits(3_600 * S, limits);
    let mut out = Vec::new();
    j.hop(
        exchange(Some("ws1"), 101, "/ws", 100 * S),
        100 * S,
        &mut out,
    );
    for i in 0..1_000u64 {
        let t = 101 * S + i;
        let rid = format!("r{i}");
        let rid = (i % 2 == 0).then_some(rid.as_str());
        j.edge(answered_by_the_proxy(rid, "/", t), t, &mut out);
        j.expire(t, &mut out);
    }
    assert_eq!(out.len(), 1_000);
    assert_eq!(j.stats.shed, 0);
    j.edge(edge(Some("ws1"), 101, "/ws", 160 * S), 160 * S, &mut out);
    j.hop(session("ws1"), 160 * S, &mut out);
    let ws = out.last().expect("the session's request");
    assert_eq!(ws.request_id.as_deref(), Some("ws1"));
    assert_eq!(ws.matched, Matched::Exact);
    assert!(ws.websocket.is_some() && ws.edge.is_some() && ws.hop.is_some());
}

#[test]
fn expiry_is_by_due_time_and_keeps_open_upgrades() {
    let mut j = Joiner::new(30 * S);
    let mut out = Vec::new();
    j.hop(exchange(Some("ws"), 101, "/ws", 100 * S), 100 * S, &mut out);
    j.edge(edge(Some("late"), 200, "/", 100 * S), 100 * S, &mut out);
    j.expire(200 * S, &mut out);
    // The edge line expired; the upgrade waits for its session.
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].matched, Matched::EdgeOnly);
    j.expire(400 * S, &mut out);
    assert_eq!(out.len(), 1);
    j.hop(session("ws"), 401 * S, &mut out);
    j.expire(500 * S, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].matched, Matched::HopOnly);
    assert!(out[1].websocket.is_some());
}

#[test]
fn only_exchanges_that_outwait_the_ring_get_reminders_and_each_expires_on_time() {
    let mut j = Joiner::new(30 * S);
    let mut out = Vec::new();
    // Each line 100 ms behind its exchange: all matched in the ring, no reminder made.
    for i in 0..1_000u64 {
        let t = 100 * S + i * 10_000_000;
        let rid = format!("{i:032x}");
        j.hop(exchange(Some(&rid), 200, "/", t), t, &mut out);
        let t = t + 100_000_000;
        j.edge(edge(Some(&rid), 200, "/", t), t, &mut out);
    }
    assert_eq!(out.len(), 1_000);
    assert!(out.iter().all(|r| r.matched == Matched::Exact));
    assert_eq!((j.hop_aged.q.len(), j.hop_due.q.len()), (0, 0));
    // One whose line never comes, and nothing after it: still in the ring, it expires at
    // its window's end, not before.
    let lone = 200 * S;
    j.hop(exchange(Some("lone"), 200, "/", lone), lone, &mut out);
    j.expire(lone + 30 * S - 1, &mut out);
    assert_eq!(out.len(), 1_000);
    j.expire(lone + 30 * S + 1, &mut out);
    assert_eq!(out.len(), 1_001);
    assert_eq!(out[1_000].matched, Matched::HopOnly);
    assert_eq!(
        out[1_000].reason.as_deref(),
        Some("no edge log line with this request id")
    );
    // One that moves to the map as later exchanges come gets a reminder then, and expires
    // in the order of its arrival among them.
    let t0 = 300 * S;
    j.hop(exchange(Some("late"), 200, "/", t0), t0, &mut out);
    for i in 1..=20u64 {
        let t = t0 + i * 100_000_000;
        j.hop(
            exchange(Some(&format!("next-{i}")), 200, "/", t),
            t,
            &mut out,
        );
    }
    assert!(!j.hop_aged.q.is_empty());
    j.expire(t0 + 30 * S + 150_000_000, &mut out);
    let expired: Vec<_> = out[1_001..]
        .iter()
        .map(|r| r.request_id.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(expired, ["late", "next-1"]);
}

#[test]
fn matched_records_leave_no_window_of_reminders_behind() {
    // 200,000 requests inside one 30 s window, every exchange matched by its log line at
    // once, and one edge line in 1,000 left waiting (its exchange never comes).
    let mut j = Joiner::new(30 * S);
    let mut out = Vec::new();
    let n = 200_000u64;
    let mut waiting = 0;
    for i in 0..n {
        let t = 100 * S + i * 100_000;
        let rid = format!("{i:032x}");
        j.hop(exchange(Some(&rid), 200, "/", t), t, &mut out);
        j.edge(edge(Some(&rid), 200, "/", t), t, &mut out);
        if i % 1_000 == 0 {
            j.edge(edge(Some(&format!("lone-{i}")), 200, "/", t), t, &mut out);
            waiting += 1;
        }
        // Before the cleaning, one reminder per exchange stayed for the whole window.
        assert!(
            j.reminders() <= 2 * j.pending() + 2 * 4_096,
            "{}",
            j.reminders()
        );
    }
    assert_eq!(out.len() as u64, n);
    assert!(out.iter().all(|r| r.matched == Matched::Exact));
    assert_eq!(j.pending(), waiting);
    // The lone lines still expire, each once, after the window.
    j.expire(100 * S + n * 100_000 + 31 * S, &mut out);
    assert_eq!(out.len() as u64, n + waiting as u64);
    assert!(out[n as usize..]
        .iter()
        .all(|r| r.matched == Matched::EdgeOnly));
    assert_eq!(j.pending(), 0);
}

/// A box given back is the one the next exchange waits in (the last given back first), its old
/// contents replaced whole; the spares are bounded.
#[test]
fn recycled_boxes_carry_the_next_exchanges() {
    /// An exchange and its line (`rid` is also the path), joined: the exchange's box.
    fn join_one(j: &mut Joiner, rid: &str, status: u16, at: u64) -> Box<HttpExchange> {
        let mut out = Vec::new();
        j.hop(exchange(Some(rid), status, rid, at), at, &mut out);
        j.edge(edge(Some(rid), status, rid, at + S), at + S, &mut out);
        out.pop()
            .and_then(|r| r.hop)
            .expect("joined with its exchange")
    }
    let mut j = Joiner::new(10 * S);
    let first = join_one(&mut j, "/a", 200, 100 * S);
    let at: *const HttpExchange = &*first;
    j.recycle(first);
    assert_eq!(j.spare.next_at(), Some(at));
    let second = join_one(&mut j, "/b", 404, 102 * S);
    assert!(std::ptr::eq(at, &*second), "the spare box was not reused");
    // Nothing of the first exchange is left in it.
    let HopRecord::Http(want) = exchange(Some("/b"), 404, "/b", 102 * S) else {
        unreachable!()
    };
    assert_eq!(*second, want);
    // A third exchange with no spare left gets a box of its own.
    let third = join_one(&mut j, "/c", 200, 104 * S);
    assert!(!std::ptr::eq(&*second, &*third));
    for _ in 0..MAX_SPARE + 10 {
        j.recycle(second.clone());
    }
    assert_eq!(j.spare.len(), MAX_SPARE);
}

/// The same for the lines' boxes: a line that waited goes out in the box it waited in, and a
/// handled request's box carries the next line, its old contents replaced whole.
#[test]
fn a_lines_box_goes_out_with_its_request_and_comes_back_for_the_next_line() {
    let mut j = Joiner::new(10 * S);
    let mut out = Vec::new();
    // The line comes first, waits (boxed), then its exchange comes: the request carries it.
    let line = j.boxed_edge(edge(Some("/a"), 200, "/a", 100 * S));
    let at: *const EdgeRecord = &*line;
    assert!(!j.edge_or(line, 100 * S, &mut out, |_| {}));
    assert!(out.is_empty());
    j.hop(exchange(Some("/a"), 200, "/a", 100 * S), 100 * S, &mut out);
    let [first] = &mut out[..] else {
        panic!("one request: {out:?}")
    };
    assert_eq!(first.matched, Matched::Exact);
    let waited = first.edge.as_deref().expect("the line");
    assert!(
        std::ptr::eq(at, waited),
        "the line was copied out of its box"
    );
    j.recycle_handled(&mut out);
    assert!(
        out[0].edge.is_none() && out[0].hop.is_none(),
        "both boxes taken back"
    );
    out.clear();
    // The next line is read into that box, nothing of the first left in it.
    let want = edge(Some("/b"), 404, "/b", 102 * S);
    let next = j.boxed_edge(want.clone());
    assert!(std::ptr::eq(at, &*next), "the spare box was not reused");
    assert_eq!(*next, want);
}

/// `edge_or` says what it did: true exactly when the line's call gave one request, the
/// line's, joined with its exchange (the pipeline hands the two to the sink as one on that
/// promise); otherwise the line went to `alone` first, once.
#[test]
fn edge_or_says_whether_the_line_joined_at_once() {
    let young = 100 * S;
    let old = young + waits::YOUNG_NS + S;
    // What, the exchanges that came, the line's id, when it comes, what it does.
    type Case<'a> = (&'a str, Vec<HopRecord>, Option<&'a str>, u64, bool);
    let cases: [Case<'_>; 7] = [
        ("no exchange yet", vec![], Some("a"), young, false),
        (
            "a complete exchange",
            vec![exchange(Some("b"), 200, "/b", young)],
            Some("b"),
            young,
            true,
        ),
        (
            "an exchange that waited long (the old map)",
            vec![exchange(Some("c"), 200, "/c", young)],
            Some("c"),
            old,
            true,
        ),
        (
            "an upgrade without its session",
            vec![exchange(Some("d"), 101, "/ws", young)],
            Some("d"),
            young,
            false,
        ),
        (
            "an upgrade with its session",
            vec![exchange(Some("e"), 101, "/ws", young), session("e")],
            Some("e"),
            young,
            true,
        ),
        (
            "another id's exchange",
            vec![exchange(Some("f"), 200, "/f", young)],
            Some("g"),
            young,
            false,
        ),
        (
            "a line without an id",
            vec![exchange(None, 200, "/h", young)],
            None,
            young,
            false,
        ),
    ];
    for (what, hops, rid, at, want) in cases {
        let mut j = Joiner::new(30 * S);
        let mut out = Vec::new();
        for h in hops {
            j.hop(h, young, &mut out);
        }
        // Time moves on (the old map's case): a later exchange settles the ring.
        j.hop(exchange(Some("later"), 200, "/later", at), at, &mut out);
        assert!(out.is_empty(), "{what}");
        let e = edge(rid, 200, "/x", at + S / 10);
        let mut alone = 0;
        let at_once = j.edge_or(Box::new(e), at + S / 10, &mut out, |_| alone += 1);
        assert_eq!(at_once, want, "{what}");
        assert_eq!(alone, usize::from(!want), "{what}");
        let joined_now = out.len() == 1
            && out[0].edge.is_some()
            && out[0].hop.is_some()
            && out[0].request_id.as_deref() == rid;
        assert_eq!(joined_now, want, "{what}: {out:?}");
    }
}
