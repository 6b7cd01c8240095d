//! Decodes the kernel's ring-buffer records into typed events. Pure: bytes in, events out;
//! anything malformed is an error the caller counts, never a panic.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgewatch_common::{
    kind, tcp_state, EventHeader, HopSegmentHeader, HopWsEvent, ResetEvent, SockStateEvent,
    EVENT_VERSION, HOP_CAPTURE_BYTES, WS_CLOSE_BYTES, WS_HEADER_SLOT, WS_MAX_HEADERS,
};

/// A socket entered or left LISTEN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenChange {
    /// CLOCK_BOOTTIME nanoseconds when the kernel saw it.
    pub ts_boot_ns: u64,
    pub opened: bool,
    pub pid: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    pub sock_id: u64,
    pub addr: IpAddr,
    pub port: u16,
    pub comm: String,
}

/// The pieces of a followed WebSocket segment: each frame header (and a close frame's
/// payload) at its offset within the segment's payload, in offset order, borrowed from the
/// ring-buffer record (no copy, no allocation per segment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pieces<'a> {
    n: usize,
    list: [(u32, &'a [u8]); WS_MAX_HEADERS + 1],
}

impl<'a> Pieces<'a> {
    /// Up to `WS_MAX_HEADERS + 1` pieces, sorted by offset (any beyond are dropped: their
    /// bytes become a gap the tracker reports).
    pub fn new(pieces: impl IntoIterator<Item = (u32, &'a [u8])>) -> Self {
        let mut list = [(0, &[][..]); WS_MAX_HEADERS + 1];
        let mut n = 0;
        for (slot, piece) in list.iter_mut().zip(pieces) {
            *slot = piece;
            n += 1;
        }
        list[..n].sort_unstable_by_key(|p| p.0);
        Self { n, list }
    }

    pub fn as_slice(&self) -> &[(u32, &'a [u8])] {
        &self.list[..self.n]
    }
}

/// A TCP segment of the hop, as the TC programs saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopPacket<'a> {
    pub ts_boot_ns: u64,
    pub ifindex: u32,
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub tcp_flags: u8,
    pub payload_len: u32,
    /// The first bytes of the payload (at most `HOP_CAPTURE_BYTES - 1`), borrowed from the
    /// ring-buffer record (no copy per packet).
    pub data: &'a [u8],
    /// For a WebSocket direction the kernel follows: the frame headers (and a close frame's
    /// payload) at their offsets within the payload; `data` is then empty.
    pub pieces: Option<Pieces<'a>>,
    /// Payload bytes right before `seq` the kernel skipped (segments wholly inside a followed
    /// WebSocket payload or HTTP body) and sent no record for.
    pub elided: u32,
}

impl HopPacket<'_> {
    /// Calls `f` with the packet as tracker segments, stamped with `ts_ns`: one for a payload
    /// prefix (the common case; no list is built), or one per piece for a followed WebSocket
    /// segment (the bytes between pieces are payload never copied, which the tracker skips
    /// as gaps).
    ///
    /// Bytes the kernel skipped before it ([`HopPacket::elided`]) come first, as a followed
    /// segment of that length with nothing copied: the tracker skips them as payload.
    pub fn each_segment(&self, ts_ns: u64, mut f: impl FnMut(&crate::hop::Segment<'_>)) {
        if self.elided > 0 {
            f(&crate::hop::Segment {
                ts_ns,
                src: self.src,
                dst: self.dst,
                seq: self.seq.wrapping_sub(self.elided),
                ack: 0,
                flags: crate::hop::TcpFlags::default(),
                payload_len: self.elided,
                payload: &[],
                followed: true,
            });
        }
        let base = self.segment(ts_ns);
        match &self.pieces {
            None => f(&base),
            Some(pieces) => crate::hop::split_followed(base, pieces.as_slice(), f),
        }
    }

    /// The packet as one segment, its payload prefix.
    fn segment(&self, ts_ns: u64) -> crate::hop::Segment<'_> {
        let flags = crate::hop::TcpFlags::from_byte(self.tcp_flags);
        crate::hop::Segment {
            ts_ns,
            src: self.src,
            dst: self.dst,
            seq: self.seq,
            ack: self.ack,
            flags,
            payload_len: self.payload_len,
            payload: self.data,
            followed: false,
        }
    }
}

/// A kernel event about a hop connection, with the task it ran for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnTrace {
    pub ts_boot_ns: u64,
    pub what: ConnTraceKind,
    /// The kernel's socket identity (joins a connect's start and end).
    pub sock_id: u64,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub pid: u32,
    pub comm: String,
}

