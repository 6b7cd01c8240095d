//! The current set of exposures, and the changes between successive views of it. Pure.
//!
//! Three feeds update it: probe events (one listener opens or closes, any network namespace),
//! rescans of the sidecar's own namespace (the whole list of host listeners, authoritative for
//! that namespace), and NAT rule reads (the whole list of publishes).
use std::collections::BTreeMap;

use serde::Serialize;

use super::{nat::NatPublish, Exposure, ExposureKey, Listener};

/// Whether an exposure appeared or went away.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
}

/// Which feed saw the change.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChangeSource {
    /// A kernel probe event.
    Probe,
    /// A sock_diag rescan.
    Rescan,
    /// A NAT rule read.
    Nat,
}

/// One change to the inventory.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Change {
    pub change: ChangeKind,
    pub source: ChangeSource,
    pub exposure: Exposure,
}

/// The exposures known now.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    listeners: BTreeMap<ExposureKey, Listener>,
    publishes: BTreeMap<ExposureKey, NatPublish>,
}

/// Keeps what the newer view lacks (process, inode, cgroup) from the older one.
fn merge(newer: Listener, older: &Listener) -> Listener {
    Listener {
        inode: newer.inode.or(older.inode),
        uid: newer.uid.or(older.uid),
        netns: newer.netns.or(older.netns),
        netns_addrs: if newer.netns_addrs.is_empty() {
            older.netns_addrs.clone()
        } else {
            newer.netns_addrs
        },
        process: newer.process.or_else(|| older.process.clone()),
        cgroup_id: newer.cgroup_id.or(older.cgroup_id),
        family: if newer.family == super::Family::Ipv6 {
            older.family
        } else {
            newer.family
        },
        ..newer
    }
}

