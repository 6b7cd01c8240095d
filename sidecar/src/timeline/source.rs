//! Where a timeline's rows come from: ClickHouse (the configured server or the embedded one),
//! or, offline, a capture of the hop and the proxy's access logs run through the same
//! pipeline as live (tracker, join, alert rules) and turned into the same rows.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clickhouse::Row;

use super::{Filter, Rows};
use crate::{edge::LineParser, store::config::StoreConfig};

/// What the offline source could not use (said, never hidden).
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct OfflineReport {
    pub hop_records: usize,
    pub edge_lines: usize,
    pub malformed_lines: usize,
    /// Lines that were not UTF-8 (decoded lossily, then parsed).
    pub non_utf8_lines: usize,
    pub capture_truncated_at: Option<u64>,
}

/// A capture (and access logs) through the one pipeline (`crate::pipeline::offline`, as
/// `replay` runs it), as rows; the incidents still open at the end as they stood then.
pub fn offline(
    pcap: &Path,
    ports: &[u16],
    logs: &[PathBuf],
    proxy: Option<(
        Vec<edgewatch_core::proxy::Route>,
        Vec<edgewatch_core::proxy::Finding>,
    )>,
    config: &crate::config::Config,
) -> anyhow::Result<(Rows, OfflineReport)> {
    let parser = LineParser::new(config.edge.json_fields.clone());
    let file = std::fs::File::open(pcap).with_context(|| format!("opening {}", pcap.display()))?;
    let mut report = OfflineReport::default();
    let mut edges = Vec::new();
    for log in logs {
        let stats =
            crate::sources::logfile::for_each_line(log, |_, line| match parser.parse(line) {
                Ok(r) => {
                    report.edge_lines += 1;
                    edges.push(r);
                }
                Err(_) => report.malformed_lines += 1,
            })
            .with_context(|| format!("reading {}", log.display()))?;
        report.non_utf8_lines += stats.non_utf8 as usize;
    }
    let mut settings = config.pipeline();
    settings.hop_ports = ports.to_vec();
    settings.join = !logs.is_empty();
    settings.proxy = proxy;
    let (rows, summary) = edgewatch_core::timeline::offline::rows(
        // Unbuffered: the capture reader reads in 1 MiB blocks itself.
        file, edges, &settings,
    )
    .with_context(|| format!("replaying {}", pcap.display()))?;
    report.hop_records = usize::try_from(summary.records).unwrap_or(usize::MAX);
    report.capture_truncated_at = summary.truncated_at;
    Ok((rows, report))
}

/// Rows per table at most (a larger range is cut, and said).
pub const MAX_ROWS: u64 = 200_000;

/// What one read asks for: the time range, and a node when the timeline is about one.
struct Range<'a> {
    since: i64,
    until: i64,
    node: Option<&'a str>,
}

async fn fetch<T: clickhouse::RowOwned + clickhouse::RowRead>(
    client: &clickhouse::Client,
    table: &str,
    r: &Range<'_>,
    also_end_ts: bool,
    cut: &mut Vec<String>,
) -> anyhow::Result<Vec<T>> {
    let (since, until) = (r.since, r.until);
    let range = if also_end_ts {
        "((ts >= fromUnixTimestamp64Nano(?) AND ts <= fromUnixTimestamp64Nano(?)) OR (end_ts >= fromUnixTimestamp64Nano(?) AND end_ts <= fromUnixTimestamp64Nano(?)))"
    } else {
        "ts >= fromUnixTimestamp64Nano(?) AND ts <= fromUnixTimestamp64Nano(?)"
    };
    let node = if r.node.is_some() {
        " AND node = ?"
    } else {
        ""
    };
    let sql = format!(
        "SELECT ?fields FROM {table} WHERE ({range}){node} ORDER BY ts LIMIT {}",
        MAX_ROWS + 1
    );
    let mut q = client.query(&sql).bind(since).bind(until);
    if also_end_ts {
        q = q.bind(since).bind(until);
    }
    if let Some(n) = r.node {
        q = q.bind(n);
    }
    let mut rows: Vec<T> = q
        .fetch_all()
        .await
        .with_context(|| format!("reading {table} from ClickHouse"))?;
    if rows.len() as u64 > MAX_ROWS {
        rows.truncate(usize::try_from(MAX_ROWS).unwrap_or(usize::MAX));
        cut.push(table.to_owned());
    }
    Ok(rows)
}

/// The time range a request id's rows lie in (from the request-id lookup), if it is known.
pub async fn request_range(
    client: &clickhouse::Client,
    request_id: &str,
) -> anyhow::Result<Option<(i64, i64)>> {
    #[derive(Row, serde::Deserialize)]
    struct Span {
        n: u64,
        lo: i64,
        hi: i64,
    }
    let span: Span = client
        .query("SELECT count() AS n, toUnixTimestamp64Nano(min(ts)) AS lo, toUnixTimestamp64Nano(max(ts)) AS hi FROM request_index WHERE rid = cityHash64(?)")
        .bind(request_id)
        .fetch_one()
        .await
        .context("looking the request id up in request_index")?;
    Ok((span.n > 0).then_some((span.lo, span.hi)))
}

/// The rows of `filter`'s time range from ClickHouse; the tables cut at [`MAX_ROWS`] are
/// named in the second value.
pub async fn clickhouse(cfg: &StoreConfig, filter: &Filter) -> anyhow::Result<(Rows, Vec<String>)> {
    let (_server, url) = crate::store::server(cfg).await?;
    let client = crate::store::client_for(cfg, &url)?;
    let r = Range {
        since: filter.since_ns,
        until: filter.until_ns,
        node: filter.node.as_deref(),
    };
    let mut cut = Vec::new();
    let rows = Rows {
        exposure_changes: fetch(&client, "exposure_changes", &r, false, &mut cut).await?,
        alerts: fetch(&client, "alerts", &r, false, &mut cut).await?,
        conns: fetch(&client, "conn_events", &r, false, &mut cut).await?,
        http: fetch(&client, "http_exchanges", &r, false, &mut cut).await?,
        ws: fetch(&client, "ws_sessions", &r, true, &mut cut).await?,
        edge: fetch(&client, "edge_logs", &r, false, &mut cut).await?,
        requests: fetch(&client, "requests", &r, false, &mut cut).await?,
        open_incidents: Vec::new(),
    };
    Ok((rows, cut))
}
