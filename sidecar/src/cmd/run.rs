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
/// if that is longer (while hop records come it is drained every `hop.drain_interval`); never
/// less often than the most frequent periodic work that rides the heartbeat.
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
    let mut tailers: Vec<Tailer> = Vec::new();
    if !config.edge.access_logs.is_empty() {
        // The log checkpoints: ours alone, checked before use (traversable: the embedded
        // store's data directory may live under the same state directory).
        crate::store::embedded::ensure_private_dir(&config.edge.state_dir, 0o711)
            .context("edge.state_dir")?;
        for path in &config.edge.access_logs {
            tailers.push(open_tailer(&config, &watch, path));
        }
    }
    // The proxy's configuration: its findings are incidents from the start. Without
    // `[edge] access_logs`, the logs of a proxy started (or reloaded) later are read too.
    let mut proxy_watch = super::proxy_watch::ProxyWatch::new();
    if config.proxy.enabled {
        let late_logs = discovered_logs.then_some(&mut tailers);
        poll_proxy(&mut proxy_watch, &config, &mut watch, 0, late_logs);
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

    // What starting freed goes back to the OS now, not at the allocator's next purge.
    crate::allocator::release_freed(true);

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
    // Frequent periodic work rides the heartbeat (below) instead of timers of its own: each
    // timer is a wake-up of its own, and on a VM a wake-up costs more than most of this work.
    let start = std::time::Instant::now();
    let one_second = std::time::Duration::from_secs(1);
    let mut drops_due = Due::new(start, one_second);
    let mut proxy_due = Due::new(start, config.proxy.poll_interval);
    let mut nat_due = Due::new(start, config.nat.poll_interval);
    let mut edge_due = Due::new(start, config.edge.poll_interval);
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
    // than the probe itself); the heartbeat drains them: every `hop.drain_interval` while they
    // come, every DRAIN_IDLE after a drain that found none (an idle sidecar then wakes ten
    // times a second, which is also when store reports and aged batches are looked at). A
    // quarter-full ring and exposure events still wake it at once. The periodic work above is
    // done on the first beat after it is due, so no beat may be longer than its period.
    let shortest = [
        config.proxy.enabled.then_some(config.proxy.poll_interval),
        config.nat.enabled.then_some(config.nat.poll_interval),
        (discovered_logs || !tailers.is_empty()).then_some(config.edge.poll_interval),
    ]
    .into_iter()
    .flatten()
    .fold(one_second, std::time::Duration::min);
    let busy = config.hop.drain_interval.min(shortest);
    let idle = DRAIN_IDLE.max(config.hop.drain_interval).min(shortest);
    let mut heartbeat =
        super::heartbeat::Heartbeat::new(busy).context("creating the loop's heartbeat timer")?;
    loop {
        tokio::select! {
            beats = heartbeat.tick() => {
                beats.context("reading the loop's heartbeat timer")?;
                let events = drain(ring.get_mut(), &mut watch);
                heartbeat
                    .set_period(if events > 0 { busy } else { idle })
                    .context("setting the loop's heartbeat timer")?;
                let now = std::time::Instant::now();
                if drops_due.due(now) {
                    report_drops(&probes, &metrics, &mut watch, &mut last_drops);
                    // Freed heap whose delay has passed goes back to the OS, busy or idle.
                    crate::allocator::release_freed(false);
                }
                if config.proxy.enabled && proxy_due.due(now) {
                    // Lost events may have been listeners opening: counted as changes.
                    let changes = watch.listen_changes + last_drops.ringbuf_full;
                    tokio::task::block_in_place(|| {
                        let late_logs = discovered_logs.then_some(&mut tailers);
                        poll_proxy(&mut proxy_watch, &config, &mut watch, changes, late_logs);
                    });
                }
                if config.nat.enabled && nat_due.due(now) {
                    tokio::task::block_in_place(|| watch.read_nat(false));
                }
                if !tailers.is_empty() && edge_due.due(now) {
                    watch.read_logs(&mut tailers);
                }
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
        watch.out.publish_counts();
        watch.flush_store();
        watch.out.printer.flush();
    }
    // Events already in the ring buffer are not lost on shutdown.
    drain(ring.get_mut(), &mut watch);
    // What is still open is reported as it stands (sessions end `open`).
    let now = unix_ns(SystemTime::now());
    watch.pipeline.finish(now, &mut watch.out);
    watch.emit_alerts(now);
    watch.out.publish_counts();
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
        &serde_json::json!({
            "records": watch.out.metrics.record_counts(),
            "joined": watch.out.metrics.joined_counts(),
        }),
    );
    Ok(())
}

/// Periodic work done on the heartbeat: due once `period` has passed since it was last done
/// (the first time one period after the start).
struct Due {
    next: std::time::Instant,
    period: std::time::Duration,
}

impl Due {
    fn new(start: std::time::Instant, period: std::time::Duration) -> Self {
        Self {
            next: start + period,
            period,
        }
    }

    /// Whether the work is due at `now`; if so, the next time is one period after `now` (a
    /// late beat delays the work rather than bunching it up).
    fn due(&mut self, now: std::time::Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.period;
        true
    }
}

/// The kernel's drop and skip counters, and the pipeline's limit drops, into the metrics; a
/// `kernel_drops` line when the kernel's drops grew.
fn report_drops(
    probes: &Probes,
    metrics: &Metrics,
    watch: &mut Watch,
    last_drops: &mut crate::probe::loader::KernelDrops,
) {
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
    if drops != *last_drops {
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
        *last_drops = drops;
    }
}

/// A tailer of the access log at `path`: from its checkpoint in `edge.state_dir` (or the
/// spool's newer position), else from its end.
fn open_tailer(config: &Config, watch: &Watch, path: &std::path::Path) -> Tailer {
    let checkpoint = crate::sources::tail::checkpoint_path(&config.edge.state_dir, path);
    let mut t = Tailer::new(path, Some(&checkpoint), StartAt::End);
    // A position the spool holds beside the rows of its lines is newer than the checkpoint
    // file when the last run died between the two.
    if let Some(p) = watch
        .out
        .store
        .as_ref()
        .and_then(|st| st.spooled_tail_position(path))
    {
        t.resume_from(p);
    }
    t
}

/// Looks at the proxy's configuration; what changed goes to the pipeline (its `config.*`
/// incidents open or resolve) and is said.
/// `changes`: listeners opened and closed, and probe events lost, so far.
/// `late_logs` (the access logs were taken from the proxy's configuration): the tailers, to
/// which the logs of a proxy started or reloaded since are added, read from their end on.
fn poll_proxy(
    proxy: &mut super::proxy_watch::ProxyWatch,
    config: &Config,
    watch: &mut Watch,
    changes: u64,
    late_logs: Option<&mut Vec<Tailer>>,
) {
    let poll = proxy.poll(config, changes);
    if let (Some(tailers), Some(logs)) = (late_logs, &poll.access_logs) {
        let new: Vec<&std::path::PathBuf> = logs
            .iter()
            .filter(|p| !tailers.iter().any(|t| t.path() == p.as_path()))
            .collect();
        if !new.is_empty() {
            match crate::store::embedded::ensure_private_dir(&config.edge.state_dir, 0o711) {
                Ok(()) => {
                    // Without a log at start the pipeline was made without the join.
                    watch
                        .pipeline
                        .join_from_now(config.edge.join_window_ns(), config.edge.limits());
                    tailers.extend(new.iter().map(|p| open_tailer(config, watch, p)));
                    // Positioned now (at their end): a line written from here on is read.
                    watch.read_logs(tailers);
                    watch.out.printer.status(
                        "edge",
                        &format!(
                            "access logs from the proxy's configuration, read from now on (set [edge] access_logs to choose): {}",
                            new.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                        ),
                        &serde_json::json!({ "event": "discovered", "access_logs": new }),
                    );
                }
                // Tried again when the configuration is next read.
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "edge.state_dir: the proxy's new access logs are not read"
                ),
            }
        }
    }
    if poll.listed {
        watch.out.metrics.proxy_scan();
    }
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
