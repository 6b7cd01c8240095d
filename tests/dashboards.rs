//! The Grafana dashboards in dashboards/: every panel's SQL, with Grafana's and the ClickHouse
//! plugin's macros expanded the way they expand them, runs against a real ClickHouse 26.7
//! filled by a real scenario (the live sidecar watching real nginx, a WebSocket upstream and
//! an exposure drift), and returns what the scenario implies.
mod support;

use std::{collections::BTreeMap, path::Path};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::{
    hop::{start_upstream, ws_connect, Nginx, NginxSite},
    store::ClickHouse,
    Sidecar, SocketHolder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Every dashboard file, parsed (a file that is not JSON fails here).
fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            out.push((path.display().to_string(), v));
        }
    }
    assert!(!out.is_empty(), "no dashboard in {}", dir.display());
    out
}

/// Grafana's variables and the ClickHouse plugin's macros, expanded as they expand them.
struct Values<'a> {
    from_s: i64,
    to_s: i64,
    node: &'a str,
    port: u16,
    request_id: &'a str,
}

fn expand(sql: &str, v: &Values<'_>) -> String {
    let mut out = sql.to_owned();
    // $__timeFilter(col) and $__timeInterval(col).
    for (macro_name, f) in [
        (
            "$__timeFilter(",
            &(|col: &str, v: &Values<'_>| {
                format!(
                    "{col} >= toDateTime({}) AND {col} <= toDateTime({})",
                    v.from_s, v.to_s
                )
            }) as &dyn Fn(&str, &Values<'_>) -> String,
        ),
        ("$__timeInterval(", &|col: &str, _: &Values<'_>| {
            format!("toStartOfInterval(toDateTime({col}), INTERVAL 20 second)")
        }),
    ] {
        while let Some(at) = out.find(macro_name) {
            let rest = &out[at + macro_name.len()..];
            let close = rest.find(')').expect("macro closes");
            let col = rest[..close].trim().to_owned();
            out = format!("{}{}{}", &out[..at], f(&col, v), &rest[close + 1..]);
        }
    }
    out = out
        .replace("$__fromTime", &format!("toDateTime({})", v.from_s))
        .replace("$__toTime", &format!("toDateTime({})", v.to_s))
        .replace("$__interval_s", "20")
        .replace("${node:singlequote}", &format!("'{}'", v.node))
        .replace("${port}", &v.port.to_string())
        .replace("${request_id}", v.request_id);
    assert!(
        !out.contains('$'),
        "a macro or variable the test does not know is left in: {out}"
    );
    out
}

fn query(ch: &ClickHouse, db: &str, sql: &str) -> Vec<Value> {
    let (status, body) = ch.request(
        &format!("{}/?database={db}", ch.url()),
        &format!("{sql}\nFORMAT JSON"),
        Some(edgewatch::store::embedded::USER),
        Some(&ch.secret),
    );
    assert!(
        status == 200,
        "panel query failed ({status}):\n{sql}\n{body}"
    );
    let v: Value = serde_json::from_str(&body).expect("JSON result");
    v["data"].as_array().cloned().unwrap_or_default()
}

