//! The `edgewatch replay` command: a capture and access logs through the one pipeline
//! (`crate::pipeline::offline`), with a progress bar, the records and alerts as they come,
//! the incidents as they stand at the end, and summaries.
use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::{
    alerts::{Alert, Notice},
    config::Config,
    edge::{join::JoinedRequest, nginx::JsonFields, EdgeRecord, LineParser},
    hop::HopRecord,
    metrics::Metrics,
    output::{Format, Printer},
    pipeline::{offline, Mode, Pipeline, Sink},
    store::Store,
};
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What `replay` does with the pipeline's products: prints them, counts the requests by how
/// they matched, and keeps them all for `--store`.
struct ReplaySink {
    printer: Printer,
    requests: BTreeMap<&'static str, u64>,
    keep: bool,
    hop: Vec<HopRecord>,
    edges: Vec<EdgeRecord>,
    joined: Vec<JoinedRequest>,
    /// Requests joined as their lines came (stored as one row with the line, as live).
    joined_with_line: Vec<JoinedRequest>,
    alerts: Vec<Alert>,
}

impl Sink for ReplaySink {
    fn hop(&mut self, r: &HopRecord) {
        self.printer.hop(r);
        if self.keep {
            self.hop.push(r.clone());
        }
    }
    fn edge(&mut self, r: &EdgeRecord) {
        if self.keep {
            self.edges.push(r.clone());
        }
    }
    fn request(&mut self, r: &JoinedRequest) {
        self.printer.request(r);
        *self.requests.entry(r.matched.as_str()).or_default() += 1;
        if self.keep {
            self.joined.push(r.clone());
        }
    }
    fn edge_joined(&mut self, r: &JoinedRequest) {
        self.printer.request(r);
        *self.requests.entry(r.matched.as_str()).or_default() += 1;
        if self.keep {
            self.joined_with_line.push(r.clone());
        }
    }
    fn alert(&mut self, a: &Alert) {
        self.printer.alert(a);
        if self.keep {
            self.alerts.push(a.clone());
        }
    }
    fn notice(&mut self, n: &Notice) {
        self.printer.status("upstream", &n.summary, n);
    }
}

/// What goes with the capture.
pub struct Inputs<'a> {
    /// The upstream ports of the hop.
    pub ports: &'a [u16],
    pub access_logs: &'a [PathBuf],
    pub join_window: std::time::Duration,
    /// The proxy's configuration (`--proxy-config`): routes and findings.
    pub proxy: Option<(
        Vec<edgewatch_core::proxy::Route>,
        Vec<edgewatch_core::proxy::Finding>,
    )>,
}

