//! `[hop]`: which upstream ports are the hop, where it is watched, and the tracker's limits.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{self, Checked, Invalid};

/// The default [`HopConfig::drain_interval`]: at ~7,000 proxied requests a second it cut the
/// sidecar's CPU per request by 0.3-1.2 us (12-38%) against 20 ms (`cargo bench --bench hop`,
/// live-only runs alternated).
pub const DEFAULT_DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// `[hop]`: the proxy-to-upstream hop.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HopConfig {
    /// Watch the hop at all (needs TC: CAP_NET_ADMIN and CAP_BPF).
    pub enabled: bool,
    /// The upstream ports: connections to these are the hop (the Gateway's 18789).
    pub ports: Vec<u16>,
    /// Interfaces the hop crosses. On `lo` only ingress is watched (every loopback packet
    /// passes it once); elsewhere both directions.
    pub interfaces: Vec<String>,
    /// Also watch Docker bridges (`docker0`, `br-*`) present at start.
    pub docker_bridges: bool,
    /// How often user space drains the hop's ring buffer while records come (hop records are
    /// submitted without a wake-up each; a quarter-full ring still wakes it at once). Each
    /// drain is a pipeline turn with fixed costs (wake-up, spool write, alert evaluation), so
    /// a shorter interval costs CPU at every request rate; a longer one delays hop records
    /// and their alerts by up to this much.
    #[serde(with = "humantime_serde")]
    pub drain_interval: Duration,
    /// A connection with no packet for this long is reported as it stands and forgotten.
    #[serde(with = "humantime_serde")]
    pub idle_expiry: Duration,
    /// Connections followed at once; beyond it the least recently active eighth is reported
    /// as it stands and forgotten (counted: `edgewatch_limit_drops_total`).
    pub max_connections: usize,
    /// Requests on one connection waiting for their responses; beyond it pairing is given up
    /// for that connection (a `loss` record says so).
    pub max_pending_exchanges: usize,
    /// Close frames kept per WebSocket session (all are counted).
    pub max_close_frames: usize,
}

impl Default for HopConfig {
    fn default() -> Self {
        let limits = super::tracker::TrackerLimits::default();
        Self {
            enabled: true,
            ports: vec![crate::exposure::config::GATEWAY_PORT],
            interfaces: vec!["lo".to_owned()],
            docker_bridges: true,
            drain_interval: DEFAULT_DRAIN_INTERVAL,
            idle_expiry: Duration::from_secs(2 * 3600),
            max_connections: limits.max_connections,
            max_pending_exchanges: limits.max_pending_exchanges,
            max_close_frames: limits.max_close_frames,
        }
    }
}

impl HopConfig {
    /// The tracker's count limits.
    pub fn limits(&self) -> super::tracker::TrackerLimits {
        super::tracker::TrackerLimits {
            max_connections: self.max_connections,
            max_pending_exchanges: self.max_pending_exchanges,
            max_close_frames: self.max_close_frames,
        }
    }
}

impl HopConfig {
    pub fn validate(&self) -> Checked {
        if self.enabled && self.ports.is_empty() {
            return Err(Invalid::new(
                "hop.ports",
                "[]",
                "give at least one upstream port, or set hop.enabled = false",
            ));
        }
        if let Some(port) = self.ports.iter().find(|p| **p == 0) {
            return Err(Invalid::new(
                "hop.ports",
                port.to_string(),
                "port 0 is not a port",
            ));
        }
        if self.ports.len() > 64 {
            return Err(Invalid::new(
                "hop.ports",
                format!("{} ports", self.ports.len()),
                "at most 64 upstream ports",
            ));
        }
        if let Some(name) = self
            .interfaces
            .iter()
            .find(|i| i.is_empty() || i.len() > 15 || i.contains('/'))
        {
            return Err(Invalid::new(
                "hop.interfaces",
                format!("{name:?}"),
                "not an interface name (1 to 15 characters, no '/')",
            ));
        }
        validate::at_least("hop.idle_expiry", self.idle_expiry, Duration::from_secs(1))?;
        validate::between(
            "hop.drain_interval",
            self.drain_interval,
            Duration::from_millis(5),
            Duration::from_secs(1),
        )?;
        validate::nonzero(&[
            ("hop.max_connections", self.max_connections),
            ("hop.max_pending_exchanges", self.max_pending_exchanges),
            ("hop.max_close_frames", self.max_close_frames),
        ])
    }
}
