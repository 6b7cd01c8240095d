use super::*;
use crate::edge::EdgeFormat;

/// The serde field names of a row type, in order (what the crate sends as columns).
fn fields<T: Serialize>(row: &T) -> Vec<String> {
    match serde_json::to_value(row).expect("row serialises") {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        _ => panic!("row is not a struct"),
    }
}

fn check<T: Serialize>(table: &str, row: &T) {
    check_fields(table, fields(row));
}

fn check_fields(table: &str, mut have: Vec<String>) {
    let def = super::super::schema::table(table).expect("table exists");
    let mut want: Vec<&str> = def.columns.iter().map(|c| c.name).collect();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(have, want, "row fields and columns of {table} differ");
}

/// `Array(LowCardinality(String))` -> `Array(String)`.
fn without_low_cardinality(ty: &str) -> String {
    let mut t = ty.to_owned();
    while let Some(at) = t.find("LowCardinality(") {
        let inner = at + "LowCardinality(".len();
        let mut depth = 1;
        let mut end = inner;
        for (i, ch) in t[inner..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = inner + i;
                break;
            }
        }
        t = format!("{}{}{}", &t[..at], &t[inner..end], &t[end + 1..]);
    }
    t
}

/// The Native columns of a row's table are exactly the table's columns, with its types
/// (LowCardinality is the server's business: the block carries the plain type), and the row
/// becomes a block that says it has one row of that table.
fn check_native(row: AnyRow) {
    let table = row.table_index();
    let name = TABLE_NAMES[table];
    let mut cols = Columns::new(table);
    assert!(cols.push(&row), "a row of its own table is taken");
    let def = super::super::schema::table(name).expect("table exists");
    let mut want: Vec<(String, String)> = def
        .columns
        .iter()
        .map(|c| (c.name.to_owned(), without_low_cardinality(c.ty)))
        .collect();
    let mut have: Vec<(String, String)> = cols
        .schema()
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
    want.sort();
    have.sort();
    assert_eq!(have, want, "Native columns and columns of {name} differ");
    let mut block = Vec::new();
    assert_eq!(cols.write_block(&mut block), 1);
    assert_eq!(block_rows(table, &block), Some(1), "{name}");
    // The columns start over, and an empty block is never written.
    assert_eq!(cols.write_block(&mut block), 0);
}

#[test]
fn native_blocks_have_the_table_columns() {
    let exposure = ExposureRow {
        ts: 1,
        node: "n".into(),
        change: "added".into(),
        source: "probe".into(),
        kind: "socket".into(),
        proto: "tcp".into(),
        address: "0.0.0.0".into(),
        port: 18789,
        port_end: 18789,
        scope: "wildcard".into(),
        family: "ipv4".into(),
        pid: 7,
        comm: "node".into(),
        cmdline: "node gw".into(),
        container: String::new(),
        netns: 4026531840,
        exposure_key: "k".into(),
        verdict: "drift".into(),
        rule: "r".into(),
        severity: "critical".into(),
        watched: true,
        detail: String::new(),
    };
    check("exposures", &exposure);
    check_native(AnyRow::Exposure(exposure.clone()));
    check_native(AnyRow::ExposureChange(exposure));
    let alert = alert_row();
    check("alerts", &alert);
    check_native(AnyRow::Alert(alert));
    let conn = ConnRow::from_event(
        "n",
        &ConnEvent {
            conn: conn(),
            ts_ns: 7,
            kind: ConnEventKind::Refused,
            process: None,
        },
    );
    check_native(AnyRow::Conn(conn));
    // A row of another table is refused, not written into the wrong columns.
    let mut exposures = Columns::new(0);
    assert!(!exposures.push(&AnyRow::Alert(alert_row())));
    assert_eq!(exposures.rows(), 0);
}

