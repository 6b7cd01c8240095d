//! `cargo bench --bench hop` (as root): the hop's performance claims, measured in one run on
//! this machine, printed as ratios against a baseline measured in the same run or as costs
//! per unit, each with its goal and `met` or `MISSED`; a `summary:` line per section is what
//! `cargo xtask bench` puts in its table.
//!
//! 1. Replay throughput on a large capture of real WebSocket traffic (real nginx, a real
//!    WebSocket upstream and clients, recorded with tcpdump) versus
//!    `tshark -r CAPTURE -Y websocket` on the same file, medians of several runs taken in
//!    turns (ours, tshark, ours), with MB/s and packets/s, on the capture's pages read back
//!    from disk as a capture recorded earlier is. Goal: at least 20x faster. Ours on the pages
//!    as tcpdump wrote them into the cache (4 KiB at a time, copied out more slowly) is
//!    printed beside it.
//! 2. The live cost, as deployed (no records on stdout, rows to a real ClickHouse with the
//!    production batching): wrk through nginx to an upstream on loopback, with and without
//!    the sidecar, in ten pairs whose order alternates. nginx keeps up to 16 idle upstream
//!    connections for wrk's 8, so every request rides a kept-alive upstream connection (the
//!    upstream connections per 100 requests are printed). Goals: throughput with the sidecar
//!    at least 97% of without (per-pair median), and at most 1.5 us of sidecar CPU (user +
//!    system, until every row was sent) per proxied request. The sidecar's CPU is its own
//!    `process_cpu_seconds_total` (`getrusage`, in microseconds; `/proc/PID/stat` counts 10 ms
//!    ticks, a tenth of a run's figure), read once before and once after; whether every row
//!    was sent is seen in its spool directory, then confirmed by one scrape. Each sidecar first carries
//!    `WARM_UP_SECONDS` of load, its rows sent, before anything of it is counted (steady
//!    state: its maps, windows and buffers at their working size). Beside it: the ClickHouse
//!    server's own CPU per request and at rest (ms a second, with no rows), the sidecar's cost without a store, with every record
//!    printed, with connection churn (a pool of 4 for the 8 clients: nginx closes and
//!    opens upstream connections as it goes), and with nginx's access log followed and joined
//!    (the README's setup: a log line parsed and joined and one more row a request, the line's
//!    carrying its request, ClickHouse's view making the `requests` row; with the
//!    store's CPU and the sidecar's RSS after it), the probes' run time per run (kernel.bpf_stats_enabled), the TC program's
//!    cost per packet by class of packet, and a control: ten more pairs in which a thread
//!    that only spins, using the same CPU as the sidecar did, takes the sidecar's place. It
//!    tells what that much CPU costs this machine's throughput whoever spends it (this
//!    harness's noise is a few percent on a median of ten pairs: a rough guide).
//!
//! `EDGEWATCH_BENCH_LIVE_ONLY=1` runs only the as-deployed pairs of section 2 (a couple of
//! minutes, for trying a change to the live path), `EDGEWATCH_BENCH_LIVE_ONLY=log` only its
//! log-joined runs, with and without the store (a few minutes, for trying a change to the
//! log's path); `EDGEWATCH_BENCH_KEEP_CAPTURE=PATH` keeps
//! section 1's capture for profiling the replay by hand.
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure is a panic with a message"
)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use futures_util::{SinkExt, StreamExt};
use support::{
    cpu_seconds,
    hop::{start_upstream, ws_connect, Capture, Nginx, NginxSite},
    metric_sum,
    store::ClickHouse,
    Sidecar,
};
use tokio_tungstenite::tungstenite::Message;

/// The recorded traffic: 8 sessions of 25,000 messages each way, so that our replay runs
/// long enough (a second or more) for a run's scheduling noise not to move the ratio.
const SESSIONS: usize = 8;
const MESSAGES_PER_SESSION: usize = 25_000;
const WRK_SECONDS: u32 = 4;
/// Timed runs of tshark on the capture, each between two timed replays of ours (medians
/// taken).
const TSHARK_RUNS: usize = 5;
const REPLAY_RUNS: usize = 2 * TSHARK_RUNS;
/// Timed replays on the capture's pages as tcpdump left them in the cache, before the turns.
const FRESH_RUNS: usize = 5;
/// Seconds of load a fresh sidecar carries before its cost is counted: what happens once in a
/// sidecar's life (maps, windows and buffers growing to their working size, the store's
/// first batches) is not what a request costs a sidecar that has been running. As long as a
/// counted run: a shorter warm-up leaves the store's batch buffers at the size of a smaller
/// batch, and the counted batch then pays for fresh memory once, as a running sidecar does
/// only when its load grows.
const WARM_UP_SECONDS: u32 = WRK_SECONDS;
/// Pairs of runs, without and with the sidecar, the order alternating from pair to pair
/// (ABBA), so a drift of the machine's speed during the benchmark weighs on both sides.
const WRK_PAIRS: usize = 10;

