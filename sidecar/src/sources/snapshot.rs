//! Builds [`Listener`]s from sock_diag and /proc, and enriches probe events the same way.
use std::{collections::HashMap, net::IpAddr};

use super::{
    procs::{self, SocketOwners},
    sockdiag::{self, DiagSocket, SockDiagError},
};
use crate::{
    exposure::{classify, Family, Listener, ProcessInfo, Proto},
    probe::events::ListenChange,
};

fn family_of(addr: IpAddr, v6only: Option<bool>) -> Family {
    match (addr, v6only) {
        (IpAddr::V4(_), _) => Family::Ipv4,
        (IpAddr::V6(_), Some(true)) => Family::Ipv6Only,
        (IpAddr::V6(_), Some(false)) => Family::DualStack,
        (IpAddr::V6(_), None) => Family::Ipv6,
    }
}

/// Attributes sockets to processes, caching what it learned by inode.
#[derive(Debug)]
pub struct Attributor {
    own_netns: Option<u64>,
    cache: HashMap<u64, Option<ProcessInfo>>,
}

impl Default for Attributor {
    fn default() -> Self {
        Self::new()
    }
}

impl Attributor {
    pub fn new() -> Self {
        Self {
            own_netns: procs::netns_of("self"),
            cache: HashMap::new(),
        }
    }

    /// The sidecar's network namespace inode.
    pub fn own_netns(&self) -> Option<u64> {
        self.own_netns
    }

    /// Every listener of the sidecar's network namespace, attributed to its process.
    pub fn host_listeners(&mut self) -> Result<Vec<Listener>, SockDiagError> {
        let sockets: Vec<DiagSocket> = sockdiag::listeners()?
            .into_iter()
            .filter(|s| s.port != 0)
            .collect();
        if sockets.iter().any(|s| !self.cache.contains_key(&s.inode)) {
            let owners = SocketOwners::scan();
            for s in &sockets {
                self.cache
                    .entry(s.inode)
                    .or_insert_with(|| owners.owner(s.inode).and_then(procs::process_info));
            }
        }
        let live: std::collections::HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
        self.cache.retain(|inode, _| live.contains(inode));
        let addrs = procs::netns_addrs("self");
        Ok(sockets
            .into_iter()
            .map(|s| Listener {
                proto: s.proto,
                addr: s.addr,
                port: s.port,
                family: family_of(s.addr, s.v6only),
                scope: classify(s.addr),
                netns: self.own_netns,
                host_netns: true,
                netns_addrs: addrs.clone(),
                inode: Some(s.inode),
                uid: Some(s.uid),
                process: self.cache.get(&s.inode).cloned().flatten(),
                cgroup_id: None,
            })
            .collect())
    }

    /// A listener from a probe event. For sockets in the sidecar's namespace, sock_diag adds
    /// the inode, owner uid and IPV6_V6ONLY; the process comes from /proc, or from the
    /// event's comm when the process is already gone.
    pub fn listener_from_event(&mut self, ev: &ListenChange) -> Listener {
        let netns = procs::netns_of(&ev.tgid.to_string());
        // Unknown namespace (the process is gone): assume the host's, which can only err
        // towards reporting.
        let host_netns = match (netns, self.own_netns) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let diag = if host_netns && ev.opened {
            sockdiag::listeners().ok().and_then(|all| {
                all.into_iter().find(|s| {
                    s.proto == Proto::Tcp
                        && s.port == ev.port
                        && s.addr == ev.addr
                        && procs::holds_socket(ev.tgid, s.inode)
                })
            })
        } else {
            None
        };
        let process = procs::process_info(ev.tgid).or_else(|| {
            (ev.tgid != 0).then(|| ProcessInfo {
                pid: ev.tgid,
                comm: ev.comm.clone(),
                ..Default::default()
            })
        });
        if let (Some(d), Some(p)) = (&diag, &process) {
            self.cache.insert(d.inode, Some(p.clone()));
        }
        Listener {
            proto: Proto::Tcp,
            addr: ev.addr,
            port: ev.port,
            family: family_of(ev.addr, diag.as_ref().and_then(|d| d.v6only)),
            scope: classify(ev.addr),
            netns,
            host_netns,
            // Read while the process lives (a close's is gone: the inventory keeps the open's).
            netns_addrs: if ev.opened {
                procs::netns_addrs(&ev.tgid.to_string())
            } else {
                Vec::new()
            },
            inode: diag.as_ref().map(|d| d.inode),
            uid: diag.as_ref().map(|d| d.uid),
            process,
            cgroup_id: Some(ev.cgroup_id),
        }
    }

    /// Whether some socket still listens on this TCP address and port in the sidecar's
    /// namespace (SO_REUSEPORT groups close one socket at a time).
    pub fn still_listening(&self, addr: IpAddr, port: u16) -> bool {
        sockdiag::listeners().is_ok_and(|all| {
            all.iter()
                .any(|s| s.proto == Proto::Tcp && s.addr == addr && s.port == port)
        })
    }
}
