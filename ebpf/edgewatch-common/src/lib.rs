//! Types that cross the kernel/user boundary between edgewatch's eBPF programs and the sidecar.
//!
//! Rules (see ARCHITECTURE.md): fixed-width integers only, explicit padding, no `bool`, enum or
//! `Option`; every struct has a compile-time size assertion so a layout change cannot slip by.
//! Event kinds travel as a `u32` tag that user space decodes with `TryFrom`, never `transmute`.
//! Every event starts with the same [`EventHeader`].
#![no_std]

use core::mem::size_of;

/// Version of the event layouts below. Bumped whenever one of them changes.
pub const EVENT_VERSION: u16 = 2;

/// Event kind tags (the `kind` field of [`EventHeader`]).
pub mod kind {
    /// A TCP socket entered or left `LISTEN` ([`crate::SockStateEvent`]).
    pub const LISTEN_CHANGE: u32 = 1;
    /// A TCP segment on the hop with no payload ([`crate::HopSegmentHeader`] only).
    pub const HOP_SEGMENT: u32 = 2;
    /// A TCP segment on the hop with payload ([`crate::HopSegmentData`], as long as the room
    /// the program reserved for it).
    pub const HOP_SEGMENT_DATA: u32 = 3;
    /// A segment of an upgraded (WebSocket) stream: only its frame headers and a close frame's
    /// payload ([`crate::HopWsEvent`]).
    pub const HOP_SEGMENT_WS: u32 = 4;
    /// A connect() to an upstream port started (`CLOSE -> SYN_SENT`), in the connecting
    /// process's context ([`crate::SockStateEvent`]).
    pub const CONNECT_START: u32 = 5;
    /// The kernel sent a reset on an upstream-port connection ([`crate::ResetEvent`]).
    pub const RESET_SENT: u32 = 6;
    /// The kernel received a reset on an upstream-port connection ([`crate::ResetEvent`]).
    pub const RESET_RECEIVED: u32 = 7;
    /// A connect() to an upstream port ended (`SYN_SENT -> ESTABLISHED` or `-> CLOSE`), now
    /// with its local port ([`crate::SockStateEvent`]; joined to the start by `sock_id`).
    pub const CONNECT_END: u32 = 8;
    /// A connect() to any other port failed (`SYN_SENT -> CLOSE`: refused, unreachable or
    /// timed out), with the process that called it ([`crate::SockStateEvent`]). Connects that
    /// succeed cost no event: the kernel keeps their owner only until they end.
    pub const CONNECT_FAILED: u32 = 9;
}

/// Frame headers one [`HopWsEvent`] carries at most; a segment with more falls back to a
/// payload prefix.
pub const WS_MAX_HEADERS: usize = 8;
/// Bytes reserved per frame header (the longest is 14).
pub const WS_HEADER_SLOT: usize = 16;
/// Bytes of a close frame's payload kept (RFC 6455 caps control payloads at 125).
pub const WS_CLOSE_BYTES: usize = 128;

/// Words of the `HOP_PORTS` bitmap: one bit per TCP port.
pub const HOP_PORT_WORDS: u32 = 65536 / 64;

/// Payload bytes copied per segment at most: enough for HTTP heads and the frame headers at
/// the start of a segment. (One less than the buffer, see the eBPF copy routine.)
pub const HOP_CAPTURE_BYTES: usize = 2048;

/// The payload room of the records a hop segment's payload can go in: the program takes the
/// smallest that holds what it captured. A ring record is as long as its reservation whatever
/// the copy filled, and most heads are a few hundred bytes: in 2,048-byte rooms, a quarter or
/// less of the ring held payload.
pub const HOP_PAYLOAD_ROOMS: [usize; 4] = [256, 512, 1024, HOP_CAPTURE_BYTES];
const _: () = {
    let mut i = 0;
    while i < HOP_PAYLOAD_ROOMS.len() {
        assert!(HOP_PAYLOAD_ROOMS[i].is_power_of_two());
        assert!(i == 0 || HOP_PAYLOAD_ROOMS[i] > HOP_PAYLOAD_ROOMS[i - 1]);
        i += 1;
    }
    assert!(HOP_PAYLOAD_ROOMS[HOP_PAYLOAD_ROOMS.len() - 1] == HOP_CAPTURE_BYTES);
};

