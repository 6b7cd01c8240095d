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

/// The running nginx masters and `caddy run` processes (every PID namespace the sidecar
/// sees), in one pass over `/proc`: each process's command line is read once
/// (nginx's master says what it is there, and `caddy run` too), and `comm` only for the few
/// whose second argument is `run`. The proxy watch does this every `proxy.poll_interval`, so
/// a pass costs a read per process, not two.
pub fn scan() -> (Vec<NginxMaster>, Vec<CaddyInstance>) {
    let (mut masters, mut caddies) = (Vec::new(), Vec::new());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (masters, caddies);
    };
    let mut raw = Vec::new();
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        if read_proc(&format!("/proc/{pid}/cmdline"), &mut raw).is_err() || raw.is_empty() {
            // Gone, or a kernel thread (no command line).
            continue;
        }
        if let Some(m) = nginx_master(pid, &raw) {
            masters.push(m);
        } else if let Some(c) = caddy_instance(pid, &raw) {
            caddies.push(c);
        }
    }
    masters.sort_by_key(|m| m.pid);
    caddies.sort_by_key(|c| c.pid);
    (masters, caddies)
}

/// The whole of a `/proc` file into `buf`, by plain reads: `read_to_end` first asks the file's
/// size and position (`statx`, `lseek`), two more system calls per process for a file whose
/// size `/proc` does not know.
fn read_proc(path: &str, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read as _;
    buf.clear();
    let mut f = std::fs::File::open(path)?;
    let mut chunk = [0u8; 4096];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Process `pid` as an nginx master, by its command line (NUL-separated, as `/proc` gives it).
fn nginx_master(pid: u32, raw: &[u8]) -> Option<NginxMaster> {
    // nginx rewrites its argv: the master's reads `nginx: master process ...`.
    if !raw.starts_with(b"nginx: master process") {
        return None;
    }
    let cmdline = String::from_utf8_lossy(raw).replace('\0', " ");
    let (conf, _) = master_conf(cmdline.trim())?;
    // Relative includes resolve against the configuration file's directory.
    let prefix = conf.parent().map(Path::to_path_buf).unwrap_or_default();
    Some(NginxMaster { pid, conf, prefix })
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
        use std::io::Read as _;
        let real = self.under(path);
        self.read.push(real.clone());
        // Another process's root: symbolic links resolved in it (`sources::in_root`), so a
        // link in a container's configuration names the container's file, not this
        // machine's. Never blocking on a FIFO.
        let (file, _) = super::in_root::open(&real, 0)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other(
                "not a regular file: a configuration file is read from a regular file",
            ));
        }
        let len = meta.len();
        if len > MAX_FILE {
            return Err(std::io::Error::other(format!(
                "{len} bytes: larger than the {MAX_FILE}-byte limit for a configuration file"
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The regular files `pattern` matches, as nginx's glob(3) finds them (sorted; a
    /// wildcard matches no leading dot), every directory listed and every match judged in
    /// the process's root: a link in a container to `/etc/...` lists the container's
    /// directory, never this machine's.
    fn glob(&mut self, pattern: &Path) -> Vec<PathBuf> {
        use std::path::Component;
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let mut found = vec![PathBuf::from("/")];
        for part in pattern.components() {
            let name = match part {
                Component::Normal(n) => n,
                Component::ParentDir => std::ffi::OsStr::new(".."),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
            };
            let wild = name.as_encoded_bytes().iter().any(|b| b"*?[".contains(b));
            if !wild {
                found.iter_mut().for_each(|p| p.push(name));
                continue;
            }
            let Some(matcher) = name.to_str().and_then(|n| glob::Pattern::new(n).ok()) else {
                return Vec::new();
            };
            found = found
                .iter()
                .flat_map(|dir| {
                    self.list(dir)
                        .into_iter()
                        .filter(|n| n.to_str().is_some_and(|n| matcher.matches_with(n, options)))
                        .map(move |n| dir.join(n))
                })
                .collect();
        }
        found.retain(|p| {
            super::in_root::open(&self.under(p), libc::O_PATH)
                .and_then(|(f, _)| f.metadata())
                .is_ok_and(|m| m.is_file())
        });
        found.sort();
        found
    }
}

impl RootFiles {
    /// The names in the directory `dir` (as the process names it), listed in its root.
    fn list(&self, dir: &Path) -> Vec<std::ffi::OsString> {
        super::in_root::list_dir(&self.under(dir))
            .into_iter()
            .map(|(_, e)| e.file_name())
            .collect()
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

/// One running proxy's configuration as read now.
pub struct Running {
    /// `nginx master PID (FILE)` or `caddy PID (SOURCE)`.
    pub source: String,
    pub pid: u32,
    pub routes: Result<Vec<edgewatch_core::proxy::Route>, String>,
    /// The files read (nginx) and a digest of what was read (Caddy's JSON): what a change
    /// shows in.
    pub files: Vec<PathBuf>,
    pub digest: u64,
}

/// Every running nginx master and Caddy, read as each runs.
pub fn running_proxies() -> Vec<Running> {
    let mut out = Vec::new();
    let (masters, caddies) = scan();
    for m in masters {
        let (tree, files) = load_master_files(&m);
        out.push(Running {
            source: format!("nginx master {} ({})", m.pid, m.conf.display()),
            pid: m.pid,
            routes: tree
                .map(|t| edgewatch_core::proxy::routes::routes(&t))
                .map_err(|e| format!("nginx master {}: {e}", m.pid)),
            files,
            digest: 0,
        });
    }
    for c in caddies {
        let (source, routes, digest) = match load_caddy(&c) {
            Ok((routes, source, digest)) => (source, Ok(routes), digest),
            Err(e) => (format!("caddy {}", c.pid), Err(e), 0),
        };
        out.push(Running {
            source,
            pid: c.pid,
            routes,
            files: c
                .config
                .iter()
                .map(|p| RootFiles::of_process(c.pid).under(p))
                .collect(),
            digest,
        });
    }
    out
}

/// The access logs of the running proxies' routes to `ports`, in a format the join reads
/// (JSON with the request id: the README's `log_format edgewatch`, Caddy's JSON log with the
/// X-Request-Id response header), as this process reaches them: the path itself in the same
/// mount namespace, else through `/proc/PID/root`.
pub fn gateway_access_logs(running: &[Running], ports: &[u16]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in running {
        if let Ok(routes) = &p.routes {
            access_logs_of(p.pid, routes, ports, &mut out);
        }
    }
    out
}

/// The joinable access logs of one proxy process's `routes` to `ports` (see
/// [`gateway_access_logs`]), added to `out` unless already there.
pub fn access_logs_of(
    pid: u32,
    routes: &[edgewatch_core::proxy::Route],
    ports: &[u16],
    out: &mut Vec<PathBuf>,
) {
    let mut same_ns = None;
    for r in routes {
        if !r.targets.iter().any(|t| ports.contains(&t.port)) {
            continue;
        }
        for log in &r.access_logs {
            let joinable = log.json && log.request_id == Some(true);
            let path = Path::new(&log.path);
            if !joinable || !path.is_absolute() {
                continue;
            }
            let same = *same_ns.get_or_insert_with(|| {
                let own = std::fs::read_link("/proc/self/ns/mnt").ok();
                own.is_some() && std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == own
            });
            let reach = if same {
                path.to_path_buf()
            } else {
                RootFiles::of_process(pid).under(path)
            };
            if !out.contains(&reach) {
                out.push(reach);
            }
        }
    }
}

/// A running Caddy (`caddy run`, also what `caddy start` leaves running).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct CaddyInstance {
    pub pid: u32,
    /// `--config`, as Caddy sees it (relative to its working directory).
    pub config: Option<PathBuf>,
    pub adapter: Option<String>,
}

/// Process `pid` as a `caddy run`, by its command line (NUL-separated) and its `comm`.
fn caddy_instance(pid: u32, raw: &[u8]) -> Option<CaddyInstance> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    // Most processes are ruled out here, before anything is allocated or read.
    if raw.split(|b| *b == 0).nth(1) != Some(b"run") {
        return None;
    }
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut comm = Vec::new();
    read_proc(&format!("/proc/{pid}/comm"), &mut comm).ok()?;
    if comm.trim_ascii() != b"caddy" {
        return None;
    }
    let flag = |f: &str| {
        args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("{f}="))
                .map(str::to_owned)
                .or_else(|| (a == f).then(|| args.get(i + 1).cloned()).flatten())
        })
    };
    let config = flag("--config").map(|c| {
        let c = PathBuf::from(c);
        if c.is_relative() {
            // Relative to its working directory, as Caddy opened it.
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|cwd| cwd.join(&c))
                .unwrap_or(c)
        } else {
            c
        }
    });
    Some(CaddyInstance {
        pid,
        config,
        adapter: flag("--adapter"),
    })
}

