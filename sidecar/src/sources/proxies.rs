//! Finds the running nginx masters and reads their configuration the way they read it (I/O):
//! the master's command line gives `-c` and `-p`, and every file is read through
//! `/proc/PID/root`, so it works from the sidecar's container too. Paths in the results are
//! the ones nginx sees.
use std::path::{Path, PathBuf};

use edgewatch_core::proxy::nginx::{self, Directive, Files, ParseError};

/// A running nginx master.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NginxMaster {
    pub pid: u32,
    /// The configuration file, as nginx sees it.
    pub conf: PathBuf,
    /// The directory relative `include`s are resolved against.
    pub prefix: PathBuf,
}

/// Debian's (and nginx's default build's) configuration file.
const DEFAULT_CONF: &str = "/etc/nginx/nginx.conf";
const DEFAULT_PREFIX: &str = "/usr/share/nginx";

/// What a master's command line says (`nginx: master process /usr/sbin/nginx -c FILE -p DIR
/// -g ...`, as nginx rewrites its argv).
pub fn master_conf(cmdline: &str) -> Option<(PathBuf, PathBuf)> {
    let rest = cmdline.strip_prefix("nginx: master process")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let flag = |f: &str| {
        words
            .iter()
            .position(|w| *w == f)
            .and_then(|i| words.get(i + 1))
            .map(PathBuf::from)
    };
    let prefix = flag("-p").unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX));
    let conf = match flag("-c") {
        Some(c) if c.is_relative() => prefix.join(c),
        Some(c) => c,
        None => PathBuf::from(DEFAULT_CONF),
    };
    Some((conf, prefix))
}

/// Every nginx master on this machine (every PID namespace the sidecar sees).
pub fn nginx_masters() -> Vec<NginxMaster> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<NginxMaster> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            let (conf, _) = master_conf(cmdline.trim())?;
            // Relative includes resolve against the configuration file's directory.
            let prefix = conf.parent().map(Path::to_path_buf).unwrap_or_default();
            Some(NginxMaster { pid, conf, prefix })
        })
        .collect();
    out.sort_by_key(|m| m.pid);
    out
}

/// Reads files under a root directory (a process's `/proc/PID/root`, or `/`), remembering
/// which (so a change to any of them can be noticed).
pub struct RootFiles {
    root: PathBuf,
    read: Vec<PathBuf>,
}

impl RootFiles {
    pub fn of_process(pid: u32) -> Self {
        Self {
            root: PathBuf::from(format!("/proc/{pid}/root")),
            read: Vec::new(),
        }
    }

    pub fn host() -> Self {
        Self {
            root: PathBuf::from("/"),
            read: Vec::new(),
        }
    }

