//! `[edge]`: the proxy's access logs, and the join with the hop.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{self, Checked, Invalid};

/// `[edge]`: access logs to follow and join.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Access-log files (nginx JSON, edgewatch_combined, or Caddy JSON; detected per line).
    /// None by default.
    pub access_logs: Vec<std::path::PathBuf>,
    /// How long a record waits for its other half before it is reported unmatched.
    #[serde(with = "humantime_serde")]
    pub join_window: Duration,
    /// How often the logs are read.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where reading positions are kept, so a restart neither loses nor repeats lines.
    pub state_dir: std::path::PathBuf,
    /// Which JSON keys of a non-Caddy JSON log hold which value, for layouts other than the
    /// README's (`time` must be seconds since the epoch, like nginx's `$msec`).
    pub json_fields: super::nginx::JsonFields,
    /// Records waiting for their other half in the join, all kinds together; beyond it the
    /// oldest eighth is reported unmatched at once (counted: `edgewatch_limit_drops_total`).
    pub max_pending: usize,
    /// Of those, records without a request id (each new one is compared with every waiting
    /// one to infer its match).
    pub max_without_id: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        let limits = super::join::JoinLimits::default();
        Self {
            access_logs: Vec::new(),
            join_window: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            state_dir: "/var/lib/edgewatch".into(),
            json_fields: super::nginx::JsonFields::default(),
            max_pending: limits.max_pending,
            max_without_id: limits.max_without_id,
        }
    }
}

impl EdgeConfig {
    /// The join's count limits.
    pub fn limits(&self) -> super::join::JoinLimits {
        super::join::JoinLimits {
            max_pending: self.max_pending,
            max_without_id: self.max_without_id,
        }
    }
}

impl EdgeConfig {
    pub fn validate(&self) -> Checked {
        if let Some(p) = self.access_logs.iter().find(|p| !p.is_absolute()) {
            return Err(Invalid::new(
                "edge.access_logs",
                format!("{:?}", p.display().to_string()),
                "must be an absolute path",
            ));
        }
        validate::absolute("edge.state_dir", &self.state_dir)?;
        validate::at_least(
            "edge.poll_interval",
            self.poll_interval,
            Duration::from_millis(10),
        )?;
        validate::nonzero(&[
            ("edge.max_pending", self.max_pending),
            ("edge.max_without_id", self.max_without_id),
        ])
    }

    /// The join window in nanoseconds.
    pub fn join_window_ns(&self) -> u64 {
        u64::try_from(self.join_window.as_nanos()).unwrap_or(u64::MAX)
    }
}
