//! Time as edgewatch writes it.
use std::time::{Duration, UNIX_EPOCH};

/// Unix nanoseconds as RFC 3339 with milliseconds (UTC).
pub fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}