/// The median (the mean of the two middle values for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Stops with a clear message when a tool the benchmark runs is not on PATH (a fresh machine
/// where `cargo bench` was run before `cargo xtask bench`, which installs them).
fn require_tools(tools: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "hop benchmark: {} not found on PATH; `cargo xtask bench` installs the benchmark \
             tools (or: apt-get install tshark wrk nginx-light)",
            missing.join(", ")
        );
        std::process::exit(2);
    }
}

fn time_cmd(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?} failed");
    start.elapsed().as_secs_f64()
}

async fn make_capture(dir: &std::path::Path) -> (std::path::PathBuf, u16) {
    let upstream = start_upstream().await;
    let nginx = Nginx::start(&NginxSite::new(upstream));
    let capture = Capture::start(dir, "bench", upstream.port());
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let port = nginx.port;
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_connect(port, "/bench").await.unwrap();
            ws.next().await.unwrap().unwrap();
            let mut x: u32 = 0x9e37_79b9 ^ s as u32;
            for _ in 0..MESSAGES_PER_SESSION {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // JSON-like text frames of 64 B to 4 KiB, like the Gateway's events.
                let len = 64 + (x % 4032) as usize;
                ws.send(Message::text("e".repeat(len))).await.unwrap();
                ws.next().await.unwrap().unwrap();
            }
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let path = capture.stop();
    drop(nginx);
    (path, upstream.port())
}

fn wrk_rps(port: u16) -> f64 {
    wrk_for(port, WRK_SECONDS)
}

/// wrk's requests per second over `seconds` of load (8 connections, one thread).
fn wrk_for(port: u16, seconds: u32) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{seconds}s")])
        .arg(format!("http://127.0.0.1:{port}/health"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output: {text}"))
}

/// run_time_ns and run_cnt of the sidecar's BPF programs, from /proc/PID/fdinfo.
fn prog_stats(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        if let (Some(tag), Some(t), Some(c)) =
            (field("prog_tag:"), field("run_time_ns:"), field("run_cnt:"))
        {
            // enum bpf_prog_type: the hop classifier is SCHED_CLS, the others tracepoints.
            let kind = match field("prog_type:").as_deref() {
                Some("3") => "tc".to_owned(),
                Some("5") => "tracepoint".to_owned(),
                other => format!("type {}", other.unwrap_or("?")),
            };
            out.push((
                format!("{kind} {tag}"),
                t.parse().unwrap_or(0),
                c.parse().unwrap_or(0),
            ));
        }
    }
    out
}

/// `WRK_PAIRS` pairs of wrk runs, without and with something attached, the order alternating
/// from pair to pair (ABBA). `attached` sets its thing up, runs wrk, tears it down and returns
/// the throughput and a figure of its own. Yields (without, with, figure) per pair.
fn abba_pairs<T>(port: u16, mut attached: impl FnMut() -> (f64, T)) -> Vec<(f64, f64, T)> {
    (0..WRK_PAIRS)
        .map(|pair| {
            let with_first = pair % 2 == 1;
            let mut base = None;
            if !with_first {
                base = Some(wrk_rps(port));
            }
            let (rps, figure) = attached();
            let base = base.unwrap_or_else(|| wrk_rps(port));
            (base, rps, figure)
        })
        .collect()
}

/// A control for the live cost: a thread that does nothing but spin, `share` of one core, in
/// slices at the start of each period of the sidecar's drain timer (`hop.drain_interval`), and
/// sleeps the rest. Run in place of the sidecar, it shows what the same amount of CPU costs this
/// machine's throughput whoever uses it. Returns the CPU it actually used, in % of one core.
fn spin_control(share: f64, run: impl FnOnce() -> f64) -> (f64, f64) {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    use std::time::Duration;
    const PERIOD: Duration = edgewatch::hop::config::DEFAULT_DRAIN_INTERVAL;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let burn = PERIOD.mul_f64(share.clamp(0.0, 1.0));
    let spinner = std::thread::spawn(move || {
        let started = Instant::now();
        let cpu0 = thread_cpu_seconds();
        let mut next = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            let t = Instant::now();
            while t.elapsed() < burn {
                std::hint::spin_loop();
            }
            next += PERIOD;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        100.0 * (thread_cpu_seconds() - cpu0) / started.elapsed().as_secs_f64()
    });
    let rps = run();
    stop.store(true, Ordering::Relaxed);
    (rps, spinner.join().unwrap())
}

