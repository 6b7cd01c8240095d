//! The Gateway's listener is the one the hop reaches: a listener on the same port in another
//! network namespace (another container, a second Gateway) neither hides the Gateway's going
//! away nor is taken for it.
use std::{net::SocketAddr, time::Duration};

mod common;

use common::segment;
use edgewatch_core::{
    alerts::{Alert, State},
    exposure::{classify, Family, Listener, ProcessInfo, Proto},
    pipeline::{Mode, Pipeline, Settings, Sink},
};

#[derive(Default)]
struct Alerts(Vec<Alert>);

impl Sink for Alerts {
    fn alert(&mut self, a: &Alert) {
        self.0.push(a.clone());
    }
}

/// `0.0.0.0:18789` in network namespace `netns`, which owns `10.1.<third>.2`, held by `pid`.
fn gateway_in(netns: u64, third: u8, pid: u32) -> Listener {
    let addr = [0, 0, 0, 0].into();
    Listener {
        proto: Proto::Tcp,
        addr,
        port: 18789,
        family: Family::Ipv4,
        scope: classify(addr),
        netns: Some(netns),
        host_netns: false,
        netns_addrs: vec![[10, 1, third, 2].into()],
        inode: None,
        uid: None,
        process: Some(ProcessInfo {
            pid,
            comm: "openclaw-gatewa".into(),
            ..Default::default()
        }),
        cgroup_id: None,
    }
}

/// A pipeline on 18789 whose upstream-down alert fires at once.
fn pipeline() -> Pipeline {
    let mut settings = Settings {
        hop_ports: vec![18789],
        ..Settings::default()
    };
    settings.alerts.upstream_down.grace = Duration::ZERO;
    Pipeline::new(&settings, Mode::Offline)
}

/// The proxy connects to `10.1.<third>.2:18789` at `ts` (a SYN and its SYN-ACK on the hop).
fn hop_connects(p: &mut Pipeline, third: u8, ts: u64, out: &mut Alerts) {
    let client = SocketAddr::from(([10, 1, third, 1], 40100));
    let server = SocketAddr::from(([10, 1, third, 2], 18789));
    p.segment(&segment(ts, client, server, 1000, 0, 0x02, b""));
    p.segment(&segment(ts + 50_000, server, client, 5000, 1001, 0x12, b""));
    p.end_batch(ts + 50_000, out);
}

#[test]
fn the_gateway_is_the_listener_the_hop_reaches_not_any_on_its_port() {
    let mut p = pipeline();
    let mut out = Alerts::default();
    let ts = 1_000_000_000u64;
    let (ours, theirs) = (
        gateway_in(4026532001, 2, 100),
        gateway_in(4026532002, 3, 200),
    );
    p.listener_opened(ours.clone(), ts, &mut out);
    p.listener_opened(theirs.clone(), ts, &mut out);
    // The proxy connects to the Gateway in the first namespace.
    hop_connects(&mut p, 2, ts, &mut out);
    assert!(out.0.is_empty(), "{:#?}", out.0);
    // The other namespace's listener goes: not the Gateway.
    p.listener_closed(&theirs, 200, ts + 1_000_000, &mut out);
    assert!(out.0.is_empty(), "{:#?}", out.0);
    p.listener_opened(theirs.clone(), ts + 2_000_000, &mut out);
    // The Gateway's goes while the other's stays: the Gateway is down, named by its process.
    // (A close event says nothing of the namespace's addresses: its process may be gone.)
    let closing = Listener {
        netns_addrs: Vec::new(),
        ..ours.clone()
    };
    p.listener_closed(&closing, 100, ts + 3_000_000, &mut out);
    let fired = out.0.first().expect("the upstream-down alert");
    assert_eq!(
        (fired.rule, fired.state),
        ("hop.upstream_down", State::Firing)
    );
    let detail = &fired.evidence["detail"];
    assert_eq!(detail["listener_gone"], true, "{fired:#?}");
    assert_eq!(detail["process"]["pid"], 100, "{fired:#?}");
    // Back: the other namespace's listener did not stand in for it meanwhile.
    p.listener_opened(ours, ts + 4_000_000, &mut out);
    assert_eq!(out.0.len(), 2, "{:#?}", out.0);
    assert_eq!(
        (out.0[1].rule, out.0[1].state),
        ("hop.upstream_down", State::Resolved)
    );
}

#[test]
fn an_address_the_namespace_gained_later_counts_once_read_again() {
    let mut p = pipeline();
    let mut out = Alerts::default();
    let ts = 1_000_000_000u64;
    // The Gateway's namespace had 10.1.2.2 when it listened; the proxy now connects to
    // 10.1.9.2, an address that namespace gained since.
    let ours = gateway_in(4026532001, 2, 100);
    p.listener_opened(ours.clone(), ts, &mut out);
    hop_connects(&mut p, 9, ts, &mut out);
    // Read again (the live watch does at each rescan): a listener whose process is gone
    // keeps what was known; ours now has both.
    p.refresh_netns_addrs(|l| {
        (l.process.as_ref()?.pid == 100).then(|| vec![[10, 1, 2, 2].into(), [10, 1, 9, 2].into()])
    });
    assert!(out.0.is_empty(), "{:#?}", out.0);
    p.listener_closed(&ours, 100, ts + 1_000_000, &mut out);
    let fired = out.0.first().expect("the upstream-down alert");
    assert_eq!(
        (fired.rule, fired.state),
        ("hop.upstream_down", State::Firing)
    );
    assert_eq!(
        fired.evidence["detail"]["listener_gone"], true,
        "{fired:#?}"
    );
}
