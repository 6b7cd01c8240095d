//! A real ClickHouse 26.7 for the tests: the same embedded server edgewatch runs by default
//! (`edgewatch embedded-clickhouse`, the chDB build fetched once into the cache), on free
//! loopback ports with a data directory of its own. Each test uses its own database.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use edgewatch::store::embedded;

use super::{edgewatch_bin, free_port};

/// Where `cargo xtask test` (and edgewatch itself) cache the ClickHouse build.
pub const CACHE_DIR: &str = "/var/cache/edgewatch";

/// One server for the whole test binary (each test uses its own database).
pub fn shared() -> &'static ClickHouse {
    static SERVER: OnceLock<ClickHouse> = OnceLock::new();
    SERVER.get_or_init(ClickHouse::start)
}

/// The cached library, fetched on first use.
pub fn library() -> PathBuf {
    embedded::ensure_library(Path::new(CACHE_DIR)).expect("fetching ClickHouse for the tests")
}

pub struct ClickHouse {
    child: Option<Child>,
    pub http_port: u16,
    pub tcp_port: u16,
    pub dir: tempfile::TempDir,
}

impl ClickHouse {
    pub fn start() -> Self {
        let mut ch = Self {
            child: None,
            http_port: free_port(),
            tcp_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        ch.spawn();
        ch
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(edgewatch_bin())
            .arg("embedded-clickhouse")
            .arg("--library")
            .arg(library())
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--tcp-port", &self.tcp_port.to_string()])
            // Stops with the test process.
            .env("EDGEWATCH_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut child = child;
        // The server says when its listener answers.
        let ready = embedded::wait_ready(child.stdout.take().unwrap(), Duration::from_secs(120));
        self.child = Some(child);
        assert_eq!(
            ready,
            embedded::Ready::Ready,
            "ClickHouse did not start: {}",
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
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

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs a query and returns its TabSeparated output.
    pub fn query(&self, sql: &str) -> String {
        let mut resp = ureq::post(&self.url())
            .config()
            .http_status_as_error(false)
            .build()
            .send(sql)
            .unwrap();
        let status = resp.status();
        let body = resp.body_mut().read_to_string().unwrap();
        assert!(
            status.is_success(),
            "query failed ({status}): {sql}\n{body}"
        );
        body
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
