//! Files of another mount namespace (a container's), reached through `/proc/PID/root`, and
//! opened as that process reaches them: a symbolic link's absolute target is resolved in its
//! root (`openat2`'s `RESOLVE_IN_ROOT`), not in this machine's. Walked by path from here, a
//! link put there by whoever may write in the container would name this machine's file of
//! that name, and edgewatch would read it as this machine's root.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

/// Opens `path` for reading (`flags` added: `O_DIRECTORY` for a directory; `O_PATH` for its
/// metadata alone), never blocking,
/// and says whether it is another mount namespace's: a path under `/proc/PID/root/` is
/// resolved in that root ([`open_in_root`]), any other as this process resolves it.
pub(super) fn open(path: &Path, flags: i32) -> std::io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some((root, within)) = in_process_root(path) else {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | flags)
            .open(path)?;
        return Ok((file, false));
    };
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(root)?;
    if within.as_os_str().is_empty() {
        return Ok((root, true));
    }
    Ok((open_in_root(&root, within, flags)?, true))
}

/// `/proc/PID/root` and the rest of `path` under it, for a path under one.
fn in_process_root(path: &Path) -> Option<(PathBuf, &Path)> {
    let rest = path.strip_prefix("/proc/").ok()?;
    let mut parts = rest.components();
    let pid = parts.next()?.as_os_str().to_str()?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if parts.next()?.as_os_str() != "root" {
        return None;
    }
    Some((PathBuf::from(format!("/proc/{pid}/root")), parts.as_path()))
}

/// `within` (relative) of the root directory `root`, opened for reading (`flags` added:
/// `O_DIRECTORY` for a directory), every symbolic link on the way resolved inside `root`
/// (`openat2`, Linux 5.6 and later), never blocking.
pub(super) fn open_in_root(root: &File, within: &Path, flags: i32) -> std::io::Result<File> {
    use std::os::unix::{
        ffi::OsStrExt,
        io::{AsRawFd, FromRawFd},
    };
    /// `struct open_how` of `linux/openat2.h`.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        // With O_PATH, openat2 takes no access mode and no O_NONBLOCK.
        flags: if flags & libc::O_PATH != 0 {
            libc::O_CLOEXEC | flags
        } else {
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | flags
        } as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    let c = std::ffi::CString::new(within.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a directory descriptor `root` owns, a NUL-terminated path, and `how` with its
    // size, as openat2(2) takes them; a descriptor returned is owned once, by the `File`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "this kernel has no openat2 (Linux 5.6 and later): another mount namespace's files are not read",
            ),
            // What a seccomp profile that predates openat2 answers (Docker's before 20.10).
            Some(libc::EPERM) => std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "openat2 refused (EPERM): a seccomp profile that predates it (Docker's before \
                 20.10) blocks it; another mount namespace's files are not read",
            ),
            _ => e,
        });
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// The entries of the directory `dir`, reached as [`open`] reaches it (`O_DIRECTORY`), listed through
/// its descriptor (kept open while they are read); each with its path under `dir`.
pub(super) fn list_dir(dir: &Path) -> Vec<(PathBuf, std::fs::DirEntry)> {
    use std::os::unix::io::AsRawFd;
    let Ok((file, _)) = open(dir, libc::O_DIRECTORY) else {
        return Vec::new();
    };
    let listed = std::fs::read_dir(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (dir.join(e.file_name()), e))
        .collect();
    drop(file);
    listed
}

/// `name` in the directory `dir`, opened for reading, never blocking (`flags` added).
pub(super) fn openat(dir: &File, name: &std::ffi::OsStr, flags: i32) -> std::io::Result<File> {
    use std::os::unix::{
        ffi::OsStrExt,
        io::{AsRawFd, FromRawFd},
    };
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a directory descriptor `dir` owns and a NUL-terminated name; a descriptor
    // returned is owned once, by the `File` made of it.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | flags,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A child process whose root directory is `dir` (chrooted there), killed when dropped: a
/// stand-in for a container's process in tests. `None` unless run as root.
#[cfg(test)]
pub(crate) struct Chrooted(pub(crate) i32);

#[cfg(test)]
impl Chrooted {
    pub(crate) fn start(dir: &Path) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        // Its root is `dir` once this file, made here, is seen through `/proc/PID/root`.
        let marker = "edgewatch-chrooted";
        std::fs::write(dir.join(marker), "").expect("marker");
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: the child calls only chroot, pause and _exit (async-signal-safe) until it
        // is killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                if libc::chroot(c.as_ptr()) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        let child = Self(pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::metadata(format!("/proc/{pid}/root/{marker}")).is_err() {
            assert!(std::time::Instant::now() < deadline, "the child's chroot");
            std::thread::yield_now();
        }
        Some(child)
    }
}

#[cfg(test)]
impl Drop for Chrooted {
    fn drop(&mut self) {
        // SAFETY: our own child: killed and reaped.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}