fn alert_row() -> AlertRow {
    AlertRow {
        ts: 2,
        node: "n".into(),
        state: "firing".into(),
        rule: "exposure_drift".into(),
        severity: "critical".into(),
        dedup_key: "d".into(),
        summary: "s".into(),
        first_move: "f".into(),
        fired_at: 1,
        evidence: "{}".into(),
    }
}

fn conn() -> ConnId {
    ConnId {
        client: "127.0.0.1:40000".parse().expect("addr"),
        server: "127.0.0.1:18789".parse().expect("addr"),
        first_seen_ns: 5,
    }
}

/// An upgrade with every field set and the largest values.
fn exchange() -> HttpExchange {
    HttpExchange {
        conn: conn(),
        index: 3,
        request_ts_ns: u64::MAX,
        method: "GET".into(),
        path: "/api?token=[redacted]".into(),
        host: Some("gw.example".into()),
        origin: Some("https://gw.example".into()),
        request_id: Some("0123456789abcdef0123456789abcdef".into()),
        x_forwarded_for: Some("203.0.113.7".into()),
        x_forwarded_proto: Some("https".into()),
        upgrade_websocket: true,
        connection_upgrade: true,
        status: Some(101),
        ttfb_ns: Some(1),
        total_ns: None,
        request_bytes: 200,
        response_bytes: u64::MAX,
        outcome: crate::hop::ExchangeOutcome::Upgraded,
        error_code: Some("not stored".into()),
    }
}

