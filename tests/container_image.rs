//! The container image, run as users run it: the image `cargo xtask image` built with podman
//! (from `sidecar/deploy/Dockerfile`), started with exactly the flags the compose example
//! gives the sidecar (the host's network and PID namespaces, every capability dropped and the
//! eight named ones added, a read-only root filesystem, the volumes), never `--privileged`.
//! From inside it the probes attach, and the host's listeners, NAT rules and loopback traffic
//! are seen; the embedded store runs, locked down, on its volume; the healthcheck answers;
//! SIGTERM stops it with the spool flushed; and each capability taken away is named at start.
//!
//! The compose file is the single source of the flags: they are read from it here, so the two
//! cannot drift. Docker itself is not run (no engine here); podman is.
mod support;

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;
use support::{free_port, Lines, SocketHolder};

/// What `cargo xtask image` wrote.
fn manifest() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image/image.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the image first with `cargo xtask image` (`cargo xtask test` does)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("image.json")
}

/// The compose example's `edgewatch` service.
fn compose_service() -> Value {
    support::compose_example()["services"]["edgewatch"].clone()
}

/// Where each of the compose file's volumes is on this host, for one run.
struct Volumes {
    config: tempfile::NamedTempFile,
    logs: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Volumes {
    fn source(&self, name: &str) -> PathBuf {
        match name {
            "./edgewatch.toml" => self.config.path().to_owned(),
            "caddy-logs" => self.logs.path().to_owned(),
            "edgewatch-state" => self.state.path().to_owned(),
            // The library cache is shared with the host's runs (fetched once, 566 MB).
            "edgewatch-cache" => PathBuf::from("/var/cache/edgewatch"),
            other if other.starts_with('/') => PathBuf::from(other),
            other => panic!("the compose file has a volume the test does not know: {other}"),
        }
    }
}

/// `podman run` with the compose service's flags, minus the capabilities in `without`.
fn podman_run(service: &Value, volumes: &Volumes, without: &[&str], name: &str) -> Command {
    let m = manifest();
    let mut cmd = Command::new("podman");
    cmd.args(["run", "--rm", "--name", name]);
    for f in m["podman_flags"].as_array().expect("podman_flags") {
        cmd.arg(f.as_str().expect("flag"));
    }
    assert!(service.get("privileged").is_none(), "never --privileged");
    cmd.args([
        "--network",
        service["network_mode"].as_str().expect("network_mode"),
    ]);
    cmd.args(["--pid", service["pid"].as_str().expect("pid")]);
    for c in service["cap_drop"].as_array().expect("cap_drop") {
        cmd.args(["--cap-drop", c.as_str().expect("cap")]);
    }
    for c in service["cap_add"].as_array().expect("cap_add") {
        let c = c.as_str().expect("cap");
        if !without.contains(&c) {
            cmd.args(["--cap-add", c]);
        }
    }
    for o in service["security_opt"].as_array().into_iter().flatten() {
        let o = o.as_str().expect("security_opt");
        // Podman refuses an AppArmor option where AppArmor is off (this machine).
        if o.starts_with("apparmor=") && !Path::new("/sys/kernel/security/apparmor").exists() {
            continue;
        }
        cmd.args(["--security-opt", o]);
    }
    if service["read_only"] == true {
        cmd.arg("--read-only");
    }
    for t in service["tmpfs"].as_array().into_iter().flatten() {
        cmd.args(["--tmpfs", t.as_str().expect("tmpfs")]);
    }
    for (k, v) in service["environment"].as_object().into_iter().flatten() {
        cmd.args(["--env", &format!("{k}={}", v.as_str().expect("value"))]);
    }
    for v in service["volumes"].as_array().expect("volumes") {
        let v = v.as_str().expect("volume");
        let mut parts = v.splitn(3, ':');
        let (src, dst) = (parts.next().expect("source"), parts.next().expect("target"));
        let opts = parts.next().map(|o| format!(":{o}")).unwrap_or_default();
        cmd.args([
            "--volume",
            &format!("{}:{dst}{opts}", volumes.source(src).display()),
        ]);
    }
    cmd.arg(m["image"].as_str().expect("image"));
    cmd
}

fn volumes(config: &str) -> Volumes {
    let mut file = tempfile::NamedTempFile::new().expect("config");
    file.write_all(config.as_bytes()).expect("write config");
    // Read by the sidecar in the container, which runs as root without CAP_DAC_OVERRIDE.
    std::fs::set_permissions(
        file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    Volumes {
        config: file,
        logs: tempfile::tempdir().expect("logs"),
        state: tempfile::tempdir().expect("state"),
    }
}

/// The container stopped (and removed) when the test ends, whatever happened.
struct Running {
    name: String,
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "5", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// A DNAT rule on the host, removed when dropped.
struct Dnat(Vec<String>);

impl Dnat {
    fn add(port: u16) -> Self {
        let rule: Vec<String> = [
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-m",
            "comment",
            "--comment",
            "edgewatch-container-test",
            "-j",
            "DNAT",
            "--to-destination",
            &format!("10.254.77.2:{port}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let status = Command::new("iptables")
            .args(["-t", "nat", "-A"])
            .args(&rule)
            .status()
            .expect("iptables");
        assert!(status.success());
        Self(rule)
    }
}

impl Drop for Dnat {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-t", "nat", "-D"])
            .args(&self.0)
            .status();
    }
}

/// A one-request-at-a-time HTTP server on the host's loopback (the "Gateway" of the hop).
fn upstream(port: u16) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind upstream");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
}

/// Long because it is one run of the container with everything users rely on checked in turn
/// (each step needs the container the previous ones started).
#[test]
fn the_image_runs_as_users_run_it() {
    support::require_root();
    let service = compose_service();
    let (watched, hop, published) = (free_port(), free_port(), free_port());
    let (metrics, store) = (free_port(), free_port());
    let vols = volumes(&format!(
        "[exposure]\nwatched_ports = [{watched}]\nrescan_interval = \"1h\"\n\
         [hop]\nports = [{hop}]\ndocker_bridges = false\n\
         [nat]\npoll_interval = \"200ms\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [store.embedded]\nhttp_port = {store}\n\
         [alerts.stale_upstream_port]\nproxies = []\n"
    ));
    let name = format!("edgewatch-test-{}", std::process::id());
    let mut cmd = podman_run(&service, &vols, &[], &name);
    cmd.args(["run", "--output", "json", "--records"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("podman");
    let mut lines = Lines::new(child.stdout.take().expect("stdout"));
    let running = Running {
        name: name.clone(),
        child,
    };

    // The probes attach from inside the container.
    let kernel = lines.wait_for("the kernel line", |v| v["type"] == "kernel");
    let attach = kernel["tc_attach"].as_str().unwrap_or_default().to_owned();
    assert!(attach == "tcx" || attach == "clsact", "{kernel}");
    let ready = lines.wait_for("the ready line", |v| v["type"] == "ready");
    assert_eq!(ready["probes"].as_array().map(Vec::len), Some(4), "{ready}");

    // The embedded store starts on its volume, locked down.
    lines.wait_for("the store", |v| {
        v["type"] == "store" && v["event"] == "ready"
    });
    let secret_file = vols.state.path().join("clickhouse.secret");
    let secret = std::fs::read_to_string(&secret_file).expect("the store's secret, on the volume");
    assert!(
        vols.state.path().join("clickhouse").is_dir(),
        "the store's data on the volume"
    );
    let base = format!("http://127.0.0.1:{store}");
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = ureq::get(&format!("{base}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.call() {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(ureq::Error::StatusCode(c)) => (c, String::new()),
            Err(e) => panic!("{path}: {e}"),
        }
    };
    assert_eq!(get("/ping", &[]).0, 200);
    assert_eq!(
        get("/?query=SELECT%201", &[]).0,
        403,
        "no credentials, no query"
    );
    assert_eq!(
        get("/?query=SELECT%201", &[("X-ClickHouse-User", "default")]).0,
        403,
        "the in-process user is not reachable over HTTP"
    );
    let edgewatch = [
        ("X-ClickHouse-User", "edgewatch"),
        ("X-ClickHouse-Key", secret.trim()),
    ];
    assert_eq!(
        get("/?query=SELECT%201", &edgewatch),
        (200, "1\n".to_owned())
    );

    // A wildcard listener on the host's watched port: the drift alert, with the host's
    // process named (the host's PID namespace).
    let holder = SocketHolder::tcp("0.0.0.0", watched);
    let alert = lines.wait_for("the drift alert", |v| {
        v["type"] == "alert" && v["evidence"]["port"] == watched
    });
    assert_eq!(alert["state"], "firing", "{alert}");
    assert_eq!(alert["evidence"]["process"]["pid"], holder.pid, "{alert}");

    // A Docker-style DNAT rule added on the host.
    let _dnat = Dnat::add(published);
    let change = lines.wait_for("the DNAT publish", |v| {
        v["type"] == "change"
            && v["exposure"]["kind"] == "nat_publish"
            && v["exposure"]["port"] == published
    });
    assert_eq!(change["exposure"]["to_addr"], "10.254.77.2", "{change}");

    // A request on the host's loopback, seen on the hop.
    upstream(hop);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", hop)).expect("connect");
    s.write_all(
        b"GET /from-the-host HTTP/1.1\r\nHost: gw\r\nX-Request-ID: container-test-1\r\n\r\n",
    )
    .expect("request");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let http = lines.wait_for("the hop's exchange", |v| {
        v["type"] == "http" && v["path"] == "/from-the-host"
    });
    assert_eq!(http["status"], 200, "{http}");
    assert_eq!(http["request_id"], "container-test-1", "{http}");

    // The image's healthcheck answers (podman runs the image's HEALTHCHECK command).
    let health = Command::new("podman")
        .args(["healthcheck", "run", &name])
        .output()
        .expect("podman healthcheck");
    assert!(
        health.status.success(),
        "healthcheck: {} {}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );

    // SIGTERM: the spool is flushed into the store before it stops.
    let kill = Command::new("podman")
        .args(["kill", "--signal", "TERM", &name])
        .output()
        .expect("podman kill");
    assert!(kill.status.success(), "{kill:?}");
    let summary = lines.wait_for("the store summary", |v| v["type"] == "store_summary");
    assert_eq!(
        summary["backlog_rows"], 0,
        "the spool was flushed: {summary}"
    );
    assert!(summary["sent"].as_u64() > Some(0), "{summary}");
    assert_eq!(summary["dropped"], 0, "{summary}");
    lines.wait_for("the stopped line", |v| v["type"] == "stopped");
    let mut running = running;
    let status = running.child.wait().expect("podman ends");
    assert!(status.success(), "the container exits cleanly: {status}");
    holder.close();
}

#[test]
fn each_missing_capability_is_named_at_start() {
    support::require_root();
    let service = compose_service();
    let vols = volumes(&format!(
        "[exposure]\nwatched_ports = [{}]\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [store.embedded]\nhttp_port = {}\n",
        free_port(),
        free_port()
    ));
    let caps: Vec<String> = service["cap_add"]
        .as_array()
        .expect("cap_add")
        .iter()
        .map(|c| c.as_str().expect("cap").to_owned())
        .collect();
    assert_eq!(caps.len(), 8, "{caps:?}");
    for cap in &caps {
        let name = format!(
            "edgewatch-test-{}-{}",
            std::process::id(),
            cap.to_lowercase()
        );
        let out = podman_run(&service, &vols, &[cap.as_str()], &name)
            .args(["run", "--output", "json"])
            .stdin(Stdio::null())
            .output()
            .expect("podman");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without CAP_{cap}: {stderr}");
        assert!(
            stderr.contains(&format!("missing capability CAP_{cap}")),
            "CAP_{cap} is named: {stderr}"
        );
    }
}

#[test]
fn the_image_is_small_and_has_its_docs() {
    let m = manifest();
    let size = m["size_bytes"].as_u64().expect("size");
    let binary = m["binary_bytes"].as_u64().expect("binary size");
    // The runtime is Debian's minimal base with ca-certificates, nftables and iptables, and
    // the binary: everything but the binary stays under 150 MB.
    assert!(
        size - binary.min(size) < 150_000_000,
        "{size} bytes, {binary} of them the binary"
    );
    let image = m["image"].as_str().expect("image");
    let mut flags: Vec<String> = m["podman_flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    flags.extend([
        "--entrypoint".into(),
        "sh".into(),
        image.into(),
        "-c".into(),
    ]);
    let out = Command::new("podman")
        .args(["run", "--rm", "--network", "none"])
        .args(&flags)
        .arg(
            "test -s /usr/share/bash-completion/completions/edgewatch \
             && test -s /usr/share/man/man1/edgewatch-run.1 \
             && id edgewatch-ch && command -v nft && command -v iptables \
             && ls /etc/ssl/certs/ca-certificates.crt && edgewatch --version",
        )
        .output()
        .expect("podman");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(concat!("edgewatch ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}
