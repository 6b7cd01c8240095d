use super::{tests::*, *};
use crate::hop::{split_followed, ws::encode_frame, TcpFlags};

#[test]
fn hints_say_where_the_next_header_starts() {
    let mut w = Wire::new(41000);
    w.handshake()
        .send(Side::Client, UPGRADE_REQ)
        .send(Side::Server, UPGRADE_RESP);
    let mut t = Tracker::new(&[18789]).with_kernel_hints();
    let mut out = Vec::new();
    for i in 0..w.segs.len() {
        t.segment(&w.segment(i), &mut out);
    }
    let hints = t.take_hints();
    assert_eq!(hints.len(), 2, "{hints:?}");
    // The server's next header starts right after the 101 head; the client's right after
    // its request.
    let server = hints
        .iter()
        .find(|h| h.src == w.server)
        .expect("server hint");
    let s2c_resp = w.segment(4);
    assert_eq!(
        server.next_seq,
        s2c_resp.seq.wrapping_add(s2c_resp.payload_len)
    );
    let client = hints
        .iter()
        .find(|h| h.src == w.client)
        .expect("client hint");
    let c2s_req = w.segment(3);
    assert_eq!(
        client.next_seq,
        c2s_req.seq.wrapping_add(c2s_req.payload_len)
    );
    // Once armed, no new hint until the kernel falls back to prefixes again.
    assert!(t.take_hints().is_empty());
    // Mid-payload: the hint points past the rest of the frame.
    let frame = encode_frame(true, 2, None, &[0u8; 1000]);
    let mut seg = w.segment(4);
    seg.seq = seg.seq.wrapping_add(seg.payload_len);
    seg.payload = &frame[..100];
    seg.payload_len = 100;
    seg.flags = TcpFlags::from_byte(0x18);
    t.segment(&seg, &mut out);
    let h = t.take_hints();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].next_seq, seg.seq.wrapping_add(frame.len() as u32));
    assert!(!out.iter().any(|r| matches!(r, HopRecord::Loss(_))));
    // Replay (no kernel) produces none.
    let mut plain = Tracker::new(&[18789]);
    for i in 0..w.segs.len() {
        plain.segment(&w.segment(i), &mut out);
    }
    assert!(plain.take_hints().is_empty());
}

#[test]
fn followed_segments_give_the_same_records_as_full_ones() {
    // The kernel's frame follower sends only the headers (and close payloads) at their
    // offsets; the tracker must see the same session as with every byte.
    let w = healthy_session();
    let full = w.run();
    let mut t = Tracker::new(&[18789]);
    let mut out = Vec::new();
    let mut ws_started = false;
    for i in 0..w.segs.len() {
        let seg = w.segment(i);
        if !ws_started || seg.payload_len == 0 {
            ws_started |= seg.payload.starts_with(b"HTTP/1.1 101");
            t.segment(&seg, &mut out);
            continue;
        }
        // Cut each WebSocket segment the way the kernel does: header, close payload.
        let b1 = seg.payload[1];
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let hlen = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
        let mut pieces = vec![(0u32, &seg.payload[..hlen])];
        if seg.payload[0] & 0x0f == 8 && seg.payload.len() > hlen {
            pieces.push((hlen as u32, &seg.payload[hlen..]));
        }
        split_followed(seg.clone(), &pieces, |sub| t.segment(sub, &mut out));
    }
    t.finish(&mut out);
    assert_eq!(out, full);
}

/// The kernel's follower as the TC program runs it (see `ebpf/edgewatch-ebpf`), for the
/// tracker to be checked against: pure ACKs cost no record; in a followed body, segments
/// wholly inside it and in sequence are skipped and their length rides on the next record (or
/// on one of its own when that record does not start where the run ends); a segment still
/// inside the body that cannot join the run (a retransmission) is sent and the entry stays;
/// the segment that reaches past the end is sent from the end and ends the entry. Sent
/// segments carry at most the program's captured prefix.
#[derive(Default)]
struct KernelModel {
    /// Per direction (by source): (body end, skipped run, run end).
    followed: HashMap<SocketAddr, (u32, u32, u32)>,
    skipped_segments: usize,
}

/// Payload bytes a record holds at most (`HOP_CAPTURE_BYTES - 1`).
const CAPTURED: usize = 2047;

