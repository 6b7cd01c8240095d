//! The live side of the proxy's configuration: at start and on every change (a file's size
//! or time, a master started or gone, a reload's new workers, Caddy's running configuration)
//! the running nginx masters' and Caddy's configuration is read again; the findings are
//! recomputed each poll against the listeners, listed again whenever one opened or closed (a
//! Gateway moved to another port makes a `proxy_pass` stale without any file changing).
//! What changed goes to the pipeline, which opens and resolves the `config.*` incidents; each
//! re-read also names the joinable access logs of the routes to the Gateway's ports, which the
//! driver follows when it takes them from the configuration.
//!
//! Listing the processes (a read of every `/proc/PID/cmdline`, ~4 us a process) is done only
//! when something may have started a proxy: a listener opened or closed (a proxy listens;
//! the state probe sees every namespace), events lost, a known master's workers or files
//! changed, or [`FULL_SCAN_EVERY`] passed. On a host with hundreds of processes that was most
//! of an idle sidecar's CPU.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgewatch_core::proxy::{self, routes::routes, Facts, Finding, Route};

use crate::{
    config::Config,
    sources::{proxies, sockdiag},
    throttle::Throttle,
};

/// Processes are listed again at least this often, whatever the probes say (a proxy that
/// started without opening a listener of its own, e.g. one handed its sockets).
pub(super) const FULL_SCAN_EVERY: Duration = Duration::from_secs(30);
/// Polls that list the processes after a listener changed: a proxy's title and children
/// settle within milliseconds of its listen (nginx forks its master after binding), so the
/// second look, a poll later, sees what the first may have caught half-started.
const SCANS_AFTER_A_CHANGE: u8 = 2;

/// When the proxy watch lists the processes again (pure: the caller gives the time and the
/// count of listener changes and lost events so far).
#[derive(Debug, Default)]
pub(super) struct ScanGate {
    seen: Option<u64>,
    pending: u8,
    last: Option<Instant>,
}

impl ScanGate {
    /// Whether to list the processes now. `changes` counts the listeners opened and closed
    /// and the probe events lost so far.
    pub(super) fn due(&mut self, changes: u64, now: Instant) -> bool {
        if self.seen != Some(changes) {
            self.seen = Some(changes);
            self.pending = SCANS_AFTER_A_CHANGE;
        }
        let stale = self
            .last
            .is_none_or(|at| now.saturating_duration_since(at) >= FULL_SCAN_EVERY);
        if self.pending == 0 && !stale {
            return false;
        }
        self.pending = self.pending.saturating_sub(1);
        self.last = Some(now);
        true
    }

    /// Lists them at the next poll (a master's workers or files changed).
    pub(super) fn force(&mut self) {
        self.pending = self.pending.max(1);
    }
}

/// What the last poll saw.
pub(super) struct ProxyWatch {
    gate: ScanGate,
    /// The last listing: nginx masters and Caddy instances.
    procs: (Vec<proxies::NginxMaster>, Vec<proxies::CaddyInstance>),
    /// The listening sockets the findings were last judged by (`None`: unknown).
    listeners: Option<Vec<(std::net::IpAddr, u16)>>,
    /// The masters' and files' part of `fingerprint`, as last seen.
    masters_fingerprint: Option<u64>,
    fingerprint: Option<u64>,
    files: Vec<PathBuf>,
    routes: Vec<Route>,
    /// What the pipeline was last given.
    given: Option<(Vec<Route>, Vec<Finding>)>,
    errors: Throttle,
}

/// A poll's outcome for the driver: what to hand the pipeline, and what to say.
pub(super) struct Poll {
    /// The processes were listed.
    pub listed: bool,
    pub update: Option<(Vec<Route>, Vec<Finding>)>,
    /// A line for the output (the configuration read, or why not).
    pub said: Option<(String, serde_json::Value)>,
    /// When the configuration was read again: the joinable access logs its routes to the
    /// Gateway's ports write (as this process reaches them), of every proxy that could be read.
    pub access_logs: Option<Vec<PathBuf>>,
}

impl ProxyWatch {
    pub(super) fn new() -> Self {
        Self {
            gate: ScanGate::default(),
            procs: (Vec::new(), Vec::new()),
            listeners: None,
            masters_fingerprint: None,
            fingerprint: None,
            files: Vec::new(),
            routes: Vec::new(),
            given: None,
            errors: Throttle::new(std::time::Duration::from_secs(60)),
        }
    }

    /// Lists the processes again if due (see [`ScanGate`]): whether it did, and the known
    /// masters' fingerprint when it did not (computed to see whether one changed).
    fn list_if_due(&mut self, changes: u64) -> (bool, Option<u64>) {
        let now = Instant::now();
        let mut listed = self.gate.due(changes, now);
        // The known masters' workers and the size and time of their files.
        let mut masters_fp = None;
        if !listed {
            let fp = proxies::fingerprint(&self.procs.0, &self.files);
            if self.masters_fingerprint == Some(fp) {
                masters_fp = Some(fp);
            } else {
                // A known master gone or reloaded, or one of its files changed.
                self.gate.force();
                listed = self.gate.due(changes, now);
            }
        }
        if listed {
            self.procs = proxies::scan();
        }
        (listed, masters_fp)
    }

