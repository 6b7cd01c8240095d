//! The one record path, from probe records and access-log lines to alerts. Pure: inputs go in
//! in the order they happened, each with the time it happened at, and everything a step
//! produced comes out through a [`Sink`] at once. The live watch, `replay`, the offline
//! `timeline` and `check` are drivers around it (I/O, clocks and sinks only), so they cannot
//! disagree about what a capture means.
//!
//! What it owns: the hop tracker, the process owners of connections, the join with the
//! access logs, the exposure inventory with its drift tracker, and the alert engine.
//! [`offline`] is the driver half every offline command shares: a capture and access-log
//! records merged by time, as live sees them.
mod gateway;
pub mod offline;

use std::net::IpAddr;

use crate::{
    alerts::{Alert, AlertsConfig, Engine, Notice},
    edge::{
        join::{JoinLimits, JoinStats, JoinedRequest, Joiner},
        nginx::JsonFields,
        EdgeRecord, LineError,
    },
    exposure::config::ExposureConfig,
    exposure::{
        inventory::{Change, ChangeSource, Inventory},
        nat::NatPublish,
        policy::{DriftTracker, Policy},
        Exposure, ExposureKey, Listener,
    },
    hop::{
        owners::Owners,
        tracker::{FollowHint, Tracker, TrackerLimits, TrackerStats},
        HopRecord, ProcessRef, Segment,
    },
    probe::events::{ConnTrace, ConnTraceKind, HopPacket},
};

/// Moves a record out of its place in a batch, leaving an empty one (nothing allocated).
fn take_record(r: &mut HopRecord) -> HopRecord {
    let nowhere = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let empty = HopRecord::Loss(crate::hop::Loss {
        conn: crate::hop::ConnId {
            client: nowhere,
            server: nowhere,
            first_seen_ns: 0,
        },
        side: crate::hop::Side::Client,
        ts_ns: 0,
        bytes: 0,
        effect: String::new(),
    });
    std::mem::replace(r, empty)
}

/// Where a step's products go. Every method has an empty default: a driver implements what
/// it forwards (printer, store, metrics, webhooks; or rows, or a list in tests).
pub trait Sink {
    /// A finished hop record (connect, exchange, WebSocket session, reset).
    fn hop(&mut self, _record: &HopRecord) {}
    /// A parsed access-log record.
    fn edge(&mut self, _record: &EdgeRecord) {}
    /// A request joined across the edge and the hop.
    fn request(&mut self, _request: &JoinedRequest) {}
    /// An access-log record whose request was complete the moment it came (joined with an
    /// exchange that waited for it, or a line whose log names no upstream): `request.edge`
    /// is the record. In place of [`Sink::edge`] and [`Sink::request`], so that
    /// a driver can keep the two as one (the store writes one row). By default, the two.
    fn edge_joined(&mut self, request: &JoinedRequest) {
        if let Some(e) = request.edge.as_ref() {
            self.edge(e);
        }
        self.request(request);
    }
    /// A change of the exposure inventory, judged by `policy`.
    fn change(&mut self, _change: &Change, _policy: &Policy, _at_ns: u64) {}
    /// An alert transition (firing or resolved).
    fn alert(&mut self, _alert: &Alert) {}
    /// An informational record (a Gateway restart within its grace period): not an alert.
    fn notice(&mut self, _notice: &Notice) {}
}

/// Discards everything.
impl Sink for () {}

/// What the pipeline is built from: the config sections of the components it owns.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub exposure: ExposureConfig,
    /// The hop ports to track.
    pub hop_ports: Vec<u16>,
    pub hop_limits: TrackerLimits,
    /// Join access-log records with the hop (there are access logs to read).
    pub join: bool,
    pub join_window_ns: u64,
    pub join_limits: JoinLimits,
    pub json_fields: JsonFields,
    pub alerts: AlertsConfig,
    /// The proxy's configuration given up front (offline, `--proxy-config`): its routes are
    /// cited from the start, its findings open at the data's first time.
    pub proxy: Option<(Vec<crate::proxy::Route>, Vec<crate::proxy::Finding>)>,
}

