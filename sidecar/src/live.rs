//! The live exposure watch (`edgewatch run`) and the one-shot inventory (`edgewatch exposure`):
//! the I/O loop that feeds the pure exposure model and prints what it says.
use std::{sync::Arc, time::SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::MissedTickBehavior,
};

use crate::{
    alerts::{webhook::Webhook, Alert, Engine},
    config::Config,
    edge::join::{JoinedRequest, Joiner},
    exposure::{
        inventory::{Change, ChangeSource, Inventory},
        policy::{DriftTracker, Policy},
        Exposure, ExposureKey, Scope,
    },
    hop::tracker::Tracker,
    hop::{owners::Owners, HopRecord, ProcessRef},
    metrics::{self, Metrics},
    output::{unix_ns, Printer},
    probe::{
        boot_ns,
        events::{decode, ConnTraceKind, DecodeError, ListenChange, ProbeEvent},
        loader::{Probes, WsFlows},
    },
    sources::{
        nat::read_nat_rules,
        snapshot::Attributor,
        tail::{StartAt, Tailer},
    },
    store::{ship::StoreEvent, Store},
};

fn flow_key(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> edgewatch_common::FlowKey {
    fn bytes(ip: std::net::IpAddr) -> ([u8; 16], u16) {
        match ip {
            std::net::IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, 2)
            }
            std::net::IpAddr::V6(a) => (a.octets(), 10),
        }
    }
    let (saddr, family) = bytes(src.ip());
    let (daddr, _) = bytes(dst.ip());
    edgewatch_common::FlowKey {
        saddr,
        daddr,
        sport: src.port(),
        dport: dst.port(),
        family,
        _pad: 0,
    }
}

/// State shared by the one-shot and the live paths.
struct Watch {
    policy: Policy,
    inventory: Inventory,
    tracker: DriftTracker,
    attributor: Attributor,
    printer: Printer,
    metrics: Arc<Metrics>,
    last_nat_problems: Vec<String>,
    nat_tools: Vec<&'static str>,
    hop: Tracker,
    hop_records: Vec<HopRecord>,
    /// Connection events waiting one batch for their process.
    deferred: Vec<HopRecord>,
    /// Joins access-log records with hop records (when access logs are configured).
    joiner: Option<Joiner>,
    joined: Vec<JoinedRequest>,
    json_fields: crate::edge::nginx::JsonFields,
    owners: Owners,
    /// The kernel frame follower's map (live with the hop probe only).
    ws_flows: Option<WsFlows>,
    /// Added to CLOCK_BOOTTIME probe timestamps to get Unix time.
    boot_to_unix: u64,
    /// ClickHouse (live with `store.enabled` only).
    store: Option<Store>,
    /// Store rows dropped so far as last reported, and when (at most one line per 10 s).
    store_dropped: u64,
    store_dropped_at: Option<std::time::Instant>,
    /// The alert rules (hop, joined requests, and drift passing through) and their sinks.
    alerts: Engine,
    alert_out: Vec<Alert>,
    webhooks: Vec<Webhook>,
}

