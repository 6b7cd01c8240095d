//! The ClickHouse store against a real ClickHouse 26.7 (the embedded build edgewatch runs by
//! default) and, for the version check, Debian's real clickhouse-server 18.16. Every test
//! uses its own database; the outage test its own server.
#![allow(
    clippy::unwrap_used,
    reason = "integration tests: a panic is the failure"
)]
mod support;

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use edgewatch::{
    config::WireFormat,
    store::{
        rows::{AnyRow, ConnRow, TABLE_NAMES},
        schema::SchemaOptions,
        ship::{self, Endpoint},
    },
};
use serde_json::Value;
use support::{
    json_lines,
    store::{store_config, ClickHouse},
    Sidecar, SocketHolder,
};

/// `edgewatch replay ... --store` with this config; returns (exit code, stdout JSON, stderr).
fn replay_store(config: &str, args: &[&str]) -> (i32, Vec<Value>, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, config.as_bytes()).unwrap();
    let out = Command::new(support::edgewatch_bin())
        .arg("replay")
        .args(args)
        .args(["--store", "--output", "json", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        json_lines(&String::from_utf8_lossy(&out.stdout)),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count_types(lines: &[Value]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l["type"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    m
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client(ch: &ClickHouse, db: &str) -> clickhouse::Client {
    Endpoint {
        url: ch.url(),
        user: edgewatch::store::embedded::USER.into(),
        password: Some(ch.secret.clone()),
        ca_file: None,
        timeout: Duration::from_secs(10),
    }
    .client(db)
    .unwrap()
}

/// Now, in Unix nanoseconds (rows older than the TTL are dropped on insert).
fn now_ns() -> i64 {
    i64::try_from(edgewatch::output::unix_ns(std::time::SystemTime::now())).unwrap()
}

/// A connection-event row (the smallest kind) for direct inserts.
fn conn_row(ts: i64, node: &str, kind: &str, client_port: u16, latency_ns: Option<u64>) -> AnyRow {
    AnyRow::Conn(ConnRow {
        ts,
        node: node.into(),
        kind: kind.into(),
        client_addr: "127.0.0.1".into(),
        client_port,
        server_addr: "127.0.0.1".into(),
        server_port: 18789,
        conn_start: 0,
        latency_ns,
        side: String::new(),
        pid: 0,
        comm: String::new(),
        lost_bytes: 0,
        effect: String::new(),
    })
}

fn opts(db: &str) -> SchemaOptions {
    SchemaOptions {
        database: db.to_owned(),
        ttl_days: 30,
        cluster: None,
        per_node: false,
    }
}

/// An access log (JSON lines, one garbage line) for the keep-alive capture's three requests,
/// with the request ids the capture carries (read by a replay into a scratch database).
fn keepalive_access_log(ch: &ClickHouse, spool: &Path) -> tempfile::NamedTempFile {
    let (_, plain, _) = replay_store(
        &ch.store_config("t_roundtrip_probe", spool),
        &[&support::fixture("keepalive.44379.pcap"), "--port", "44379"],
    );
    let http: Vec<&Value> = plain.iter().filter(|l| l["type"] == "http").collect();
    assert_eq!(http.len(), 3);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut text = String::new();
    for h in &http {
        let ts = h["request_ts_ns"].as_u64().unwrap() + h["total_ns"].as_u64().unwrap();
        text.push_str(&format!(
            "{{\"msec\":\"{}.{:09}\",\"request_id\":\"{}\",\"remote_addr\":\"203.0.113.7\",\"host\":\"gw.example\",\"request_method\":\"GET\",\"request_uri\":\"/health\",\"status\":\"200\",\"request_time\":\"0.001\",\"upstream_addr\":\"127.0.0.1:44379\",\"upstream_connect_time\":\"0.000\",\"upstream_header_time\":\"0.001\",\"upstream_response_time\":\"0.001\",\"body_bytes_sent\":\"40\"}}\n",
            ts / 1_000_000_000,
            ts % 1_000_000_000,
            h["request_id"].as_str().unwrap()
        ));
    }
    text.push_str("this line is garbage\n");
    std::fs::write(log.path(), text).unwrap();
    log
}

/// A value for a column of ClickHouse type `ty`, the `i`th of a run that goes through the
/// awkward ones: empty, long (a two-byte length), tabs, newlines and quotes, non-ASCII, the
/// largest integers, nulls beside zeros, empty and longer arrays.
fn sample_value(ty: &str, i: usize, now: i64) -> Value {
    use serde_json::json;
    if let Some(inner) = ty.strip_prefix("Array(").and_then(|t| t.strip_suffix(')')) {
        return Value::Array(
            (0..i % 4)
                .map(|k| sample_value(inner, i + k, now))
                .collect(),
        );
    }
    if let Some(inner) = ty
        .strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
    {
        return if i % 3 == 1 {
            Value::Null
        } else {
            sample_value(inner, i, now)
        };
    }
    match ty {
        "DateTime64(9)" => json!(now + i as i64 * 1_000_003),
        "Bool" => json!(i.is_multiple_of(2)),
        "UInt16" => json!([0, 1, 443, 18789, u16::MAX][i % 5]),
        "UInt32" => json!([0, 7, 4_000_000_000u32, u32::MAX][i % 4]),
        "UInt64" => json!([0, 1, 1u64 << 40, u64::MAX][i % 4]),
        _ => {
            assert!(
                ty.contains("String"),
                "a column type the samples lack: {ty}"
            );
            let long = "\u{1f980}x".repeat(40);
            json!(
                [
                    "",
                    "a",
                    "tab\there\nnewline 'q' \"dq\" \\",
                    "gw.example",
                    "ünïcødé",
                    long.as_str()
                ][i % 6]
            )
        }
    }
}

/// `n` rows of table `table` (an index into `TABLE_NAMES`) built from its schema's columns.
fn sample_rows(table: usize, n: usize, now: i64) -> Vec<AnyRow> {
    use edgewatch::store::rows::*;
    let def = edgewatch::store::schema::table(TABLE_NAMES[table]).unwrap();
    (0..n)
        .map(|i| {
            let v = Value::Object(
                def.columns
                    .iter()
                    .enumerate()
                    .map(|(c, col)| (col.name.to_owned(), sample_value(col.ty, i + c, now)))
                    .collect(),
            );
            fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
                serde_json::from_value(v).unwrap()
            }
            match table {
                0 => AnyRow::Exposure(from(v)),
                1 => AnyRow::ExposureChange(from(v)),
                2 => AnyRow::Conn(from(v)),
                3 => AnyRow::Http(from(v)),
                4 => AnyRow::Ws(from(v)),
                5 => AnyRow::Edge(from(v)),
                6 => AnyRow::Request(from(v)),
                _ => AnyRow::Alert(from(v)),
            }
        })
        .collect()
}

/// The Native blocks the spool writes, sent uncompressed or LZ4-compressed, store exactly what
/// the `clickhouse` crate's own row encoder (RowBinary, derived from the row structs) stores
/// for the same rows: every table, every column type, the awkward values.
#[test]
fn native_blocks_store_what_the_crates_row_encoder_stores() {
    let ch = support::store::shared();
    let rt = runtime();
    let now = now_ns();
    let dbs = ["t_enc_rowbinary", "t_enc_native", "t_enc_lz4"];
    rt.block_on(async {
        for db in dbs {
            let c = client(ch, db);
            ship::prepare(&c, &opts(db), "test").await.unwrap();
            for (table, name) in TABLE_NAMES.iter().enumerate() {
                let rows = sample_rows(table, 300, now);
                let token = format!("enc-{table}");
                match db {
                    "t_enc_rowbinary" => ship::insert_rowbinary(&c, table, &token, rows).await,
                    "t_enc_native" => {
                        ship::insert_rows(&c, WireFormat::Native, table, &token, rows).await
                    }
                    _ => ship::insert_rows(&c, WireFormat::Lz4, table, &token, rows).await,
                }
                .unwrap_or_else(|e| panic!("{db} {name}: {e}"));
            }
        }
    });
    let mut nulls = 0;
    for table in TABLE_NAMES {
        let rows = |db: &str| {
            ch.query(&format!(
                "SELECT * FROM {db}.{table} ORDER BY ALL FORMAT TSV"
            ))
        };
        let oracle = rows(dbs[0]);
        assert_eq!(oracle.lines().count(), 300, "{table}");
        assert!(oracle.contains("ünïcødé"), "{table}: {oracle:.300}");
        nulls += oracle.matches("\\N").count();
        assert_eq!(rows(dbs[1]), oracle, "{table}: Native differs");
        assert_eq!(rows(dbs[2]), oracle, "{table}: LZ4 differs");
    }
    assert!(nulls > 100, "the samples hold nulls");
}

/// Real records (replayed captures and an access log) through the spool and the sender, sent
/// uncompressed and LZ4-compressed, store the same rows.
#[test]
fn spooled_records_store_the_same_rows_compressed_or_not() {
    let ch = support::store::shared();
    let spool = tempfile::tempdir().unwrap();
    let log = keepalive_access_log(ch, spool.path());
    for (db, format) in [("t_fmt_native", "native"), ("t_fmt_lz4", "lz4")] {
        let spool = tempfile::tempdir().unwrap();
        let config = format!(
            "{}ttl_days = 0\nformat = {format:?}\n",
            ch.store_config(db, spool.path())
        );
        let log_path = log.path().to_str().unwrap();
        for (capture, port) in [
            ("healthy.37883.pcap", "37883"),
            ("die.38453.pcap", "38453"),
            ("refused.43527.pcap", "43527"),
            ("keepalive.44379.pcap", "44379"),
        ] {
            let mut args = vec![support::fixture(capture), "--port".into(), port.into()];
            // The keep-alive capture comes with its access log (joined requests).
            if capture.starts_with("keepalive") {
                args.extend(["--access-log".into(), log_path.into()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, lines, err) = replay_store(&config, &args);
            assert_eq!(code, 0, "{format} {args:?}: {err}");
            let summary = lines.iter().find(|l| l["type"] == "store_summary").unwrap();
            assert_eq!(summary["format"], format, "{summary}");
            assert_eq!(summary["backlog_rows"], 0, "{summary}");
            assert_eq!(summary["rejected"], 0, "{summary}");
        }
    }
    // Every table but the exposure inventory (live only, tested elsewhere).
    for table in &TABLE_NAMES[2..] {
        let rows = |db: &str| {
            ch.query(&format!(
                "SELECT * FROM {db}.{table} ORDER BY ALL FORMAT TSV"
            ))
        };
        let native = rows("t_fmt_native");
        assert_eq!(native, rows("t_fmt_lz4"), "{table} differs");
        if *table != "alerts" {
            assert!(!native.is_empty(), "no {table} rows");
        }
    }
}

#[test]
fn hop_edge_and_joined_records_round_trip() {
    let ch = support::store::shared();
    let db = "t_roundtrip";
    let spool = tempfile::tempdir().unwrap();
    // No grace period: the refused capture's refusal is an upstream-down incident at once.
    let config = format!(
        "[alerts.upstream_down]\ngrace = \"0s\"\n{}ttl_days = 0\n",
        ch.store_config(db, spool.path())
    );
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_http: Option<Value> = None;
    // Every incident of the hop fixtures, each replayed into the same database.
    for (name, port) in [
        ("healthy.37883.pcap", "37883"),
        ("half_path.39327.pcap", "39327"),
        ("idle_timeout.35057.pcap", "35057"),
        ("refused.43527.pcap", "43527"),
        ("reset.46005.pcap", "46005"),
        ("die.38453.pcap", "38453"),
    ] {
        let (code, lines, err) = replay_store(&config, &[&support::fixture(name), "--port", port]);
        assert_eq!(code, 0, "{name}: {err}");
        for (k, v) in count_types(&lines) {
            *expected.entry(k).or_default() += v;
        }
        let summary = lines
            .iter()
            .find(|l| l["type"] == "store_summary")
            .unwrap_or_else(|| panic!("no store_summary for {name}: {err}"));
        assert_eq!(summary["backlog_rows"], 0, "{summary}");
        assert_eq!(summary["rejected"], 0, "{summary}");
        if first_http.is_none() {
            first_http = lines.iter().find(|l| l["type"] == "http").cloned();
        }
    }
    // The keep-alive capture with an access log whose lines carry its request ids.
    let log = keepalive_access_log(ch, spool.path());
    let (code, lines, err) = replay_store(
        &config,
        &[
            &support::fixture("keepalive.44379.pcap"),
            "--port",
            "44379",
            "--access-log",
            log.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for (k, v) in count_types(&lines) {
        *expected.entry(k).or_default() += v;
    }
    // The replays' own spool, beside the configured one, is gone once all it held was sent.
    let mut replay_spool = spool.path().as_os_str().to_owned();
    replay_spool.push("-replay");
    assert!(
        !std::path::Path::new(&replay_spool).exists(),
        "{replay_spool:?} left behind"
    );
    let requests: Vec<&Value> = lines.iter().filter(|l| l["type"] == "request").collect();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r["matched"] == "exact"));

    let n = |table: &str| ch.count(&format!("SELECT count() FROM {db}.{table}"));
    let want = |k: &str| expected.get(k).copied().unwrap_or(0);
    assert!(
        want("http") > 0 && want("websocket") > 0 && want("conn") > 0,
        "{expected:?}"
    );
    assert_eq!(n("http_exchanges"), want("http"), "{expected:?}");
    assert_eq!(n("ws_sessions"), want("websocket"), "{expected:?}");
    assert_eq!(
        n("conn_events"),
        want("conn") + want("loss"),
        "{expected:?}"
    );
    assert!(
        want("alert") >= 1,
        "the refused capture fires the upstream-down rule"
    );
    assert_eq!(n("alerts"), want("alert"), "{expected:?}");
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.alerts WHERE rule = 'hop.upstream_down' AND state = 'firing' AND JSONExtractUInt(evidence, 'matches') >= 1"
        )),
        1
    );
    assert_eq!(n("edge_logs"), 3, "the garbage line is not a record");
    assert_eq!(n("requests"), 3);
    assert_eq!(
        ch.count(&format!("SELECT count() FROM {db}.requests WHERE matched = 'exact' AND edge_status = 200 AND wire_status = 200 AND client = '203.0.113.7'")),
        3
    );

    // Field by field, one exchange.
    let h = first_http.expect("an http record");
    let rid = h["request_id"].as_str().unwrap();
    let row = ch.query(&format!(
        "SELECT method, path, status, ttfb_ns, request_id, server_port, toUnixTimestamp64Nano(ts) FROM {db}.http_exchanges WHERE request_id = '{rid}' FORMAT JSONEachRow"
    ));
    let row: Value = serde_json::from_str(row.trim()).unwrap();
    assert_eq!(row["method"], h["method"]);
    assert_eq!(row["path"], h["path"]);
    assert_eq!(row["status"], h["status"]);
    let num = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    assert_eq!(num(&row["ttfb_ns"]), h["ttfb_ns"].as_u64(), "{row}");
    assert_eq!(
        row["server_port"],
        h["conn"]["server"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    );
    assert_eq!(
        num(&row["toUnixTimestamp64Nano(ts)"]),
        h["request_ts_ns"].as_u64(),
        "{row}"
    );
    // A WebSocket session's close frames survive as arrays.
    let ws = ch.query(&format!(
        "SELECT end_kind, end_from, close_code, close_from FROM {db}.ws_sessions WHERE end_kind = 'close_handshake' FORMAT TSV"
    ));
    assert!(ws.contains("close_handshake\tclient\t[1000"), "{ws}");

    // The request id lookup saw the joined request in three tables.
    let joined_rid = requests[0]["request_id"].as_str().unwrap();
    let sources = ch.query(&format!(
        "SELECT groupUniqArray(source) FROM {db}.request_index WHERE rid = cityHash64('{joined_rid}') FORMAT TSV"
    ));
    for s in ["http_exchanges", "edge_logs", "requests"] {
        assert!(sources.contains(s), "{sources}");
    }
}

/// One listener opened and closed on loopback; returns once the sidecar printed both changes.
fn bounce_listener(sidecar: &mut Sidecar, port: u16) {
    let holder = SocketHolder::tcp("127.0.0.1", port);
    sidecar.lines.wait_for("the listener's change", |v| {
        v["type"] == "change" && v["change"] == "added" && v["exposure"]["port"] == port
    });
    holder.close();
    sidecar.lines.wait_for("the listener's close", |v| {
        v["type"] == "change" && v["change"] == "removed" && v["exposure"]["port"] == port
    });
}

/// The (key, change) of every change line printed.
fn printed_changes(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|v| v["type"] == "change")
        .map(|v| {
            let e = &v["exposure"];
            let key = format!("{}:{}", e["addr"].as_str().unwrap_or(""), e["port"]);
            (key, v["change"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn stored_changes(ch: &ClickHouse, db: &str) -> Vec<(String, String)> {
    ch.query(&format!(
        "SELECT address, port, change FROM {db}.exposure_changes WHERE kind = 'listener' FORMAT TSV"
    ))
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        (format!("{}:{}", f[0], f[1]), f[2].to_owned())
    })
    .collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// A live sidecar's config around a `[store]` section.
fn run_config(store: &str) -> String {
    format!(
        "[hop]\nenabled = false\n[nat]\nenabled = false\n[exposure]\nrescan_interval = \"1h\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{store}snapshot_interval = \"1h\"\n"
    )
}

#[test]
fn live_exposure_changes_and_alerts_reach_clickhouse() {
    let ch = support::store::shared();
    let db = "t_live";
    let spool = tempfile::tempdir().unwrap();
    let watched = support::free_port();
    let dead = support::closed_port();
    let config = format!(
        "[alerts.upstream_down]\ngrace = \"0s\"\n{}",
        run_config(&ch.store_config(db, spool.path()))
    )
    .replace(
        "[exposure]\n",
        &format!("[exposure]\nwatched_ports = [{watched}]\n"),
    )
    .replace(
        "[hop]\nenabled = false\n",
        &format!("[hop]\nports = [{dead}]\ndocker_bridges = false\n"),
    );
    let mut sidecar = Sidecar::start(&config);
    sidecar.lines.wait_for("the store ready line", |v| {
        v["type"] == "store" && v["event"] == "ready"
    });
    let holder = SocketHolder::tcp("0.0.0.0", watched);
    sidecar.lines.wait_for("the drift alert", |v| {
        v["type"] == "alert" && v["state"] == "firing" && v["evidence"]["port"] == watched
    });
    holder.close();
    let resolved = sidecar.lines.wait_for("the resolution", |v| {
        v["type"] == "alert" && v["state"] == "resolved" && v["evidence"]["port"] == watched
    });
    // A hop rule's alert goes to the same table.
    assert!(std::net::TcpStream::connect(("127.0.0.1", dead)).is_err());
    sidecar.lines.wait_for("the upstream-down alert", |v| {
        v["type"] == "alert" && v["rule"] == "hop.upstream_down"
    });
    sidecar.signal("TERM");
    let summary = sidecar
        .lines
        .wait_for("the store summary", |v| v["type"] == "store_summary");
    assert_eq!(summary["backlog_rows"], 0, "{summary}");
    let key = resolved["dedup_key"].as_str().unwrap();
    assert_eq!(
        ch.query(&format!(
            "SELECT groupArray(state) FROM (SELECT state FROM {db}.alerts WHERE dedup_key = '{key}' ORDER BY ts) FORMAT TSV"
        ))
        .trim(),
        "['firing','resolved']"
    );
    assert_eq!(
        ch.query(&format!(
            "SELECT state, JSONExtractString(evidence, 'items', 1, 'upstream') FROM {db}.alerts WHERE rule = 'hop.upstream_down' FORMAT TSV"
        ))
        .trim(),
        format!("firing\t127.0.0.1:{dead}")
    );
    assert_eq!(
        ch.query(&format!(
            // The holder's wildcard listener: tests running beside this one may listen on
            // the same port number on loopback once the holder is gone.
            "SELECT groupArray(change) FROM (SELECT change FROM {db}.exposure_changes WHERE port = {watched} AND address = '0.0.0.0' ORDER BY ts) FORMAT TSV"
        ))
        .trim(),
        "['added','removed']"
    );
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.exposure_changes WHERE port = {watched} AND verdict = 'drift' AND rule = 'exposure.watched_port_exposed' AND scope = 'wildcard'"
        )),
        2,
        "{}",
        ch.query(&format!("SELECT change, verdict, rule, severity, scope, watched FROM {db}.exposure_changes WHERE port = {watched}"))
    );
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.exposure_changes WHERE port = {watched} AND change = 'added' AND comm = 'python3' AND pid > 0"
        )),
        1,
        "the added listener names its process"
    );
    let inventory = sidecar.ready["exposures"].as_u64().unwrap();
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.exposures WHERE change = 'snapshot'"
        )),
        inventory,
        "the inventory snapshot at start"
    );
}

