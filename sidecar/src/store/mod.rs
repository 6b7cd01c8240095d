//! ClickHouse: the schema and records as rows (`schema`, `rows`: the core's), the on-disk spool
//! (`spool`), the sender (`ship`) and the embedded default server (`embedded`).
//!
//! Data flow: the pipeline hands records to [`Store`], which turns them into rows and appends
//! them to the spool (the rows are then safe from a killed process); sealed batches are sent
//! by a background task, oldest first, each with a deduplication token, and deleted once
//! ClickHouse has them.
pub mod cluster;
pub mod config;
pub mod embedded;
pub mod ship;
pub mod spool;
pub use edgewatch_core::store::{rows, schema};

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    edge::{join::JoinedRequest, EdgeRecord},
    exposure::{inventory::Change, policy::Policy, Exposure},
    hop::HopRecord,
    metrics::Metrics,
    store::config::ClusterDdl,
    store::config::{StoreConfig, WireFormat},
};
use rows::{AlertRow, AnyRow, ExposureRow};
use ship::{Endpoint, PrepareError, Sender, SenderStats, StoreEvent};
use spool::{Spool, SpoolLimits};

/// The machine's host name (the default `node`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The server to talk to: the configured URL; or, with none, the embedded ClickHouse, the one
/// already running (the live sidecar's, once its listener is shown to be the embedded
/// server's account and it accepts the secret) or one started now (returned: it runs until
/// dropped).
pub async fn server(
    cfg: &StoreConfig,
) -> anyhow::Result<(Option<embedded::EmbeddedServer>, String)> {
    if !cfg.url.is_empty() {
        return Ok((None, cfg.url.clone()));
    }
    let e = &cfg.embedded;
    if e.tcp_port.is_some() {
        tracing::warn!("store.embedded.tcp_port is no longer used: the embedded server opens no native port (its protocol cannot be limited to edgewatch's user); remove the key");
    }
    if embedded::ping(e.http_port) {
        // Another edgewatch (the live sidecar, when this is a replay) runs it already, or
        // another program holds the port: tell them apart before sending any secret.
        embedded::listener_is_ours(e.http_port, &e.run_as)?;
        let url = format!("http://127.0.0.1:{}", e.http_port);
        let client = client_for(cfg, &url)?;
        let user: String = tokio::time::timeout(
            cfg.timeout,
            client.query("SELECT currentUser()").fetch_one(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the embedded ClickHouse at {url} did not answer in time"))?
        .with_context(|| format!("the ClickHouse at {url} does not accept edgewatch's secret ({}); not sending it rows", e.secret_file.display()))?;
        anyhow::ensure!(
            user == embedded::USER,
            "the ClickHouse at {url} answered as user {user:?}, not {:?}; not sending it rows",
            embedded::USER
        );
        tracing::info!(%url, "using the embedded ClickHouse that is already running");
        return Ok((None, url));
    }
    let server = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || start_embedded(&cfg)
    })
    .await
    .context("starting the embedded ClickHouse")??;
    let url = server.url.clone();
    tracing::info!(%url, pid = server.pid(), "embedded ClickHouse up");
    Ok((Some(server), url))
}

/// A client for the server at `url` with the credentials and TLS settings of `[store]`.
/// With a cluster, inserts into the Distributed tables are synchronous: an insert succeeds
/// only when every shard has its rows, so the spool keeps a batch until all of them do (a
/// retried batch is deduplicated by its token on the shards that already took it).
pub fn client_for(cfg: &StoreConfig, url: &str) -> anyhow::Result<clickhouse::Client> {
    let (user, password) = credentials(cfg)?;
    let client = Endpoint {
        url: url.to_owned(),
        user,
        password,
        ca_file: cfg.ca_file.clone(),
        timeout: cfg.timeout,
    }
    .client(&cfg.database)?;
    Ok(if cfg.cluster.is_empty() {
        client
    } else {
        client.with_setting("insert_distributed_sync", "1")
    })
}

/// Clients for the cluster nodes other than `url` (`store.cluster_nodes`).
fn cluster_peers(cfg: &StoreConfig, url: &str) -> anyhow::Result<cluster::Peers> {
    let same = |a: &str| a.trim_end_matches('/') == url.trim_end_matches('/');
    cfg.cluster_nodes
        .iter()
        .filter(|n| !same(n))
        .map(|n| Ok((n.clone(), client_for(cfg, n)?)))
        .collect()
}

