//! `[store]` and `[store.embedded]`: where records are kept, how they travel, and the
//! embedded ClickHouse.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use edgewatch_core::validate::{self, Checked, Invalid};

/// How old a batch's first row may get before the batch is sealed and sent: 5 s, so that a
/// quiet machine sends one insert per table every 5 s, not every second. Each insert is a new
/// part on the server (files made, then merged away): ClickHouse's own collector setup
/// (ClickStack's, from @hyperdx/otel-collector 2.24.1) moved its batch timeout from 200 ms to
/// 5 s for that reason. In the hop benchmark the embedded server's CPU per proxied request fell
/// from 7.9-9.6 us at 1 s to 2.6-3.4 us at 3-5 s. Rows reach ClickHouse up to this much later;
/// alerts do not wait for it (they are evaluated here), and the dashboards refresh every 30 s.
pub const DEFAULT_BATCH_MAX_AGE: Duration = Duration::from_secs(5);
/// A batch's bytes by default: small enough that the sender's read-back and merge buffers,
/// a quarter larger, stay within what its pool keeps ([`super::spool::KEPT_BUFFER_BYTES`]),
/// so a busy sidecar reuses them from batch to batch. With 64 MiB batches, ~31,000 proxied
/// requests a second made 24 MB batches, each read into and merged into fresh memory: a
/// quarter of the sidecar's CPU went to the kernel zeroing the new pages. 12 MiB is still
/// ~80,000 rows of a busy hop per insert (an insert every ~2.5 s at that rate).
pub const DEFAULT_BATCH_BYTES: u64 = 12 << 20;

/// `[store]`: ClickHouse, where every record is kept.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Ship records at all.
    pub enabled: bool,
    /// The server's HTTP(S) URL, e.g. `https://clickhouse.example:8443`. Empty (the default):
    /// the embedded ClickHouse that edgewatch fetches once, starts and stops itself.
    pub url: String,
    pub database: String,
    /// The user (the environment variable EDGEWATCH_CLICKHOUSE_USER wins over it).
    pub user: String,
    /// A file whose first line is the password. The environment variable
    /// EDGEWATCH_CLICKHOUSE_PASSWORD wins over it. Never on the command line.
    pub password_file: Option<std::path::PathBuf>,
    /// Extra CA certificates (PEM) trusted for https URLs, besides the public web roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Days rows are kept (table TTL); 0 keeps them forever. Changing it alters the tables
    /// at the next start.
    pub ttl_days: u32,
    /// A cluster name (as in the servers' `remote_servers`): rows live in `*_local` tables on
    /// every node and are written and read through Distributed tables of the plain names.
    /// Empty: one server.
    pub cluster: String,
    /// How a cluster's schema is made: `on_cluster` (a keeper: `ON CLUSTER` DDL, Replicated
    /// tables), `per_node` (no keeper: the DDL runs on every node of `cluster_nodes`, plain
    /// MergeTree tables) or `auto` (`on_cluster` when the server has a keeper connection).
    pub cluster_ddl: ClusterDdl,
    /// Per-node DDL: the HTTP(S) URL of every node of the cluster (same user and password as
    /// `url`). Nodes not listed must be migrated by a sidecar that points at them.
    pub cluster_nodes: Vec<String>,
    /// This machine's name in every row (`node`); the host name when empty.
    pub node: String,
    /// A batch is sealed and sent at this many rows...
    pub batch_rows: u64,
    /// ... or this many bytes (checked every 32 rows: a batch may pass it by 31 rows) ...
    /// ([`DEFAULT_BATCH_BYTES`]) ...
    pub batch_bytes: u64,
    /// ... or when its first row is this old ([`DEFAULT_BATCH_MAX_AGE`]).
    #[serde(with = "humantime_serde")]
    pub batch_max_age: Duration,
    /// Where rows wait for ClickHouse (an outage, a restart).
    pub spool_dir: std::path::PathBuf,
    /// The most the spool may hold; beyond it the oldest batches are dropped (and counted).
    pub spool_max_bytes: u64,
    /// Timeout of one request to ClickHouse.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How rows travel to ClickHouse. They are always the spool's Native column blocks, sent
    /// as they are: `native` (uncompressed: the least work for both sides), `lz4` (the same
    /// blocks LZ4-compressed: the fewest bytes on a network; `rowbinary`, the row format of
    /// older versions, is read as `lz4`) or `auto`: native to a server on this machine (a
    /// loopback URL, the embedded one), lz4 to any other.
    pub format: WireFormat,
    /// How often the whole exposure inventory is written as a snapshot.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// The embedded ClickHouse (used when `url` is empty).
    pub embedded: EmbeddedStoreConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: String::new(),
            database: "edgewatch".to_owned(),
            user: "default".to_owned(),
            password_file: None,
            ca_file: None,
            ttl_days: 30,
            cluster: String::new(),
            cluster_ddl: ClusterDdl::Auto,
            cluster_nodes: Vec::new(),
            node: String::new(),
            batch_rows: 200_000,
            batch_bytes: DEFAULT_BATCH_BYTES,
            batch_max_age: DEFAULT_BATCH_MAX_AGE,
            spool_dir: "/var/lib/edgewatch/spool".into(),
            spool_max_bytes: 1 << 30,
            timeout: Duration::from_secs(30),
            format: WireFormat::Auto,
            snapshot_interval: Duration::from_secs(600),
            embedded: EmbeddedStoreConfig::default(),
        }
    }
}