/// CPU time of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful here.
    support::require_root();
    require_tools(&["tshark", "wrk", "nginx"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    if live_only() || log_only() {
        live_cost(&runtime);
        return;
    }

    println!("== replay throughput vs tshark");
    let (capture, port) = runtime.block_on(make_capture(dir.path()));
    if let Some(keep) = std::env::var_os("EDGEWATCH_BENCH_KEEP_CAPTURE") {
        // For profiling the replay by hand: the capture and its upstream port.
        std::fs::copy(&capture, &keep).unwrap();
        println!(
            "capture kept in {} (upstream port {port})",
            keep.to_string_lossy()
        );
    }
    let size = std::fs::metadata(&capture).unwrap().len() as f64 / 1e6;
    let bin = support::edgewatch_bin();
    // The replay must have seen every message: a fast wrong answer is no benchmark.
    let out = Command::new(&bin)
        .arg("replay")
        .arg(&capture)
        .args(["--port", &port.to_string(), "--output", "json"])
        .output()
        .unwrap();
    let (mut client_text, mut server_text) = (0u64, 0u64);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "websocket" {
            client_text += v["client_frames"]["text"].as_u64().unwrap();
            server_text += v["server_frames"]["text"].as_u64().unwrap();
        }
    }
    let messages = (SESSIONS * MESSAGES_PER_SESSION) as u64;
    // A shortfall here with `loss` records in the replay means tcpdump dropped packets
    // (the capture, not the replay, lost them).
    assert_eq!(client_text, messages, "client frames seen by replay");
    assert_eq!(
        server_text,
        messages + SESSIONS as u64,
        "server frames (+ challenges)"
    );
    // Timed after the check above, which also brought the capture into the page cache: both
    // tools then read it from memory. The capture is written back to disk first (tcpdump's
    // pages are dirty, and their writeback would run beside the first timed runs only). The
    // two tools take turns, ours before and after each tshark run, so that a slow spell of
    // the machine weighs on both sides. Ours takes about a tenth of a second, where a
    // millisecond of scheduling moves the ratio, hence more runs than tshark's.
    let file = std::fs::File::open(&capture).unwrap();
    file.sync_all().unwrap();
    let time_ours = || {
        time_cmd(Command::new(&bin).arg("replay").arg(&capture).args([
            "--port",
            &port.to_string(),
            "--output",
            "json",
        ]))
    };
    // The pages tcpdump just wrote were cached as it wrote them, 4 KiB at a time; the kernel
    // copies such small pages out more slowly (1.3-2x the time, as measured) than the large
    // ones it caches when a file is read back from disk, which is how a capture recorded
    // earlier is replayed. Both are printed; the goal is judged on the read-back pages (the capture's
    // pages dropped from the cache and read once, untimed, before the turns).
    let fresh = median((0..FRESH_RUNS).map(|_| time_ours()).collect());
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is open.
    let dropped = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(dropped, 0, "posix_fadvise(DONTNEED) on the capture");
    std::io::copy(&mut &file, &mut std::io::sink()).unwrap();
    let (mut ours, mut tshark) = (Vec::new(), Vec::new());
    for _ in 0..TSHARK_RUNS {
        ours.push(time_ours());
        tshark.push(time_cmd(
            Command::new("tshark").arg("-r").arg(&capture).args([
                "-d",
                &format!("tcp.port=={port},http"),
                "-Y",
                "websocket",
            ]),
        ));
        ours.push(time_ours());
    }
    let (ours, tshark) = (median(ours), median(tshark));
    let packets = edgewatch::replay::capture::read_capture(
        std::fs::File::open(&capture).unwrap(),
        |_| {},
        |_| {},
    )
    .unwrap()
    .packets as f64;
    println!(
        "capture: {size:.1} MB, {packets:.0} packets, {} WebSocket messages each way",
        SESSIONS * MESSAGES_PER_SESSION
    );
    println!(
        "edgewatch replay (median of {REPLAY_RUNS}): {ours:.3} s ({:.0} MB/s, {:.2} M packets/s)",
        size / ours,
        packets / ours / 1e6
    );
    println!(
        "edgewatch replay on the pages as tcpdump wrote them (median of {FRESH_RUNS}): {fresh:.3} s ({:.1}x tshark)",
        tshark / fresh
    );
    println!(
        "tshark -Y websocket (median of {TSHARK_RUNS}): {tshark:.2} s ({:.1} MB/s, {:.3} M packets/s)",
        size / tshark,
        packets / tshark / 1e6
    );
    let ratio = tshark / ours;
    println!(
        "ratio: edgewatch is {ratio:.1}x faster (goal: >= 20x): {}",
        if ratio >= 20.0 { "met" } else { "MISSED" }
    );
    println!(
        "summary: replay ratio_vs_tshark={ratio:.1} mb_per_s={:.0} packets_per_s={:.0} fresh_pages_ratio={:.1}",
        size / ours,
        packets / ours,
        tshark / fresh
    );

    live_cost(&runtime);
}

