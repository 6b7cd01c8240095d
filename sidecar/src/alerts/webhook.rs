//! Webhook delivery of alert transitions: an Alertmanager-compatible payload (`POST
//! /api/v2/alerts`) or plain JSON. The payloads are built by pure functions ([`payload`]);
//! delivery ([`Webhook`]) runs on a thread of its own behind a bounded queue, so a slow or
//! failing receiver never blocks the pipeline: a failed POST is retried with exponential
//! backoff, a full queue drops its oldest alert, and both are counted and reported.
use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Alert, State};
use crate::output::rfc3339;

/// What a webhook receives.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// A JSON array of Alertmanager alerts (`labels`, `annotations`, `startsAt`, `endsAt`):
    /// point `url` at `http://alertmanager:9093/api/v2/alerts`. Open incidents are sent again
    /// every `resend_interval` so Alertmanager does not time them out.
    Alertmanager,
    /// `{"source":"edgewatch","node":...,"alerts":[...]}` with edgewatch's own alert records.
    Json,
}

/// `[[alerts.webhooks]]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` (system roots). No credentials in the URL: use a bearer token.
    pub url: String,
    pub format: WebhookFormat,
    /// Name of an environment variable holding a bearer token (sent as `Authorization`).
    pub bearer_token_env: Option<String>,
    /// A file holding a bearer token (the first line).
    pub bearer_token_file: Option<PathBuf>,
    /// One POST's time limit.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per batch before it is given up (counted as failed).
    pub max_attempts: u32,
    /// The longest wait between attempts (the wait doubles from 1 s up to this).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Alerts waiting for delivery; when full, the oldest is dropped (counted).
    pub queue: usize,
    /// Alertmanager: how often open incidents are sent again.
    #[serde(with = "humantime_serde")]
    pub resend_interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            format: WebhookFormat::Alertmanager,
            bearer_token_env: None,
            bearer_token_file: None,
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            max_backoff: Duration::from_secs(60),
            queue: 1000,
            resend_interval: Duration::from_secs(60),
        }
    }
}

/// A URL with its secrets hidden: `user:password@`, the whole query string, the fragment, and
/// every path segment that does not look like a plain word. Chat and incident webhooks carry
/// their token in the path (`/services/T0/B0/XXXX`, `/api/webhooks/ID/TOKEN`): a segment is
/// kept only when it is short lowercase text with few digits (`api`, `v2`, `alerts`).
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "(an unparsable URL)".to_owned();
    };
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_password(None);
        let _ = url.set_username("REDACTED");
    }
    if url.query().is_some() {
        url.set_query(Some("REDACTED"));
    }
    url.set_fragment(None);
    let plain = |seg: &str| {
        seg.len() <= 20
            && seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            && seg.bytes().filter(u8::is_ascii_digit).count() <= 4
    };
    let path: Option<Vec<String>> = url.path_segments().map(|segs| {
        segs.map(|seg| {
            if plain(seg) {
                seg.to_owned()
            } else {
                "REDACTED".to_owned()
            }
        })
        .collect()
    });
    if let Some(path) = path {
        url.set_path(&path.join("/"));
    }
    url.to_string()
}

impl WebhookConfig {
    /// Checks what can be checked without I/O; the error names the problem.
    pub fn check(&self) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or("must start with http:// or https://")?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.is_empty() {
            return Err("has no host".into());
        }
        if authority.contains('@') {
            return Err(
                "carries credentials; put a token in bearer_token_env or bearer_token_file".into(),
            );
        }
        if self.bearer_token_env.is_some() && self.bearer_token_file.is_some() {
            return Err("set bearer_token_env or bearer_token_file, not both".into());
        }
        if self.max_attempts == 0 || self.queue == 0 {
            return Err("max_attempts and queue must be at least 1".into());
        }
        Ok(())
    }

    /// The URL with its secrets hidden (for every message and printout): credentials, the
    /// query string, and path segments that look like tokens (see [`redact_url`]).
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The bearer token, from the environment or the file.
    fn token(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.bearer_token_env {
            return std::env::var(var)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|_| format!("environment variable {var} (bearer_token_env) is not set"));
        }
        if let Some(path) = &self.bearer_token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read bearer_token_file {}: {e}", path.display()))?;
            return Ok(Some(text.lines().next().unwrap_or("").trim().to_owned()));
        }
        Ok(None)
    }
}

