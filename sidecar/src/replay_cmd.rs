//! The `edgewatch replay` command: file, progress bar and summary around `edgewatch::replay`.
use std::{fs::File, io::BufReader, path::Path, process::ExitCode};

use anyhow::Context as _;
use edgewatch::{
    output::{Format, Printer},
    replay::replay,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn run(capture: &Path, ports: &[u16], format: Format) -> anyhow::Result<ExitCode> {
    let file = File::open(capture).with_context(|| format!("opening {}", capture.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Drawn only when stderr is a terminal; hidden in pipes and tests.
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut printer = Printer::stdout(format);
    let summary = replay(
        BufReader::with_capacity(1 << 20, file),
        ports,
        |record| printer.hop(record),
        |done| bar.set_position(done),
    )
    .with_context(|| format!("replaying {}", capture.display()))?;
    bar.finish_and_clear();
    let drops: u64 = summary
        .skipped
        .iter()
        .filter(|(k, _)| **k != "not_tcp")
        .map(|(_, v)| v)
        .sum();
    printer.status(
        "replay_summary",
        &format!(
            "{} packets, {} TCP segments, {} on the hop, {} records; skipped {:?}; {} bytes unseen{}",
            summary.packets,
            summary.tcp_segments,
            summary.hop_segments,
            summary.records,
            summary.skipped,
            summary.gap_bytes,
            summary
                .truncated_at
                .map(|at| format!("; the capture is truncated at byte {at}"))
                .unwrap_or_default()
        ),
        &summary,
    );
    if summary.truncated_at.is_some() || drops > 0 {
        tracing::warn!(
            truncated_at = ?summary.truncated_at,
            dropped_packets = drops,
            "some of the capture could not be used"
        );
    }
    Ok(ExitCode::SUCCESS)
}
