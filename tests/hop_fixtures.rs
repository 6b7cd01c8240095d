//! Replay of the committed captures (recorded by `hop_replay` with real nginx, a real
//! WebSocket upstream and real clients; refresh them with
//! `EDGEWATCH_SAVE_CAPTURES=tests/fixtures/hop cargo test --test hop_replay`). No root needed:
//! these pin the tracker's output on real traffic, deterministically, and check that damaged
//! captures give an error or a counted drop, never a panic.
use std::path::PathBuf;

use edgewatch::{
    hop::{ConnEventKind, ExchangeOutcome, HopRecord, SessionEnd, Side},
    pipeline::offline::replay,
    replay::{capture::CaptureError, ReplaySummary},
};

/// A committed capture (NAME.PORT.pcap) and its upstream port.
fn fixture_path(name: &str) -> (PathBuf, u16) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hop");
    let file = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}.")))
        })
        .unwrap_or_else(|| panic!("fixture {name}"));
    // NAME.PORT.pcap(ng): the upstream port is in the name.
    let port = file
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit('.').next())
        .and_then(|p| p.parse().ok())
        .expect("port in fixture name");
    (file, port)
}

fn fixture(name: &str) -> (Vec<u8>, u16) {
    let (file, port) = fixture_path(name);
    (std::fs::read(&file).expect("read fixture"), port)
}

fn run(bytes: &[u8], port: u16) -> (Vec<HopRecord>, ReplaySummary) {
    let mut records = Vec::new();
    let summary = replay(bytes, &[port], |r| records.push(r.clone()), |_| {}).expect("replay");
    (records, summary)
}

