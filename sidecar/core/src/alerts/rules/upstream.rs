//! The upstream's lifecycle and where the proxy sends requests.
//!
//! - **Upstream down** (`hop.upstream_down`): the Gateway's own port (a hop port) has no
//!   listener. Its listener leaving LISTEN (live), refused connects to it, the edge's 502/504
//!   they explain: one incident, announced (critical) only once the port has been down for
//!   `alerts.upstream_down.grace`, a period that covers a normal start or restart, and resolved
//!   when a listener or a successful connect is back. Back within the grace period, it is one
//!   informational record (`upstream` line), never an alert: a Gateway that starts is not a
//!   misconfigured proxy. Sessions cut by the upstream (reset, or FIN without a close frame)
//!   together with its listener going away are a crash, and the incident says so.
//! - **Stale upstream port** (`hop.stale_upstream_port`): the edge answers 502/504 for requests
//!   it sent to an address that is not the Gateway's port: the proxy points elsewhere. Live,
//!   the socket inventory adds whether anything listens there.
use serde_json::json;

use super::{super::*, edge_evidence, session_evidence};
use crate::{edge::EdgeRecord, hop::ConnEvent};

/// Upstream cuts this close to the listener going away make it a crash.
const CRASH_WINDOW_NS: u64 = 2_000_000_000;

impl Engine {
    /// The Gateway's port `port` lost its last listener (`up` false) or got one back, at
    /// `at_ns`; `process` is who held or holds it.
    pub fn upstream_listener(
        &mut self,
        port: u16,
        up: bool,
        process: Option<Value>,
        at_ns: u64,
        out: &mut Vec<Alert>,
    ) {
        if !(self.cfg.enabled && self.cfg.upstream_down.enabled) {
            return;
        }
        if up {
            self.upstream_back(port, at_ns, "its listener is back", out);
            return;
        }
        let cut = self
            .upstream_cuts
            .iter()
            .filter(|(t, p, _)| *p == port && at_ns.saturating_sub(*t) <= CRASH_WINDOW_NS)
            .count() as u64;
        let down = self.downs.entry(port).or_insert_with(|| Down::new(at_ns));
        down.listener_gone = true;
        down.process = process.or(down.process.take());
        if cut > 0 {
            down.crash = true;
            down.cut_sessions += cut;
            down.new_cut += cut;
        }
        self.upstream_update(port, at_ns, out);
    }

    /// A connect to the Gateway's port was refused.
    pub(super) fn upstream_refused(&mut self, c: &ConnEvent, out: &mut Vec<Alert>) {
        let port = c.conn.server.port();
        let cut = self
            .upstream_cuts
            .iter()
            .filter(|(t, p, _)| *p == port && c.ts_ns.saturating_sub(*t) <= CRASH_WINDOW_NS)
            .count() as u64;
        let down = self.downs.entry(port).or_insert_with(|| {
            // Sessions cut just before the first refusal: it went away with them.
            let mut d = Down::new(c.ts_ns);
            if cut > 0 {
                d.crash = true;
                d.cut_sessions = cut;
                d.new_cut = cut;
            }
            d
        });
        down.refused += 1;
        down.new_refused += 1;
        down.push(json!({
            "at_ns": c.ts_ns,
            "refused": c.conn.client.to_string(),
            "upstream": c.conn.server.to_string(),
            "process": c.process,
        }));
        self.upstream_update(port, c.ts_ns, out);
    }

    /// The edge's 502/504 for a request whose connect was refused.
    pub(super) fn upstream_edge_error(
        &mut self,
        port: u16,
        evidence: Value,
        at_ns: u64,
        out: &mut Vec<Alert>,
    ) {
        let down = self.downs.entry(port).or_insert_with(|| Down::new(at_ns));
        down.edge_errors += 1;
        down.new_edge_errors += 1;
        down.push(evidence);
        self.upstream_update(port, at_ns, out);
    }

    /// A connection the upstream cut (reset, or a session it ended without a close frame).
    pub(super) fn upstream_cut(&mut self, port: u16, evidence: Value, at_ns: u64) {
        self.upstream_cuts
            .push_back((at_ns, port, evidence.clone()));
        while self.upstream_cuts.len() > MAX_SESSIONS
            || self
                .upstream_cuts
                .front()
                .is_some_and(|(t, _, _)| at_ns.saturating_sub(*t) > CRASH_WINDOW_NS)
        {
            self.upstream_cuts.pop_front();
        }
        if let Some(down) = self.downs.get_mut(&port) {
            if down.listener_gone && at_ns.saturating_sub(down.since_ns) <= CRASH_WINDOW_NS {
                down.crash = true;
                down.cut_sessions += 1;
                down.new_cut += 1;
                down.push(evidence);
            }
        }
    }

