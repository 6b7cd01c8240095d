//! One direction of a TCP byte stream, put back in order. Pure.
//!
//! Segments arrive with their sequence number, their length on the wire and the payload bytes
//! that were captured (possibly only a prefix). The reassembler hands the parsers the stream as
//! [`Chunk`]s: bytes in order, and gaps where bytes were never seen (a truncated capture, a
//! lost segment, a hole that out-of-order buffering could not fill). Retransmitted bytes are
//! delivered once. Parsers decide what a gap breaks.
/// A piece of the ordered stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    Data(&'a [u8]),
    /// This many bytes of the stream were never seen.
    Gap(u64),
}

/// Counters of what happened to this direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasmStats {
    /// Bytes seen again (retransmissions, overlaps).
    pub duplicate_bytes: u64,
    /// Segments that arrived ahead of a hole.
    pub out_of_order: u64,
    /// Bytes given up as gaps.
    pub gap_bytes: u64,
}

/// Out-of-order segments kept while waiting for a hole to fill.
const MAX_PENDING_SEGMENTS: usize = 64;
const MAX_PENDING_BYTES: usize = 1 << 20;

#[derive(Debug)]
struct Pending {
    payload_len: u32,
    captured: Vec<u8>,
}

/// Reassembles one direction.
#[derive(Debug, Default)]
pub struct Reassembler {
    next: Option<u32>,
    /// Sequence number of this direction's FIN, which takes one sequence number but no byte.
    fin_seq: Option<u32>,
    /// Sorted by sequence number, unique. A vector, not a `BTreeMap`: at most
    /// [`MAX_PENDING_SEGMENTS`], usually none, and an empty one costs nothing to drop (the
    /// tracker swaps a direction's reassembler out and back for every segment).
    pending: Vec<(u32, Pending)>,
    pending_bytes: usize,
    pub stats: ReasmStats,
}

fn rel(seq: u32, next: u32) -> i64 {
    i64::from(seq.wrapping_sub(next) as i32)
}

impl Reassembler {
    /// The stream starts at this sequence number (SYN's sequence number + 1).
    pub fn start_at(&mut self, seq: u32) {
        if self.next.is_none() {
            self.next = Some(seq);
        }
    }

    /// The next sequence number expected, once known.
    pub fn next_seq(&self) -> Option<u32> {
        self.next
    }

    /// Adds a segment and hands every chunk that became deliverable to `sink`.
    pub fn push(
        &mut self,
        seq: u32,
        payload_len: u32,
        captured: &[u8],
        sink: &mut impl FnMut(Chunk<'_>),
    ) {
        if payload_len == 0 {
            return;
        }
        let captured = &captured[..captured.len().min(payload_len as usize)];
        let mut counted = false;
        // A loop, not a recursion: each turn either keeps or delivers the segment, or gives
        // up the first hole (which delivers at least one pending segment), so it ends; a
        // crafted segment can neither spin nor overflow the stack.
        loop {
            let next = *self.next.get_or_insert(seq);
            let offset = rel(seq, next);
            if offset <= 0 {
                break;
            }
            if !counted {
                self.stats.out_of_order += 1;
                counted = true;
            }
            if self.pending.len() < MAX_PENDING_SEGMENTS
                && self.pending_bytes + captured.len() <= MAX_PENDING_BYTES
            {
                self.keep_pending(seq, payload_len, captured);
                return;
            }
            // Too much waiting on a hole: give the hole up as a gap.
            if self.pending.is_empty() {
                // Only this segment waits (it alone is over the limit): the hole before it
                // is given up now, and it is delivered.
                self.stats.gap_bytes += offset as u64;
                sink(Chunk::Gap(offset as u64));
                self.next = Some(seq);
                break;
            }
            self.skip_to_first_pending(sink);
        }
        self.deliver(seq, payload_len, captured, sink);
        self.drain_pending(sink);
    }

    /// Keeps an out-of-order segment until its hole fills (the longer copy wins).
    fn keep_pending(&mut self, seq: u32, payload_len: u32, captured: &[u8]) {
        self.pending_bytes += captured.len();
        let at = match self.pending.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(at) => at,
            Err(at) => {
                let empty = Pending {
                    payload_len: 0,
                    captured: Vec::new(),
                };
                self.pending.insert(at, (seq, empty));
                at
            }
        };
        let entry = &mut self.pending[at].1;
        if payload_len > entry.payload_len {
            self.pending_bytes -= entry.captured.len();
            *entry = Pending {
                payload_len,
                captured: captured.to_vec(),
            };
        } else {
            self.pending_bytes -= captured.len();
        }
    }

