//! Records as ClickHouse rows. Pure: each record kind maps to one row type whose fields are
//! the columns of its table in [`super::schema`] (checked by a test, and by the server, which
//! checks every Native block's columns at insert), and rows are written into Native columns
//! by [`Columns`].
use serde::{Deserialize, Serialize};

use crate::{
    edge::{join::JoinedRequest, EdgeRecord},
    exposure::{
        inventory::{Change, ChangeKind, ChangeSource},
        policy::{Policy, Verdict},
        Exposure, Family,
    },
    hop::{ConnEvent, ConnEventKind, ConnId, HttpExchange, Loss, SessionEnd, Side, WsSession},
};

fn ns(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn side_str(s: Side) -> &'static str {
    match s {
        Side::Client => "client",
        Side::Server => "server",
    }
}

fn side(s: Side) -> String {
    side_str(s).into()
}

/// `exposures` and `exposure_changes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct ExposureRow {
    pub ts: i64,
    pub node: String,
    pub change: String,
    pub source: String,
    pub kind: String,
    pub proto: String,
    pub address: String,
    pub port: u16,
    pub port_end: u16,
    pub scope: String,
    pub family: String,
    pub pid: u32,
    pub comm: String,
    pub cmdline: String,
    pub container: String,
    pub netns: u64,
    pub exposure_key: String,
    pub verdict: String,
    pub rule: String,
    pub severity: String,
    pub watched: bool,
    pub detail: String,
}

impl ExposureRow {
    fn new(ts: u64, node: &str, e: &Exposure, policy: &Policy, change: &str, source: &str) -> Self {
        let verdict = policy.assess(e);
        let (verdict_s, rule, severity) = match &verdict {
            Verdict::Ok => ("ok", "", ""),
            Verdict::Internal => ("internal", "", ""),
            Verdict::Allowed { .. } => ("allowed", "", ""),
            Verdict::Drift(f) => ("drift", f.rule, f.severity.as_str()),
        };
        let (kind, address, port_end, family, pid, comm, cmdline, container, netns) = match e {
            Exposure::Listener(l) => {
                let p = l.process.as_ref();
                (
                    "listener",
                    l.addr.to_string(),
                    l.port,
                    match l.family {
                        Family::Ipv4 => "ipv4",
                        Family::Ipv6Only => "ipv6_only",
                        Family::DualStack => "dual_stack",
                        Family::Ipv6 => "ipv6",
                    },
                    p.map(|p| p.pid).unwrap_or(0),
                    p.map(|p| p.comm.clone()).unwrap_or_default(),
                    p.map(|p| p.cmdline.clone()).unwrap_or_default(),
                    p.and_then(|p| p.container.as_ref())
                        .map(|c| format!("{}://{}", c.runtime, c.id))
                        .unwrap_or_default(),
                    l.netns.unwrap_or(0),
                )
            }
            Exposure::NatPublish(n) => (
                "nat_publish",
                n.dest.clone().unwrap_or_else(|| "*".into()),
                n.port_end,
                match n.family.as_str() {
                    "ipv4" => "ipv4",
                    "ipv6" => "ipv6",
                    _ => "inet",
                },
                0,
                String::new(),
                String::new(),
                String::new(),
                0,
            ),
        };
        Self {
            ts: ns(ts),
            node: node.to_owned(),
            change: change.to_owned(),
            source: source.to_owned(),
            kind: kind.to_owned(),
            proto: e.proto().to_string(),
            address,
            port: e.port(),
            port_end,
            scope: e.scope().to_string(),
            family: family.to_owned(),
            pid,
            comm,
            cmdline,
            container,
            netns,
            exposure_key: e.key().to_string(),
            verdict: verdict_s.to_owned(),
            rule: rule.to_owned(),
            severity: severity.to_owned(),
            watched: policy.touches_watched(e).is_some(),
            detail: serde_json::to_string(e).unwrap_or_default(),
        }
    }

