//! `cargo xtask docs`: shell completions and man pages generated from edgewatch's clap
//! definition (by its hidden `generate-docs` command), and the README's usage block.
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{cargo, run_ok, workspace_root};

/// The line above the README's usage block.
pub const MARKER: &str = "<!-- usage: written by `cargo xtask docs`";

/// Builds edgewatch, writes `target/docs/{completions,man}` and `usage.txt`, and puts the
/// usage text into the README. Returns the docs directory.
pub fn docs() -> Result<PathBuf> {
    crate::setup()?;
    run_ok(cargo().args(["build", "--package", "edgewatch"]))?;
    let dir = workspace_root().join("target/docs");
    let _ = std::fs::remove_dir_all(&dir);
    run_ok(
        std::process::Command::new(workspace_root().join("target/debug/edgewatch"))
            .arg("generate-docs")
            .arg(&dir),
    )?;
    let usage = std::fs::read_to_string(dir.join("usage.txt")).context("reading usage.txt")?;
    let readme = workspace_root().join("README.md");
    let text = std::fs::read_to_string(&readme).context("reading README.md")?;
    let updated = splice(&text, &usage)?;
    if updated != text {
        std::fs::write(&readme, updated).context("writing README.md")?;
        eprintln!("xtask: README.md usage block updated");
    }
    eprintln!("xtask: completions and man pages in {}", dir.display());
    Ok(dir)
}

/// The README with the fenced block after [`MARKER`] replaced by `usage`.
pub fn splice(readme: &str, usage: &str) -> Result<String> {
    let at = readme
        .find(MARKER)
        .with_context(|| format!("README.md has no line starting {MARKER:?}"))?;
    let open = readme[at..]
        .find("```text\n")
        .map(|i| at + i + "```text\n".len())
        .context("no ```text block after the usage marker")?;
    let close = readme[open..]
        .find("```\n")
        .map(|i| open + i)
        .context("the usage block is not closed")?;
    Ok(format!("{}{}{}", &readme[..open], usage, &readme[close..]))
}
