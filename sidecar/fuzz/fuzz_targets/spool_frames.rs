//! Arbitrary bytes as a spool batch file: an error for a bad header, otherwise blocks, marks,
//! skipped corrupt stretches, a cut tail and what follows an end mark, all counted; never a
//! panic, never more blocks than frames could hold, and every block inside the file.
#![no_main]

use edgewatch::store::spool::parse_frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Also with a valid header in front (each format), so the frame reader is reached.
    let mut framed = Vec::new();
    for magic in [b"EWSPOOL3", b"EWSPOOL2", b"EWSPOOL1"] {
        let mut f = magic.to_vec();
        f.extend_from_slice(&[b'a'; 32]);
        if magic == b"EWSPOOL3" {
            f.extend_from_slice(b"000000000000002a");
        }
        f.extend_from_slice(data);
        framed.push(f);
    }
    for bytes in [data, &framed[0][..], &framed[1][..], &framed[2][..]] {
        // The table comes from the file name; any index is handled (the last one too).
        for table in [3, 5, 7] {
            if let Ok(f) = parse_frames(bytes, table) {
                assert!(f.valid + f.cut + f.stale == bytes.len() as u64);
                assert!(f.blocks.len() + f.legacy.len() + f.marks.len() <= bytes.len() / 8);
                assert!(f.blocks.iter().all(|r| r.start < r.end && r.end <= bytes.len()));
            }
        }
    }
});
