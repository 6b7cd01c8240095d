//! A Caddyfile turned into JSON by `caddy adapt`, when Caddy's admin API does not answer. The
//! child runs in a Landlock sandbox: it reads beneath the monitored process's root
//! (`/proc/PID/root`) and the caddy binary's own libraries, writes no file, binds and
//! connects nowhere and signals nothing outside it. One short-lived thread restricts itself
//! and starts the child, which inherits the restriction; the sidecar's other threads are
//! untouched.
//!
//! Without the sandbox, `caddy adapt --config /proc/PID/root/etc/caddy/Caddyfile` resolved a
//! container's symbolic link with an absolute target, and every absolute `import`, in this
//! machine's root: it read this machine's file of that name with the sidecar's privileges and
//! quoted it in its error, or adapted it as the container's configuration.
use std::{
    collections::HashMap,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

/// The descriptor the child inherits the process's root as, and the path it names it by.
const ROOT_FD: i32 = 3;
const CHILD_ROOT: &str = "/proc/self/fd/3";

/// What a Caddyfile adapted to, by its path, with the size and time it had then.
type Adapted = HashMap<PathBuf, ((u64, Option<SystemTime>), serde_json::Value)>;

/// The caddy of this machine's PATH (a system binary owned and writable by root alone, run
/// like `nft` is), never the monitored process's own executable; `text` is the Caddyfile as
/// read in that process's root, for the environment variables it names (`{$NAME}`), given
/// the values the monitored process has. Adapted again only when the file changed (the live
/// loop asks every poll).
pub(super) fn adapt(pid: u32, caddyfile: &Path, text: &str) -> Result<serde_json::Value, String> {
    let caddy = caddy_binary()?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let real = root.join(caddyfile.strip_prefix("/").unwrap_or(caddyfile));
    let stamp = super::in_root::open(&real, 0)
        .and_then(|(f, _)| f.metadata())
        .map(|m| (m.len(), m.modified().ok()))
        .map_err(|e| format!("{}: {e}", caddyfile.display()))?;
    static CACHE: std::sync::OnceLock<std::sync::Mutex<Adapted>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((at, v)) = cache.lock().ok().and_then(|c| c.get(&real).cloned()) {
        if at == stamp {
            return Ok(v);
        }
    }
    let elsewhere = !same_root(&root);
    if let Some(import) = absolute_import(text).filter(|_| elsewhere) {
        // Caddy would look for it in this machine's root, where the sandbox refuses it; a
        // glob matching nothing there would leave its sites out without an error.
        return Err(format!(
            "{} imports {import}, an absolute path, which `caddy adapt` resolves in this \
             machine's root, not the container's (relative imports are adapted): keep \
             Caddy's admin API on, on loopback, or give it a JSON configuration",
            caddyfile.display()
        ));
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let env = environment(&environ, &placeholders(text));
    let config = real.clone();
    let out = std::thread::spawn(move || confined(&caddy, &root, elsewhere, &config, env))
        .join()
        .map_err(|_| "the thread that runs caddy adapt panicked".to_owned())??;
    if !out.status.success() {
        // The child's paths, named as the process's root is named everywhere else.
        return Err(format!(
            "caddy adapt {}: {}",
            caddyfile.display(),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace(CHILD_ROOT, &format!("/proc/{pid}/root"))
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("caddy adapt's output is not JSON: {e}"))?;
    if let Ok(mut c) = cache.lock() {
        c.insert(real, (stamp, v.clone()));
    }
    Ok(v)
}

fn caddy_binary() -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("caddy"))
        .find(|p| {
            use std::os::unix::fs::MetadataExt as _;
            // Root's, and writable by root alone.
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0)
        })
        .ok_or_else(|| {
            "the Caddyfile is read through the admin API, or `caddy adapt` with a caddy \
                binary on the sidecar's PATH; neither is available (keep `admin` on loopback)"
                .to_owned()
        })
}

/// Runs on a thread of its own, which it restricts first: `caddy adapt` of `config` (a path
/// under `root`), reading beneath `root` only. The child reaches `root` by a descriptor it
/// inherits as fd 3 (`/proc/self/fd/3/...`): a sandboxed process may not follow another
/// process's `/proc/PID/root`. Refused where the kernel has no Landlock and `root` is not this
/// process's own (`elsewhere`: a link or an absolute `import` would name this machine's files).
fn confined(
    caddy: &Path,
    root: &Path,
    elsewhere: bool,
    config: &Path,
    env: Vec<(String, String)>,
) -> Result<std::process::Output, String> {
    use std::os::unix::{io::AsRawFd as _, process::CommandExt as _};
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root)
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let within = config.strip_prefix(root).unwrap_or(config);
    let status = confine(caddy, &dir).map_err(|e| format!("the sandbox for caddy adapt: {e}"))?;
    if status.ruleset == landlock::RulesetStatus::NotEnforced && elsewhere {
        return Err(format!(
            "its Caddyfile is in another root (a container's), and is adapted only in a \
             Landlock sandbox, so that a link or an `import` naming an absolute path never \
             reads this machine's file of that name; this kernel has no Landlock ({:?}; Linux \
             5.13 or later, with `landlock` in the kernel's `lsm=` list): keep Caddy's admin \
             API on, on loopback, or give it a JSON configuration",
            status.landlock
        ));
    }
    let fd = dir.as_raw_fd();
    let mut cmd = std::process::Command::new(caddy);
    cmd.env_clear()
        // Caddy refuses to start without a home; it writes nothing there to adapt.
        .env("HOME", "/nonexistent")
        .envs(env)
        .arg("adapt")
        .arg("--config")
        .arg(Path::new(CHILD_ROOT).join(within))
        .args(["--adapter", "caddyfile"]);
    // SAFETY: between fork and exec, dup2 and fcntl only (async-signal-safe), on a descriptor
    // that outlives the child's start.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == ROOT_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, ROOT_FD)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    super::nat::output_within(&mut cmd, std::time::Duration::from_secs(10))
        .map_err(|e| format!("{} adapt: {e}", caddy.display()))
}

