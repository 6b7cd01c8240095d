//! WebSocket session ends: idle timeouts of the proxy, and reload bursts.
use serde_json::{json, Value};

use super::{super::*, session_evidence};

impl Engine {
    pub(super) fn timeout(&mut self, s: &WsSession, out: &mut Vec<Alert>) {
        let r = &self.cfg.timeout_disconnect;
        if !r.enabled {
            return;
        }
        // The proxy (the hop's client side) ended it without a close frame, after a silence.
        let by_proxy = matches!(
            s.end,
            SessionEnd::FinWithoutClose { from: Side::Client }
                | SessionEnd::Reset { from: Side::Client }
        );
        if !by_proxy || s.idle_before_end_ns < ns(r.min_idle) {
            return;
        }
        // The proxy's configuration says which timeout this is: the first session is enough.
        let (min_sessions, tol) = (r.min_sessions, r.tolerance);
        if self.configured_timeout(s, out) {
            return;
        }
        let port = s.conn.server.port();
        let evidence = session_evidence(s);
        self.idle_closes
            .push_back((s.end_ts_ns, port, s.idle_before_end_ns, evidence.clone()));
        // The cluster is looked for among the sessions of the last quiet period (bounded).
        let since = s.end_ts_ns.saturating_sub(ns(self.cfg.quiet_period));
        while self.idle_closes.front().is_some_and(|(t, ..)| *t < since)
            || self.idle_closes.len() > MAX_SESSIONS
        {
            self.idle_closes.pop_front();
        }
        let idle = s.idle_before_end_ns as f64;
        let members: Vec<&(u64, u16, u64, Value)> = self
            .idle_closes
            .iter()
            .filter(|(_, p, i, _)| *p == port && ((*i as f64) - idle).abs() <= idle * tol)
            .collect();
        if members.len() < min_sessions {
            return;
        }
        let mut sorted: Vec<u64> = members.iter().map(|(_, _, i, _)| *i).collect();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let n = sorted.len();
        let bucket = secs(median).round() as u64;
        // One incident per upstream port; the observed value is in the summary and detail.
        let key = format!("{}:{port}", rule::TIMEOUT);
        // Opening: the whole cluster is the evidence; joining: this session.
        let items = if self.open.contains_key(&key) {
            vec![evidence]
        } else {
            members.iter().map(|(.., e)| e.clone()).collect()
        };
        let opening = !self.open.contains_key(&key);
        let counts = vec![("sessions", if opening { n as u64 } else { 1 })];
        self.matched(
            Match {
                key,
                rule: rule::TIMEOUT,
                severity: Severity::Warning,
                summary: format!(
                    "{n} WebSocket session(s) to port {port} were closed by the proxy without a \
                     close frame after ~{:.1} s idle: a proxy read timeout of about {bucket} s \
                     (nginx's proxy_read_timeout defaults to 60 s); clients see 1006",
                    secs(median)
                ),
                first_move: MOVE_TIMEOUT,
                at_ns: s.end_ts_ns,
                evidence: items,
                counts,
                detail: json!({
                    "port": port,
                    "observed_idle_s": secs(median),
                    "sessions_in_cluster": n,
                    "likely_setting": "proxy_read_timeout (nginx) / the reverse proxy's read or idle timeout",
                    "recommended_s": 600,
                }),
            },
            out,
        );
    }

    pub(super) fn reload(&mut self, s: &WsSession, out: &mut Vec<Alert>) {
        let r = &self.cfg.reload_burst;
        if !r.enabled {
            return;
        }
        // Ended from the proxy's side: no close frame, or the proxy's own "going away".
        let by_proxy = match &s.end {
            SessionEnd::FinWithoutClose { from } | SessionEnd::Reset { from } => {
                *from == Side::Client
            }
            SessionEnd::CloseHandshake { first_close_from } => {
                *first_close_from == Side::Client
                    && s.closes
                        .iter()
                        .find(|c| c.from == Side::Client)
                        .is_some_and(|c| c.code == Some(1001))
            }
            SessionEnd::Open => false,
        };
        if !by_proxy {
            return;
        }
        let (min_sessions, window) = (r.min_sessions, ns(r.window));
        let port = s.conn.server.port();
        let evidence = session_evidence(s);
        self.proxy_closes
            .push_back((s.end_ts_ns, port, evidence.clone()));
        let since = s.end_ts_ns.saturating_sub(window);
        while self.proxy_closes.front().is_some_and(|(t, ..)| *t < since)
            || self.proxy_closes.len() > MAX_SESSIONS
        {
            self.proxy_closes.pop_front();
        }
        let members: Vec<&(u64, u16, Value)> = self
            .proxy_closes
            .iter()
            .filter(|(_, p, _)| *p == port)
            .collect();
        let n = members.len();
        if n < min_sessions {
            return;
        }
        let key = format!("{}:{port}", rule::RELOAD_BURST);
        let opening = !self.open.contains_key(&key);
        let items = if opening {
            members.iter().map(|(.., e)| e.clone()).collect()
        } else {
            vec![evidence]
        };
        let first = members.first().map_or(s.end_ts_ns, |m| m.0);
        self.matched(
            Match {
                key,
                rule: rule::RELOAD_BURST,
                severity: Severity::Warning,
                summary: format!(
                    "{n} WebSocket sessions to port {port} were closed by the proxy within {:.1} s: \
                     a proxy reload or restart disconnected everyone at once",
                    secs(s.end_ts_ns.saturating_sub(first))
                ),
                first_move: MOVE_RELOAD,
                at_ns: s.end_ts_ns,
                evidence: items,
                counts: vec![("sessions", if opening { n as u64 } else { 1 })],
                detail: json!({ "port": port, "window_s": secs(window) }),
            },
            out,
        );
    }
}
