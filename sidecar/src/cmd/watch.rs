//! The live driver's state: the pipeline, its sinks (output, ClickHouse, metrics,
//! webhooks) and the I/O that feeds it (the ring buffer, sock_diag, NAT rules, access logs).
//! Used by `edgewatch run` and `edgewatch exposure`.
use std::{borrow::Cow, sync::Arc, time::SystemTime};

use anyhow::Context as _;

use crate::{
    alerts::{Alert, Notice},
    config::Config,
    edge::{join::JoinedRequest, EdgeRecord},
    exposure::{inventory::Change, policy::Policy, Scope},
    hop::{tracker::FollowMode, HopRecord},
    metrics::{matched_index, Metrics, MATCHED, RECORD_KINDS},
    output::{unix_ns, Printer},
    pipeline::{Mode, Pipeline, Sink},
    probe::{
        boot_ns,
        events::{decode, ConnTraceKind, DecodeError, ListenChange, ProbeEvent},
        loader::Followed,
    },
    sources::{
        nat::read_nat_rules,
        snapshot::Attributor,
        tail::{Lines, Tailer},
    },
    store::{ship::StoreEvent, Store},
    webhook::Webhook,
};

/// `BPF_NOEXIST` (uapi/linux/bpf.h): create the entry only if the key has none.
const BPF_NOEXIST: u64 = 1;

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

/// Where the live pipeline's products go: the output, ClickHouse, the metrics; alert
/// transitions wait for the end of the turn (`Watch::emit_alerts`), which also sends them to
/// the webhooks.
pub(super) struct Sinks {
    pub(super) printer: Printer,
    pub(super) metrics: Arc<Metrics>,
    /// ClickHouse (live with `store.enabled` only).
    pub(super) store: Option<Store>,
    /// This turn's alert transitions.
    pub(super) alerts: Vec<Alert>,
    /// Print hop records and joined requests too (`run --records`).
    pub(super) records: bool,
    /// This turn's records by kind of `metrics::RECORD_KINDS`, added to the shared counters
    /// at the end of the turn (`publish_counts`), not with a locked increment each.
    pub(super) counts: [u64; RECORD_KINDS.len()],
    /// This turn's joined requests by how they were joined, of `metrics::MATCHED`, added
    /// with `counts`.
    pub(super) joined: [u64; MATCHED.len()],
}

impl Sinks {
    /// Adds this turn's record counts to the metrics (before the turn's output is flushed:
    /// whoever sees a record printed sees it counted).
    pub(super) fn publish_counts(&mut self) {
        if self.counts != [0; RECORD_KINDS.len()] {
            self.metrics.records(&self.counts);
            self.counts = [0; RECORD_KINDS.len()];
        }
        if self.joined != [0; MATCHED.len()] {
            self.metrics.joined(&self.joined);
            self.joined = [0; MATCHED.len()];
        }
    }
}

impl Sink for Sinks {
    fn hop(&mut self, r: &HopRecord) {
        self.counts[match r {
            HopRecord::Http(_) => 0,
            HopRecord::Websocket(_) => 1,
            HopRecord::Conn(_) => 2,
            HopRecord::Loss(_) => 3,
        }] += 1;
        if self.records {
            self.printer.hop(r);
        }
        if let Some(st) = self.store.as_mut() {
            st.hop(r);
        }
    }
    fn edge(&mut self, r: &EdgeRecord) {
        self.counts[5] += 1;
        if let Some(st) = self.store.as_mut() {
            st.edge(r);
        }
    }
    fn request(&mut self, r: &JoinedRequest) {
        self.counts[4] += 1;
        self.joined[matched_index(r.matched)] += 1;
        if self.records {
            self.printer.request(r);
        }
        if let Some(st) = self.store.as_mut() {
            st.request(r);
        }
    }
    fn edge_joined(&mut self, r: &JoinedRequest) {
        self.counts[5] += 1;
        self.counts[4] += 1;
        self.joined[matched_index(r.matched)] += 1;
        if self.records {
            self.printer.request(r);
        }
        if let Some(st) = self.store.as_mut() {
            st.edge_joined(r);
        }
    }
    fn change(&mut self, c: &Change, policy: &Policy, at_ns: u64) {
        self.printer.change(c, policy, at_ns);
        if let Some(st) = self.store.as_mut() {
            st.change(at_ns, c, policy);
        }
    }
    fn alert(&mut self, a: &Alert) {
        self.alerts.push(a.clone());
    }
    fn notice(&mut self, n: &Notice) {
        self.printer.status("upstream", &n.summary, n);
    }
}

