//! Alert rules over the hop's records, from the runbook's symptom table. Pure: records in,
//! alert transitions out, in the records' own time (so `replay` gives the same alerts as
//! live). Exposure drift has its own tracker (`exposure::policy`).
//!
//! Lifecycle: a rule that matches opens an incident under a deduplication key (rule plus
//! subject, e.g. the upstream port); further matches join it (counted, their evidence kept up
//! to a bound) instead of firing again; the incident resolves once no match was seen for the
//! rule's quiet period.
//!
//! Status: the engine and the first hop rules (timeout-induced disconnects, stale upstream
//! port, reset storm); configuration, the remaining rules, sinks and live wiring come next.
use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

pub use crate::exposure::policy::{AlertState as State, Severity};
use crate::hop::{ConnEventKind, HopRecord, SessionEnd, Side, WsSession};

/// One alert transition.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Alert {
    pub state: State,
    pub rule: &'static str,
    pub severity: Severity,
    pub dedup_key: String,
    pub summary: String,
    /// The runbook's first move.
    pub first_move: &'static str,
    /// What matched: request ids, sockets, processes, counts, the time window.
    pub evidence: serde_json::Value,
    pub fired_at_ns: u64,
    pub at_ns: u64,
}

/// Rule settings (the defaults follow the runbook).
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// Timeout-induced disconnects: sessions the proxy closed without a close frame after at
    /// least `timeout_min_idle_ns` of silence, clustering (within `timeout_tolerance`) at one
    /// idle duration, `timeout_min_sessions` of them.
    pub timeout_enabled: bool,
    pub timeout_min_idle_ns: u64,
    pub timeout_min_sessions: usize,
    pub timeout_tolerance: f64,
    /// Stale upstream port: refused connects to an upstream port.
    pub stale_port_enabled: bool,
    /// Reset storm: this many resets within the window.
    pub reset_storm_enabled: bool,
    pub reset_storm_count: usize,
    pub reset_storm_window_ns: u64,
    /// An incident resolves after this long without a match.
    pub quiet_ns: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            timeout_enabled: true,
            timeout_min_idle_ns: 1_000_000_000,
            timeout_min_sessions: 2,
            timeout_tolerance: 0.1,
            stale_port_enabled: true,
            reset_storm_enabled: true,
            reset_storm_count: 20,
            reset_storm_window_ns: 60_000_000_000,
            quiet_ns: 600_000_000_000,
        }
    }
}

const MOVE_TIMEOUT: &str = "Raise the proxy's read timeout for the Gateway's location (nginx: \
    proxy_read_timeout and proxy_send_timeout 600s or more; the runbook says at least 600 s), \
    or have clients ping more often than the timeout.";
const MOVE_STALE_PORT: &str = "The proxy points at a port nothing listens on: check the \
    Gateway is running and which port it binds (`edgewatch exposure`), then fix the proxy's \
    upstream (nginx proxy_pass / Caddy reverse_proxy) or the Gateway's port.";
const MOVE_RESET_STORM: &str = "Find which side resets (the evidence says): an upstream that \
    crashes or restarts, a proxy limit, or a firewall; check the Gateway's logs and restarts.";

/// Evidence items kept per incident (the count keeps going).
const MAX_EVIDENCE: usize = 20;

#[derive(Clone, Debug)]
struct Incident {
    rule: &'static str,
    severity: Severity,
    summary: String,
    first_move: &'static str,
    fired_at_ns: u64,
    last_match_ns: u64,
    matches: u64,
    evidence: Vec<serde_json::Value>,
    extra: serde_json::Value,
}

