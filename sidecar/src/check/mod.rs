//! `edgewatch check`: the runbook's golden path as one command. This module is the pure part:
//! facts in (the exposure inventory, the certificate chain the edge served and what verifying
//! it said, what the client got, what the passive probes saw on the hop), steps with a
//! verdict, evidence and the runbook's first move out. `run` does the I/O.
pub mod tls;

use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    exposure::{
        policy::{Policy, Verdict},
        Exposure, Scope,
    },
    hop::{ConnEventKind, HopRecord, HttpExchange, SessionEnd, Side, WsSession},
};

/// A step's verdict.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One step of the golden path.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Step {
    /// `bind`, `proxy`, `tls`, `http`, `websocket`, `idle`.
    pub step: &'static str,
    pub status: Status,
    pub summary: String,
    /// The runbook's first move, when the step did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_move: Option<String>,
    pub evidence: Value,
}

impl Step {
    pub fn new(step: &'static str, status: Status, summary: String, evidence: Value) -> Self {
        Self {
            step,
            status,
            summary,
            first_move: None,
            evidence,
        }
    }

    pub fn with_move(mut self, first_move: &str) -> Self {
        self.first_move = Some(first_move.to_owned());
        self
    }
}

/// The exit status for a set of steps: 0 only when every step passed (skipped ones aside).
pub fn exit_code(steps: &[Step]) -> u8 {
    match steps.iter().map(|s| s.status).max() {
        Some(Status::Fail) => 1,
        Some(Status::Warn) => 2,
        _ => 0,
    }
}

const MOVE_BIND: &str = "Bind the Gateway to loopback (gateway.bind / --bind loopback, or publish \
    it as 127.0.0.1:18789:18789 in Docker) and keep only the reverse proxy on 443; remember \
    Docker's DNAT bypasses ufw.";
const MOVE_NOT_LISTENING: &str = "Nothing listens on the upstream port: start the Gateway, or \
    check which port it binds and point the proxy at it.";

/// Step 1: the upstream port listens on loopback only and nothing publishes it.
pub fn bind_step(port: u16, exposures: &[Exposure], policy: &Policy) -> Step {
    let mine: Vec<&Exposure> = exposures
        .iter()
        .filter(|e| policy.touches_watched(e) == Some(port))
        .collect();
    let evidence = json!({ "port": port, "exposures": mine });
    let drift: Vec<String> = mine
        .iter()
        .filter_map(|e| match policy.assess(e) {
            Verdict::Drift(f) => Some(f.summary),
            _ => None,
        })
        .collect();
    if !drift.is_empty() {
        return Step::new("bind", Status::Fail, drift.join("; "), evidence).with_move(MOVE_BIND);
    }
    let listening = mine.iter().any(
        |e| matches!(e, Exposure::Listener(l) if l.port == port && l.scope == Scope::Loopback),
    );
    if !listening {
        return Step::new(
            "bind",
            Status::Fail,
            format!("nothing listens on upstream port {port}"),
            evidence,
        )
        .with_move(MOVE_NOT_LISTENING);
    }
    Step::new(
        "bind",
        Status::Pass,
        format!("upstream port {port} listens on loopback only and nothing publishes it"),
        evidence,
    )
}

/// The proxy's configuration as `check` read it.
#[derive(Clone, Debug, Default)]
pub struct ProxyFacts {
    /// Configurations read (nginx masters).
    pub sources: Vec<String>,
    /// Those that could not be read, with why.
    pub unreadable: Vec<String>,
    /// Locations that proxy to the upstream port.
    pub routes_to_port: Vec<String>,
    pub findings: Vec<edgewatch_core::proxy::Finding>,
}