impl KernelModel {
    /// What user space receives for one wire segment: nothing, or a packet (as segments).
    fn send<'a>(&mut self, seg: &Segment<'a>) -> Option<Vec<Segment<'a>>> {
        let f = seg.flags;
        let control = f.syn || f.fin || f.rst;
        if seg.payload_len == 0 && !control {
            self.skipped_segments += 1;
            return None;
        }
        let mut seg = seg.clone();
        let mut out = Vec::new();
        let mut elided = 0u32;
        if let Some((end, run, run_end)) = self.followed.get(&seg.src).copied() {
            let ahead = end.wrapping_sub(seg.seq) as i32;
            let contiguous = run == 0 || run_end == seg.seq;
            if !control && ahead > seg.payload_len as i32 && contiguous {
                self.followed.insert(
                    seg.src,
                    (
                        end,
                        run + seg.payload_len,
                        seg.seq.wrapping_add(seg.payload_len),
                    ),
                );
                self.skipped_segments += 1;
                return None;
            }
            if contiguous {
                elided = run;
            } else {
                out.push(skipped(&seg, run_end, run));
            }
            if ahead > 0 && (ahead as u32) < seg.payload_len {
                elided += ahead as u32;
                seg.seq = seg.seq.wrapping_add(ahead as u32);
                seg.payload_len -= ahead as u32;
                seg.payload = &seg.payload[ahead as usize..];
            }
            if !control && ahead > 0 && ahead as u32 > seg.payload_len {
                self.followed.insert(seg.src, (end, 0, 0));
            } else {
                self.followed.remove(&seg.src);
            }
        }
        if elided > 0 {
            out.push(skipped(&seg, seg.seq, elided));
        }
        seg.payload = &seg.payload[..seg.payload.len().min(CAPTURED)];
        out.push(seg);
        Some(out)
    }

    fn arm(&mut self, hints: Vec<FollowHint>) {
        for h in hints {
            assert_eq!(h.mode, FollowMode::Body);
            self.followed.entry(h.src).or_insert((h.next_seq, 0, 0));
        }
    }
}

/// The skipped run of `len` bytes ending at `end`, as user space turns it into a segment.
fn skipped<'a>(seg: &Segment<'a>, end: u32, len: u32) -> Segment<'a> {
    Segment {
        seq: end.wrapping_sub(len),
        ack: 0,
        flags: TcpFlags::default(),
        payload_len: len,
        payload: &[],
        followed: true,
        ..seg.clone()
    }
}

