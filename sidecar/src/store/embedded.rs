//! The embedded default store: a local ClickHouse 26.7 that edgewatch fetches once, caches,
//! starts and stops, so the main command gives a working store on a fresh machine, locked down
//! so that it widens nobody's reach on the machine.
//!
//! The server is the complete ClickHouse build that chDB ships as `libchdb.so` in the npm
//! package `@chdb/lib-linux-x64-gnu` (pinned: the package is checked against the registry's
//! SHA-512 when fetched, the library against its own pinned SHA-512 at every start, before it
//! is loaded). Its `chdb_query_cmdline` runs clickhouse-local with the given arguments; in 26.7
//! that can open the HTTP listener, which stays up while the call runs. edgewatch runs it in a
//! child process of its own binary (`edgewatch embedded-clickhouse`, hidden), so a crash of
//! one never takes the other down; the child stops when its parent is gone.
//!
//! The lockdown (README, "The embedded store"):
//! - **A secret.** edgewatch generates a random password (256 bits) on first start and keeps it
//!   in `store.embedded.secret_file` (root only, 0600). The child reads it and writes only its
//!   SHA-256 into the server's users file; it never travels in argv or the environment.
//! - **One way in.** The HTTP interface answers `/ping` and, for everything else, only requests
//!   that authenticate as user `edgewatch` (X-ClickHouse-User/X-ClickHouse-Key, or Basic);
//!   anything else gets a 403 before ClickHouse looks at a user (`http_handlers`). The
//!   native TCP port is not opened: its protocol cannot be limited that way.
//! - **No way out of the tables.** `edgewatch` may read and write its database and nothing
//!   else: no file(), url(), remote(), s3() or other sources (their READ/WRITE grants are not
//!   given), no dictionaries, no SYSTEM, no access management; remote hosts are denied. The
//!   `default` user (which the in-process session that opens the listener must use) has only
//!   `SYSTEM LISTEN` and `system.numbers`, and HTTP cannot reach it.
//! - **Least privilege.** The child verifies the library, reads the secret and prepares its
//!   directories as root, then drops to an unprivileged user (`store.embedded.run_as`, created
//!   if missing) with no capabilities (bounding set included) and `PR_SET_NO_NEW_PRIVS`, and
//!   only then loads the library (through the file descriptor it verified). Its environment is
//!   empty; its data directory is owned by that user, mode 0700.
use std::{
    ffi::CString,
    io::{Read, Write},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

mod account;
mod library;
mod server_files;
pub use account::*;
pub use library::*;
pub use server_files::*;

/// Settings of the managed server.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    pub library: PathBuf,
    pub data_dir: PathBuf,
    pub http_port: u16,
    /// The password file (root only).
    pub secret_file: PathBuf,
    /// The database `edgewatch` may use (or a prefix with `*`).
    pub database: String,
    /// The unprivileged account the server runs as.
    pub run_as: String,
}

/// Where the server's generated configuration lives: beside the data directory (in the
/// root-owned state directory), never inside it (the server's user owns that one).
pub fn etc_dir(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "clickhouse".to_owned());
    data_dir.with_file_name(format!("{name}.etc"))
}

/// The server's log (stderr): beside the data directory, for the same reason.
pub fn log_path(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "clickhouse".to_owned());
    data_dir.with_file_name(format!("{name}.log"))
}

