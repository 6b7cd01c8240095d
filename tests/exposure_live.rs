//! The live exposure watch with the real probes in the real kernel (run as root). Every test
//! uses its own ports (the probes see every namespace) and waits on the sidecar's output lines.
mod support;

use serde_json::Value;
use support::{config_watching, free_port, Sidecar, SocketHolder};

fn is_change(v: &Value, change: &str, port: u16) -> bool {
    v["type"] == "change" && v["change"] == change && v["exposure"]["port"] == port
}

fn is_alert(v: &Value, state: &str, rule: &str, port: u16) -> bool {
    v["type"] == "alert"
        && v["state"] == state
        && v["rule"] == rule
        && v["evidence"]["port"] == port
}

#[test]
fn wildcard_listener_on_watched_port_fires_then_resolves() {
    let port = free_port();
    let mut sidecar = Sidecar::start(&config_watching(&[port], ""));
    let holder = SocketHolder::tcp("0.0.0.0", port);

    let added = sidecar.lines.wait_for("the listener's change line", |v| {
        is_change(v, "added", port)
    });
    let exposure = &added["exposure"];
    assert_eq!(
        added["source"], "probe",
        "seen by the tracepoint, not a rescan"
    );
    assert_eq!(exposure["addr"], "0.0.0.0");
    assert_eq!(exposure["scope"], "wildcard");
    assert_eq!(exposure["family"], "ipv4");
    assert_eq!(exposure["process"]["pid"], holder.pid);
    assert_eq!(exposure["process"]["comm"], holder.comm.as_str());
    assert!(
        exposure["cgroup_id"].as_u64().is_some_and(|id| id > 0),
        "{exposure}"
    );
    assert!(
        exposure["inode"].as_u64().is_some(),
        "sock_diag enrichment: {exposure}"
    );
    assert_eq!(added["watched"], true);
    assert_eq!(added["verdict"]["status"], "drift");

    let alert = sidecar.lines.wait_for("the drift alert", |v| {
        is_alert(v, "firing", "exposure.watched_port_exposed", port)
    });
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["evidence"]["process"]["pid"], holder.pid);
    assert!(alert["first_move"]
        .as_str()
        .is_some_and(|m| m.contains("loopback")));

    holder.close();
    sidecar
        .lines
        .wait_for("the removal", |v| is_change(v, "removed", port));
    let resolved = sidecar.lines.wait_for("the resolution", |v| {
        is_alert(v, "resolved", "exposure.watched_port_exposed", port)
    });
    assert_eq!(resolved["dedup_key"], alert["dedup_key"]);

    // The event counter moved and the kernel drop counters are exported.
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains("edgewatch_kernel_drops_total{reason=\"ringbuf_full\"}"),
        "{metrics}"
    );
    let events = metrics
        .lines()
        .find(|l| l.starts_with("edgewatch_events_total{kind=\"listen_change\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(events >= 2, "open and close events counted: {metrics}");
}

#[test]
fn accepted_connections_do_not_look_like_a_closed_listener() {
    // The kernel reports each accepted connection as its child socket going LISTEN ->
    // SYN_RECV; only LISTEN -> CLOSE is the listener going away.
    let port = free_port();
    let marker = free_port();
    let mut sidecar = Sidecar::start(&config_watching(&[port, marker], ""));
    let _holder = SocketHolder::tcp("127.0.0.1", port);
    sidecar
        .lines
        .wait_for("the listener", |v| is_change(v, "added", port));
    let clients: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    // A later event proves everything before it was processed.
    let _m = SocketHolder::tcp("127.0.0.1", marker);
    sidecar
        .lines
        .wait_for("the marker listener", |v| is_change(v, "added", marker));
    let removed: Vec<Value> = sidecar
        .lines
        .seen_json()
        .into_iter()
        .filter(|v| is_change(v, "removed", port))
        .collect();
    assert!(removed.is_empty(), "{removed:?}");
    drop(clients);
}

#[test]
fn loopback_listener_gives_no_alert() {
    let quiet = free_port();
    let loud = free_port();
    let mut sidecar = Sidecar::start(&config_watching(&[quiet, loud], ""));
    let _loopback = SocketHolder::tcp("127.0.0.1", quiet);
    let added = sidecar
        .lines
        .wait_for("the loopback listener", |v| is_change(v, "added", quiet));
    assert_eq!(added["exposure"]["scope"], "loopback");
    assert_eq!(added["verdict"]["status"], "ok");
    // A later drift on another port proves the sidecar processed everything in between: the
    // loopback listener must not have produced an alert before it.
    let _wildcard = SocketHolder::tcp("0.0.0.0", loud);
    sidecar.lines.wait_for("the other port's alert", |v| {
        is_alert(v, "firing", "exposure.watched_port_exposed", loud)
    });
    let quiet_alerts: Vec<Value> = sidecar
        .lines
        .seen_json()
        .into_iter()
        .filter(|v| v["type"] == "alert" && v["evidence"]["port"] == quiet)
        .collect();
    assert!(quiet_alerts.is_empty(), "{quiet_alerts:?}");
}

#[test]
fn ipv6_wildcard_dual_stack_and_v6only_are_told_apart() {
    let dual = free_port();
    let v6only = free_port();
    let lo6 = free_port();
    let mut sidecar = Sidecar::start(&config_watching(&[dual, v6only, lo6], ""));

    let _a = SocketHolder::tcp("::", dual);
    let v = sidecar
        .lines
        .wait_for("[::] dual-stack", |v| is_change(v, "added", dual));
    assert_eq!(v["exposure"]["addr"], "::");
    assert_eq!(v["exposure"]["scope"], "wildcard");
    assert_eq!(v["exposure"]["family"], "dual_stack");

    let _b = SocketHolder::tcp6_only("::", v6only);
    let v = sidecar
        .lines
        .wait_for("[::] v6only", |v| is_change(v, "added", v6only));
    assert_eq!(v["exposure"]["scope"], "wildcard");
    assert_eq!(v["exposure"]["family"], "ipv6_only");

    let _c = SocketHolder::tcp6_only("::1", lo6);
    let v = sidecar
        .lines
        .wait_for("[::1]", |v| is_change(v, "added", lo6));
    assert_eq!(v["exposure"]["scope"], "loopback");
    assert_eq!(v["verdict"]["status"], "ok");

    // Each alert follows its change line, so by now both were printed.
    let seen = sidecar.lines.seen_json();
    for port in [dual, v6only] {
        assert!(
            seen.iter()
                .any(|v| is_alert(v, "firing", "exposure.watched_port_exposed", port)),
            "IPv6 wildcard on {port} alerts"
        );
    }
    assert!(!seen
        .iter()
        .any(|v| v["type"] == "alert" && v["evidence"]["port"] == lo6));
}

#[test]
fn listener_opened_before_start_is_in_the_inventory_and_its_close_is_seen() {
    let port = free_port();
    let holder = SocketHolder::tcp("0.0.0.0", port);
    let mut sidecar = Sidecar::start(&config_watching(&[port], ""));
    let inventory: Vec<Value> = sidecar
        .lines
        .seen_json()
        .into_iter()
        .filter(|v| v["type"] == "exposure" && v["exposure"]["port"] == port)
        .collect();
    assert_eq!(
        inventory.len(),
        1,
        "in the start inventory, before ready: {inventory:?}"
    );
    assert_eq!(inventory[0]["exposure"]["process"]["pid"], holder.pid);
    assert_eq!(inventory[0]["exposure"]["scope"], "wildcard");
    assert!(
        sidecar.lines.seen_json().iter().any(|v| is_alert(
            v,
            "firing",
            "exposure.watched_port_exposed",
            port
        )),
        "drift present at start alerts at start"
    );

    holder.close();
    let removed = sidecar
        .lines
        .wait_for("the removal", |v| is_change(v, "removed", port));
    assert_eq!(removed["source"], "probe");
}

#[test]
fn bound_udp_socket_is_found_by_the_rescan() {
    let port = free_port();
    let config = format!(
        "[exposure]\nwatched_ports = [{port}]\nrescan_interval = \"200ms\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n"
    );
    let mut sidecar = Sidecar::start(&config);
    let holder = SocketHolder::udp("0.0.0.0", port);
    let v = sidecar
        .lines
        .wait_for("the UDP socket", |v| is_change(v, "added", port));
    assert_eq!(v["exposure"]["proto"], "udp");
    assert_eq!(v["source"], "rescan");
    assert_eq!(v["exposure"]["process"]["pid"], holder.pid);
    holder.close();
    sidecar.lines.wait_for("the UDP socket's removal", |v| {
        is_change(v, "removed", port)
    });
}

#[test]
fn ring_buffer_overflow_is_counted_and_reported() {
    // One page of ring buffer holds about 36 events. Freeze the sidecar, make far more, and
    // let it go: the kernel must count what it could not deliver, and the sidecar must say so.
    let port_base = free_port();
    let config = format!(
        "[exposure]\nwatched_ports = [{port_base}]\nrescan_interval = \"1h\"\n\
         [probes]\nring_buffer_bytes = 4096\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
    );
    let mut sidecar = Sidecar::start(&config);
    sidecar.signal("STOP");
    let burst = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket\nfor _ in range(200):\n    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); s.close()",
        ])
        .status()
        .expect("python3");
    sidecar.signal("CONT");
    assert!(burst.success());
    let drops = sidecar
        .lines
        .wait_for("the kernel drop report", |v| v["type"] == "kernel_drops");
    assert!(
        drops["ringbuf_full"].as_u64().is_some_and(|n| n > 0),
        "{drops}"
    );
    let metrics = sidecar.metrics();
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("edgewatch_kernel_drops_total{reason=\"ringbuf_full\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(counted > 0, "{metrics}");
}

