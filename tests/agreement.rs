//! Live, `replay` and `timeline --pcap` are three drivers of one pipeline: they must name the
//! same incidents, in the same order, with the same evidence counts. Offline, on every
//! committed recording; live, on a half-path incident re-created for real (nginx without the
//! Upgrade headers, then fixed), recorded with tcpdump while the sidecar watches it, and
//! replayed with the proxy's access logs.
mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use futures_util::StreamExt;
use serde_json::Value;
use support::{
    gateway::{Gateway, GatewayConfig, Linked, PORT},
    hop::{start_upstream, ws_connect, ws_over, Capture, Nginx, NginxSite},
    Sidecar,
};

/// One alert transition as the three drivers must agree on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Transition {
    rule: String,
    key: String,
    state: String,
    /// The evidence counts of a resolution (the incident's final tally); a firing's counts
    /// depend on how far the other feed was when it fired, so they are not compared.
    counts: String,
}

fn transition(rule: &Value, key: &Value, state: &Value, evidence: &Value) -> Transition {
    let state = state.as_str().unwrap_or("").to_owned();
    Transition {
        rule: rule.as_str().unwrap_or("").to_owned(),
        key: key.as_str().unwrap_or("").to_owned(),
        counts: if state == "resolved" {
            evidence["counts"].to_string()
        } else {
            String::new()
        },
        state,
    }
}

/// Per incident (dedup key), its transitions in order; exposure drift (the machine's own
/// listeners, seen live only) left out.
fn by_incident(list: Vec<Transition>) -> BTreeMap<String, Vec<Transition>> {
    let mut out: BTreeMap<String, Vec<Transition>> = BTreeMap::new();
    for t in list.into_iter().filter(|t| !t.rule.starts_with("exposure")) {
        out.entry(t.key.clone()).or_default().push(t);
    }
    out
}

fn edgewatch(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgewatch"))
        .args(args)
        .output()
        .expect("edgewatch");
    assert!(
        out.status.success(),
        "edgewatch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn with_logs<'a>(
    mut args: Vec<&'a str>,
    logs: &'a [PathBuf],
    config: Option<&'a Path>,
) -> Vec<&'a str> {
    for l in logs {
        args.push("--access-log");
        args.push(l.to_str().expect("path"));
    }
    if let Some(c) = config {
        args.push("--config");
        args.push(c.to_str().expect("path"));
    }
    args
}

/// `replay`'s transitions, and its incidents open at the end (rule, key, counts).
fn replay(
    pcap: &Path,
    port: u16,
    logs: &[PathBuf],
    config: Option<&Path>,
) -> (Vec<Transition>, Vec<(String, String)>) {
    let port = port.to_string();
    let args = with_logs(
        vec![
            "replay",
            pcap.to_str().expect("path"),
            "--port",
            &port,
            "--output",
            "json",
        ],
        logs,
        config,
    );
    let lines = support::json_lines(&edgewatch(&args));
    let transitions = lines
        .iter()
        .filter(|v| v["type"] == "alert")
        .map(|v| transition(&v["rule"], &v["dedup_key"], &v["state"], &v["evidence"]))
        .collect();
    let open = lines
        .iter()
        .filter(|v| v["type"] == "incident")
        .map(|v| {
            (
                v["dedup_key"].as_str().unwrap_or("").to_owned(),
                v["evidence"]["counts"].to_string(),
            )
        })
        .collect();
    (transitions, open)
}

