//! Webhook delivery of alert transitions (the payloads are built by the core's pure
//! `alerts::webhook::payload`): delivery ([`Webhook`]) runs on a thread of its own behind a
//! bounded queue, so a slow or failing receiver never blocks the pipeline: a failed POST is
//! retried with exponential backoff, a full queue drops its oldest alert, and both are counted
//! and reported.
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;

pub use crate::alerts::webhook::{payload, redact_url, WebhookConfig, WebhookFormat};
use crate::alerts::Alert;

/// The bearer token of `cfg`, from the environment or the file.
fn token(cfg: &WebhookConfig) -> Result<Option<String>, String> {
    if let Some(var) = &cfg.bearer_token_env {
        return std::env::var(var)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|_| format!("environment variable {var} (bearer_token_env) is not set"));
    }
    if let Some(path) = &cfg.bearer_token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read bearer_token_file {}: {e}", path.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").trim().to_owned()));
    }
    Ok(None)
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
        let token = token(&cfg)?;
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

/// One POST, on the delivery thread's own runtime.
fn post(
    runtime: &tokio::runtime::Runtime,
    http: &crate::outbound::Http,
    cfg: &WebhookConfig,
    token: Option<&str>,
    body: &Value,
) -> Outcome {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    match runtime.block_on(http.post_json(&cfg.url, &headers, body.to_string())) {
        Ok(status) => match status {
            200..=299 => Outcome::Ok,
            408 | 429 | 500..=599 => Outcome::Transient(format!("HTTP {status}")),
            _ => Outcome::Permanent(format!("HTTP {status}")),
        },
        Err(e) => Outcome::Transient(format!("{e:#}")),
    }
}

fn deliver(cfg: &WebhookConfig, node: &str, token: Option<&str>, shared: &Shared) {
    let report = |e: WebhookEvent| {
        if let Ok(mut ev) = shared.events.lock() {
            ev.push(e);
        }
    };
    let url = cfg.display_url();
    let _span = tracing::info_span!("webhook", url = %url, format = ?cfg.format).entered();
    // The thread's own current-thread runtime: delivery never competes with the watch loop's
    // workers, and a slow receiver only ever blocks this thread.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| Ok((rt, crate::outbound::Http::new(None, cfg.timeout)?)));
    let (runtime, http) = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%url, "webhook delivery cannot start: {e:#}");
            report(WebhookEvent::Failed {
                url: url.clone(),
                alerts: 0,
                reason: format!("cannot start delivery: {e:#}"),
            });
            return;
        }
    };
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
            match post(&runtime, &http, cfg, token, &body) {
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
    use crate::alerts::{Severity, State};
    use serde_json::json;

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