    /// One row of an inventory snapshot.
    pub fn snapshot(ts: u64, node: &str, e: &Exposure, policy: &Policy) -> Self {
        Self::new(ts, node, e, policy, "snapshot", "scan")
    }

    /// One inventory change.
    pub fn change(ts: u64, node: &str, c: &Change, policy: &Policy) -> Self {
        let change = match c.change {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
        };
        let source = match c.source {
            ChangeSource::Probe => "probe",
            ChangeSource::Rescan => "rescan",
            ChangeSource::Nat => "nat",
        };
        Self::new(ts, node, &c.exposure, policy, change, source)
    }
}

/// `conn_events`: connects, refusals, resets and capture losses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct ConnRow {
    pub ts: i64,
    pub node: String,
    pub kind: String,
    pub client_addr: String,
    pub client_port: u16,
    pub server_addr: String,
    pub server_port: u16,
    pub conn_start: i64,
    pub latency_ns: Option<u64>,
    pub side: String,
    pub pid: u32,
    pub comm: String,
    pub lost_bytes: u64,
    pub effect: String,
}

fn conn_cols(c: &ConnId) -> (String, u16, String, u16, i64) {
    (
        ip_text(c.client.ip()),
        c.client.port(),
        ip_text(c.server.ip()),
        c.server.port(),
        ns(c.first_seen_ns),
    )
}

/// An address as text, as `IpAddr`'s `Display` writes it; IPv4 (every row of a loopback
/// hop) without the formatting machinery, which cost more than the rest of the row.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

impl ConnRow {
    pub fn from_event(node: &str, e: &ConnEvent) -> Self {
        let (client_addr, client_port, server_addr, server_port, conn_start) = conn_cols(&e.conn);
        let (kind, latency_ns, side_s) = match &e.kind {
            ConnEventKind::Connected { latency_ns } => {
                ("connected", Some(*latency_ns), String::new())
            }
            ConnEventKind::Refused => ("refused", None, String::new()),
            ConnEventKind::Reset { from } => ("reset", None, side(*from)),
        };
        Self {
            ts: ns(e.ts_ns),
            node: node.to_owned(),
            kind: kind.to_owned(),
            client_addr,
            client_port,
            server_addr,
            server_port,
            conn_start,
            latency_ns,
            side: side_s,
            pid: e.process.as_ref().map(|p| p.pid).unwrap_or(0),
            comm: e
                .process
                .as_ref()
                .map(|p| p.comm.clone())
                .unwrap_or_default(),
            lost_bytes: 0,
            effect: String::new(),
        }
    }

    pub fn from_loss(node: &str, l: &Loss) -> Self {
        let (client_addr, client_port, server_addr, server_port, conn_start) = conn_cols(&l.conn);
        Self {
            ts: ns(l.ts_ns),
            node: node.to_owned(),
            kind: "loss".into(),
            client_addr,
            client_port,
            server_addr,
            server_port,
            conn_start,
            latency_ns: None,
            side: side(l.side),
            pid: 0,
            comm: String::new(),
            lost_bytes: l.bytes,
            effect: l.effect.clone(),
        }
    }
}

/// `http_exchanges`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct HttpRow {
    pub ts: i64,
    pub node: String,
    pub client_addr: String,
    pub client_port: u16,
    pub server_addr: String,
    pub server_port: u16,
    pub conn_start: i64,
    pub idx: u32,
    pub method: String,
    pub path: String,
    pub host: String,
    pub origin: String,
    pub request_id: String,
    pub x_forwarded_for: String,
    pub x_forwarded_proto: String,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub status: Option<u16>,
    pub ttfb_ns: Option<u64>,
    pub total_ns: Option<u64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub outcome: String,
}