/// `timeline --pcap`'s transitions (its alert events, in time order), and the incidents its
/// summary says are open at the end (key, counts).
fn timeline(
    pcap: &Path,
    port: u16,
    logs: &[PathBuf],
    config: Option<&Path>,
) -> (Vec<Transition>, Vec<(String, String)>) {
    let port = port.to_string();
    let args = with_logs(
        vec![
            "timeline",
            "--pcap",
            pcap.to_str().expect("path"),
            "--port",
            &port,
            "--output",
            "json",
        ],
        logs,
        config,
    );
    let t: Value = serde_json::from_str(&edgewatch(&args)).expect("timeline JSON");
    let transitions = t["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "alert")
        .map(|e| {
            let d = &e["detail"];
            transition(&d["rule"], &d["dedup_key"], &d["state"], &d["evidence"])
        })
        .collect();
    let open = t["summary"]["incidents"]
        .as_array()
        .expect("incidents")
        .iter()
        .filter(|i| i["standing"]["state"] == "firing")
        .map(|i| {
            (
                i["dedup_key"].as_str().unwrap_or("").to_owned(),
                i["standing"]["evidence"]["counts"].to_string(),
            )
        })
        .collect();
    (transitions, open)
}

/// Every committed recording (`NAME.PORT.pcap[ng]`), with its access logs when it has any
/// (`logs/NAME.*.log`).
fn fixtures() -> Vec<(PathBuf, u16, Vec<PathBuf>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hop");
    let mut out: Vec<(PathBuf, u16, Vec<PathBuf>)> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .map(|p| {
            let port = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit('.').next())
                .and_then(|s| s.parse().ok())
                .expect("port in the fixture's name");
            let name = p
                .file_name()
                .and_then(|s| s.to_str())
                .and_then(|s| s.split('.').next())
                .expect("name")
                .to_owned();
            let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.join("logs"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|l| {
                            l.file_name()
                                .and_then(|s| s.to_str())
                                .is_some_and(|s| s.starts_with(&format!("{name}.")))
                        })
                        .collect()
                })
                .unwrap_or_default();
            logs.sort();
            (p, port, logs)
        })
        .collect();
    out.sort();
    out
}

/// A config that lets one recorded session be evidence (the fixtures hold one each).
fn sensitive_config() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("config");
    std::io::Write::write_all(
        &mut f,
        b"[alerts]\ntimeout_disconnect.min_sessions = 1\nreset_storm.count = 2\n[store]\nenabled = false\n",
    )
    .expect("write");
    f
}

