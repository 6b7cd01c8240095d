//! Builds the eBPF object (ebpf/edgewatch-ebpf) with Debian's rustc-web through aya-build, so
//! one `cargo build` builds user space and kernel programs. `cargo xtask setup` installs the
//! toolchain this needs (../shared/toolchain.md); without it this script says so.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "edgewatch-ebpf")
        .ok_or_else(|| anyhow!("edgewatch-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("edgewatch-ebpf manifest has no parent directory"))?
        .as_str();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("debian-web"),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask setup` installs Debian's rustc-web, \
         the `debian-web` rustup link and bpf-linker",
    )
}
