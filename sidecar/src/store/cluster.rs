//! A ClickHouse cluster as the store: which kind of DDL it takes, the schema on every node
//! that needs it, and a check that every shard holds the tables the Distributed tables
//! write to. I/O only; the DDL itself is `schema`'s.
//!
//! With a keeper (ClickHouse Keeper or ZooKeeper), one `ON CLUSTER` statement reaches every
//! node and the tables are Replicated. Without one, `ON CLUSTER` is refused, so each node of
//! `store.cluster_nodes` gets the same idempotent DDL over its own HTTP interface, with
//! plain MergeTree tables that deduplicate retried inserts by their token; several
//! sidecars doing so at once is harmless.
use clickhouse::Client;
use serde::Serialize;

use super::{
    config::ClusterDdl,
    schema::{self, SchemaOptions},
    ship::{self, error_code, fail, PrepareError},
};

/// What the `store` line says about a cluster.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ClusterInfo {
    pub name: String,
    /// `on_cluster` or `per_node`.
    pub ddl: &'static str,
    /// Shards in the servers' definition of the cluster (`None`: the user may not read
    /// `system.clusters`).
    pub shards: Option<u64>,
    /// Nodes this sidecar migrated (per-node DDL; 1 with `ON CLUSTER`).
    pub migrated_nodes: usize,
}

/// The other nodes of a per-node cluster: their URL (for messages) and a client.
pub type Peers = Vec<(String, Client)>;

/// Whether the server has a keeper connection (`ON CLUSTER` and Replicated tables work). A
/// server without the table has none; a user who may not read it cannot tell, and is asked
/// to say (guessing wrong would make unreplicated tables on a replicated cluster, or the
/// other way round).
async fn has_keeper(client: &Client) -> Result<bool, PrepareError> {
    match client
        .query("SELECT count() FROM system.zookeeper_connection")
        .fetch_one::<u64>()
        .await
    {
        Ok(n) => Ok(n > 0),
        Err(e) if error_code(&e) == Some(60) => Ok(false),
        Err(e) if error_code(&e) == Some(497) => Err(PrepareError::Incompatible(format!(
            "store.cluster_ddl = \"auto\" cannot tell whether the cluster has a keeper ({e}): \
             set store.cluster_ddl to \"on_cluster\" (ClickHouse Keeper or ZooKeeper) or \
             \"per_node\" (none), or grant SELECT ON system.zookeeper_connection"
        ))),
        Err(e) => Err(fail("reading system.zookeeper_connection", e)),
    }
}

/// The number of shards the server knows for `cluster` (an unknown cluster is an error that
/// names the fix; a user who may not read `system.clusters` gets `None`, and the
/// Distributed tables' own check below still finds an unknown cluster).
async fn shards(client: &Client, cluster: &str) -> Result<Option<u64>, PrepareError> {
    let n: u64 = match client
        .query("SELECT uniqExact(shard_num) FROM system.clusters WHERE cluster = ?")
        .bind(cluster)
        .fetch_one()
        .await
    {
        Ok(n) => n,
        Err(e) if error_code(&e) == Some(497) => return Ok(None),
        Err(e) => return Err(fail("reading system.clusters", e)),
    };
    if n == 0 {
        return Err(PrepareError::Incompatible(format!(
            "store.cluster is {cluster:?}, but the server defines no such cluster \
             (remote_servers in its configuration)"
        )));
    }
    Ok(Some(n))
}

/// Every Distributed table answers a count from every shard: each node holds the `*_local`
/// tables and is reachable. A node without them is a configuration error that names its
/// remedy; an unreachable one is retried like a server that is down.
async fn check_shards(client: &Client, opts: &SchemaOptions) -> Result<(), PrepareError> {
    for table in schema::TABLES
        .iter()
        .map(|t| t.name)
        .chain([schema::REQUEST_INDEX])
    {
        let sql = format!(
            "SELECT count() FROM {}.{} SETTINGS skip_unavailable_shards = 0",
            schema::ident(&opts.database),
            schema::ident(table)
        );
        if let Err(e) = client.query(&sql).fetch_one::<u64>().await {
            return Err(match error_code(&e) {
                Some(170) => PrepareError::Incompatible(format!(
                    "store.cluster is {:?}, but the server defines no such cluster \
                     (remote_servers in its configuration): {e}",
                    opts.cluster.as_deref().unwrap_or_default()
                )),
                Some(60 | 81) => PrepareError::Incompatible(format!(
                    "a node of cluster {} lacks {}.{}: list every node's URL in \
                     store.cluster_nodes (per-node DDL), or point a sidecar at it ({e})",
                    opts.cluster.as_deref().unwrap_or_default(),
                    opts.database,
                    opts.storage_table(table),
                )),
                _ => fail(&format!("reading {table} through every shard"), e),
            });
        }
    }
    Ok(())
}

/// Prepares the store: one server as `ship::prepare` does; a cluster with the DDL its kind
/// takes (decided here when `ddl` is `auto`), on every node that needs it, then checks that
/// every shard answers. Returns the server's version and, for a cluster, what the `store`
/// line says about it.
pub async fn prepare(
    client: &Client,
    peers: &Peers,
    ddl: ClusterDdl,
    opts: &SchemaOptions,
    node: &str,
) -> Result<(String, Option<ClusterInfo>), PrepareError> {
    let version = ship::server_version(client).await?;
    let Some(name) = opts.cluster.clone() else {
        ship::migrate(client, opts, node).await?;
        ship::check_columns(client, opts).await?;
        return Ok((version, None));
    };
    let admin = client.clone().with_database("default");
    let shards = shards(&admin, &name).await?;
    let per_node = match ddl {
        ClusterDdl::OnCluster => false,
        ClusterDdl::PerNode => true,
        ClusterDdl::Auto => !has_keeper(&admin).await?,
    };
    let opts = SchemaOptions {
        per_node,
        ..opts.clone()
    };
    ship::migrate(client, &opts, node).await?;
    let mut migrated = 1;
    if per_node {
        for (url, peer) in peers {
            ship::migrate(peer, &opts, node)
                .await
                .map_err(|e| match e {
                    PrepareError::Incompatible(m) => {
                        PrepareError::Incompatible(format!("cluster node {url}: {m}"))
                    }
                    other => other,
                })?;
            migrated += 1;
        }
    }
    check_shards(&admin, &opts).await?;
    ship::check_columns(client, &opts).await?;
    Ok((
        version,
        Some(ClusterInfo {
            name,
            ddl: if per_node {
                ClusterDdl::PerNode.as_str()
            } else {
                ClusterDdl::OnCluster.as_str()
            },
            shards,
            migrated_nodes: migrated,
        }),
    ))
}