impl Watch {
    fn new(config: &Config, printer: Printer, metrics: Arc<Metrics>) -> Self {
        Self {
            policy: Policy::new(&config.exposure),
            inventory: Inventory::default(),
            tracker: DriftTracker::default(),
            attributor: Attributor::new(),
            printer,
            metrics,
            last_nat_problems: Vec::new(),
            nat_tools: Vec::new(),
            hop: Tracker::new(&config.hop.ports)
                .with_limits(config.hop.limits())
                .with_kernel_hints(),
            hop_records: Vec::new(),
            deferred: Vec::new(),
            joiner: (!config.edge.access_logs.is_empty()).then(|| {
                Joiner::with_limits(
                    u64::try_from(config.edge.join_window.as_nanos()).unwrap_or(u64::MAX),
                    config.edge.limits(),
                )
            }),
            joined: Vec::new(),
            json_fields: config.edge.json_fields.clone(),
            owners: Owners::default(),
            ws_flows: None,
            boot_to_unix: unix_ns(SystemTime::now()).saturating_sub(boot_ns()),
            store: None,
            store_dropped: 0,
            store_dropped_at: None,
            alerts: Engine::new(config.alerts.clone()),
            alert_out: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    /// Starts the configured webhooks (a missing token stops the start).
    fn start_webhooks(&mut self, config: &Config) -> anyhow::Result<()> {
        let node = crate::store::node_name(&config.store);
        for w in &config.alerts.webhooks {
            let hook = Webhook::start(w.clone(), node.clone()).map_err(anyhow::Error::msg)?;
            self.webhooks.push(hook);
        }
        Ok(())
    }

    /// Moves the rules' clock on and sends this turn's alert transitions to every sink: the
    /// output, ClickHouse, the metrics and the webhooks.
    fn emit_alerts(&mut self, now: u64) {
        self.alerts.advance(now, &mut self.alert_out);
        if !self.alert_out.is_empty() {
            let alerts = std::mem::take(&mut self.alert_out);
            let firing = self.tracker.firing() + self.alerts.firing();
            for a in &alerts {
                self.metrics.alert(a.rule, a.state.as_str(), firing);
                if let Some(st) = self.store.as_mut() {
                    st.alert(a);
                }
            }
            if let Some(st) = self.store.as_mut() {
                st.write_now();
            }
            for a in &alerts {
                self.printer.alert(a);
            }
            for w in &self.webhooks {
                w.send(&alerts);
            }
        }
        let (tracker, engine) = (&self.tracker, &self.alerts);
        for w in &mut self.webhooks {
            w.resend(|| {
                let mut open: Vec<Alert> =
                    tracker.firing_events(now).iter().map(Alert::from).collect();
                open.extend(engine.open_alerts(now));
                open
            });
        }
        self.webhook_reports();
    }

    /// Prints what the webhooks reported and brings their counters up to date.
    fn webhook_reports(&mut self) {
        if self.webhooks.is_empty() {
            return;
        }
        let total = |f: fn(&crate::alerts::webhook::Stats) -> u64| -> u64 {
            self.webhooks.iter().map(|w| f(w.stats())).sum()
        };
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics
            .webhook_alerts_now("sent", total(|s| s.sent.load(Relaxed)));
        self.metrics
            .webhook_alerts_now("failed", total(|s| s.failed.load(Relaxed)));
        self.metrics
            .webhook_alerts_now("dropped", total(|s| s.dropped.load(Relaxed)));
        for w in &self.webhooks {
            for ev in w.take_events() {
                use crate::alerts::webhook::WebhookEvent as E;
                let text = match &ev {
                    E::Retrying {
                        url,
                        alerts,
                        attempt,
                        reason,
                        retry_in_ms,
                    } => format!(
                        "webhook {url}: attempt {attempt} for {alerts} alert(s) failed ({reason}); retrying in {:.1} s",
                        *retry_in_ms as f64 / 1000.0
                    ),
                    E::Recovered {
                        url,
                        after_attempts,
                    } => format!("webhook {url}: delivered after {after_attempts} attempts"),
                    E::Failed {
                        url,
                        alerts,
                        reason,
                    } => {
                        let text = format!("webhook {url}: gave up on {alerts} alert(s): {reason}");
                        tracing::error!("{text}");
                        text
                    }
                };
                self.printer.status("webhook", &text, &ev);
            }
        }
    }

    fn rescan(&mut self) -> anyhow::Result<Vec<Change>> {
        let listeners = self.attributor.host_listeners();
        self.metrics.rescan(listeners.is_ok());
        let listeners = listeners.context("reading the socket inventory (sock_diag)")?;
        Ok(self
            .inventory
            .replace_host_listeners(listeners, ChangeSource::Rescan))
    }

    fn read_nat(&mut self) -> Vec<Change> {
        let report = read_nat_rules();
        self.metrics.nat_read(report.problems.len());
        self.nat_tools = report.tools_used;
        if report.problems != self.last_nat_problems {
            for p in &report.problems {
                tracing::warn!(problem = %p, "NAT rules");
            }
            self.last_nat_problems = report.problems;
        }
        self.inventory.replace_publishes(report.publishes)
    }

    /// Prints changes, then the alert transitions they cause.
    fn publish(&mut self, changes: &[Change]) {
        let now = unix_ns(SystemTime::now());
        for c in changes {
            self.printer.change(c, &self.policy, now);
            if let Some(st) = self.store.as_mut() {
                st.change(now, c, &self.policy);
            }
        }
        self.evaluate(now);
    }

    fn evaluate(&mut self, now: u64) {
        let exposures = self.inventory.exposures();
        for a in self.tracker.reconcile(&self.policy, &exposures, now) {
            self.alerts.drift(&a, &mut self.alert_out);
        }
        self.emit_alerts(now);
        let count = |s: Scope| {
            i64::try_from(exposures.iter().filter(|e| e.scope() == s).count()).unwrap_or(0)
        };
        self.metrics.set_exposures(&[
            ("loopback", count(Scope::Loopback)),
            ("private", count(Scope::Private)),
            ("public", count(Scope::Public)),
            ("wildcard", count(Scope::Wildcard)),
        ]);
    }

    /// One record from the ring buffer.
    fn on_event(&mut self, result: Result<ProbeEvent<'_>, DecodeError>, now_boot: u64) {
        match result {
            Ok(ProbeEvent::Hop(packet)) => {
                let lag = now_boot.saturating_sub(packet.ts_boot_ns) as f64 / 1e9;
                self.metrics.event("hop_segment", lag);
                let ts = packet.ts_boot_ns.saturating_add(self.boot_to_unix);
                if packet.pieces.is_some() {
                    self.metrics.followed_segment();
                }
                let (hop, records) = (&mut self.hop, &mut self.hop_records);
                packet.each_segment(ts, |segment| hop.segment(segment, records));
                self.arm_ws_follower();
                // Records are printed after the whole batch, so connection traces that the
                // kernel wrote just after the packet can still name the process.
            }
            Ok(ProbeEvent::Conn(trace)) => {
                let lag = now_boot.saturating_sub(trace.ts_boot_ns) as f64 / 1e9;
                self.metrics.event(
                    match trace.what {
                        ConnTraceKind::ConnectStart => "connect_start",
                        ConnTraceKind::ConnectEnd => "connect_end",
                        ConnTraceKind::ResetSent => "reset_sent",
                        ConnTraceKind::ResetReceived => "reset_received",
                    },
                    lag,
                );
                let process = ProcessRef {
                    pid: trace.pid,
                    comm: trace.comm,
                };
                tracing::debug!(?trace.what, %trace.local, %trace.remote, pid = process.pid, comm = %process.comm, "connection trace");
                match trace.what {
                    ConnTraceKind::ConnectStart => {
                        self.owners.connect_start(trace.sock_id, process)
                    }
                    ConnTraceKind::ConnectEnd => {
                        self.owners
                            .connect_end(trace.sock_id, trace.local, trace.remote)
                    }
                    ConnTraceKind::ResetSent => {
                        self.owners.reset_sent(trace.local, trace.remote, process)
                    }
                    // Received resets run in whatever context the packet arrived in: the
                    // packet already says who sent it.
                    ConnTraceKind::ResetReceived => {}
                }
            }
            Ok(ProbeEvent::ListenChange(ev)) => {
                let lag = now_boot.saturating_sub(ev.ts_boot_ns) as f64 / 1e9;
                self.metrics.event("listen_change", lag);
                tokio::task::block_in_place(|| self.on_listen_change(&ev));
            }
            Err(e) => {
                self.metrics.decode_error();
                tracing::warn!(error = %e, "dropped a malformed probe record");
            }
        }
    }

    /// Tells the kernel where the next frame header of each WebSocket direction starts, so it
    /// copies only frame headers from then on.
    fn arm_ws_follower(&mut self) {
        let hints = self.hop.take_hints();
        let Some(map) = self.ws_flows.as_mut() else {
            return;
        };
        for h in hints {
            let key = flow_key(h.src, h.dst);
            let value = edgewatch_common::WsFlow {
                next_header_seq: h.next_header_seq,
                _pad: 0,
            };
            if let Err(e) = map.insert(key, value, 0) {
                self.metrics.ws_follow_error();
                tracing::debug!(error = %e, "cannot arm the kernel frame follower");
            }
        }
    }

    /// Prints the batch's hop records. A connection event the kernel has not named a process
    /// for yet waits one batch: the trace can land just after the packet that ended a batch.
    fn print_hop_records(&mut self) {
        // The vectors are drained, not replaced: they keep their capacity from batch to
        // batch (a record is large; regrowing them every 20 ms showed in profiles).
        let mut deferred = std::mem::take(&mut self.deferred);
        for mut r in deferred.drain(..) {
            self.owners.enrich(&mut r);
            self.emit_hop(r);
        }
        let mut records = std::mem::take(&mut self.hop_records);
        for mut r in records.drain(..) {
            self.owners.enrich(&mut r);
            if matches!(&r, HopRecord::Conn(c) if c.process.is_none()) {
                self.deferred.push(r);
            } else {
                self.emit_hop(r);
            }
        }
        if self.deferred.is_empty() {
            self.deferred = deferred;
        }
        // Only the tracker adds records, and it does not run while they are emitted.
        debug_assert!(self.hop_records.is_empty());
        self.hop_records = records;
        self.print_joined();
    }

    fn emit_hop(&mut self, r: HopRecord) {
        self.printer.hop(&r);
        self.alerts.hop(&r, &mut self.alert_out);
        if let Some(st) = self.store.as_mut() {
            st.hop(&r);
        }
        if let Some(j) = self.joiner.as_mut() {
            j.hop(r, unix_ns(SystemTime::now()), &mut self.joined);
        }
    }

    /// New access-log lines: parsed (malformed ones counted and reported), then joined.
    /// Reads the access logs (a bounded piece of each, more rounds while one is behind),
    /// hands the lines to the pipeline, then moves the logs' checkpoints: with a store, only
    /// once the lines' rows and a mark of each log's position are written through to the
    /// spool (exactly once across kill -9: see `sources::tail`).
    fn read_logs(&mut self, tailers: &mut [Tailer]) {
        for _ in 0..8 {
            let mut lines = Vec::new();
            for t in tailers.iter_mut() {
                if let Err(e) = t.poll(&mut lines) {
                    tracing::warn!(log = %t.path().display(), error = %e, "cannot read access log");
                }
            }
            self.on_edge_lines(&lines);
            if let Some(st) = self.store.as_mut() {
                let mut marked = false;
                for t in tailers.iter().filter(|t| t.moved()) {
                    if let Some(p) = t.position() {
                        st.tail_mark(t.path(), p);
                        marked = true;
                    }
                }
                if marked {
                    if let Err(e) = st.write_through() {
                        // The checkpoints stay where they were. The lines' rows (and the
                        // marks) stay buffered in the spool for its next write; a restart
                        // before then reads the lines again from the old checkpoint.
                        tracing::warn!(error = %format!("{e:#}"), "log checkpoints not moved");
                        break;
                    }
                }
            }
            for t in tailers.iter_mut() {
                if let Err(e) = t.commit() {
                    tracing::warn!(log = %t.path().display(), error = %e, "cannot save the log checkpoint");
                }
            }
            if !tailers.iter().any(Tailer::behind) {
                break;
            }
        }
        let t = tailers.iter().fold((0, 0, 0), |a, t| {
            (
                a.0 + t.non_utf8_lines,
                a.1 + t.overlong_lines,
                a.2 + t.lost_rotations,
            )
        });
        self.metrics.edge_lines_non_utf8_now(t.0);
        self.metrics.limit_drops_now("edge_overlong_lines", t.1);
        self.metrics.limit_drops_now("edge_lost_rotations", t.2);
    }

    fn on_edge_lines(&mut self, lines: &[String]) {
        let now = unix_ns(SystemTime::now());
        for line in lines {
            if line.trim().is_empty() {
                continue;
            }
            match crate::edge::parse_any(line, &self.json_fields) {
                Ok(rec) => {
                    self.metrics.edge_line(true);
                    if let Some(st) = self.store.as_mut() {
                        st.edge(&rec);
                    }
                    if let Some(j) = self.joiner.as_mut() {
                        j.edge(rec, now, &mut self.joined);
                    }
                }
                Err(e) => {
                    self.metrics.edge_line(false);
                    tracing::warn!(error = %e, "malformed access-log line (counted, skipped)");
                }
            }
        }
        if let Some(j) = self.joiner.as_mut() {
            j.expire(now, &mut self.joined);
        }
        self.print_joined();
    }

    fn print_joined(&mut self) {
        let mut joined = std::mem::take(&mut self.joined);
        for r in joined.drain(..) {
            self.printer.request(&r);
            self.alerts.request(&r, &mut self.alert_out);
            if let Some(st) = self.store.as_mut() {
                st.request(&r);
            }
        }
        self.joined = joined;
    }

    /// Prints everything, deferred records included (at shutdown).
    fn print_all_hop_records(&mut self) {
        self.print_hop_records();
        for r in std::mem::take(&mut self.deferred) {
            self.emit_hop(r);
        }
        if let Some(j) = self.joiner.as_mut() {
            j.finish(&mut self.joined);
        }
        self.print_joined();
    }

    /// Writes this turn's rows to the spool and prints what the store reported.
    fn flush_store(&mut self) {
        let Some(st) = self.store.as_mut() else {
            return;
        };
        let dropped = st.flush(&self.metrics).dropped;
        let quiet = self
            .store_dropped_at
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(10));
        if dropped > self.store_dropped && !quiet {
            let text = format!(
                "{} row(s) dropped so far: the spool is full (store.spool_max_bytes) or cannot be written; the oldest went first",
                dropped
            );
            tracing::error!("{text}");
            self.printer.status(
                "store",
                &text,
                &serde_json::json!({ "event": "dropped", "rows": dropped }),
            );
            self.store_dropped = dropped;
            self.store_dropped_at = Some(std::time::Instant::now());
        }
        while let Ok(ev) = st.events.try_recv() {
            match &ev {
                StoreEvent::Sent { .. } => {
                    self.metrics.set_store_up(true);
                    continue;
                }
                StoreEvent::Ready { .. } | StoreEvent::Recovered { .. } => {
                    self.metrics.set_store_up(true)
                }
                StoreEvent::Unavailable { .. } | StoreEvent::Incompatible { .. } => {
                    self.metrics.set_store_up(false)
                }
                StoreEvent::Rejected { .. } => {}
            }
            let text = match &ev {
                StoreEvent::Ready {
                    server_version,
                    schema_version,
                    url,
                    format,
                } => format!("ClickHouse {server_version} at {url} ready (schema version {schema_version}; rows go as {format})"),
                StoreEvent::Incompatible { reason } => {
                    format!("ClickHouse cannot be used: {reason}; rows wait in the spool")
                }
                StoreEvent::Unavailable { reason } => {
                    format!("ClickHouse unavailable ({reason}); rows wait in the spool and are retried")
                }
                StoreEvent::Recovered { after_failures } => {
                    format!("ClickHouse is back after {after_failures} failed attempt(s); sending the spool")
                }
                StoreEvent::Rejected {
                    table,
                    rows,
                    reason,
                    moved_to,
                } => format!(
                    "ClickHouse refused a batch of {rows} {table} row(s) for good ({reason}); set aside in {moved_to}"
                ),
                StoreEvent::Sent { .. } => String::new(),
            };
            if matches!(
                ev,
                StoreEvent::Rejected { .. } | StoreEvent::Incompatible { .. }
            ) {
                tracing::error!("{text}");
            }
            self.printer.status("store", &text, &ev);
        }
    }

    fn on_listen_change(&mut self, ev: &ListenChange) {
        let changes: Vec<Change> = if ev.opened {
            let listener = self.attributor.listener_from_event(ev);
            self.inventory
                .listener_opened(listener, ChangeSource::Probe)
                .into_iter()
                .collect()
        } else {
            let listener = self.attributor.listener_from_event(ev);
            if listener.host_netns && self.attributor.still_listening(ev.addr, ev.port) {
                Vec::new()
            } else {
                let key = listener.key();
                let key = if self.inventory.listener(&key).is_some() {
                    Some(key)
                } else {
                    // The process is gone, so its namespace is unknown: find the listener
                    // this process owned on that address.
                    self.inventory
                        .exposures()
                        .into_iter()
                        .find_map(|e| match e {
                            Exposure::Listener(l)
                                if l.addr == ev.addr
                                    && l.port == ev.port
                                    && l.process.as_ref().is_some_and(|p| p.pid == ev.tgid) =>
                            {
                                Some(l.key())
                            }
                            _ => None,
                        })
                };
                key.and_then(|k: ExposureKey| {
                    self.inventory.listener_closed(&k, ChangeSource::Probe)
                })
                .into_iter()
                .collect()
            }
        };
        self.publish(&changes);
    }
}

/// Handles every event waiting in the ring buffer, then prints the hop records of the batch.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, watch: &mut Watch) {
    let now_boot = boot_ns();
    // Each record is handled in place (its payload bytes borrowed from the ring, no copy)
    // and released to the kernel as soon as it is done.
    while let Some(item) = ring.next() {
        watch.on_event(decode(&item), now_boot);
    }
    watch.print_hop_records();
}

