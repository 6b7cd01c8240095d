//! Reads pcap and pcapng files with pcap-parser and hands each packet to a callback with its
//! link type and timestamp. A truncated file ends the read with a warning, not a panic, and the
//! packets before the damage still count.
use std::io::Read;

use pcap_parser::{
    create_reader, pcapng::Block, traits::PcapReaderIterator, PcapBlockOwned, PcapError,
};

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

/// The capture reader's buffer, larger than any packet block (a loopback packet is up to
/// 64 KiB + headers; a smaller buffer has to grow). The reader reads into it straight from its
/// input: a buffered reader in front only adds a copy of every byte (a sixth of a replay).
const READ_BUFFER: usize = 1 << 20;

/// Reads every packet; `progress` is told the bytes consumed so far now and then.
pub fn read_capture<R: Read + Send>(
    input: R,
    mut on_packet: impl FnMut(Packet<'_>),
    mut progress: impl FnMut(u64),
) -> Result<CaptureSummary, CaptureError> {
    // Straight from `input`, unbuffered (see READ_BUFFER).
    let mut reader = match create_reader(READ_BUFFER, input) {
        Ok(r) => r,
        Err(PcapError::HeaderNotRecognized) | Err(PcapError::Eof) => {
            return Err(CaptureError::NotACapture)
        }
        Err(PcapError::ReadError) => return Err(CaptureError::Io("read error".into())),
        Err(e) => return Err(CaptureError::Io(format!("{e:?}"))),
    };
    let mut summary = CaptureSummary::default();
    let mut legacy_linktype = linktype_unknown();
    let mut legacy_nanos = false;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut consumed: u64 = 0;
    let mut last_progress = 0;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy_linktype = h.network.0;
                        legacy_nanos = h.is_nanosecond_precision();
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let frac_res = if legacy_nanos {
                            1_000_000_000
                        } else {
                            1_000_000
                        };
                        summary.packets += 1;
                        on_packet(Packet {
                            linktype: legacy_linktype,
                            ts_ns: ns(u64::from(b.ts_sec), u64::from(b.ts_usec), frac_res),
                            data: &b.data[..(b.caplen as usize).min(b.data.len())],
                            orig_len: b.origlen,
                        });
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(Interface {
                            linktype: idb.linktype.0,
                            resolution: idb.ts_resolution().unwrap_or(1_000_000),
                            offset: u64::try_from(idb.ts_offset()).unwrap_or(0),
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let Some(iface) = interfaces.get(epb.if_id as usize) else {
                            summary.unknown_interface += 1;
                            consume(&mut *reader, offset, &mut consumed);
                            continue;
                        };
                        let (secs, frac) = epb.decode_ts(iface.offset, iface.resolution);
                        summary.packets += 1;
                        on_packet(Packet {
                            linktype: iface.linktype,
                            ts_ns: ns(u64::from(secs), u64::from(frac), iface.resolution),
                            data: &epb.data[..(epb.caplen as usize).min(epb.data.len())],
                            orig_len: epb.origlen,
                        });
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        if let Some(iface) = interfaces.first() {
                            summary.packets += 1;
                            on_packet(Packet {
                                linktype: iface.linktype,
                                ts_ns: 0,
                                data: spb.data,
                                orig_len: spb.origlen,
                            });
                        }
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                consume(&mut *reader, offset, &mut consumed);
                if consumed - last_progress > (1 << 20) {
                    last_progress = consumed;
                    progress(consumed);
                }
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if let Err(e) = reader.refill() {
                    return Err(CaptureError::Io(format!("{e:?}")));
                }
            }
            Err(PcapError::BufferTooSmall) => {
                // A block larger than the buffer (a huge snaplen): grow once, generously.
                if !reader.grow(64 << 20) {
                    return Err(CaptureError::Damaged {
                        offset: consumed,
                        what: "a block larger than 64 MiB".into(),
                    });
                }
                if let Err(e) = reader.refill() {
                    return Err(CaptureError::Io(format!("{e:?}")));
                }
            }
            Err(PcapError::UnexpectedEof) => {
                summary.truncated_at = Some(consumed);
                break;
            }
            Err(e) => {
                return Err(CaptureError::Damaged {
                    offset: consumed,
                    what: format!("{e:?}").chars().take(120).collect(),
                })
            }
        }
    }
    summary.bytes_read = consumed;
    progress(consumed);
    Ok(summary)
}

/// Moves past a block without shifting the buffer: `consume` would move the buffer's unread
/// half to its start each time the read position passes the middle (a second copy of every
/// byte); `refill` shifts only the partial block left at the end.
fn consume(reader: &mut dyn PcapReaderIterator, offset: usize, consumed: &mut u64) {
    reader.consume_noshift(offset);
    *consumed += offset as u64;
}

fn linktype_unknown() -> i32 {
    -1
}
