//! What a webhook is and what it receives: the `[[alerts.webhooks]]` section and the
//! Alertmanager-compatible or plain JSON payloads (pure). Delivery lives in the sidecar
//! (`edgewatch::webhook`).
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Alert, State};
use crate::time::rfc3339;

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
}
