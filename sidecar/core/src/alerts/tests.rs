use super::*;
use crate::edge::join::JoinedRequest;
use crate::hop::{ConnEvent, ConnId, FrameCounts};

mod slowness;

fn conn(client_port: u16) -> ConnId {
    ConnId {
        client: format!("127.0.0.1:{client_port}").parse().expect("addr"),
        server: "127.0.0.1:18789".parse().expect("addr"),
        first_seen_ns: 0,
    }
}

fn session(client_port: u16, end_ns: u64, idle_ns: u64, end: SessionEnd) -> HopRecord {
    HopRecord::Websocket(WsSession {
        conn: conn(client_port),
        request_id: Some(format!("rid{client_port}")),
        path: "/ws".into(),
        origin: None,
        upgraded_ts_ns: 0,
        end_ts_ns: end_ns,
        duration_ns: end_ns,
        client_frames: FrameCounts::default(),
        server_frames: FrameCounts::default(),
        closes: Vec::new(),
        end,
        longest_idle_ns: idle_ns,
        idle_before_end_ns: idle_ns,
        lost_sync: false,
    })
}

const S: u64 = 1_000_000_000;

#[test]
fn proxy_timeouts_cluster_into_one_incident_that_resolves() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let fin = SessionEnd::FinWithoutClose { from: Side::Client };
    e.hop(&session(1, 100 * S, 60 * S, fin.clone()), &mut out);
    assert!(out.is_empty(), "one session is not a cluster");
    e.hop(&session(2, 200 * S, 61 * S, fin.clone()), &mut out);
    assert_eq!(out.len(), 1);
    let a = &out[0];
    assert_eq!((a.state, a.rule), (State::Firing, "hop.timeout_disconnect"));
    assert!(
        a.summary.contains("about 61 s") || a.summary.contains("about 60 s"),
        "{}",
        a.summary
    );
    assert!(a.first_move.contains("600"));
    assert_eq!(a.evidence["detail"]["recommended_s"], 600);
    assert_eq!(
        a.evidence["items"].as_array().expect("items").len(),
        2,
        "the cluster that opened it is its evidence"
    );
    // A third joins it: no new alert.
    e.hop(&session(3, 300 * S, 60 * S, fin), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(e.firing(), 1);
    e.advance(
        300 * S + ns(AlertsConfig::default().quiet_period) - 1,
        &mut out,
    );
    assert_eq!(out.len(), 1, "not quiet long enough");
    e.advance(300 * S + ns(AlertsConfig::default().quiet_period), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].state, State::Resolved);
    assert_eq!(out[1].evidence["counts"]["sessions"], 3);
    assert_eq!(out[1].dedup_key, out[0].dedup_key);
}

#[test]
fn clean_closes_and_upstream_closes_are_not_timeouts() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    for i in 0..5 {
        e.hop(
            &session(
                i,
                u64::from(i) * S,
                60 * S,
                SessionEnd::CloseHandshake {
                    first_close_from: Side::Client,
                },
            ),
            &mut out,
        );
        e.hop(
            &session(
                100 + i,
                u64::from(i) * S,
                60 * S,
                SessionEnd::FinWithoutClose { from: Side::Server },
            ),
            &mut out,
        );
        // Busy sessions the proxy closed without idling are not timeouts either.
        e.hop(
            &session(
                200 + i,
                u64::from(i) * S,
                0,
                SessionEnd::FinWithoutClose { from: Side::Client },
            ),
            &mut out,
        );
    }
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn sessions_far_apart_do_not_cluster() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let fin = SessionEnd::FinWithoutClose { from: Side::Client };
    let apart = ns(AlertsConfig::default().quiet_period) + S;
    e.hop(&session(1, 100 * S, 60 * S, fin.clone()), &mut out);
    e.hop(&session(2, 100 * S + apart, 60 * S, fin), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

fn refused_at(client_port: u16, at: u64) -> HopRecord {
    HopRecord::Conn(ConnEvent {
        conn: conn(client_port),
        ts_ns: at,
        kind: ConnEventKind::Refused,
        process: None,
    })
}

fn connected_at(client_port: u16, at: u64) -> HopRecord {
    HopRecord::Conn(ConnEvent {
        conn: conn(client_port),
        ts_ns: at,
        kind: ConnEventKind::Connected { latency_ns: 50_000 },
        process: None,
    })
}

fn instant_down() -> AlertsConfig {
    let mut cfg = AlertsConfig::default();
    cfg.upstream_down.grace = Duration::ZERO;
    cfg
}

#[test]
fn refused_connects_are_one_upstream_down_incident_once_past_the_grace_period() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    for i in 0..3u16 {
        e.hop(&refused_at(40000 + i, u64::from(i) * S), &mut out);
    }
    e.advance(30 * S, &mut out);
    assert!(out.is_empty(), "within the grace period: {out:?}");
    e.advance(46 * S, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].rule, "hop.upstream_down");
    assert_eq!(out[0].severity, Severity::Critical);
    assert!(out[0].summary.contains("18789"), "{}", out[0].summary);
    assert!(!out[0].summary.contains("stale"), "{}", out[0].summary);
    assert_eq!(out[0].evidence["counts"]["refused_connects"], 3);
    e.hop(&connected_at(40010, 60 * S), &mut out);
    assert_eq!(out[1].state, State::Resolved);
    assert!(e.take_notices().is_empty());
}