fn sessions(records: &[HopRecord]) -> Vec<&edgewatch::hop::WsSession> {
    records
        .iter()
        .filter_map(|r| match r {
            HopRecord::Websocket(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn every_fixture_gives_the_records_of_its_incident() {
    let (bytes, port) = fixture("healthy");
    let (records, summary) = run(&bytes, port);
    assert_eq!(summary.gap_bytes, 0);
    let s = sessions(&records);
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].end,
        SessionEnd::CloseHandshake {
            first_close_from: Side::Client
        }
    );
    assert_eq!((s[0].client_frames.text, s[0].server_frames.text), (3, 4));

    let (bytes, port) = fixture("idle_timeout");
    let (records, _) = run(&bytes, port);
    let s = sessions(&records);
    assert_eq!(s[0].end, SessionEnd::FinWithoutClose { from: Side::Client });
    assert!(s[0].idle_before_end_ns >= 1_500_000_000);

    let (bytes, port) = fixture("half_path");
    let (records, _) = run(&bytes, port);
    assert!(records.iter().any(|r| matches!(r,
        HopRecord::Http(x) if x.status == Some(426) && !x.upgrade_websocket)));

    let (bytes, port) = fixture("refused");
    let (records, _) = run(&bytes, port);
    assert!(records.iter().any(|r| matches!(r,
        HopRecord::Conn(c) if c.kind == ConnEventKind::Refused)));

    let (bytes, port) = fixture("reset");
    let (records, _) = run(&bytes, port);
    assert_eq!(
        sessions(&records)[0].end,
        SessionEnd::Reset { from: Side::Server }
    );

    let (bytes, port) = fixture("die");
    let (records, _) = run(&bytes, port);
    assert_eq!(
        sessions(&records)[0].end,
        SessionEnd::FinWithoutClose { from: Side::Server }
    );

    let (bytes, port) = fixture("keepalive");
    let (records, _) = run(&bytes, port);
    let n = records
        .iter()
        .filter(|r| matches!(r, HopRecord::Http(x) if x.outcome == ExchangeOutcome::Complete))
        .count();
    assert_eq!(n, 3);
}

#[test]
fn replay_is_deterministic() {
    for name in ["healthy", "keepalive", "reset"] {
        let (bytes, port) = fixture(name);
        assert_eq!(run(&bytes, port).0, run(&bytes, port).0, "{name}");
    }
}

#[test]
fn pcapng_gives_the_same_records_as_pcap() {
    let (pcap, port) = fixture("healthy");
    let (pcapng, ng_port) = fixture("healthy_ng");
    assert_eq!(port, ng_port);
    assert_eq!(run(&pcap, port).0, run(&pcapng, port).0);
}

#[test]
fn truncated_capture_keeps_what_came_before() {
    let (bytes, port) = fixture("healthy");
    for cut in [30, 100, bytes.len() / 3, bytes.len() / 2, bytes.len() - 7] {
        let (records, summary) = run(&bytes[..cut], port);
        assert!(summary.truncated_at.is_some(), "cut at {cut}");
        if cut > bytes.len() / 2 {
            assert!(
                records.iter().any(|r| matches!(r, HopRecord::Http(_))),
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn not_a_capture_is_a_clear_error() {
    let err =
        replay(&b"this is not a pcap file at all"[..], &[1], |_| {}, |_| {}).expect_err("garbage");
    assert!(matches!(err, CaptureError::NotACapture), "{err}");
    let err = replay(&[][..], &[1], |_| {}, |_| {}).expect_err("empty");
    assert!(matches!(err, CaptureError::NotACapture), "{err}");
}

#[test]
fn corrupted_packets_are_counted_drops_never_panics() {
    let (bytes, port) = fixture("healthy");
    // Flip bytes all over the packet area (past the 24-byte file header and first record
    // header): each variant must replay to the end or fail cleanly.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let mut damaged = bytes.clone();
        for _ in 0..20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = 40 + (state as usize % (damaged.len() - 40));
            damaged[at] = (state >> 32) as u8;
        }
        let mut n = 0usize;
        let _ = replay(&damaged[..], &[port], |_| n += 1, |_| {});
    }
}

/// The hop rules on the recorded incidents, through the real `edgewatch replay`: a refused
/// connect to the Gateway's port is the upstream down, once past the grace period (a start or
/// restart is shorter); the healthy session and the clean keep-alive fire nothing.
#[test]
fn replay_reports_the_hop_rules_alerts() {
    let no_grace = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(no_grace.path(), "[alerts.upstream_down]\ngrace = \"0s\"\n").expect("write");
    let run_with = |name: &str, config: Option<&std::path::Path>| -> Vec<serde_json::Value> {
        let (path, port) = fixture_path(name);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgewatch"));
        cmd.arg("replay")
            .arg(&path)
            .args(["--port", &port.to_string(), "--output", "json"]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().expect("edgewatch replay");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "alert")
            .collect()
    };
    let run = |name: &str| run_with(name, None);
    // One refusal at the end of the recording: within the grace period, no alert.
    assert!(run("refused").is_empty());
    let refused = run_with("refused", Some(no_grace.path()));
    assert_eq!(refused.len(), 1, "{refused:?}");
    let a = &refused[0];
    assert_eq!(a["rule"], "hop.upstream_down");
    assert_eq!(a["state"], "firing");
    assert_eq!(a["severity"], "critical");
    let port = fixture("refused").1;
    assert!(
        a["summary"]
            .as_str()
            .expect("summary")
            .contains(&port.to_string()),
        "{a}"
    );
    assert_eq!(
        a["evidence"]["items"][0]["upstream"],
        format!("127.0.0.1:{port}")
    );
    assert!(run("healthy").is_empty());
    assert!(run("keepalive").is_empty());
}

/// The recordings made next to the real OpenClaw Gateway (tests/gateway.rs, with
/// `EDGEWATCH_SAVE_CAPTURES`): the capture of its hop and nginx's access log, replayed. Each
/// gives its verdict offline, as it did live.
#[test]
fn the_real_gateway_recordings_give_their_verdicts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hop");
    let replay = |name: &str, config: &str| -> Vec<serde_json::Value> {
        let cfg = tempfile::NamedTempFile::new().expect("config");
        std::fs::write(cfg.path(), config).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgewatch"))
            .arg("replay")
            .arg(dir.join(format!("{name}.18789.pcap")))
            .args(["--port", "18789", "--output", "json", "--access-log"])
            .arg(dir.join(format!("logs/{name}.edge.log")))
            .arg("--config")
            .arg(cfg.path())
            .output()
            .expect("edgewatch replay");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let alerts = |lines: &[serde_json::Value]| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|v| v["type"] == "alert")
            .map(|v| {
                (
                    v["rule"].as_str().unwrap_or("").to_owned(),
                    v["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let pair = |r: &str, s: &str| (r.to_owned(), s.to_owned());
    // A healthy start: refused while it boots, then up. A record, no alert.
    let start = replay("gateway_start", "");
    assert!(alerts(&start).is_empty(), "{:?}", alerts(&start));
    let record = start
        .iter()
        .find(|v| v["type"] == "upstream")
        .expect("the upstream record");
    assert!(
        record["message"]
            .as_str()
            .is_some_and(|m| m.contains("started")),
        "{record}"
    );
    // The crash: one critical incident that says so, over when a request works again.
    let crash = replay("gateway_crash", "[alerts.upstream_down]\ngrace = \"2s\"\n");
    assert_eq!(
        alerts(&crash),
        [
            pair("hop.upstream_down", "firing"),
            pair("hop.upstream_down", "resolved")
        ]
    );
    let fired = crash.iter().find(|v| v["type"] == "alert").expect("alert");
    assert!(
        fired["summary"]
            .as_str()
            .is_some_and(|s| s.contains("crashed")),
        "{fired}"
    );
    assert_eq!(fired["severity"], "critical");
    // The proxy pointed at 18790: the stale port, named from the access log.
    let stale = replay("gateway_stale_port", "");
    assert_eq!(alerts(&stale), [pair("hop.stale_upstream_port", "firing")]);
    let fired = stale.iter().find(|v| v["type"] == "alert").expect("alert");
    assert!(
        fired["summary"]
            .as_str()
            .is_some_and(|s| s.contains(":18790")),
        "{fired}"
    );
    // trustedProxies missing: named as such, not as an Origin problem.
    let untrusted = replay("gateway_untrusted_proxy", "");
    assert_eq!(alerts(&untrusted), [pair("hop.untrusted_proxy", "firing")]);
    // A refused Origin (101, then 1008 "origin not allowed"), beside a 1008 for another
    // reason (no device identity) that is not one.
    let origin = replay("gateway_bad_origin", "");
    assert_eq!(alerts(&origin), [pair("hop.origin_rejected", "firing")]);
    let fired = origin.iter().find(|v| v["type"] == "alert").expect("alert");
    assert!(
        fired["evidence"]
            .to_string()
            .contains("https://evil.example"),
        "{fired}"
    );
    assert_eq!(fired["evidence"]["counts"]["closes_1008"], 1, "{fired}");
}
