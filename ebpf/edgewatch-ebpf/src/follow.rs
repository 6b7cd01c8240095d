//! The follower: how the TC program skips payload it need not copy. For a WebSocket direction
//! it walks the frame headers (sending them alone); for a long HTTP body it skips to the end.
//! Segments wholly inside a payload or body cost no record; their length rides on the flow's
//! next record (see `FollowedFlow` and `HopSegmentHeader::elided`).
use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use edgewatch_common::{
    drop_reason, follow_mode, kind, FollowedFlow, HopSegmentHeader, HopWsEvent, WS_CLOSE_BYTES,
    WS_MAX_HEADERS,
};

use crate::{hop_submit_flags, EVENTS};

/// Longest run of skipped payload bytes reported at once (far below the 2 GiB where TCP
/// sequence arithmetic turns ambiguous).
const MAX_ELIDED: u32 = 1 << 30;

/// Whether a segment lies wholly inside the payload the flow's entry says can be skipped, in
/// sequence with the run skipped so far; if so it joins the run and costs no record. A body's
/// last segment (the one that reaches its end) is always sent: its time is the response's end.
#[inline(always)]
pub(crate) fn elide(hdr: &HopSegmentHeader, flow: *mut FollowedFlow) -> bool {
    // SAFETY: `flow` came from a map lookup in this program run.
    let f = unsafe { &mut *flow };
    let len = hdr.payload_len;
    let ahead = f.next_seq.wrapping_sub(hdr.seq) as i32;
    let inside = ahead >= 0
        && if f.mode == follow_mode::BODY {
            ahead as u32 > len
        } else {
            ahead as u32 >= len
        };
    if len == 0 || !inside || (f.elided > 0 && f.elided_end != hdr.seq) {
        return false;
    }
    if f.elided >= MAX_ELIDED - len.min(MAX_ELIDED) {
        return false;
    }
    f.elided += len;
    f.elided_end = hdr.seq.wrapping_add(len);
    true
}

/// Reports the flow's run of skipped bytes, if any: on this segment's record when the run
/// ends where the segment starts (the common case), else in a record of its own.
#[inline(always)]
pub(crate) fn report_elided(
    hdr: &mut HopSegmentHeader,
    flow: *mut FollowedFlow,
) -> Result<(), u32> {
    // SAFETY: `flow` came from a map lookup in this program run.
    let f = unsafe { &mut *flow };
    let n = f.elided;
    if n == 0 {
        return Ok(());
    }
    f.elided = 0;
    if f.elided_end == hdr.seq {
        hdr.elided = n;
        return Ok(());
    }
    let mut alone = *hdr;
    alone.header.kind = kind::HOP_SEGMENT;
    alone.seq = f.elided_end;
    alone.payload_len = 0;
    alone.cap_len = 0;
    alone.tcp_flags = 0;
    alone.elided = n;
    match EVENTS.reserve::<HopSegmentHeader>(0) {
        Some(mut entry) => {
            entry.write(alone);
            entry.submit(hop_submit_flags());
            Ok(())
        }
        None => Err(drop_reason::HOP_RINGBUF_FULL),
    }
}

/// Copies up to 125 bytes of a close frame's payload into `dst` (WS_CLOSE_BYTES long).
///
/// # Safety
/// `dst` must point to `WS_CLOSE_BYTES` writable bytes.
#[inline(always)]
unsafe fn copy_close(ctx: &TcContext, off: u32, dst: *mut u8, len: u32) -> u32 {
    let mut done = 0u32;
    for n in [64u32, 32, 16, 8, 4, 2, 1] {
        if len & n != 0 && done + n <= WS_CLOSE_BYTES as u32 {
            // SAFETY: done + n <= WS_CLOSE_BYTES, checked just above.
            if unsafe { skb_bytes(ctx, off + done, dst.add(done as usize), n) }.is_err() {
                return done;
            }
            done += n;
        }
    }
    done
}

