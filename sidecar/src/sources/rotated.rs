//! A followed log's earlier files, found in its directory when it rotated while edgewatch was
//! stopped (see [`super::tail`]): the file a checkpoint names, and the rotations after it.
use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{
    checkpoint::Checkpoint,
    in_root::{self, openat},
};

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

/// Opens a file found by name in a log's directory, as root: not through a symbolic link,
/// and never blocking on a FIFO, put in its place after it was listed (the directory may be
/// the proxy's own to write, as Caddy's may be); only a regular file is read. The directory
/// is reached as [`open_dir`] reaches it.
pub(super) fn open_found(path: &Path) -> std::io::Result<File> {
    let (dir, name) = dir_and_name(path)?;
    let (dir, _) = open_dir(dir)?;
    regular(openat(&dir, name, libc::O_NOFOLLOW)?)
}

/// The file listed in a log's directory as `listed`, opened as [`open_found`] opens, if it
/// is still that file (not another put in its place since it was listed).
fn open_listed(path: &Path, listed: &std::fs::Metadata) -> Option<File> {
    let file = open_found(path).ok()?;
    let opened = file.metadata().ok()?;
    ((opened.dev(), opened.ino()) == (listed.dev(), listed.ino())).then_some(file)
}

/// Opens the followed log at `path`. Only a regular file is read (never a pipe, a terminal
/// or a device: the official nginx image links its logs to `/dev/stdout`), and a symbolic
/// link is followed only where only root can have put it: in a directory of this machine's
/// that anyone else may write (Caddy's own log directory, a bind mount a container's user
/// owns), whoever writes there could otherwise point edgewatch, which reads as root, at any
/// file; in another mount namespace's (a container's, reached through `/proc/PID/root`),
/// never. The directory judged is the one the log is then opened in (opened first, the log
/// opened in it): a directory swapped in between, there or at any level above it, by
/// whoever may write there, is not judged as the one before it.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    let (dir_path, name) = dir_and_name(path)?;
    let (dir, elsewhere) = open_dir(dir_path)?;
    let root_only = !elsewhere
        && dir
            .metadata()
            .is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
    let nofollow = if root_only { 0 } else { libc::O_NOFOLLOW };
    match openat(&dir, name, nofollow) {
        Ok(file) => regular(file),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(std::io::Error::new(
            e.kind(),
            if elsewhere {
                format!(
                    "a symbolic link in {}, another mount namespace's directory: not followed (name the file it points to)",
                    dir_path.display()
                )
            } else {
                format!(
                    "a symbolic link in {}, a directory others than root can write: not followed (name the file it points to)",
                    dir_path.display()
                )
            },
        )),
        Err(e) => Err(e),
    }
}

/// A log path's directory and file name.
fn dir_and_name(path: &Path) -> std::io::Result<(&Path, &std::ffi::OsStr)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    Ok((dir, name))
}

/// Opens the directory `dir`, and says whether it is another mount namespace's
/// ([`in_root::open`]: a container's, reached through `/proc/PID/root`, resolved in its root).
fn open_dir(dir: &Path) -> std::io::Result<(File, bool)> {
    in_root::open(dir, libc::O_DIRECTORY)
}

