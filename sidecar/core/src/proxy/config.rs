//! `[proxy]`: reading the edge proxy's configuration.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{self, Checked};

/// `[proxy]`: the running nginx masters' configuration, read at start and again when it
/// changes (a file's size or time, a new master, a reload's new workers).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Read it at all.
    pub enabled: bool,
    /// How often the files and the known masters are looked at for a change (the
    /// configuration is re-read only when one is seen). All processes are listed again only
    /// after a listener opened or closed, a known master changed, or every 30 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A read or send timeout under this cuts idle WebSockets (`config.short_timeout`).
    #[serde(with = "humantime_serde")]
    pub min_read_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(2),
            min_read_timeout: Duration::from_secs(600),
        }
    }
}

impl ProxyConfig {
    pub fn validate(&self) -> Checked {
        validate::at_least(
            "proxy.poll_interval",
            self.poll_interval,
            Duration::from_millis(100),
        )?;
        validate::at_least(
            "proxy.min_read_timeout",
            self.min_read_timeout,
            Duration::from_secs(1),
        )
    }
}