#[test]
fn a_start_or_restart_within_the_grace_period_is_a_notice_not_an_alert() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    // Health checks refused while the Gateway boots, then it listens.
    for i in 0..5u16 {
        e.hop(&refused_at(40000 + i, u64::from(i) * S), &mut out);
    }
    e.upstream_listener(18789, true, None, 12 * S, &mut out);
    e.advance(100 * S, &mut out);
    assert!(out.is_empty(), "{out:?}");
    let notices = e.take_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].kind, "upstream_restart");
    assert!(
        notices[0].summary.contains("started"),
        "{}",
        notices[0].summary
    );
    assert_eq!(notices[0].detail["refused_connects"], 5);
    // A restart: the listener goes and comes back.
    e.upstream_listener(18789, false, None, 200 * S, &mut out);
    e.upstream_listener(18789, true, None, 210 * S, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(e.take_notices()[0].summary.contains("restarted"));
}

#[test]
fn sessions_cut_as_the_listener_goes_are_a_crash() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let cut = session(
        1,
        100 * S,
        S,
        SessionEnd::FinWithoutClose { from: Side::Server },
    );
    e.hop(&cut, &mut out);
    e.upstream_listener(
        18789,
        false,
        Some(serde_json::json!({ "pid": 7, "comm": "openclaw-gatewa" })),
        100 * S + S / 2,
        &mut out,
    );
    e.hop(&refused_at(40001, 101 * S), &mut out);
    assert!(out.is_empty(), "{out:?}");
    e.advance(150 * S, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let a = &out[0];
    assert_eq!(a.rule, "hop.upstream_down");
    assert!(a.summary.contains("crashed"), "{}", a.summary);
    assert_eq!(a.evidence["detail"]["crash"], true);
    assert_eq!(a.evidence["detail"]["process"]["comm"], "openclaw-gatewa");
    assert_eq!(a.evidence["counts"]["cut_sessions"], 1);
}

#[test]
fn an_edge_502_to_another_port_than_the_gateways_is_a_stale_port() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let line = |status: u16, at: &str| {
        crate::edge::nginx::parse_json(
            &format!(
                r#"{{"msec":"{at}","request_id":"r{status}","status":"{status}","upstream_addr":"127.0.0.1:18790"}}"#
            ),
            &crate::edge::nginx::JsonFields::default(),
        )
        .expect("edge line")
    };
    let gw = vec!["127.0.0.1:18789".to_owned()];
    e.edge_upstream(&line(502, "1.0"), &[18789], Some(false), &gw, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let a = &out[0];
    assert_eq!(a.rule, "hop.stale_upstream_port");
    assert_eq!(a.severity, Severity::Critical);
    assert!(a.summary.contains("127.0.0.1:18790"), "{}", a.summary);
    assert!(a.summary.contains("nothing listens there"), "{}", a.summary);
    assert!(a.summary.contains("127.0.0.1:18789"), "{}", a.summary);
    // The Gateway's own port is never a stale port; something answering resolves it.
    let mut own = line(502, "2.0");
    own.upstream_addr = Some("127.0.0.1:18789".into());
    e.edge_upstream(&own, &[18789], Some(true), &gw, &mut out);
    assert_eq!(out.len(), 1);
    e.edge_upstream(&line(200, "3.0"), &[18789], Some(true), &gw, &mut out);
    assert_eq!(out[1].state, State::Resolved);
}

