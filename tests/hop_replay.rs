//! The hop, recorded for real: real nginx in front of a real WebSocket upstream, real
//! WebSocket clients, tcpdump on `lo`, then `edgewatch replay` on the recording. Each scenario
//! is one of the runbook's failures; the records must say what happened.
mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{
    hop::{
        replay_json, replay_with_logs, start_upstream, ws_connect, Caddy, Capture, Nginx, NginxSite,
    },
    Sidecar,
};
use tokio_tungstenite::tungstenite::{
    protocol::{
        frame::{
            coding::{Data, OpCode},
            Frame,
        },
        CloseFrame,
    },
    Message,
};

/// The sidecar, live, on the hop of this upstream port.
fn live(upstream_port: u16) -> Sidecar {
    Sidecar::start(&format!(
        "[hop]\nports = [{upstream_port}]\ndocker_bridges = false\n\
         [exposure]\nrescan_interval = \"1h\"\n[nat]\nenabled = false\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n"
    ))
}

/// The same, also following an access log (checkpoints in `state`).
fn live_with_log(upstream_port: u16, log: &std::path::Path, state: &std::path::Path) -> Sidecar {
    Sidecar::start(&format!(
        "[hop]\nports = [{upstream_port}]\ndocker_bridges = false\n\
         [edge]\naccess_logs = [{log:?}]\nstate_dir = {state:?}\npoll_interval = \"50ms\"\n\
         [exposure]\nrescan_interval = \"1h\"\n[nat]\nenabled = false\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n"
    ))
}

/// Plain requests through nginx, each on its own client connection.
async fn get_health(port: u16, n: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        // Caddy answers an empty 200 for a host its site does not match: use the address.
        let req =
            format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).await.expect("read");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.ends_with("ok"), "the upstream answered: {body}");
    }
}

/// What makes a record the same record whichever way it was seen (timestamps and durations
/// differ between the TC hook and tcpdump).
fn essence(r: &Value) -> Value {
    let conn = json!([r["conn"]["client"], r["conn"]["server"]]);
    match r["type"].as_str() {
        Some("http") => json!({
            "type": "http", "conn": conn, "index": r["index"], "method": r["method"],
            "path": r["path"], "host": r["host"], "request_id": r["request_id"],
            "upgrade": [r["upgrade_websocket"], r["connection_upgrade"]],
            "status": r["status"], "outcome": r["outcome"],
        }),
        Some("websocket") => json!({
            "type": "websocket", "conn": conn, "request_id": r["request_id"],
            "client_frames": r["client_frames"], "server_frames": r["server_frames"],
            "closes": r["closes"].as_array().map(|c| c.iter().map(|c| json!([c["from"], c["code"], c["reason"]])).collect::<Vec<_>>()),
            "end": r["end"], "lost_sync": r["lost_sync"],
        }),
        Some("conn") => {
            json!({"type": "conn", "conn": conn, "event": r["event"], "from": r["from"]})
        }
        Some("loss") => {
            json!({"type": "loss", "conn": conn, "side": r["side"], "effect": r["effect"]})
        }
        _ => Value::Null,
    }
}

/// Stops the live sidecar, checks it saw exactly what the capture shows, and returns its
/// records.
fn assert_live_agrees(mut sidecar: Sidecar, replayed: &[Value]) -> Vec<Value> {
    sidecar.signal("TERM");
    sidecar
        .lines
        .wait_for("the stop", |v| v["type"] == "stopped");
    let records = sidecar.lines.seen_json();
    let mut live: Vec<String> = records
        .iter()
        .map(essence)
        .filter(|v| !v.is_null())
        .map(|v| v.to_string())
        .collect();
    let mut replay: Vec<String> = replayed
        .iter()
        .map(essence)
        .filter(|v| !v.is_null())
        .map(|v| v.to_string())
        .collect();
    live.sort();
    replay.sort();
    assert_eq!(live, replay, "live and replay disagree");
    // The same incidents too (the pipeline is one): per incident, its transitions in order
    // (exposure drift of the machine's own listeners is live-only, and left out).
    let incidents = |lines: &[Value]| {
        let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for v in lines.iter().filter(|v| {
            v["type"] == "alert" && !v["rule"].as_str().unwrap_or("").starts_with("exposure")
        }) {
            by_key
                .entry(format!("{} {}", v["rule"], v["dedup_key"]))
                .or_default()
                .push(v["state"].to_string());
        }
        by_key
    };
    assert_eq!(
        incidents(&records),
        incidents(replayed),
        "live and replay name different incidents"
    );
    records
}

