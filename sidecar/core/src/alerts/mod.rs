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
pub mod webhook;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Duration,
};

use serde::{Deserialize, Serialize};
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

/// `[alerts]`: the rules, their lifecycle and where alerts go besides the output.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Evaluate alert rules at all (exposure drift included).
    pub enabled: bool,
    /// An incident whose cause cannot be seen going away resolves after this long without new
    /// evidence.
    #[serde(with = "humantime_serde")]
    pub quiet_period: Duration,
    /// After an incident resolves, the same incident does not fire again for this long (it is
    /// tracked, and announced if it outlasts the cooldown). Not applied to exposure drift.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Distinct values one incident lists (Origins; strangers choose them): beyond it the
    /// rest are only counted (`more_origins`).
    pub max_listed_values: usize,
    /// The exposure policy's findings (`exposure.*` rules; the policy is `[exposure]`).
    pub exposure_drift: Toggle,
    /// WebSocket sessions the proxy ended without a close frame after an idle gap, clustering
    /// at one duration: a proxy read timeout.
    pub timeout_disconnect: TimeoutRule,
    /// Many sessions closed by the proxy at once: a proxy reload or restart.
    pub reload_burst: BurstRule,
    /// An upgrade that did not make it: the proxy dropped Upgrade/Connection (the runbook's
    /// WebSocket half-path), or the upstream did not answer 101.
    pub upgrade_failure: Toggle,
    /// Upgrades refused by the upstream for their Origin (403, or close code 1008).
    pub origin_rejected: OriginRule,
    /// Connects to an upstream port refused (and the edge's 502/504 they explain).
    pub stale_upstream_port: Toggle,
    /// Many connection resets on the hop.
    pub reset_storm: ResetStormRule,
    /// Time to first byte on the hop over a threshold at a percentile.
    pub upstream_slowness: SlownessRule,
    /// Webhooks that receive every transition (`[[alerts.webhooks]]`).
    pub webhooks: Vec<webhook::WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            quiet_period: Duration::from_secs(600),
            cooldown: Duration::from_secs(300),
            max_listed_values: MAX_DISTINCT_VALUES,
            exposure_drift: Toggle::on(),
            timeout_disconnect: TimeoutRule::default(),
            reload_burst: BurstRule::default(),
            upgrade_failure: Toggle::on(),
            origin_rejected: OriginRule::default(),
            stale_upstream_port: Toggle::on(),
            reset_storm: ResetStormRule::default(),
            upstream_slowness: SlownessRule::default(),
            webhooks: Vec::new(),
        }
    }
}

/// A rule with nothing to tune.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Toggle {
    pub enabled: bool,
}

impl Toggle {
    fn on() -> Self {
        Self { enabled: true }
    }
}