#[test]
fn docker_proxy_in_a_container_cgroup_is_attributed() {
    // A stand-in for Docker's userland proxy: a process named docker-proxy (a symlink to the
    // interpreter), with docker-proxy's command line, inside a cgroup named the way Docker's
    // systemd driver names a container's, listening on 0.0.0.0 and "forwarding" to a watched
    // container port.
    // Bound on 0.0.0.0 by the holder: below the ephemeral range, so no other test's connect
    // can hold it first (CI once saw the bind fail with a `free_port`).
    let host_port = support::free_listen_port();
    let container_port = free_port();
    let id = format!("{:0>64x}", u128::from(std::process::id()) << 64 | 0xed9e);
    let cgroup = support::cgroup2_mount().join(format!("edgewatch-test/docker-{id}.scope"));
    std::fs::create_dir_all(&cgroup).expect("create the test cgroup");
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = dir.path().join("docker-proxy");
    std::os::unix::fs::symlink(support::python_executable(), &proxy).expect("symlink");

    let mut sidecar = Sidecar::start(&config_watching(&[container_port], ""));
    let (hp, cp) = (host_port.to_string(), container_port.to_string());
    let holder = SocketHolder::spawn(support::HolderSpec {
        kind: "tcp",
        host: "0.0.0.0",
        port: host_port,
        program: Some(&proxy),
        args: &[
            "-proto",
            "tcp",
            "-host-ip",
            "0.0.0.0",
            "-host-port",
            &hp,
            "-container-ip",
            "172.17.0.2",
            "-container-port",
            &cp,
        ],
        cgroup: Some(&cgroup),
        ..Default::default()
    });
    assert_eq!(holder.comm, "docker-proxy");

    let alert = sidecar.lines.wait_for("the docker-proxy alert", |v| {
        is_alert(v, "firing", "exposure.watched_port_exposed", host_port)
    });
    let process = &alert["evidence"]["process"];
    assert_eq!(process["comm"], "docker-proxy");
    assert_eq!(process["container"]["runtime"], "docker");
    assert_eq!(process["container"]["id"], id.as_str());
    assert_eq!(process["docker_proxy"]["container_ip"], "172.17.0.2");
    assert_eq!(process["docker_proxy"]["container_port"], container_port);
    assert_eq!(process["docker_proxy"]["host_port"], host_port);

    holder.close();
    sidecar.lines.wait_for("the resolution", |v| {
        is_alert(v, "resolved", "exposure.watched_port_exposed", host_port)
    });
    let _ = std::fs::remove_dir(&cgroup);
    let _ = cgroup.parent().map(std::fs::remove_dir);
}