/// The live sinks without the inventory's changes: the first reads are printed as the
/// inventory, whole.
struct Unchanged<'a>(&'a mut Sinks);

impl Sink for Unchanged<'_> {
    fn alert(&mut self, a: &Alert) {
        self.0.alert(a);
    }
}

/// State shared by the one-shot and the live paths: the pipeline and its I/O.
pub(super) struct Watch {
    pub(super) pipeline: Pipeline,
    pub(super) out: Sinks,
    pub(super) attributor: Attributor,
    pub(super) last_nat_problems: Vec<String>,
    pub(super) nat_tools: Vec<&'static str>,
    /// The kernel frame follower's map (live with the hop probe only).
    pub(super) followed: Option<Followed>,
    /// Added to CLOCK_BOOTTIME probe timestamps to get Unix time.
    pub(super) boot_to_unix: u64,
    /// Store rows dropped so far as last reported, and when (at most one line per 10 s).
    pub(super) store_dropped: u64,
    pub(super) store_dropped_at: Option<std::time::Instant>,
    pub(super) webhooks: Vec<Webhook>,
    /// Per-record warnings, rate-limited (the totals are in the metrics).
    pub(super) warnings: crate::throttle::Warnings,
    /// Listeners opened or closed so far (probe events): a new proxy listens, so the proxy
    /// watch lists the processes again only when this moves (see `ProxyWatch::poll`).
    pub(super) listen_changes: u64,
    /// The access-log lines of a round of reads (kept for the next round).
    lines: Lines,
}

impl Watch {
    pub(super) fn new(config: &Config, printer: Printer, metrics: Arc<Metrics>) -> Self {
        Self {
            pipeline: Pipeline::new(&config.pipeline(), Mode::Live),
            out: Sinks {
                printer,
                metrics,
                store: None,
                alerts: Vec::new(),
                records: false,
                counts: [0; RECORD_KINDS.len()],
                joined: [0; MATCHED.len()],
            },
            attributor: Attributor::new(),
            last_nat_problems: Vec::new(),
            nat_tools: Vec::new(),
            followed: None,
            boot_to_unix: unix_ns(SystemTime::now()).saturating_sub(boot_ns()),
            store_dropped: 0,
            store_dropped_at: None,
            webhooks: Vec::new(),
            warnings: Default::default(),
            listen_changes: 0,
            lines: Lines::default(),
        }
    }

    /// Starts the configured webhooks (a missing token stops the start).
    pub(super) fn start_webhooks(&mut self, config: &Config) -> anyhow::Result<()> {
        let node = crate::store::node_name(&config.store);
        for w in &config.alerts.webhooks {
            let hook = Webhook::start(w.clone(), node.clone()).map_err(anyhow::Error::msg)?;
            self.webhooks.push(hook);
        }
        Ok(())
    }

    /// Moves the rules' clock on and sends this turn's alert transitions to every sink: the
    /// output, ClickHouse, the metrics and the webhooks.
    pub(super) fn emit_alerts(&mut self, now: u64) {
        self.pipeline.tick(now, &mut self.out);
        if !self.out.alerts.is_empty() {
            let alerts = std::mem::take(&mut self.out.alerts);
            let firing = self.pipeline.firing();
            for a in &alerts {
                self.out.metrics.alert(a.rule, a.state.as_str(), firing);
                if let Some(st) = self.out.store.as_mut() {
                    st.alert(a);
                }
            }
            if let Some(st) = self.out.store.as_mut() {
                st.write_now();
            }
            for a in &alerts {
                self.out.printer.alert(a);
            }
            for w in &self.webhooks {
                w.send(&alerts);
            }
        }
        let pipeline = &self.pipeline;
        for w in &mut self.webhooks {
            w.resend(|| pipeline.incidents(now));
        }
        self.webhook_reports();
    }

    /// Prints what the webhooks reported and brings their counters up to date.
    fn webhook_reports(&mut self) {
        if self.webhooks.is_empty() {
            return;
        }
        let total = |f: fn(&crate::webhook::Stats) -> u64| -> u64 {
            self.webhooks.iter().map(|w| f(w.stats())).sum()
        };
        use std::sync::atomic::Ordering::Relaxed;
        let metrics = &self.out.metrics;
        metrics.webhook_alerts_now("sent", total(|s| s.sent.load(Relaxed)));
        metrics.webhook_alerts_now("failed", total(|s| s.failed.load(Relaxed)));
        metrics.webhook_alerts_now("dropped", total(|s| s.dropped.load(Relaxed)));
        for w in &self.webhooks {
            for ev in w.take_events() {
                use crate::webhook::WebhookEvent as E;
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
                self.out.printer.status("webhook", &text, &ev);
            }
        }
    }

