//! The alert rules on real traffic: the live sidecar (real probes) on the hop between real
//! nginx or Caddy and a real WebSocket upstream, with real WebSocket clients. Each test
//! reproduces one failure of the runbook, waits for its alert with the right evidence, removes
//! the cause and waits for the resolution; a healthy run with many clients fires nothing.
mod support;

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::{
    hop::{
        start_upstream, start_upstream_on, ws_connect, ws_connect_origin, Caddy, Nginx, NginxSite,
    },
    Lines, Sidecar,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The live sidecar on this upstream port (also the watched port), following `log` when
/// given; incidents resolve after 3 s without evidence, no cooldown; `extra` tunes rules.
fn sidecar(upstream_port: u16, log: Option<&Path>, extra: &str) -> (Sidecar, tempfile::TempDir) {
    sidecar_quiet(upstream_port, log, "3s", extra)
}

/// The same with another quiet period (for incidents the test resolves itself).
fn sidecar_quiet(
    upstream_port: u16,
    log: Option<&Path>,
    quiet: &str,
    extra: &str,
) -> (Sidecar, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let edge = log.map_or(String::new(), |log| {
        format!(
            "[edge]\naccess_logs = [{log:?}]\nstate_dir = {:?}\npoll_interval = \"50ms\"\n",
            state.path()
        )
    });
    let s = Sidecar::start(&format!(
        "[hop]\nports = [{upstream_port}]\ndocker_bridges = false\n{edge}\
         [exposure]\nwatched_ports = [{upstream_port}]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [alerts]\nquiet_period = \"{quiet}\"\ncooldown = \"0s\"\n{extra}\n"
    ));
    (s, state)
}

fn alert(lines: &mut Lines, rule: &str, state: &str) -> Value {
    lines.wait_for(&format!("{rule} {state}"), |v| {
        v["type"] == "alert" && v["rule"] == rule && v["state"] == state
    })
}

/// A line already seen, or the next one that matches.
fn seen_or_next(lines: &mut Lines, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    match lines.seen_json().into_iter().find(|v| pred(v)) {
        Some(v) => v,
        None => lines.wait_for(what, pred),
    }
}

/// The next webhook body that carries an alert of `rule` (exposure drift elsewhere on the
/// machine reaches the webhook too).
async fn next_body_with(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Option<String>, Value)>,
    rule: &str,
    pred: impl Fn(&Value) -> bool,
) -> (String, Option<String>, Value) {
    loop {
        let (path, auth, body) = tokio::time::timeout(support::wait_limit(), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no webhook body with {rule} in time"))
            .expect("receiver running");
        let list = body.get("alerts").unwrap_or(&body).clone();
        let found = list.as_array().and_then(|l| {
            l.iter()
                .find(|a| (a["labels"]["alertname"] == rule || a["rule"] == rule) && pred(a))
                .cloned()
        });
        if let Some(a) = found {
            return (path, auth, a);
        }
    }
}

fn items(a: &Value) -> &Vec<Value> {
    a["evidence"]["items"].as_array().expect("evidence items")
}

/// One plain request through the proxy; returns the status line.
async fn get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_of_nginx_is_named_with_its_setting_and_value() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite {
        read_timeout: "2s",
        ..NginxSite::new(upstream)
    });
    let (mut sc, _state) = sidecar(upstream.port(), None, "");
    // Two sessions go idle; nginx ends both after its 2 s read timeout (no close frame).
    let mut a = ws_connect(nginx.port, "/a").await.expect("upgrade");
    let mut b = ws_connect(nginx.port, "/b").await.expect("upgrade");
    for ws in [&mut a, &mut b] {
        ws.next().await.expect("challenge").expect("frame");
    }
    for ws in [&mut a, &mut b] {
        while let Some(Ok(_)) = ws.next().await {}
    }
    let fired = alert(&mut sc.lines, "hop.timeout_disconnect", "firing");
    let idle = fired["evidence"]["detail"]["observed_idle_s"]
        .as_f64()
        .expect("observed idle");
    assert!(
        (1.5..3.0).contains(&idle),
        "nginx was set to 2 s: {fired:#}"
    );
    let summary = fired["summary"].as_str().expect("summary");
    assert!(summary.contains("about 2 s"), "{summary}");
    assert!(summary.contains("proxy_read_timeout"), "{summary}");
    assert!(fired["first_move"].as_str().expect("move").contains("600"));
    assert_eq!(fired["evidence"]["counts"]["sessions"], 2);
    let ids: Vec<&str> = items(&fired)
        .iter()
        .filter_map(|i| i["request_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "both sessions' request ids: {fired:#}");
    for i in items(&fired) {
        assert_eq!(i["end"]["how"], "fin_without_close");
        assert_eq!(i["upstream"], upstream.to_string());
    }
    // Nothing more times out: it resolves after the quiet period.
    let resolved = alert(&mut sc.lines, "hop.timeout_disconnect", "resolved");
    assert_eq!(resolved["dedup_key"], fired["dedup_key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_reload_dropping_every_websocket_is_a_reload_burst() {
    support::require_root();
    let upstream = start_upstream().await;
    let (caddy, admin) = Caddy::start_reloadable(upstream);
    let (mut sc, _state) = sidecar(upstream.port(), None, "");
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut ws = ws_connect(caddy.port, &format!("/s{i}"))
            .await
            .expect("upgrade");
        ws.next().await.expect("challenge").expect("frame");
        clients.push(ws);
    }
    caddy.reload(admin);
    let fired = alert(&mut sc.lines, "hop.reload_burst", "firing");
    assert!(
        fired["evidence"]["counts"]["sessions"].as_u64() >= Some(5),
        "{fired:#}"
    );
    assert!(items(&fired)
        .iter()
        .all(|i| i["upstream"] == upstream.to_string()));
    assert!(fired["first_move"]
        .as_str()
        .expect("move")
        .contains("reload"));
    // Every client lost its session.
    for ws in &mut clients {
        while let Some(Ok(_)) = ws.next().await {}
    }
    alert(&mut sc.lines, "hop.reload_burst", "resolved");
    // Not mistaken for an idle timeout: the sessions were not idle for long.
    assert!(!sc
        .lines
        .seen_json()
        .iter()
        .any(|v| v["type"] == "alert" && v["rule"] == "hop.timeout_disconnect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_dropping_upgrade_headers_is_the_half_path_until_fixed() {
    support::require_root();
    let upstream = start_upstream().await;
    let broken = Nginx::start(&NginxSite {
        websocket_headers: false,
        ..NginxSite::new(upstream)
    });
    // Resolved by the fix below, not by a quiet period.
    let (mut sc, _state) =
        sidecar_quiet(upstream.port(), Some(&broken.access_log_path()), "10m", "");
    let err = ws_connect(broken.port, "/ws").await.expect_err("no 101");
    assert!(err.to_string().contains("426"), "{err}");
    let fired = alert(&mut sc.lines, "hop.upgrade_failure", "firing");
    assert!(
        fired["summary"]
            .as_str()
            .expect("summary")
            .contains("half-path"),
        "{fired:#}"
    );
    assert!(fired["first_move"]
        .as_str()
        .expect("move")
        .contains("proxy_set_header Upgrade"));
    let e = &items(&fired)[0];
    assert_eq!(e["upgrade_header"], false);
    assert_eq!(e["status"], 426);
    assert_eq!(e["path"], "/ws");
    assert!(
        e["request_id"].as_str().is_some_and(|r| r.len() == 32),
        "{e}"
    );
    // The join sees the edge's side too: the client did ask nginx for the upgrade.
    seen_or_next(&mut sc.lines, "the joined request", |v| {
        v["type"] == "request" && v["edge"]["upgrade"] == "websocket" && v["edge"]["status"] == 426
    });
    // The fix: a location that forwards the headers. The first upgrade that works resolves it.
    let fixed = Nginx::start(&NginxSite::new(upstream));
    let mut ws = ws_connect(fixed.port, "/ws").await.expect("upgrade");
    ws.next().await.expect("challenge").expect("frame");
    let resolved = alert(&mut sc.lines, "hop.upgrade_failure", "resolved");
    assert_eq!(resolved["evidence"]["counts"]["failed_upgrades"], 1);
    ws.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_the_upstream_refuses_are_listed_with_the_missing_one() {
    support::require_root();
    let upstream = start_upstream().await;
    let caddy = Caddy::start(upstream);
    let nginx = Nginx::start(&NginxSite::new(upstream));
    let (mut sc, _state) = sidecar(
        upstream.port(),
        None,
        "[alerts.origin_rejected]\nallowed_origins = [\"https://gw.example.com\"]\n",
    );
    // Through Caddy: 101, then the upstream closes with 1008 after the first message.
    let mut ws = ws_connect_origin(caddy.port, "/", "https://blocked.example.com")
        .await
        .expect("upgrade");
    ws.next().await.expect("challenge").expect("frame");
    ws.send(Message::text(r#"{"type":"req","method":"connect"}"#))
        .await
        .expect("send");
    let mut code = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Close(Some(c)) = msg {
            code = Some(u16::from(c.code));
        }
    }
    assert_eq!(code, Some(1008));
    let fired = alert(&mut sc.lines, "hop.origin_rejected", "firing");
    let e = &items(&fired)[0];
    assert_eq!(e["origin"], "https://blocked.example.com");
    assert_eq!(e["close_code"], 1008);
    assert_eq!(e["close_reason"], "origin not allowed");
    assert!(
        fired["summary"]
            .as_str()
            .expect("summary")
            .contains("allowedOrigins lacks https://blocked.example.com"),
        "{fired:#}"
    );
    // Through nginx: refused at the handshake with 403; it joins the same incident.
    let err = ws_connect_origin(nginx.port, "/", "https://forbidden.example.com")
        .await
        .expect_err("403");
    assert!(err.to_string().contains("403"), "{err}");
    let resolved = alert(&mut sc.lines, "hop.origin_rejected", "resolved");
    assert_eq!(resolved["evidence"]["counts"]["closes_1008"], 1);
    assert_eq!(resolved["evidence"]["counts"]["handshakes_403"], 1);
    assert_eq!(
        resolved["evidence"]["detail"]["missing_from_allowed_origins"],
        serde_json::json!([
            "https://blocked.example.com",
            "https://forbidden.example.com"
        ])
    );
    assert!(
        sc.lines
            .seen_json()
            .iter()
            .filter(|v| v["type"] == "alert" && v["rule"] == "hop.origin_rejected")
            .count()
            == 2,
        "one incident: one firing, one resolved"
    );
}

/// The Gateway's own port with nothing listening: refused connects and the edge's 502 they
/// explain are one upstream-down incident once past the grace period (1 s here), resolved by
/// the next connect that succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_port_refusing_is_the_upstream_down_until_it_listens() {
    support::require_root();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], support::closed_port()));
    let nginx = Nginx::start(&NginxSite::new(dead));
    // Resolved by the fix below, not by a quiet period.
    let (mut sc, _state) = sidecar_quiet(
        dead.port(),
        Some(&nginx.access_log_path()),
        "10m",
        "[alerts.upstream_down]\ngrace = \"1s\"\n",
    );
    assert_eq!(get(nginx.port, "/").await, "HTTP/1.1 502 Bad Gateway");
    let fired = alert(&mut sc.lines, "hop.upstream_down", "firing");
    assert_eq!(fired["severity"], "critical");
    let e = &items(&fired)[0];
    assert_eq!(e["upstream"], dead.to_string());
    assert_eq!(e["process"]["comm"], "nginx", "{e}");
    assert!(fired["first_move"]
        .as_str()
        .expect("move")
        .contains("The Gateway is down"));
    // The edge's 502 is joined to the refusal and joins the incident.
    let request = seen_or_next(&mut sc.lines, "the 502", |v| {
        v["type"] == "request" && v["edge"]["status"] == 502
    });
    assert!(request["refused"].is_object(), "{request:#}");
    // No stale-port diagnosis: the proxy points at the Gateway's port.
    assert!(!sc
        .lines
        .seen_json()
        .iter()
        .any(|v| v["rule"] == "hop.stale_upstream_port"));
    // The fix: the Gateway listens on that port again; the next connect resolves it.
    let _up = start_upstream_on(dead.port()).await;
    assert_eq!(get(nginx.port, "/health").await, "HTTP/1.1 200 OK");
    let resolved = alert(&mut sc.lines, "hop.upstream_down", "resolved");
    assert!(resolved["evidence"]["counts"]["refused_connects"].as_u64() >= Some(1));
    assert_eq!(resolved["evidence"]["counts"]["edge_errors"], 1);
    let edge_item = items(&resolved)
        .iter()
        .find(|i| i["edge_status"] == 502)
        .expect("the edge's 502 in the evidence");
    assert_eq!(edge_item["request_id"], request["request_id"]);
}

/// The proxy pointed at another port than the Gateway's: the edge's 502 names both, and the
/// socket inventory says nothing listens where the proxy sends requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_pointed_at_another_port_is_a_stale_port_naming_both() {
    support::require_root();
    let gateway = start_upstream().await;
    let stale = std::net::SocketAddr::from(([127, 0, 0, 1], support::closed_port()));
    let nginx = Nginx::start(&NginxSite::new(stale));
    let (mut sc, _state) = sidecar_quiet(
        gateway.port(),
        Some(&nginx.access_log_path()),
        "10m",
        "[alerts.stale_upstream_port]\nproxies = [\"nginx\"]\n",
    );
    assert_eq!(get(nginx.port, "/").await, "HTTP/1.1 502 Bad Gateway");
    // (Other tests' nginx fail to connect to their own dead ports meanwhile: this one's key.)
    let key = format!("hop.stale_upstream_port:{stale}");
    let of_key = |state: &'static str| {
        let key = key.clone();
        move |v: &Value| {
            v["type"] == "alert" && v["dedup_key"] == key.as_str() && v["state"] == state
        }
    };
    let fired = sc.lines.wait_for("the stale-port alert", of_key("firing"));
    assert_eq!(fired["severity"], "critical");
    let summary = fired["summary"].as_str().expect("summary");
    assert!(summary.contains(&stale.to_string()), "{summary}");
    assert!(summary.contains("nothing listens there"), "{summary}");
    assert!(summary.contains(&gateway.to_string()), "{summary}");
    // Something answers there now: resolved, with both views in the evidence: nginx's
    // failed connect (the kernel) and the edge's 502 (its access log).
    let _up = start_upstream_on(stale.port()).await;
    assert_eq!(get(nginx.port, "/health").await, "HTTP/1.1 200 OK");
    let resolved = sc.lines.wait_for("its resolution", of_key("resolved"));
    let all = items(&resolved);
    assert!(all.iter().any(|i| i["edge_status"] == 502), "{resolved:#}");
    assert!(
        all.iter().any(|i| i["process"]["comm"] == "nginx"),
        "{resolved:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_resetting_its_sessions_is_a_reset_storm() {
    support::require_root();
    let upstream = start_upstream().await;
    let caddy = Caddy::start(upstream);
    let (mut sc, _state) = sidecar(
        upstream.port(),
        None,
        "[alerts.reset_storm]\ncount = 3\nwindow = \"1m\"\n",
    );
    for i in 0..3 {
        let mut ws = ws_connect(caddy.port, &format!("/r{i}"))
            .await
            .expect("upgrade");
        ws.next().await.expect("challenge").expect("frame");
        ws.send(Message::text("reset")).await.expect("send");
        while let Some(Ok(_)) = ws.next().await {}
    }
    let fired = alert(&mut sc.lines, "hop.reset_storm", "firing");
    assert!(items(&fired)
        .iter()
        .all(|i| i["from"] == "server" && i["upstream"] == upstream.to_string()));
    assert!(fired["summary"]
        .as_str()
        .expect("summary")
        .contains("resets"));
    alert(&mut sc.lines, "hop.reset_storm", "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_fires_over_the_percentile_and_resolves_when_fast() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite::new(upstream));
    // Resolved by fast answers, not by a quiet period.
    let (mut sc, _state) = sidecar_quiet(
        upstream.port(),
        None,
        "10m",
        "[alerts.upstream_slowness]\npercentile = 50\nthreshold = \"100ms\"\nmin_samples = 3\nwindow = \"1m\"\n",
    );
    for _ in 0..3 {
        assert_eq!(get(nginx.port, "/slow").await, "HTTP/1.1 200 OK");
    }
    let fired = alert(&mut sc.lines, "hop.upstream_slowness", "firing");
    let ttfb = fired["evidence"]["detail"]["ttfb_s"]
        .as_f64()
        .expect("ttfb");
    assert!(
        (0.25..5.0).contains(&ttfb),
        "the upstream takes 300 ms: {fired:#}"
    );
    assert!(fired["evidence"]["detail"]["slowest"][0]["request_id"].is_string());
    // Fast again: the median falls under the threshold.
    for _ in 0..4 {
        assert_eq!(get(nginx.port, "/health").await, "HTTP/1.1 200 OK");
    }
    let resolved = alert(&mut sc.lines, "hop.upstream_slowness", "resolved");
    assert_eq!(resolved["evidence"]["counts"]["slow_exchanges"], 3);
}

/// A webhook receiver: answers 500 to the first `fail_first` POSTs, then 200; hands every
/// received body (and its Authorization header) to the test.
async fn receiver(
    fail_first: usize,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(String, Option<String>, Value)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let k = s.read(&mut chunk).await.unwrap_or(0);
                if k == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..k]);
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..at]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let mut body = buf[at + 4..].to_vec();
                    while body.len() < len {
                        let k = s.read(&mut chunk).await.unwrap_or(0);
                        if k == 0 {
                            break;
                        }
                        body.extend_from_slice(&chunk[..k]);
                    }
                    break (head, body);
                }
            };
            n += 1;
            let status = if n <= fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            let auth = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("authorization")
                    .then(|| v.trim().to_owned())
            });
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if n > fail_first {
                let _ = tx.send((path, auth, body));
            }
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_alertmanager_and_json_payloads_retried_after_a_failure() {
    support::require_root();
    let (am_port, mut am) = receiver(1).await;
    let (json_port, mut plain) = receiver(0).await;
    let token_file = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token_file.path(), "s3cret-token\n").expect("write token");
    let dead = support::closed_port();
    let (mut sc, _state) = sidecar_quiet(
        dead,
        None,
        "10m",
        &format!(
            "[alerts.upstream_down]\ngrace = \"0s\"\n\
             [[alerts.webhooks]]\nurl = \"http://127.0.0.1:{am_port}/api/v2/alerts\"\n\
             bearer_token_file = {:?}\nmax_backoff = \"1s\"\n\
             [[alerts.webhooks]]\nurl = \"http://127.0.0.1:{json_port}/hook\"\nformat = \"json\"\n",
            token_file.path()
        ),
    );
    // A connect to the Gateway's port while nothing listens: the upstream is down.
    assert!(std::net::TcpStream::connect(("127.0.0.1", dead)).is_err());
    alert(&mut sc.lines, "hop.upstream_down", "firing");
    // Alertmanager's first POST failed: the sidecar says so and retries.
    seen_or_next(&mut sc.lines, "the webhook retry", |v| {
        v["type"] == "webhook" && v["event"] == "retrying"
    });
    let rule = "hop.upstream_down";
    let (path, auth, a) = next_body_with(&mut am, rule, |_| true).await;
    assert_eq!(path, "/api/v2/alerts");
    assert_eq!(auth.as_deref(), Some("Bearer s3cret-token"));
    assert_eq!(a["labels"]["severity"], "critical");
    assert!(a["startsAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(a.get("endsAt").is_none());
    let evidence: Value =
        serde_json::from_str(a["annotations"]["evidence"].as_str().expect("evidence"))
            .expect("evidence is JSON");
    assert_eq!(
        evidence["items"][0]["upstream"],
        format!("127.0.0.1:{dead}")
    );
    let (path, auth, a) = next_body_with(&mut plain, rule, |_| true).await;
    assert_eq!(path, "/hook");
    assert_eq!(auth, None);
    assert_eq!(a["state"], "firing");
    // Fixed: something listens; a connect resolves it and the receivers hear the end.
    let _up = start_upstream_on(dead).await;
    tokio::net::TcpStream::connect(("127.0.0.1", dead))
        .await
        .expect("connect");
    alert(&mut sc.lines, "hop.upstream_down", "resolved");
    let (_, _, ended) = next_body_with(&mut am, rule, |a| a.get("endsAt").is_some()).await;
    assert!(ended["endsAt"].as_str() >= ended["startsAt"].as_str());
    let m = sc.metrics();
    assert!(
        m.lines().any(
            |l| l.starts_with("edgewatch_webhook_alerts_total{result=\"sent\"}")
                && !l.ends_with(" 0")
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_run_with_many_clients_fires_no_alert() {
    support::require_root();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite::new(upstream));
    let caddy = Caddy::start(upstream);
    let (mut sc, _state) = sidecar(upstream.port(), Some(&nginx.access_log_path()), "");
    let mut tasks = Vec::new();
    for i in 0..24u16 {
        let port = if i % 2 == 0 { nginx.port } else { caddy.port };
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_connect(port, &format!("/c{i}")).await.expect("upgrade");
            ws.next().await.expect("challenge").expect("frame");
            for m in 0..20 {
                if m % 5 == 0 {
                    ws.send(Message::Ping(vec![1, 2, 3].into()))
                        .await
                        .expect("ping");
                }
                ws.send(Message::text(format!("msg {m}")))
                    .await
                    .expect("send");
                loop {
                    match ws.next().await.expect("reply").expect("frame") {
                        Message::Text(t) => {
                            assert_eq!(t.as_str(), format!("msg {m}"));
                            break;
                        }
                        Message::Pong(_) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            ws.close(None).await.expect("close");
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    for _ in 0..20 {
        assert_eq!(get(nginx.port, "/health").await, "HTTP/1.1 200 OK");
        assert_eq!(get(caddy.port, "/health").await, "HTTP/1.1 200 OK");
    }
    for t in tasks {
        t.await.expect("client");
    }
    // Wait until the sidecar has seen every session end, then stop it.
    for _ in 0..24 {
        sc.lines.wait_for("a session", |v| v["type"] == "websocket");
    }
    sc.signal("TERM");
    sc.lines.wait_for("the stop", |v| v["type"] == "stopped");
    let seen = sc.lines.seen_json();
    let sessions: Vec<&Value> = seen.iter().filter(|v| v["type"] == "websocket").collect();
    assert_eq!(sessions.len(), 24);
    assert!(
        sessions
            .iter()
            .all(|s| s["end"]["how"] == "close_handshake"),
        "{sessions:#?}"
    );
    // No hop rule fired, and the watched (loopback-bound) upstream is no drift. Exposure
    // alerts about other ports may come from tests running beside this one.
    let alerts: Vec<&Value> = seen
        .iter()
        .filter(|v| {
            v["type"] == "alert"
                && (v["rule"].as_str().is_some_and(|r| r.starts_with("hop."))
                    || v["evidence"]["port"] == upstream.port())
        })
        .collect();
    assert!(alerts.is_empty(), "{alerts:#?}");
    assert_eq!(
        seen.iter()
            .filter(|v| v["type"] == "http" && v["path"] == "/health")
            .count(),
        40,
        "every plain request was seen"
    );
}
