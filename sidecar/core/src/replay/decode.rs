//! Packet bytes to TCP [`Segment`]s, for every link type `tcpdump` writes on the hop: Ethernet,
//! Linux cooked SLL (`-i any`, older tcpdump) and SLL2 (`-i any`, newer), raw IP, and BSD
//! loopback (NULL/LOOP). Decoding is lax: a truncated capture still yields the segment with
//! the bytes that were captured, and its wire length. Pure.
use std::net::{IpAddr, SocketAddr};

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, TransportSlice};

use crate::hop::{Segment, TcpFlags};

/// Link types (the pcap `LINKTYPE_*` numbers).
pub mod linktype {
    pub const NULL: i32 = 0;
    pub const ETHERNET: i32 = 1;
    pub const RAW: i32 = 101;
    pub const LOOP: i32 = 108;
    pub const LINUX_SLL: i32 = 113;
    pub const IPV4: i32 = 228;
    pub const IPV6: i32 = 229;
    pub const LINUX_SLL2: i32 = 276;
}

/// Why a packet yields no segment. `NotTcp` is not an error; the others are counted drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// Not TCP over IP (ARP, UDP, ICMP, ...).
    NotTcp,
    /// A link type this decoder does not know.
    UnsupportedLinkType,
    /// Too short or malformed to find a TCP header.
    Malformed,
    /// An IP fragment (TCP over fragmented IP is not reassembled).
    Fragment,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotTcp => "not_tcp",
            Skip::UnsupportedLinkType => "unsupported_link_type",
            Skip::Malformed => "malformed",
            Skip::Fragment => "ip_fragment",
        }
    }
}

fn sliced(linktype: i32, data: &[u8]) -> Result<LaxSlicedPacket<'_>, Skip> {
    match linktype {
        linktype::ETHERNET => LaxSlicedPacket::from_ethernet(data).map_err(|_| Skip::Malformed),
        linktype::RAW | linktype::IPV4 | linktype::IPV6 => {
            LaxSlicedPacket::from_ip(data).map_err(|_| Skip::Malformed)
        }
        linktype::NULL | linktype::LOOP => {
            // A 4-byte address family (host order for NULL, network order for LOOP); the IP
            // version nibble says the rest.
            let ip = data.get(4..).ok_or(Skip::Malformed)?;
            LaxSlicedPacket::from_ip(ip).map_err(|_| Skip::Malformed)
        }
        linktype::LINUX_SLL => {
            // 16-byte header; protocol type in bytes 14..16.
            let proto = data.get(14..16).ok_or(Skip::Malformed)?;
            let payload = data.get(16..).ok_or(Skip::Malformed)?;
            Ok(LaxSlicedPacket::from_ether_type(
                EtherType(u16::from_be_bytes([proto[0], proto[1]])),
                payload,
            ))
        }
        linktype::LINUX_SLL2 => {
            // 20-byte header; protocol type in bytes 0..2.
            let proto = data.get(0..2).ok_or(Skip::Malformed)?;
            let payload = data.get(20..).ok_or(Skip::Malformed)?;
            Ok(LaxSlicedPacket::from_ether_type(
                EtherType(u16::from_be_bytes([proto[0], proto[1]])),
                payload,
            ))
        }
        _ => Err(Skip::UnsupportedLinkType),
    }
}

/// Decodes one captured packet into a TCP segment.
pub fn decode(linktype: i32, ts_ns: u64, data: &[u8]) -> Result<Segment<'_>, Skip> {
    let packet = sliced(linktype, data)?;
    let Some(net) = &packet.net else {
        return Err(if packet.stop_err.is_some() {
            Skip::Malformed
        } else {
            Skip::NotTcp
        });
    };
    let (src_ip, dst_ip, l4_len, fragmented) = match net {
        LaxNetSlice::Ipv4(ip) => {
            let h = ip.header();
            let l4 = usize::from(h.total_len()).saturating_sub(usize::from(h.ihl()) * 4);
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                l4,
                ip.is_payload_fragmented(),
            )
        }
        LaxNetSlice::Ipv6(ip) => {
            let h = ip.header();
            // Extension headers sit between the fixed header and the TCP header.
            let ext_len = ip.extensions().slice().len();
            let l4 = usize::from(h.payload_length()).saturating_sub(ext_len);
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                l4,
                ip.is_payload_fragmented(),
            )
        }
        LaxNetSlice::Arp(_) => return Err(Skip::NotTcp),
    };
    if fragmented {
        return Err(Skip::Fragment);
    }
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return Err(match &packet.transport {
            Some(_) => Skip::NotTcp,
            None if packet.stop_err.is_some() => Skip::Malformed,
            None => Skip::NotTcp,
        });
    };
    let header_len = tcp.slice().len() - tcp.payload().len();
    let payload_len = l4_len.saturating_sub(header_len);
    let payload = tcp.payload();
    let flags = TcpFlags {
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        psh: tcp.psh(),
    };
    Ok(Segment {
        ts_ns,
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags,
        payload_len: u32::try_from(payload_len.max(payload.len())).unwrap_or(u32::MAX),
        payload: &payload[..payload.len().min(payload_len.max(payload.len()))],
        followed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_ipv4(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
            .tcp(40000, 18789, 1234, 65535)
            .ack(99)
            .psh();
        let mut out = Vec::new();
        builder.write(&mut out, payload).expect("build");
        out
    }

    #[test]
    fn every_link_type() {
        let ip = tcp_ipv4(b"GET / HTTP/1.1\r\n\r\n");
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x08, 0x00]);
        eth.extend_from_slice(&ip);
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(&ip);
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0u8; 18]);
        sll2.extend_from_slice(&ip);
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&ip);
        for (lt, data) in [
            (linktype::ETHERNET, &eth),
            (linktype::LINUX_SLL, &sll),
            (linktype::LINUX_SLL2, &sll2),
            (linktype::RAW, &ip),
            (linktype::NULL, &null),
        ] {
            let seg = decode(lt, 7, data).unwrap_or_else(|e| panic!("link type {lt}: {e:?}"));
            assert_eq!(seg.src.port(), 40000);
            assert_eq!(seg.dst.port(), 18789);
            assert_eq!(seg.seq, 1234);
            assert_eq!(seg.ack, 99);
            assert!(seg.flags.ack && seg.flags.psh && !seg.flags.syn);
            assert_eq!(seg.payload, b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(seg.payload_len, 18);
        }
    }

    #[test]
    fn truncated_capture_keeps_the_wire_length() {
        let ip = tcp_ipv4(&[b'x'; 1000]);
        let seg = decode(linktype::RAW, 0, &ip[..100]).expect("lax decode");
        assert_eq!(seg.payload_len, 1000);
        assert_eq!(seg.payload.len(), 60);
    }

    #[test]
    fn garbage_is_a_counted_skip() {
        assert_eq!(
            decode(linktype::ETHERNET, 0, &[1, 2, 3]).err(),
            Some(Skip::Malformed)
        );
        assert_eq!(
            decode(999, 0, &[0; 64]).err(),
            Some(Skip::UnsupportedLinkType)
        );
        assert!(decode(linktype::RAW, 0, &[0x45, 0, 0, 20]).is_err());
        let ip = tcp_ipv4(b"x");
        assert_eq!(
            decode(linktype::RAW, 0, &ip[..30]).err(),
            Some(Skip::Malformed)
        );
        // Every prefix of a valid packet decodes or skips, never panics.
        for n in 0..ip.len() {
            let _ = decode(linktype::RAW, 0, &ip[..n]);
        }
    }
}
