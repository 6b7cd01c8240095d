//! Reads pcap and pcapng files with pcap-parser's block parsers and hands each packet to a
//! callback with its link type and timestamp. The file is read in large chunks on a thread of
//! its own (`read_ahead`) while the blocks of the chunk before are parsed in place. A truncated
//! file ends the read with a warning, not a panic, and the packets before the damage still
//! count.
use std::io::Read;

use pcap_parser::{
    nom::{self, IResult, Offset as _},
    parse_block_be, parse_block_le, parse_pcap_frame, parse_pcap_frame_be,
    parse_pcap_frame_modified, parse_pcap_header, parse_sectionheaderblock,
    pcapng::Block,
    LegacyPcapBlock, PcapBlockOwned, PcapError,
};

use super::read_ahead::{with_chunks, Chunk};

/// One packet of a capture.
pub struct Packet<'a> {
    pub linktype: i32,
    pub ts_ns: u64,
    pub data: &'a [u8],
    pub orig_len: u32,
}

/// Capture reading failures that stop the whole read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not a pcap or pcapng file (no known header)")]
    NotACapture,
    #[error("cannot read the capture: {0}")]
    Io(String),
    #[error("the capture is damaged at byte {offset}: {what}")]
    Damaged { offset: u64, what: String },
}

/// How reading ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureSummary {
    pub packets: u64,
    pub bytes_read: u64,
    /// Set when the file ended in the middle of a block (an interrupted tcpdump).
    pub truncated_at: Option<u64>,
    /// Packets of an interface the file never described (pcapng), skipped.
    pub unknown_interface: u64,
}

struct Interface {
    linktype: i32,
    resolution: u64,
    offset: u64,
}

fn ns(secs: u64, frac: u64, resolution: u64) -> u64 {
    let frac_ns = if resolution == 0 {
        0
    } else {
        (u128::from(frac) * 1_000_000_000 / u128::from(resolution)) as u64
    };
    secs.saturating_mul(1_000_000_000).saturating_add(frac_ns)
}

/// The bytes read at a time, on a thread of their own (`read_ahead`). Measured on the hop
/// bench's 867 MB capture: 1 MiB and 4 MiB equal, 256 KiB a little slower, 64 KiB three
/// times slower.
const CHUNK: usize = 1 << 20;
/// Spare room before each chunk for the unparsed tail of the one before: more than any block
/// of a normal capture (a loopback packet is up to 64 KiB + headers); a larger tail is joined
/// to the next chunk in a buffer of its own.
const HEAD: usize = 256 << 10;
/// The largest block read; a longer one is damage (a length field gone wrong).
const MAX_BLOCK: usize = 64 << 20;