    /// Reads the sidecar's own namespace's listeners (sock_diag) into the pipeline. The
    /// first read is the inventory, printed whole, not as changes.
    pub(super) fn rescan(&mut self, initial: bool) -> anyhow::Result<()> {
        let listeners = self.attributor.host_listeners();
        self.out.metrics.rescan(listeners.is_ok());
        let listeners = listeners.context("reading the socket inventory (sock_diag)")?;
        // Other namespaces' listeners are known from probe events; their namespaces'
        // addresses (where the hop reaches them) are read again here.
        self.pipeline.refresh_netns_addrs(|l| {
            let pid = l.process.as_ref()?.pid.to_string();
            // The same process still (a reused pid elsewhere says nothing of this one).
            (crate::sources::procs::netns_of(&pid) == l.netns && l.netns.is_some())
                .then(|| crate::sources::procs::netns_addrs(&pid))
        });
        let now = unix_ns(SystemTime::now());
        if initial {
            self.pipeline
                .host_listeners(listeners, now, &mut Unchanged(&mut self.out));
        } else {
            self.pipeline.host_listeners(listeners, now, &mut self.out);
        }
        self.exposure_metrics();
        Ok(())
    }

    /// Reads the NAT rules (iptables/nftables) into the pipeline.
    pub(super) fn read_nat(&mut self, initial: bool) {
        let report = read_nat_rules();
        self.out.metrics.nat_read(report.problems.len());
        self.nat_tools = report.tools_used;
        if report.problems != self.last_nat_problems {
            for p in &report.problems {
                tracing::warn!(problem = %p, "NAT rules");
            }
            self.last_nat_problems = report.problems;
        }
        let now = unix_ns(SystemTime::now());
        if initial {
            self.pipeline
                .publishes(report.publishes, now, &mut Unchanged(&mut self.out));
        } else {
            self.pipeline
                .publishes(report.publishes, now, &mut self.out);
        }
        self.exposure_metrics();
    }

    fn exposure_metrics(&self) {
        let exposures = self.pipeline.exposures();
        let count = |s: Scope| {
            i64::try_from(exposures.iter().filter(|e| e.scope() == s).count()).unwrap_or(0)
        };
        self.out.metrics.set_exposures(&[
            ("loopback", count(Scope::Loopback)),
            ("private", count(Scope::Private)),
            ("public", count(Scope::Public)),
            ("wildcard", count(Scope::Wildcard)),
        ]);
    }