impl HttpRow {
    pub fn new(node: &str, x: &HttpExchange) -> Self {
        let text = |v: &Option<crate::hop::Text>| v.as_deref().unwrap_or("").to_owned();
        let (client_addr, client_port, server_addr, server_port, conn_start) = conn_cols(&x.conn);
        Self {
            ts: ns(x.request_ts_ns),
            node: node.to_owned(),
            client_addr,
            client_port,
            server_addr,
            server_port,
            conn_start,
            idx: x.index,
            method: x.method.to_string(),
            path: x.path.to_string(),
            host: text(&x.host),
            origin: text(&x.origin),
            request_id: x.request_id.as_deref().unwrap_or("").to_owned(),
            x_forwarded_for: text(&x.x_forwarded_for),
            x_forwarded_proto: text(&x.x_forwarded_proto),
            upgrade_websocket: x.upgrade_websocket,
            connection_upgrade: x.connection_upgrade,
            status: x.status,
            ttfb_ns: x.ttfb_ns,
            total_ns: x.total_ns,
            request_bytes: x.request_bytes,
            response_bytes: x.response_bytes,
            outcome: x.outcome.as_str().to_owned(),
        }
    }
}

/// `ws_sessions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct WsRow {
    pub ts: i64,
    pub node: String,
    pub end_ts: i64,
    pub client_addr: String,
    pub client_port: u16,
    pub server_addr: String,
    pub server_port: u16,
    pub conn_start: i64,
    pub request_id: String,
    pub path: String,
    pub origin: String,
    pub duration_ns: u64,
    pub longest_idle_ns: u64,
    pub idle_before_end_ns: u64,
    pub end_kind: String,
    pub end_from: String,
    pub lost_sync: bool,
    pub client_text: u64,
    pub client_binary: u64,
    pub client_continuation: u64,
    pub client_ping: u64,
    pub client_pong: u64,
    pub client_close: u64,
    pub client_payload_bytes: u64,
    pub server_text: u64,
    pub server_binary: u64,
    pub server_continuation: u64,
    pub server_ping: u64,
    pub server_pong: u64,
    pub server_close: u64,
    pub server_payload_bytes: u64,
    pub close_from: Vec<String>,
    pub close_ts: Vec<i64>,
    pub close_code: Vec<Option<u16>>,
    pub close_reason: Vec<String>,
}

/// How a session ended, as (end_kind, end_from).
pub fn session_end(end: &SessionEnd) -> (&'static str, String) {
    let (kind, from) = session_end_str(end);
    (kind, from.to_owned())
}

fn session_end_str(end: &SessionEnd) -> (&'static str, &'static str) {
    match end {
        SessionEnd::CloseHandshake { first_close_from } => {
            ("close_handshake", side_str(*first_close_from))
        }
        SessionEnd::FinWithoutClose { from } => ("fin_without_close", side_str(*from)),
        SessionEnd::Reset { from } => ("reset", side_str(*from)),
        SessionEnd::Open => ("open", ""),
    }
}

impl WsRow {
    pub fn new(node: &str, s: &WsSession) -> Self {
        let (client_addr, client_port, server_addr, server_port, conn_start) = conn_cols(&s.conn);
        let (end_kind, end_from) = session_end(&s.end);
        let c = &s.client_frames;
        let v = &s.server_frames;
        Self {
            ts: ns(s.upgraded_ts_ns),
            node: node.to_owned(),
            end_ts: ns(s.end_ts_ns),
            client_addr,
            client_port,
            server_addr,
            server_port,
            conn_start,
            request_id: s.request_id.clone().unwrap_or_default(),
            path: s.path.clone(),
            origin: s.origin.clone().unwrap_or_default(),
            duration_ns: s.duration_ns,
            longest_idle_ns: s.longest_idle_ns,
            idle_before_end_ns: s.idle_before_end_ns,
            end_kind: end_kind.to_owned(),
            end_from,
            lost_sync: s.lost_sync,
            client_text: c.text,
            client_binary: c.binary,
            client_continuation: c.continuation,
            client_ping: c.ping,
            client_pong: c.pong,
            client_close: c.close,
            client_payload_bytes: c.payload_bytes,
            server_text: v.text,
            server_binary: v.binary,
            server_continuation: v.continuation,
            server_ping: v.ping,
            server_pong: v.pong,
            server_close: v.close,
            server_payload_bytes: v.payload_bytes,
            close_from: s.closes.iter().map(|c| side(c.from)).collect(),
            close_ts: s.closes.iter().map(|c| ns(c.ts_ns)).collect(),
            close_code: s.closes.iter().map(|c| c.code).collect(),
            close_reason: s.closes.iter().map(|c| c.reason.clone()).collect(),
        }
    }
}