/// Step 2: the proxy's configuration, read as it runs: `config.*` findings fail (critical) or
/// warn; no proxy configuration found is a skip.
pub fn proxy_step(port: u16, facts: &ProxyFacts) -> Step {
    let evidence = json!({
        "sources": facts.sources,
        "unreadable": facts.unreadable,
        "routes_to_port": facts.routes_to_port,
        "findings": facts.findings.iter().map(|f| json!({
            "rule": f.rule,
            "severity": f.severity.as_str(),
            "at": f.at.to_string(),
            "summary": f.summary,
        })).collect::<Vec<_>>(),
    });
    if let Some(worst) = facts.findings.iter().max_by_key(|f| f.severity) {
        let status = if worst.severity == crate::exposure::policy::Severity::Critical {
            Status::Fail
        } else {
            Status::Warn
        };
        let more = match facts.findings.len() {
            1 => String::new(),
            n => format!(" (and {} more finding(s))", n - 1),
        };
        return Step::new(
            "proxy",
            status,
            format!("{} at {}{more}", worst.summary, worst.at),
            evidence,
        )
        .with_move(worst.first_move);
    }
    if !facts.unreadable.is_empty() {
        return Step::new(
            "proxy",
            Status::Warn,
            format!(
                "the proxy's configuration could not be read: {}",
                facts.unreadable.join("; ")
            ),
            evidence,
        );
    }
    if facts.sources.is_empty() {
        return Step::new(
            "proxy",
            Status::Skip,
            "the edge is not served by an nginx master or Caddy on this machine (its configuration is not read)".to_owned(),
            evidence,
        );
    }
    if facts.routes_to_port.is_empty() {
        return Step::new(
            "proxy",
            Status::Warn,
            format!("no nginx location proxies to upstream port {port}"),
            evidence,
        )
        .with_move(MOVE_NOT_LISTENING);
    }
    Step::new(
        "proxy",
        Status::Pass,
        format!(
            "{} proxies to port {port} with the WebSocket headers, the request id and long timeouts",
            facts.routes_to_port.join(", ")
        ),
        evidence,
    )
}

/// What the client saw of a plain request through the edge.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ClientResponse {
    /// None: no HTTP response at all (the reason says why).
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The `X-Request-ID` the edge returned, if any.
    pub request_id: Option<String>,
}

/// What the passive probes saw on the hop for the check's own requests.
#[derive(Clone, Debug, Default)]
pub struct HopView {
    /// The probes ran (false: not root, or they could not load; the reason is in `why`).
    pub available: bool,
    pub why: Option<String>,
    pub records: Vec<HopRecord>,
    /// Where the proxy sent the check's requests, by nonce, from its access log
    /// (`upstream_addr`), when the config names the log.
    pub proxied_to: Vec<(String, String)>,
    /// Where the Gateway's port has listeners (the socket inventory).
    pub gateway: Vec<String>,
}

impl HopView {
    /// The exchange whose path carries `nonce`.
    pub fn exchange(&self, nonce: &str) -> Option<&HttpExchange> {
        self.records.iter().find_map(|r| match r {
            HopRecord::Http(x) if x.path.contains(nonce) => Some(x),
            _ => None,
        })
    }

    /// The WebSocket session whose path carries `nonce`.
    pub fn session(&self, nonce: &str) -> Option<&WsSession> {
        self.records.iter().find_map(|r| match r {
            HopRecord::Websocket(s) if s.path.contains(nonce) => Some(s),
            _ => None,
        })
    }

    /// Where the proxy sent the request marked `nonce` (its access log), if known.
    pub fn proxied_to(&self, nonce: &str) -> Option<&str> {
        self.proxied_to
            .iter()
            .find(|(n, _)| n == nonce)
            .map(|(_, a)| a.as_str())
    }

    /// Refused connects to the upstream port.
    pub fn refused(&self, port: u16) -> usize {
        self.records
            .iter()
            .filter(|r| {
                matches!(r, HopRecord::Conn(c) if c.kind == ConnEventKind::Refused && c.conn.server.port() == port)
            })
            .count()
    }
}

const MOVE_STALE: &str = "Public 502 while the Gateway is down or elsewhere: the proxy connects \
    to a port nothing listens on. Walk the compose and publish maps hop by hop and fix the \
    proxy's upstream (nginx proxy_pass / Caddy reverse_proxy) or the Gateway's port.";
const MOVE_NOT_FORWARDED: &str = "The request never reached the watched upstream port: check \
    the proxy's site (server_name / site address) and upstream address.";
const MOVE_REQUEST_ID: &str = "Forward the edge's request id upstream (nginx: \
    `proxy_set_header X-Request-ID $request_id;`, Caddy: `request_header X-Request-ID \
    {http.request.uuid}`) so the edge's log and the hop can be joined.";

