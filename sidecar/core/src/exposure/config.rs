//! `[exposure]`: which ports must stay on loopback, and which wide exposures are expected.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{self, Checked, Invalid};

use super::Proto;

/// The OpenClaw Gateway's conventional port.
pub const GATEWAY_PORT: u16 = 18789;

/// `[exposure]`: the exposure policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExposureConfig {
    /// Ports that must be reachable on loopback only (the Gateway's 18789 by default). A
    /// listener on any other address, or a DNAT rule publishing one of them without a loopback
    /// destination restriction, is a critical drift.
    pub watched_ports: Vec<u16>,
    /// Wildcard or public listeners (and NAT publishes) that are expected, for example the
    /// proxy on 80/443 and sshd on 22. Anything wildcard or public not listed here is drift.
    pub allow: Vec<AllowRule>,
    /// How often the socket inventory is re-read from the kernel (sock_diag) to reconcile it
    /// with the probe events. UDP sockets, which the TCP tracepoint does not see, are only
    /// noticed by this rescan.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// A drift finding that goes away resolves only once it stayed away this long, so a
    /// restarting proxy (its sockets closed and reopened within a second) is not a
    /// resolved-then-firing pair. 0 resolves at once.
    #[serde(with = "humantime_serde")]
    pub flap_window: Duration,
}

impl Default for ExposureConfig {
    fn default() -> Self {
        Self {
            watched_ports: vec![GATEWAY_PORT],
            allow: vec![
                AllowRule::port(Proto::Tcp, 22, "sshd"),
                AllowRule::port(Proto::Tcp, 80, "HTTP on the reverse proxy"),
                AllowRule::port(Proto::Tcp, 443, "HTTPS on the reverse proxy"),
                AllowRule::port(Proto::Udp, 443, "HTTP/3 on the reverse proxy (Caddy)"),
                AllowRule::port(Proto::Udp, 68, "DHCP client"),
                AllowRule::port(Proto::Udp, 546, "DHCPv6 client"),
            ],
            rescan_interval: Duration::from_secs(5),
            flap_window: Duration::from_secs(2),
        }
    }
}

/// One allowed exposure. All given fields must match.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// The port (host side for NAT publishes).
    pub port: u16,
    /// `tcp` or `udp`; both when absent.
    #[serde(default)]
    pub proto: Option<Proto>,
    /// Only when the owning process has this name (its `comm`, e.g. `caddy`, `nginx`).
    #[serde(default)]
    pub process: Option<String>,
    /// Why this is allowed; shown in the inventory.
    #[serde(default)]
    pub reason: Option<String>,
}

impl AllowRule {
    pub fn port(proto: Proto, port: u16, reason: &str) -> Self {
        Self {
            port,
            proto: Some(proto),
            process: None,
            reason: Some(reason.to_owned()),
        }
    }
}

impl ExposureConfig {
    pub fn validate(&self) -> Checked {
        let port0 = "port 0 is not a port a listener can use";
        if let Some(port) = self.watched_ports.iter().find(|p| **p == 0) {
            return Err(Invalid::new(
                "exposure.watched_ports",
                port.to_string(),
                port0,
            ));
        }
        for (i, rule) in self.allow.iter().enumerate() {
            if rule.port == 0 {
                return Err(Invalid::new(
                    format!("exposure.allow[{i}].port"),
                    "0",
                    port0,
                ));
            }
            if self.watched_ports.contains(&rule.port) {
                return Err(Invalid::new(
                    format!("exposure.allow[{i}].port"),
                    rule.port.to_string(),
                    "a watched port must stay loopback-only and cannot also be allowed; \
                     remove it from exposure.watched_ports if exposing it is intended",
                ));
            }
            if matches!(&rule.process, Some(p) if p.is_empty() || p.len() > 15) {
                return Err(Invalid::new(
                    format!("exposure.allow[{i}].process"),
                    format!("{:?}", rule.process.as_deref().unwrap_or_default()),
                    "a process name (comm) has 1 to 15 characters",
                ));
            }
        }
        validate::at_least(
            "exposure.rescan_interval",
            self.rescan_interval,
            Duration::from_millis(100),
        )?;
        if self.flap_window > Duration::from_secs(60) {
            return Err(Invalid::new(
                "exposure.flap_window",
                validate::duration(self.flap_window),
                "at most 1m: a longer one hides real changes",
            ));
        }
        Ok(())
    }
}
