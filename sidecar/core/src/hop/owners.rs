//! Puts process names on connection events (live only): the kernel names the process that
//! called connect() and the one a reset was sent for; the packets name neither. Pure.
use std::net::SocketAddr;

use rustc_hash::FxHashMap as HashMap;

use super::{ConnEventKind, HopRecord, ProcessRef};

/// Entries kept at most per table; beyond it the table starts over (these are short-lived
/// facts consumed by the next matching record).
const MAX_ENTRIES: usize = 65_536;

/// Processes of recent connects and resets, by (local, remote) address.
#[derive(Debug, Default)]
pub struct Owners {
    /// connect() calls in progress, by kernel socket id (the local port comes at the end).
    starting: HashMap<u64, ProcessRef>,
    connects: HashMap<(SocketAddr, SocketAddr), ProcessRef>,
    resets: HashMap<(SocketAddr, SocketAddr), ProcessRef>,
}

fn remember(
    map: &mut HashMap<(SocketAddr, SocketAddr), ProcessRef>,
    key: (SocketAddr, SocketAddr),
    p: ProcessRef,
) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, p);
}

impl Owners {
    /// `process` called connect() on socket `sock_id`.
    pub fn connect_start(&mut self, sock_id: u64, process: ProcessRef) {
        if self.starting.len() >= MAX_ENTRIES {
            self.starting.clear();
        }
        self.starting.insert(sock_id, process);
    }

    /// The connect() on `sock_id` ended, from `local` to `remote`.
    pub fn connect_end(&mut self, sock_id: u64, local: SocketAddr, remote: SocketAddr) {
        if let Some(p) = self.starting.remove(&sock_id) {
            remember(&mut self.connects, (local, remote), p);
        }
    }

    /// The kernel sent a reset on the connection `local`-`remote`, for `process`.
    pub fn reset_sent(&mut self, local: SocketAddr, remote: SocketAddr, process: ProcessRef) {
        remember(&mut self.resets, (local, remote), process);
    }

    /// Adds the process to a connection event, when one is known.
    pub fn enrich(&mut self, record: &mut HopRecord) {
        let HopRecord::Conn(event) = record else {
            return;
        };
        let (client, server) = (event.conn.client, event.conn.server);
        event.process = match event.kind {
            ConnEventKind::Connected { .. } | ConnEventKind::Refused => {
                self.connects.remove(&(client, server))
            }
            ConnEventKind::Reset { .. } => self
                .resets
                .remove(&(client, server))
                .or_else(|| self.resets.remove(&(server, client))),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hop::{ConnEvent, ConnId, Side};

    fn event(kind: ConnEventKind) -> HopRecord {
        HopRecord::Conn(ConnEvent {
            conn: ConnId {
                client: "127.0.0.1:40000".parse().expect("addr"),
                server: "127.0.0.1:18789".parse().expect("addr"),
                first_seen_ns: 0,
            },
            ts_ns: 1,
            kind,
            process: None,
        })
    }

    fn nginx() -> ProcessRef {
        ProcessRef {
            pid: 7,
            comm: "nginx".into(),
        }
    }

    #[test]
    fn connects_and_resets_get_their_process() {
        let mut o = Owners::default();
        let c: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let s: SocketAddr = "127.0.0.1:18789".parse().expect("addr");
        o.connect_start(0xfeed, nginx());
        o.connect_end(0xbeef, c, s);
        let mut unknown = event(ConnEventKind::Refused);
        o.enrich(&mut unknown);
        assert!(matches!(&unknown, HopRecord::Conn(e) if e.process.is_none()));
        o.connect_end(0xfeed, c, s);
        let mut refused = event(ConnEventKind::Refused);
        o.enrich(&mut refused);
        assert!(matches!(&refused, HopRecord::Conn(e) if e.process == Some(nginx())));
        // Used once.
        let mut again = event(ConnEventKind::Refused);
        o.enrich(&mut again);
        assert!(matches!(&again, HopRecord::Conn(e) if e.process.is_none()));
        // A reset the server side sent (local = server).
        o.reset_sent(
            s,
            c,
            ProcessRef {
                pid: 9,
                comm: "node".into(),
            },
        );
        let mut reset = event(ConnEventKind::Reset { from: Side::Server });
        o.enrich(&mut reset);
        assert!(
            matches!(&reset, HopRecord::Conn(e) if e.process.as_ref().is_some_and(|p| p.comm == "node"))
        );
    }
}
