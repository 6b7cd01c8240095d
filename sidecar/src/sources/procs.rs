//! Process attribution from /proc: which process owns a socket inode, its name, command line,
//! container and network namespace. The text parsing lives in `crate::exposure::process`.
use std::collections::HashMap;

use procfs::process::{FDTarget, Process};

use crate::exposure::{
    netns,
    process::{container_from_cgroup, parse_docker_proxy},
    ProcessInfo,
};

/// Parses a namespace link target such as `net:[4026531840]`.
pub fn parse_ns_link(target: &str) -> Option<u64> {
    target
        .split_once(":[")
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
}

/// The network namespace inode of `pid` ("self" for the sidecar).
pub fn netns_of(pid: &str) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    parse_ns_link(&target.to_string_lossy())
}

/// The addresses of `pid`'s network namespace ("self" for the sidecar's), loopback left out:
/// where a socket bound to the unspecified address there is reached. Empty when /proc cannot
/// say (the process is gone).
pub fn netns_addrs(pid: &str) -> Vec<std::net::IpAddr> {
    let read = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{file}"));
    let mut addrs = read("fib_trie")
        .map(|t| netns::fib_trie_locals(&t))
        .unwrap_or_default();
    if let Ok(t) = read("if_inet6") {
        addrs.extend(netns::if_inet6_addrs(&t));
    }
    addrs
}

/// Everything /proc says about one process; `None` when it is gone.
pub fn process_info(pid: u32) -> Option<ProcessInfo> {
    let proc = Process::new(i32::try_from(pid).ok()?).ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .ok()?;
    let args = proc.cmdline().unwrap_or_default();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let docker_proxy = if comm == "docker-proxy" {
        parse_docker_proxy(&args)
    } else {
        None
    };
    Some(ProcessInfo {
        pid,
        comm,
        cmdline: args.join(" "),
        container: container_from_cgroup(&cgroup),
        docker_proxy,
    })
}

/// Socket inode -> owning process id, built by walking /proc/*/fd (what `ss -p` does). A
/// socket shared by several processes (a forking server) maps to the lowest pid.
#[derive(Debug, Default)]
pub struct SocketOwners {
    by_inode: HashMap<u64, u32>,
}

impl SocketOwners {
    /// Walks every process. Processes that vanish or deny access are skipped.
    pub fn scan() -> Self {
        let mut by_inode: HashMap<u64, u32> = HashMap::new();
        let Ok(all) = procfs::process::all_processes() else {
            return Self { by_inode };
        };
        for proc in all.flatten() {
            let Ok(pid) = u32::try_from(proc.pid()) else {
                continue;
            };
            let Ok(fds) = proc.fd() else {
                continue;
            };
            for fd in fds.flatten() {
                if let FDTarget::Socket(inode) = fd.target {
                    by_inode
                        .entry(inode)
                        .and_modify(|p| *p = (*p).min(pid))
                        .or_insert(pid);
                }
            }
        }
        Self { by_inode }
    }

    pub fn owner(&self, inode: u64) -> Option<u32> {
        self.by_inode.get(&inode).copied()
    }
}

/// Whether `pid` holds a socket with this inode (a targeted check, cheaper than a scan).
pub fn holds_socket(pid: u32, inode: u64) -> bool {
    let Ok(proc) = Process::new(pid as i32) else {
        return false;
    };
    let Ok(fds) = proc.fd() else {
        return false;
    };
    fds.flatten()
        .any(|fd| matches!(fd.target, FDTarget::Socket(i) if i == inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("net:[]"), None);
        assert_eq!(parse_ns_link("garbage"), None);
    }
}