#[test]
fn an_outage_delays_rows_but_delivers_each_exactly_once() {
    // Its own server: this test stops it.
    let mut ch = ClickHouse::start();
    let db = "t_outage";
    let spool = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start(&run_config(&ch.store_config(db, spool.path())));
    sidecar.lines.wait_for("the store ready line", |v| {
        v["type"] == "store" && v["event"] == "ready"
    });
    for _ in 0..5 {
        bounce_listener(&mut sidecar, support::free_port());
    }
    ch.stop();
    // Changes while ClickHouse is down: the next batch fails and waits in the spool.
    let mut during = 0;
    loop {
        bounce_listener(&mut sidecar, support::free_port());
        during += 1;
        if sidecar
            .lines
            .seen_json()
            .iter()
            .any(|v| v["type"] == "store" && v["event"] == "unavailable")
        {
            break;
        }
        assert!(during < 200, "the outage was never noticed");
    }
    for _ in 0..5 {
        bounce_listener(&mut sidecar, support::free_port());
    }
    ch.restart();
    sidecar.lines.wait_for("the recovery", |v| {
        v["type"] == "store" && v["event"] == "recovered"
    });
    for _ in 0..5 {
        bounce_listener(&mut sidecar, support::free_port());
    }
    sidecar.signal("TERM");
    let summary = sidecar
        .lines
        .wait_for("the store summary", |v| v["type"] == "store_summary");
    assert_eq!(summary["backlog_rows"], 0, "{summary}");
    assert_eq!(summary["dropped"], 0, "{summary}");
    let printed = sorted(printed_changes(&sidecar.lines.seen_json()));
    let stored = sorted(stored_changes(&ch, db));
    assert!(printed.len() >= 2 * (15 + during));
    assert_eq!(stored, printed, "every change exactly once");
}