/// Reads every packet; `progress` is told the bytes consumed so far now and then.
pub fn read_capture<R: Read + Send>(
    input: R,
    on_packet: impl FnMut(Packet<'_>),
    progress: impl FnMut(u64),
) -> Result<CaptureSummary, CaptureError> {
    read_in_chunks(input, CHUNK, HEAD, on_packet, progress)
}

fn read_in_chunks<R: Read + Send>(
    input: R,
    chunk: usize,
    head: usize,
    on_packet: impl FnMut(Packet<'_>),
    progress: impl FnMut(u64),
) -> Result<CaptureSummary, CaptureError> {
    let mut blocks = Blocks::new(on_packet, progress);
    with_chunks(input, chunk, head, |chunks| {
        // The unparsed tail of the chunks so far: the start of a block the next chunk ends.
        let mut carry: Vec<u8> = Vec::new();
        while let Some(c) = chunks.next() {
            let Chunk { mut buf, len } = c.map_err(|e| CaptureError::Io(e.to_string()))?;
            if carry.len() <= head {
                // The tail (small) goes in the room before the chunk: one run of bytes, and
                // the chunk itself is not copied.
                let start = head - carry.len();
                buf[start..head].copy_from_slice(&carry);
                let data = &buf[start..head + len];
                let used = blocks.parse(data)?;
                carry.clear();
                carry.extend_from_slice(&data[used..]);
            } else {
                carry.extend_from_slice(&buf[head..head + len]);
                let used = blocks.parse(&carry)?;
                carry.drain(..used);
                if carry.len() > MAX_BLOCK {
                    // A length field gone wrong, unless the file ends first (truncated).
                    return Err(blocks.damaged("a block larger than 64 MiB".into()));
                }
            }
            chunks.give_back(buf);
        }
        blocks.end(!carry.is_empty())
    })
}

type LegacyParse = fn(&[u8]) -> IResult<&[u8], LegacyPcapBlock<'_>, PcapError<&[u8]>>;

/// The file's format, known once its first bytes are.
#[derive(Clone, Copy)]
enum Framing {
    Unknown,
    Legacy(LegacyParse),
    Ng { big_endian: bool },
}

/// What the bytes at hand hold next.
enum Step<'a> {
    Block(usize, PcapBlockOwned<'a>),
    /// The block goes on past the bytes at hand.
    More,
    Damaged(String),
    NotACapture,
}

impl Framing {
    fn next<'a>(&mut self, data: &'a [u8]) -> Step<'a> {
        let parsed = match *self {
            Framing::Unknown => return self.detect(data),
            Framing::Legacy(parse) => parse(data).map(|(rem, b)| (rem, PcapBlockOwned::from(b))),
            Framing::Ng { big_endian } => {
                let parse = if big_endian {
                    parse_block_be
                } else {
                    parse_block_le
                };
                parse(data).map(|(rem, b)| {
                    if let Block::SectionHeader(ref shb) = b {
                        *self = Framing::Ng {
                            big_endian: shb.big_endian(),
                        };
                    }
                    (rem, PcapBlockOwned::from(b))
                })
            }
        };
        match parsed {
            Ok((rem, b)) => Step::Block(data.offset(rem), b),
            Err(nom::Err::Incomplete(_)) => Step::More,
            Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => {
                Step::Damaged(format!("{e:?}").chars().take(120).collect())
            }
        }
    }

    /// pcapng when the file starts with a section header, else legacy pcap when it starts
    /// with a pcap header (given back as its first block, as pcap-parser's reader does).
    fn detect<'a>(&mut self, data: &'a [u8]) -> Step<'a> {
        match parse_sectionheaderblock(data) {
            Ok(_) => {
                // Not consumed: the section header is the first block.
                *self = Framing::Ng { big_endian: false };
                return self.next(data);
            }
            Err(nom::Err::Incomplete(_)) if data.len() < 4 || data[..4] == NG_MAGIC => {
                return Step::More
            }
            Err(_) => {}
        }
        match parse_pcap_header(data) {
            Ok((_, header)) => {
                *self = Framing::Legacy(if header.is_modified_format() {
                    parse_pcap_frame_modified
                } else if header.is_bigendian() {
                    parse_pcap_frame_be
                } else {
                    parse_pcap_frame
                });
                Step::Block(header.size(), PcapBlockOwned::from(header))
            }
            Err(nom::Err::Incomplete(_)) => Step::More,
            Err(_) => Step::NotACapture,
        }
    }
}

/// A pcapng file's first bytes (the section header's block type).
const NG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// The blocks of a capture, as they are parsed, to the packet callback.
struct Blocks<P, G> {
    framing: Framing,
    on_packet: P,
    progress: G,
    summary: CaptureSummary,
    legacy_linktype: i32,
    legacy_nanos: bool,
    interfaces: Vec<Interface>,
    consumed: u64,
    last_progress: u64,
}

