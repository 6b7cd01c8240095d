//! One direction of a tracked connection: its reassembly, its parser, and what the kernel
//! follows of it.
use super::*;

pub(super) enum Proto {
    Http(HttpStream),
    Ws(WsStream),
}

pub(super) struct Direction {
    pub(super) reasm: Reassembler,
    pub(super) proto: Proto,
    /// The kernel follows this direction (its frame headers, or a body to its end), as far
    /// as we know.
    pub(super) kernel_follows: bool,
    /// Where the body handed to the kernel ends, while it follows one.
    pub(super) body_end: Option<u32>,
}

impl Direction {
    /// A segment the kernel sent as usual (not cut by its frame follower). The kernel does
    /// not follow this direction (any more), unless it is a segment wholly inside the body
    /// the kernel was handed: the kernel sent it before the entry was there (the ring buffer
    /// is read behind the wire) or because TCP sent its bytes again, and it keeps the entry to
    /// the body's end. Re-arming on such a segment would cost a map write each, and plant a
    /// stale entry once the kernel has passed the end. (Should the kernel lose the entry
    /// inside the body, its LRU map being full, the rest of that body costs records, not
    /// bytes: the next body is handed over again.)
    pub(super) fn unfollowed(&mut self, seg: &Segment<'_>) {
        let seg_end = seg.seq.wrapping_add(seg.payload_len);
        let inside = self
            .body_end
            .is_some_and(|end| (end.wrapping_sub(seg_end) as i32) > 0);
        if !inside {
            self.kernel_follows = false;
            self.body_end = None;
        }
    }
}