fn of_type<'a>(records: &'a [Value], ty: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == ty).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_upgrade_messages_and_clean_close() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite::new(upstream));
    let capture = Capture::start(nginx.dir.path(), "healthy", upstream.port());
    let mut sidecar = live(upstream.port());

    let mut ws = ws_connect(nginx.port, "/?token=secret-value")
        .await
        .expect("upgrade");
    let challenge = ws.next().await.expect("challenge").expect("frame");
    assert!(challenge
        .to_text()
        .expect("text")
        .contains("connect.challenge"));
    // The sidecar has seen the 101 (and armed the kernel's frame follower) once it reports
    // the upgrade.
    sidecar.lines.wait_for("the live upgrade record", |v| {
        v["type"] == "http" && v["outcome"] == "upgraded"
    });
    let big = "x".repeat(100_000);
    for text in ["one", "two", big.as_str()] {
        ws.send(Message::text(text)).await.expect("send");
        let echo = ws.next().await.expect("echo").expect("frame");
        assert_eq!(echo.to_text().expect("text").len(), text.len());
    }
    // A message in two fragments (text, then continuation): the upstream echoes it whole.
    for (op, part, fin) in [
        (Data::Text, "frag", false),
        (Data::Continue, "mented", true),
    ] {
        ws.send(Message::Frame(Frame::message(part, OpCode::Data(op), fin)))
            .await
            .expect("fragment");
    }
    let echo = ws.next().await.expect("echo").expect("frame");
    assert_eq!(echo.to_text().expect("text"), "fragmented");
    // A frame whose header the upstream splits across two segments.
    ws.send(Message::text("split")).await.expect("send");
    let echo = ws.next().await.expect("split answer").expect("frame");
    assert_eq!(echo.to_text().expect("text"), "split-ok");
    ws.close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    while ws.next().await.is_some() {}
    drop(ws);
    let pcap = capture.stop();

    let records = replay_json(&pcap, upstream.port());
    let http = of_type(&records, "http");
    assert_eq!(http.len(), 1, "{records:#?}");
    let x = http[0];
    assert_eq!(x["status"], 101);
    assert_eq!(x["outcome"], "upgraded");
    assert_eq!(x["upgrade_websocket"], true);
    assert_eq!(x["connection_upgrade"], true);
    assert_eq!(x["path"], "/?token=REDACTED");
    let rid = x["request_id"]
        .as_str()
        .expect("nginx forwards $request_id");
    assert_eq!(rid.len(), 32, "{rid}");
    // Joined with nginx's access log (the README's log_format): one request, by request id,
    // with its WebSocket session.
    let log = nginx.wait_log_lines(1);
    let joined = replay_with_logs(&pcap, upstream.port(), &[&log]);
    let requests = of_type(&joined, "request");
    assert_eq!(requests.len(), 1, "{joined:#?}");
    assert_eq!(requests[0]["matched"], "exact");
    assert_eq!(requests[0]["request_id"], rid);
    assert_eq!(requests[0]["edge"]["status"], 101);
    assert_eq!(requests[0]["edge"]["path"], "/?token=REDACTED");
    assert!(requests[0]["websocket"].is_object());
    assert!(requests[0]["edge"]["request_time_ns"].as_u64().is_some());
    let ws_records = of_type(&records, "websocket");
    assert_eq!(ws_records.len(), 1, "{records:#?}");
    let s = ws_records[0];
    assert_eq!(s["request_id"], rid);
    assert_eq!(
        s["client_frames"]["text"], 5,
        "4 messages and a first fragment"
    );
    assert_eq!(s["client_frames"]["continuation"], 1);
    assert_eq!(s["server_frames"]["text"], 6);
    // The recording really holds the split: a 1-byte segment from the upstream (0x81).
    let bytes = std::fs::read(&pcap).expect("pcap");
    let mut split_seen = false;
    edgewatch::replay::capture::read_capture(
        &bytes[..],
        |p| {
            if let Ok(seg) = edgewatch::replay::decode::decode(p.linktype, p.ts_ns, p.data) {
                split_seen |= seg.src.port() == upstream.port() && seg.payload == [0x81];
            }
        },
        |_| {},
    )
    .expect("read capture");
    assert!(
        split_seen,
        "no frame header split across segments in the capture"
    );
    assert_eq!(s["client_frames"]["close"], 1);
    assert_eq!(s["server_frames"]["close"], 1);
    assert!(s["server_frames"]["payload_bytes"].as_u64().expect("bytes") > 100_000);
    assert_eq!(s["closes"][0]["from"], "client");
    assert_eq!(s["closes"][0]["code"], 1000);
    assert_eq!(s["closes"][0]["reason"], "bye");
    assert_eq!(s["end"]["how"], "close_handshake");
    assert_eq!(s["lost_sync"], false);
    let conns = of_type(&records, "conn");
    assert!(conns.iter().any(|c| c["event"] == "connected"), "{conns:?}");
    // Never the payload: the 100 kB message and the token are nowhere in the output.
    let all = serde_json::to_string(&records).expect("json");
    assert!(!all.contains("xxxxxxxxxx") && !all.contains("secret-value"));
    // After the 101 the kernel followed the frames: it sent headers, not payloads. The
    // sidecar may still be draining the session's records (CI saw it 18 segments behind on a
    // loaded machine), so this waits for the count, with the usual deadline.
    sidecar.wait_metric_above("edgewatch_hop_followed_segments_total", 0.0);
    assert_live_agrees(sidecar, &records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_hop_records_only_with_records() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite::new(upstream));
    let mut sidecar = Sidecar::start_quiet(&format!(
        "[hop]\nports = [{}]\ndocker_bridges = false\n\
         [exposure]\nrescan_interval = \"1h\"\n[nat]\nenabled = false\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        upstream.port()
    ));
    get_health(nginx.port, 3).await;
    // The pipeline made the records (its counter says so) ...
    let made = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("edgewatch_records_total{kind=\"http\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while made(&sidecar.metrics()) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no http records counted: {}",
            sidecar.metrics()
        );
        tokio::task::yield_now().await;
    }
    sidecar.signal("TERM");
    let stopped = sidecar
        .lines
        .wait_for("the stopped line", |v| v["type"] == "stopped");
    assert!(stopped["records"]["http"].as_u64() >= Some(3), "{stopped}");
    // ... and stdout, the log pipeline, carried none of them.
    let lines = sidecar.lines.seen_json();
    for kind in ["http", "websocket", "conn", "request"] {
        assert!(
            lines.iter().all(|v| v["type"] != kind),
            "a {kind} record on stdout without --records: {lines:#?}"
        );
    }
    assert!(lines.iter().any(|v| v["type"] == "exposure"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_without_upgrade_headers_breaks_the_handshake() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite {
        websocket_headers: false,
        ..NginxSite::new(upstream)
    });
    let capture = Capture::start(nginx.dir.path(), "half_path", upstream.port());
    let sidecar = live(upstream.port());
    let err = ws_connect(nginx.port, "/")
        .await
        .expect_err("no 101 through this proxy");
    assert!(err.to_string().contains("426"), "{err}");
    let pcap = capture.stop();

    let records = replay_json(&pcap, upstream.port());
    let http = of_type(&records, "http");
    assert_eq!(http.len(), 1, "{records:#?}");
    assert_eq!(
        http[0]["upgrade_websocket"], false,
        "the hop never saw Upgrade"
    );
    assert_eq!(http[0]["status"], 426);
    assert!(of_type(&records, "websocket").is_empty());
    let log = nginx.wait_log_lines(1);
    let joined = replay_with_logs(&pcap, upstream.port(), &[&log]);
    let requests = of_type(&joined, "request");
    assert_eq!(requests.len(), 1, "{joined:#?}");
    assert_eq!(requests[0]["matched"], "exact");
    assert_eq!(requests[0]["edge"]["status"], 426);
    assert_eq!(requests[0]["hop"]["upgrade_websocket"], false);
    assert_live_agrees(sidecar, &records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_read_timeout_closes_idle_session_without_close_frame() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite {
        read_timeout: "2s",
        ..NginxSite::new(upstream)
    });
    let capture = Capture::start(nginx.dir.path(), "idle_timeout", upstream.port());
    let sidecar = live(upstream.port());
    let mut ws = ws_connect(nginx.port, "/").await.expect("upgrade");
    ws.next().await.expect("challenge").expect("frame");
    // Idle: nginx ends the tunnel after its read timeout; the client sees the stream end
    // without a close frame (what browsers report as 1006).
    let mut saw_close_frame = false;
    while let Some(msg) = ws.next().await {
        if let Ok(Message::Close(_)) = msg {
            saw_close_frame = true;
        }
        if msg.is_err() {
            break;
        }
    }
    assert!(!saw_close_frame);
    let pcap = capture.stop();

    let records = replay_json(&pcap, upstream.port());
    let s = of_type(&records, "websocket");
    assert_eq!(s.len(), 1, "{records:#?}");
    assert_eq!(s[0]["end"]["how"], "fin_without_close");
    assert_eq!(
        s[0]["end"]["from"], "client",
        "the proxy (the hop's client) ended it"
    );
    assert!(s[0]["closes"].as_array().expect("closes").is_empty());
    let idle = s[0]["idle_before_end_ns"].as_u64().expect("idle");
    assert!(
        idle >= 1_500_000_000,
        "idle {idle} ns before the proxy's 2 s timeout fired"
    );
    assert_live_agrees(sidecar, &records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_upstream_port_is_refused() {
    support::require_root();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], support::closed_port()));
    let nginx = Nginx::start(&NginxSite::new(dead));
    let capture = Capture::start(nginx.dir.path(), "refused", dead.port());
    let sidecar = live(dead.port());
    let err = ws_connect(nginx.port, "/").await.expect_err("502");
    assert!(err.to_string().contains("502"), "{err}");
    let pcap = capture.stop();

    let records = replay_json(&pcap, dead.port());
    let conns = of_type(&records, "conn");
    assert!(!conns.is_empty(), "{records:#?}");
    assert!(conns.iter().all(|c| c["event"] == "refused"), "{conns:#?}");
    assert!(of_type(&records, "http").is_empty());
    // The edge's 502 is joined to the refused connect that caused it.
    let log = nginx.wait_log_lines(1);
    let joined = replay_with_logs(&pcap, dead.port(), &[&log]);
    let requests = of_type(&joined, "request");
    assert_eq!(requests.len(), 1, "{joined:#?}");
    assert_eq!(requests[0]["edge"]["status"], 502);
    assert!(requests[0]["refused"].is_object(), "{:#?}", requests[0]);
    assert!(requests[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("refused")));
    let live = assert_live_agrees(sidecar, &records);
    // Live, the kernel names the process that tried to connect: the proxy.
    let refused = of_type(&live, "conn");
    assert!(!refused.is_empty());
    assert!(
        refused.iter().all(|c| c["process"]["comm"] == "nginx"),
        "{refused:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_session_with_fin_and_with_rst() {
    support::require_root();
    for (word, how) in [("die", "fin_without_close"), ("reset", "reset")] {
        let upstream = start_upstream().await;
        let nginx = Nginx::start(&NginxSite::new(upstream));
        let capture = Capture::start(nginx.dir.path(), word, upstream.port());
        let sidecar = live(upstream.port());
        let mut ws = ws_connect(nginx.port, "/").await.expect("upgrade");
        ws.next().await.expect("challenge").expect("frame");
        ws.send(Message::text(word)).await.expect("send");
        while let Some(Ok(_)) = ws.next().await {}
        let pcap = capture.stop();

        let records = replay_json(&pcap, upstream.port());
        let s = of_type(&records, "websocket");
        assert_eq!(s.len(), 1, "{word}: {records:#?}");
        assert_eq!(s[0]["end"]["how"], how, "{word}: {:#?}", s[0]);
        assert_eq!(s[0]["end"]["from"], "server", "{word}");
        if word == "reset" {
            assert!(of_type(&records, "conn")
                .iter()
                .any(|c| c["event"] == "reset" && c["from"] == "server"));
        }
        let live = assert_live_agrees(sidecar, &records);
        if word == "reset" {
            // The kernel sent that reset for the upstream process (this test binary).
            let me = std::process::id();
            assert!(
                of_type(&live, "conn")
                    .iter()
                    .any(|c| c["event"] == "reset" && c["process"]["pid"] == me),
                "{live:#?}"
            );
        }
    }
}