#[test]
fn replay_and_timeline_agree_on_every_committed_recording() {
    let config = sensitive_config();
    let mut incidents = 0;
    let mut with_logs = 0;
    for (pcap, port, logs) in fixtures() {
        with_logs += usize::from(!logs.is_empty());
        for cfg in [None, Some(config.path())] {
            let (r, r_open) = replay(&pcap, port, &logs, cfg);
            let (t, t_open) = timeline(&pcap, port, &logs, cfg);
            assert_eq!(
                by_incident(r.clone()),
                by_incident(t),
                "{} (config {cfg:?}): replay and timeline disagree",
                pcap.display()
            );
            let mut r_open = r_open;
            let mut t_open = t_open;
            r_open.sort();
            t_open.sort();
            assert_eq!(r_open.len(), t_open.len(), "{}", pcap.display());
            for ((_, rc), (_, tc)) in r_open.iter().zip(&t_open) {
                assert_eq!(rc, tc, "{}: final evidence counts differ", pcap.display());
            }
            incidents += r.len();
        }
    }
    // The comparison is about something: the recordings hold incidents, and one (the real
    // Gateway's half-path) needs its access logs to show it.
    assert!(
        incidents >= 3,
        "only {incidents} transitions in all the recordings"
    );
    assert!(with_logs >= 1, "no recording comes with its access logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_replay_and_timeline_name_the_same_half_path_incident() {
    support::require_root();
    let upstream = start_upstream().await;
    let port = upstream.port();
    let dir = tempfile::tempdir().expect("dir");
    let capture = Capture::start(dir.path(), "half_path_agreement", port);
    let broken = Nginx::start(&NginxSite {
        websocket_headers: false,
        ..NginxSite::new(upstream)
    });
    let fixed = Nginx::start(&NginxSite::new(upstream));
    let logs = vec![broken.access_log_path(), fixed.access_log_path()];
    let state = tempfile::tempdir().expect("state");
    let config = format!(
        "[hop]\nports = [{port}]\ndocker_bridges = false\n\
         [edge]\naccess_logs = [{:?}, {:?}]\nstate_dir = {:?}\npoll_interval = \"50ms\"\n\
         [exposure]\nwatched_ports = [{port}]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [alerts]\nquiet_period = \"10m\"\ncooldown = \"0s\"\n[store]\nenabled = false\n",
        logs[0],
        logs[1],
        state.path()
    );
    let mut sc = Sidecar::start(&config);
    // The half-path: nginx answers 426 for the upstream, which never saw an Upgrade.
    let err = ws_connect(broken.port, "/ws").await.expect_err("no 101");
    assert!(err.to_string().contains("426"), "{err}");
    sc.lines.wait_for("the half-path firing", |v| {
        v["type"] == "alert" && v["rule"] == "hop.upgrade_failure" && v["state"] == "firing"
    });
    // Fixed: the first upgrade that works resolves it.
    let mut ws = ws_connect(fixed.port, "/ws").await.expect("upgrade");
    ws.next().await.expect("challenge").expect("frame");
    sc.lines.wait_for("the half-path resolved", |v| {
        v["type"] == "alert" && v["rule"] == "hop.upgrade_failure" && v["state"] == "resolved"
    });
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    drop(ws);
    broken.wait_log_lines(1);
    fixed.wait_log_lines(1);
    // Live has read both logs (their joined requests are out) before it stops.
    sc.lines.wait_for("the fixed request joined", |v| {
        v["type"] == "request" && v["edge"]["status"] == 101
    });
    sc.signal("TERM");
    sc.lines.wait_for("stopped", |v| v["type"] == "stopped");
    let pcap = capture.stop();
    assert_three_agree(&sc, &pcap, port, &logs);
}

/// The same on the real OpenClaw Gateway (in its own namespace, clients in another): behind
/// nginx without the Upgrade headers it answers the upgrade with its Control UI page (200, not
/// the 426 a stand-in gives), so only the join of the access log with the hop shows the
/// half-path. Live, replay and timeline must still name the same critical incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_replay_and_timeline_agree_on_the_real_gateway_half_path() {
    support::require_root();
    if support::gateway::unavailable().is_some() {
        return;
    }
    let gw = Gateway::start(&GatewayConfig {
        trust_the_proxy: true,
        allowed_origins: vec!["https://gw.test".into()],
    });
    let clients = Linked::new('c', 232);
    let dir = tempfile::tempdir().expect("dir");
    let capture = Capture::start_on(
        dir.path(),
        &format!("gateway_half_path.{PORT}"),
        PORT,
        &gw.link.host_if,
        gw.link.ns_ip.into(),
    );
    let broken = Nginx::start(&NginxSite {
        websocket_headers: false,
        listen: Some(clients.host_ip.into()),
        ..NginxSite::new(gw.addr)
    });
    let fixed = Nginx::start(&NginxSite {
        listen: Some(clients.host_ip.into()),
        ..NginxSite::new(gw.addr)
    });
    let logs = vec![broken.access_log_path(), fixed.access_log_path()];
    let state = tempfile::tempdir().expect("state");
    let config = format!(
        "[hop]\nports = [{PORT}]\ninterfaces = [{:?}]\ndocker_bridges = false\n\
         [edge]\naccess_logs = [{:?}, {:?}]\nstate_dir = {:?}\npoll_interval = \"50ms\"\n\
         [exposure]\nwatched_ports = [{}]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [alerts]\nquiet_period = \"10m\"\ncooldown = \"0s\"\n[store]\nenabled = false\n",
        gw.link.host_if,
        logs[0],
        logs[1],
        state.path(),
        support::free_port(),
    );
    let mut sc = Sidecar::start(&config);
    let host = |port: u16| format!("{}:{port}", clients.host_ip);
    // The half-path: the Gateway never sees the Upgrade and serves its page.
    let s = clients.connect(SocketAddr::from((clients.host_ip, broken.port)));
    let err = ws_over(s, &host(broken.port), "/", Some("https://gw.test"))
        .await
        .expect_err("no 101 through the broken location");
    assert!(err.to_string().contains("200"), "{err}");
    let fired = sc.lines.wait_for("the half-path firing", |v| {
        v["type"] == "alert" && v["rule"] == "hop.upgrade_failure" && v["state"] == "firing"
    });
    assert_eq!(fired["severity"], "critical", "{fired:#}");
    // Fixed: the Gateway upgrades and speaks first.
    let s = clients.connect(SocketAddr::from((clients.host_ip, fixed.port)));
    let mut ws = ws_over(s, &host(fixed.port), "/", Some("https://gw.test"))
        .await
        .expect("upgrade through the fixed location");
    let first = ws.next().await.expect("a first frame").expect("frame");
    assert!(
        first.to_text().unwrap_or("").contains("connect.challenge"),
        "{first:?}"
    );
    sc.lines.wait_for("the half-path resolved", |v| {
        v["type"] == "alert" && v["rule"] == "hop.upgrade_failure" && v["state"] == "resolved"
    });
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    drop(ws);
    broken.wait_log_lines(1);
    fixed.wait_log_lines(1);
    sc.lines.wait_for("the fixed request joined", |v| {
        v["type"] == "request" && v["edge"]["status"] == 101
    });
    sc.signal("TERM");
    sc.lines.wait_for("stopped", |v| v["type"] == "stopped");
    let pcap = capture.stop();
    // `EDGEWATCH_SAVE_CAPTURES=tests/fixtures/hop` keeps the access logs beside the capture.
    if let Some(dir) = std::env::var_os("EDGEWATCH_SAVE_CAPTURES") {
        let dir = Path::new(&dir).join("logs");
        std::fs::create_dir_all(&dir).expect("logs dir");
        for (log, name) in logs.iter().zip(["broken", "fixed"]) {
            std::fs::copy(log, dir.join(format!("gateway_half_path.{name}.log"))).expect("copy");
        }
    }
    assert_three_agree(&sc, &pcap, PORT, &logs);
}