#[test]
fn kill_9_mid_run_loses_nothing_and_doubles_nothing() {
    let ch = support::store::shared();
    let db = "t_kill9";
    let spool = tempfile::tempdir().unwrap();
    let config = run_config(&ch.store_config(db, spool.path()));
    let mut first = Sidecar::start(&config);
    for _ in 0..10 {
        bounce_listener(&mut first, support::free_port());
    }
    first.signal("KILL");
    let mut printed = printed_changes(&first.lines.seen_json());
    drop(first);
    let mut second = Sidecar::start(&config);
    for _ in 0..5 {
        bounce_listener(&mut second, support::free_port());
    }
    second.signal("TERM");
    let summary = second
        .lines
        .wait_for("the store summary", |v| v["type"] == "store_summary");
    assert_eq!(summary["backlog_rows"], 0, "{summary}");
    printed.extend(printed_changes(&second.lines.seen_json()));
    let stored = stored_changes(ch, db);
    // Nothing doubled: no row twice (the same change at the same instant).
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM (SELECT ts, exposure_key, change, count() c FROM {db}.exposure_changes GROUP BY ts, exposure_key, change HAVING c > 1)"
        )),
        0
    );
    // Nothing lost: everything either run printed is stored, once.
    let mut stored_counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for s in stored {
        *stored_counts.entry(s).or_default() += 1;
    }
    for p in &printed {
        let n = stored_counts.entry(p.clone()).or_default();
        *n -= 1;
        assert!(*n >= 0, "{p:?} printed more often than stored");
    }
    assert!(printed.len() >= 30);
}

