//! The `edgewatch replay` command: file, progress bar and summary around `edgewatch::replay`.
use std::{
    collections::BTreeMap,
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use edgewatch::{
    alerts::{Alert, Engine},
    config::Config,
    edge::{
        join::{join_all_limited, JoinLimits, JoinedRequest},
        nginx::JsonFields,
        parse_any, EdgeRecord,
    },
    hop::HopRecord,
    metrics::Metrics,
    output::{Format, Printer},
    replay::replay_limited,
    store::Store,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn run(
    capture: &Path,
    ports: &[u16],
    access_logs: &[PathBuf],
    join_window: std::time::Duration,
    config: &Config,
    to_store: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let fields = &config.edge.json_fields;
    let file = File::open(capture).with_context(|| format!("opening {}", capture.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Drawn only when stderr is a terminal; hidden in pipes and tests.
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut printer = Printer::stdout(format);
    let mut kept = Vec::new();
    // The alert rules, in the capture's own time.
    let mut engine = Engine::new(config.alerts.clone());
    let mut alerts = Vec::new();
    let keep = !access_logs.is_empty() || to_store;
    let summary = replay_limited(
        BufReader::with_capacity(1 << 20, file),
        ports,
        config.hop.limits(),
        |record| {
            printer.hop(record);
            engine.advance(record.end_ts_ns(), &mut alerts);
            engine.hop(record, &mut alerts);
            if keep {
                kept.push(record.clone());
            }
        },
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
    let (edges, joined) = if access_logs.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        join_logs(
            &mut printer,
            if to_store {
                kept.clone()
            } else {
                std::mem::take(&mut kept)
            },
            access_logs,
            join_window,
            fields,
            config.edge.limits(),
            to_store,
        )?
    };
    for j in &joined {
        engine.request(j, &mut alerts);
    }
    // Incidents still open when the capture ends are reported as firing.
    for a in &alerts {
        printer.alert(a);
    }
    if to_store {
        ship(&mut printer, config, &kept, &edges, &joined, &alerts)?;
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

/// Reads the access logs, joins them with the hop records and prints the requests and a
/// `join_summary` (malformed lines are counted and shown, never fatal).
fn join_logs(
    printer: &mut Printer,
    hop: Vec<HopRecord>,
    logs: &[PathBuf],
    window: std::time::Duration,
    fields: &JsonFields,
    limits: JoinLimits,
    keep: bool,
) -> anyhow::Result<(Vec<EdgeRecord>, Vec<JoinedRequest>)> {
    let mut edges = Vec::new();
    let mut lines = 0u64;
    let mut malformed: BTreeMap<String, u64> = BTreeMap::new();
    let mut examples = Vec::new();
    let mut non_utf8 = 0u64;
    for path in logs {
        let stats = edgewatch::sources::logfile::for_each_line(path, |n, line| {
            match parse_any(line, fields) {
                Ok(rec) => edges.push(rec),
                Err(e) => {
                    *malformed.entry(e.to_string()).or_default() += 1;
                    if examples.len() < 3 {
                        examples.push(format!("{}:{n}: {e}", path.display()));
                    }
                }
            }
        })
        .with_context(|| format!("reading {}", path.display()))?;
        lines += stats.lines;
        non_utf8 += stats.non_utf8;
    }
    let parsed = edges.len();
    let kept_edges = if keep { edges.clone() } else { Vec::new() };
    let (joined, join_stats) = join_all_limited(
        hop,
        edges,
        u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
        limits,
    );
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    for r in &joined {
        printer.request(r);
        *by_kind.entry(r.matched.as_str()).or_default() += 1;
    }
    let bad: u64 = malformed.values().sum();
    printer.status(
        "join_summary",
        &format!(
            "{lines} access-log lines ({non_utf8} not UTF-8, decoded lossily), {parsed} parsed, {bad} malformed; requests {by_kind:?}{}",
            if examples.is_empty() {
                String::new()
            } else {
                format!("; e.g. {}", examples.join("; "))
            }
        ),
        &serde_json::json!({
            "lines": lines,
            "non_utf8_lines": non_utf8,
            "duplicate_request_ids": join_stats.duplicate_request_ids,
            "shed_at_limit": join_stats.shed,
            "parsed": parsed,
            "malformed": malformed,
            "requests": by_kind,
        }),
    );
    Ok((kept_edges, if keep { joined } else { Vec::new() }))
}

/// Ships the replay's records to the configured store and waits until it has them.
fn ship(
    printer: &mut Printer,
    config: &Config,
    hop: &[HopRecord],
    edges: &[EdgeRecord],
    joined: &[JoinedRequest],
    alerts: &[Alert],
) -> anyhow::Result<()> {
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
    let totals = runtime.block_on(async {
        let mut store = Store::start(&cfg).await?;
        for r in hop {
            store.hop(r);
        }
        for e in edges {
            store.edge(e);
        }
        for j in joined {
            store.request(j);
        }
        for a in alerts {
            store.alert(a);
        }
        store.flush(&metrics);
        let totals = store.shutdown(std::time::Duration::from_secs(600)).await;
        anyhow::Ok(totals)
    })?;
    printer.status(
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