impl<P: FnMut(Packet<'_>), G: FnMut(u64)> Blocks<P, G> {
    /// Before the first byte: the format unknown, nothing read.
    fn new(on_packet: P, progress: G) -> Self {
        Self {
            framing: Framing::Unknown,
            on_packet,
            progress,
            summary: CaptureSummary::default(),
            legacy_linktype: linktype_unknown(),
            legacy_nanos: false,
            interfaces: Vec::new(),
            consumed: 0,
            last_progress: 0,
        }
    }

    /// Parses every whole block of `data` and says how many bytes they took; the rest is the
    /// start of a block that goes on in the next chunk.
    fn parse(&mut self, data: &[u8]) -> Result<usize, CaptureError> {
        let mut used = 0;
        loop {
            let rest = &data[used..];
            if rest.is_empty() {
                return Ok(used);
            }
            match self.framing.next(rest) {
                Step::Block(len, block) => {
                    self.block(block);
                    used += len;
                    self.consumed += len as u64;
                    if self.consumed - self.last_progress > (1 << 20) {
                        self.last_progress = self.consumed;
                        (self.progress)(self.consumed);
                    }
                }
                Step::More => return Ok(used),
                Step::Damaged(what) => return Err(self.damaged(what)),
                Step::NotACapture => return Err(CaptureError::NotACapture),
            }
        }
    }

    fn damaged(&self, what: String) -> CaptureError {
        CaptureError::Damaged {
            offset: self.consumed,
            what,
        }
    }

    /// At the end of the input, with or without the start of a block that never ended.
    fn end(mut self, unfinished: bool) -> Result<CaptureSummary, CaptureError> {
        if matches!(self.framing, Framing::Unknown) {
            // Empty, or shorter than a capture's header.
            return Err(CaptureError::NotACapture);
        }
        if unfinished {
            self.summary.truncated_at = Some(self.consumed);
        }
        self.summary.bytes_read = self.consumed;
        (self.progress)(self.consumed);
        Ok(self.summary)
    }

    fn block(&mut self, block: PcapBlockOwned<'_>) {
        let (linktype, ts_ns, data, orig_len) = match block {
            PcapBlockOwned::LegacyHeader(h) => {
                self.legacy_linktype = h.network.0;
                self.legacy_nanos = h.is_nanosecond_precision();
                return;
            }
            PcapBlockOwned::Legacy(b) => {
                let frac_res = if self.legacy_nanos {
                    1_000_000_000
                } else {
                    1_000_000
                };
                let ts = ns(u64::from(b.ts_sec), u64::from(b.ts_usec), frac_res);
                let data = &b.data[..(b.caplen as usize).min(b.data.len())];
                (self.legacy_linktype, ts, data, b.origlen)
            }
            PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                self.interfaces.clear();
                return;
            }
            PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                self.interfaces.push(Interface {
                    linktype: idb.linktype.0,
                    resolution: idb.ts_resolution().unwrap_or(1_000_000),
                    offset: u64::try_from(idb.ts_offset()).unwrap_or(0),
                });
                return;
            }
            PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                let Some(iface) = self.interfaces.get(epb.if_id as usize) else {
                    self.summary.unknown_interface += 1;
                    return;
                };
                let (secs, frac) = epb.decode_ts(iface.offset, iface.resolution);
                let ts = ns(u64::from(secs), u64::from(frac), iface.resolution);
                let data = &epb.data[..(epb.caplen as usize).min(epb.data.len())];
                (iface.linktype, ts, data, epb.origlen)
            }
            PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                let Some(iface) = self.interfaces.first() else {
                    return;
                };
                (iface.linktype, 0, spb.data, spb.origlen)
            }
            PcapBlockOwned::NG(_) => return,
        };
        self.summary.packets += 1;
        (self.on_packet)(Packet {
            linktype,
            ts_ns,
            data,
            orig_len,
        });
    }
}

fn linktype_unknown() -> i32 {
    -1
}

#[cfg(test)]
mod tests {
    use pcap_parser::create_reader;

    use super::*;

