//! `cargo xtask bench` (every benchmark, then one summary table) and `cargo xtask
//! bench-exposure` (figures for the live exposure watch), measured on this machine in this
//! run (never asserted in tests: these machines are noisy).
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// The benches `cargo xtask bench` runs, in order.
const BENCHES: [&str; 6] = ["hop", "sessions", "capacity", "edge", "store", "floods"];

/// Runs every benchmark (their output passes through), then prints one table of the figures
/// their `summary: SECTION key=value ...` lines give, with the machine they came from.
pub fn all() -> Result<()> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut failed = Vec::new();
    for bench in BENCHES {
        let mut child = crate::cargo()
            .args(["bench", "--package", "edgewatch", "--bench", bench])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cargo bench --bench {bench}"))?;
        let stdout = child.stdout.take().context("bench stdout")?;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            rows.extend(summary_row(&line));
        }
        if !child.wait()?.success() {
            failed.push(bench);
        }
    }
    // Heap allocations per request on the hot path: counted (deterministic), by a test of the
    // core with a counting allocator, which prints its own summary line.
    let output = crate::cargo()
        .args([
            "test",
            "--release",
            "--package",
            "edgewatch-core",
            "--test",
            "allocations",
        ])
        .args(["--", "--nocapture"])
        .output()
        .context("cargo test --test allocations")?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("{line}");
        rows.extend(summary_row(line));
    }
    if !output.status.success() {
        failed.push("allocations");
    }
    match instructions() {
        Ok(counted) => rows.extend(counted),
        Err(e) => {
            eprintln!("instructions: {e:#}");
            failed.push("instructions");
        }
    }
    // The table prints even when this last one fails.
    let exposure_result = exposure(50);
    println!("\n== summary ({})", machine());
    println!("{:<10} {:<28} {:>14}", "section", "figure", "value");
    for (section, key, value) in &rows {
        println!("{section:<10} {key:<28} {value:>14}");
    }
    if !failed.is_empty() {
        bail!("benchmarks failed: {failed:?}");
    }
    exposure_result
}

/// Keep-alive requests counted: the measured part of the last load each counted test of the
/// allocations test runs (nginx's 32-digit request ids), after 20,000 that warm the pipeline
/// up.
const INSTRUCTION_LOAD_REQUESTS: u64 = 20_000;

/// The pipeline's entry points a request goes through, hop only: what callgrind counts.
const HOP_ENTRIES: [&str; 2] = [
    "edgewatch_core::pipeline::Pipeline::segment",
    "edgewatch_core::pipeline::Pipeline::end_batch",
];

/// Instructions the core spends per proxied keep-alive request, counted by callgrind: the same
/// for the same binary and input whatever else the machine does, where its time is not. The
/// load is the allocations test's (requests as nginx forwards them, through the pipeline's
/// tracker, rules and the store's columns); only what runs inside `Pipeline::segment` and
/// `Pipeline::end_batch` is counted, not the harness writing the requests, and only in steady
/// state: callgrind dumps its counters each time the test enters
/// `instructions_counted_from_here` (after a load's warm-up), and the part after the last
/// one is the count. The same again with nginx's access-log line of each request followed,
/// parsed, joined and stored (the README's setup; `Pipeline::edge_line` and `tick` counted
/// too). Prints and returns both figures.
pub fn instructions() -> Result<Vec<(String, String, String)>> {
    let hop = instructions_of(
        "a_request_costs_no_allocation_with_the_proxies_request_ids",
        &HOP_ENTRIES,
    )?;
    println!(
        "instructions per proxied keep-alive request in the core (callgrind, {INSTRUCTION_LOAD_REQUESTS} requests in steady state through the pipeline into the store's columns): {hop}"
    );
    let logged_entries = [
        HOP_ENTRIES[0],
        HOP_ENTRIES[1],
        "edgewatch_core::pipeline::Pipeline::edge_line",
        "edgewatch_core::pipeline::Pipeline::tick",
        "edgewatch_core::pipeline::Pipeline::flush_exchanges",
    ];
    let near = "a_request_with_its_access_log_line_joined_costs_no_allocation";
    let logged = instructions_of(near, &logged_entries)?;
    println!(
        "instructions per proxied keep-alive request with its access-log line joined (the same, plus the line parsed, joined by request id, and its edge row carrying the joined request): {logged}"
    );
    println!("summary: instr per_request={hop} per_logged_request={logged}");
    let mut rows = vec![
        ("instr".into(), "per_request".into(), hop.to_string()),
        (
            "instr".into(),
            "per_logged_request".into(),
            logged.to_string(),
        ),
    ];
    // The same logged load with the caches simulated, its lines a drain behind their
    // exchanges (180 requests), then a log poll behind (6,250), as live.
    let behind = "a_request_with_its_line_a_log_poll_behind_costs_no_allocation";
    let per = |n: u64| n as f64 / INSTRUCTION_LOAD_REQUESTS as f64;
    let mut printed = Vec::new();
    for (test, key) in [(near, "drain_behind"), (behind, "poll_behind")] {
        let t = callgrind(test, &logged_entries, true)?;
        let (d1, ll) = (per(t.d1_misses), per(t.ll_misses));
        let (ll_r, ll_w) = (per(t.ll_read_misses), per(t.ll_misses - t.ll_read_misses));
        printed.push(format!(
            "{key}: {} instructions, {d1:.1} L1 and {ll:.1} L2 data misses ({ll_r:.1} reads, {ll_w:.1} writes)",
            t.instructions / INSTRUCTION_LOAD_REQUESTS
        ));
        rows.push((
            "cache".into(),
            format!("ll_read_misses_{key}"),
            format!("{ll_r:.1}"),
        ));
        rows.push((
            "cache".into(),
            format!("ll_misses_{key}"),
            format!("{ll:.1}"),
        ));
        rows.push((
            "cache".into(),
            format!("d1_misses_{key}"),
            format!("{d1:.1}"),
        ));
    }
    println!(
        "simulated caches per logged request (callgrind, {} / {} / {}; lines a drain behind their exchanges, then a log poll, as live): {}",
        CACHES[0],
        CACHES[1],
        CACHES[2],
        printed.join("; ")
    );
    Ok(rows)
}

