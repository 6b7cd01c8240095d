//! `edgewatch run`: load the probes, print the inventory, then watch until SIGINT/SIGTERM:
//! the clocks and the event loop around [`super::watch::Watch`].
use std::{sync::Arc, time::SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::MissedTickBehavior,
};

use super::watch::{drain, Watch};
use crate::{
    config::Config,
    metrics::{self, Metrics},
    output::{unix_ns, Printer},
    probe::loader::Probes,
    sources::tail::{StartAt, Tailer},
    store::Store,
};

/// How often the ring buffer is drained after a drain that found none, or `hop.drain_interval`
/// if that is longer (while hop records come it is drained every `hop.drain_interval`).
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

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

/// `edgewatch run`: load the probes, print the inventory, then watch until SIGINT/SIGTERM.
/// Long because it is the event loop: one `select!` over every source (ring buffer, timers,
/// logs, signals) whose arms share the loop's state, with the start before it and the
/// orderly stop after it.
/// `records`: print every hop record and joined request too (`--records`).
pub async fn run(mut config: Config, printer: Printer, records: bool) -> anyhow::Result<()> {
    // Without `[edge] access_logs`, the ones the proxy's configuration writes for the
    // Gateway's locations (in a format the join reads).
    let discovered_logs = config.edge.access_logs.is_empty() && config.proxy.enabled;
    if discovered_logs {
        let running = crate::sources::proxies::running_proxies();
        config.edge.access_logs =
            crate::sources::proxies::gateway_access_logs(&running, &config.hop.ports);
    }
    let embedded_store = config.store.enabled && config.store.url.is_empty();
    crate::probe::caps::require(embedded_store)?;
    let metrics = Arc::new(Metrics::new());
    let mut watch = Watch::new(&config, printer, metrics.clone());
    watch.out.records = records;
    watch.start_webhooks(&config)?;
    if config.store.enabled {
        let store = Store::start(&config.store)
            .await
            .context("starting the ClickHouse store")?;
        watch.out.store = Some(store);
    }

    // Probes first, so nothing that happens during the initial scan is missed: a listener
    // opened meanwhile is seen by both and merged by key.
    let (probes, streams) =
        Probes::load(&config.probes, &config.hop).context("loading the kernel probes")?;
    let attached = probes.attached.clone();
    let kernel = probes.kernel.clone();
    watch.followed = streams.followed;
    // What this kernel offers, and every fallback, said before anything else.
    watch
        .out
        .printer
        .status("kernel", &kernel.summary(), &kernel);
    if discovered_logs && !config.edge.access_logs.is_empty() {
        watch.out.printer.status(
            "edge",
            &format!(
                "access logs from the proxy's configuration (set [edge] access_logs to choose): {}",
                config
                    .edge
                    .access_logs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &serde_json::json!({ "event": "discovered", "access_logs": config.edge.access_logs }),
        );
    }
    // Loaded: from here on the sidecar keeps only what watching needs, in every thread.
    let kept = crate::probe::caps::drop_unneeded(crate::probe::caps::needed_after_load(
        watch.out.store.as_ref().is_some_and(Store::runs_embedded),
    ))
    .context("dropping the capabilities the running sidecar no longer needs")?;

    watch.rescan(true)?;
    if config.nat.enabled {
        watch.read_nat(true);
    }
    let nat_tools = watch.nat_tools.clone();
    let now = unix_ns(SystemTime::now());
    let exposures = watch.pipeline.exposures();
    let policy = watch.pipeline.policy();
    watch.out.printer.inventory(&exposures, policy, now);
    if let Some(st) = watch.out.store.as_mut() {
        st.inventory(now, &exposures, policy);
    }
    // The drift the first reads found.
    watch.emit_alerts(now);
    // The proxy's configuration: its findings are incidents from the start.
    let mut proxy_watch = super::proxy_watch::ProxyWatch::new();
    if config.proxy.enabled {
        poll_proxy(&mut proxy_watch, &config, &mut watch);
    }

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
                .out
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
    watch.out.printer.status(
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
    let mut proxy_tick = tokio::time::interval(config.proxy.poll_interval);
    proxy_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    proxy_tick.reset();
    let mut drops_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut edge_tick = tokio::time::interval(config.edge.poll_interval);
    edge_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut expire_tick = tokio::time::interval(std::time::Duration::from_secs(60));
    expire_tick.reset();
    let mut snapshot_tick = tokio::time::interval(config.store.snapshot_interval);
    snapshot_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    snapshot_tick.reset();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Made once, outside the loop: a listener made anew each turn (`ctrl_c()` in the select)
    // misses a SIGINT that arrives while the loop body runs, and the sidecar ignored Ctrl-C
    // when it came during a busy drain.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut last_drops = crate::probe::loader::KernelDrops::default();

    // Hop segments are submitted without a wake-up each (a wake-up per packet would cost more
    // than the probe itself); this timer drains them: every `hop.drain_interval` while they
    // come, every DRAIN_IDLE after a drain that found none (an idle sidecar then wakes ten
    // times a second, which is also when store reports and aged batches are looked at). A
    // quarter-full ring and exposure events still wake it at once.
    let busy = config.hop.drain_interval;
    let idle = DRAIN_IDLE.max(busy);
    let drain_tick = tokio::time::sleep(busy);
    tokio::pin!(drain_tick);
    loop {
        tokio::select! {
            () = &mut drain_tick => {
                let events = drain(ring.get_mut(), &mut watch);
                let next = if events > 0 { busy } else { idle };
                drain_tick.as_mut().reset(tokio::time::Instant::now() + next);
            }
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
                if let Err(e) = tokio::task::block_in_place(|| watch.rescan(false)) {
                    tracing::warn!(error = %format!("{e:#}"), "rescan failed");
                }
            }
            _ = proxy_tick.tick(), if config.proxy.enabled => {
                tokio::task::block_in_place(|| poll_proxy(&mut proxy_watch, &config, &mut watch));
            }
            _ = nat.tick(), if config.nat.enabled => {
                tokio::task::block_in_place(|| watch.read_nat(false));
            }
            _ = drops_tick.tick() => {
                let drops = probes.kernel_drops();
                metrics.kernel_drops_now("ringbuf_full", drops.ringbuf_full);
                metrics.kernel_drops_now("field_read", drops.field_read);
                metrics.kernel_drops_now("hop_ringbuf_full", drops.hop_ringbuf_full);
                metrics.kernel_drops_now("hop_parse", drops.hop_parse);
                let skipped = probes.hop_skipped();
                metrics.kernel_skipped_now("pure_ack", skipped.pure_acks);
                metrics.kernel_skipped_now("payload", skipped.payload_segments);
                let t = watch.pipeline.hop_stats();
                metrics.limit_drops_now("hop_connections", t.evicted_connections);
                metrics.limit_drops_now("hop_pending_exchanges", t.dropped_exchanges);
                metrics.limit_drops_now("hop_close_frames", t.dropped_close_frames);
                if let Some(j) = watch.pipeline.join_stats() {
                    metrics.limit_drops_now("join_pending", j.shed);
                    metrics.limit_drops_now("join_duplicate_request_ids", j.duplicate_request_ids);
                }
                if drops != last_drops {
                    watch.out.printer.status(
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
                let now = unix_ns(SystemTime::now());
                let cutoff = now
                    .saturating_sub(u64::try_from(config.hop.idle_expiry.as_nanos()).unwrap_or(u64::MAX));
                watch.pipeline.expire_idle(cutoff, now, &mut watch.out);
            }
            _ = snapshot_tick.tick(), if watch.out.store.is_some() => {
                let now = unix_ns(SystemTime::now());
                let exposures = watch.pipeline.exposures();
                if let Some(st) = watch.out.store.as_mut() {
                    st.inventory(now, &exposures, watch.pipeline.policy());
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        watch.emit_alerts(unix_ns(SystemTime::now()));
        watch.flush_store();
        watch.out.printer.flush();
    }
    // Events already in the ring buffer are not lost on shutdown.
    drain(ring.get_mut(), &mut watch);
    // What is still open is reported as it stands (sessions end `open`).
    let now = unix_ns(SystemTime::now());
    watch.pipeline.finish(now, &mut watch.out);
    watch.emit_alerts(now);
    watch.flush_store();
    let undelivered: u64 = std::mem::take(&mut watch.webhooks)
        .into_iter()
        .map(|w| w.shutdown(std::time::Duration::from_secs(5)))
        .sum();
    if undelivered > 0 {
        watch.out.printer.status(
            "webhook",
            &format!("{undelivered} alert(s) not delivered to webhooks before stopping"),
            &serde_json::json!({ "event": "undelivered", "alerts": undelivered }),
        );
    }
    if let Some(st) = watch.out.store.take() {
        let totals = st.shutdown(config.store.timeout).await;
        watch.out.printer.status(
            "store_summary",
            &format!(
                "ClickHouse: {} row(s) spooled this run, {} sent (as {}), {} rejected, {} dropped; {} left in the spool for the next start",
                totals.spooled, totals.sent, totals.format, totals.rejected, totals.dropped, totals.backlog_rows
            ),
            &totals,
        );
    }
    watch.out.printer.status(
        "stopped",
        "edgewatch stopped",
        &serde_json::json!({ "records": watch.out.metrics.record_counts() }),
    );
    Ok(())
}

/// Looks at the proxy's configuration; what changed goes to the pipeline (its `config.*`
/// incidents open or resolve) and is said.
fn poll_proxy(proxy: &mut super::proxy_watch::ProxyWatch, config: &Config, watch: &mut Watch) {
    let poll = proxy.poll(config);
    if let Some((text, detail)) = poll.said {
        watch.out.printer.status("proxy", &text, &detail);
    }
    if let Some((routes, findings)) = poll.update {
        let now = unix_ns(SystemTime::now());
        watch
            .pipeline
            .proxy_config(routes, &findings, now, &mut watch.out);
        watch.emit_alerts(now);
    }
}
