//! Which listeners are the Gateway's: the ones the hop reaches. Its port can have listeners
//! in several network namespaces (another container, a stand-in, a second Gateway), and only
//! the one the proxy's connections land on says whether the Gateway is up. The hop's
//! connection records name where they went; a listener is the Gateway's when it is reached at
//! one of those addresses ([`Listener::reached_at`]). Until the hop has been seen on a port,
//! every listener on it counts. Pure.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use super::{Pipeline, Sink};
use crate::{
    exposure::{inventory::Change, Exposure, Listener, Proto},
    hop::HopRecord,
};

/// Server addresses kept per port: enough for a proxy balancing over a few Gateways. Past it
/// the oldest is forgotten.
const MAX_TARGETS: usize = 16;

/// Where the hop's connections to each Gateway port went (their server addresses).
#[derive(Debug, Default)]
pub(super) struct Targets {
    by_port: BTreeMap<u16, Vec<IpAddr>>,
}

impl Targets {
    /// Learns that a hop connection went to `server`; true when that address is new.
    fn saw(&mut self, server: SocketAddr) -> bool {
        let seen = self.by_port.entry(server.port()).or_default();
        let ip = server.ip().to_canonical();
        if seen.contains(&ip) {
            return false;
        }
        if seen.len() >= MAX_TARGETS {
            seen.remove(0);
        }
        seen.push(ip);
        true
    }

    /// Whether the hop reaches `l` (every listener does on a port the hop was not seen on).
    fn reach(&self, l: &Listener) -> bool {
        self.by_port
            .get(&l.port)
            .is_none_or(|seen| seen.iter().any(|s| l.reached_at(*s)))
    }
}

impl Pipeline {
    /// Learns where a connection's or session's record says the hop went (exchanges say
    /// nothing new: their connection's record came first). A new address can change which
    /// listeners count: the port's state is then learned again, not announced (no listener
    /// came or went).
    #[inline(never)]
    pub(super) fn learn_target(&mut self, r: &HopRecord) {
        let server = match r {
            HopRecord::Conn(c) => c.conn.server,
            HopRecord::Websocket(s) => s.conn.server,
            HopRecord::Http(_) | HopRecord::Loss(_) => return,
        };
        if self.targets.saw(server) {
            self.relearn(server.port());
        }
    }

    /// Reads again the addresses of the namespaces of the listeners outside the sidecar's
    /// (live, at each rescan: an address a namespace gained after its listener opened).
    /// `read` gives a listener's namespace's addresses, or `None` when it cannot say (its
    /// process is gone): the ones known are then kept. Which listeners the hop reaches may
    /// change; the Gateway ports' states are learned again, not announced.
    pub fn refresh_netns_addrs(&mut self, read: impl Fn(&Listener) -> Option<Vec<IpAddr>>) {
        for l in self.inventory.listeners_mut().filter(|l| !l.host_netns) {
            if let Some(addrs) = read(l).filter(|a| !a.is_empty()) {
                l.netns_addrs = addrs;
            }
        }
        for port in self.hop_ports.clone() {
            self.relearn(port);
        }
    }

    /// Learns a Gateway port's state again where it is known, without announcing it: which
    /// listeners count changed, not the listeners.
    fn relearn(&mut self, port: u16) {
        if self.gateway_up.contains_key(&port) {
            let up = self.gateway_listening(port);
            self.gateway_up.insert(port, up);
        }
    }

    /// TCP listeners on `port`, any address and namespace.
    pub(super) fn listeners_on(&self, port: u16) -> impl Iterator<Item = &Listener> {
        self.inventory
            .listeners()
            .filter(move |l| l.port == port && l.proto == Proto::Tcp)
    }

    /// The listeners on the Gateway's `port` that the hop reaches.
    fn gateway_listeners_on(&self, port: u16) -> impl Iterator<Item = &Listener> {
        self.listeners_on(port).filter(|l| self.targets.reach(l))
    }

    /// Whether a listener the hop reaches holds the Gateway's `port`.
    fn gateway_listening(&self, port: u16) -> bool {
        self.gateway_listeners_on(port).next().is_some()
    }

    /// Where the Gateway's ports have listeners the hop reaches (`addr:port`), for the
    /// stale-port texts.
    pub(super) fn gateway_addrs(&self) -> Vec<String> {
        self.hop_ports
            .iter()
            .flat_map(|p| self.gateway_listeners_on(*p))
            .map(|l| SocketAddr::new(l.addr, l.port).to_string())
            .collect()
    }

    /// Tells the alert engine when a Gateway port loses its last listener the hop reaches,
    /// or gets one back. The first look only learns the state (a Gateway not running when
    /// the sidecar starts is judged by the refusals it causes, not by its absence).
    pub(super) fn gateway_listeners(
        &mut self,
        changes: &[Change],
        now_ns: u64,
        sink: &mut impl Sink,
    ) {
        for port in self.hop_ports.clone() {
            let up = self.gateway_listening(port);
            let before = self.gateway_up.insert(port, up);
            if before.is_none() || before == Some(up) {
                continue;
            }
            // Who held it (going down) or holds it (coming back).
            let process = changes.iter().find_map(|c| match &c.exposure {
                Exposure::Listener(l) if l.port == port && self.targets.reach(l) => l
                    .process
                    .as_ref()
                    .and_then(|p| serde_json::to_value(p).ok()),
                _ => None,
            });
            self.engine
                .upstream_listener(port, up, process, now_ns, &mut self.alerts);
        }
        self.emit_alerts(sink);
    }
}
