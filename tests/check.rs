//! `edgewatch check` against real nginx and Caddy with TLS from a private CA made here, a real
//! WebSocket upstream, and the real probes watching the hop. A correct setup passes every
//! step; each broken setup is caught at the right step with the right message.
mod support;

use std::{net::SocketAddr, path::Path, process::Command};

use serde_json::Value;
use support::{
    hop::{start_upstream, start_upstream_at, Caddy, Nginx, NginxSite},
    tls::{Pki, Served},
};

/// Runs `edgewatch check` for `https://gw.test:PORT/health` (resolved to loopback) and
/// returns its exit status, its steps by name and the final line. (`/health`: the test
/// upstream answers 200 there, as the Gateway answers its page at `/`; a check never passes
/// on an error status.)
fn check(
    edge_port: u16,
    upstream_port: u16,
    ca: &Path,
    extra: &[&str],
) -> (i32, std::collections::BTreeMap<String, Value>, Value) {
    check_with(edge_port, upstream_port, ca, extra, "")
}

/// [`check`] with more config (TOML appended).
fn check_with(
    edge_port: u16,
    upstream_port: u16,
    ca: &Path,
    extra: &[&str],
    more_config: &str,
) -> (i32, std::collections::BTreeMap<String, Value>, Value) {
    let url = format!("https://gw.test:{edge_port}/health");
    let mut args = vec!["--resolve", "gw.test:127.0.0.1"];
    args.extend(extra);
    check_url(&url, upstream_port, ca, &args, more_config)
}

/// `edgewatch check --url URL` (no name resolution override unless `extra` has one).
fn check_url(
    url: &str,
    upstream_port: u16,
    ca: &Path,
    extra: &[&str],
    more_config: &str,
) -> (i32, std::collections::BTreeMap<String, Value>, Value) {
    support::require_root();
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(
        config.path(),
        format!("[hop]\ndocker_bridges = false\n[nat]\nenabled = false\n{more_config}"),
    )
    .expect("write config");
    let out = Command::new(support::edgewatch_bin())
        .args(["check", "--output", "json", "--url", url])
        .arg("--ca-file")
        .arg(ca)
        .args(["--port", &upstream_port.to_string()])
        .arg("--config")
        .arg(config.path())
        .args(extra)
        .output()
        .expect("edgewatch check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = support::json_lines(&stdout);
    let steps = lines
        .iter()
        .filter(|v| v["type"] == "check_step")
        .map(|v| (v["step"].as_str().unwrap_or("").to_owned(), v.clone()))
        .collect();
    let last = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "check")
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no summary line; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.code().unwrap_or(-1), steps, last)
}

fn status(steps: &std::collections::BTreeMap<String, Value>, step: &str) -> String {
    steps[step]["status"].as_str().unwrap_or("").to_owned()
}

fn summary(steps: &std::collections::BTreeMap<String, Value>, step: &str) -> String {
    steps[step]["summary"].as_str().unwrap_or("").to_owned()
}

