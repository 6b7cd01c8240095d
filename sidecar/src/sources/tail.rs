//! Follows an access log the way `tail -F` does, exactly once across rotations and restarts.
//!
//! - Rename-and-create rotation (logrotate's default, then nginx reopens on USR1): the old file
//!   is read to its end through the descriptor still open, then the new file from its start.
//! - copytruncate: the file shrinks under the offset; reading restarts at 0.
//! - A partial last line waits until its newline arrives.
//! - A checkpoint (inode and offset of the last complete line consumed) is written atomically
//!   after every read that consumed lines; on start it is honoured when it still describes the
//!   file, so a restart neither loses nor repeats lines.
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where reading stood.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub inode: u64,
    pub offset: u64,
}

/// Where to start without a usable checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

/// Where the last (possibly unfinished) line of a file starts: the proxy may be in the middle
/// of writing it, and it is still to come.
fn line_start_before_end(file: &File, len: u64) -> std::io::Result<u64> {
    let back = len.min(64 * 1024);
    let mut buf = vec![0u8; back as usize];
    let mut f = file;
    f.seek(SeekFrom::Start(len - back))?;
    f.read_exact(&mut buf)?;
    Ok(match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => len - back + i as u64 + 1,
        None if back == len => 0,
        None => len,
    })
}

/// One followed file.
pub struct Tailer {
    path: PathBuf,
    checkpoint_path: Option<PathBuf>,
    file: Option<File>,
    inode: u64,
    offset: u64,
    /// The unfinished last line of the last read (only used when the file is rotated away
    /// before that line got its newline).
    partial: Vec<u8>,
    start_at: StartAt,
    /// The file did not exist at the first look: when it appears, all of it is new.
    appeared_later: bool,
    /// Rotations noticed (rename or truncate).
    pub rotations: u64,
}

impl Tailer {
    pub fn new(path: &Path, checkpoint_path: Option<&Path>, start_at: StartAt) -> Self {
        Self {
            path: path.to_owned(),
            checkpoint_path: checkpoint_path.map(Path::to_owned),
            file: None,
            inode: 0,
            offset: 0,
            partial: Vec::new(),
            start_at,
            appeared_later: false,
            rotations: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_checkpoint(&self) -> Option<Checkpoint> {
        let text = std::fs::read_to_string(self.checkpoint_path.as_ref()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save_checkpoint(&self) -> std::io::Result<()> {
        let Some(path) = &self.checkpoint_path else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        let cp = Checkpoint {
            inode: self.inode,
            offset: self.offset,
        };
        std::fs::write(
            &tmp,
            serde_json::to_vec(&cp).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    }

    fn open(&mut self, first: bool) -> std::io::Result<bool> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.appeared_later = true;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        self.inode = meta.ino();
        self.offset = if first {
            match self.load_checkpoint() {
                Some(cp) if cp.inode == meta.ino() && cp.offset <= meta.len() => cp.offset,
                _ if self.appeared_later => 0,
                _ => match self.start_at {
                    StartAt::Beginning => 0,
                    StartAt::End => line_start_before_end(&file, meta.len())?,
                },
            }
        } else {
            0
        };
        self.partial.clear();
        self.file = Some(file);
        Ok(true)
    }

    /// Reads what was appended since the last call; complete lines go to `out`.
    pub fn poll(&mut self, out: &mut Vec<String>) -> std::io::Result<()> {
        if self.file.is_none() && !self.open(true)? {
            return Ok(());
        }
        let before = out.len();
        self.read_to_end(out)?;
        // Rotated by rename: the path now names another file. The old one was read to its
        // end just above; continue with the new one from its start.
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.ino() != self.inode => {
                self.rotations += 1;
                if !self.partial.is_empty() {
                    // The old file ended without a newline: that last line is complete.
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    out.push(line);
                    self.partial.clear();
                }
                if self.open(false)? {
                    self.read_to_end(out)?;
                }
            }
            _ => {}
        }
        if out.len() > before {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    fn read_to_end(&mut self, out: &mut Vec<String>) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            // copytruncate: the file was emptied (and maybe written again) under us.
            self.rotations += 1;
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset).min(1 << 20) as usize);
        file.take(len - self.offset).read_to_end(&mut buf)?;
        // Complete lines are consumed; the remainder (a line still being written) is read
        // again next time, from the offset, so nothing needs carrying between reads.
        let mut consumed = 0;
        for (i, b) in buf.iter().enumerate() {
            if *b == b'\n' {
                let mut line = &buf[consumed..i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                out.push(String::from_utf8_lossy(line).into_owned());
                consumed = i + 1;
            }
        }
        self.offset += consumed as u64;
        self.partial = buf[consumed..].to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open for append");
        f.write_all(text.as_bytes()).expect("append");
    }

    fn poll(t: &mut Tailer) -> Vec<String> {
        let mut out = Vec::new();
        t.poll(&mut out).expect("poll");
        out
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let mut t = Tailer::new(&log, None, StartAt::Beginning);
        assert!(poll(&mut t).is_empty(), "no file yet");
        append(&log, "one\ntw");
        assert_eq!(poll(&mut t), vec!["one"]);
        append(&log, "o\r\nthree\n");
        assert_eq!(poll(&mut t), vec!["two", "three"]);
        assert!(poll(&mut t).is_empty());
    }

    #[test]
    fn a_log_created_after_start_is_read_from_its_start() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let mut t = Tailer::new(&log, None, StartAt::End);
        assert!(poll(&mut t).is_empty());
        append(&log, "first\nsecond\n");
        assert_eq!(poll(&mut t), vec!["first", "second"]);
    }

    #[test]
    fn rename_and_create_rotation_loses_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        append(&log, "a\n");
        let mut t = Tailer::new(&log, None, StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["a"]);
        // The proxy writes more, then logrotate renames, then the proxy writes a last line to
        // the old file before it reopens, then the new file gets lines.
        append(&log, "b\n");
        std::fs::rename(&log, dir.path().join("access.log.1")).expect("rename");
        append(&dir.path().join("access.log.1"), "c");
        append(&log, "d\n");
        assert_eq!(poll(&mut t), vec!["b", "c", "d"]);
        assert_eq!(t.rotations, 1);
        append(&log, "e\n");
        assert_eq!(poll(&mut t), vec!["e"]);
    }

    #[test]
    fn copytruncate_restarts_from_the_top() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        append(&log, "first line\nsecond line\n");
        let mut t = Tailer::new(&log, None, StartAt::Beginning);
        assert_eq!(poll(&mut t).len(), 2);
        std::fs::File::create(&log).expect("truncate");
        append(&log, "x\n");
        assert_eq!(poll(&mut t), vec!["x"]);
        assert_eq!(t.rotations, 1);
    }

    #[test]
    fn restart_from_checkpoint_is_exactly_once() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let cp = dir.path().join("access.checkpoint");
        append(&log, "1\n2\n3");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        // No checkpoint yet, start at the end: history is not replayed.
        assert!(poll(&mut t).is_empty());
        append(&log, "\n4\n");
        assert_eq!(poll(&mut t), vec!["3", "4"]);
        drop(t);
        append(&log, "5\n");
        let mut again = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(
            poll(&mut again),
            vec!["5"],
            "resumed after 4, nothing repeated or lost"
        );
        // A checkpoint of another file (after rotation while stopped) is not trusted.
        std::fs::rename(&log, dir.path().join("old")).expect("rename");
        append(&log, "6\n");
        drop(again);
        let mut third = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut third), vec!["6"]);
    }
}
