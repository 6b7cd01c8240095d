//! A followed log's checkpoint: where reading stood (the file's device and inode, its first
//! bytes' length and CRC, the offset after the last line handed out), kept in a file of the
//! state directory that is written in place, in two slots taken in turn, and read back at
//! start (see [`CheckpointFile`]).
use std::{
    fs::File,
    io::{Read, Write as _},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where reading stood: the file (device and inode, and how it begins) and the offset after
/// the last complete line handed out.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// 0 in checkpoints written before the device was recorded (then only the inode counts).
    #[serde(default)]
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
    /// How the file begins (none in checkpoints written before it was recorded).
    #[serde(default)]
    pub head: FileHead,
}

impl Checkpoint {
    /// Whether `meta` is of the file this names (by device and inode only: see
    /// [`FileHead`] for the rest).
    pub(super) fn names(&self, meta: &std::fs::Metadata) -> bool {
        self.inode == meta.ino() && (self.dev == 0 || self.dev == meta.dev())
    }

    /// Whether `file`, with metadata `meta`, is the file this names: its device and inode,
    /// and its first bytes as they were.
    pub(super) fn is(&self, file: &File, meta: &std::fs::Metadata) -> std::io::Result<bool> {
        Ok(self.names(meta) && self.head.matches(file)?)
    }
}

/// Bytes at the start of a followed file that tell it from a later file given the same inode
/// number (one deleted while edgewatch was stopped, its number reused by the next log), or
/// from itself emptied and written again: a log's first lines hold times and request ids.
pub const HEAD_BYTES: u32 = 1024;

/// How a followed file begins: the length and CRC-32 of its first bytes, up to [`HEAD_BYTES`]
/// and never past the lines already read (which a log never changes). Length 0: not known
/// (nothing read yet, or a checkpoint from before it was recorded), and then any file matches.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct FileHead {
    pub len: u32,
    pub crc: u32,
}