#[derive(Serialize)]
struct ReadyDetail<'a> {
    /// The capabilities the running sidecar kept after loading the probes.
    privileges: &'a crate::probe::caps::Kept,
    probes: &'a [String],
    kernel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    exposures: usize,
    watched_ports: &'a [u16],
    nat_tools: &'a [&'static str],
}

/// `edgewatch exposure`: the classified inventory, once. Needs no BPF.
pub fn exposure_once(config: &Config, printer: Printer) -> anyhow::Result<usize> {
    let mut watch = Watch::new(config, printer, Arc::new(Metrics::new()));
    watch.rescan()?;
    if config.nat.enabled {
        watch.read_nat();
    }
    let exposures = watch.inventory.exposures();
    let now = unix_ns(SystemTime::now());
    watch.printer.inventory(&exposures, &watch.policy, now);
    watch.printer.flush();
    Ok(exposures
        .iter()
        .filter(|e| {
            matches!(
                watch.policy.assess(e),
                crate::exposure::policy::Verdict::Drift(_)
            )
        })
        .count())
}

/// `edgewatch run`: load the probes, print the inventory, then watch until SIGINT/SIGTERM.
pub async fn run(config: Config, printer: Printer) -> anyhow::Result<()> {
    let embedded_store = config.store.enabled && config.store.url.is_empty();
    crate::probe::caps::require(embedded_store)?;
    let metrics = Arc::new(Metrics::new());
    let mut watch = Watch::new(&config, printer, metrics.clone());
    watch.start_webhooks(&config)?;
    if config.store.enabled {
        let store = Store::start(&config.store)
            .await
            .context("starting the ClickHouse store")?;
        watch.store = Some(store);
    }

    // Probes first, so nothing that happens during the initial scan is missed: a listener
    // opened meanwhile is seen by both and merged by key.
    let (probes, streams) =
        Probes::load(&config.probes, &config.hop).context("loading the kernel probes")?;
    let attached = probes.attached.clone();
    let kernel = probes.kernel.clone();
    watch.ws_flows = streams.ws_flows;
    // What this kernel offers, and every fallback, said before anything else.
    watch.printer.status("kernel", &kernel.summary(), &kernel);
    // Loaded: from here on the sidecar keeps only what watching needs, in every thread.
    let kept = crate::probe::caps::drop_unneeded(crate::probe::caps::needed_after_load(
        watch.store.as_ref().is_some_and(Store::runs_embedded),
    ))
    .context("dropping the capabilities the running sidecar no longer needs")?;

    watch.rescan()?;
    if config.nat.enabled {
        watch.read_nat();
    }
    let nat_tools = watch.nat_tools.clone();
    let now = unix_ns(SystemTime::now());
    let exposures = watch.inventory.exposures();
    watch.printer.inventory(&exposures, &watch.policy, now);
    if let Some(st) = watch.store.as_mut() {
        st.inventory(now, &exposures, &watch.policy);
    }
    watch.evaluate(now);

    let metrics_addr = if config.metrics.enabled {
        let addr = metrics::serve(metrics.clone(), config.metrics.listen)
            .await
            .with_context(|| format!("binding the metrics endpoint {}", config.metrics.listen))?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the metrics endpoint is bound to a non-loopback address");
        }
        Some(addr.to_string())
    } else {
        None
    };
    let mut tailers: Vec<Tailer> = Vec::new();
    if !config.edge.access_logs.is_empty() {
        // The log checkpoints: ours alone, checked before use (traversable: the embedded
        // store's data directory may live under the same state directory).
        crate::store::embedded::ensure_private_dir(&config.edge.state_dir, 0o711)
            .context("edge.state_dir")?;
        for path in &config.edge.access_logs {
            let name = path.to_string_lossy().replace('/', "_");
            let checkpoint = config.edge.state_dir.join(format!("{name}.checkpoint"));
            let mut t = Tailer::new(path, Some(&checkpoint), StartAt::End);
            // A position the spool holds beside the rows of its lines is newer than the
            // checkpoint file when the last run died between the two.
            if let Some(p) = watch
                .store
                .as_ref()
                .and_then(|st| st.spooled_tail_position(path))
            {
                t.resume_from(p);
            }
            tailers.push(t);
        }
    }
    // Position every log now, before `ready`: lines the proxy writes from here on are read
    // (and a backlog since the checkpoint, in bounded pieces).
    watch.read_logs(&mut tailers);
    watch.printer.status(
        "ready",
        &format!(
            "watching ports {:?}; {} exposure(s); probes: {}; metrics: {}; {}",
            config.exposure.watched_ports,
            exposures.len(),
            attached.join(", "),
            metrics_addr.as_deref().unwrap_or("off"),
            kept.summary()
        ),
        &ReadyDetail {
            privileges: &kept,
            probes: &attached,
            kernel: &kernel.release,
            metrics: metrics_addr,
            exposures: exposures.len(),
            watched_ports: &config.exposure.watched_ports,
            nat_tools: &nat_tools,
        },
    );

    // SAFETY (both): the RingBuf and the EbpfLogger own their map's file descriptor, which
    // stays open and unchanged until they are dropped together with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(streams.events, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("registering the ring buffer with tokio")?;
    let mut log_fd = match streams.logger {
        Some(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(std::io::Error::from)
                .context("registering the eBPF log buffer")?,
        ),
        None => None,
    };
    let mut rescan = tokio::time::interval(config.exposure.rescan_interval);
    rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
    rescan.reset();
    let mut nat = tokio::time::interval(config.nat.poll_interval);
    nat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    nat.reset();
    let mut drops_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut edge_tick = tokio::time::interval(config.edge.poll_interval);
    edge_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut expire_tick = tokio::time::interval(std::time::Duration::from_secs(60));
    expire_tick.reset();
    let mut snapshot_tick = tokio::time::interval(config.store.snapshot_interval);
    snapshot_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    snapshot_tick.reset();
    // Store reports (and aged batches) are looked at even when nothing else happens.
    let mut store_tick = tokio::time::interval(std::time::Duration::from_millis(100));
    store_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Made once, outside the loop: a listener made anew each turn (`ctrl_c()` in the select)
    // misses a SIGINT that arrives while the loop body runs, and the sidecar ignored Ctrl-C
    // when it came during a busy drain.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut last_drops = crate::probe::loader::KernelDrops::default();

    // Hop segments are submitted without a wake-up each (a wake-up per packet would cost more
    // than the probe itself); this timer drains them. Exposure events still wake at once.
    let mut drain_tick = tokio::time::interval(std::time::Duration::from_millis(20));
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = drain_tick.tick() => drain(ring.get_mut(), &mut watch),
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                drain(guard.get_inner_mut(), &mut watch);
                guard.clear_ready();
            }
            guard = async {
                match log_fd.as_mut() {
                    Some(fd) => fd.readable_mut().await.map(Some),
                    None => std::future::pending().await,
                }
            } => {
                if let Ok(Some(mut guard)) = guard {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
            _ = rescan.tick() => {
                match tokio::task::block_in_place(|| watch.rescan()) {
                    Ok(changes) => watch.publish(&changes),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "rescan failed"),
                }
            }
            _ = nat.tick(), if config.nat.enabled => {
                let changes = tokio::task::block_in_place(|| watch.read_nat());
                watch.publish(&changes);
            }
            _ = drops_tick.tick() => {
                let drops = probes.kernel_drops();
                metrics.kernel_drops_now("ringbuf_full", drops.ringbuf_full);
                metrics.kernel_drops_now("field_read", drops.field_read);
                metrics.kernel_drops_now("hop_ringbuf_full", drops.hop_ringbuf_full);
                metrics.kernel_drops_now("hop_parse", drops.hop_parse);
                let t = &watch.hop.stats;
                metrics.limit_drops_now("hop_connections", t.evicted_connections);
                metrics.limit_drops_now("hop_pending_exchanges", t.dropped_exchanges);
                metrics.limit_drops_now("hop_close_frames", t.dropped_close_frames);
                if let Some(j) = watch.joiner.as_ref() {
                    metrics.limit_drops_now("join_pending", j.stats.shed);
                    metrics.limit_drops_now("join_duplicate_request_ids", j.stats.duplicate_request_ids);
                }
                if drops != last_drops {
                    watch.printer.status(
                        "kernel_drops",
                        &format!(
                            "the kernel dropped events (ring buffer full: {}, field reads: {}, \
                             hop segments: {}, unparsable hop packets: {}); the next rescan \
                             reconciles the inventory, and the hop tracker reports the gaps",
                            drops.ringbuf_full, drops.field_read, drops.hop_ringbuf_full, drops.hop_parse
                        ),
                        &serde_json::json!({
                            "ringbuf_full": drops.ringbuf_full,
                            "field_read": drops.field_read,
                            "hop_ringbuf_full": drops.hop_ringbuf_full,
                            "hop_parse": drops.hop_parse,
                        }),
                    );
                    last_drops = drops;
                }
            }
            _ = edge_tick.tick(), if !tailers.is_empty() => {
                watch.read_logs(&mut tailers);
            }
            _ = expire_tick.tick() => {
                let cutoff = unix_ns(SystemTime::now())
                    .saturating_sub(u64::try_from(config.hop.idle_expiry.as_nanos()).unwrap_or(u64::MAX));
                watch.hop.expire(cutoff, &mut watch.hop_records);
                watch.print_hop_records();
            }
            _ = snapshot_tick.tick(), if watch.store.is_some() => {
                let now = unix_ns(SystemTime::now());
                let exposures = watch.inventory.exposures();
                if let Some(st) = watch.store.as_mut() {
                    st.inventory(now, &exposures, &watch.policy);
                }
            }
            _ = store_tick.tick(), if watch.store.is_some() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        watch.emit_alerts(unix_ns(SystemTime::now()));
        watch.flush_store();
        watch.printer.flush();
    }
    // Events already in the ring buffer are not lost on shutdown.
    drain(ring.get_mut(), &mut watch);
    // What is still open is reported as it stands (sessions end `open`).
    watch.hop.finish(&mut watch.hop_records);
    watch.print_all_hop_records();
    watch.emit_alerts(unix_ns(SystemTime::now()));
    watch.flush_store();
    let undelivered: u64 = std::mem::take(&mut watch.webhooks)
        .into_iter()
        .map(|w| w.shutdown(std::time::Duration::from_secs(5)))
        .sum();
    if undelivered > 0 {
        watch.printer.status(
            "webhook",
            &format!("{undelivered} alert(s) not delivered to webhooks before stopping"),
            &serde_json::json!({ "event": "undelivered", "alerts": undelivered }),
        );
    }
    if let Some(st) = watch.store.take() {
        let totals = st.shutdown(config.store.timeout).await;
        watch.printer.status(
            "store_summary",
            &format!(
                "ClickHouse: {} row(s) spooled this run, {} sent (as {}), {} rejected, {} dropped; {} left in the spool for the next start",
                totals.spooled, totals.sent, totals.format, totals.rejected, totals.dropped, totals.backlog_rows
            ),
            &totals,
        );
    }
    watch
        .printer
        .status("stopped", "edgewatch stopped", &serde_json::json!({}));
    Ok(())
}