/// The rules' state.
#[derive(Debug, Default)]
pub struct Engine {
    rules: Rules,
    open: BTreeMap<String, Incident>,
    /// Recent proxy-closed idle sessions: (end time, idle before end, evidence).
    idle_closes: VecDeque<(u64, u64, serde_json::Value)>,
    resets: VecDeque<(u64, serde_json::Value)>,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Engine {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    /// Incidents open now.
    pub fn firing(&self) -> usize {
        self.open.len()
    }

    /// Opens or joins an incident.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per rule, all named"
    )]
    fn matched(
        &mut self,
        key: String,
        rule: &'static str,
        severity: Severity,
        summary: String,
        first_move: &'static str,
        at_ns: u64,
        evidence: Vec<serde_json::Value>,
        extra: serde_json::Value,
        out: &mut Vec<Alert>,
    ) {
        if let Some(inc) = self.open.get_mut(&key) {
            inc.last_match_ns = inc.last_match_ns.max(at_ns);
            inc.matches += evidence.len() as u64;
            for e in evidence {
                if inc.evidence.len() < MAX_EVIDENCE {
                    inc.evidence.push(e);
                }
            }
            inc.summary = summary;
            inc.extra = extra;
            return;
        }
        let mut evidence = evidence;
        let matches = evidence.len() as u64;
        evidence.truncate(MAX_EVIDENCE);
        let inc = Incident {
            rule,
            severity,
            summary,
            first_move,
            fired_at_ns: at_ns,
            last_match_ns: at_ns,
            matches,
            evidence,
            extra,
        };
        out.push(alert(&key, &inc, State::Firing, at_ns));
        self.open.insert(key, inc);
    }

    /// One hop record.
    pub fn hop(&mut self, r: &HopRecord, out: &mut Vec<Alert>) {
        match r {
            HopRecord::Websocket(s) => self.session(s, out),
            HopRecord::Conn(c) => match &c.kind {
                ConnEventKind::Refused if self.rules.stale_port_enabled => {
                    let port = c.conn.server.port();
                    let evidence = serde_json::json!({
                        "at_ns": c.ts_ns,
                        "client": c.conn.client.to_string(),
                        "upstream": c.conn.server.to_string(),
                        "process": c.process,
                    });
                    self.matched(
                        format!("hop.stale_upstream_port:{port}"),
                        "hop.stale_upstream_port",
                        Severity::Critical,
                        format!(
                            "connects to upstream port {port} are refused: nothing listens there"
                        ),
                        MOVE_STALE_PORT,
                        c.ts_ns,
                        vec![evidence],
                        serde_json::json!({ "port": port }),
                        out,
                    );
                }
                ConnEventKind::Reset { from } if self.rules.reset_storm_enabled => {
                    let evidence = serde_json::json!({
                        "at_ns": c.ts_ns,
                        "client": c.conn.client.to_string(),
                        "upstream": c.conn.server.to_string(),
                        "from": from,
                        "process": c.process,
                    });
                    self.resets.push_back((c.ts_ns, evidence.clone()));
                    let since = c.ts_ns.saturating_sub(self.rules.reset_storm_window_ns);
                    while self.resets.front().is_some_and(|(t, _)| *t < since) {
                        self.resets.pop_front();
                    }
                    let n = self.resets.len();
                    if n >= self.rules.reset_storm_count {
                        let port = c.conn.server.port();
                        self.matched(
                            format!("hop.reset_storm:{port}"),
                            "hop.reset_storm",
                            Severity::Warning,
                            format!(
                                "{n} connection resets on the hop to port {port} within {:.0} s",
                                secs(self.rules.reset_storm_window_ns)
                            ),
                            MOVE_RESET_STORM,
                            c.ts_ns,
                            vec![evidence],
                            serde_json::json!({ "resets_in_window": n }),
                            out,
                        );
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn session(&mut self, s: &WsSession, out: &mut Vec<Alert>) {
        if !self.rules.timeout_enabled {
            return;
        }
        // The proxy (the hop's client side) ended it without a close frame, after a silence.
        let by_proxy = matches!(
            s.end,
            SessionEnd::FinWithoutClose { from: Side::Client }
                | SessionEnd::Reset { from: Side::Client }
        );
        if !by_proxy || s.idle_before_end_ns < self.rules.timeout_min_idle_ns {
            return;
        }
        let evidence = serde_json::json!({
            "request_id": s.request_id,
            "client": s.conn.client.to_string(),
            "upstream": s.conn.server.to_string(),
            "ended_ns": s.end_ts_ns,
            "idle_before_end_s": secs(s.idle_before_end_ns),
            "duration_s": secs(s.duration_ns),
        });
        self.idle_closes
            .push_back((s.end_ts_ns, s.idle_before_end_ns, evidence.clone()));
        // The cluster is looked for among the sessions of the last quiet period (bounded).
        let since = s.end_ts_ns.saturating_sub(self.rules.quiet_ns);
        while self.idle_closes.front().is_some_and(|(t, _, _)| *t < since)
            || self.idle_closes.len() > 1000
        {
            self.idle_closes.pop_front();
        }
        let idle = s.idle_before_end_ns as f64;
        let tol = self.rules.timeout_tolerance;
        let members: Vec<&(u64, u64, serde_json::Value)> = self
            .idle_closes
            .iter()
            .filter(|(_, i, _)| ((*i as f64) - idle).abs() <= idle * tol)
            .collect();
        let cluster: Vec<u64> = members.iter().map(|(_, i, _)| *i).collect();
        if cluster.len() < self.rules.timeout_min_sessions {
            return;
        }
        let mut sorted = cluster.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let port = s.conn.server.port();
        // One incident per upstream port; the observed value is in the summary and detail.
        let bucket = (secs(median)).round() as u64;
        let key = format!("hop.timeout_disconnect:{port}");
        // Opening: the whole cluster is the evidence; joining: this session.
        let items = if self.open.contains_key(&key) {
            vec![evidence]
        } else {
            members.iter().map(|(_, _, e)| e.clone()).collect()
        };
        self.matched(
            key,
            "hop.timeout_disconnect",
            Severity::Warning,
            format!(
                "{} WebSocket session(s) to port {port} were closed by the proxy without a close \
                 frame after ~{:.1} s idle: a proxy read timeout of about {bucket} s (nginx's \
                 proxy_read_timeout defaults to 60 s); clients see 1006",
                cluster.len(),
                secs(median)
            ),
            MOVE_TIMEOUT,
            s.end_ts_ns,
            items,
            serde_json::json!({
                "observed_idle_s": secs(median),
                "sessions": cluster.len(),
                "likely_setting": "proxy_read_timeout (nginx) / the reverse proxy's read or idle timeout",
                "recommended_s": 600,
            }),
            out,
        );
    }

    /// Moves time on (the newest record's time, or the clock live): incidents without a match
    /// for the quiet period resolve.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Alert>) {
        let quiet = self.rules.quiet_ns;
        let done: Vec<String> = self
            .open
            .iter()
            .filter(|(_, i)| now_ns.saturating_sub(i.last_match_ns) >= quiet)
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(inc) = self.open.remove(&key) {
                out.push(alert(&key, &inc, State::Resolved, now_ns));
            }
        }
    }
}

fn alert(key: &str, inc: &Incident, state: State, at_ns: u64) -> Alert {
    Alert {
        state,
        rule: inc.rule,
        severity: inc.severity,
        dedup_key: key.to_owned(),
        summary: inc.summary.clone(),
        first_move: inc.first_move,
        evidence: serde_json::json!({
            "matches": inc.matches,
            "first_ns": inc.fired_at_ns,
            "last_ns": inc.last_match_ns,
            "items": inc.evidence,
            "detail": inc.extra,
        }),
        fired_at_ns: inc.fired_at_ns,
        at_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hop::{ConnEvent, ConnId, FrameCounts};

    fn conn(client_port: u16) -> ConnId {
        ConnId {
            client: format!("127.0.0.1:{client_port}").parse().expect("addr"),
            server: "127.0.0.1:18789".parse().expect("addr"),
            first_seen_ns: 0,
        }
    }

    fn session(client_port: u16, end_ns: u64, idle_ns: u64, end: SessionEnd) -> HopRecord {
        HopRecord::Websocket(WsSession {
            conn: conn(client_port),
            request_id: Some(format!("rid{client_port}")),
            path: "/ws".into(),
            origin: None,
            upgraded_ts_ns: 0,
            end_ts_ns: end_ns,
            duration_ns: end_ns,
            client_frames: FrameCounts::default(),
            server_frames: FrameCounts::default(),
            closes: Vec::new(),
            end,
            longest_idle_ns: idle_ns,
            idle_before_end_ns: idle_ns,
            lost_sync: false,
        })
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn proxy_timeouts_cluster_into_one_incident_that_resolves() {
        let mut e = Engine::new(Rules::default());
        let mut out = Vec::new();
        let fin = SessionEnd::FinWithoutClose { from: Side::Client };
        e.hop(&session(1, 100 * S, 60 * S, fin.clone()), &mut out);
        assert!(out.is_empty(), "one session is not a cluster");
        e.hop(&session(2, 200 * S, 61 * S, fin.clone()), &mut out);
        assert_eq!(out.len(), 1);
        let a = &out[0];
        assert_eq!((a.state, a.rule), (State::Firing, "hop.timeout_disconnect"));
        assert!(
            a.summary.contains("about 61 s") || a.summary.contains("about 60 s"),
            "{}",
            a.summary
        );
        assert!(a.first_move.contains("600"));
        assert_eq!(a.evidence["detail"]["recommended_s"], 600);
        assert_eq!(
            a.evidence["items"].as_array().expect("items").len(),
            2,
            "the cluster that opened it is its evidence"
        );
        // A third joins it: no new alert.
        e.hop(&session(3, 300 * S, 60 * S, fin), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(e.firing(), 1);
        e.advance(300 * S + Rules::default().quiet_ns - 1, &mut out);
        assert_eq!(out.len(), 1, "not quiet long enough");
        e.advance(300 * S + Rules::default().quiet_ns, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].state, State::Resolved);
        assert_eq!(out[1].evidence["matches"], 3);
        assert_eq!(out[1].dedup_key, out[0].dedup_key);
    }

    #[test]
    fn clean_closes_and_upstream_closes_are_not_timeouts() {
        let mut e = Engine::new(Rules::default());
        let mut out = Vec::new();
        for i in 0..5 {
            e.hop(
                &session(
                    i,
                    u64::from(i) * S,
                    60 * S,
                    SessionEnd::CloseHandshake {
                        first_close_from: Side::Client,
                    },
                ),
                &mut out,
            );
            e.hop(
                &session(
                    100 + i,
                    u64::from(i) * S,
                    60 * S,
                    SessionEnd::FinWithoutClose { from: Side::Server },
                ),
                &mut out,
            );
            // Busy sessions the proxy closed without idling are not timeouts either.
            e.hop(
                &session(
                    200 + i,
                    u64::from(i) * S,
                    0,
                    SessionEnd::FinWithoutClose { from: Side::Client },
                ),
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn sessions_far_apart_do_not_cluster() {
        let mut e = Engine::new(Rules::default());
        let mut out = Vec::new();
        let fin = SessionEnd::FinWithoutClose { from: Side::Client };
        let apart = Rules::default().quiet_ns + S;
        e.hop(&session(1, 100 * S, 60 * S, fin.clone()), &mut out);
        e.hop(&session(2, 100 * S + apart, 60 * S, fin), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn refused_connects_name_the_stale_port_once() {
        let mut e = Engine::new(Rules::default());
        let mut out = Vec::new();
        for i in 0..3u16 {
            e.hop(
                &HopRecord::Conn(ConnEvent {
                    conn: conn(40000 + i),
                    ts_ns: u64::from(i) * S,
                    kind: ConnEventKind::Refused,
                    process: None,
                }),
                &mut out,
            );
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, "hop.stale_upstream_port");
        assert_eq!(out[0].severity, Severity::Critical);
        assert!(out[0].summary.contains("18789"));
    }

    #[test]
    fn a_reset_storm_needs_many_resets_in_the_window() {
        let rules = Rules {
            reset_storm_count: 3,
            reset_storm_window_ns: 10 * S,
            ..Rules::default()
        };
        let mut e = Engine::new(rules);
        let mut out = Vec::new();
        let reset = |port: u16, at: u64| {
            HopRecord::Conn(ConnEvent {
                conn: conn(port),
                ts_ns: at,
                kind: ConnEventKind::Reset { from: Side::Server },
                process: None,
            })
        };
        // Spread out: never three within ten seconds.
        for i in 0..5u16 {
            e.hop(&reset(i, u64::from(i) * 6 * S), &mut out);
        }
        assert!(out.is_empty());
        for i in 0..3u16 {
            e.hop(&reset(100 + i, 100 * S + u64::from(i) * S), &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, "hop.reset_storm");
    }

    #[test]
    fn the_recorded_idle_timeout_incident_fires_in_replay() {
        // The committed recording of nginx with proxy_read_timeout 2s closing an idle session.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/hop/idle_timeout.35057.pcap"
        );
        let bytes = std::fs::read(path).expect("fixture");
        let mut records = Vec::new();
        crate::replay::replay(&bytes[..], &[35057], |r| records.push(r.clone()), |_| {})
            .expect("replay");
        let mut e = Engine::new(Rules {
            timeout_min_sessions: 1,
            ..Rules::default()
        });
        let mut out = Vec::new();
        for r in &records {
            e.hop(r, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        let a = &out[0];
        assert_eq!(a.rule, "hop.timeout_disconnect");
        let idle = a.evidence["detail"]["observed_idle_s"]
            .as_f64()
            .expect("idle");
        assert!(
            (1.5..3.0).contains(&idle),
            "observed {idle} s, nginx was set to 2 s"
        );
        assert!(a.summary.contains("about 2 s"), "{}", a.summary);
    }
}