/// Whether a Caddy configuration file is JSON (its adapter, or its name).
fn is_json(c: &CaddyInstance) -> bool {
    match c.adapter.as_deref() {
        Some(a) => a == "json",
        None => c
            .config
            .as_ref()
            .is_some_and(|p| p.extension().is_some_and(|e| e == "json")),
    }
}

/// The admin endpoint a Caddy configuration declares: JSON's `admin.listen`, a Caddyfile's
/// global `admin` option; `localhost:2019` by default; None when it is off or a socket file.
pub fn caddy_admin(text: &str, json: bool) -> Option<String> {
    let listen = if json {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        if v["admin"]["disabled"] == true {
            return None;
        }
        v["admin"]["listen"].as_str().map(str::to_owned)
    } else {
        // The global options block is the file's first block when it has no site address.
        let mut lines = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty());
        if lines.next() == Some("{") {
            lines
                .take_while(|l| *l != "}")
                .find_map(|l| l.strip_prefix("admin").map(|rest| rest.trim().to_owned()))
                .map(|a| a.trim_end_matches('{').trim().to_owned())
        } else {
            None
        }
    };
    match listen.as_deref() {
        Some("off") => None,
        Some(a) if a.starts_with("unix/") => None,
        Some("") | None => Some("localhost:2019".to_owned()),
        Some(a) if a.starts_with(':') => Some(format!("localhost{a}")),
        Some(a) => Some(a.to_owned()),
    }
}

