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
        server.next_header_seq,
        s2c_resp.seq.wrapping_add(s2c_resp.payload_len)
    );
    let client = hints
        .iter()
        .find(|h| h.src == w.client)
        .expect("client hint");
    let c2s_req = w.segment(3);
    assert_eq!(
        client.next_header_seq,
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
    assert_eq!(
        h[0].next_header_seq,
        seg.seq.wrapping_add(frame.len() as u32)
    );
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
        let mut pieces = vec![(0u32, seg.payload[..hlen].to_vec())];
        if seg.payload[0] & 0x0f == 8 && seg.payload.len() > hlen {
            pieces.push((hlen as u32, seg.payload[hlen..].to_vec()));
        }
        for sub in split_followed(seg.clone(), &pieces) {
            t.segment(&sub, &mut out);
        }
    }
    t.finish(&mut out);
    assert_eq!(out, full);
}
