//! Alert rules from the runbook's symptom table. Pure: records in, alert transitions out, in
//! the records' own time, so `replay` gives the same alerts as live. Exposure drift is judged
//! by its own tracker (`exposure::policy`); its transitions pass through here so that every
//! alert reaches the same sinks.
//!
//! Lifecycle: a rule that matches opens an incident under a deduplication key (rule plus
//! subject, e.g. the upstream port); further matches join it (counted, their evidence kept up
//! to a bound) instead of firing again, so one incident is one alert. An incident resolves when
//! its cause is seen going away (a connect to a port that refused, a 101 after failed
//! upgrades, latency back under the threshold, the exposure gone) or, for the others, once no
//! evidence came for the quiet period. After a resolution the same key is in cooldown: a new
//! incident meanwhile is tracked silently and announced only if it outlasts the cooldown.
//! Exposure drift is exempt from the cooldown (every re-exposure is told).
mod config;
mod engine;
mod rules;
pub mod webhook;

pub use config::*;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Duration,
};

use serde::Serialize;
use serde_json::{json, Value};

pub use crate::exposure::policy::{AlertState as State, Severity};
use crate::{
    edge::join::JoinedRequest,
    exposure::policy::AlertEvent,
    hop::{ConnEventKind, ExchangeOutcome, HopRecord, HttpExchange, SessionEnd, Side, WsSession},
};

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
    pub evidence: Value,
    pub fired_at_ns: u64,
    pub at_ns: u64,
}

impl From<&AlertEvent> for Alert {
    /// An exposure drift transition; its evidence is the exposure (socket, process,
    /// container or NAT rule) as it was when the alert fired.
    fn from(a: &AlertEvent) -> Self {
        Self {
            state: a.state,
            rule: a.rule,
            severity: a.severity,
            dedup_key: a.dedup_key.clone(),
            summary: a.summary.clone(),
            first_move: a.first_move,
            evidence: serde_json::to_value(&a.evidence).unwrap_or(Value::Null),
            fired_at_ns: a.fired_at_ns,
            at_ns: a.at_ns,
        }
    }
}

/// Rule names (the `rule` of an alert; the prefix of its deduplication key).
pub mod rule {
    pub const TIMEOUT: &str = "hop.timeout_disconnect";
    pub const RELOAD_BURST: &str = "hop.reload_burst";
    pub const UPGRADE_FAILURE: &str = "hop.upgrade_failure";
    pub const ORIGIN_REJECTED: &str = "hop.origin_rejected";
    pub const STALE_PORT: &str = "hop.stale_upstream_port";
    pub const UPSTREAM_DOWN: &str = "hop.upstream_down";
    pub const UNTRUSTED_PROXY: &str = "hop.untrusted_proxy";
    pub const RESET_STORM: &str = "hop.reset_storm";
    pub const SLOWNESS: &str = "hop.upstream_slowness";
}

const MOVE_TIMEOUT: &str = "Raise the proxy's read timeout for the Gateway's location (nginx: \
    proxy_read_timeout and proxy_send_timeout 600s or more; the runbook says at least 600 s), \
    and confirm Upgrade survives the proxy; or have clients ping more often than the timeout.";
const MOVE_RELOAD: &str = "Check the proxy's reloads and restarts at that time (systemctl status, \
    journalctl -u caddy / nginx): Caddy drops every WebSocket on a config reload. Reload in a \
    change window, and make clients reconnect with backoff.";
const MOVE_HALF_PATH: &str = "Confirm Upgrade survives the proxy: nginx needs \
    `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header \
    Connection \"upgrade\";` in the Gateway's location (Caddy's reverse_proxy forwards them by \
    itself).";
const MOVE_NO_101: &str = "The upstream answered an upgrade without 101: check that the proxy \
    points at the Gateway (not another service on that port) and the Gateway's logs for the \
    handshake error (a 403 is a refusal at the handshake: the Gateway's auth or proxy \
    settings).";
