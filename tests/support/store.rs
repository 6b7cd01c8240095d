//! A real ClickHouse 26.7 for the tests: the same embedded server edgewatch runs by default
//! (`edgewatch embedded-clickhouse`, the chDB build fetched once into the cache), locked down
//! the same way (a secret, user `edgewatch`, an unprivileged account), on a free loopback port
//! with a data directory of its own. Each test uses its own database, named `t_*`: the
//! `edgewatch` user of these servers may use any database with that prefix.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use edgewatch::store::embedded;

use super::{edgewatch_bin, free_listen_port};

/// Where `cargo xtask test` (and edgewatch itself) cache the ClickHouse build.
pub const CACHE_DIR: &str = "/var/cache/edgewatch";

/// One server for the whole test binary (each test uses its own database). A static is never
/// dropped, so it is stopped and its directory (tens of MB) removed when the test process
/// exits, instead of being left in the temp dir after every run.
pub fn shared() -> &'static ClickHouse {
    static SERVER: OnceLock<ClickHouse> = OnceLock::new();
    extern "C" fn at_exit() {
        if let Some(server) = SERVER.get() {
            server.stop_and_remove();
        }
    }
    SERVER.get_or_init(|| {
        let server = ClickHouse::start();
        // SAFETY: registers a plain function, without arguments, to run at exit(3).
        unsafe { libc::atexit(at_exit) };
        server
    })
}

/// The cached library, fetched on first use.
pub fn library() -> PathBuf {
    embedded::ensure_library(Path::new(CACHE_DIR)).expect("fetching ClickHouse for the tests")
}

/// The account the tests' servers run as (the default of `store.embedded.run_as`).
pub const RUN_AS: &str = "edgewatch-ch";

pub struct ClickHouse {
    child: Option<Child>,
    /// A cluster node's native port and its `remote_servers` file.
    node: Option<(u16, PathBuf)>,
    pub http_port: u16,
    pub dir: tempfile::TempDir,
    /// The password of user `edgewatch`.
    pub secret: String,
}