/// A running embedded server; stopped (SIGTERM, then waited for) when dropped.
pub struct EmbeddedServer {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl EmbeddedServer {
    /// Starts the server with `exe embedded-clickhouse ...` (as root: the child drops to
    /// `run_as` itself) and waits until it answers. Creates the secret on first start.
    pub fn start(exe: &Path, o: &EmbeddedOptions, wait: Duration) -> anyhow::Result<Self> {
        load_or_create_secret(&o.secret_file)?;
        if let Some(parent) = o.data_dir.parent() {
            // Traversable (the server's user reaches its data directory through it), not
            // listable, writable by root only.
            ensure_private_dir(parent, 0o711)?;
            let mode = std::fs::metadata(parent)?.mode() & 0o7777;
            if mode & 0o011 != 0o011 {
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o011))
                    .with_context(|| format!("making {} traversable", parent.display()))?;
            }
        }
        let log = log_path(&o.data_dir);
        let log_file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("embedded-clickhouse")
            .arg("--library")
            .arg(&o.library)
            .arg("--data-dir")
            .arg(&o.data_dir)
            .arg("--http-port")
            .arg(o.http_port.to_string())
            .arg("--secret-file")
            .arg(&o.secret_file)
            .arg("--database")
            .arg(&o.database)
            .arg("--run-as")
            .arg(&o.run_as)
            // The child watches its parent and stops when it is gone (PR_SET_PDEATHSIG would
            // fire when the forking *thread* ends, which a runtime's blocking pool does).
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            // Nothing of ours leaks into the server: no environment at all.
            .env_clear()
            .stdin(Stdio::null())
            // stdout carries the ready line; everything else goes to the log.
            .stdout(Stdio::piped())
            .stderr(log_file);
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

/// What the server child prints on stdout once its listeners (HTTP, and native if asked for) answer.
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

/// Whether the listener on 127.0.0.1:`port` is edgewatch's embedded server, judged without
/// sending it anything: its socket must belong to the server's account (`run_as`), which only
/// root can run processes as. Err names who holds it otherwise.
pub fn listener_is_ours(port: u16, run_as: &str) -> anyhow::Result<()> {
    let sockets = crate::sources::sockdiag::listeners()
        .context("listing listening sockets (sock_diag) to check who holds the embedded port")?;
    let holder = sockets.iter().find(|s| {
        s.proto == crate::exposure::Proto::Tcp
            && s.port == port
            && (s.addr == std::net::IpAddr::from([127, 0, 0, 1]) || s.addr.is_unspecified())
    });
    let Some(holder) = holder else {
        bail!("nothing listens on 127.0.0.1:{port} any more");
    };
    match expected_uid(run_as) {
        Some(uid) if uid == holder.uid && holder.addr.is_loopback() => Ok(()),
        _ => bail!(
            "127.0.0.1:{port} (store.embedded.http_port) is held by another program (socket of uid {} on {}), \
             not by edgewatch's embedded ClickHouse (account {run_as:?}); not sending it the secret or any rows. \
             Stop that program or choose another store.embedded.http_port",
            holder.uid,
            holder.addr
        ),
    }
}

/// What the child needs (all from its command line: nothing from the environment); the
/// hidden `edgewatch embedded-clickhouse` command's arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// The ClickHouse library (checked against its pinned SHA-512 before it is loaded).
    #[arg(long)]
    pub library: PathBuf,
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub http_port: u16,
    /// The password file (root only); only its SHA-256 reaches the server.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// The database the `edgewatch` user may use (a trailing `*`: a prefix).
    #[arg(long)]
    pub database: String,
    /// The unprivileged account to run as (created if missing).
    #[arg(long)]
    pub run_as: String,
    /// Stop when this process is no longer the parent.
    #[arg(long)]
    pub parent_pid: Option<i32>,
    /// For testing a fleet on one machine: this server is also a node of a cluster. The
    /// file (XML: `remote_servers` with user `edgewatch` and its password, `macros`) is
    /// merged into the server's configuration, the native TCP port (`--tcp-port`) opens
    /// for the other nodes' Distributed tables, and the `edgewatch` user may create
    /// Distributed tables. Never for a production store: on the native port the in-process
    /// session's listener controls are reachable by local users (the HTTP port's handlers
    /// keep them out; the native port has none).
    #[arg(long, hide = true, requires = "tcp_port")]
    pub cluster_config: Option<PathBuf>,
    /// The native TCP port of a cluster node (with `--cluster-config`).
    #[arg(long, hide = true, requires = "cluster_config")]
    pub tcp_port: Option<u16>,
}

/// Gives the data directory to `user` (mode 0700). A directory that root owned (an embedded
/// store of an earlier edgewatch, which ran it as root) is handed over whole, entry by entry
/// without following links, so no row is lost.
fn prepare_data_dir(dir: &Path, user: &RunAs) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        bail!("refusing {}: not a directory", dir.display());
    }
    if meta.uid() == 0 {
        // Restricted while root still owns it: once it is the server's, changing its mode
        // would need CAP_FOWNER, which the container does not grant.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
        let mut moved = 0u64;
        chown_tree(dir, user, &mut moved)?;
        if moved > 1 {
            tracing::info!(dir = %dir.display(), entries = moved, user = %user.name, "handed the existing embedded data directory to the server's own account");
        }
    } else if meta.uid() != user.uid {
        bail!(
            "refusing {}: owned by uid {}, neither root nor the server's account {} (uid {})",
            dir.display(),
            meta.uid(),
            user.name,
            user.uid
        );
    } else if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "restricting {} (mode {:o}; without CAP_FOWNER, chmod 700 it)",
                    dir.display(),
                    meta.mode() & 0o7777
                )
            },
        )?;
    }
    Ok(())
}