impl Inventory {
    /// Every listener, in key order.
    pub fn listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.values()
    }

    /// Every listener, to update what was learned of it (never its key's fields).
    pub fn listeners_mut(&mut self) -> impl Iterator<Item = &mut Listener> {
        self.listeners.values_mut()
    }

    /// Every exposure, listeners first, in key order.
    pub fn exposures(&self) -> Vec<Exposure> {
        self.listeners
            .values()
            .cloned()
            .map(Exposure::Listener)
            .chain(self.publishes.values().cloned().map(Exposure::NatPublish))
            .collect()
    }

    pub fn listener(&self, key: &ExposureKey) -> Option<&Listener> {
        self.listeners.get(key)
    }

    pub fn len(&self) -> usize {
        self.listeners.len() + self.publishes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A listener opened (probe event). Returns the change if it is new.
    pub fn listener_opened(&mut self, listener: Listener, source: ChangeSource) -> Option<Change> {
        let key = listener.key();
        match self.listeners.get(&key) {
            Some(old) => {
                let merged = merge(listener, old);
                self.listeners.insert(key, merged);
                None
            }
            None => {
                self.listeners.insert(key, listener.clone());
                Some(Change {
                    change: ChangeKind::Added,
                    source,
                    exposure: Exposure::Listener(listener),
                })
            }
        }
    }

    /// A listener closed (probe event, after checking no other socket still holds the key).
    pub fn listener_closed(&mut self, key: &ExposureKey, source: ChangeSource) -> Option<Change> {
        self.listeners.remove(key).map(|l| Change {
            change: ChangeKind::Removed,
            source,
            exposure: Exposure::Listener(l),
        })
    }

    /// A full view of the listeners in the sidecar's own network namespace (a rescan).
    /// Listeners of other namespaces, known only from probe events, are left alone.
    pub fn replace_host_listeners(
        &mut self,
        current: Vec<Listener>,
        source: ChangeSource,
    ) -> Vec<Change> {
        let mut fresh: BTreeMap<ExposureKey, Listener> = BTreeMap::new();
        for l in current {
            let key = l.key();
            let l = match self.listeners.get(&key) {
                Some(old) => merge(l, old),
                None => l,
            };
            fresh.entry(key).or_insert(l);
        }
        let mut changes = Vec::new();
        let stale: Vec<ExposureKey> = self
            .listeners
            .iter()
            .filter(|(k, l)| l.host_netns && !fresh.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            changes.extend(self.listener_closed(&key, source));
        }
        for (key, l) in fresh {
            match self.listeners.entry(key) {
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    slot.insert(l);
                }
                std::collections::btree_map::Entry::Vacant(_) => {
                    changes.extend(self.listener_opened(l, source));
                }
            }
        }
        changes
    }

    /// A full view of the NAT publishes.
    pub fn replace_publishes(&mut self, current: Vec<NatPublish>) -> Vec<Change> {
        let fresh: BTreeMap<ExposureKey, NatPublish> =
            current.into_iter().map(|p| (p.key(), p)).collect();
        let mut changes = Vec::new();
        for (key, p) in &self.publishes {
            if !fresh.contains_key(key) {
                changes.push(Change {
                    change: ChangeKind::Removed,
                    source: ChangeSource::Nat,
                    exposure: Exposure::NatPublish(p.clone()),
                });
            }
        }
        for (key, p) in &fresh {
            if !self.publishes.contains_key(key) {
                changes.push(Change {
                    change: ChangeKind::Added,
                    source: ChangeSource::Nat,
                    exposure: Exposure::NatPublish(p.clone()),
                });
            }
        }
        self.publishes = fresh;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use crate::exposure::{classify, Family, ProcessInfo, Proto};

    fn l(addr: &str, port: u16, host: bool) -> Listener {
        let addr = addr.parse().expect("addr");
        Listener {
            proto: Proto::Tcp,
            addr,
            port,
            family: Family::Ipv4,
            scope: classify(addr),
            netns: Some(if host { 1 } else { 2 }),
            host_netns: host,
            netns_addrs: Vec::new(),
            inode: None,
            uid: None,
            process: None,
            cgroup_id: None,
        }
    }

    #[test]
    fn open_close_and_duplicates() {
        let mut inv = Inventory::default();
        let a = l("0.0.0.0", 80, true);
        assert!(inv
            .listener_opened(a.clone(), ChangeSource::Probe)
            .is_some());
        // A second socket on the same address (SO_REUSEPORT) is not a new exposure.
        assert!(inv
            .listener_opened(a.clone(), ChangeSource::Probe)
            .is_none());
        assert_eq!(inv.len(), 1);
        let gone = inv
            .listener_closed(&a.key(), ChangeSource::Probe)
            .expect("removed");
        assert_eq!(gone.change, ChangeKind::Removed);
        assert!(inv.listener_closed(&a.key(), ChangeSource::Probe).is_none());
        assert!(inv.is_empty());
    }

    #[test]
    fn rescan_replaces_host_listeners_only() {
        let mut inv = Inventory::default();
        let mut with_process = l("0.0.0.0", 80, true);
        with_process.process = Some(ProcessInfo {
            pid: 7,
            comm: "nginx".into(),
            ..Default::default()
        });
        with_process.netns_addrs = vec![IpAddr::from([10, 0, 0, 1])];
        inv.listener_opened(with_process, ChangeSource::Probe);
        inv.listener_opened(l("0.0.0.0", 81, true), ChangeSource::Probe);
        inv.listener_opened(l("0.0.0.0", 82, false), ChangeSource::Probe);
        let mut rescanned = l("0.0.0.0", 80, true);
        rescanned.inode = Some(99);
        let changes = inv.replace_host_listeners(
            vec![rescanned, l("127.0.0.1", 83, true)],
            ChangeSource::Rescan,
        );
        let summary: Vec<_> = changes
            .iter()
            .map(|c| (c.change, c.exposure.port()))
            .collect();
        assert_eq!(
            summary,
            vec![(ChangeKind::Removed, 81), (ChangeKind::Added, 83)]
        );
        // The other namespace's listener stays; the rescan kept the process it did not know.
        assert_eq!(inv.len(), 3);
        let kept = inv.listener(&l("0.0.0.0", 80, true).key()).expect("kept");
        assert_eq!(kept.inode, Some(99));
        assert_eq!(kept.comm(), Some("nginx"));
        assert_eq!(kept.netns_addrs, vec![IpAddr::from([10, 0, 0, 1])]);
    }

    #[test]
    fn a_listener_is_reached_at_its_own_address_or_its_namespaces() {
        let ip = |a: &str| -> IpAddr { a.parse().expect("addr") };
        // The Gateway in a container: [::]:18789 (dual stack) in a namespace that owns
        // 10.1.2.2; the same port in another container (10.1.3.2), and on the host.
        let mut gateway = l("::", 18789, false);
        gateway.family = Family::DualStack;
        gateway.netns_addrs = vec![ip("10.1.2.2"), ip("fd00::2")];
        let mut other = l("0.0.0.0", 18789, false);
        other.netns_addrs = vec![ip("10.1.3.2")];
        let host = l("0.0.0.0", 18789, true);
        assert!(gateway.reached_at(ip("10.1.2.2")));
        assert!(gateway.reached_at(ip("::ffff:10.1.2.2")));
        assert!(gateway.reached_at(ip("fd00::2")));
        assert!(!other.reached_at(ip("10.1.2.2")));
        assert!(other.reached_at(ip("10.1.3.2")));
        assert!(!other.reached_at(ip("fd00::2")), "0.0.0.0 takes no IPv6");
        gateway.family = Family::Ipv6Only;
        assert!(
            !gateway.reached_at(ip("10.1.2.2")),
            "IPV6_V6ONLY takes no IPv4"
        );
        // Loopback reaches the sidecar's own namespace only.
        assert!(host.reached_at(ip("127.0.0.1")));
        assert!(!other.reached_at(ip("127.0.0.1")));
        assert!(l("127.0.0.1", 18789, true).reached_at(ip("127.0.0.1")));
        assert!(!l("127.0.0.1", 18789, false).reached_at(ip("127.0.0.1")));
        assert!(!l("127.0.0.2", 18789, true).reached_at(ip("127.0.0.1")));
        // A namespace whose addresses are not known: an unspecified bind counts as reached.
        assert!(host.reached_at(ip("10.1.2.2")));
        assert!(l("10.1.2.2", 18789, false).reached_at(ip("10.1.2.2")));
        assert!(!l("10.1.2.9", 18789, false).reached_at(ip("10.1.2.2")));
    }

    #[test]
    fn publishes_diff() {
        use crate::exposure::nat::{parse_iptables_save, NatBackend};
        let rules = |ports: &[u16]| {
            let text: String = std::iter::once("*nat\n".to_owned())
                .chain(ports.iter().map(|p| {
                    format!(
                        "-A DOCKER -p tcp --dport {p} -j DNAT --to-destination 172.17.0.2:{p}\n"
                    )
                }))
                .collect();
            parse_iptables_save(&text, NatBackend::IptablesNft, "ipv4").publishes
        };
        let mut inv = Inventory::default();
        assert_eq!(inv.replace_publishes(rules(&[1, 2])).len(), 2);
        assert!(inv.replace_publishes(rules(&[1, 2])).is_empty());
        let changes = inv.replace_publishes(rules(&[2, 3]));
        let summary: Vec<_> = changes
            .iter()
            .map(|c| (c.change, c.exposure.port()))
            .collect();
        assert_eq!(
            summary,
            vec![(ChangeKind::Removed, 1), (ChangeKind::Added, 3)]
        );
    }
}