fn no_exchange(
    view: &HopView,
    nonce: &str,
    port: u16,
    step: &'static str,
    what: &str,
    evidence: Value,
) -> Step {
    // The proxy's own log says where it sent the request: elsewhere than the Gateway.
    if let Some(to) = view.proxied_to(nonce) {
        let last = to.rsplit(',').next().unwrap_or(to).trim();
        let other = last
            .parse::<std::net::SocketAddr>()
            .map_or(true, |a| a.port() != port);
        if other {
            let gateway = if view.gateway.is_empty() {
                format!("the Gateway's port is {port}, where nothing listens now")
            } else {
                format!("the Gateway listens on {}", view.gateway.join(", "))
            };
            return Step::new(
                step,
                Status::Fail,
                format!(
                    "{what}: the proxy sends the request to {last} (its access log), not to the Gateway's port {port}; {gateway} (stale upstream port)"
                ),
                evidence,
            )
            .with_move(MOVE_STALE);
        }
    }
    let refused = view.refused(port);
    if refused > 0 {
        return Step::new(
            step,
            Status::Fail,
            format!(
                "{what}: the proxy's connects to upstream port {port} were refused ({refused}): nothing listens there (stale upstream port)"
            ),
            evidence,
        )
        .with_move(MOVE_STALE);
    }
    Step::new(
        step,
        Status::Fail,
        format!("{what}, and the hop to upstream port {port} saw no such request"),
        evidence,
    )
    .with_move(MOVE_NOT_FORWARDED)
}

/// Step 3: a plain request through the edge, seen on the hop with a request id.
pub fn http_step(client: &ClientResponse, view: &HopView, nonce: &str, port: u16) -> Step {
    let hop = view.exchange(nonce);
    let evidence = json!({ "client": client, "hop": hop, "passive": view.available });
    let Some(status) = client.status else {
        return Step::new(
            "http",
            Status::Fail,
            format!(
                "no HTTP answer through the edge: {}",
                client.error.as_deref().unwrap_or("unknown error")
            ),
            evidence,
        )
        .with_move(MOVE_NOT_FORWARDED);
    };
    if !view.available {
        let s = if status < 500 {
            Status::Warn
        } else {
            Status::Fail
        };
        return Step::new(
            "http",
            s,
            format!(
                "the edge answered {status}; the hop could not be watched ({})",
                view.why.as_deref().unwrap_or("probes unavailable")
            ),
            evidence,
        );
    }
    let Some(hop) = hop else {
        return no_exchange(
            view,
            nonce,
            port,
            "http",
            &format!("the edge answered {status}"),
            evidence,
        );
    };
    if hop.status != Some(status) && !matches!(hop.status, Some(s) if s >= 500) {
        return Step::new(
            "http",
            Status::Warn,
            format!(
                "the edge answered {status} but the upstream answered {}: the proxy rewrote it",
                hop.status.map_or("nothing".into(), |s| s.to_string())
            ),
            evidence,
        );
    }
    if hop.error_code.as_deref() == Some(PROXY_ATTRIBUTION_REQUIRED) {
        return untrusted_proxy("http", status, hop, evidence);
    }
    if status >= 500 {
        return Step::new(
            "http",
            Status::Fail,
            format!("the upstream answers {status}"),
            evidence,
        )
        .with_move("Check the Gateway's logs and health (`/readyz`).");
    }
    if status >= 400 {
        // No step passes on an error, whatever else looks right.
        return Step::new(
            "http",
            Status::Fail,
            format!(
                "the upstream answers {status}{}",
                hop.error_code
                    .as_deref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            ),
            evidence,
        )
        .with_move("Check the Gateway's logs for why it refuses the request.");
    }
    let Some(rid) = hop.request_id.as_deref() else {
        return Step::new(
            "http",
            Status::Warn,
            format!("the edge answered {status} and the upstream saw the request, but without an X-Request-ID"),
            evidence,
        )
        .with_move(MOVE_REQUEST_ID);
    };
    if client.request_id.as_deref().is_some_and(|c| c != rid) {
        return Step::new(
            "http",
            Status::Warn,
            format!(
                "the edge returned request id {} but forwarded {rid}",
                client.request_id.as_deref().unwrap_or("")
            ),
            evidence,
        )
        .with_move(MOVE_REQUEST_ID);
    }
    Step::new(
        "http",
        Status::Pass,
        format!(
            "the edge answered {status}; the upstream saw the same request with request id {rid}"
        ),
        evidence,
    )
}

/// What the WebSocket client got.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WsClient {
    /// The handshake's status (101 when it upgraded).
    pub status: Option<u16>,
    pub error: Option<String>,
    /// A close frame the server sent right after the upgrade (code, reason).
    pub closed_with: Option<(u16, String)>,
    pub origin: String,
    /// The upstream spoke first with the Gateway's `connect.challenge`.
    pub gateway: bool,
    /// How the Gateway ended a second session in which the check sent a Control UI's first
    /// request (no credentials): it judges the Origin there (code, reason).
    pub connect_probe: Option<(u16, String)>,
}

