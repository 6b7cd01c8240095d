//! The live side of the proxy's configuration: at start and on every change (a file's size
//! or time, a master started or gone, a reload's new workers, Caddy's running configuration)
//! the running nginx masters' and Caddy's configuration is read again; the findings are
//! recomputed against the listeners each poll (a Gateway moved to another port makes a
//! `proxy_pass` stale without any file changing).
//! What changed goes to the pipeline, which opens and resolves the `config.*` incidents.
use std::path::PathBuf;

use edgewatch_core::proxy::{self, routes::routes, Facts, Finding, Route};

use crate::{
    config::Config,
    sources::{proxies, sockdiag},
    throttle::Throttle,
};

/// What the last poll saw.
pub(super) struct ProxyWatch {
    fingerprint: Option<u64>,
    files: Vec<PathBuf>,
    routes: Vec<Route>,
    /// What the pipeline was last given.
    given: Option<(Vec<Route>, Vec<Finding>)>,
    errors: Throttle,
}

/// A poll's outcome for the driver: what to hand the pipeline, and what to say.
pub(super) struct Poll {
    pub update: Option<(Vec<Route>, Vec<Finding>)>,
    /// A line for the output (the configuration read, or why not).
    pub said: Option<(String, serde_json::Value)>,
}

impl ProxyWatch {
    pub(super) fn new() -> Self {
        Self {
            fingerprint: None,
            files: Vec::new(),
            routes: Vec::new(),
            given: None,
            errors: Throttle::new(std::time::Duration::from_secs(60)),
        }
    }

    pub(super) fn poll(&mut self, config: &Config) -> Poll {
        use std::hash::{Hash as _, Hasher as _};
        let mut said = None;
        let (masters, caddies) = proxies::scan();
        // Caddy's running configuration is asked each poll (its admin API on loopback): a
        // change made through the API touches no file.
        let caddies: Vec<_> = caddies
            .into_iter()
            .map(|c| {
                let loaded = proxies::load_caddy(&c);
                (c, loaded)
            })
            .collect();
        let fingerprint = |files: &[PathBuf]| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            proxies::fingerprint(&masters, files).hash(&mut h);
            for (c, loaded) in &caddies {
                c.hash(&mut h);
                match loaded {
                    Ok((_, _, digest)) => digest.hash(&mut h),
                    Err(e) => e.hash(&mut h),
                }
            }
            h.finish()
        };
        let fp = fingerprint(&self.files);
        if self.fingerprint != Some(fp) {
            let mut all = Vec::new();
            let mut files = Vec::new();
            let mut errors = Vec::new();
            for m in &masters {
                let (tree, read) = proxies::load_master_files(m);
                files.extend(read);
                match tree {
                    Ok(t) => all.extend(routes(&t)),
                    Err(e) => errors.push(format!("nginx master {}: {e}", m.pid)),
                }
            }
            for (_, loaded) in &caddies {
                match loaded {
                    Ok((r, _, _)) => all.extend(r.iter().cloned()),
                    Err(e) => errors.push(e.clone()),
                }
            }
            self.files = files;
            // The fingerprint of what was just read (its files' times).
            self.fingerprint = Some(fingerprint(&self.files));
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
        // Unknown (sock_diag failed): nothing is judged by what listens. Without routes
        // nothing is judged at all, so the sockets are not listed (every poll, on a machine
        // without a proxy).
        let listeners = if self.routes.is_empty() {
            None
        } else {
            sockdiag::tcp_listening().ok()
        };
        let facts = Facts {
            listeners: listeners.as_deref(),
            gateway_ports: &config.hop.ports,
            min_read_timeout: config.proxy.min_read_timeout,
        };
        let found = proxy::findings(&self.routes, &facts);
        let now = (self.routes.clone(), found);
        let update = (self.given.as_ref() != Some(&now)).then(|| {
            self.given = Some(now.clone());
            now
        });
        Poll { update, said }
    }
}
