//! Packet bytes to TCP [`Segment`]s, for every link type `tcpdump` writes on the hop: Ethernet,
//! Linux cooked SLL (`-i any`, older tcpdump) and SLL2 (`-i any`, newer), raw IP, and BSD
//! loopback (NULL/LOOP). Decoding is lax: a truncated capture still yields the segment with
//! the bytes that were captured, and its wire length. Pure.
use std::net::{IpAddr, SocketAddr};

use etherparse::{
    EtherType, IpNumber, LaxIpSlice, LaxIpv4Slice, LaxIpv6Slice, LaxNetSlice, LaxSlicedPacket,
    TcpSlice, TransportSlice,
};

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
    // Plain IPv4/IPv6 behind a known link header (nearly every packet of a hop capture) is
    // sliced layer by layer; anything else (VLAN tags, other ether types, IPv6 extension
    // header errors) takes the general path, which gives the same answer for these too.
    if let Some(ip) = plain_ip(linktype, data) {
        if let Some(result) = decode_ip(ts_ns, ip) {
            return result;
        }
    }
    decode_lax(linktype, ts_ns, data)
}

/// The IP packet of a frame whose link header names IPv4 or IPv6 outright.
fn plain_ip(linktype: i32, data: &[u8]) -> Option<&[u8]> {
    const IPV4: [u8; 2] = [0x08, 0x00];
    const IPV6: [u8; 2] = [0x86, 0xdd];
    let (proto, ip) = match linktype {
        linktype::ETHERNET => (data.get(12..14)?, data.get(14..)?),
        linktype::LINUX_SLL => (data.get(14..16)?, data.get(16..)?),
        linktype::LINUX_SLL2 => (data.get(0..2)?, data.get(20..)?),
        linktype::RAW | linktype::IPV4 | linktype::IPV6 => return Some(data),
        linktype::NULL | linktype::LOOP => return data.get(4..),
        _ => return None,
    };
    (proto == IPV4 || proto == IPV6).then_some(ip)
}

/// An IP packet to a segment, with etherparse's slices of each layer (no whole-packet
/// structure built and moved per packet). `None`: not TCP, or an IPv6 extension header
/// stopped the slicing, for the general path to judge.
fn decode_ip(ts_ns: u64, data: &[u8]) -> Option<Result<Segment<'_>, Skip>> {
    let Ok((ip, ext_err)) = LaxIpSlice::from_slice(data) else {
        return Some(Err(Skip::Malformed));
    };
    if ext_err.is_some() {
        return None;
    }
    let (src_ip, dst_ip, l4_len) = match &ip {
        LaxIpSlice::Ipv4(ip) => ipv4_ends(ip),
        LaxIpSlice::Ipv6(ip) => ipv6_ends(ip),
    };
    let payload = ip.payload();
    if payload.fragmented {
        return Some(Err(Skip::Fragment));
    }
    if payload.ip_number != IpNumber::TCP {
        // Rare on the hop; the general path tells a damaged UDP or ICMP header from a sound one.
        return None;
    }
    Some(match TcpSlice::from_slice(payload.payload) {
        Ok(tcp) => Ok(segment(ts_ns, src_ip, dst_ip, l4_len, &tcp)),
        Err(_) => Err(Skip::Malformed),
    })
}

/// The general path: etherparse's whole-packet lax slicer.
fn decode_lax(linktype: i32, ts_ns: u64, data: &[u8]) -> Result<Segment<'_>, Skip> {
    let packet = sliced(linktype, data)?;
    let Some(net) = &packet.net else {
        return Err(if packet.stop_err.is_some() {
            Skip::Malformed
        } else {
            Skip::NotTcp
        });
    };
    let ((src_ip, dst_ip, l4_len), fragmented) = match net {
        LaxNetSlice::Ipv4(ip) => (ipv4_ends(ip), ip.is_payload_fragmented()),
        LaxNetSlice::Ipv6(ip) => (ipv6_ends(ip), ip.is_payload_fragmented()),
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
    Ok(segment(ts_ns, src_ip, dst_ip, l4_len, tcp))
}

