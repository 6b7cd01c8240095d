//! Streaming WebSocket frame parsing (RFC 6455) for one direction. Pure.
//!
//! Only frame headers are read; payloads are skipped by their length, except a close frame's
//! (at most 125 bytes: the status code and the reason), unmasked when the client masked it.
//! A gap inside a payload costs nothing; a gap in a header loses sync for the rest of the
//! direction, since WebSocket has no marker to find the next frame by.

/// A frame header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload_len: u64,
}

pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Parser output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsEvent {
    Frame(Frame),
    /// A close frame's payload: code (if any) and reason.
    Close {
        code: Option<u16>,
        reason: String,
    },
    /// Sync lost; `bytes` could not be framed.
    Lost {
        bytes: u64,
        why: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Header,
    Payload {
        remaining: u64,
        close: Option<CloseCollect>,
    },
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct CloseCollect {
    mask: Option<[u8; 4]>,
    bytes: Vec<u8>,
}

/// One direction's frame parser.
#[derive(Debug)]
pub struct WsStream {
    state: State,
    header: Vec<u8>,
}

impl Default for WsStream {
    fn default() -> Self {
        Self {
            state: State::Header,
            header: Vec::with_capacity(14),
        }
    }
}

/// The total header length implied by the first two bytes.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

fn close_event(c: &CloseCollect) -> WsEvent {
    let mut bytes = c.bytes.clone();
    if let Some(mask) = c.mask {
        for (i, b) in bytes.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    let code = (bytes.len() >= 2).then(|| u16::from_be_bytes([bytes[0], bytes[1]]));
    let reason = if bytes.len() > 2 {
        String::from_utf8_lossy(&bytes[2..]).into_owned()
    } else {
        String::new()
    };
    WsEvent::Close { code, reason }
}

impl WsStream {
    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Bytes from the current stream position to the next frame header, when known: 0 at a
    /// header boundary, the rest of the payload inside one; `None` inside a header or lost.
    pub fn bytes_to_next_header(&self) -> Option<u64> {
        match &self.state {
            State::Header if self.header.is_empty() => Some(0),
            State::Payload { remaining, .. } => Some(*remaining),
            _ => None,
        }
    }

    /// Feeds stream bytes.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<WsEvent>) {
        let mut pos = 0;
        while pos < data.len() {
            match &mut self.state {
                State::Lost => return,
                State::Payload { remaining, close } => {
                    let take = (*remaining).min((data.len() - pos) as u64) as usize;
                    if let Some(c) = close.as_mut() {
                        c.bytes.extend_from_slice(&data[pos..pos + take]);
                    }
                    pos += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        if let Some(c) = close.take() {
                            out.push(close_event(&c));
                        }
                        self.state = State::Header;
                    }
                }
                State::Header => {
                    let need = if self.header.len() < 2 {
                        2
                    } else {
                        header_len(self.header[1])
                    };
                    let take = (need - self.header.len()).min(data.len() - pos);
                    self.header.extend_from_slice(&data[pos..pos + take]);
                    pos += take;
                    if self.header.len() < 2 {
                        continue;
                    }
                    let full = header_len(self.header[1]);
                    if self.header.len() < full {
                        continue;
                    }
                    if let Err(why) = self.complete_header(out) {
                        self.state = State::Lost;
                        out.push(WsEvent::Lost {
                            bytes: (data.len() - pos) as u64,
                            why,
                        });
                        return;
                    }
                }
            }
        }
    }

    fn complete_header(&mut self, out: &mut Vec<WsEvent>) -> Result<(), &'static str> {
        let h = std::mem::take(&mut self.header);
        let (b0, b1) = (h[0], h[1]);
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let (len, mask_at) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        // RSV2/RSV3 are not used by any negotiated extension here; RSV1 is permessage-deflate.
        if b0 & 0x30 != 0 {
            return Err("reserved bits set: not a frame boundary");
        }
        if matches!(op, 0x3..=0x7 | 0xB..=0xF) {
            return Err("reserved opcode: not a frame boundary");
        }
        let control = op >= 0x8;
        if control && (len > 125 || !fin) {
            return Err("control frame too long or fragmented: not a frame boundary");
        }
        if len > (1 << 53) {
            return Err("impossible payload length");
        }
        let mask = masked.then(|| [h[mask_at], h[mask_at + 1], h[mask_at + 2], h[mask_at + 3]]);
        out.push(WsEvent::Frame(Frame {
            fin,
            opcode: op,
            masked,
            payload_len: len,
        }));
        let close = (op == opcode::CLOSE).then(|| CloseCollect {
            mask,
            bytes: Vec::with_capacity(len as usize),
        });
        if len == 0 {
            if let Some(c) = close {
                out.push(close_event(&c));
            }
            self.state = State::Header;
        } else {
            self.state = State::Payload {
                remaining: len,
                close,
            };
        }
        self.header = h;
        self.header.clear();
        Ok(())
    }

    /// Bytes that were never seen.
    pub fn gap(&mut self, len: u64, out: &mut Vec<WsEvent>) {
        match &mut self.state {
            State::Payload { remaining, close } if len <= *remaining => {
                *remaining -= len;
                if *remaining == 0 {
                    if let Some(c) = close.take() {
                        out.push(close_event(&c));
                    }
                    self.state = State::Header;
                }
            }
            State::Lost => {}
            _ => {
                self.state = State::Lost;
                out.push(WsEvent::Lost {
                    bytes: len,
                    why: "bytes missing inside a frame header",
                });
            }
        }
    }
}

