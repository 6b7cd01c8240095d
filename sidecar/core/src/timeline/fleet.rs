//! Timelines of several nodes: the rows of each node (`store.node`) become that node's
//! timeline, exactly as if it were alone, and the events are merged in time order, each
//! naming its node. Connections are keyed by node too (two machines may both have a
//! `10.0.0.2:41000 -> 127.0.0.1:18789` hop), and so are incidents.
use std::collections::BTreeSet;

use super::{assemble, build_one, Event, Filter, Rows, Timeline};

impl Rows {
    /// The distinct nodes of all rows, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        out.extend(self.exposure_changes.iter().map(|r| &r.node));
        out.extend(self.alerts.iter().map(|r| &r.node));
        out.extend(self.conns.iter().map(|r| &r.node));
        out.extend(self.http.iter().map(|r| &r.node));
        out.extend(self.ws.iter().map(|r| &r.node));
        out.extend(self.edge.iter().map(|r| &r.node));
        out.extend(self.requests.iter().map(|r| &r.node));
        out.extend(self.open_incidents.iter().map(|r| &r.node));
        out.into_iter().cloned().collect()
    }

    /// Only the rows of `node`.
    pub fn of_node(&self, node: &str) -> Rows {
        fn keep<T: Clone>(rows: &[T], node: &str, of: impl Fn(&T) -> &str) -> Vec<T> {
            rows.iter().filter(|r| of(r) == node).cloned().collect()
        }
        Rows {
            exposure_changes: keep(&self.exposure_changes, node, |r| &r.node),
            alerts: keep(&self.alerts, node, |r| &r.node),
            conns: keep(&self.conns, node, |r| &r.node),
            http: keep(&self.http, node, |r| &r.node),
            ws: keep(&self.ws, node, |r| &r.node),
            edge: keep(&self.edge, node, |r| &r.node),
            requests: keep(&self.requests, node, |r| &r.node),
            open_incidents: keep(&self.open_incidents, node, |r| &r.node),
        }
    }
}

/// Builds the timeline of `rows` within `filter` (its `node`, when set, keeps that node's
/// rows only). Rows of one node give exactly the one-node timeline; rows of several give
/// each node's events, merged, with the node on every event and incident.
pub fn build(rows: &Rows, filter: &Filter) -> Timeline {
    let scoped;
    let rows = match &filter.node {
        Some(n) => {
            scoped = rows.of_node(n);
            &scoped
        }
        None => rows,
    };
    let nodes = rows.nodes();
    if nodes.len() <= 1 {
        let mut t = build_one(rows, filter);
        t.nodes = nodes;
        return t;
    }
    let mut events = Vec::new();
    for node in &nodes {
        let part = build_one(&rows.of_node(node), filter);
        events.extend(part.events.into_iter().map(|mut e| {
            if !e.conn.is_empty() {
                e.conn = format!("{node} {}", e.conn);
            }
            e.node = node.clone();
            e
        }));
    }
    sort_events(&mut events);
    assemble(events, rows, filter, nodes)
}

/// In time order; ties by lane (client, edge, upstream, host), a change before the alert it
/// causes, then text, then node: deterministic.
pub(super) fn sort_events(events: &mut [Event]) {
    let order = |kind: &str| match kind {
        "exposure" => 0,
        "alert" => 2,
        _ => 1,
    };
    events.sort_by(|a, b| {
        (a.ts, a.lane, order(a.kind), a.kind, &a.text, &a.node).cmp(&(
            b.ts,
            b.lane,
            order(b.kind),
            b.kind,
            &b.text,
            &b.node,
        ))
    });
}

/// The first and last time a timeline shows: the filter's, or the data's own span when the
/// range is open.
pub(super) fn span(events: &[Event], filter: &Filter) -> (i64, i64) {
    let since_ns = match events.first() {
        Some(e) if filter.since_ns <= 0 => e.ts,
        _ => filter.since_ns,
    };
    let until_ns = match events.last() {
        Some(e) if filter.until_ns == i64::MAX => e.ts,
        _ => filter.until_ns,
    };
    (since_ns, until_ns)
}
