//! Who the embedded server is and who may talk to it: the secret of its `edgewatch` user, and
//! the unprivileged account it runs as.
use super::*;

/// The secret, from `path`; created first (256 random bits, hex, mode 0600) when missing.
pub fn load_or_create_secret(path: &Path) -> anyhow::Result<String> {
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir, 0o711)?;
    }
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom(&mut bytes)?;
        let secret = hex(&bytes);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(secret.as_bytes())
                    .and_then(|()| f.write_all(b"\n"))
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
                tracing::info!(path = %path.display(), "generated the embedded store's secret");
            }
            // Another edgewatch created it meanwhile: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    read_secret(path)
}

/// Reads the secret, refusing a file that others could read or write.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    check_private(path)?;
    let meta = std::fs::metadata(path).with_context(|| format!("checking {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "refusing the secret {}: group or others may read it (mode {:o}); fix: chmod 600 {}",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the embedded store's secret {} (as root: it is readable by root only)",
            path.display()
        )
    })?;
    let secret = text.lines().next().unwrap_or_default().trim().to_owned();
    if secret.len() < 32 {
        bail!(
            "the secret in {} is shorter than 128 bits; delete it and edgewatch makes a new one",
            path.display()
        );
    }
    Ok(secret)
}

pub(super) fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most `buf.len() - filled` bytes into the rest of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("getrandom");
        }
        filled += n as usize;
    }
    Ok(())
}

/// The account the embedded server runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks `name` up in the user database.
pub fn lookup_user(name: &str) -> Option<RunAs> {
    let cname = CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`'s strings,
    // none of which is read.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then(|| RunAs {
        name: name.to_owned(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

pub(super) fn uid_taken(uid: u32) -> bool {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in lookup_user.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    rc == 0 && !result.is_null()
}

/// The account for the server: `name` if it exists; else created as a system user with
/// `useradd`; else (a read-only /etc) the fixed [`FALLBACK_ID`] if no account has it.
pub fn resolve_user(name: &str) -> anyhow::Result<RunAs> {
    if name == "root" {
        bail!("store.embedded.run_as must not be root");
    }
    if let Some(u) = lookup_user(name) {
        if u.uid == 0 {
            bail!("store.embedded.run_as {name:?} has uid 0");
        }
        return Ok(u);
    }
    let created = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "edgewatch embedded ClickHouse",
            name,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if created {
        if let Some(u) = lookup_user(name) {
            tracing::info!(
                user = name,
                uid = u.uid,
                "created the embedded store's system user"
            );
            return Ok(u);
        }
    }
    if uid_taken(FALLBACK_ID) {
        bail!(
            "no account {name:?} for the embedded store, useradd could not create it, and uid \
             {FALLBACK_ID} (the fallback) belongs to another account: create {name:?} or set \
             store.embedded.run_as to an unprivileged account"
        );
    }
    Ok(RunAs {
        name: format!("uid {FALLBACK_ID}"),
        uid: FALLBACK_ID,
        gid: FALLBACK_ID,
    })
}

/// The uid the embedded server would run as, without creating anything (None: no such user,
/// and the fallback uid is another account's).
pub fn expected_uid(run_as: &str) -> Option<u32> {
    match lookup_user(run_as) {
        Some(u) => Some(u.uid),
        None => (!uid_taken(FALLBACK_ID)).then_some(FALLBACK_ID),
    }
}

/// Checks a grant target: a database name, or a prefix followed by `*` (the tests' servers).
pub fn check_database_pattern(db: &str) -> anyhow::Result<()> {
    let name = db.strip_suffix('*').unwrap_or(db);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("database {db:?}: letters, digits and underscores only (a trailing * for a prefix)");
    }
    Ok(())
}