/// Waits until every row the sidecar spooled has been sent (the store's CPU for a run's rows
/// is then all spent), at most 60 s. It watches the spool directory, which costs the sidecar
/// nothing, until no batch is open or waiting there, and then asks the metrics once that every
/// spooled row was sent. (Polling the metrics instead, ten times a second for the second or
/// so until the batch is sealed, put a scrape's CPU into the sidecar's figure each time.)
fn wait_rows_sent(sidecar: &Sidecar, spool: &Path) {
    let batches_left = || {
        std::fs::read_dir(spool)
            .map(|d| {
                d.flatten().any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.ends_with(".open") || name.ends_with(".batch")
                })
            })
            .unwrap_or(true)
    };
    poll_until("the sidecar's rows were all sent", || {
        !batches_left() && {
            let m = sidecar.metrics();
            let spooled = metric_sum(&m, "edgewatch_store_rows_total{result=\"spooled\"}");
            let sent = metric_sum(&m, "edgewatch_store_rows_total{result=\"sent\"}");
            spooled > 0.0 && sent >= spooled
        }
    });
}

/// Checks `done` every 50 ms until it holds; panics after 60 s.
fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "not within 60 s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until the sidecar's checkpoint of `log` (in its `edge.state_dir`, `state`) is at the
/// log's end: every line written so far was read and joined. The checkpoint is a file, read
/// from outside, so the wait costs the sidecar nothing (a metrics scrape would).
fn wait_log_read(state: &Path, log: &Path) {
    use edgewatch::sources::tail::{checkpoint_path, read_checkpoint};
    let end = std::fs::metadata(log).unwrap().len();
    let checkpoint = checkpoint_path(state, log);
    poll_until("the sidecar read the access log to its end", || {
        read_checkpoint(&checkpoint).is_some_and(|c| c.offset >= end)
    });
}

/// Puts [`WARM_UP_SECONDS`] of load through a fresh sidecar and, with a store (its spool
/// directory), waits until its rows are sent: what is counted after it is steady state.
fn warm_up(sidecar: &Sidecar, port: u16, spool: Option<&Path>) {
    let _ = wrk_for(port, WARM_UP_SECONDS);
    if let Some(spool) = spool {
        wait_rows_sent(sidecar, spool);
    }
}

