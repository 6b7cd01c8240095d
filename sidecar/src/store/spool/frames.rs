//! Reading batch files back: frames found by length and CRC-32, corruption skipped and
//! counted (pure but for [`read_frames`]'s read of the file).
//!
//! A frame's payload starts with its kind: [`FRAME_BLOCK`], a Native block of the file's
//! table (what is sent), [`FRAME_INDEX`], the byte length of each column of the block before
//! it (so the blocks are merged without walking their strings), or [`FRAME_MARK`], a tail mark
//! (postcard; never sent). Versions before the index skip its frames as damage (counted) and
//! keep every row.
//!
//! The current format ([`MAGIC`]) names its batch in the header (the run and the sequence
//! number) and seeds every frame's CRC with the header's, and each write ends with an end
//! mark (a frame header of length 0): a file reused for a later batch (see `Spool`'s
//! recycling) may hold an earlier batch's frames after its own, and those are neither valid
//! here nor scanned. Files of the formats before are still read, so an upgrade sends what the
//! old version spooled: [`MAGIC_V2`] (frames of Native blocks, CRCs unseeded) and
//! [`MAGIC_V1`] (one postcard row per frame).
use std::{fs::File, io::Read as _, ops::Range, path::Path};

use super::{io, BufferPool, SpoolError, FRAME_HEADER, HEADER, MAGIC, MAX_FRAME, RUN_ID};
use crate::store::rows::{block_rows, merge_blocks_into, read_index, AnyRow, Columns, TailMarkRow};

/// The first spool format: every frame one postcard [`AnyRow`].
pub const MAGIC_V1: &[u8; 8] = b"EWSPOOL1";
/// The second: frames of Native blocks with unseeded CRCs, the header the magic and the run.
pub const MAGIC_V2: &[u8; 8] = b"EWSPOOL2";
/// The header's length in the formats before the current one (magic and run id).
const HEADER_V2: usize = 8 + RUN_ID;
/// A frame's header in the formats before the current one: length and CRC.
const FRAME_HEADER_V2: usize = 8;

/// The CRC seed of a current-format file: the CRC-32 of its header (magic, run, sequence).
pub fn seed_of(header: &[u8]) -> u32 {
    crc32fast::hash(header)
}

/// A frame's CRC: seeded with the file's header in the current format, plain before it.
pub fn frame_crc(seed: Option<u32>, payload: &[u8]) -> u32 {
    match seed {
        Some(seed) => {
            let mut h = crc32fast::Hasher::new_with_initial(seed);
            h.update(payload);
            h.finalize()
        }
        None => crc32fast::hash(payload),
    }
}

