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

#[test]
fn one_config_flag_and_the_same_names_everywhere() {
    // --config is global: before or after the command, for every command.
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(b"[exposure]\nwatched_ports = [4242]\n")
        .expect("write");
    let path = file.path().to_str().expect("utf-8 path");
    for args in [
        vec!["--config", path, "check-config"],
        vec!["check-config", "--config", path],
        vec!["-c", path, "check-config"],
    ] {
        let (code, out, err) = edgewatch(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("watched_ports = [4242]"), "{args:?}: {out}");
    }
    // --output and --port are the names; timeline's --format and --upstream-port and check's
    // --upstream-port still work, and are not advertised.
    for command in ["run", "exposure", "replay", "check", "timeline"] {
        let (code, out, _) = edgewatch(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("--output"), "{command}: {out}");
        assert!(out.contains("--config"), "{command}: {out}");
        assert!(
            !out.contains("--format") && !out.contains("--upstream-port"),
            "{command}: {out}"
        );
    }
    for command in ["replay", "check", "timeline"] {
        let (_, out, _) = edgewatch(&[command, "--help"]);
        assert!(out.contains("-p, --port <PORT>"), "{command}: {out}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let pcap = dir.path().join("empty.pcap");
    // A valid pcap with no packet: the global header only (little-endian, Ethernet).
    let mut header = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    header.extend([0u8; 8]);
    header.extend(65535u32.to_le_bytes());
    header.extend(1u32.to_le_bytes());
    std::fs::write(&pcap, header).expect("write pcap");
    let pcap = pcap.to_str().expect("utf-8 path");
    let old = [
        "timeline",
        "--pcap",
        pcap,
        "--upstream-port",
        "4242",
        "--format",
        "json",
    ];
    let new = [
        "timeline", "--pcap", pcap, "--port", "4242", "--output", "json",
    ];
    let (code_old, out_old, err) = edgewatch(&old);
    assert_eq!(code_old, 0, "{err}");
    let (code_new, out_new, err) = edgewatch(&new);
    assert_eq!(code_new, 0, "{err}");
    let json = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s).expect("timeline json");
        v["summary"]["generated_at"] = serde_json::Value::Null;
        v
    };
    assert_eq!(json(&out_old), json(&out_new), "the aliases mean the same");
    assert_eq!(json(&out_new)["type"], "timeline");
    // A usage error is exit status 2, naming the flag.
    let (code, _, err) = edgewatch(&["timeline", "--formatt", "json"]);
    assert_eq!(code, 2);
    assert!(err.contains("--formatt"), "{err}");
}

#[test]
fn help_is_wrapped_and_summarises_every_command() {
    let out = Command::new(edgewatch_bin())
        .arg("--help")
        .env("COLUMNS", "300")
        .env_remove("EDGEWATCH_CONFIG")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().all(|l| l.chars().count() <= 100),
        "help lines are wrapped at 100 columns:\n{text}"
    );
    // One line per command in the list, and the whole product described, not one part.
    for (command, words) in [
        ("run", "Watch live"),
        ("exposure", "exposure inventory"),
        ("replay", "capture"),
        ("check", "golden path"),
        ("timeline", "Reconstruct"),
        ("health", "healthcheck"),
        ("check-config", "effective configuration"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(command) && l.contains(words)),
            "{command}: {text}"
        );
    }
    for word in [
        "exposure",
        "hop",
        "WebSocket",
        "ClickHouse",
        "access logs",
        "Alerts",
    ] {
        assert!(text.contains(word), "--help describes {word}: {text}");
    }
    // -h is the short form: summaries only.
    let (_, short, _) = edgewatch(&["timeline", "-h"]);
    let (_, long, _) = edgewatch(&["timeline", "--help"]);
    assert!(short.len() < long.len(), "{short}\n---\n{long}");
}

/// The README's usage block is the command line's own synopsis; every flag the README's
/// `edgewatch ...` lines use exists on that command.
#[test]
fn readme_usage_matches_the_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, _, err) = edgewatch(&["generate-docs", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    let usage = std::fs::read_to_string(dir.path().join("usage.txt")).expect("usage.txt");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let marker = "<!-- usage: written by `cargo xtask docs`";
    let at = readme.find(marker).expect("the README's usage marker");
    let block = readme[at..]
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(block, _)| block)
        .expect("the usage block");
    assert_eq!(
        block, usage,
        "README.md's usage block is stale: run `cargo xtask docs`"
    );
    // Completions and man pages are generated too.
    for file in [
        "completions/edgewatch.bash",
        "completions/_edgewatch",
        "completions/edgewatch.fish",
        "man/edgewatch.1",
        "man/edgewatch-timeline.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(file)).expect(file);
        assert!(text.contains("timeline"), "{file}");
    }
    // Each flag on an `edgewatch COMMAND ...` line of the README exists on that command.
    let mut helps = std::collections::HashMap::new();
    for line in readme.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("edgewatch ") else {
            continue;
        };
        let Some(command) = rest.split_whitespace().next() else {
            continue;
        };
        if command.starts_with('[') || command.starts_with('-') {
            continue;
        }
        let help = helps
            .entry(command.to_owned())
            .or_insert_with(|| edgewatch(&[command, "--help"]).1);
        for flag in rest
            .split(|c: char| c.is_whitespace() || "[]|=`".contains(c))
            .filter(|w| w.starts_with("--") && w.len() > 2)
        {
            let flag = flag.trim_end_matches(['.', ',', ')', ':']);
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "README: `{line}` uses {flag}, which `edgewatch {command}` does not have"
            );
        }
    }
}
