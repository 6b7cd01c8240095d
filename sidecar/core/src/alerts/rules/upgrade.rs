//! Upgrades: the half-path (Upgrade lost between the proxy and the upstream) and upgrades
//! answered without 101.
use serde_json::json;

use super::{super::*, exchange_evidence};

impl Engine {
    /// An exchange on the hop: upgrade failures (what the hop alone shows) and their end.
    pub(super) fn exchange(&mut self, x: &HttpExchange, out: &mut Vec<Alert>) {
        let port = x.conn.server.port();
        let upgraded = x.outcome == ExchangeOutcome::Upgraded || x.status == Some(101);
        if upgraded {
            // An upgrade went through: the handshake path works again.
            for cause in ["half_path", "no_101"] {
                self.resolve(
                    &format!("{}:{port}:{cause}", rule::UPGRADE_FAILURE),
                    x.request_ts_ns,
                    out,
                );
            }
            return;
        }
        let asked = x.upgrade_websocket && x.connection_upgrade;
        if x.upgrade_websocket && x.status == Some(403) {
            self.origin_refused(x, out);
        } else if !self.cfg.upgrade_failure.enabled {
        } else if asked && x.status.is_some() {
            self.matched(
                Match {
                    key: format!("{}:{port}:no_101", rule::UPGRADE_FAILURE),
                    rule: rule::UPGRADE_FAILURE,
                    severity: Severity::Critical,
                    summary: format!(
                        "WebSocket upgrades to port {port} are answered {} instead of 101",
                        x.status.unwrap_or(0)
                    ),
                    first_move: MOVE_NO_101,
                    at_ns: x.request_ts_ns,
                    evidence: vec![exchange_evidence(x, None)],
                    counts: vec![("failed_upgrades", 1)],
                    detail: json!({ "port": port, "status": x.status }),
                },
                out,
            );
        } else if !asked && x.status == Some(426) {
            // The upstream wants an upgrade the request does not carry: the proxy dropped it.
            self.half_path(x, None, out);
        }
    }

    pub(super) fn half_path(
        &mut self,
        x: &HttpExchange,
        edge_status: Option<u16>,
        out: &mut Vec<Alert>,
    ) {
        let port = x.conn.server.port();
        self.matched(
            Match {
                key: format!("{}:{port}:half_path", rule::UPGRADE_FAILURE),
                rule: rule::UPGRADE_FAILURE,
                severity: Severity::Critical,
                summary: format!(
                    "WebSocket half-path: upgrade requests reach upstream port {port} without \
                     Upgrade/Connection (the proxy drops them), so no 101 comes back"
                ),
                first_move: MOVE_HALF_PATH,
                at_ns: x.request_ts_ns,
                evidence: vec![exchange_evidence(x, edge_status)],
                counts: vec![("failed_upgrades", 1)],
                detail: json!({ "port": port }),
            },
            out,
        );
    }
}