#[test]
fn a_retried_batch_is_stored_once() {
    let ch = support::store::shared();
    let rt = runtime();
    for (db, format) in [
        ("t_dedup_native", WireFormat::Native),
        ("t_dedup_lz4", WireFormat::Lz4),
    ] {
        rt.block_on(async {
            let c = client(ch, db);
            ship::prepare(&c, &opts(db), "test").await.unwrap();
            let rows = |n: u16| -> Vec<AnyRow> {
                (0..n)
                    .map(|i| conn_row(now_ns() + i64::from(i), "test", "refused", 40000 + i, None))
                    .collect()
            };
            ship::insert_rows(&c, format, 2, "tok-a", rows(100))
                .await
                .unwrap();
            ship::insert_rows(&c, format, 2, "tok-a", rows(100))
                .await
                .unwrap();
            assert_eq!(
                ch.count(&format!("SELECT count() FROM {db}.conn_events")),
                100,
                "{format:?}: the same token again is the same batch"
            );
            ship::insert_rows(&c, format, 2, "tok-b", rows(100))
                .await
                .unwrap();
            assert_eq!(
                ch.count(&format!("SELECT count() FROM {db}.conn_events")),
                200,
                "{format:?}: another token is another batch"
            );
        });
    }
}

#[test]
fn migrations_are_idempotent_and_safe_from_two_sidecars_at_once() {
    let ch = support::store::shared();
    let db = "t_migrate";
    let rt = runtime();
    rt.block_on(async {
        let a = client(ch, db);
        let b = client(ch, db);
        let o = opts(db);
        let (ra, rb) = tokio::join!(ship::prepare(&a, &o, "a"), ship::prepare(&b, &o, "b"));
        ra.unwrap();
        rb.unwrap();
        ship::prepare(&a, &opts(db), "a").await.unwrap();
    });
    assert_eq!(
        ch.query(&format!(
            "SELECT groupArray(version) FROM (SELECT DISTINCT version FROM {db}.schema_migrations ORDER BY version) FORMAT TSV"
        ))
        .trim(),
        "[1,2,3]"
    );
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM system.tables WHERE database = '{db}' AND engine LIKE '%MergeTree'"
        )),
        // 8 record tables, the lookup, the migrations.
        10
    );
    // TTL follows the config: 30 days now, 7 after a restart with another setting.
    rt.block_on(async {
        let mut o = opts(db);
        o.ttl_days = 7;
        ship::prepare(&client(ch, db), &o, "a").await.unwrap();
    });
    let engine = ch.query(&format!(
        "SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'alerts' FORMAT TSV"
    ));
    assert!(engine.contains("toIntervalDay(7)"), "{engine}");
}