#[test]
fn a_reset_storm_needs_many_resets_in_the_window() {
    let mut cfg = AlertsConfig::default();
    cfg.reset_storm.count = 3;
    cfg.reset_storm.window = Duration::from_secs(10);
    let mut e = Engine::new(cfg);
    let mut out = Vec::new();
    let reset = |port: u16, at: u64| {
        HopRecord::Conn(ConnEvent {
            conn: conn(port),
            ts_ns: at,
            kind: ConnEventKind::Reset { from: Side::Server },
            process: None,
        })
    };
    // Spread out: never three within ten seconds.
    for i in 0..5u16 {
        e.hop(&reset(i, u64::from(i) * 6 * S), &mut out);
    }
    assert!(out.is_empty());
    for i in 0..3u16 {
        e.hop(&reset(100 + i, 100 * S + u64::from(i) * S), &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, "hop.reset_storm");
}

fn http(client_port: u16, at: u64, upgrade: bool, status: u16, ttfb: u64) -> HttpExchange {
    HttpExchange {
        conn: conn(client_port),
        index: 0,
        request_ts_ns: at,
        method: "GET".into(),
        path: "/ws".into(),
        host: Some("gw.example.com".into()),
        origin: Some("https://gw.example.com".into()),
        request_id: Some(format!("rid{client_port}").into()),
        x_forwarded_for: None,
        x_forwarded_proto: None,
        upgrade_websocket: upgrade,
        connection_upgrade: upgrade,
        status: Some(status),
        ttfb_ns: Some(ttfb),
        total_ns: Some(ttfb),
        request_bytes: 100,
        response_bytes: 50,
        outcome: if status == 101 {
            ExchangeOutcome::Upgraded
        } else {
            ExchangeOutcome::Complete
        },
        error_code: None,
    }
}

fn quiet() -> u64 {
    ns(AlertsConfig::default().quiet_period)
}

#[test]
fn a_burst_of_proxy_closes_is_a_reload_but_a_trickle_is_not() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let fin = SessionEnd::FinWithoutClose { from: Side::Client };
    // One every 3 s: never 5 within 2 s.
    for i in 0..6u16 {
        e.hop(&session(i, u64::from(i) * 3 * S, 0, fin.clone()), &mut out);
    }
    assert!(out.is_empty(), "{out:?}");
    // Six within 100 ms.
    for i in 0..6u16 {
        e.hop(
            &session(100 + i, 100 * S + u64::from(i) * S / 50, 0, fin.clone()),
            &mut out,
        );
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].rule, rule::RELOAD_BURST);
    // It fires on the fifth; the sixth joins the incident.
    assert_eq!(out[0].evidence["counts"]["sessions"], 5);
    assert_eq!(out[0].evidence["items"].as_array().expect("items").len(), 5);
    assert!(
        out[0].summary.contains("5 WebSocket sessions"),
        "{}",
        out[0].summary
    );
    e.advance(101 * S + quiet(), &mut out);
    assert_eq!(out[1].state, State::Resolved);
    assert_eq!(out[1].evidence["counts"]["sessions"], 6);
}

