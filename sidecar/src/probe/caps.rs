//! The Linux capabilities the live sidecar needs, checked before anything is loaded so that a
//! container started with too few says which one is missing instead of failing somewhere in
//! the kernel; and, once the probes are loaded, the drop of every capability the running
//! sidecar no longer needs, in every thread of the process ([`drop_unneeded`]).

/// One capability the sidecar needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub name: &'static str,
    pub bit: u32,
    /// What it is needed for.
    pub why: &'static str,
}

/// CAP_SYS_ADMIN: before CAP_BPF and CAP_PERFMON existed (Linux 5.8) it covered both.
const SYS_ADMIN: u32 = 21;

/// What `edgewatch run` needs, and nothing more (`--privileged` is not needed).
pub const REQUIRED: [Cap; 4] = [
    Cap {
        name: "CAP_BPF",
        bit: 39,
        why: "create the eBPF maps and load the programs",
    },
    Cap {
        name: "CAP_PERFMON",
        bit: 38,
        why: "attach the tracepoint programs (perf events) and let them read kernel memory",
    },
    Cap {
        name: "CAP_NET_ADMIN",
        bit: 12,
        why: "attach the TC/TCX programs to interfaces and read the netfilter NAT rules",
    },
    Cap {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        why: "read other processes' /proc/PID/fd to name the process behind each socket",
    },
];

/// What the embedded store adds (`[store]` with no `url`): its server runs as an account of
/// its own, so edgewatch must be able to become it, hand it its data directory, and stop it.
pub const EMBEDDED_STORE: [Cap; 4] = [
    Cap {
        name: "CAP_SETUID",
        bit: 7,
        why: "run the embedded ClickHouse as its own unprivileged account",
    },
    Cap {
        name: "CAP_SETGID",
        bit: 6,
        why: "run the embedded ClickHouse with its own group only",
    },
    Cap {
        name: "CAP_CHOWN",
        bit: 0,
        why: "give the embedded ClickHouse its data directory",
    },
    Cap {
        name: "CAP_KILL",
        bit: 5,
        why: "stop the embedded ClickHouse, which runs as another account",
    },
];

/// CAP_DAC_READ_SEARCH: read access logs and /proc entries that belong to other accounts.
const DAC_READ_SEARCH: u32 = 2;
/// CAP_SETPCAP: needed to shrink the bounding set.
const SETPCAP: u32 = 8;

/// The capabilities of `REQUIRED` that the effective set `cap_eff` lacks.
pub fn missing(cap_eff: u64) -> Vec<Cap> {
    missing_of(&REQUIRED, cap_eff)
}

/// The capabilities of `wanted` that `cap_eff` lacks.
pub fn missing_of(wanted: &[Cap], cap_eff: u64) -> Vec<Cap> {
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    wanted
        .iter()
        .copied()
        .filter(|c| !has(c.bit))
        // CAP_SYS_ADMIN still grants BPF and perf events.
        .filter(|c| !(matches!(c.bit, 38 | 39) && has(SYS_ADMIN)))
        .collect()
}

/// The effective set from a `/proc/PID/status` text.
pub fn effective(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Fails with every missing capability named, and why it is needed (the embedded store's
/// too when it is used).
pub fn require(embedded_store: bool) -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| anyhow::anyhow!("reading /proc/self/status for the capabilities: {e}"))?;
    let Some(eff) = effective(&status) else {
        anyhow::bail!("no CapEff line in /proc/self/status");
    };
    let mut wanted = REQUIRED.to_vec();
    if embedded_store {
        wanted.extend(EMBEDDED_STORE);
    }
    let gone = missing_of(&wanted, eff);
    if gone.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = gone
        .iter()
        .map(|c| format!("{} (to {})", c.name, c.why))
        .collect();
    anyhow::bail!(
        "missing capabilit{} {}; run as root, or grant exactly {} (see the README's container section)",
        if gone.len() == 1 { "y" } else { "ies" },
        list.join(", "),
        wanted.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
    )
}

/// The name of a capability bit, as the kernel's headers spell it.
pub fn name(bit: u32) -> &'static str {
    const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    NAMES.get(bit as usize).copied().unwrap_or("CAP_UNKNOWN")
}

