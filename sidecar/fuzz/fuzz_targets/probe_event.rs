//! Arbitrary bytes as a ring-buffer record from the kernel probes: a decoded event (and, for
//! a hop packet, its segments) or a `DecodeError`, never a panic.
#![no_main]

use edgewatch::probe::events::{decode, ProbeEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ProbeEvent::Hop(packet)) = decode(data) {
        packet.each_segment(0, |_| {});
    }
});
