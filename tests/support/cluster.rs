//! A real multi-node ClickHouse for the fleet tests: `n` servers on loopback, each the
//! embedded server edgewatch runs (the pinned 26.7 build, locked down as in production) with
//! its native port open to the others, one shard each of the cluster `fleet`, and user
//! `edgewatch` with one shared password on all of them (the Distributed tables connect as it).
//!
//! No keeper: the pinned build has no ClickHouse Keeper in it (no `src/Coordination` code is
//! compiled in), its `clickhouse-local` refuses `ON CLUSTER` ("Replicated DDL queries are
//! disabled") and cannot open the interserver port Replicated tables fetch parts through.
//! The cluster is therefore keeper-less: per-node DDL, Distributed tables, one replica per
//! shard.
use super::{free_listen_port, store::ClickHouse};

/// The cluster's name in every node's `remote_servers`.
pub const NAME: &str = "fleet";

pub struct Cluster {
    pub nodes: Vec<ClickHouse>,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Cluster {
    /// Starts `n` nodes, one shard each, and waits until every one answers on both its ports.
    /// A port taken between choosing and binding it (tests run in parallel) makes a node exit
    /// before it is ready: the whole cluster is then made again on other ports.
    pub fn start(n: usize) -> Self {
        let mut last = String::new();
        for _ in 0..4 {
            match Self::try_start(n) {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("the test cluster did not start in 4 attempts; last: {last}");
    }

    fn try_start(n: usize) -> Result<Self, String> {
        let secret = edgewatch::store::embedded::load_or_create_secret(
            &tempfile::tempdir().unwrap().path().join("secret"),
        )
        .unwrap();
        let mut ports: Vec<(u16, u16)> = Vec::new();
        while ports.len() < n {
            let pair = (free_listen_port(), free_listen_port());
            let taken = ports
                .iter()
                .any(|(h, t)| [*h, *t].contains(&pair.0) || [*h, *t].contains(&pair.1));
            if pair.0 != pair.1 && !taken {
                ports.push(pair);
            }
        }
        let shards: String = ports
            .iter()
            .map(|(_, tcp)| {
                format!(
                    "<shard><replica><host>127.0.0.1</host><port>{tcp}</port><user>{}</user><password>{}</password></replica></shard>",
                    edgewatch::store::embedded::USER,
                    xml_escape(&secret)
                )
            })
            .collect();
        let xml = format!(
            "<clickhouse>\n<remote_servers><{NAME}>{shards}</{NAME}></remote_servers>\n</clickhouse>\n"
        );
        let mut nodes: Vec<ClickHouse> = ports
            .iter()
            .map(|(http, tcp)| ClickHouse::node(&secret, *http, *tcp, &xml))
            .collect();
        for node in &mut nodes {
            // The nodes already started stop when `nodes` is dropped.
            node.try_spawn()?;
        }
        Ok(Self { nodes })
    }

    /// Every node's URL, for `store.cluster_nodes`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClickHouse::url).collect()
    }

    /// A `[store]` section that writes through node `i` (per-node DDL on all of them).
    pub fn store_config(
        &self,
        i: usize,
        database: &str,
        spool: &std::path::Path,
        node: &str,
    ) -> String {
        format!(
            "{}cluster = {NAME:?}\ncluster_nodes = {:?}\nnode = {node:?}\n",
            self.nodes[i].store_config(database, spool),
            self.urls()
        )
    }
}