/// One Caddy's routes: from its admin API when it answers (the configuration it runs), else
/// from its JSON config file, or its Caddyfile through `caddy adapt` (see [`super::caddy_adapt`]). Returns
/// the routes, the source's name and a digest of what was read (a change shows as a new
/// digest).
pub fn load_caddy(
    c: &CaddyInstance,
) -> Result<(Vec<edgewatch_core::proxy::Route>, String, u64), String> {
    use std::hash::{Hash as _, Hasher as _};
    let mut files = RootFiles::of_process(c.pid);
    let file_text = c.config.as_ref().map(|p| files.read(p));
    let json = is_json(c);
    let admin = match &file_text {
        Some(Ok(text)) => caddy_admin(text, json),
        Some(Err(_)) | None => Some("localhost:2019".to_owned()),
    };
    let digest = |text: &str| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    };
    let mut why = Vec::new();
    if let Some(addr) = &admin {
        let url = format!("http://{addr}/config/");
        let got = crate::outbound::Http::new(None, std::time::Duration::from_secs(2))
            .and_then(|http| crate::outbound::block_on(http.get_limited(&url, 16 << 20)))
            .and_then(|r| r);
        match got {
            Ok(a) if a.status == 200 => match serde_json::from_str(&a.body) {
                Ok(v) => {
                    let source = format!("caddy admin {addr}");
                    let routes =
                        edgewatch_core::proxy::caddy::routes(&v, &format!("{source} /config"));
                    return Ok((
                        routes,
                        format!("caddy {} ({source})", c.pid),
                        digest(&a.body),
                    ));
                }
                Err(e) => why.push(format!(
                    "its admin API at {addr} answered something that is not JSON: {e}"
                )),
            },
            Ok(a) => why.push(format!("its admin API at {url} answered {}", a.status)),
            Err(e) => why.push(format!("its admin API at {url} did not answer: {e:#}")),
        }
    } else {
        why.push("its admin API is off".to_owned());
    }
    match (&c.config, file_text) {
        (Some(path), Some(Ok(text))) if json => match serde_json::from_str(&text) {
            Ok(v) => {
                let routes =
                    edgewatch_core::proxy::caddy::routes(&v, &format!("{}#", path.display()));
                Ok((
                    routes,
                    format!("caddy {} ({})", c.pid, path.display()),
                    digest(&text),
                ))
            }
            Err(e) => Err(format!(
                "caddy {}: {} is not JSON: {e}",
                c.pid,
                path.display()
            )),
        },
        (Some(path), Some(Err(e))) => Err(format!(
            "caddy {}: {}; reading {}: {e}",
            c.pid,
            why.join("; "),
            path.display()
        )),
        (Some(path), Some(Ok(text))) => match super::caddy_adapt::adapt(c.pid, path, &text) {
            Ok(v) => {
                let routes = edgewatch_core::proxy::caddy::routes(
                    &v,
                    &format!("{} (caddy adapt)#", path.display()),
                );
                Ok((
                    routes,
                    format!("caddy {} ({}, adapted)", c.pid, path.display()),
                    digest(&v.to_string()),
                ))
            }
            Err(e) => Err(format!("caddy {}: {}; {e}", c.pid, why.join("; "))),
        },
        _ => Err(format!(
            "caddy {}: {}; no configuration file on its command line",
            c.pid,
            why.join("; ")
        )),
    }
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
        // Caddy's JSON (`caddy adapt` output, or its config file), else nginx.
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("--proxy-config {}: {e}", f.display()))?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let prefix = format!("{}#", f.display());
            routes.extend(edgewatch_core::proxy::caddy::routes(&v, &prefix));
            continue;
        }
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

    /// A container's configuration is read as its nginx reads it: a symbolic link with an
    /// absolute target names the container's file, never this machine's of that name.
    #[test]
    fn a_container_s_configuration_is_read_in_its_root() {
        let tmp = tempfile::tempdir().expect("dir");
        let host = tmp.path().join("secret.conf");
        std::fs::write(&host, "this machine's file").expect("file");
        let ctr = tmp.path().join("ctr");
        let inside = ctr.join(host.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(inside.parent().expect("dir")).expect("dirs");
        std::fs::write(&inside, "events {}").expect("conf");
        std::fs::create_dir_all(ctr.join("etc/nginx")).expect("etc/nginx");
        std::os::unix::fs::symlink(&host, ctr.join("etc/nginx/nginx.conf")).expect("link");
        let Some(child) = super::super::in_root::Chrooted::start(&ctr) else {
            return;
        };
        let mut files = RootFiles::of_process(child.0 as u32);
        let text = files.read(Path::new("/etc/nginx/nginx.conf"));
        assert_eq!(text.expect("read"), "events {}");
        // A FIFO is refused at once, not waited on.
        let fifo = std::ffi::CString::new(
            ctr.join("etc/nginx/fifo.conf")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = files
            .read(Path::new("/etc/nginx/fifo.conf"))
            .expect_err("a FIFO");
        assert!(e.to_string().contains("regular file"), "{e}");
    }

    /// An `include` glob in a container is listed in its root: through a link to a
    /// directory with an absolute target, the container's directory, never this machine's.
    #[test]
    fn a_container_s_include_glob_lists_its_own_directory() {
        let tmp = tempfile::tempdir().expect("dir");
        let host = tmp.path().join("confs");
        std::fs::create_dir(&host).expect("host dir");
        std::fs::write(host.join("this-machine.conf"), "").expect("host file");
        let ctr = tmp.path().join("ctr");
        let inside = ctr.join(host.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(inside.join("sub")).expect("dirs");
        for name in ["a.conf", "b.conf", ".hidden.conf", "c.txt"] {
            std::fs::write(inside.join(name), "").expect("file");
        }
        std::os::unix::fs::symlink(host.join("a.conf"), inside.join("link.conf")).expect("ln");
        std::fs::create_dir(inside.join("dir.conf")).expect("a directory");
        std::fs::create_dir_all(ctr.join("etc/nginx")).expect("etc/nginx");
        std::os::unix::fs::symlink(&host, ctr.join("etc/nginx/conf.d")).expect("link");
        let Some(child) = super::super::in_root::Chrooted::start(&ctr) else {
            return;
        };
        let mut files = RootFiles::of_process(child.0 as u32);
        let names = |found: Vec<PathBuf>| -> Vec<String> {
            found
                .iter()
                .map(|p| p.strip_prefix(&host).expect("under").display().to_string())
                .collect()
        };
        let found = files.glob(Path::new("/etc/nginx/conf.d/*.conf"));
        assert!(
            found.iter().all(|p| p.starts_with("/etc/nginx/conf.d")),
            "{found:?}"
        );
        let found: Vec<PathBuf> = found
            .iter()
            .map(|p| host.join(p.strip_prefix("/etc/nginx/conf.d").expect("under")))
            .collect();
        // The link is the container's (to its a.conf); the directory is no file.
        assert_eq!(names(found), ["a.conf", "b.conf", "link.conf"]);
        let found = files.glob(&host.join("*/../?.conf"));
        assert_eq!(
            names(found),
            [
                "dir.conf/../a.conf",
                "dir.conf/../b.conf",
                "sub/../a.conf",
                "sub/../b.conf"
            ]
        );
    }

    #[test]
    fn caddy_admin_addresses() {
        assert_eq!(
            caddy_admin("gw.test {\n reverse_proxy :1\n}\n", false).as_deref(),
            Some("localhost:2019")
        );
        assert_eq!(
            caddy_admin("{\n\tadmin 127.0.0.1:2999\n}\n:80 {\n}\n", false).as_deref(),
            Some("127.0.0.1:2999")
        );
        assert_eq!(caddy_admin("# c\n{\n  admin off\n}\n", false), None);
        assert_eq!(
            caddy_admin("{\n  admin :2020 {\n  }\n}\n", false).as_deref(),
            Some("localhost:2020")
        );
        assert_eq!(caddy_admin(r#"{"admin":{"disabled":true}}"#, true), None);
        assert_eq!(
            caddy_admin(r#"{"admin":{"listen":"127.0.0.1:7"}}"#, true).as_deref(),
            Some("127.0.0.1:7")
        );
        assert_eq!(
            caddy_admin(r#"{"apps":{}}"#, true).as_deref(),
            Some("localhost:2019")
        );
    }

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