/// `bpf_skb_load_bytes` of `len` bytes at `off` into `dst`.
///
/// # Safety
/// `dst` must point to `len` writable bytes (the verifier checks the bound too).
#[inline(always)]
unsafe fn skb_bytes(ctx: &TcContext, off: u32, dst: *mut u8, len: u32) -> Result<(), ()> {
    // SAFETY: as documented; the helper fails cleanly outside the packet.
    let rc = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, off, dst.cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// Follows the frame headers of one segment of an upgraded stream and sends only them (and a
/// close frame's payload). Returns `Ok(false)` when it cannot: the next header lies before
/// this segment (a gap), a header is split across segments, or the segment has more headers
/// than one event holds; the caller then sends the payload prefix instead.
pub(crate) fn ws_segment(
    ctx: &TcContext,
    hdr: &HopSegmentHeader,
    flow: *mut FollowedFlow,
    payload_off: u32,
) -> Result<bool, u32> {
    // SAFETY: `flow` came from a map lookup in this program run.
    let next = unsafe { (*flow).next_seq };
    let rel = next.wrapping_sub(hdr.seq) as i32;
    if rel < 0 {
        return Ok(false);
    }
    let len = hdr.payload_len;
    let Some(mut entry) = EVENTS.reserve::<HopWsEvent>(0) else {
        return Err(drop_reason::HOP_RINGBUF_FULL);
    };
    let ev = entry.as_mut_ptr();
    let mut off = rel as u32;
    let mut n: u32 = 0;
    let mut close_at = 0u32;
    let mut close_want = 0u32;
    let mut ok = true;
    // Each header is read with at most three fixed-size loads (first two bytes, extended
    // length, mask) straight into its slot of the reserved event, at constant offsets: no
    // stack buffer and no variable-length copy in the loop, so the states the verifier must
    // tell apart stay few (Linux 6.1's verifier gives up past a million instructions).
    // SAFETY: `ev` points to a reserved HopWsEvent; every write stays inside its arrays.
    unsafe {
        for i in 0..WS_MAX_HEADERS {
            if off >= len {
                break;
            }
            let remaining = len - off;
            let at = payload_off + off;
            let slot = core::ptr::addr_of_mut!((*ev).headers[i]).cast::<u8>();
            if remaining < 2 || skb_bytes(ctx, at, slot, 2).is_err() {
                ok = false;
                break;
            }
            let b0 = *slot;
            let b1 = *slot.add(1);
            let masked = b1 & 0x80 != 0;
            let code = b1 & 0x7f;
            let ext: u32 = if code == 126 {
                2
            } else if code == 127 {
                8
            } else {
                0
            };
            let hlen = 2 + ext + if masked { 4 } else { 0 };
            if remaining < hlen {
                ok = false;
                break;
            }
            let plen: u64 = if code == 126 {
                if skb_bytes(ctx, at + 2, slot.add(2), 2).is_err() {
                    ok = false;
                    break;
                }
                u64::from(u16::from_be_bytes([*slot.add(2), *slot.add(3)]))
            } else if code == 127 {
                if skb_bytes(ctx, at + 2, slot.add(2), 8).is_err() {
                    ok = false;
                    break;
                }
                u64::from_be_bytes(core::ptr::read_unaligned(slot.add(2).cast::<[u8; 8]>()))
            } else {
                u64::from(code)
            };
            if plen > u64::from(u32::MAX / 2) {
                ok = false;
                break;
            }
            if masked {
                // The key sits at 2, 4 or 10: three constant destinations.
                let r = if ext == 0 {
                    skb_bytes(ctx, at + 2, slot.add(2), 4)
                } else if ext == 2 {
                    skb_bytes(ctx, at + 4, slot.add(4), 4)
                } else {
                    skb_bytes(ctx, at + 10, slot.add(10), 4)
                };
                if r.is_err() {
                    ok = false;
                    break;
                }
            }
            (*ev).header_off[i] = off;
            (*ev).header_len[i] = hlen;
            n += 1;
            let start = off + hlen;
            if b0 & 0x0f == 0x8 && plen > 0 && close_want == 0 && start < len {
                close_at = start;
                close_want = (plen as u32).min(len - start).min(125);
            }
            off = start + plen as u32;
        }
        if ok && close_want > 0 {
            let close = core::ptr::addr_of_mut!((*ev).close).cast::<u8>();
            let got = copy_close(ctx, payload_off + close_at, close, close_want);
            (*ev).close_off = close_at;
            (*ev).close_len = got;
        } else {
            (*ev).close_off = 0;
            (*ev).close_len = 0;
        }
    }
    if !ok || (n as usize == WS_MAX_HEADERS && off < len) {
        entry.discard(0);
        return Ok(false);
    }
    let mut h = *hdr;
    h.header.kind = kind::HOP_SEGMENT_WS;
    // SAFETY: as above.
    unsafe {
        core::ptr::addr_of_mut!((*ev).hdr).write(h);
        (*ev).n_headers = n;
        (*ev)._pad = 0;
        (*flow).next_seq = hdr.seq.wrapping_add(off);
    }
    entry.submit(hop_submit_flags());
    Ok(true)
}