fn chown_tree(path: &Path, user: &RunAs, moved: &mut u64) -> anyhow::Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    // Children first: root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (the container's
    // capability set) cannot list a 0700 directory once it belongs to the server's account.
    if meta.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("listing {}", path.display()))?;
            chown_tree(&entry.path(), user, moved)?;
        }
    }
    // Only what root owns: the earlier, root-run server's files.
    if meta.uid() == 0 {
        std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
            .with_context(|| format!("chown {}", path.display()))?;
        *moved += 1;
    }
    Ok(())
}

/// Writes the generated configuration, root-owned and readable by the server's group only.
/// With `cluster`, the cluster node's settings go to `config.d/cluster.xml`, which the server
/// merges into `config.xml`.
fn write_etc(etc: &Path, user: &RunAs, users: &str, cluster: Option<&str>) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(etc).is_ok() {
        std::fs::remove_dir_all(etc).with_context(|| format!("replacing {}", etc.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o750)
        .create(etc)
        .with_context(|| format!("creating {}", etc.display()))?;
    std::os::unix::fs::chown(etc, Some(0), Some(user.gid))
        .with_context(|| format!("chown {}", etc.display()))?;
    std::fs::set_permissions(etc, std::fs::Permissions::from_mode(0o750))?;
    let mut files = vec![
        ("config.xml", config_xml(etc)),
        ("users.xml", users.to_owned()),
    ];
    if let Some(text) = cluster {
        let dir = etc.join("config.d");
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        std::os::unix::fs::chown(&dir, Some(0), Some(user.gid))
            .with_context(|| format!("chown {}", dir.display()))?;
        files.push(("config.d/cluster.xml", text.to_owned()));
    }
    for (name, text) in files {
        let path = etc.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        std::os::unix::fs::fchown(&f, Some(0), Some(user.gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Becomes `user` for good: no supplementary groups, real/effective/saved ids all the user's,
/// no capabilities in any set (the bounding set too, when CAP_SETPCAP allows), and
/// no-new-privs. Checked afterwards from /proc/self/status.
fn drop_privileges(user: &RunAs) -> anyhow::Result<()> {
    use caps::CapSet;
    // Best effort: emptying the bounding set needs CAP_SETPCAP (a container may lack it);
    // without it no-new-privs and the non-root ids still keep every capability out of reach.
    let _ = caps::clear(None, CapSet::Bounding);
    let _ = caps::clear(None, CapSet::Ambient);
    let _ = caps::clear(None, CapSet::Inheritable);
    // SAFETY: plain credential syscalls with valid arguments; the process is single-threaded
    // here apart from threads that do not depend on its credentials.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("setgroups (needs CAP_SETGID)");
        }
        if libc::setresgid(user.gid, user.gid, user.gid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setresgid (needs CAP_SETGID)");
        }
        if libc::setresuid(user.uid, user.uid, user.uid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setresuid (needs CAP_SETUID)");
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_NO_NEW_PRIVS");
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(set))
            .map(str::trim)
            .unwrap_or("?");
        if u64::from_str_radix(value, 16) != Ok(0) {
            bail!("the embedded ClickHouse still holds capabilities after dropping them ({set} {value})");
        }
    }
    // SAFETY: getuid/geteuid have no preconditions.
    if unsafe { libc::getuid() } == 0 || unsafe { libc::geteuid() } == 0 {
        bail!("the embedded ClickHouse is still root after dropping privileges");
    }
    Ok(())
}

/// The child's side: verifies and opens the library, writes the locked-down configuration,
/// drops to the server's account and runs the server until killed. Never returns on success.
pub fn run_server(a: &ServerArgs) -> anyhow::Result<()> {
    use sha2::Digest as _;
    use std::ffi::{c_char, c_int, c_void};
    use std::os::fd::AsRawFd as _;
    type QueryCmdline = unsafe extern "C" fn(c_int, *mut *mut c_char) -> *mut c_void;
    type ResultError = unsafe extern "C" fn(*mut c_void) -> *const c_char;

    check_database_pattern(&a.database)?;
    // As root: what the server's account must not be able to touch or read.
    let library = open_verified_library(&a.library)?;
    let secret = read_secret(&a.secret_file)?;
    let user = resolve_user(&a.run_as)?;
    prepare_data_dir(&a.data_dir, &user)?;
    let etc = etc_dir(&a.data_dir);
    let hash = hex(&sha2::Sha256::digest(secret.as_bytes()));
    drop(secret);
    let cluster = match &a.cluster_config {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    write_etc(
        &etc,
        &user,
        &users_xml(&hash, &a.database, cluster.is_some()),
        cluster.as_deref(),
    )?;

    drop_privileges(&user)?;
    // As the server's account: the directory is its own and 0700, which root without
    // CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (the container's capability set) cannot enter.
    std::env::set_current_dir(&a.data_dir)
        .with_context(|| format!("entering {}", a.data_dir.display()))?;

    let (tcp_arg, tcp_listen) = match a.tcp_port {
        Some(p) => (format!("--tcp_port={p}"), " SYSTEM START LISTEN TCP;"),
        None => (String::new(), ""),
    };
    let args: Vec<String> = [
        "clickhouse".to_owned(),
        format!("--config-file={}", etc.join("config.xml").display()),
        format!("--path={}", a.data_dir.display()),
        "--listen_host=127.0.0.1".to_owned(),
        format!("--http_port={}", a.http_port),
        tcp_arg,
        "--multiquery".to_owned(),
        // The call stays alive on a query that sleeps a second per row. `interactive_delay`
        // (how often clickhouse-local's main thread looks at the running query, 100 ms by
        // default) at a second: a tenth of the wake-ups, with the stop as prompt (the parent
        // watch and signals do not wait on it).
        format!("--query=SYSTEM START LISTEN HTTP;{tcp_listen} SELECT sum(sleepEachRow(1)) FROM system.numbers SETTINGS max_block_size = 1, max_execution_time = 0, interactive_delay = 1000000"),
    ]
    .into_iter()
    .filter(|a| !a.is_empty())
    .collect();
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .context("argument with a NUL byte")?;
    let mut argv: Vec<*mut c_char> = cargs.iter().map(|a| a.as_ptr().cast_mut()).collect();
    // Loaded through the descriptor that was verified (the cache directory stays closed to
    // this account; the magic link reaches the very file that was hashed).
    let fd_path = format!("/proc/self/fd/{}", library.as_raw_fd());
    // SAFETY: loading a library runs its initialisers; this is the pinned, checksummed
    // ClickHouse build, loaded in a process of its own, unprivileged, that does nothing else.
    let lib = unsafe { libloading::Library::new(&fd_path) }
        .with_context(|| format!("loading {} ({fd_path})", a.library.display()))?;
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
    let http_port = a.http_port;
    let tcp_port = a.tcp_port;
    tracing::info!(http_port, data = %a.data_dir.display(), user = %user.name, uid = user.uid, "embedded ClickHouse starting");
    announce_ready(http_port, tcp_port);
    if let Some(parent) = a.parent_pid {
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

/// Tells the parent when every listener answers (the server's query never returns). The
/// native port is opened after the HTTP one: a server whose native port cannot be bound
/// exits without ever saying ready.
fn announce_ready(http_port: u16, tcp_port: Option<u16>) {
    std::thread::spawn(move || loop {
        // The native port must be listened on by this process (the server runs in it): a
        // connect alone would also succeed against whoever else holds the port.
        let native = tcp_port.is_none_or(listens_here);
        if native && ping(http_port) {
            println!("{READY_LINE}");
            let _ = std::io::stdout().flush();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
}

/// Whether a socket of this process listens on TCP `port` on 127.0.0.1: its inode in
/// /proc/net/tcp's LISTEN rows and among this process's open files.
fn listens_here(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/self/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A"))
                .then(|| f.get(9).map(|i| format!("socket:[{i}]")))
                .flatten()
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir("/proc/self/fd").is_ok_and(|dir| {
        dir.filter_map(Result::ok).any(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
        })
    })
}

#[cfg(test)]
mod tests;