#[test]
fn a_long_body_the_kernel_skips_gives_the_same_records_as_every_byte() {
    // A download of 100 segments with a Content-Length, an upload with a chunked body whose
    // end lies inside its last segment (the terminating chunk follows in it), and a request
    // after them on the same keep-alive connection, closed by both sides.
    let seg = 1400usize;
    let body = vec![b'b'; 100 * seg];
    let mut w = Wire::new(41010);
    w.handshake().send(
        Side::Client,
        b"GET /file HTTP/1.1\r\nHost: up\r\nX-Request-ID: dl\r\n\r\n",
    );
    let mut download =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    download.extend_from_slice(&body);
    for (i, piece) in download.chunks(seg).enumerate() {
        w.send(Side::Server, piece);
        if i % 2 == 1 {
            w.raw(Side::Client, 0x10, b""); // a pure ACK
        }
    }
    let mut upload = format!(
        "POST /up HTTP/1.1\r\nHost: up\r\nX-Request-ID: ul\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    upload.extend_from_slice(&body);
    upload.extend_from_slice(b"\r\n0\r\n\r\n");
    for piece in upload.chunks(seg) {
        w.send(Side::Client, piece);
    }
    w.send(
        Side::Server,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .send(Side::Client, b"GET /after HTTP/1.1\r\nHost: up\r\n\r\n")
    .send(
        Side::Server,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    w.fin(Side::Client).fin(Side::Server);
    let full = w.run();
    assert_eq!(exchanges(&full).len(), 3, "{full:?}");

    let mut kernel = KernelModel::default();
    let mut t = Tracker::new(&[18789]).with_kernel_hints();
    let mut out = Vec::new();
    for i in 0..w.segs.len() {
        let wire = w.segment(i);
        if let Some(sent) = kernel.send(&wire) {
            for s in &sent {
                t.segment(s, &mut out);
            }
        }
        kernel.arm(t.take_hints());
    }
    t.finish(&mut out);
    assert_eq!(out, full);
    // Most of both bodies, and every pure ACK, cost no record.
    assert!(kernel.skipped_segments > 150, "{}", kernel.skipped_segments);
    assert!(!out.iter().any(|r| matches!(r, HopRecord::Loss(_))));
}

#[test]
fn a_retransmission_inside_a_followed_body_keeps_it_followed() {
    // A chunked download in segments longer than a record's captured prefix; its last
    // segment holds the chunk's end and the terminating chunk. One segment near the end comes
    // twice (TCP sent it again). User space arms the kernel only at the end of a batch of
    // segments (a ring-buffer drain), so the kernel must keep following through the
    // retransmission: otherwise the last segment goes unfollowed, its terminating chunk lies
    // beyond the captured prefix, and the response cannot be told complete.
    let seg = 4000usize;
    let body = vec![b'c'; 60 * seg + 2500];
    let mut w = Wire::new(41020);
    w.handshake().send(
        Side::Client,
        b"GET /file HTTP/1.1\r\nHost: up\r\nX-Request-ID: dl\r\n\r\n",
    );
    let mut download = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    download.extend_from_slice(&body);
    download.extend_from_slice(b"\r\n0\r\n\r\n");
    let pieces: Vec<&[u8]> = download.chunks(seg).collect();
    assert!(pieces.last().is_some_and(|p| p.len() > 7 + CAPTURED));
    for (i, piece) in pieces.iter().enumerate() {
        w.send(Side::Server, piece);
        if i == pieces.len() - 4 {
            let again = w.segs[w.segs.len() - 3].clone();
            w.segs
                .push((w.ts, again.1, again.2, again.3, again.4, again.5));
        }
    }
    w.fin(Side::Client).fin(Side::Server);
    let full = w.run();
    let x = exchanges(&full);
    assert_eq!(x.len(), 1, "{full:?}");
    assert_eq!(x[0].outcome, ExchangeOutcome::Complete, "{full:?}");

    let mut kernel = KernelModel::default();
    let mut t = Tracker::new(&[18789]).with_kernel_hints();
    let mut out = Vec::new();
    let mut armed = 0;
    for i in 0..w.segs.len() {
        if let Some(sent) = kernel.send(&w.segment(i)) {
            for s in &sent {
                t.segment(s, &mut out);
            }
        }
        if i % 8 == 7 {
            let hints = t.take_hints();
            armed += hints.len();
            kernel.arm(hints);
        }
    }
    t.finish(&mut out);
    assert_eq!(out, full);
    assert!(kernel.skipped_segments > 40, "{}", kernel.skipped_segments);
    // One body, one hint. Neither the segments sent before the kernel was armed nor the bytes
    // TCP sent again are a sign that it stopped following: a hint for each (it was 4 in the
    // first batch alone) costs a map write, and one armed after the kernel passed the body's
    // end plants a stale entry.
    assert_eq!(armed, 1);
}

#[test]
fn only_long_bodies_are_handed_to_the_kernel() {
    let long = BODY_FOLLOW_MIN + 10;
    let mut w = Wire::new(41011);
    w.handshake()
        .send(Side::Client, b"GET /a HTTP/1.1\r\nHost: up\r\n\r\n")
        .send(
            Side::Server,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc",
        )
        .send(Side::Client, b"GET /b HTTP/1.1\r\nHost: up\r\n\r\n")
        .send(Side::Server, &[b'x'; 997])
        .send(
            Side::Server,
            format!("HTTP/1.1 200 OK\r\nContent-Length: {long}\r\n\r\nabc").as_bytes(),
        );
    let mut t = Tracker::new(&[18789]).with_kernel_hints();
    let mut out = Vec::new();
    let n = w.segs.len();
    for i in 0..n - 1 {
        t.segment(&w.segment(i), &mut out);
        // The rest of /a's body is short: no hint.
        assert!(t.take_hints().is_empty(), "after segment {i}");
    }
    // /b's body is long: a hint to where it ends.
    let last = w.segment(n - 1);
    t.segment(&last, &mut out);
    let hints = t.take_hints();
    assert_eq!(hints.len(), 1, "{hints:?}");
    assert_eq!(hints[0].mode, FollowMode::Body);
    assert_eq!(hints[0].src, w.server);
    let end = last.seq.wrapping_add(last.payload_len);
    assert_eq!(hints[0].next_seq, end.wrapping_add(long as u32 - 3));
    // Armed once: no second hint.
    assert!(t.take_hints().is_empty());
}
