//! Arbitrary bytes as a spool batch file: an error for a bad header, otherwise rows, skipped
//! corrupt stretches and a cut tail, all counted; never a panic, and never more rows than
//! frames could hold.
#![no_main]

use edgewatch::store::spool::parse_frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Also with a valid header in front, so the frame reader is reached.
    let mut framed = b"EWSPOOL1".to_vec();
    framed.extend_from_slice(&[b'a'; 32]);
    framed.extend_from_slice(data);
    for bytes in [data, &framed[..]] {
        if let Ok(f) = parse_frames(bytes) {
            assert!(f.valid + f.cut == bytes.len() as u64);
            assert!(f.rows.len() <= bytes.len() / 8);
        }
    }
});