/// Live or offline: the only two differences between them, stated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Kernel probes: the tracker tells the kernel where WebSocket frame headers start, and a
    /// connection record the kernel has not named a process for yet waits one batch (the
    /// trace can land just after the packet that ended a batch).
    Live,
    /// A capture: no kernel to hint, and no process traces to wait for.
    Offline,
}

/// The record path's state.
pub struct Pipeline {
    mode: Mode,
    policy: Policy,
    inventory: Inventory,
    drift: DriftTracker,
    tracker: Tracker,
    owners: Owners,
    joiner: Option<Joiner>,
    engine: Engine,
    lines: crate::edge::LineParser,
    /// The Gateway's ports (the hop's upstream ports).
    hop_ports: Vec<u16>,
    /// Whether each of them had a listener the hop reaches when last looked at (absent: not
    /// known yet).
    gateway_up: std::collections::BTreeMap<u16, bool>,
    /// Where the hop's connections to those ports went.
    targets: gateway::Targets,
    /// Records the tracker finished in this batch (vectors kept for their capacity: a
    /// record is large, and regrowing them every batch showed in profiles).
    fresh: Vec<HopRecord>,
    /// Connection records waiting one batch for their process (live).
    deferred: Vec<HopRecord>,
    joined: Vec<JoinedRequest>,
    alerts: Vec<Alert>,
    /// Findings of a configuration given up front, waiting for the data's first time.
    pending_findings: Option<(Vec<crate::proxy::Route>, Vec<crate::proxy::Finding>)>,
}