/// What the running sidecar still needs once the probes are loaded: reading the NAT rules
/// (`nft`/`iptables-save` run as children; CAP_NET_ADMIN), naming the process behind each
/// socket (other processes' /proc/PID/fd; CAP_SYS_PTRACE), reading access logs that belong to
/// the proxy's account (CAP_DAC_READ_SEARCH), and stopping the embedded ClickHouse, which runs
/// as another account (CAP_KILL, only with that store).
pub fn needed_after_load(embedded_store: bool) -> u64 {
    let mut keep = (1u64 << 12) | (1u64 << 19) | (1u64 << DAC_READ_SEARCH);
    if embedded_store {
        keep |= 1u64 << 5;
    }
    keep
}

/// The names of the bits set in `mask`.
pub fn names(mask: u64) -> Vec<&'static str> {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(name)
        .collect()
}

/// What [`drop_unneeded`] left.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Kept {
    /// The capabilities every thread still has (effective = permitted).
    pub kept: Vec<&'static str>,
    /// Whether the bounding set was cut down to them too (needs CAP_SETPCAP; without it,
    /// no-new-privs still keeps programs the sidecar runs from regaining the rest).
    pub bounding_cut: bool,
    pub no_new_privs: bool,
    /// Threads changed.
    pub threads: usize,
}

impl Kept {
    pub fn summary(&self) -> String {
        format!(
            "capabilities kept: {}{}; no-new-privs",
            self.kept.join(", "),
            if self.bounding_cut {
                ""
            } else {
                " (bounding set unchanged: no CAP_SETPCAP)"
            }
        )
    }
}

mod drop_impl {
    //! Capabilities are a per-thread attribute in Linux: capset(2) changes the calling thread
    //! only. The runtime's threads exist already when the probes are loaded, so each one is
    //! asked (a real-time signal, as glibc does for setuid) to drop its own, and the result is
    //! checked from /proc/self/task afterwards.
    use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

    pub(super) static KEEP: AtomicU64 = AtomicU64::new(0);
    pub(super) static CUT_BOUNDING: AtomicU32 = AtomicU32::new(0);
    pub(super) static LAST_CAP: AtomicU32 = AtomicU32::new(40);
    pub(super) static DONE: AtomicUsize = AtomicUsize::new(0);

    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;

