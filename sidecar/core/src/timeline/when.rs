//! `--since` / `--until` times.

/// A time for `--since` / `--until`: `now`, a relative `-15m` (before `now_ns`), or an
/// absolute RFC 3339 time (`2026-11-21T02:10:00Z`; without a zone it is UTC).
pub fn parse_time(text: &str, now_ns: i64) -> Result<i64, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_ns);
    }
    if let Some(rel) = text.strip_prefix('-') {
        let d = humantime::parse_duration(rel)
            .map_err(|e| format!("{text:?} is not a relative time like -15m: {e}"))?;
        return Ok(now_ns.saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)));
    }
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).map_err(|e| {
        format!("{text:?} is neither now, a relative time like -15m, nor a time like 2026-11-21T02:10:00Z: {e}")
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn absolute_and_relative_times() {
        let now = 1_795_300_000_000_000_000;
        assert_eq!(super::parse_time("now", now), Ok(now));
        assert_eq!(super::parse_time("-15m", now), Ok(now - 900_000_000_000));
        assert_eq!(
            super::parse_time("2026-11-21T02:10:00Z", now),
            Ok(1_795_227_000_000_000_000)
        );
        assert_eq!(
            super::parse_time("2026-11-21 02:10:00", now),
            Ok(1_795_227_000_000_000_000)
        );
        assert!(super::parse_time("yesterday", now).is_err());
        assert!(super::parse_time("-soon", now).is_err());
    }
}
