//! A fleet: several sidecars writing to one real multi-node ClickHouse (three servers of the
//! pinned 26.7 build on loopback, one shard each, see `support::cluster` for why there is no
//! keeper), through the Distributed tables, with per-node DDL.
#![allow(
    clippy::unwrap_used,
    reason = "integration tests: a panic is the failure"
)]
mod support;

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use edgewatch::store::{
    config::{ClusterDdl, StoreConfig, WireFormat},
    rows::{AnyRow, ConnRow, TABLE_NAMES},
    ship,
};
use serde_json::Value;
use support::{
    cluster::Cluster, config_file, edgewatch_stdout as edgewatch, json_lines, Sidecar, SocketHolder,
};

/// Rows per node over every table, as seen through node `i`'s Distributed tables.
fn rows_by_node(cluster: &Cluster, i: usize, db: &str) -> BTreeMap<String, u64> {
    let union: Vec<String> = TABLE_NAMES
        .iter()
        .map(|t| format!("SELECT node FROM {db}.{t}"))
        .collect();
    let text = cluster.nodes[i].query(&format!(
        "SELECT node, count() FROM ({}) GROUP BY node ORDER BY node FORMAT TabSeparated",
        union.join(" UNION ALL ")
    ));
    text.lines()
        .filter_map(|l| {
            let (n, c) = l.split_once('\t')?;
            Some((n.to_owned(), c.parse().ok()?))
        })
        .collect()
}

/// Lines that carry their requests, written through node 1's Distributed `edge_logs`: each
/// shard's view makes the `requests` rows of its own lines (the two tables are sharded alike),
/// and every node's Distributed `requests` sees each one once, as the request's own row says.
fn lines_with_their_requests_through_the_cluster(cluster: &Cluster, db: &str) {
    let spool = tempfile::tempdir().unwrap();
    let cfg = edgewatch::config::Config::from_toml_str(
        &cluster.store_config(1, db, spool.path(), "edge-d"),
        "test",
    )
    .unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    let requests = support::store::joined_with_their_lines(now);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let totals = rt.block_on(async {
        let mut st = edgewatch::store::Store::start(&cfg.store).await.unwrap();
        for r in &requests {
            st.edge_joined(r);
        }
        st.flush(&edgewatch::metrics::Metrics::new());
        st.shutdown(Duration::from_secs(60)).await
    });
    let n = requests.len() as u64;
    assert_eq!((totals.sent, totals.backlog_rows), (n, 0), "{totals:?}");
    let local: Vec<u64> = (0..3)
        .map(|i| {
            cluster.nodes[i].count(&format!(
                "SELECT count() FROM {db}.requests_local WHERE node = 'edge-d'"
            ))
        })
        .collect();
    assert!(local.iter().filter(|c| **c > 0).count() >= 2, "{local:?}");
    for (i, (node, local)) in cluster.nodes.iter().zip(&local).enumerate() {
        assert_eq!(
            node.count(&format!(
                "SELECT count() FROM {db}.requests WHERE node = 'edge-d'"
            )),
            n,
            "through node {i}"
        );
        // Each request's row where its line's is: on the line's shard.
        assert_eq!(
            node.count(&format!(
                "SELECT count() FROM {db}.edge_logs_local AS e INNER JOIN {db}.requests_local AS r ON e.request_id = r.request_id AND e.path = r.path WHERE e.node = 'edge-d' AND r.node = 'edge-d'"
            )),
            *local,
            "node {i}"
        );
    }
    let exact = cluster.nodes[0].count(&format!(
        "SELECT count() FROM {db}.requests WHERE node = 'edge-d' AND matched = 'exact' AND wire_status IS NOT NULL"
    ));
    assert_eq!(exact, n / 5 * 2, "the exact joins carried their exchanges");
}

