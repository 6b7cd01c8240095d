//! `[alerts]`: the rules' switches and thresholds, their lifecycle, and the webhooks.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{webhook, MAX_DISTINCT_VALUES};

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
    /// Upgrades refused by the upstream for their Origin (close code 1008, or a 403 whose
    /// error code says so).
    pub origin_rejected: OriginRule,
    /// The Gateway refusing what the proxy forwards because the proxy is not in its
    /// `trustedProxies` (a 403 with the code `proxy_attribution_required`).
    pub untrusted_proxy: Toggle,
    /// The edge's 502/504 for requests the proxy sends to an address that is not the
    /// Gateway's port.
    pub stale_upstream_port: StaleRule,
    /// The Gateway's port without a listener (refused connects, its listener gone): one
    /// incident once it lasts longer than a normal start or restart.
    pub upstream_down: UpstreamDownRule,
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
            untrusted_proxy: Toggle::on(),
            stale_upstream_port: StaleRule::default(),
            upstream_down: UpstreamDownRule::default(),
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
pub struct StaleRule {
    pub enabled: bool,
    /// The reverse proxies' process names (`comm`): their failed connects to a loopback or
    /// private address that is not the Gateway's port are a stale upstream port, seen in the
    /// kernel without an access log.
    pub proxies: Vec<String>,
}

impl Default for StaleRule {
    fn default() -> Self {
        Self {
            enabled: true,
            proxies: [
                "nginx", "caddy", "haproxy", "traefik", "envoy", "httpd", "apache2",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamDownRule {
    pub enabled: bool,
    /// How long the Gateway's port may be down before it is an alert: longer than it takes
    /// to start or restart (the Gateway answers after 8-25 s). Back within it, one
    /// informational `upstream` record says so.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for UpstreamDownRule {
    fn default() -> Self {
        Self {
            enabled: true,
            grace: Duration::from_secs(45),
        }
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
        if let Some(p) = a
            .stale_upstream_port
            .proxies
            .iter()
            .find(|p| p.is_empty() || p.len() > 15)
        {
            return Err(invalid(
                "alerts.stale_upstream_port.proxies",
                format!("{p:?}"),
                "a process name (comm) has 1 to 15 characters",
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
