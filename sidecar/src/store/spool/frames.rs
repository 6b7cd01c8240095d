//! Reading batch files back: frames found by length and CRC-32, corruption skipped and
//! counted (pure but for [`read_frames`]'s read of the file).
use std::{fs::File, io::Read as _, path::Path};

use super::{io, SpoolError, FRAME_HEADER, HEADER, MAGIC, MAX_FRAME};
use crate::store::rows::AnyRow;

/// A batch file as read back.
pub struct Frames {
    pub run: String,
    pub rows: Vec<AnyRow>,
    /// Bytes up to the end of the last whole, valid frame.
    pub valid: u64,
    /// Bytes after it (a frame cut short by a crash, or corruption).
    pub cut: u64,
    /// Corrupt stretches skipped between valid frames, and their bytes.
    pub corrupt_regions: u64,
    pub corrupt_bytes: u64,
}

/// Reads a batch file.
pub fn read_frames(path: &Path) -> Result<Frames, SpoolError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(path))?;
    parse_frames(&data).map_err(|reason| SpoolError::Corrupt {
        path: path.display().to_string(),
        reason: reason.to_owned(),
    })
}

/// Parses a batch file's bytes (pure: the fuzz target's entry point). An error only for a
/// missing or bad header; anything wrong after it is skipped or cut, and counted.
pub fn parse_frames(data: &[u8]) -> Result<Frames, &'static str> {
    if data.len() < HEADER || &data[..MAGIC.len()] != MAGIC {
        return Err("not a spool batch (bad header)");
    }
    let run = std::str::from_utf8(&data[MAGIC.len()..HEADER])
        .ok()
        .filter(|r| r.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("bad run id")?
        .to_owned();
    let mut rows = Vec::new();
    let mut at = HEADER;
    let mut valid = HEADER;
    let (mut corrupt_regions, mut corrupt_bytes) = (0u64, 0u64);
    while data.len() - at >= FRAME_HEADER {
        if let Some((row, next)) = frame_at(data, at) {
            rows.push(row);
            at = next;
            valid = at;
            continue;
        }
        // Frames are findable: a length, a CRC-32 of the payload and a payload that decodes.
        // A bad stretch in the middle (a bit flip, a torn write another run left) is skipped
        // to the next valid frame and counted; with none after it, it is a torn tail.
        match (at + 1..=data.len() - FRAME_HEADER).find(|p| frame_at(data, *p).is_some()) {
            Some(p) => {
                corrupt_regions += 1;
                corrupt_bytes += (p - at) as u64;
                at = p;
            }
            None => break,
        }
    }
    Ok(Frames {
        run,
        rows,
        valid: valid as u64,
        cut: (data.len() - valid) as u64,
        corrupt_regions,
        corrupt_bytes,
    })
}

/// The frame at `at` and where the next one starts, if it is whole and valid.
fn frame_at(data: &[u8], at: usize) -> Option<(AnyRow, usize)> {
    let head = data.get(at..at + FRAME_HEADER)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    let start = at + FRAME_HEADER;
    let payload = data.get(start..start + len as usize)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let row = postcard::from_bytes::<AnyRow>(payload).ok()?;
    Some((row, start + len as usize))
}
