//! Post-incident timelines. Pure: the stored rows of a time range in (the same row structs
//! ClickHouse holds, so the offline path, which turns a capture and access logs into rows,
//! and the ClickHouse path give the same timeline), an ordered, grouped timeline out with a
//! summary on top. `render` writes it as text, JSON or a self-contained HTML page; `offline`
//! makes the rows of a capture; the sidecar's `timeline::source` reads them (I/O).
mod fleet;
pub mod offline;
pub mod render;
mod when;

pub use fleet::build;
use fleet::{sort_events, span};
pub use when::parse_time;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::store::rows::{AlertRow, ConnRow, EdgeRow, ExposureRow, HttpRow, RequestRow, WsRow};

/// Everything a timeline is made from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rows {
    pub exposure_changes: Vec<ExposureRow>,
    pub alerts: Vec<AlertRow>,
    pub conns: Vec<ConnRow>,
    pub http: Vec<HttpRow>,
    pub ws: Vec<WsRow>,
    pub edge: Vec<EdgeRow>,
    pub requests: Vec<RequestRow>,
    /// Incidents still open at the end of an offline run, as they stood then (ClickHouse
    /// holds transitions only: there, the last transition in the range stands for it).
    pub open_incidents: Vec<AlertRow>,
}

/// What to keep.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// Unix nanoseconds, inclusive.
    pub since_ns: i64,
    pub until_ns: i64,
    pub request_id: Option<String>,
    /// Upstream ports (hop records) or exposure ports; empty: all.
    pub ports: Vec<u16>,
    /// A client address as the edge logged it.
    pub client: Option<String>,
    /// Only the rows of this node (`store.node`); all nodes when `None`.
    pub node: Option<String>,
}

/// Which swimlane an event belongs to.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// The browser or API client, as the edge saw it.
    Client,
    /// The reverse proxy (its access log; the hop's client side).
    Edge,
    /// The Gateway (the hop's server side).
    Upstream,
    /// The machine: exposure changes and alerts.
    Host,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Client => "client",
            Lane::Edge => "edge",
            Lane::Upstream => "upstream",
            Lane::Host => "host",
        }
    }
}

/// One thing that happened.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// Unix nanoseconds.
    pub ts: i64,
    pub lane: Lane,
    /// `exposure`, `alert`, `edge_request`, `http`, `upgrade`, `ws_end`, `connect`, `refused`,
    /// `reset`, `loss`.
    pub kind: &'static str,
    /// Warning or worse: the line a reader looks for.
    pub notable: bool,
    pub text: String,
    /// The request the event belongs to, when known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The hop connection (`proxy addr:port -> upstream addr:port`), when known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub conn: String,
    /// The node it happened on, in a timeline of several nodes.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    pub detail: Value,
}

/// A request or a connection and its events (indices into `events`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Group {
    /// `request` or `connection`.
    pub kind: &'static str,
    pub key: String,
    pub events: Vec<usize>,
    /// The joined view of a request (edge and wire side by side), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined: Option<Value>,
}

/// The top of a timeline: what broke, when, and the likely cause.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub headline: String,
    /// Alerts that fired in the range (first transition per incident), most severe first.
    pub incidents: Vec<Value>,
    /// The first move of the most severe incident.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub likely_cause: Option<String>,
    /// Events by kind.
    pub counts: BTreeMap<&'static str, usize>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Timeline {
    pub since_ns: i64,
    pub until_ns: i64,
    pub summary: Summary,
    pub events: Vec<Event>,
    pub groups: Vec<Group>,
    /// The nodes whose rows it shows (`store.node` of each sidecar).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// A connect slower than this is a latency outlier (shown); faster ones are not listed.
pub const SLOW_CONNECT_NS: u64 = 100_000_000;

fn conn_key(client_addr: &str, client_port: u16, server_addr: &str, server_port: u16) -> String {
    format!("{client_addr}:{client_port} -> {server_addr}:{server_port}")
}