/// Three sidecars (three `replay --store` of different recordings, with distinct node
/// names, each pointed at another node) start at once against an empty cluster: they
/// migrate every node at the same time without tripping over each other, every row arrives
/// exactly once, the rows are spread over the shards, every node's Distributed tables see
/// every sidecar's rows, and the timeline reads the fleet or one node.
/// Long because it is one scenario: the concurrent start, the exact counts, the spread, the
/// migrations on every node and the fleet timeline are read off the same cluster.
#[test]
fn three_sidecars_at_once_write_every_row_exactly_once_through_the_distributed_tables() {
    support::require_root();
    let cluster = Cluster::start(3);
    let db = "t_fleet";
    let runs = [
        ("edge-a", 0, "healthy.37883.pcap", "37883"),
        ("edge-b", 1, "healthy_ng.37883.pcapng", "37883"),
        // The real Gateway refusing an Origin, with the edge's access log.
        ("edge-c", 2, "gateway_bad_origin.18789.pcap", "18789"),
    ];
    let spools: Vec<tempfile::TempDir> =
        runs.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<tempfile::NamedTempFile> = runs
        .iter()
        .zip(&spools)
        .map(|((node, i, _, _), spool)| {
            config_file(&cluster.store_config(*i, db, spool.path(), node))
        })
        .collect();
    let started = std::time::Instant::now();
    let children: Vec<_> = runs
        .iter()
        .zip(&configs)
        .map(|((node, _, pcap, port), cfg)| {
            let log = support::fixture("logs/gateway_bad_origin.edge.log");
            let logs: &[&str] = if *node == "edge-c" {
                &["--access-log", &log]
            } else {
                &[]
            };
            Command::new(support::edgewatch_bin())
                .args(["replay", &support::fixture(pcap), "--port", port])
                .args(logs)
                .args(["--store", "--output", "json", "--config"])
                .arg(cfg.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut spooled = BTreeMap::new();
    for ((node, ..), child) in runs.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{node}: {stderr}");
        let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
        let summary = lines
            .iter()
            .find(|l| l["type"] == "store_summary")
            .unwrap_or_else(|| panic!("{node}: no store summary"));
        let n = summary["spooled"].as_u64().unwrap();
        assert!(n > 0, "{summary}");
        assert_eq!(summary["sent"], n, "{node}: {summary}");
        assert_eq!(summary["backlog_rows"], 0, "{node}: {summary}");
        // The store said what it made of the cluster: no keeper here, so per-node DDL on
        // all three nodes.
        assert!(
            stderr.contains("per_node") && stderr.contains("shards: Some(3)"),
            "{node}: the store's log does not name the cluster's DDL kind: {stderr}"
        );
        spooled.insert((*node).to_owned(), n);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = spooled.values().sum();
    eprintln!(
        "three sidecars wrote {total} rows through the cluster in {elapsed:.2} s ({:.0} rows/s in all)",
        total as f64 / elapsed
    );
    // Exactly once, and the same from every node: the rows the sidecars sent, and a
    // `requests` row the view made of each line's row that carries its request.
    let mut stored = spooled.clone();
    for (node, n) in &mut stored {
        *n += cluster.nodes[0].count(&format!(
            "SELECT count() FROM {db}.edge_logs WHERE joined AND node = '{node}'"
        ));
    }
    for i in 0..3 {
        assert_eq!(rows_by_node(&cluster, i, db), stored, "through node {i}");
    }
    // Spread over the shards: each node's own tables hold a part, and the parts add up.
    let local: Vec<u64> = (0..3)
        .map(|i| {
            let union: Vec<String> = TABLE_NAMES
                .iter()
                .map(|t| format!("SELECT 1 FROM {db}.{t}_local"))
                .collect();
            cluster.nodes[i].count(&format!(
                "SELECT count() FROM ({})",
                union.join(" UNION ALL ")
            ))
        })
        .collect();
    assert_eq!(
        local.iter().sum::<u64>(),
        stored.values().sum::<u64>(),
        "{local:?}"
    );
    assert!(local.iter().filter(|n| **n > 0).count() >= 2, "{local:?}");
    // Every node was migrated (its own record), by whichever sidecar got there first.
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(
            node.query(&format!(
                "SELECT DISTINCT version FROM {db}.schema_migrations ORDER BY version FORMAT TabSeparated"
            ))
            .trim(),
            "1\n2\n3",
            "node {i}"
        );
    }
    // The fleet timeline, read through node 2: every node, each event naming its own.
    let all: Value = serde_json::from_str(&edgewatch(
        &[
            "timeline",
            "--since",
            "2000-01-01T00:00:00Z",
            "--output",
            "json",
        ],
        Some(configs[2].path()),
    ))
    .unwrap();
    assert_eq!(
        all["nodes"],
        serde_json::json!(["edge-a", "edge-b", "edge-c"]),
        "{}",
        all["nodes"]
    );
    let events = all["events"].as_array().unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        *per_node
            .entry(
                e["node"]
                    .as_str()
                    .expect("a node on every event")
                    .to_owned(),
            )
            .or_default() += 1;
    }
    let b: Value = serde_json::from_str(&edgewatch(
        &[
            "timeline",
            "--since",
            "2000-01-01T00:00:00Z",
            "--node",
            "edge-b",
            "--output",
            "json",
        ],
        Some(configs[0].path()),
    ))
    .unwrap();
    assert_eq!(b["nodes"], serde_json::json!(["edge-b"]));
    let b_events = b["events"].as_array().unwrap();
    assert!(!b_events.is_empty());
    assert_eq!(b_events.len(), per_node["edge-b"], "{per_node:?}");
    // The refused Origin was on edge-c only: the fleet summary says where.
    let incidents = all["summary"]["incidents"].as_array().unwrap();
    assert!(
        incidents
            .iter()
            .any(|i| i["rule"] == "hop.origin_rejected" && i["node"] == "edge-c"),
        "{incidents:#?}"
    );
    assert!(b["summary"]["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["rule"] != "hop.origin_rejected"));
    // Last: a fourth node name would change the fleet timeline above.
    lines_with_their_requests_through_the_cluster(&cluster, db);
}

/// A batch sent again with the same token (an insert that failed while a node was down,
/// then the same batch once more, as after a crash between the insert and the deletion of
/// its spool file) is stored once on every shard; the same rows under another token are
/// stored again, so the count can tell. This is the sidecar's own insert path
/// (`ship::insert_rows` with the client `store::client_for` builds for a cluster), not a
/// hand-written insert.
#[test]
fn a_batch_sent_again_with_its_token_is_stored_once_on_every_shard() {
    support::require_root();
    let mut cluster = Cluster::start(3);
    let db = "t_fleet_retry";
    let spool = tempfile::tempdir().unwrap();
    let secret = cluster.nodes[0].secret_file();
    let cfg = StoreConfig {
        url: cluster.nodes[0].url(),
        database: db.into(),
        user: edgewatch::store::embedded::USER.into(),
        password_file: Some(secret),
        cluster: support::cluster::NAME.into(),
        cluster_ddl: ClusterDdl::Auto,
        cluster_nodes: cluster.urls(),
        spool_dir: spool.path().to_owned(),
        ..StoreConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = edgewatch::store::client_for(&cfg, &cfg.url).unwrap();
    let peers: Vec<(String, clickhouse::Client)> = cluster.urls()[1..]
        .iter()
        .map(|u| (u.clone(), edgewatch::store::client_for(&cfg, u).unwrap()))
        .collect();
    let opts = edgewatch::store::schema_options(&cfg);
    let (_, info) = rt
        .block_on(edgewatch::store::cluster::prepare(
            &client,
            &peers,
            cfg.cluster_ddl,
            &opts,
            "t",
        ))
        .unwrap();
    let info = info.expect("a cluster");
    assert_eq!(
        (info.ddl, info.shards, info.migrated_nodes),
        ("per_node", Some(3), 3)
    );
    let rows: Vec<AnyRow> = (0..600u16)
        .map(|i| {
            AnyRow::Conn(ConnRow {
                ts: 1_795_000_000_000_000_000 + i64::from(i),
                node: "edge-r".into(),
                kind: "connect".into(),
                client_addr: "127.0.0.1".into(),
                client_port: 20_000 + i,
                server_addr: "127.0.0.1".into(),
                server_port: 18789,
                conn_start: 1_795_000_000_000_000_000,
                latency_ns: Some(1000),
                side: String::new(),
                pid: 1,
                comm: "nginx".into(),
                lost_bytes: 0,
                effect: String::new(),
            })
        })
        .collect();
    let local = |cluster: &Cluster, i: usize| {
        cluster.nodes[i].count(&format!("SELECT count() FROM {db}.conn_events_local"))
    };
    cluster.nodes[2].kill();
    let token = "fleet-run:1";
    let send = |token: &str| {
        rt.block_on(ship::insert_rows(
            &client,
            WireFormat::Native,
            2,
            token,
            rows.clone(),
        ))
    };
    let err = send(token).expect_err("a shard is down: the insert must fail");
    assert!(
        !ship::is_permanent(&err),
        "a node down is not permanent: {err}"
    );
    // ClickHouse refuses the whole synchronous insert when a shard cannot be reached; had
    // some shards taken their part, the token below still keeps them at one copy.
    let before: Vec<u64> = (0..2).map(|i| local(&cluster, i)).collect();
    eprintln!("rows on the two live shards after the failed insert: {before:?}");
    cluster.nodes[2].spawn();
    send(token).unwrap();
    let shards: Vec<u64> = (0..3).map(|i| local(&cluster, i)).collect();
    assert_eq!(shards.iter().sum::<u64>(), 600, "{shards:?}");
    assert!(
        shards.iter().all(|n| *n > 0),
        "spread over every shard: {shards:?}"
    );
    // Again, as after a crash before the spool file was deleted: nothing changes anywhere.
    send(token).unwrap();
    let again: Vec<u64> = (0..3).map(|i| local(&cluster, i)).collect();
    assert_eq!(again, shards, "a batch sent twice was stored twice");
    assert_eq!(
        cluster.nodes[1].count(&format!(
            "SELECT count() FROM {db}.conn_events WHERE node = 'edge-r'"
        )),
        600
    );
    // The control: another token is another batch.
    send("fleet-run:2").unwrap();
    let twice: u64 = (0..3).map(|i| local(&cluster, i)).sum();
    assert_eq!(twice, 1200);
}

/// A live sidecar writing through a cluster while one node is killed for a minute: its
/// inserts fail, its spool holds the rows, nothing is reported recovered while the node is
/// gone, and after it returns every row arrives, once.
/// Long because it is one timeline: start, outage, a minute, return, stop, count.
#[test]
fn a_node_killed_for_a_minute_loses_nothing() {
    support::require_root();
    let mut cluster = Cluster::start(3);
    let db = "t_fleet_outage";
    let spool = tempfile::tempdir().unwrap();
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let store = cluster.store_config(0, db, spool.path(), "edge-live");
    let watched = support::free_port();
    let mut sidecar = Sidecar::start(&format!(
        "[hop]\nports = [{port}]\n[nat]\nenabled = false\n\
         [exposure]\nwatched_ports = [{watched}]\nrescan_interval = \"1h\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{store}snapshot_interval = \"1h\"\n"
    ));
    sidecar.lines.wait_for("the store", |v| {
        v["type"] == "store" && v["event"] == "ready"
    });
    // Alerts name the machine they are about.
    let holder = SocketHolder::tcp("0.0.0.0", watched);
    let alert = sidecar.lines.wait_for("the drift alert", |v| {
        v["type"] == "alert" && v["state"] == "firing" && v["evidence"]["port"] == watched
    });
    assert_eq!(alert["node"], "edge-live", "{alert}");
    holder.close();
    cluster.nodes[2].kill();
    // Connections on the hop: rows sharded by client address and port, so some belong to
    // the node that is gone.
    let accept = std::thread::spawn(move || {
        for c in upstream.incoming().take(200) {
            drop(c);
        }
    });
    for _ in 0..200 {
        drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    accept.join().unwrap();
    sidecar.lines.wait_for("an insert failing", |v| {
        v["type"] == "store" && v["event"] == "unavailable"
    });
    // A minute without the node: the sidecar keeps the rows and never claims recovery.
    let recovered_early = sidecar.lines.wait_for_within(Duration::from_secs(60), |v| {
        v["type"] == "store" && v["event"] == "recovered"
    });
    assert!(
        recovered_early.is_none(),
        "recovered while a shard was down: {recovered_early:?}"
    );
    cluster.nodes[2].spawn();
    sidecar.lines.wait_for("the store recovering", |v| {
        v["type"] == "store" && v["event"] == "recovered"
    });
    sidecar.signal("TERM");
    let summary = sidecar
        .lines
        .wait_for("the store summary", |v| v["type"] == "store_summary");
    assert_eq!(summary["backlog_rows"], 0, "{summary}");
    assert_eq!(summary["dropped"], 0, "{summary}");
    let spooled = summary["spooled"].as_u64().unwrap();
    assert!(spooled >= 200, "{summary}");
    for i in 0..3 {
        assert_eq!(
            rows_by_node(&cluster, i, db).get("edge-live").copied(),
            Some(spooled),
            "through node {i}: {summary}"
        );
    }
}

/// CI once saw a node say ready on HTTP and then exit: its native port had been taken between
/// choosing and binding it, and `SYSTEM START LISTEN TCP` failed after the ready line. A node
/// whose native port is taken must never say ready.
#[test]
fn a_node_whose_native_port_is_taken_never_says_ready() {
    support::require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = taken.local_addr().unwrap().port();
    let xml = format!("<clickhouse>\n<remote_servers><{NAME}><shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard></{NAME}></remote_servers>\n</clickhouse>\n", NAME = support::cluster::NAME);
    let secret = edgewatch::store::embedded::load_or_create_secret(
        &tempfile::tempdir().unwrap().path().join("secret"),
    )
    .unwrap();
    let mut node =
        support::store::ClickHouse::node(&secret, support::free_listen_port(), tcp, &xml);
    let err = node
        .try_spawn()
        .expect_err("a node without its native port said ready");
    assert!(
        err.contains("did not start (Exited)") && err.contains("Address already in use"),
        "{err}"
    );
    // Control: the same node, its port free, starts.
    drop(taken);
    node.try_spawn().unwrap();
}