/// `file` if it is a regular file; else why not.
fn regular(file: File) -> std::io::Result<File> {
    use std::os::unix::fs::FileTypeExt;
    let kind = file.metadata()?.file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device (a terminal? /dev/stdout?)"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what}: an access log is read from a regular file"),
    ))
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
    let entries = in_root::list_dir(dir);
    for (path, entry) in &entries {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && cp.names(&meta) {
            let path = path.clone();
            let Some(file) = open_listed(&path, &meta) else {
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
        .filter(|(_, e)| rotated_name(&name, &e.file_name().to_string_lossy()))
        .filter_map(|(path, e)| {
            let meta = e.metadata().ok()?;
            if !meta.is_file() || meta.ino() == current || meta.len() < cp.offset {
                return None;
            }
            let file = open_listed(path, &meta)?;
            cp.head
                .matches(&file)
                .ok()?
                .then(|| (changed(&meta), path.clone(), file))
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
    let mut found: Vec<((i64, i64), PathBuf)> = in_root::list_dir(dir)
        .into_iter()
        .filter_map(|(path, e)| {
            if !rotated_name(&name, &e.file_name().to_string_lossy()) {
                return None;
            }
            let meta = e.metadata().ok()?;
            let same = meta.ino() == after.ino() && meta.dev() == after.dev();
            (meta.is_file()
                && !same
                && Some(meta.ino()) != current
                && changed(&meta) >= changed(after))
            .then(|| (changed(&meta), path))
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

    /// A FIFO at `path`, and the outcome of opening it with `open` on another thread: a
    /// plain open of a FIFO with no writer would wait for one forever.
    fn open_a_fifo(
        path: std::path::PathBuf,
        open: fn(&std::path::Path) -> std::io::Result<std::fs::File>,
    ) -> Result<(), String> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(open(&path).map(drop).map_err(|e| e.to_string()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the FIFO's open returned")
    }

    #[test]
    fn a_followed_log_s_link_is_followed_only_where_only_root_can_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let real = dir.path().join("real.log");
        std::fs::write(&real, "a line\n").expect("log");
        // A directory the proxy's own user may write (as Caddy's /var/log/caddy).
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("shared");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let own = dir.path().join("own");
        std::fs::create_dir(&own).expect("own");
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for d in [&shared, &own] {
            std::os::unix::fs::symlink(&real, d.join("access.log")).expect("symlink");
        }
        let e = super::open_log(&shared.join("access.log")).expect_err("not followed");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // Root's own directory (when the test runs as root, as CI does): root's choice.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(super::open_log(&own.join("access.log")).is_ok(), root);
        // A Tailer on the link in the shared directory says why, and reads nothing.
        let mut t = Tailer::new(&shared.join("access.log"), None, StartAt::Beginning);
        let mut lines = crate::sources::tail::Lines::default();
        let e = t.poll(&mut lines).expect_err("refused");
        assert!(e.to_string().contains("not followed"), "{e}");
        assert_eq!(lines.iter().count(), 0);
        // A link (in root's directory) to a terminal or pipe, as nginx's image has
        // `/dev/stdout`: refused at once, not read.
        let refused = open_a_fifo(own.join("pipe"), super::open_log);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("FIFO")),
            "{refused:?}"
        );
    }

    /// Whoever may write above the log's directory can swap another directory in for it
    /// while the log is being opened: the directory judged must be the one the log is then
    /// opened in. Here root's directory (a link to the log in it) and one anyone may write (a
    /// link to a secret) trade places without pause while the log is opened again and again:
    /// each open is the log or a refusal, never the secret.
    #[test]
    fn the_directory_judged_is_the_one_the_log_is_opened_in() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let real = dir.path().join("real.log");
        std::fs::write(&real, "the log\n").expect("log");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "the secret\n").expect("secret");
        let (logs, other) = (dir.path().join("logs"), dir.path().join("other"));
        for (d, mode, target) in [(&logs, 0o755, &real), (&other, 0o1777, &secret)] {
            std::fs::create_dir(d).expect("dir");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).expect("chmod");
            std::os::unix::fs::symlink(target, d.join("access.log")).expect("symlink");
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            let c = |p: &std::path::Path| {
                std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path")
            };
            let (a, b) = (c(&logs), c(&other));
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // SAFETY: NUL-terminated paths; an atomic exchange of two directories.
                    let r = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            a.as_ptr(),
                            libc::AT_FDCWD,
                            b.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    assert_eq!(r, 0, "renameat2: {}", std::io::Error::last_os_error());
                    swaps += 1;
                }
                swaps
            })
        };
        // As root, root's directory is followed; as another user, neither is.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let (mut read, mut refused, mut opens) = (0, 0, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // 20,000 opens at least, and on until both directories were met.
        while opens < 20_000 || refused == 0 || (root && read == 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "{read} read, {refused} refused"
            );
            opens += 1;
            match super::open_log(&logs.join("access.log")) {
                Ok(mut f) => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut f, &mut text).expect("read");
                    assert_eq!(text, "the log\n", "read through the swapped-in directory");
                    read += 1;
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(swapper.join().expect("swapper") > 0);
        assert_eq!(read > 0, root, "{read} read");
    }

    /// A container's log is reached through `/proc/PID/root`, and a symbolic link there with
    /// an absolute target names the container's file: walked by path from here, it named
    /// this machine's file of that name, which edgewatch then read as root.
    #[test]
    fn a_log_in_another_root_is_resolved_in_that_root() {
        use std::os::unix::fs::OpenOptionsExt;
        let read = |f: std::io::Result<std::fs::File>| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut f.expect("opened"), &mut text).expect("read");
            text
        };
        let tmp = tempfile::tempdir().expect("dir");
        // This machine's file, at an absolute path the container's link names.
        let host = tmp.path().join("host");
        std::fs::create_dir(&host).expect("host");
        std::fs::write(host.join("access.log"), "this machine's file\n").expect("file");
        // The container's root: the same path inside it holds its log, and its
        // /var/log/nginx is a link to that absolute path.
        let ctr = tmp.path().join("ctr");
        let inside = ctr.join(host.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(&inside).expect("inside");
        std::fs::write(inside.join("access.log"), "the container's log\n").expect("log");
        std::os::unix::fs::symlink(&host, inside.join("link.log")).expect("link");
        std::fs::create_dir_all(ctr.join("var/log")).expect("var/log");
        std::os::unix::fs::symlink(&host, ctr.join("var/log/nginx")).expect("link");
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&ctr)
            .expect("root");
        let within = std::path::Path::new("var/log/nginx");
        let dir =
            crate::sources::in_root::open_in_root(&root, within, libc::O_DIRECTORY).expect("dir");
        let log = super::openat(&dir, std::ffi::OsStr::new("access.log"), 0);
        assert_eq!(read(log), "the container's log\n");
        // A process whose root is the container's (as root: a child chrooted there).
        let Some(child) = crate::sources::in_root::Chrooted::start(&ctr) else {
            return;
        };
        let through = std::path::PathBuf::from(format!("/proc/{}/root/var/log/nginx", child.0));
        let log = super::open_log(&through.join("access.log"));
        let found = super::open_found(&through.join("access.log"));
        let linked = super::open_log(&through.join("link.log"));
        let listed: Vec<_> = super::in_root::list_dir(&through)
            .into_iter()
            .map(|(p, _)| p.file_name().map(|n| n.to_owned()))
            .collect();
        drop(child);
        assert_eq!(read(log), "the container's log\n");
        assert_eq!(read(found), "the container's log\n");
        let e = linked.expect_err("a link in another mount namespace is not followed");
        assert!(e.to_string().contains("another mount namespace"), "{e}");
        assert_eq!(
            listed.len(),
            2,
            "the container's directory listed: {listed:?}"
        );
    }

    #[test]
    fn a_found_file_is_opened_only_as_a_regular_file_never_through_a_link() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("access.log");
        std::fs::write(&log, "a line\n").expect("log");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a line\n").expect("secret");
        let link = dir.path().join("access.log.1");
        std::os::unix::fs::symlink(&secret, &link).expect("symlink");
        assert!(super::open_found(&log).is_ok());
        assert!(
            super::open_found(&link).is_err(),
            "a symbolic link is not followed"
        );
        let fifo = open_a_fifo(dir.path().join("access.log.2"), super::open_found);
        assert!(fifo.is_err(), "a FIFO is not read");
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
