//! The sidecar's own counters, served in the Prometheus text format on a loopback HTTP
//! endpoint (`/metrics`, plus `/healthz`). Every drop anywhere in the pipeline is counted here.
use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{
        text::{encode_eof, encode_registry},
        DescriptorEncoder, EncodeMetric,
    },
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        MetricType,
    },
    registry::Registry,
};

use crate::edge::join::Matched;

type Labels = Vec<(String, String)>;

/// Brings a counter up to an absolute total (counters the sidecar reads elsewhere).
fn raise_to(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

/// The members of a counter family for a closed set of label values, looked up once, at
/// start. A lookup in the family takes its lock, makes the label (two `String`s) and hashes
/// it: the sidecar brings store and drop counters up to date on every turn of its loop, and
/// counts access-log lines and connection events one by one.
struct Members<const N: usize> {
    family: Family<Labels, Counter>,
    key: &'static str,
    values: [&'static str; N],
    counters: [Counter; N],
}

impl<const N: usize> Members<N> {
    /// Creates every member, so that a scrape shows zero rather than nothing.
    fn new(family: &Family<Labels, Counter>, key: &'static str, values: [&'static str; N]) -> Self {
        Self {
            family: family.clone(),
            key,
            values,
            counters: values.map(|v| family.get_or_create(&label(key, v)).clone()),
        }
    }

    /// Runs `f` on the member for `value` (one outside the set is looked up in the family).
    fn with(&self, value: &str, f: impl FnOnce(&Counter)) {
        match self.values.iter().position(|v| *v == value) {
            Some(i) => f(&self.counters[i]),
            None => f(&self.family.get_or_create(&label(self.key, value))),
        }
    }

    /// Counts one for the member for `value`.
    fn inc(&self, value: &str) {
        self.with(value, |c| {
            c.inc();
        });
    }

    /// Brings the member for `value` up to an absolute total.
    fn raise_to(&self, value: &str, total: u64) {
        self.with(value, |c| raise_to(c, total));
    }
}

/// The standard `process_*` metrics every Prometheus client library exports (the names its
/// process collectors use, unprefixed, so dashboards and alerts made for any exporter's own
/// cost work here), read from the kernel at each scrape: CPU from `getrusage` (microseconds,
/// every thread's, exited ones too), memory and descriptors from `/proc/self`.
#[derive(Debug)]
struct ProcessCollector {
    /// Seconds since the epoch when the process started (read once).
    start_time: Option<f64>,
}

impl ProcessCollector {
    fn new() -> Self {
        Self {
            start_time: process_start_time(),
        }
    }
}

/// User plus system CPU of the whole process, in seconds.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and has no other effect.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    // Summed in whole microseconds, then divided once: the figure prints as the kernel gave it.
    let micros = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    (micros(u.ru_utime) + micros(u.ru_stime)) as f64 / 1e6
}

/// Resident memory in bytes (`/proc/self/statm`'s second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

/// The process's start (`/proc/self/stat`'s 22nd field, in clock ticks since boot) plus the
/// boot time (`/proc/stat`'s `btime`).
fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the parenthesised command; starttime is the 22nd field overall.
    let ticks: f64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(btime + ticks / hz)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let cpu = ConstCounter::new(process_cpu_seconds());
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        let mut gauge = |name: &str, help: &str, v: Option<i64>| match v {
            Some(v) => ConstGauge::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?),
            None => Ok(()),
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            resident_bytes().and_then(|b| i64::try_from(b).ok()),
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors",
            open_fds(),
        )?;
        if let Some(t) = self.start_time {
            ConstGauge::new(t).encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// All counters; cheap to clone behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// The unprefixed `process_*` metrics.
    process: Registry,
    events: Members<7>,
    hop_segments: Counter,
    kernel_drops: Members<4>,
    kernel_skipped: Members<2>,
    follow_armed: Members<2>,
    limit_drops: Members<8>,
    decode_errors: Counter,
    ws_follow_errors: Counter,
    followed_segments: Counter,
    edge_lines: Members<3>,
    event_lag: Histogram,
    exposures: Family<Labels, Gauge>,
    alerts: Family<Labels, Counter>,
    alerts_firing: Gauge,
    rescans: Counter,
    rescan_errors: Counter,
    nat_reads: Counter,
    proxy_scans: Counter,
    nat_problems: Gauge,
    store_rows: Members<4>,
    webhook_alerts: Members<3>,
    store_backlog_rows: Gauge,
    store_backlog_bytes: Gauge,
    store_up: Gauge,
    /// Per kind of [`RECORD_KINDS`], the same counters as the `records` family.
    records: [Counter; RECORD_KINDS.len()],
    /// Joined requests by how they were put together, in [`MATCHED`]'s order.
    joined: Members<4>,
}

