//! What the core's integration tests share.
use std::net::SocketAddr;

use edgewatch_core::hop::{Segment, TcpFlags};

/// A TCP segment of the hop as the tracker takes it (`flags`: the TCP header's flag byte).
pub fn segment(
    ts: u64,
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Segment<'_> {
    Segment {
        ts_ns: ts,
        src: from,
        dst: to,
        seq,
        ack,
        flags: TcpFlags::from_byte(flags),
        payload_len: payload.len() as u32,
        payload,
        followed: false,
    }
}