/// `edge_logs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct EdgeRow {
    pub ts: i64,
    pub node: String,
    pub format: String,
    pub request_id: String,
    pub client: String,
    pub host: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub request_time_ns: Option<u64>,
    pub upstream_addr: String,
    pub upstream_connect_ns: Option<u64>,
    pub upstream_header_ns: Option<u64>,
    pub upstream_response_ns: Option<u64>,
    pub bytes_sent: Option<u64>,
}

impl EdgeRow {
    pub fn new(node: &str, e: &EdgeRecord) -> Self {
        Self {
            ts: ns(e.end_ts_ns),
            node: node.to_owned(),
            format: e.format.as_str().to_owned(),
            request_id: e.request_id.as_deref().unwrap_or("").to_owned(),
            client: e.client.as_deref().unwrap_or("").to_owned(),
            host: e.host.as_deref().unwrap_or("").to_owned(),
            method: e.method.as_deref().unwrap_or("").to_owned(),
            path: e.path.as_deref().unwrap_or("").to_owned(),
            status: e.status,
            request_time_ns: e.request_time_ns,
            upstream_addr: e.upstream_addr.as_deref().unwrap_or("").to_owned(),
            upstream_connect_ns: e.upstream_connect_ns,
            upstream_header_ns: e.upstream_header_ns,
            upstream_response_ns: e.upstream_response_ns,
            bytes_sent: e.bytes_sent,
        }
    }
}

/// `requests`: the joined view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct RequestRow {
    pub ts: i64,
    pub node: String,
    pub request_id: String,
    pub matched: String,
    pub reason: String,
    pub client: String,
    pub host: String,
    pub method: String,
    pub path: String,
    pub edge_status: Option<u16>,
    pub edge_request_time_ns: Option<u64>,
    pub upstream_addr: String,
    pub upstream_connect_ns: Option<u64>,
    pub upstream_header_ns: Option<u64>,
    pub upstream_response_ns: Option<u64>,
    pub wire_status: Option<u16>,
    pub wire_ttfb_ns: Option<u64>,
    pub wire_total_ns: Option<u64>,
    pub upgrade_requested: bool,
    pub websocket: bool,
    pub ws_duration_ns: Option<u64>,
    pub ws_end_kind: String,
    pub ws_end_from: String,
    pub refused: bool,
    pub hop_client: String,
}

/// The `requests` columns of a joined request, borrowed from it: what [`RequestRow::new`]
/// copies into a row and [`Columns::push_request`] appends straight, so both say the same.
pub(crate) struct RequestView<'a> {
    pub ts: i64,
    pub request_id: &'a str,
    pub matched: &'static str,
    pub reason: &'a str,
    pub client: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub edge_status: Option<u16>,
    pub edge_request_time_ns: Option<u64>,
    pub upstream_addr: &'a str,
    pub upstream_connect_ns: Option<u64>,
    pub upstream_header_ns: Option<u64>,
    pub upstream_response_ns: Option<u64>,
    pub wire_status: Option<u16>,
    pub wire_ttfb_ns: Option<u64>,
    pub wire_total_ns: Option<u64>,
    pub upgrade_requested: bool,
    pub websocket: bool,
    pub ws_duration_ns: Option<u64>,
    pub ws_end_kind: &'static str,
    pub ws_end_from: &'static str,
    pub refused: bool,
    pub hop_client: Option<std::net::SocketAddr>,
}