/// This machine's name in rows and alerts: `store.node`, or the host name.
pub fn node_name(cfg: &StoreConfig) -> String {
    if cfg.node.is_empty() {
        hostname()
    } else {
        cfg.node.clone()
    }
}

/// The user and password: for the embedded server, its own user and the secret file; for a
/// configured server, from the environment or a file, never from arguments.
pub fn credentials(cfg: &StoreConfig) -> anyhow::Result<(String, Option<String>)> {
    if cfg.url.is_empty() {
        let secret = embedded::read_secret(&cfg.embedded.secret_file)?;
        return Ok((embedded::USER.to_owned(), Some(secret)));
    }
    let user = std::env::var("EDGEWATCH_CLICKHOUSE_USER").unwrap_or_else(|_| cfg.user.clone());
    if let Ok(p) = std::env::var("EDGEWATCH_CLICKHOUSE_PASSWORD") {
        return Ok((user, Some(p)));
    }
    match &cfg.password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading store.password_file {}", path.display()))?;
            Ok((
                user,
                Some(text.lines().next().unwrap_or_default().to_owned()),
            ))
        }
        None => Ok((user, None)),
    }
}

/// The schema options of a config.
pub fn schema_options(cfg: &StoreConfig) -> schema::SchemaOptions {
    schema::SchemaOptions {
        database: cfg.database.clone(),
        ttl_days: cfg.ttl_days,
        cluster: (!cfg.cluster.is_empty()).then(|| cfg.cluster.clone()),
        per_node: cfg.cluster_ddl == ClusterDdl::PerNode,
    }
}

/// Starts (or finds running) the embedded server, fetching ClickHouse first if needed.
pub fn start_embedded(cfg: &StoreConfig) -> anyhow::Result<embedded::EmbeddedServer> {
    let e = &cfg.embedded;
    let library = match &e.library {
        Some(l) => l.clone(),
        None => embedded::ensure_library(&e.cache_dir)?,
    };
    let exe = std::env::current_exe().context("finding the edgewatch binary")?;
    embedded::EmbeddedServer::start(
        &exe,
        &embedded::EmbeddedOptions {
            library,
            data_dir: e.data_dir.clone(),
            http_port: e.http_port,
            secret_file: e.secret_file.clone(),
            database: cfg.database.clone(),
            run_as: e.run_as.clone(),
        },
        Duration::from_secs(120),
    )
}

/// The pipeline's handle on the store.
pub struct Store {
    node: String,
    spool: Spool,
    /// What the sender reports; the pipeline prints it.
    pub events: tokio::sync::mpsc::UnboundedReceiver<StoreEvent>,
    done: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    embedded: Option<embedded::EmbeddedServer>,
    sender_stats: Arc<Mutex<SenderStats>>,
    /// Spool writes that failed (disk full, I/O error), for the log: the spool itself keeps
    /// the rows for another try or counts them as dropped.
    write_errors: u64,
    pub url: String,
    /// How rows travel (`auto` decided from the URL).
    pub format: WireFormat,
}

