//! The edge proxy's configuration: read it, resolve its routes, and say what in it will break
//! the Gateway before a user finds out (pure; the sidecar finds and reads the files).
//!
//! [`nginx`] parses nginx's language with positions and follows `include`; [`routes`] turns
//! the tree into the locations that proxy, with inheritance applied; [`caddy`] reads Caddy's
//! JSON into the same routes; [`findings`] checks them
//! against what listens on this machine and the Gateway's port, each finding citing
//! `file:line` and the runbook's first move (rule family `config.*`).
pub mod caddy;
pub mod config;
pub mod findings;
pub mod nginx;
pub mod routes;

pub use findings::{findings, Facts, Finding};
pub use nginx::Source;
pub use routes::Route;
