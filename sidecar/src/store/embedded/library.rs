//! The embedded server's library: the pinned ClickHouse build, fetched once from the npm
//! registry into a private cache, and checked against its SHA-512 before every load.
use super::*;

/// The pinned package.
pub const VERSION: &str = "26.7.3-stable.1";
pub(super) const TARBALL: &str =
    "https://registry.npmjs.org/@chdb/lib-linux-x64-gnu/-/lib-linux-x64-gnu-26.7.3-stable.1.tgz";
/// `dist.integrity` of that version in the npm registry.
pub(super) const INTEGRITY: &str =
    "sha512-XP97mMqnc5tZpKQywR8N7cLTsHNiTmHr30pC5mzo3jWmukjKn2IBa60c2B/gWUNcuFjOMjWoorQICCqBVj5wpw==";
/// SHA-512 of `package/libchdb.so` in that package: checked at every start, before loading.
pub(super) const LIBRARY_SHA512: &str = "0a5e6af5cf57034116d34a39480989a160dd105f372d85aa748f8d2b0a5ebd52a90d913737d7ae86f6f597d37fe06d3a4d22125c13c5aa961d91aa93d034751e";

/// The ClickHouse user edgewatch's store uses on the embedded server.
pub const USER: &str = "edgewatch";
/// The uid and gid the embedded server runs as when `run_as` does not exist and cannot be
/// created (a read-only /etc, as in the container), used only if no account has that uid.
pub const FALLBACK_ID: u32 = 64_206;

/// Where the library lives in the cache.
pub fn library_path(cache_dir: &Path) -> PathBuf {
    cache_dir
        .join("clickhouse")
        .join(VERSION)
        .join("libchdb.so")
}

pub(super) fn verify(data_sha512: &[u8]) -> bool {
    use base64::Engine as _;
    let Some(b64) = INTEGRITY.strip_prefix("sha512-") else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .is_ok_and(|want| want == data_sha512)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Creates `dir` (and its parents) if missing, then makes sure it is ours and private enough:
/// owned by this process's user, not writable by group or others, with `mode` applied when it
/// was just created. A directory that fails the check is refused, never silently fixed (it
/// may hold what someone else put there).
pub fn ensure_private_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    check_private(dir)
}

/// Refuses a path (file or directory, not followed if a symlink) that is not owned by this
/// process's user or that group or others may write.
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() {
        bail!("refusing {}: it is a symbolic link", path.display());
    }
    if meta.uid() != me {
        bail!(
            "refusing {}: owned by uid {}, not by edgewatch's user (uid {me}); fix: chown {me} {}",
            path.display(),
            meta.uid(),
            path.display()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "refusing {}: group or others may write it (mode {:o}); fix: chmod go-w {}",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// Returns the cached library, fetching it first when missing (one process fetches at a
/// time; the others wait for it). Progress goes to the log. The cache is private (0700).
pub fn ensure_library(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let lib = library_path(cache_dir);
    let dir = lib.parent().unwrap_or(cache_dir).to_owned();
    ensure_private_dir(cache_dir, 0o700)?;
    ensure_private_dir(&dir, 0o700)?;
    if lib.exists() {
        return Ok(lib);
    }
    let lock_path = dir.join(".fetch.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if lib.exists() {
        return Ok(lib);
    }
    tracing::info!(
        url = TARBALL,
        "fetching ClickHouse {VERSION} for the embedded store (once, ~178 MB)"
    );
    let started = Instant::now();
    let tgz = dir.join("package.tgz.part");
    fetch(TARBALL, &tgz)?;
    let tmp_lib = dir.join("libchdb.so.part");
    {
        let file =
            std::fs::File::open(&tgz).with_context(|| format!("opening {}", tgz.display()))?;
        let mut archive =
            tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
        let mut found = false;
        for entry in archive
            .entries()
            .context("reading the ClickHouse package")?
        {
            let mut entry = entry.context("reading the ClickHouse package")?;
            let path = entry
                .path()
                .context("reading the ClickHouse package")?
                .into_owned();
            if path == Path::new("package/libchdb.so") {
                // 0644: the server's unprivileged user loads it (through a descriptor opened
                // here by root: the 0700 cache directories stay closed to it).
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .open(&tmp_lib)
                    .with_context(|| format!("creating {}", tmp_lib.display()))?;
                std::io::copy(&mut entry, &mut out).context("unpacking libchdb.so")?;
                out.sync_all().context("writing libchdb.so")?;
                found = true;
                break;
            }
        }
        if !found {
            bail!("the ClickHouse package has no package/libchdb.so");
        }
    }
    std::fs::rename(&tmp_lib, &lib).with_context(|| format!("installing {}", lib.display()))?;
    let _ = std::fs::remove_file(&tgz);
    tracing::info!(path = %lib.display(), secs = started.elapsed().as_secs_f64(), "ClickHouse cached");
    Ok(lib)
}

pub(super) fn fetch(url: &str, to: &Path) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let mut hasher = sha2::Sha512::new();
    let total = std::cell::Cell::new(None);
    let mut done = 0u64;
    let mut next_report = 0u64;
    // Bounded waits for the connection, the answer and each chunk, and a long one for the
    // whole body: a registry that hangs fails with a message instead of hanging the start.
    let http = crate::outbound::Http::new(None, Duration::from_secs(60))?;
    crate::outbound::block_on(http.download(
        url,
        1 << 31,
        Duration::from_secs(15 * 60),
        |length| total.set(length),
        |chunk| {
            hasher.update(chunk);
            out.write_all(chunk)
                .with_context(|| format!("writing {}", to.display()))?;
            done += chunk.len() as u64;
            if done >= next_report {
                match total.get() {
                    Some(t) => tracing::info!("downloaded {} of {} MB", done >> 20, t >> 20),
                    None => tracing::info!("downloaded {} MB", done >> 20),
                }
                next_report = done + (32 << 20);
            }
            Ok(())
        },
    ))?
    .with_context(|| format!("downloading {url} (or set store.url to a ClickHouse server you run, store.embedded.library to a libchdb.so you have, or store.enabled = false to run without a store)"))?;
    out.sync_all().context("writing the ClickHouse package")?;
    if !verify(&hasher.finalize()) {
        let _ = std::fs::remove_file(to);
        bail!(
            "the downloaded ClickHouse package does not match its registry checksum; not using it"
        );
    }
    Ok(())
}

/// Opens the library and checks it against its pinned SHA-512; the returned descriptor is what
/// gets loaded (no window between the check and the load for the file to change).
pub fn open_verified_library(path: &Path) -> anyhow::Result<std::fs::File> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("opening the ClickHouse library {}", path.display()))?;
    let mut hasher = sha2::Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let got = hex(&hasher.finalize());
    if got != LIBRARY_SHA512 {
        bail!(
            "the ClickHouse library {} is not the pinned build {VERSION} (SHA-512 {}..., expected {}...): \
             corrupted or replaced; not loading it. Delete it and edgewatch fetches it again",
            path.display(),
            &got[..16],
            &LIBRARY_SHA512[..16]
        );
    }
    Ok(file)
}
