//! `edgewatch replay`: a packet capture through the same hop tracker as the live probes.
//! `capture` reads pcap/pcapng, `decode` turns packets into TCP segments (both pure over their
//! input); [`replay`] runs them through the pipeline's hop tracker and reports what it
//! skipped.
pub mod capture;
pub mod decode;

use std::collections::BTreeMap;

use crate::{
    hop::{tracker::TrackerLimits, HopRecord},
    pipeline::{offline, Mode, Pipeline, Settings, Sink},
};
use capture::CaptureError;

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

/// [`replay`] with the tracker's count limits of the config (`[hop]`): the capture through
/// the one pipeline (`crate::pipeline`), its hop records handed to `on_record`.
pub fn replay_limited<R: std::io::Read + Send>(
    input: R,
    upstream_ports: &[u16],
    limits: TrackerLimits,
    on_record: impl FnMut(&HopRecord),
    progress: impl FnMut(u64),
) -> Result<ReplaySummary, CaptureError> {
    struct Records<F>(F);
    impl<F: FnMut(&HopRecord)> Sink for Records<F> {
        fn hop(&mut self, r: &HopRecord) {
            (self.0)(r);
        }
    }
    let settings = Settings {
        hop_ports: upstream_ports.to_vec(),
        hop_limits: limits,
        ..Settings::default()
    };
    let mut pipeline = Pipeline::new(&settings, Mode::Offline);
    offline::run(
        input,
        Vec::new(),
        &mut pipeline,
        &mut Records(on_record),
        progress,
    )
}
