//! The rows of one per proxied request (an HTTP exchange, and with a log followed its access-log
//! line and its joined request) appended straight from the records into the Native columns,
//! without a row struct or a string copied on the way: the hot paths. Unit tests hold each to
//! its row struct's bytes.
#[cfg(doc)]
use super::super::{EdgeJoinRow, EdgeRow, HttpRow, RequestRow};
use super::{ColumnBuf, Columns, Nanos, NativeValue, EDGE_LINE_COLUMNS};

/// Every octet's decimal text: its length, then its digits (unused ones zero).
const OCTET_TEXT: [[u8; 4]; 256] = {
    let mut t = [[0u8; 4]; 256];
    let mut o = 0;
    while o < 256 {
        let d = [(o / 100) as u8, (o / 10 % 10) as u8, (o % 10) as u8];
        t[o] = if o >= 100 {
            [3, b'0' + d[0], b'0' + d[1], b'0' + d[2]]
        } else if o >= 10 {
            [2, b'0' + d[1], b'0' + d[2], 0]
        } else {
            [1, b'0' + d[2], 0, 0]
        };
        o += 1;
    }
    t
};

/// An address as text, as `IpAddr`'s `Display` writes it, without a heap string (IPv4 by
/// hand, IPv6 through `Display` into a stack buffer).
struct IpText(std::net::IpAddr);

impl NativeValue for IpText {
    const TYPE: &'static str = "String";
    fn put(&self, col: &mut ColumnBuf) {
        let v4 = match self.0 {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(v6) => return put_display(col, &v6),
        };
        let mut text = [0u8; 16];
        let n = v4_text(v4, &mut text);
        col.data.push(n as u8);
        col.data.extend_from_slice(&text[..n]);
    }
}

/// An IPv4 address's text at the start of `text`; its length. Each octet's digits come from
/// a table, three bytes written and as many kept as it has (one spare byte at the end for
/// the last octet's unused ones).
fn v4_text(v4: std::net::Ipv4Addr, text: &mut [u8; 16]) -> usize {
    let mut n = 0;
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[n] = b'.';
            n += 1;
        }
        let [len, digits @ ..] = OCTET_TEXT[usize::from(o)];
        text[n..n + 3].copy_from_slice(&digits);
        n += usize::from(len);
    }
    n
}

/// A socket address as text, as `SocketAddr`'s `Display` writes it (empty for none), without
/// a heap string (IPv4 by hand, IPv6 through `Display` into a stack buffer).
struct SockText(Option<std::net::SocketAddr>);

impl NativeValue for SockText {
    const TYPE: &'static str = "String";
    fn put(&self, col: &mut ColumnBuf) {
        match self.0 {
            None => "".put(col),
            Some(std::net::SocketAddr::V4(a)) => {
                // 15 bytes of address, ':' and 5 of port.
                let mut text = [0u8; 24];
                let mut ip = [0u8; 16];
                let n = v4_text(*a.ip(), &mut ip);
                text[..n].copy_from_slice(&ip[..n]);
                text[n] = b':';
                let mut port = itoa::Buffer::new();
                let port = port.format(a.port()).as_bytes();
                text[n + 1..n + 1 + port.len()].copy_from_slice(port);
                let len = n + 1 + port.len();
                col.data.push(len as u8);
                col.data.extend_from_slice(&text[..len]);
            }
            Some(a) => put_display(col, &a),
        }
    }
}

/// An IPv6 address's or socket address's text, as its `Display` writes it, through a stack
/// buffer: "[" 45 bytes of address, "%" and a 10-digit scope id, "]:" and 5 of port at most
/// (anything longer goes through a heap string).
fn put_display(col: &mut ColumnBuf, value: &dyn std::fmt::Display) {
    let mut text = [0u8; 72];
    let mut rest = &mut text[..];
    if std::io::Write::write_fmt(&mut rest, format_args!("{value}")).is_err() {
        return value.to_string().put(col);
    }
    let n = 72 - rest.len();
    col.data.push(n as u8);
    col.data.extend_from_slice(&text[..n]);
}

/// Appends values to the columns in order, one each (the hot paths below, which append
/// straight from a record instead of from a row struct).
macro_rules! put_all {
    ($cols:expr; $($v:expr),* $(,)?) => {{
        let mut cols = $cols.iter_mut();
        $(
            if let Some(c) = cols.next() {
                NativeValue::put(&$v, c);
            }
        )*
    }};
}

/// A line's own columns of its `edge_logs` row ([`EdgeRow::new`]'s, in its order).
fn put_line(cols: &mut [ColumnBuf], node: &str, e: &crate::edge::EdgeRecord) {
    fn text<T: std::ops::Deref<Target = str>>(v: &Option<T>) -> &str {
        v.as_deref().unwrap_or("")
    }
    put_all!(cols;
        Nanos(super::super::ns(e.end_ts_ns)),
        node,
        e.format.as_str(),
        text(&e.request_id),
        text(&e.client),
        text(&e.host),
        text(&e.method),
        text(&e.path),
        e.status,
        e.request_time_ns,
        text(&e.upstream_addr),
        e.upstream_connect_ns,
        e.upstream_header_ns,
        e.upstream_response_ns,
        e.bytes_sent,
    );
}

