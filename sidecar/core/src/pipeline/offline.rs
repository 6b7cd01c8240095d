//! The offline drivers' shared half: a capture of the hop and the access-log records, merged
//! by time into one [`Pipeline`], as the live sidecar sees them (a log line reaches it after
//! the packets that came before it, and before the ones after). Pure over its inputs: the
//! capture is any reader, the records are already parsed.
use super::{Pipeline, Sink};
use crate::{
    edge::EdgeRecord,
    replay::{
        capture::{read_capture, CaptureError},
        decode::decode,
        ReplaySummary,
    },
};

/// Runs `capture` and `edges` through `pipeline` in time order, to its end: every packet is
/// one batch at its own time, each access-log record goes in once the capture's time reaches
/// its end time, and the pipeline is finished at the last time seen. `progress` gets the
/// bytes read so far.
pub fn run<R: std::io::Read + Send>(
    capture: R,
    mut edges: Vec<EdgeRecord>,
    pipeline: &mut Pipeline,
    sink: &mut impl Sink,
    progress: impl FnMut(u64),
) -> Result<ReplaySummary, CaptureError> {
    // Stable: records of the same time keep the order of the log.
    edges.sort_by_key(|e| e.end_ts_ns);
    let mut edges = edges.into_iter().peekable();
    let mut summary = ReplaySummary::default();
    let mut now = 0u64;
    let read = read_capture(
        capture,
        |packet| {
            while let Some(e) = edges.next_if(|e| e.end_ts_ns <= packet.ts_ns) {
                now = now.max(e.end_ts_ns);
                pipeline.edge_record(e, now, sink);
                pipeline.tick(now, sink);
            }
            match decode(packet.linktype, packet.ts_ns, packet.data) {
                Ok(segment) => {
                    summary.tcp_segments += 1;
                    // A capture can hold packets slightly out of order: time never goes back.
                    now = now.max(packet.ts_ns);
                    pipeline.segment(&segment);
                    pipeline.end_batch(now, sink);
                    pipeline.tick(now, sink);
                }
                Err(skip) => *summary.skipped.entry(skip.as_str()).or_default() += 1,
            }
        },
        progress,
    );
    // A capture that is not one at all is an error; a truncated one keeps what came before.
    let read = read?;
    for e in edges {
        now = now.max(e.end_ts_ns);
        pipeline.edge_record(e, now, sink);
        pipeline.tick(now, sink);
    }
    pipeline.finish(now, sink);
    let stats = pipeline.hop_stats();
    summary.end_ns = now;
    summary.packets = read.packets;
    summary.truncated_at = read.truncated_at;
    summary.unknown_interface = read.unknown_interface;
    summary.hop_segments = stats.segments - stats.ignored;
    summary.records = stats.records;
    summary.gap_bytes = stats.gap_bytes;
    summary.duplicate_bytes = stats.duplicate_bytes;
    summary.evicted_connections = stats.evicted_connections;
    summary.dropped_exchanges = stats.dropped_exchanges;
    summary.dropped_close_frames = stats.dropped_close_frames;
    Ok(summary)
}