fn num(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn sum(rows: &[Value], col: &str) -> f64 {
    rows.iter().map(|r| num(&r[col])).sum()
}

async fn get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_runs_and_shows_what_the_scenario_did() {
    // Every dashboard loads, and every panel has SQL for the ClickHouse data source.
    let boards = dashboards();
    for (file, d) in &boards {
        for p in d["panels"].as_array().expect("panels") {
            let t = &p["targets"][0];
            assert_eq!(
                t["datasource"]["type"], "grafana-clickhouse-datasource",
                "{file}: {}",
                p["title"]
            );
            assert!(t["rawSql"].is_string(), "{file}: {} has no SQL", p["title"]);
            // Every panel follows the node variable: one dashboard for a fleet.
            let sql = t["rawSql"].as_str().unwrap_or("");
            assert!(
                sql.contains("node IN (${node:singlequote})"),
                "{file}: {} does not follow the node variable:\n{sql}",
                p["title"]
            );
        }
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for v in ["node", "port", "request_id"] {
            assert!(vars.contains(&v), "{file} lacks the {v} variable");
        }
    }

    // The scenario.
    let ch = support::store::shared();
    let db = "t_dashboards";
    let spool = tempfile::tempdir().expect("spool");
    let state = tempfile::tempdir().expect("state");
    let upstream = start_upstream().await;
    let dead = support::closed_port();
    let watched = support::free_port();
    let nginx = Nginx::start(&NginxSite::new(upstream));
    let log = nginx.access_log_path();
    let mut sidecar = Sidecar::start(&format!(
        "[hop]\nports = [{}, {dead}]\ndocker_bridges = false\n\
         [edge]\naccess_logs = [{log:?}]\nstate_dir = {:?}\npoll_interval = \"50ms\"\n\
         [exposure]\nwatched_ports = [{watched}, {}]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [alerts.upstream_down]\ngrace = \"0s\"\n{}node = \"dashtest\"\nsnapshot_interval = \"1h\"\n",
        upstream.port(),
        state.path(),
        upstream.port(),
        ch.store_config(db, spool.path())
    ));
    sidecar.lines.wait_for("the store", |v| {
        v["type"] == "store" && v["event"] == "ready"
    });
    let from_s = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("time")
        - 60;
    // Exposure drift: the watched port on every address, then gone.
    let holder = SocketHolder::tcp("0.0.0.0", watched);
    sidecar.lines.wait_for("the drift", |v| {
        v["type"] == "alert" && v["state"] == "firing" && v["evidence"]["port"] == watched
    });
    holder.close();
    sidecar.lines.wait_for("its end", |v| {
        v["type"] == "alert" && v["state"] == "resolved" && v["evidence"]["port"] == watched
    });
    // Three plain requests, two clean WebSocket sessions, one the upstream drops.
    for _ in 0..3 {
        assert!(get(nginx.port, "/health").await.starts_with("HTTP/1.1 200"));
    }
    for i in 0..2 {
        let mut ws = ws_connect(nginx.port, &format!("/clean{i}"))
            .await
            .expect("upgrade");
        ws.next().await.expect("challenge").expect("frame");
        ws.send(Message::text("hello")).await.expect("send");
        ws.next().await.expect("echo").expect("frame");
        ws.close(None).await.expect("close");
        while let Some(Ok(_)) = ws.next().await {}
    }
    let mut ws = ws_connect(nginx.port, "/dies").await.expect("upgrade");
    ws.next().await.expect("challenge").expect("frame");
    ws.send(Message::text("die")).await.expect("send");
    while let Some(Ok(_)) = ws.next().await {}
    // The upstream of the second hop port is down (no grace period here).
    assert!(std::net::TcpStream::connect(("127.0.0.1", dead)).is_err());
    sidecar.lines.wait_for("the upstream-down alert", |v| {
        v["type"] == "alert" && v["rule"] == "hop.upstream_down"
    });
    // Six joined requests (some may have been printed before the alert above).
    let exact = |v: &Value| v["type"] == "request" && v["matched"] == "exact";
    while sidecar
        .lines
        .seen_json()
        .iter()
        .filter(|v| exact(v))
        .count()
        < 6
    {
        sidecar.lines.wait_for("a joined request", exact);
    }
    sidecar.signal("TERM");
    let summary = sidecar
        .lines
        .wait_for("the store summary", |v| v["type"] == "store_summary");
    assert_eq!(summary["backlog_rows"], 0, "{summary}");
    let seen = sidecar.lines.seen_json();
    let health_rid = seen
        .iter()
        .find(|v| v["type"] == "request" && v["hop"]["path"] == "/health")
        .and_then(|v| v["request_id"].as_str())
        .expect("a joined health request")
        .to_owned();
    let ws_rid = seen
        .iter()
        .find(|v| v["type"] == "websocket" && v["path"] == "/clean0")
        .and_then(|v| v["request_id"].as_str())
        .expect("a session's request id")
        .to_owned();
    let to_s = from_s + 3600;

    // Every panel, by title, against what happened.
    let mut results: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (_, d) in &boards {
        for p in d["panels"].as_array().expect("panels") {
            let title = p["title"].as_str().expect("title").to_owned();
            let raw = p["targets"][0]["rawSql"].as_str().expect("sql");
            for (rid, tag) in [(&health_rid, ""), (&ws_rid, " [ws]")] {
                if tag == " [ws]" && !raw.contains("${request_id}") {
                    continue;
                }
                let sql = expand(
                    raw,
                    &Values {
                        from_s,
                        to_s,
                        node: "dashtest",
                        port: if raw.contains("conn_events") {
                            dead
                        } else {
                            upstream.port()
                        },
                        request_id: rid,
                    },
                );
                results.insert(format!("{title}{tag}"), query(ch, db, &sql));
            }
        }
    }
    let r = |t: &str| {
        results
            .get(t)
            .unwrap_or_else(|| panic!("no panel titled {t:?}; panels: {:?}", results.keys()))
    };
    let inventory = r("Exposure inventory (latest snapshot)");
    assert!(
        inventory
            .iter()
            .any(|row| num(&row["port"]) == f64::from(upstream.port())
                && row["address"] == "127.0.0.1"),
        "{inventory:#?}"
    );
    let drift = r("Exposure drift over time");
    assert_eq!(
        (sum(drift, "drift_opened"), sum(drift, "drift_closed")),
        (1.0, 1.0),
        "{drift:#?}"
    );
    let alerts = r("Alerts");
    for (rule, state) in [
        ("exposure.watched_port_exposed", "firing"),
        ("exposure.watched_port_exposed", "resolved"),
        ("hop.upstream_down", "firing"),
    ] {
        assert!(
            alerts
                .iter()
                .any(|a| a["rule"] == rule && a["state"] == state),
            "{rule} {state}: {alerts:#?}"
        );
    }
    let by_cause: BTreeMap<String, f64> =
        r("WebSocket session ends by cause")
            .iter()
            .fold(BTreeMap::new(), |mut m, row| {
                *m.entry(row["cause"].as_str().unwrap_or("").to_owned())
                    .or_default() += num(&row["sessions"]);
                m
            });
    assert_eq!(
        by_cause.get("close_handshake by proxy"),
        Some(&2.0),
        "{by_cause:?}"
    );
    assert_eq!(
        by_cause.get("fin_without_close by upstream"),
        Some(&1.0),
        "{by_cause:?}"
    );
    let causes = r("WebSocket disconnect causes");
    assert_eq!(sum(causes, "sessions"), 3.0, "{causes:#?}");
    let pct = r("Upstream latency percentiles (wire)");
    assert!(
        !pct.is_empty() && pct.iter().all(|row| num(&row["p50_ttfb_ms"]) > 0.0),
        "{pct:#?}"
    );
    let heat = r("Upstream latency heatmap (wire)");
    let buckets = ["<1ms", "1-10ms", "10-100ms", "100ms-1s", ">=1s"];
    let total: f64 = buckets.iter().map(|b| sum(heat, b)).sum();
    assert_eq!(total, 6.0, "3 plain requests and 3 upgrades: {heat:#?}");
    let edge_wire = r("Edge view next to wire view (p95)");
    assert!(
        edge_wire
            .iter()
            .any(|row| num(&row["wire_ttfb_p95_ms"]) > 0.0
                && num(&row["edge_request_time_p95_ms"]) >= 0.0),
        "{edge_wire:#?}"
    );
    let conns = r("Resets and refused connects");
    assert!(sum(conns, "refused_connects") >= 1.0, "{conns:#?}");
    let one = r("Request lookup: joined view");
    assert_eq!(one.len(), 1, "{one:#?}");
    assert_eq!(
        (num(&one[0]["edge_status"]), num(&one[0]["wire_status"])),
        (200.0, 200.0)
    );
    let hop_one = r("Request lookup: hop records");
    assert_eq!(hop_one.len(), 1, "{hop_one:#?}");
    let hop_ws = r("Request lookup: hop records [ws]");
    let kinds: Vec<&str> = hop_ws
        .iter()
        .filter_map(|row| row["record"].as_str())
        .collect();
    assert_eq!(kinds, ["http", "websocket"], "{hop_ws:#?}");
}