/// How a cluster's schema is made (`store.cluster_ddl`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterDdl {
    /// `on_cluster` when the server reports a keeper connection, else `per_node`.
    #[default]
    Auto,
    OnCluster,
    PerNode,
}

impl ClusterDdl {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::OnCluster => "on_cluster",
            Self::PerNode => "per_node",
        }
    }
}

/// How rows travel to ClickHouse (`store.format`): the spool's Native blocks, compressed or
/// not.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// `Native` to a loopback URL, `Lz4` to any other.
    #[default]
    Auto,
    /// ClickHouse's columnar Native format, uncompressed.
    Native,
    /// The same Native blocks, LZ4-compressed (ClickHouse's compressed-block format).
    /// `rowbinary` is what older versions called the compressed choice.
    #[serde(alias = "rowbinary")]
    Lz4,
}

impl WireFormat {
    /// The format used for a server at `url` (`auto` decided).
    pub fn for_url(self, url: &str) -> Self {
        match self {
            Self::Auto => {
                let loopback = match url::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host().map(|h| h.to_owned()))
                {
                    Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    None => false,
                };
                if loopback {
                    Self::Native
                } else {
                    Self::Lz4
                }
            }
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Lz4 => "lz4",
        }
    }
}

/// The embedded ClickHouse.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedStoreConfig {
    /// Where its data lives.
    pub data_dir: std::path::PathBuf,
    /// Where the fetched ClickHouse build is cached.
    pub cache_dir: std::path::PathBuf,
    /// A libchdb.so already on the machine (no fetch).
    pub library: Option<std::path::PathBuf>,
    /// Its HTTP port (on 127.0.0.1 only; every request but `/ping` must authenticate as user
    /// `edgewatch` with the password in `secret_file`).
    pub http_port: u16,
    /// No longer used: the native TCP port is not opened (its protocol cannot be limited to
    /// edgewatch's user). Accepted so that older config files still load; a warning says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    /// The password of the server's `edgewatch` user: generated on first start (256 random
    /// bits), readable by root only. `edgewatch timeline` and `replay --store` read it too.
    pub secret_file: std::path::PathBuf,
    /// The unprivileged account the server runs as (created with `useradd --system` if
    /// missing; where that is impossible, uid/gid 64206).
    pub run_as: String,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        Self {
            data_dir: "/var/lib/edgewatch/clickhouse".into(),
            cache_dir: "/var/cache/edgewatch".into(),
            library: None,
            http_port: 18123,
            tcp_port: None,
            secret_file: "/var/lib/edgewatch/clickhouse.secret".into(),
            run_as: "edgewatch-ch".to_owned(),
        }
    }
}

