//! A followed log's checkpoint: where reading stood (the file's device and inode, the offset
//! after the last line handed out), kept in a file of the state directory that is written in
//! place, in two slots taken in turn, and read back at start (see [`CheckpointFile`]).
use std::{
    fs::File,
    io::{Read, Write as _},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where reading stood: the file (device and inode) and the offset after the last complete
/// line handed out.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// 0 in checkpoints written before the device was recorded (then only the inode counts).
    #[serde(default)]
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
}

impl Checkpoint {
    pub(super) fn names(&self, meta: &std::fs::Metadata) -> bool {
        self.inode == meta.ino() && (self.dev == 0 || self.dev == meta.dev())
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
/// A slot: `EWCKPT02`, then the sequence, device, inode and offset (little-endian u64s), then
/// the CRC-32 of those 40 bytes.
#[derive(Debug)]
pub(super) struct CheckpointFile {
    file: File,
    /// The sequence number of the newest slot written.
    seq: u64,
}

const SLOT_MAGIC: &[u8; 8] = b"EWCKPT02";
const SLOT_LEN: usize = 44;
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
    slot[40..].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode_slot(bytes: &[u8]) -> Option<(u64, Checkpoint)> {
    let slot = bytes.get(..SLOT_LEN)?;
    if &slot[..8] != SLOT_MAGIC || crc32fast::hash(&slot[..40]).to_le_bytes() != slot[40..] {
        return None;
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&slot[8 + 8 * i..16 + 8 * i]);
        u64::from_le_bytes(w)
    };
    Some((
        word(0),
        Checkpoint {
            dev: word(1),
            inode: word(2),
            offset: word(3),
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
    /// file that is missing, in the earlier JSON format or unreadable is replaced atomically
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
}