const MOVE_HALF_PATH: &str = "Confirm Upgrade survives the proxy: nginx needs \
    `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header \
    Connection \"upgrade\";` in the Gateway's location.";
const MOVE_ORIGIN: &str = "Add the exact https origin users type (scheme, host and port) to \
    gateway.controlUi.allowedOrigins and fully restart the Gateway; a 403 at the handshake can \
    also mean the proxy is missing from gateway.trustedProxies.";

/// The Gateway's error code for a forwarded request from a proxy it does not trust.
const PROXY_ATTRIBUTION_REQUIRED: &str = "proxy_attribution_required";
const MOVE_UNTRUSTED: &str = "Add the proxy's address (as the Gateway sees it) to \
    gateway.trustedProxies, keep the proxy setting X-Forwarded-For, then restart the Gateway. \
    Not an Origin problem.";

/// The Gateway refused what the proxy forwarded: the proxy is not in its trustedProxies.
fn untrusted_proxy(step: &'static str, status: u16, hop: &HttpExchange, evidence: Value) -> Step {
    Step::new(
        step,
        Status::Fail,
        format!(
            "the upstream answers {status} {PROXY_ATTRIBUTION_REQUIRED}: the proxy at {} is not in gateway.trustedProxies",
            hop.conn.client.ip()
        ),
        evidence,
    )
    .with_move(MOVE_UNTRUSTED)
}

/// Step 4 when the upgrade got its 101: the Gateway's verdict on the Origin, or an early close.
fn upgraded_step(client: &WsClient, evidence: Value) -> Step {
    // The Gateway judges the Origin only at the first request: the probe's close says.
    if let Some((code, reason)) = &client.connect_probe {
        if *code == 1008 && reason.to_ascii_lowercase().contains("origin") {
            return Step::new(
                "websocket",
                Status::Fail,
                format!(
                    "upgraded, but the Gateway refuses Origin {} at the first request (1008: {reason})",
                    client.origin
                ),
                evidence,
            )
            .with_move(MOVE_ORIGIN);
        }
    }
    if let Some((code, reason)) = &client.closed_with {
        // The Gateway closes 1008 for other reasons too: only one that names the Origin.
        if *code == 1008 && reason.to_ascii_lowercase().contains("origin") {
            return Step::new(
                "websocket",
                Status::Fail,
                format!(
                    "upgraded, then the upstream closed with 1008 ({reason}): it refuses Origin {}",
                    client.origin
                ),
                evidence,
            )
            .with_move(MOVE_ORIGIN);
        }
        return Step::new(
            "websocket",
            Status::Fail,
            format!("upgraded, then closed at once with {code} ({reason})"),
            evidence,
        );
    }
    let probed = match &client.connect_probe {
        Some((code, reason)) => format!(
            "; the Gateway accepted the Origin at the first request (it then ended the check's unauthenticated session: {code} {reason})"
        ),
        None if client.gateway => {
            "; the Gateway's Origin check could not be probed".to_owned()
        }
        None => String::new(),
    };
    Step::new(
        "websocket",
        Status::Pass,
        format!("upgraded (101) with Origin {}{probed}", client.origin),
        evidence,
    )
}

/// Step 4: a real upgrade through the edge, localised with the hop when it fails.
pub fn ws_step(client: &WsClient, view: &HopView, nonce: &str, port: u16) -> Step {
    let hop = view.exchange(nonce);
    let evidence = json!({ "client": client, "hop": hop, "passive": view.available });
    if client.status == Some(101) {
        return upgraded_step(client, evidence);
    }
    let what = match (client.status, &client.error) {
        (Some(s), _) => format!("the upgrade was answered {s}"),
        (None, Some(e)) => format!("the upgrade failed: {e}"),
        (None, None) => "the upgrade failed".to_owned(),
    };
    if !view.available {
        return Step::new(
            "websocket",
            Status::Fail,
            format!(
                "{what} (the hop could not be watched to say where: {})",
                view.why.as_deref().unwrap_or("probes unavailable")
            ),
            evidence,
        );
    }
    let Some(hop) = hop else {
        return no_exchange(view, nonce, port, "websocket", &what, evidence);
    };
    refused_step(&what, hop, evidence)
}