    /// One record from the ring buffer.
    fn on_event(&mut self, result: Result<ProbeEvent<'_>, DecodeError>, tally: &mut Tally) {
        let metrics = &self.out.metrics;
        match result {
            Ok(ProbeEvent::Hop(packet)) => {
                // Counted for the batch: two or more of these a request, where a shared
                // counter and the lag histogram's lock each cost more than a decode.
                tally.hop_segments += 1;
                tally.followed += u64::from(packet.pieces.is_some());
                tally.oldest_ts = tally.oldest_ts.min(packet.ts_boot_ns);
                let ts = packet.ts_boot_ns.saturating_add(self.boot_to_unix);
                self.pipeline.hop_packet(&packet, ts);
                self.arm_follower();
                // Records go out after the whole batch (`Pipeline::end_batch`), so connection
                // traces that the kernel wrote just after the packet can still name the
                // process.
            }
            Ok(ProbeEvent::Conn(trace)) => {
                tally.oldest_ts = tally.oldest_ts.min(trace.ts_boot_ns);
                metrics.event(match trace.what {
                    ConnTraceKind::ConnectStart => "connect_start",
                    ConnTraceKind::ConnectEnd => "connect_end",
                    ConnTraceKind::ConnectFailed => "connect_failed",
                    ConnTraceKind::ResetSent => "reset_sent",
                    ConnTraceKind::ResetReceived => "reset_received",
                });
                tracing::debug!(?trace.what, %trace.local, %trace.remote, pid = trace.pid, comm = %trace.comm, "connection trace");
                let ts = trace.ts_boot_ns.saturating_add(self.boot_to_unix);
                self.pipeline.conn_trace(&trace, ts, &mut self.out);
            }
            Ok(ProbeEvent::ListenChange(ev)) => {
                tally.oldest_ts = tally.oldest_ts.min(ev.ts_boot_ns);
                metrics.event("listen_change");
                self.listen_changes += 1;
                tokio::task::block_in_place(|| self.on_listen_change(&ev));
            }
            Err(e) => {
                metrics.decode_error();
                if let Some(held) = self.warnings.probe_record.allow(std::time::Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        held_back = held,
                        "dropped a malformed probe record (all counted in edgewatch_decode_errors_total)"
                    );
                }
            }
        }
    }

    /// Tells the kernel what it can follow from now on: where the next frame header of a
    /// WebSocket direction starts (it then copies frame headers only), or where a long body
    /// ends (segments wholly inside it then cost no record). An entry the kernel already has
    /// stays: it is one the kernel keeps in step itself, and may hold skipped bytes not yet
    /// reported (`BPF_NOEXIST`).
    fn arm_follower(&mut self) {
        let hints = self.pipeline.take_follow_hints();
        let Some(map) = self.followed.as_mut() else {
            return;
        };
        for h in hints {
            let key = flow_key(h.src, h.dst);
            let (mode, name) = match h.mode {
                FollowMode::WsFrames => (edgewatch_common::follow_mode::WS_FRAMES, "ws_frames"),
                FollowMode::Body => (edgewatch_common::follow_mode::BODY, "body"),
            };
            let value = edgewatch_common::FollowedFlow {
                next_seq: h.next_seq,
                mode,
                elided: 0,
                elided_end: 0,
            };
            match map.insert(key, value, BPF_NOEXIST) {
                Ok(()) => self.out.metrics.follow_armed(name),
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    self.out.metrics.ws_follow_error();
                    tracing::debug!(error = %e, "cannot arm the kernel follower");
                }
            }
        }
    }

    /// Part of a ring-buffer batch: its exchanges go out now if nothing else is in it (see
    /// `Pipeline::flush_exchanges`).
    fn flush_exchanges(&mut self) {
        self.pipeline
            .flush_exchanges(unix_ns(SystemTime::now()), &mut self.out);
    }

    /// The end of a ring-buffer batch: its records go out.
    pub(super) fn end_batch(&mut self) {
        self.pipeline
            .end_batch(unix_ns(SystemTime::now()), &mut self.out);
    }

    /// Reads the access logs (a bounded piece of each, more rounds while one is behind),
    /// hands the lines to the pipeline, then moves the logs' checkpoints: with a store, only
    /// once the lines' rows and a mark of each log's position are written through to the
    /// spool (exactly once across kill -9: see `sources::tail`).
    pub(super) fn read_logs(&mut self, tailers: &mut [Tailer]) {
        // One text for all the lines of a round, kept from round to round (see `Lines`).
        let mut lines = std::mem::take(&mut self.lines);
        for _ in 0..8 {
            lines.clear();
            for t in tailers.iter_mut() {
                if let Err(e) = t.poll(&mut lines) {
                    if let Some(held) = self.warnings.log_read.allow(std::time::Instant::now()) {
                        tracing::warn!(log = %t.path().display(), error = %e, held_back = held, "cannot read access log");
                    }
                }
            }
            self.on_edge_lines(&lines);
            if let Some(st) = self.out.store.as_mut() {
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
        // Kept with the last round's lines: `Lines::clear` sizes its memory by them.
        self.lines = lines;
        let t = tailers.iter().fold((0, 0), |a, t| {
            (a.0 + t.overlong_lines, a.1 + t.lost_rotations)
        });
        let metrics = &self.out.metrics;
        metrics.limit_drops_now("edge_overlong_lines", t.0);
        metrics.limit_drops_now("edge_lost_rotations", t.1);
    }

    /// New access-log lines: parsed (malformed ones counted and reported), then joined.
    fn on_edge_lines(&mut self, lines: &Lines) {
        let now = unix_ns(SystemTime::now());
        // Counted for the round, not with a locked increment a line.
        let (mut parsed_lines, mut malformed, mut non_utf8) = (0, 0, 0);
        let mut lines = lines
            .iter()
            .inspect(|line| non_utf8 += u64::from(matches!(line, Cow::Owned(_))))
            .filter(|line| !line.trim().is_empty());
        // Two lines are read ahead. The join's place for the exchange of the second is asked
        // for from memory, and the exchange itself of the first (whose place was asked for a
        // line before): those reads, cold (the exchange came a log poll ago), are then under
        // way while this line is joined and stored.
        let mut next = lines.next().map(|line| self.pipeline.parse_ahead(&line));
        let mut after = lines.next().map(|line| self.pipeline.parse_ahead(&line));
        while let Some(this) = next.take() {
            next = after.take();
            after = lines.next().map(|line| self.pipeline.parse_ahead(&line));
            if let Some(Ok(record)) = &next {
                self.pipeline.prefetch_exchange(record);
            }
            match this {
                Ok(record) => {
                    self.pipeline.edge_boxed(record, now, &mut self.out);
                    parsed_lines += 1;
                }
                Err(e) => {
                    malformed += 1;
                    if let Some(held) = self.warnings.edge_line.allow(std::time::Instant::now()) {
                        tracing::warn!(
                            error = %e,
                            held_back = held,
                            "malformed access-log line skipped (all counted in edgewatch_edge_lines_total{{result=\"malformed\"}})"
                        );
                    }
                }
            }
        }
        drop(lines);
        self.out
            .metrics
            .edge_lines(parsed_lines, malformed, non_utf8);
        self.pipeline.tick(now, &mut self.out);
    }

    /// Writes this turn's rows to the spool and prints what the store reported.
    pub(super) fn flush_store(&mut self) {
        let Some(st) = self.out.store.as_mut() else {
            return;
        };
        let dropped = st.flush(&self.out.metrics).dropped;
        let quiet = self
            .store_dropped_at
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(10));
        if dropped > self.store_dropped && !quiet {
            let text = format!(
                "{} row(s) dropped so far: the spool is full (store.spool_max_bytes) or cannot be written; the oldest went first",
                dropped
            );
            tracing::error!("{text}");
            self.out.printer.status(
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
                    self.out.metrics.set_store_up(true);
                    continue;
                }
                StoreEvent::Ready { .. } | StoreEvent::Recovered { .. } => {
                    self.out.metrics.set_store_up(true)
                }
                StoreEvent::Unavailable { .. } | StoreEvent::Incompatible { .. } => {
                    self.out.metrics.set_store_up(false)
                }
                StoreEvent::Rejected { .. } => {}
            }
            let text = match &ev {
                StoreEvent::Ready {
                    server_version,
                    schema_version,
                    url,
                    format,
                    cluster,
                } => {
                    let cluster = cluster.as_ref().map_or(String::new(), |c| {
                        format!(
                            "; cluster {} of {} shard(s), {} DDL, {} node(s) migrated",
                            c.name,
                            c.shards.map_or("?".to_owned(), |n| n.to_string()),
                            c.ddl,
                            c.migrated_nodes
                        )
                    });
                    format!("ClickHouse {server_version} at {url} ready (schema version {schema_version}; rows go as {format}{cluster})")
                }
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
            self.out.printer.status("store", &text, &ev);
        }
    }

    fn on_listen_change(&mut self, ev: &ListenChange) {
        let now = unix_ns(SystemTime::now());
        let listener = self.attributor.listener_from_event(ev);
        if ev.opened {
            self.pipeline.listener_opened(listener, now, &mut self.out);
        } else if !(listener.host_netns && self.attributor.still_listening(ev.addr, ev.port)) {
            self.pipeline
                .listener_closed(&listener, ev.tgid, now, &mut self.out);
        }
        self.exposure_metrics();
    }
}