pub fn run(
    capture: &Path,
    inputs: &Inputs<'_>,
    config: &Config,
    to_store: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let (ports, access_logs, join_window) = (inputs.ports, inputs.access_logs, inputs.join_window);
    let file = File::open(capture).with_context(|| format!("opening {}", capture.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut logs = read_logs(access_logs, &config.edge.json_fields)?;
    let mut settings = config.pipeline();
    settings.hop_ports = ports.to_vec();
    settings.join = !access_logs.is_empty();
    settings.join_window_ns = u64::try_from(join_window.as_nanos()).unwrap_or(u64::MAX);
    settings.proxy = inputs.proxy.clone();
    let mut pipeline = Pipeline::new(&settings, Mode::Offline);
    let mut sink = ReplaySink {
        printer: Printer::stdout(format),
        requests: BTreeMap::new(),
        keep: to_store,
        hop: Vec::new(),
        edges: Vec::new(),
        joined: Vec::new(),
        joined_with_line: Vec::new(),
        alerts: Vec::new(),
    };
    // Drawn only when stderr is a terminal; hidden in pipes and tests.
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = offline::run(
        // Unbuffered: the capture reader reads in 1 MiB blocks itself.
        file,
        std::mem::take(&mut logs.records),
        &mut pipeline,
        &mut sink,
        |done| bar.set_position(done),
    )
    .with_context(|| format!("replaying {}", capture.display()))?;
    bar.finish_and_clear();
    let drops: u64 = summary
        .skipped
        .iter()
        .filter(|(k, _)| **k != "not_tcp")
        .map(|(_, v)| v)
        .sum();
    let printer = &mut sink.printer;
    printer.status(
        "replay_summary",
        &format!(
            "{} packets, {} TCP segments, {} on the hop, {} records; skipped {:?}; {} bytes unseen{}",
            summary.packets,
            summary.tcp_segments,
            summary.hop_segments,
            summary.records,
            summary.skipped,
            summary.gap_bytes,
            summary
                .truncated_at
                .map(|at| format!("; the capture is truncated at byte {at}"))
                .unwrap_or_default()
        ),
        &summary,
    );
    if !access_logs.is_empty() {
        let join = pipeline.join_stats().cloned().unwrap_or_default();
        logs.summary(printer, &sink.requests, &join);
    }
    // The incidents as they stand when the capture ends: final evidence and counts.
    for a in pipeline.incidents(summary.end_ns) {
        printer.incident(&a);
    }
    if to_store {
        ship(&mut sink, config)?;
    }
    if summary.truncated_at.is_some() || drops > 0 {
        tracing::warn!(
            truncated_at = ?summary.truncated_at,
            dropped_packets = drops,
            "some of the capture could not be used"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The access logs, parsed (malformed lines counted with a few examples, never fatal).
struct Logs {
    records: Vec<EdgeRecord>,
    parsed: usize,
    lines: u64,
    non_utf8: u64,
    malformed: BTreeMap<String, u64>,
    examples: Vec<String>,
}

fn read_logs(paths: &[PathBuf], fields: &JsonFields) -> anyhow::Result<Logs> {
    let mut logs = Logs {
        records: Vec::new(),
        parsed: 0,
        lines: 0,
        non_utf8: 0,
        malformed: BTreeMap::new(),
        examples: Vec::new(),
    };
    let parser = LineParser::new(fields.clone());
    for path in paths {
        let stats =
            crate::sources::logfile::for_each_line(path, |n, line| match parser.parse(line) {
                Ok(rec) => logs.records.push(rec),
                Err(e) => {
                    *logs.malformed.entry(e.to_string()).or_default() += 1;
                    if logs.examples.len() < 3 {
                        logs.examples.push(format!("{}:{n}: {e}", path.display()));
                    }
                }
            })
            .with_context(|| format!("reading {}", path.display()))?;
        logs.lines += stats.lines;
        logs.parsed = logs.records.len();
        logs.non_utf8 += stats.non_utf8;
    }
    Ok(logs)
}

impl Logs {
    /// The `join_summary` line.
    fn summary(
        &self,
        printer: &mut Printer,
        by_kind: &BTreeMap<&'static str, u64>,
        join: &crate::edge::join::JoinStats,
    ) {
        let bad: u64 = self.malformed.values().sum();
        let (lines, non_utf8) = (self.lines, self.non_utf8);
        let parsed = self.parsed;
        printer.status(
            "join_summary",
            &format!(
                "{lines} access-log lines ({non_utf8} not UTF-8, decoded lossily), {parsed} parsed, {bad} malformed; requests {by_kind:?}{}",
                if self.examples.is_empty() {
                    String::new()
                } else {
                    format!("; e.g. {}", self.examples.join("; "))
                }
            ),
            &serde_json::json!({
                "lines": lines,
                "non_utf8_lines": non_utf8,
                "duplicate_request_ids": join.duplicate_request_ids,
                "shed_at_limit": join.shed,
                "parsed": parsed,
                "malformed": self.malformed,
                "requests": by_kind,
            }),
        );
    }
}

/// Ships the replay's records to the configured store and waits until it has them.
fn ship(sink: &mut ReplaySink, config: &Config) -> anyhow::Result<()> {
    let mut cfg = config.store.clone();
    // Its own spool: a live sidecar may hold the main one.
    let mut name = cfg.spool_dir.file_name().unwrap_or_default().to_os_string();
    name.push("-replay");
    cfg.spool_dir = cfg.spool_dir.with_file_name(name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    let shipped = runtime.block_on(async {
        let mut store = Store::start(&cfg).await?;
        for r in &sink.hop {
            store.hop(r);
        }
        for e in &sink.edges {
            store.edge(e);
        }
        for j in &sink.joined {
            store.request(j);
        }
        for j in &sink.joined_with_line {
            store.edge_joined(j);
        }
        for a in &sink.alerts {
            store.alert(a);
        }
        store.flush(&metrics);
        let totals = store.shutdown(std::time::Duration::from_secs(600)).await;
        anyhow::Ok(totals)
    });
    // Every task gone, the spool's lock with them. A spool left with nothing in it (all was
    // sent, or the store failed before a row was spooled) goes; one with rows stays.
    drop(runtime);
    remove_spent_spool(&cfg.spool_dir);
    let totals = shipped?;
    sink.printer.status(
        "store_summary",
        &format!(
            "ClickHouse: {} row(s) spooled, {} sent (as {}), {} rejected, {} dropped; {} left in the spool",
            totals.spooled, totals.sent, totals.format, totals.rejected, totals.dropped, totals.backlog_rows
        ),
        &totals,
    );
    anyhow::ensure!(
        totals.backlog_rows == 0 && totals.rejected == 0 && totals.dropped == 0,
        "not every record reached ClickHouse ({} waiting in {}, {} rejected, {} dropped)",
        totals.backlog_rows,
        cfg.spool_dir.display(),
        totals.rejected,
        totals.dropped
    );
    Ok(())
}

/// Removes the replay's spool when nothing is in it but its lock and the files of sent
/// batches kept for reuse: left, it is one more directory beside the main spool (or beside
/// the temporary spool of every test that replays to a store). Kept while another edgewatch
/// holds it, or if anything else is in it.
fn remove_spent_spool(dir: &Path) {
    let lock_path = dir.join(crate::store::spool::LOCK_FILE);
    let Ok(lock) = File::open(&lock_path) else {
        return;
    };
    if lock.try_lock().is_err() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut kept = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        if crate::store::spool::is_kept_free(&name.to_string_lossy()) {
            kept.push(e.path());
        } else if name != crate::store::spool::LOCK_FILE {
            return;
        }
    }
    if kept.iter().all(|f| std::fs::remove_file(f).is_ok())
        && std::fs::remove_file(&lock_path).is_ok()
    {
        let _ = std::fs::remove_dir(dir);
    }
}