#[test]
fn cluster_ddl_parses_on_the_real_server() {
    let ch = support::store::shared();
    let o = SchemaOptions {
        database: "edgewatch".into(),
        ttl_days: 30,
        cluster: Some("prod".into()),
        per_node: false,
    };
    let mut all = o.migrations_table();
    all.extend(o.migrations().into_iter().flat_map(|m| m.statements));
    all.push(o.ttl_statement("alerts"));
    assert!(all.len() > 20);
    for sql in &all {
        let formatted = ch.query(&format!(
            "SELECT formatQuerySingleLine({}) FORMAT TSV",
            edgewatch::store::schema::literal(sql)
        ));
        assert!(
            formatted.contains("ON CLUSTER prod"),
            "{sql}\n=> {formatted}"
        );
    }
}

#[test]
fn a_schema_mismatch_is_a_clear_error_at_start() {
    let ch = support::store::shared();
    let db = "t_mismatch";
    let spool = tempfile::tempdir().unwrap();
    let config = ch.store_config(db, spool.path());
    let (code, _, err) = replay_store(
        &config,
        &[&support::fixture("refused.43527.pcap"), "--port", "43527"],
    );
    assert_eq!(code, 0, "{err}");
    ch.query(&format!(
        "ALTER TABLE {db}.http_exchanges MODIFY COLUMN idx String"
    ));
    let (code, _, err) = replay_store(
        &config,
        &[&support::fixture("refused.43527.pcap"), "--port", "43527"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("schema mismatch")
            && err.contains("http_exchanges.idx: is String, edgewatch writes UInt32"),
        "{err}"
    );
    // Refused at start, before a row was spooled: no empty replay spool is left behind.
    let mut replay_spool = spool.path().as_os_str().to_owned();
    replay_spool.push("-replay");
    assert!(
        !std::path::Path::new(&replay_spool).exists(),
        "{replay_spool:?} left behind"
    );
}

#[test]
fn a_batch_refused_for_good_is_set_aside_and_reported() {
    let ch = support::store::shared();
    let db = "t_reject";
    let spool_dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let c = client(ch, db);
        ship::prepare(&c, &opts(db), "test").await.unwrap();
        let mut spool = edgewatch::store::spool::Spool::open(
            spool_dir.path(),
            edgewatch::store::spool::SpoolLimits {
                batch_rows: 1,
                batch_bytes: 1 << 20,
                batch_max_age: Duration::from_secs(3600),
                max_bytes: 1 << 30,
                fsync: false,
            },
        )
        .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let sender = ship::Sender {
            client: c.clone(),
            peers: Vec::new(),
            cluster_ddl: edgewatch::store::config::ClusterDdl::Auto,
            opts: opts(db),
            node: "test".into(),
            shared: spool.shared(),
            events: tx,
            url: ch.url(),
            stats: Default::default(),
            timeout: Duration::from_secs(10),
            prepared: None,
            format: WireFormat::Native,
        };
        let task = tokio::spawn(sender.run(done_rx));
        assert!(matches!(
            rx.recv().await,
            Some(ship::StoreEvent::Ready { .. })
        ));
        // The table goes away under the running sender.
        ch.query(&format!("DROP TABLE {db}.alerts"));
        let alert = AnyRow::Alert(edgewatch::store::rows::AlertRow {
            ts: now_ns(),
            node: "test".into(),
            state: "firing".into(),
            rule: "r".into(),
            severity: "critical".into(),
            dedup_key: "k".into(),
            summary: "s".into(),
            first_move: "m".into(),
            fired_at: 1,
            evidence: "{}".into(),
        });
        spool.push(alert).unwrap();
        let rejected = loop {
            match rx.recv().await {
                Some(ev @ ship::StoreEvent::Rejected { .. }) => break ev,
                Some(_) => continue,
                None => panic!("sender ended"),
            }
        };
        let ship::StoreEvent::Rejected {
            table,
            rows,
            reason,
            moved_to,
        } = rejected
        else {
            unreachable!()
        };
        assert_eq!((table.as_str(), rows), ("alerts", 1));
        assert!(
            reason.contains("UNKNOWN_TABLE") || reason.contains("Code: 60"),
            "{reason}"
        );
        assert!(Path::new(&moved_to).exists(), "{moved_to}");
        // The pipeline goes on: the next batch of another table arrives.
        let conn = conn_row(now_ns(), "test", "refused", 1, None);
        spool.push(conn).unwrap();
        loop {
            match rx.recv().await {
                Some(ship::StoreEvent::Sent { table, rows }) if table == "conn_events" => {
                    assert_eq!(rows, 1);
                    break;
                }
                Some(_) => continue,
                None => panic!("sender ended"),
            }
        }
        done_tx.send(true).unwrap();
        task.await.unwrap();
    });
    assert_eq!(
        ch.count(&format!("SELECT count() FROM {db}.conn_events")),
        1
    );
}

