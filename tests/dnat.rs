//! Netfilter DNAT publishing (Docker with its userland proxy off), in test network namespaces:
//! rules with no listening socket behind them are found, classified and alerted on.
mod support;

use serde_json::Value;
use support::{json_lines, Netns, Sidecar};

fn publishes(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "exposure" && v["exposure"]["kind"] == "nat_publish")
        .collect()
}

#[test]
fn dnat_publishes_are_found_and_classified() {
    let ns = Netns::new("dnat");
    // What Docker writes for `-p 18789:18789` and `-p 127.0.0.1:8080:80` (iptables-nft).
    ns.exec(&["iptables", "-t", "nat", "-N", "DOCKER"]);
    ns.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "DOCKER",
    ]);
    ns.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "DOCKER",
        "!",
        "-i",
        "docker0",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "18789",
        "-j",
        "DNAT",
        "--to-destination",
        "172.17.0.2:18789",
    ]);
    ns.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "DOCKER",
        "-d",
        "127.0.0.1/32",
        "!",
        "-i",
        "docker0",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "DNAT",
        "--to-destination",
        "172.17.0.3:80",
    ]);
    // A native nftables rule, and one in iptables-legacy.
    ns.exec(&["nft", "add", "table", "inet", "ewtest"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "ewtest",
        "pre",
        "{ type nat hook prerouting priority -100; }",
    ]);
    ns.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "ewtest",
        "pre",
        "tcp",
        "dport",
        "9000",
        "dnat",
        "ip",
        "to",
        "10.0.0.2:9000",
    ]);
    ns.exec(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "udp",
        "--dport",
        "5353",
        "-j",
        "DNAT",
        "--to-destination",
        "10.0.0.9:53",
    ]);

    let (code, out, err) = ns.edgewatch(&["exposure", "--output", "json"]);
    assert_eq!(
        code, 3,
        "drift: the Gateway port is published to the world: {err}\n{out}"
    );
    let lines = json_lines(&out);
    let found = publishes(&lines);
    let by_port = |port: u64| -> &Value {
        found
            .iter()
            .find(|v| v["exposure"]["port"] == port)
            .unwrap_or_else(|| panic!("publish of {port} found: {out}"))
    };

    let gateway = by_port(18789);
    assert_eq!(gateway["exposure"]["scope"], "wildcard");
    assert_eq!(gateway["exposure"]["backend"], "iptables-nft");
    assert_eq!(gateway["exposure"]["to_addr"], "172.17.0.2");
    assert_eq!(gateway["exposure"]["in_iface"], "!docker0");
    assert_eq!(gateway["watched"], true);
    assert_eq!(
        gateway["verdict"]["rule"],
        "exposure.watched_port_published"
    );
    assert_eq!(gateway["verdict"]["severity"], "critical");

    let local = by_port(8080);
    assert_eq!(local["exposure"]["scope"], "loopback");
    assert_eq!(local["verdict"]["status"], "ok");

    let native = by_port(9000);
    assert_eq!(native["exposure"]["backend"], "nftables");
    assert_eq!(native["exposure"]["scope"], "wildcard");
    assert_eq!(native["verdict"]["rule"], "exposure.unexpected_publish");

    let legacy = by_port(5353);
    assert_eq!(legacy["exposure"]["backend"], "iptables-legacy");
    assert_eq!(legacy["exposure"]["proto"], "udp");
    assert_eq!(legacy["exposure"]["to_port"], 53);

    assert_eq!(
        found.len(),
        4,
        "nothing else, and the xt rule is not counted twice: {out}"
    );
}

#[test]
fn dnat_rule_added_while_running_alerts_and_resolves() {
    let ns = Netns::new("dnatlive");
    let config = "[exposure]\nrescan_interval = \"1h\"\n[nat]\npoll_interval = \"200ms\"\n\
                  [metrics]\nlisten = \"127.0.0.1:0\"\n";
    let mut sidecar = Sidecar::start_in(Some(&ns), config);
    assert!(
        sidecar.ready["nat_tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == "iptables-nft-save")),
        "{}",
        sidecar.ready
    );
    let rule = [
        "-p",
        "tcp",
        "--dport",
        "18789",
        "-j",
        "DNAT",
        "--to-destination",
        "172.17.0.2:18789",
    ];
    let mut add = vec!["iptables", "-t", "nat", "-A", "PREROUTING"];
    add.extend(rule);
    ns.exec(&add);
    let change = sidecar.lines.wait_for("the publish", |v| {
        v["type"] == "change" && v["change"] == "added" && v["exposure"]["port"] == 18789
    });
    assert_eq!(change["source"], "nat");
    let alert = sidecar.lines.wait_for("the alert", |v| {
        v["type"] == "alert"
            && v["state"] == "firing"
            && v["rule"] == "exposure.watched_port_published"
    });
    assert_eq!(alert["evidence"]["to_addr"], "172.17.0.2");

    let mut del = vec!["iptables", "-t", "nat", "-D", "PREROUTING"];
    del.extend(rule);
    ns.exec(&del);
    sidecar.lines.wait_for("the resolution", |v| {
        v["type"] == "alert"
            && v["state"] == "resolved"
            && v["rule"] == "exposure.watched_port_published"
    });
}

#[test]
fn listener_in_another_namespace_is_internal_not_drift() {
    // A container's own 0.0.0.0 listener is not host exposure: only a publish makes it so.
    let ns = Netns::new("inner");
    let port = support::free_port();
    let config = format!(
        "[exposure]\nwatched_ports = [{port}]\nrescan_interval = \"1h\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n"
    );
    let mut sidecar = Sidecar::start(&config);
    let holder = support::SocketHolder::tcp_in(&ns, "0.0.0.0", port);
    let v = sidecar.lines.wait_for("the namespaced listener", |v| {
        v["type"] == "change" && v["change"] == "added" && v["exposure"]["port"] == port
    });
    assert_eq!(v["exposure"]["host_netns"], false);
    assert_eq!(v["exposure"]["process"]["pid"], holder.pid);
    assert_eq!(v["verdict"]["status"], "internal");
}