    /// What a read gave: every packet, and how it ended.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        packets: Vec<(i32, u64, Vec<u8>, u32)>,
        end: String,
    }

    fn outcome(
        read: impl FnOnce(&mut dyn FnMut(Packet<'_>)) -> Result<CaptureSummary, CaptureError>,
    ) -> Outcome {
        let mut packets = Vec::new();
        let end = read(&mut |p: Packet<'_>| {
            packets.push((p.linktype, p.ts_ns, p.data.to_vec(), p.orig_len))
        });
        let end = match end {
            Ok(s) => format!("{:?}", (s.packets, s.truncated_at, s.unknown_interface)),
            // The old reader told a file shorter than a header as an I/O error.
            Err(CaptureError::Io(e)) if e.starts_with("Incomplete") => "not a capture".into(),
            Err(CaptureError::NotACapture) => "not a capture".into(),
            Err(CaptureError::Damaged { offset, .. }) => format!("damaged at {offset}"),
            Err(e) => e.to_string(),
        };
        Outcome { packets, end }
    }

    /// The reader this one replaced: pcap-parser's own streaming reader, whole in memory.
    fn reference(
        input: &[u8],
        on_packet: &mut dyn FnMut(Packet<'_>),
    ) -> Result<CaptureSummary, CaptureError> {
        let mut reader = match create_reader(1 << 20, input) {
            Ok(r) => r,
            Err(PcapError::HeaderNotRecognized) | Err(PcapError::Eof) => {
                return Err(CaptureError::NotACapture)
            }
            Err(e) => return Err(CaptureError::Io(format!("{e:?}"))),
        };
        let mut blocks = Blocks::new(on_packet, |_| {});
        loop {
            match reader.next() {
                Ok((offset, block)) => {
                    blocks.block(block);
                    reader.consume_noshift(offset);
                    blocks.consumed += offset as u64;
                }
                Err(PcapError::Eof) => break,
                Err(PcapError::Incomplete(_)) => reader.refill().expect("in memory"),
                Err(PcapError::BufferTooSmall) => {
                    if !reader.grow(64 << 20) {
                        return Err(blocks.damaged(String::new()));
                    }
                    reader.refill().expect("in memory");
                }
                Err(PcapError::UnexpectedEof) => {
                    blocks.summary.truncated_at = Some(blocks.consumed);
                    break;
                }
                Err(_) => return Err(blocks.damaged(String::new())),
            }
        }
        Ok(blocks.summary)
    }

    fn fixtures() -> Vec<Vec<u8>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/hop");
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .expect("fixtures")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
            .collect();
        all.sort();
        assert!(all.len() >= 14, "{all:?}");
        all.iter()
            .map(|p| std::fs::read(p).expect("fixture"))
            .collect()
    }

    /// Chunk and spare-room sizes: the real ones, and small ones that split every block
    /// between chunks (blocks longer than the room go through the joined buffer).
    const SIZES: [(usize, usize); 4] = [(CHUNK, HEAD), (4096, 2048), (1000, 64), (97, 0)];

    #[test]
    fn chunked_reading_gives_what_pcap_parsers_reader_gives() {
        let mut rand = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut cases = 0;
        for bytes in fixtures() {
            let mut inputs = vec![bytes.clone()];
            for cut in [0, 3, 11, 23, 30, bytes.len() / 3, bytes.len() - 7] {
                inputs.push(bytes[..cut].to_vec());
            }
            for _ in 0..12 {
                let mut damaged = bytes.clone();
                for _ in 0..1 + rand() % 8 {
                    let at = rand() as usize % damaged.len();
                    damaged[at] = rand() as u8;
                }
                inputs.push(damaged);
            }
            for input in &inputs {
                let want = outcome(|f| reference(input, f));
                for (chunk, head) in SIZES {
                    let got = outcome(|f| read_in_chunks(&input[..], chunk, head, f, |_| {}));
                    assert_eq!(got.end, want.end, "chunk {chunk}, head {head}");
                    assert!(got.packets == want.packets, "chunk {chunk}, head {head}");
                    cases += 1;
                }
            }
        }
        assert!(cases > 1000, "{cases}");
    }

    #[test]
    fn a_read_error_is_a_clear_error() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("the disk went away"));
                }
                let n = out.len().min(self.0);
                out[..n].fill(0);
                self.0 -= n;
                Ok(n)
            }
        }
        let err = read_in_chunks(Failing(10), 4096, 64, |_| {}, |_| {}).expect_err("fails");
        assert_eq!(
            err.to_string(),
            "cannot read the capture: the disk went away"
        );
    }
}
