//! Timelines of the committed recordings (real nginx in front of a real WebSocket upstream,
//! see tests/hop_replay.rs), built offline.
use super::{build, Filter, Lane, Rows, Timeline};
use crate::pipeline::Settings;

/// A recording through the offline pipeline, as rows.
fn offline(path: &std::path::Path, port: u16) -> Rows {
    let mut settings = Settings {
        hop_ports: vec![port],
        ..Settings::default()
    };
    // One recorded session is enough evidence here.
    settings.alerts.timeout_disconnect.min_sessions = 1;
    let file = std::fs::File::open(path).expect("fixture");
    let (rows, summary) = super::offline::rows(file, Vec::new(), &settings).expect("fixture");
    assert!(summary.records > 0);
    rows
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hop")
        .join(name)
}

fn timeline(name: &str, port: u16) -> Timeline {
    let rows = offline(&fixture(name), port);
    build(
        &rows,
        &Filter {
            since_ns: 0,
            until_ns: i64::MAX,
            ..Filter::default()
        },
    )
}

fn position(t: &Timeline, pred: impl Fn(&super::Event) -> bool) -> usize {
    t.events
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no such event in {:#?}", t.events))
}

#[test]
fn idle_timeout_upgrade_then_the_proxy_closes_and_the_cause_is_the_read_timeout() {
    let t = timeline("idle_timeout.35057.pcap", 35057);
    let up = position(&t, |e| e.kind == "upgrade" && e.text.contains("-> 101"));
    let end = position(&t, |e| {
        e.kind == "ws_end" && e.text.contains("fin without close by the proxy")
    });
    let alert = position(&t, |e| e.kind == "alert");
    assert!(up < end && end <= alert, "{:#?}", t.events);
    assert_eq!(t.events[end].lane, Lane::Upstream);
    assert!(t.events[end].notable);
    assert!(
        t.summary.headline.contains("hop.timeout_disconnect"),
        "{}",
        t.summary.headline
    );
    assert!(t
        .summary
        .likely_cause
        .as_deref()
        .is_some_and(|c| c.contains("proxy_read_timeout")));
    // The session and its upgrade are one request.
    let rid = &t.events[up].request_id;
    assert!(!rid.is_empty());
    assert_eq!(&t.events[end].request_id, rid);
    assert!(t
        .groups
        .iter()
        .any(|g| g.kind == "request" && &g.key == rid && g.events.len() >= 2));
}

#[test]
fn the_half_path_shows_the_426_and_names_the_missing_headers() {
    let t = timeline("half_path.39327.pcap", 39327);
    let x = position(&t, |e| e.kind == "http" && e.text.contains("426"));
    assert!(t.events[x].notable);
    assert!(
        t.events[x].text.contains("no Upgrade header on the hop"),
        "{}",
        t.events[x].text
    );
    assert!(
        t.summary.headline.contains("hop.upgrade_failure"),
        "{}",
        t.summary.headline
    );
    assert!(t
        .summary
        .likely_cause
        .as_deref()
        .is_some_and(|c| c.contains("proxy_set_header Upgrade")));
}

#[test]
fn refused_connects_to_the_gateways_port_are_the_upstream_down() {
    // One refusal at the end of the recording: within the grace period, no incident.
    let t = timeline("refused.43527.pcap", 43527);
    assert!(t.summary.incidents.is_empty(), "{:?}", t.summary);
    // With no grace period, a critical upstream-down incident after the refusal.
    let mut settings = Settings {
        hop_ports: vec![43527],
        ..Settings::default()
    };
    settings.alerts.upstream_down.grace = std::time::Duration::ZERO;
    let file = std::fs::File::open(fixture("refused.43527.pcap")).expect("fixture");
    let (rows, _) = super::offline::rows(file, Vec::new(), &settings).expect("fixture");
    let t = build(
        &rows,
        &Filter {
            since_ns: 0,
            until_ns: i64::MAX,
            ..Filter::default()
        },
    );
    let r = position(&t, |e| e.kind == "refused");
    let a = position(&t, |e| e.kind == "alert");
    assert!(r <= a);
    assert_eq!(t.summary.incidents[0]["severity"], "critical");
    assert!(t.summary.headline.contains("hop.upstream_down"));
}

#[test]
fn an_upstream_crash_ends_sessions_from_the_upstream_side() {
    let t = timeline("die.38453.pcap", 38453);
    let end = position(&t, |e| {
        e.kind == "ws_end" && e.text.contains("by the upstream") && e.notable
    });
    assert!(t.events[..end].iter().any(|e| e.kind == "upgrade"));
    assert!(
        t.summary.headline.contains("notable"),
        "{}",
        t.summary.headline
    );
}

#[test]
fn a_request_id_filter_keeps_that_request_only() {
    // A keep-alive connection with several requests.
    let all = timeline("keepalive.44379.pcap", 44379);
    let rid = all
        .events
        .iter()
        .find(|e| !e.request_id.is_empty())
        .map(|e| e.request_id.clone())
        .expect("a request id");
    let rows = offline(&fixture("keepalive.44379.pcap"), 44379);
    let one = build(
        &rows,
        &Filter {
            since_ns: 0,
            until_ns: i64::MAX,
            request_id: Some(rid.clone()),
            ..Filter::default()
        },
    );
    assert!(!one.events.is_empty());
    assert!(one.events.len() < all.events.len());
    assert!(
        one.events.iter().all(|e| e.request_id == rid),
        "{:#?}",
        one.events
    );
}

#[test]
fn events_are_in_time_order_and_the_html_is_self_contained() {
    let t = timeline("healthy.37883.pcap", 37883);
    assert!(t.events.windows(2).all(|w| w[0].ts <= w[1].ts));
    let page = super::render::html(&t);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("<script"),
        "no network access and no script needed to view it"
    );
    let text = super::render::text(&t, false);
    assert!(text.contains("what broke:"));
}