#[test]
fn half_path_fires_from_the_hop_alone_and_from_the_join_and_a_101_resolves_it() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    // The upstream asks for an upgrade the request does not carry.
    e.hop(
        &HopRecord::Http(http(1, 10 * S, false, 426, S / 100)),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, rule::UPGRADE_FAILURE);
    assert_eq!(out[0].dedup_key, "hop.upgrade_failure:18789:half_path");
    assert!(out[0].first_move.contains("proxy_set_header Upgrade"));
    // The join sees an edge upgrade whose hop request lacks it (answered 400 here).
    let mut edge = crate::edge::nginx::parse_json(
        r#"{"msec":"11.0","request_id":"rid2","status":"400","http_upgrade":"websocket"}"#,
        &crate::edge::nginx::JsonFields::default(),
    )
    .expect("edge line");
    edge.path = Some("/ws".into());
    let joined = JoinedRequest {
        request_id: Some("rid2".into()),
        matched: crate::edge::join::Matched::Exact,
        reason: None,
        edge: Some(Box::new(edge)),
        hop: Some(Box::new(http(2, 11 * S, false, 400, S / 100))),
        websocket: None,
        refused: None,
    };
    e.request(&joined, &mut out);
    assert_eq!(out.len(), 1, "joins the open incident");
    // An upgrade that works resolves it at once.
    e.hop(
        &HopRecord::Http(http(3, 20 * S, true, 101, S / 100)),
        &mut out,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].state, State::Resolved);
    assert_eq!(out[1].evidence["counts"]["failed_upgrades"], 2);
    assert_eq!(out[1].evidence["items"][1]["edge_status"], 400);
}

#[test]
fn an_upgrade_answered_without_101_is_its_own_cause() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    e.hop(&HopRecord::Http(http(1, S, true, 502, S / 100)), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dedup_key, "hop.upgrade_failure:18789:no_101");
    assert!(
        out[0].summary.contains("answered 502"),
        "{}",
        out[0].summary
    );
}

#[test]
fn a_flood_of_distinct_origins_keeps_a_bounded_list_and_counts_the_rest() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let n = 5_000u64;
    for i in 0..n {
        let mut x = http((i % 60_000) as u16, S + i * 1_000, true, 403, S / 100);
        x.error_code = Some("origin_not_allowed".into());
        x.origin = Some(format!("https://attacker-{i}.example/{}", "x".repeat(500)).into());
        e.hop(&HopRecord::Http(x), &mut out);
    }
    assert_eq!(out.len(), 1, "one incident, announced once");
    let open = e.open_alerts(2_000_000_000);
    let a = &open[0];
    let origins = a.evidence["detail"]["origins"].as_array().expect("origins");
    assert_eq!(origins.len(), MAX_DISTINCT_VALUES);
    assert!(origins
        .iter()
        .all(|o| o.as_str().is_some_and(|s| s.len() <= MAX_VALUE_LEN + 3)));
    assert_eq!(
        a.evidence["detail"]["more_origins"],
        n - MAX_DISTINCT_VALUES as u64
    );
    assert!(a.summary.ends_with(" and others"), "{}", a.summary);
    assert!(a.summary.len() < 10_000, "{}", a.summary.len());
}

#[test]
fn origin_rejections_list_the_origins_and_the_missing_one() {
    let mut cfg = AlertsConfig::default();
    cfg.origin_rejected.allowed_origins = vec!["https://gw.example.com".into()];
    let mut e = Engine::new(cfg);
    let mut out = Vec::new();
    // 403 at the handshake, with a code that says Origin.
    let mut x = http(1, S, true, 403, S / 100);
    x.error_code = Some("origin_not_allowed".into());
    x.origin = Some("https://typo.example.com".into());
    e.hop(&HopRecord::Http(x), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, rule::ORIGIN_REJECTED);
    assert!(
        out[0]
            .summary
            .contains("allowedOrigins lacks https://typo.example.com"),
        "{}",
        out[0].summary
    );
    // 101 then close 1008 from the upstream (what the Gateway does).
    let HopRecord::Websocket(mut s) = session(
        2,
        2 * S,
        0,
        SessionEnd::CloseHandshake {
            first_close_from: Side::Server,
        },
    ) else {
        unreachable!()
    };
    s.origin = Some("http://10.0.0.5:8080".into());
    s.closes.push(crate::hop::CloseFrame {
        from: Side::Server,
        ts_ns: 2 * S,
        code: Some(1008),
        reason: "origin not allowed".into(),
    });
    e.hop(&HopRecord::Websocket(s), &mut out);
    e.advance(2 * S + quiet(), &mut out);
    assert_eq!(out.len(), 2);
    let r = &out[1];
    assert_eq!(r.state, State::Resolved);
    assert_eq!(r.evidence["counts"]["handshakes_403"], 1);
    assert_eq!(r.evidence["counts"]["closes_1008"], 1);
    assert_eq!(
        r.evidence["detail"]["missing_from_allowed_origins"],
        json!(["http://10.0.0.5:8080", "https://typo.example.com"])
    );
    assert_eq!(r.evidence["items"][1]["close_reason"], "origin not allowed");
    // A healthy upgrade is not an origin problem.
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    e.hop(&HopRecord::Http(http(1, S, true, 101, S / 100)), &mut out);
    assert!(out.is_empty());
}

