//! Project tasks: `cargo xtask setup | run | test | docs | ...`.
//!
//! Each task first makes sure the machine has what the build needs (Debian's rustc-web for
//! the eBPF target, the `debian-web` rustup link, bpf-linker on LLVM 22, the netfilter tools
//! the tests use) and installs what is missing, so the README's two commands work on a fresh
//! machine. Everything is idempotent and quick when already installed.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;
mod docs;
mod gateway;
mod image;
mod vm;

/// Debian packages the build and the tests need.
const APT_PACKAGES: &[&str] = &[
    // The eBPF toolchain (../shared/toolchain.md): rustc 1.96 with a precompiled core for
    // bpfel-unknown-none, and the LLVM that bpf-linker must match.
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    // NAT rule reading at run time, and the DNAT tests.
    "nftables",
    "iptables",
    // `ip netns`, `nsenter`, `mount` for the tests and tracefs.
    "iproute2",
    "util-linux",
    // The hop and join tests: real reverse proxies, and captures of the hop.
    "nginx-light",
    "caddy",
    "tcpdump",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const TOOLCHAIN: &str = "debian-web";

#[derive(Parser)]
#[command(name = "xtask", about = "edgewatch project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: apt packages, the debian-web toolchain link, bpf-linker.
    Setup,
    /// Set up, build in release mode and run the sidecar live (as root). Arguments after
    /// `--` go to `edgewatch` (default: `run`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check and test: fmt, clippy (user space, then the eBPF crate),
    /// unit and integration tests (as root, with the real probes in the real kernel).
    Test,
    /// Boot Debian 12's stock 6.1 kernel under qemu (software emulation) and run the
    /// `kernel_probes` test binary there: every probe loaded, attached and checked by its
    /// events. Reports pass or fail per probe and the kernel version. Part of `test`.
    VmTest(vm::VmArgs),
    /// Install the real OpenClaw Gateway the tests run (npm `openclaw` on Node 24, pinned)
    /// into /var/cache/edgewatch/openclaw. Part of `test`.
    Gateway,
    /// Generate shell completions (bash, zsh, fish) and man pages from edgewatch's command
    /// line into target/docs, and write the README's usage block from it.
    Docs,
    /// Build the container image with podman, as a user without internet access would: a
    /// Debian base made with mmdebstrap, the release binary built here, the Dockerfile's
    /// `prebuilt` target. Prints its size. Part of `test`.
    Image,
    /// Run the fuzz targets (cargo-fuzz, nightly) for a while each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Install the benchmark tools (tshark, wrk, jq, valgrind) and run every benchmark, then print one
    /// summary table: `cargo bench --bench hop` (replay vs tshark, live cost per request with
    /// wrk, TC cost per packet class), `--bench sessions` (RSS at 10,000 WebSocket sessions),
    /// `--bench capacity` (hop packets/s with zero drops; drops counted past it), `--bench
    /// edge` (log parsing and join vs jq), `--bench store` (records into ClickHouse vs the
    /// raw crate insert), `--bench floods` (hostile floods at 1x-8x), the allocations and
    /// instructions per request (counted) and `bench-exposure`.
    Bench,
    /// Count the instructions the core spends per proxied keep-alive request, without and with
    /// its access-log line joined (callgrind on the allocations test's loads: deterministic,
    /// where time on a shared machine is not).
    BenchInstructions,
    /// Measure the live exposure watch (release build, as root): the time from `listen()` on
    /// a watched port to the alert line, and the sidecar's resident memory while idle.
    BenchExposure {
        /// Listen/close rounds to time.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
    },
}

fn step(n: usize, total: usize, what: &str) {
    eprintln!("xtask [{n}/{total}] {what}");
}

fn run_status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))
}

pub(crate) fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = run_status(cmd)?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub(crate) fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Says when the disk is short for a full run, and keeps no incremental caches.
fn check_disk_and_caches() {
    // A clean checkout was 6.1 GB after a full run (the test binaries 2.3 GB, the clippy
    // metadata, the seven instrumented fuzz targets 2 GB, the release build, the VM image),
    // besides the store's 566 MB library: on a machine short of disk say so now, not in a
    // linker error later.
    let root = workspace_root();
    match free_gib(&root) {
        Some(free) if free < TEST_DISK_GIB => eprintln!(
            "WARNING: {free:.1} GiB free on the disk of {}; a full test run from a clean \
             checkout needs about {TEST_DISK_GIB} GiB and may fail with \
             \"No space left on device\"",
            root.display()
        ),
        Some(free) => eprintln!(
            "xtask test: {free:.1} GiB free on the disk of {}",
            root.display()
        ),
        None => eprintln!("xtask test: could not read the free disk space (df)"),
    }
    // A full run rebuilds little between runs; its incremental caches cost 2.7 GB of disk.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }
}