/// Instructions per request inside `entries`, in the last measured load of `test`.
fn instructions_of(test: &str, entries: &[&str]) -> Result<u64> {
    let totals = callgrind(test, entries, false)?;
    Ok(totals.instructions / INSTRUCTION_LOAD_REQUESTS)
}

/// The cache geometry simulated (`--cache-sim=yes`): set here, not read from the machine, so
/// that the counts are the same on any machine: a core's caches on this project's VMs (AMD
/// EPYC): 32 KiB 8-way first levels for data and instructions, and its 512 KiB 8-way L2 as the
/// last level (a miss there is a read from the shared L3 or from memory), 64-byte lines.
const CACHES: [&str; 3] = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=524288,8,64"];

/// What callgrind counted inside `entries` after the last warm-up of `test`.
struct Totals {
    instructions: u64,
    /// Data reads and writes that missed the first level, then the last (with the cache
    /// simulation only).
    d1_misses: u64,
    ll_misses: u64,
    /// Of `ll_misses`, the reads: a load that misses holds up what needs its value, where a
    /// store that misses waits in the core's store buffer (and a sequential stream of either is
    /// fetched ahead by the hardware, which callgrind does not model, nor prefetches).
    ll_read_misses: u64,
}

fn callgrind(test: &str, entries: &[&str], cache_sim: bool) -> Result<Totals> {
    let build = crate::cargo()
        .args(["test", "--release", "--package", "edgewatch-core"])
        .args(["--test", "allocations", "--no-run"])
        .output()
        .context("building the allocations test")?;
    let log = String::from_utf8_lossy(&build.stderr);
    if !build.status.success() {
        bail!("building the allocations test failed:\n{log}");
    }
    let exe = log
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Executable tests/allocations.rs (")?
                .strip_suffix(')')
        })
        .context("cargo did not name the allocations test's executable")?;
    let out_file = std::env::temp_dir().join(format!("edgewatch-callgrind.{}", std::process::id()));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()));
    if cache_sim {
        cmd.arg("--cache-sim=yes").args(CACHES);
    }
    let run = cmd
        .args(entries.iter().map(|e| format!("--toggle-collect={e}")))
        .arg("--dump-before=allocations::instructions_counted_from_here")
        .arg(crate::workspace_root().join(exe))
        .args([test, "--exact"])
        .args(["--test-threads=1"])
        .stdout(Stdio::null())
        .output()
        .context("running valgrind (`cargo xtask bench` installs it)")?;
    // The part after the last dump is `out_file`; the dumps before it are `out_file.N`.
    let text = std::fs::read_to_string(&out_file).unwrap_or_default();
    let mut dumps = 0;
    while std::fs::remove_file(format!("{}.{}", out_file.display(), dumps + 1)).is_ok() {
        dumps += 1;
    }
    let _ = std::fs::remove_file(&out_file);
    let report = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        bail!("the allocations test under callgrind failed:\n{report}");
    }
    if dumps == 0 {
        bail!("callgrind never dumped at allocations::instructions_counted_from_here: renamed, or inlined?");
    }
    // `events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw`, and `totals:` in that order.
    let field = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix));
    let events: Vec<&str> = field("events:")
        .context("callgrind wrote no events line")?
        .split_whitespace()
        .collect();
    let totals: Vec<u64> = field("totals:")
        .context("callgrind wrote no total")?
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let total = |names: &[&str]| -> u64 {
        events
            .iter()
            .zip(&totals)
            .filter(|(e, _)| names.contains(e))
            .map(|(_, n)| n)
            .sum()
    };
    let got = Totals {
        instructions: total(&["Ir"]),
        d1_misses: total(&["D1mr", "D1mw"]),
        ll_misses: total(&["DLmr", "DLmw"]),
        ll_read_misses: total(&["DLmr"]),
    };
    if got.instructions == 0 {
        bail!("no instructions counted inside {entries:?}: renamed, or inlined into the test?");
    }
    if cache_sim && got.d1_misses == 0 {
        bail!("the cache simulation counted no misses: events {events:?}");
    }
    Ok(got)
}

