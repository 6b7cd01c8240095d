//! The sending side: connects to ClickHouse, applies the migrations, checks the tables, and
//! sends sealed spool batches oldest first, each with its deduplication token. I/O only; what
//! to send and how rows look is decided elsewhere.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clickhouse::{Client, Row};
use serde::Serialize;

use super::config::WireFormat;
use edgewatch_core::rows_of;

use super::{
    rows::{self, AnyRow, TABLE_NAMES},
    schema::{self, SchemaOptions},
    spool::{read_frames_into, BatchInfo, BufferPool, Shared},
};

/// How to reach the server.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub user: String,
    /// From the environment or a file, never from the command line.
    pub password: Option<String>,
    /// Extra trusted CA certificates (PEM) for https URLs (besides the web roots and the
    /// machine's trust store).
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Endpoint {
    /// The `clickhouse` crate's client: HTTP(S) with LZ4 for RowBinary inserts, rustls for https
    /// (the machine's roots plus `ca_file`, through `outbound`).
    pub fn client(&self, database: &str) -> anyhow::Result<Client> {
        // The one root-store policy (the machine's roots plus `ca_file`), see `outbound`.
        let https = crate::outbound::connector(self.ca_file.as_deref(), self.timeout)
            .context("store.ca_file")?;
        let hyper =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_millis(2_500))
                .build(https);
        let mut client = Client::with_http_client(hyper)
            .with_url(&self.url)
            .with_user(&self.user)
            .with_database(database)
            .with_compression(clickhouse::Compression::Lz4);
        if let Some(p) = &self.password {
            client = client.with_password(p);
        }
        Ok(client)
    }
}

/// An error's ClickHouse exception code, when the server sent one.
pub fn error_code(e: &clickhouse::error::Error) -> Option<u32> {
    let text = e.to_string();
    let at = text.find("Code: ")? + 6;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Whether retrying can help. Errors in the data or the schema will not heal by themselves
/// (the codes the Vector ClickHouse sink also refuses to retry, and their neighbours).
pub fn is_permanent(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match e {
        E::SchemaMismatch(_) => true,
        E::Network(_) | E::TimedOut => false,
        _ => matches!(
            error_code(e),
            Some(
                16  // NO_SUCH_COLUMN_IN_TABLE
                | 27 // CANNOT_PARSE_INPUT_ASSERTION_FAILED
                | 33 // CANNOT_READ_ALL_DATA
                | 44 // ILLEGAL_COLUMN
                | 47 // UNKNOWN_IDENTIFIER
                | 53 // TYPE_MISMATCH
                | 60 // UNKNOWN_TABLE
                | 62 // SYNTAX_ERROR
                | 70 // CANNOT_CONVERT_TYPE
                | 81 // UNKNOWN_DATABASE
                | 117 // INCORRECT_DATA
            )
        ),
    }
}

/// What the sender tells the pipeline (printed as `store` lines, counted in metrics).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StoreEvent {
    /// Connected, migrated and checked.
    Ready {
        server_version: String,
        schema_version: u32,
        url: String,
        /// `native` or `lz4`.
        format: &'static str,
        /// With `store.cluster`: its DDL kind, shards and the nodes migrated.
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster: Option<super::cluster::ClusterInfo>,
    },
    /// The server cannot be used (too old, schema mismatch): nothing is sent until the
    /// operator fixes it; rows wait in the spool.
    Incompatible { reason: String },
    /// The server stopped answering or failed an insert; rows wait in the spool.
    Unavailable { reason: String },
    /// It answers again.
    Recovered { after_failures: u64 },
    /// A batch was set aside for good.
    Rejected {
        table: String,
        rows: u64,
        reason: String,
        moved_to: String,
    },
    /// A batch was sent.
    Sent { table: String, rows: u64 },
}

/// Connects, checks the version, applies the migrations and checks every table's columns
/// (one server; a cluster goes through `cluster::prepare`). Returns the server's version.
pub async fn prepare(
    client: &Client,
    opts: &SchemaOptions,
    node: &str,
) -> Result<String, PrepareError> {
    let version = server_version(client).await?;
    migrate(client, opts, node).await?;
    check_columns(client, opts).await?;
    Ok(version)
}