fn tls_nginx(upstream: SocketAddr, pki: &Pki, served: Served, name: &str) -> Nginx {
    Nginx::start(&NginxSite {
        tls: Some(pki.server(name, served)),
        ..NginxSite::new(upstream)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_nginx_setup_passes_every_step() {
    let pki = Pki::new();
    let upstream = start_upstream().await;
    let nginx = tls_nginx(upstream, &pki, Served::FullChain, "gw.test");
    let port = nginx.port;
    let (code, steps, last) = tokio::task::spawn_blocking(move || {
        check(nginx.port, upstream.port(), &pki.ca_file, &["--idle", "2"])
    })
    .await
    .expect("check");
    for step in ["bind", "tls", "http", "websocket", "idle"] {
        assert_eq!(status(&steps, step), "pass", "{step}: {:#}", steps[step]);
    }
    assert_eq!(code, 0, "{last}");
    assert!(summary(&steps, "tls").contains("chain of 2 verified for gw.test"));
    assert!(
        summary(&steps, "http").contains("request id"),
        "{}",
        summary(&steps, "http")
    );
    assert_eq!(
        steps["http"]["evidence"]["hop"]["x_forwarded_proto"],
        "https"
    );
    assert_eq!(
        steps["websocket"]["evidence"]["hop"]["origin"],
        format!("https://gw.test:{port}"),
        "the upstream saw the browser's origin"
    );
    assert!(summary(&steps, "idle").contains("survived"));
}

/// An edge on an IPv6 literal (`https://[::1]:PORT`, no port-less or bracket confusion, the
/// certificate's IP SAN verified) passes like a named one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_literal_edge_passes_every_step() {
    let pki = Pki::new();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite {
        tls: Some(pki.server("::1", Served::FullChain)),
        listen: Some(std::net::Ipv6Addr::LOCALHOST.into()),
        ..NginxSite::new(upstream)
    });
    let url = format!("https://[::1]:{}/health", nginx.port);
    let (code, steps, last) = tokio::task::spawn_blocking(move || {
        check_url(&url, upstream.port(), &pki.ca_file, &[], "")
    })
    .await
    .expect("check");
    for step in ["bind", "tls", "http", "websocket"] {
        assert_eq!(status(&steps, step), "pass", "{step}: {:#}", steps[step]);
    }
    assert_eq!(code, 0, "{last}");
    assert!(
        summary(&steps, "tls").contains("verified for ::1"),
        "{}",
        summary(&steps, "tls")
    );
    assert_eq!(
        steps["websocket"]["evidence"]["hop"]["origin"],
        format!("https://[::1]:{}", nginx.port),
        "the browser's origin for an IPv6 literal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_caddy_setup_passes_and_its_request_id_matches() {
    let pki = Pki::new();
    let upstream = start_upstream().await;
    let (cert, key) = pki.server("gw.test", Served::FullChain);
    let caddy = Caddy::start_tls(upstream, &cert, &key);
    let port = caddy.port;
    let (code, steps, last) =
        tokio::task::spawn_blocking(move || check(port, upstream.port(), &pki.ca_file, &[]))
            .await
            .expect("check");
    assert_eq!(code, 0, "{last} {steps:#?}");
    assert_eq!(status(&steps, "idle"), "skip");
    let client_rid = &steps["http"]["evidence"]["client"]["request_id"];
    assert!(
        client_rid.is_string(),
        "Caddy returns the id: {:#}",
        steps["http"]
    );
    assert_eq!(client_rid, &steps["http"]["evidence"]["hop"]["request_id"]);
    drop(caddy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_told_apart() {
    let pki = Pki::new();
    let upstream = start_upstream().await;
    let cases = [
        (
            Served::LeafOnly,
            "gw.test",
            "incomplete chain",
            "intermediate",
        ),
        (
            Served::FullChain,
            "other.test",
            "name mismatch",
            "other.test",
        ),
        (Served::Expired, "gw.test", "expired", "2020"),
        (Served::SelfSigned, "gw.test", "self-signed", "gw.test"),
    ];
    for (served, name, what, detail) in cases {
        let nginx = tls_nginx(upstream, &pki, served, name);
        let (port, ca) = (nginx.port, pki.ca_file.clone());
        let (code, steps, _) = tokio::task::spawn_blocking(move || {
            check(port, upstream.port(), &ca, &["--no-passive"])
        })
        .await
        .expect("check");
        assert_eq!(code, 1, "{served:?}");
        assert_eq!(status(&steps, "tls"), "fail", "{served:?}");
        let s = summary(&steps, "tls");
        assert!(s.contains(what) && s.contains(detail), "{served:?}: {s}");
        assert!(steps["tls"]["first_move"].is_string());
        // The later steps still ran: the rest of the path is known too.
        assert_eq!(status(&steps, "websocket"), "pass", "{served:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_without_upgrade_headers_is_the_half_path() {
    let pki = Pki::new();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite {
        websocket_headers: false,
        tls: Some(pki.server("gw.test", Served::FullChain)),
        ..NginxSite::new(upstream)
    });
    let (code, steps, _) =
        tokio::task::spawn_blocking(move || check(nginx.port, upstream.port(), &pki.ca_file, &[]))
            .await
            .expect("check");
    assert_eq!(code, 1);
    assert_eq!(status(&steps, "http"), "pass");
    assert_eq!(status(&steps, "websocket"), "fail");
    let s = summary(&steps, "websocket");
    assert!(
        s.contains("half-path") && s.contains("without Upgrade"),
        "{s}"
    );
    assert!(steps["websocket"]["first_move"]
        .as_str()
        .is_some_and(|m| m.contains("proxy_set_header Upgrade")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_read_timeout_is_revealed_by_the_idle_hold() {
    let pki = Pki::new();
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite {
        read_timeout: "2s",
        tls: Some(pki.server("gw.test", Served::FullChain)),
        ..NginxSite::new(upstream)
    });
    let (code, steps, _) = tokio::task::spawn_blocking(move || {
        check(nginx.port, upstream.port(), &pki.ca_file, &["--idle", "8"])
    })
    .await
    .expect("check");
    assert_eq!(code, 1);
    assert_eq!(status(&steps, "websocket"), "pass");
    assert_eq!(status(&steps, "idle"), "fail");
    let s = summary(&steps, "idle");
    assert!(
        s.contains("the proxy closed the upstream connection without a close frame")
            && s.contains("read timeout is about 2 s"),
        "{s}"
    );
    assert!(steps["idle"]["first_move"]
        .as_str()
        .is_some_and(|m| m.contains("600")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_rejecting_the_origin_is_named() {
    let pki = Pki::new();
    let upstream = start_upstream().await;
    let nginx = tls_nginx(upstream, &pki, Served::FullChain, "gw.test");
    let (code, steps, _) = tokio::task::spawn_blocking(move || {
        check(
            nginx.port,
            upstream.port(),
            &pki.ca_file,
            &["--origin", "https://forbidden.example.com"],
        )
    })
    .await
    .expect("check");
    assert_eq!(code, 1);
    let s = summary(&steps, "websocket");
    assert!(
        s.contains("403 for Origin https://forbidden.example.com"),
        "{s}"
    );
    assert!(steps["websocket"]["first_move"]
        .as_str()
        .is_some_and(|m| m.contains("allowedOrigins")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_port_with_no_listener_is_the_stale_port() {
    let pki = Pki::new();
    let dead = SocketAddr::from(([127, 0, 0, 1], support::closed_port()));
    let nginx = tls_nginx(dead, &pki, Served::FullChain, "gw.test");
    let (code, steps, _) =
        tokio::task::spawn_blocking(move || check(nginx.port, dead.port(), &pki.ca_file, &[]))
            .await
            .expect("check");
    assert_eq!(code, 1);
    assert_eq!(status(&steps, "bind"), "fail");
    assert!(summary(&steps, "bind").contains("nothing listens"));
    assert_eq!(status(&steps, "tls"), "pass");
    for step in ["http", "websocket"] {
        assert_eq!(status(&steps, step), "fail");
        assert!(
            summary(&steps, step).contains("stale upstream port"),
            "{step}: {}",
            summary(&steps, step)
        );
    }
}

/// The proxy pointed at another port than the Gateway's: with the proxy's access log in the
/// config, the check names where the proxy sends requests and where the Gateway listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_pointed_elsewhere_is_named_with_both_ports() {
    let pki = Pki::new();
    let gateway = start_upstream().await;
    let stale = SocketAddr::from(([127, 0, 0, 1], support::closed_port()));
    let nginx = tls_nginx(stale, &pki, Served::FullChain, "gw.test");
    let log = nginx.access_log_path();
    let (code, steps, _) = tokio::task::spawn_blocking(move || {
        check_with(
            nginx.port,
            gateway.port(),
            &pki.ca_file,
            &[],
            &format!("[edge]\naccess_logs = [{log:?}]\n"),
        )
    })
    .await
    .expect("check");
    assert_eq!(code, 1);
    assert_eq!(
        status(&steps, "bind"),
        "pass",
        "{}",
        summary(&steps, "bind")
    );
    for step in ["http", "websocket"] {
        let s = summary(&steps, step);
        assert_eq!(status(&steps, step), "fail", "{step}: {s}");
        assert!(s.contains(&stale.to_string()), "{step}: {s}");
        assert!(s.contains(&format!("listens on {gateway}")), "{step}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_bound_to_every_address_fails_the_bind_step() {
    let pki = Pki::new();
    let upstream = start_upstream_at(SocketAddr::from(([0, 0, 0, 0], support::free_port()))).await;
    let loopback = SocketAddr::from(([127, 0, 0, 1], upstream.port()));
    let nginx = tls_nginx(loopback, &pki, Served::FullChain, "gw.test");
    let (code, steps, _) =
        tokio::task::spawn_blocking(move || check(nginx.port, upstream.port(), &pki.ca_file, &[]))
            .await
            .expect("check");
    assert_eq!(code, 1);
    assert_eq!(status(&steps, "bind"), "fail");
    let s = summary(&steps, "bind");
    assert!(s.contains("0.0.0.0") && s.contains("wildcard"), "{s}");
    assert!(steps["bind"]["first_move"]
        .as_str()
        .is_some_and(|m| m.contains("loopback")));
    // The rest of the path works.
    assert_eq!(status(&steps, "websocket"), "pass");
}