/// The live cost, as deployed: rows to a real ClickHouse, no records on stdout.
fn live_cost(runtime: &tokio::runtime::Runtime) {
    println!("== live cost per proxied request (wrk through nginx, interleaved)");
    let upstream = runtime.block_on(start_upstream());
    // An upstream pool as large as wrk's 8 connections: every request rides a kept-alive
    // upstream connection, the workload the goal is about. (With nginx's pool smaller than
    // the clients, it closes the surplus after a request and opens new ones: measured beside,
    // as "connection churn".)
    let nginx = Nginx::start(&NginxSite {
        websocket_headers: false,
        upstream_keepalive: Some(16),
        ..NginxSite::new(upstream)
    });
    let ch = ClickHouse::start();
    let ch_pid = ch.pid().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let base = format!(
        "[hop]\nports = [{}]\ndocker_bridges = false\n[exposure]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        upstream.port()
    );
    // The store with its production batching (sealed at `DEFAULT_BATCH_MAX_AGE`, 5 s, or 200,000
    // rows).
    let store_section = |spool: &Path| {
        format!(
            "[store]\nurl = {:?}\ndatabase = \"t_bench_hop\"\nspool_dir = {:?}\nuser = {:?}\npassword_file = {:?}\n",
            ch.url(),
            spool.display().to_string(),
            edgewatch::store::embedded::USER,
            ch.secret_file().display().to_string()
        )
    };
    let deployed = format!("{base}{}", store_section(spool.path()));
    // The log-joined runs, with the store and with it off (the hop, the log's read and
    // parse, the join), so the log-joined figure splits into that and the store's rows.
    let log_joined_runs = || {
        let log = nginx.access_log_path();
        (
            log_joined(
                |spool| format!("{base}{}", store_section(spool)),
                true,
                &log,
                nginx.port,
                ch_pid,
            ),
            log_joined(
                |_| format!("{base}[store]\nenabled = false\n"),
                false,
                &log,
                nginx.port,
                ch_pid,
            ),
        )
    };
    if log_only() {
        let (joined, no_store) = log_joined_runs();
        println!(
            "sidecar CPU per proxied request, log joined: {:.2} us (runs {:.2?}; {:.2} us at \
             rest); ClickHouse server {:.2} us; with the store off: {:.2} us (runs {:.2?})",
            joined.sidecar_us,
            joined.runs,
            joined.at_rest_us,
            joined.clickhouse_us,
            no_store.sidecar_us,
            no_store.runs
        );
        return;
    }
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut sidecar_cpu = Vec::new();
    let mut per_request = Vec::new();
    let mut store_per_request = Vec::new();
    let mut ratios = Vec::new();
    let mut conns_per_100 = Vec::new();
    for (base_rps, attached, (cpu, us, store_us)) in abba_pairs(nginx.port, || {
        let sidecar = Sidecar::start_quiet(&deployed);
        sidecar.lines.discard_from_now();
        warm_up(&sidecar, nginx.port, Some(spool.path()));
        let (s0, c0) = (sidecar.cpu_seconds(), cpu_seconds(ch_pid));
        let rps = wrk_rps(nginx.port);
        let s_wrk = sidecar.cpu_seconds() - s0;
        wait_rows_sent(&sidecar, spool.path());
        let (s1, c1) = (sidecar.cpu_seconds(), cpu_seconds(ch_pid));
        let requests = rps * f64::from(WRK_SECONDS);
        conns_per_100.push(conns_per_100_requests(&sidecar));
        (
            rps,
            (
                s_wrk / f64::from(WRK_SECONDS) * 100.0,
                (s1 - s0) * 1e6 / requests,
                (c1 - c0) * 1e6 / requests,
            ),
        )
    }) {
        sidecar_cpu.push(cpu);
        per_request.push(us);
        store_per_request.push(store_us);
        without.push(base_rps);
        with.push(attached);
        ratios.push(100.0 * attached / base_rps);
    }
    let conns = median(conns_per_100.clone());
    if live_only() {
        println!(
            "per-pair ratios: {ratios:.1?} % (median {:.1}%)\nsidecar CPU per proxied request, \
             as deployed: {per_request:.2?} us (median {:.2} us); ClickHouse server: median {:.2} us; \
             {conns:.2} upstream connections per 100 requests",
            median(ratios.clone()),
            median(per_request.clone()),
            median(store_per_request.clone())
        );
        return;
    }
    let churn = connection_churn(upstream, &deployed, spool.path());
    let (joined, joined_no_store) = log_joined_runs();
    // The same cost in other configurations (three runs each, median): what the store costs
    // the sidecar, and what printing every record as JSON would.
    let mut breakdown = Vec::new();
    for (label, config, args) in [
        (
            "no store, quiet",
            format!("{base}[store]\nenabled = false\n"),
            &[][..],
        ),
        (
            "no store, every record as JSON on stdout (--records)",
            format!("{base}[store]\nenabled = false\n"),
            &["--records"][..],
        ),
    ] {
        let runs: Vec<f64> = (0..3)
            .map(|_| {
                let sidecar = Sidecar::start_with_args(&config, args);
                sidecar.lines.discard_from_now();
                warm_up(&sidecar, nginx.port, None);
                let s0 = sidecar.cpu_seconds();
                let rps = wrk_rps(nginx.port);
                (sidecar.cpu_seconds() - s0) * 1e6 / (rps * f64::from(WRK_SECONDS))
            })
            .collect();
        breakdown.push((label, median(runs)));
    }
    // Per-program run time, in a run of its own: the statistics cost time themselves.
    let stats = with_bpf_stats(|| {
        let sidecar = Sidecar::start_quiet(&deployed);
        sidecar.lines.discard_from_now();
        let _ = wrk_rps(nginx.port);
        prog_stats(sidecar.pid())
    });
    let classes = tc_cost_by_class(runtime, upstream, &base);
    // The control, in pairs of its own (ABBA as above): the same CPU as the sidecar used,
    // spent by a thread that observes nothing.
    let share = median(sidecar_cpu.clone()) / 100.0;
    let mut control_ratios = Vec::new();
    let mut control_cpu = Vec::new();
    for (base_rps, attached_rps, used) in
        abba_pairs(nginx.port, || spin_control(share, || wrk_rps(nginx.port)))
    {
        control_ratios.push(100.0 * attached_rps / base_rps);
        control_cpu.push(used);
    }
    // The ClickHouse server at rest (the control pairs insert nothing): what it costs the
    // machine when there are no rows, in ms of CPU a second. /proc counts 10 ms ticks, so
    // IDLE_SECONDS of it.
    const IDLE_SECONDS: u64 = 20;
    let (c0, threads0) = (cpu_seconds(ch_pid), ticks_by_thread(ch_pid));
    std::thread::sleep(std::time::Duration::from_secs(IDLE_SECONDS));
    let ch_idle_ms = (cpu_seconds(ch_pid) - c0) * 1e3 / IDLE_SECONDS as f64;
    let mut idle_threads: Vec<(String, u64)> = ticks_by_thread(ch_pid)
        .into_iter()
        .map(|(name, t)| {
            let before = threads0.get(&name).copied().unwrap_or(0);
            (name, t.saturating_sub(before))
        })
        .filter(|(_, t)| *t > 0)
        .collect();
    idle_threads.sort_by_key(|t| std::cmp::Reverse(t.1));
    let (w, wo) = (median(with.clone()), median(without.clone()));
    println!("without sidecar: {without:.0?} req/s (median {wo:.0})");
    println!("with sidecar:    {with:.0?} req/s (median {w:.0})");
    println!(
        "ratio of the medians: {:.1}% of the throughput without",
        100.0 * w / wo
    );
    let pair_median = median(ratios.clone());
    println!(
        "per-pair ratios: {ratios:.1?} % (median {pair_median:.1}%, goal: >= 97%: {})",
        if pair_median >= 97.0 { "met" } else { "MISSED" }
    );
    println!(
        "sidecar CPU (user + system time of its process) during the runs: \
         {sidecar_cpu:.1?} % of one core"
    );
    let us = median(per_request.clone());
    println!(
        "sidecar CPU per proxied request, as deployed (rows to ClickHouse, until every row \
         was sent; after a {WARM_UP_SECONDS}-second warm-up): {per_request:.2?} us (median {us:.2} us, goal: <= 1.5 us: {})",
        if us <= 1.5 { "met" } else { "MISSED" }
    );
    let store_us = median(store_per_request.clone());
    println!(
        "ClickHouse server CPU per proxied request (its own process, for the same rows): \
         median {store_us:.2} us"
    );
    println!(
        "ClickHouse server CPU at rest (no rows, {IDLE_SECONDS} s after the control pairs): \
         {ch_idle_ms:.1} ms a second; by thread (10 ms ticks): {idle_threads:?}"
    );
    println!(
        "upstream connections (hop connection records) per 100 proxied requests: {conns:.2} \
         (median of the pairs; every request on a kept-alive connection: ~0)"
    );
    for (label, us) in &breakdown {
        println!("sidecar CPU per proxied request, {label}: {us:.2} us (median of 3)");
    }
    println!(
        "sidecar CPU per proxied request, as deployed, with connection churn (nginx keeps 4 \
         idle upstream connections for wrk's 8 clients): {:.2} us (median of 3), {:.1} upstream \
         connections per 100 requests",
        churn.0, churn.1
    );
    println!(
        "sidecar CPU per proxied request, as deployed with nginx's access log joined (the \
         README's log format; one more row a request, the edge_logs row that carries its \
         request): {:.2} us \
         (median of 3; {:.2} us of it the sidecar's CPU at rest over the {:.1} s until the rows \
         were sent); ClickHouse server: {:.2} us; sidecar RSS after the run: {:.1} MiB",
        joined.sidecar_us, joined.at_rest_us, joined.waited_s, joined.clickhouse_us, joined.rss_mib
    );
    println!(
        "sidecar CPU per proxied request, the same with the store off (the hop, the log's \
         reading and parsing, the join): {:.2} us (median of 3; {:.2} us of it at rest over the \
         {:.1} s until the log was read); so the store's two rows a request (columns, spool, \
         read back, merge, insert) cost {:.2} us of it, {:.2} us without the CPU at rest",
        joined_no_store.sidecar_us,
        joined_no_store.at_rest_us,
        joined_no_store.waited_s,
        joined.sidecar_us - joined_no_store.sidecar_us,
        (joined.sidecar_us - joined.at_rest_us)
            - (joined_no_store.sidecar_us - joined_no_store.at_rest_us)
    );
    let control = median(control_ratios.clone());
    let control_share = median(control_cpu.clone());
    println!(
        "control (a thread that only spins, {control_share:.1}% of one core in {} ms slices, \
         no sidecar): per-pair ratios {control_ratios:.1?} % (median {control:.1}%)",
        edgewatch::hop::config::DEFAULT_DRAIN_INTERVAL.as_millis()
    );
    for (name, ns, cnt) in stats {
        if cnt > 0 {
            println!(
                "probe {name}: {cnt} runs, {:.0} ns per run",
                ns as f64 / cnt as f64
            );
        }
    }
    for (class, ns) in &classes {
        println!("TC program per packet, {class}: {ns:.0} ns");
    }
    println!(
        "summary: live sidecar_us_per_request={us:.2} clickhouse_us_per_request={store_us:.2} \
         throughput_pct={pair_median:.1} control_pct={control:.1} no_store_us={:.2} records_json_us={:.2} \
         churn_us={:.2} log_joined_us={:.2} log_joined_clickhouse_us={:.2} \
         log_joined_no_store_us={:.2} log_joined_at_rest_us={:.2} \
         log_joined_no_store_at_rest_us={:.2} clickhouse_idle_ms_per_s={ch_idle_ms:.1}",
        breakdown[0].1,
        breakdown[1].1,
        churn.0,
        joined.sidecar_us,
        joined.clickhouse_us,
        joined_no_store.sidecar_us,
        joined.at_rest_us,
        joined_no_store.at_rest_us
    );
    drop(nginx);
}

