//! `cargo xtask image`: the container image, built here the way a user without internet access
//! builds it. Nothing comes from a container registry (none is reachable): the base image is
//! made from Debian's archive with mmdebstrap and imported as `localhost/debian:bookworm-slim`,
//! the binary is built by cargo on this Debian 12 host, and podman builds the Dockerfile's
//! `prebuilt` target from a staged context (`--pull=never`), fetching only Debian packages.
//!
//! The image's name, size and the podman flags this machine needs are written to
//! `target/image/image.json`, which `tests/container_image.rs` reads.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{apt_install, cargo, output_of, run_ok, workspace_root};

pub const IMAGE: &str = "localhost/edgewatch:latest";
const BASE: &str = "localhost/debian:bookworm-slim";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Flags this machine needs for podman to run anything, besides the ones users pass.
///
/// - Hybrid cgroups (v1 controllers plus a v2 `unified` mount, as inside a Docker container):
///   crun refuses them, runc does not.
/// - Without CAP_SYS_RESOURCE (again inside a container), podman's default rlimits (raised
///   to the maximum) cannot be set: ask for what the process already has.
///
/// On an ordinary host both lists are empty.
pub fn machine_flags() -> Vec<String> {
    let mut flags = Vec::new();
    if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
        flags.extend(["--runtime".to_owned(), "runc".to_owned()]);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    if cap_eff & (1 << CAP_SYS_RESOURCE) == 0 {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let hard = |name: &str| {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l[name.len()..].split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        // nofile can be kept as it is; nproc must be lowered (runc sets it after joining the
        // user's accounting, where the equal value is refused).
        if let Some(n) = hard("Max open files") {
            flags.push(format!("--ulimit=nofile={n}:{n}"));
        }
        flags.push("--ulimit=nproc=4096:4096".to_owned());
    }
    flags
}

fn podman(args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(args);
    cmd
}

/// Builds the image; returns its size in bytes.
pub fn build() -> Result<u64> {
    crate::setup()?;
    apt_install(&["podman", "mmdebstrap", "runc", "uidmap"])?;
    let started = std::time::Instant::now();
    let dir = workspace_root().join("target/image");
    std::fs::create_dir_all(&dir).context("creating target/image")?;
    // A manifest only for an image this run built.
    let _ = std::fs::remove_file(dir.join("image.json"));
    let flags = machine_flags();
    if !flags.is_empty() {
        eprintln!("xtask: podman on this machine needs {}", flags.join(" "));
    }

    // 1. The base image, once.
    let exists = podman(&["image", "exists", BASE]).status()?.success();
    if !exists {
        eprintln!("xtask: making {BASE} from Debian's archive (mmdebstrap, once)");
        let tar = dir.join("base.tar");
        run_ok(
            Command::new("mmdebstrap")
                .args([
                    "--variant=minbase",
                    "--quiet",
                    // Merged /usr by mmdebstrap's own hook, not the usrmerge package (which
                    // pulls in all of perl).
                    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                    // What debian:bookworm-slim leaves out.
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--dpkgopt=path-exclude=/usr/share/info/*",
                    "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                    "bookworm",
                ])
                .arg(&tar)
                .arg(MIRROR),
        )?;
        run_ok(
            podman(&["import", "--quiet", "--change", "CMD [\"bash\"]"])
                .arg(&tar)
                .arg(BASE),
        )?;
        let _ = std::fs::remove_file(&tar);
    }

    // 2. The binary and its docs, staged as the whole build context.
    eprintln!("xtask: building edgewatch (release)");
    run_ok(cargo().args(["build", "--release", "--package", "edgewatch"]))?;
    let context = dir.join("context");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context).context("creating the build context")?;
    let bin = workspace_root().join("target/release/edgewatch");
    std::fs::copy(&bin, context.join("edgewatch")).context("staging the binary")?;
    run_ok(
        Command::new(&bin)
            .arg("generate-docs")
            .arg(context.join("docs")),
    )?;

    // 3. The Dockerfile's `prebuilt` target: Debian packages only, no registry.
    let dockerfile: PathBuf = workspace_root().join("sidecar/deploy/Dockerfile");
    let mut build = podman(&["build", "--quiet", "--format", "docker", "--pull=never"]);
    build
        .args(&flags)
        .args(["--network", "host", "--target", "prebuilt", "--tag", IMAGE])
        .arg("--file")
        .arg(&dockerfile)
        .arg(&context);
    run_ok(&mut build)?;
    let size: u64 = output_of(&mut podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        IMAGE,
    ]))
    .and_then(|s| s.trim().parse().ok())
    .context("reading the image's size")?;
    let binary = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    let manifest = serde_json::json!({
        "image": IMAGE,
        "size_bytes": size,
        "binary_bytes": binary,
        "podman_flags": flags,
    });
    std::fs::write(dir.join("image.json"), format!("{manifest:#}\n"))
        .context("writing target/image/image.json")?;
    if size == 0 {
        bail!("podman reports an empty image");
    }
    eprintln!(
        "xtask: image {IMAGE}: {:.1} MB ({:.1} MB of it the binary), built in {:.0}s",
        size as f64 / 1e6,
        binary as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(size)
}