/// What the kernel saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnTraceKind {
    /// connect() started (in the connecting process; no local port yet).
    ConnectStart,
    /// connect() ended (established or failed), with the local port.
    ConnectEnd,
    /// A connect() to a port that is not the hop's failed (refused, unreachable, timed out),
    /// with the process that called it (pid 0 and no name when the kernel lost track).
    ConnectFailed,
    ResetSent,
    ResetReceived,
}

/// One decoded event. Made per ring-buffer record and used at once, on the stack: the hop
/// variant's inline pieces are what spares an allocation per followed WebSocket segment, so
/// it stays unboxed.
#[expect(
    clippy::large_enum_variant,
    reason = "one per record, on the stack; boxing would allocate per record"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEvent<'a> {
    ListenChange(ListenChange),
    Hop(HopPacket<'a>),
    Conn(ConnTrace),
}

fn addr(family: u16, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        2 => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        10 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        other => Err(DecodeError::Family(other)),
    }
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes of its kind")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("event version {got}, this sidecar reads version {want}")]
    Version { got: u16, want: u16 },
    #[error("unknown address family {0}")]
    Family(u16),
}

/// The kernel's records (`edgewatch_common`): `#[repr(C)]` structs of integers and byte
/// arrays, for which every bit pattern is a valid value.
///
/// # Safety
/// Only for such plain-old-data types.
unsafe trait Record: Copy {}
// SAFETY (all): repr(C) structs of integers and integer arrays, no padding-dependent
// invariants (the same types aya reads as `Pod`).
unsafe impl Record for EventHeader {}
unsafe impl Record for SockStateEvent {}
unsafe impl Record for ResetEvent {}
unsafe impl Record for HopSegmentHeader {}
unsafe impl Record for HopWsEvent {}

fn read_pod<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a Record (every bit pattern valid), and
    // read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Decodes one ring-buffer record.
