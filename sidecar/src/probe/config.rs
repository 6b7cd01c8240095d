//! `[probes]`: the ring buffer and tracefs.
use serde::{Deserialize, Serialize};

use edgewatch_core::validate::{Checked, Invalid};

/// `[probes]`: kernel probe settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Size of the kernel-to-user ring buffer in bytes: a power of two, at least 4096
    /// (one page). Events that do not fit are counted as drops.
    pub ring_buffer_bytes: u32,
    /// Where tracefs is mounted (it is mounted there if missing).
    pub tracefs: String,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 4 * 1024 * 1024,
            tracefs: "/sys/kernel/tracing".to_owned(),
        }
    }
}

impl ProbeConfig {
    pub fn validate(&self) -> Checked {
        let rb = self.ring_buffer_bytes;
        if rb < 4096 || !rb.is_power_of_two() {
            return Err(Invalid::new(
                "probes.ring_buffer_bytes",
                rb.to_string(),
                "must be a power of two of at least 4096",
            ));
        }
        if !self.tracefs.starts_with('/') {
            return Err(Invalid::new(
                "probes.tracefs",
                format!("{:?}", self.tracefs),
                "must be an absolute path",
            ));
        }
        Ok(())
    }
}
