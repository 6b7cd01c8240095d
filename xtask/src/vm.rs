//! `cargo xtask vm-test`: the probes on Debian 12's stock kernel, under qemu.
//!
//! 1. The kernel: the package `linux-image-cloud-amd64` depends on names the current 6.1 build
//!    (its name changes with every Debian update); it is fetched with `apt-get download`,
//!    unpacked with `dpkg-deb -x` (never installed) and cached per package version.
//! 2. An initramfs: busybox, the modules the probes load on demand (clsact and cls_bpf for TC
//!    before TCX, the sock_diag modules the inventory uses) with a `depmod` index, the
//!    `kernel_probes` test binary and the `edgewatch` binary it drives (debug info stripped),
//!    the host's glibc they link to, and an `/init` that mounts proc, sys, devtmpfs, bpffs and
//!    tracefs, brings `lo` up, runs each test and powers off.
//! 3. qemu-system-x86_64 with software emulation (`-accel tcg -cpu max`: the host's /dev/kvm
//!    cannot run a stock kernel); the serial console is read line by line, and the init's
//!    `EDGEWATCH-VM result TEST CODE` lines become the per-probe verdicts.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{apt_install, cargo, output_of, run_ok, workspace_root};

/// The metapackage that always depends on Debian 12's current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// Modules the probes need that Debian builds as modules: the clsact qdisc and cls_bpf (TC
/// before TCX), and sock_diag for the socket inventory.
const MODULES: &[&str] = &[
    "sch_ingress",
    "cls_bpf",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
];
/// The test binary that loads every probe and checks its events.
const TEST_BINARY: &str = "kernel_probes";
/// The tests, and the probe each one proves, for the report.
const PROBES: &[(&str, &str)] = &[
    (
        "exposure_probe_reports_a_wildcard_listener",
        "exposure: tracepoint sock:inet_sock_set_state (a wildcard listener)",
    ),
    (
        "hop_probes_see_an_http_request_and_a_websocket_upgrade",
        "hop: TC programs on lo (an HTTP request, a WebSocket upgrade, frames, close)",
    ),
    (
        "reset_tracepoints_fire_on_a_refused_connect_and_an_abort",
        "resets: tracepoints tcp:tcp_send_reset, tcp:tcp_receive_reset (refused connect, abort)",
    ),
    (
        "a_proxys_failed_connect_elsewhere_is_named_by_the_kernel",
        "failed connects: sock:inet_sock_set_state with the CONNECTING map (a proxy's connect to another port)",
    ),
    (
        "long_bodies_and_pure_acks_cost_no_ring_buffer_record",
        "hop follower: long HTTP bodies and pure ACKs cost no ring-buffer record (FOLLOWED, HOP_SKIPPED maps)",
    ),
];
/// Marker lines the guest's init prints.
const MARK: &str = "EDGEWATCH-VM";

/// What the guest run gave.
pub struct VmOutcome {
    pub kernel: String,
    pub passed: u64,
    pub failed: u64,
}

/// Options of `cargo xtask vm-test`.
#[derive(clap::Parser, Clone, Debug)]
pub struct VmArgs {
    /// Where fetched kernels are kept between runs.
    #[arg(long, default_value = "/var/cache/edgewatch/vm-kernels")]
    pub cache: PathBuf,
    /// Give up on the guest after this many seconds (software emulation is slow).
    #[arg(long, default_value_t = 1500)]
    pub timeout: u64,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
}

pub fn vm_test(args: &VmArgs) -> Result<VmOutcome> {
    let started = Instant::now();
    eprintln!("vm-test: qemu, busybox, cpio, kmod");
    apt_install(&[
        "qemu-system-x86",
        "busybox-static",
        "cpio",
        "kmod",
        "binutils",
    ])?;

    eprintln!("vm-test: Debian 12's kernel (through {KERNEL_META})");
    let kernel = fetch_kernel(&args.cache)?;
    eprintln!(
        "  {} {} at {}",
        kernel.package,
        kernel.version,
        kernel.root.display()
    );

    eprintln!("vm-test: building the test binaries");
    let bins = build_test_binaries()?;

    let work = workspace_root().join("target/vm-test");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    eprintln!("vm-test: initramfs");
    let initrd = build_initramfs(&work, &kernel, &bins)?;
    let size = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    eprintln!("  {} ({} MiB)", initrd.display(), size >> 20);

    eprintln!(
        "vm-test: booting {} under qemu (TCG, software emulation; a minute or more)",
        kernel.release
    );
    let log_path = work.join("console.log");
    let lines = boot(&kernel.vmlinuz, &initrd, args, &log_path)?;
    let outcome = report(&lines, &kernel.release, &log_path)?;
    eprintln!(
        "vm-test: {} passed, {} failed on Linux {} in {:.0}s (console: {})",
        outcome.passed,
        outcome.failed,
        outcome.kernel,
        started.elapsed().as_secs_f64(),
        log_path.display()
    );
    Ok(outcome)
}

