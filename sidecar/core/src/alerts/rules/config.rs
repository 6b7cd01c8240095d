//! The proxy's configuration in the alert engine: its static findings (`config.*`) open as
//! incidents and resolve exactly when a re-read no longer has them (not by quiet period), and
//! its routes let the runtime rules cite the directive behind what they see: the read timeout
//! that cut a session, the location that drops the Upgrade headers, the `proxy_pass` to a
//! stale port.
use serde_json::{json, Value};

use super::{super::*, session_evidence};
use crate::proxy::{Finding, Route};

/// Whether a session's idle time is a configured timeout: a timer never fires early (half a
/// second for the hop's timestamps), and late by the event loop's delay on a busy machine (2 s,
/// or 10% of long timeouts).
fn is_timeout(idle: Duration, timeout: Duration) -> bool {
    let early = Duration::from_millis(500);
    let late = Duration::from_secs(2).max(timeout / 10);
    idle + early >= timeout && idle <= timeout + late
}

impl Engine {
    /// The configuration as read now (live at start and after each change; offline from
    /// `--proxy-config`): its routes replace the previous ones; findings open, those gone
    /// resolve.
    pub fn proxy_config(
        &mut self,
        routes: Vec<Route>,
        findings: &[Finding],
        now_ns: u64,
        out: &mut Vec<Alert>,
    ) {
        self.proxy_routes = routes;
        if !self.cfg.enabled {
            return;
        }
        let keys: BTreeSet<String> = findings.iter().map(Finding::key).collect();
        let gone: Vec<String> = self
            .open
            .iter()
            .filter(|(k, i)| i.rule.starts_with("config.") && !keys.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.resolve(&key, now_ns, out);
        }
        for f in findings {
            let key = f.key();
            if self.open.contains_key(&key) {
                continue;
            }
            self.matched(
                Match {
                    key,
                    rule: f.rule,
                    severity: f.severity,
                    summary: if f.summary.contains(&f.at.to_string()) {
                        f.summary.clone()
                    } else {
                        format!("{} ({})", f.summary, f.at)
                    },
                    first_move: f.first_move,
                    at_ns: now_ns,
                    evidence: vec![f.evidence.clone()],
                    counts: vec![("findings", 1)],
                    detail: json!({ "at": f.at.to_string(), "file": f.at.file, "line": f.at.line }),
                },
                out,
            );
        }
    }

    /// The routes that send requests to `port`, as citations.
    pub(super) fn cite(&self, port: u16) -> Vec<Value> {
        self.proxy_routes
            .iter()
            .filter_map(|r| {
                let t = r.targets.iter().find(|t| t.port == port)?;
                Some(json!({
                    "proxy": r.proxy,
                    "location": r.location,
                    "location_at": r.location_at.to_string(),
                    "proxy_pass_at": t.at.to_string(),
                    "target": format!("{}:{}", t.host, t.port),
                }))
            })
            .collect()
    }

    /// The routes to `port` in words, for a summary ("" when the configuration is unknown).
    pub(super) fn cite_text(&self, port: u16) -> String {
        let parts: Vec<String> = self
            .proxy_routes
            .iter()
            .filter_map(|r| {
                let t = r.targets.iter().find(|t| t.port == port)?;
                Some(format!(
                    "{} location {} at {}, proxy_pass at {}",
                    r.proxy, r.location, r.location_at, t.at
                ))
            })
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join("; "))
        }
    }

    /// A proxy-closed idle session whose idle time is a configured timeout of a route to its
    /// port: the timeout disconnect, on the first session, naming the directive. Returns
    /// whether it matched.
    pub(super) fn configured_timeout(&mut self, s: &WsSession, out: &mut Vec<Alert>) -> bool {
        let port = s.conn.server.port();
        let idle = Duration::from_nanos(s.idle_before_end_ns);
        let found = self.proxy_routes.iter().find_map(|r| {
            if !r.targets.iter().any(|t| t.port == port) {
                return None;
            }
            [
                ("proxy_read_timeout", &r.read_timeout),
                ("proxy_send_timeout", &r.send_timeout),
            ]
            .into_iter()
            .find(|(_, t)| is_timeout(idle, t.value))
            .map(|(name, t)| (r.clone(), name, t.clone()))
        });
        let Some((route, directive, timeout)) = found else {
            return false;
        };
        let at = match &timeout.at {
            Some(a) => a.to_string(),
            None => format!(
                "nginx's default, not set in location {} ({})",
                route.location, route.location_at
            ),
        };
        let key = format!("{}:{port}", rule::TIMEOUT);
        let opening = !self.open.contains_key(&key);
        self.matched(
            Match {
                key,
                rule: rule::TIMEOUT,
                severity: Severity::Warning,
                summary: format!(
                    "a WebSocket session to port {port} was closed by the proxy without a close \
                     frame after {:.1} s idle: {directive} {} s in location {} ({at}); clients \
                     see 1006",
                    idle.as_secs_f64(),
                    timeout.value.as_secs_f64(),
                    route.location,
                ),
                first_move: MOVE_TIMEOUT,
                at_ns: s.end_ts_ns,
                evidence: vec![session_evidence(s)],
                counts: vec![("sessions", 1)],
                detail: if opening {
                    json!({
                        "port": port,
                        "observed_idle_s": idle.as_secs_f64(),
                        "directive": directive,
                        "configured_s": timeout.value.as_secs_f64(),
                        "at": timeout.at.as_ref().map(ToString::to_string),
                        "location": route.location,
                        "location_at": route.location_at.to_string(),
                        "recommended_s": 600,
                    })
                } else {
                    Value::Null
                },
            },
            out,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_fires_late_never_early() {
        let t = Duration::from_secs(60);
        assert!(is_timeout(Duration::from_millis(60_300), t));
        assert!(is_timeout(Duration::from_millis(59_700), t));
        assert!(
            is_timeout(Duration::from_secs(65), t),
            "late on a busy machine"
        );
        assert!(
            !is_timeout(Duration::from_secs(58), t),
            "a timer never fires 2 s early"
        );
        assert!(!is_timeout(Duration::from_secs(67), t));
        assert!(is_timeout(
            Duration::from_millis(4_500),
            Duration::from_secs(3)
        ));
        assert!(!is_timeout(Duration::from_secs(6), Duration::from_secs(3)));
    }
}