/// The body of one POST. Pure.
pub fn payload(format: WebhookFormat, node: &str, alerts: &[Alert]) -> Value {
    match format {
        WebhookFormat::Json => json!({
            "source": "edgewatch",
            "node": node,
            "alerts": alerts,
        }),
        WebhookFormat::Alertmanager => Value::Array(
            alerts
                .iter()
                .map(|a| {
                    let mut v = json!({
                        "labels": {
                            "alertname": a.rule,
                            "severity": a.severity.as_str(),
                            "dedup_key": a.dedup_key,
                            "instance": node,
                            "source": "edgewatch",
                        },
                        "annotations": {
                            "summary": a.summary,
                            "first_move": a.first_move,
                            "evidence": a.evidence.to_string(),
                        },
                        "startsAt": rfc3339(a.fired_at_ns),
                    });
                    if a.state == State::Resolved {
                        v["endsAt"] = Value::String(rfc3339(a.at_ns));
                    }
                    v
                })
                .collect(),
        ),
    }
}

/// Delivery counts of one webhook.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    /// Given up after `max_attempts`, or refused for good (4xx).
    pub failed: AtomicU64,
    /// Dropped from a full queue.
    pub dropped: AtomicU64,
    pub retries: AtomicU64,
}

/// Something worth a status line.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WebhookEvent {
    /// An attempt failed; the batch is retried after `retry_in_ms`.
    Retrying {
        url: String,
        alerts: usize,
        attempt: u32,
        reason: String,
        retry_in_ms: u64,
    },
    /// Delivered after failures.
    Recovered { url: String, after_attempts: u32 },
    /// Given up.
    Failed {
        url: String,
        alerts: usize,
        reason: String,
    },
}

struct Queue {
    items: VecDeque<Alert>,
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Stats,
    events: Mutex<Vec<WebhookEvent>>,
}

/// One webhook's delivery thread.
pub struct Webhook {
    cfg: WebhookConfig,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    last_resend: Instant,
}

/// Alerts per POST.
const BATCH: usize = 100;

