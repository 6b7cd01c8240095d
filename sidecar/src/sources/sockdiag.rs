//! The socket inventory of the sidecar's network namespace, from netlink sock_diag
//! (NETLINK_SOCK_DIAG, the interface `ss` uses): TCP sockets in LISTEN and UDP sockets that
//! are bound but not connected. Unlike /proc/net/tcp6 it says whether an IPv6 socket is
//! IPV6_V6ONLY.
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::exposure::Proto;

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    /// `Some` for IPv6 sockets.
    pub v6only: Option<bool>,
    pub inode: u64,
    pub uid: u32,
}

/// sock_diag failures.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("sock_diag request failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("sock_diag answered with an error: {0}")]
    Kernel(String),
    #[error("cannot decode a sock_diag answer: {0}")]
    Decode(String),
}

/// The listening TCP sockets' addresses and ports (what a proxy's upstream can reach).
/// Only TCP is asked for: the proxy watch calls this every `proxy.poll_interval`, and a UDP
/// dump walks every slot of the kernel's UDP table, however few sockets it holds.
pub fn tcp_listening() -> Result<Vec<(std::net::IpAddr, u16)>, SockDiagError> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        out.extend(
            dump(family, IPPROTO_TCP, StateFlags::LISTEN)?
                .into_iter()
                .map(|s| (s.addr, s.port)),
        );
    }
    Ok(out)
}

/// Lists listening TCP and bound UDP sockets of both families.
pub fn listeners() -> Result<Vec<DiagSocket>, SockDiagError> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        out.extend(dump(family, IPPROTO_TCP, StateFlags::LISTEN)?);
        // Unconnected UDP sockets are in TCP_CLOSE state in sock_diag's terms.
        out.extend(dump(family, IPPROTO_UDP, StateFlags::CLOSE)?);
    }
    Ok(out)
}

fn dump(family: u8, protocol: u8, states: StateFlags) -> Result<Vec<DiagSocket>, SockDiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(SockDiagError::Open)?;
    socket.bind_auto().map_err(SockDiagError::Open)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(SockDiagError::Open)?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(SockDiagError::Io)?;

    let proto = if protocol == IPPROTO_TCP {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let mut out = Vec::new();
    let mut recv = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut recv[..], 0)
            .map_err(SockDiagError::Io)?;
        let mut offset = 0;
        while offset < size {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&recv[offset..size])
                .map_err(|e| SockDiagError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(SockDiagError::Kernel(e.to_string())),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    let v6only = r.nlas.iter().find_map(|n| match n {
                        Nla::SkV6Only(v) => Some(*v),
                        _ => None,
                    });
                    out.push(DiagSocket {
                        proto,
                        addr: id.source_address,
                        port: id.source_port,
                        v6only: if family == AF_INET6 {
                            Some(v6only.unwrap_or(false))
                        } else {
                            None
                        },
                        inode: u64::from(r.header.inode),
                        uid: r.header.uid,
                    });
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}