/// The hot path writes an exchange's columns straight from the record; it must write what the
/// row struct would, byte for byte (addresses of both families, fields set and not, the
/// largest values, an upgrade).
#[test]
fn an_exchange_written_straight_into_columns_is_its_row() {
    let base = exchange();
    let mut bare = base.clone();
    bare.conn = ConnId {
        client: "[2001:db8::7]:40000".parse().expect("addr"),
        server: "[::1]:18789".parse().expect("addr"),
        first_seen_ns: 0,
    };
    (bare.host, bare.origin, bare.request_id) = (None, None, None);
    (bare.x_forwarded_for, bare.x_forwarded_proto, bare.status) = (None, None, None);
    bare.outcome = crate::hop::ExchangeOutcome::Complete;
    let mut wide = base.clone();
    wide.conn.client = "255.10.0.1:65535".parse().expect("addr");
    wide.conn.server = "100.64.9.99:1".parse().expect("addr");
    // The longest IPv6 texts (all eight groups; an IPv4-mapped one).
    let mut long6 = base.clone();
    long6.conn.client = "[ffff:fffe:fffd:fffc:fffb:fffa:fff9:fff8]:65535"
        .parse()
        .expect("addr");
    long6.conn.server = "[::ffff:255.255.255.254]:1".parse().expect("addr");
    // Every octet value in every position of an IPv4 address, on both ends.
    let octets = (0..=255u8).map(|o| {
        let mut x = base.clone();
        x.conn.client = (
            std::net::Ipv4Addr::new(o, 255 - o, o / 3, o.wrapping_mul(7)),
            1,
        )
            .into();
        x.conn.server = (
            std::net::Ipv4Addr::new(o.wrapping_mul(7), o / 3, 255 - o, o),
            2,
        )
            .into();
        x
    });
    let all: Vec<HttpExchange> = [base.clone(), bare, wide, long6]
        .into_iter()
        .chain(octets)
        .collect();
    let (mut straight, mut via_row) = (Columns::new(3), Columns::new(3));
    for x in &all {
        assert!(straight.push_http("node-1", x));
        assert!(via_row.push(&AnyRow::Http(HttpRow::new("node-1", x))));
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    assert_eq!(straight.write_block(&mut a), all.len() as u64);
    assert_eq!(via_row.write_block(&mut b), all.len() as u64);
    assert_eq!(a, b);
    // Only the http_exchanges columns take an exchange.
    assert!(!Columns::new(2).push_http("n", &base));
}

/// Appended straight and through the row struct, the same rows give the same block.
fn same_block<T>(
    table: usize,
    records: &[T],
    straight: impl Fn(&mut Columns, &T) -> bool,
    row: impl Fn(&T) -> AnyRow,
) {
    let (mut a_cols, mut b_cols) = (Columns::new(table), Columns::new(table));
    for r in records {
        assert!(straight(&mut a_cols, r));
        assert!(b_cols.push(&row(r)));
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    assert_eq!(a_cols.write_block(&mut a), records.len() as u64);
    assert_eq!(b_cols.write_block(&mut b), records.len() as u64);
    assert_eq!(a, b);
}

/// Access-log records: every field set, none set, and Caddy's without a host.
fn edge_samples() -> (EdgeRecord, EdgeRecord, EdgeRecord) {
    let full = EdgeRecord {
        format: EdgeFormat::NginxJson,
        end_ts_ns: 1_796_397_995_104_000_000,
        request_id: Some("d0ec41b0ba396334c5e0f75ced406f07".into()),
        client: Some("203.0.113.9".into()),
        host: Some("gw.example".into()),
        method: Some("GET".into()),
        path: Some("/ws?token=[redacted]".into()),
        status: 101,
        request_time_ns: Some(60_000_000_000),
        upstream_addr: Some("127.0.0.1:18789".into()),
        no_upstream: false,
        upstream_connect_ns: Some(1_000_000),
        upstream_header_ns: Some(2_000_000),
        upstream_response_ns: Some(60_000_000_000),
        bytes_sent: Some(u64::MAX),
        upgrade: Some("websocket".into()),
    };
    let bare = EdgeRecord {
        format: EdgeFormat::NginxCombined,
        end_ts_ns: 0,
        request_id: None,
        client: None,
        host: None,
        method: None,
        path: None,
        status: 502,
        request_time_ns: None,
        upstream_addr: None,
        no_upstream: false,
        upstream_connect_ns: None,
        upstream_header_ns: None,
        upstream_response_ns: None,
        bytes_sent: None,
        upgrade: None,
    };
    let caddy = EdgeRecord {
        format: EdgeFormat::CaddyJson,
        host: None,
        ..full.clone()
    };
    (full, bare, caddy)
}

/// Joined requests of every join outcome, fields set and not, hop clients of both families
/// and none.
fn joined_samples(full: &EdgeRecord, bare: &EdgeRecord) -> [JoinedRequest; 7] {
    let (full, bare) = (full.clone(), bare.clone());
    let ws = WsSession {
        conn: conn(),
        request_id: full.request_id.as_deref().map(str::to_owned),
        path: "/ws".into(),
        origin: None,
        upgraded_ts_ns: 1,
        end_ts_ns: 2,
        duration_ns: 60_000_000_000,
        client_frames: Default::default(),
        server_frames: Default::default(),
        closes: Vec::new(),
        end: SessionEnd::CloseHandshake {
            first_close_from: Side::Server,
        },
        longest_idle_ns: 0,
        idle_before_end_ns: 0,
        lost_sync: false,
    };
    let mut v6 = exchange();
    v6.conn.client = "[2001:db8::7]:40000".parse().expect("addr");
    let mut scoped = exchange();
    scoped.conn.client = "[fe80::1%4294967295]:65535".parse().expect("addr");
    let mut no_host = exchange();
    no_host.host = None;
    let refused = ConnEvent {
        conn: ConnId {
            client: "10.0.0.255:1".parse().expect("addr"),
            ..conn()
        },
        ts_ns: 7,
        kind: ConnEventKind::Refused,
        process: None,
    };
    let join =
        |matched, reason: Option<&str>, edge: Option<&EdgeRecord>, hop: Option<&HttpExchange>| {
            JoinedRequest {
                request_id: edge.and_then(|e| e.request_id.clone()),
                matched,
                reason: reason.map(|r| r.to_owned().into()),
                edge: edge.cloned().map(Box::new),
                hop: hop.cloned().map(Box::new),
                websocket: None,
                refused: None,
            }
        };
    use crate::edge::join::Matched;
    let mut upgraded = join(Matched::Exact, None, Some(&full), Some(&exchange()));
    upgraded.websocket = Some(Box::new(ws));
    let mut explained = join(Matched::EdgeOnly, Some("refused"), Some(&bare), None);
    explained.refused = Some(Box::new(refused));
    [
        upgraded,
        join(Matched::Exact, None, Some(&bare), Some(&no_host)),
        join(Matched::EdgeOnly, Some("no exchange"), Some(&full), None),
        join(Matched::HopOnly, Some("no line"), None, Some(&v6)),
        join(Matched::Inferred, None, Some(&full), Some(&scoped)),
        explained,
        join(Matched::EdgeOnly, None, None, None),
    ]
}

/// With a log followed, each request's edge row and joined row are appended straight from
/// the records too: byte for byte what their row structs write (every join outcome, fields
/// set and not, hop clients of both families and none).
#[test]
fn edge_and_joined_rows_written_straight_into_columns_are_their_rows() {
    let (full, bare, caddy) = edge_samples();
    let edges = [full.clone(), bare.clone(), caddy];
    same_block(
        EDGE_TABLE,
        &edges,
        |c, e| c.push_edge("node-1", e),
        |e| AnyRow::Edge(EdgeRow::new("node-1", e)),
    );

    let joined = joined_samples(&full, &bare);
    same_block(
        REQUEST_TABLE,
        &joined,
        |c, r| c.push_request("node-1", r),
        |r| AnyRow::Request(RequestRow::new("node-1", r)),
    );
    // Only their own tables' columns take them.
    assert!(!Columns::new(HTTP_TABLE).push_edge("n", &full));
    assert!(!Columns::new(EDGE_TABLE).push_request("n", &joined[0]));
}

#[test]
fn a_line_with_its_request_written_straight_into_columns_is_its_rows() {
    let (full, bare, _) = edge_samples();
    let joined = joined_samples(&full, &bare);
    // A request with its line, as one `edge_logs` row that carries the join: byte for byte the
    // line's row and `EdgeJoinRow::of`, and only where ClickHouse can make the request's row
    // from it (the line's id, host, method and path are the request's).
    let (mut straight, mut rows) = (Columns::new(EDGE_TABLE), Columns::new(EDGE_TABLE));
    let mut folded = Vec::new();
    for (i, r) in joined.iter().enumerate() {
        let of = EdgeJoinRow::of(r);
        assert_eq!(
            straight.push_edge_joined("node-1", r),
            of.is_some(),
            "request {i}"
        );
        if let (Some(j), Some(e)) = (of, r.edge.as_ref()) {
            assert!(j.joined);
            rows.push_edge_with(&EdgeRow::new("node-1", e), &j);
            folded.push(i);
        }
    }
    // Not the line without its method when the exchange has one, not a request without its
    // line.
    assert_eq!(folded, [0, 2, 4, 5]);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    assert_eq!(straight.write_block(&mut a), 4);
    assert_eq!(rows.write_block(&mut b), 4);
    assert_eq!(a, b);
    assert!(!Columns::new(REQUEST_TABLE).push_edge_joined("n", &joined[0]));
    assert_eq!(
        EdgeJoinRow::of(&joined[0]).map(|j| j.matched),
        Some("exact".into())
    );
}

#[test]
fn row_fields_are_the_table_columns() {
    let x = HttpExchange {
        conn: conn(),
        index: 0,
        request_ts_ns: 10,
        method: "GET".into(),
        path: "/".into(),
        host: None,
        origin: None,
        request_id: Some("r1".into()),
        x_forwarded_for: None,
        x_forwarded_proto: None,
        upgrade_websocket: false,
        connection_upgrade: false,
        status: Some(200),
        ttfb_ns: Some(1),
        total_ns: Some(2),
        request_bytes: 1,
        response_bytes: 2,
        outcome: crate::hop::ExchangeOutcome::Complete,
        error_code: None,
    };
    let http = HttpRow::new("n", &x);
    assert_eq!(http.outcome, "complete");
    assert_eq!(http.request_id, "r1");
    check("http_exchanges", &http);
    check_native(AnyRow::Http(http.clone()));
    let ev = ConnEvent {
        conn: conn(),
        ts_ns: 7,
        kind: ConnEventKind::Reset { from: Side::Server },
        process: None,
    };
    let c = ConnRow::from_event("n", &ev);
    assert_eq!((c.kind.as_str(), c.side.as_str()), ("reset", "server"));
    check("conn_events", &c);
    let ws = WsSession {
        conn: conn(),
        request_id: None,
        path: "/ws".into(),
        origin: None,
        upgraded_ts_ns: 1,
        end_ts_ns: 2,
        duration_ns: 1,
        client_frames: Default::default(),
        server_frames: Default::default(),
        closes: vec![crate::hop::CloseFrame {
            from: Side::Client,
            ts_ns: 2,
            code: Some(1000),
            reason: "bye".into(),
        }],
        end: SessionEnd::FinWithoutClose { from: Side::Client },
        longest_idle_ns: 0,
        idle_before_end_ns: 0,
        lost_sync: false,
    };
    let w = WsRow::new("n", &ws);
    assert_eq!(
        (w.end_kind.as_str(), w.end_from.as_str()),
        ("fin_without_close", "client")
    );
    assert_eq!(w.close_code, vec![Some(1000)]);
    check("ws_sessions", &w);
    check_native(AnyRow::Ws(w.clone()));
    let edge = EdgeRecord {
        format: EdgeFormat::CaddyJson,
        end_ts_ns: 100,
        request_id: Some("r1".into()),
        client: Some("1.2.3.4".into()),
        host: None,
        method: Some("GET".into()),
        path: Some("/".into()),
        status: 502,
        request_time_ns: Some(40),
        upstream_addr: None,
        no_upstream: false,
        upstream_connect_ns: None,
        upstream_header_ns: None,
        upstream_response_ns: None,
        bytes_sent: None,
        upgrade: None,
    };
    // An `edge_logs` row: the line's columns, then its join's.
    check_fields(
        "edge_logs",
        [
            fields(&EdgeRow::new("n", &edge)),
            fields(&EdgeJoinRow::default()),
        ]
        .concat(),
    );
    check_native(AnyRow::Edge(EdgeRow::new("n", &edge)));
    let joined = JoinedRequest {
        request_id: Some("r1".into()),
        matched: crate::edge::join::Matched::Exact,
        reason: None,
        edge: Some(Box::new(edge)),
        hop: Some(Box::new(x)),
        websocket: Some(Box::new(ws)),
        refused: None,
    };
    let r = RequestRow::new("n", &joined);
    assert_eq!(r.ts, 60, "a joined request starts when the edge started it");
    assert_eq!(r.matched, "exact");
    assert!(r.websocket);
    check("requests", &r);
    check_native(AnyRow::Request(r.clone()));
}

#[test]
fn table_names_match_the_schema() {
    for name in TABLE_NAMES {
        assert!(super::super::schema::table(name).is_some(), "{name}");
    }
    assert_eq!(TABLE_NAMES.len(), super::super::schema::TABLES.len());
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    use std::net::IpAddr;
    for ip in [
        "0.0.0.0",
        "127.0.0.1",
        "10.9.99.100",
        "255.255.255.255",
        "192.168.1.250",
        "::1",
        "2001:db8::7",
        "::ffff:127.0.0.1",
    ] {
        let ip: IpAddr = ip.parse().expect("an address");
        assert_eq!(super::ip_text(ip), ip.to_string());
    }
    // Every octet value, in every position.
    for o in 0..=255u8 {
        let ip = IpAddr::from([o, 255 - o, o / 3, o.wrapping_mul(7)]);
        assert_eq!(super::ip_text(ip), ip.to_string());
    }
}