/// Restricts the calling thread (and what it starts): read beneath `root`; read and run the
/// caddy binary, the dynamic loader and system libraries; `/dev/null`; nothing else, on the
/// kernel's Landlock as far as it goes.
fn confine(caddy: &Path, root: &std::fs::File) -> Result<landlock::RestrictionStatus, String> {
    use landlock::{
        Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        Scope, ABI,
    };
    let abi = ABI::V6;
    let e = |e: landlock::RulesetError| e.to_string();
    let fd = |p: &Path| PathFd::new(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut rules = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(e)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(e)?
        .scope(Scope::from_all(abi))
        .map_err(e)?
        .create()
        .map_err(e)?
        .add_rule(PathBeneath::new(
            root,
            AccessFs::ReadFile | AccessFs::ReadDir,
        ))
        .map_err(e)?
        .add_rule(PathBeneath::new(
            fd(caddy)?,
            AccessFs::ReadFile | AccessFs::Execute,
        ))
        .map_err(e)?
        .add_rule(PathBeneath::new(
            fd(Path::new("/dev/null"))?,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
        .map_err(e)?;
    for system in [
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/etc/ld.so.cache",
    ] {
        if let Ok(f) = PathFd::new(system) {
            rules = rules
                .add_rule(PathBeneath::new(f, AccessFs::ReadFile | AccessFs::Execute))
                .map_err(e)?;
        }
    }
    rules.restrict_self().map_err(e)
}

/// Whether `/proc/PID/root` is this process's own root.
fn same_root(root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(root), std::fs::metadata("/")) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The first `import` of an absolute path in a Caddyfile.
fn absolute_import(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("import"))
            .then(|| words.next())
            .flatten()
            .filter(|w| w.starts_with('/'))
    })
}