/// The server's version, checked against the oldest this schema works on.
pub async fn server_version(client: &Client) -> Result<String, PrepareError> {
    // The version query works on every server (old ones included): plain text, no
    // compression, no schema validation.
    let plain = client
        .clone()
        .with_compression(clickhouse::Compression::None)
        .with_validation(false)
        .with_database("default");
    let mut cursor = plain
        .query("SELECT version()")
        .fetch_bytes("TabSeparated")
        .map_err(PrepareError::Unreachable)?;
    let bytes = cursor.collect().await.map_err(PrepareError::Unreachable)?;
    let version = String::from_utf8_lossy(&bytes).trim().to_owned();
    let (major, minor) = schema::parse_version(&version).ok_or_else(|| {
        PrepareError::Incompatible(format!("cannot read the server version from {version:?}"))
    })?;
    if (major, minor) < schema::MIN_SERVER {
        return Err(PrepareError::Incompatible(format!(
            "ClickHouse {version} is too old: edgewatch needs {}.{} or newer (DateTime64, TTL, \
             codecs, bloom-filter indexes, insert_deduplication_token)",
            schema::MIN_SERVER.0,
            schema::MIN_SERVER.1
        )));
    }
    Ok(version)
}

/// Creates the migrations table, applies what is missing and brings the TTL to the config,
/// on the server of `client`. Every step is idempotent: two sidecars migrating one server at
/// once both succeed.
/// Long because each step (migrations table, migrations, TTL) has its own remedy in its
/// error message, and they must run in this order.
pub async fn migrate(
    client: &Client,
    opts: &SchemaOptions,
    node: &str,
) -> Result<(), PrepareError> {
    let admin = client.clone().with_database("default");
    let ddl = |sql: String| {
        let admin = admin.clone();
        async move {
            // Two sidecars creating the same table at once: the loser may be told it exists.
            for attempt in 0..3 {
                match admin.query(&sql).execute().await {
                    Ok(()) => return Ok(()),
                    Err(e) if error_code(&e) == Some(57) && attempt < 2 => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    };
    for sql in opts.migrations_table() {
        ddl(sql)
            .await
            .map_err(|e| fail("creating the migrations table", e))?;
    }
    let mig_table = format!(
        "{}.{}",
        schema::ident(&opts.database),
        // The Distributed table with a keeper; each node's own table per node.
        schema::ident(schema::MIGRATIONS_TABLE)
    );
    let applied: Vec<u32> = admin
        .query(&format!(
            "SELECT DISTINCT version FROM {mig_table} ORDER BY version"
        ))
        .fetch_all()
        .await
        .map_err(|e| fail("reading applied migrations", e))?;
    let latest = schema::latest_version();
    if let Some(newer) = applied.iter().find(|v| **v > latest) {
        return Err(PrepareError::Incompatible(format!(
            "database {} has schema version {newer}, newer than this edgewatch knows ({latest}): \
             upgrade edgewatch or use another database",
            opts.database
        )));
    }
    for m in opts.migrations() {
        if applied.contains(&m.version) {
            continue;
        }
        for sql in m.statements {
            ddl(sql)
                .await
                .map_err(|e| fail(&format!("applying migration {} ({})", m.version, m.name), e))?;
        }
        admin
            .query(&format!(
                "INSERT INTO {mig_table} (version, name, applied_at, applied_by) VALUES (?, ?, now64(3), ?)"
            ))
            .bind(m.version)
            .bind(m.name)
            .bind(node)
            .execute()
            .await
            .map_err(|e| fail("recording a migration", e))?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied schema migration"
        );
    }
    // TTL follows the config.
    for table in SchemaOptions::ttl_tables() {
        let storage = opts.storage_table(table);
        let engine: String = admin
            .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(&opts.database)
            .bind(&storage)
            .fetch_one()
            .await
            .map_err(|e| fail(&format!("reading the definition of {storage}"), e))?;
        let want = format!("toIntervalDay({})", opts.ttl_days);
        let has_ttl = engine.contains(" TTL ");
        let right = if opts.ttl_days == 0 {
            !has_ttl
        } else {
            engine.contains(&want)
        };
        if !right {
            ddl(opts.ttl_statement(table))
                .await
                .map_err(|e| fail(&format!("setting the TTL of {storage}"), e))?;
            tracing::info!(
                table = storage,
                days = opts.ttl_days,
                "changed the table TTL"
            );
        }
    }
    Ok(())
}

/// Compares each table's columns with what this build writes.
pub async fn check_columns(client: &Client, opts: &SchemaOptions) -> Result<(), PrepareError> {
    let admin = client.clone().with_database("default");
    #[derive(Row, serde::Deserialize)]
    struct Col {
        table: String,
        name: String,
        #[serde(rename = "type")]
        ty: String,
    }
    let names: Vec<String> = schema::TABLES.iter().map(|t| t.name.to_owned()).collect();
    let cols: Vec<Col> = admin
        .query("SELECT table, name, type FROM system.columns WHERE database = ? AND table IN ?")
        .bind(&opts.database)
        .bind(&names)
        .fetch_all()
        .await
        .map_err(|e| fail("reading the table columns", e))?;
    let mut problems = Vec::new();
    for t in schema::TABLES {
        for c in t.columns {
            match cols.iter().find(|x| x.table == t.name && x.name == c.name) {
                None => problems.push(format!("{}.{}: column missing", t.name, c.name)),
                Some(x) if x.ty != c.ty => problems.push(format!(
                    "{}.{}: is {}, edgewatch writes {}",
                    t.name, c.name, x.ty, c.ty
                )),
                Some(_) => {}
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PrepareError::Incompatible(format!(
            "schema mismatch in database {}: {}; fix the tables (or drop them to have them \
             recreated) or use another database",
            opts.database,
            problems.join("; ")
        )))
    }
}

pub(super) fn fail(what: &str, e: clickhouse::error::Error) -> PrepareError {
    if is_permanent(&e) || matches!(error_code(&e), Some(516 | 497 | 192 | 194)) {
        PrepareError::Incompatible(format!("{what}: {e}"))
    } else {
        PrepareError::Unreachable(e)
    }
}

/// Why the store could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("ClickHouse is not reachable: {0}")]
    Unreachable(#[source] clickhouse::error::Error),
    #[error("{0}")]
    Incompatible(String),
}

/// Rows through the crate's own row encoding (RowBinary, derived from the row structs): not
/// how the sidecar sends, but an independent encoder the tests compare its Native blocks with.
pub async fn insert_rowbinary(
    client: &Client,
    table: usize,
    token: &str,
    rows: Vec<AnyRow>,
) -> clickhouse::error::Result<()> {
    async fn typed<T>(
        client: &Client,
        table: &str,
        token: &str,
        rows: Vec<T>,
    ) -> clickhouse::error::Result<()>
    where
        T: Row + Serialize + for<'a> Row<Value<'a> = T>,
    {
        let mut insert = client
            .insert::<T>(table)
            .await?
            .with_setting("insert_deduplication_token", token)
            .with_setting("insert_deduplicate", "1");
        for r in &rows {
            insert.write(r).await?;
        }
        insert.end().await
    }
    let name = TABLE_NAMES[table];
    match table {
        0 => typed(client, name, token, rows_of!(rows, Exposure)).await,
        1 => typed(client, name, token, rows_of!(rows, ExposureChange)).await,
        2 => typed(client, name, token, rows_of!(rows, Conn)).await,
        3 => typed(client, name, token, rows_of!(rows, Http)).await,
        4 => typed(client, name, token, rows_of!(rows, Ws)).await,
        5 => typed(client, name, token, rows_of!(rows, Edge)).await,
        6 => typed(client, name, token, rows_of!(rows, Request)).await,
        _ => typed(client, name, token, rows_of!(rows, Alert)).await,
    }
}

/// Sends a Native stream (blocks of table `table`, as the spool holds them) as one insert with
/// its deduplication token, LZ4-compressed for `format` `lz4`. Nothing to send is no insert.
pub async fn insert_blocks(
    client: &Client,
    format: WireFormat,
    table: usize,
    token: &str,
    blocks: Vec<bytes::Bytes>,
) -> clickhouse::error::Result<()> {
    if blocks.is_empty() {
        return Ok(());
    }
    let client = match format {
        WireFormat::Lz4 => client.clone(),
        _ => client
            .clone()
            .with_compression(clickhouse::Compression::None),
    };
    let mut insert = client
        .insert_formatted_with(format!("INSERT INTO {} FORMAT Native", TABLE_NAMES[table]))
        .with_setting("insert_deduplication_token", token)
        .with_setting("insert_deduplicate", "1");
    for block in blocks {
        insert.send(block).await?;
    }
    insert.end().await
}

/// Sends rows of one table as one Native block (what a spool batch holds, built here from
/// rows: for callers that have rows, not a batch).
pub async fn insert_rows(
    client: &Client,
    format: WireFormat,
    table: usize,
    token: &str,
    rows: Vec<AnyRow>,
) -> clickhouse::error::Result<()> {
    let mut cols = rows::Columns::new(table);
    for r in &rows {
        cols.push(r);
    }
    let mut block = Vec::new();
    cols.write_block(&mut block);
    let blocks = if block.is_empty() {
        Vec::new()
    } else {
        vec![block.into()]
    };
    insert_blocks(client, format, table, token, blocks).await
}

/// The sender's running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub sent_rows: u64,
    pub sent_batches: u64,
    pub rejected_rows: u64,
    pub failures: u64,
}

/// Sends sealed batches until `stop` is set and the spool is empty (or `stop` is forced).
pub struct Sender {
    pub client: Client,
    /// The other nodes of a cluster with per-node DDL.
    pub peers: super::cluster::Peers,
    pub cluster_ddl: super::config::ClusterDdl,
    pub opts: SchemaOptions,
    pub node: String,
    pub shared: Arc<Shared>,
    pub events: tokio::sync::mpsc::UnboundedSender<StoreEvent>,
    pub url: String,
    pub stats: Arc<std::sync::Mutex<SenderStats>>,
    /// Longest a request may take (a server that accepts and never answers is a failure,
    /// retried like any other, not a hang).
    pub timeout: Duration,
    /// The server version (and cluster) when the caller already prepared the server (no
    /// second round of checks at start).
    pub prepared: Option<(String, Option<super::cluster::ClusterInfo>)>,
    /// How rows travel (`auto` already decided from the URL).
    pub format: WireFormat,
}

fn bump(stats: &std::sync::Mutex<SenderStats>, f: impl FnOnce(&mut SenderStats)) {
    f(&mut stats.lock().unwrap_or_else(|p| p.into_inner()));
}

impl Sender {
    /// Runs until `done` resolves true (drain mode: it returns once the spool is empty after
    /// that) or forever. Batches it leaves unsent are made durable before it returns.
    pub async fn run(self, done: tokio::sync::watch::Receiver<bool>) {
        let shared = self.shared.clone();
        self.send_until_done(done).await;
        make_durable(shared).await;
    }

    /// Long because it is the sender's one loop: the batch order, the retry backoff and the
    /// drain mode share its state.
    async fn send_until_done(self, mut done: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        let max_backoff = Duration::from_secs(30);
        // Connect, migrate, check: retried while unreachable, reported once when incompatible
        // (and retried slowly, in case the operator fixes it).
        let mut reported_down = false;
        let mut attempts = 0u32;
        let mut prepared = self.prepared.clone();
        loop {
            let attempt = if let Some(version) = prepared.take() {
                Ok(version)
            } else {
                let prepare = super::cluster::prepare(
                    &self.client,
                    &self.peers,
                    self.cluster_ddl,
                    &self.opts,
                    &self.node,
                );
                tokio::time::timeout(self.timeout, prepare)
                    .await
                    .unwrap_or(Err(PrepareError::Unreachable(
                        clickhouse::error::Error::TimedOut,
                    )))
            };
            match attempt {
                Ok((version, cluster)) => {
                    let _ = self.events.send(StoreEvent::Ready {
                        server_version: version,
                        schema_version: schema::latest_version(),
                        url: self.url.clone(),
                        format: self.format.as_str(),
                        cluster,
                    });
                    break;
                }
                Err(PrepareError::Incompatible(reason)) => {
                    if !reported_down {
                        let _ = self.events.send(StoreEvent::Incompatible { reason });
                        reported_down = true;
                    }
                    backoff = max_backoff;
                }
                Err(PrepareError::Unreachable(e)) => {
                    if !reported_down {
                        let _ = self.events.send(StoreEvent::Unavailable {
                            reason: e.to_string(),
                        });
                        reported_down = true;
                    }
                }
            }
            attempts += 1;
            // Stopping: give up after a few tries; the spool keeps the rows for next time.
            if *done.borrow() && (self.shared.backlog().0 == 0 || attempts > 3) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = done.changed() => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
        backoff = Duration::from_millis(200);
        let mut failures = 0u64;
        let mut inflight = tokio::task::JoinSet::new();
        let pool = Arc::new(BufferPool::default());
        loop {
            // Two inserts at a time while healthy (ClickHouse parses one insert on one core),
            // two large ones only while the sender is behind (`Shared::next_batch_beside`);
            // one at a time while failing.
            let limit = if failures == 0 { PARALLEL_INSERTS } else { 1 };
            while inflight.len() < limit {
                let Some(batch) = self.shared.next_batch_beside(!inflight.is_empty()) else {
                    break;
                };
                let job = SendJob {
                    client: self.client.clone(),
                    pool: pool.clone(),
                    format: self.format,
                    shared: self.shared.clone(),
                    events: self.events.clone(),
                    stats: self.stats.clone(),
                    timeout: self.timeout,
                };
                inflight.spawn(async move {
                    let result = job.send(&batch).await;
                    (batch, result)
                });
            }
            let Some(joined) = inflight.join_next().await else {
                if *done.borrow() {
                    return;
                }
                // A seal while we were busy left a permit (notify_one): no wake-up is lost.
                tokio::select! {
                    _ = self.shared.notify.notified() => {}
                    _ = done.changed() => {}
                }
                continue;
            };
            let Ok((batch, result)) = joined else {
                tracing::error!("a ClickHouse insert task failed; its batch stays in the spool");
                continue;
            };
            match result {
                Ok(()) => {
                    if failures > 0 {
                        let _ = self.events.send(StoreEvent::Recovered {
                            after_failures: failures,
                        });
                        failures = 0;
                    }
                    backoff = Duration::from_millis(200);
                }
                Err(SendError::Unreadable(reason)) => self.set_aside(&batch, reason).await,
                Err(SendError::Insert(e)) if is_permanent(&e) => {
                    self.set_aside(&batch, e.to_string()).await
                }
                Err(SendError::Insert(e)) => {
                    self.shared.release(&batch);
                    // It waits now, and so do the batches sealed behind it: to disk first.
                    make_durable(self.shared.clone()).await;
                    self.client.clear_cached_metadata().await;
                    if failures == 0 {
                        let _ = self.events.send(StoreEvent::Unavailable {
                            reason: e.to_string(),
                        });
                    }
                    failures += 1;
                    bump(&self.stats, |s| s.failures += 1);
                    // Let the other insert in flight finish before retrying.
                    while let Some(Ok((other, r))) = inflight.join_next().await {
                        if r.is_err() {
                            self.shared.release(&other);
                        }
                    }
                    // A forced stop ends retries; the batch stays in the spool for next time.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = done.changed() => {}
                    }
                    if *done.borrow() && failures > 3 {
                        return;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    async fn set_aside(&self, batch: &BatchInfo, reason: String) {
        self.client.clear_cached_metadata().await;
        let moved_to = match self.shared.reject(batch) {
            Ok(p) => p.display().to_string(),
            Err(err) => {
                tracing::error!(error = %err, "cannot set a rejected batch aside");
                let _ = self.shared.done(batch);
                "(deleted: could not be moved)".to_owned()
            }
        };
        bump(&self.stats, |s| s.rejected_rows += batch.rows);
        let _ = self.events.send(StoreEvent::Rejected {
            table: TABLE_NAMES[batch.table].to_owned(),
            rows: batch.rows,
            reason,
            moved_to,
        });
    }
}

/// Syncs the sealed batches that are not yet durable (see `spool`'s doc), off the runtime's
/// threads; a failure is logged (the rows are still in the page cache and the files).
async fn make_durable(shared: Arc<Shared>) {
    match tokio::task::spawn_blocking(move || shared.sync_unsynced()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot sync waiting spool batches to disk"),
        Err(e) => tracing::warn!(error = %e, "the spool sync task failed"),
    }
}

/// How many inserts run at once while ClickHouse is healthy.
const PARALLEL_INSERTS: usize = 2;

/// Why a batch was not sent.
#[derive(Debug)]
enum SendError {
    /// The spool file cannot be read back (set aside, never retried).
    Unreadable(String),
    Insert(clickhouse::error::Error),
}

/// What one insert task needs.
struct SendJob {
    client: Client,
    /// Buffers shared by the sender's inserts.
    pool: Arc<BufferPool>,
    format: WireFormat,
    shared: Arc<Shared>,
    events: tokio::sync::mpsc::UnboundedSender<StoreEvent>,
    stats: Arc<std::sync::Mutex<SenderStats>>,
    timeout: Duration,
}

impl SendJob {
    /// A batch's Native blocks (as its file holds them) and its rows.
    async fn body_of(&self, batch: &BatchInfo) -> Result<(Vec<bytes::Bytes>, u64), SendError> {
        let buf = self
            .pool
            .take(usize::try_from(batch.bytes).unwrap_or(usize::MAX));
        let (path, table) = (batch.path.clone(), batch.table);
        let (frames, data) =
            match tokio::task::spawn_blocking(move || read_frames_into(&path, table, buf)).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    return Err(SendError::Unreadable(format!(
                        "unreadable spool batch: {e}"
                    )))
                }
                Err(e) => return Err(SendError::Unreadable(e.to_string())),
            };
        if frames.corrupt_regions > 0 {
            self.shared
                .count_corrupt(frames.corrupt_regions, frames.corrupt_bytes);
            tracing::warn!(
                path = %batch.path.display(),
                regions = frames.corrupt_regions,
                bytes = frames.corrupt_bytes,
                "corrupt stretches in a spool batch skipped (their rows are lost, counted)"
            );
        }
        let rows = frames.rows;
        Ok((frames.into_body_pooled(batch.table, data, &self.pool), rows))
    }

    async fn send(&self, batch: &BatchInfo) -> Result<(), SendError> {
        let (blocks, rows) = self.body_of(batch).await?;
        let sent = blocks.clone();
        let inserted = tokio::time::timeout(
            self.timeout,
            insert_blocks(
                &self.client,
                self.format,
                batch.table,
                &self.shared.token(batch),
                blocks,
            ),
        )
        .await
        .unwrap_or(Err(clickhouse::error::Error::TimedOut));
        // The insert is over: its buffers serve the next batch.
        for chunk in sent {
            self.pool.give_bytes(chunk);
        }
        inserted.map_err(SendError::Insert)?;
        if let Err(e) = self.shared.sent(batch) {
            tracing::warn!(error = %e, "sent batch could not be deleted (it will be deduplicated if resent)");
        }
        bump(&self.stats, |s| {
            s.sent_rows += rows;
            s.sent_batches += 1;
        });
        let _ = self.events.send(StoreEvent::Sent {
            table: TABLE_NAMES[batch.table].to_owned(),
            rows,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error;

    #[test]
    fn errors_that_cannot_heal_are_permanent() {
        let unknown = Error::BadResponse(
            "Code: 60. DB::Exception: Unknown table expression identifier 'x.y'. (UNKNOWN_TABLE)"
                .into(),
        );
        assert_eq!(error_code(&unknown), Some(60));
        assert!(is_permanent(&unknown));
        assert!(is_permanent(&Error::SchemaMismatch("x".into())));
        let busy =
            Error::BadResponse("Code: 252. DB::Exception: Too many parts. (TOO_MANY_PARTS)".into());
        assert!(!is_permanent(&busy), "a busy server heals");
        assert!(!is_permanent(&Error::TimedOut));
        assert_eq!(error_code(&Error::BadResponse("no code here".into())), None);
    }

    #[test]
    fn the_password_is_never_printed() {
        let e = Endpoint {
            url: "https://ch.example".into(),
            user: "u".into(),
            password: Some("hunter2".into()),
            ca_file: None,
            timeout: Duration::from_secs(1),
        };
        let text = format!("{e:?}");
        assert!(
            !text.contains("hunter2") && text.contains("(set)"),
            "{text}"
        );
    }
}
