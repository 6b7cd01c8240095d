//! edgewatch: an eBPF sidecar that watches a WebSocket gateway's exposure and traffic.
//!
//! This crate holds the drivers (`cmd`: live, replay, timeline, check), the probes
//! (`probe`), the sources (`sources`: sock_diag, NAT rules, access logs) and the sinks
//! (`output`, `store`, `webhook`, `metrics`). Everything that gives records their meaning is
//! in the pure core crate, `edgewatch_core`, re-exported here under its own module names.
//! See ARCHITECTURE.md for the data flow.
pub use edgewatch_core::{alerts, edge, exposure, hop, pipeline, proxy, replay};

pub mod allocator;
pub mod check;
pub mod cmd;
pub mod config;
pub mod metrics;
pub mod metrics_config;
pub mod outbound;
pub mod output;
pub mod probe;
pub mod sources;
pub mod store;
pub mod throttle;
pub mod timeline;
pub mod webhook;
