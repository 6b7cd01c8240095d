//! edgewatch's kernel programs.
//!
//! Each program is a thin wrapper over a `try_*` function; anything the kernel could not
//! deliver is counted in the per-CPU `DROPS` array, which user space exports. Nothing here
//! reads a kernel struct: only tracepoint fields at offsets taken from the tracepoint's
//! `format` file at load time.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns, bpf_skb_load_bytes,
    },
    macros::{classifier, map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{TcContext, TracePointContext},
    Global,
};
use aya_log_ebpf::warn;
use edgewatch_common::{
    drop_reason, kind, tcp_state, EventHeader, HopSegmentEvent, HopSegmentHeader, SockStateEvent,
    SockStateLayout, EVENT_VERSION, HOP_CAPTURE_BYTES,
};

/// Every event for user space. Size is set by the loader (`map_max_entries`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU counters of events the kernel could not deliver, indexed by [`drop_reason`].
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

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
    if !opened && !closed {
        return Ok(());
    }
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
    let event = SockStateEvent {
        header: EventHeader {
            kind: kind::LISTEN_CHANGE,
            version: EVENT_VERSION,
            _pad: 0,
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        sock_id: read(ctx, layout.skaddr)?,
        oldstate,
        newstate,
        sport: read(ctx, layout.sport)?,
        dport: read(ctx, layout.dport)?,
        family,
        protocol: read(ctx, layout.protocol)?,
        saddr,
        daddr,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
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

/// Upstream ports of the hop (host byte order); filled by the loader.
#[map]
static HOP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

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

/// Whether `n` more bytes fit in a segment's data buffer after `copied`.
#[inline(always)]
fn fits(copied: u32, n: u32) -> bool {
    copied + n <= HOP_CAPTURE_BYTES as u32
}

/// Reads a header field: straight from the linear packet data when it is there (the common
/// case, and far cheaper than a helper call), through `bpf_skb_load_bytes` otherwise.
#[inline(always)]
fn load<T>(ctx: &TcContext, offset: u32) -> Result<T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    let at = start + offset as usize;
    if at + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above (the verifier checks it too).
        return Ok(unsafe { core::ptr::read_unaligned(at as *const T) });
    }
    ctx.load::<T>(offset as usize)
        .map_err(|_| drop_reason::HOP_PARSE)
}

/// Submit flags for hop segments: no wake-up per event (user space drains the ring on a short
/// timer), unless the ring is a quarter full.
#[inline(always)]
fn hop_submit_flags() -> u64 {
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
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
        // SAFETY: reading a field of the context the kernel passed in.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
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
        _pad: [0; 4],
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
    // SAFETY: map lookups with a stack key.
    let watched =
        unsafe { HOP_PORTS.get(hdr.sport).is_some() || HOP_PORTS.get(hdr.dport).is_some() };
    if !watched {
        return Ok(());
    }
    hdr.seq = u32::from_be_bytes(load::<[u8; 4]>(ctx, l4_off + 4)?);
    hdr.ack = u32::from_be_bytes(load::<[u8; 4]>(ctx, l4_off + 8)?);
    let off_flags: [u8; 2] = load(ctx, l4_off + 12)?;
    let tcp_hlen = u32::from(off_flags[0] >> 4) * 4;
    hdr.tcp_flags = off_flags[1];
    let payload_off = l4_off + tcp_hlen;
    hdr.payload_len = l4_len.saturating_sub(tcp_hlen);
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
    let mut cap = hdr.payload_len.min(in_skb);
    if cap >= HOP_CAPTURE_BYTES as u32 {
        cap = HOP_CAPTURE_BYTES as u32 - 1;
    }
    let Some(mut entry) = EVENTS.reserve::<HopSegmentEvent>(0) else {
        return Err(drop_reason::HOP_RINGBUF_FULL);
    };
    hdr.header.kind = kind::HOP_SEGMENT_DATA;
    let event = entry.as_mut_ptr();
    // Copy `cap` bytes (< 2048) as a sum of power-of-two chunks: every helper call has a
    // constant length, and the verifier can bound each destination offset (the sum of the
    // larger chunks) below the buffer's end.
    let mut copied: u32 = 0;
    let mut ok = true;
    // SAFETY: `event` points to a reserved, writable HopSegmentEvent; every chunk lands
    // inside `data` (copied + chunk <= cap < HOP_CAPTURE_BYTES).
    unsafe {
        let data = core::ptr::addr_of_mut!((*event).data).cast::<u8>();
        macro_rules! chunk {
            ($n:expr) => {
                if ok && cap & $n != 0 && fits(copied, $n) {
                    if bpf_skb_load_bytes(
                        ctx.skb.skb as *const _,
                        payload_off + copied,
                        data.add(copied as usize).cast(),
                        $n,
                    ) != 0
                    {
                        ok = false;
                    } else {
                        copied += $n;
                    }
                }
            };
        }
        chunk!(1024);
        chunk!(512);
        chunk!(256);
        chunk!(128);
        chunk!(64);
        chunk!(32);
        chunk!(16);
        chunk!(8);
        chunk!(4);
        chunk!(2);
        if ok
            && cap & 1 != 0
            && fits(copied, 1)
            && bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                payload_off + copied,
                data.add(copied as usize).cast(),
                1,
            ) == 0
        {
            copied += 1;
        }
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