fn secs(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else {
        format!("{:.1}ms", ns as f64 / 1e6)
    }
}

fn opt_secs(ns: Option<u64>) -> String {
    ns.map_or("-".to_owned(), secs)
}

/// What a filter keeps: its time range and port, and the requests (by id, or by client
/// through the edge log and the join) and hop connections it is about.
struct Scope<'a> {
    filter: &'a Filter,
    wanted_ids: Option<Vec<String>>,
    wanted_conns: Option<Vec<String>>,
}

impl<'a> Scope<'a> {
    fn new(rows: &Rows, filter: &'a Filter) -> Self {
        // Requests the filter is about (by id, or by client through the edge log and the join),
        // and the hop connections that carried them.
        let wanted_ids: Option<Vec<String>> = match (&filter.request_id, &filter.client) {
            (Some(id), _) => Some(vec![id.clone()]),
            (None, Some(c)) => Some(
                rows.edge
                    .iter()
                    .filter(|e| &e.client == c && !e.request_id.is_empty())
                    .map(|e| e.request_id.clone())
                    .chain(
                        rows.requests
                            .iter()
                            .filter(|r| &r.client == c && !r.request_id.is_empty())
                            .map(|r| r.request_id.clone()),
                    )
                    .collect(),
            ),
            (None, None) => None,
        };
        let id_ok = |id: &str| {
            wanted_ids
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|w| w == id))
        };
        let wanted_conns: Option<Vec<String>> = wanted_ids.as_ref().map(|_| {
            rows.http
                .iter()
                .filter(|h| id_ok(&h.request_id))
                .map(|h| conn_key(&h.client_addr, h.client_port, &h.server_addr, h.server_port))
                .chain(rows.ws.iter().filter(|w| id_ok(&w.request_id)).map(|w| {
                    conn_key(&w.client_addr, w.client_port, &w.server_addr, w.server_port)
                }))
                .chain(
                    rows.requests
                        .iter()
                        .filter(|r| id_ok(&r.request_id) && !r.hop_client.is_empty())
                        .map(|r| r.hop_client.clone()),
                )
                .collect()
        });

        Self {
            filter,
            wanted_ids,
            wanted_conns,
        }
    }

    fn in_range(&self, ts: i64) -> bool {
        ts >= self.filter.since_ns && ts <= self.filter.until_ns
    }

    fn port_ok(&self, p: u16) -> bool {
        self.filter.ports.is_empty() || self.filter.ports.contains(&p)
    }

    fn id_ok(&self, id: &str) -> bool {
        self.wanted_ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|w| w == id))
    }

    fn conn_ok(&self, key: &str) -> bool {
        self.wanted_conns.as_ref().is_none_or(|cs| {
            cs.iter()
                .any(|c| c == key || key.starts_with(&format!("{c} ")))
        })
    }
}

/// Builds the timeline of `rows` that `filter` keeps.
/// The timeline of one node's rows (`fleet::build` splits and merges several).
fn build_one(rows: &Rows, filter: &Filter) -> Timeline {
    let scope = Scope::new(rows, filter);
    let mut events = Vec::new();
    exposure_events(rows, &scope, &mut events);
    alert_events(rows, &scope, &mut events);
    edge_events(rows, &scope, &mut events);
    http_events(rows, &scope, &mut events);
    ws_events(rows, &scope, &mut events);
    conn_events(rows, &scope, &mut events);
    sort_events(&mut events);
    // Events of a connection that carried exactly one request carry its id (a keep-alive
    // connection with several requests keeps them apart).
    let mut ids_of_conn: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| !e.conn.is_empty() && !e.request_id.is_empty())
    {
        ids_of_conn
            .entry(e.conn.as_str())
            .or_default()
            .insert(e.request_id.as_str());
    }
    let fill: Vec<(usize, String)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.request_id.is_empty() && !e.conn.is_empty())
        .filter_map(|(i, e)| {
            let ids = ids_of_conn.get(e.conn.as_str())?;
            (ids.len() == 1).then(|| {
                (
                    i,
                    ids.iter()
                        .next()
                        .map(|s| (*s).to_owned())
                        .unwrap_or_default(),
                )
            })
        })
        .collect();
    for (i, id) in fill {
        events[i].request_id = id;
    }
    assemble(events, rows, filter, Vec::new())
}

