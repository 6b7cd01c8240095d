//! The container: the sidecar runs with exactly the capabilities the compose file grants
//! (capsh, from Debian's libcap2-bin, drops every other one), fails with the missing one named
//! when one is taken away, and the Dockerfile and compose example agree with the code. There is
//! no Docker engine here: what Docker itself would do is not run.
mod support;

use std::process::{Command, Stdio};

use edgewatch::probe::caps::{EMBEDDED_STORE, REQUIRED};
use support::{Lines, SocketHolder};

/// Every capability this kernel knows, as capsh names them.
fn all_caps() -> Vec<String> {
    let out = Command::new("capsh")
        .arg("--print")
        .output()
        .expect("capsh (cargo xtask test installs libcap2-bin)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .expect("capsh prints the bounding set");
    line.split(',').map(|c| c.trim().to_owned()).collect()
}

/// `edgewatch run` under capsh with only `keep` left in the bounding set (as root, the
/// permitted and effective sets follow it).
fn run_with(keep: &[&str], config: &std::path::Path) -> std::process::Child {
    let drop: Vec<String> = all_caps()
        .into_iter()
        .filter(|c| !keep.contains(&c.as_str()))
        .collect();
    Command::new("capsh")
        .arg(format!("--drop={}", drop.join(",")))
        .args(["--", "-c", "exec \"$0\" \"$@\""])
        .arg(support::edgewatch_bin())
        .args(["run", "--output", "json", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("capsh")
}

fn cap_names() -> Vec<String> {
    REQUIRED
        .iter()
        .map(|c| c.name.trim_start_matches("CAP_").to_ascii_lowercase())
        .map(|n| format!("cap_{n}"))
        .collect()
}

fn config(watched: u16) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(
        f.path(),
        format!(
            "[exposure]\nwatched_ports = [{watched}]\nrescan_interval = \"1h\"\n\
             [hop]\ndocker_bridges = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nenabled = false\n"
        ),
    )
    .expect("write");
    f
}

#[test]
fn exactly_the_granted_capabilities_are_enough() {
    support::require_root();
    let watched = support::free_port();
    let cfg = config(watched);
    let keep = cap_names();
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    let mut child = run_with(&keep, cfg.path());
    let mut lines = Lines::new(child.stdout.take().expect("stdout"));
    let ready = lines.wait_for("the ready line", |v| v["type"] == "ready");
    assert_eq!(
        ready["probes"].as_array().map(Vec::len),
        Some(4),
        "every probe attached: {ready}"
    );
    // Once loaded it keeps only what watching needs (no store here, so no CAP_KILL; no
    // CAP_DAC_READ_SEARCH either: not granted), in every thread, with no-new-privs.
    assert_eq!(
        ready["privileges"]["kept"],
        serde_json::json!(["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]),
        "{ready}"
    );
    let want = (1u64 << 12) | (1u64 << 19);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).expect("tasks");
    let mut seen = 0;
    for t in tasks {
        let status =
            std::fs::read_to_string(t.expect("task").path().join("status")).unwrap_or_default();
        if status.is_empty() {
            continue;
        }
        seen += 1;
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        };
        assert_eq!(field("CapEff:"), Some(want), "{status}");
        assert_eq!(field("CapPrm:"), Some(want), "{status}");
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }
    assert!(seen >= 2, "the runtime's threads were checked");
    // It works: a drift is seen within the second, with the process that opened it (which
    // takes CAP_SYS_PTRACE, the holder having more capabilities than the sidecar).
    let holder = SocketHolder::tcp("0.0.0.0", watched);
    let alert = lines.wait_for("the drift alert", |v| {
        v["type"] == "alert" && v["evidence"]["port"] == watched
    });
    assert_eq!(alert["evidence"]["process"]["pid"], holder.pid, "{alert}");
    // And its own health endpoint answers `edgewatch health` (the container's healthcheck).
    let addr = ready["metrics"].as_str().expect("metrics address");
    let health = Command::new(support::edgewatch_bin())
        .args(["health", "--addr", addr])
        .output()
        .expect("health");
    assert!(health.status.success(), "{health:?}");
    holder.close();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let health = Command::new(support::edgewatch_bin())
        .args(["health", "--addr", addr])
        .output()
        .expect("health");
    assert!(!health.status.success(), "a stopped sidecar is not healthy");
}

#[test]
fn each_missing_capability_is_named() {
    support::require_root();
    let cfg = config(support::free_port());
    let all = cap_names();
    for (i, cap) in REQUIRED.iter().enumerate() {
        let keep: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, c)| c.as_str())
            .collect();
        let out = run_with(&keep, cfg.path())
            .wait_with_output()
            .expect("edgewatch ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: started anyway", cap.name);
        assert!(
            stderr.contains(&format!("missing capability {}", cap.name)),
            "{}: {stderr}",
            cap.name
        );
        assert!(stderr.contains(cap.why), "{stderr}");
    }
}

#[test]
fn the_dockerfile_and_compose_example_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let c = support::compose_example();
    let e = &c["services"]["edgewatch"];
    let granted: Vec<String> = e["cap_add"]
        .as_array()
        .expect("cap_add")
        .iter()
        .map(|v| format!("CAP_{}", v.as_str().unwrap_or("")))
        .collect();
    // The compose file runs the embedded store (no store.url): the probes' capabilities, then
    // the store's.
    let needed: Vec<String> = REQUIRED
        .iter()
        .chain(&EMBEDDED_STORE)
        .map(|c| c.name.to_owned())
        .collect();
    assert_eq!(
        granted, needed,
        "compose grants exactly what the sidecar checks for"
    );
    assert_eq!(e["cap_drop"], serde_json::json!(["ALL"]));
    assert!(e.get("privileged").is_none(), "no --privileged");
    assert_eq!(e["network_mode"], "host");
    assert_eq!(e["pid"], "host");
    assert_eq!(e["healthcheck"]["test"][1], "/usr/local/bin/edgewatch");
    assert_eq!(e["healthcheck"]["test"][2], "health");
    let vols: Vec<&str> = e["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        vols.iter()
            .any(|v| v.starts_with("caddy-logs:/var/log/caddy") && v.ends_with(":ro")),
        "the proxy's logs read-only: {vols:?}"
    );
    let gw = &c["services"]["gateway"]["ports"][0];
    assert!(
        gw.as_str().is_some_and(|p| p.starts_with("127.0.0.1:")),
        "the Gateway is published on loopback only: {gw}"
    );
    assert_eq!(e["read_only"], true, "a read-only root filesystem");
    // The Dockerfile: the source build, the shared runtime base, the `prebuilt` target that
    // `cargo xtask image` builds, and the default (last) stage from source; the bpf-linker
    // the set-up pins, a healthcheck, the binary.
    let docker = std::fs::read_to_string(dir.join("Dockerfile")).expect("Dockerfile");
    let stages: Vec<&str> = docker
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .collect();
    assert_eq!(stages, ["build", "runtime-base", "prebuilt", "runtime"]);
    let xtask = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/src/main.rs"),
    )
    .expect("xtask");
    let pinned = xtask
        .split("const BPF_LINKER_VERSION: &str = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("xtask pins bpf-linker");
    assert!(
        docker.contains(&format!("bpf-linker@{pinned}")),
        "bpf-linker {pinned}"
    );
    assert!(docker.contains("HEALTHCHECK") && docker.contains("\"health\""));
    assert!(docker.contains("ENTRYPOINT [\"/usr/local/bin/edgewatch\"]"));
}
