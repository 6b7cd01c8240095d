//! The diagnoses on the real OpenClaw Gateway (npm `openclaw` on Node 24, in its own network
//! namespace on 18789, nginx in front, clients in another namespace), live: a start is not an
//! alarm, a crash is one critical incident that says so and ends when the Gateway is back
//! (another namespace's socket on 18789 beside it changes neither), and a proxy pointed at
//! another port is named with both ports.
mod support;

use std::net::SocketAddr;

use futures_util::StreamExt;
use serde_json::Value;
use support::{
    gateway::{Gateway, GatewayConfig, Linked, CONTROL_UI_CONNECT, PORT},
    hop::{ws_over, Caddy, Capture, Nginx, NginxSite},
    Sidecar, SocketHolder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The sidecar on the Gateway's hop (its veth pair), following `logs`, with this grace.
fn sidecar(gw: &Gateway, logs: &[std::path::PathBuf], grace: &str) -> (Sidecar, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state");
    let logs = logs
        .iter()
        .map(|l| format!("{l:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sc = Sidecar::start(&format!(
        "[hop]\nports = [{PORT}]\ninterfaces = [{:?}]\ndocker_bridges = false\n\
         [edge]\naccess_logs = [{logs}]\nstate_dir = {:?}\npoll_interval = \"50ms\"\n\
         [exposure]\nwatched_ports = [{}]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [alerts]\nquiet_period = \"10m\"\ncooldown = \"0s\"\n\
         [alerts.upstream_down]\ngrace = \"{grace}\"\n\
         [alerts.stale_upstream_port]\nproxies = [\"nginx\"]\n",
        gw.link.host_if,
        state.path(),
        support::free_port(),
    ));
    (sc, state)
}

/// nginx for the clients' namespace, in front of `upstream`.
fn nginx(clients: &Linked, upstream: SocketAddr) -> Nginx {
    Nginx::start(&NginxSite {
        listen: Some(clients.host_ip.into()),
        ..NginxSite::new(upstream)
    })
}

/// A plain GET from the clients' namespace through nginx; the status line.
async fn get(clients: &Linked, nginx: &Nginx, path: &str) -> String {
    let mut s = clients.connect(SocketAddr::from((clients.host_ip, nginx.port)));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n\r\n",
        clients.host_ip, nginx.port
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.expect("read");
    String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A Gateway (its namespace and veth pair ready, not yet waited for), clients in another
/// namespace, nginx in front of the Gateway's `port` (18789, or another for a stale
/// `proxy_pass`), and the sidecar on the hop with this grace for the upstream-down rule.
struct Lab {
    gw: Gateway,
    clients: Linked,
    front: Nginx,
    sc: Sidecar,
    _state: tempfile::TempDir,
}

impl Lab {
    fn new(trust_the_proxy: bool, port: u16, grace: &str) -> Self {
        let gw = Gateway::spawn(&GatewayConfig {
            trust_the_proxy,
            allowed_origins: vec!["https://gw.test".into()],
        });
        let clients = Linked::new('c', 232);
        let front = nginx(&clients, SocketAddr::from((gw.link.ns_ip, port)));
        let (sc, _state) = sidecar(&gw, &[front.access_log_path()], grace);
        Self {
            gw,
            clients,
            front,
            sc,
            _state,
        }
    }
}

/// tcpdump on the Gateway's hop while a scenario runs. With
/// `EDGEWATCH_SAVE_CAPTURES=tests/fixtures/hop`, the capture and the access log become the
/// committed recording `NAME.18789.pcap` + `logs/NAME.edge.log` (replayed by
/// `tests/hop_fixtures.rs` with the verdict each must give).
struct Recording {
    name: &'static str,
    capture: Capture,
    _dir: tempfile::TempDir,
}

impl Recording {
    fn start(name: &'static str, gw: &Gateway) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let capture = Capture::start_on(
            dir.path(),
            &format!("{name}.{PORT}"),
            PORT,
            &gw.link.host_if,
            gw.link.ns_ip.into(),
        );
        Self {
            name,
            capture,
            _dir: dir,
        }
    }

    fn stop(self, log: &std::path::Path) {
        self.capture.stop();
        if let Some(dir) = std::env::var_os("EDGEWATCH_SAVE_CAPTURES") {
            let logs = std::path::Path::new(&dir).join("logs");
            std::fs::create_dir_all(&logs).expect("logs dir");
            std::fs::copy(log, logs.join(format!("{}.edge.log", self.name))).expect("copy");
        }
    }
}

fn hop_alerts(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| {
            v["type"] == "alert" && v["rule"].as_str().is_some_and(|r| r.starts_with("hop."))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_start_is_an_upstream_record_not_an_alarm() {
    support::require_root();
    if support::gateway::unavailable().is_some() {
        return;
    }
    let Lab {
        gw,
        clients,
        front,
        mut sc,
        _state,
    } = Lab::new(true, PORT, "45s");
    let recording = Recording::start("gateway_start", &gw);
    // While it boots, the proxy's connects are refused: 502.
    assert_eq!(
        get(&clients, &front, "/readyz").await,
        "HTTP/1.1 502 Bad Gateway"
    );
    gw.wait_ready();
    assert_eq!(get(&clients, &front, "/readyz").await, "HTTP/1.1 200 OK");
    let notice = sc.lines.wait_for("the upstream record", |v| {
        v["type"] == "upstream" && v["kind"] == "upstream_restart"
    });
    assert!(
        notice["message"]
            .as_str()
            .is_some_and(|m| m.contains("started")),
        "{notice:#}"
    );
    assert!(
        notice["detail"]["refused_connects"].as_u64() >= Some(1),
        "{notice:#}"
    );
    // A healthy session, then the stop: no hop alert at all.
    let s = clients.connect(SocketAddr::from((clients.host_ip, front.port)));
    let mut ws = ws_over(
        s,
        &format!("{}:{}", clients.host_ip, front.port),
        "/",
        Some("https://gw.test"),
    )
    .await
    .expect("upgrade");
    ws.next().await.expect("challenge").expect("frame");
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    sc.signal("TERM");
    sc.lines.wait_for("stopped", |v| v["type"] == "stopped");
    recording.stop(&front.access_log_path());
    let seen = sc.lines.seen_json();
    assert!(hop_alerts(&seen).is_empty(), "{:#?}", hop_alerts(&seen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_crash_is_one_critical_incident_until_it_is_back() {
    support::require_root();
    if support::gateway::unavailable().is_some() {
        return;
    }
    let Lab {
        mut gw,
        clients,
        front,
        mut sc,
        _state,
    } = Lab::new(true, PORT, "2s");
    gw.wait_ready();
    // Another container's socket on the Gateway's port, in a namespace of its own, up all
    // along: it is not where the proxy's connections go, so it must not hide the crash.
    let elsewhere = Linked::new('g', 231);
    let decoy = SocketHolder::tcp_in(&elsewhere.ns, "0.0.0.0", PORT);
    sc.lines.wait_for("the other namespace's listener", |v| {
        v["type"] == "change"
            && v["change"] == "added"
            && v["exposure"]["port"] == PORT
            && v["exposure"]["process"]["pid"] == decoy.pid
    });
    let recording = Recording::start("gateway_crash", &gw);
    let host = format!("{}:{}", clients.host_ip, front.port);
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let s = clients.connect(SocketAddr::from((clients.host_ip, front.port)));
        let mut ws = ws_over(s, &host, "/", Some("https://gw.test"))
            .await
            .expect("upgrade");
        ws.next().await.expect("challenge").expect("frame");
        sessions.push(ws);
    }
    // The crash.
    gw.kill();
    for mut ws in sessions {
        while let Some(Ok(_)) = ws.next().await {}
    }
    assert_eq!(
        get(&clients, &front, "/readyz").await,
        "HTTP/1.1 502 Bad Gateway"
    );
    let fired = sc.lines.wait_for("the upstream-down alert", |v| {
        v["type"] == "alert" && v["rule"] == "hop.upstream_down" && v["state"] == "firing"
    });
    assert_eq!(fired["severity"], "critical");
    let summary = fired["summary"].as_str().expect("summary");
    assert!(summary.contains("crashed"), "{summary}");
    assert_eq!(fired["evidence"]["detail"]["crash"], true, "{fired:#}");
    assert_eq!(
        fired["evidence"]["detail"]["listener_gone"], true,
        "{fired:#}"
    );
    assert_eq!(
        fired["evidence"]["detail"]["process"]["comm"]
            .as_str()
            .map(|c| c.starts_with("openclaw") || c == "node"),
        Some(true),
        "{fired:#}"
    );
    // Back: resolved, with the tally.
    gw.respawn();
    gw.wait_ready();
    let resolved = sc.lines.wait_for("the resolution", |v| {
        v["type"] == "alert" && v["rule"] == "hop.upstream_down" && v["state"] == "resolved"
    });
    assert!(
        resolved["evidence"]["counts"]["cut_sessions"].as_u64() >= Some(1),
        "{resolved:#}"
    );
    // A request through the proxy works again (offline, this connect is what says so).
    assert_eq!(get(&clients, &front, "/readyz").await, "HTTP/1.1 200 OK");
    front.wait_log_lines(2);
    recording.stop(&front.access_log_path());
    // One incident: no reset storm, no stale port beside it.
    let seen = sc.lines.seen_json();
    let rules: Vec<&str> = hop_alerts(&seen)
        .iter()
        .filter_map(|v| v["rule"].as_str())
        .collect();
    assert!(rules.iter().all(|r| *r == "hop.upstream_down"), "{rules:?}");
    decoy.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_pointed_at_another_port_names_it_and_the_gateways() {
    support::require_root();
    if support::gateway::unavailable().is_some() {
        return;
    }
    let Lab {
        gw,
        clients,
        front,
        mut sc,
        _state,
    } = Lab::new(true, PORT + 1, "45s");
    let stale = SocketAddr::from((gw.link.ns_ip, PORT + 1));
    gw.wait_ready();
    let recording = Recording::start("gateway_stale_port", &gw);
    // The Gateway is up (its listener seen), yet the edge answers 502.
    sc.lines.wait_for("the Gateway's listener", |v| {
        v["type"] == "change" && v["exposure"]["port"] == PORT && v["change"] == "added"
    });
    assert_eq!(
        get(&clients, &front, "/readyz").await,
        "HTTP/1.1 502 Bad Gateway"
    );
    let fired = sc.lines.wait_for("the stale-port alert", |v| {
        v["type"] == "alert" && v["rule"] == "hop.stale_upstream_port" && v["state"] == "firing"
    });
    let summary = fired["summary"].as_str().expect("summary");
    assert!(summary.contains(&stale.to_string()), "{summary}");
    assert!(summary.contains("nothing listens there"), "{summary}");
    assert!(summary.contains(&format!(":{PORT}")), "{summary}");
    assert_eq!(fired["severity"], "critical");
    front.wait_log_lines(1);
    recording.stop(&front.access_log_path());
    // Not the Gateway down: it was up all along.
    let seen = sc.lines.seen_json();
    assert!(
        !seen.iter().any(|v| v["rule"] == "hop.upstream_down"),
        "{:#?}",
        hop_alerts(&seen)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_missing_from_trusted_proxies_is_named_not_an_origin_problem() {
    support::require_root();
    if support::gateway::unavailable().is_some() {
        return;
    }
    let Lab {
        gw,
        clients,
        front,
        mut sc,
        _state,
    } = Lab::new(false, PORT, "45s");
    gw.wait_ready();
    let recording = Recording::start("gateway_untrusted_proxy", &gw);
    // The right Origin, through a proxy the Gateway does not trust: 403 at the handshake.
    let s = clients.connect(SocketAddr::from((clients.host_ip, front.port)));
    let err = ws_over(
        s,
        &format!("{}:{}", clients.host_ip, front.port),
        "/",
        Some("https://gw.test"),
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("403"), "{err}");
    let fired = sc.lines.wait_for("the untrusted-proxy alert", |v| {
        v["type"] == "alert" && v["rule"] == "hop.untrusted_proxy" && v["state"] == "firing"
    });
    assert_eq!(fired["severity"], "critical");
    assert_eq!(
        fired["evidence"]["detail"]["proxy"],
        gw.link.host_ip.to_string(),
        "{fired:#}"
    );
    assert!(fired["first_move"]
        .as_str()
        .is_some_and(|m| m.contains("trustedProxies")));
    // The hop record carries the code, never the body.
    // (Printed before the alert it caused.)
    let http = sc
        .lines
        .seen_json()
        .into_iter()
        .find(|v| v["type"] == "http" && v["status"] == 403)
        .expect("the refused exchange");
    assert_eq!(http["error_code"], "proxy_attribution_required", "{http:#}");
    front.wait_log_lines(1);
    recording.stop(&front.access_log_path());
    let seen = sc.lines.seen_json();
    assert!(
        !seen.iter().any(|v| v["rule"] == "hop.origin_rejected"),
        "{:#?}",
        hop_alerts(&seen)
    );
}

/// The Control UI's first request through the proxy, with `origin`; the close code and
/// reason the Gateway ends the session with.
async fn control_ui_connect(clients: &Linked, front: &Nginx, origin: &str) -> (u16, String) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = clients.connect(SocketAddr::from((clients.host_ip, front.port)));
    let host = format!("{}:{}", clients.host_ip, front.port);
    let mut ws = ws_over(s, &host, "/", Some(origin)).await.expect("101");
    let challenge = ws.next().await.expect("challenge").expect("frame");
    assert!(challenge
        .to_text()
        .unwrap_or("")
        .contains("connect.challenge"));
    ws.send(Message::text(CONTROL_UI_CONNECT))
        .await
        .expect("send");
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Close(Some(f)) = m {
            return (u16::from(f.code), f.reason.to_string());
        }
    }
    panic!("the Gateway did not close the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_the_gateway_refuses_is_named_and_other_policy_closes_are_not() {
    support::require_root();
    if support::gateway::unavailable().is_some() {
        return;
    }
    let Lab {
        gw,
        clients,
        front,
        mut sc,
        _state,
    } = Lab::new(true, PORT, "45s");
    gw.wait_ready();
    let recording = Recording::start("gateway_bad_origin", &gw);
    // The allowed Origin, no device identity: the Gateway closes 1008 for that, not for
    // the Origin. Not an Origin incident.
    let (code, reason) = control_ui_connect(&clients, &front, "https://gw.test").await;
    assert_eq!(code, 1008);
    assert!(reason.contains("device identity"), "{reason}");
    sc.lines.wait_for("the first session", |v| {
        v["type"] == "websocket" && v["origin"] == "https://gw.test"
    });
    // An Origin it does not allow: 101, then 1008 "origin not allowed".
    let (code, reason) = control_ui_connect(&clients, &front, "https://evil.example").await;
    assert_eq!(code, 1008);
    assert!(reason.contains("origin not allowed"), "{reason}");
    let fired = sc.lines.wait_for("the Origin alert", |v| {
        v["type"] == "alert" && v["rule"] == "hop.origin_rejected" && v["state"] == "firing"
    });
    let evidence = fired["evidence"].to_string();
    assert!(evidence.contains("https://evil.example"), "{fired:#}");
    assert!(!evidence.contains("https://gw.test\""), "{fired:#}");
    assert_eq!(fired["evidence"]["counts"]["closes_1008"], 1, "{fired:#}");
    front.wait_log_lines(2);
    recording.stop(&front.access_log_path());
}

/// `edgewatch check` as an operator runs it, against nginx (TLS) in front of the real
/// Gateway: `(step -> its JSON line)`.
fn run_check(
    gw: &Gateway,
    clients: &Linked,
    front: &Nginx,
    ca: &std::path::Path,
    origin: &str,
) -> std::collections::BTreeMap<String, Value> {
    run_check_on(
        gw,
        clients,
        front.port,
        &front.access_log_path(),
        ca,
        origin,
    )
}

fn run_check_on(
    gw: &Gateway,
    clients: &Linked,
    front_port: u16,
    access_log: &std::path::Path,
    ca: &std::path::Path,
    origin: &str,
) -> std::collections::BTreeMap<String, Value> {
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(
        config.path(),
        format!(
            "[hop]\ninterfaces = [{:?}]\ndocker_bridges = false\n[nat]\nenabled = false\n\
             [edge]\naccess_logs = [{:?}]\n",
            gw.link.host_if, access_log
        ),
    )
    .expect("write");
    let out = std::process::Command::new(support::edgewatch_bin())
        .args(["check", "--output", "json", "--url"])
        .arg(format!("https://gw.test:{front_port}/"))
        .arg("--resolve")
        .arg(format!("gw.test:{}", clients.host_ip))
        .arg("--ca-file")
        .arg(ca)
        .args(["--port", &PORT.to_string(), "--origin", origin])
        .arg("--config")
        .arg(config.path())
        .output()
        .expect("edgewatch check");
    support::json_lines(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|v| v["type"] == "check_step")
        .map(|v| (v["step"].as_str().unwrap_or("").to_owned(), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_refused_origin_and_an_untrusted_proxy_on_the_real_gateway() {
    support::require_root();
    if support::gateway::unavailable().is_some() {
        return;
    }
    let pki = support::tls::Pki::new();
    let clients = Linked::new('c', 232);
    let tls_front = |gw: &Gateway| {
        Nginx::start(&NginxSite {
            listen: Some(clients.host_ip.into()),
            tls: Some(pki.server("gw.test", support::tls::Served::FullChain)),
            ..NginxSite::new(gw.addr)
        })
    };
    let gw = Gateway::start(&GatewayConfig {
        trust_the_proxy: true,
        allowed_origins: vec!["https://gw.test".into()],
    });
    let front = tls_front(&gw);
    let step = |steps: &std::collections::BTreeMap<String, Value>, name: &str| {
        (
            steps[name]["status"].as_str().unwrap_or("").to_owned(),
            steps[name]["summary"].as_str().unwrap_or("").to_owned(),
        )
    };
    // A good setup: the page and the upgrade pass, and the Gateway accepted the Origin.
    let good = run_check(&gw, &clients, &front, &pki.ca_file, "https://gw.test");
    let (s, text) = step(&good, "http");
    assert_eq!(s, "pass", "{text}");
    let (s, text) = step(&good, "websocket");
    assert_eq!(s, "pass", "{text}");
    assert!(text.contains("accepted the Origin"), "{text}");
    // The same through Caddy (the README's Caddyfile): a good Caddy passes too.
    let (cert, key) = pki.server("gw.test", support::tls::Served::FullChain);
    let caddy = Caddy::start_tls_on(gw.addr, &cert, &key, clients.host_ip);
    let via_caddy = run_check_on(
        &gw,
        &clients,
        caddy.port,
        &caddy.dir.path().join("access.log"),
        &pki.ca_file,
        "https://gw.test",
    );
    for name in ["http", "websocket"] {
        let (s, text) = step(&via_caddy, name);
        assert_eq!(s, "pass", "Caddy {name}: {text}");
    }
    drop(caddy);
    // An Origin the Gateway does not allow: it upgrades, then refuses at the first request.
    let evil = run_check(&gw, &clients, &front, &pki.ca_file, "https://evil.example");
    let (s, text) = step(&evil, "websocket");
    assert_eq!(s, "fail", "{text}");
    assert!(
        text.contains("refuses Origin https://evil.example"),
        "{text}"
    );
    // trustedProxies without the proxy: named as such, in both steps, not as the Origin.
    drop(front);
    drop(gw);
    let untrusting = Gateway::start(&GatewayConfig {
        trust_the_proxy: false,
        allowed_origins: vec!["https://gw.test".into()],
    });
    let front = tls_front(&untrusting);
    let refused = run_check(
        &untrusting,
        &clients,
        &front,
        &pki.ca_file,
        "https://gw.test",
    );
    for name in ["http", "websocket"] {
        let (s, text) = step(&refused, name);
        assert_eq!(s, "fail", "{name}: {text}");
        assert!(text.contains("trustedProxies"), "{name}: {text}");
        assert!(!text.contains("Origin"), "{name}: {text}");
    }
}