/// The timeline of ordered `events`: grouped, summarised, spanning the filter's range.
fn assemble(events: Vec<Event>, rows: &Rows, filter: &Filter, nodes: Vec<String>) -> Timeline {
    let groups = groups(&events, rows);
    let summary = summarize(&events, &rows.open_incidents);
    let (since_ns, until_ns) = span(&events, filter);
    Timeline {
        since_ns,
        until_ns,
        summary,
        events,
        groups,
        nodes,
    }
}

/// Exposure changes (only when the timeline is not about given requests).
fn exposure_events(rows: &Rows, s: &Scope<'_>, events: &mut Vec<Event>) {
    let in_range = |ts: i64| s.in_range(ts);
    let port_ok = |p: u16| s.port_ok(p);
    let scoped = s.wanted_ids.is_some();
    if !scoped {
        for x in &rows.exposure_changes {
            if !in_range(x.ts) || !port_ok(x.port) {
                continue;
            }
            let drift = x.verdict == "drift";
            events.push(Event {
                node: String::new(),
                ts: x.ts,
                lane: Lane::Host,
                kind: "exposure",
                notable: drift,
                text: format!(
                    "{} {} {}:{} {}{}{}",
                    if x.change == "removed" { "-" } else { "+" },
                    x.proto,
                    x.address,
                    x.port,
                    x.scope,
                    if x.comm.is_empty() {
                        String::new()
                    } else {
                        format!(" process={} ({})", x.comm, x.pid)
                    },
                    if drift {
                        format!(" [drift {}]", x.rule)
                    } else {
                        String::new()
                    }
                ),
                request_id: String::new(),
                conn: String::new(),
                detail: json!(x),
            });
        }
    }
}

/// Alert transitions (scoped to requests: the ones whose evidence names one).
fn alert_events(rows: &Rows, s: &Scope<'_>, events: &mut Vec<Event>) {
    let in_range = |ts: i64| s.in_range(ts);
    let port_ok = |p: u16| s.port_ok(p);
    let wanted_ids = &s.wanted_ids;
    let filter = s.filter;
    for a in &rows.alerts {
        if !in_range(a.ts) {
            continue;
        }
        let evidence: Value = serde_json::from_str(&a.evidence).unwrap_or(Value::Null);
        let a_port = evidence["detail"]["port"]
            .as_u64()
            .or(evidence["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        if !filter.ports.is_empty() && a_port.is_some_and(|p| !port_ok(p)) {
            continue;
        }
        // Scoped to requests: the alerts whose evidence names one of them.
        let mut about = String::new();
        if let Some(ids) = &wanted_ids {
            match ids.iter().find(|id| a.evidence.contains(id.as_str())) {
                Some(id) => about = id.clone(),
                None => continue,
            }
        }
        events.push(Event {
            node: String::new(),
            ts: a.ts,
            lane: Lane::Host,
            kind: "alert",
            notable: a.state == "firing",
            text: format!(
                "ALERT {} {} {}: {}",
                a.state.to_uppercase(),
                a.severity,
                a.rule,
                a.summary
            ),
            request_id: about,
            conn: String::new(),
            detail: json!({
                "rule": a.rule, "state": a.state, "severity": a.severity,
                "dedup_key": a.dedup_key, "summary": a.summary, "first_move": a.first_move,
                "evidence": evidence,
            }),
        });
    }
}

/// Access-log lines of the proxy.
fn edge_events(rows: &Rows, s: &Scope<'_>, events: &mut Vec<Event>) {
    let in_range = |ts: i64| s.in_range(ts);
    let id_ok = |id: &str| s.id_ok(id);
    let filter = s.filter;
    for e in &rows.edge {
        let start = e
            .request_time_ns
            .map_or(e.ts, |t| e.ts.saturating_sub(i64::try_from(t).unwrap_or(0)));
        if !(in_range(e.ts) || in_range(start)) || !id_ok(&e.request_id) {
            continue;
        }
        if let Some(c) = &filter.client {
            if &e.client != c {
                continue;
            }
        }
        if !filter.ports.is_empty() && !e.upstream_addr.is_empty() {
            let port = e
                .upstream_addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok());
            if !port.is_some_and(|p| filter.ports.contains(&p)) {
                continue;
            }
        }
        events.push(Event {
            node: String::new(),
            ts: start,
            lane: Lane::Client,
            kind: "client_request",
            notable: false,
            text: format!(
                "{} {} {}{}",
                if e.client.is_empty() { "client" } else { e.client.as_str() },
                e.method,
                e.host,
                e.path
            ),
            request_id: e.request_id.clone(),
            conn: String::new(),
            detail: json!({ "client": e.client, "host": e.host, "method": e.method, "path": e.path }),
        });
        events.push(Event {
            node: String::new(),
            ts: e.ts,
            lane: Lane::Edge,
            kind: "edge_request",
            notable: e.status >= 500,
            text: format!(
                "edge answered {} to {} {} after {} (upstream {} connect {} header {})",
                e.status,
                e.method,
                e.path,
                opt_secs(e.request_time_ns),
                if e.upstream_addr.is_empty() {
                    "-"
                } else {
                    e.upstream_addr.as_str()
                },
                opt_secs(e.upstream_connect_ns),
                opt_secs(e.upstream_header_ns),
            ),
            request_id: e.request_id.clone(),
            conn: String::new(),
            detail: json!(e),
        });
    }
}

