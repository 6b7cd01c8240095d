//! The embedded default store: a local ClickHouse 26.7 that edgewatch fetches once, caches,
//! starts and stops, so the main command gives a working store on a fresh machine.
//!
//! The server is the complete ClickHouse build that chDB ships as `libchdb.so` in the npm
//! package `@chdb/lib-linux-x64-gnu` (pinned, checked against the registry's SHA-512). Its
//! `chdb_query_cmdline` runs clickhouse-local with the given arguments; in 26.7 that can open
//! the HTTP and native listeners, which stay up while the call runs. edgewatch runs it in a
//! child process of its own binary (`edgewatch embedded-clickhouse`, hidden), so a crash of
//! one never takes the other down; the child stops when its parent is gone.
use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// The pinned package.
pub const VERSION: &str = "26.7.3-stable.1";
const TARBALL: &str =
    "https://registry.npmjs.org/@chdb/lib-linux-x64-gnu/-/lib-linux-x64-gnu-26.7.3-stable.1.tgz";
/// `dist.integrity` of that version in the npm registry.
const INTEGRITY: &str =
    "sha512-XP97mMqnc5tZpKQywR8N7cLTsHNiTmHr30pC5mzo3jWmukjKn2IBa60c2B/gWUNcuFjOMjWoorQICCqBVj5wpw==";

/// Where the library lives in the cache.
pub fn library_path(cache_dir: &Path) -> PathBuf {
    cache_dir
        .join("clickhouse")
        .join(VERSION)
        .join("libchdb.so")
}

fn verify(data_sha512: &[u8]) -> bool {
    use base64::Engine as _;
    let Some(b64) = INTEGRITY.strip_prefix("sha512-") else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .is_ok_and(|want| want == data_sha512)
}

/// Returns the cached library, fetching it first when missing (one process fetches at a
/// time; the others wait for it). Progress goes to the log.
pub fn ensure_library(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let lib = library_path(cache_dir);
    if lib.exists() {
        return Ok(lib);
    }
    let dir = lib.parent().unwrap_or(cache_dir).to_owned();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the ClickHouse cache {}", dir.display()))?;
    let lock_path = dir.join(".fetch.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if lib.exists() {
        return Ok(lib);
    }
    tracing::info!(
        url = TARBALL,
        "fetching ClickHouse {VERSION} for the embedded store (once, ~178 MB)"
    );
    let started = Instant::now();
    let tgz = dir.join("package.tgz.part");
    fetch(TARBALL, &tgz)?;
    let tmp_lib = dir.join("libchdb.so.part");
    {
        let file =
            std::fs::File::open(&tgz).with_context(|| format!("opening {}", tgz.display()))?;
        let mut archive =
            tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
        let mut found = false;
        for entry in archive
            .entries()
            .context("reading the ClickHouse package")?
        {
            let mut entry = entry.context("reading the ClickHouse package")?;
            let path = entry
                .path()
                .context("reading the ClickHouse package")?
                .into_owned();
            if path == Path::new("package/libchdb.so") {
                let mut out = std::fs::File::create(&tmp_lib)
                    .with_context(|| format!("creating {}", tmp_lib.display()))?;
                std::io::copy(&mut entry, &mut out).context("unpacking libchdb.so")?;
                out.sync_all().context("writing libchdb.so")?;
                found = true;
                break;
            }
        }
        if !found {
            bail!("the ClickHouse package has no package/libchdb.so");
        }
    }
    std::fs::rename(&tmp_lib, &lib).with_context(|| format!("installing {}", lib.display()))?;
    let _ = std::fs::remove_file(&tgz);
    tracing::info!(path = %lib.display(), secs = started.elapsed().as_secs_f64(), "ClickHouse cached");
    Ok(lib)
}

fn fetch(url: &str, to: &Path) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let agent = crate::http::agent(None, true);
    let mut response = agent
        .get(url)
        .call()
        .with_context(|| format!("downloading {url} (or set store.url to a ClickHouse server you run, store.embedded.library to a libchdb.so you have, or store.enabled = false to run without a store)"))?;
    let total: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = response.body_mut().with_config().limit(1 << 31).reader();
    let mut out =
        std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut hasher = sha2::Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut next_report = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .with_context(|| format!("downloading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", to.display()))?;
        done += n as u64;
        if done >= next_report {
            match total {
                Some(t) => tracing::info!("downloaded {} of {} MB", done >> 20, t >> 20),
                None => tracing::info!("downloaded {} MB", done >> 20),
            }
            next_report = done + (32 << 20);
        }
    }
    out.sync_all().context("writing the ClickHouse package")?;
    if !verify(&hasher.finalize()) {
        let _ = std::fs::remove_file(to);
        bail!(
            "the downloaded ClickHouse package does not match its registry checksum; not using it"
        );
    }
    Ok(())
}

/// Settings of the managed server.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    pub library: PathBuf,
    pub data_dir: PathBuf,
    pub http_port: u16,
    pub tcp_port: u16,
}