#[test]
fn an_upstream_down_resolves_when_a_connect_succeeds_and_gathers_the_edge_502s() {
    let mut e = Engine::new(instant_down());
    let mut out = Vec::new();
    let refused = ConnEvent {
        conn: conn(40000),
        ts_ns: S,
        kind: ConnEventKind::Refused,
        process: Some(crate::hop::ProcessRef {
            pid: 42,
            comm: "nginx".into(),
        }),
    };
    e.hop(&HopRecord::Conn(refused.clone()), &mut out);
    let edge = crate::edge::nginx::parse_json(
        r#"{"msec":"1.001","request_id":"r502","status":"502","host":"gw.example.com"}"#,
        &crate::edge::nginx::JsonFields::default(),
    )
    .expect("edge line");
    e.request(
        &JoinedRequest {
            request_id: Some("r502".into()),
            matched: crate::edge::join::Matched::EdgeOnly,
            reason: None,
            edge: Some(Box::new(edge)),
            hop: None,
            websocket: None,
            refused: Some(Box::new(refused)),
        },
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert!(out[0].summary.contains("refused"));
    assert_eq!(out[0].rule, "hop.upstream_down");
    e.hop(
        &HopRecord::Conn(ConnEvent {
            conn: conn(40001),
            ts_ns: 5 * S,
            kind: ConnEventKind::Connected { latency_ns: 50_000 },
            process: None,
        }),
        &mut out,
    );
    assert_eq!(out.len(), 2);
    let r = &out[1];
    assert_eq!((r.state, r.at_ns), (State::Resolved, 5 * S));
    assert_eq!(r.evidence["counts"]["refused_connects"], 1);
    assert_eq!(r.evidence["counts"]["edge_errors"], 1);
    assert_eq!(r.evidence["items"][0]["process"]["comm"], "nginx");
    assert_eq!(r.evidence["items"][1]["request_id"], "r502");
    assert!(r.summary.contains("1 edge error"), "{}", r.summary);
}

#[test]
fn cooldown_keeps_a_flapping_incident_quiet_unless_it_outlasts_it() {
    let mut e = Engine::new(AlertsConfig {
        cooldown: Duration::from_secs(100),
        ..instant_down()
    });
    let mut out = Vec::new();
    let refused = |at: u64| {
        HopRecord::Conn(ConnEvent {
            conn: conn(40000),
            ts_ns: at,
            kind: ConnEventKind::Refused,
            process: None,
        })
    };
    let connected = |at: u64| {
        HopRecord::Conn(ConnEvent {
            conn: conn(40001),
            ts_ns: at,
            kind: ConnEventKind::Connected { latency_ns: 1 },
            process: None,
        })
    };
    e.hop(&refused(S), &mut out);
    e.hop(&connected(2 * S), &mut out);
    assert_eq!(out.len(), 2, "fired and resolved");
    // Flaps within the cooldown: silent.
    e.hop(&refused(10 * S), &mut out);
    e.hop(&connected(11 * S), &mut out);
    e.hop(&refused(20 * S), &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        e.firing(),
        0,
        "a silenced incident is not counted as firing"
    );
    // Still refused after the cooldown ended: announced, with what it counted meanwhile.
    e.hop(&refused(150 * S), &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].state, State::Firing);
    assert_eq!(out[2].evidence["counts"]["refused_connects"], 2);
    assert_eq!(out[2].fired_at_ns, 20 * S);
}