/// An unpacked kernel package.
struct Kernel {
    package: String,
    version: String,
    /// `uname -r` of that kernel (its modules directory).
    release: String,
    root: PathBuf,
    vmlinuz: PathBuf,
}

/// The kernel package the metapackage depends on now: `linux-image-<release>`.
fn kernel_package() -> Result<String> {
    let depends = |refresh: bool| -> Result<Option<String>> {
        if refresh {
            run_ok(Command::new("apt-get").args(["update", "-q"]))?;
        }
        let text =
            output_of(Command::new("apt-cache").args(["depends", KERNEL_META])).unwrap_or_default();
        Ok(parse_depends(&text))
    };
    if let Some(p) = depends(false)? {
        return Ok(p);
    }
    depends(true)?.with_context(|| {
        format!("apt-cache depends {KERNEL_META} names no linux-image package (is this Debian 12?)")
    })
}

/// The first `Depends: linux-image-...` of `apt-cache depends` output.
fn parse_depends(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        (dep.starts_with("linux-image-") && dep != KERNEL_META).then(|| dep.to_owned())
    })
}

fn fetch_kernel(cache: &Path) -> Result<Kernel> {
    let package = kernel_package()?;
    let show = output_of(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))
        .with_context(|| format!("apt-cache show {package}"))?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("no Version in apt-cache show {package}"))?;
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .trim_end_matches("-unsigned")
        .to_owned();
    let root = cache.join(format!("{package}_{version}"));
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    let modules = root.join(format!("lib/modules/{release}"));
    if vmlinuz.is_file() && modules.is_dir() {
        eprintln!("  cached");
    } else {
        std::fs::create_dir_all(cache)
            .with_context(|| format!("creating the kernel cache {}", cache.display()))?;
        let download = cache.join(format!(".download-{}", std::process::id()));
        std::fs::create_dir_all(&download)?;
        // apt's sandbox user must be able to write there.
        let _ = Command::new("chmod").arg("777").arg(&download).status();
        eprintln!("  apt-get download {package} ({version})");
        run_ok(
            Command::new("apt-get")
                .args(["download", "-q", &package])
                .current_dir(&download),
        )?;
        let deb = std::fs::read_dir(&download)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        // Unpacked beside the cache entry, then renamed: an interrupted run leaves no
        // half-unpacked kernel under the final name.
        let staging = cache.join(format!(".unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&staging, &root)?;
        let _ = std::fs::remove_dir_all(&download);
        if !vmlinuz.is_file() {
            bail!("{package} has no {}", vmlinuz.display());
        }
    }
    Ok(Kernel {
        package,
        version,
        release,
        root,
        vmlinuz,
    })
}

/// The built `kernel_probes` test binary and the `edgewatch` binary it drives.
struct TestBinaries {
    tests: PathBuf,
    edgewatch: PathBuf,
}

fn build_test_binaries() -> Result<TestBinaries> {
    let out = cargo()
        .args([
            "test",
            "--package",
            "edgewatch",
            "--test",
            TEST_BINARY,
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the {TEST_BINARY} test binary failed");
    }
    let mut tests = None;
    let mut edgewatch = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let kinds = msg["target"]["kind"].to_string();
        if name == TEST_BINARY && kinds.contains("test") {
            tests = Some(PathBuf::from(exe));
        } else if name == "edgewatch" && kinds.contains("bin") {
            edgewatch = Some(PathBuf::from(exe));
        }
    }
    let edgewatch = edgewatch
        .or_else(|| Some(workspace_root().join("target/debug/edgewatch")))
        .filter(|p| p.is_file())
        .context("the edgewatch binary was not built")?;
    Ok(TestBinaries {
        tests: tests.context("cargo named no kernel_probes test executable")?,
        edgewatch,
    })
}

/// The init the guest runs: mounts, modules, each test on its own, result lines, power off.
fn init_script(release: &str, test_names: &[&str]) -> String {
    let tests = test_names.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "{MARK} kernel $(uname -r)"
[ "$(uname -r)" = "{release}" ] || echo "{MARK} warning: expected {release}"
for m in {modules}; do modprobe $m || echo "{MARK} module $m failed to load"; done
ip link set lo up
hostname edgewatch-vm
export EDGEWATCH_BIN=/bin/edgewatch EDGEWATCH_TEST_WAIT_SECS=300 RUST_BACKTRACE=1
for t in {tests}; do
  /bin/{TEST_BINARY} --exact $t --test-threads=1 --nocapture
  echo "{MARK} result $t $?"
done
echo "{MARK} done"
sync
poweroff -f
"#,
        modules = MODULES.join(" "),
    )
}

