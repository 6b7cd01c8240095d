//! The kernel probes: loading and attaching them (`loader`), the tracepoint layouts they
//! rely on (`tracefs`), and decoding what they send (`events`).
pub mod events;
pub mod loader;
pub mod tracefs;