impl Default for Toggle {
    fn default() -> Self {
        Self::on()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutRule {
    pub enabled: bool,
    /// Silence before the proxy's close that counts as idle.
    #[serde(with = "humantime_serde")]
    pub min_idle: Duration,
    /// Sessions that must cluster at one idle duration (within `tolerance`).
    pub min_sessions: usize,
    /// Relative spread of a cluster (0.1 = 10 %).
    pub tolerance: f64,
}

impl Default for TimeoutRule {
    fn default() -> Self {
        Self {
            enabled: true,
            min_idle: Duration::from_secs(1),
            min_sessions: 2,
            tolerance: 0.1,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BurstRule {
    pub enabled: bool,
    /// Sessions closed by the proxy ...
    pub min_sessions: usize,
    /// ... within this window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for BurstRule {
    fn default() -> Self {
        Self {
            enabled: true,
            min_sessions: 5,
            window: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OriginRule {
    pub enabled: bool,
    /// The Gateway's `gateway.controlUi.allowedOrigins`, when known: the alert then names the
    /// origins that are missing from it.
    pub allowed_origins: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResetStormRule {
    pub enabled: bool,
    /// Resets on the hop to one upstream port ...
    pub count: usize,
    /// ... within this window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for ResetStormRule {
    fn default() -> Self {
        Self {
            enabled: true,
            count: 20,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SlownessRule {
    pub enabled: bool,
    /// The percentile of time to first byte that is compared (1-100).
    pub percentile: f64,
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
    /// Over the exchanges of this window ...
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// ... when it holds at least this many.
    pub min_samples: usize,
}

impl Default for SlownessRule {
    fn default() -> Self {
        Self {
            enabled: true,
            percentile: 95.0,
            threshold: Duration::from_secs(2),
            window: Duration::from_secs(300),
            min_samples: 20,
        }
    }
}

impl Default for OriginRule {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_origins: Vec::new(),
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
    handshake error.";
const MOVE_ORIGIN: &str = "Rewrite gateway.controlUi.allowedOrigins to include the exact https \
    origin users type (scheme, host and port), then fully restart the Gateway; a 403 at the \
    handshake can also mean the proxy is missing from gateway.trustedProxies.";
const MOVE_STALE_PORT: &str = "Public 502 while local curl works: the proxy points at a port \
    nothing listens on. Walk the compose and publish maps hop by hop: is the Gateway running, \
    on which port (`edgewatch exposure`), and does the proxy's upstream (nginx proxy_pass / \
    Caddy reverse_proxy) match it?";
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

impl AlertsConfig {
    /// Checks values that the types alone do not constrain.
    pub fn validate(&self) -> crate::validate::Checked {
        let invalid = |key: &str, value: String, reason: &str| {
            crate::validate::Invalid::new(key, value, reason)
        };
        crate::validate::nonzero(&[("alerts.max_listed_values", self.max_listed_values)])?;
        let a = self;
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        let positive = [
            ("alerts.quiet_period", a.quiet_period),
            (
                "alerts.timeout_disconnect.min_idle",
                a.timeout_disconnect.min_idle,
            ),
            ("alerts.reload_burst.window", a.reload_burst.window),
            ("alerts.reset_storm.window", a.reset_storm.window),
            (
                "alerts.upstream_slowness.window",
                a.upstream_slowness.window,
            ),
            (
                "alerts.upstream_slowness.threshold",
                a.upstream_slowness.threshold,
            ),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(invalid(key, dur(d), "must be more than 0s"));
            }
        }
        let counts = [
            (
                "alerts.timeout_disconnect.min_sessions",
                a.timeout_disconnect.min_sessions,
            ),
            (
                "alerts.reload_burst.min_sessions",
                a.reload_burst.min_sessions,
            ),
            ("alerts.reset_storm.count", a.reset_storm.count),
            (
                "alerts.upstream_slowness.min_samples",
                a.upstream_slowness.min_samples,
            ),
        ];
        for (key, n) in counts {
            if n == 0 {
                return Err(invalid(key, "0".into(), "must be at least 1"));
            }
        }
        let tol = a.timeout_disconnect.tolerance;
        if !(0.0..1.0).contains(&tol) {
            return Err(invalid(
                "alerts.timeout_disconnect.tolerance",
                tol.to_string(),
                "a fraction from 0 up to (not including) 1, e.g. 0.1 for 10%",
            ));
        }
        let pct = a.upstream_slowness.percentile;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(invalid(
                "alerts.upstream_slowness.percentile",
                pct.to_string(),
                "a percentile above 0 and at most 100, e.g. 95",
            ));
        }
        for (i, w) in a.webhooks.iter().enumerate() {
            if let Err(reason) = w.check() {
                return Err(invalid(
                    &format!("alerts.webhooks[{i}].url"),
                    format!("{:?}", w.display_url()),
                    &reason,
                ));
            }
        }
        Ok(())
    }
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

type TtfbWindow = (VecDeque<(u64, u64, Option<String>)>, u64);

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
    /// Time to first byte per upstream port: (request time, ttfb, request id), and when the
    /// percentile was last computed.
    ttfb: BTreeMap<u16, TtfbWindow>,
    /// Origins refused per incident key (bounded: the sender chooses them).
    origins: BTreeMap<String, DistinctValues>,
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

impl Engine {
    pub fn new(cfg: AlertsConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    /// Incidents open now (announced or not).
    pub fn firing(&self) -> usize {
        self.open.values().filter(|i| !i.silenced).count()
    }

    /// The announced open incidents as firing alerts stamped `now_ns` (to send them again).
    pub fn open_alerts(&self, now_ns: u64) -> Vec<Alert> {
        self.open
            .iter()
            .filter(|(_, i)| !i.silenced)
            .map(|(k, i)| alert(k, i, State::Firing, now_ns))
            .collect()
    }

    /// Opens or joins an incident.
    fn matched(&mut self, m: Match, out: &mut Vec<Alert>) {
        let until = self.cooling.get(&m.key).copied();
        if let Some(inc) = self.open.get_mut(&m.key) {
            inc.last_match_ns = inc.last_match_ns.max(m.at_ns);
            for (k, n) in m.counts {
                *inc.counts.entry(k).or_default() += n;
            }
            for e in m.evidence {
                if inc.evidence.len() < MAX_EVIDENCE {
                    inc.evidence.push(e);
                }
            }
            // A rule with nothing new to say passes an empty summary and a null detail.
            if !m.summary.is_empty() {
                inc.summary = m.summary;
            }
            if !m.detail.is_null() {
                inc.detail = m.detail;
            }
            if inc.silenced && until.is_none_or(|u| m.at_ns >= u) {
                // It outlasted the cooldown: announce it now.
                inc.silenced = false;
                self.cooling.remove(&m.key);
                out.push(alert(&m.key, inc, State::Firing, m.at_ns));
            }
            return;
        }
        let silenced = until.is_some_and(|u| m.at_ns < u);
        let mut evidence = m.evidence;
        evidence.truncate(MAX_EVIDENCE);
        let inc = Incident {
            rule: m.rule,
            severity: m.severity,
            summary: m.summary,
            first_move: m.first_move,
            fired_at_ns: m.at_ns,
            last_match_ns: m.at_ns,
            counts: m.counts.into_iter().collect(),
            evidence,
            detail: m.detail,
            silenced,
        };
        if !silenced {
            self.cooling.remove(&m.key);
            out.push(alert(&m.key, &inc, State::Firing, m.at_ns));
        }
        self.open.insert(m.key, inc);
    }

    /// Ends an incident (its cause went away, or it was quiet long enough).
    fn resolve(&mut self, key: &str, at_ns: u64, out: &mut Vec<Alert>) {
        let Some(inc) = self.open.remove(key) else {
            return;
        };
        self.origins.remove(key);
        if inc.silenced {
            return;
        }
        out.push(alert(key, &inc, State::Resolved, at_ns));
        let cooldown = ns(self.cfg.cooldown);
        if cooldown > 0 {
            self.cooling
                .insert(key.to_owned(), at_ns.saturating_add(cooldown));
        }
    }

    /// An exposure drift transition (from `exposure::policy::DriftTracker`).
    pub fn drift(&mut self, a: &AlertEvent, out: &mut Vec<Alert>) {
        if self.cfg.enabled && self.cfg.exposure_drift.enabled {
            out.push(Alert::from(a));
        }
    }

    /// One hop record.
    pub fn hop(&mut self, r: &HopRecord, out: &mut Vec<Alert>) {
        if !self.cfg.enabled {
            return;
        }
        match r {
            HopRecord::Websocket(s) => {
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
                    ConnEventKind::Refused if self.cfg.stale_upstream_port.enabled => {
                        let evidence = json!({
                            "at_ns": c.ts_ns,
                            "client": c.conn.client.to_string(),
                            "upstream": c.conn.server.to_string(),
                            "process": c.process,
                        });
                        self.matched(
                            Match {
                                key: format!("{}:{port}", rule::STALE_PORT),
                                rule: rule::STALE_PORT,
                                severity: Severity::Critical,
                                summary: format!(
                                    "connects to upstream port {port} are refused: nothing listens there"
                                ),
                                first_move: MOVE_STALE_PORT,
                                at_ns: c.ts_ns,
                                evidence: vec![evidence],
                                counts: vec![("refused_connects", 1)],
                                detail: json!({ "port": port }),
                            },
                            out,
                        );
                    }
                    ConnEventKind::Connected { .. } => {
                        // Something listens again: the stale port is fixed.
                        self.resolve(&format!("{}:{port}", rule::STALE_PORT), c.ts_ns, out);
                    }
                    ConnEventKind::Reset { from } if self.cfg.reset_storm.enabled => {
                        let evidence = json!({
                            "at_ns": c.ts_ns,
                            "client": c.conn.client.to_string(),
                            "upstream": c.conn.server.to_string(),
                            "from": from,
                            "process": c.process,
                        });
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
        // The edge's 502/504 that a refused connect explains.
        if let Some(refused) = r.refused.as_ref() {
            if self.cfg.stale_upstream_port.enabled && matches!(edge.status, 502 | 504) {
                let port = refused.conn.server.port();
                self.matched(
                    Match {
                        key: format!("{}:{port}", rule::STALE_PORT),
                        rule: rule::STALE_PORT,
                        severity: Severity::Critical,
                        summary: format!(
                            "the edge answers {} because connects to upstream port {port} are refused: nothing listens there",
                            edge.status
                        ),
                        first_move: MOVE_STALE_PORT,
                        at_ns: edge.end_ts_ns,
                        evidence: vec![json!({
                            "at_ns": edge.end_ts_ns,
                            "request_id": edge.request_id,
                            "edge_status": edge.status,
                            "host": edge.host,
                            "path": edge.path,
                            "client": edge.client,
                            "upstream": refused.conn.server.to_string(),
                        })],
                        counts: vec![("edge_errors", 1)],
                        detail: json!({ "port": port }),
                    },
                    out,
                );
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

    /// An exchange on the hop: upgrade failures (what the hop alone shows) and their end.
    fn exchange(&mut self, x: &HttpExchange, out: &mut Vec<Alert>) {
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

    fn half_path(&mut self, x: &HttpExchange, edge_status: Option<u16>, out: &mut Vec<Alert>) {
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

    /// A handshake answered 403.
    fn origin_refused(&mut self, x: &HttpExchange, out: &mut Vec<Alert>) {
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

    /// A session the upstream closed with 1008 (policy violation: how the Gateway refuses an
    /// origin after the 101).
    fn origin_closed(&mut self, s: &WsSession, out: &mut Vec<Alert>) {
        if !self.cfg.origin_rejected.enabled {
            return;
        }
        let Some(close) = s
            .closes
            .iter()
            .find(|c| c.from == Side::Server && c.code == Some(1008))
        else {
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

    fn origin_match(
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

    fn timeout(&mut self, s: &WsSession, out: &mut Vec<Alert>) {
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
        let (min_sessions, tol) = (r.min_sessions, r.tolerance);
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

    fn reload(&mut self, s: &WsSession, out: &mut Vec<Alert>) {
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

    fn slowness(&mut self, x: &HttpExchange, out: &mut Vec<Alert>) {
        let r = &self.cfg.upstream_slowness;
        if !r.enabled {
            return;
        }
        let Some(ttfb) = x.ttfb_ns else {
            return;
        };
        let (window, threshold, pct, min) =
            (ns(r.window), ns(r.threshold), r.percentile, r.min_samples);
        let port = x.conn.server.port();
        let at = x.request_ts_ns;
        let this_slow = ttfb > threshold;
        // A slow exchange joins an open incident at once (counted, evidence kept).
        if this_slow {
            if let Some(inc) = self.open.get_mut(&format!("{}:{port}", rule::SLOWNESS)) {
                *inc.counts.entry("slow_exchanges").or_default() += 1;
                inc.last_match_ns = inc.last_match_ns.max(at);
                if inc.evidence.len() < MAX_EVIDENCE {
                    inc.evidence.push(exchange_evidence(x, None));
                }
            }
        }
        let (samples, last_eval) = self.ttfb.entry(port).or_default();
        samples.push_back((at, ttfb, x.request_id.clone()));
        let since = at.saturating_sub(window);
        while samples.front().is_some_and(|(t, ..)| *t < since) || samples.len() > MAX_SAMPLES {
            samples.pop_front();
        }
        // The percentile is computed for every exchange while the window is small, and at
        // most once a second (of record time) when it is large.
        if samples.len() < min.max(1)
            || (samples.len() > 1000 && at < last_eval.saturating_add(1_000_000_000))
        {
            return;
        }
        *last_eval = at;
        let mut values: Vec<u64> = samples.iter().map(|(_, t, _)| *t).collect();
        let rank = ((pct / 100.0) * values.len() as f64).ceil() as usize;
        let rank = rank.clamp(1, values.len()) - 1;
        let value = *values.select_nth_unstable(rank).1;
        let key = format!("{}:{port}", rule::SLOWNESS);
        if value <= threshold {
            // Back under the threshold.
            self.resolve(&key, at, out);
            return;
        }
        let mut slowest: Vec<&(u64, u64, Option<String>)> =
            samples.iter().filter(|(_, t, _)| *t > threshold).collect();
        slowest.sort_unstable_by_key(|s| std::cmp::Reverse(s.1));
        let n = samples.len();
        let slow_ids: Vec<Value> = slowest
            .iter()
            .take(5)
            .map(|(at, t, id)| json!({ "request_id": id, "ttfb_s": secs(*t), "at_ns": at }))
            .collect();
        let slow_in_window = slowest.len() as u64;
        let opening = !self.open.contains_key(&key);
        // Opening: every slow exchange in the window, this one as evidence; an open incident
        // counted its slow exchanges as they came and only takes the new figures.
        let (counts, evidence) = if opening {
            let evidence = if this_slow {
                vec![exchange_evidence(x, None)]
            } else {
                Vec::new()
            };
            (vec![("slow_exchanges", slow_in_window)], evidence)
        } else {
            (Vec::new(), Vec::new())
        };
        self.matched(
            Match {
                key,
                rule: rule::SLOWNESS,
                severity: Severity::Warning,
                summary: format!(
                    "upstream port {port} is slow: p{pct} time to first byte {:.3} s over the last \
                     {n} exchange(s) (threshold {:.3} s)",
                    secs(value),
                    secs(threshold)
                ),
                first_move: MOVE_SLOW,
                at_ns: at,
                evidence,
                counts,
                detail: json!({
                    "port": port,
                    "percentile": pct,
                    "ttfb_s": secs(value),
                    "threshold_s": secs(threshold),
                    "samples": n,
                    "slowest": slow_ids,
                }),
            },
            out,
        );
    }

    /// Moves time on (the newest record's time, or the clock live): incidents without new
    /// evidence for the quiet period resolve, and cooldowns that ended are forgotten.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Alert>) {
        let quiet = ns(self.cfg.quiet_period);
        let done: Vec<String> = self
            .open
            .iter()
            .filter(|(_, i)| now_ns.saturating_sub(i.last_match_ns) >= quiet)
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            self.resolve(&key, now_ns, out);
        }
        self.cooling.retain(|_, until| *until > now_ns);
    }
}

fn exchange_evidence(x: &HttpExchange, edge_status: Option<u16>) -> Value {
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

fn session_evidence(s: &WsSession) -> Value {
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

fn alert(key: &str, inc: &Incident, state: State, at_ns: u64) -> Alert {
    Alert {
        state,
        rule: inc.rule,
        severity: inc.severity,
        dedup_key: key.to_owned(),
        summary: inc.summary.clone(),
        first_move: inc.first_move,
        evidence: json!({
            "matches": inc.counts.values().sum::<u64>(),
            "counts": inc.counts,
            "first_ns": inc.fired_at_ns,
            "last_ns": inc.last_match_ns,
            "items": inc.evidence,
            "detail": inc.detail,
        }),
        fired_at_ns: inc.fired_at_ns,
        at_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::join::JoinedRequest;
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
        let mut e = Engine::new(AlertsConfig::default());
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
        e.advance(
            300 * S + ns(AlertsConfig::default().quiet_period) - 1,
            &mut out,
        );
        assert_eq!(out.len(), 1, "not quiet long enough");
        e.advance(300 * S + ns(AlertsConfig::default().quiet_period), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].state, State::Resolved);
        assert_eq!(out[1].evidence["counts"]["sessions"], 3);
        assert_eq!(out[1].dedup_key, out[0].dedup_key);
    }

    #[test]
    fn clean_closes_and_upstream_closes_are_not_timeouts() {
        let mut e = Engine::new(AlertsConfig::default());
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
        let mut e = Engine::new(AlertsConfig::default());
        let mut out = Vec::new();
        let fin = SessionEnd::FinWithoutClose { from: Side::Client };
        let apart = ns(AlertsConfig::default().quiet_period) + S;
        e.hop(&session(1, 100 * S, 60 * S, fin.clone()), &mut out);
        e.hop(&session(2, 100 * S + apart, 60 * S, fin), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn refused_connects_name_the_stale_port_once() {
        let mut e = Engine::new(AlertsConfig::default());
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
        let mut cfg = AlertsConfig::default();
        cfg.reset_storm.count = 3;
        cfg.reset_storm.window = Duration::from_secs(10);
        let mut e = Engine::new(cfg);
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

    fn http(client_port: u16, at: u64, upgrade: bool, status: u16, ttfb: u64) -> HttpExchange {
        HttpExchange {
            conn: conn(client_port),
            index: 0,
            request_ts_ns: at,
            method: "GET".into(),
            path: "/ws".into(),
            host: Some("gw.example.com".into()),
            origin: Some("https://gw.example.com".into()),
            request_id: Some(format!("rid{client_port}")),
            x_forwarded_for: None,
            x_forwarded_proto: None,
            upgrade_websocket: upgrade,
            connection_upgrade: upgrade,
            status: Some(status),
            ttfb_ns: Some(ttfb),
            total_ns: Some(ttfb),
            request_bytes: 100,
            response_bytes: 50,
            outcome: if status == 101 {
                ExchangeOutcome::Upgraded
            } else {
                ExchangeOutcome::Complete
            },
        }
    }

    fn quiet() -> u64 {
        ns(AlertsConfig::default().quiet_period)
    }

    #[test]
    fn a_burst_of_proxy_closes_is_a_reload_but_a_trickle_is_not() {
        let mut e = Engine::new(AlertsConfig::default());
        let mut out = Vec::new();
        let fin = SessionEnd::FinWithoutClose { from: Side::Client };
        // One every 3 s: never 5 within 2 s.
        for i in 0..6u16 {
            e.hop(&session(i, u64::from(i) * 3 * S, 0, fin.clone()), &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        // Six within 100 ms.
        for i in 0..6u16 {
            e.hop(
                &session(100 + i, 100 * S + u64::from(i) * S / 50, 0, fin.clone()),
                &mut out,
            );
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].rule, rule::RELOAD_BURST);
        // It fires on the fifth; the sixth joins the incident.
        assert_eq!(out[0].evidence["counts"]["sessions"], 5);
        assert_eq!(out[0].evidence["items"].as_array().expect("items").len(), 5);
        assert!(
            out[0].summary.contains("5 WebSocket sessions"),
            "{}",
            out[0].summary
        );
        e.advance(101 * S + quiet(), &mut out);
        assert_eq!(out[1].state, State::Resolved);
        assert_eq!(out[1].evidence["counts"]["sessions"], 6);
    }

    #[test]
    fn half_path_fires_from_the_hop_alone_and_from_the_join_and_a_101_resolves_it() {
        let mut e = Engine::new(AlertsConfig::default());
        let mut out = Vec::new();
        // The upstream asks for an upgrade the request does not carry.
        e.hop(
            &HopRecord::Http(http(1, 10 * S, false, 426, S / 100)),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, rule::UPGRADE_FAILURE);
        assert_eq!(out[0].dedup_key, "hop.upgrade_failure:18789:half_path");
        assert!(out[0].first_move.contains("proxy_set_header Upgrade"));
        // The join sees an edge upgrade whose hop request lacks it (answered 400 here).
        let mut edge = crate::edge::nginx::parse_json(
            r#"{"msec":"11.0","request_id":"rid2","status":"400","http_upgrade":"websocket"}"#,
            &crate::edge::nginx::JsonFields::default(),
        )
        .expect("edge line");
        edge.path = Some("/ws".into());
        let joined = JoinedRequest {
            request_id: Some("rid2".into()),
            matched: crate::edge::join::Matched::Exact,
            reason: None,
            edge: Some(edge),
            hop: Some(http(2, 11 * S, false, 400, S / 100)),
            websocket: None,
            refused: None,
        };
        e.request(&joined, &mut out);
        assert_eq!(out.len(), 1, "joins the open incident");
        // An upgrade that works resolves it at once.
        e.hop(
            &HopRecord::Http(http(3, 20 * S, true, 101, S / 100)),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].state, State::Resolved);
        assert_eq!(out[1].evidence["counts"]["failed_upgrades"], 2);
        assert_eq!(out[1].evidence["items"][1]["edge_status"], 400);
    }

    #[test]
    fn an_upgrade_answered_without_101_is_its_own_cause() {
        let mut e = Engine::new(AlertsConfig::default());
        let mut out = Vec::new();
        e.hop(&HopRecord::Http(http(1, S, true, 502, S / 100)), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dedup_key, "hop.upgrade_failure:18789:no_101");
        assert!(
            out[0].summary.contains("answered 502"),
            "{}",
            out[0].summary
        );
    }

    #[test]
    fn a_flood_of_distinct_origins_keeps_a_bounded_list_and_counts_the_rest() {
        let mut e = Engine::new(AlertsConfig::default());
        let mut out = Vec::new();
        let n = 5_000u64;
        for i in 0..n {
            let mut x = http((i % 60_000) as u16, S + i * 1_000, true, 403, S / 100);
            x.origin = Some(format!("https://attacker-{i}.example/{}", "x".repeat(500)));
            e.hop(&HopRecord::Http(x), &mut out);
        }
        assert_eq!(out.len(), 1, "one incident, announced once");
        let open = e.open_alerts(2_000_000_000);
        let a = &open[0];
        let origins = a.evidence["detail"]["origins"].as_array().expect("origins");
        assert_eq!(origins.len(), MAX_DISTINCT_VALUES);
        assert!(origins
            .iter()
            .all(|o| o.as_str().is_some_and(|s| s.len() <= MAX_VALUE_LEN + 3)));
        assert_eq!(
            a.evidence["detail"]["more_origins"],
            n - MAX_DISTINCT_VALUES as u64
        );
        assert!(a.summary.ends_with(" and others"), "{}", a.summary);
        assert!(a.summary.len() < 10_000, "{}", a.summary.len());
    }

    #[test]
    fn origin_rejections_list_the_origins_and_the_missing_one() {
        let mut cfg = AlertsConfig::default();
        cfg.origin_rejected.allowed_origins = vec!["https://gw.example.com".into()];
        let mut e = Engine::new(cfg);
        let mut out = Vec::new();
        // 403 at the handshake.
        let mut x = http(1, S, true, 403, S / 100);
        x.origin = Some("https://typo.example.com".into());
        e.hop(&HopRecord::Http(x), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, rule::ORIGIN_REJECTED);
        assert!(
            out[0]
                .summary
                .contains("allowedOrigins lacks https://typo.example.com"),
            "{}",
            out[0].summary
        );
        // 101 then close 1008 from the upstream (what the Gateway does).
        let HopRecord::Websocket(mut s) = session(
            2,
            2 * S,
            0,
            SessionEnd::CloseHandshake {
                first_close_from: Side::Server,
            },
        ) else {
            unreachable!()
        };
        s.origin = Some("http://10.0.0.5:8080".into());
        s.closes.push(crate::hop::CloseFrame {
            from: Side::Server,
            ts_ns: 2 * S,
            code: Some(1008),
            reason: "origin not allowed".into(),
        });
        e.hop(&HopRecord::Websocket(s), &mut out);
        e.advance(2 * S + quiet(), &mut out);
        assert_eq!(out.len(), 2);
        let r = &out[1];
        assert_eq!(r.state, State::Resolved);
        assert_eq!(r.evidence["counts"]["handshakes_403"], 1);
        assert_eq!(r.evidence["counts"]["closes_1008"], 1);
        assert_eq!(
            r.evidence["detail"]["missing_from_allowed_origins"],
            json!(["http://10.0.0.5:8080", "https://typo.example.com"])
        );
        assert_eq!(r.evidence["items"][1]["close_reason"], "origin not allowed");
        // A healthy upgrade is not an origin problem.
        let mut e = Engine::new(AlertsConfig::default());
        let mut out = Vec::new();
        e.hop(&HopRecord::Http(http(1, S, true, 101, S / 100)), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_stale_port_resolves_when_a_connect_succeeds_and_gathers_the_edge_502s() {
        let mut e = Engine::new(AlertsConfig::default());
        let mut out = Vec::new();
        let refused = ConnEvent {
            conn: conn(40000),
            ts_ns: S,
            kind: ConnEventKind::Refused,
            process: Some(crate::hop::ProcessRef {
                pid: 42,
                comm: "nginx".into(),
            }),
        };
        e.hop(&HopRecord::Conn(refused.clone()), &mut out);
        let edge = crate::edge::nginx::parse_json(
            r#"{"msec":"1.001","request_id":"r502","status":"502","host":"gw.example.com"}"#,
            &crate::edge::nginx::JsonFields::default(),
        )
        .expect("edge line");
        e.request(
            &JoinedRequest {
                request_id: Some("r502".into()),
                matched: crate::edge::join::Matched::EdgeOnly,
                reason: None,
                edge: Some(edge),
                hop: None,
                websocket: None,
                refused: Some(Box::new(refused)),
            },
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].summary.contains("refused"));
        e.hop(
            &HopRecord::Conn(ConnEvent {
                conn: conn(40001),
                ts_ns: 5 * S,
                kind: ConnEventKind::Connected { latency_ns: 50_000 },
                process: None,
            }),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        let r = &out[1];
        assert_eq!((r.state, r.at_ns), (State::Resolved, 5 * S));
        assert_eq!(r.evidence["counts"]["refused_connects"], 1);
        assert_eq!(r.evidence["counts"]["edge_errors"], 1);
        assert_eq!(r.evidence["items"][0]["process"]["comm"], "nginx");
        assert_eq!(r.evidence["items"][1]["request_id"], "r502");
        assert!(r.summary.contains("edge answers 502"), "{}", r.summary);
    }

    #[test]
    fn slowness_fires_over_the_percentile_and_resolves_when_fast_again() {
        let mut cfg = AlertsConfig::default();
        cfg.upstream_slowness.min_samples = 10;
        cfg.upstream_slowness.threshold = Duration::from_millis(200);
        cfg.upstream_slowness.window = Duration::from_secs(60);
        let mut e = Engine::new(cfg);
        let mut out = Vec::new();
        let mut t = 0;
        // Healthy: 10 ms.
        for i in 0..20u16 {
            t += S / 10;
            e.hop(&HopRecord::Http(http(i, t, false, 200, S / 100)), &mut out);
        }
        assert!(out.is_empty());
        // 5 % slow is at p95 itself: still fine at 1 in 20 ... 3 in 23 is not.
        for i in 0..3u16 {
            t += S / 10;
            e.hop(
                &HopRecord::Http(http(100 + i, t, false, 200, S / 2)),
                &mut out,
            );
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].rule, rule::SLOWNESS);
        assert!(out[0].summary.contains("p95"), "{}", out[0].summary);
        assert_eq!(out[0].evidence["detail"]["slowest"][0]["ttfb_s"], 0.5);
        // The slow ones age out of the window while fast ones come in.
        for i in 0..30u16 {
            t += 3 * S;
            e.hop(
                &HopRecord::Http(http(200 + i, t, false, 200, S / 100)),
                &mut out,
            );
        }
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].state, State::Resolved);
    }

    #[test]
    fn a_busy_upstream_is_judged_once_a_second_and_every_slow_exchange_counted() {
        let mut cfg = AlertsConfig::default();
        cfg.upstream_slowness.threshold = Duration::from_millis(200);
        let mut e = Engine::new(cfg);
        let mut out = Vec::new();
        let mut t = 0;
        for i in 0..1500u16 {
            t += S / 100;
            e.hop(&HopRecord::Http(http(i, t, false, 200, S / 100)), &mut out);
        }
        assert!(out.is_empty());
        for i in 0..200u16 {
            t += S / 100;
            e.hop(&HopRecord::Http(http(2000 + i, t, false, 200, S)), &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].rule, rule::SLOWNESS);
        e.advance(t + quiet(), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].evidence["counts"]["slow_exchanges"], 200,
            "each slow exchange once, judged or not"
        );
    }

    #[test]
    fn cooldown_keeps_a_flapping_incident_quiet_unless_it_outlasts_it() {
        let mut e = Engine::new(AlertsConfig {
            cooldown: Duration::from_secs(100),
            ..AlertsConfig::default()
        });
        let mut out = Vec::new();
        let refused = |at: u64| {
            HopRecord::Conn(ConnEvent {
                conn: conn(40000),
                ts_ns: at,
                kind: ConnEventKind::Refused,
                process: None,
            })
        };
        let connected = |at: u64| {
            HopRecord::Conn(ConnEvent {
                conn: conn(40001),
                ts_ns: at,
                kind: ConnEventKind::Connected { latency_ns: 1 },
                process: None,
            })
        };
        e.hop(&refused(S), &mut out);
        e.hop(&connected(2 * S), &mut out);
        assert_eq!(out.len(), 2, "fired and resolved");
        // Flaps within the cooldown: silent.
        e.hop(&refused(10 * S), &mut out);
        e.hop(&connected(11 * S), &mut out);
        e.hop(&refused(20 * S), &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            e.firing(),
            0,
            "a silenced incident is not counted as firing"
        );
        // Still refused after the cooldown ended: announced, with what it counted meanwhile.
        e.hop(&refused(150 * S), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].state, State::Firing);
        assert_eq!(out[2].evidence["counts"]["refused_connects"], 2);
        assert_eq!(out[2].fired_at_ns, 20 * S);
    }

    #[test]
    fn switched_off_rules_and_switched_off_alerts_fire_nothing() {
        let mut cfg = AlertsConfig::default();
        cfg.stale_upstream_port.enabled = false;
        let mut e = Engine::new(cfg);
        let mut out = Vec::new();
        let refused = HopRecord::Conn(ConnEvent {
            conn: conn(40000),
            ts_ns: S,
            kind: ConnEventKind::Refused,
            process: None,
        });
        e.hop(&refused, &mut out);
        assert!(out.is_empty());
        let mut e = Engine::new(AlertsConfig {
            enabled: false,
            ..AlertsConfig::default()
        });
        e.hop(&refused, &mut out);
        e.hop(&HopRecord::Http(http(1, S, false, 426, 1)), &mut out);
        assert!(out.is_empty());
    }
}
