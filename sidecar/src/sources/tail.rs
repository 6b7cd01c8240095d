//! Follows an access log the way `tail -F` does, exactly once across rotations, restarts and
//! crashes.
//!
//! - Rename-and-create rotation (logrotate's default, then nginx reopens on USR1): the old file
//!   is read to its end through the descriptor still open, then the new file from its start.
//! - Rotation while edgewatch was stopped: the checkpoint names the file by device and inode,
//!   and by how it begins ([`FileHead`]: a new file given a deleted one's inode number, or
//!   the file emptied and written again, is another file); if the path now names another
//!   file, the old one is looked for in the same directory (`access.log.1`,
//!   `access.log-20261202`, ...), read from the checkpoint to its end, then the new file from
//!   its start. If it is gone, that is said (and counted), never silent.
//! - copytruncate: the file shrinks under the offset; the rest of it is read from the copy
//!   beside it (`access.log.1`, found by how it begins, see [`FileHead`]), when there is one,
//!   then the file from 0. While stopped, the same: the checkpoint's file now begins
//!   otherwise, and the copy is found the same way.
//! - A partial last line waits until its newline arrives.
//! - Bounded memory: at most [`CHUNK`] bytes are read per call ([`Tailer::behind`] says that
//!   more is waiting); a line longer than that is skipped and counted.
//! - The position moves when lines are handed out, and becomes the checkpoint only at
//!   [`Tailer::commit`], which the caller makes once the lines' records are durable (the live
//!   sidecar: in the spool, with a mark of the position beside them; see ARCHITECTURE.md). The
//!   checkpoint file holds two slots, written in turn in place and fdatasynced (see
//!   [`CheckpointFile`]): a torn write leaves the other slot, the checkpoint before.
use std::{
    borrow::Cow,
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::checkpoint::CheckpointFile;
pub use super::checkpoint::{checkpoint_path, read_checkpoint, Checkpoint, FileHead};
use super::rotated::{find_old, open_log, rotated_since};

/// Bytes read from a log per call: a large backlog is read in pieces this size.
pub const CHUNK: u64 = 4 << 20;

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

/// What reading one file has reached.
struct Reading {
    file: File,
    dev: u64,
    inode: u64,
    offset: u64,
    /// How the file begins, up to the offset (see [`FileHead`]).
    head: FileHead,
    /// Inside a line longer than [`CHUNK`], being skipped up to its newline.
    skipping: bool,
}

/// The largest read buffer kept between reads while they are small.
const KEEP_BUFFER: usize = 256 << 10;
/// Rounds in a row that fill less than a quarter of a larger read buffer before it is let go:
/// ~30 s of a quiet log at the default `edge.poll_interval` (250 ms, one round a poll).
const QUIET_ROUNDS: u32 = 120;

/// One followed file.
pub struct Tailer {
    path: PathBuf,
    checkpoint_path: Option<PathBuf>,
    /// The checkpoint file, open from the first commit on (see [`CheckpointFile`]).
    checkpoint_file: Option<CheckpointFile>,
    /// The file the path names (once opened).
    current: Option<Reading>,
    /// A file rotated away while we were stopped, read to its end first.
    rotated: Option<Reading>,
    /// Files rotated after it (more than one rotation while stopped), read next, in order.
    rotated_next: std::collections::VecDeque<PathBuf>,
    /// The unfinished last line of the last read (only used when the file is rotated away
    /// before that line got its newline).
    partial: Vec<u8>,
    start_at: StartAt,
    /// A position to resume from that is newer than the checkpoint file (see [`Tailer::resume_from`]).
    resume: Option<Checkpoint>,
    /// The file did not exist at the first look: when it appears, all of it is new.
    appeared_later: bool,
    /// More data was waiting when the last read stopped at [`CHUNK`].
    behind: bool,
    committed: Option<Checkpoint>,
    /// Rotations noticed (rename or truncate).
    pub rotations: u64,
    /// Lines longer than [`CHUNK`], skipped.
    pub overlong_lines: u64,
    /// Rotations while stopped whose old file was gone: its unread lines were lost.
    pub lost_rotations: u64,
}

impl Tailer {
    pub fn new(path: &Path, checkpoint_path: Option<&Path>, start_at: StartAt) -> Self {
        Self {
            path: path.to_owned(),
            checkpoint_path: checkpoint_path.map(Path::to_owned),
            checkpoint_file: None,
            current: None,
            rotated: None,
            rotated_next: std::collections::VecDeque::new(),
            partial: Vec::new(),
            start_at,
            resume: None,
            appeared_later: false,
            behind: false,
            committed: None,
            rotations: 0,
            overlong_lines: 0,
            lost_rotations: 0,
        }
    }

    /// Resume from `cp` rather than from the checkpoint file, when it is newer: the live
    /// sidecar's spool keeps a mark of the position beside the rows of the lines before it,
    /// so a crash between the two never repeats lines.
    pub fn resume_from(&mut self, cp: Checkpoint) {
        self.resume = Some(cp);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether more data was waiting when the last [`Tailer::poll`] stopped.
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// The position after the last line handed out.
    pub fn position(&self) -> Option<Checkpoint> {
        let r = self.rotated.as_ref().or(self.current.as_ref())?;
        Some(Checkpoint {
            dev: r.dev,
            inode: r.inode,
            offset: r.offset,
            head: r.head,
        })
    }

    /// Whether the position moved since the last [`Tailer::commit`].
    pub fn moved(&self) -> bool {
        self.position() != self.committed
    }

    fn load_checkpoint(&self) -> Option<Checkpoint> {
        read_checkpoint(self.checkpoint_path.as_ref()?)
    }

    /// Makes the position the checkpoint, durably: into the checkpoint file's older slot, in
    /// place ([`CheckpointFile`]; the file is opened at the first commit and kept open).
    pub fn commit(&mut self) -> std::io::Result<()> {
        let Some(cp) = self.position() else {
            return Ok(());
        };
        if self.committed == Some(cp) {
            return Ok(());
        }
        if let Some(path) = &self.checkpoint_path {
            // Opened again after a failed write, or when the file was removed meanwhile.
            let file = match self.checkpoint_file.take().filter(|f| !f.removed()) {
                Some(mut f) => {
                    f.write(cp)?;
                    f
                }
                None => {
                    let (mut f, written) = CheckpointFile::open(path, cp)?;
                    if !written {
                        f.write(cp)?;
                    }
                    f
                }
            };
            self.checkpoint_file = Some(file);
        }
        self.committed = Some(cp);
        Ok(())
    }

    fn reading(file: File, offset: u64) -> std::io::Result<Reading> {
        let meta = file.metadata()?;
        Ok(Reading {
            dev: meta.dev(),
            inode: meta.ino(),
            offset,
            head: FileHead::default(),
            skipping: false,
            file,
        })
    }

    /// Opens the path. On the first open, the start comes from the checkpoint (or the spool's
    /// mark), following a rotation that happened while stopped.
    fn open(&mut self, first: bool) -> std::io::Result<bool> {
        let file = match open_log(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.appeared_later = true;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let mut offset = 0;
        let mut head = FileHead::default();
        if first {
            // Kept until the file is open: a read that fails here is tried again next poll.
            let saved = self.resume.or_else(|| self.load_checkpoint());
            match saved {
                Some(cp) if cp.is(&file, &meta)? => {
                    // The same file: where we were (unless it was truncated meanwhile).
                    if cp.offset <= meta.len() {
                        (offset, head) = (cp.offset, cp.head);
                    }
                    self.committed = Some(cp);
                }
                Some(cp) => {
                    // Rotated while we were stopped (renamed, or copied and emptied): the rest
                    // of the old file first.
                    match find_old(&self.path, &cp, meta.ino()) {
                        Some((old, f, copy)) => {
                            let old_meta = f.metadata()?;
                            self.rotated_next =
                                rotated_since(&self.path, &old_meta, Some(meta.ino())).into();
                            tracing::info!(log = %self.path.display(), rotated = %old.display(), copy, then = ?self.rotated_next, "the log rotated while edgewatch was stopped: reading the rest of the old file first");
                            let mut old = Self::reading(f, cp.offset)?;
                            old.head = cp.head;
                            self.rotated = Some(old);
                        }
                        None if cp.names(&meta) => {
                            self.lost_rotations += 1;
                            tracing::warn!(log = %self.path.display(), "the log has the device and inode the checkpoint names but begins otherwise (a new file given the old one's inode number, the old one deleted while edgewatch was stopped; or the log emptied and written again, with no copy of it beside it): its lines after the checkpoint are lost; it is read from its start");
                        }
                        None => {
                            self.lost_rotations += 1;
                            tracing::warn!(log = %self.path.display(), "the log rotated while edgewatch was stopped and the old file is gone (deleted or compressed): its lines after the checkpoint are lost; the new file is read from its start");
                        }
                    }
                    self.rotations += 1;
                    self.committed = Some(cp);
                }
                None if self.appeared_later => {}
                None => {
                    offset = match self.start_at {
                        StartAt::Beginning => 0,
                        StartAt::End => line_start_before_end(&file, meta.len())?,
                    };
                }
            }
        }
        self.partial.clear();
        let mut reading = Self::reading(file, offset)?;
        reading.head = head;
        self.current = Some(reading);
        self.resume = None;
        Ok(true)
    }

    /// Reads what was appended since the last call (at most [`CHUNK`] bytes); complete lines
    /// go to `out`. The checkpoint does not move: see [`Tailer::commit`].
    pub fn poll(&mut self, out: &mut Lines) -> std::io::Result<()> {
        if self.current.is_none() && !self.open(true)? {
            return Ok(());
        }
        self.behind = false;
        // Files rotated away while we were stopped, each to its end, oldest first.
        while let Some(r) = self.rotated.as_mut() {
            let more = read_lines(r, &mut self.partial, out, &mut self.overlong_lines)?;
            if more {
                self.behind = true;
                return Ok(());
            }
            self.end_of_old_file(out);
            self.rotated = None;
            while let Some(next) = self.rotated_next.pop_front() {
                match super::rotated::open_found(&next) {
                    Ok(f) => {
                        self.rotated = Some(Self::reading(f, 0)?);
                        break;
                    }
                    Err(e) => {
                        self.lost_rotations += 1;
                        tracing::warn!(file = %next.display(), error = %e, "a rotated log could not be read: its lines are lost");
                    }
                }
            }
        }
        let Some(r) = self.current.as_mut() else {
            return Ok(());
        };
        let len = r.file.metadata()?.len();
        // (The head: one read of at most 1 KiB a poll, for a file emptied and written past
        // the offset again between two polls.)
        if len < r.offset || !r.head.matches(&r.file)? {
            // copytruncate: the file was emptied (and maybe written again) under us. What it
            // held past the offset is in the copy logrotate made beside it, when there is one
            // (found by how it begins): read first, from the offset.
            self.rotations += 1;
            let was = Checkpoint {
                dev: r.dev,
                inode: r.inode,
                offset: r.offset,
                head: r.head,
            };
            let copy = find_old(&self.path, &was, r.inode).filter(|(_, _, copy)| *copy);
            r.offset = 0;
            r.head = FileHead::default();
            r.skipping = false;
            self.partial.clear();
            if let Some((path, f, _)) = copy {
                tracing::info!(log = %self.path.display(), copy = %path.display(), "the log was copied and emptied: reading the rest of the copy first");
                let mut copy = Self::reading(f, was.offset)?;
                copy.head = was.head;
                self.rotated = Some(copy);
                return self.poll(out);
            }
        }
        if read_lines(r, &mut self.partial, out, &mut self.overlong_lines)? {
            self.behind = true;
            return Ok(());
        }
        // Rotated by rename: the path now names another file. The old one was read to its
        // end just above; continue with the new one from its start.
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.ino() != r.inode || meta.dev() != r.dev => {
                self.end_of_old_file(out);
                // Counted once the new file is open (a path that cannot be opened yet is
                // looked at again next poll, and is not another rotation each time).
                if self.open(false)? {
                    self.rotations += 1;
                    if let Some(r) = self.current.as_mut() {
                        self.behind =
                            read_lines(r, &mut self.partial, out, &mut self.overlong_lines)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// An old file ended without a newline: that last line is complete.
    fn end_of_old_file(&mut self, out: &mut Lines) {
        if !self.partial.is_empty() {
            out.push(&self.partial);
            self.partial.clear();
        }
    }
}

/// Lines read from the logs: the bytes as read and where each line lies in them, so a busy log
/// costs no string per line and no copy: the file is read straight into this buffer. Each
/// line is checked for UTF-8 when it is handed out, just before it is parsed (where it is
/// hot in the cache); one that is not UTF-8 is decoded lossily, and the caller counts it.
#[derive(Debug, Default)]
pub struct Lines {
    bytes: Vec<u8>,
    /// Each line's start and end in `bytes` (its newline, and a `\r` before it, left out).
    spans: Vec<(usize, usize)>,
    /// Rounds in a row that filled less than a quarter of `bytes` (see [`Lines::clear`]).
    quiet_rounds: u32,
}

impl Lines {
    /// A line from elsewhere (the unfinished last line of a rotated-away file).
    fn push(&mut self, line: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(line);
        self.spans.push((start, self.bytes.len()));
    }

    /// The lines, in the order they were read: borrowed where they are UTF-8, decoded lossily
    /// (owned) where they are not.
    pub fn iter(&self) -> impl Iterator<Item = Cow<'_, str>> + '_ {
        // `from_utf8` first: `from_utf8_lossy` checks a byte at a time where it checks words.
        self.spans.iter().map(|&(start, end)| {
            let line = &self.bytes[start..end];
            std::str::from_utf8(line).map_or_else(|_| String::from_utf8_lossy(line), Cow::Borrowed)
        })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Empties it for the next round, keeping its memory while rounds fill a good part of it
    /// (a busy log's rounds, megabytes each), letting it go once [`QUIET_ROUNDS`] in a row
    /// have not (after a catch-up read, or once a log has gone quiet). Not at the first
    /// such round: a load that pauses for a few seconds (or a round cut short by a poll that
    /// came early) would have its buffer grown again, copied at every doubling, a page
    /// fault for each fresh 4 KiB, and the freed memory handed back to the OS by the
    /// allocator a second later (~1,100 page faults a run of the hop benchmark, whose
    /// counted load follows a pause of a few seconds).
    pub fn clear(&mut self) {
        if self.bytes.capacity() > KEEP_BUFFER && self.bytes.len() < self.bytes.capacity() / 4 {
            self.quiet_rounds += 1;
            if self.quiet_rounds >= QUIET_ROUNDS {
                *self = Self::default();
            }
        } else {
            self.quiet_rounds = 0;
        }
        self.bytes.clear();
        self.spans.clear();
    }
}

/// Reads complete lines from `r.offset` (at most [`CHUNK`] bytes) straight into `out`'s
/// buffer, and grows the file's head to the new offset; true when more is waiting.
fn read_lines(
    r: &mut Reading,
    partial: &mut Vec<u8>,
    out: &mut Lines,
    overlong: &mut u64,
) -> std::io::Result<bool> {
    let more = read_lines_only(r, partial, out, overlong)?;
    r.head = r.head.grown(&r.file, r.offset)?;
    Ok(more)
}

fn read_lines_only(
    r: &mut Reading,
    partial: &mut Vec<u8>,
    out: &mut Lines,
    overlong: &mut u64,
) -> std::io::Result<bool> {
    let len = r.file.metadata()?.len();
    if len <= r.offset {
        return Ok(false);
    }
    let want = (len - r.offset).min(CHUNK);
    r.file.seek(SeekFrom::Start(r.offset))?;
    // Appended to the round's buffer (kept from round to round: see `Lines::clear`); what is
    // not a complete line is cut off again below.
    let base = out.bytes.len();
    out.bytes.reserve(want as usize);
    let read = (&mut r.file).take(want).read_to_end(&mut out.bytes);
    let read_len = out.bytes.len() - base;
    if let Err(e) = read {
        out.bytes.truncate(base);
        return Err(e);
    }
    let mut consumed = 0;
    if r.skipping {
        // The rest of an overlong line.
        match memchr::memchr(b'\n', &out.bytes[base..]) {
            Some(i) => {
                consumed = i + 1;
                r.skipping = false;
            }
            None => {
                out.bytes.truncate(base);
                r.offset += read_len as u64;
                return Ok(r.offset < len);
            }
        }
    }
    let start = base + consumed;
    let spans = &mut out.spans;
    let mut line_start = start;
    for i in memchr::memchr_iter(b'\n', &out.bytes[start..]).map(|i| start + i) {
        let end = if i > line_start && out.bytes[i - 1] == b'\r' {
            i - 1
        } else {
            i
        };
        spans.push((line_start, end));
        line_start = i + 1;
    }
    consumed = line_start - base;
    if consumed == 0 && read_len as u64 == CHUNK {
        // A whole chunk without a newline: a line no proxy writes. Skipped to its end.
        out.bytes.truncate(base);
        *overlong += 1;
        r.skipping = true;
        r.offset += read_len as u64;
        partial.clear();
        return Ok(r.offset < len);
    }
    // Complete lines are consumed; the remainder (a line still being written) is read
    // again next time, from the offset, so nothing needs carrying between reads.
    r.offset += consumed as u64;
    partial.clear();
    partial.extend_from_slice(&out.bytes[base + consumed..]);
    out.bytes.truncate(base + consumed);
    Ok(r.offset + ((read_len - consumed) as u64) < len)
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Write;

    use super::*;

    pub(in crate::sources) fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open for append");
        f.write_all(text.as_bytes()).expect("append");
    }

    /// Reads what is there and commits it (what the live loop does once the records are
    /// durable).
    pub(in crate::sources) fn poll(t: &mut Tailer) -> Vec<String> {
        let mut lines = Lines::default();
        t.poll(&mut lines).expect("poll");
        let out: Vec<String> = lines.iter().map(Cow::into_owned).collect();
        t.commit().expect("commit");
        out
    }

    #[test]
    fn lines_keep_their_memory_while_rounds_fill_it() {
        let mut lines = Lines::default();
        for _ in 0..1024 {
            lines.push(&[b'x'; 999]);
        }
        let busy = lines.bytes.capacity();
        assert!(busy >= 1024 * 999);
        lines.clear();
        assert!(lines.is_empty());
        assert_eq!(
            lines.bytes.capacity(),
            busy,
            "a busy round's memory is kept"
        );
        lines.push(b"small");
        lines.push(b"\xff");
        assert_eq!(lines.iter().collect::<Vec<_>>(), vec!["small", "\u{fffd}"]);
        for _ in 1..QUIET_ROUNDS {
            lines.clear();
            lines.push(b"small");
        }
        assert_eq!(
            lines.bytes.capacity(),
            busy,
            "a pause of a few quiet rounds keeps it"
        );
        // A busy round starts the count again.
        for _ in 0..512 {
            lines.push(&[b'x'; 999]);
        }
        for _ in 0..QUIET_ROUNDS {
            lines.clear();
        }
        assert_eq!(
            lines.bytes.capacity(),
            busy,
            "counted from the last busy round"
        );
        lines.clear();
        assert!(
            lines.bytes.capacity() <= KEEP_BUFFER,
            "a log quiet for long lets it go"
        );
    }

    #[test]
    fn lines_are_read_in_place_and_only_bad_ones_are_decoded() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        std::fs::write(&a, b"one\r\nbad \xff line\n\r\nhalf").expect("write a");
        append(&b, "two\nthree");
        let mut ta = Tailer::new(&a, None, StartAt::Beginning);
        let mut tb = Tailer::new(&b, None, StartAt::Beginning);
        // Two logs into one round's lines: the second read goes after the first's lines, and
        // each read's unfinished last line is cut off again.
        let mut lines = Lines::default();
        ta.poll(&mut lines).expect("poll a");
        tb.poll(&mut lines).expect("poll b");
        let got: Vec<Cow<'_, str>> = lines.iter().collect();
        assert_eq!(got, vec!["one", "bad \u{fffd} line", "", "two"]);
        assert!(
            matches!(got[0], Cow::Borrowed(_)),
            "a UTF-8 line is not copied"
        );
        assert!(
            matches!(got[1], Cow::Owned(_)),
            "a bad one is decoded lossily"
        );
        assert_eq!(lines.bytes, b"one\r\nbad \xff line\n\r\ntwo\n");
        append(&a, "\n");
        append(&b, "\n");
        lines.clear();
        ta.poll(&mut lines).expect("poll a");
        tb.poll(&mut lines).expect("poll b");
        assert_eq!(lines.iter().collect::<Vec<_>>(), vec!["half", "three"]);
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

    #[test]
    fn lines_not_committed_are_read_again_and_a_spooled_mark_wins() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let cp = dir.path().join("cp");
        append(&log, "1\n2\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["1", "2"]);
        append(&log, "3\n4\n");
        let mut out = Lines::default();
        t.poll(&mut out).expect("poll");
        assert_eq!(out.iter().collect::<Vec<_>>(), vec!["3", "4"]);
        let mark = t.position().expect("position");
        drop(t); // killed before the commit
        let mut again = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(
            poll(&mut again),
            vec!["3", "4"],
            "not committed: read again"
        );
        // With the position the spool kept beside their rows, they are not.
        let mut third = Tailer::new(&log, Some(&dir.path().join("old-cp")), StartAt::Beginning);
        third.resume_from(mark);
        append(&log, "5\n");
        assert_eq!(poll(&mut third), vec!["5"]);
    }

    #[test]
    fn a_rotation_while_stopped_resumes_in_the_old_file_then_the_new() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let cp = dir.path().join("cp");
        append(&log, "a\nb\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["a", "b"]);
        drop(t);
        // While stopped: more lines, a rotation, lines in the new file.
        append(&log, "c\nd\n");
        std::fs::rename(&log, dir.path().join("access.log-20261202")).expect("rotate");
        append(&log, "e\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(poll(&mut t), vec!["c", "d", "e"]);
        assert_eq!(t.lost_rotations, 0);
        // Rotated twice while stopped: both old files, in order, then the new one.
        drop(t);
        append(&log, "e2\n");
        std::fs::rename(&log, dir.path().join("access.log.1")).expect("rotate");
        append(&log, "e3\n");
        std::fs::rename(&log, dir.path().join("access.log.2")).expect("rotate again");
        append(&log, "e4\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(poll(&mut t), vec!["e2", "e3", "e4"]);
        // Rotated while stopped, the old file compressed away: said and counted, and the new
        // file is read from its start (not its end). In logrotate's order: the new file is
        // created (the proxy reopens its log) before the old one is compressed and removed,
        // so the new one cannot be given the old one's inode number.
        drop(t);
        append(&log, "f\n");
        std::fs::rename(&log, dir.path().join("gone")).expect("rotate");
        append(&log, "g\n");
        std::fs::remove_file(dir.path().join("gone")).expect("compress away");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(poll(&mut t), vec!["g"]);
        assert_eq!(t.lost_rotations, 1);
    }

    #[test]
    fn a_backlog_is_read_in_bounded_pieces_and_an_overlong_line_is_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let line = format!("{}\n", "x".repeat(999));
        let n = (3 * CHUNK as usize) / line.len();
        append(&log, &line.repeat(n));
        let mut t = Tailer::new(&log, None, StartAt::Beginning);
        let mut total = 0;
        let mut rounds = 0;
        loop {
            let mut out = Lines::default();
            t.poll(&mut out).expect("poll");
            assert!(out.len() as u64 * 1000 <= CHUNK, "one piece at most");
            total += out.len();
            rounds += 1;
            if !t.behind() {
                break;
            }
        }
        assert_eq!(total, n);
        assert!(rounds >= 3, "{rounds}");
        // A line longer than a piece: skipped, counted; the next line is read.
        append(&log, &"y".repeat(CHUNK as usize + 10));
        append(&log, "\nafter\n");
        let mut got = Lines::default();
        loop {
            t.poll(&mut got).expect("poll");
            if !t.behind() {
                break;
            }
        }
        assert_eq!(got.iter().collect::<Vec<_>>(), vec!["after"]);
        assert_eq!(t.overlong_lines, 1);
    }
}
