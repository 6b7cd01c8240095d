//! The proxy-to-upstream hop: TCP segments in, HTTP exchanges, WebSocket sessions and
//! connection events out. Pure: the live path (TC probes) and `edgewatch replay` (pcap files)
//! feed the same [`tracker::Tracker`] with [`Segment`]s and get the same records.
pub mod config;
pub mod http;
pub mod owners;
pub mod reasm;
pub mod redact;
pub mod request_id;
pub mod tracker;
pub mod ws;

use std::net::SocketAddr;

use serde::Serialize;

/// TCP flags of a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl TcpFlags {
    /// From the flags byte of the TCP header (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub fn from_byte(b: u8) -> Self {
        Self {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            psh: b & 0x08 != 0,
            ack: b & 0x10 != 0,
        }
    }
}

/// Text read from a head (method, path, header values): kept inline up to 24 bytes, so a
/// request's usual Host, X-Forwarded-*, method and path cost no heap allocation.
pub type Text = compact_str::CompactString;

pub use request_id::RequestId;

/// One TCP segment as seen on the wire, possibly with only a prefix of its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Capture time, nanoseconds (Unix time for captures; CLOCK_BOOTTIME-based for live).
    pub ts_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// Payload length on the wire.
    pub payload_len: u32,
    /// The captured payload bytes, starting at `seq`; shorter than `payload_len` when the
    /// capture was truncated. The missing tail is a gap to the parsers.
    pub payload: &'a [u8],
    /// Cut by the kernel's WebSocket frame follower (only frame headers were copied). Tells
    /// the tracker the kernel still follows this direction.
    pub followed: bool,
}

/// Splits a segment whose payload the kernel sent as pieces (frame headers and a close
/// payload, at offsets within the payload, in offset order as `probe::events::Pieces` keeps
/// them) into one segment per piece; the payload between
/// pieces becomes the uncopied tail of each, so the tracker sees it as a gap. Control flags
/// (SYN, FIN, RST) stay on the last one.
pub fn split_followed<'a>(
    base: Segment<'a>,
    pieces: &[(u32, &'a [u8])],
    mut f: impl FnMut(&Segment<'a>),
) {
    let len = base.payload_len;
    // On the stack: the kernel sends at most this many pieces per segment (any beyond are
    // left out, and their bytes become a gap).
    let mut bounds = [(0u32, &[][..]); edgewatch_common::WS_MAX_HEADERS + 2];
    let mut n = 1; // bounds[0]: the payload before the first piece, if any
    for &(off, bytes) in pieces.iter().filter(|(off, _)| *off < len) {
        if n == bounds.len() {
            break;
        }
        bounds[n] = (off, bytes);
        n += 1;
    }
    debug_assert!(
        bounds[1..n].is_sorted_by_key(|b| b.0),
        "pieces in offset order"
    );
    let bounds = if n > 1 && bounds[1].0 == 0 {
        &bounds[1..n]
    } else {
        &bounds[..n]
    };
    let quiet = TcpFlags {
        syn: false,
        fin: false,
        rst: false,
        ..base.flags
    };
    let last = bounds.len() - 1;
    for (i, (off, bytes)) in bounds.iter().enumerate() {
        let end = bounds.get(i + 1).map_or(len, |n| n.0);
        let piece_len = end.saturating_sub(*off);
        f(&Segment {
            seq: base.seq.wrapping_add(*off),
            payload_len: piece_len,
            payload: &bytes[..bytes.len().min(piece_len as usize)],
            flags: if i == last { base.flags } else { quiet },
            followed: true,
            ..base.clone()
        });
    }
}

/// Which end of a connection.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The proxy (the side that connects).
    Client,
    /// The upstream (the side that listens on an upstream port).
    Server,
}

/// A connection's identity: its 4-tuple and when it was first seen.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Hash)]
pub struct ConnId {
    #[serde(serialize_with = "addr_str")]
    pub client: SocketAddr,
    #[serde(serialize_with = "addr_str")]
    pub server: SocketAddr,
    pub first_seen_ns: u64,
}

/// Serializes a socket address as its `Display` does (`127.0.0.1:18789`, `[::1]:18789`), but
/// an IPv4 one without `core::fmt` (every hop record carries two addresses; formatting them
/// through `Display` took ~8% of the live sidecar's CPU in profiles).
fn addr_str<S: serde::Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    use std::io::Write as _;
    let SocketAddr::V4(v4) = addr else {
        return s.collect_str(addr);
    };
    // "255.255.255.255:65535" is 21 bytes.
    let mut buf = [0u8; 21];
    let free = {
        let mut w = &mut buf[..];
        let mut digits = itoa::Buffer::new();
        let [a, b, c, d] = v4.ip().octets();
        // Writes into a slice long enough for the longest address: they cannot fail.
        let _ = w.write_all(digits.format(a).as_bytes());
        for octet in [b, c, d] {
            let _ = w.write_all(b".");
            let _ = w.write_all(digits.format(octet).as_bytes());
        }
        let _ = w.write_all(b":");
        let _ = w.write_all(digits.format(v4.port()).as_bytes());
        w.len()
    };
    let used = &buf[..buf.len() - free];
    match std::str::from_utf8(used) {
        Ok(text) => s.serialize_str(text),
        // Not reachable (digits, dots and a colon), but never worth a panic.
        Err(_) => s.collect_str(addr),
    }
}

/// How an HTTP exchange ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeOutcome {
    /// Request and response complete.
    Complete,
    /// The response head was seen; the connection switched protocols (101).
    Upgraded,
    /// The connection closed or reset before a response.
    NoResponse,
    /// Bytes were lost; the exchange could not be followed to its end.
    Incomplete,
}

