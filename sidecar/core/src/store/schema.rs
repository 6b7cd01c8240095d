//! The ClickHouse schema as data, and the DDL generated from it. Pure: no I/O.
//!
//! Every table has a `ts DateTime64(9)` column (Unix nanoseconds), is partitioned by day and
//! expires by TTL. Migrations are versioned lists of idempotent statements (`IF NOT EXISTS`
//! everywhere), so applying them twice, or from two sidecars at once, is harmless. In cluster
//! mode every statement runs `ON CLUSTER`, data lives in `Replicated*` tables named `*_local`,
//! and the plain names are `Distributed` tables over them, so queries and inserts look the same
//! in both modes.

/// One column: name and ClickHouse type (with its codec and its default, if any).
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub codec: Option<&'static str>,
    /// `DEFAULT` expression: a row written without the column gets it (rows spooled before
    /// the column was, and writers of the line's columns alone).
    pub default: Option<&'static str>,
}

const fn col(name: &'static str, ty: &'static str) -> Column {
    Column {
        name,
        ty,
        codec: None,
        default: None,
    }
}

const fn col_c(name: &'static str, ty: &'static str, codec: &'static str) -> Column {
    Column {
        name,
        ty,
        codec: Some(codec),
        default: None,
    }
}

/// A column with a default (and its codec, if any).
const fn col_d(
    name: &'static str,
    ty: &'static str,
    codec: Option<&'static str>,
    default: &'static str,
) -> Column {
    Column {
        name,
        ty,
        codec,
        default: Some(default),
    }
}

impl Column {
    /// The column as `CREATE TABLE` and `ADD COLUMN` write it.
    fn definition(&self) -> String {
        let mut d = format!("{} {}", ident(self.name), self.ty);
        if let Some(v) = self.default {
            d.push_str(&format!(" DEFAULT {v}"));
        }
        if let Some(c) = self.codec {
            d.push_str(&format!(" CODEC({c})"));
        }
        d
    }
}

/// One table of records.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub name: &'static str,
    /// What a row is, for `COMMENT`.
    pub comment: &'static str,
    pub columns: &'static [Column],
    pub order_by: &'static str,
    /// Bloom-filter skip indexes on these columns.
    pub bloom: &'static [&'static str],
    /// The sharding key in cluster mode.
    pub shard_by: &'static str,
}

const TS: Column = col_c("ts", "DateTime64(9)", "DoubleDelta, ZSTD(1)");
const NODE: Column = col("node", "LowCardinality(String)");

const CONN_COLUMNS: [Column; 5] = [
    col("client_addr", "String"),
    col("client_port", "UInt16"),
    col("server_addr", "LowCardinality(String)"),
    col("server_port", "UInt16"),
    col_c("conn_start", "DateTime64(9)", "DoubleDelta, ZSTD(1)"),
];

macro_rules! columns {
    ($($c:expr),* $(,)?) => { &[$($c),*] };
}

const EXPOSURE_COLUMNS: &[Column] = columns![
    TS,
    NODE,
    col("change", "LowCardinality(String)"),
    col("source", "LowCardinality(String)"),
    col("kind", "LowCardinality(String)"),
    col("proto", "LowCardinality(String)"),
    col("address", "LowCardinality(String)"),
    col("port", "UInt16"),
    col("port_end", "UInt16"),
    col("scope", "LowCardinality(String)"),
    col("family", "LowCardinality(String)"),
    col("pid", "UInt32"),
    col("comm", "LowCardinality(String)"),
    col_c("cmdline", "String", "ZSTD(3)"),
    col("container", "String"),
    col("netns", "UInt64"),
    col("exposure_key", "String"),
    col("verdict", "LowCardinality(String)"),
    col("rule", "LowCardinality(String)"),
    col("severity", "LowCardinality(String)"),
    col("watched", "Bool"),
    col_c("detail", "String", "ZSTD(3)"),
];