/// `summary: SECTION k=v k=v` as (section, k, v) rows.
fn summary_row(line: &str) -> Vec<(String, String, String)> {
    let Some(rest) = line.strip_prefix("summary: ") else {
        return Vec::new();
    };
    let mut words = rest.split_whitespace();
    let section = words.next().unwrap_or("?").to_owned();
    words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (section.clone(), k.to_owned(), v.to_owned()))
        .collect()
}

/// The CPU model, core count and kernel, for the table's heading.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn exposure(rounds: usize) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    crate::setup()?;
    if !crate::is_root() {
        bail!("bench-exposure loads the probes: run it as root");
    }
    crate::run_ok(crate::cargo().args(["build", "--release", "--package", "edgewatch"]))?;
    // The watch alone, then with the default store (the embedded ClickHouse, a process of
    // its own whose memory is not the sidecar's).
    measure(
        rounds,
        "without a store ([store] enabled = false)",
        "[store]\nenabled = false\n",
    )?;
    measure(rounds, "with the default store (embedded ClickHouse)", "")
}

fn measure(rounds: usize, label: &str, store: &str) -> Result<()> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config_path =
        std::env::temp_dir().join(format!("edgewatch-bench-{}.toml", std::process::id()));
    std::fs::File::create(&config_path)?.write_all(
        format!(
            "[exposure]\nwatched_ports = [{port}]\nrescan_interval = \"1h\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n{store}"
        )
        .as_bytes(),
    )?;
    let bin = crate::workspace_root().join("target/release/edgewatch");
    let mut child = Command::new(&bin)
        .args(["run", "--output", "json", "--config"])
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("sidecar stdout")?;
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let wait = |pred: &dyn Fn(&Value) -> bool| -> Result<Value> {
        loop {
            let v = rx
                .recv_timeout(Duration::from_secs(30))
                .context("no expected line from the sidecar within 30 s")?;
            if pred(&v) {
                return Ok(v);
            }
        }
    };
    let result = (|| -> Result<()> {
        wait(&|v| v["type"] == "ready")?;
        let rss_ready = rss_kib(child.id())?;
        // Idle: nothing happens on the watched port for a few seconds (a measurement
        // period, not a synchronisation).
        std::thread::sleep(Duration::from_secs(5));
        let rss_idle = rss_kib(child.id())?;
        let mut latencies = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let listener = TcpListener::bind(("0.0.0.0", port))?;
            wait(&|v| {
                v["type"] == "alert" && v["state"] == "firing" && v["evidence"]["port"] == port
            })?;
            latencies.push(started.elapsed());
            drop(listener);
            wait(&|v| {
                v["type"] == "alert" && v["state"] == "resolved" && v["evidence"]["port"] == port
            })?;
        }
        let rss_after = rss_kib(child.id())?;
        latencies.sort();
        println!("{label}:");
        println!(
            "  listen() -> alert line over {rounds} rounds: min {:.2} ms, median {:.2} ms, \
             p95 {:.2} ms, max {:.2} ms",
            ms(latencies[0]),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.95)),
            ms(latencies[latencies.len() - 1]),
        );
        println!(
            "  sidecar RSS: {:.1} MiB at ready, {:.1} MiB idle 5 s later, {:.1} MiB after the rounds",
            rss_ready as f64 / 1024.0,
            rss_idle as f64 / 1024.0,
            rss_after as f64 / 1024.0
        );
        Ok(())
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_file(&config_path);
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_lines_become_table_rows_and_other_lines_none() {
        assert_eq!(
            super::summary_row("summary: replay ratio_vs_tshark=19.5 mb_per_s=3357"),
            vec![
                ("replay".into(), "ratio_vs_tshark".into(), "19.5".into()),
                ("replay".into(), "mb_per_s".into(), "3357".into()),
            ]
        );
        assert!(super::summary_row("ratio: edgewatch is 19.5x faster").is_empty());
        assert!(super::summary_row("summary: empty").is_empty());
    }
}