/// Index into the per-CPU `DROPS` array: why the kernel could not deliver an event.
pub mod drop_reason {
    /// `bpf_ringbuf_reserve` failed: user space is not keeping up, or the ring is too small.
    pub const RINGBUF_FULL: u32 = 0;
    /// Reading a tracepoint field failed (should not happen with a valid layout).
    pub const FIELD_READ: u32 = 1;
    /// A hop segment could not be reserved on the ring buffer.
    pub const HOP_RINGBUF_FULL: u32 = 2;
    /// A hop packet's headers could not be read (truncated or malformed).
    pub const HOP_PARSE: u32 = 3;
    /// Number of slots in the array.
    pub const COUNT: u32 = 4;
}

/// Index into the per-CPU `HOP_SKIPPED` array: hop packets the TC program deliberately sent
/// no record for (not drops: user space loses nothing it needs).
pub mod skip_reason {
    /// A pure ACK (no payload, no SYN, FIN or RST).
    pub const PURE_ACK: u32 = 0;
    /// A segment wholly inside a WebSocket payload or an HTTP body the program follows; its
    /// length reaches user space on the flow's next record ([`crate::HopSegmentHeader::elided`]).
    pub const PAYLOAD: u32 = 1;
    /// Number of slots in the array.
    pub const COUNT: u32 = 2;
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h, also printed in the
/// `sock:inet_sock_set_state` format file).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

/// Common header of every event on the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// [`EVENT_VERSION`] of the program that wrote the event.
    pub version: u16,
    pub _pad: u16,
    /// `bpf_ktime_get_boot_ns()` when the event was written (CLOCK_BOOTTIME).
    pub ts_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 16);

/// A TCP socket state change, from the `sock:inet_sock_set_state` tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockStateEvent {
    pub header: EventHeader,
    /// Thread id (low half of `bpf_get_current_pid_tgid`) of the task in whose context the
    /// change happened; 0 when it happened in softirq context with no meaningful task.
    pub pid: u32,
    /// Process id (high half of `bpf_get_current_pid_tgid`).
    pub tgid: u32,
    /// `bpf_get_current_cgroup_id()` (cgroup v2 id of the current task).
    pub cgroup_id: u64,
    /// The tracepoint's `skaddr`: an opaque identity of the socket, never dereferenced.
    pub sock_id: u64,
    pub oldstate: i32,
    pub newstate: i32,
    /// Source (local) port, host byte order (the tracepoint already converted it).
    pub sport: u16,
    /// Destination (remote) port, host byte order.
    pub dport: u16,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// IPPROTO_TCP (6), or others the tracepoint reports (SCTP, MPTCP).
    pub protocol: u16,
    /// Local address in network byte order: 4 bytes used for AF_INET, 16 for AF_INET6.
    pub saddr: [u8; 16],
    /// Remote address, same encoding as `saddr`.
    pub daddr: [u8; 16],
    /// `bpf_get_current_comm()`, NUL-padded.
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<SockStateEvent>() == 104);

/// Byte offsets of the `sock:inet_sock_set_state` fields this project reads, taken at load
/// time from the tracepoint's `format` file (kernel ABI) and written into the program's
/// read-only global `SOCK_STATE_LAYOUT`. `ready` is 0 until user space filled it in; the
/// program then emits nothing rather than read garbage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStateLayout {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub ready: u32,
}
const _: () = assert!(size_of::<SockStateLayout>() == 48);

/// A TCP segment to or from an upstream port, seen by the TC programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopSegmentHeader {
    pub header: EventHeader,
    /// Interface index the program is attached to.
    pub ifindex: u32,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload length on the wire.
    pub payload_len: u32,
    /// Payload bytes copied into [`HopSegmentData::data`] (0 for [`kind::HOP_SEGMENT`]).
    pub cap_len: u32,
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    /// 0 ingress, 1 egress.
    pub direction: u8,
    /// Network byte order; 4 bytes used for AF_INET.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Payload bytes right before `seq` that the program sent no record for (segments wholly
    /// inside a followed WebSocket payload or HTTP body, in sequence). User space takes them
    /// as payload it skips, not as lost bytes. A record with no payload and no flags carries
    /// only this (the run did not end where the flow's next segment started).
    pub elided: u32,
}
const _: () = assert!(size_of::<HopSegmentHeader>() == 80);