const MOVE_ORIGIN: &str = "Rewrite gateway.controlUi.allowedOrigins to include the exact https \
    origin users type (scheme, host and port), then fully restart the Gateway; a 403 at the \
    handshake can also mean the proxy is missing from gateway.trustedProxies.";
const MOVE_STALE_PORT: &str = "Public 502 while local curl works: the proxy sends requests to a \
    port that is not the Gateway's. Point the proxy's upstream (nginx proxy_pass / Caddy \
    reverse_proxy) at the address the Gateway listens on (`edgewatch exposure` shows it), \
    then reload the proxy.";
/// The Gateway's error code for a forwarded request from a proxy it does not trust.
const PROXY_ATTRIBUTION_REQUIRED: &str = "proxy_attribution_required";
const MOVE_UNTRUSTED_PROXY: &str =
    "Add the proxy's address (the evidence's client address, as the \
    Gateway sees it) to gateway.trustedProxies in the Gateway's config, keep the proxy setting \
    X-Forwarded-For, then restart the Gateway. Not an Origin problem.";
const MOVE_UPSTREAM_DOWN: &str = "The Gateway is down: check its process and container \
    (docker ps, docker logs, journalctl) and why it stopped (the evidence says whether it \
    crashed and which process held the port); the proxy answers 502 until it listens again.";
const MOVE_RESET_STORM: &str = "Find which side resets (the evidence says): an upstream that \
    crashes or restarts, a proxy limit, or a firewall; check the Gateway's logs and restarts.";
const MOVE_SLOW: &str = "The upstream is slow to answer (the hop's time to first byte, not the \
    network to the client): check the Gateway's load, memory and logs, and the slowest request \
    ids in the evidence.";

/// Evidence items kept per incident (the counts keep going).
const MAX_EVIDENCE: usize = 20;
/// Samples kept per port for the latency percentile.
const MAX_SAMPLES: usize = 10_000;
/// Sessions kept for clustering.
const MAX_SESSIONS: usize = 1000;

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// One rule match.
struct Match {
    key: String,
    rule: &'static str,
    severity: Severity,
    summary: String,
    first_move: &'static str,
    at_ns: u64,
    evidence: Vec<Value>,
    /// Added to the incident's counts.
    counts: Vec<(&'static str, u64)>,
    detail: Value,
}

#[derive(Clone, Debug)]
struct Incident {
    rule: &'static str,
    severity: Severity,
    summary: String,
    first_move: &'static str,
    fired_at_ns: u64,
    last_match_ns: u64,
    counts: BTreeMap<&'static str, u64>,
    evidence: Vec<Value>,
    detail: Value,
    /// Opened during its key's cooldown: not announced (yet).
    silenced: bool,
}

/// Time to first byte at one upstream port over the slowness rule's window.
#[derive(Debug, Default)]
struct TtfbWindow {
    /// (request time, ttfb), oldest first: 16 bytes a sample. With a slow one's request id
    /// beside each, a busy port's 10,000 took 640 KiB, more than a core's L2, and each
    /// exchange's push and trim were a cache miss each.
    samples: VecDeque<(u64, u64)>,
    /// The request ids of the samples over the rule's threshold, in their order: one a slow
    /// sample, so their count says which side of the threshold the percentile is on
    /// (`rules::latency`).
    slow_ids: VecDeque<Option<crate::hop::RequestId>>,
    /// When (record time) the percentile was last judged.
    last_eval: u64,
    /// The incident's key, `hop.upstream_slowness:<port>`, made once.
    key: String,
}

/// The rules' state.
#[derive(Debug, Default)]
pub struct Engine {
    cfg: AlertsConfig,
    open: BTreeMap<String, Incident>,
    /// Keys in cooldown, until when.
    cooling: BTreeMap<String, u64>,
    /// Proxy-closed idle sessions: (end, port, idle before the end, evidence).
    idle_closes: VecDeque<(u64, u16, u64, Value)>,
    /// Proxy-closed sessions: (end, port, evidence).
    proxy_closes: VecDeque<(u64, u16, Value)>,
    resets: VecDeque<(u64, u16, Value)>,
    /// Time to first byte per upstream port.
    ttfb: BTreeMap<u16, TtfbWindow>,
    /// Origins refused per incident key (bounded: the sender chooses them).
    origins: BTreeMap<String, DistinctValues>,
    /// The Gateway's ports that are down now (no listener, or refusing), by port.
    downs: BTreeMap<u16, Down>,
    /// Connections the upstream cut recently: (when, port, evidence).
    upstream_cuts: VecDeque<(u64, u16, Value)>,
    /// Informational records waiting to be taken (`take_notices`).
    notices: Vec<Notice>,
    /// The proxy's routes as last read (`proxy_config`), for citing directives.
    proxy_routes: Vec<crate::proxy::Route>,
}

/// An informational record: something worth a line in the output, not an alert (the
/// Gateway restarted within its grace period).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Notice {
    pub at_ns: u64,
    pub kind: &'static str,
    pub summary: String,
    pub detail: Value,
}