/// The environment variables a Caddyfile names: `{$NAME}` and `{$NAME:default}`.
fn placeholders(text: &str) -> Vec<&str> {
    let mut names: Vec<&str> = text
        .split("{$")
        .skip(1)
        .filter_map(|rest| {
            let end = rest.find(['}', ':'])?;
            let name = &rest[..end];
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .then_some(name)
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Of a process's environment (`/proc/PID/environ`), the values of `names`; never the dynamic
/// loader's (`LD_*`) or the Go runtime's (`GO*`) variables, which would change what the
/// sidecar's child runs rather than what the Caddyfile says.
fn environment(environ: &[u8], names: &[&str]) -> Vec<(String, String)> {
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .filter(|(k, _)| names.contains(k) && !k.starts_with("LD_") && !k.starts_with("GO"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absolute_import_is_named() {
        let text =
            "(snip) {\n}\nimport snip\n:80 {\n\timport sites/*\n}\n  import /etc/caddy/x/* a\n";
        assert_eq!(absolute_import(text), Some("/etc/caddy/x/*"));
        assert_eq!(absolute_import("import sites/*\n# import /etc/x\n"), None);
    }

    #[test]
    fn a_caddyfile_s_environment_variables_and_only_those() {
        let text = "{$SITE} {\n reverse_proxy {$UP:127.0.0.1:18789} {$LD_PRELOAD}\n}\n{$}{$A B}";
        assert_eq!(placeholders(text), ["LD_PRELOAD", "SITE", "UP"]);
        let environ = b"SITE=example.com\0UP=127.0.0.1:1\0LD_PRELOAD=/tmp/x.so\0SECRET=s\0";
        assert_eq!(
            environment(environ, &placeholders(text)),
            [
                ("SITE".to_owned(), "example.com".to_owned()),
                ("UP".to_owned(), "127.0.0.1:1".to_owned())
            ]
        );
    }

    /// Whether this kernel has Landlock (`landlock_create_ruleset`'s version query).
    fn landlock() -> bool {
        // SAFETY: the version query reads no memory.
        unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, 0usize, 0usize, 1u32) > 0 }
    }

    fn container(tmp: &Path) -> PathBuf {
        let ctr = tmp.join("ctr");
        std::fs::create_dir_all(ctr.join("etc/caddy/sites")).expect("dirs");
        ctr
    }

    /// A container's Caddyfile is adapted with its `import`s read in its root.
    #[test]
    fn a_container_s_caddyfile_is_adapted_in_its_root() {
        let tmp = tempfile::tempdir().expect("dir");
        let ctr = container(tmp.path());
        let text = "import sites/*\n";
        std::fs::write(ctr.join("etc/caddy/Caddyfile"), text).expect("Caddyfile");
        std::fs::write(
            ctr.join("etc/caddy/sites/gw.caddy"),
            ":18443 {\n\treverse_proxy 127.0.0.1:18789\n}\n",
        )
        .expect("site");
        let Some(child) = super::super::in_root::Chrooted::start(&ctr) else {
            return;
        };
        let got = adapt(child.0 as u32, Path::new("/etc/caddy/Caddyfile"), text);
        if landlock() {
            let v = got.expect("adapted");
            assert!(v.to_string().contains("127.0.0.1:18789"), "{v}");
        } else {
            assert!(got.expect_err("refused").contains("Landlock"));
        }
    }

    /// A link with an absolute target in a container, and an `import` of an absolute path,
    /// name the container's file: `caddy adapt` resolves them in this machine's root, where
    /// the sandbox refuses them. Before the sandbox, this machine's file was adapted as the
    /// container's configuration.
    #[test]
    fn a_container_s_link_or_import_never_reads_this_machine_s_file() {
        let tmp = tempfile::tempdir().expect("dir");
        let host = tmp.path().join("host.caddy");
        std::fs::write(&host, ":18444 {\n\trespond \"this machine's secret\"\n}\n").expect("host");
        let ctr = container(tmp.path());
        std::os::unix::fs::symlink(&host, ctr.join("etc/caddy/Caddyfile")).expect("link");
        let import = format!("import {}\n", host.display());
        std::fs::write(ctr.join("etc/caddy/imports"), &import).expect("import");
        let inside = ctr.join(host.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(inside.parent().expect("dir")).expect("dirs");
        std::fs::write(&inside, ":18445 {\n\trespond \"the container's\"\n}\n").expect("file");
        let Some(child) = super::super::in_root::Chrooted::start(&ctr) else {
            return;
        };
        // The second as if its `import` had not been seen (as in a file it imports), the third
        // refused before caddy runs.
        for (file, text) in [
            ("/etc/caddy/Caddyfile", ""),
            ("/etc/caddy/imports", ""),
            ("/etc/caddy/imports", &import),
        ] {
            let got = adapt(child.0 as u32, Path::new(file), text);
            let said = match &got {
                Ok(v) => v.to_string(),
                Err(e) => e.clone(),
            };
            assert!(got.is_err(), "{file} adapted: {said}");
            assert!(!said.contains("secret"), "{file}: {said}");
            assert_eq!(
                said.contains("an absolute path"),
                !text.is_empty(),
                "{said}"
            );
        }
    }
}