/// HTTP exchanges on the hop.
fn http_events(rows: &Rows, s: &Scope<'_>, events: &mut Vec<Event>) {
    let in_range = |ts: i64| s.in_range(ts);
    let port_ok = |p: u16| s.port_ok(p);
    let id_ok = |id: &str| s.id_ok(id);
    let conn_ok = |key: &str| s.conn_ok(key);
    let scoped = s.wanted_ids.is_some();
    for h in &rows.http {
        let key = conn_key(&h.client_addr, h.client_port, &h.server_addr, h.server_port);
        if !in_range(h.ts)
            || !port_ok(h.server_port)
            || !(id_ok(&h.request_id) || (scoped && h.request_id.is_empty() && conn_ok(&key)))
        {
            continue;
        }
        let upgraded = h.outcome == "upgraded";
        let asked = h.upgrade_websocket && h.connection_upgrade;
        events.push(Event {
            node: String::new(),
            ts: h.ts,
            lane: Lane::Upstream,
            kind: if asked || upgraded { "upgrade" } else { "http" },
            notable: h.status.is_none_or(|s| s >= 500)
                || (asked && !upgraded)
                || (h.status == Some(426)),
            text: format!(
                "{} {} -> {} ttfb {} total {}{}",
                h.method,
                h.path,
                h.status.map_or("no response".to_owned(), |s| s.to_string()),
                opt_secs(h.ttfb_ns),
                opt_secs(h.total_ns),
                if asked {
                    " (upgrade requested)"
                } else if h.status == Some(426) {
                    " (no Upgrade header on the hop)"
                } else {
                    ""
                }
            ),
            request_id: h.request_id.clone(),
            conn: key,
            detail: json!(h),
        });
    }
}

