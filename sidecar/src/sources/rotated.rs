//! A followed log's earlier files, found in its directory when it rotated while edgewatch was
//! stopped (see [`super::tail`]): the file a checkpoint names, and the rotations after it.
use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::checkpoint::Checkpoint;

/// Whether `file`, a name in a log's directory, is a name rotation gives the log `name`:
/// the name plus a suffix (`access.log.1`, `access.log-20261202`), not compressed.
fn rotated_name(name: &str, file: &str) -> bool {
    let Some(suffix) = file.strip_prefix(name) else {
        return false;
    };
    (suffix.starts_with('.') || suffix.starts_with('-'))
        && ![".gz", ".bz2", ".xz", ".zst", ".lz4", ".z"]
            .iter()
            .any(|c| file.ends_with(c))
}

/// When a file's inode last changed (a rename, a write): what orders rotations.
fn changed(m: &std::fs::Metadata) -> (i64, i64) {
    (m.ctime(), m.ctime_nsec())
}

/// The file the checkpoint `cp` of the log at `log` names, rotated away while we were
/// stopped, and whether it is a copy: first the file in the log's directory with its device
/// and inode that begins as it did (renamed: `access.log.1`); else, when its head is known, a
/// file named like a rotation of the log that begins as it did and holds the checkpoint's
/// offset (copied, then the log emptied: logrotate's `copytruncate`), the earliest changed
/// if several do. Never the file the path names now (inode `current`).
pub(super) fn find_old(log: &Path, cp: &Checkpoint, current: u64) -> Option<(PathBuf, File, bool)> {
    let dir = log.parent().unwrap_or(Path::new("."));
    let entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    for entry in &entries {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && cp.names(&meta) {
            let path = entry.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if cp.head.matches(&file).unwrap_or(false) {
                return Some((path, file, false));
            }
        }
    }
    if cp.head.len == 0 {
        return None;
    }
    let name = log.file_name()?.to_string_lossy();
    let copies: Vec<((i64, i64), PathBuf, File)> = entries
        .iter()
        .filter(|e| rotated_name(&name, &e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            if !meta.is_file() || meta.ino() == current || meta.len() < cp.offset {
                return None;
            }
            let file = File::open(e.path()).ok()?;
            cp.head
                .matches(&file)
                .ok()?
                .then(|| (changed(&meta), e.path(), file))
        })
        .collect();
    let (_, path, file) = copies.into_iter().min_by_key(|c| c.0)?;
    Some((path, file, true))
}

/// Files that rotation made of the log after `after` (rotated more than once while we were
/// stopped): named like the log plus a suffix (`access.log.1`, `access.log-20261202`), not
/// compressed, not the current file, and changed (renamed, written) no earlier than `after`
/// was: the inode change time, which a rename sets, orders rotations (the modification time
/// does not: two files written within one clock tick share it); oldest first.
pub(super) fn rotated_since(
    log: &Path,
    after: &std::fs::Metadata,
    current: Option<u64>,
) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let mut found: Vec<((i64, i64), PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            if !rotated_name(&name, &e.file_name().to_string_lossy()) {
                return None;
            }
            let meta = e.metadata().ok()?;
            let same = meta.ino() == after.ino() && meta.dev() == after.dev();
            (meta.is_file()
                && !same
                && Some(meta.ino()) != current
                && changed(&meta) >= changed(after))
            .then(|| (changed(&meta), e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use crate::sources::tail::{
        tests::{append, poll},
        StartAt, Tailer,
    };

    /// logrotate's `copytruncate`: the log copied beside it, then emptied in place.
    fn copytruncate(log: &std::path::Path, copy: &str) {
        std::fs::copy(log, log.with_file_name(copy)).expect("copy");
        std::fs::File::create(log).expect("truncate");
    }

    #[test]
    fn a_log_copied_and_emptied_while_stopped_is_finished_from_the_copy() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        let cp = dir.path().join("cp");
        append(&log, "a 1\nb 2\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["a 1", "b 2"]);
        drop(t);
        // While stopped: more lines, copytruncate (the copy keeps them), a line in the
        // emptied log. Before the head, this read the log from its start ("e 5" alone):
        // "c 3" and "d 4" were lost, uncounted.
        append(&log, "c 3\nd 4\n");
        copytruncate(&log, "access.log.1");
        append(&log, "e 5\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(poll(&mut t), vec!["c 3", "d 4", "e 5"]);
        assert_eq!((t.rotations, t.lost_rotations), (1, 0));
        // Nothing read twice on the next start.
        drop(t);
        append(&log, "f 6\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(poll(&mut t), vec!["f 6"]);
        // Copied and emptied again, and the copy compressed away: said and counted.
        drop(t);
        append(&log, "g 7\n");
        copytruncate(&log, "access.log.1.gz");
        append(&log, "h 8\n");
        let mut t = Tailer::new(&log, Some(&cp), StartAt::End);
        assert_eq!(poll(&mut t), vec!["h 8"]);
        assert_eq!(t.lost_rotations, 1);
    }

    #[test]
    fn a_log_copied_and_emptied_while_followed_loses_no_line() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        append(&log, "a 1\n");
        let mut t = Tailer::new(&log, None, StartAt::Beginning);
        assert_eq!(poll(&mut t), vec!["a 1"]);
        // Lines written since the last read, and half a line, are in the copy only.
        append(&log, "b 2\nc");
        copytruncate(&log, "access.log-20261206");
        append(&log, "d 4\n");
        assert_eq!(poll(&mut t), vec!["b 2", "c", "d 4"]);
        assert_eq!(t.rotations, 1);
        append(&log, "e 5\n");
        assert_eq!(poll(&mut t), vec!["e 5"]);
    }
}