/// The join's columns of an `edge_logs` row (see `rows::EdgeJoinRow`): filled when the line's
/// request was joined as the line was read, which then is the request's only row the sidecar
/// writes; [`REQUEST_FROM_EDGE`] makes its `requests` row. Added to tables made before them by
/// migration 3.
const EDGE_JOIN_COLUMNS: [Column; 13] = [
    col_d("joined", "Bool", None, "false"),
    col_d("matched", "LowCardinality(String)", None, "''"),
    col_d("reason", "LowCardinality(String)", None, "''"),
    col_d("wire_status", "Nullable(UInt16)", None, "NULL"),
    col_d(
        "wire_ttfb_ns",
        "Nullable(UInt64)",
        Some("T64, ZSTD(1)"),
        "NULL",
    ),
    col_d(
        "wire_total_ns",
        "Nullable(UInt64)",
        Some("T64, ZSTD(1)"),
        "NULL",
    ),
    col_d("upgrade_requested", "Bool", None, "false"),
    col_d("websocket", "Bool", None, "false"),
    col_d(
        "ws_duration_ns",
        "Nullable(UInt64)",
        Some("T64, ZSTD(1)"),
        "NULL",
    ),
    col_d("ws_end_kind", "LowCardinality(String)", None, "''"),
    col_d("ws_end_from", "LowCardinality(String)", None, "''"),
    col_d("refused", "Bool", None, "false"),
    col_d("hop_client", "String", None, "''"),
];

/// Each `requests` column, in order, as made of an `edge_logs` row that carries its request
/// (`joined`): the view `requests_from_edge_logs_mv` selects these. A request starts when
/// the edge started it (the line's end less its request time); the rest are the line's
/// columns or its join's, by name.
pub const REQUEST_FROM_EDGE: &[(&str, &str)] = &[
    (
        "ts",
        "fromUnixTimestamp64Nano(greatest(toUnixTimestamp64Nano(ts) - toInt64(ifNull(request_time_ns, 0)), toInt64(0)))",
    ),
    ("node", "node"),
    ("request_id", "request_id"),
    ("matched", "matched"),
    ("reason", "reason"),
    ("client", "client"),
    ("host", "host"),
    ("method", "method"),
    ("path", "path"),
    ("edge_status", "toNullable(status)"),
    ("edge_request_time_ns", "request_time_ns"),
    ("upstream_addr", "upstream_addr"),
    ("upstream_connect_ns", "upstream_connect_ns"),
    ("upstream_header_ns", "upstream_header_ns"),
    ("upstream_response_ns", "upstream_response_ns"),
    ("wire_status", "wire_status"),
    ("wire_ttfb_ns", "wire_ttfb_ns"),
    ("wire_total_ns", "wire_total_ns"),
    ("upgrade_requested", "upgrade_requested"),
    ("websocket", "websocket"),
    ("ws_duration_ns", "ws_duration_ns"),
    ("ws_end_kind", "ws_end_kind"),
    ("ws_end_from", "ws_end_from"),
    ("refused", "refused"),
    ("hop_client", "hop_client"),
];

/// The view that makes `requests` rows of `edge_logs` rows that carry their request.
pub const REQUEST_FROM_EDGE_VIEW: &str = "requests_from_edge_logs_mv";