/// A current-format frame's header: its payload's length, the payload's CRC and a check of
/// the length (a CRC-32 of it seeded with the seed's complement). The check makes a frame
/// findable in O(1) a byte: a scan past damage tries every offset, and bytes that are no
/// frame header (an earlier batch's, in a reused file) fail it there, where a length that
/// happened to fit sent the scan through a CRC of up to 16 MiB at that offset (a 1 MiB
/// stretch of an earlier batch took 53 ms, growing with the square of its size).
pub fn frame_head(seed: u32, len: u32, crc: u32) -> [u8; FRAME_HEADER] {
    let mut check = crc32fast::Hasher::new_with_initial(!seed);
    check.update(&len.to_le_bytes());
    let mut h = [0u8; FRAME_HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h[8..].copy_from_slice(&check.finalize().to_le_bytes());
    h
}

/// A frame header's length: the current format's (with its seed) or the one before.
fn frame_header_len(seed: Option<u32>) -> usize {
    if seed.is_some() {
        FRAME_HEADER
    } else {
        FRAME_HEADER_V2
    }
}

/// The end mark that follows the last frame of every write: a frame header of length 0 (no
/// frame has it) with the seed's complement as its CRC, so an earlier batch's end mark is no
/// end of this one.
pub fn end_mark(seed: u32) -> [u8; FRAME_HEADER] {
    frame_head(seed, 0, !seed)
}
/// A frame holding one Native block.
pub const FRAME_BLOCK: u8 = 1;
/// A frame holding one tail mark.
pub const FRAME_MARK: u8 = 2;
/// A frame holding the index of the block frame just before it
/// (`Columns::write_index`).
pub const FRAME_INDEX: u8 = 3;

/// A batch file as read back.
#[derive(Debug, Default)]
pub struct Frames {
    pub run: String,
    /// Where the Native blocks are in the file's bytes, in order.
    pub blocks: Vec<Range<usize>>,
    /// Each block's index (its columns' byte lengths), where the file has one.
    pub indexes: Vec<Option<Vec<u64>>>,
    /// Rows of the table in the batch (tail marks are no rows).
    pub rows: u64,
    /// Tail marks, in order.
    pub marks: Vec<TailMarkRow>,
    /// Rows of a first-format file, to be written as a block before they are sent.
    pub legacy: Vec<AnyRow>,
    /// Bytes up to the end of the last whole, valid frame.
    pub valid: u64,
    /// Bytes after it (a frame cut short by a crash, or corruption).
    pub cut: u64,
    /// Bytes from the end mark on: what a reused file held before (not this batch's, not
    /// damage). `valid + cut + stale` is the file's length.
    pub stale: u64,
    /// Corrupt stretches skipped between valid frames, and their bytes.
    pub corrupt_regions: u64,
    pub corrupt_bytes: u64,
}

impl Frames {
    /// The batch's rows as a Native stream, in order: the file's blocks merged into one (no
    /// row decoded: their columns are concatenated), or the rows of a first-format file as one
    /// block. Blocks that cannot be merged (none that this version wrote) go as they are. The
    /// block is written into a buffer from `pool`, and the file's bytes go back to it.
    pub fn into_body_pooled(
        self,
        table: usize,
        data: Vec<u8>,
        pool: &BufferPool,
    ) -> Vec<bytes::Bytes> {
        if !self.legacy.is_empty() {
            let mut cols = Columns::new(table);
            for r in &self.legacy {
                cols.push(r);
            }
            let mut block = pool.take(0);
            cols.write_block(&mut block);
            pool.give(data);
            return vec![block.into()];
        }
        if self.blocks.len() > 1 {
            let parts: Vec<&[u8]> = self.blocks.iter().map(|r| &data[r.clone()]).collect();
            let sizes: Vec<Option<&[u64]>> = self.indexes.iter().map(Option::as_deref).collect();
            // The merged block is the blocks' columns behind one header.
            let mut one = pool.take(parts.iter().map(|p| p.len()).sum());
            if merge_blocks_into(table, &parts, &sizes, &mut one) {
                pool.give(data);
                return vec![one.into()];
            }
            pool.give(one);
        }
        let data = bytes::Bytes::from(data);
        self.blocks.into_iter().map(|r| data.slice(r)).collect()
    }
}

/// Reads the batch file of table `table` (an index into the spool's tables).
pub fn read_frames(path: &Path, table: usize) -> Result<(Frames, Vec<u8>), SpoolError> {
    read_frames_into(path, table, Vec::new())
}

/// [`read_frames`] into `data` (cleared first; its capacity reused).
pub fn read_frames_into(
    path: &Path,
    table: usize,
    mut data: Vec<u8>,
) -> Result<(Frames, Vec<u8>), SpoolError> {
    data.clear();
    let mut file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if data.capacity() < len {
        // A new buffer rather than a grown one (see `BufferPool::take`). Fallible: a file
        // too large for memory is an error, not an abort.
        let mut fresh = Vec::new();
        fresh
            .try_reserve_exact(len)
            .map_err(|e| io(path)(std::io::Error::new(std::io::ErrorKind::OutOfMemory, e)))?;
        data = fresh;
    }
    file.read_to_end(&mut data).map_err(io(path))?;
    // The batch the name says: a current-format header naming another is an earlier batch's
    // content under this name (a power cut before the reused file's header reached the disk).
    let seq = path
        .file_name()
        .and_then(|n| super::parse_name(&n.to_string_lossy()).map(|(seq, _, _)| seq));
    let frames = parse_frames_of(&data, table, seq).map_err(|reason| SpoolError::Corrupt {
        path: path.display().to_string(),
        reason: reason.to_owned(),
    })?;
    Ok((frames, data))
}

/// One valid frame's content.
enum Frame {
    Block { rows: u64, range: Range<usize> },
    Index { rows: u64, sizes: Vec<u64> },
    Mark(TailMarkRow),
    Row(Box<AnyRow>),
}

/// Parses the bytes of a batch file of table `table` (pure: the fuzz target's entry point).
/// An error only for a missing or bad header; anything wrong after it is skipped or cut, and
/// counted.
pub fn parse_frames(data: &[u8], table: usize) -> Result<Frames, &'static str> {
    parse_frames_of(data, table, None)
}

