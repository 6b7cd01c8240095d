//! `[nat]`: whether and how often the NAT rules (Docker's DNAT publishes) are read.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use edgewatch_core::validate::{self, Checked};

/// `[nat]`: netfilter NAT rule reading.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatConfig {
    /// Read NAT rules at all.
    pub enabled: bool,
    /// How often the rules are re-read to notice changes.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl NatConfig {
    pub fn validate(&self) -> Checked {
        validate::at_least(
            "nat.poll_interval",
            self.poll_interval,
            Duration::from_millis(100),
        )
    }
}
