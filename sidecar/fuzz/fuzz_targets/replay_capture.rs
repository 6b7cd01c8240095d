//! Arbitrary bytes as a capture file: the pcap/pcapng reader and the packet decoder must give
//! an error or counted drops, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgewatch::pipeline::offline::replay(data, &[18789], |_| {}, |_| {});
});
