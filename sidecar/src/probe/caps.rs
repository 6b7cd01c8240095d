//! The Linux capabilities the live sidecar needs, checked before anything is loaded so that a
//! container started with too few says which one is missing instead of failing somewhere in
//! the kernel. Pure apart from reading `/proc/self/status`.

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

/// The capabilities of `REQUIRED` that the effective set `cap_eff` lacks.
pub fn missing(cap_eff: u64) -> Vec<Cap> {
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    REQUIRED
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

/// Fails with every missing capability named, and why it is needed.
pub fn require() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| anyhow::anyhow!("reading /proc/self/status for the capabilities: {e}"))?;
    let Some(eff) = effective(&status) else {
        anyhow::bail!("no CapEff line in /proc/self/status");
    };
    let gone = missing(eff);
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
        REQUIRED.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let all: u64 = REQUIRED.iter().map(|c| 1u64 << c.bit).sum();
        assert!(missing(all).is_empty());
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
