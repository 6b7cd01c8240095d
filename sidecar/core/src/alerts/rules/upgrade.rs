//! Upgrades: the half-path (Upgrade lost between the proxy and the upstream), upgrades
//! answered without 101, and the Gateway refusing a proxy it does not trust (its 403 with the
//! code `proxy_attribution_required`).
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
            self.resolve(
                &format!("{}:{port}", rule::UNTRUSTED_PROXY),
                x.request_ts_ns,
                out,
            );
            return;
        }
        let asked = x.upgrade_websocket && x.connection_upgrade;
        let code = x.error_code.as_deref();
        if code == Some(PROXY_ATTRIBUTION_REQUIRED) {
            // Any request, upgrade or not: the Gateway refuses what the proxy forwards.
            self.untrusted_proxy(x, out);
        } else if x.upgrade_websocket
            && x.status == Some(403)
            && code.is_some_and(|c| c.to_ascii_lowercase().contains("origin"))
        {
            // Only a code that says so makes a 403 an Origin refusal.
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

    /// The Gateway refused a request the proxy forwarded with X-Forwarded-For, because the
    /// proxy's address is not in `gateway.trustedProxies`.
    fn untrusted_proxy(&mut self, x: &HttpExchange, out: &mut Vec<Alert>) {
        if !self.cfg.untrusted_proxy.enabled {
            return;
        }
        let port = x.conn.server.port();
        let proxy = x.conn.client.ip();
        self.matched(
            Match {
                key: format!("{}:{port}", rule::UNTRUSTED_PROXY),
                rule: rule::UNTRUSTED_PROXY,
                severity: Severity::Critical,
                summary: format!(
                    "the upstream on port {port} refuses what the proxy at {proxy} forwards \
                     ({} {PROXY_ATTRIBUTION_REQUIRED}): the proxy is not in \
                     gateway.trustedProxies",
                    x.status.unwrap_or(0)
                ),
                first_move: MOVE_UNTRUSTED_PROXY,
                at_ns: x.request_ts_ns,
                evidence: vec![exchange_evidence(x, None)],
                counts: vec![("refused_requests", 1)],
                detail: json!({ "port": port, "proxy": proxy, "code": PROXY_ATTRIBUTION_REQUIRED }),
            },
            out,
        );
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
                     Upgrade/Connection (the proxy drops them), so no 101 comes back{}",
                    self.cite_text(port)
                ),
                first_move: MOVE_HALF_PATH,
                at_ns: x.request_ts_ns,
                evidence: vec![exchange_evidence(x, edge_status)],
                counts: vec![("failed_upgrades", 1)],
                // The locations that send requests there, when the configuration is known.
                detail: json!({ "port": port, "proxy_config": self.cite(port) }),
            },
            out,
        );
    }
}