/// WebSocket sessions on the hop.
fn ws_events(rows: &Rows, s: &Scope<'_>, events: &mut Vec<Event>) {
    let in_range = |ts: i64| s.in_range(ts);
    let port_ok = |p: u16| s.port_ok(p);
    let id_ok = |id: &str| s.id_ok(id);
    for w in &rows.ws {
        let key = conn_key(&w.client_addr, w.client_port, &w.server_addr, w.server_port);
        if !(in_range(w.ts) || in_range(w.end_ts))
            || !port_ok(w.server_port)
            || !id_ok(&w.request_id)
        {
            continue;
        }
        let by = match w.end_from.as_str() {
            "client" => "the proxy",
            "server" => "the upstream",
            _ => "-",
        };
        let closes: Vec<String> = w
            .close_code
            .iter()
            .zip(&w.close_from)
            .zip(&w.close_reason)
            .map(|((c, f), r)| {
                format!(
                    "{} from {}{}",
                    c.map_or("no code".to_owned(), |c| c.to_string()),
                    if f == "client" { "proxy" } else { "upstream" },
                    if r.is_empty() {
                        String::new()
                    } else {
                        format!(" ({r})")
                    }
                )
            })
            .collect();
        events.push(Event {
            node: String::new(),
            ts: w.end_ts,
            lane: Lane::Upstream,
            kind: "ws_end",
            notable: w.end_kind != "close_handshake",
            text: format!(
                "websocket {} ended: {} by {} after {} ({} idle before the end); frames proxy->upstream {} upstream->proxy {}{}",
                w.path,
                w.end_kind.replace('_', " "),
                by,
                secs(w.duration_ns),
                secs(w.idle_before_end_ns),
                w.client_text + w.client_binary + w.client_ping + w.client_pong + w.client_close + w.client_continuation,
                w.server_text + w.server_binary + w.server_ping + w.server_pong + w.server_close + w.server_continuation,
                if closes.is_empty() { String::new() } else { format!("; close {}", closes.join(", ")) }
            ),
            request_id: w.request_id.clone(),
            conn: key,
            detail: json!(w),
        });
    }
}

/// Connection events of the hop (connects, refusals, resets, losses).
fn conn_events(rows: &Rows, s: &Scope<'_>, events: &mut Vec<Event>) {
    let in_range = |ts: i64| s.in_range(ts);
    let port_ok = |p: u16| s.port_ok(p);
    let conn_ok = |key: &str| s.conn_ok(key);
    let scoped = s.wanted_ids.is_some();
    for c in &rows.conns {
        let key = conn_key(&c.client_addr, c.client_port, &c.server_addr, c.server_port);
        if !in_range(c.ts) || !port_ok(c.server_port) || (scoped && !conn_ok(&key)) {
            continue;
        }
        let proc_text = if c.comm.is_empty() {
            String::new()
        } else {
            format!(" by {} ({})", c.comm, c.pid)
        };
        let (kind, notable, text) = match c.kind.as_str() {
            "connected" => {
                let l = c.latency_ns.unwrap_or(0);
                if l < SLOW_CONNECT_NS {
                    continue;
                }
                (
                    "connect",
                    true,
                    format!("slow connect: {}{proc_text}", secs(l)),
                )
            }
            "refused" => (
                "refused",
                true,
                format!(
                    "connect to {}:{} refused (nothing listens){proc_text}",
                    c.server_addr, c.server_port
                ),
            ),
            "reset" => (
                "reset",
                true,
                format!(
                    "reset from the {}{proc_text}",
                    if c.side == "client" {
                        "proxy"
                    } else {
                        "upstream"
                    }
                ),
            ),
            _ => (
                "loss",
                false,
                format!(
                    "{} byte(s) not seen ({}, {} side)",
                    c.lost_bytes, c.effect, c.side
                ),
            ),
        };
        events.push(Event {
            node: String::new(),
            ts: c.ts,
            lane: Lane::Upstream,
            kind,
            notable,
            text,
            request_id: String::new(),
            conn: key,
            detail: json!(c),
        });
    }
}

