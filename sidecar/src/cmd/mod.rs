//! The commands, one file each: drivers around the core's pipeline (I/O, clocks, sinks).
pub mod check;
pub mod exposure;
mod heartbeat;
pub mod proxies;
mod proxy_watch;
pub mod replay;
pub mod run;
pub mod timeline;
mod watch;
