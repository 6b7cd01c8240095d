//! Rate-limited warnings for things that can happen once per record (a malformed probe record,
//! an access-log line that does not parse, a log file that cannot be read on every poll): the
//! first is logged at once, then at most one per interval, each saying how many were held back
//! since the last. The totals are in the metrics either way.
use std::time::{Duration, Instant};

/// One warning's limiter.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(held back since the last one)` when this occurrence may be logged, else `None`
    /// (and it is counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// The live loop's per-record warnings.
#[derive(Debug)]
pub struct Warnings {
    pub probe_record: Throttle,
    pub edge_line: Throttle,
    pub log_read: Throttle,
}

impl Default for Warnings {
    fn default() -> Self {
        let every = Duration::from_secs(10);
        Self {
            probe_record: Throttle::new(every),
            edge_line: Throttle::new(every),
            log_read: Throttle::new(every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_and_the_rest_counted() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0), "the first is logged");
        for i in 1..=5 {
            assert_eq!(t.allow(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(
            t.allow(t0 + Duration::from_secs(10)),
            Some(5),
            "the next says how many were held back"
        );
        assert_eq!(t.allow(t0 + Duration::from_secs(25)), Some(0));
    }
}