/// A running embedded server; stopped (SIGTERM, then waited for) when dropped.
pub struct EmbeddedServer {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl EmbeddedServer {
    /// Starts the server with `exe embedded-clickhouse ...` and waits until it answers.
    pub fn start(exe: &Path, o: &EmbeddedOptions, wait: Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&o.data_dir)
            .with_context(|| format!("creating {}", o.data_dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&o.data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", o.data_dir.display()))?;
        }
        let log = o.data_dir.join("edgewatch-clickhouse.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("embedded-clickhouse")
            .arg("--library")
            .arg(&o.library)
            .arg("--data-dir")
            .arg(&o.data_dir)
            .arg("--http-port")
            .arg(o.http_port.to_string())
            .arg("--tcp-port")
            .arg(o.tcp_port.to_string())
            .stdin(Stdio::null())
            // stdout carries the ready line; everything else goes to the log.
            .stdout(Stdio::piped())
            .stderr(log_file);
        // The child watches its parent and stops when it is gone (PR_SET_PDEATHSIG would fire
        // when the forking *thread* ends, which a runtime's blocking pool does when idle).
        cmd.env("EDGEWATCH_PARENT_PID", std::process::id().to_string());
        let mut child = cmd.spawn().context("starting the embedded ClickHouse")?;
        let ready = child.stdout.take().map(|out| wait_ready(out, wait));
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{}", o.http_port),
            log,
        };
        match ready {
            Some(Ready::Ready) => Ok(server),
            Some(Ready::Exited) | None => {
                server.stop();
                let tail = std::fs::read_to_string(&server.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                bail!(
                    "the embedded ClickHouse exited before answering: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            }
            Some(Ready::TimedOut) => bail!(
                "the embedded ClickHouse did not answer on 127.0.0.1:{} within {:?} (log: {})",
                o.http_port,
                wait,
                server.log.display()
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server and waits for it.
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the server child prints on stdout once its HTTP listener answers.
pub const READY_LINE: &str = "edgewatch-clickhouse: ready";

/// How waiting for the ready line ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    Ready,
    /// stdout closed first: the child exited.
    Exited,
    TimedOut,
}

/// Waits for [`READY_LINE`] on a server child's stdout (read to its end in the background).
pub fn wait_ready(stdout: std::process::ChildStdout, wait: Duration) -> Ready {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            match line {
                Ok(l) if l.trim() == READY_LINE => {
                    let _ = tx.send(Ready::Ready);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(Ready::Exited);
    });
    rx.recv_timeout(wait).unwrap_or(Ready::TimedOut)
}

/// SIGTERM, then wait for the child; SIGKILL if it is still there after `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: plain kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if rx.recv_timeout(grace) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: the child is not reaped until the wait below returns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let _ = child.wait();
    let _ = tx.send(());
    let _ = killer.join();
}

/// `GET /ping` answers `Ok.`.
pub fn ping(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.") && buf.contains(" 200 ") && buf.ends_with("Ok.\n")
}

/// The child's side: loads the library and runs the server until killed. Never returns on
/// success.
pub fn run_server(
    library: &Path,
    data_dir: &Path,
    http_port: u16,
    tcp_port: u16,
) -> anyhow::Result<()> {
    use std::ffi::{c_char, c_int, c_void, CString};
    type QueryCmdline = unsafe extern "C" fn(c_int, *mut *mut c_char) -> *mut c_void;
    type ResultError = unsafe extern "C" fn(*mut c_void) -> *const c_char;
    let args = [
        "clickhouse".to_owned(),
        format!("--path={}", data_dir.display()),
        "--listen_host=127.0.0.1".to_owned(),
        format!("--http_port={http_port}"),
        format!("--tcp_port={tcp_port}"),
        "--multiquery".to_owned(),
        "--query=SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; SELECT sum(sleepEachRow(1)) FROM system.numbers SETTINGS max_block_size = 1, max_execution_time = 0".to_owned(),
    ];
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .context("argument with a NUL byte")?;
    let mut argv: Vec<*mut c_char> = cargs.iter().map(|a| a.as_ptr().cast_mut()).collect();
    // SAFETY: loading a library runs its initialisers; this is the pinned, checksummed
    // ClickHouse build, loaded in a process of its own that does nothing else.
    let lib = unsafe { libloading::Library::new(library) }
        .with_context(|| format!("loading {}", library.display()))?;
    // SAFETY: the symbols have these C signatures in chDB's public header.
    let (query, error): (
        libloading::Symbol<'_, QueryCmdline>,
        libloading::Symbol<'_, ResultError>,
    ) = unsafe {
        (
            lib.get(b"chdb_query_cmdline\0")
                .context("chdb_query_cmdline")?,
            lib.get(b"chdb_result_error\0")
                .context("chdb_result_error")?,
        )
    };
    tracing::info!(http_port, tcp_port, data = %data_dir.display(), "embedded ClickHouse starting");
    // Tells the parent when the listener answers (the query below never returns).
    std::thread::spawn(move || loop {
        if ping(http_port) {
            println!("{READY_LINE}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    if let Some(parent) = std::env::var("EDGEWATCH_PARENT_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent {
                eprintln!("edgewatch (the parent) is gone; stopping the embedded ClickHouse");
                // SAFETY: ending our own process; ClickHouse's data is crash-safe.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
                std::thread::sleep(Duration::from_secs(10));
                std::process::exit(1);
            }
        });
    }
    let argc = c_int::try_from(argv.len()).context("argc")?;
    // SAFETY: argv holds argc valid C strings that outlive the call.
    let result = unsafe { query(argc, argv.as_mut_ptr()) };
    if result.is_null() {
        bail!("the embedded ClickHouse returned no result");
    }
    // SAFETY: result is the non-null pointer chdb returned.
    let err = unsafe { error(result) };
    if !err.is_null() {
        // SAFETY: chdb returns a NUL-terminated string that lives with the result.
        let msg = unsafe { std::ffi::CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        bail!("the embedded ClickHouse stopped: {msg}");
    }
    bail!("the embedded ClickHouse stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_check_rejects_other_bytes() {
        use sha2::Digest as _;
        assert!(!verify(&sha2::Sha512::digest(b"not the package")));
    }

    #[test]
    fn cache_path_is_versioned() {
        let p = library_path(Path::new("/var/cache/edgewatch"));
        assert_eq!(
            p,
            Path::new("/var/cache/edgewatch/clickhouse/26.7.3-stable.1/libchdb.so")
        );
    }
}
