//! `cargo bench --bench hop` (as root): the hop's two performance claims, measured in one run
//! on this machine, printed as ratios against a baseline measured in the same run.
//!
//! 1. Replay throughput on a large capture of real WebSocket traffic (real nginx, a real
//!    WebSocket upstream and clients, recorded with tcpdump) versus
//!    `tshark -r CAPTURE -Y websocket` on the same file. Goal: at least 20x faster.
//! 2. The live probes' cost: wrk through nginx to an upstream on loopback, with and without the
//!    sidecar attached, in ten pairs whose order alternates. Goal: throughput with the sidecar at least 97% of without.
//!    Also the probes' own run time per packet (kernel.bpf_stats_enabled: run_time_ns and
//!    run_cnt of each program), and a control: ten more pairs in which a thread that only spins,
//!    using the same CPU as the sidecar did, takes the sidecar's place. It tells what that much
//!    CPU costs this machine's throughput whoever spends it (this harness's noise is a few
//!    percent on a median of ten pairs, so read it as a rough guide, not a precise figure).
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure is a panic with a message"
)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use futures_util::{SinkExt, StreamExt};
use support::{
    hop::{start_upstream, ws_connect, Capture, Nginx, NginxSite},
    Sidecar,
};
use tokio_tungstenite::tungstenite::Message;

const SESSIONS: usize = 4;
const MESSAGES_PER_SESSION: usize = 10_000;
const WRK_SECONDS: u32 = 4;
/// Timed replays of the capture (the median is taken).
const REPLAY_RUNS: usize = 15;
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
    let out = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{WRK_SECONDS}s")])
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

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
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
/// slices at the start of each 20 ms period (the sidecar drains its ring on a 20 ms tick), and
/// sleeps the rest. Run in place of the sidecar, it shows what the same amount of CPU costs this
/// machine's throughput whoever uses it. Returns the CPU it actually used, in % of one core.
fn spin_control(share: f64, run: impl FnOnce() -> f64) -> (f64, f64) {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    use std::time::Duration;
    const PERIOD: Duration = Duration::from_millis(20);
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

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
    // tools then read it from memory. Ours takes a few hundredths of a second, where a
    // millisecond of scheduling moves the ratio, hence more runs than tshark's.
    let ours = median(
        (0..REPLAY_RUNS)
            .map(|_| {
                time_cmd(Command::new(&bin).arg("replay").arg(&capture).args([
                    "--port",
                    &port.to_string(),
                    "--output",
                    "json",
                ]))
            })
            .collect(),
    );
    let tshark = median(
        (0..3)
            .map(|_| {
                time_cmd(Command::new("tshark").arg("-r").arg(&capture).args([
                    "-d",
                    &format!("tcp.port=={port},http"),
                    "-Y",
                    "websocket",
                ]))
            })
            .collect(),
    );
    println!(
        "capture: {size:.1} MB, {} WebSocket messages each way",
        SESSIONS * MESSAGES_PER_SESSION
    );
    println!("edgewatch replay: {ours:.3} s ({:.0} MB/s)", size / ours);
    println!(
        "tshark -Y websocket: {tshark:.2} s ({:.1} MB/s)",
        size / tshark
    );
    println!(
        "ratio: edgewatch is {:.1}x faster (goal: >= 20x)",
        tshark / ours
    );

    println!("== live probe cost (wrk through nginx, interleaved)");
    let upstream = runtime.block_on(start_upstream());
    let nginx = Nginx::start(&NginxSite {
        websocket_headers: false,
        upstream_keepalive: true,
        ..NginxSite::new(upstream)
    });
    let config = format!(
        "[hop]\nports = [{}]\ndocker_bridges = false\n[exposure]\nrescan_interval = \"1h\"\n\
         [nat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        upstream.port()
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut sidecar_cpu = Vec::new();
    let mut ratios = Vec::new();
    for (base, attached, cpu) in abba_pairs(nginx.port, || {
        let sidecar = Sidecar::start(&config);
        // Its output goes to a log in production; here it is drained and discarded, so the
        // reader's cost is not counted as the sidecar's.
        sidecar.lines.discard_from_now();
        let cpu_before = cpu_ticks(sidecar.pid());
        let attached = wrk_rps(nginx.port);
        let cpu = cpu_ticks(sidecar.pid()) - cpu_before;
        (
            attached,
            cpu as f64 / ticks_per_second() / f64::from(WRK_SECONDS) * 100.0,
        )
    }) {
        sidecar_cpu.push(cpu);
        without.push(base);
        with.push(attached);
        ratios.push(100.0 * attached / base);
    }
    // Per-program run time, in a run of its own: the statistics cost time themselves.
    let _ = Command::new("sysctl")
        .args(["-q", "-w", "kernel.bpf_stats_enabled=1"])
        .status();
    let sidecar = Sidecar::start(&config);
    sidecar.lines.discard_from_now();
    let _ = wrk_rps(nginx.port);
    let stats = prog_stats(sidecar.pid());
    drop(sidecar);
    let _ = Command::new("sysctl")
        .args(["-q", "-w", "kernel.bpf_stats_enabled=0"])
        .status();
    // The control, in pairs of its own (ABBA as above): the same CPU as the sidecar used,
    // spent by a thread that observes nothing.
    let share = median(sidecar_cpu.clone()) / 100.0;
    let mut control_ratios = Vec::new();
    let mut control_cpu = Vec::new();
    for (base, attached, used) in
        abba_pairs(nginx.port, || spin_control(share, || wrk_rps(nginx.port)))
    {
        control_ratios.push(100.0 * attached / base);
        control_cpu.push(used);
    }
    let (w, wo) = (median(with.clone()), median(without.clone()));
    println!("without sidecar: {without:.0?} req/s (median {wo:.0})");
    println!("with sidecar:    {with:.0?} req/s (median {w:.0})");
    println!(
        "ratio of the medians: {:.1}% of the throughput without (goal: >= 97%)",
        100.0 * w / wo
    );
    println!(
        "per-pair ratios: {ratios:.1?} % (median {:.1}%)",
        median(ratios.clone())
    );
    println!(
        "sidecar CPU (user + system time of its process) during the runs: \
         {sidecar_cpu:.1?} % of one core"
    );
    let sidecar_share = median(sidecar_cpu.clone());
    println!(
        "sidecar CPU per proxied request: {:.1} us",
        sidecar_share / 100.0 * 1e6 / w
    );
    let control = median(control_ratios.clone());
    let control_share = median(control_cpu.clone());
    println!(
        "control (a thread that only spins, {control_share:.1}% of one core in 20 ms slices, \
         no sidecar): per-pair ratios {control_ratios:.1?} % (median {control:.1}%)"
    );
    for (name, ns, cnt) in stats {
        if cnt > 0 {
            println!(
                "probe {name}: {cnt} runs, {:.0} ns per run",
                ns as f64 / cnt as f64
            );
        }
    }
    drop(nginx);
}