    /// A connect to the Gateway's port succeeded, or its listener is back.
    pub(super) fn upstream_back(&mut self, port: u16, at_ns: u64, how: &str, out: &mut Vec<Alert>) {
        let Some(down) = self.downs.remove(&port) else {
            return;
        };
        let key = format!("{}:{port}", rule::UPSTREAM_DOWN);
        if down.announced {
            self.resolve(&key, at_ns, out);
            return;
        }
        // Back within the grace period: a start or a restart, told once, not an alert.
        let what = if down.crash {
            "crashed and came back"
        } else if down.listener_gone {
            "restarted"
        } else {
            "started"
        };
        self.notices.push(Notice {
            at_ns,
            kind: "upstream_restart",
            summary: format!(
                "the upstream on port {port} {what} within {:.1} s ({how}); {} connect(s) refused meanwhile",
                secs(at_ns.saturating_sub(down.since_ns)),
                down.refused
            ),
            detail: json!({
                "port": port,
                "down_ns": down.since_ns,
                "up_ns": at_ns,
                "crash": down.crash,
                "listener_gone": down.listener_gone,
                "process": down.process,
                "refused_connects": down.refused,
                "edge_errors": down.edge_errors,
                "cut_sessions": down.cut_sessions,
            }),
        });
    }

    /// Announces a down port once it outlasted the grace period; joins later evidence to it.
    pub(super) fn upstream_update(&mut self, port: u16, now_ns: u64, out: &mut Vec<Alert>) {
        let grace = ns(self.cfg.upstream_down.grace);
        let Some(down) = self.downs.get_mut(&port) else {
            return;
        };
        if now_ns.saturating_sub(down.since_ns) < grace {
            return;
        }
        let first = !down.announced;
        down.announced = true;
        let how = if down.crash && down.listener_gone {
            format!(
                "crashed: it cut {} session(s) as its listener went away",
                down.cut_sessions
            )
        } else if down.crash {
            format!(
                "crashed: it cut {} session(s), then refused connects",
                down.cut_sessions
            )
        } else if down.listener_gone {
            "its listener went away".to_owned()
        } else {
            "nothing listens there".to_owned()
        };
        let summary = format!(
            "the upstream on port {port} is down ({how}) for {:.0} s: {} connect(s) refused, {} edge error(s)",
            secs(now_ns.saturating_sub(down.since_ns)),
            down.refused,
            down.edge_errors
        );
        let evidence = std::mem::take(&mut down.pending);
        let counts = vec![
            ("refused_connects", std::mem::take(&mut down.new_refused)),
            ("edge_errors", std::mem::take(&mut down.new_edge_errors)),
            ("cut_sessions", std::mem::take(&mut down.new_cut)),
        ];
        let detail = json!({
            "port": port,
            "down_since_ns": down.since_ns,
            "crash": down.crash,
            "listener_gone": down.listener_gone,
            "process": down.process,
        });
        // Announced at the time it was judged (first) or the evidence came (later).
        let at_ns = now_ns;
        let _ = first;
        self.matched(
            Match {
                key: format!("{}:{port}", rule::UPSTREAM_DOWN),
                rule: rule::UPSTREAM_DOWN,
                severity: Severity::Critical,
                summary,
                first_move: MOVE_UPSTREAM_DOWN,
                at_ns,
                evidence,
                counts: counts.into_iter().filter(|(_, n)| *n > 0).collect(),
                detail,
            },
            out,
        );
    }

    /// Time passing: down ports that outlasted the grace period are announced.
    pub(in crate::alerts) fn upstream_advance(&mut self, now_ns: u64, out: &mut Vec<Alert>) {
        let ports: Vec<u16> = self
            .downs
            .iter()
            .filter(|(_, d)| !d.announced)
            .map(|(p, _)| *p)
            .collect();
        for port in ports {
            self.upstream_update(port, now_ns, out);
        }
    }