/// A process's CPU ticks (user + system) by thread name, summed over its threads.
fn ticks_by_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some((head, _)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let name = head[open + 1..].to_owned();
        *by_name.entry(name).or_insert(0) += support::stat_ticks(&stat).unwrap_or(0);
    }
    by_name
}

/// Hop connection records per 100 proxied requests (HTTP exchange records) of a sidecar's
/// run so far: how many requests needed a new upstream connection.
fn conns_per_100_requests(sidecar: &Sidecar) -> f64 {
    let m = sidecar.metrics();
    let conns = metric_sum(&m, "edgewatch_records_total{kind=\"conn\"}");
    let http = metric_sum(&m, "edgewatch_records_total{kind=\"http\"}");
    100.0 * conns / http.max(1.0)
}

/// The as-deployed cost when nginx's upstream pool (4) is smaller than wrk's 8 clients, so
/// it closes and opens upstream connections as it goes: (us per request, connections per
/// 100 requests), medians of three runs.
fn connection_churn(upstream: std::net::SocketAddr, deployed: &str, spool: &Path) -> (f64, f64) {
    let nginx = Nginx::start(&NginxSite {
        websocket_headers: false,
        upstream_keepalive: Some(4),
        ..NginxSite::new(upstream)
    });
    let (mut us, mut conns) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let sidecar = Sidecar::start_quiet(deployed);
        sidecar.lines.discard_from_now();
        warm_up(&sidecar, nginx.port, Some(spool));
        let s0 = sidecar.cpu_seconds();
        let rps = wrk_rps(nginx.port);
        wait_rows_sent(&sidecar, spool);
        us.push((sidecar.cpu_seconds() - s0) * 1e6 / (rps * f64::from(WRK_SECONDS)));
        conns.push(conns_per_100_requests(&sidecar));
    }
    (median(us), median(conns))
}