#[test]
fn switched_off_rules_and_switched_off_alerts_fire_nothing() {
    let mut cfg = instant_down();
    cfg.upstream_down.enabled = false;
    let mut e = Engine::new(cfg);
    let mut out = Vec::new();
    let refused = refused_at(40000, S);
    e.hop(&refused, &mut out);
    e.advance(100 * S, &mut out);
    assert!(out.is_empty());
    let mut e = Engine::new(AlertsConfig {
        enabled: false,
        ..AlertsConfig::default()
    });
    e.hop(&refused, &mut out);
    e.hop(&HopRecord::Http(http(1, S, false, 426, 1)), &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_403_with_the_gateways_proxy_code_is_an_untrusted_proxy_not_an_origin() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let mut x = http(1, S, true, 403, S / 100);
    x.origin = Some("https://gw.example.com".into());
    x.error_code = Some("proxy_attribution_required".into());
    e.hop(&HopRecord::Http(x.clone()), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].rule, "hop.untrusted_proxy");
    assert_eq!(out[0].severity, Severity::Critical);
    assert!(
        out[0].summary.contains("trustedProxies"),
        "{}",
        out[0].summary
    );
    assert!(out[0].first_move.contains("trustedProxies"));
    // A 403 with no code is a refusal at the handshake, not an Origin diagnosis.
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    x.error_code = None;
    e.hop(&HopRecord::Http(x.clone()), &mut out);
    assert!(
        out.iter().all(|a| a.rule != "hop.origin_rejected"),
        "{out:?}"
    );
    assert_eq!(out[0].rule, "hop.upgrade_failure");
    // A code that says Origin is one.
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    x.error_code = Some("origin_not_allowed".into());
    e.hop(&HopRecord::Http(x), &mut out);
    assert_eq!(out[0].rule, "hop.origin_rejected");
}

#[test]
fn a_1008_for_another_reason_than_the_origin_is_not_an_origin_refusal() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let HopRecord::Websocket(mut s) = session(
        1,
        100 * S,
        0,
        SessionEnd::CloseHandshake {
            first_close_from: Side::Server,
        },
    ) else {
        panic!("a session");
    };
    s.origin = Some("https://gw.test".into());
    s.closes = vec![crate::hop::CloseFrame {
        from: Side::Server,
        ts_ns: 100 * S,
        code: Some(1008),
        reason: "control ui requires device identity (use HTTPS or localhost secure context)"
            .into(),
    }];
    e.hop(&HopRecord::Websocket(s.clone()), &mut out);
    assert!(out.is_empty(), "{out:?}");
    s.closes[0].reason = "origin not allowed (open the Control UI from the gateway host)".into();
    e.hop(&HopRecord::Websocket(s), &mut out);
    assert_eq!(out[0].rule, "hop.origin_rejected");
}

#[test]
fn a_proxys_failed_connect_to_a_local_address_elsewhere_is_a_stale_port() {
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let nginx = crate::hop::ProcessRef {
        pid: 42,
        comm: "nginx".into(),
    };
    let gw = vec!["127.0.0.1:18789".to_owned()];
    let to = |a: &str| a.parse::<std::net::SocketAddr>().expect("addr");
    // Not a proxy, the Gateway's own port, or a public address: not judged here.
    let node = crate::hop::ProcessRef {
        pid: 7,
        comm: "node".into(),
    };
    e.proxy_connect_failed(to("127.0.0.1:18790"), &node, S, &[18789], &gw, &mut out);
    e.proxy_connect_failed(to("127.0.0.1:18789"), &nginx, S, &[18789], &gw, &mut out);
    e.proxy_connect_failed(to("203.0.113.5:443"), &nginx, S, &[18789], &gw, &mut out);
    assert!(out.is_empty(), "{out:?}");
    e.proxy_connect_failed(to("127.0.0.1:18790"), &nginx, S, &[18789], &gw, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, "hop.stale_upstream_port");
    assert_eq!(out[0].dedup_key, "hop.stale_upstream_port:127.0.0.1:18790");
    assert!(
        out[0].summary.contains("nginx (pid 42)"),
        "{}",
        out[0].summary
    );
    assert!(
        out[0].summary.contains("listens on 127.0.0.1:18789"),
        "{}",
        out[0].summary
    );
}