#[test]
fn an_old_server_is_refused_with_a_clear_error() {
    // Debian's clickhouse-server 18.16 (installed by `cargo xtask test`).
    let bin = Path::new("/usr/sbin/clickhouse-server");
    assert!(
        bin.exists(),
        "clickhouse-server 18.16 is not installed: run `cargo xtask test`"
    );
    let dir = tempfile::tempdir().unwrap();
    let http = support::free_port();
    let tcp = support::free_port();
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("config.xml"),
        format!(
            "<yandex><logger><level>information</level><console>1</console></logger>\
             <http_port>{http}</http_port><tcp_port>{tcp}</tcp_port>\
             <listen_host>127.0.0.1</listen_host><path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path>\
             <users_config>/etc/clickhouse-server/users.xml</users_config>\
             <default_profile>default</default_profile><default_database>default</default_database>\
             <mark_cache_size>536870912</mark_cache_size></yandex>"
        ),
    )
    .unwrap();
    let mut old = Command::new(bin)
        .arg(format!("--config-file={d}/config.xml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It logs "Ready for connections." once it listens (read on; the pipe stays drained).
    let mut lines = support::Lines::new(old.stderr.take().unwrap());
    lines.wait_for_text("clickhouse-server 18.16 ready", |l| {
        l.contains("Ready for connections")
    });
    lines.discard_from_now();
    let spool = tempfile::tempdir().unwrap();
    let (code, _, err) = replay_store(
        &store_config(&format!("http://127.0.0.1:{http}"), "t_old", spool.path()),
        &[&support::fixture("refused.43527.pcap"), "--port", "43527"],
    );
    let _ = old.kill();
    let _ = old.wait();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ClickHouse 18.16") && err.contains("too old"),
        "{err}"
    );
}

/// A TLS-terminating nginx in front of the test server, with a certificate from a private CA.
struct TlsProxy {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsProxy {
    fn start(backend_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=edgewatch test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "srv.key",
                    "-out",
                    "srv.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let port = support::free_port();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{\n listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {d}/srv.pem;\n ssl_certificate_key {d}/srv.key;\n\
                 client_max_body_size 0;\n\
                 location / {{ proxy_pass http://127.0.0.1:{backend_port}; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_request_buffering off; }}\n\
               }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("nginx (cargo xtask setup installs nginx-light)");
        let deadline = std::time::Instant::now() + support::wait_limit();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not start; see {d}/error.log"
            );
            std::thread::yield_now();
        }
        Self { child, port, dir }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_with_a_private_ca_from_the_config() {
    let ch = support::store::shared();
    let proxy = TlsProxy::start(ch.http_port);
    let db = "t_tls";
    let url = format!("https://127.0.0.1:{}", proxy.port);
    let endpoint = |ca: Option<std::path::PathBuf>| Endpoint {
        url: url.clone(),
        user: edgewatch::store::embedded::USER.into(),
        password: Some(ch.secret.clone()),
        ca_file: ca,
        timeout: Duration::from_secs(10),
    };
    let rt = runtime();
    rt.block_on(async {
        // Without the CA the server is not trusted.
        let err = ship::prepare(&endpoint(None).client(db).unwrap(), &opts(db), "t")
            .await
            .expect_err("an untrusted certificate must fail");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
        // With store.ca_file it is, and rows go through TLS (LZ4 inside).
        let c = endpoint(Some(proxy.dir.path().join("ca.pem")))
            .client(db)
            .unwrap();
        ship::prepare(&c, &opts(db), "t").await.unwrap();
        let row = conn_row(now_ns(), "tls", "connected", 1, Some(5));
        ship::insert_rows(&c, WireFormat::Lz4, 2, "tls-1", vec![row])
            .await
            .unwrap();
    });
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.conn_events WHERE node = 'tls' AND latency_ns = 5"
        )),
        1
    );
    // A CA file without a certificate is a clear error.
    let empty = proxy.dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = endpoint(Some(empty))
        .client(db)
        .expect_err("no certificate");
    let err = format!("{err:#}");
    assert!(
        err.contains("store.ca_file") && err.contains("empty.pem holds no certificate"),
        "{err}"
    );
}

#[test]
fn a_server_that_never_answers_is_a_timeout_and_rows_wait_in_the_spool() {
    // Accepts connections and never answers (a hung server, a black-holing proxy).
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hole.incoming().take(64) {
            match c {
                Ok(c) => conns.push(c),
                Err(_) => break,
            }
        }
    });
    let spool = tempfile::tempdir().unwrap();
    let config = store_config(&format!("http://127.0.0.1:{port}"), "t_hole", spool.path())
        .replace("timeout = \"10s\"", "timeout = \"1s\"");
    let started = std::time::Instant::now();
    let (code, lines, err) = replay_store(
        &config,
        &[&support::fixture("keepalive.44379.pcap"), "--port", "44379"],
    );
    // It gives up after a few timed-out attempts instead of hanging, and says so.
    assert_eq!(code, 1, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("not every record reached ClickHouse"), "{err}");
    let summary = lines
        .iter()
        .find(|l| l["type"] == "store_summary")
        .expect("a store summary");
    let records = lines
        .iter()
        .filter(|l| {
            ["http", "conn", "websocket", "loss"].contains(&l["type"].as_str().unwrap_or(""))
        })
        .count() as u64;
    assert_eq!(summary["backlog_rows"], records, "{summary}");
    assert_eq!(summary["sent"], 0);
    drop(held);
}