    /// Delivers a segment that starts at or before `next`.
    fn deliver(
        &mut self,
        seq: u32,
        payload_len: u32,
        captured: &[u8],
        sink: &mut impl FnMut(Chunk<'_>),
    ) {
        let next = self.next.unwrap_or(seq);
        let overlap = (-rel(seq, next)).max(0) as u64;
        if overlap >= u64::from(payload_len) {
            self.stats.duplicate_bytes += u64::from(payload_len);
            return;
        }
        self.stats.duplicate_bytes += overlap;
        let fresh_len = u64::from(payload_len) - overlap;
        let data = captured.get(overlap as usize..).unwrap_or(&[]);
        if !data.is_empty() {
            sink(Chunk::Data(data));
        }
        let missing = fresh_len - data.len() as u64;
        if missing > 0 {
            self.stats.gap_bytes += missing;
            sink(Chunk::Gap(missing));
        }
        self.next = Some(next.wrapping_add(fresh_len as u32));
    }

    fn drain_pending(&mut self, sink: &mut impl FnMut(Chunk<'_>)) {
        while let Some(next) = self.next {
            let Some(at) = self.pending.iter().position(|(s, _)| rel(*s, next) <= 0) else {
                return;
            };
            let (seq, p) = self.pending.remove(at);
            self.pending_bytes -= p.captured.len();
            self.deliver(seq, p.payload_len, &p.captured, sink);
        }
    }

    fn skip_to_first_pending(&mut self, sink: &mut impl FnMut(Chunk<'_>)) {
        let Some(next) = self.next else {
            return;
        };
        let Some(first) = self
            .pending
            .iter()
            .map(|(s, _)| *s)
            .min_by_key(|s| rel(*s, next))
        else {
            return;
        };
        let hole = rel(first, next).max(0) as u64;
        if hole > 0 {
            self.stats.gap_bytes += hole;
            sink(Chunk::Gap(hole));
            self.next = Some(first);
        }
        self.drain_pending(sink);
    }

    /// The peer acknowledged everything before `ack`: bytes before it that were never seen
    /// will never come (they were lost by the capture, not by TCP), so the hole is given up
    /// now rather than at the end of the connection.
    pub fn acked(&mut self, ack: u32, sink: &mut impl FnMut(Chunk<'_>)) {
        let Some(next) = self.next else {
            return;
        };
        let ack = match self.fin_seq {
            Some(fin) if rel(ack, fin) > 0 => fin,
            _ => ack,
        };
        let ahead = rel(ack, next);
        if ahead <= 0 || ahead > (1 << 30) {
            return;
        }
        // Deliver what is pending below `ack`, with gaps for the holes between.
        while let Some(next) = self.next {
            let first = self
                .pending
                .iter()
                .map(|(s, _)| *s)
                .filter(|s| rel(*s, ack) < 0)
                .min_by_key(|s| rel(*s, next));
            match first {
                Some(_) => self.skip_to_first_pending(sink),
                None => {
                    let hole = rel(ack, next);
                    if hole > 0 {
                        self.stats.gap_bytes += hole as u64;
                        sink(Chunk::Gap(hole as u64));
                        self.next = Some(ack);
                        self.drain_pending(sink);
                    }
                    return;
                }
            }
        }
    }

    /// This direction sent its FIN at `seq` (the sequence number after its last byte).
    pub fn fin_at(&mut self, seq: u32) {
        self.fin_seq.get_or_insert(seq);
    }

    /// The stream ended (FIN, RST or end of capture): holes that never filled become gaps and
    /// whatever waited behind them is delivered.
    pub fn finish(&mut self, sink: &mut impl FnMut(Chunk<'_>)) {
        while !self.pending.is_empty() {
            self.skip_to_first_pending(sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(r: &mut Reassembler, seq: u32, len: u32, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        r.push(seq, len, data, &mut |c| {
            out.push(match c {
                Chunk::Data(d) => String::from_utf8_lossy(d).into_owned(),
                Chunk::Gap(n) => format!("<gap {n}>"),
            })
        });
        out
    }

    #[test]
    fn in_order_and_retransmission() {
        let mut r = Reassembler::default();
        r.start_at(100);
        assert_eq!(collect(&mut r, 100, 5, b"hello"), vec!["hello"]);
        assert!(
            collect(&mut r, 100, 5, b"hello").is_empty(),
            "full retransmission"
        );
        assert_eq!(
            collect(&mut r, 103, 5, b"lo wo"),
            vec![" wo"],
            "partial overlap"
        );
        assert_eq!(r.stats.duplicate_bytes, 7);
        assert_eq!(r.next_seq(), Some(108));
    }

    #[test]
    fn out_of_order_is_reordered() {
        let mut r = Reassembler::default();
        r.start_at(0);
        assert!(collect(&mut r, 5, 5, b"world").is_empty());
        assert_eq!(collect(&mut r, 0, 5, b"hello"), vec!["hello", "world"]);
        assert_eq!(r.stats.out_of_order, 1);
    }

    #[test]
    fn truncated_capture_is_a_gap() {
        let mut r = Reassembler::default();
        r.start_at(0);
        assert_eq!(collect(&mut r, 0, 10, b"abc"), vec!["abc", "<gap 7>"]);
        assert_eq!(collect(&mut r, 10, 2, b"de"), vec!["de"]);
    }

    #[test]
    fn holes_become_gaps_at_the_end() {
        let mut r = Reassembler::default();
        r.start_at(0);
        collect(&mut r, 0, 2, b"ab");
        assert!(collect(&mut r, 6, 2, b"gh").is_empty());
        let mut out = Vec::new();
        r.finish(&mut |c| out.push(format!("{c:?}")));
        assert_eq!(out, vec!["Gap(4)", "Data([103, 104])"]);
        assert_eq!(r.stats.gap_bytes, 4);
    }

    #[test]
    fn an_ack_beyond_a_hole_gives_it_up() {
        let mut r = Reassembler::default();
        r.start_at(0);
        collect(&mut r, 0, 2, b"ab");
        assert!(collect(&mut r, 6, 2, b"gh").is_empty());
        let mut out = Vec::new();
        // The peer received bytes 2..4: we never will.
        r.acked(4, &mut |c| out.push(format!("{c:?}")));
        assert_eq!(out, vec!["Gap(2)"]);
        r.acked(8, &mut |c| out.push(format!("{c:?}")));
        assert_eq!(out, vec!["Gap(2)", "Gap(2)", "Data([103, 104])"]);
        // Bytes acknowledged but never seen at all are a gap too.
        let mut out = Vec::new();
        r.acked(10, &mut |c| out.push(format!("{c:?}")));
        assert_eq!(out, vec!["Gap(2)"]);
        assert_eq!(r.next_seq(), Some(10));
        // The ACK of a FIN covers one sequence number that carries no byte.
        r.fin_at(10);
        let mut out = Vec::new();
        r.acked(11, &mut |c| out.push(format!("{c:?}")));
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn sequence_wraparound() {
        let mut r = Reassembler::default();
        r.start_at(u32::MAX - 1);
        assert_eq!(collect(&mut r, u32::MAX - 1, 4, b"wrap"), vec!["wrap"]);
        assert_eq!(r.next_seq(), Some(2));
        assert_eq!(collect(&mut r, 2, 2, b"ok"), vec!["ok"]);
    }

    #[test]
    fn an_oversized_out_of_order_segment_with_nothing_pending_is_delivered_after_a_gap() {
        // A crafted capture (an IPv6 packet whose payload length field is 0 takes the rest of
        // the frame as payload): more than the pending limit, ahead of a hole, nothing pending.
        // It used to make `push` call itself forever.
        let mut r = Reassembler::default();
        r.start_at(1000);
        let big = vec![b'x'; MAX_PENDING_BYTES + 10];
        let mut out = Vec::new();
        r.push(1100, big.len() as u32, &big, &mut |c| {
            out.push(match c {
                Chunk::Data(d) => format!("data {}", d.len()),
                Chunk::Gap(n) => format!("gap {n}"),
            })
        });
        assert_eq!(
            out,
            vec!["gap 100".to_owned(), format!("data {}", big.len())]
        );
        assert_eq!(r.next_seq(), Some(1100 + big.len() as u32));
        assert_eq!(r.stats.gap_bytes, 100);
        assert_eq!(r.stats.out_of_order, 1);
    }

    #[test]
    fn too_many_pending_segments_give_up_the_hole() {
        let mut r = Reassembler::default();
        r.start_at(0);
        let mut out = Vec::new();
        for i in 0..(MAX_PENDING_SEGMENTS as u32 + 1) {
            r.push(10 + i, 1, b"x", &mut |c| out.push(format!("{c:?}")));
        }
        assert_eq!(out.first().map(String::as_str), Some("Gap(10)"));
        assert_eq!(out.len(), 1 + MAX_PENDING_SEGMENTS + 1);
    }

    #[test]
    fn any_order_with_repeats_and_overlaps_gives_the_stream_back() {
        // A stream cut into segments (some overlapping the next, some sent twice), fed in a
        // shuffled order from a start near the sequence number's wraparound: the delivered
        // bytes are the stream, once, in order, without a gap.
        let mut next = crate::test_rng::xorshift(0x853c_49e6_748f_ea9b);
        for round in 0..2_000 {
            let stream: Vec<u8> = (0..next() % 3000 + 1).map(|_| next() as u8).collect();
            let start = u32::MAX - (next() % 2000) as u32;
            let mut segs = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let len = (next() % 200 + 1) as usize;
                let end = (at + len).min(stream.len());
                let overlap = (next() % 20) as usize;
                let to = (end + overlap).min(stream.len());
                segs.push((at, to));
                if next().is_multiple_of(5) {
                    segs.push((at, to));
                }
                at = end;
            }
            if segs.len() > MAX_PENDING_SEGMENTS {
                segs.truncate(MAX_PENDING_SEGMENTS);
            }
            let covered = segs.iter().map(|s| s.1).max().unwrap_or(0);
            for i in (1..segs.len()).rev() {
                segs.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let mut r = Reassembler::default();
            r.start_at(start);
            let mut got = Vec::new();
            let mut gaps = 0;
            let mut sink = |c: Chunk<'_>| match c {
                Chunk::Data(d) => got.extend_from_slice(d),
                Chunk::Gap(n) => gaps += n,
            };
            for (from, to) in &segs {
                let seq = start.wrapping_add(*from as u32);
                r.push(seq, (to - from) as u32, &stream[*from..*to], &mut sink);
            }
            r.finish(&mut sink);
            assert_eq!(gaps, 0, "round {round}");
            assert_eq!(got, stream[..covered], "round {round}");
            assert!(
                r.pending.is_empty() && r.pending_bytes == 0,
                "round {round}"
            );
        }
    }
}
