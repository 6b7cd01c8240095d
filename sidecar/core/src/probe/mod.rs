//! What the kernel probes write into their ring buffers, decoded.
pub mod events;
