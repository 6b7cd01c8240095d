//! The command line: config errors, help, and the one-shot inventory.
mod support;

use std::{io::Write, process::Command};

use support::{edgewatch_bin, free_port, json_lines, SocketHolder};

fn edgewatch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(edgewatch_bin())
        .args(args)
        .output()
        .expect("run edgewatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with_config(text: &str, args: &[&str]) -> (i32, String, String) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    let path = file.path().to_str().expect("utf-8 path").to_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", &path]);
    edgewatch(&all)
}

#[test]
fn bad_config_is_a_clear_error_and_nonzero_exit() {
    for command in ["run", "exposure", "check-config"] {
        let (code, _, err) = with_config("[exposure]\nwatched_portz = [1]\n", &[command]);
        assert_eq!(code, 1, "{command}: {err}");
        assert!(
            err.contains("watched_portz"),
            "{command} names the key: {err}"
        );

        let (code, _, err) = with_config("[probes]\nring_buffer_bytes = 1000\n", &[command]);
        assert_eq!(code, 1, "{command}: {err}");
        assert!(err.contains("probes.ring_buffer_bytes"), "{err}");
        assert!(err.contains("1000"), "{err}");
    }
    let (code, _, err) = edgewatch(&["run", "--config", "/nonexistent/edgewatch.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/edgewatch.toml"), "{err}");
    let (code, _, err) = with_config("this is not toml ][", &["check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid config"), "{err}");
}

#[test]
fn check_config_prints_the_effective_defaults() {
    let (code, out, err) = with_config("", &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("watched_ports = [18789]"), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:9464\""), "{out}");
}

#[test]
fn help_explains_the_commands() {
    let (code, out, _) = edgewatch(&["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "exposure", "check-config", "18789"] {
        assert!(out.contains(word), "--help mentions {word}: {out}");
    }
    let (code, out, _) = edgewatch(&["exposure", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--output"), "{out}");
}

#[test]
fn exposure_once_lists_and_classifies_and_exits_3_on_drift() {
    support::require_root();
    let safe = free_port();
    let exposed = free_port();
    let _a = SocketHolder::tcp("127.0.0.1", safe);
    let config = format!("[exposure]\nwatched_ports = [{safe}]\n");
    let (code, out, err) = with_config(&config, &["exposure", "--output", "json"]);
    let lines = json_lines(&out);
    let mine = lines
        .iter()
        .find(|v| v["exposure"]["port"] == safe)
        .unwrap_or_else(|| panic!("port {safe} listed: {out}"));
    assert_eq!(mine["type"], "exposure");
    assert_eq!(mine["exposure"]["scope"], "loopback");
    assert_eq!(mine["watched"], true);
    assert_eq!(mine["verdict"]["status"], "ok");
    assert!(code == 0 || code == 3, "{code}: {err}");

    let _b = SocketHolder::tcp("0.0.0.0", exposed);
    let config = format!("[exposure]\nwatched_ports = [{safe}, {exposed}]\n");
    let (code, out, err) = with_config(&config, &["exposure"]);
    assert_eq!(code, 3, "drift on a watched port exits 3: {err}");
    let row = out
        .lines()
        .find(|l| l.contains(&format!(" {exposed} ")))
        .unwrap_or_else(|| panic!("text table lists {exposed}: {out}"));
    assert!(
        row.contains("wildcard") && row.contains("watched_port_exposed"),
        "{row}"
    );
    assert!(row.contains("python3"), "{row}");
}

#[test]
fn replay_join_counts_malformed_access_log_lines() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hop");
    let pcap = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("keepalive."))
        .expect("keepalive fixture");
    let port = pcap
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit('.').next())
        .expect("port")
        .to_owned();
    let mut log = tempfile::NamedTempFile::new().expect("log");
    log.write_all(b"garbage line\n{\"msec\":\"oops\",\"status\":\"200\"}\n\n")
        .expect("write");
    let (code, out, err) = edgewatch(&[
        "replay",
        pcap.to_str().expect("path"),
        "--port",
        &port,
        "--access-log",
        log.path().to_str().expect("path"),
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    let summary = lines
        .iter()
        .find(|v| v["type"] == "join_summary")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(summary["lines"], 2);
    assert_eq!(summary["parsed"], 0);
    let malformed: u64 = summary["malformed"]
        .as_object()
        .expect("malformed")
        .values()
        .map(|v| v.as_u64().expect("count"))
        .sum();
    assert_eq!(malformed, 2);
    assert_eq!(summary["requests"]["hop_only"], 3, "{summary}");
}

#[test]
fn log_level_flags_and_a_bad_edgewatch_log() {
    // -v / -q are accepted everywhere (global) and change only stderr's detail.
    for flag in ["-v", "-vv", "-q", "-qq"] {
        let (code, out, err) = edgewatch(&[flag, "check-config"]);
        assert_eq!(code, 0, "{flag}: {err}");
        assert!(out.contains("[exposure]"), "{flag}: {out}");
    }
    let (code, _, err) = edgewatch(&["-v", "-q", "check-config"]);
    assert_eq!(code, 2, "-v and -q together are refused: {err}");
    // A value that is not a filter is refused, saying why, instead of silently ignored.
    let out = Command::new(edgewatch_bin())
        .arg("check-config")
        .env("EDGEWATCH_LOG", "loud")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EDGEWATCH_LOG") && err.contains("loud"),
        "{err}"
    );
    let out = Command::new(edgewatch_bin())
        .arg("check-config")
        .env("EDGEWATCH_LOG", "edgewatch=debug,warn")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
