//! edgewatch's kernel programs.
//!
//! Each program is a thin wrapper over a `try_*` function; anything the kernel could not
//! deliver is counted in the per-CPU `DROPS` array, which user space exports. Nothing here
//! reads a kernel struct: only tracepoint fields at offsets taken from the tracepoint's
//! `format` file at load time.
#![no_std]
#![no_main]

mod follow;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns, bpf_skb_load_bytes,
    },
    macros::{classifier, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, TracePointContext},
    Global,
};
use aya_log_ebpf::warn;
use edgewatch_common::{
    drop_reason, follow_mode, kind, skip_reason, tcp_state, EventHeader, FlowKey, FollowedFlow,
    HopSegmentData, HopSegmentHeader, ResetEvent, ResetLayout, SockStateEvent, SockStateLayout,
    EVENT_VERSION, HOP_CAPTURE_BYTES, HOP_PAYLOAD_ROOMS, HOP_PORT_WORDS,
};

/// Every event for user space. Size is set by the loader (`map_max_entries`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU counters of events the kernel could not deliver, indexed by [`drop_reason`].
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Per-CPU counters of hop packets sent no record on purpose, indexed by [`skip_reason`].
#[map]
static HOP_SKIPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(skip_reason::COUNT, 0);

/// Who called connect() on a socket to a port that is not the hop's, until the connect ends
/// (then removed): a failure is reported with its process, a success costs nothing more.
#[map]
static CONNECTING: LruHashMap<u64, ConnectOwner> = LruHashMap::with_max_entries(4096, 0);

#[derive(Clone, Copy)]
#[repr(C)]
struct ConnectOwner {
    pid: u32,
    tgid: u32,
    cgroup_id: u64,
    comm: [u8; 16],
}

/// Field offsets of `sock:inet_sock_set_state`, filled in by the loader from
/// /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
#[no_mangle]
static SOCK_STATE_LAYOUT: Global<SockStateLayout> = Global::new(SockStateLayout {
    skaddr: 0,
    oldstate: 0,
    newstate: 0,
    sport: 0,
    dport: 0,
    family: 0,
    protocol: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
    ready: 0,
});

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(slot) = DROPS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot is only touched by this CPU, with preemption disabled.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count_skip(reason: u32) {
    if let Some(slot) = HOP_SKIPPED.get_ptr_mut(reason) {
        // SAFETY: as in `count_drop`.
        unsafe { *slot += 1 };
    }
}