/// The live sidecar's alert transitions (it has stopped) against `replay` and `timeline` of
/// the recording with the same logs: the half-path fired and resolved, and all three agree.
fn assert_three_agree(sc: &Sidecar, pcap: &Path, port: u16, logs: &[PathBuf]) {
    let live: Vec<Transition> = sc
        .lines
        .seen_json()
        .iter()
        .filter(|v| v["type"] == "alert")
        .map(|v| transition(&v["rule"], &v["dedup_key"], &v["state"], &v["evidence"]))
        .collect();
    let mut cfg = tempfile::NamedTempFile::new().expect("config");
    std::io::Write::write_all(
        &mut cfg,
        b"[alerts]\nquiet_period = \"10m\"\ncooldown = \"0s\"\n[store]\nenabled = false\n",
    )
    .expect("write");
    let (replayed, _) = replay(pcap, port, logs, Some(cfg.path()));
    let (rebuilt, _) = timeline(pcap, port, logs, Some(cfg.path()));
    let live = by_incident(live);
    let half_path: Vec<&Transition> = live
        .values()
        .flatten()
        .filter(|t| t.rule == "hop.upgrade_failure")
        .collect();
    assert_eq!(
        half_path
            .iter()
            .map(|t| t.state.as_str())
            .collect::<Vec<_>>(),
        ["firing", "resolved"],
        "{live:#?}"
    );
    assert_eq!(live, by_incident(replayed), "live and replay disagree");
    assert_eq!(live, by_incident(rebuilt), "live and timeline disagree");
}
