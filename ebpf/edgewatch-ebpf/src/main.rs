//! edgewatch's kernel programs.
//!
//! Each program is a thin wrapper over a `try_*` function; anything the kernel could not
//! deliver is counted in the per-CPU `DROPS` array, which user space exports. Nothing here
//! reads a kernel struct: only tracepoint fields at offsets taken from the tracepoint's
//! `format` file at load time.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns,
    },
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
    Global,
};
use aya_log_ebpf::warn;
use edgewatch_common::{
    drop_reason, kind, tcp_state, EventHeader, SockStateEvent, SockStateLayout, EVENT_VERSION,
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
    // The exposure watch needs sockets entering and leaving LISTEN only; everything else is
    // filtered here so it never costs a ring-buffer slot.
    if oldstate != tcp_state::LISTEN && newstate != tcp_state::LISTEN {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
