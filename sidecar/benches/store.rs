//! `cargo bench --bench store`: records per second from the pipeline into a real ClickHouse
//! 26.7 on loopback (the embedded build), against the raw insert rate of the `clickhouse`
//! crate measured in the same run on the same server:
//! - raw: pre-built rows, `Client::insert` in batches of `store.batch_rows` (RowBinary, LZ4), and the
//!   same rows as pre-built Native blocks (the spool's encoder) through the crate's
//!   `insert_formatted_with`;
//! - end to end: hop records through [`Store`] (row conversion, spool on disk, sender,
//!   deduplication tokens; Native blocks, the default on loopback) until ClickHouse
//!   confirmed every one;
//! - drain: the same records spooled while ClickHouse was unreachable, then sent by a
//!   restarted store.
//!
//! Goal: at least 500,000 records per second end to end.
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure is a panic with a message"
)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime};

use edgewatch::{
    config::StoreConfig,
    hop::{ConnId, ExchangeOutcome, HopRecord, HttpExchange},
    metrics::Metrics,
    store::{
        config::WireFormat,
        rows::{AnyRow, Columns, HttpRow},
        ship::{self, Endpoint},
        Store,
    },
};

const RECORDS: usize = 2_000_000;

fn records(now_ns: u64) -> Vec<HopRecord> {
    (0..RECORDS)
        .map(|i| {
            HopRecord::Http(HttpExchange {
                conn: ConnId {
                    client: format!("127.0.0.1:{}", 30000 + i % 30000).parse().unwrap(),
                    server: "127.0.0.1:18789".parse().unwrap(),
                    first_seen_ns: now_ns,
                },
                index: (i % 7) as u32,
                request_ts_ns: now_ns + i as u64 * 1000,
                method: "GET".into(),
                path: format!("/api/v1/items/{}?page=2", i % 5000).into(),
                host: Some("gw.example".into()),
                origin: None,
                request_id: Some(
                    format!(
                        "{:032x}",
                        0x9e37_79b9_7f4a_7c15u128.wrapping_mul(i as u128 + 1)
                    )
                    .into(),
                ),
                x_forwarded_for: Some("203.0.113.7".into()),
                x_forwarded_proto: Some("https".into()),
                upgrade_websocket: false,
                connection_upgrade: false,
                status: Some(200),
                ttfb_ns: Some(3_000_000 + (i % 1000) as u64),
                total_ns: Some(3_500_000),
                request_bytes: 200,
                response_bytes: 600,
                outcome: ExchangeOutcome::Complete,
                error_code: None,
            })
        })
        .collect()
}

/// The store's default batch size, for the baselines too.
fn batch_rows() -> u64 {
    StoreConfig::default().batch_rows
}

fn store_config(
    server: &support::store::ClickHouse,
    url: &str,
    db: &str,
    spool: &std::path::Path,
) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        user: edgewatch::store::embedded::USER.to_owned(),
        password_file: Some(server.secret_file()),
        database: db.to_owned(),
        spool_dir: spool.to_owned(),
        spool_max_bytes: 8 << 30,
        timeout: Duration::from_secs(5),
        ..StoreConfig::default()
    }
}

/// Pushes every record as the live pipeline does (a flush per turn of 10,000 records), then waits
/// until the sender has delivered all of them. Returns the elapsed time and the rows sent.
async fn pipeline(store: &mut Store, recs: &[HopRecord], metrics: &Metrics) {
    for chunk in recs.chunks(10_000) {
        for r in chunk {
            store.hop(r);
        }
        store.flush(metrics);
        // Let the sender run (the live loop yields between turns too).
        tokio::task::yield_now().await;
    }
}

/// The schema in `database`, as the store creates it.
async fn prepare(client: &clickhouse::Client, database: &str, node: &str) {
    ship::prepare(
        client,
        &edgewatch::store::schema::SchemaOptions {
            database: database.into(),
            ttl_days: 30,
            cluster: None,
            per_node: false,
        },
        node,
    )
    .await
    .unwrap();
}

