//! The live side of the proxy's configuration: at start and on every change (a file's size
//! or time, a master started or gone, a reload's new workers) the running nginx masters'
//! configuration is read again; the findings are recomputed against the listeners each poll
//! (a Gateway moved to another port makes a `proxy_pass` stale without any file changing).
//! What changed goes to the pipeline, which opens and resolves the `config.*` incidents.
use std::{net::IpAddr, path::PathBuf};

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
        let mut said = None;
        let masters = proxies::nginx_masters();
        let fp = proxies::fingerprint(&masters, &self.files);
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
            self.files = files;
            // The fingerprint of what was just read (its files' times).
            self.fingerprint = Some(proxies::fingerprint(&masters, &self.files));
            if errors.is_empty() {
                said = Some((
                    format!(
                        "proxy configuration read: {} nginx master(s), {} route(s), {} file(s)",
                        masters.len(),
                        all.len(),
                        self.files.len()
                    ),
                    serde_json::json!({
                        "event": "read",
                        "masters": masters,
                        "routes": all.len(),
                        "files": self.files.len(),
                    }),
                ));
                self.routes = all;
            } else if self.errors.allow(std::time::Instant::now()).is_some() {
                // The previous routes stay: nginx keeps running its last good configuration.
                said = Some((
                    format!("proxy configuration not read: {}", errors.join("; ")),
                    serde_json::json!({ "event": "unreadable", "errors": errors }),
                ));
            }
        }
        let listeners: Option<Vec<(IpAddr, u16)>> = sockdiag::listeners().ok().map(|l| {
            l.into_iter()
                .filter(|s| s.proto == edgewatch_core::exposure::Proto::Tcp)
                .map(|s| (s.addr, s.port))
                .collect()
        });
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
