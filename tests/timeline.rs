//! `edgewatch timeline` from its two sources: offline from a recorded incident, and from a
//! real ClickHouse 26.7 filled by `replay --store` and by the live sidecar. The same data gives
//! the same timeline either way; the HTML page is opened in headless Chromium.
mod support;

use std::{path::Path, process::Command};

use serde_json::Value;
use support::{config_file, edgewatch_stdout as edgewatch, Sidecar, SocketHolder};

/// The events without what depends on where they were read (the node name).
fn essence(t: &Value) -> Vec<Value> {
    t["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if let Some(d) = e["detail"].as_object_mut() {
                d.remove("node");
            }
            e
        })
        .collect()
}

#[test]
fn offline_and_clickhouse_give_the_same_timeline() {
    let ch = support::store::shared();
    let spool = tempfile::tempdir().expect("spool");
    let db = "t_timeline";
    // Recorded rows keep their recording time: no TTL, so none is dropped as old.
    let config = config_file(&format!(
        "{}ttl_days = 0\n[alerts.timeout_disconnect]\nmin_sessions = 1\n",
        ch.store_config(db, spool.path())
    ));
    let pcap = support::fixture("idle_timeout.35057.pcap");
    let offline: Value = serde_json::from_str(&edgewatch(
        &[
            "timeline", "--pcap", &pcap, "--port", "35057", "--output", "json",
        ],
        Some(config.path()),
    ))
    .expect("offline JSON");
    let events = offline["events"].as_array().expect("events");
    assert!(events.iter().any(|e| e["kind"] == "alert"), "{offline:#}");
    // The same capture through `replay --store` into ClickHouse, then read back.
    let out = Command::new(support::edgewatch_bin())
        .args(["replay", &pcap, "--port", "35057", "--store", "--config"])
        .arg(config.path())
        .output()
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = |v: &Value| v.as_i64().expect("ns");
    let (since, until) = (ns(&offline["since_ns"]), ns(&offline["until_ns"]));
    let fmt = |t: i64| {
        humantime::format_rfc3339_nanos(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_nanos(u64::try_from(t).expect("positive")),
        )
        .to_string()
    };
    let stored: Value = serde_json::from_str(&edgewatch(
        &[
            "timeline",
            "--since",
            &fmt(since),
            "--until",
            &fmt(until),
            "--output",
            "json",
        ],
        Some(config.path()),
    ))
    .expect("ClickHouse JSON");
    assert_eq!(essence(&stored), essence(&offline));
    assert_eq!(stored["summary"], offline["summary"]);
    assert_eq!(stored["groups"], offline["groups"]);
    // One request by id, looked up in request_index, with no time given.
    let rid = events
        .iter()
        .find_map(|e| e["request_id"].as_str())
        .expect("a request id");
    let one: Value = serde_json::from_str(&edgewatch(
        &["timeline", "--request-id", rid, "--output", "json"],
        Some(config.path()),
    ))
    .expect("request JSON");
    let got = one["events"].as_array().expect("events");
    assert!(got.len() >= 2, "{one:#}");
    assert!(got.iter().all(|e| e["request_id"] == rid), "{one:#}");
}

#[test]
fn live_exposure_drift_reads_back_in_order_with_its_cause() {
    let ch = support::store::shared();
    let spool = tempfile::tempdir().expect("spool");
    let db = "t_timeline_live";
    let watched = support::free_port();
    let store = ch.store_config(db, spool.path());
    let mut sidecar = Sidecar::start(&format!(
        "[hop]\nenabled = false\n[nat]\nenabled = false\n\
         [exposure]\nwatched_ports = [{watched}]\nrescan_interval = \"1h\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{store}snapshot_interval = \"1h\"\n"
    ));
    sidecar.lines.wait_for("the store", |v| {
        v["type"] == "store" && v["event"] == "ready"
    });
    let holder = SocketHolder::tcp("0.0.0.0", watched);
    sidecar.lines.wait_for("the drift alert", |v| {
        v["type"] == "alert" && v["state"] == "firing" && v["evidence"]["port"] == watched
    });
    holder.close();
    sidecar.lines.wait_for("the resolution", |v| {
        v["type"] == "alert" && v["state"] == "resolved" && v["evidence"]["port"] == watched
    });
    sidecar.signal("TERM");
    let summary = sidecar
        .lines
        .wait_for("the store summary", |v| v["type"] == "store_summary");
    assert_eq!(summary["backlog_rows"], 0, "{summary}");
    let config = config_file(&store);
    let t: Value = serde_json::from_str(&edgewatch(
        &[
            "timeline",
            "--since",
            "-10m",
            "--port",
            &watched.to_string(),
            "--output",
            "json",
        ],
        Some(config.path()),
    ))
    .expect("timeline JSON");
    let seq: Vec<String> = t["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap_or(""),
                e["detail"]["change"]
                    .as_str()
                    .or(e["detail"]["state"].as_str())
                    .unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        seq,
        [
            "exposure added",
            "alert firing",
            "exposure removed",
            "alert resolved"
        ],
        "{t:#}"
    );
    assert!(
        t["summary"]["headline"]
            .as_str()
            .is_some_and(|h| h.contains("exposure.watched_port_exposed")),
        "{:#}",
        t["summary"]
    );
    assert!(t["summary"]["likely_cause"]
        .as_str()
        .is_some_and(|c| c.contains("loopback")));
    // The text form has the summary on top and aligned columns.
    let text = edgewatch(
        &[
            "timeline",
            "--since",
            "-10m",
            "--port",
            &watched.to_string(),
        ],
        Some(config.path()),
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("what broke:"), "{text}");
    assert!(text.contains(&format!("0.0.0.0:{watched}")), "{text}");
}

#[test]
fn the_html_page_renders_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("timeline-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let page = dir.join("upstream_down.html");
    let shot = dir.join("upstream_down.png");
    let _ = std::fs::remove_file(&shot);
    // No grace period: the recording's refusal is an upstream-down incident at once.
    let config = config_file("[alerts.upstream_down]\ngrace = \"0s\"\n");
    edgewatch(
        &[
            "timeline",
            "--pcap",
            &support::fixture("refused.43527.pcap"),
            "--port",
            "43527",
            "--output",
            "html",
            "--out",
            page.to_str().expect("path"),
        ],
        Some(config.path()),
    );
    let chromium = |extra: &[&str]| {
        let profile = tempfile::tempdir().expect("profile");
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("chromium (cargo xtask test installs Debian's chromium)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The page as the browser built it.
    let dom = chromium(&["--dump-dom"]);
    assert!(dom.contains("id=\"summary\""), "{dom}");
    assert!(dom.contains("hop.upstream_down"), "{dom}");
    assert!(
        dom.contains("class=\"event refused lane-upstream notable\""),
        "{dom}"
    );
    assert!(dom.contains("refused (nothing listens)"), "{dom}");
    // And a screenshot, kept as the test's artifact.
    chromium(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("timeline page and screenshot: {}", dir.display());
}