impl Pipeline {
    pub fn new(settings: &Settings, mode: Mode) -> Self {
        let mut tracker = Tracker::new(&settings.hop_ports).with_limits(settings.hop_limits);
        if mode == Mode::Live {
            tracker = tracker.with_kernel_hints();
        }
        let mut engine = Engine::new(settings.alerts.clone());
        if let Some((routes, _)) = &settings.proxy {
            engine.proxy_config(routes.clone(), &[], 0, &mut Vec::new());
        }
        Self {
            mode,
            policy: Policy::new(&settings.exposure),
            inventory: Inventory::default(),
            drift: DriftTracker::with_flap_window(
                u64::try_from(settings.exposure.flap_window.as_nanos()).unwrap_or(u64::MAX),
            ),
            tracker,
            owners: Owners::default(),
            joiner: settings
                .join
                .then(|| Joiner::with_limits(settings.join_window_ns, settings.join_limits)),
            engine,
            lines: crate::edge::LineParser::new(settings.json_fields.clone()),
            hop_ports: settings.hop_ports.clone(),
            gateway_up: std::collections::BTreeMap::new(),
            targets: gateway::Targets::default(),
            fresh: Vec::new(),
            deferred: Vec::new(),
            joined: Vec::new(),
            alerts: Vec::new(),
            pending_findings: settings.proxy.clone(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The exposures known now.
    pub fn exposures(&self) -> Vec<Exposure> {
        self.inventory.exposures()
    }

    /// What the tracker saw, skipped and gave up.
    pub fn hop_stats(&self) -> &TrackerStats {
        &self.tracker.stats
    }

    /// Joins access-log records with the hop from here on, if it did not already (live: the
    /// first access log was found after the start, in the proxy's configuration).
    pub fn join_from_now(&mut self, window_ns: u64, limits: JoinLimits) {
        if self.joiner.is_none() {
            self.joiner = Some(Joiner::with_limits(window_ns, limits));
        }
    }

    /// What the join gave up (when access logs are joined).
    pub fn join_stats(&self) -> Option<&JoinStats> {
        self.joiner.as_ref().map(|j| &j.stats)
    }

    /// Open incidents, exposure drift included.
    pub fn firing(&self) -> usize {
        self.drift.firing() + self.engine.firing()
    }

    /// The open incidents as they stand at `now_ns` (their evidence and counts so far), as
    /// firing alerts: to send them again, or to end an offline run with them.
    pub fn incidents(&self, now_ns: u64) -> Vec<Alert> {
        let mut open: Vec<Alert> = self
            .drift
            .firing_events(now_ns)
            .iter()
            .map(Alert::from)
            .collect();
        open.extend(self.engine.open_alerts(now_ns));
        open
    }

    /// What the kernel can follow from now on: WebSocket frame headers, long bodies (live).
    pub fn take_follow_hints(&mut self) -> Vec<FollowHint> {
        self.tracker.take_hints()
    }

    /// One TCP segment of the hop. Its records come out at [`Pipeline::end_batch`].
    pub fn segment(&mut self, segment: &Segment<'_>) {
        self.tracker.segment(segment, &mut self.fresh);
    }

    /// One hop packet from the kernel, stamped `ts_ns` (Unix time).
    pub fn hop_packet(&mut self, packet: &HopPacket<'_>, ts_ns: u64) {
        let (tracker, fresh) = (&mut self.tracker, &mut self.fresh);
        packet.each_segment(ts_ns, |s| tracker.segment(s, fresh));
    }

    /// A connect or reset trace from the kernel, stamped `ts_ns` (Unix time): who owns the
    /// connection; a proxy's failed connect elsewhere is judged at once.
    pub fn conn_trace(&mut self, trace: &ConnTrace, ts_ns: u64, sink: &mut impl Sink) {
        let process = ProcessRef {
            pid: trace.pid,
            comm: trace.comm.clone(),
        };
        match trace.what {
            ConnTraceKind::ConnectFailed => {
                let gateway = self.gateway_addrs();
                self.engine.proxy_connect_failed(
                    trace.remote,
                    &process,
                    ts_ns,
                    &self.hop_ports,
                    &gateway,
                    &mut self.alerts,
                );
                self.emit_alerts(sink);
            }
            ConnTraceKind::ConnectStart => self.owners.connect_start(trace.sock_id, process),
            ConnTraceKind::ConnectEnd => {
                self.owners
                    .connect_end(trace.sock_id, trace.local, trace.remote)
            }
            ConnTraceKind::ResetSent => self.owners.reset_sent(trace.local, trace.remote, process),
            // Received resets run in whatever context the packet arrived in: the packet
            // already says who sent it.
            ConnTraceKind::ResetReceived => {}
        }
    }

    /// Emits the records of the batch (with their processes), then what they caused.
    pub fn end_batch(&mut self, now_ns: u64, sink: &mut impl Sink) {
        // Records are handled where they lie in their batch, and moved out only to be kept:
        // a record is 360 bytes, and moving each out cost a copy of that size.
        let mut deferred = std::mem::take(&mut self.deferred);
        for r in &mut deferred {
            self.owners.enrich(r);
            self.emit_hop(r, now_ns, sink);
        }
        deferred.clear();
        self.emit_fresh(now_ns, sink);
        if self.deferred.is_empty() {
            self.deferred = deferred;
        }
        self.emit_joined(sink);
    }

    /// Emits the exchanges of a batch still being read, if that changes nothing of the order
    /// records come out in: when the batch so far holds exchanges alone (a keep-alive load)
    /// and no record of the batch before waits for its process. Handled while they are still
    /// in the core's caches: at the end of a drain of some 2,500 requests they had gone out
    /// of them (a simulated 512 KiB L2 missed 42.5 times a logged request, 30.7 with this
    /// every 64 requests: `cargo xtask bench-instructions`). Returns whether it emitted them.
    // Never inlined: an entry point `cargo xtask bench-instructions` counts from.
    #[inline(never)]
    pub fn flush_exchanges(&mut self, now_ns: u64, sink: &mut impl Sink) -> bool {
        // The waiting record first: while one waits, the batch grows through the drain, and
        // a pass over it at every call would look at each record again and again.
        if !self.deferred.is_empty() || !self.fresh.iter().all(|r| matches!(r, HopRecord::Http(_)))
        {
            return false;
        }
        self.emit_fresh(now_ns, sink);
        self.emit_joined(sink);
        true
    }

    /// The records of the batch so far, in order; a connection's record still without its
    /// process (live) waits a batch in `deferred`.
    fn emit_fresh(&mut self, now_ns: u64, sink: &mut impl Sink) {
        let mut fresh = std::mem::take(&mut self.fresh);
        for i in 0..fresh.len() {
            // The join's place for the next exchange asked for from memory while this one is
            // handled (see `Joiner::prefetch`).
            if let (Some(j), Some(HopRecord::Http(next))) = (&self.joiner, fresh.get(i + 1)) {
                if let Some(rid) = &next.request_id {
                    j.prefetch(rid);
                }
            }
            let r = &mut fresh[i];
            self.owners.enrich(r);
            if self.mode == Mode::Live && matches!(r, HopRecord::Conn(c) if c.process.is_none()) {
                self.deferred.push(take_record(r));
            } else {
                self.emit_hop(r, now_ns, sink);
            }
        }
        fresh.clear();
        // Only the tracker adds to `fresh`, and it does not run while records are emitted.
        debug_assert!(self.fresh.is_empty());
        self.fresh = fresh;
    }

    /// Hands a record to the sink, the rules and the join (which keeps it: moved out then).
    fn emit_hop(&mut self, r: &mut HopRecord, now_ns: u64, sink: &mut impl Sink) {
        // Exchanges, the bulk of the records, say nothing new of where the hop goes.
        if !matches!(r, HopRecord::Http(_)) {
            self.learn_target(r);
        }
        sink.hop(r);
        self.engine.hop(r, &mut self.alerts);
        self.emit_alerts(sink);
        if let Some(j) = self.joiner.as_mut() {
            j.hop(take_record(r), now_ns, &mut self.joined);
        }
    }

    fn emit_joined(&mut self, sink: &mut impl Sink) {
        self.emit_joined_after(None, sink);
    }

    /// `line_at`: the position of a line's request, joined as the line came, which goes to
    /// the sink with it ([`Sink::edge_joined`]).
    fn emit_joined_after(&mut self, line_at: Option<usize>, sink: &mut impl Sink) {
        if self.joined.is_empty() {
            return;
        }
        let mut joined = std::mem::take(&mut self.joined);
        debug_assert!(line_at.is_none_or(|i| joined.get(i).is_some_and(|r| r.edge.is_some())));
        // Handled where they lie; then each exchange's and line's box goes back to the join for
        // the next ones.
        for (i, r) in joined.iter().enumerate() {
            if line_at == Some(i) {
                sink.edge_joined(r);
            } else {
                sink.request(r);
            }
            self.engine.request(r, &mut self.alerts);
            self.emit_alerts(sink);
        }
        if let Some(j) = self.joiner.as_mut() {
            j.recycle_handled(&mut joined);
        }
        joined.clear();
        self.joined = joined;
    }

    fn emit_alerts(&mut self, sink: &mut impl Sink) {
        for a in self.alerts.drain(..) {
            sink.alert(&a);
        }
        for n in self.engine.take_notices() {
            sink.notice(&n);
        }
    }

    /// One access-log line; a malformed one is the caller's to count and report.
    pub fn edge_line(
        &mut self,
        line: &str,
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> Result<(), LineError> {
        let record = self.lines.parse(line)?;
        self.edge_record(record, now_ns, sink);
        Ok(())
    }

    /// An access-log line read ahead into its record, for [`Pipeline::edge_boxed`]: in a box
    /// from the join's spares, so that the record (~290 bytes) is copied once, into it, and
    /// moves on as a pointer from there (read ahead, joined, emitted). Also asks memory for
    /// where the join will look for the record's exchange, without waiting: a caller with
    /// lines in hand reads the next ones with this before it hands this line's record on (see
    /// `Joiner::prefetch`). The hint changes no result.
    pub fn parse_ahead(&mut self, line: &str) -> Result<Box<EdgeRecord>, LineError> {
        let record = self.lines.parse(line)?;
        let Some(j) = self.joiner.as_mut() else {
            return Ok(Box::new(record));
        };
        if let Some(rid) = &record.request_id {
            j.prefetch(rid);
        }
        Ok(j.boxed_edge(record))
    }

    /// The second step of [`Pipeline::parse_ahead`], a line later: asks memory for the
    /// exchange the join has waiting for `record` (see `Joiner::prefetch_exchange`).
    pub fn prefetch_exchange(&self, record: &EdgeRecord) {
        if let (Some(j), Some(rid)) = (&self.joiner, &record.request_id) {
            j.prefetch_exchange(rid);
        }
    }

    /// One access-log record.
    pub fn edge_record(&mut self, record: EdgeRecord, now_ns: u64, sink: &mut impl Sink) {
        let record = match self.joiner.as_mut() {
            Some(j) => j.boxed_edge(record),
            // (Not joined: logs are read only when they are, so this is no path of the live loop.)
            None => Box::new(record),
        };
        self.edge_boxed(record, now_ns, sink);
    }

    /// One access-log record, in a box (see [`Pipeline::parse_ahead`]).
    pub fn edge_boxed(&mut self, record: Box<EdgeRecord>, now_ns: u64, sink: &mut impl Sink) {
        if self.joiner.is_none() {
            sink.edge(&record);
            self.edge_upstream(&record, sink);
            return;
        }
        // (Before the join, which takes the record: a line that goes alone reaches the sink
        // after the alerts its upstream address raises.)
        self.edge_upstream(&record, sink);
        // The common case: the line's exchange waited for it, complete (or the line names no
        // upstream: its request is complete alone). The line then goes to the sink with its
        // request, after the join (the store writes the two as one row); any other line goes
        // alone first.
        let line_at = self.joined.len();
        let joined = &mut self.joined;
        let at_once = self
            .joiner
            .as_mut()
            .is_some_and(|j| j.edge_or(record, now_ns, joined, |e| sink.edge(e)));
        self.emit_joined_after(at_once.then_some(line_at), sink);
    }

    /// Moves time on: requests whose other side did not come within the join window go out
    /// alone, and incidents quiet for their quiet period resolve.
    pub fn tick(&mut self, now_ns: u64, sink: &mut impl Sink) {
        if now_ns > 0 {
            if let Some((routes, findings)) = self.pending_findings.take() {
                self.engine
                    .proxy_config(routes, &findings, now_ns, &mut self.alerts);
            }
        }
        if let Some(j) = self.joiner.as_mut() {
            j.expire(now_ns, &mut self.joined);
        }
        self.emit_joined(sink);
        self.engine.advance(now_ns, &mut self.alerts);
        for a in self.drift.settle(now_ns) {
            self.engine.drift(&a, &mut self.alerts);
        }
        self.emit_alerts(sink);
    }

    /// The edge proxy's configuration as read now (`proxy`): its findings open or resolve
    /// `config.*` incidents, and the runtime rules cite its routes from here on.
    pub fn proxy_config(
        &mut self,
        routes: Vec<crate::proxy::Route>,
        findings: &[crate::proxy::Finding],
        now_ns: u64,
        sink: &mut impl Sink,
    ) {
        self.engine
            .proxy_config(routes, findings, now_ns, &mut self.alerts);
        self.emit_alerts(sink);
    }

    /// Reports the hop connections idle since `cutoff_ns` as they stand, and forgets them.
    pub fn expire_idle(&mut self, cutoff_ns: u64, now_ns: u64, sink: &mut impl Sink) {
        self.tracker.expire(cutoff_ns, &mut self.fresh);
        self.end_batch(now_ns, sink);
    }

    /// The end of the input: what is still open is reported as it stands (sessions end
    /// `open`, waiting records go out, unjoined requests go out alone), then time moves on.
    pub fn finish(&mut self, now_ns: u64, sink: &mut impl Sink) {
        self.tracker.finish(&mut self.fresh);
        self.end_batch(now_ns, sink);
        for mut r in std::mem::take(&mut self.deferred) {
            self.emit_hop(&mut r, now_ns, sink);
        }
        if let Some(j) = self.joiner.as_mut() {
            j.finish(&mut self.joined);
        }
        self.emit_joined(sink);
        self.tick(now_ns, sink);
    }

    /// A rescan of the sidecar's own namespace: the whole list of its listeners.
    pub fn host_listeners(&mut self, listeners: Vec<Listener>, now_ns: u64, sink: &mut impl Sink) {
        let changes = self
            .inventory
            .replace_host_listeners(listeners, ChangeSource::Rescan);
        self.changed(&changes, now_ns, sink);
    }

    /// A read of the NAT rules: the whole list of publishes.
    pub fn publishes(&mut self, publishes: Vec<NatPublish>, now_ns: u64, sink: &mut impl Sink) {
        let changes = self.inventory.replace_publishes(publishes);
        self.changed(&changes, now_ns, sink);
    }

    /// A listener opened (a probe event, any namespace).
    pub fn listener_opened(&mut self, listener: Listener, now_ns: u64, sink: &mut impl Sink) {
        let changes: Vec<Change> = self
            .inventory
            .listener_opened(listener, ChangeSource::Probe)
            .into_iter()
            .collect();
        self.changed(&changes, now_ns, sink);
    }

    /// A listener closed (a probe event). `listener` is what the event says; when its
    /// process is gone its namespace is unknown, so the listener that process (`tgid`) owned
    /// on that address is the one closed.
    pub fn listener_closed(
        &mut self,
        listener: &Listener,
        tgid: u32,
        now_ns: u64,
        sink: &mut impl Sink,
    ) {
        let key = listener.key();
        let key = if self.inventory.listener(&key).is_some() {
            Some(key)
        } else {
            self.owned_listener(listener.addr, listener.port, tgid)
        };
        let changes: Vec<Change> = key
            .and_then(|k| self.inventory.listener_closed(&k, ChangeSource::Probe))
            .into_iter()
            .collect();
        self.changed(&changes, now_ns, sink);
    }

    fn owned_listener(&self, addr: IpAddr, port: u16, tgid: u32) -> Option<ExposureKey> {
        self.inventory
            .exposures()
            .into_iter()
            .find_map(|e| match e {
                Exposure::Listener(l)
                    if l.addr == addr
                        && l.port == port
                        && l.process.as_ref().is_some_and(|p| p.pid == tgid) =>
                {
                    Some(l.key())
                }
                _ => None,
            })
    }

    /// Judges the inventory again (changes, or only time passing) and passes drift
    /// transitions to the alert engine, and the Gateway's listeners going and coming.
    fn changed(&mut self, changes: &[Change], now_ns: u64, sink: &mut impl Sink) {
        for c in changes {
            sink.change(c, &self.policy, now_ns);
        }
        self.reconcile(now_ns, sink);
        self.gateway_listeners(changes, now_ns, sink);
    }

    /// An access-log record's upstream address judged against the Gateway's ports and, when
    /// the sidecar knows the machine's listeners (live), against what listens there.
    fn edge_upstream(&mut self, record: &EdgeRecord, sink: &mut impl Sink) {
        // Most lines are neither an error nor the end of a stale port: nothing to do (and
        // nothing looked up) for them.
        let error = matches!(record.status, 502 | 504);
        if !error && (record.status >= 500 || !self.engine.stale_port_open()) {
            return;
        }
        if !error {
            self.engine
                .edge_upstream(record, &self.hop_ports, None, &[], &mut self.alerts);
            self.emit_alerts(sink);
            return;
        }
        let known = !self.inventory.is_empty();
        let listening = record
            .upstream_addr
            .as_deref()
            .and_then(|a| a.rsplit(',').next())
            .and_then(|a| a.rsplit(" : ").next())
            .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
            .filter(|_| known)
            .map(|a| self.listeners_on(a.port()).any(|l| l.reached_at(a.ip())));
        let gateway = self.gateway_addrs();
        self.engine.edge_upstream(
            record,
            &self.hop_ports,
            listening,
            &gateway,
            &mut self.alerts,
        );
        self.emit_alerts(sink);
    }

    /// Exposure drift judged against the inventory as it is now.
    pub fn reconcile(&mut self, now_ns: u64, sink: &mut impl Sink) {
        let exposures = self.inventory.exposures();
        for a in self.drift.reconcile(&self.policy, &exposures, now_ns) {
            self.engine.drift(&a, &mut self.alerts);
        }
        self.emit_alerts(sink);
    }
}
