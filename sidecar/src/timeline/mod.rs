//! Post-incident timelines: built and rendered by the core (`edgewatch_core::timeline`);
//! [`source`] reads their rows from ClickHouse, or runs a capture through the pipeline.
pub use edgewatch_core::timeline::*;
pub mod source;