/// Long because it is one match over the record kinds, each checked for its length.
pub fn decode(bytes: &[u8]) -> Result<ProbeEvent<'_>, DecodeError> {
    let header: EventHeader = read_pod(bytes)?;
    if header.version != EVENT_VERSION {
        return Err(DecodeError::Version {
            got: header.version,
            want: EVENT_VERSION,
        });
    }
    match header.kind {
        kind::LISTEN_CHANGE => {
            let e: SockStateEvent = read_pod(bytes)?;
            let addr = match e.family {
                2 => IpAddr::V4(Ipv4Addr::new(
                    e.saddr[0], e.saddr[1], e.saddr[2], e.saddr[3],
                )),
                10 => IpAddr::V6(Ipv6Addr::from(e.saddr)),
                other => return Err(DecodeError::Family(other)),
            };
            Ok(ProbeEvent::ListenChange(ListenChange {
                ts_boot_ns: e.header.ts_ns,
                opened: e.newstate == tcp_state::LISTEN,
                pid: e.pid,
                tgid: e.tgid,
                cgroup_id: e.cgroup_id,
                sock_id: e.sock_id,
                addr,
                port: e.sport,
                comm: comm_string(&e.comm),
            }))
        }
        kind::CONNECT_START | kind::CONNECT_END | kind::CONNECT_FAILED => {
            let e: SockStateEvent = read_pod(bytes)?;
            Ok(ProbeEvent::Conn(ConnTrace {
                ts_boot_ns: e.header.ts_ns,
                what: match header.kind {
                    kind::CONNECT_START => ConnTraceKind::ConnectStart,
                    kind::CONNECT_END => ConnTraceKind::ConnectEnd,
                    _ => ConnTraceKind::ConnectFailed,
                },
                sock_id: e.sock_id,
                local: std::net::SocketAddr::new(addr(e.family, &e.saddr)?, e.sport),
                remote: std::net::SocketAddr::new(addr(e.family, &e.daddr)?, e.dport),
                pid: e.tgid,
                comm: comm_string(&e.comm),
            }))
        }
        kind::RESET_SENT | kind::RESET_RECEIVED => {
            let e: ResetEvent = read_pod(bytes)?;
            Ok(ProbeEvent::Conn(ConnTrace {
                ts_boot_ns: e.header.ts_ns,
                what: if header.kind == kind::RESET_SENT {
                    ConnTraceKind::ResetSent
                } else {
                    ConnTraceKind::ResetReceived
                },
                sock_id: 0,
                local: std::net::SocketAddr::new(addr(e.family, &e.saddr)?, e.sport),
                remote: std::net::SocketAddr::new(addr(e.family, &e.daddr)?, e.dport),
                pid: e.tgid,
                comm: comm_string(&e.comm),
            }))
        }
        kind::HOP_SEGMENT | kind::HOP_SEGMENT_DATA | kind::HOP_SEGMENT_WS => {
            let h: HopSegmentHeader = read_pod(bytes)?;
            let mut pieces = None;
            if header.kind == kind::HOP_SEGMENT_WS {
                let e: HopWsEvent = read_pod(bytes)?;
                let n = (e.n_headers as usize).min(WS_MAX_HEADERS);
                // Slices of the record itself (read_pod checked it holds a whole HopWsEvent).
                let at = |field: usize, len: usize| &bytes[field..field + len];
                let headers = std::mem::offset_of!(HopWsEvent, headers);
                let list = (0..n).map(|i| {
                    let len = (e.header_len[i] as usize).min(WS_HEADER_SLOT);
                    (e.header_off[i], at(headers + i * WS_HEADER_SLOT, len))
                });
                let close = (e.close_len > 0).then(|| {
                    let len = (e.close_len as usize).min(WS_CLOSE_BYTES);
                    (
                        e.close_off,
                        at(std::mem::offset_of!(HopWsEvent, close), len),
                    )
                });
                pieces = Some(Pieces::new(list.chain(close)));
            }
            let data = if header.kind == kind::HOP_SEGMENT_DATA {
                // The record is as long as the payload room the program reserved (the
                // smallest of `HOP_PAYLOAD_ROOMS` that holds the payload it captured): the
                // header, then `cap_len` bytes.
                let start = std::mem::size_of::<HopSegmentHeader>();
                let need = start + (h.cap_len as usize).min(HOP_CAPTURE_BYTES);
                if bytes.len() < need {
                    return Err(DecodeError::Short {
                        len: bytes.len(),
                        need,
                    });
                }
                &bytes[start..need]
            } else {
                &[]
            };
            let (src, dst) = match h.family {
                2 => (
                    IpAddr::V4(Ipv4Addr::new(
                        h.saddr[0], h.saddr[1], h.saddr[2], h.saddr[3],
                    )),
                    IpAddr::V4(Ipv4Addr::new(
                        h.daddr[0], h.daddr[1], h.daddr[2], h.daddr[3],
                    )),
                ),
                10 => (
                    IpAddr::V6(Ipv6Addr::from(h.saddr)),
                    IpAddr::V6(Ipv6Addr::from(h.daddr)),
                ),
                other => return Err(DecodeError::Family(other)),
            };
            Ok(ProbeEvent::Hop(HopPacket {
                ts_boot_ns: h.header.ts_ns,
                ifindex: h.ifindex,
                src: std::net::SocketAddr::new(src, h.sport),
                dst: std::net::SocketAddr::new(dst, h.dport),
                seq: h.seq,
                ack: h.ack,
                tcp_flags: h.tcp_flags,
                payload_len: h.payload_len,
                data,
                pieces,
                elided: h.elided,
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's bytes; only for the `repr(C)` records of edgewatch-common, which have no
    /// implicit padding (their size assertions there hold it).
    fn bytes_of<T: Copy>(e: &T) -> Vec<u8> {
        // SAFETY: T is one of those records: plain data with every byte initialised.
        unsafe {
            std::slice::from_raw_parts((e as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn sample(family: u16) -> SockStateEvent {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"node");
        SockStateEvent {
            header: EventHeader {
                kind: kind::LISTEN_CHANGE,
                version: EVENT_VERSION,
                _pad: 0,
                ts_ns: 5,
            },
            pid: 11,
            tgid: 10,
            cgroup_id: 3,
            sock_id: 0xffff_8888,
            oldstate: tcp_state::CLOSE,
            newstate: tcp_state::LISTEN,
            sport: 18789,
            dport: 0,
            family,
            protocol: 6,
            saddr,
            daddr: [0; 16],
            comm,
        }
    }

    /// A hop segment's header: 127.0.0.1:18789 to 127.0.0.1:40000, seq 1000, 200 bytes of
    /// payload, none copied.
    fn hop_header(kind: u32) -> HopSegmentHeader {
        HopSegmentHeader {
            header: EventHeader {
                kind,
                version: EVENT_VERSION,
                _pad: 0,
                ts_ns: 7,
            },
            ifindex: 1,
            seq: 1000,
            ack: 0,
            payload_len: 200,
            cap_len: 0,
            sport: 18789,
            dport: 40000,
            family: 2,
            tcp_flags: 0x18,
            direction: 0,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            elided: 0,
        }
    }

    #[test]
    fn a_followed_websocket_segment_decodes_to_pieces_of_its_record() {
        // Two frame headers (written out of order) and a close payload, in a 200-byte segment.
        let mut e = HopWsEvent {
            hdr: hop_header(kind::HOP_SEGMENT_WS),
            n_headers: 2,
            close_off: 152,
            close_len: 4,
            _pad: 0,
            header_off: [0; WS_MAX_HEADERS],
            header_len: [0; WS_MAX_HEADERS],
            headers: [[0; WS_HEADER_SLOT]; WS_MAX_HEADERS],
            close: [0; WS_CLOSE_BYTES],
        };
        e.header_off[..2].copy_from_slice(&[150, 0]);
        e.header_len[..2].copy_from_slice(&[2, 4]);
        e.headers[0][..2].copy_from_slice(&[0x88, 0x04]);
        e.headers[1][..4].copy_from_slice(&[0x82, 0x7e, 0x00, 0x90]);
        e.close[..4].copy_from_slice(&[0x03, 0xe8, b'o', b'k']);
        // SAFETY: HopWsEvent is repr(C) plain data; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const HopWsEvent).cast::<u8>(),
                std::mem::size_of::<HopWsEvent>(),
            )
        };
        let Ok(ProbeEvent::Hop(packet)) = decode(bytes) else {
            panic!("decode")
        };
        let want: &[(u32, &[u8])] = &[
            (0, &[0x82, 0x7e, 0x00, 0x90]),
            (150, &[0x88, 0x04]),
            (152, &[0x03, 0xe8, b'o', b'k']),
        ];
        assert_eq!(packet.pieces.as_ref().map(Pieces::as_slice), Some(want));
        // As segments: one per piece, each up to the next; the flags on the last one.
        let mut segments = Vec::new();
        packet.each_segment(9, |s| {
            segments.push((s.seq, s.payload_len, s.payload.to_vec(), s.flags.psh));
        });
        assert_eq!(
            segments,
            vec![
                (1000, 150, vec![0x82, 0x7e, 0x00, 0x90], true),
                (1150, 2, vec![0x88, 0x04], true),
                (1152, 48, vec![0x03, 0xe8, b'o', b'k'], true),
            ]
        );
        // More pieces than a record holds are cut, never a panic; none at all is one piece.
        assert_eq!(
            Pieces::new((0..20).map(|i| (i, &[][..]))).as_slice().len(),
            9
        );
        let mut n = 0;
        crate::hop::split_followed(packet.segment(9), &[], |s| {
            assert_eq!((s.seq, s.payload_len), (1000, 200));
            n += 1;
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn a_segment_with_payload_decodes_from_any_record_size() {
        // The program reserves the smallest record that holds the payload it captured; in
        // any of them the payload is the `cap_len` bytes after the header, and a record that
        // ends before them is an error.
        let hdr = HopSegmentHeader {
            ack: 5,
            payload_len: 300,
            cap_len: 300,
            sport: 40000,
            dport: 18789,
            ..hop_header(kind::HOP_SEGMENT_DATA)
        };
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let record = |room: usize, hdr: &HopSegmentHeader| {
            let mut bytes = vec![0xee; std::mem::size_of::<HopSegmentHeader>() + room];
            bytes[..std::mem::size_of::<HopSegmentHeader>()].copy_from_slice(&bytes_of(hdr));
            let start = std::mem::size_of::<HopSegmentHeader>();
            bytes[start..start + payload.len()].copy_from_slice(&payload);
            bytes
        };
        for room in edgewatch_common::HOP_PAYLOAD_ROOMS
            .into_iter()
            .filter(|r| *r > 300)
        {
            let bytes = record(room, &hdr);
            let Ok(ProbeEvent::Hop(packet)) = decode(&bytes) else {
                panic!("decode, room {room}")
            };
            let seg = packet.segment(9);
            assert_eq!((seg.seq, seg.payload_len), (1000, 300), "room {room}");
            assert_eq!(seg.payload, &payload[..], "room {room}");
        }
        // A cap_len past the record's end.
        let mut long = hdr;
        long.cap_len = 600;
        assert!(matches!(
            decode(&record(512, &long)),
            Err(DecodeError::Short { need: 680, .. })
        ));
        // One beyond the largest room is read as the largest room.
        long.cap_len = u32::MAX;
        let widest = record(edgewatch_common::HOP_CAPTURE_BYTES, &long);
        let Ok(ProbeEvent::Hop(packet)) = decode(&widest) else {
            panic!("decode")
        };
        assert_eq!(packet.segment(9).payload.len(), HOP_CAPTURE_BYTES);
    }

    #[test]
    fn decodes_v4_listen() {
        let Ok(ProbeEvent::ListenChange(e)) = decode(&bytes_of(&sample(2))) else {
            panic!("decode")
        };
        assert!(e.opened);
        assert_eq!(e.addr, "127.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!((e.port, e.tgid, e.pid), (18789, 10, 11));
        assert_eq!(e.comm, "node");
    }

    #[test]
    fn decodes_v6_close() {
        let mut s = sample(10);
        s.saddr = [0; 16];
        s.oldstate = tcp_state::LISTEN;
        s.newstate = tcp_state::CLOSE;
        let Ok(ProbeEvent::ListenChange(e)) = decode(&bytes_of(&s)) else {
            panic!("decode")
        };
        assert!(!e.opened);
        assert_eq!(e.addr, "::".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn malformed_records_are_errors() {
        let good = bytes_of(&sample(2));
        assert!(matches!(
            decode(&good[..10]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            decode(&good[..40]),
            Err(DecodeError::Short { need: 104, .. })
        ));
        let mut bad_kind = sample(2);
        bad_kind.header.kind = 99;
        assert_eq!(
            decode(&bytes_of(&bad_kind)),
            Err(DecodeError::UnknownKind(99))
        );
        let mut bad_version = sample(2);
        bad_version.header.version = 9;
        assert!(matches!(
            decode(&bytes_of(&bad_version)),
            Err(DecodeError::Version { .. })
        ));
        assert_eq!(decode(&bytes_of(&sample(1))), Err(DecodeError::Family(1)));
        assert!(decode(&[]).is_err());
    }
}