fn build_initramfs(work: &Path, kernel: &Kernel, bins: &TestBinaries) -> Result<PathBuf> {
    let root = work.join("root");
    for dir in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "root", "etc",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    // Test binaries without their debug info (hundreds of MiB less to unpack in the guest).
    for (from, name) in [(&bins.tests, TEST_BINARY), (&bins.edgewatch, "edgewatch")] {
        run_ok(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(from)
                .arg(root.join("bin").join(name)),
        )?;
    }
    // The host's shared libraries they link to, at the same paths.
    let mut libs = BTreeSet::new();
    for bin in [&bins.tests, &bins.edgewatch] {
        let text = output_of(Command::new("ldd").arg(bin))
            .with_context(|| format!("ldd {}", bin.display()))?;
        libs.extend(parse_ldd(&text));
    }
    for lib in &libs {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Follows symlinks: the guest gets the file under the name the loader asks for.
        std::fs::copy(lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    std::fs::write(root.join("etc/hostname"), "edgewatch-vm\n")?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;

    // Kernel modules with their dependencies, and depmod's index for modprobe.
    let src = kernel.root.join(format!("lib/modules/{}", kernel.release));
    let dst = root.join(format!("lib/modules/{}", kernel.release));
    let mut wanted: Vec<String> = MODULES.iter().map(|m| (*m).to_owned()).collect();
    let mut done = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if !done.insert(name.clone()) {
            continue;
        }
        let file = find_module(&src, &name)?
            .with_context(|| format!("module {name} is not in {}", src.display()))?;
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        let to = dst.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&file, &to)?;
        let deps = output_of(Command::new("modinfo").args(["-F", "depends"]).arg(&file))
            .unwrap_or_default();
        wanted.extend(
            deps.trim()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
        );
    }
    for meta in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if src.join(meta).is_file() {
            std::fs::copy(src.join(meta), dst.join(meta))?;
        }
    }
    run_ok(
        Command::new("depmod")
            .arg("-b")
            .arg(&root)
            .arg(&kernel.release),
    )?;

    let names: Vec<&str> = PROBES.iter().map(|(t, _)| *t).collect();
    let init = root.join("init");
    std::fs::write(&init, init_script(&kernel.release, &names))?;
    run_ok(Command::new("chmod").arg("755").arg(&init))?;

    // An uncompressed newc archive: nothing to decompress under emulation.
    let cpio = work.join("initramfs.cpio");
    let list = Command::new("find")
        .arg(".")
        .current_dir(&root)
        .output()
        .context("find")?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&cpio)?)
        .spawn()
        .context("cpio (Debian's cpio)")?;
    child
        .stdin
        .take()
        .context("cpio stdin")?
        .write_all(&list.stdout)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("cpio failed: {status}");
    }
    Ok(cpio)
}