#[test]
fn a_full_spool_drops_the_oldest_rows_and_counts_them() {
    // Nothing listens: every batch waits, and the spool only holds so much.
    let spool = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", support::closed_port());
    let config = format!(
        "{}batch_rows = 1\nbatch_bytes = 4096\nspool_max_bytes = 4096\n",
        store_config(&dead, "t_full", spool.path())
            .replace("timeout = \"10s\"", "timeout = \"1s\"")
    );
    // 60 access-log lines: 60 edge rows and 60 (edge-only) requests, well over 4 KiB.
    let log = tempfile::NamedTempFile::new().unwrap();
    let text: String = (0..60)
        .map(|i| format!(
            "{{\"msec\":\"1795280000.{i:03}\",\"request_id\":\"{i:032x}\",\"remote_addr\":\"203.0.113.7\",\"host\":\"gw.example\",\"request_method\":\"GET\",\"request_uri\":\"/a/{i}\",\"status\":\"200\",\"request_time\":\"0.001\"}}\n"
        ))
        .collect();
    std::fs::write(log.path(), text).unwrap();
    let (code, lines, err) = replay_store(
        &config,
        &[
            &support::fixture("healthy.37883.pcap"),
            "--port",
            "37883",
            "--access-log",
            log.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    let summary = lines
        .iter()
        .find(|l| l["type"] == "store_summary")
        .expect("a store summary");
    let spooled = summary["spooled"].as_u64().unwrap();
    let dropped = summary["dropped"].as_u64().unwrap();
    let left = summary["backlog_rows"].as_u64().unwrap();
    assert!(dropped > 0, "{summary}");
    assert_eq!(
        dropped + left,
        spooled,
        "every row is either kept or counted: {summary}"
    );
    assert!(
        summary["backlog_bytes"].as_u64().unwrap() <= 4096,
        "{summary}"
    );
}

#[test]
fn live_spool_overflow_is_reported_not_silent() {
    let spool = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", support::closed_port());
    let config = format!(
        "{}batch_rows = 1\nbatch_bytes = 4096\nspool_max_bytes = 4096\n",
        run_config(&store_config(&dead, "t_overflow", spool.path()))
            .replace("timeout = \"10s\"", "timeout = \"1s\"")
    );
    let mut sidecar = Sidecar::start(&config);
    // Each change row carries the exposure's details: a few of them overflow 4 KiB.
    let mut bounced = 0;
    while !sidecar
        .lines
        .seen_json()
        .iter()
        .any(|v| v["type"] == "store" && v["event"] == "dropped")
    {
        bounce_listener(&mut sidecar, support::free_port());
        bounced += 1;
        assert!(bounced < 100, "the overflow was never reported");
    }
    let line = sidecar.lines.wait_for("the drop report", |v| {
        v["type"] == "store" && v["event"] == "dropped"
    });
    assert!(line["rows"].as_u64().unwrap() > 0, "{line}");
    let metrics = sidecar.metrics();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("edgewatch_store_rows_total{result=\"dropped\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}

/// One nginx JSON access-log line (the README's format) with request id `i`.
fn log_line(i: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "{{\"msec\":\"{}.{:03}\",\"request_id\":\"{i:032x}\",\"remote_addr\":\"203.0.113.7\",\"host\":\"gw.example\",\"request_method\":\"GET\",\"request_uri\":\"/r{i}\",\"status\":\"200\",\"request_time\":\"0.001\",\"upstream_addr\":\"127.0.0.1:18789\",\"upstream_connect_time\":\"0.000\",\"upstream_header_time\":\"0.001\",\"upstream_response_time\":\"0.001\",\"body_bytes_sent\":\"2\"}}\n",
        now.as_secs(),
        now.subsec_millis()
    )
}

/// Appends lines `from..to` to the log.
fn write_lines(log: &Path, from: u64, to: u64) {
    let text: String = (from..to).map(log_line).collect();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}

#[test]
fn access_log_lines_reach_clickhouse_exactly_once_across_kill_9_and_rotations() {
    let ch = support::store::shared();
    let db = "t_log_once";
    let spool = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    // The proxy's log exists when the sidecar first starts (it is read from its end then).
    std::fs::write(&log, "").unwrap();
    let config = format!(
        "{}[edge]\naccess_logs = [{:?}]\nstate_dir = {:?}\njoin_window = \"50ms\"\npoll_interval = \"20ms\"\n",
        run_config(&ch.store_config(db, spool.path())),
        log.display().to_string(),
        state.path().display().to_string()
    );
    // A small deterministic generator: kill points and burst sizes vary, runs repeat.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut written = 0u64;
    let mut rotations = 0;
    let mut rotate = |log: &Path| {
        rotations += 1;
        let to = log.with_extension(format!("log.{rotations}"));
        // Every other rotation as logrotate's `copytruncate` (copied, then emptied in place):
        // while stopped in round 1, while running in round 3.
        if rotations % 2 == 0 {
            std::fs::copy(log, &to).unwrap();
            std::fs::File::create(log).unwrap();
        } else {
            std::fs::rename(log, &to).unwrap();
        }
    };
    for round in 0..6u64 {
        // While stopped: lines, and in odd rounds a rotation first (the checkpoint then names
        // a file the path no longer names).
        // (Not before the first start: with no checkpoint yet, a log's history is not read.)
        if round % 2 == 1 {
            rotate(&log);
        }
        if round > 0 {
            let burst = 50 + next(250);
            write_lines(&log, written, written + burst);
            written += burst;
        }
        let mut sidecar = Sidecar::start(&config);
        // While running: more lines, and in some rounds a rotation in the middle.
        let burst = 50 + next(250);
        write_lines(&log, written, written + burst);
        written += burst;
        if round % 3 == 0 {
            rotate(&log);
            let burst = 20 + next(100);
            write_lines(&log, written, written + burst);
            written += burst;
        }
        // Killed at a point that varies: after some of this run's requests came out.
        let kill_after = 1 + next(100);
        let seen = std::cell::Cell::new(0);
        sidecar.lines.wait_for("requests before the kill", |v| {
            if v["type"] == "request" {
                seen.set(seen.get() + 1);
            }
            seen.get() >= kill_after
        });
        sidecar.signal("KILL");
        drop(sidecar);
    }
    // A last run reads the rest, and a last burst (lines are read in order: once the last
    // one's request is out, every earlier line was read by this run or one before), then
    // stops cleanly.
    let mut sidecar = Sidecar::start(&config);
    write_lines(&log, written, written + 20);
    written += 20;
    let last = format!("{:032x}", written - 1);
    sidecar.lines.wait_for("the last line's request", |v| {
        v["type"] == "request" && v["request_id"] == last.as_str()
    });
    sidecar.signal("TERM");
    let summary = sidecar
        .lines
        .wait_for("the store summary", |v| v["type"] == "store_summary");
    assert_eq!(summary["backlog_rows"], 0, "{summary}");
    // Every line once: none lost, none doubled.
    assert_eq!(
        ch.count(&format!("SELECT uniqExact(request_id) FROM {db}.edge_logs")),
        written,
        "lines lost"
    );
    assert_eq!(
        ch.count(&format!("SELECT count() FROM {db}.edge_logs")),
        written,
        "lines stored twice"
    );
    assert!(rotations >= 4);
}

/// A line stored with its request as one `edge_logs` row (the common case live: the line's
/// exchange waited for it) makes, through ClickHouse's view, the very `requests` row that the
/// request's own row is, and the same line's row: every column, for every join outcome
/// that comes with its line.
#[test]
fn a_line_that_carries_its_request_makes_the_same_requests_row() {
    let ch = support::store::shared();
    let db = "t_fold";
    let requests = support::store::joined_with_their_lines(now_ns());
    let rt = runtime();
    for (node, one_row) in [("apart", false), ("one-row", true)] {
        let spool = tempfile::tempdir().unwrap();
        let text = format!("{}node = {node:?}\n", ch.store_config(db, spool.path()));
        let cfg = edgewatch::config::Config::from_toml_str(&text, "test").unwrap();
        let totals = rt.block_on(async {
            let mut st = edgewatch::store::Store::start(&cfg.store).await.unwrap();
            for r in &requests {
                if one_row {
                    st.edge_joined(r);
                } else {
                    st.edge(r.edge.as_ref().unwrap());
                    st.request(r);
                }
            }
            st.flush(&edgewatch::metrics::Metrics::new());
            st.shutdown(Duration::from_secs(60)).await
        });
        let rows = if one_row { 40 } else { 80 };
        assert_eq!(
            (totals.sent, totals.backlog_rows),
            (rows, 0),
            "{node}: {totals:?}"
        );
    }
    let n = requests.len() as u64;
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.edge_logs WHERE node = 'one-row' AND joined"
        )),
        n
    );
    // The line's own columns (its join's are empty when the request has its own row).
    let lines = |node: &str| {
        ch.query(&format!(
            "SELECT * EXCEPT (node, joined, matched, reason, wire_status, wire_ttfb_ns, wire_total_ns, upgrade_requested, websocket, ws_duration_ns, ws_end_kind, ws_end_from, refused, hop_client) FROM {db}.edge_logs WHERE node = '{node}' ORDER BY ALL FORMAT TSV"
        ))
    };
    let apart = lines("apart");
    assert_eq!(apart.lines().count() as u64, n, "{apart}");
    assert_eq!(lines("one-row"), apart);
    // The whole request row, the join's columns included, and the request id lookup.
    let all = |node: &str| {
        ch.query(&format!(
            "SELECT * EXCEPT node FROM {db}.requests WHERE node = '{node}' ORDER BY ALL FORMAT TSV"
        ))
    };
    let apart = all("apart");
    assert!(
        apart.contains("2001:db8::7") && apart.contains("close_handshake") && apart.contains("\\N"),
        "{apart}"
    );
    assert_eq!(all("one-row"), apart);
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.request_index WHERE source = 'requests' AND node = 'one-row'"
        )),
        n - n / 5,
        "the lookup indexes the view's rows with an id"
    );
}

