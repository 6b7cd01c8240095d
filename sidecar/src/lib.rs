//! edgewatch: an eBPF sidecar that watches a WebSocket gateway's exposure and traffic.
//!
//! The pure core (`config`, `exposure`, `probe::events`, `probe::tracefs`) takes data in and
//! gives data out; the edges (`probe::loader`, `sources`, `metrics`, `output`, `live`) do the
//! I/O. See ARCHITECTURE.md for the data flow.
pub mod alerts;
pub mod check;
pub mod config;
pub mod edge;
pub mod exposure;
pub mod hop;
pub mod http;
pub mod live;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod probe;
pub mod replay;
pub mod sources;
pub mod store;
pub mod timeline;