impl<'a> RequestView<'a> {
    pub fn of(r: &'a JoinedRequest) -> Self {
        let e = r.edge.as_ref();
        let h = r.hop.as_ref();
        // The exchange's fields are read only where the line lacks them (`or_else`): it
        // waited a log poll, and each of its cache lines read is a miss.
        let ts = e
            .map(|e| e.start_ts_ns().unwrap_or(e.end_ts_ns))
            .or_else(|| h.map(|h| h.request_ts_ns))
            .or_else(|| r.refused.as_ref().map(|c| c.ts_ns))
            .unwrap_or(0);
        let text = |v: Option<&'a str>| v.unwrap_or("");
        let (ws_end_kind, ws_end_from) = r
            .websocket
            .as_ref()
            .map(|w| session_end_str(&w.end))
            .unwrap_or_default();
        Self {
            ts: ns(ts),
            request_id: text(r.request_id.as_deref()),
            matched: r.matched.as_str(),
            reason: text(r.reason.as_deref()),
            client: text(e.and_then(|e| e.client.as_deref())),
            host: text(
                e.and_then(|e| e.host.as_deref())
                    .or_else(|| h.and_then(|h| h.host.as_deref())),
            ),
            method: text(
                e.and_then(|e| e.method.as_deref())
                    .or_else(|| h.map(|h| h.method.as_str())),
            ),
            path: text(
                e.and_then(|e| e.path.as_deref())
                    .or_else(|| h.map(|h| h.path.as_str())),
            ),
            edge_status: e.map(|e| e.status),
            edge_request_time_ns: e.and_then(|e| e.request_time_ns),
            upstream_addr: text(e.and_then(|e| e.upstream_addr.as_deref())),
            upstream_connect_ns: e.and_then(|e| e.upstream_connect_ns),
            upstream_header_ns: e.and_then(|e| e.upstream_header_ns),
            upstream_response_ns: e.and_then(|e| e.upstream_response_ns),
            wire_status: h.and_then(|h| h.status),
            wire_ttfb_ns: h.and_then(|h| h.ttfb_ns),
            wire_total_ns: h.and_then(|h| h.total_ns),
            upgrade_requested: h.is_some_and(|h| h.upgrade_websocket),
            websocket: r.websocket.is_some(),
            ws_duration_ns: r.websocket.as_ref().map(|w| w.duration_ns),
            ws_end_kind,
            ws_end_from,
            refused: r.refused.is_some(),
            hop_client: h
                .map(|h| h.conn.client)
                .or(r.refused.as_ref().map(|c| c.conn.client)),
        }
    }
}

impl RequestRow {
    pub fn new(node: &str, r: &JoinedRequest) -> Self {
        let v = RequestView::of(r);
        Self {
            ts: v.ts,
            node: node.to_owned(),
            request_id: v.request_id.to_owned(),
            matched: v.matched.to_owned(),
            reason: v.reason.to_owned(),
            client: v.client.to_owned(),
            host: v.host.to_owned(),
            method: v.method.to_owned(),
            path: v.path.to_owned(),
            edge_status: v.edge_status,
            edge_request_time_ns: v.edge_request_time_ns,
            upstream_addr: v.upstream_addr.to_owned(),
            upstream_connect_ns: v.upstream_connect_ns,
            upstream_header_ns: v.upstream_header_ns,
            upstream_response_ns: v.upstream_response_ns,
            wire_status: v.wire_status,
            wire_ttfb_ns: v.wire_ttfb_ns,
            wire_total_ns: v.wire_total_ns,
            upgrade_requested: v.upgrade_requested,
            websocket: v.websocket,
            ws_duration_ns: v.ws_duration_ns,
            ws_end_kind: v.ws_end_kind.to_owned(),
            ws_end_from: v.ws_end_from.to_owned(),
            refused: v.refused,
            hop_client: v.hop_client.map(|a| a.to_string()).unwrap_or_default(),
        }
    }
}

/// `alerts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct AlertRow {
    pub ts: i64,
    pub node: String,
    pub state: String,
    pub rule: String,
    pub severity: String,
    pub dedup_key: String,
    pub summary: String,
    pub first_move: String,
    pub fired_at: i64,
    pub evidence: String,
}