    /// `changes`: listeners opened and closed, and probe events lost, so far (see
    /// [`ScanGate::due`]).
    pub(super) fn poll(&mut self, config: &Config, changes: u64) -> Poll {
        use std::hash::{Hash as _, Hasher as _};
        let mut said = None;
        let (listed, masters_fp) = self.list_if_due(changes);
        let (masters, caddies) = self.procs.clone();
        // Caddy's running configuration is asked each poll (its admin API on loopback): a
        // change made through the API touches no file.
        let caddies: Vec<_> = caddies
            .into_iter()
            .map(|c| {
                let loaded = proxies::load_caddy(&c);
                (c, loaded)
            })
            .collect();
        let fingerprint = |masters_fp: u64| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            masters_fp.hash(&mut h);
            for (c, loaded) in &caddies {
                c.hash(&mut h);
                match loaded {
                    Ok((_, _, digest)) => digest.hash(&mut h),
                    Err(e) => e.hash(&mut h),
                }
            }
            h.finish()
        };
        let mut masters_fp =
            masters_fp.unwrap_or_else(|| proxies::fingerprint(&masters, &self.files));
        let fp = fingerprint(masters_fp);
        let reread = self.fingerprint != Some(fp);
        let mut access_logs = None;
        if reread {
            let mut logs = Vec::new();
            let mut all = Vec::new();
            let mut files = Vec::new();
            let mut errors = Vec::new();
            for m in &masters {
                let (tree, read) = proxies::load_master_files(m);
                files.extend(read);
                match tree {
                    Ok(t) => {
                        let read = routes(&t);
                        proxies::access_logs_of(m.pid, &read, &config.hop.ports, &mut logs);
                        all.extend(read);
                    }
                    Err(e) => errors.push(format!("nginx master {}: {e}", m.pid)),
                }
            }
            for (c, loaded) in &caddies {
                match loaded {
                    Ok((r, _, _)) => {
                        proxies::access_logs_of(c.pid, r, &config.hop.ports, &mut logs);
                        all.extend(r.iter().cloned());
                    }
                    Err(e) => errors.push(e.clone()),
                }
            }
            self.files = files;
            access_logs = Some(logs);
            // The fingerprint of what was just read (its files' times).
            masters_fp = proxies::fingerprint(&masters, &self.files);
            self.fingerprint = Some(fingerprint(masters_fp));
            if errors.is_empty() {
                said = Some((
                    format!(
                        "proxy configuration read: {} nginx master(s), {} Caddy, {} route(s), {} file(s)",
                        masters.len(),
                        caddies.len(),
                        all.len(),
                        self.files.len()
                    ),
                    serde_json::json!({
                        "event": "read",
                        "masters": masters,
                        "caddy": caddies.iter().map(|(c, _)| c).collect::<Vec<_>>(),
                        "routes": all.len(),
                        "files": self.files.len(),
                    }),
                ));
                self.routes = all;
            } else if self.errors.allow(std::time::Instant::now()).is_some() {
                // The previous routes stay: the proxy keeps running its last good configuration.
                said = Some((
                    format!("proxy configuration not read: {}", errors.join("; ")),
                    serde_json::json!({ "event": "unreadable", "errors": errors }),
                ));
            }
        }
        self.masters_fingerprint = Some(masters_fp);
        // Unknown (sock_diag failed): nothing is judged by what listens. Without routes
        // nothing is judged at all, so the sockets are not listed (on a machine without a
        // proxy). They are listed again when the listeners may have changed (when the
        // processes are) or the configuration was read.
        if self.routes.is_empty() {
            self.listeners = None;
        } else if listed || reread || self.listeners.is_none() {
            self.listeners = sockdiag::tcp_listening().ok();
        }
        let facts = Facts {
            listeners: self.listeners.as_deref(),
            gateway_ports: &config.hop.ports,
            min_read_timeout: config.proxy.min_read_timeout,
        };
        let found = proxy::findings(&self.routes, &facts);
        let now = (self.routes.clone(), found);
        let update = (self.given.as_ref() != Some(&now)).then(|| {
            self.given = Some(now.clone());
            now
        });
        Poll {
            listed,
            update,
            said,
            access_logs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_listed_after_a_listener_change_and_at_the_full_scan_interval() {
        let mut gate = ScanGate::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The first poll lists them; then nothing changed: not again until the interval.
        assert!(gate.due(0, at(0)));
        assert!(gate.due(0, at(2)), "the second look after the start");
        assert!(!gate.due(0, at(4)));
        assert!(!gate.due(0, at(31)));
        assert!(
            gate.due(0, at(32)),
            "{FULL_SCAN_EVERY:?} since the last listing"
        );
        assert!(!gate.due(0, at(34)));
        // A listener opened (or events lost): listed at the next two polls, then not.
        assert!(gate.due(1, at(36)));
        assert!(gate.due(1, at(38)));
        assert!(!gate.due(1, at(40)));
        // Two changes between polls are one.
        assert!(gate.due(3, at(42)));
        assert!(gate.due(3, at(44)));
        assert!(!gate.due(3, at(46)));
        // Forced (a known master's workers or files changed): the next poll lists them.
        gate.force();
        assert!(gate.due(3, at(48)));
        assert!(!gate.due(3, at(50)));
    }
}
