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
pub mod snapshot;
pub mod sockdiag;
pub mod tail;