/// The libraries in `ldd` output (absolute paths; the vDSO has none).
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The file of module `name` (`-` and `_` are the same to the kernel) under `dir`.
fn find_module(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let want = name.replace('-', "_");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            let stem = file
                .strip_suffix(".ko")
                .or_else(|| file.strip_suffix(".ko.xz"))
                .or_else(|| file.strip_suffix(".ko.zst"));
            if stem.is_some_and(|s| s.replace('-', "_") == want) {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

/// Boots the guest, echoing its console, and returns every line it printed.
fn boot(vmlinuz: &Path, initrd: &Path, args: &VmArgs, log: &Path) -> Result<Vec<String>> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
        .args(["-m", &args.memory.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian's qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut file = std::fs::File::create(log)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("  guest| {line}");
                writeln!(file, "{line}")?;
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the guest did not finish within {} s (console so far: {})",
                    args.timeout,
                    log.display()
                );
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    Ok(lines)
}

/// The per-probe verdicts from the console.
fn report(lines: &[String], expected_release: &str, log: &Path) -> Result<VmOutcome> {
    let kernel = lines
        .iter()
        .find_map(|l| l.split(&format!("{MARK} kernel ")).nth(1))
        .map(|k| k.trim().to_owned())
        .with_context(|| {
            format!(
                "the guest's init never ran (no `{MARK} kernel` line; console: {})",
                log.display()
            )
        })?;
    if kernel != expected_release {
        bail!("the guest runs {kernel}, not {expected_release}");
    }
    let finished = lines.iter().any(|l| l.trim() == format!("{MARK} done"));
    let mut outcome = VmOutcome {
        kernel: kernel.clone(),
        passed: 0,
        failed: 0,
    };
    eprintln!("vm-test: per probe, on Linux {kernel}");
    for (test, probe) in PROBES {
        // `EDGEWATCH-VM result NAME CODE`: the test binary's exit code for that test alone.
        let code = lines.iter().find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{MARK} result {test} "))
                .map(|c| c.trim().to_owned())
        });
        let verdict = match code.as_deref() {
            Some("0") => "pass".to_owned(),
            Some(c) => format!("FAIL (exit {c})"),
            None => "FAIL (never reported)".to_owned(),
        };
        if code.as_deref() == Some("0") {
            outcome.passed += 1;
        } else {
            outcome.failed += 1;
        }
        eprintln!("  {verdict} {probe}");
    }
    // The kernel line the sidecar printed (what it fell back to, the verifier's work).
    if let Some(json) = lines
        .iter()
        .find_map(|l| l.split("sidecar kernel line: ").nth(1))
    {
        match serde_json::from_str::<serde_json::Value>(json.trim()) {
            Ok(k) => {
                eprintln!("  sidecar: {}", k["message"].as_str().unwrap_or_default());
                if let Some(insns) = k["verified_insns"].as_object() {
                    let list: Vec<String> = insns.iter().map(|(p, n)| format!("{p} {n}")).collect();
                    eprintln!(
                        "  verifier instructions per program (limit 1000000): {}",
                        list.join(", ")
                    );
                }
            }
            Err(e) => eprintln!("  the sidecar's kernel line is not JSON ({e}): {json}"),
        }
    }
    if !finished {
        outcome.failed += 1;
        eprintln!("  FAIL the guest's tests never finished");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_from_apt_cache_depends() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
        assert_eq!(parse_depends("x\n  Depends: kmod\n"), None);
    }

    #[test]
    fn libraries_from_ldd() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f43)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f43)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn verdicts_from_the_console() {
        let release = "6.1.0-56-cloud-amd64";
        let mut lines = vec![
            format!("{MARK} kernel {release}"),
            format!("{MARK} result {} 0", PROBES[0].0),
            format!("{MARK} result {} 101", PROBES[1].0),
        ];
        let o = report(&lines, release, Path::new("x")).expect("report");
        // One failed, the rest never reported, and no `done`.
        let never = PROBES.len() as u64 - 2;
        assert_eq!((o.passed, o.failed), (1, 1 + never + 1));
        lines[2] = format!("{MARK} result {} 0", PROBES[1].0);
        for (name, _) in &PROBES[2..] {
            lines.push(format!("{MARK} result {name} 0"));
        }
        lines.push(format!("{MARK} done"));
        let o = report(&lines, release, Path::new("x")).expect("report");
        assert_eq!((o.passed, o.failed), (PROBES.len() as u64, 0));
        assert!(report(&lines, "6.2", Path::new("x")).is_err());
        assert!(report(&lines[1..], release, Path::new("x")).is_err());
    }
}
