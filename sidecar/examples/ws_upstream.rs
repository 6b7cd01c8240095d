//! The test WebSocket upstream as a process of its own, so a test can kill it mid-session
//! (`tests/hop_replay.rs`): `ws_upstream` prints `listening PORT` and serves until killed.
//! It is the same server the in-process tests use (tests/support/hop.rs).
#![allow(
    clippy::unwrap_used,
    reason = "a test helper: a failure is a panic with a message"
)]

#[path = "../../tests/support/hop.rs"]
mod hop;

use std::{path::PathBuf, time::Duration};

// What the shared harness module expects from its parent.
fn wait_limit() -> Duration {
    Duration::from_secs(30)
}
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
// (This process starts no Caddy: any free port does.)
fn free_listen_port() -> u16 {
    free_port()
}
fn edgewatch_bin() -> PathBuf {
    PathBuf::from("edgewatch")
}
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = (wait_limit, free_port, edgewatch_bin, json_lines);
    let addr = hop::start_upstream().await;
    println!("listening {}", addr.port());
    std::future::pending::<()>().await;
}
