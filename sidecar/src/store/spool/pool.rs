//! The sender's buffers, kept from batch to batch.

/// The largest buffer the sender's pool keeps (see [`BufferPool`]).
pub const KEPT_BUFFER_BYTES: usize = 16 << 20;

/// Buffers a sender reuses from batch to batch (a batch file read back, a merged block):
/// memory freed and mapped afresh for every batch cost a page fault per 4 KiB.
#[derive(Debug, Default)]
pub struct BufferPool(std::sync::Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    /// Buffers kept, at most, and the largest kept (a batch of an outage's backlog is not).
    const KEEP: usize = 4;

    /// A kept buffer serves a request only for at least this share of its capacity (an
    /// eighth).
    const WASTE: usize = 8;

    /// A buffer for `at_least` bytes (up to the largest kept size: a hint, not a limit): the
    /// smallest kept one that holds them and is not more than [`Self::WASTE`] times larger,
    /// or else a new one. The tables' batches differ in size by orders of magnitude (a few
    /// hundred bytes of connection events beside megabytes of exchanges, sent at the same
    /// time): a small batch given one of the few large buffers left a large one to fresh
    /// memory, faulted in a page at a time and given back to the OS by the allocator a second
    /// later (~2,400 page faults for a 10 MB batch of the hop benchmark). A small one's new
    /// buffer comes from memory the allocator already has.
    pub fn take(&self, at_least: usize) -> Vec<u8> {
        let at_least = at_least.min(KEPT_BUFFER_BYTES);
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let fits = kept
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= at_least && b.capacity() / Self::WASTE <= at_least)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let buf = fits.map(|i| kept.swap_remove(i));
        drop(kept);
        // A new buffer, not a kept one grown: growing copies the old buffer's whole capacity
        // (the allocator cannot know that none of it is in use), and it is then faulted in
        // afresh anyway. A quarter more than asked, so that a batch a little larger than the
        // last does not need another. (`at_least` is at most `KEPT_BUFFER_BYTES`, so this is
        // never less than it.)
        buf.unwrap_or_else(|| {
            Vec::with_capacity(at_least.saturating_add(at_least / 4).min(KEPT_BUFFER_BYTES))
        })
    }

    /// Keeps `buf` for another batch: while fewer than [`Self::KEEP`] are kept, or else in
    /// place of the smallest kept one, if that is smaller (the large buffers are the ones
    /// whose pages cost).
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > KEPT_BUFFER_BYTES {
            return;
        }
        buf.clear();
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < Self::KEEP {
            kept.push(buf);
        } else if let Some(smallest) = kept
            .iter_mut()
            .min_by_key(|b| b.capacity())
            .filter(|b| b.capacity() < buf.capacity())
        {
            *smallest = buf;
        }
    }

    /// A chunk that was sent: its buffer back, when nothing else holds it any more.
    pub fn give_bytes(&self, chunk: bytes::Bytes) {
        if let Ok(buf) = chunk.try_into_mut() {
            self.give(buf.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_senders_buffers_are_reused_and_bounded() {
        let pool = BufferPool::default();
        let buf = Vec::with_capacity(1 << 20);
        let at = buf.as_ptr();
        pool.give(buf);
        let again = pool.take(1 << 20);
        assert_eq!(
            (again.as_ptr(), again.capacity()),
            (at, 1 << 20),
            "the same memory"
        );
        // A sent chunk comes back once nothing else holds it, not while something does.
        let chunk = bytes::Bytes::from(again);
        let held = chunk.clone();
        pool.give_bytes(chunk);
        let other = pool.take(1 << 20);
        assert_ne!(other.as_ptr(), at, "still held: not reused");
        drop(other);
        pool.give_bytes(held);
        let back = pool.take(1 << 20);
        assert_eq!(back.as_ptr(), at);
        drop(back);
        // An outage's huge batch is not kept, nor more than a few buffers.
        pool.give(Vec::with_capacity(64 << 20));
        assert_eq!(
            pool.take(16 << 20).capacity(),
            16 << 20,
            "a new one: not kept"
        );
        for _ in 0..10 {
            pool.give(Vec::with_capacity(4096));
        }
        // A new buffer is a quarter larger than asked: the kept ones are those of 4 KiB.
        let taken: Vec<Vec<u8>> = (0..10).map(|_| pool.take(4096)).collect();
        let kept = taken.iter().filter(|v| v.capacity() == 4096).count();
        assert_eq!(kept, 4);
    }

    #[test]
    fn a_sender_takes_the_buffer_that_fits() {
        // Batches of the HTTP table are megabytes where the alerts' are a few hundred bytes: a
        // buffer that grows is copied and its new pages faulted in, so the one that fits is taken.
        let pool = BufferPool::default();
        let (small, mid, big) = (
            Vec::with_capacity(4 << 10),
            Vec::with_capacity(256 << 10),
            Vec::with_capacity(4 << 20),
        );
        let (s, m, b) = (small.as_ptr(), mid.as_ptr(), big.as_ptr());
        pool.give(big);
        pool.give(small);
        pool.give(mid);
        let for_mid = pool.take(100 << 10);
        assert_eq!(for_mid.as_ptr(), m, "the smallest that holds 100 KiB");
        let for_small = pool.take(1 << 10);
        assert_eq!(for_small.as_ptr(), s, "the smallest that holds 1 KiB");
        pool.give(for_small);
        // Far smaller than every kept buffer: one of its own, the kept ones left for batches
        // their size.
        let tiny = pool.take(100);
        assert!(![s, m, b].contains(&tiny.as_ptr()) && tiny.capacity() >= 100);
        let for_huge = pool.take(8 << 20);
        assert!(
            for_huge.capacity() >= 8 << 20 && for_huge.as_ptr() != b,
            "none holds it: a new one"
        );
        let (again_small, again_big) = (pool.take(1 << 10), pool.take(1 << 20));
        assert_eq!(
            (again_small.as_ptr(), again_big.as_ptr()),
            (s, b),
            "the smaller ones still kept"
        );
        pool.give(for_huge);
        pool.give(for_mid);
        assert!(pool.take(3 << 20).capacity() >= 3 << 20);
        // The hint is bounded by what is kept: a corrupt size does not reserve the address space.
        assert!(pool.take(usize::MAX).capacity() >= 16 << 20);
    }

    /// What the hop benchmark's sender met: two large buffers kept, then a batch of a few
    /// hundred bytes and one of megabytes sent at the same time, each read back and merged. The
    /// small one's buffers are its own; the large one gets both large buffers, no fresh memory.
    /// A full pool keeps a larger buffer in place of its smallest.
    #[test]
    fn a_small_batch_leaves_the_large_buffers_to_a_large_one() {
        let pool = BufferPool::default();
        let (a, b) = (Vec::with_capacity(15 << 20), Vec::with_capacity(15 << 20));
        let large = [a.as_ptr(), b.as_ptr()];
        pool.give(a);
        pool.give(b);
        let small_read = pool.take(844);
        let large_read = pool.take(10 << 20);
        let small_merge = pool.take(700);
        let large_merge = pool.take(10 << 20);
        assert!(!large.contains(&small_read.as_ptr()) && !large.contains(&small_merge.as_ptr()));
        assert!(large.contains(&large_read.as_ptr()) && large.contains(&large_merge.as_ptr()));
        for v in [small_read, small_merge] {
            pool.give(v);
        }
        let third = Vec::with_capacity(12 << 20);
        let third_at = third.as_ptr();
        for v in [large_read, large_merge, third] {
            pool.give(v);
        }
        // Held, so that a new buffer cannot be given the address of one just dropped.
        let kept: Vec<Vec<u8>> = (0..3).map(|_| pool.take(10 << 20)).collect();
        let kept: Vec<*const u8> = kept.iter().map(|v| v.as_ptr()).collect();
        assert!(
            large.iter().chain([&third_at]).all(|p| kept.contains(p)),
            "the three large ones kept, a small one given up for the third"
        );
    }
}