fn main() {
    // The same embedded server the tests use (fetched once into the cache).
    let server = support::store::ClickHouse::start();
    let url = server.url();
    let now = edgewatch::output::unix_ns(SystemTime::now());
    let recs = records(now);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let metrics = Metrics::new();
    let node = "bench";

    // 1. Raw crate inserts of ready rows.
    let rows: Vec<HttpRow> = recs
        .iter()
        .map(|r| match r {
            HopRecord::Http(x) => HttpRow::new(node, x),
            _ => unreachable!(),
        })
        .collect();
    let raw_db = "t_bench_raw";
    let (raw, raw_native) = rt.block_on(async {
        let client = Endpoint {
            url: url.clone(),
            user: edgewatch::store::embedded::USER.into(),
            password: Some(server.secret.clone()),
            ca_file: None,
            timeout: Duration::from_secs(30),
        }
        .client(raw_db)
        .unwrap();
        prepare(&client, raw_db, node).await;
        let started = Instant::now();
        for chunk in rows.chunks(batch_rows() as usize) {
            let mut insert = client.insert::<HttpRow>("http_exchanges").await.unwrap();
            for r in chunk {
                insert.write(r).await.unwrap();
            }
            insert.end().await.unwrap();
        }
        let rowbinary = started.elapsed();
        // The same rows as Native blocks built ahead (the spool's encoder: the format the
        // store sends to a loopback server), each sent as one insert.
        let native_db = "t_bench_raw_native";
        let native_client = client.clone().with_database(native_db);
        prepare(&native_client, native_db, node).await;
        let blocks: Vec<bytes::Bytes> = rows
            .chunks(batch_rows() as usize)
            .map(|c| {
                let mut cols = Columns::new(3);
                for r in c {
                    cols.push(&AnyRow::Http(r.clone()));
                }
                let mut block = Vec::new();
                cols.write_block(&mut block);
                block.into()
            })
            .collect();
        let started = Instant::now();
        for (i, block) in blocks.into_iter().enumerate() {
            ship::insert_blocks(
                &native_client,
                WireFormat::Native,
                3,
                &format!("raw-{i}"),
                vec![block],
            )
            .await
            .unwrap();
        }
        (rowbinary, started.elapsed())
    });
    drop(rows);
    assert_eq!(
        server.count(&format!("SELECT count() FROM {raw_db}.http_exchanges")),
        RECORDS as u64
    );
    assert_eq!(
        server.count("SELECT count() FROM t_bench_raw_native.http_exchanges"),
        RECORDS as u64
    );
    let raw_rate = RECORDS as f64 / raw.as_secs_f64();
    let raw_native_rate = RECORDS as f64 / raw_native.as_secs_f64();

    // 2. End to end through the store.
    let e2e_db = "t_bench_e2e";
    let spool = tempfile::tempdir().unwrap();
    let (e2e, format) = rt.block_on(async {
        let mut store = Store::start(&store_config(&server, &url, e2e_db, spool.path()))
            .await
            .unwrap();
        let started = Instant::now();
        pipeline(&mut store, &recs, &metrics).await;
        let totals = store.shutdown(Duration::from_secs(600)).await;
        assert_eq!(totals.sent, RECORDS as u64, "{totals:?}");
        (started.elapsed(), totals.format)
    });
    assert_eq!(
        server.count(&format!("SELECT count() FROM {e2e_db}.http_exchanges")),
        RECORDS as u64
    );
    let e2e_rate = RECORDS as f64 / e2e.as_secs_f64();

    // 3. Spooled during an outage (nothing listens on the URL), then drained.
    let drain_db = "t_bench_drain";
    let spool = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let (spool_time, drain) = rt.block_on(async {
        let mut store = Store::start(&store_config(&server, &dead, drain_db, spool.path()))
            .await
            .unwrap();
        let started = Instant::now();
        pipeline(&mut store, &recs, &metrics).await;
        let spooled = started.elapsed();
        let totals = store.shutdown(Duration::from_secs(5)).await;
        assert_eq!(totals.backlog_rows, RECORDS as u64, "{totals:?}");
        let started = Instant::now();
        let store = Store::start(&store_config(&server, &url, drain_db, spool.path()))
            .await
            .unwrap();
        let totals = store.shutdown(Duration::from_secs(600)).await;
        assert_eq!(totals.sent, RECORDS as u64, "{totals:?}");
        (spooled, started.elapsed())
    });
    assert_eq!(
        server.count(&format!("SELECT count() FROM {drain_db}.http_exchanges")),
        RECORDS as u64
    );
    let drain_rate = RECORDS as f64 / drain.as_secs_f64();
    let spool_rate = RECORDS as f64 / spool_time.as_secs_f64();

    // 4. A fleet's store: a 3-node cluster (one shard each, per-node DDL) on the same
    // machine, every row through the Distributed tables of node 0 (synchronous inserts).
    let cluster = support::cluster::Cluster::start(3);
    let fleet_db = "t_bench_fleet";
    let spool = tempfile::tempdir().unwrap();
    let fleet = rt.block_on(async {
        let cfg = StoreConfig {
            cluster: support::cluster::NAME.to_owned(),
            cluster_nodes: cluster.urls(),
            ..store_config(
                &cluster.nodes[0],
                &cluster.nodes[0].url(),
                fleet_db,
                spool.path(),
            )
        };
        let mut store = Store::start(&cfg).await.unwrap();
        let started = Instant::now();
        pipeline(&mut store, &recs, &metrics).await;
        let totals = store.shutdown(Duration::from_secs(600)).await;
        assert_eq!(totals.sent, RECORDS as u64, "{totals:?}");
        started.elapsed()
    });
    let per_node: Vec<u64> = (0..3)
        .map(|i| {
            cluster.nodes[i].count(&format!(
                "SELECT count() FROM {fleet_db}.http_exchanges_local"
            ))
        })
        .collect();
    assert_eq!(per_node.iter().sum::<u64>(), RECORDS as u64, "{per_node:?}");
    let fleet_rate = RECORDS as f64 / fleet.as_secs_f64();
    drop(cluster);

    println!("store benchmark: {RECORDS} HTTP exchange records, ClickHouse 26.7 on loopback");
    println!(
        "  raw clickhouse crate insert (baseline): {:>10.0} rows/s ({:.2}s)",
        raw_rate,
        raw.as_secs_f64()
    );
    println!(
        "  raw clickhouse crate Native blocks:     {:>10.0} rows/s ({:.2}s), built ahead",
        raw_native_rate,
        raw_native.as_secs_f64()
    );
    println!("  the store sends rows as {format} (store.format = auto, loopback)");
    println!(
        "  end to end through the store:           {:>10.0} rows/s ({:.2}s) = {:.2}x raw",
        e2e_rate,
        e2e.as_secs_f64(),
        e2e_rate / raw_rate
    );
    println!(
        "  spooling while ClickHouse is down:      {:>10.0} rows/s ({:.2}s)",
        spool_rate,
        spool_time.as_secs_f64()
    );
    println!(
        "  spool drain after the outage:           {:>10.0} rows/s ({:.2}s) = {:.2}x raw",
        drain_rate,
        drain.as_secs_f64(),
        drain_rate / raw_rate
    );
    println!(
        "  a 3-node cluster, through Distributed:  {:>10.0} rows/s ({:.2}s) = {:.2}x one node; rows per node {:?}",
        fleet_rate,
        fleet.as_secs_f64(),
        fleet_rate / e2e_rate,
        per_node
    );
    println!(
        "  goal >= 500000 rows/s end to end: {}",
        if e2e_rate >= 500_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "summary: store rows_per_s={e2e_rate:.0} ratio_vs_raw={:.2} cluster_rows_per_s={fleet_rate:.0}",
        e2e_rate / raw_rate
    );
    drop(server);
}