/// Kernel interface: tracepoint `sock:inet_sock_set_state` (include/trace/events/sock.h),
/// stable since 4.16; field offsets read from its format file, never assumed.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) => 0,
        Err(reason) => {
            count_drop(reason);
            if reason == drop_reason::FIELD_READ {
                warn!(
                    &ctx,
                    "edgewatch: could not read an inet_sock_set_state field"
                );
            }
            0
        }
    }
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Result<T, u32> {
    // SAFETY: the offset comes from the tracepoint's format file and read_at uses
    // bpf_probe_read_kernel, which fails cleanly on a bad address.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| drop_reason::FIELD_READ)
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), u32> {
    let layout = SOCK_STATE_LAYOUT.load();
    if layout.ready == 0 {
        return Ok(());
    }
    let oldstate: i32 = read(ctx, layout.oldstate)?;
    let newstate: i32 = read(ctx, layout.newstate)?;
    // The exposure watch needs sockets entering LISTEN and listeners closing; everything else
    // is filtered here so it never costs a ring-buffer slot. A connection accepted from a
    // listener also reports LISTEN -> SYN_RECV (the child socket starts as a copy of the
    // listener): that is not the listener closing.
    let opened = newstate == tcp_state::LISTEN;
    let closed = oldstate == tcp_state::LISTEN && newstate == tcp_state::CLOSE;
    // A connect() to an upstream port starting: this runs in the connecting process (the
    // proxy), which names who opened each hop connection.
    // (Its local port is not chosen yet: the end of the connect, joined by socket, has it.)
    let connecting = oldstate == tcp_state::CLOSE && newstate == tcp_state::SYN_SENT;
    let connected = oldstate == tcp_state::SYN_SENT
        && (newstate == tcp_state::ESTABLISHED || newstate == tcp_state::CLOSE);
    // Connects to other ports: their owner is kept in the kernel while they run, and only a
    // failure (a stale upstream port anywhere) reaches user space, with that owner.
    let mut owner: Option<ConnectOwner> = None;
    let kind = if opened || closed {
        kind::LISTEN_CHANGE
    } else if connecting || connected {
        let dport: u16 = read(ctx, layout.dport)?;
        if is_hop_port(dport) {
            if connecting {
                kind::CONNECT_START
            } else {
                kind::CONNECT_END
            }
        } else {
            let sock_id: u64 = read(ctx, layout.skaddr)?;
            if connecting {
                let pid_tgid = bpf_get_current_pid_tgid();
                let started = ConnectOwner {
                    pid: pid_tgid as u32,
                    tgid: (pid_tgid >> 32) as u32,
                    // SAFETY: helper without preconditions.
                    cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                    comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
                };
                // A full map evicts its least recently used entry: at worst a failure is
                // reported without its process.
                let _ = CONNECTING.insert(sock_id, started, 0);
                return Ok(());
            }
            // SAFETY: the value is copied out before the entry is removed.
            owner = unsafe { CONNECTING.get(sock_id) }.copied();
            let _ = CONNECTING.remove(sock_id);
            if newstate != tcp_state::CLOSE {
                return Ok(());
            }
            kind::CONNECT_FAILED
        }
    } else {
        return Ok(());
    };
    let family: u16 = read(ctx, layout.family)?;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = read(ctx, layout.saddr)?;
        let d: [u8; 4] = read(ctx, layout.daddr)?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        saddr = read(ctx, layout.saddr_v6)?;
        daddr = read(ctx, layout.daddr_v6)?;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // A failed connect ends in whatever context the answer arrived in: its owner is the one
    // kept at its start (none when the map evicted it).
    let (pid, tgid, cgroup_id, comm) = match owner {
        Some(o) => (o.pid, o.tgid, o.cgroup_id, o.comm),
        None if kind == kind::CONNECT_FAILED => (0, 0, 0, [0u8; 16]),
        None => (
            pid_tgid as u32,
            (pid_tgid >> 32) as u32,
            // SAFETY: helper without preconditions.
            unsafe { bpf_get_current_cgroup_id() },
            bpf_get_current_comm().unwrap_or([0u8; 16]),
        ),
    };
    let event = SockStateEvent {
        header: EventHeader {
            kind,
            version: EVENT_VERSION,
            _pad: 0,
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
        pid,
        tgid,
        cgroup_id,
        sock_id: read(ctx, layout.skaddr)?,
        oldstate,
        newstate,
        sport: read(ctx, layout.sport)?,
        dport: read(ctx, layout.dport)?,
        family,
        protocol: read(ctx, layout.protocol)?,
        saddr,
        daddr,
        comm,
    };
    match EVENTS.reserve::<SockStateEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
            Ok(())
        }
        None => Err(drop_reason::RINGBUF_FULL),
    }
}

/// Field layouts of `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`, from their format files.
#[no_mangle]
static SEND_RESET_LAYOUT: Global<ResetLayout> = Global::new(RESET_LAYOUT_NONE);
#[no_mangle]
static RECV_RESET_LAYOUT: Global<ResetLayout> = Global::new(RESET_LAYOUT_NONE);
const RESET_LAYOUT_NONE: ResetLayout = ResetLayout {
    mode: 0,
    sport: 0,
    dport: 0,
    family: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
};

/// Kernel interface: tracepoint `tcp:tcp_send_reset` (include/trace/events/tcp.h), fields
/// located through its format file (its layout changed in 6.x).
#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    if let Err(reason) = try_reset(&ctx, SEND_RESET_LAYOUT.load(), kind::RESET_SENT) {
        count_drop(reason);
    }
    0
}

/// Kernel interface: tracepoint `tcp:tcp_receive_reset`, fields from its format file.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if let Err(reason) = try_reset(&ctx, RECV_RESET_LAYOUT.load(), kind::RESET_RECEIVED) {
        count_drop(reason);
    }
    0
}