impl ExchangeOutcome {
    /// The name used in output and in ClickHouse (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeOutcome::Complete => "complete",
            ExchangeOutcome::Upgraded => "upgraded",
            ExchangeOutcome::NoResponse => "no_response",
            ExchangeOutcome::Incomplete => "incomplete",
        }
    }
}

/// One request and its response on the hop.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HttpExchange {
    pub conn: ConnId,
    /// 0 for the first request on the connection (keep-alive counts up).
    pub index: u32,
    pub request_ts_ns: u64,
    pub method: Text,
    /// Path and query, credentials redacted.
    pub path: Text,
    pub host: Option<Text>,
    pub origin: Option<Text>,
    pub request_id: Option<RequestId>,
    pub x_forwarded_for: Option<Text>,
    pub x_forwarded_proto: Option<Text>,
    /// `Upgrade: websocket` present.
    pub upgrade_websocket: bool,
    /// `Connection` contains `upgrade`.
    pub connection_upgrade: bool,
    pub status: Option<u16>,
    /// Request start to the first response byte.
    pub ttfb_ns: Option<u64>,
    /// Request start to the end of the response.
    pub total_ns: Option<u64>,
    /// The request's length on the wire, head and body (0 while its end was not seen).
    pub request_bytes: u64,
    /// The response's length on the wire, head and body; for one cut short, what came.
    pub response_bytes: u64,
    pub outcome: ExchangeOutcome,
    /// Why the upstream refused, from a small JSON error body (its code only, never the
    /// body): e.g. `proxy_attribution_required`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// Frame counts of one direction of a WebSocket session.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FrameCounts {
    pub text: u64,
    pub binary: u64,
    pub continuation: u64,
    pub ping: u64,
    pub pong: u64,
    pub close: u64,
    /// Payload bytes (frame headers excluded).
    pub payload_bytes: u64,
}

/// A close frame.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CloseFrame {
    pub from: Side,
    pub ts_ns: u64,
    /// The status code, when the frame carried one.
    pub code: Option<u16>,
    /// The reason text (at most 123 bytes by RFC 6455).
    pub reason: String,
}

/// How the TCP connection under a WebSocket session ended.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum SessionEnd {
    /// Close frames, then FIN.
    CloseHandshake { first_close_from: Side },
    /// A FIN with no close frame before it (what a proxy timeout looks like; clients see 1006).
    FinWithoutClose { from: Side },
    /// A reset.
    Reset { from: Side },
    /// Still open when the capture or the watch ended.
    Open,
}

/// One upgraded connection.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WsSession {
    pub conn: ConnId,
    pub request_id: Option<String>,
    pub path: String,
    pub origin: Option<String>,
    /// When the 101 was seen.
    pub upgraded_ts_ns: u64,
    pub end_ts_ns: u64,
    pub duration_ns: u64,
    pub client_frames: FrameCounts,
    pub server_frames: FrameCounts,
    pub closes: Vec<CloseFrame>,
    pub end: SessionEnd,
    /// Longest time with no frame in either direction.
    pub longest_idle_ns: u64,
    /// Time from the last frame to the end.
    pub idle_before_end_ns: u64,
    /// Frame sync was lost in some direction (missing bytes); counts are lower bounds.
    pub lost_sync: bool,
}

/// What happened to a connection attempt or an established connection.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ConnEventKind {
    /// SYN answered by SYN-ACK.
    Connected { latency_ns: u64 },
    /// SYN answered by RST: nothing listens on the port.
    Refused,
    /// RST on an established connection.
    Reset { from: Side },
}

/// A process as the kernel named it in an event.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: String,
}

/// A connection event.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConnEvent {
    pub conn: ConnId,
    pub ts_ns: u64,
    #[serde(flatten)]
    pub kind: ConnEventKind,
    /// Live only: the process that connected (connects, refusals), or the one the kernel sent
    /// the reset for (resets), where the kernel knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRef>,
}

/// Something the tracker could not see, said rather than hidden.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Loss {
    pub conn: ConnId,
    pub side: Side,
    pub ts_ns: u64,
    /// Bytes that were never seen.
    pub bytes: u64,
    /// What the loss broke (`resynchronised http`, `websocket frame sync`, ...).
    pub effect: String,
}

/// Every kind of record the tracker produces.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HopRecord {
    Http(HttpExchange),
    Websocket(WsSession),
    Conn(ConnEvent),
    Loss(Loss),
}

impl HopRecord {
    /// When what the record describes ended (for ordering against other sources).
    pub fn end_ts_ns(&self) -> u64 {
        match self {
            HopRecord::Http(x) => x.request_ts_ns + x.total_ns.or(x.ttfb_ns).unwrap_or(0),
            HopRecord::Websocket(s) => s.end_ts_ns,
            HopRecord::Conn(c) => c.ts_ns,
            HopRecord::Loss(l) => l.ts_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_serialize_as_display_does() {
        let addrs = [
            "0.0.0.0:0",
            "127.0.0.1:18789",
            "10.20.30.40:8080",
            "255.255.255.255:65535",
            "1.2.3.4:5",
            "[::1]:18789",
            "[2001:db8::1]:443",
            "[::ffff:127.0.0.1]:80",
        ];
        for a in addrs {
            let addr: SocketAddr = a.parse().expect("a valid address");
            let id = ConnId {
                client: addr,
                server: addr,
                first_seen_ns: 7,
            };
            let json = serde_json::to_value(&id).expect("serialisable");
            assert_eq!(json["client"], addr.to_string(), "{a}");
            assert_eq!(json["server"], a, "{a}");
            assert_eq!(json["first_seen_ns"], 7);
        }
    }
}