/// On a disk short of room, the fuzz smoke run's build (2 GB) goes once it has run: the tests
/// and the images still to come need more than a machine with a few GB free has left.
fn make_room_after_fuzzing() {
    let root = workspace_root();
    if free_gib(&root).is_some_and(|free| free < TEST_DISK_GIB) {
        let build = root.join("sidecar/fuzz/target");
        eprintln!(
            "  the disk is short of room: removing the fuzz build {} (rebuilt by the next run)",
            build.display()
        );
        if let Err(e) = std::fs::remove_dir_all(&build) {
            eprintln!("  could not remove {}: {e}", build.display());
        }
    }
}

/// What a full `xtask test` from a clean checkout builds and fetches, with a margin.
const TEST_DISK_GIB: f64 = 10.0;

/// Free space, in GiB, on the file system holding `path` (`df -Pk`).
fn free_gib(path: &std::path::Path) -> Option<f64> {
    let out = output_of(Command::new("df").arg("-Pk").arg(path))?;
    let kib: u64 = out
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib as f64 / (1024.0 * 1024.0))
}

pub(crate) fn is_root() -> bool {
    output_of(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn setup() -> Result<()> {
    let started = Instant::now();
    let total = 4;
    step(1, total, "apt packages");
    apt_install(APT_PACKAGES)?;

    step(
        2,
        total,
        "rustup toolchain link `debian-web` -> /usr (Debian's rustc-web)",
    );
    let toolchains = output_of(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (the machine's Rust toolchain)")?;
    if toolchains.lines().any(|l| l.starts_with(TOOLCHAIN)) {
        eprintln!("  present");
    } else {
        run_ok(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))?;
    }

    step(
        3,
        total,
        &format!("bpf-linker {BPF_LINKER_VERSION} on LLVM 22"),
    );
    let have = output_of(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        eprintln!("  present ({})", have.trim());
    } else {
        eprintln!("  building it (about a minute)");
        run_ok(
            Command::new("cargo")
                .args([
                    "install",
                    "--locked",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                // Without it bpf-linker finds LLVM 14's llvm-config and fails to link.
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }

    step(4, total, "tracefs");
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        eprintln!("  mounted");
    } else if is_root() {
        run_ok(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))?;
        eprintln!("  mounted now");
    } else {
        eprintln!("  not mounted; edgewatch mounts it when it starts as root");
    }
    eprintln!(
        "xtask setup done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(args: Vec<String>) -> Result<()> {
    setup()?;
    eprintln!("xtask: building edgewatch (release)");
    run_ok(cargo().args(["build", "--release", "--package", "edgewatch"]))?;
    if !is_root() {
        bail!("edgewatch loads eBPF programs: run `cargo xtask run` as root");
    }
    let args = if args.is_empty() {
        vec!["run".to_owned()]
    } else {
        args
    };
    let bin = workspace_root().join("target/release/edgewatch");
    eprintln!("xtask: {} {}", bin.display(), args.join(" "));
    let status = run_status(Command::new(&bin).args(&args))?;
    // edgewatch's own exit status is the answer (3: `exposure` found drift): passed through
    // as it is, without an error or a backtrace of ours.
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn test() -> Result<()> {
    let started = Instant::now();
    setup()?;
    if !is_root() {
        bail!(
            "the integration tests load the real probes into the kernel and create network \
             namespaces: run `cargo xtask test` as root"
        );
    }
    check_disk_and_caches();
    // The store tests: Debian's old ClickHouse (the version check) and openssl (a private CA
    // for the TLS test); the timeline test opens its HTML page in Debian's Chromium; the
    // container test drops capabilities with capsh and reads the compose file with PyYAML.
    // The ClickHouse 26.7 build is fetched by the tests on first use.
    apt_install(&[
        "clickhouse-server",
        "clickhouse-client",
        "openssl",
        "chromium",
        "libcap2-bin",
        "python3-yaml",
    ])?;
    // Every diagnosis is tested against the real OpenClaw Gateway (npm, Node 24). When the
    // registry cannot be reached, the tests that need it say so and skip (never silently).
    if let Err(e) = gateway::install() {
        let reason = format!("the real OpenClaw Gateway could not be installed: {e:#}");
        eprintln!("WARNING: {reason}; the tests that need it will skip, saying so");
        // Read by the test processes started below.
        std::env::set_var(gateway::UNAVAILABLE_ENV, reason);
    }
    let total = 8;
    step(1, total, "cargo fmt --check");
    run_ok(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(2, total, "clippy, user space (-D warnings)");
    run_ok(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "edgewatch-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step(
        3,
        total,
        "the core is pure: edgewatch-core alone, without the sidecar's features (clippy -D warnings)",
    );
    // Selected alone, the core is built without the `clickhouse` feature the sidecar turns on:
    // this proves the pipeline and everything under it compile with no runtime, kernel or
    // network crate at all.
    run_ok(cargo().args([
        "clippy",
        "--package",
        "edgewatch-core",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step(4, total, "clippy, eBPF crate (-D warnings, panic=abort)");
    // Separately: with feature unification the panic handler would be built twice.
    run_ok(cargo().args([
        "clippy",
        "--package",
        "edgewatch-ebpf",
        "--",
        "-D",
        "warnings",
        "-C",
        "panic=abort",
    ]))?;
    step(5, total, "fuzz smoke: every fuzz target for 20 s");
    fuzz(20)?;
    make_room_after_fuzzing();
    step(
        6,
        total,
        "the container image (podman, base from Debian's archive; tests/container_image.rs runs it)",
    );
    let image = image::build();
    if let Err(e) = &image {
        eprintln!("the container image could not be built: {e:#}");
    }
    step(7, total, "cargo test (unit and integration, real probes)");
    let mut counts = cargo_test()?;
    if image.is_err() {
        counts.failed += 1;
    }
    step(
        8,
        total,
        "vm-test: the probes on Debian 12's 6.1 kernel under qemu",
    );
    match vm::vm_test(&vm::VmArgs::parse_from(["vm-test"])) {
        Ok(vm) => {
            counts.passed += vm.passed;
            counts.failed += vm.failed;
        }
        Err(e) => {
            eprintln!("vm-test failed: {e:#}");
            counts.failed += 1;
        }
    }
    eprintln!(
        "xtask test: done in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    // The plain closing line CI reads: totals over every test binary.
    println!(
        "summary: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    if counts.failed > 0 || counts.passed == 0 {
        bail!("tests failed or none ran");
    }
    Ok(())
}

/// Installs the Debian packages that are missing (apt-get update first, only then).
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("  all {} present", packages.len());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; run as root, or `apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("  installing {}", missing.join(" "));
    run_ok(Command::new("apt-get").arg("update").arg("-q"))?;
    run_ok(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Every parser of outside data has a target: packets (the tracker, whole captures, the
/// probes' ring-buffer records), access-log lines, spool files and the config.
const FUZZ_TARGETS: &[&str] = &[
    "hop_tracker",
    "replay_capture",
    "probe_event",
    "access_log_line",
    "spool_frames",
    "config",
    "nginx_config",
];

/// Largest input the fuzzer builds: several MiB, so limits that only large inputs reach
/// (the reassembler's 1 MiB of pending data, a 4 MiB log chunk) are reached too.
const FUZZ_MAX_LEN: usize = 6 << 20;

/// Seeds for the text targets: real nginx and Caddy lines, and a config with every section.
const SEEDS: &[(&str, &str, &str)] = &[
    (
        "nginx_config",
        "site",
        "http {\n  log_format edgewatch escape=json '{\"rid\":\"$request_id\"}';\n  upstream gw { server 127.0.0.1:18789; }\n  map $http_upgrade $c { default upgrade; '' close; }\n  server {\n    listen 443 ssl; server_name gw.test;\n    location / {\n      proxy_pass http://gw; proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $c;\n      proxy_read_timeout 1h30m;\n      location /api/ { proxy_pass http://[::1]:18790/; }\n    }\n  }\n}\n",
    ),
    (
        "access_log_line",
        "nginx_json",
        r#"{"msec":"1764600000.123","request_id":"0123456789abcdef0123456789abcdef","remote_addr":"203.0.113.7","host":"gw.example","request_method":"GET","request_uri":"/ws?token=x","status":"101","request_time":"61.002","upstream_addr":"127.0.0.1:18789","upstream_connect_time":"0.000","upstream_header_time":"0.002","upstream_response_time":"61.002","body_bytes_sent":"0","http_upgrade":"websocket"}"#,
    ),
    (
        "access_log_line",
        "caddy_json",
        r#"{"level":"info","ts":1764600000.5,"logger":"http.log.access","msg":"handled request","request":{"remote_ip":"203.0.113.9","proto":"HTTP/1.1","method":"GET","host":"gw.example","uri":"/","headers":{"X-Request-Id":["f00"]}},"duration":0.01,"size":2,"status":200,"resp_headers":{}}"#,
    ),
    (
        "access_log_line",
        "combined",
        r#"203.0.113.7 - - [02/Dec/2026:07:00:00 +0000] "GET / HTTP/1.1" 200 2 "-" "curl/8" rid=abc rt=0.001 uct=0.000 uht=0.001 urt=0.001 ua=127.0.0.1:18789"#,
    ),
    (
        "config",
        "full",
        r#"[exposure]
watched_ports = [18789]
[hop]
ports = [18789]
max_connections = 100
[edge]
access_logs = ["/var/log/nginx/access.log"]
join_window = "30s"
[store]
enabled = false
[alerts]
cooldown = "5m"
[[alerts.webhooks]]
url = "https://hooks.example/x"
"#,
    ),
];

/// Fuzz runs this short (CI's smoke step) build the targets unoptimised.
const SMOKE_SECONDS: u32 = 30;

/// Runs each fuzz target for `seconds` (cargo-fuzz needs the nightly toolchain; it is
/// installed on first use). The replay target starts from the committed captures, the text
/// targets from [`SEEDS`].
fn fuzz(seconds: u32) -> Result<()> {
    let toolchains =
        output_of(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "the fuzz targets need a nightly toolchain (rustup toolchain list shows none); \
             this machine kind ships one, so its absence is a broken set-up"
        );
    }
    let have = output_of(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if !have.contains("cargo-fuzz") {
        eprintln!("  installing cargo-fuzz (about a minute)");
        run_ok(Command::new("cargo").args(["install", "--locked", "cargo-fuzz@0.13.2"]))?;
    }
    let root = workspace_root();
    for target in FUZZ_TARGETS {
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        for (t, name, text) in SEEDS {
            if t == target {
                std::fs::write(corpus.join(name), text)?;
            }
        }
        if *target == "replay_capture" {
            // The recordings only (their access logs live in a subdirectory).
            for entry in std::fs::read_dir(root.join("tests/fixtures/hop"))? {
                let path = entry?.path();
                if let (true, Some(name)) = (path.is_file(), path.file_name()) {
                    std::fs::copy(&path, corpus.join(name))?;
                }
            }
        }
        eprintln!("  fuzzing {target} for {seconds} s");
        run_ok(
            Command::new("cargo")
                .current_dir(root.join("sidecar"))
                .args(["+nightly", "fuzz", "run", target])
                // A short smoke run builds in the dev profile: a third of the build time
                // of an optimised, instrumented one, with overflow checks on; a longer run
                // is worth the optimised build.
                .args(if seconds <= SMOKE_SECONDS {
                    &["--dev"][..]
                } else {
                    &[][..]
                })
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-max_len={FUZZ_MAX_LEN}")),
        )
        .with_context(|| {
            format!("fuzz target {target} found a failure (see sidecar/fuzz/artifacts)")
        })?;
    }
    Ok(())
}

#[derive(Default)]
struct TestCounts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Parses libtest's `test result: ok. 35 passed; 0 failed; 0 ignored; ...` line.
fn parse_test_result(line: &str, into: &mut TestCounts) {
    let Some(rest) = line.split("test result:").nth(1) else {
        return;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().filter(|w| !w.ends_with('.'));
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => into.passed += n,
            "failed" => into.failed += n,
            "ignored" => into.ignored += n,
            _ => {}
        }
    }
}

/// Runs `cargo test`, echoing its output and adding up its result lines.
fn cargo_test() -> Result<TestCounts> {
    use std::io::{BufRead, BufReader};
    let mut child = cargo()
        // Every binary runs even after one fails: the summary counts them all.
        .args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "edgewatch-ebpf",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let mut counts = TestCounts::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            parse_test_result(&line, &mut counts);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() && counts.failed == 0 {
        // A build failure or a crashed test binary: count it so the summary cannot say 0.
        counts.failed += 1;
    }
    Ok(counts)
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Run { args } => run(args),
        Task::Test => test(),
        Task::BenchExposure { rounds } => bench::exposure(rounds),
        Task::BenchInstructions => {
            apt_install(&["valgrind"])?;
            bench::instructions().map(drop)
        }
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::Docs => docs::docs().map(|_| ()),
        Task::Image => {
            if !is_root() {
                bail!("podman builds and runs the image as root here: run `cargo xtask image` as root");
            }
            image::build().map(|_| ())
        }
        Task::Gateway => gateway::install().map(|dir| println!("{}", dir.display())),
        Task::VmTest(args) => {
            setup()?;
            if !is_root() {
                bail!("vm-test unpacks a kernel into /var/cache and installs qemu: run it as root");
            }
            let outcome = vm::vm_test(&args)?;
            println!(
                "vm-test: {} passed, {} failed on Linux {}",
                outcome.passed, outcome.failed, outcome.kernel
            );
            if outcome.failed > 0 {
                bail!("probes failed on Linux {}", outcome.kernel);
            }
            Ok(())
        }
        Task::Bench => {
            setup()?;
            apt_install(&["tshark", "wrk", "jq", "valgrind"])?;
            bench::all()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_add_up() {
        let mut c = TestCounts::default();
        parse_test_result(
            "test result: ok. 35 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            &mut c,
        );
        parse_test_result(
            "test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
            &mut c,
        );
        parse_test_result("test foo ... ok", &mut c);
        assert_eq!((c.passed, c.failed, c.ignored), (40, 1, 2));
    }
}
