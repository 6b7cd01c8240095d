//! I/O at the edges: what the kernel, /proc and the netfilter tools say, turned into the
//! pure model's types.
mod caddy_adapt;
pub mod checkpoint;
mod in_root;
pub mod logfile;
pub mod nat;
pub mod nat_config;
pub mod procs;
pub mod proxies;
mod rotated;
/// An access log opened as the tailer opens it (see [`rotated::open_log`]).
pub use rotated::open_log;
pub mod snapshot;
pub mod sockdiag;
pub mod tail;