/// Ring-buffer records between two flushes of a drain's exchanges (a keep-alive request is
/// two): each is emitted while the tracker's work on it is still in the core's caches.
const FLUSH_EVERY: usize = 128;

/// Handles every event waiting in the ring buffer, then prints the hop records of the batch.
/// Returns how many events there were.
pub(super) fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, watch: &mut Watch) -> usize {
    let now_boot = boot_ns();
    let mut events = 0;
    let mut tally = Tally::default();
    // Each record is handled in place (its payload bytes borrowed from the ring, no copy)
    // and released to the kernel as soon as it is done.
    while let Some(item) = ring.next() {
        watch.on_event(decode(&item), &mut tally);
        events += 1;
        if events % FLUSH_EVERY == 0 {
            watch.flush_exchanges();
        }
    }
    if events > 0 {
        let lag = now_boot.saturating_sub(tally.oldest_ts) as f64 / 1e9;
        watch
            .out
            .metrics
            .batch_drained(tally.hop_segments, tally.followed, lag);
    }
    watch.end_batch();
    events
}

/// What a drained batch held, for its metrics (counted once per batch, not per record).
struct Tally {
    hop_segments: u64,
    followed: u64,
    /// The kernel time of the batch's oldest event.
    oldest_ts: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            hop_segments: 0,
            followed: 0,
            oldest_ts: u64::MAX,
        }
    }
}
