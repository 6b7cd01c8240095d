//! The `edgewatch timeline` command: sources, filter and format around `crate::timeline`.
use std::{
    io::IsTerminal as _, io::Write as _, path::PathBuf, process::ExitCode, time::SystemTime,
};

use crate::{
    output::unix_ns,
    timeline::{build, parse_time, render, source, Filter},
};
use anyhow::Context as _;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TimelineFormat {
    /// Aligned columns with a summary on top (coloured on a terminal).
    Text,
    /// One JSON object: summary, events, groups.
    Json,
    /// A self-contained HTML page with a swimlane of client, edge, upstream and host.
    Html,
}

#[derive(Args)]
pub struct TimelineArgs {
    /// Start: `now`, relative (`-15m`, `-2h`) or absolute (`2026-11-21T02:10:00Z`). Default:
    /// -1h; with --pcap, the whole capture; with --request-id, that request's span.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    since: Option<String>,
    /// End, in the same forms. Default: now (the whole capture with --pcap).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    until: Option<String>,
    /// Only this request (its edge record, exchanges, session, and its connection's events).
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// Only this upstream port (or exposure port); repeatable. With --pcap: the upstream
    /// port(s) of the capture instead (default: the config's hop ports).
    #[arg(long = "port", short, value_name = "PORT", alias = "upstream-port")]
    ports: Vec<u16>,
    /// Only the requests of this client address (as the edge logged it).
    #[arg(long, value_name = "IP")]
    client: Option<String>,
    /// Only this node's rows (its `store.node`, the host name by default). Without it, every
    /// node that wrote to the store: a fleet timeline names each event's node.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "text", alias = "format")]
    output: TimelineFormat,
    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Offline: a capture of the hop (pcap or pcapng), instead of ClickHouse.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Offline: the edge proxy's configuration (nginx, or Caddy's JSON; repeatable): its
    /// findings and the diagnoses' citations of its lines, as live.
    #[arg(long = "proxy-config", value_name = "FILE", requires = "pcap")]
    proxy_config: Vec<PathBuf>,
    /// Offline: the proxy's access log(s) of the same period, joined by request id.
    #[arg(long = "access-log", value_name = "FILE", requires = "pcap")]
    access_logs: Vec<PathBuf>,
}

/// `config`: `[store]` for ClickHouse, `[hop]` and `[alerts]` for the offline pipeline.
pub fn run(args: &TimelineArgs, config: &crate::config::Config) -> anyhow::Result<ExitCode> {
    let now = i64::try_from(unix_ns(SystemTime::now())).unwrap_or(i64::MAX);
    let time = |t: &Option<String>, default: i64| -> anyhow::Result<i64> {
        match t {
            Some(t) => parse_time(t, now).map_err(anyhow::Error::msg),
            None => Ok(default),
        }
    };
    let (rows, note) = if let Some(pcap) = &args.pcap {
        let ports = if args.ports.is_empty() {
            config.hop.ports.clone()
        } else {
            args.ports.clone()
        };
        let proxy = crate::sources::proxies::offline_model(
            &args.proxy_config,
            &ports,
            config.proxy.min_read_timeout,
        )?;
        let (rows, report) = source::offline(pcap, &ports, &args.access_logs, proxy, config)?;
        if report.malformed_lines > 0 {
            eprintln!(
                "edgewatch: {} access-log line(s) could not be read and were skipped",
                report.malformed_lines
            );
        }
        if report.non_utf8_lines > 0 {
            eprintln!(
                "edgewatch: {} access-log line(s) were not UTF-8; read with the bad bytes replaced (U+FFFD)",
                report.non_utf8_lines
            );
        }
        if let Some(at) = report.capture_truncated_at {
            eprintln!("edgewatch: the capture is truncated at byte {at}; the timeline ends there");
        }
        // The ports chose what the capture is decoded for; they do not filter further (an
        // alert about the hop, such as a stale port, may name another port).
        let filter = Filter {
            since_ns: time(&args.since, 0)?,
            until_ns: time(&args.until, i64::MAX)?,
            request_id: args.request_id.clone(),
            ports: Vec::new(),
            client: args.client.clone(),
            node: None,
        };
        (build(&rows, &filter), None)
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut since = time(&args.since, now - 3_600_000_000_000)?;
            let mut until = time(&args.until, now)?;
            if let (Some(id), None) = (&args.request_id, &args.since) {
                let (_server, url) = crate::store::server(&config.store).await?;
                let client = crate::store::client_for(&config.store, &url)?;
                match source::request_range(&client, id).await? {
                    // That request's span, with a minute either side for its context.
                    Some((lo, hi)) => {
                        since = lo - 60_000_000_000;
                        if args.until.is_none() {
                            until = hi + 60_000_000_000;
                        }
                    }
                    None => anyhow::bail!("request id {id} is not in ClickHouse (request_index)"),
                }
            }
            let filter = Filter {
                since_ns: since,
                until_ns: until,
                request_id: args.request_id.clone(),
                ports: args.ports.clone(),
                client: args.client.clone(),
                node: args.node.clone(),
            };
            let (rows, cut) = source::clickhouse(&config.store, &filter)
                .await
                .context("reading the timeline from ClickHouse")?;
            let note = (!cut.is_empty()).then(|| {
                format!(
                    "more than {} rows in {}: the range was cut; narrow --since/--until",
                    source::MAX_ROWS,
                    cut.join(", ")
                )
            });
            Ok::<_, anyhow::Error>((build(&rows, &filter), note))
        })?
    };
    if let Some(n) = note {
        eprintln!("edgewatch: {n}");
    }
    let to_terminal = args.out.is_none() && std::io::stdout().is_terminal();
    let body = match args.output {
        TimelineFormat::Text => {
            render::text(&rows, to_terminal && std::env::var_os("NO_COLOR").is_none())
        }
        TimelineFormat::Json => {
            let mut v = serde_json::to_value(&rows)?;
            v["type"] = serde_json::Value::String("timeline".into());
            format!("{v}\n")
        }
        TimelineFormat::Html => render::html(&rows),
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(body.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