/// A hop segment with the first bytes of its payload, in a record with room for `N` of them
/// (one of [`HOP_PAYLOAD_ROOMS`]); `hdr.cap_len` says how many were copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopSegmentData<const N: usize> {
    pub hdr: HopSegmentHeader,
    pub data: [u8; N],
}
const _: () = assert!(size_of::<HopSegmentData<HOP_CAPTURE_BYTES>>() == 80 + HOP_CAPTURE_BYTES);

/// A direction of an upgraded stream whose frame headers the TC program follows. Key of the
/// `FOLLOWED` map (source to destination, addresses in network order, ports in host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// How the TC program follows a direction ([`FollowedFlow::mode`]).
pub mod follow_mode {
    /// An upgraded (WebSocket) stream: `next_seq` is where the next frame header starts; the
    /// program sends frame headers only and follows them from header to header.
    pub const WS_FRAMES: u32 = 0;
    /// An HTTP body (or chunk) of known length: `next_seq` is where it ends. Segments wholly
    /// before it cost no record; the first that is not is sent as usual and ends the entry.
    pub const BODY: u32 = 1;
}

/// Value of the `FOLLOWED` map: how far the program can skip a direction's payload, and the
/// run of payload bytes it skipped and has not reported yet. User space creates an entry when
/// it knows the position (after a `101`, after an HTTP head with a long body); the program
/// removes it when it loses track of a WebSocket direction, at the body's end, and on SYN, FIN
/// and RST (a body's entry outlives a retransmission: its end does not move).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowedFlow {
    /// TCP sequence number of the next frame header ([`follow_mode::WS_FRAMES`]) or of the
    /// first byte after the body ([`follow_mode::BODY`]).
    pub next_seq: u32,
    /// One of [`follow_mode`].
    pub mode: u32,
    /// Payload bytes skipped in a row and not yet reported, ending at `elided_end`.
    pub elided: u32,
    pub elided_end: u32,
}
const _: () = assert!(size_of::<FollowedFlow>() == 16);

/// A segment of a followed WebSocket direction: the frame headers found in it (each at an
/// offset within the segment's payload) and the payload of a close frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopWsEvent {
    pub hdr: HopSegmentHeader,
    /// Frame headers found (entries of `header_off` / `header_len` / `headers` used).
    pub n_headers: u32,
    /// Offset of the close payload within the segment payload, when `close_len` > 0.
    pub close_off: u32,
    pub close_len: u32,
    pub _pad: u32,
    pub header_off: [u32; WS_MAX_HEADERS],
    pub header_len: [u32; WS_MAX_HEADERS],
    pub headers: [[u8; WS_HEADER_SLOT]; WS_MAX_HEADERS],
    pub close: [u8; WS_CLOSE_BYTES],
}
const _: () = assert!(size_of::<HopWsEvent>() == 80 + 16 + 32 + 32 + 128 + 128);

/// How to read addresses and ports out of `tcp:tcp_send_reset` / `tcp:tcp_receive_reset`,
/// from their format files: their layouts differ between the two and across kernel versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetLayout {
    /// 0: not available; 1: separate `sport`/`dport`/`family`/`saddr`/`daddr`/`saddr_v6`/
    /// `daddr_v6` fields; 2: `saddr`/`daddr` as 28-byte `struct sockaddr_in{,6}`.
    pub mode: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}
const _: () = assert!(size_of::<ResetLayout>() == 32);

/// A reset on an upstream-port connection, with the task the kernel ran it for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetEvent {
    pub header: EventHeader,
    pub pid: u32,
    pub tgid: u32,
    /// Local (source) port, host order.
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<ResetEvent>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are `repr(C)`, made only of integers and byte arrays with explicit
    // padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SockStateEvent {}
    unsafe impl aya::Pod for super::SockStateLayout {}
    unsafe impl aya::Pod for super::HopSegmentHeader {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FollowedFlow {}
    unsafe impl aya::Pod for super::HopWsEvent {}
    unsafe impl aya::Pod for super::ResetLayout {}
    unsafe impl aya::Pod for super::ResetEvent {}
}