/// [`parse_frames`] of the batch numbered `seq` (where known): a current-format header that
/// names another batch is an error.
pub fn parse_frames_of(
    data: &[u8],
    table: usize,
    seq: Option<u64>,
) -> Result<Frames, &'static str> {
    let (v1, header) = match data.get(..MAGIC.len()) {
        Some(m) if m == MAGIC => (false, HEADER),
        Some(m) if m == MAGIC_V2 => (false, HEADER_V2),
        Some(m) if m == MAGIC_V1 => (true, HEADER_V2),
        _ => return Err("not a spool batch (bad header)"),
    };
    let hex = |r: Range<usize>| {
        data.get(r)
            .and_then(|r| std::str::from_utf8(r).ok())
            .filter(|r| r.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let run = hex(MAGIC.len()..HEADER_V2).ok_or("bad run id")?.to_owned();
    let seed = if header == HEADER {
        let named = hex(HEADER_V2..HEADER)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or("bad batch number")?;
        if seq.is_some_and(|seq| seq != named) {
            return Err("the header names another batch (an earlier batch's content)");
        }
        Some(seed_of(&data[..HEADER]))
    } else {
        None
    };
    let mut f = Frames {
        run,
        ..Frames::default()
    };
    let is_end =
        |at: usize| seed.is_some_and(|s| data.get(at..at + FRAME_HEADER) == Some(&end_mark(s)[..]));
    let frame_header = frame_header_len(seed);
    let mut at = header;
    let mut valid = header;
    // The rows of the block frame just read (an index frame must follow its block at once).
    let mut last_block = None;
    while data.len() - at >= frame_header {
        if is_end(at) {
            // What follows is an earlier batch's, or nothing. A stretch skipped to reach the
            // mark is counted as damage (above), like one skipped to reach a frame.
            f.valid = at as u64;
            f.stale = (data.len() - at) as u64;
            return Ok(f);
        }
        if let Some((frame, next)) = frame_at(data, at, table, v1, seed) {
            let block_before = last_block.take();
            match frame {
                Frame::Block { rows, range } => {
                    f.rows += rows;
                    f.blocks.push(range);
                    f.indexes.push(None);
                    last_block = Some(rows);
                }
                Frame::Index { rows, sizes } => {
                    // Another block's index (the one before was damaged) is not used: the
                    // block is then merged by walking its values.
                    if block_before == Some(rows) {
                        if let Some(slot) = f.indexes.last_mut() {
                            *slot = Some(sizes);
                        }
                    }
                }
                Frame::Mark(m) => f.marks.push(m),
                Frame::Row(r) => match *r {
                    AnyRow::TailMark(m) => f.marks.push(m),
                    r => {
                        f.rows += 1;
                        f.legacy.push(r);
                    }
                },
            }
            at = next;
            valid = at;
            continue;
        }
        // Frames are findable: a length, a CRC-32 of the payload and a payload that decodes.
        // A bad stretch in the middle (a bit flip, a torn write another run left) is skipped
        // to the next valid frame and counted; with none after it, it is a torn tail.
        // The scan stops at an end mark too (what is after it is an earlier batch's).
        match (at + 1..=data.len() - frame_header)
            .find(|p| is_end(*p) || frame_at(data, *p, table, v1, seed).is_some())
        {
            Some(p) => {
                f.corrupt_regions += 1;
                f.corrupt_bytes += (p - at) as u64;
                at = p;
                // An index after damage may be of a block lost in it.
                last_block = None;
            }
            None => break,
        }
    }
    f.valid = valid as u64;
    f.cut = (data.len() - valid) as u64;
    Ok(f)
}

/// A tail mark frame's payload (after its kind): the mark's serde form (postcard), then its
/// file head's length and CRC (postcard), which versions before the head leave unread.
pub fn encode_mark(m: &TailMarkRow) -> Result<Vec<u8>, postcard::Error> {
    let bytes = postcard::to_allocvec(m)?;
    postcard::to_extend(&(m.head_len, m.head_crc), bytes)
}

/// The mark in a mark frame's payload (after its kind); without the head (a mark an earlier
/// version wrote), its head is not known (0).
fn decode_mark(payload: &[u8]) -> Option<TailMarkRow> {
    let (mut m, rest) = postcard::take_from_bytes::<TailMarkRow>(payload).ok()?;
    if !rest.is_empty() {
        (m.head_len, m.head_crc) = postcard::from_bytes(rest).ok()?;
    }
    Some(m)
}

/// The frame at `at` and where the next one starts, if it is whole and valid.
fn frame_at(
    data: &[u8],
    at: usize,
    table: usize,
    v1: bool,
    seed: Option<u32>,
) -> Option<(Frame, usize)> {
    let frame_header = frame_header_len(seed);
    let head = data.get(at..at + frame_header)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    if seed.is_some_and(|seed| head[..] != frame_head(seed, len, crc)[..]) {
        return None;
    }
    let start = at + frame_header;
    let end = start + len as usize;
    let payload = data.get(start..end)?;
    if frame_crc(seed, payload) != crc {
        return None;
    }
    let frame = if v1 {
        let row = postcard::from_bytes::<AnyRow>(payload).ok()?;
        // A row of another table is no row of this batch.
        (row.table_index() == table).then(|| Frame::Row(Box::new(row)))?
    } else {
        match payload[0] {
            FRAME_BLOCK => Frame::Block {
                rows: block_rows(table, &payload[1..])?,
                range: start + 1..end,
            },
            FRAME_MARK => Frame::Mark(decode_mark(&payload[1..])?),
            FRAME_INDEX => {
                let (rows, sizes) = read_index(&payload[1..])?;
                Frame::Index { rows, sizes }
            }
            _ => return None,
        }
    };
    Some((frame, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{rows::EDGE_TABLE, spool::RUN_ID};

    #[test]
    fn a_tail_mark_s_file_head_rides_after_the_form_earlier_versions_read() {
        let mark = TailMarkRow {
            path: "/var/log/access.log".into(),
            dev: 1,
            inode: 2,
            offset: 300,
            head_len: 300,
            head_crc: 7,
        };
        let payload = encode_mark(&mark).expect("encode");
        // What a version before the head reads of it: the mark without its head.
        let before: TailMarkRow = postcard::from_bytes(&payload).expect("old");
        assert_eq!((before.offset, before.head_len), (300, 0));
        // A mark that version wrote (its form alone): read with the head not known.
        let old = postcard::to_allocvec(&mark).expect("old form");
        assert!(old.len() < payload.len());
        let frame = |payload: &[u8]| {
            let mut data = MAGIC_V2.to_vec();
            data.extend_from_slice(&[b'a'; RUN_ID]);
            let mut body = vec![FRAME_MARK];
            body.extend_from_slice(payload);
            data.extend_from_slice(&(body.len() as u32).to_le_bytes());
            data.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            data.extend_from_slice(&body);
            parse_frames(&data, EDGE_TABLE).expect("frames").marks
        };
        assert_eq!(frame(&payload), vec![mark.clone()]);
        let read_old = frame(&old);
        assert_eq!(read_old.len(), 1);
        assert_eq!(
            (
                read_old[0].offset,
                read_old[0].head_len,
                read_old[0].head_crc
            ),
            (300, 0, 0)
        );
    }
}
