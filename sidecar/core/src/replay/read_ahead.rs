//! The capture's bytes in large chunks, read on a thread of their own while the caller parses
//! the chunk before: on a capture in the page cache, half of a replay's CPU is the kernel
//! copying the file into user memory (`read`), and with the reading beside the parsing a
//! replay takes about as long as the larger of the two instead of their sum. Each chunk is
//! read straight into its buffer (no second copy) after `head` spare bytes, where the caller
//! puts the unparsed tail of the chunk before (a block split between two reads).
//!
//! A mapped file would spare the copy altogether, but a capture truncated while it is read
//! (tcpdump's `-C`/`-W` rotation) would then kill the process with SIGBUS; `read` just ends.
use std::{
    io::{self, Read},
    sync::mpsc::{sync_channel, Receiver, SyncSender},
};

/// Buffers in flight: one being parsed, one read and waiting, one being read.
const BUFFERS: usize = 3;

/// A chunk: its buffer (`head` spare bytes, then the bytes read) and how many bytes were
/// read. Each is full but the last.
pub struct Chunk {
    pub buf: Vec<u8>,
    pub len: usize,
}

/// The chunks of an input, in order, from the reading thread.
pub struct Chunks {
    full: Receiver<io::Result<Chunk>>,
    free: SyncSender<Vec<u8>>,
}

impl Chunks {
    /// The next chunk; `None` once the input has ended (after its short last chunk) or
    /// failed (after the error).
    pub fn next(&mut self) -> Option<io::Result<Chunk>> {
        self.full.recv().ok()
    }

    /// Hands a parsed chunk's buffer back to be read into again.
    pub fn give_back(&self, buf: Vec<u8>) {
        // The reader has stopped if this fails: nothing to reuse it for.
        let _ = self.free.try_send(buf);
    }
}

/// Runs `f` with the chunks of `input` (each up to `chunk` bytes after `head` spare bytes),
/// read on a scoped thread that stops when the input ends, fails, or `f` returns.
pub fn with_chunks<R: Read + Send, T>(
    input: R,
    chunk: usize,
    head: usize,
    f: impl FnOnce(&mut Chunks) -> T,
) -> T {
    let (full_tx, full) = sync_channel(1);
    let (free, free_rx) = sync_channel(BUFFERS);
    std::thread::scope(|s| {
        s.spawn(move || read_chunks(input, chunk, head, &full_tx, &free_rx));
        // Dropped when `f` returns, which stops the reader wherever it waits.
        let mut chunks = Chunks { full, free };
        f(&mut chunks)
    })
}

fn read_chunks(
    mut input: impl Read,
    chunk: usize,
    head: usize,
    full: &SyncSender<io::Result<Chunk>>,
    free: &Receiver<Vec<u8>>,
) {
    let mut made = 0;
    loop {
        let mut buf = if made < BUFFERS {
            made += 1;
            vec![0; head + chunk]
        } else {
            match free.recv() {
                Ok(b) => b,
                Err(_) => return,
            }
        };
        let mut len = 0;
        let mut last = false;
        while len < chunk {
            match input.read(&mut buf[head + len..head + chunk]) {
                Ok(0) => {
                    last = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = full.send(Err(e));
                    return;
                }
            }
        }
        if full.send(Ok(Chunk { buf, len })).is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `step` bytes a read, then fails once `fail_at` bytes were read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        fail_at: Option<usize>,
        read: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.fail_at.is_some_and(|at| self.read >= at) {
                return Err(io::Error::other("disk gone"));
            }
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.read += n;
            Ok(n)
        }
    }

    fn collect(input: Trickle<'_>, chunk: usize, head: usize) -> (Vec<u8>, Option<String>, usize) {
        with_chunks(input, chunk, head, |chunks| {
            let (mut out, mut count, mut short) = (Vec::new(), 0, false);
            while let Some(c) = chunks.next() {
                match c {
                    Ok(c) => {
                        assert!(!short, "a short chunk is the last");
                        short = c.len < chunk;
                        out.extend_from_slice(&c.buf[head..head + c.len]);
                        count += 1;
                        chunks.give_back(c.buf);
                    }
                    Err(e) => return (out, Some(e.to_string()), count),
                }
            }
            (out, None, count)
        })
    }

    #[test]
    fn every_byte_arrives_once_in_order_whatever_the_reads() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for (step, chunk) in [
            (1, 64),
            (7, 64),
            (64, 64),
            (1000, 64),
            (3, 10_000),
            (9, 20_000),
        ] {
            let input = Trickle {
                data: &data,
                step,
                fail_at: None,
                read: 0,
            };
            let (out, err, count) = collect(input, chunk, 5);
            assert_eq!(out, data, "step {step}, chunk {chunk}");
            assert_eq!(err, None);
            assert_eq!(count, data.len() / chunk + 1, "the last chunk may be empty");
        }
    }

    #[test]
    fn a_read_error_ends_the_chunks_after_what_was_read() {
        let data = vec![1u8; 1000];
        let input = Trickle {
            data: &data,
            step: 10,
            fail_at: Some(250),
            read: 0,
        };
        let (out, err, _) = collect(input, 100, 0);
        assert_eq!(out.len(), 200, "the chunks read whole before the error");
        assert_eq!(err.as_deref(), Some("disk gone"));
    }

    #[test]
    fn stopping_early_stops_the_reader() {
        let data = vec![0u8; 1 << 20];
        let input = Trickle {
            data: &data,
            step: 4096,
            fail_at: None,
            read: 0,
        };
        // Returns (the scope joins the reader) although most of the input is unread.
        let first = with_chunks(input, 1024, 0, |chunks| chunks.next().map(|c| c.is_ok()));
        assert_eq!(first, Some(true));
    }
}