/// A database made before the lines carried their requests (schema version 2: `edge_logs`
/// without the join's columns, no view) gets them at the next start, and its lines' rows
/// that carry requests make `requests` rows from then on.
#[test]
fn an_older_database_is_brought_to_the_lines_that_carry_their_requests() {
    let ch = support::store::shared();
    let db = "t_migrate_v2";
    let rt = runtime();
    rt.block_on(async {
        ship::prepare(&client(ch, db), &opts(db), "a")
            .await
            .unwrap();
    });
    // Back to version 2, as an older edgewatch left it.
    ch.query(&format!("DROP VIEW {db}.requests_from_edge_logs_mv"));
    let join_columns = [
        "joined",
        "matched",
        "reason",
        "wire_status",
        "wire_ttfb_ns",
        "wire_total_ns",
        "upgrade_requested",
        "websocket",
        "ws_duration_ns",
        "ws_end_kind",
        "ws_end_from",
        "refused",
        "hop_client",
    ];
    let drops: Vec<String> = join_columns
        .iter()
        .map(|c| format!("DROP COLUMN {c}"))
        .collect();
    ch.query(&format!("ALTER TABLE {db}.edge_logs {}", drops.join(", ")));
    ch.query(&format!(
        "ALTER TABLE {db}.schema_migrations DELETE WHERE version = 3 SETTINGS mutations_sync = 2"
    ));
    let columns = || {
        ch.count(&format!(
            "SELECT count() FROM system.columns WHERE database = '{db}' AND table = 'edge_logs'"
        ))
    };
    assert_eq!(columns(), 15);
    rt.block_on(async {
        ship::prepare(&client(ch, db), &opts(db), "a")
            .await
            .unwrap();
    });
    assert_eq!(columns(), 28);
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'requests_from_edge_logs_mv'"
        )),
        1
    );
    // A line that carries its request, through the store as live.
    let spool = tempfile::tempdir().unwrap();
    let cfg = edgewatch::config::Config::from_toml_str(&ch.store_config(db, spool.path()), "test")
        .unwrap();
    let requests = support::store::joined_with_their_lines(now_ns());
    rt.block_on(async {
        let mut st = edgewatch::store::Store::start(&cfg.store).await.unwrap();
        st.edge_joined(&requests[0]);
        st.flush(&edgewatch::metrics::Metrics::new());
        st.shutdown(Duration::from_secs(60)).await
    });
    let rid = requests[0].request_id.as_deref().unwrap();
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.requests WHERE request_id = '{rid}' AND matched = 'exact' AND wire_status = 200"
        )),
        1
    );
}