impl Store {
    /// Opens the spool, starts the embedded server when no URL is configured, checks the
    /// server (an incompatible one is an error here, at start) and starts the sender. An
    /// unreachable server is not an error: rows wait in the spool until it answers.
    pub async fn start(cfg: &StoreConfig) -> anyhow::Result<Self> {
        let node = node_name(cfg);
        // The spool holds every row before ClickHouse has it: ours alone, checked before use.
        embedded::ensure_private_dir(&cfg.spool_dir, 0o700)?;
        let spool = Spool::open(
            &cfg.spool_dir,
            SpoolLimits {
                batch_rows: cfg.batch_rows,
                batch_bytes: cfg.batch_bytes,
                batch_max_age: cfg.batch_max_age,
                max_bytes: cfg.spool_max_bytes,
                fsync: true,
            },
        )
        .with_context(|| format!("opening the spool {}", cfg.spool_dir.display()))?;
        let recovered = spool.stats().recovered_rows;
        if recovered > 0 {
            tracing::info!(
                rows = recovered,
                "recovered rows a previous run had spooled"
            );
        }
        let (embedded, url) = server(cfg).await?;
        let client = client_for(cfg, &url)?;
        let peers = cluster_peers(cfg, &url)?;
        let opts = schema_options(cfg);
        let first_wait = cfg.timeout.min(Duration::from_secs(10));
        let mut prepared = None;
        let prepare = cluster::prepare(&client, &peers, cfg.cluster_ddl, &opts, &node);
        match tokio::time::timeout(first_wait, prepare).await {
            Ok(Ok(ready)) => {
                match &ready.1 {
                    Some(c) => {
                        tracing::info!(version = %ready.0, %url, cluster = ?c, "ClickHouse ready")
                    }
                    None => tracing::info!(version = %ready.0, %url, "ClickHouse ready"),
                }
                prepared = Some(ready);
            }
            Ok(Err(PrepareError::Incompatible(reason))) => {
                anyhow::bail!("ClickHouse at {url} cannot be used: {reason}")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %url, "ClickHouse not reachable yet; records wait in the spool")
            }
            Err(_) => {
                tracing::warn!(%url, ?first_wait, "ClickHouse did not answer in time; records wait in the spool")
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (done, done_rx) = tokio::sync::watch::channel(false);
        let sender_stats = Arc::new(Mutex::new(SenderStats::default()));
        let format = cfg.format.for_url(&url);
        let sender = Sender {
            client,
            peers,
            cluster_ddl: cfg.cluster_ddl,
            opts,
            node: node.clone(),
            shared: spool.shared(),
            events: tx,
            url: url.clone(),
            stats: sender_stats.clone(),
            timeout: cfg.timeout,
            prepared,
            format,
        };
        // The sender's log lines carry `store{url=... database=...}`.
        let span = tracing::info_span!("store", url = %url, database = %cfg.database);
        let task = tokio::spawn(tracing::Instrument::instrument(sender.run(done_rx), span));
        Ok(Self {
            node,
            spool,
            events: rx,
            done,
            task: Some(task),
            embedded,
            sender_stats,
            write_errors: 0,
            url,
            format,
        })
    }

    /// Whether this store runs the embedded server (a child edgewatch stops at the end).
    pub fn runs_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    fn push(&mut self, row: AnyRow) {
        let pushed = self.spool.push(row);
        self.count_write(pushed);
    }

    fn count_write(&mut self, pushed: Result<(), spool::SpoolError>) {
        if let Err(e) = pushed {
            self.write_errors += 1;
            if self.write_errors == 1 || self.write_errors.is_power_of_two() {
                tracing::error!(error = %e, failures = self.write_errors, "spool write failed (rows kept for the next try, or dropped and counted)");
            }
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// A snapshot of the whole inventory.
    pub fn inventory(&mut self, ts: u64, exposures: &[Exposure], policy: &Policy) {
        for e in exposures {
            let row = ExposureRow::snapshot(ts, &self.node, e, policy);
            self.push(AnyRow::Exposure(row));
        }
    }

    pub fn change(&mut self, ts: u64, c: &Change, policy: &Policy) {
        let row = ExposureRow::change(ts, &self.node, c, policy);
        self.push(AnyRow::ExposureChange(row));
    }

    /// An alert transition (any rule).
    pub fn alert(&mut self, a: &crate::alerts::Alert) {
        let row = AlertRow::new(&self.node, a);
        self.push(AnyRow::Alert(row));
    }

    pub fn hop(&mut self, r: &HopRecord) {
        if let HopRecord::Http(x) = r {
            // The hot path: straight into the columns, no row struct.
            let pushed = self.spool.push_http(&self.node, x);
            return self.count_write(pushed);
        }
        let row = rows::hop_row(&self.node, r);
        self.push(row);
    }

    /// Records where an access log had been read to, beside the edge rows of its lines (see
    /// `sources::tail`).
    pub fn tail_mark(&mut self, path: &std::path::Path, cp: crate::sources::tail::Checkpoint) {
        self.push(AnyRow::TailMark(rows::TailMarkRow {
            path: path.display().to_string(),
            dev: cp.dev,
            inode: cp.inode,
            offset: cp.offset,
            head_len: cp.head.len,
            head_crc: cp.head.crc,
        }));
    }

    /// The position a previous run had spooled for the access log `path`, if any.
    pub fn spooled_tail_position(
        &self,
        path: &std::path::Path,
    ) -> Option<crate::sources::tail::Checkpoint> {
        self.spool.tail_mark(&path.display().to_string()).map(|m| {
            crate::sources::tail::Checkpoint {
                dev: m.dev,
                inode: m.inode,
                offset: m.offset,
                head: crate::sources::tail::FileHead {
                    len: m.head_len,
                    crc: m.head_crc,
                },
            }
        })
    }

    /// Writes the buffered edge rows and tail marks to the spool's file and fsyncs it, sealing
    /// nothing: after it, a tail checkpoint may move past their lines.
    pub fn write_through(&mut self) -> anyhow::Result<()> {
        self.spool
            .write_through(rows::EDGE_TABLE)
            .context("writing the spool through before a log checkpoint")
    }

    /// Straight into the columns, like an exchange (one per proxied request when a log is
    /// followed).
    pub fn edge(&mut self, e: &EdgeRecord) {
        let pushed = self.spool.push_edge(&self.node, e);
        self.count_write(pushed);
    }

    /// Straight into the columns, like an exchange.
    pub fn request(&mut self, r: &JoinedRequest) {
        let pushed = self.spool.push_request(&self.node, r);
        self.count_write(pushed);
    }

    /// A line joined as it came, with its request: one `edge_logs` row that carries the
    /// request (ClickHouse makes its `requests` row: see `schema::REQUEST_FROM_EDGE`), or the
    /// two rows where the request's cannot be made of the line's.
    pub fn edge_joined(&mut self, r: &JoinedRequest) {
        match self.spool.push_edge_joined(&self.node, r) {
            Ok(true) => {}
            Ok(false) => {
                if let Some(e) = r.edge.as_ref() {
                    self.edge(e);
                }
                self.request(r);
            }
            Err(e) => self.count_write(Err(e)),
        }
    }

    /// Writes buffered rows to disk now (before an alert is shown, so nothing the operator
    /// saw can be lost to a crash).
    pub fn write_now(&mut self) {
        if let Err(e) = self.spool.flush() {
            self.write_errors += 1;
            tracing::error!(error = %e, "cannot write the spool");
        }
    }

    /// Writes this turn's rows to disk and seals old batches; updates the metrics and
    /// returns the totals it exported.
    pub fn flush(&mut self, metrics: &Metrics) -> StoreTotals {
        self.write_now();
        let t = self.totals();
        metrics.store_rows_now("spooled", t.spooled);
        metrics.store_rows_now("sent", t.sent);
        metrics.store_rows_now("rejected", t.rejected);
        metrics.store_rows_now("dropped", t.dropped);
        metrics.limit_drops_now("spool_corrupt_regions", self.spool.stats().corrupt_regions);
        metrics.set_store_backlog(t.backlog_rows, t.backlog_bytes);
        t
    }

    /// Totals for metrics and reports.
    pub fn totals(&self) -> StoreTotals {
        let sp = self.spool.stats();
        let se = *self.sender_stats.lock().unwrap_or_else(|p| p.into_inner());
        let shared = self.spool.shared();
        let (batches, bytes) = shared.backlog();
        StoreTotals {
            spooled: sp.accepted_rows,
            sent: se.sent_rows,
            rejected: se.rejected_rows,
            // The spool counts every row it could not keep; a failed write alone loses none.
            dropped: sp.dropped_rows,
            recovered: sp.recovered_rows,
            backlog_batches: batches as u64,
            backlog_rows: shared.backlog_rows(),
            backlog_bytes: bytes,
            format: self.format.as_str(),
        }
    }

    /// Seals everything and gives the sender up to `drain` to send it; what is left stays in
    /// the spool for the next start. Stops the embedded server.
    pub async fn shutdown(mut self, drain: Duration) -> StoreTotals {
        if let Err(e) = self.spool.seal_all() {
            tracing::error!(error = %e, "cannot seal the spool");
        }
        let _ = self.done.send(true);
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(drain, task).await.is_err() {
                tracing::warn!(
                    rows = self.spool.shared().backlog_rows(),
                    "ClickHouse did not take every row in time; they stay in the spool for the next start"
                );
            }
        }
        let totals = self.totals();
        if let Some(mut e) = self.embedded.take() {
            tokio::task::spawn_blocking(move || e.stop()).await.ok();
        }
        totals
    }
}

/// What the store did, in rows.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct StoreTotals {
    pub spooled: u64,
    pub sent: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub recovered: u64,
    pub backlog_batches: u64,
    pub backlog_rows: u64,
    pub backlog_bytes: u64,
    /// How rows travel: `native` (uncompressed) or `lz4`.
    pub format: &'static str,
}
