//! `cargo bench --bench capacity` (as root): the hop packet rate the sidecar sustains with
//! zero drops, and proof that the drop counters count when the ring is too small.
//!
//! 1. Real WebSocket clients send frames to a WebSocket upstream on a watched port as fast as
//!    they can for 60 s (`EDGEWATCH_BENCH_CAPACITY_SECS`), with the default ring buffer. The
//!    packet rate is the sidecar's own count of hop segments; it is printed with the ring
//!    size, the drops (goal: zero) and the sidecar's CPU. On this 2-core machine the clients,
//!    the upstream and the sidecar share the cores: when the sidecar keeps up with all the
//!    clients can send, the figure is a lower bound of its capacity, and says so.
//! 2. The same load with a 16 KiB ring for 10 s: the kernel must count hop segments it could
//!    not deliver, the sidecar must report them, and the tracker must mark what it lost.
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure is a panic with a message"
)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use support::{
    cpu_seconds,
    hop::{start_upstream, ws_connect},
    metric_sum, Sidecar,
};
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 16;
const DEFAULT_RING: u32 = 4 << 20;
const SMALL_RING: u32 = 16 << 10;

struct Run {
    packets_per_s: f64,
    drops: f64,
    sidecar_cpu_pct: f64,
    messages_per_s: f64,
    loss_records: f64,
}

/// `CLIENTS` sessions sending frames (64 to 1,024 bytes) and reading the echoes as fast as
/// they can for `secs`, with the sidecar's ring at `ring` bytes.
fn run(rt: &tokio::runtime::Runtime, port: u16, ring: u32, secs: u64) -> Run {
    let config = format!(
        "[hop]\nports = [{port}]\ndocker_bridges = false\n[exposure]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[probes]\nring_buffer_bytes = {ring}\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[store]\nenabled = false\n"
    );
    let sidecar = Sidecar::start_quiet(&config);
    sidecar.lines.discard_from_now();
    let before = sidecar.metrics();
    let cpu0 = cpu_seconds(sidecar.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, sent) = (stop.clone(), sent.clone());
            rt.spawn(async move {
                let mut ws = ws_connect(port, "/capacity").await.unwrap();
                ws.next().await.unwrap().unwrap();
                let mut x: u32 = 0x9e37_79b9 ^ c as u32;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    ws.send(Message::text("e".repeat(64 + (x % 960) as usize)))
                        .await
                        .unwrap();
                    ws.next().await.unwrap().unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                ws.close(None).await.unwrap();
                while ws.next().await.is_some() {}
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    // The drop counters are read every second: wait for the next reading.
    std::thread::sleep(Duration::from_millis(1500));
    let after = sidecar.metrics();
    let delta = |name: &str| metric_sum(&after, name) - metric_sum(&before, name);
    Run {
        packets_per_s: delta("edgewatch_events_total{kind=\"hop_segment\"}") / elapsed,
        drops: delta("edgewatch_kernel_drops_total{reason=\"hop_ringbuf_full\"}"),
        sidecar_cpu_pct: (cpu_seconds(sidecar.pid()) - cpu0) / elapsed * 100.0,
        messages_per_s: sent.load(Ordering::Relaxed) as f64 / elapsed,
        loss_records: delta("edgewatch_records_total{kind=\"loss\"}"),
    }
}

fn main() {
    support::require_root();
    let secs = std::env::var("EDGEWATCH_BENCH_CAPACITY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(start_upstream());
    println!("== hop capacity ({CLIENTS} WebSocket clients straight to a watched upstream)");
    let full = run(&rt, upstream.port(), DEFAULT_RING, secs);
    println!(
        "ring {} KiB, {secs} s: {:.0} hop packets/s ({:.0} messages/s each way), {} drops, \
         sidecar CPU {:.1}% of one core",
        DEFAULT_RING >> 10,
        full.packets_per_s,
        full.messages_per_s,
        full.drops,
        full.sidecar_cpu_pct
    );
    if full.drops == 0.0 {
        println!(
            "capacity: at least {:.0} hop packets/s sustained for {secs} s with zero drops \
             (the clients could send no faster on this machine: a lower bound)",
            full.packets_per_s
        );
    } else {
        println!(
            "capacity: MISSED zero drops at {:.0} hop packets/s with the default ring",
            full.packets_per_s
        );
    }
    let small = run(&rt, upstream.port(), SMALL_RING, 10);
    println!(
        "ring {} KiB, 10 s: {:.0} hop packets/s, {} drops counted (must be > 0), {} loss records",
        SMALL_RING >> 10,
        small.packets_per_s,
        small.drops,
        small.loss_records
    );
    println!(
        "summary: capacity packets_per_s={:.0} ring_kib={} drops={} small_ring_drops={}",
        full.packets_per_s,
        DEFAULT_RING >> 10,
        full.drops,
        small.drops
    );
    assert!(
        small.drops > 0.0,
        "a 16 KiB ring at this rate must overflow, and the overflow must be counted"
    );
}
