//! A finished exchange as its record.
use super::*;

/// A request waiting for its response.
pub(super) struct PendingExchange {
    pub(super) index: u32,
    pub(super) request_ts: u64,
    pub(super) head: RequestHead,
    pub(super) response_start_ts: Option<u64>,
    pub(super) status: Option<u16>,
    pub(super) request_bytes: u64,
    pub(super) response_bytes: u64,
    pub(super) error_code: Option<String>,
}

pub(super) fn exchange_record(
    conn: &ConnId,
    x: PendingExchange,
    ts: u64,
    outcome: ExchangeOutcome,
) -> HttpExchange {
    let done = matches!(
        outcome,
        ExchangeOutcome::Complete | ExchangeOutcome::Upgraded
    );
    HttpExchange {
        conn: conn.clone(),
        index: x.index,
        request_ts_ns: x.request_ts,
        method: x.head.method,
        path: x.head.path,
        host: x.head.host,
        origin: x.head.origin,
        request_id: x.head.request_id,
        x_forwarded_for: x.head.x_forwarded_for,
        x_forwarded_proto: x.head.x_forwarded_proto,
        upgrade_websocket: x.head.upgrade_websocket,
        connection_upgrade: x.head.connection_upgrade,
        status: x.status,
        ttfb_ns: x.response_start_ts.map(|t| t.saturating_sub(x.request_ts)),
        total_ns: done.then(|| ts.saturating_sub(x.request_ts)),
        request_bytes: x.request_bytes,
        response_bytes: x.response_bytes,
        outcome,
        error_code: x.error_code,
    }
}