/// The record kinds the pipeline produces, as `edgewatch_records_total{kind}` names them.
pub const RECORD_KINDS: [&str; 6] = ["http", "websocket", "conn", "loss", "request", "edge"];

/// How a joined request was put together, as `edgewatch_joined_requests_total{matched}` names
/// it: indexed by [`matched_index`].
pub const MATCHED: [&str; 4] = ["exact", "inferred", "edge_only", "hop_only"];

/// The index in [`MATCHED`] of how a request was joined.
pub fn matched_index(m: Matched) -> usize {
    match m {
        Matched::Exact => 0,
        Matched::Inferred => 1,
        Matched::EdgeOnly => 2,
        Matched::HopOnly => 3,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Long because it registers every metric with its help text: a list, not logic.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edgewatch");
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "events",
            "Events received from the kernel probes",
            events.clone(),
        );
        let kernel_drops = Family::<Labels, Counter>::default();
        registry.register(
            "kernel_drops",
            "Events the kernel could not deliver (ring buffer full, field read failure)",
            kernel_drops.clone(),
        );
        let kernel_skipped = Family::<Labels, Counter>::default();
        registry.register(
            "hop_kernel_skipped",
            "Hop packets the kernel sent no record for on purpose (pure ACKs; segments wholly \
             inside a followed WebSocket payload or HTTP body, whose length comes with the next \
             record): not drops",
            kernel_skipped.clone(),
        );
        let follow_armed = Family::<Labels, Counter>::default();
        registry.register(
            "hop_follow_armed",
            "Directions handed to the kernel's follower (ws_frames: from a WebSocket frame \
             header; body: to the end of a long HTTP body or chunk)",
            follow_armed.clone(),
        );
        let limit_drops = Family::<Labels, Counter>::default();
        registry.register(
            "limit_drops",
            "What was given up, by where: at a count limit (connections reported early and \
             forgotten, requests left unpaired, close frames not kept, join records shed, \
             duplicate request ids), or unreadable (overlong log lines, rotated logs gone \
             while stopped, corrupt spool stretches)",
            limit_drops.clone(),
        );
        let limit_drops = Members::new(
            &limit_drops,
            "limit",
            [
                "hop_connections",
                "hop_pending_exchanges",
                "hop_close_frames",
                "join_pending",
                "join_duplicate_request_ids",
                "edge_overlong_lines",
                "edge_lost_rotations",
                "spool_corrupt_regions",
            ],
        );
        let record_family = Family::<Labels, Counter>::default();
        registry.register(
            "records",
            "Records the pipeline produced, by kind (hop exchanges, WebSocket sessions, \
             connection events, losses, joined requests, access-log records); printed only \
             with `run --records`, stored either way",
            record_family.clone(),
        );
        let records = RECORD_KINDS.map(|k| record_family.get_or_create(&label("kind", k)).clone());
        let joined = Family::<Labels, Counter>::default();
        registry.register(
            "joined_requests",
            "Joined requests by how the hop and the access log were put together: exact (by \
             request id), inferred (by time, method, path and upstream), edge_only (only the \
             access log saw it), hop_only (only the hop saw it). A share of edge_only and \
             hop_only that grows means the id is not forwarded, or a log is not followed; \
             each record's reason says which",
            joined.clone(),
        );
        let joined = Members::new(&joined, "matched", MATCHED);
        let decode_errors = Counter::default();
        registry.register(
            "decode_errors",
            "Ring-buffer records that could not be decoded (dropped)",
            decode_errors.clone(),
        );
        let ws_follow_errors = Counter::default();
        registry.register(
            "ws_follow_errors",
            "Failed writes to the kernel's follower map (WebSocket frames, long bodies)",
            ws_follow_errors.clone(),
        );
        let followed_segments = Counter::default();
        registry.register(
            "hop_followed_segments",
            "WebSocket segments of which the kernel sent only frame headers (no payload)",
            followed_segments.clone(),
        );
        let edge_lines = Family::<Labels, Counter>::default();
        registry.register(
            "edge_lines",
            "Access-log lines read, parsed or malformed",
            edge_lines.clone(),
        );
        let edge_lines = Members::new(&edge_lines, "result", ["parsed", "malformed", "non_utf8"]);
        let event_lag = Histogram::new([0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0]);
        registry.register(
            "event_lag_seconds",
            "For each batch of kernel events drained, the age of its oldest event when the batch began: how far user space runs behind the kernel",
            event_lag.clone(),
        );
        let exposures = Family::<Labels, Gauge>::default();
        registry.register("exposures", "Current exposures by scope", exposures.clone());
        let alerts = Family::<Labels, Counter>::default();
        registry.register(
            "alerts",
            "Alert transitions by rule and state",
            alerts.clone(),
        );
        let alerts_firing = Gauge::default();
        registry.register("alerts_firing", "Alerts firing now", alerts_firing.clone());
        let rescans = Counter::default();
        registry.register("rescans", "Socket inventory rescans", rescans.clone());
        let rescan_errors = Counter::default();
        registry.register(
            "rescan_errors",
            "Failed socket inventory rescans",
            rescan_errors.clone(),
        );
        let nat_reads = Counter::default();
        registry.register("nat_reads", "NAT rule reads", nat_reads.clone());
        let proxy_scans = Counter::default();
        registry.register(
            "proxy_scans",
            "Listings of the processes for proxies (after a listener opened or closed, a known \
             master's change, and every 30 s)",
            proxy_scans.clone(),
        );
        let nat_problems = Gauge::default();
        registry.register(
            "nat_problems",
            "Problems in the last NAT rule read (missing tools, rules not understood)",
            nat_problems.clone(),
        );
        let store_rows = Family::<Labels, Counter>::default();
        registry.register(
            "store_rows",
            "Rows for ClickHouse by outcome: spooled (accepted on disk), sent, rejected (set \
             aside for good), dropped (spool full or unwritable)",
            store_rows.clone(),
        );
        let store_rows = Members::new(
            &store_rows,
            "result",
            ["spooled", "sent", "rejected", "dropped"],
        );
        let webhook_alerts = Family::<Labels, Counter>::default();
        registry.register(
            "webhook_alerts",
            "Alert transitions for webhooks by outcome: sent, failed (given up after retries, or \
             refused), dropped (the delivery queue was full)",
            webhook_alerts.clone(),
        );
        let webhook_alerts = Members::new(&webhook_alerts, "result", ["sent", "failed", "dropped"]);
        let store_backlog_rows = Gauge::default();
        registry.register(
            "store_backlog_rows",
            "Rows waiting in sealed spool batches",
            store_backlog_rows.clone(),
        );
        let store_backlog_bytes = Gauge::default();
        registry.register(
            "store_backlog_bytes",
            "Bytes of sealed spool batches waiting to be sent",
            store_backlog_bytes.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while ClickHouse accepts inserts, 0 while rows wait in the spool",
            store_up.clone(),
        );
        let kernel_drops = Members::new(
            &kernel_drops,
            "reason",
            [
                "ringbuf_full",
                "field_read",
                "hop_ringbuf_full",
                "hop_parse",
            ],
        );
        let kernel_skipped = Members::new(&kernel_skipped, "what", ["pure_ack", "payload"]);
        let follow_armed = Members::new(&follow_armed, "mode", ["ws_frames", "body"]);
        let events = Members::new(
            &events,
            "kind",
            [
                "hop_segment",
                "listen_change",
                "connect_start",
                "connect_end",
                "connect_failed",
                "reset_sent",
                "reset_received",
            ],
        );
        // The first member above.
        let hop_segments = events.counters[0].clone();
        debug_assert_eq!(events.values[0], "hop_segment");
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector::new()));
        Self {
            records,
            joined,
            registry,
            process,
            events,
            hop_segments,
            kernel_drops,
            kernel_skipped,
            follow_armed,
            limit_drops,
            decode_errors,
            ws_follow_errors,
            followed_segments,
            edge_lines,
            event_lag,
            exposures,
            alerts,
            alerts_firing,
            rescans,
            rescan_errors,
            nat_reads,
            proxy_scans,
            nat_problems,
            store_rows,
            webhook_alerts,
            store_backlog_rows,
            store_backlog_bytes,
            store_up,
        }
    }

    /// Brings a store row counter up to an absolute total.
    pub fn store_rows_now(&self, result: &str, total: u64) {
        self.store_rows.raise_to(result, total);
    }

    /// Brings a webhook counter (summed over the webhooks) up to an absolute total.
    pub fn webhook_alerts_now(&self, result: &str, total: u64) {
        self.webhook_alerts.raise_to(result, total);
    }

    pub fn set_store_backlog(&self, rows: u64, bytes: u64) {
        self.store_backlog_rows
            .set(i64::try_from(rows).unwrap_or(i64::MAX));
        self.store_backlog_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// Counts one probe event other than a hop segment (`kind` is a fixed name).
    pub fn event(&self, kind: &'static str) {
        self.events.inc(kind);
    }

    /// A batch of probe events was drained: its hop segments (`followed` of them frame
    /// headers only), and the age of its oldest event when the batch began, in seconds.
    pub fn batch_drained(&self, hop_segments: u64, followed: u64, lag_seconds: f64) {
        if hop_segments > 0 {
            self.hop_segments.inc_by(hop_segments);
        }
        if followed > 0 {
            self.followed_segments.inc_by(followed);
        }
        self.event_lag.observe(lag_seconds);
    }

    /// Counts produced records, `counts[k]` of `RECORD_KINDS[k]` (a turn's, added at once:
    /// a locked increment per record cost the live path more than the record's row).
    pub fn records(&self, counts: &[u64; RECORD_KINDS.len()]) {
        for (c, &n) in self.records.iter().zip(counts) {
            if n > 0 {
                c.inc_by(n);
            }
        }
    }

    /// Counts joined requests, `counts[k]` of `MATCHED[k]` (a turn's, added at once).
    pub fn joined(&self, counts: &[u64; MATCHED.len()]) {
        for (c, &n) in self.joined.counters.iter().zip(counts) {
            if n > 0 {
                c.inc_by(n);
            }
        }
    }

    /// The joined requests so far, by how they were joined.
    pub fn joined_counts(&self) -> serde_json::Value {
        MATCHED
            .iter()
            .zip(&self.joined.counters)
            .map(|(k, c)| ((*k).to_owned(), serde_json::Value::from(c.get())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The records produced so far, by kind.
    pub fn record_counts(&self) -> serde_json::Value {
        RECORD_KINDS
            .iter()
            .zip(&self.records)
            .map(|(k, c)| ((*k).to_owned(), serde_json::Value::from(c.get())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    pub fn decode_error(&self) {
        self.decode_errors.inc();
    }

    /// Counts access-log lines parsed and malformed, and those that were not UTF-8 (read
    /// lossily, then parsed), a round of reads at once.
    pub fn edge_lines(&self, parsed: u64, malformed: u64, non_utf8: u64) {
        for (result, n) in [
            ("parsed", parsed),
            ("malformed", malformed),
            ("non_utf8", non_utf8),
        ] {
            if n > 0 {
                self.edge_lines.with(result, |c| {
                    c.inc_by(n);
                });
            }
        }
    }

    /// A direction was handed to the kernel's follower (`ws_frames` or `body`).
    pub fn follow_armed(&self, mode: &str) {
        self.follow_armed.inc(mode);
    }

    /// A write to the kernel's frame follower map failed (it then copies payload prefixes).
    pub fn ws_follow_error(&self) {
        self.ws_follow_errors.inc();
    }

    /// Brings a kernel drop counter up to the kernel's absolute value.
    pub fn kernel_drops_now(&self, reason: &str, total: u64) {
        self.kernel_drops.raise_to(reason, total);
    }

    /// Brings a counter of hop packets the kernel skipped up to the kernel's absolute value.
    pub fn kernel_skipped_now(&self, what: &str, total: u64) {
        self.kernel_skipped.raise_to(what, total);
    }

    /// A count limit's running total of what it gave up (see `hop::tracker::TrackerLimits`).
    pub fn limit_drops_now(&self, limit: &str, total: u64) {
        self.limit_drops.raise_to(limit, total);
    }

    pub fn set_exposures(&self, by_scope: &[(&str, i64)]) {
        for (scope, n) in by_scope {
            self.exposures.get_or_create(&label("scope", scope)).set(*n);
        }
    }

    pub fn alert(&self, rule: &str, state: &str, firing_now: usize) {
        self.alerts
            .get_or_create(&vec![
                ("rule".to_owned(), rule.to_owned()),
                ("state".to_owned(), state.to_owned()),
            ])
            .inc();
        self.alerts_firing
            .set(i64::try_from(firing_now).unwrap_or(i64::MAX));
    }

    pub fn rescan(&self, ok: bool) {
        self.rescans.inc();
        if !ok {
            self.rescan_errors.inc();
        }
    }

    pub fn proxy_scan(&self) {
        self.proxy_scans.inc();
    }

    pub fn nat_read(&self, problems: usize) {
        self.nat_reads.inc();
        self.nat_problems
            .set(i64::try_from(problems).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        if encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out))
            .is_err()
        {
            out.clear();
        }
        out
    }
}

/// Binds the endpoint and serves it in the background; returns the bound address.
pub async fn serve(metrics: Arc<Metrics>, listen: SocketAddr) -> std::io::Result<SocketAddr> {
    use axum::{http::header, routing::get, Router};
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests;
