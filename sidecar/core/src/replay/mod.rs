//! `edgewatch replay`: a packet capture through the same hop tracker as the live probes.
//! `capture` reads pcap/pcapng, `decode` turns packets into TCP segments (both pure over their
//! input), and [`ReplaySummary`] says what a replay saw and skipped. Running a capture
//! through the tracker is the pipeline's (`crate::pipeline::offline`).
pub mod capture;
pub mod decode;
mod read_ahead;

use std::collections::BTreeMap;

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
    /// The time the capture (and its access logs) ended at: the last packet or log record.
    pub end_ns: u64,
    pub unknown_interface: u64,
    /// What the tracker gave up at its count limits (`hop::tracker::TrackerLimits`).
    pub evicted_connections: u64,
    pub dropped_exchanges: u64,
    pub dropped_close_frames: u64,
}
