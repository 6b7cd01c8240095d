//! The exposure model: who can reach which port, classified, and judged against the policy.
//!
//! Everything in this module is pure (data in, data out): the live path (`crate::live`) and
//! the one-shot `edgewatch exposure` command feed it what the kernel, /proc and the NAT rules
//! say; tests feed it built values.
pub mod classify;
pub mod config;
pub mod inventory;
pub mod nat;
pub mod netns;
pub mod policy;
pub mod process;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use classify::{classify, Scope};

/// Transport protocol of an exposure.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Which IP families a socket accepts.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    /// An IPv6 socket with IPV6_V6ONLY set: IPv6 only.
    Ipv6Only,
    /// An IPv6 socket without IPV6_V6ONLY: `[::]` also accepts IPv4 (mapped addresses).
    DualStack,
    /// IPv6, but whether IPV6_V6ONLY is set could not be learned (the socket lives in another
    /// network namespace, or closed before it could be asked).
    Ipv6,
}

/// The process that owns a socket.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `comm` (at most 15 bytes).
    pub comm: String,
    /// Command line, arguments joined by spaces (empty for kernel threads).
    pub cmdline: String,
    /// The container the process runs in, from its cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<process::Container>,
    /// Set when the process is Docker's userland proxy publishing a container port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_proxy: Option<process::DockerProxy>,
}

/// A listening TCP socket or a bound, unconnected UDP socket.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Listener {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    pub family: Family,
    pub scope: Scope,
    /// Network namespace inode of the owning process, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// False when the socket lives in another network namespace than the sidecar's (the
    /// host's, when run as the documented sidecar): such a socket is only reachable through a
    /// publish (docker-proxy or DNAT), which is reported on its own.
    pub host_netns: bool,
    /// The addresses of the socket's network namespace (its interfaces', loopback left out),
    /// when known: where a socket bound to the unspecified address is reached from outside.
    /// Only for attribution: not written to outputs (every host listener would list the
    /// host's addresses).
    #[serde(skip)]
    pub netns_addrs: Vec<IpAddr>,
    /// Socket inode, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// Owning user id, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    /// The kernel's cgroup id for the task that opened it (probe events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

impl Listener {
    /// The identity of a listener in the inventory: several sockets sharing it (SO_REUSEPORT)
    /// are one exposure.
    pub fn key(&self) -> ExposureKey {
        ExposureKey::Listener {
            proto: self.proto,
            addr: self.addr,
            port: self.port,
            netns: if self.host_netns { None } else { self.netns },
        }
    }

    /// The owning process's name, if known.
    pub fn comm(&self) -> Option<&str> {
        self.process.as_ref().map(|p| p.comm.as_str())
    }

    /// Whether a connection from the sidecar's namespace to `server` (on this port) lands on
    /// this socket. A loopback address reaches only the sidecar's own namespace; another
    /// address reaches a socket bound to it, or one bound to the unspecified address (of a
    /// matching family) in the namespace that owns it. When that namespace's addresses are
    /// not known, an unspecified bind counts as reached: the error is towards "listening".
    pub fn reached_at(&self, server: IpAddr) -> bool {
        let server = server.to_canonical();
        if !self.addr.is_unspecified() {
            return self.addr.to_canonical() == server
                && (self.host_netns || !server.is_loopback());
        }
        let family = match (self.addr, server) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => true,
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
            (IpAddr::V6(_), IpAddr::V4(_)) => self.family != Family::Ipv6Only,
        };
        family
            && if server.is_loopback() {
                self.host_netns
            } else {
                self.netns_addrs.is_empty() || self.netns_addrs.contains(&server)
            }
    }
}

/// Identity of an exposure, for inventories, diffs and alert deduplication.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExposureKey {
    Listener {
        proto: Proto,
        addr: IpAddr,
        port: u16,
        /// Set only for sockets outside the sidecar's network namespace.
        #[serde(skip_serializing_if = "Option::is_none")]
        netns: Option<u64>,
    },
    NatPublish {
        proto: Proto,
        port: u16,
        port_end: u16,
        /// The destination restriction as written in the rule, or "*" for none.
        dest: String,
        to: String,
    },
}

impl std::fmt::Display for ExposureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExposureKey::Listener {
                proto,
                addr,
                port,
                netns,
            } => {
                match addr {
                    IpAddr::V4(a) => write!(f, "{proto} {a}:{port}")?,
                    IpAddr::V6(a) => write!(f, "{proto} [{a}]:{port}")?,
                }
                if let Some(ns) = netns {
                    write!(f, " (netns {ns})")?;
                }
                Ok(())
            }
            ExposureKey::NatPublish {
                proto,
                port,
                port_end,
                dest,
                to,
            } => {
                write!(f, "{proto} dnat {dest}:{port}")?;
                if port_end != port {
                    write!(f, "-{port_end}")?;
                }
                write!(f, " -> {to}")
            }
        }
    }
}

/// Anything that makes a port reachable: a socket, or a NAT rule.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Exposure {
    Listener(Listener),
    NatPublish(nat::NatPublish),
}

impl Exposure {
    pub fn key(&self) -> ExposureKey {
        match self {
            Exposure::Listener(l) => l.key(),
            Exposure::NatPublish(p) => p.key(),
        }
    }

    pub fn scope(&self) -> Scope {
        match self {
            Exposure::Listener(l) => l.scope,
            Exposure::NatPublish(p) => p.scope,
        }
    }

    pub fn proto(&self) -> Proto {
        match self {
            Exposure::Listener(l) => l.proto,
            Exposure::NatPublish(p) => p.proto,
        }
    }

    /// The port reachable from outside (the listener's, or the rule's destination port).
    pub fn port(&self) -> u16 {
        match self {
            Exposure::Listener(l) => l.port,
            Exposure::NatPublish(p) => p.port,
        }
    }
}
