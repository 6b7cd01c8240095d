//! The rules, one file per family: what each record kind is checked for (`hop`, `request`),
//! then the families: upgrades (`upgrade`), Origins (`origin`), WebSocket session ends
//! (`sessions`), and upstream latency (`latency`). Each rule opens or joins incidents through
//! the engine (`super::engine`).
mod config;
mod latency;
mod origin;
mod sessions;
mod upgrade;
mod upstream;

use serde_json::{json, Value};

use super::*;

impl Engine {
    /// One hop record.
    pub fn hop(&mut self, r: &HopRecord, out: &mut Vec<Alert>) {
        if !self.cfg.enabled {
            return;
        }
        match r {
            HopRecord::Websocket(s) => {
                if let Some(evidence) = upstream::cut_by_upstream(s) {
                    self.upstream_cut(s.conn.server.port(), evidence, s.end_ts_ns);
                }
                self.timeout(s, out);
                self.reload(s, out);
                self.origin_closed(s, out);
            }
            HopRecord::Http(x) => {
                self.exchange(x, out);
                self.slowness(x, out);
            }
            HopRecord::Conn(c) => {
                let port = c.conn.server.port();
                match &c.kind {
                    // The tracker sees the Gateway's ports only: a refusal there is the
                    // Gateway down (or not up yet), never a proxy pointed elsewhere.
                    ConnEventKind::Refused if self.cfg.upstream_down.enabled => {
                        self.upstream_refused(c, out);
                    }
                    ConnEventKind::Connected { .. } => {
                        self.upstream_back(port, c.ts_ns, "a connect succeeded", out);
                    }
                    ConnEventKind::Reset { from } => {
                        let evidence = json!({
                            "at_ns": c.ts_ns,
                            "client": c.conn.client.to_string(),
                            "upstream": c.conn.server.to_string(),
                            "from": from,
                            "process": c.process,
                        });
                        if *from == Side::Server {
                            self.upstream_cut(port, evidence.clone(), c.ts_ns);
                        }
                        if !self.cfg.reset_storm.enabled {
                            return;
                        }
                        let window = ns(self.cfg.reset_storm.window);
                        self.resets.push_back((c.ts_ns, port, evidence.clone()));
                        let since = c.ts_ns.saturating_sub(window);
                        while self.resets.front().is_some_and(|(t, _, _)| *t < since)
                            || self.resets.len() > MAX_SESSIONS
                        {
                            self.resets.pop_front();
                        }
                        let n = self.resets.iter().filter(|(_, p, _)| *p == port).count();
                        if n >= self.cfg.reset_storm.count {
                            self.matched(
                                Match {
                                    key: format!("{}:{port}", rule::RESET_STORM),
                                    rule: rule::RESET_STORM,
                                    severity: Severity::Warning,
                                    summary: format!(
                                        "{n} connection resets on the hop to port {port} within {:.0} s",
                                        secs(window)
                                    ),
                                    first_move: MOVE_RESET_STORM,
                                    at_ns: c.ts_ns,
                                    evidence: vec![evidence],
                                    counts: vec![("resets", 1)],
                                    detail: json!({ "resets_in_window": n, "port": port }),
                                },
                                out,
                            );
                        }
                    }
                    _ => {}
                }
            }
            HopRecord::Loss(_) => {}
        }
    }

    /// One joined request (edge access log and hop).
    pub fn request(&mut self, r: &JoinedRequest, out: &mut Vec<Alert>) {
        if !self.cfg.enabled {
            return;
        }
        let Some(edge) = r.edge.as_ref() else {
            return;
        };
        // The edge's 502/504 that a refused connect explains: the Gateway is down.
        if let Some(refused) = r.refused.as_ref() {
            if self.cfg.upstream_down.enabled && matches!(edge.status, 502 | 504) {
                let evidence = edge_evidence(edge, &refused.conn.server.to_string());
                self.upstream_edge_error(refused.conn.server.port(), evidence, edge.end_ts_ns, out);
            }
        }
        // Half-path: the client asked the edge for an upgrade; the hop request lacks it.
        if let Some(hop) = r.hop.as_ref() {
            if self.cfg.upgrade_failure.enabled
                && edge.upgrade_requested()
                && !(hop.upgrade_websocket && hop.connection_upgrade)
                && hop.status != Some(426)
            {
                self.half_path(hop, Some(edge.status), out);
            }
        }
    }
}

pub(super) fn exchange_evidence(x: &HttpExchange, edge_status: Option<u16>) -> Value {
    json!({
        "at_ns": x.request_ts_ns,
        "request_id": x.request_id,
        "method": x.method,
        "path": x.path,
        "host": x.host,
        "origin": x.origin,
        "client": x.conn.client.to_string(),
        "upstream": x.conn.server.to_string(),
        "upgrade_header": x.upgrade_websocket,
        "connection_upgrade": x.connection_upgrade,
        "status": x.status,
        "edge_status": edge_status,
        "ttfb_s": x.ttfb_ns.map(secs),
    })
}

/// An access-log record as evidence, with the upstream address it went to.
pub(super) fn edge_evidence(edge: &crate::edge::EdgeRecord, upstream: &str) -> Value {
    json!({
        "at_ns": edge.end_ts_ns,
        "request_id": edge.request_id,
        "edge_status": edge.status,
        "host": edge.host,
        "path": edge.path,
        "client": edge.client,
        "upstream": upstream,
    })
}

pub(super) fn session_evidence(s: &WsSession) -> Value {
    json!({
        "request_id": s.request_id,
        "client": s.conn.client.to_string(),
        "upstream": s.conn.server.to_string(),
        "origin": s.origin,
        "ended_ns": s.end_ts_ns,
        "end": s.end,
        "idle_before_end_s": secs(s.idle_before_end_ns),
        "duration_s": secs(s.duration_ns),
    })
}
