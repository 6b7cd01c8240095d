//! Origins the upstream refuses (a 403 at the handshake, or a policy close after it).
use serde_json::{json, Value};

use super::{super::*, exchange_evidence};

impl Engine {
    /// A handshake answered 403.
    pub(super) fn origin_refused(&mut self, x: &HttpExchange, out: &mut Vec<Alert>) {
        if !self.cfg.origin_rejected.enabled {
            return;
        }
        let port = x.conn.server.port();
        let evidence = exchange_evidence(x, None);
        self.origin_match(
            port,
            x.origin.as_deref(),
            x.request_ts_ns,
            evidence,
            vec![("handshakes_403", 1)],
            out,
        );
    }

    /// A session the upstream closed with 1008 (policy violation) saying Origin: how the
    /// Gateway refuses an origin after the 101. It closes with 1008 for other reasons too
    /// (invalid connect parameters, a Control UI without device identity): only a reason
    /// that names the Origin makes it an Origin refusal.
    pub(super) fn origin_closed(&mut self, s: &WsSession, out: &mut Vec<Alert>) {
        if !self.cfg.origin_rejected.enabled {
            return;
        }
        let Some(close) = s.closes.iter().find(|c| {
            c.from == Side::Server
                && c.code == Some(1008)
                && c.reason.to_ascii_lowercase().contains("origin")
        }) else {
            return;
        };
        let evidence = json!({
            "request_id": s.request_id,
            "client": s.conn.client.to_string(),
            "upstream": s.conn.server.to_string(),
            "origin": s.origin,
            "path": s.path,
            "close_code": close.code,
            "close_reason": close.reason,
            "at_ns": close.ts_ns,
        });
        self.origin_match(
            s.conn.server.port(),
            s.origin.as_deref(),
            close.ts_ns,
            evidence,
            vec![("closes_1008", 1)],
            out,
        );
    }

    pub(super) fn origin_match(
        &mut self,
        port: u16,
        origin: Option<&str>,
        at_ns: u64,
        evidence: Value,
        counts: Vec<(&'static str, u64)>,
        out: &mut Vec<Alert>,
    ) {
        let key = format!("{}:{port}", rule::ORIGIN_REJECTED);
        let seen = self.origins.entry(key.clone()).or_default();
        let changed = seen.add(origin.unwrap_or("(none)"), self.cfg.max_listed_values);
        if !changed && self.open.contains_key(&key) {
            // Nothing new to say: the match is counted and its evidence kept (see `matched`:
            // an empty summary and a null detail leave the incident's text as it is); only
            // the count of other origins moves.
            let more = seen.more;
            if let Some(d) = self
                .open
                .get_mut(&key)
                .and_then(|inc| inc.detail.as_object_mut())
            {
                d.insert("more_origins".into(), json!(more));
            }
            self.matched(
                Match {
                    key,
                    rule: rule::ORIGIN_REJECTED,
                    severity: Severity::Warning,
                    summary: String::new(),
                    first_move: MOVE_ORIGIN,
                    at_ns,
                    evidence: vec![evidence],
                    counts,
                    detail: Value::Null,
                },
                out,
            );
            return;
        }
        let allowed = &self.cfg.origin_rejected.allowed_origins;
        let missing: Vec<&String> = if allowed.is_empty() {
            Vec::new()
        } else {
            seen.kept
                .iter()
                .filter(|o| !allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
                .collect()
        };
        let list = seen.list();
        let summary = if missing.is_empty() {
            format!(
                "the upstream on port {port} refuses WebSocket upgrades (403 or close 1008) for Origin {list}"
            )
        } else {
            format!(
                "the upstream on port {port} refuses WebSocket upgrades (403 or close 1008) for Origin {list}; allowedOrigins lacks {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let detail = json!({
            "port": port,
            "origins": seen.kept,
            "more_origins": seen.more,
            "missing_from_allowed_origins": missing,
            "allowed_origins": allowed,
        });
        self.matched(
            Match {
                key,
                rule: rule::ORIGIN_REJECTED,
                severity: Severity::Warning,
                summary,
                first_move: MOVE_ORIGIN,
                at_ns,
                evidence: vec![evidence],
                counts,
                detail,
            },
            out,
        );
    }
}