/// Which credential a URL carries, if any: `user:password@` in the authority, or a
/// password-like query parameter (ClickHouse takes `?user=..&password=..`).
pub fn url_credentials(raw: &str) -> Option<&'static str> {
    let url = url::Url::parse(raw).ok()?;
    if !url.username().is_empty() || url.password().is_some() {
        return Some("user:password@");
    }
    url.query_pairs()
        .find_map(|(k, _)| match k.to_ascii_lowercase().as_str() {
            "password" | "pass" | "passwd" => Some("?password="),
            "token" | "access_token" | "key" | "api_key" | "apikey" => Some("a token parameter"),
            _ => None,
        })
}

impl StoreConfig {
    pub fn validate(&self) -> Checked {
        let st = self;
        if !(st.url.is_empty() || st.url.starts_with("http://") || st.url.starts_with("https://")) {
            return Err(Invalid::new(
                "store.url",
                format!("{:?}", st.url),
                "must be an http:// or https:// URL (ClickHouse's HTTP interface), or empty for the embedded store",
            ));
        }
        let hidden = "(hidden: it holds credentials)";
        if let Some(key) = url_credentials(&st.url) {
            return Err(Invalid::new(
                "store.url",
                hidden,
                format!("credentials do not belong in the URL ({key}); use store.user and store.password_file or EDGEWATCH_CLICKHOUSE_PASSWORD"),
            ));
        }
        if st.url.contains('@') {
            return Err(Invalid::new(
                "store.url",
                hidden,
                "credentials do not belong in the URL; use store.user and store.password_file or EDGEWATCH_CLICKHOUSE_PASSWORD",
            ));
        }
        if st.database.is_empty()
            || !st
                .database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Invalid::new(
                "store.database",
                format!("{:?}", st.database),
                "letters, digits and underscores only",
            ));
        }
        if st.batch_rows == 0 || st.batch_bytes < 4096 {
            return Err(Invalid::new(
                "store.batch_rows",
                format!("{} rows / {} bytes", st.batch_rows, st.batch_bytes),
                "batches need at least 1 row and 4096 bytes",
            ));
        }
        if st.spool_max_bytes < st.batch_bytes {
            return Err(Invalid::new(
                "store.spool_max_bytes",
                st.spool_max_bytes.to_string(),
                "must hold at least one batch (store.batch_bytes)",
            ));
        }
        for node in &st.cluster_nodes {
            if !(node.starts_with("http://") || node.starts_with("https://")) {
                return Err(Invalid::new(
                    "store.cluster_nodes",
                    format!("{node:?}"),
                    "each must be an http:// or https:// URL of a cluster node",
                ));
            }
            if node.contains('@') || url_credentials(node).is_some() {
                return Err(Invalid::new(
                    "store.cluster_nodes",
                    hidden,
                    "credentials do not belong in the URL; the nodes share store.user and its password",
                ));
            }
        }
        if st.cluster.is_empty() && !st.cluster_nodes.is_empty() {
            return Err(Invalid::new(
                "store.cluster_nodes",
                format!("{} node(s)", st.cluster_nodes.len()),
                "needs store.cluster (the cluster's name in the servers' remote_servers)",
            ));
        }
        validate::absolute("store.spool_dir", &st.spool_dir)?;
        validate::at_least(
            "store.batch_max_age",
            st.batch_max_age,
            Duration::from_millis(10),
        )?;
        st.embedded.validate()
    }
}

impl EmbeddedStoreConfig {
    pub fn validate(&self) -> Checked {
        if self.http_port == 0 {
            return Err(Invalid::new(
                "store.embedded.http_port",
                "0",
                "the embedded server needs a fixed port",
            ));
        }
        validate::absolute("store.embedded.secret_file", &self.secret_file)?;
        if self.run_as.is_empty() || self.run_as == "root" {
            return Err(Invalid::new(
                "store.embedded.run_as",
                format!("{:?}", self.run_as),
                "must name an unprivileged account",
            ));
        }
        Ok(())
    }
}