impl AlertRow {
    pub fn new(node: &str, a: &crate::alerts::Alert) -> Self {
        Self {
            ts: ns(a.at_ns),
            node: node.to_owned(),
            state: a.state.as_str().to_owned(),
            rule: a.rule.to_owned(),
            severity: a.severity.as_str().to_owned(),
            dedup_key: a.dedup_key.clone(),
            summary: a.summary.clone(),
            first_move: a.first_move.to_owned(),
            fired_at: ns(a.fired_at_ns),
            evidence: a.evidence.to_string(),
        }
    }
}

/// Where an access log had been read to when the edge rows before this mark were spooled:
/// not a row of any table (the sender skips it), but kept in the edge batch beside those rows,
/// so that a crash after they reached the spool and before the tail's checkpoint moved does
/// not read (and store) the same lines again. See `sources::tail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailMarkRow {
    /// The access log's configured path.
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
    /// How the file begins: the length and CRC-32 of its first bytes (0 and 0: not known; see
    /// `sources::checkpoint::FileHead`). Not in this row's serde form, which the first spool
    /// format stored whole and a mark frame still starts with: the frame carries them after
    /// it (`store::spool::frames`), where versions before them, which read that form alone,
    /// leave them.
    #[serde(skip)]
    pub head_len: u32,
    #[serde(skip)]
    pub head_crc: u32,
}

/// Every row kind, tagged with its table: what the spool holds. New kinds go at the end (the
/// spool's frames name the kind by its position).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AnyRow {
    Exposure(ExposureRow),
    ExposureChange(ExposureRow),
    Conn(ConnRow),
    Http(HttpRow),
    Ws(WsRow),
    Edge(EdgeRow),
    Request(RequestRow),
    Alert(AlertRow),
    TailMark(TailMarkRow),
}

/// The tables rows go to, in a fixed order (an index into [`TABLE_NAMES`]).
pub const TABLE_NAMES: [&str; 8] = [
    "exposures",
    "exposure_changes",
    "conn_events",
    "http_exchanges",
    "ws_sessions",
    "edge_logs",
    "requests",
    "alerts",
];

/// The index of `edge_logs` in [`TABLE_NAMES`] (where tail marks ride too).
pub const EDGE_TABLE: usize = 5;

impl AnyRow {
    /// Index of the row's table in [`TABLE_NAMES`].
    pub fn table_index(&self) -> usize {
        match self {
            AnyRow::Exposure(_) => 0,
            AnyRow::ExposureChange(_) => 1,
            AnyRow::Conn(_) => 2,
            AnyRow::Http(_) => 3,
            AnyRow::Ws(_) => 4,
            AnyRow::Edge(_) | AnyRow::TailMark(_) => EDGE_TABLE,
            AnyRow::Request(_) => REQUEST_TABLE,
            AnyRow::Alert(_) => 7,
        }
    }

    /// The row's table.
    pub fn table(&self) -> &'static str {
        TABLE_NAMES[self.table_index()]
    }
}

mod edge_join;
pub use edge_join::EdgeJoinRow;
mod native;
pub use native::{block_rows, merge_blocks_into, read_index, Columns, HTTP_TABLE, REQUEST_TABLE};

/// The rows of one variant of [`AnyRow`] (a batch holds one table's rows; others are skipped).
#[macro_export]
macro_rules! rows_of {
    ($rows:expr, $variant:ident) => {
        $rows
            .into_iter()
            .filter_map(|r| match r {
                $crate::store::rows::AnyRow::$variant(x) => Some(x),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

/// The rows of one hop record.
pub fn hop_row(node: &str, r: &crate::hop::HopRecord) -> AnyRow {
    use crate::hop::HopRecord;
    match r {
        HopRecord::Http(x) => AnyRow::Http(HttpRow::new(node, x)),
        HopRecord::Websocket(s) => AnyRow::Ws(WsRow::new(node, s)),
        HopRecord::Conn(c) => AnyRow::Conn(ConnRow::from_event(node, c)),
        HopRecord::Loss(l) => AnyRow::Conn(ConnRow::from_loss(node, l)),
    }
}

#[cfg(test)]
mod tests;