impl FileHead {
    /// The head of `file`'s first `len` bytes (at most [`HEAD_BYTES`]), or `None` when it is
    /// shorter.
    fn of(file: &File, len: u32) -> std::io::Result<Option<Self>> {
        let mut buf = [0u8; HEAD_BYTES as usize];
        let Some(bytes) = buf.get_mut(..len as usize) else {
            return Ok(None);
        };
        match file.read_exact_at(bytes, 0) {
            Ok(()) => Ok(Some(Self {
                len,
                crc: crc32fast::hash(bytes),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `file` begins this way (any file does when the head is not known, or longer
    /// than this version records: then only the device and inode tell).
    pub(super) fn matches(&self, file: &File) -> std::io::Result<bool> {
        if self.len == 0 || self.len > HEAD_BYTES {
            return Ok(true);
        }
        Ok(Self::of(file, self.len)? == Some(*self))
    }

    /// This head, grown to cover `file` up to `offset` (at most [`HEAD_BYTES`]) if it covers
    /// less: one read of at most that much while a file is young, none after.
    pub(super) fn grown(self, file: &File, offset: u64) -> std::io::Result<Self> {
        let want = offset.min(u64::from(HEAD_BYTES)) as u32;
        if want <= self.len {
            return Ok(self);
        }
        Ok(Self::of(file, want)?.unwrap_or(self))
    }
}

/// The checkpoint file of the log at `log` in the state directory `state_dir` (the log's path
/// with each `/` as `_`, then `.checkpoint`).
pub fn checkpoint_path(state_dir: &Path, log: &Path) -> PathBuf {
    let name = log.to_string_lossy().replace('/', "_");
    state_dir.join(format!("{name}.checkpoint"))
}

/// The checkpoint in the file at `path`, if there is a readable one (either format: the
/// slots of [`CheckpointFile`], or the JSON object earlier versions wrote).
pub fn read_checkpoint(path: &Path) -> Option<Checkpoint> {
    let bytes = read_head(&File::open(path).ok()?).ok()?;
    match newest_slot(&bytes) {
        Some((_, cp)) => Some(cp),
        None => serde_json::from_slice(&bytes).ok(),
    }
}

/// A checkpoint file's bytes, one more than the slots' file holds at most (so that a longer
/// file is told from it).
fn read_head(mut file: &File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    (&mut file)
        .take(CHECKPOINT_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The checkpoint file: two slots, each at the start of a 512-byte sector of its own, written
/// in turn in place (`pwrite`, then `fdatasync`), each with a sequence number and a CRC. The
/// newest valid slot is the checkpoint; a write torn by a crash spoils only the slot it was
/// writing, so the other one, the checkpoint before, is read instead (the same promise as a
/// temporary file renamed over the old, which earlier versions wrote at every commit: an
/// inode allocated, two fsyncs and the directory's, four times a second per log).
///
/// A slot: `EWCKPT02`, then the sequence, device, inode and offset (little-endian u64s) and
/// the CRC-32 of those 40 bytes (the slot as versions before the head wrote and read it, so
/// that they still read this one's), then the head's length and CRC (u32s) and the CRC-32 of
/// the slot's 52 bytes before it. A slot without a valid head part (one that a version before
/// wrote) has its head not known.
#[derive(Debug)]
pub(super) struct CheckpointFile {
    file: File,
    /// The sequence number of the newest slot written.
    seq: u64,
}

const SLOT_MAGIC: &[u8; 8] = b"EWCKPT02";
/// The part that versions before the head read.
const SLOT_MAIN: usize = 44;
const SLOT_LEN: usize = SLOT_MAIN + 12;
/// Where the second slot starts: a sector of its own.
const SLOT_STRIDE: usize = 512;
const CHECKPOINT_FILE_LEN: usize = SLOT_STRIDE + SLOT_LEN;

fn encode_slot(seq: u64, cp: Checkpoint) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[..8].copy_from_slice(SLOT_MAGIC);
    for (i, v) in [seq, cp.dev, cp.inode, cp.offset].into_iter().enumerate() {
        slot[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    let crc = crc32fast::hash(&slot[..40]);
    slot[40..44].copy_from_slice(&crc.to_le_bytes());
    slot[44..48].copy_from_slice(&cp.head.len.to_le_bytes());
    slot[48..52].copy_from_slice(&cp.head.crc.to_le_bytes());
    let crc = crc32fast::hash(&slot[..52]);
    slot[52..].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode_slot(bytes: &[u8]) -> Option<(u64, Checkpoint)> {
    let main = bytes.get(..SLOT_MAIN)?;
    if &main[..8] != SLOT_MAGIC || crc32fast::hash(&main[..40]).to_le_bytes() != main[40..] {
        return None;
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&main[8 + 8 * i..16 + 8 * i]);
        u64::from_le_bytes(w)
    };
    let half = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let head = match bytes.get(..SLOT_LEN) {
        Some(slot) if crc32fast::hash(&slot[..52]).to_le_bytes() == slot[52..] => FileHead {
            len: half(slot, 44),
            crc: half(slot, 48),
        },
        _ => FileHead::default(),
    };
    Some((
        word(0),
        Checkpoint {
            dev: word(1),
            inode: word(2),
            offset: word(3),
            head,
        },
    ))
}

/// The newest valid slot of a checkpoint file's bytes, with its sequence number.
fn newest_slot(bytes: &[u8]) -> Option<(u64, Checkpoint)> {
    let second = bytes.get(SLOT_STRIDE..).and_then(decode_slot);
    match (decode_slot(bytes), second) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl CheckpointFile {
    /// Opens the checkpoint file at `path` for writing in place, after its newest slot. A
    /// file that is missing, in an earlier format (the JSON object, or the slots without the
    /// head, a file of another length) or unreadable is replaced atomically
    /// (a temporary file with `first` in a slot, fsynced, renamed, the directory fsynced):
    /// then `first` is already written.
    pub(super) fn open(path: &Path, first: Checkpoint) -> std::io::Result<(Self, bool)> {
        if let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            let bytes = read_head(&file)?;
            if bytes.len() == CHECKPOINT_FILE_LEN {
                if let Some((seq, _)) = newest_slot(&bytes) {
                    return Ok((Self { file, seq }, false));
                }
            }
        }
        let mut image = vec![0u8; CHECKPOINT_FILE_LEN];
        image[..SLOT_LEN].copy_from_slice(&encode_slot(0, first));
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&image)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok((Self { file, seq: 0 }, true))
    }

    /// Whether the file is no longer in any directory (the state directory was cleared).
    pub(super) fn removed(&self) -> bool {
        self.file.metadata().map_or(true, |m| m.nlink() == 0)
    }

    /// Writes `cp` into the slot that does not hold the newest, and makes it durable.
    pub(super) fn write(&mut self, cp: Checkpoint) -> std::io::Result<()> {
        let seq = self.seq + 1;
        let at = (seq % 2) * SLOT_STRIDE as u64;
        self.file.write_all_at(&encode_slot(seq, cp), at)?;
        self.file.sync_data()?;
        self.seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::tail::{
        tests::{append, poll},
        StartAt, Tailer,
    };

    #[test]
    fn checkpoint_slots_alternate_in_place_and_a_torn_slot_leaves_the_one_before() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let cp = dir.path().join("cp");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        let mut positions = Vec::new();
        for line in ["1\n", "2\n", "3\n"] {
            append(&log, line);
            poll(&mut t);
            positions.push(t.position().expect("position"));
        }
        let inode = std::fs::metadata(&cp).expect("checkpoint").ino();
        let bytes = std::fs::read(&cp).expect("read");
        assert_eq!(bytes.len(), CHECKPOINT_FILE_LEN);
        // Three commits: sequence 0 and 2 in the first slot, 1 in the second.
        assert_eq!(decode_slot(&bytes), Some((2, positions[2])));
        assert_eq!(decode_slot(&bytes[SLOT_STRIDE..]), Some((1, positions[1])));
        assert_eq!(read_checkpoint(&cp), Some(positions[2]));
        // The head part damaged alone: the position holds, the head is not known.
        let mut damaged = bytes.clone();
        damaged[46] ^= 0xff;
        std::fs::write(&cp, &damaged).expect("damage");
        let read = read_checkpoint(&cp).expect("read");
        assert_eq!(
            (read.offset, read.head),
            (positions[2].offset, FileHead::default())
        );
        // A write torn in the newest slot: its CRC fails, the checkpoint before is read.
        let mut torn = bytes.clone();
        torn[30] ^= 0xff;
        std::fs::write(&cp, &torn).expect("tear");
        assert_eq!(read_checkpoint(&cp), Some(positions[1]));
        drop(t);
        // A restart resumes there (line 3 again) and writes after the newest valid slot
        // (sequence 2, then 3), in the same file (no new inode).
        let mut again = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut again), vec!["3"]);
        append(&log, "4\n");
        poll(&mut again);
        let bytes = std::fs::read(&cp).expect("read");
        assert_eq!(
            newest_slot(&bytes),
            Some((3, again.position().expect("pos")))
        );
        assert_eq!(std::fs::metadata(&cp).expect("checkpoint").ino(), inode);
        // The file removed while it is open (the state directory cleared): the next commit
        // writes a new one.
        std::fs::remove_file(&cp).expect("remove");
        append(&log, "5\n");
        assert_eq!(poll(&mut again), vec!["5"]);
        assert_eq!(read_checkpoint(&cp), again.position());
    }

    #[test]
    fn a_checkpoint_of_the_earlier_format_is_resumed_and_replaced_atomically() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let cp = dir.path().join("cp");
        append(&log, "1\n2\n");
        let meta = std::fs::metadata(&log).expect("log");
        // What earlier versions wrote: the JSON object, after line 1.
        std::fs::write(
            &cp,
            format!(
                r#"{{"dev":{},"inode":{},"offset":2}}"#,
                meta.dev(),
                meta.ino()
            ),
        )
        .expect("old checkpoint");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["2"], "resumed after line 1");
        let bytes = std::fs::read(&cp).expect("read");
        assert_eq!(bytes.len(), CHECKPOINT_FILE_LEN, "replaced by the slots");
        assert_eq!(newest_slot(&bytes), Some((0, t.position().expect("pos"))));
        assert!(!cp.with_extension("tmp").exists());
        // Neither format (a file something else wrote): no checkpoint, and the first
        // commit replaces it.
        drop(t);
        std::fs::write(&cp, b"not a checkpoint").expect("garbage");
        assert_eq!(read_checkpoint(&cp), None);
        let mut again = Tailer::new(&log, Some(&cp), StartAt::End);
        assert!(poll(&mut again).is_empty(), "started at the end");
        append(&log, "3\n");
        assert_eq!(poll(&mut again), vec!["3"]);
        assert_eq!(read_checkpoint(&cp), again.position());
    }

    #[test]
    fn a_file_that_begins_otherwise_under_the_checkpoint_s_inode_is_another_file() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let cp = dir.path().join("cp");
        append(&log, "old 1\nold 2\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["old 1", "old 2"]);
        let head = read_checkpoint(&cp).expect("checkpoint").head;
        assert_eq!(head.len, 12, "the head covers what was read");
        assert_eq!(head.crc, crc32fast::hash(b"old 1\nold 2\n"));
        drop(t);
        // While stopped, the inode the checkpoint names holds another log, longer than the
        // offset (here the file written again in place; a new log given a deleted one's inode
        // number is the same to the follower): read from its start, the loss said and
        // counted. By device, inode and offset alone it resumed at byte 12 ("new 3").
        let inode = std::fs::metadata(&log).expect("log").ino();
        std::fs::write(&log, "new 1\nnew 2\nnew 3\n").expect("rewrite");
        assert_eq!(std::fs::metadata(&log).expect("log").ino(), inode);
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(poll(&mut t), vec!["new 1", "new 2", "new 3"]);
        assert_eq!(t.lost_rotations, 1);
        // The head grows with what is read, up to HEAD_BYTES, and moves with the checkpoint.
        let long = format!("{}\n", "x".repeat(2 * HEAD_BYTES as usize));
        append(&log, &long);
        poll(&mut t);
        let cp_now = read_checkpoint(&cp).expect("checkpoint");
        let bytes = std::fs::read(&log).expect("log");
        assert_eq!(cp_now.head.len, HEAD_BYTES);
        assert_eq!(
            cp_now.head.crc,
            crc32fast::hash(&bytes[..HEAD_BYTES as usize])
        );
        // The same file, as it began: resumed where it was.
        drop(t);
        append(&log, "new 4\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["new 4"]);
        assert_eq!(t.lost_rotations, 0);
        // Rotated while stopped, the old file removed before the proxy creates the new log
        // (the order in which ext4 may hand the new file the old one's inode number): read
        // from its start, the loss counted, whether or not the number was reused.
        drop(t);
        append(&log, "new 5\n");
        std::fs::rename(&log, dir.path().join("access.log.1")).expect("rotate");
        std::fs::remove_file(dir.path().join("access.log.1")).expect("remove");
        append(&log, "next 1\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(poll(&mut t), vec!["next 1"]);
        assert_eq!(t.lost_rotations, 1);
    }

    #[test]
    fn slots_are_read_both_ways_across_the_version_before_the_head() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let cp = dir.path().join("cp");
        append(&log, "1\n2\n");
        let meta = std::fs::metadata(&log).expect("log");
        // The slot the version before wrote, after line 1 (sequence 5, in the second slot):
        // this one's without the head part, which that version never read.
        let with_head = Checkpoint {
            dev: meta.dev(),
            inode: meta.ino(),
            offset: 2,
            head: FileHead { len: 2, crc: 9 },
        };
        let slot = encode_slot(5, with_head);
        let mut image = vec![0u8; SLOT_STRIDE];
        image.extend_from_slice(&slot[..SLOT_MAIN]);
        std::fs::write(&cp, &image).expect("old checkpoint");
        let old = read_checkpoint(&cp).expect("read");
        assert_eq!((old.offset, old.head), (2, FileHead::default()));
        let mut t = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["2"], "resumed after line 1");
        let bytes = std::fs::read(&cp).expect("read");
        assert_eq!(bytes.len(), CHECKPOINT_FILE_LEN, "replaced by this format");
        let (seq, now) = newest_slot(&bytes).expect("slot");
        assert_eq!((now.offset, now.head.len), (4, 4));
        // What the version before reads of it (its magic, the CRC of its 40 bytes, the
        // offset in the last of them): the same position.
        let at = (seq % 2) as usize * SLOT_STRIDE;
        let main = &bytes[at..at + SLOT_MAIN];
        assert_eq!(&main[..8], b"EWCKPT02");
        assert_eq!(crc32fast::hash(&main[..40]).to_le_bytes(), main[40..44]);
        assert_eq!(main[32..40], 4u64.to_le_bytes());
    }
}
