//! The join's columns on a line's `edge_logs` row: how one row carries a line and its request.
use serde::{Deserialize, Serialize};

use super::RequestView;
use crate::edge::{join::JoinedRequest, EdgeRecord};

/// The join's columns of an `edge_logs` row. Filled (`joined` true) when the line's request
/// was joined the moment the line was read, the common case: the row then carries the whole
/// request, and ClickHouse makes its `requests` row (`requests_from_edge_logs_mv`, see
/// [`crate::store::schema::REQUEST_FROM_EDGE`]), so the sidecar writes one row for the line
/// and its request where it wrote two. Empty otherwise (the request's own row is written when
/// it is joined).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeJoinRow {
    pub joined: bool,
    pub matched: String,
    pub reason: String,
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

impl EdgeJoinRow {
    /// The join's columns of a request joined as its line was read, when ClickHouse can make
    /// the request's row from them and the line's (its id, host, method and path are the
    /// line's); `None` otherwise.
    pub fn of(r: &JoinedRequest) -> Option<Self> {
        let e = r.edge.as_ref()?;
        let v = RequestView::of(r);
        if !v.folds_into(e) {
            return None;
        }
        Some(Self {
            joined: true,
            matched: v.matched.to_owned(),
            reason: v.reason.to_owned(),
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
        })
    }
}

impl RequestView<'_> {
    /// Whether the `requests` row says what line `e`'s `edge_logs` row says in the columns
    /// the two share (what `requests_from_edge_logs_mv` copies): the client, the edge's
    /// status and times are the line's by construction; the id, host, method and path are
    /// the line's unless the line had none and the exchange had one.
    pub(crate) fn folds_into(&self, e: &EdgeRecord) -> bool {
        fn same(line: Option<&str>, joined: &str) -> bool {
            line.unwrap_or("") == joined
        }
        same(e.request_id.as_deref(), self.request_id)
            && same(e.host.as_deref(), self.host)
            && same(e.method.as_deref(), self.method)
            && same(e.path.as_deref(), self.path)
    }
}