fn try_reset(ctx: &TracePointContext, layout: ResetLayout, which: u32) -> Result<(), u32> {
    let (family, sport, dport, saddr, daddr) = match layout.mode {
        1 => {
            let family: u16 = read(ctx, layout.family)?;
            let sport: u16 = read(ctx, layout.sport)?;
            let dport: u16 = read(ctx, layout.dport)?;
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            if family == AF_INET {
                let a: [u8; 4] = read(ctx, layout.saddr)?;
                let b: [u8; 4] = read(ctx, layout.daddr)?;
                s[..4].copy_from_slice(&a);
                d[..4].copy_from_slice(&b);
            } else {
                s = read(ctx, layout.saddr_v6)?;
                d = read(ctx, layout.daddr_v6)?;
            }
            (family, sport, dport, s, d)
        }
        2 => {
            // struct sockaddr_in / sockaddr_in6: family (host order), port (network order),
            // then the IPv4 address at 4 or (after flowinfo) the IPv6 address at 8.
            let sa: [u8; 28] = read(ctx, layout.saddr)?;
            let da: [u8; 28] = read(ctx, layout.daddr)?;
            let family = u16::from_ne_bytes([sa[0], sa[1]]);
            let sport = u16::from_be_bytes([sa[2], sa[3]]);
            let dport = u16::from_be_bytes([da[2], da[3]]);
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            if family == AF_INET {
                s[..4].copy_from_slice(&sa[4..8]);
                d[..4].copy_from_slice(&da[4..8]);
            } else {
                s.copy_from_slice(&sa[8..24]);
                d.copy_from_slice(&da[8..24]);
            }
            (family, sport, dport, s, d)
        }
        _ => return Ok(()),
    };
    if !is_hop_port(sport) && !is_hop_port(dport) {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = ResetEvent {
        header: EventHeader {
            kind: which,
            version: EVENT_VERSION,
            _pad: 0,
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        sport,
        dport,
        family,
        _pad: 0,
        saddr,
        daddr,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
    };
    match EVENTS.reserve::<ResetEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
            Ok(())
        }
        None => Err(drop_reason::RINGBUF_FULL),
    }
}

/// Upstream ports of the hop, a bitmap filled by the loader: bit `port % 64` of word
/// `port / 64`. An array lookup is inlined by the JIT (no helper call, no hashing), which
/// matters because every packet on a watched interface asks it twice.
#[map]
static HOP_PORTS: Array<u64> = Array::with_max_entries(HOP_PORT_WORDS, 0);

#[inline(always)]
fn is_hop_port(port: u16) -> bool {
    HOP_PORTS
        .get(u32::from(port >> 6))
        .is_some_and(|word| *word & (1u64 << (port & 63)) != 0)
}

/// Directions the TC program follows (see [`FollowedFlow`]): upgraded streams, from frame
/// header to frame header, and long HTTP bodies, to their end. User space adds an entry when
/// it knows the position (a `101`, a head with a long body, or again after the program lost
/// track); the program removes it when it loses track, at a body's end, and on SYN/FIN/RST.
#[map]
static FOLLOWED: LruHashMap<FlowKey, FollowedFlow> = LruHashMap::with_max_entries(16384, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// TC_ACT_UNSPEC / TCX_NEXT: an observer never decides a packet's fate.
const TC_NEXT: i32 = -1;
const ETH_HLEN: u32 = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

/// Kernel interface: a TC (TCX on Linux >= 6.6, clsact otherwise) classifier on ingress. It
/// reads packet bytes only (Ethernet, IPv4/IPv6, TCP headers) and never drops or changes a
/// packet.
#[classifier]
pub fn hop_ingress(ctx: TcContext) -> i32 {
    hop(&ctx, 0)
}

/// The same on egress (for interfaces where a packet is seen once per direction, such as a
/// Docker bridge; on `lo` ingress alone sees every packet once).
#[classifier]
pub fn hop_egress(ctx: TcContext) -> i32 {
    hop(&ctx, 1)
}

#[inline(always)]
fn hop(ctx: &TcContext, direction: u8) -> i32 {
    if let Err(reason) = try_hop(ctx, direction) {
        count_drop(reason);
    }
    TC_NEXT
}

/// Reads a header field: straight from the linear packet data when it is there (the common
/// case, and far cheaper than a helper call), through `bpf_skb_load_bytes` otherwise. Only for
/// the Ethernet, IP and TCP headers, whose offsets the verifier can bound.
#[inline(always)]
fn load<T>(ctx: &TcContext, offset: u32) -> Result<T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    let at = start + offset as usize;
    if at + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above (the verifier checks it too).
        return Ok(unsafe { core::ptr::read_unaligned(at as *const T) });
    }
    load_any(ctx, offset)
}

/// Reads bytes at any offset (inside the payload) through `bpf_skb_load_bytes`.
#[inline(always)]
fn load_any<T>(ctx: &TcContext, offset: u32) -> Result<T, u32> {
    ctx.load::<T>(offset as usize)
        .map_err(|_| drop_reason::HOP_PARSE)
}

/// Submit flags for hop segments: no wake-up per event (user space drains the ring on a short
/// timer), unless the ring is a quarter full.
#[inline(always)]
pub(crate) fn hop_submit_flags() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if avail > size / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

