//! `edgewatch replay`: a packet capture through the same hop tracker as the live probes.
//! `capture` reads pcap/pcapng, `decode` turns packets into TCP segments (both pure over their
//! input); [`replay`] wires them to the tracker and reports what it skipped.
pub mod capture;
pub mod decode;

use std::collections::BTreeMap;

use crate::hop::{
    tracker::{Tracker, TrackerLimits},
    HopRecord,
};
use capture::{read_capture, CaptureError, CaptureSummary};
use decode::decode;

/// What a replay saw and skipped, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplaySummary {
    pub packets: u64,
    pub tcp_segments: u64,
    pub hop_segments: u64,
    pub records: u64,
    /// Packets skipped, by reason (`not_tcp` is not a problem; the others are drops).
    pub skipped: BTreeMap<&'static str, u64>,
    pub gap_bytes: u64,
    pub duplicate_bytes: u64,
    pub truncated_at: Option<u64>,
    pub unknown_interface: u64,
    /// What the tracker gave up at its count limits (`hop::tracker::TrackerLimits`).
    pub evicted_connections: u64,
    pub dropped_exchanges: u64,
    pub dropped_close_frames: u64,
}

/// Replays a capture: every record goes to `on_record` in the order the tracker finished it.
pub fn replay<R: std::io::Read + Send>(
    input: R,
    upstream_ports: &[u16],
    on_record: impl FnMut(&HopRecord),
    progress: impl FnMut(u64),
) -> Result<ReplaySummary, CaptureError> {
    replay_limited(
        input,
        upstream_ports,
        TrackerLimits::default(),
        on_record,
        progress,
    )
}

/// [`replay`] with the tracker's count limits of the config (`[hop]`).
pub fn replay_limited<R: std::io::Read + Send>(
    input: R,
    upstream_ports: &[u16],
    limits: TrackerLimits,
    mut on_record: impl FnMut(&HopRecord),
    progress: impl FnMut(u64),
) -> Result<ReplaySummary, CaptureError> {
    let mut tracker = Tracker::new(upstream_ports).with_limits(limits);
    let mut summary = ReplaySummary::default();
    let mut out = Vec::new();
    let capture: CaptureSummary = read_capture(
        input,
        |packet| match decode(packet.linktype, packet.ts_ns, packet.data) {
            Ok(segment) => {
                summary.tcp_segments += 1;
                tracker.segment(&segment, &mut out);
                for r in out.drain(..) {
                    on_record(&r);
                }
            }
            Err(skip) => *summary.skipped.entry(skip.as_str()).or_default() += 1,
        },
        progress,
    )?;
    tracker.finish(&mut out);
    for r in out.drain(..) {
        on_record(&r);
    }
    summary.packets = capture.packets;
    summary.truncated_at = capture.truncated_at;
    summary.unknown_interface = capture.unknown_interface;
    summary.hop_segments = tracker.stats.segments - tracker.stats.ignored;
    summary.records = tracker.stats.records;
    summary.gap_bytes = tracker.stats.gap_bytes;
    summary.duplicate_bytes = tracker.stats.duplicate_bytes;
    summary.evicted_connections = tracker.stats.evicted_connections;
    summary.dropped_exchanges = tracker.stats.dropped_exchanges;
    summary.dropped_close_frames = tracker.stats.dropped_close_frames;
    Ok(summary)
}
