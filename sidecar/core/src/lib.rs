//! edgewatch's pure core: everything that turns records into meaning, with no I/O.
//!
//! The [`pipeline`] owns the hop tracker ([`hop`]), the join with the proxy's access logs
//! ([`edge`]), the exposure inventory and its drift policy ([`exposure`]) and the alert rules
//! ([`alerts`]); [`proxy`] reads the edge proxy's configuration into routes and findings;
//! [`replay`] reads captures, [`timeline`] builds and renders post-incident
//! timelines from [`store::rows`], and [`probe::events`] decodes the kernel's records. Each
//! component owns its config section. The sidecar crate (`edgewatch`) holds the drivers, the
//! probes, the sources and the sinks; this crate has no async runtime, kernel or network
//! dependency, so purity is a property of the build, not a convention.
pub mod alerts;
pub mod edge;
pub mod exposure;
pub mod hop;
pub mod pipeline;
pub mod probe;
pub mod proxy;
pub mod replay;
pub mod store;
pub mod time;
pub mod timeline;
pub mod validate;

#[cfg(test)]
mod test_rng;
