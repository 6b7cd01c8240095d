//! The offline drivers' shared half: a capture of the hop and the access-log records, merged
//! by time into one [`Pipeline`], as the live sidecar sees them (a log line reaches it after
//! the packets that came before it, and before the ones after). Pure over its inputs: the
//! capture is any reader, the records are already parsed.
use super::{Mode, Pipeline, Settings, Sink};
use crate::{
    edge::EdgeRecord,
    hop::{tracker::TrackerLimits, HopRecord},
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
    run(
        input,
        Vec::new(),
        &mut pipeline,
        &mut Records(on_record),
        progress,
    )
}

#[cfg(test)]
mod tests {
    use crate::{
        edge::{join::JoinedRequest, EdgeFormat, EdgeRecord},
        hop::HopRecord,
        pipeline::{Mode, Pipeline, Settings, Sink},
    };

    /// What a driver is handed, in order: `L` a line alone, `R` a request alone, `J` a line
    /// with its request.
    #[derive(Default)]
    struct Calls {
        order: String,
        joined: Vec<JoinedRequest>,
    }

    impl Sink for Calls {
        fn edge(&mut self, _: &EdgeRecord) {
            self.order.push('L');
        }
        fn request(&mut self, _: &JoinedRequest) {
            self.order.push('R');
        }
        fn edge_joined(&mut self, r: &JoinedRequest) {
            self.order.push('J');
            self.joined.push(r.clone());
        }
    }

    fn line(rid: &str, end_ts_ns: u64) -> EdgeRecord {
        EdgeRecord {
            format: EdgeFormat::NginxJson,
            end_ts_ns,
            request_id: Some(rid.into()),
            client: Some("203.0.113.7".into()),
            host: Some("gw.example".into()),
            method: Some("GET".into()),
            path: Some("/".into()),
            status: 200,
            request_time_ns: Some(1_000_000),
            upstream_addr: Some("127.0.0.1:44379".into()),
            no_upstream: false,
            upstream_connect_ns: None,
            upstream_header_ns: None,
            upstream_response_ns: None,
            bytes_sent: Some(1),
            upgrade: None,
        }
    }

    /// A line whose exchange waited for it, complete, reaches the sink once, with its request
    /// (`edge_joined`, never `edge`); a line that comes first waits, reaches it alone, and its
    /// request after; a line no exchange ever matches goes alone, then its request, alone, at
    /// the end.
    #[test]
    fn a_line_joined_as_it_comes_goes_to_the_sink_with_its_request() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/hop/keepalive.44379.pcap"
        );
        let bytes = std::fs::read(path).expect("fixture");
        let mut exchanges = Vec::new();
        super::replay(
            &bytes[..],
            &[44379],
            |r| {
                if let HopRecord::Http(x) = r {
                    exchanges.push(x.clone());
                }
            },
            |_| {},
        )
        .expect("replay");
        assert_eq!(exchanges.len(), 3);
        let rid = |i: usize| exchanges[i].request_id.clone().expect("an id").to_string();
        let done = |i: usize| exchanges[i].request_ts_ns + exchanges[i].total_ns.expect("total");
        let edges = vec![
            // Logged before its request was even sent: it waits for the exchange.
            line(&rid(0), exchanges[0].request_ts_ns - 1),
            line(&rid(1), done(1) + 1),
            line(&rid(2), done(2) + 1),
            line("no-such-exchange", done(2) + 2),
        ];
        let settings = Settings {
            hop_ports: vec![44379],
            join: true,
            join_window_ns: 10_000_000_000,
            ..Settings::default()
        };
        let mut pipeline = Pipeline::new(&settings, Mode::Offline);
        let mut calls = Calls::default();
        super::run(&bytes[..], edges, &mut pipeline, &mut calls, |_| {}).expect("run");
        assert_eq!(calls.order, "LRJJLR");
        for (r, i) in calls.joined.iter().zip([1, 2]) {
            let (e, h) = (
                r.edge.as_ref().expect("line"),
                r.hop.as_ref().expect("exchange"),
            );
            assert_eq!(e.request_id.as_deref(), Some(rid(i).as_str()));
            assert_eq!(h.request_id, exchanges[i].request_id);
        }
    }

    #[test]
    fn the_recorded_idle_timeout_incident_fires_in_replay() {
        // The committed recording of nginx with proxy_read_timeout 2s closing an idle session.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/hop/idle_timeout.35057.pcap"
        );
        let bytes = std::fs::read(path).expect("fixture");
        let mut records = Vec::new();
        super::replay(&bytes[..], &[35057], |r| records.push(r.clone()), |_| {}).expect("replay");
        let mut cfg = crate::alerts::AlertsConfig::default();
        cfg.timeout_disconnect.min_sessions = 1;
        let mut e = crate::alerts::Engine::new(cfg);
        let mut out = Vec::new();
        for r in &records {
            e.hop(r, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        let a = &out[0];
        assert_eq!(a.rule, "hop.timeout_disconnect");
        let idle = a.evidence["detail"]["observed_idle_s"]
            .as_f64()
            .expect("idle");
        assert!(
            (1.5..3.0).contains(&idle),
            "observed {idle} s, nginx was set to 2 s"
        );
        assert!(a.summary.contains("about 2 s"), "{}", a.summary);
    }
}