fn try_hop(ctx: &TcContext, direction: u8) -> Result<(), u32> {
    let eth_proto = u16::from_be_bytes(load::<[u8; 2]>(ctx, 12)?);
    let mut hdr = HopSegmentHeader {
        header: EventHeader {
            kind: kind::HOP_SEGMENT,
            version: EVENT_VERSION,
            _pad: 0,
            // Both set once the packet is known to be on the hop.
            ts_ns: 0,
        },
        ifindex: 0,
        seq: 0,
        ack: 0,
        payload_len: 0,
        cap_len: 0,
        sport: 0,
        dport: 0,
        family: 0,
        tcp_flags: 0,
        direction,
        saddr: [0; 16],
        daddr: [0; 16],
        elided: 0,
    };
    let (l4_off, l4_len) = if eth_proto == ETH_P_IP {
        let vihl: u8 = load(ctx, ETH_HLEN)?;
        let ihl = u32::from(vihl & 0x0f) * 4;
        if ihl < 20 || load::<u8>(ctx, ETH_HLEN + 9)? != IPPROTO_TCP {
            return Ok(());
        }
        let frag = u16::from_be_bytes(load::<[u8; 2]>(ctx, ETH_HLEN + 6)?);
        if frag & 0x3fff != 0 {
            return Ok(()); // a fragment: not followed
        }
        let total = u32::from(u16::from_be_bytes(load::<[u8; 2]>(ctx, ETH_HLEN + 2)?));
        let s: [u8; 4] = load(ctx, ETH_HLEN + 12)?;
        let d: [u8; 4] = load(ctx, ETH_HLEN + 16)?;
        hdr.saddr[..4].copy_from_slice(&s);
        hdr.daddr[..4].copy_from_slice(&d);
        hdr.family = 2;
        (ETH_HLEN + ihl, total.saturating_sub(ihl))
    } else if eth_proto == ETH_P_IPV6 {
        if load::<u8>(ctx, ETH_HLEN + 6)? != IPPROTO_TCP {
            return Ok(()); // extension headers are not followed
        }
        let plen = u32::from(u16::from_be_bytes(load::<[u8; 2]>(ctx, ETH_HLEN + 4)?));
        hdr.saddr = load(ctx, ETH_HLEN + 8)?;
        hdr.daddr = load(ctx, ETH_HLEN + 24)?;
        hdr.family = 10;
        (ETH_HLEN + 40, plen)
    } else {
        return Ok(());
    };
    let ports: [u8; 4] = load(ctx, l4_off)?;
    hdr.sport = u16::from_be_bytes([ports[0], ports[1]]);
    hdr.dport = u16::from_be_bytes([ports[2], ports[3]]);
    if !is_hop_port(hdr.sport) && !is_hop_port(hdr.dport) {
        return Ok(());
    }
    // SAFETY: helper without preconditions.
    hdr.header.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: reading a field of the context the kernel passed in.
    hdr.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    hdr.seq = u32::from_be_bytes(load::<[u8; 4]>(ctx, l4_off + 4)?);
    hdr.ack = u32::from_be_bytes(load::<[u8; 4]>(ctx, l4_off + 8)?);
    let off_flags: [u8; 2] = load(ctx, l4_off + 12)?;
    let tcp_hlen = u32::from(off_flags[0] >> 4) * 4;
    hdr.tcp_flags = off_flags[1];
    let mut payload_off = l4_off + tcp_hlen;
    hdr.payload_len = l4_len.saturating_sub(tcp_hlen);
    let key = FlowKey {
        saddr: hdr.saddr,
        daddr: hdr.daddr,
        sport: hdr.sport,
        dport: hdr.dport,
        family: hdr.family,
        _pad: 0,
    };
    let control = hdr.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0;
    if hdr.payload_len == 0 && !control {
        // A pure ACK: user space needs no record of it (the ACKs it uses ride on segments
        // with payload or flags).
        count_skip(skip_reason::PURE_ACK);
        return Ok(());
    }
    if hdr.tcp_flags & TCP_SYN != 0 {
        // A new connection on this 4-tuple starts unfollowed (ENOENT when it was not
        // followed is the common case, not an error).
        let _ = FOLLOWED.remove(key);
    } else if let Some(flow) = FOLLOWED.get_ptr_mut(key) {
        if !control && follow::elide(&hdr, flow) {
            count_skip(skip_reason::PAYLOAD);
            return Ok(());
        }
        follow::report_elided(&mut hdr, flow)?;
        // SAFETY: `flow` came from a map lookup in this program run.
        let (mode, next_seq) = unsafe { ((*flow).mode, (*flow).next_seq) };
        if hdr.payload_len > 0
            && hdr.tcp_flags & TCP_RST == 0
            && mode == follow_mode::WS_FRAMES
            && follow::ws_segment(ctx, &hdr, flow, payload_off)?
        {
            if hdr.tcp_flags & TCP_FIN != 0 {
                let _ = FOLLOWED.remove(key);
            }
            return Ok(());
        }
        let mut keep = false;
        if mode == follow_mode::BODY {
            // The segment that reaches past the body's end is sent from there (the body's
            // tail in it counts as skipped): user space sees what follows the body, such as
            // the next head or a chunk's trailer, even deep inside a long segment.
            let ahead = next_seq.wrapping_sub(hdr.seq) as i32;
            if ahead > 0 && (ahead as u32) < hdr.payload_len {
                let ahead = ahead as u32;
                hdr.elided = hdr.elided.wrapping_add(ahead);
                hdr.seq = hdr.seq.wrapping_add(ahead);
                hdr.payload_len -= ahead;
                payload_off += ahead;
            }
            // A segment still wholly inside the body that could not join the run (TCP sent
            // bytes again, or one went missing) goes as usual, and the entry stays: where the
            // body ends does not depend on which bytes were seen. Dropping it here would let
            // the body's end pass unfollowed until user space re-armed it, and a chunk line
            // beyond a segment's captured prefix would be lost.
            keep = !control && ahead > 0 && (ahead as u32) > hdr.payload_len;
        }
        // The body ended, track was lost in a WebSocket direction (user space re-arms the
        // entry once it knows where the next header is), or the direction closes: the
        // payload prefix goes as usual.
        if !keep {
            let _ = FOLLOWED.remove(key);
        }
    }
    if hdr.payload_len == 0 {
        return match EVENTS.reserve::<HopSegmentHeader>(0) {
            Some(mut entry) => {
                entry.write(hdr);
                entry.submit(hop_submit_flags());
                Ok(())
            }
            None => Err(drop_reason::HOP_RINGBUF_FULL),
        };
    }
    let in_skb = ctx.len().saturating_sub(payload_off);
    let cap = hdr.payload_len.min(in_skb);
    // In the smallest record that holds the captured bytes.
    const ROOMS: [usize; 4] = HOP_PAYLOAD_ROOMS;
    if cap < ROOMS[0] as u32 {
        send_payload::<{ ROOMS[0] }>(ctx, hdr, payload_off, cap)
    } else if cap < ROOMS[1] as u32 {
        send_payload::<{ ROOMS[1] }>(ctx, hdr, payload_off, cap)
    } else if cap < ROOMS[2] as u32 {
        send_payload::<{ ROOMS[2] }>(ctx, hdr, payload_off, cap)
    } else {
        let cap = cap.min(ROOMS[3] as u32 - 1);
        send_payload::<{ ROOMS[3] }>(ctx, hdr, payload_off, cap)
    }
}