/// Builds a frame (for tests and fixtures): header, optional mask, payload.
pub fn encode_frame(fin: bool, op: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | op];
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mbit | n as u8),
        n if n <= 0xffff => {
            out.push(mbit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mbit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(out: &[WsEvent]) -> Vec<(u8, u64)> {
        out.iter()
            .filter_map(|e| match e {
                WsEvent::Frame(f) => Some((f.opcode, f.payload_len)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn frames_of_every_size_and_split_everywhere() {
        let mut stream = Vec::new();
        stream.extend(encode_frame(true, opcode::TEXT, None, b"hello"));
        stream.extend(encode_frame(
            true,
            opcode::BINARY,
            Some([1, 2, 3, 4]),
            &[7u8; 300],
        ));
        stream.extend(encode_frame(false, opcode::TEXT, None, &[b'a'; 70_000]));
        stream.extend(encode_frame(true, opcode::CONTINUATION, None, b"end"));
        stream.extend(encode_frame(true, opcode::PING, None, b""));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        stream.extend(encode_frame(
            true,
            opcode::CLOSE,
            Some([9, 8, 7, 6]),
            &close,
        ));
        let want = vec![
            (opcode::TEXT, 5),
            (opcode::BINARY, 300),
            (opcode::TEXT, 70_000),
            (opcode::CONTINUATION, 3),
            (opcode::PING, 0),
            (opcode::CLOSE, 5),
        ];
        for split in [1usize, 2, 3, 7, 13, 64, 1000, 4096, stream.len()] {
            let mut ws = WsStream::default();
            let mut out = Vec::new();
            for piece in stream.chunks(split) {
                ws.feed(piece, &mut out);
            }
            assert_eq!(frames(&out), want, "split {split}");
            assert_eq!(
                out.last(),
                Some(&WsEvent::Close {
                    code: Some(1000),
                    reason: "bye".into()
                }),
                "split {split}"
            );
        }
    }

    #[test]
    fn payload_gaps_keep_sync_header_gaps_lose_it() {
        let mut ws = WsStream::default();
        let mut out = Vec::new();
        let big = encode_frame(true, opcode::BINARY, None, &[0u8; 5000]);
        ws.feed(&big[..100], &mut out);
        ws.gap(big.len() as u64 - 100, &mut out);
        ws.feed(&encode_frame(true, opcode::TEXT, None, b"x"), &mut out);
        assert_eq!(
            frames(&out),
            vec![(opcode::BINARY, 5000), (opcode::TEXT, 1)]
        );
        ws.feed(&[0x81], &mut out);
        ws.gap(3, &mut out);
        assert!(ws.is_lost());
        assert!(matches!(out.last(), Some(WsEvent::Lost { .. })));
    }

    #[test]
    fn garbage_is_detected_not_panicked_on() {
        for garbage in [
            &[0xffu8, 0x00][..],
            &[0x83, 0x00],
            &[0x88, 0x7e, 0x01, 0x00],
            &[0x09, 0x00],
        ] {
            let mut ws = WsStream::default();
            let mut out = Vec::new();
            ws.feed(garbage, &mut out);
            assert!(ws.is_lost(), "{garbage:?} -> {out:?}");
        }
        let mut ws = WsStream::default();
        let mut out = Vec::new();
        ws.feed(&encode_frame(true, opcode::CLOSE, None, &[]), &mut out);
        assert_eq!(
            out.last(),
            Some(&WsEvent::Close {
                code: None,
                reason: String::new()
            })
        );
    }
}