/// The same rows renamed to another node: a second machine that saw exactly the same thing.
fn as_node(rows: &Rows, node: &str) -> Rows {
    let mut r = rows.clone();
    r.exposure_changes
        .iter_mut()
        .for_each(|x| x.node = node.into());
    r.alerts.iter_mut().for_each(|x| x.node = node.into());
    r.conns.iter_mut().for_each(|x| x.node = node.into());
    r.http.iter_mut().for_each(|x| x.node = node.into());
    r.ws.iter_mut().for_each(|x| x.node = node.into());
    r.edge.iter_mut().for_each(|x| x.node = node.into());
    r.requests.iter_mut().for_each(|x| x.node = node.into());
    r.open_incidents
        .iter_mut()
        .for_each(|x| x.node = node.into());
    r
}

#[test]
fn two_nodes_with_the_same_connection_stay_apart_and_one_node_is_the_single_timeline() {
    let single = offline(&fixture("idle_timeout.35057.pcap"), 35057);
    let a = as_node(&single, "edge-a");
    let b = as_node(&single, "edge-b");
    let mut both = a.clone();
    both.exposure_changes.extend(b.exposure_changes.clone());
    both.alerts.extend(b.alerts.clone());
    both.conns.extend(b.conns.clone());
    both.http.extend(b.http.clone());
    both.ws.extend(b.ws.clone());
    both.edge.extend(b.edge.clone());
    both.requests.extend(b.requests.clone());
    both.open_incidents.clear();
    let all = Filter {
        since_ns: 0,
        until_ns: i64::MAX,
        ..Filter::default()
    };
    let fleet = build(&both, &all);
    assert_eq!(fleet.nodes, vec!["edge-a".to_owned(), "edge-b".to_owned()]);
    let alone = build(&a, &all);
    assert_eq!(alone.nodes, vec!["edge-a".to_owned()]);
    // Every event twice, once per node, each naming it.
    assert_eq!(fleet.events.len(), 2 * alone.events.len());
    for node in ["edge-a", "edge-b"] {
        let mine: Vec<&super::Event> = fleet.events.iter().filter(|e| e.node == node).collect();
        assert_eq!(mine.len(), alone.events.len(), "{node}");
        for (m, s) in mine.iter().zip(&alone.events) {
            assert_eq!((m.ts, m.kind, &m.text), (s.ts, s.kind, &s.text));
        }
    }
    // The same requests and hop connections on two machines are two groups each (their
    // events are the node's own), and the incident is two.
    assert_eq!(fleet.groups.len(), 2 * alone.groups.len());
    for g in &fleet.groups {
        let node = &fleet.events[g.events[0]].node;
        assert!(
            g.events.iter().all(|i| &fleet.events[*i].node == node),
            "{g:?}"
        );
    }
    assert_eq!(
        fleet.summary.incidents.len(),
        2 * alone.summary.incidents.len()
    );
    assert!(fleet
        .summary
        .incidents
        .iter()
        .any(|i| i["node"] == "edge-b"));
    // --node: exactly that node's own timeline, nothing of the other.
    let only_b = build(
        &both,
        &Filter {
            node: Some("edge-b".into()),
            ..all.clone()
        },
    );
    assert_eq!(only_b.nodes, vec!["edge-b".to_owned()]);
    assert_eq!(only_b.events, build(&b, &all).events);
    assert!(only_b.events.iter().all(|e| e.node.is_empty()));
}