/// Every table of records, in creation order.
pub const TABLES: &[Table] = &[
    Table {
        name: "exposures",
        comment: "exposure inventory snapshots (change = snapshot)",
        columns: EXPOSURE_COLUMNS,
        order_by: "(port, ts)",
        bloom: &[],
        shard_by: "cityHash64(node)",
    },
    Table {
        name: "exposure_changes",
        comment: "exposures added and removed (probe, rescan, nat)",
        columns: EXPOSURE_COLUMNS,
        order_by: "(port, ts)",
        bloom: &[],
        shard_by: "cityHash64(node)",
    },
    Table {
        name: "conn_events",
        comment: "hop connects, refused connects, resets and capture losses",
        columns: columns![
            TS,
            NODE,
            col("kind", "LowCardinality(String)"),
            CONN_COLUMNS[0],
            CONN_COLUMNS[1],
            CONN_COLUMNS[2],
            CONN_COLUMNS[3],
            CONN_COLUMNS[4],
            col_c("latency_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col("side", "LowCardinality(String)"),
            col("pid", "UInt32"),
            col("comm", "LowCardinality(String)"),
            col("lost_bytes", "UInt64"),
            col("effect", "LowCardinality(String)"),
        ],
        order_by: "(server_port, ts)",
        bloom: &["client_addr"],
        shard_by: "cityHash64(client_addr, client_port)",
    },
    Table {
        name: "http_exchanges",
        comment: "HTTP/1.1 exchanges on the proxy-to-upstream hop (never bodies)",
        columns: columns![
            TS,
            NODE,
            CONN_COLUMNS[0],
            CONN_COLUMNS[1],
            CONN_COLUMNS[2],
            CONN_COLUMNS[3],
            CONN_COLUMNS[4],
            col("idx", "UInt32"),
            col("method", "LowCardinality(String)"),
            col_c("path", "String", "ZSTD(1)"),
            col("host", "LowCardinality(String)"),
            col("origin", "LowCardinality(String)"),
            col("request_id", "String"),
            col("x_forwarded_for", "String"),
            col("x_forwarded_proto", "LowCardinality(String)"),
            col("upgrade_websocket", "Bool"),
            col("connection_upgrade", "Bool"),
            col("status", "Nullable(UInt16)"),
            col_c("ttfb_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col_c("total_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col_c("request_bytes", "UInt64", "T64, ZSTD(1)"),
            col_c("response_bytes", "UInt64", "T64, ZSTD(1)"),
            col("outcome", "LowCardinality(String)"),
        ],
        order_by: "(server_port, ts)",
        bloom: &["request_id"],
        shard_by: "cityHash64(request_id)",
    },
    Table {
        name: "ws_sessions",
        comment: "WebSocket sessions on the hop: frames, closes, how and by whom they ended",
        columns: columns![
            TS,
            NODE,
            col_c("end_ts", "DateTime64(9)", "DoubleDelta, ZSTD(1)"),
            CONN_COLUMNS[0],
            CONN_COLUMNS[1],
            CONN_COLUMNS[2],
            CONN_COLUMNS[3],
            CONN_COLUMNS[4],
            col("request_id", "String"),
            col_c("path", "String", "ZSTD(1)"),
            col("origin", "LowCardinality(String)"),
            col_c("duration_ns", "UInt64", "T64, ZSTD(1)"),
            col_c("longest_idle_ns", "UInt64", "T64, ZSTD(1)"),
            col_c("idle_before_end_ns", "UInt64", "T64, ZSTD(1)"),
            col("end_kind", "LowCardinality(String)"),
            col("end_from", "LowCardinality(String)"),
            col("lost_sync", "Bool"),
            col("client_text", "UInt64"),
            col("client_binary", "UInt64"),
            col("client_continuation", "UInt64"),
            col("client_ping", "UInt64"),
            col("client_pong", "UInt64"),
            col("client_close", "UInt64"),
            col("client_payload_bytes", "UInt64"),
            col("server_text", "UInt64"),
            col("server_binary", "UInt64"),
            col("server_continuation", "UInt64"),
            col("server_ping", "UInt64"),
            col("server_pong", "UInt64"),
            col("server_close", "UInt64"),
            col("server_payload_bytes", "UInt64"),
            col("close_from", "Array(LowCardinality(String))"),
            col("close_ts", "Array(DateTime64(9))"),
            col("close_code", "Array(Nullable(UInt16))"),
            col("close_reason", "Array(String)"),
        ],
        order_by: "(server_port, ts)",
        bloom: &["request_id"],
        shard_by: "cityHash64(request_id)",
    },
    Table {
        name: "edge_logs",
        comment: "the edge proxy's access-log records (nginx, Caddy)",
        columns: columns![
            TS,
            NODE,
            col("format", "LowCardinality(String)"),
            col("request_id", "String"),
            col("client", "String"),
            col("host", "LowCardinality(String)"),
            col("method", "LowCardinality(String)"),
            col_c("path", "String", "ZSTD(1)"),
            col("status", "UInt16"),
            col_c("request_time_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col("upstream_addr", "LowCardinality(String)"),
            col_c("upstream_connect_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col_c("upstream_header_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col_c("upstream_response_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col_c("bytes_sent", "Nullable(UInt64)", "T64, ZSTD(1)"),
            EDGE_JOIN_COLUMNS[0],
            EDGE_JOIN_COLUMNS[1],
            EDGE_JOIN_COLUMNS[2],
            EDGE_JOIN_COLUMNS[3],
            EDGE_JOIN_COLUMNS[4],
            EDGE_JOIN_COLUMNS[5],
            EDGE_JOIN_COLUMNS[6],
            EDGE_JOIN_COLUMNS[7],
            EDGE_JOIN_COLUMNS[8],
            EDGE_JOIN_COLUMNS[9],
            EDGE_JOIN_COLUMNS[10],
            EDGE_JOIN_COLUMNS[11],
            EDGE_JOIN_COLUMNS[12],
        ],
        order_by: "(host, ts)",
        bloom: &["request_id", "client"],
        shard_by: "cityHash64(request_id)",
    },
    Table {
        name: "requests",
        comment: "requests joined from the edge log and the hop (matched says how)",
        columns: columns![
            TS,
            NODE,
            col("request_id", "String"),
            col("matched", "LowCardinality(String)"),
            col("reason", "LowCardinality(String)"),
            col("client", "String"),
            col("host", "LowCardinality(String)"),
            col("method", "LowCardinality(String)"),
            col_c("path", "String", "ZSTD(1)"),
            col("edge_status", "Nullable(UInt16)"),
            col_c("edge_request_time_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col("upstream_addr", "LowCardinality(String)"),
            col_c("upstream_connect_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col_c("upstream_header_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col_c("upstream_response_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col("wire_status", "Nullable(UInt16)"),
            col_c("wire_ttfb_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col_c("wire_total_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col("upgrade_requested", "Bool"),
            col("websocket", "Bool"),
            col_c("ws_duration_ns", "Nullable(UInt64)", "T64, ZSTD(1)"),
            col("ws_end_kind", "LowCardinality(String)"),
            col("ws_end_from", "LowCardinality(String)"),
            col("refused", "Bool"),
            col("hop_client", "String"),
        ],
        order_by: "(host, ts)",
        bloom: &["request_id", "client"],
        shard_by: "cityHash64(request_id)",
    },
    Table {
        name: "alerts",
        comment: "alert transitions (firing, resolved) with their evidence",
        columns: columns![
            TS,
            NODE,
            col("state", "LowCardinality(String)"),
            col("rule", "LowCardinality(String)"),
            col("severity", "LowCardinality(String)"),
            col("dedup_key", "String"),
            col("summary", "String"),
            col("first_move", "LowCardinality(String)"),
            col("fired_at", "DateTime64(9)"),
            col_c("evidence", "String", "ZSTD(3)"),
        ],
        order_by: "(rule, ts)",
        bloom: &["dedup_key"],
        shard_by: "cityHash64(dedup_key)",
    },
];

/// Tables whose rows carry a `request_id`; each feeds the lookup table.
pub const REQUEST_ID_TABLES: &[&str] = &["http_exchanges", "ws_sessions", "edge_logs", "requests"];

/// The small request-id-to-time lookup (filled by materialized views), keyed by
/// `cityHash64(request_id)`.
pub const REQUEST_INDEX: &str = "request_index";
/// The applied migrations.
pub const MIGRATIONS_TABLE: &str = "schema_migrations";

/// The oldest ClickHouse this schema works on (DateTime64, TTL, codecs, bloom filters,
/// insert_deduplication_token, `formatQuery`).
pub const MIN_SERVER: (u32, u32) = (23, 8);

/// Schema settings from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaOptions {
    pub database: String,
    /// Days to keep rows; 0 keeps them forever.
    pub ttl_days: u32,
    /// Cluster name: `*_local` tables with Distributed tables over them.
    pub cluster: Option<String>,
    /// With a cluster and no keeper: every node gets its own DDL (plain MergeTree `*_local`
    /// tables, its own `schema_migrations`), no `ON CLUSTER`, no Replicated engines.
    pub per_node: bool,
}

/// One versioned migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: Vec<String>,
}

/// Quotes an identifier for ClickHouse.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// Quotes a string literal for ClickHouse.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl SchemaOptions {
    /// A cluster with a keeper: `ON CLUSTER` DDL and Replicated engines.
    fn replicated(&self) -> bool {
        self.cluster.is_some() && !self.per_node
    }

    fn on_cluster(&self) -> String {
        match &self.cluster {
            Some(c) if !self.per_node => format!(" ON CLUSTER {}", ident(c)),
            _ => String::new(),
        }
    }

    /// The table that holds the data (`*_local` in cluster mode).
    pub fn storage_table(&self, name: &str) -> String {
        match &self.cluster {
            Some(_) => format!("{name}_local"),
            None => name.to_owned(),
        }
    }

    fn qualified(&self, name: &str) -> String {
        format!("{}.{}", ident(&self.database), ident(name))
    }

    /// The TTL clause for a table with a `ts` column (empty when rows are kept forever).
    pub fn ttl_clause(&self) -> String {
        if self.ttl_days == 0 {
            String::new()
        } else {
            format!("\nTTL toDateTime(ts) + INTERVAL {} DAY", self.ttl_days)
        }
    }

    fn engine(&self, replacing: bool, table: &str) -> String {
        let kind = if replacing {
            "ReplacingMergeTree"
        } else {
            "MergeTree"
        };
        if self.replicated() {
            format!(
                "Replicated{kind}('/clickhouse/tables/{{shard}}/{}/{}', '{{replica}}')",
                self.database, table
            )
        } else {
            format!("{kind}()")
        }
    }

    /// Deduplication of retried inserts: replicated tables keep a window by default; plain
    /// MergeTree needs one set.
    fn dedup_setting(&self) -> &'static str {
        if self.replicated() {
            ""
        } else {
            ", non_replicated_deduplication_window = 10000"
        }
    }

    fn create_table(&self, t: &Table) -> Vec<String> {
        let storage = self.storage_table(t.name);
        let mut cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| format!("    {}", c.definition()))
            .collect();
        for b in t.bloom {
            cols.push(format!(
                "    INDEX {} {} TYPE bloom_filter(0.01) GRANULARITY 4",
                ident(&format!("idx_{b}")),
                ident(b)
            ));
        }
        let mut out = vec![format!(
            "CREATE TABLE IF NOT EXISTS {}{}\n(\n{}\n)\nENGINE = {}\nPARTITION BY toYYYYMMDD(ts)\nORDER BY {}{}\nSETTINGS index_granularity = 8192{}\nCOMMENT {}",
            self.qualified(&storage),
            self.on_cluster(),
            cols.join(",\n"),
            self.engine(false, &storage),
            t.order_by,
            self.ttl_clause(),
            self.dedup_setting(),
            literal(t.comment),
        )];
        if let Some(c) = &self.cluster {
            out.push(self.distributed(t.name, c, t.shard_by));
        }
        out
    }

    fn distributed(&self, name: &str, cluster: &str, shard_by: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {}{} AS {}\nENGINE = Distributed({}, {}, {}, {shard_by})",
            self.qualified(name),
            self.on_cluster(),
            self.qualified(&self.storage_table(name)),
            literal(cluster),
            literal(&self.database),
            literal(&self.storage_table(name)),
        )
    }

    /// Every migration, oldest first.
    pub fn migrations(&self) -> Vec<Migration> {
        let mut first = vec![format!(
            "CREATE DATABASE IF NOT EXISTS {}{}",
            ident(&self.database),
            self.on_cluster()
        )];
        for t in TABLES {
            first.extend(self.create_table(t));
        }
        let mut second = Vec::new();
        let index = self.storage_table(REQUEST_INDEX);
        // Keyed by the id's 64-bit hash: sorting random id strings made this lookup cost
        // more than the tables it indexes (measured: ~9x slower inserts).
        second.push(format!(
            "CREATE TABLE IF NOT EXISTS {}{}\n(\n    `rid` UInt64,\n    `ts` DateTime64(9) CODEC(DoubleDelta, ZSTD(1)),\n    `source` LowCardinality(String),\n    `node` LowCardinality(String)\n)\nENGINE = {}\nPARTITION BY toYYYYMM(ts)\nORDER BY rid{}\nCOMMENT 'cityHash64(request id) -> when and in which table it was seen (one-request lookups)'",
            self.qualified(&index),
            self.on_cluster(),
            self.engine(false, &index),
            self.ttl_clause(),
        ));
        if let Some(c) = &self.cluster {
            second.push(self.distributed(REQUEST_INDEX, c, "rid"));
        }
        for source in REQUEST_ID_TABLES {
            // The view sits on the storage table, so every replica indexes its own rows.
            second.push(format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {}{} TO {}\nAS SELECT cityHash64(request_id) AS rid, ts, {} AS source, node FROM {} WHERE request_id != ''",
                self.qualified(&format!("{source}_request_index_mv")),
                self.on_cluster(),
                self.qualified(&index),
                literal(source),
                self.qualified(&self.storage_table(source)),
            ));
        }
        vec![
            Migration {
                version: 1,
                name: "record tables",
                statements: first,
            },
            Migration {
                version: 2,
                name: "request id lookup",
                statements: second,
            },
            Migration {
                version: 3,
                name: "requests made of the lines that carry them",
                statements: self.request_from_edge(),
            },
        ]
    }

    /// Migration 3: the join's columns on `edge_logs` (made with the table since; added to a
    /// table made before them), and the view that makes a `requests` row of each line's row
    /// that carries its request. The view sits on the storage table, like the lookup's: both
    /// tables are sharded by the request id, so a line's request lands on its shard.
    fn request_from_edge(&self) -> Vec<String> {
        let add: Vec<String> = EDGE_JOIN_COLUMNS
            .iter()
            .map(|c| format!("ADD COLUMN IF NOT EXISTS {}", c.definition()))
            .collect();
        let mut out = vec![format!(
            "ALTER TABLE {}{}
    {}",
            self.qualified(&self.storage_table("edge_logs")),
            self.on_cluster(),
            add.join(
                ",
    "
            )
        )];
        if self.cluster.is_some() {
            // The Distributed table's columns too (no codecs: it stores nothing).
            let plain: Vec<String> = EDGE_JOIN_COLUMNS
                .iter()
                .map(|c| {
                    let d = c
                        .default
                        .map(|v| format!(" DEFAULT {v}"))
                        .unwrap_or_default();
                    format!("ADD COLUMN IF NOT EXISTS {} {}{d}", ident(c.name), c.ty)
                })
                .collect();
            out.push(format!(
                "ALTER TABLE {}{}
    {}",
                self.qualified("edge_logs"),
                self.on_cluster(),
                plain.join(
                    ",
    "
                )
            ));
        }
        let select: Vec<String> = REQUEST_FROM_EDGE
            .iter()
            .map(|(name, expr)| {
                if name == expr {
                    ident(name)
                } else {
                    format!("{expr} AS {}", ident(name))
                }
            })
            .collect();
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {}{} TO {}
AS SELECT {}
FROM {} WHERE joined",
            self.qualified(REQUEST_FROM_EDGE_VIEW),
            self.on_cluster(),
            self.qualified(&self.storage_table("requests")),
            select.join(", "),
            self.qualified(&self.storage_table("edge_logs")),
        ));
        out
    }

    /// Where the applied migrations are read: per node, each node's own table; with a
    /// keeper, the Distributed table over all of them.
    pub fn migrations_storage(&self) -> String {
        if self.per_node {
            MIGRATIONS_TABLE.to_owned()
        } else {
            self.storage_table(MIGRATIONS_TABLE)
        }
    }

    /// The table of applied migrations (created before any migration runs).
    pub fn migrations_table(&self) -> Vec<String> {
        let storage = self.migrations_storage();
        let mut out = vec![
            format!(
                "CREATE DATABASE IF NOT EXISTS {}{}",
                ident(&self.database),
                self.on_cluster()
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {}{}\n(\n    `version` UInt32,\n    `name` String,\n    `applied_at` DateTime64(3),\n    `applied_by` String\n)\nENGINE = {}\nORDER BY version",
                self.qualified(&storage),
                self.on_cluster(),
                self.engine(true, &storage),
            ),
        ];
        if let (Some(c), false) = (&self.cluster, self.per_node) {
            out.push(self.distributed(MIGRATIONS_TABLE, c, "version"));
        }
        out
    }

    /// Statements that bring each table's TTL to the configured one (run when it differs).
    pub fn ttl_statement(&self, table: &str) -> String {
        let ttl = if self.ttl_days == 0 {
            "REMOVE TTL".to_owned()
        } else {
            format!("MODIFY TTL toDateTime(ts) + INTERVAL {} DAY", self.ttl_days)
        };
        format!(
            "ALTER TABLE {}{} {ttl} SETTINGS materialize_ttl_after_modify = 0",
            self.qualified(&self.storage_table(table)),
            self.on_cluster()
        )
    }

    /// Every table with a TTL: the record tables and the lookup.
    pub fn ttl_tables() -> impl Iterator<Item = &'static str> {
        TABLES
            .iter()
            .map(|t| t.name)
            .chain(std::iter::once(REQUEST_INDEX))
    }
}

/// The newest schema version this build knows.
pub fn latest_version() -> u32 {
    SchemaOptions {
        database: String::new(),
        ttl_days: 0,
        cluster: None,
        per_node: false,
    }
    .migrations()
    .iter()
    .map(|m| m.version)
    .max()
    .unwrap_or(0)
}

/// Parses `SELECT version()` output ("26.7.2.1") into (major, minor).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Finds the table definition by name.
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests;