/// What one run with nginx's access log joined cost: sidecar and ClickHouse CPU per request
/// (us), and the sidecar's RSS after it (MiB). `at_rest_us`: the part of `sidecar_us` that the
/// sidecar spends at rest anyway (its timers and polls, measured for [`AT_REST_SECONDS`] once
/// the run is over) during the wait after the load (`waited_s`, until the rows were sent or
/// the log read): with the store the wait is the batches' age, seconds, without it a log poll.
struct LogJoined {
    sidecar_us: f64,
    at_rest_us: f64,
    waited_s: f64,
    clickhouse_us: f64,
    rss_mib: f64,
    /// Each run's `sidecar_us`, in the order they ran.
    runs: Vec<f64>,
}

/// The sidecar's count of requests joined by request id.
const JOINED_EXACT: &str = "edgewatch_joined_requests_total{matched=\"exact\"}";

/// How long the sidecar's CPU at rest is measured after a log-joined run.
const AT_REST_SECONDS: u64 = 2;

/// The as-deployed cost with the access log followed and joined, as the README sets a
/// deployment up: nginx's log in the README's format (`log_format edgewatch`, which the bench's
/// nginx always writes) named in `[edge] access_logs`. Per request that adds the log line's
/// parse and join and one row (`edge_logs`, carrying the joined request: ClickHouse's view
/// makes its `requests` row), each with its `request_index` rows in ClickHouse. Medians of three runs, each with a fresh spool and log
/// state (so no run starts behind on lines of the runs before it).
/// `deployed`: the configuration before `[edge]`, given a spool directory. `store`: whether
/// it has one; without, the run ends when the log's lines were all read (its checkpoint at the
/// log's end) instead of when the rows were sent.
fn log_joined(
    deployed: impl Fn(&Path) -> String,
    store: bool,
    log: &Path,
    port: u16,
    ch_pid: u32,
) -> LogJoined {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let spool = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let config = format!(
            "{}[edge]\naccess_logs = [{:?}]\nstate_dir = {:?}\n",
            deployed(spool.path()),
            log.display().to_string(),
            state.path().display().to_string()
        );
        let sidecar = Sidecar::start_quiet(&config);
        sidecar.lines.discard_from_now();
        let spool = store.then_some(spool.path());
        warm_up(&sidecar, port, spool);
        let joined0 = metric_sum(&sidecar.metrics(), JOINED_EXACT);
        let (s0, c0) = (sidecar.cpu_seconds(), cpu_seconds(ch_pid));
        let rps = wrk_rps(port);
        let load_end = Instant::now();
        match spool {
            Some(spool) => wait_rows_sent(&sidecar, spool),
            None => wait_log_read(state.path(), log),
        }
        let waited_s = load_end.elapsed().as_secs_f64();
        let (s1, c1) = (sidecar.cpu_seconds(), cpu_seconds(ch_pid));
        let requests = rps * f64::from(WRK_SECONDS);
        // The sidecar at rest, before the metrics are scraped (a scrape costs it CPU).
        std::thread::sleep(std::time::Duration::from_secs(AT_REST_SECONDS));
        let at_rest_per_s = (sidecar.cpu_seconds() - s1) / AT_REST_SECONDS as f64;
        let joined = metric_sum(&sidecar.metrics(), JOINED_EXACT) - joined0;
        // A figure for the join only if the run's requests were joined by id (wrk's requests
        // all went through nginx, which logged each): a request the join did not pair (two
        // records, each alone) is not the work the figure is of.
        assert!(
            joined >= 0.9 * requests,
            "{joined} requests joined by id of ~{requests:.0}: the log was not followed, or \
             the ids did not match"
        );
        runs.push(LogJoined {
            sidecar_us: (s1 - s0) * 1e6 / requests,
            at_rest_us: at_rest_per_s * waited_s * 1e6 / requests,
            waited_s,
            clickhouse_us: (c1 - c0) * 1e6 / requests,
            rss_mib: support::rss_kib(sidecar.pid()) as f64 / 1024.0,
            runs: Vec::new(),
        });
    }
    LogJoined {
        sidecar_us: median(runs.iter().map(|r| r.sidecar_us).collect()),
        at_rest_us: median(runs.iter().map(|r| r.at_rest_us).collect()),
        waited_s: median(runs.iter().map(|r| r.waited_s).collect()),
        clickhouse_us: median(runs.iter().map(|r| r.clickhouse_us).collect()),
        rss_mib: median(runs.iter().map(|r| r.rss_mib).collect()),
        runs: runs.iter().map(|r| r.sidecar_us).collect(),
    }
}