/// Sends the segment with the first `cap` bytes of its payload (`cap` in [1, N)) in a record
/// with room for N (a power of two).
#[inline(always)]
fn send_payload<const N: usize>(
    ctx: &TcContext,
    mut hdr: HopSegmentHeader,
    payload_off: u32,
    cap: u32,
) -> Result<(), u32> {
    const {
        assert!(N.is_power_of_two() && N <= HOP_CAPTURE_BYTES);
    }
    let Some(mut entry) = EVENTS.reserve::<HopSegmentData<N>>(0) else {
        return Err(drop_reason::HOP_RINGBUF_FULL);
    };
    hdr.header.kind = kind::HOP_SEGMENT_DATA;
    let event = entry.as_mut_ptr();
    // One helper call with a bounded variable length: `len` is in [1, N] by construction
    // (the mask makes the bound visible to the verifier; N is a power of two), and equals
    // `cap` for every `cap` in [1, N). Read through a volatile load, so the compiler cannot
    // drop the mask from what it knows of `cap` from the caller's comparisons (it did, and the
    // verifier, which tracks `cap` from elsewhere, rejected the unbounded copy).
    // SAFETY: reading a local.
    let cap = unsafe { core::ptr::read_volatile(&cap) };
    let len = (cap.wrapping_sub(1) & (N as u32 - 1)) + 1;
    // SAFETY: `event` points to a reserved, writable HopSegmentData<N>; `len` bytes fit in
    // its `data` (N long).
    unsafe {
        let data = core::ptr::addr_of_mut!((*event).data).cast::<u8>();
        let copied =
            if bpf_skb_load_bytes(ctx.skb.skb as *const _, payload_off, data.cast(), len) == 0 {
                len
            } else {
                0
            };
        hdr.cap_len = copied;
        core::ptr::addr_of_mut!((*event).hdr).write(hdr);
    }
    entry.submit(hop_submit_flags());
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