/// The upstream as a process of its own (the `ws_upstream` example, built by `cargo test`).
struct UpstreamProcess {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl UpstreamProcess {
    fn start() -> Self {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("test binary path");
        let bin = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("examples/ws_upstream"))
            .expect("target dir");
        let mut child = std::process::Command::new(&bin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; a plain `cargo test` builds the examples (a filtered run may not: \
                     `cargo build --examples` first)",
                    bin.display()
                )
            });
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse::<u16>().ok())
            .expect("listening PORT");
        Self {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the upstream");
        self.child.wait().expect("reap");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_process_killed_mid_session() {
    support::require_root();
    let upstream = UpstreamProcess::start();
    let nginx = Nginx::start(&NginxSite::new(upstream.addr));
    let capture = Capture::start(nginx.dir.path(), "killed", upstream.addr.port());
    let sidecar = live(upstream.addr.port());
    let mut ws = ws_connect(nginx.port, "/").await.expect("upgrade");
    ws.next().await.expect("challenge").expect("frame");
    ws.send(Message::text("still here?")).await.expect("send");
    ws.next().await.expect("echo").expect("frame");
    // SIGKILL: the kernel closes the dead process's socket (FIN: nothing unread was waiting).
    let port = upstream.addr.port();
    upstream.kill();
    while let Some(Ok(_)) = ws.next().await {}
    let pcap = capture.stop();

    let records = replay_json(&pcap, port);
    let s = of_type(&records, "websocket");
    assert_eq!(s.len(), 1, "{records:#?}");
    assert_eq!(s[0]["end"]["how"], "fin_without_close", "{:#?}", s[0]);
    assert_eq!(s[0]["end"]["from"], "server");
    assert!(s[0]["closes"].as_array().expect("closes").is_empty());
    assert_live_agrees(sidecar, &records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_join_survives_log_rotation_exactly_once() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite {
        websocket_headers: false,
        upstream_keepalive: Some(4),
        ..NginxSite::new(upstream)
    });
    let state = tempfile::tempdir().expect("state dir");
    let log = nginx.access_log_path();
    std::fs::write(&log, b"").expect("create the log");
    let mut sidecar = live_with_log(upstream.port(), &log, state.path());
    get_health(nginx.port, 3).await;
    nginx.wait_log_lines(3);
    // logrotate's way: rename, then tell nginx to reopen (USR1); more traffic meanwhile.
    std::fs::rename(&log, log.with_extension("log.1")).expect("rotate");
    get_health(nginx.port, 2).await;
    nginx.reopen_logs();
    get_health(nginx.port, 3).await;
    nginx.wait_log_lines(3);
    let mut ids = std::collections::HashMap::new();
    while ids.len() < 8 {
        let r = sidecar
            .lines
            .wait_for("a joined request", |v| v["type"] == "request");
        assert_eq!(r["matched"], "exact", "{r}");
        let rid = r["request_id"].as_str().expect("rid").to_owned();
        *ids.entry(rid).or_insert(0) += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "each request once: {ids:?}");
    // Garbage lines are counted, not fatal.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"not a log line\n"))
        .expect("append garbage");
    get_health(nginx.port, 1).await;
    let r = sidecar
        .lines
        .wait_for("the request after the garbage", |v| v["type"] == "request");
    assert_eq!(r["matched"], "exact", "{r}");
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains("edgewatch_edge_lines_total{result=\"malformed\"} 1"),
        "{metrics}"
    );
    // Each of the nine requests counted once, by how it was joined (a record printed is
    // counted before it is printed).
    for (matched, n) in [
        ("exact", 9),
        ("inferred", 0),
        ("edge_only", 0),
        ("hop_only", 0),
    ] {
        let line = format!("edgewatch_joined_requests_total{{matched=\"{matched}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line}{metrics}");
    }
    // The stopped line says the same.
    sidecar.signal("TERM");
    let stopped = sidecar
        .lines
        .wait_for("the stopped line", |v| v["type"] == "stopped");
    assert_eq!(stopped["joined"]["exact"], 9, "{stopped}");
    assert_eq!(stopped["joined"]["hop_only"], 0, "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_share_one_upstream_connection() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite {
        websocket_headers: false,
        upstream_keepalive: Some(4),
        ..NginxSite::new(upstream)
    });
    let capture = Capture::start(nginx.dir.path(), "keepalive", upstream.port());
    let sidecar = live(upstream.port());
    get_health(nginx.port, 3).await;
    let pcap = capture.stop();

    let records = replay_json(&pcap, upstream.port());
    let http = of_type(&records, "http");
    assert_eq!(http.len(), 3, "{records:#?}");
    let conn = &http[0]["conn"];
    assert!(
        http.iter().all(|x| &x["conn"] == conn),
        "one upstream connection"
    );
    let indexes: Vec<u64> = http
        .iter()
        .map(|x| x["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indexes, vec![0, 1, 2]);
    assert!(http
        .iter()
        .all(|x| x["status"] == 200 && x["outcome"] == "complete"));
    let ids: std::collections::HashSet<&str> = http
        .iter()
        .map(|x| x["request_id"].as_str().expect("rid"))
        .collect();
    assert_eq!(ids.len(), 3, "one request id per request");
    let log = nginx.wait_log_lines(3);
    let joined = replay_with_logs(&pcap, upstream.port(), &[&log]);
    let requests = of_type(&joined, "request");
    assert_eq!(requests.len(), 3, "{joined:#?}");
    assert!(requests.iter().all(|r| r["matched"] == "exact"
        && r["edge"]["status"] == 200
        && r["hop"]["status"] == 200));
    assert_live_agrees(sidecar, &records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_requests_join_exactly() {
    support::require_root();
    let upstream = start_upstream().await;
    let caddy = Caddy::start(upstream);
    let capture = Capture::start(caddy.dir.path(), "caddy", upstream.port());
    // A WebSocket session (Caddy proxies upgrades by itself) and a plain request.
    let mut ws = ws_connect(caddy.port, "/ws").await.expect("upgrade");
    ws.next().await.expect("challenge").expect("frame");
    ws.send(Message::text("hello")).await.expect("send");
    ws.next().await.expect("echo").expect("frame");
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    get_health(caddy.port, 1).await;
    let log = caddy.wait_log_lines(2);
    let pcap = capture.stop();

    let joined = replay_with_logs(&pcap, upstream.port(), &[&log]);
    let requests = of_type(&joined, "request");
    assert_eq!(requests.len(), 2, "{joined:#?}");
    assert!(
        requests.iter().all(|r| r["matched"] == "exact"),
        "{requests:#?}"
    );
    let ws_req = requests
        .iter()
        .find(|r| r["websocket"].is_object())
        .expect("the upgrade, joined with its session");
    // Caddy 2.6 logs a WebSocket with status 0; the hop has the 101.
    assert_eq!(ws_req["edge"]["status"], 0);
    assert_eq!(ws_req["hop"]["status"], 101);
    let plain = requests
        .iter()
        .find(|r| r["websocket"].is_null())
        .expect("the plain request");
    assert_eq!(plain["edge"]["status"], 200);
    assert_eq!(plain["hop"]["path"], "/health");
}