impl Webhook {
    /// Starts the delivery thread. The token is read now, so a missing one stops the start.
    pub fn start(cfg: WebhookConfig, node: String) -> Result<Self, String> {
        cfg.check()
            .map_err(|e| format!("webhook {}: url {e}", cfg.display_url()))?;
        let token = cfg.token()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                closing: false,
            }),
            wake: Condvar::new(),
            stats: Stats::default(),
            events: Mutex::new(Vec::new()),
        });
        let thread = {
            let (cfg, shared) = (cfg.clone(), shared.clone());
            std::thread::Builder::new()
                .name("edgewatch-webhook".into())
                .spawn(move || deliver(&cfg, &node, token.as_deref(), &shared))
                .map_err(|e| format!("cannot start the webhook thread: {e}"))?
        };
        Ok(Self {
            cfg,
            shared,
            thread: Some(thread),
            last_resend: Instant::now(),
        })
    }

    pub fn url(&self) -> String {
        self.cfg.display_url()
    }

    /// Queues alerts; never blocks on the network. A full queue drops its oldest.
    pub fn send(&self, alerts: &[Alert]) {
        if alerts.is_empty() {
            return;
        }
        let Ok(mut q) = self.shared.queue.lock() else {
            return;
        };
        for a in alerts {
            if q.items.len() >= self.cfg.queue {
                q.items.pop_front();
                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.items.push_back(a.clone());
        }
        self.shared.wake.notify_one();
    }

    /// Alertmanager only: sends the open incidents again when `resend_interval` has passed.
    pub fn resend(&mut self, open: impl FnOnce() -> Vec<Alert>) {
        if self.cfg.format != WebhookFormat::Alertmanager
            || self.last_resend.elapsed() < self.cfg.resend_interval
        {
            return;
        }
        self.last_resend = Instant::now();
        self.send(&open());
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Reports since the last call.
    pub fn take_events(&self) -> Vec<WebhookEvent> {
        self.shared
            .events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// Delivers what is queued (one attempt each, within `grace`), then stops. Returns the
    /// alerts left undelivered.
    pub fn shutdown(mut self, grace: Duration) -> u64 {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closing = true;
        }
        self.shared.wake.notify_all();
        let deadline = Instant::now() + grace;
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::park_timeout(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.shared
            .queue
            .lock()
            .map(|q| q.items.len() as u64)
            .unwrap_or(0)
    }
}

enum Outcome {
    Ok,
    /// Worth retrying (connection failure, timeout, 408, 429, 5xx).
    Transient(String),
    /// Not (other 4xx).
    Permanent(String),
}

fn post(agent: &ureq::Agent, cfg: &WebhookConfig, token: Option<&str>, body: &Value) -> Outcome {
    let mut req = agent
        .post(&cfg.url)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    match req.send(body.to_string()) {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match status {
                200..=299 => Outcome::Ok,
                408 | 429 | 500..=599 => Outcome::Transient(format!("HTTP {status}")),
                _ => Outcome::Permanent(format!("HTTP {status}")),
            }
        }
        Err(e) => Outcome::Transient(e.to_string()),
    }
}

fn deliver(cfg: &WebhookConfig, node: &str, token: Option<&str>, shared: &Shared) {
    let agent = crate::http::agent(Some(cfg.timeout), false);
    let report = |e: WebhookEvent| {
        if let Ok(mut ev) = shared.events.lock() {
            ev.push(e);
        }
    };
    let url = cfg.display_url();
    loop {
        // Wait for work (or the end).
        let (batch, closing) = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            while q.items.is_empty() && !q.closing {
                q = match shared.wake.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            if q.items.is_empty() {
                return;
            }
            let n = q.items.len().min(BATCH);
            (q.items.drain(..n).collect::<Vec<_>>(), q.closing)
        };
        let body = payload(cfg.format, node, &batch);
        let mut attempt = 0u32;
        let mut backoff = Duration::from_secs(1);
        loop {
            attempt += 1;
            match post(&agent, cfg, token, &body) {
                Outcome::Ok => {
                    shared
                        .stats
                        .sent
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if attempt > 1 {
                        report(WebhookEvent::Recovered {
                            url: url.clone(),
                            after_attempts: attempt,
                        });
                    }
                    break;
                }
                Outcome::Transient(reason) if attempt < cfg.max_attempts && !closing => {
                    shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                    report(WebhookEvent::Retrying {
                        url: url.clone(),
                        alerts: batch.len(),
                        attempt,
                        reason,
                        retry_in_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    });
                    // Sleep, but wake early when the sidecar stops.
                    let until = Instant::now() + backoff;
                    let Ok(mut q) = shared.queue.lock() else {
                        return;
                    };
                    while !q.closing && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        q = match shared.wake.wait_timeout(q, left) {
                            Ok((q, _)) => q,
                            Err(_) => return,
                        };
                    }
                    drop(q);
                    backoff = (backoff * 2).min(cfg.max_backoff);
                }
                Outcome::Transient(reason) | Outcome::Permanent(reason) => {
                    shared
                        .stats
                        .failed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    report(WebhookEvent::Failed {
                        url: url.clone(),
                        alerts: batch.len(),
                        reason: format!("{reason} after {attempt} attempt(s)"),
                    });
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Severity;

    fn alert(state: State) -> Alert {
        Alert {
            state,
            rule: "hop.stale_upstream_port",
            severity: Severity::Critical,
            dedup_key: "hop.stale_upstream_port:18789".into(),
            summary: "refused".into(),
            first_move: "fix it",
            evidence: json!({ "matches": 2 }),
            fired_at_ns: 1_795_280_000_000_000_000,
            at_ns: 1_795_280_060_000_000_000,
        }
    }

    #[test]
    fn alertmanager_payload_has_labels_annotations_and_ends_when_resolved() {
        let v = payload(
            WebhookFormat::Alertmanager,
            "vps1",
            &[alert(State::Firing), alert(State::Resolved)],
        );
        let list = v.as_array().expect("array");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["labels"]["alertname"], "hop.stale_upstream_port");
        assert_eq!(list[0]["labels"]["severity"], "critical");
        assert_eq!(list[0]["labels"]["instance"], "vps1");
        assert_eq!(list[0]["annotations"]["first_move"], "fix it");
        assert_eq!(list[0]["startsAt"], "2026-11-21T16:53:20.000Z");
        assert!(list[0].get("endsAt").is_none(), "firing: no end");
        assert_eq!(list[1]["endsAt"], "2026-11-21T16:54:20.000Z");
        let evidence: Value =
            serde_json::from_str(list[0]["annotations"]["evidence"].as_str().expect("text"))
                .expect("evidence is JSON text");
        assert_eq!(evidence["matches"], 2);
    }

    #[test]
    fn json_payload_carries_the_records() {
        let v = payload(WebhookFormat::Json, "vps1", &[alert(State::Firing)]);
        assert_eq!(v["source"], "edgewatch");
        assert_eq!(v["alerts"][0]["state"], "firing");
        assert_eq!(v["alerts"][0]["dedup_key"], "hop.stale_upstream_port:18789");
    }

    #[test]
    fn urls_with_credentials_or_other_schemes_are_refused() {
        let c = |url: &str| WebhookConfig {
            url: url.into(),
            ..WebhookConfig::default()
        };
        assert!(c("http://127.0.0.1:9093/api/v2/alerts").check().is_ok());
        assert!(c("https://hooks.example/x?token=1").check().is_ok());
        assert!(c("ftp://x").check().is_err());
        assert!(c("http://")
            .check()
            .expect_err("no host")
            .contains("no host"));
        assert!(c("https://user:pw@hooks.example/")
            .check()
            .expect_err("credentials")
            .contains("bearer_token"));
        assert_eq!(
            c("https://hooks.example/x?token=1").display_url(),
            "https://hooks.example/x?REDACTED"
        );
        assert_eq!(
            c("https://user:pw@hooks.example/x").display_url(),
            "https://REDACTED@hooks.example/x"
        );
        // Tokens in the path, as chat and incident webhooks carry them.
        assert_eq!(
            redact_url(
                "https://hooks.slack.com/services/T0AB12CD3/B0ABCDEF1/Xy12AbCdEfGhIjKlMnOpQrSt"
            ),
            "https://hooks.slack.com/services/REDACTED/REDACTED/REDACTED"
        );
        assert_eq!(
            redact_url("https://discord.com/api/webhooks/123456789012345678/abc-DEF_ghi"),
            "https://discord.com/api/webhooks/REDACTED/REDACTED"
        );
        assert_eq!(
            redact_url("https://events.example/v2/enqueue/0123456789abcdef0123456789abcdef"),
            "https://events.example/v2/enqueue/REDACTED"
        );
        // Plain paths stay readable.
        assert_eq!(
            redact_url("http://127.0.0.1:9093/api/v2/alerts"),
            "http://127.0.0.1:9093/api/v2/alerts"
        );
        assert_eq!(redact_url("not a url"), "(an unparsable URL)");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        // A receiver that never answers in time: nothing is delivered while we fill the queue.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let cfg = WebhookConfig {
            url: format!("http://{}/", listener.local_addr().expect("addr")),
            queue: 3,
            max_attempts: 1,
            timeout: Duration::from_secs(30),
            ..WebhookConfig::default()
        };
        let hook = Webhook::start(cfg, "n".into()).expect("start");
        // The first alert is taken by the thread (blocked on the silent receiver) or queued.
        for _ in 0..10 {
            hook.send(&[alert(State::Firing)]);
        }
        let dropped = hook.stats().dropped.load(Ordering::Relaxed);
        assert!(
            (4..=7).contains(&dropped),
            "10 sent into a queue of 3 (plus at most one batch in flight): {dropped} dropped"
        );
        drop(listener);
    }
}