/// Where the columns [`put_wire`] writes start in a `requests` row.
const WIRE_AT: usize = 15;

/// A joined request's columns from the wire on, the same in its `requests` row and in its
/// line's `edge_logs` row: its status and times on the hop, its upgrade and session, a
/// refused connect, the hop's client.
fn put_wire(cols: &mut [ColumnBuf], v: &super::super::RequestView<'_>) {
    put_all!(cols;
        v.wire_status,
        v.wire_ttfb_ns,
        v.wire_total_ns,
        v.upgrade_requested,
        v.websocket,
        v.ws_duration_ns,
        v.ws_end_kind,
        v.ws_end_from,
        v.refused,
        SockText(v.hop_client),
    );
}

impl Columns {
    /// The row of an HTTP exchange, appended straight from the record: the columns
    /// [`HttpRow::new`] fills, in its order, with no row struct and no string copied on the
    /// way (the hot path: one per proxied request). A test holds the two to the same bytes.
    /// Refused (false) unless these are `http_exchanges` columns.
    pub fn push_http(&mut self, node: &str, x: &crate::hop::HttpExchange) -> bool {
        if self.table != HTTP_TABLE {
            return false;
        }
        fn text(v: &Option<crate::hop::Text>) -> &str {
            v.as_deref().unwrap_or("")
        }
        put_all!(self.cols;
            Nanos(super::super::ns(x.request_ts_ns)),
            node,
            IpText(x.conn.client.ip()),
            x.conn.client.port(),
            IpText(x.conn.server.ip()),
            x.conn.server.port(),
            Nanos(super::super::ns(x.conn.first_seen_ns)),
            x.index,
            x.method.as_str(),
            x.path.as_str(),
            text(&x.host),
            text(&x.origin),
            x.request_id.as_deref().unwrap_or(""),
            text(&x.x_forwarded_for),
            text(&x.x_forwarded_proto),
            x.upgrade_websocket,
            x.connection_upgrade,
            x.status,
            x.ttfb_ns,
            x.total_ns,
            x.request_bytes,
            x.response_bytes,
            x.outcome.as_str(),
        );
        self.rows += 1;
        true
    }

    /// The row of an access-log record, appended straight from it (the columns
    /// [`EdgeRow::new`] fills, in its order, and the join's empty; one per proxied request
    /// when a log is followed and the line waited for its exchange). A test holds the two to
    /// the same bytes. Refused (false) unless these are `edge_logs` columns.
    pub fn push_edge(&mut self, node: &str, e: &crate::edge::EdgeRecord) -> bool {
        if self.table != super::super::EDGE_TABLE {
            return false;
        }
        let (line, join) = self.cols.split_at_mut(EDGE_LINE_COLUMNS);
        put_line(line, node, e);
        // The join's columns, empty (`EdgeJoinRow::default()`).
        put_all!(join;
            false,
            "",
            "",
            None::<u16>,
            None::<u64>,
            None::<u64>,
            false,
            false,
            None::<u64>,
            "",
            "",
            false,
            "",
        );
        self.rows += 1;
        true
    }

    /// The row of an access-log record that carries its request, joined as the line was read
    /// (the columns [`EdgeRow::new`] and [`EdgeJoinRow::of`] fill, in their order): the one
    /// row of a logged request, ClickHouse making its `requests` row. A test holds the two to
    /// the same bytes. Refused (false) unless these are `edge_logs` columns, `r` has its line,
    /// and the request's row can be made from this one ([`EdgeJoinRow::of`]).
    pub fn push_edge_joined(&mut self, node: &str, r: &crate::edge::join::JoinedRequest) -> bool {
        if self.table != super::super::EDGE_TABLE {
            return false;
        }
        let Some(e) = r.edge.as_ref() else {
            return false;
        };
        let v = super::super::RequestView::of(r);
        if !v.folds_into(e) {
            return false;
        }
        let (line, join) = self.cols.split_at_mut(EDGE_LINE_COLUMNS);
        put_line(line, node, e);
        let (head, wire) = join.split_at_mut(3);
        put_all!(head; true, v.matched, v.reason);
        put_wire(wire, &v);
        self.rows += 1;
        true
    }

    /// The row of a joined request, appended straight from it (the columns [`RequestRow::new`]
    /// fills, from the same `RequestView`). A test holds the two to the same bytes.
    /// Refused (false) unless these are `requests` columns.
    pub fn push_request(&mut self, node: &str, r: &crate::edge::join::JoinedRequest) -> bool {
        if self.table != REQUEST_TABLE {
            return false;
        }
        let v = super::super::RequestView::of(r);
        put_all!(self.cols;
            Nanos(v.ts),
            node,
            v.request_id,
            v.matched,
            v.reason,
            v.client,
            v.host,
            v.method,
            v.path,
            v.edge_status,
            v.edge_request_time_ns,
            v.upstream_addr,
            v.upstream_connect_ns,
            v.upstream_header_ns,
            v.upstream_response_ns,
        );
        put_wire(&mut self.cols[WIRE_AT..], &v);
        self.rows += 1;
        true
    }
}

/// The index of `requests` in [`super::super::TABLE_NAMES`].
pub const REQUEST_TABLE: usize = 6;

/// The index of `http_exchanges` in [`super::super::TABLE_NAMES`].
pub const HTTP_TABLE: usize = 3;
