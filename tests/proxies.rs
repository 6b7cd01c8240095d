//! The proxy's configuration, read from a real running nginx (Debian's, its master started by
//! the test with its own files and an `include` glob): each `config.*` finding with the right
//! file and line, none on a corrected configuration after a reload, and the same from the
//! files offline (`--proxy-config`).
mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use futures_util::StreamExt;
use serde_json::Value;
use support::{
    closed_port, edgewatch_bin, free_port,
    gateway::{Gateway, GatewayConfig, Linked, PORT},
    hop::ws_over,
    json_lines, Sidecar,
};

/// A real nginx master (not `master_process off`: the command line must be the master's).
struct Master {
    child: Child,
    dir: tempfile::TempDir,
    edge: u16,
}

impl Master {
    fn start(site: &str, log_format: &str) -> Self {
        Self::start_on(site, log_format, std::net::Ipv4Addr::LOCALHOST)
    }

    /// `site` listens on `ip`:EDGE.
    fn start_on(site: &str, log_format: &str, ip: std::net::Ipv4Addr) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
        let edge = free_port();
        write(dir.path(), log_format, site, edge);
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(format!("{d}/nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx (cargo xtask setup installs nginx-light)");
        let deadline = std::time::Instant::now() + support::wait_limit();
        while std::net::TcpStream::connect((ip, edge)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not start: {d}/error.log"
            );
            std::thread::yield_now();
        }
        // nginx binds before it becomes the master: it retitles itself `nginx: master
        // process ...` (what the sidecar knows a master by) only after the listen. A sidecar
        // started in between would find no master (CI on 849d716, on a loaded machine).
        let title = format!("/proc/{}/cmdline", child.id());
        while !std::fs::read(&title)
            .expect("nginx's command line")
            .starts_with(b"nginx: master process")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not become its master: {d}/error.log"
            );
            std::thread::yield_now();
        }
        Self { child, dir, edge }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The site's file (`conf.d/gw.conf`), as findings cite it.
    fn site_file(&self) -> String {
        self.dir.path().join("conf.d/gw.conf").display().to_string()
    }

    /// New files, then SIGHUP (nginx -s reload), waiting until the new site answers.
    fn reload(&self, site: &str, log_format: &str) {
        write(self.dir.path(), log_format, site, self.edge);
        let status = Command::new("kill")
            .args(["-HUP", &self.pid()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// `nginx.conf` (its access_log on line 7) including `conf.d/*.conf`.
fn write(dir: &Path, log_format: &str, site: &str, edge: u16) {
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 16; }}\n\
         http {{\n  {log_format}\n  access_log {d}/access.log{fmt};\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           include conf.d/*.conf;\n}}\n",
        fmt = if log_format.is_empty() { "" } else { " edgewatch" },
    );
    std::fs::write(dir.join("nginx.conf"), main).expect("nginx.conf");
    std::fs::write(
        dir.join("conf.d/gw.conf"),
        site.replace("EDGE", &edge.to_string()),
    )
    .expect("gw.conf");
}

fn proxies(args: &[&str], gateway: u16) -> (i32, Vec<Value>) {
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), format!("[hop]\nports = [{gateway}]\n")).expect("write");
    let out = Command::new(edgewatch_bin())
        .args(["proxies", "--output", "json", "--config"])
        .arg(config.path())
        .args(args)
        .output()
        .expect("edgewatch proxies");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), json_lines(&stdout))
}

/// The `proxy_error` line's error.
fn error_of(lines: &[Value]) -> String {
    lines
        .iter()
        .find(|v| v["type"] == "proxy_error")
        .and_then(|v| v["error"].as_str())
        .unwrap_or_else(|| panic!("an error line: {lines:#?}"))
        .to_owned()
}

fn findings(lines: &[Value]) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = lines
        .iter()
        .filter(|v| v["type"] == "config_finding")
        .map(|v| {
            let file = v["file"].as_str().unwrap_or_default();
            let name = Path::new(file)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            (
                v["rule"].as_str().unwrap_or_default().to_owned(),
                format!("{name}:{}", v["line"]),
            )
        })
        .collect();
    f.sort();
    f
}

const BROKEN: &str = "server {
    listen 127.0.0.1:EDGE;
    location / {
        proxy_pass http://127.0.0.1:GATEWAY;
        proxy_read_timeout 5s;
    }
    location /old/ {
        proxy_pass http://127.0.0.1:STALE;
    }
}
";

const FIXED: &str = "server {
    listen 127.0.0.1:EDGE;
    location / {
        proxy_pass http://127.0.0.1:GATEWAY;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection \"upgrade\";
        proxy_set_header X-Request-ID $request_id;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
    }
}
";

const LOG_FORMAT: &str = "log_format edgewatch '$remote_addr $request_id $status';";

#[test]
fn findings_from_a_running_nginx_cite_their_lines_and_go_after_a_fixing_reload() {
    support::require_root();
    // The Gateway's stand-in: something listening on its port.
    let gateway = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gw = gateway.local_addr().expect("addr").port();
    let stale = closed_port();
    let site = |t: &str| {
        t.replace("GATEWAY", &gw.to_string())
            .replace("STALE", &stale.to_string())
    };
    let nginx = Master::start(&site(BROKEN), "");
    let (code, lines) = proxies(&["--pid", &nginx.pid()], gw);
    assert_eq!(code, 3, "findings are exit status 3: {lines:#?}");
    assert_eq!(
        findings(&lines),
        [
            (
                "config.request_id_not_forwarded".to_owned(),
                "gw.conf:3".to_owned()
            ),
            (
                "config.request_id_not_logged".to_owned(),
                "nginx.conf:7".to_owned()
            ),
            ("config.short_timeout".to_owned(), "gw.conf:3".to_owned()),
            ("config.short_timeout".to_owned(), "gw.conf:5".to_owned()),
            (
                "config.stale_upstream_port".to_owned(),
                "gw.conf:8".to_owned()
            ),
            (
                "config.websocket_half_path".to_owned(),
                "gw.conf:3".to_owned()
            ),
        ],
        "{lines:#?}"
    );
    let stale_finding = lines
        .iter()
        .find(|v| v["rule"] == "config.stale_upstream_port")
        .expect("stale");
    assert!(
        stale_finding["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("the Gateway listens on 127.0.0.1:{gw}"))),
        "{stale_finding}"
    );
    // The file is named as nginx sees it (its include resolved against the conf directory).
    assert_eq!(stale_finding["file"], nginx.site_file());
    // The routes: listen -> location -> upstream -> who listens.
    let routes: Vec<&Value> = lines.iter().filter(|v| v["type"] == "route").collect();
    assert_eq!(routes.len(), 2, "{routes:#?}");
    assert_eq!(routes[0]["targets"][0]["listener"], "listening");
    assert_eq!(routes[1]["targets"][0]["listener"], "nothing listens");
    assert_eq!(
        routes[1]["verdict"],
        serde_json::json!(["config.stale_upstream_port"])
    );
    assert!(
        routes[0]["verdict"]
            .as_array()
            .is_some_and(|v| v.iter().any(|r| r == "config.websocket_half_path")),
        "{:#}",
        routes[0]
    );

    // Offline, from the files: the same findings.
    let conf = nginx.dir.path().join("nginx.conf");
    let (code, offline) = proxies(&["--proxy-config", conf.to_str().expect("path")], gw);
    assert_eq!(code, 3);
    assert_eq!(findings(&offline), findings(&lines));

    // `check` has a proxy step from the same model: the half-path fails it, at its line.
    let proxy_step = || {
        let out = Command::new(edgewatch_bin())
            .args([
                "check",
                "--no-passive",
                "--timeout",
                "2s",
                "--output",
                "json",
            ])
            .args(["--url", &format!("https://127.0.0.1:{}/", nginx.edge)])
            .args(["--port", &gw.to_string()])
            .output()
            .expect("edgewatch check");
        json_lines(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .find(|v| v["type"] == "check_step" && v["step"] == "proxy")
            .expect("a proxy step")
    };
    let step = proxy_step();
    assert_eq!(step["status"], "fail", "{step:#}");
    assert!(
        step["summary"]
            .as_str()
            .is_some_and(|s| s.contains("half") || s.contains("Upgrade")),
        "{step:#}"
    );
    assert!(
        step["summary"]
            .as_str()
            .is_some_and(|s| s.contains("gw.conf:")),
        "{step:#}"
    );

    // Fixed and reloaded: nothing left.
    nginx.reload(&site(FIXED), LOG_FORMAT);
    let (code, lines) = proxies(&["--pid", &nginx.pid()], gw);
    assert_eq!(findings(&lines), [], "{lines:#?}");
    assert_eq!(code, 0);
    let step = proxy_step();
    assert_eq!(step["status"], "pass", "{step:#}");
    drop(gateway);
}

#[test]
fn a_configuration_nginx_would_refuse_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "http {\n  server {\n    listen 80\n  }\n}\n").expect("write");
    let (code, lines) = proxies(&["--proxy-config", conf.to_str().expect("path")], 18789);
    assert_eq!(code, 1, "{lines:#?}");
    let err = error_of(&lines);
    assert!(
        err.contains("bad.conf:4") && err.contains("not terminated"),
        "{err}"
    );
}

/// The real Gateway behind a real nginx master whose WebSocket location has a 3 s read
/// timeout: the sidecar reads the configuration at start (the finding, with its line), names
/// the first idle session's cut by that directive, and resolves the finding after the file is
/// fixed and nginx reloaded.
/// The processes are listed again only when something may have started a proxy (the sidecar
/// idles cheaply on a host with hundreds of processes): a master started after the sidecar
/// is read when it opens its listener (the state probe's event), well before the full
/// listing every 30 s, and its finding fires. Its access log (the README's format, no
/// `[edge] access_logs`) is read from then on: the join is not left without the edge's lines
/// because the proxy started after the sidecar.
#[test]
fn live_a_master_started_after_the_sidecar_is_read_when_it_listens() {
    support::require_root();
    let gateway = free_port();
    let state = tempfile::tempdir().expect("state");
    let mut sc = Sidecar::start(&format!(
        "[hop]\nports = [{gateway}]\ndocker_bridges = false\n\
         [exposure]\nrescan_interval = \"1h\"\n[nat]\nenabled = false\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[alerts]\nquiet_period = \"10m\"\n\
         [proxy]\npoll_interval = \"200ms\"\n[edge]\nstate_dir = {:?}\n",
        state.path(),
    ));
    // The start's listing and the second look a poll later are done: from here on, only a
    // change lists them again.
    sc.wait_metric_above("edgewatch_proxy_scans_total", 1.0);
    let site = BROKEN
        .replace("GATEWAY", &gateway.to_string())
        .replace("STALE", &closed_port().to_string());
    let nginx = Master::start(&site, &support::hop::readme_snippet("nginx-log-format"));
    let gw_conf = nginx.site_file();
    // Expected within a poll or two of its listen; the full listing would come ~30 s after
    // the last one.
    let finding = sc
        .lines
        .wait_for_within(std::time::Duration::from_secs(20), |v| {
            v["type"] == "alert"
                && v["rule"] == "config.short_timeout"
                && v["state"] == "firing"
                && v["evidence"]["detail"]["file"] == gw_conf.as_str()
        });
    assert!(
        finding.is_some(),
        "the master started after the sidecar was not read within 20 s: {:#?}",
        sc.lines.seen_json()
    );
    let access_log = nginx.dir.path().join("access.log").display().to_string();
    let is_discovered = |v: &Value| {
        v["type"] == "edge"
            && v["event"] == "discovered"
            && v["access_logs"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p == access_log.as_str()))
    };
    // Said in the poll that read the configuration, before its findings (so usually seen).
    let discovered = sc.lines.seen_json().iter().any(is_discovered)
        || sc
            .lines
            .wait_for_within(std::time::Duration::from_secs(20), is_discovered)
            .is_some();
    assert!(
        discovered,
        "the late master's access log was not taken: {:#?}",
        sc.lines.seen_json()
    );
    // A request through it (502: nothing listens on the Gateway's port) writes a line, which
    // the sidecar reads.
    let parsed = "edgewatch_edge_lines_total{result=\"parsed\"}";
    assert_eq!(support::metric_sum(&sc.metrics(), parsed), 0.0);
    let mut edge = std::net::TcpStream::connect(("127.0.0.1", nginx.edge)).expect("connect");
    std::io::Write::write_all(
        &mut edge,
        b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .expect("request");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut edge, &mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    sc.wait_metric_above(parsed, 0.0);
    // And joined: with no hop side (nothing answered), the request goes out alone once the
    // join window has passed. Without a join (no log at start) no request record is made.
    sc.wait_metric_above("edgewatch_records_total{kind=\"request\"}", 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_the_first_idle_cut_names_the_directive_and_a_fixing_reload_resolves_it() {
    support::require_root();
    if support::gateway::unavailable().is_some() {
        return;
    }
    let gw = Gateway::spawn(&GatewayConfig {
        trust_the_proxy: true,
        allowed_origins: vec!["https://gw.test".into()],
    });
    let clients = Linked::new('c', 232);
    let site = |read: &str| {
        format!(
            "server {{\n    listen {}:EDGE; location = /moved {{ return 301 /; }}\n    \
             location / {{\n        proxy_pass http://{}:{PORT};\n        \
             proxy_http_version 1.1;\n        proxy_set_header Upgrade $http_upgrade;\n        \
             proxy_set_header Connection \"upgrade\";\n        proxy_set_header X-Request-ID $request_id;\n        \
             proxy_set_header X-Forwarded-For $remote_addr;\n        proxy_read_timeout {read};\n        \
             proxy_send_timeout 3600s;\n    }}\n}}\n",
            clients.host_ip, gw.link.ns_ip
        )
    };
    // The README's JSON log format: the sidecar takes this log for the join by itself.
    let log_format = support::hop::readme_snippet("nginx-log-format");
    let nginx = Master::start_on(&site("3s"), &log_format, clients.host_ip);
    let gw_conf = nginx.site_file();
    let state = tempfile::tempdir().expect("state");
    let mut sc = Sidecar::start(&format!(
        "[hop]\nports = [{PORT}]\ninterfaces = [{:?}]\ndocker_bridges = false\n\
         [exposure]\nwatched_ports = [{}]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [alerts]\nquiet_period = \"10m\"\ncooldown = \"0s\"\n\
         [proxy]\npoll_interval = \"200ms\"\n\
         [edge]\nstate_dir = {:?}\npoll_interval = \"50ms\"\njoin_window = \"10m\"\n",
        gw.link.host_if,
        free_port(),
        state.path(),
    ));
    // At start, before `ready`: the short read timeout, at its line (10 of gw.conf).
    let is_ours = |v: &Value, state: &str| {
        v["type"] == "alert"
            && v["rule"] == "config.short_timeout"
            && v["state"] == state
            && v["evidence"]["detail"]["file"] == gw_conf.as_str()
    };
    let started = sc.lines.seen_json();
    let finding = started
        .iter()
        .find(|v| is_ours(v, "firing"))
        .unwrap_or_else(|| panic!("no config.short_timeout at start: {started:#?}"));
    assert_eq!(finding["evidence"]["detail"]["line"], 10, "{finding:#}");
    let key = finding["dedup_key"].clone();
    // No [edge] access_logs: the one nginx writes for the Gateway's location is taken.
    let access_log = nginx.dir.path().join("access.log").display().to_string();
    assert!(
        started.iter().any(|v| v["type"] == "edge"
            && v["access_logs"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p == access_log.as_str()))),
        "the access log taken from the configuration: {started:#?}"
    );

    // A request nginx answers itself (`return 301`): real nginx logs its `$upstream_addr`
    // empty, and its request goes out at once, not after the join window (10 minutes here)
    // in which no exchange could come.
    let edge_addr = std::net::SocketAddr::from((clients.host_ip, nginx.edge));
    let mut moved = clients.connect(edge_addr);
    tokio::io::AsyncWriteExt::write_all(
        &mut moved,
        b"GET /moved HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("request");
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut moved, &mut response)
        .await
        .expect("response");
    assert!(response.starts_with("HTTP/1.1 301"), "{response}");
    let served = sc
        .lines
        .wait_for_within(std::time::Duration::from_secs(60), |v| {
            v["type"] == "request" && v["edge"]["path"] == "/moved"
        })
        .unwrap_or_else(|| panic!("the 301's request waited: {:#?}", sc.lines.seen_json()));
    assert_eq!(served["matched"], "edge_only", "{served:#}");
    assert_eq!(served["edge"]["no_upstream"], true, "{served:#}");
    assert!(
        served["reason"]
            .as_str()
            .is_some_and(|r| r.contains("itself")),
        "{served:#}"
    );

    // One session, idle after the Gateway's challenge: nginx cuts it after 3 s, and the
    // first one is enough to name the cause.
    gw.wait_ready();
    let host = format!("{}:{}", clients.host_ip, nginx.edge);
    let s = clients.connect(edge_addr);
    let mut ws = ws_over(s, &host, "/", Some("https://gw.test"))
        .await
        .expect("101 through nginx");
    ws.next().await.expect("the challenge").expect("a frame");
    while let Some(Ok(_)) = ws.next().await {}
    let alert = sc.lines.wait_for("the timeout diagnosis", |v| {
        v["type"] == "alert" && v["rule"] == "hop.timeout_disconnect" && v["state"] == "firing"
    });
    let summary = alert["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("proxy_read_timeout 3 s") && summary.contains(&format!("{gw_conf}:10")),
        "{alert:#}"
    );
    assert_eq!(
        alert["evidence"]["counts"]["sessions"], 1,
        "the first session: {alert:#}"
    );
    assert_eq!(
        alert["evidence"]["detail"]["directive"],
        "proxy_read_timeout"
    );
    // nginx logs the tunnel when it closes; the discovered log joins it to the hop by id.
    // (Its line may come before the alert's: the log line and the session end together.)
    let is_joined = |v: &Value| v["type"] == "request" && v["matched"] == "exact";
    let seen = sc.lines.seen_json().into_iter().find(is_joined);
    let joined = seen.unwrap_or_else(|| sc.lines.wait_for("the joined request", is_joined));
    assert_eq!(joined["edge"]["status"], 101, "{joined:#}");

    // Fixed and reloaded: the finding resolves.
    nginx.reload(&site("3600s"), &log_format);
    let resolved = sc
        .lines
        .wait_for("the finding resolved", |v| is_ours(v, "resolved"));
    assert_eq!(resolved["dedup_key"], key);
}

/// Offline, a capture and the configuration sent in with it: `replay` and `timeline --pcap`
/// give the configuration's findings and name the directive on the first idle cut, as live.
/// (The recording is `tests/hop_replay.rs`'s nginx with `proxy_read_timeout 2s` in front of
/// the stand-in upstream; the same diagnosis on the real Gateway is the live test above.)
#[test]
fn offline_the_configuration_sent_with_a_capture_is_cited() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        "http {\n  server {\n    listen 80;\n    location / {\n      proxy_pass http://127.0.0.1:35057;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      \
         proxy_set_header Connection \"upgrade\";\n      proxy_set_header X-Request-ID $request_id;\n      \
         proxy_read_timeout 2s;\n      proxy_send_timeout 3600s;\n    }\n  }\n}\n",
    )
    .expect("write");
    let conf = conf.to_str().expect("path");
    let pcap = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/hop/idle_timeout.35057.pcap"
    );
    let run = |args: &[&str]| {
        let out = Command::new(edgewatch_bin())
            .args(args)
            .output()
            .expect("edgewatch");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fired = |lines: &[Value]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = lines
            .iter()
            .filter(|v| v["type"] == "alert" && v["state"] == "firing")
            .map(|v| {
                (
                    v["rule"].as_str().unwrap_or_default().to_owned(),
                    v["summary"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let replay = json_lines(&run(&[
        "replay",
        pcap,
        "--port",
        "35057",
        "--output",
        "json",
        "--proxy-config",
        conf,
    ]));
    let alerts = fired(&replay);
    let timeout = alerts
        .iter()
        .find(|(r, _)| r == "hop.timeout_disconnect")
        .unwrap_or_else(|| panic!("the first idle cut is diagnosed: {alerts:#?}"));
    assert!(
        timeout
            .1
            .contains(&format!("proxy_read_timeout 2 s in location / ({conf}:10)")),
        "{}",
        timeout.1
    );
    assert!(
        alerts
            .iter()
            .any(|(r, s)| r == "config.short_timeout" && s.contains(&format!("{conf}:10"))),
        "{alerts:#?}"
    );
    // The timeline of the same capture and configuration has the same alerts.
    let timeline: Value = serde_json::from_str(&run(&[
        "timeline",
        "--pcap",
        pcap,
        "--port",
        "35057",
        "--output",
        "json",
        "--proxy-config",
        conf,
    ]))
    .expect("timeline JSON");
    let mut from_timeline: Vec<(String, String)> = timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "alert" && e["detail"]["state"] == "firing")
        .map(|e| {
            (
                e["detail"]["rule"].as_str().unwrap_or_default().to_owned(),
                e["detail"]["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    from_timeline.sort();
    assert_eq!(from_timeline, alerts);
    // Without the configuration one session is not a cluster: no diagnosis.
    let bare = json_lines(&run(&[
        "replay", pcap, "--port", "35057", "--output", "json",
    ]));
    assert!(
        fired(&bare)
            .iter()
            .all(|(r, _)| r != "hop.timeout_disconnect"),
        "{:#?}",
        fired(&bare)
    );
}

/// A real Caddy (Debian's 2.6) started with `config`; stopped when dropped.
struct CaddyProc {
    child: Child,
    _dir: tempfile::TempDir,
}

impl CaddyProc {
    /// Starts Caddy with the config that `config(edge, admin)` gives for two fresh ports and
    /// waits until it listens on `edge`; returns it with its `admin` port. The ports are
    /// `free_listen_port`s, below the ephemeral range, so no connection's local port takes
    /// them; one another server binds first makes Caddy exit with "address already in use":
    /// then again with fresh ports, at most three times. Any other exit fails the test with
    /// Caddy's own last lines.
    fn start(name: &str, config: impl Fn(u16, u16) -> String) -> (Self, u16) {
        let mut last = String::new();
        for _ in 0..3 {
            let (edge, admin) = (support::free_listen_port(), support::free_listen_port());
            match Self::try_start(name, &config(edge, admin), edge) {
                Ok(caddy) => return (caddy, admin),
                Err(said) if said.contains("address already in use") => last = said,
                Err(said) => panic!("caddy exited before it listened on {edge}: {said}"),
            }
        }
        panic!("caddy found its ports taken three times: {last}")
    }

    /// One start: `Err` with Caddy's last lines if it exits before it listens on `edge`.
    fn try_start(name: &str, config: &str, edge: u16) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join(name);
        std::fs::write(&file, config).expect("write");
        let child = support::hop::run_caddy(
            dir.path(),
            &file,
            name == "Caddyfile",
            (std::net::Ipv4Addr::LOCALHOST.into(), edge),
        )?;
        Ok(Self { child, _dir: dir })
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn file(&self, name: &str) -> String {
        self._dir.path().join(name).display().to_string()
    }
}

impl Drop for CaddyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Caddy read as it runs: through its admin API (a Caddyfile), its JSON config file when the
/// API is off, or a Caddyfile with the API off through the machine's own `caddy adapt`; the
/// same findings as nginx's where they apply (Caddy forwards the upgrade itself: never a
/// half-path), each at the JSON path of the object; without a way to read it, said (exit 1).
#[test]
fn caddy_through_its_admin_api_and_its_json_file() {
    support::require_root();
    let gateway = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gw = gateway.local_addr().expect("addr").port();
    let stale = free_port();
    let (caddy, admin) = CaddyProc::start("Caddyfile", |edge, admin| {
        format!(
            "{{\n\tadmin 127.0.0.1:{admin}\n}}\n:{edge} {{\n\thandle /old/* {{\n\t\treverse_proxy 127.0.0.1:{stale}\n\t}}\n\
             \thandle {{\n\t\treverse_proxy 127.0.0.1:{gw}\n\t}}\n}}\n"
        )
    });
    let (code, lines) = proxies(&["--pid", &caddy.pid()], gw);
    assert_eq!(code, 3, "{lines:#?}");
    let routes: Vec<&Value> = lines.iter().filter(|v| v["type"] == "route").collect();
    assert_eq!(routes.len(), 2, "{routes:#?}");
    assert!(routes.iter().all(|r| r["proxy"] == "caddy"));
    let got: Vec<(&str, &str)> = lines
        .iter()
        .filter(|v| v["type"] == "config_finding")
        .map(|v| {
            (
                v["rule"].as_str().unwrap_or(""),
                v["at"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(got.len(), 2, "{got:#?}");
    let api = format!("caddy admin 127.0.0.1:{admin} /config/apps/http/servers/");
    assert!(
        got.iter().any(|(r, at)| *r == "config.stale_upstream_port"
            && at.starts_with(&api)
            && at.ends_with("/upstreams/0/dial")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|(r, at)| *r == "config.request_id_not_forwarded" && at.starts_with(&api)),
        "{got:#?}"
    );
    drop(caddy);

    // A JSON config with the admin API off: read from the file, paths into it.
    let (caddy, _) = CaddyProc::start("caddy.json", |edge, _| {
        format!(
            r#"{{"admin":{{"disabled":true}},"apps":{{"http":{{"servers":{{"gw":{{"listen":[":{edge}"],"routes":[{{"handle":[{{"handler":"reverse_proxy","upstreams":[{{"dial":"127.0.0.1:{stale}"}}]}}]}}]}}}}}}}}}}"#
        )
    });
    let (code, lines) = proxies(&["--pid", &caddy.pid()], gw);
    assert_eq!(code, 3, "{lines:#?}");
    let finding = lines
        .iter()
        .find(|v| v["rule"] == "config.stale_upstream_port")
        .expect("the stale port");
    assert_eq!(
        finding["at"],
        format!(
            "{}#/apps/http/servers/gw/routes/0/handle/0/upstreams/0/dial",
            caddy.file("caddy.json")
        )
    );
    drop(caddy);

    // A Caddyfile with the API off: adapted by the machine's own `caddy adapt`.
    let (caddy, _) = CaddyProc::start("Caddyfile", |edge, _| {
        format!("{{\n\tadmin off\n}}\n:{edge} {{\n\treverse_proxy 127.0.0.1:{gw}\n}}\n")
    });
    let (code, lines) = proxies(&["--pid", &caddy.pid()], gw);
    assert_eq!(code, 3, "{lines:#?}");
    let finding = lines
        .iter()
        .find(|v| v["rule"] == "config.request_id_not_forwarded")
        .unwrap_or_else(|| panic!("the Gateway's route without X-Request-ID: {lines:#?}"));
    let adapted = format!(
        "{} (caddy adapt)#/apps/http/servers/",
        caddy.file("Caddyfile")
    );
    assert!(
        finding["at"]
            .as_str()
            .is_some_and(|a| a.starts_with(&adapted)),
        "{finding:#}"
    );
    // Without a caddy binary of its own to adapt with: unreadable, said (exit 1).
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), format!("[hop]\nports = [{gw}]\n")).expect("write");
    let out = Command::new(edgewatch_bin())
        .args([
            "proxies",
            "--output",
            "json",
            "--pid",
            &caddy.pid(),
            "--config",
        ])
        .arg(config.path())
        .env("PATH", "/nonexistent")
        .output()
        .expect("edgewatch proxies");
    assert_eq!(out.status.code(), Some(1));
    let err = error_of(&json_lines(&String::from_utf8_lossy(&out.stdout)));
    assert!(
        err.contains("admin API is off") && err.contains("caddy adapt"),
        "{err}"
    );
    drop(gateway);
}
