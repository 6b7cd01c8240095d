//! Arbitrary segments into the hop tracker: the HTTP and WebSocket parsers, the reassembler
//! and the tracker must never panic, whatever the bytes, flags and sequence numbers.
#![no_main]

use std::net::SocketAddr;

use edgewatch::hop::{tracker::Tracker, Segment, TcpFlags};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let client = SocketAddr::from(([127, 0, 0, 1], 40000));
    let server = SocketAddr::from(([127, 0, 0, 1], 18789));
    let mut tracker = Tracker::new(&[18789]).with_kernel_hints();
    let mut out = Vec::new();
    // Each record: 1 byte direction+flags, 2 bytes seq delta, 1 byte length, then payload.
    let mut seq = [1000u32, 5000u32];
    let mut rest = data;
    let mut ts = 0u64;
    while rest.len() >= 4 {
        let (head, tail) = rest.split_at(4);
        let from_server = head[0] & 0x80 != 0;
        let flags = TcpFlags::from_byte(head[0] & 0x1f);
        let delta = u16::from_le_bytes([head[1], head[2]]) as u32;
        let len = (head[3] as usize).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        let side = usize::from(from_server);
        // Mostly in order, sometimes jumping around.
        let s = if delta > 60000 { seq[side].wrapping_sub(delta) } else { seq[side] };
        let (src, dst) = if from_server { (server, client) } else { (client, server) };
        ts += 1000;
        let seg = Segment {
            ts_ns: ts,
            src,
            dst,
            seq: s,
            ack: seq[1 - side],
            flags,
            payload_len: len as u32 + u32::from(head[1] & 3),
            payload,
            followed: head[2] & 1 == 1,
        };
        tracker.segment(&seg, &mut out);
        seq[side] = s.wrapping_add(len as u32);
        let _ = tracker.take_hints();
        rest = tail;
    }
    tracker.finish(&mut out);
});