fn groups(events: &[Event], rows: &Rows) -> Vec<Group> {
    // By node too: in a fleet timeline, each machine's requests and connections are its own.
    let mut by_request: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    let mut by_conn: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if !e.request_id.is_empty() {
            by_request
                .entry((e.node.as_str(), e.request_id.as_str()))
                .or_default()
                .push(i);
        } else if !e.conn.is_empty() {
            by_conn.entry(e.conn.as_str()).or_default().push(i);
        }
    }
    let mut out: Vec<Group> = by_request
        .into_iter()
        .map(|((node, id), idx)| Group {
            kind: "request",
            key: id.to_owned(),
            events: idx,
            joined: rows
                .requests
                .iter()
                .find(|r| r.request_id == id && (node.is_empty() || r.node == node))
                .map(|r| json!(r)),
        })
        .collect();
    out.extend(by_conn.into_iter().map(|(c, idx)| Group {
        kind: "connection",
        key: c.to_owned(),
        events: idx,
        joined: None,
    }));
    out.sort_by_key(|g| g.events.first().copied());
    out
}

fn summarize(events: &[Event], open: &[AlertRow]) -> Summary {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for e in events {
        *counts.entry(e.kind).or_default() += 1;
    }
    // Each incident as it stands: its last transition in the range, or, still firing at the
    // end of an offline run, its evidence and counts gathered until then (the same as its
    // firing transition when nothing joined it since, as ClickHouse would tell it).
    // Keyed by node and dedup key: two nodes' incidents of one rule stay two.
    let incident_key = |e: &Event| {
        format!(
            "{}|{}",
            e.node,
            e.detail["dedup_key"].as_str().unwrap_or("")
        )
    };
    let mut standing: BTreeMap<String, Value> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == "alert") {
        standing.insert(
            incident_key(e),
            json!({
                "state": e.detail["state"],
                "last_match_ns": e.detail["evidence"]["last_ns"],
                "evidence": e.detail["evidence"],
            }),
        );
    }
    for a in open {
        // Open incidents come from an offline run: one node, whose events carry none.
        if let Some(v) = standing.get_mut(&format!("|{}", a.dedup_key)) {
            let evidence = serde_json::from_str::<Value>(&a.evidence).unwrap_or(Value::Null);
            *v = json!({
                "state": "firing",
                "last_match_ns": evidence["last_ns"],
                "evidence": evidence,
            });
        }
    }
    // One entry per incident: its first transition in the range.
    let mut seen = std::collections::BTreeSet::new();
    let mut incidents: Vec<(&Event, Value)> = events
        .iter()
        .filter(|e| e.kind == "alert")
        .filter(|e| seen.insert(incident_key(e)))
        .map(|e| {
            let mut v = json!({
                "rule": e.detail["rule"],
                "dedup_key": e.detail["dedup_key"],
                "severity": e.detail["severity"],
                "state": e.detail["state"],
                "at_ns": e.ts,
                "summary": e.detail["summary"],
                "first_move": e.detail["first_move"],
                "standing": standing
                    .get(&incident_key(e))
                    .cloned()
                    .unwrap_or(Value::Null),
            });
            if !e.node.is_empty() {
                v["node"] = json!(e.node);
            }
            (e, v)
        })
        .collect();
    let rank = |s: &Value| if s == "critical" { 0 } else { 1 };
    incidents.sort_by_key(|(e, v)| (rank(&v["severity"]), e.ts));
    let likely_cause = incidents
        .first()
        .and_then(|(_, v)| v["first_move"].as_str().map(str::to_owned));
    let headline = match incidents.first() {
        Some((e, v)) => format!(
            "{} incident(s); first and most severe: {} at {} ({})",
            incidents.len(),
            v["rule"].as_str().unwrap_or(""),
            crate::time::rfc3339(u64::try_from(e.ts).unwrap_or(0)),
            v["severity"].as_str().unwrap_or("")
        ),
        None => {
            let notable = events.iter().filter(|e| e.notable).count();
            if notable == 0 {
                format!("no incident: {} event(s), none notable", events.len())
            } else {
                format!(
                    "no alert fired; {notable} notable event(s) of {}",
                    events.len()
                )
            }
        }
    };
    Summary {
        headline,
        incidents: incidents.into_iter().map(|(_, v)| v).collect(),
        likely_cause,
        counts,
    }
}

#[cfg(test)]
mod tests;