    /// An edge record: a 502/504 for a request the proxy sent to an address that is not the
    /// Gateway's port is a stale upstream port. `listening`: whether anything listens at that
    /// address (live, from the socket inventory; unknown offline); `gateway`: where the
    /// Gateway's port has listeners.
    pub fn edge_upstream(
        &mut self,
        edge: &EdgeRecord,
        hop_ports: &[u16],
        listening: Option<bool>,
        gateway: &[String],
        out: &mut Vec<Alert>,
    ) {
        if !(self.cfg.enabled && self.cfg.stale_upstream_port.enabled) {
            return;
        }
        // nginx lists every address it tried ("a, b", and "a : b" across internal
        // redirects); the last one is the one that answered.
        let Some(upstream) = edge.upstream_addr.as_deref().and_then(|a| {
            a.rsplit(',')
                .next()
                .and_then(|s| s.rsplit(" : ").next())
                .and_then(|s| s.trim().parse::<std::net::SocketAddr>().ok())
        }) else {
            return;
        };
        if hop_ports.contains(&upstream.port()) {
            return;
        }
        let key = format!("{}:{upstream}", rule::STALE_PORT);
        if edge.status < 500 {
            // Something answers there now.
            self.resolve(&key, edge.end_ts_ns, out);
            return;
        }
        // Something listening there now (the line may be read after the fix) only keeps a
        // new incident from opening; an open one still gets the 502 as evidence.
        if !matches!(edge.status, 502 | 504)
            || (listening == Some(true) && !self.open.contains_key(&key))
        {
            return;
        }
        let nothing = if listening == Some(false) {
            "; nothing listens there"
        } else {
            ""
        };
        let gateway_text = gateway_text(gateway, hop_ports);
        self.matched(
            Match {
                key,
                rule: rule::STALE_PORT,
                severity: Severity::Critical,
                summary: format!(
                    "the edge answers {} because the proxy sends requests to {upstream}{nothing}; {gateway_text}{}",
                    edge.status,
                    self.cite_text(upstream.port())
                ),
                first_move: MOVE_STALE_PORT,
                at_ns: edge.end_ts_ns,
                evidence: vec![edge_evidence(edge, &upstream.to_string())],
                counts: vec![("edge_errors", 1)],
                detail: json!({
                    "upstream": upstream.to_string(),
                    "port": upstream.port(),
                    "listening": listening,
                    "gateway": gateway,
                    "gateway_ports": hop_ports,
                    "proxy_config": self.cite(upstream.port()),
                }),
            },
            out,
        );
    }

    /// A connect that failed, seen in the kernel, to an address that is not the Gateway's
    /// port: from a reverse proxy (`stale_upstream_port.proxies`) to a loopback or private
    /// address, it is the stale upstream port, the same incident the edge's 502s name.
    pub fn proxy_connect_failed(
        &mut self,
        remote: std::net::SocketAddr,
        process: &crate::hop::ProcessRef,
        at_ns: u64,
        hop_ports: &[u16],
        gateway: &[String],
        out: &mut Vec<Alert>,
    ) {
        let rule_cfg = &self.cfg.stale_upstream_port;
        let judged = self.cfg.enabled
            && rule_cfg.enabled
            && !hop_ports.contains(&remote.port())
            && rule_cfg.proxies.contains(&process.comm)
            && local_address(remote.ip());
        if !judged {
            return;
        }
        let gateway_text = gateway_text(gateway, hop_ports);
        self.matched(
            Match {
                key: format!("{}:{remote}", rule::STALE_PORT),
                rule: rule::STALE_PORT,
                severity: Severity::Critical,
                summary: format!(
                    "{} (pid {}) connects to {remote} and the connect fails: nothing listens there; {gateway_text}{}",
                    process.comm,
                    process.pid,
                    self.cite_text(remote.port())
                ),
                first_move: MOVE_STALE_PORT,
                at_ns,
                evidence: vec![json!({
                    "at_ns": at_ns,
                    "upstream": remote.to_string(),
                    "process": process,
                })],
                counts: vec![("failed_connects", 1)],
                detail: json!({
                    "upstream": remote.to_string(),
                    "port": remote.port(),
                    "listening": false,
                    "gateway": gateway,
                    "gateway_ports": hop_ports,
                    "proxy_config": self.cite(remote.port()),
                }),
            },
            out,
        );
    }

    /// Whether a stale-port incident is open (its end can come from any access-log line).
    pub fn stale_port_open(&self) -> bool {
        self.open.keys().any(|k| k.starts_with(rule::STALE_PORT))
    }

    /// Informational records (not alerts) since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }
}

/// Loopback, private (RFC 1918, unique local) or link-local: where a local upstream lives.
fn local_address(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => a.is_loopback() || a.is_private() || a.is_link_local(),
        std::net::IpAddr::V6(a) => {
            a.is_loopback()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private())
        }
    }
}

fn list_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A session the upstream ended without a close handshake it started (reset, or FIN with
/// no close frame): evidence of a cut, if it is one.
pub(super) fn cut_by_upstream(s: &WsSession) -> Option<Value> {
    match s.end {
        SessionEnd::Reset { from: Side::Server }
        | SessionEnd::FinWithoutClose { from: Side::Server } => Some(session_evidence(s)),
        _ => None,
    }
}

/// Where the Gateway is, for a stale-port summary.
fn gateway_text(gateway: &[String], hop_ports: &[u16]) -> String {
    if gateway.is_empty() {
        format!("the Gateway's port is {}", list_ports(hop_ports))
    } else {
        format!("the Gateway listens on {}", gateway.join(", "))
    }
}