/// Only the as-deployed pairs (see the module's doc).
fn live_only() -> bool {
    std::env::var_os("EDGEWATCH_BENCH_LIVE_ONLY").is_some_and(|v| v == "1")
}

/// Only the log-joined runs (see the module's doc).
fn log_only() -> bool {
    std::env::var_os("EDGEWATCH_BENCH_LIVE_ONLY").is_some_and(|v| v == "log")
}

/// Runs `f` with the kernel's per-program statistics on.
fn with_bpf_stats<T>(f: impl FnOnce() -> T) -> T {
    let _ = Command::new("sysctl")
        .args(["-q", "-w", "kernel.bpf_stats_enabled=1"])
        .status();
    let out = f();
    let _ = Command::new("sysctl")
        .args(["-q", "-w", "kernel.bpf_stats_enabled=0"])
        .status();
    out
}

/// The TC program's run time per packet for workloads made of (almost) one class of packet
/// each, straight to the upstream (no proxy in between, so no packets of other ports):
/// packets of a port not on the hop, HTTP heads (keep-alive requests), long bodies (segments
/// inside them and pure ACKs, which cost no record), connection control (connect and close:
/// SYN, FIN, ACK), and WebSocket frames the kernel follows.
fn tc_cost_by_class(
    runtime: &tokio::runtime::Runtime,
    upstream: std::net::SocketAddr,
    base: &str,
) -> Vec<(&'static str, f64)> {
    let tc = |stats: Vec<(String, u64, u64)>| -> f64 {
        let (ns, cnt) = stats
            .iter()
            .filter(|(n, _, _)| n.starts_with("tc "))
            .fold((0, 0), |a, (_, t, c)| (a.0 + t, a.1 + c));
        ns as f64 / cnt.max(1) as f64
    };
    let quiet = format!("{base}[store]\nenabled = false\n");
    let elsewhere = quiet.replace(
        &format!("ports = [{}]", upstream.port()),
        &format!("ports = [{}]", support::free_port()),
    );
    let run = |config: &str, load: &dyn Fn()| -> f64 {
        with_bpf_stats(|| {
            let sidecar = Sidecar::start_quiet(config);
            sidecar.lines.discard_from_now();
            load();
            tc(prog_stats(sidecar.pid()))
        })
    };
    let heads = || {
        let _ = Command::new("wrk")
            .args(["-t1", "-c4", "-d2s"])
            .arg(format!("http://{upstream}/health"))
            .output();
    };
    let control = || {
        for _ in 0..5_000 {
            drop(std::net::TcpStream::connect(upstream).unwrap());
        }
    };
    let frames = || {
        runtime.block_on(async {
            let mut ws = support::hop::ws_connect(upstream.port(), "/bench")
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap();
            for _ in 0..20_000 {
                ws.send(Message::text("x".repeat(100))).await.unwrap();
                ws.next().await.unwrap().unwrap();
            }
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        });
    };
    let bodies = || {
        // Long downloads: after each head, segments inside the body and the reader's pure
        // ACKs, which the program skips (no record).
        let mut s = std::net::TcpStream::connect(upstream).unwrap();
        let n = 16 << 20;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
        let mut buf = vec![0u8; head.len() + n];
        for _ in 0..8 {
            std::io::Write::write_all(
                &mut s,
                format!("GET /bytes?n={n} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes(),
            )
            .unwrap();
            std::io::Read::read_exact(&mut s, &mut buf).unwrap();
        }
    };
    vec![
        ("not on the hop (another port)", run(&elsewhere, &heads)),
        (
            "long HTTP bodies (segments inside them and pure ACKs, skipped)",
            run(&quiet, &bodies),
        ),
        ("HTTP heads (keep-alive requests)", run(&quiet, &heads)),
        ("connection control (connect, close)", run(&quiet, &control)),
        ("WebSocket frames, followed", run(&quiet, &frames)),
    ]
}