/// Step 4 when the upgrade failed and the hop saw the request: why, from what it carried
/// and how the upstream answered.
fn refused_step(what: &str, hop: &HttpExchange, evidence: Value) -> Step {
    if !(hop.upgrade_websocket && hop.connection_upgrade) {
        return Step::new(
            "websocket",
            Status::Fail,
            format!(
                "{what}: the upstream received the request without {} (the proxy drops them: the WebSocket half-path)",
                match (hop.upgrade_websocket, hop.connection_upgrade) {
                    (false, false) => "Upgrade and Connection: upgrade",
                    (false, true) => "Upgrade",
                    _ => "Connection: upgrade",
                }
            ),
            evidence,
        )
        .with_move(MOVE_HALF_PATH);
    }
    if hop.error_code.as_deref() == Some(PROXY_ATTRIBUTION_REQUIRED) {
        return untrusted_proxy("websocket", hop.status.unwrap_or(0), hop, evidence);
    }
    if hop.status == Some(403) {
        let code = hop.error_code.as_deref();
        if code.is_some_and(|c| c.to_ascii_lowercase().contains("origin")) {
            return Step::new(
                "websocket",
                Status::Fail,
                format!(
                    "{what}: the upstream refused the upgrade with 403 for Origin {} ({})",
                    hop.origin.as_deref().unwrap_or("(none)"),
                    code.unwrap_or("")
                ),
                evidence,
            )
            .with_move(MOVE_ORIGIN);
        }
        return Step::new(
            "websocket",
            Status::Fail,
            format!(
                "{what}: the upstream refused the upgrade at the handshake (403{})",
                code.map(|c| format!(" {c}")).unwrap_or_default()
            ),
            evidence,
        )
        .with_move(
            "Check the Gateway's logs for the refusal: its auth settings, gateway.trustedProxies \
             (the proxy's address) and gateway.controlUi.allowedOrigins.",
        );
    }
    Step::new(
        "websocket",
        Status::Fail,
        format!(
            "{what}: the upstream answered {} instead of 101",
            hop.status.map_or("nothing".into(), |s| s.to_string())
        ),
        evidence,
    )
    .with_move(
        "Check that the proxy points at the Gateway and the Gateway's logs for the handshake.",
    )
}

/// How the idle hold ended.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum IdleEnd {
    /// Still open after the whole idle time.
    Survived { seconds: f64 },
    /// The connection ended after `after_s` seconds idle.
    Ended {
        after_s: f64,
        close_code: Option<u16>,
    },
}

const MOVE_TIMEOUT: &str = "Raise the proxy's read timeout for the Gateway's location (nginx: \
    proxy_read_timeout and proxy_send_timeout 600s or more; the runbook says at least 600 s).";

/// Step 5: the session held idle.
pub fn idle_step(end: &IdleEnd, view: &HopView, nonce: &str) -> Step {
    let session = view.session(nonce);
    let evidence = json!({ "client": end, "hop": session });
    match end {
        IdleEnd::Survived { seconds } => Step::new(
            "idle",
            Status::Pass,
            format!("the session survived {seconds:.0} s idle"),
            evidence,
        ),
        IdleEnd::Ended {
            after_s,
            close_code,
        } => {
            let by = session.map(|s| &s.end);
            let (who, proxy) = match by {
                Some(SessionEnd::FinWithoutClose { from: Side::Client })
                | Some(SessionEnd::Reset { from: Side::Client }) => (
                    "the proxy closed the upstream connection without a close frame".to_owned(),
                    true,
                ),
                Some(SessionEnd::FinWithoutClose { from: Side::Server })
                | Some(SessionEnd::Reset { from: Side::Server }) => (
                    "the upstream closed it without a close frame".to_owned(),
                    false,
                ),
                Some(SessionEnd::CloseHandshake { first_close_from }) => (
                    format!(
                        "a close handshake started by the {}",
                        match first_close_from {
                            Side::Client => "proxy",
                            Side::Server => "upstream",
                        }
                    ),
                    *first_close_from == Side::Client,
                ),
                _ if close_code.is_none() => (
                    "it ended without a close frame (1006); the hop did not show who closed it"
                        .to_owned(),
                    true,
                ),
                _ => ("it was closed".to_owned(), false),
            };
            let mut step = Step::new(
                "idle",
                Status::Fail,
                format!(
                    "the idle session ended after {after_s:.1} s: {who}{}",
                    if proxy {
                        format!(
                            "; the proxy's read timeout is about {:.0} s",
                            after_s.round()
                        )
                    } else {
                        String::new()
                    }
                ),
                evidence,
            );
            if proxy {
                step = step.with_move(MOVE_TIMEOUT);
            }
            step
        }
    }
}

#[cfg(test)]
mod tests;