/// Source, destination and the TCP length the IPv4 header states (header and payload).
fn ipv4_ends(ip: &LaxIpv4Slice<'_>) -> (IpAddr, IpAddr, usize) {
    let h = ip.header();
    let l4 = usize::from(h.total_len()).saturating_sub(usize::from(h.ihl()) * 4);
    (
        IpAddr::V4(h.source_addr()),
        IpAddr::V4(h.destination_addr()),
        l4,
    )
}

/// The same for IPv6: extension headers sit between the fixed header and the TCP header.
fn ipv6_ends(ip: &LaxIpv6Slice<'_>) -> (IpAddr, IpAddr, usize) {
    let h = ip.header();
    let ext_len = ip.extensions().slice().len();
    let l4 = usize::from(h.payload_length()).saturating_sub(ext_len);
    (
        IpAddr::V6(h.source_addr()),
        IpAddr::V6(h.destination_addr()),
        l4,
    )
}

/// The segment of a TCP slice whose IP header said `l4_len` bytes of TCP (a truncated
/// capture holds fewer: the payload is what was captured, the length what was sent).
fn segment<'a>(
    ts_ns: u64,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    l4_len: usize,
    tcp: &TcpSlice<'a>,
) -> Segment<'a> {
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
    Segment {
        ts_ns,
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags,
        payload_len: u32::try_from(payload_len.max(payload.len())).unwrap_or(u32::MAX),
        payload: &payload[..payload.len().min(payload_len.max(payload.len()))],
        followed: false,
    }
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
    fn the_layer_by_layer_path_agrees_with_the_general_one() {
        // Every prefix of IPv4 and IPv6 TCP (one with a hop-by-hop extension header), UDP, an
        // IPv4 fragment and bytes flipped one at a time, behind every link type: the fast
        // path gives exactly what the whole-packet slicer gives.
        let mut packets = vec![tcp_ipv4(b"GET / HTTP/1.1\r\n\r\n")];
        let mut v6 = Vec::new();
        PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .tcp(40000, 18789, 7, 1000)
            .syn()
            .write(&mut v6, b"hi")
            .expect("build");
        packets.push(v6.clone());
        // The same with a hop-by-hop header (8 bytes) spliced in after the fixed header.
        let mut hbh = v6[..40].to_vec();
        hbh[6] = 0; // next header: hop-by-hop
        let plen = u16::from_be_bytes([hbh[4], hbh[5]]) + 8;
        hbh[4..6].copy_from_slice(&plen.to_be_bytes());
        hbh.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        hbh.extend_from_slice(&v6[40..]);
        packets.push(hbh);
        let mut udp = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(53, 53)
            .write(&mut udp, b"q")
            .expect("build");
        packets.push(udp);
        let mut fragment = tcp_ipv4(b"abc");
        fragment[6] |= 0x20; // more fragments
        packets.push(fragment);
        let base = packets.clone();
        for p in &base {
            for i in 0..p.len() {
                let mut q = p.clone();
                q[i] ^= 0xa5;
                packets.push(q);
            }
        }
        let mut checked = 0;
        for ip in &packets {
            let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
            let et: [u8; 2] = if v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
            let mut eth = vec![0u8; 12];
            eth.extend_from_slice(&et);
            eth.extend_from_slice(ip);
            let mut sll2 = et.to_vec();
            sll2.extend_from_slice(&[0u8; 18]);
            sll2.extend_from_slice(ip);
            let mut null = 2u32.to_le_bytes().to_vec();
            null.extend_from_slice(ip);
            for (lt, frame) in [
                (linktype::ETHERNET, &eth),
                (linktype::LINUX_SLL2, &sll2),
                (linktype::RAW, ip),
                (linktype::NULL, &null),
            ] {
                for n in 0..=frame.len() {
                    let f = &frame[..n];
                    assert_eq!(decode(lt, 3, f), decode_lax(lt, 3, f), "{lt} {f:02x?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
        // The cases above do reach both outcomes of the fast path.
        assert!(decode(linktype::RAW, 0, &base[1]).is_ok());
        assert_eq!(decode(linktype::RAW, 0, &base[3]), Err(Skip::NotTcp));
        assert_eq!(decode(linktype::RAW, 0, &base[4]), Err(Skip::Fragment));
        assert!(decode(linktype::RAW, 0, &base[2]).is_ok_and(|s| s.payload == b"hi"));
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
