use super::*;
use crate::hop::{ConnEvent, ConnId, ExchangeOutcome};

fn conn(server_port: u16) -> ConnId {
    ConnId {
        client: "127.0.0.1:40000".parse().expect("addr"),
        server: format!("127.0.0.1:{server_port}").parse().expect("addr"),
        first_seen_ns: 0,
    }
}

fn exchange(path: &str, upgrade: bool, status: u16, rid: Option<&str>) -> HopRecord {
    HopRecord::Http(HttpExchange {
        conn: conn(18789),
        index: 0,
        request_ts_ns: 1,
        method: "GET".into(),
        path: path.into(),
        host: Some("gw.test".into()),
        origin: Some("https://gw.test".into()),
        request_id: rid.map(Into::into),
        x_forwarded_for: None,
        x_forwarded_proto: None,
        upgrade_websocket: upgrade,
        connection_upgrade: upgrade,
        status: Some(status),
        ttfb_ns: Some(1),
        total_ns: Some(1),
        request_bytes: 1,
        response_bytes: 1,
        outcome: if status == 101 {
            ExchangeOutcome::Upgraded
        } else {
            ExchangeOutcome::Complete
        },
        error_code: None,
    })
}

fn view(records: Vec<HopRecord>) -> HopView {
    HopView {
        available: true,
        why: None,
        records,
        ..HopView::default()
    }
}

#[test]
fn http_passes_when_the_hop_saw_it_with_a_request_id() {
    let client = ClientResponse {
        status: Some(200),
        ..Default::default()
    };
    let v = view(vec![exchange("/?n=abc", false, 200, Some("r1"))]);
    let s = http_step(&client, &v, "abc", 18789);
    assert_eq!(s.status, Status::Pass, "{s:?}");
    let v = view(vec![exchange("/?n=abc", false, 200, None)]);
    let s = http_step(&client, &v, "abc", 18789);
    assert_eq!(s.status, Status::Warn);
    assert!(s.first_move.expect("move").contains("X-Request-ID"));
}

#[test]
fn a_502_with_refused_connects_is_the_stale_port() {
    let client = ClientResponse {
        status: Some(502),
        ..Default::default()
    };
    let v = view(vec![HopRecord::Conn(ConnEvent {
        conn: conn(18789),
        ts_ns: 1,
        kind: ConnEventKind::Refused,
        process: None,
    })]);
    let s = http_step(&client, &v, "abc", 18789);
    assert_eq!(s.status, Status::Fail);
    assert!(s.summary.contains("stale upstream port"), "{}", s.summary);
}

#[test]
fn websocket_failures_are_localised() {
    let client = WsClient {
        status: Some(426),
        origin: "https://gw.test".into(),
        ..Default::default()
    };
    let v = view(vec![exchange("/?n=abc", false, 426, Some("r"))]);
    let s = ws_step(&client, &v, "abc", 18789);
    assert_eq!(s.status, Status::Fail);
    assert!(s.summary.contains("half-path"), "{}", s.summary);
    let client = WsClient {
        status: Some(403),
        origin: "https://gw.test".into(),
        ..Default::default()
    };
    let with_code = |code: Option<&str>| {
        let mut x = exchange("/?n=abc", true, 403, Some("r"));
        if let HopRecord::Http(h) = &mut x {
            h.error_code = code.map(str::to_owned);
        }
        view(vec![x])
    };
    // A 403 whose code says Origin.
    let s = ws_step(
        &client,
        &with_code(Some("origin_not_allowed")),
        "abc",
        18789,
    );
    assert!(s.summary.contains("403 for Origin"), "{}", s.summary);
    assert!(s.first_move.expect("move").contains("allowedOrigins"));
    // The Gateway's refusal of an untrusted proxy: named as such, not as the Origin.
    let s = ws_step(
        &client,
        &with_code(Some("proxy_attribution_required")),
        "abc",
        18789,
    );
    assert!(s.summary.contains("trustedProxies"), "{}", s.summary);
    assert!(!s.summary.contains("Origin"), "{}", s.summary);
    // A bare 403: refused at the handshake, no Origin diagnosis.
    let s = ws_step(&client, &with_code(None), "abc", 18789);
    assert!(s.summary.contains("at the handshake"), "{}", s.summary);
    // A 1008 for another reason than the Origin is not an Origin refusal.
    let other = WsClient {
        status: Some(101),
        closed_with: Some((1008, "invalid connect params".into())),
        origin: "https://x".into(),
        ..Default::default()
    };
    let s = ws_step(&other, &view(Vec::new()), "abc", 18789);
    assert!(!s.summary.contains("refuses Origin"), "{}", s.summary);
    let client = WsClient {
        status: Some(101),
        closed_with: Some((1008, "origin not allowed".into())),
        origin: "https://x".into(),
        ..Default::default()
    };
    let s = ws_step(&client, &view(Vec::new()), "abc", 18789);
    assert!(
        s.summary.contains("refuses Origin https://x"),
        "{}",
        s.summary
    );
}

#[test]
fn exit_code_is_zero_only_when_all_pass() {
    let s = |status| Step::new("x", status, String::new(), Value::Null);
    assert_eq!(exit_code(&[s(Status::Pass), s(Status::Skip)]), 0);
    assert_eq!(exit_code(&[s(Status::Pass), s(Status::Warn)]), 2);
    assert_eq!(exit_code(&[s(Status::Warn), s(Status::Fail)]), 1);
}

#[test]
fn no_http_step_passes_on_an_error_status() {
    let client = ClientResponse {
        status: Some(403),
        request_id: Some("r".into()),
        ..Default::default()
    };
    let mut x = exchange("/?n=abc", false, 403, Some("r"));
    let v = view(vec![x.clone()]);
    let s = http_step(&client, &v, "abc", 18789);
    assert_eq!(s.status, Status::Fail, "{}", s.summary);
    if let HopRecord::Http(h) = &mut x {
        h.error_code = Some("proxy_attribution_required".into());
    }
    let s = http_step(&client, &view(vec![x]), "abc", 18789);
    assert_eq!(s.status, Status::Fail);
    assert!(s.summary.contains("trustedProxies"), "{}", s.summary);
    assert!(s.first_move.expect("move").contains("trustedProxies"));
}

#[test]
fn a_request_the_proxy_sent_elsewhere_names_both_ports() {
    let client = ClientResponse {
        status: Some(502),
        ..Default::default()
    };
    let mut v = view(Vec::new());
    v.proxied_to = vec![("abc".into(), "127.0.0.1:18790".into())];
    v.gateway = vec!["127.0.0.1:18789".into()];
    let s = http_step(&client, &v, "abc", 18789);
    assert_eq!(s.status, Status::Fail);
    assert!(s.summary.contains("127.0.0.1:18790"), "{}", s.summary);
    assert!(
        s.summary.contains("listens on 127.0.0.1:18789"),
        "{}",
        s.summary
    );
}