    fn under(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

/// Configuration files larger than this are refused (a real one is a few KiB).
const MAX_FILE: u64 = 4 << 20;

impl Files for RootFiles {
    fn read(&mut self, path: &Path) -> std::io::Result<String> {
        let real = self.under(path);
        self.read.push(real.clone());
        let len = std::fs::metadata(&real)?.len();
        if len > MAX_FILE {
            return Err(std::io::Error::other(format!(
                "{len} bytes: larger than the {MAX_FILE}-byte limit for a configuration file"
            )));
        }
        let bytes = std::fs::read(&real)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn glob(&mut self, pattern: &Path) -> Vec<PathBuf> {
        let real = self.under(pattern);
        let Some(text) = real.to_str() else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = glob::glob(text)
            .map(|paths| {
                paths
                    .flatten()
                    .filter(|p| p.is_file())
                    .filter_map(|p| {
                        p.strip_prefix(&self.root)
                            .ok()
                            .map(|rel| Path::new("/").join(rel))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// A master's whole configuration, includes followed.
pub fn load_master(m: &NginxMaster) -> Result<Vec<Directive>, ParseError> {
    load_master_files(m).0
}

/// The same, with the files it read (as this process reaches them).
pub fn load_master_files(m: &NginxMaster) -> (Result<Vec<Directive>, ParseError>, Vec<PathBuf>) {
    let mut files = RootFiles::of_process(m.pid);
    let tree = nginx::load(&m.conf, &m.prefix, &mut files);
    (tree, files.read)
}

/// What changes when the configuration nginx runs may have: the masters, their workers (a
/// reload starts new ones), and the size and time of every file read last time.
pub fn fingerprint(masters: &[NginxMaster], files: &[PathBuf]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in masters {
        m.hash(&mut h);
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", m.pid))
            .unwrap_or_default()
            .hash(&mut h);
    }
    for f in files {
        match std::fs::metadata(f) {
            Ok(meta) => (meta.len(), meta.modified().ok()).hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

/// A configuration file given by the user (offline), read from this machine.
pub fn load_file(conf: &Path) -> Result<Vec<Directive>, ParseError> {
    let prefix = conf.parent().map(Path::to_path_buf).unwrap_or_default();
    nginx::load(conf, &prefix, &mut RootFiles::host())
}

/// The access logs of the running masters' locations that proxy to `ports`, in a format the
/// join reads (JSON with `$request_id`, as the README's `log_format edgewatch`), as this
/// process reaches them: the path itself in the same mount namespace, else through
/// `/proc/PID/root`.
pub fn gateway_access_logs(ports: &[u16]) -> Vec<PathBuf> {
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut out = Vec::new();
    for m in nginx_masters() {
        let Ok(tree) = load_master(&m) else { continue };
        let same_ns = own_ns.is_some()
            && std::fs::read_link(format!("/proc/{}/ns/mnt", m.pid)).ok() == own_ns;
        for r in edgewatch_core::proxy::routes::routes(&tree) {
            if !r.targets.iter().any(|t| ports.contains(&t.port)) {
                continue;
            }
            for log in &r.access_logs {
                let joinable = log
                    .format_text
                    .as_deref()
                    .is_some_and(|t| t.trim_start().starts_with('{') && t.contains("$request_id"));
                let path = Path::new(&log.path);
                if !joinable || !path.is_absolute() {
                    continue;
                }
                let reach = if same_ns {
                    path.to_path_buf()
                } else {
                    RootFiles::of_process(m.pid).under(path)
                };
                if !out.contains(&reach) {
                    out.push(reach);
                }
            }
        }
    }
    out
}

/// Configuration files sent in with a capture (`--proxy-config`): their routes and the
/// findings that need no machine (nothing is judged by what listens).
pub fn offline_model(
    files: &[PathBuf],
    gateway_ports: &[u16],
    min_read_timeout: std::time::Duration,
) -> anyhow::Result<
    Option<(
        Vec<edgewatch_core::proxy::Route>,
        Vec<edgewatch_core::proxy::Finding>,
    )>,
> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut routes = Vec::new();
    for f in files {
        let tree = load_file(f).map_err(|e| anyhow::anyhow!("--proxy-config: {e}"))?;
        routes.extend(edgewatch_core::proxy::routes::routes(&tree));
    }
    let facts = edgewatch_core::proxy::Facts {
        listeners: None,
        gateway_ports,
        min_read_timeout,
    };
    let findings = edgewatch_core::proxy::findings(&routes, &facts);
    Ok(Some((routes, findings)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_command_line() {
        assert_eq!(
            master_conf("nginx: master process /usr/sbin/nginx -g daemon on; master_process on;"),
            Some((PathBuf::from(DEFAULT_CONF), PathBuf::from(DEFAULT_PREFIX)))
        );
        assert_eq!(
            master_conf("nginx: master process nginx -p /tmp/t -c nginx.conf -g daemon off;"),
            Some((PathBuf::from("/tmp/t/nginx.conf"), PathBuf::from("/tmp/t")))
        );
        assert_eq!(master_conf("nginx: worker process"), None);
        assert_eq!(master_conf("/usr/bin/python3 nginx: master process"), None);
    }
}
