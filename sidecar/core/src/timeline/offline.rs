//! A capture (and access-log records) through the one pipeline, as timeline rows: what
//! `edgewatch timeline --pcap` shows, the same records `replay` prints. Pure over its inputs.
use super::Rows;
use crate::{
    alerts::Alert,
    edge::{join::JoinedRequest, EdgeRecord},
    hop::HopRecord,
    pipeline::{offline, Mode, Pipeline, Settings, Sink},
    replay::{capture::CaptureError, ReplaySummary},
    store::rows::{self, AlertRow, AnyRow, EdgeRow, RequestRow},
};

impl Rows {
    /// Files a row under its table.
    pub fn push(&mut self, row: AnyRow) {
        match row {
            AnyRow::ExposureChange(r) => self.exposure_changes.push(r),
            AnyRow::Exposure(_) | AnyRow::TailMark(_) => {}
            AnyRow::Conn(r) => self.conns.push(r),
            AnyRow::Http(r) => self.http.push(r),
            AnyRow::Ws(r) => self.ws.push(r),
            AnyRow::Edge(r) => self.edge.push(r),
            AnyRow::Request(r) => self.requests.push(r),
            AnyRow::Alert(r) => self.alerts.push(r),
        }
    }
}

/// The pipeline's products as timeline rows.
struct RowSink {
    rows: Rows,
}

const NODE: &str = "offline";

impl Sink for RowSink {
    fn hop(&mut self, r: &HopRecord) {
        self.rows.push(rows::hop_row(NODE, r));
    }
    fn edge(&mut self, r: &EdgeRecord) {
        self.rows.push(AnyRow::Edge(EdgeRow::new(NODE, r)));
    }
    fn request(&mut self, r: &JoinedRequest) {
        self.rows.push(AnyRow::Request(RequestRow::new(NODE, r)));
    }
    fn alert(&mut self, a: &Alert) {
        self.rows.push(AnyRow::Alert(AlertRow::new(NODE, a)));
    }
}

/// Runs `capture` and `edges` through a pipeline of `settings` (offline) into rows; the
/// incidents still open at the end are kept as they stood then (`Rows::open_incidents`).
pub fn rows<R: std::io::Read + Send>(
    capture: R,
    edges: Vec<EdgeRecord>,
    settings: &Settings,
) -> Result<(Rows, ReplaySummary), CaptureError> {
    let mut pipeline = Pipeline::new(settings, Mode::Offline);
    let mut sink = RowSink {
        rows: Rows::default(),
    };
    let summary = offline::run(capture, edges, &mut pipeline, &mut sink, |_| {})?;
    sink.rows.open_incidents = pipeline
        .incidents(summary.end_ns)
        .iter()
        .map(|a| AlertRow::new(NODE, a))
        .collect();
    Ok((sink.rows, summary))
}