/// A Gateway port without a listener, announced or not yet.
#[derive(Debug)]
struct Down {
    since_ns: u64,
    announced: bool,
    listener_gone: bool,
    crash: bool,
    process: Option<Value>,
    refused: u64,
    edge_errors: u64,
    cut_sessions: u64,
    /// Counts and evidence not yet passed to the incident.
    new_refused: u64,
    new_edge_errors: u64,
    new_cut: u64,
    pending: Vec<Value>,
}

impl Down {
    fn new(since_ns: u64) -> Self {
        Self {
            since_ns,
            announced: false,
            listener_gone: false,
            crash: false,
            process: None,
            refused: 0,
            edge_errors: 0,
            cut_sessions: 0,
            new_refused: 0,
            new_edge_errors: 0,
            new_cut: 0,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, evidence: Value) {
        if self.pending.len() < MAX_EVIDENCE {
            self.pending.push(evidence);
        }
    }
}

/// The distinct values an incident lists, bounded: strangers choose them (an Origin header),
/// so at most `alerts.max_listed_values` are kept, each cut to [`MAX_VALUE_LEN`] bytes, and the
/// matches with any other value are counted as "more".
#[derive(Debug, Default)]
struct DistinctValues {
    kept: BTreeSet<String>,
    /// Matches whose value was not among the kept ones once the set was full.
    more: u64,
}

/// The default of `alerts.max_listed_values`.
const MAX_DISTINCT_VALUES: usize = 32;
/// Bytes kept of one such value.
const MAX_VALUE_LEN: usize = 200;

impl DistinctValues {
    /// Adds a value; true when the text listing them changes (a new kept value, or the first
    /// one beyond the limit).
    fn add(&mut self, value: &str, max: usize) -> bool {
        let value = truncate_value(value);
        if self.kept.contains(value.as_ref()) {
            return false;
        }
        if self.kept.len() >= max {
            self.more += 1;
            return self.more == 1;
        }
        self.kept.insert(value.into_owned());
        true
    }

    /// "a, b, c", or "a, b, c and others" once the limit is reached (the detail counts them).
    fn list(&self) -> String {
        let mut text = self.kept.iter().cloned().collect::<Vec<_>>().join(", ");
        if self.more > 0 {
            text.push_str(" and others");
        }
        text
    }
}

/// A value cut to [`MAX_VALUE_LEN`] bytes (at a character boundary), marked when cut.
fn truncate_value(v: &str) -> std::borrow::Cow<'_, str> {
    if v.len() <= MAX_VALUE_LEN {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut end = MAX_VALUE_LEN;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...", &v[..end]))
}

#[cfg(test)]
mod tests;