    /// In the calling thread: bounding set (when allowed), ambient and inheritable cleared,
    /// effective = permitted = `keep`, no-new-privs. Raw syscalls only: async-signal-safe.
    pub(super) fn drop_here(keep: u64, cut_bounding: bool, last: u32) -> bool {
        // SAFETY: prctl and capset with valid arguments and pointers to local memory.
        unsafe {
            if cut_bounding {
                for cap in 0..=last {
                    if keep & (1u64 << cap) == 0 {
                        libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0);
                    }
                }
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            );
            let mut header = Header {
                version: VERSION_3,
                pid: 0,
            };
            let data = [
                Data {
                    effective: keep as u32,
                    permitted: keep as u32,
                    inheritable: 0,
                },
                Data {
                    effective: (keep >> 32) as u32,
                    permitted: (keep >> 32) as u32,
                    inheritable: 0,
                },
            ];
            let ok =
                libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) == 0;
            let nnp = libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0;
            ok && nnp
        }
    }

    pub(super) extern "C" fn on_signal(_: libc::c_int) {
        let saved = std::io::Error::last_os_error().raw_os_error();
        drop_here(
            KEEP.load(Ordering::SeqCst),
            CUT_BOUNDING.load(Ordering::SeqCst) != 0,
            LAST_CAP.load(Ordering::SeqCst),
        );
        DONE.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = saved {
            // SAFETY: restores errno for the interrupted code.
            unsafe { *libc::__errno_location() = e };
        }
    }
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Drops, in every thread of this process, each capability outside `wanted` (and outside
/// what the process holds), cuts the bounding set when CAP_SETPCAP allows, and sets
/// no-new-privs; then checks every thread from /proc/self/task.
pub fn drop_unneeded(wanted: u64) -> anyhow::Result<Kept> {
    use std::sync::atomic::Ordering;
    let own = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(|e| anyhow::anyhow!("reading /proc/thread-self/status: {e}"))?;
    let permitted = status_field(&own, "CapPrm:").unwrap_or(0);
    let effective = status_field(&own, "CapEff:").unwrap_or(0);
    let keep = wanted & permitted;
    let cut_bounding = effective & (1u64 << SETPCAP) != 0;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    drop_impl::KEEP.store(keep, Ordering::SeqCst);
    drop_impl::CUT_BOUNDING.store(u32::from(cut_bounding), Ordering::SeqCst);
    drop_impl::LAST_CAP.store(last, Ordering::SeqCst);
    let signal = libc::SIGRTMIN() + 6;
    // SAFETY: installs a handler that only makes raw syscalls and touches atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = drop_impl::on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            anyhow::bail!("sigaction: {}", std::io::Error::last_os_error());
        }
    }
    // SAFETY: getpid/gettid have no preconditions.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let conforms = |status: &str| {
        status_field(status, "CapEff:") == Some(keep)
            && status_field(status, "CapPrm:") == Some(keep)
            && status_field(status, "CapAmb:") == Some(0)
            && status
                .lines()
                .any(|l| l.starts_with("NoNewPrivs:") && l.trim_end().ends_with('1'))
    };
    let mut threads = 0usize;
    // Threads may be created meanwhile (by threads that still hold everything): scan until
    // every thread conforms.
    for round in 0..10 {
        let mut asked = 0usize;
        let before = drop_impl::DONE.load(Ordering::SeqCst);
        for entry in std::fs::read_dir("/proc/self/task")? {
            let Ok(tid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if tid == me {
                continue;
            }
            let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
            else {
                continue; // gone
            };
            if conforms(&status) {
                continue;
            }
            // SAFETY: tgkill to a thread of this process.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) } == 0 {
                asked += 1;
            }
        }
        if asked == 0 && round > 0 {
            break;
        }
        threads += asked;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while drop_impl::DONE.load(Ordering::SeqCst) < before + asked
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if round == 0 {
            drop_impl::drop_here(keep, cut_bounding, last);
            threads += 1;
        }
    }
    // Every thread, checked.
    for entry in std::fs::read_dir("/proc/self/task")? {
        let tid = entry?.file_name();
        let Ok(status) =
            std::fs::read_to_string(format!("/proc/self/task/{}/status", tid.to_string_lossy()))
        else {
            continue;
        };
        if !conforms(&status) {
            anyhow::bail!(
                "thread {} still holds capabilities after the drop (CapEff {:x})",
                tid.to_string_lossy(),
                status_field(&status, "CapEff:").unwrap_or(u64::MAX)
            );
        }
        if cut_bounding && status_field(&status, "CapBnd:").is_some_and(|b| b & !keep != 0) {
            anyhow::bail!("thread {} kept a wider bounding set", tid.to_string_lossy());
        }
    }
    Ok(Kept {
        kept: names(keep),
        bounding_cut: cut_bounding,
        no_new_privs: true,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let all: u64 = REQUIRED.iter().map(|c| 1u64 << c.bit).sum();
        assert!(missing(all).is_empty());
        assert_eq!(
            missing_of(&EMBEDDED_STORE, 0)
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>(),
            ["CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL"]
        );
        for c in REQUIRED.iter().chain(&EMBEDDED_STORE) {
            assert_eq!(name(c.bit), c.name);
        }
        assert_eq!(
            names(needed_after_load(true)),
            [
                "CAP_DAC_READ_SEARCH",
                "CAP_KILL",
                "CAP_NET_ADMIN",
                "CAP_SYS_PTRACE"
            ]
        );
        let no_bpf = all & !(1u64 << 39);
        assert_eq!(missing(no_bpf)[0].name, "CAP_BPF");
        // CAP_SYS_ADMIN stands in for BPF and PERFMON, not for the others.
        let admin = (1u64 << 21) | (1u64 << 12) | (1u64 << 19);
        assert!(missing(admin).is_empty());
        assert_eq!(missing(1u64 << 21).len(), 2);
        assert_eq!(
            effective("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
    }
}