impl ClickHouse {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Traversable by the server's account, as /var/lib/edgewatch is.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let secret = embedded::load_or_create_secret(&dir.path().join("secret")).unwrap();
        let mut ch = Self {
            child: None,
            node: None,
            http_port: free_listen_port(),
            dir,
            secret,
        };
        ch.spawn();
        ch
    }

    /// A node of a test cluster (`support::cluster`): `secret` is the password of user
    /// `edgewatch` on every node, `cluster_xml` its `remote_servers`, `tcp_port` the native
    /// port the other nodes' Distributed tables reach it on. Started with [`Self::spawn`].
    pub fn node(secret: &str, http_port: u16, tcp_port: u16, cluster_xml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let write_private = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        write_private("secret", secret);
        let xml = write_private("cluster.xml", cluster_xml);
        Self {
            child: None,
            node: Some((tcp_port, xml)),
            http_port,
            dir,
            secret: secret.to_owned(),
        }
    }

    /// Kills the server (SIGKILL: no chance to flush anything) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the server and waits until it says every listener answers; the server's log
    /// if it exits or times out first.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(edgewatch_bin());
        cmd.arg("embedded-clickhouse");
        if let Some((tcp_port, xml)) = &self.node {
            cmd.args(["--tcp-port", &tcp_port.to_string()])
                .arg("--cluster-config")
                .arg(xml);
        }
        let child = cmd
            .arg("--library")
            .arg(library())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--http-port", &self.http_port.to_string()])
            .arg("--secret-file")
            .arg(self.secret_file())
            .args(["--database", "t_*", "--run-as", RUN_AS])
            // Stops with the test process.
            .args(["--parent-pid", &std::process::id().to_string()])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut child = child;
        // The server says when its listener answers.
        let ready = embedded::wait_ready(child.stdout.take().unwrap(), Duration::from_secs(120));
        if ready == embedded::Ready::Ready {
            self.child = Some(child);
            return Ok(());
        }
        embedded::terminate(&mut child, Duration::from_secs(5));
        Err(format!(
            "ClickHouse did not start ({ready:?}): {}",
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        ))
    }

    /// Stops the server through a shared reference (SIGTERM, SIGKILL after 20 s), as the
    /// process exits, and removes its directory.
    fn stop_and_remove(&self) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on our own child, not reaped before the waitpid below.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let killer = std::thread::spawn(move || {
                if rx.recv_timeout(Duration::from_secs(20)).is_err() {
                    // SAFETY: as above; still not reaped.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            });
            // SAFETY: waits for our own child; the status is not needed.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            let _ = tx.send(());
            let _ = killer.join();
        }
        let _ = std::fs::remove_dir_all(self.dir.path());
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Stops the server (SIGTERM) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            embedded::terminate(&mut c, Duration::from_secs(20));
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs a query as user `edgewatch` and returns its TabSeparated output.
    pub fn query(&self, sql: &str) -> String {
        let (status, body) = self.try_query(sql, Some(embedded::USER), Some(&self.secret));
        assert!(status == 200, "query failed ({status}): {sql}\n{body}");
        body
    }

    /// Runs a query with the given credentials (X-ClickHouse-User/Key when given) and
    /// returns the status and body, whatever they are.
    pub fn try_query(&self, sql: &str, user: Option<&str>, key: Option<&str>) -> (u16, String) {
        self.request(&self.url(), sql, user, key)
    }

    /// POSTs `sql` to `url` (which may carry a query string) with the given credentials.
    pub fn request(
        &self,
        url: &str,
        sql: &str,
        user: Option<&str>,
        key: Option<&str>,
    ) -> (u16, String) {
        let mut req = ureq::post(url).config().http_status_as_error(false).build();
        if let Some(u) = user {
            req = req.header("X-ClickHouse-User", u);
        }
        if let Some(k) = key {
            req = req.header("X-ClickHouse-Key", k);
        }
        let mut resp = req.send(sql).unwrap();
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap();
        (status, body)
    }

    /// A `[store]` section for this server (user `edgewatch`, the password from its file),
    /// database and spool, with small, quick batches.
    pub fn store_config(&self, database: &str, spool: &Path) -> String {
        format!(
            "{}user = {:?}\npassword_file = {:?}\n",
            store_config(&self.url(), database, spool),
            embedded::USER,
            self.secret_file().display().to_string()
        )
    }

    /// A single number.
    pub fn count(&self, sql: &str) -> u64 {
        let text = self.query(sql);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {text:?} from {sql}"))
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `[store]` section for this server, database and spool, with small, quick batches.
pub fn store_config(url: &str, database: &str, spool: &Path) -> String {
    format!(
        "[store]\nurl = {url:?}\ndatabase = {database:?}\nspool_dir = {:?}\nbatch_max_age = \"50ms\"\ntimeout = \"10s\"\n",
        spool.display().to_string()
    )
}

/// Requests joined as their lines came, as varied as the join makes them: exact with an
/// exchange, an upgrade with its session, a refused connect's, the edge's alone, inferred
/// without an id; times set and not, IPv4 and IPv6 hop clients.
pub fn joined_with_their_lines(now: i64) -> Vec<edgewatch::edge::join::JoinedRequest> {
    use edgewatch::{
        edge::{
            join::{JoinedRequest, Matched},
            EdgeFormat, EdgeRecord,
        },
        hop::{
            ConnEvent, ConnEventKind, ConnId, ExchangeOutcome, HttpExchange, SessionEnd, Side,
            WsSession,
        },
    };
    let now = u64::try_from(now).unwrap();
    let s = 1_000_000_000u64;
    let conn = |client: &str| ConnId {
        client: client.parse().unwrap(),
        server: "127.0.0.1:18789".parse().unwrap(),
        first_seen_ns: now - 10 * s,
    };
    let line = |i: u64, rid: Option<&str>, status: u16, time: Option<u64>| EdgeRecord {
        format: EdgeFormat::NginxJson,
        end_ts_ns: now + i * s,
        request_id: rid.map(Into::into),
        client: Some(format!("203.0.113.{i}").as_str().into()),
        host: Some("gw.example".into()),
        method: Some("GET".into()),
        path: Some(format!("/api/{i}?token=[redacted]").as_str().into()),
        status,
        request_time_ns: time,
        upstream_addr: Some("127.0.0.1:18789".into()),
        no_upstream: false,
        upstream_connect_ns: time.map(|_| 1_000),
        upstream_header_ns: time.map(|t| t / 2),
        upstream_response_ns: time,
        bytes_sent: Some(512 + i),
        upgrade: None,
    };
    let exchange = |i: u64, rid: Option<&str>, client: &str, status: u16| HttpExchange {
        conn: conn(client),
        index: 0,
        request_ts_ns: now + i * s - s / 10,
        method: "GET".into(),
        path: format!("/api/{i}?token=[redacted]").as_str().into(),
        host: Some("gw.example".into()),
        origin: None,
        request_id: rid.map(Into::into),
        x_forwarded_for: None,
        x_forwarded_proto: None,
        upgrade_websocket: status == 101,
        connection_upgrade: status == 101,
        status: Some(status),
        ttfb_ns: Some(2_000_000 + i),
        total_ns: Some(3_000_000 + i),
        request_bytes: 100,
        response_bytes: 50,
        outcome: if status == 101 {
            ExchangeOutcome::Upgraded
        } else {
            ExchangeOutcome::Complete
        },
        error_code: None,
    };
    let join = |rid: Option<&str>,
                matched: Matched,
                reason: Option<&str>,
                edge: EdgeRecord,
                hop: Option<HttpExchange>| JoinedRequest {
        request_id: rid.map(Into::into),
        matched,
        reason: reason.map(|r| r.to_owned().into()),
        edge: Some(Box::new(edge)),
        hop: hop.map(Box::new),
        websocket: None,
        refused: None,
    };
    let rid = |i: u64| format!("{:032x}", 0xfeed_0000u64 + i);
    let mut out = Vec::new();
    for i in 0..40u64 {
        let id = rid(i);
        let r = Some(id.as_str());
        out.push(match i % 5 {
            0 => join(
                r,
                Matched::Exact,
                None,
                line(i, r, 200, Some(4_000_000)),
                Some(exchange(i, r, "127.0.0.1:40000", 200)),
            ),
            1 => {
                let mut j = join(
                    r,
                    Matched::Exact,
                    None,
                    line(i, r, 101, Some(60 * s)),
                    Some(exchange(i, r, "[2001:db8::7]:40001", 101)),
                );
                j.websocket = Some(Box::new(WsSession {
                    conn: conn("[2001:db8::7]:40001"),
                    request_id: Some(id.clone()),
                    path: "/ws".into(),
                    origin: None,
                    upgraded_ts_ns: now,
                    end_ts_ns: now + 60 * s,
                    duration_ns: 60 * s - i,
                    client_frames: Default::default(),
                    server_frames: Default::default(),
                    closes: Vec::new(),
                    end: SessionEnd::CloseHandshake {
                        first_close_from: Side::Server,
                    },
                    longest_idle_ns: 0,
                    idle_before_end_ns: 0,
                    lost_sync: false,
                }));
                j
            }
            2 => {
                let mut j = join(
                    r,
                    Matched::EdgeOnly,
                    Some("the upstream refused the connection"),
                    line(i, r, 502, None),
                    None,
                );
                j.refused = Some(Box::new(ConnEvent {
                    conn: conn("127.0.0.1:40002"),
                    ts_ns: now + i * s - s,
                    kind: ConnEventKind::Refused,
                    process: None,
                }));
                j
            }
            3 => join(
                r,
                Matched::EdgeOnly,
                Some("no exchange within the join window"),
                line(i, r, 504, Some(60 * s)),
                None,
            ),
            _ => join(
                None,
                Matched::Inferred,
                None,
                line(i, None, 200, Some(4_000_000)),
                Some(exchange(i, None, "127.0.0.1:40004", 200)),
            ),
        });
    }
    out
}
