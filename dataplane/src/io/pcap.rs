//! Capture files for offline replay: classic pcap (libpcap format: microsecond and nanosecond variants,
//! both byte orders) read by our own reader, and pcapng read through the `pcap-file` crate; Ethernet link
//! type only. Either way a bad capture is refused with the record it stopped at (counted from 1, as
//! Wireshark counts frames) and the byte offset where that record or block starts. Output is written as
//! classic pcap, one file per output interface.

use std::io::{self, Read, Write};

use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::{Block, PcapNgParser};

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// The block type of a pcapng Section Header Block, the first four bytes of every pcapng file (the same in
/// both byte orders).
const PCAPNG_SECTION_HEADER: u32 = 0x0a0d_0d0a;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Frames longer than this are refused as corrupt (a jumbo frame is 9 KiB).
const MAX_FRAME: u32 = 256 * 1024;

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Capture time in nanoseconds since the epoch.
    pub nanos: u64,
    pub data: Vec<u8>,
}

/// Why a capture could not be read. Records are numbered from 1, as Wireshark numbers frames; `offset` is
/// where the record's header (pcap) or block (pcapng) starts in the file.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a pcap file (magic {0:#010x}): neither classic pcap nor pcapng")]
    BadMagic(u32),
    /// Not an Ethernet capture.
    #[error("link type {0} is not Ethernet (1)")]
    LinkType(u32),
    /// A record claims an impossible length.
    #[error("record {index} (at byte {offset}) claims {length} bytes, more than a frame can be")]
    BadRecord { index: usize, offset: u64, length: u32 },
    /// The file ends inside a record's header or data (pcap) or inside a block (pcapng).
    #[error("record {index} (at byte {offset}): the file ends inside its {part}")]
    Truncated {
        index: usize,
        offset: u64,
        /// "header", "data" or "block".
        part: &'static str,
    },
    /// Reading a record failed.
    #[error("record {index} (at byte {offset}): {error}")]
    RecordIo { index: usize, offset: u64, error: io::Error },
    /// A pcapng block that does not parse, or a packet naming an interface no block declared.
    #[error("record {index} (at byte {offset}): {reason}")]
    BadBlock { index: usize, offset: u64, reason: String },
}

/// Reads every record of a capture, classic pcap or pcapng.
pub fn read_all(mut r: impl Read) -> Result<Vec<Record>, PcapError> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if u32::from_le_bytes(magic) == PCAPNG_SECTION_HEADER {
        let mut bytes = magic.to_vec();
        r.read_to_end(&mut bytes)?;
        return read_pcapng(&bytes);
    }
    read_pcap(magic, r)
}

/// Reads the records of a pcapng capture held in memory: Enhanced and Simple Packet Blocks, each timestamp
/// in its interface's resolution (`if_tsresol`, microseconds by default) plus its `if_tsoffset`; other
/// blocks are skipped. Every interface that carries packets must be Ethernet.
fn read_pcapng(bytes: &[u8]) -> Result<Vec<Record>, PcapError> {
    let mut out = Vec::new();
    let fail = |index: usize, rest: &[u8], e: pcap_file::PcapError| {
        let offset = (bytes.len() - rest.len()) as u64;
        match e {
            pcap_file::PcapError::IncompleteBuffer => PcapError::Truncated { index, offset, part: "block" },
            e => PcapError::BadBlock { index, offset, reason: e.to_string() },
        }
    };
    let (mut rest, mut parser) = PcapNgParser::new(bytes).map_err(|e| fail(1, bytes, e))?;
    while !rest.is_empty() {
        let index = out.len() + 1;
        let offset = (bytes.len() - rest.len()) as u64;
        let (next, block) = parser.next_block(rest).map_err(|e| fail(index, rest, e))?;
        let (interface_id, ticks, data) = match block {
            Block::EnhancedPacket(p) => (p.interface_id, p.timestamp.as_nanos() as u64, p.data),
            // A Simple Packet Block belongs to the first interface and has no timestamp.
            Block::SimplePacket(p) => (0, 0, p.data),
            _ => {
                rest = next;
                continue;
            }
        };
        let Some(interface) = parser.interfaces().get(interface_id as usize) else {
            let reason = format!("names interface {interface_id}, which no interface description block declares");
            return Err(PcapError::BadBlock { index, offset, reason });
        };
        let link = u32::from(interface.linktype);
        if link != LINKTYPE_ETHERNET {
            return Err(PcapError::LinkType(link));
        }
        if data.len() > MAX_FRAME as usize {
            return Err(PcapError::BadRecord { index, offset, length: data.len() as u32 });
        }
        out.push(Record { nanos: pcapng_nanos(interface, ticks), data: data.into_owned() });
        rest = next;
    }
    Ok(out)
}

/// A pcapng timestamp in nanoseconds since the epoch: `ticks` (the crate hands the raw 64-bit count over as
/// nanoseconds, whatever the resolution) in units of the interface's resolution, plus its offset in seconds.
fn pcapng_nanos(interface: &InterfaceDescriptionBlock<'_>, ticks: u64) -> u64 {
    let mut resolution = 6u8;
    let mut offset_secs = 0u64;
    for option in &interface.options {
        match option {
            InterfaceDescriptionOption::IfTsResol(r) => resolution = *r,
            InterfaceDescriptionOption::IfTsOffset(o) => offset_secs = *o,
            _ => {}
        }
    }
    // The high bit chooses a power of two, otherwise a power of ten (pcapng, if_tsresol).
    let nanos = if resolution & 0x80 != 0 {
        let exp = u32::from(resolution & 0x7f).min(127);
        ((u128::from(ticks) * 1_000_000_000) >> exp) as u64
    } else {
        let exp = u32::from(resolution);
        if exp <= 9 {
            ticks.saturating_mul(10u64.pow(9 - exp))
        } else {
            (u128::from(ticks) / 10u128.saturating_pow(exp - 9)) as u64
        }
    };
    nanos.saturating_add(offset_secs.saturating_mul(1_000_000_000))
}

/// Reads every record of a classic pcap stream whose first four bytes (`magic`) were read already.
fn read_pcap(magic: [u8; 4], mut r: impl Read) -> Result<Vec<Record>, PcapError> {
    let mut header = [0u8; 24];
    header[..4].copy_from_slice(&magic);
    r.read_exact(&mut header[4..])?;
    let magic_le = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let (big_endian, nanos) = match magic_le {
        MAGIC_MICROS => (false, false),
        MAGIC_NANOS => (false, true),
        m if m.swap_bytes() == MAGIC_MICROS => (true, false),
        m if m.swap_bytes() == MAGIC_NANOS => (true, true),
        m => return Err(PcapError::BadMagic(m)),
    };
    let u32_at = |b: &[u8], i: usize| {
        let v = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let link = u32_at(&header, 20);
    if link != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType(link));
    }
    let mut out = Vec::new();
    let mut rec = [0u8; 16];
    let mut offset = 24u64;
    loop {
        let index = out.len() + 1;
        let at = |error: io::Error, part| match error.kind() {
            io::ErrorKind::UnexpectedEof => PcapError::Truncated { index, offset, part },
            _ => PcapError::RecordIo { index, offset, error },
        };
        // A clean end comes between records; a partial header is a truncated file.
        let got = fill(&mut r, &mut rec).map_err(|e| at(e, "header"))?;
        if got == 0 {
            break;
        }
        if got < rec.len() {
            return Err(PcapError::Truncated { index, offset, part: "header" });
        }
        let secs = u32_at(&rec, 0) as u64;
        let frac = u32_at(&rec, 4) as u64;
        let len = u32_at(&rec, 8);
        if len > MAX_FRAME {
            return Err(PcapError::BadRecord { index, offset, length: len });
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).map_err(|e| at(e, "data"))?;
        offset += 16 + u64::from(len);
        let nanos = secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        out.push(Record { nanos, data });
    }
    Ok(out)
}

/// Reads until `buf` is full or the stream ends; returns how many bytes it read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes records as a microsecond pcap with the Ethernet link type.
pub fn write_all(mut w: impl Write, records: &[Record]) -> io::Result<()> {
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&MAGIC_MICROS.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&0i32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&65_535u32.to_le_bytes());
    header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    w.write_all(&header)?;
    for r in records {
        let secs = (r.nanos / 1_000_000_000) as u32;
        let micros = ((r.nanos % 1_000_000_000) / 1000) as u32;
        let len = r.data.len() as u32;
        for v in [secs, micros, len, len] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&r.data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let records = vec![
            Record { nanos: 1_500_000_123_000, data: vec![1, 2, 3] },
            Record { nanos: 2_000_000_000, data: vec![9; 60] },
        ];
        let mut buf = Vec::new();
        write_all(&mut buf, &records).unwrap();
        assert_eq!(read_all(&buf[..]).unwrap(), records);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(matches!(read_all(&[0u8; 24][..]), Err(PcapError::BadMagic(0))));
        let mut buf = Vec::new();
        write_all(&mut buf, &[]).unwrap();
        buf[20] = 113; // Linux cooked capture
        assert!(matches!(read_all(&buf[..]), Err(PcapError::LinkType(113))));
        let mut buf = Vec::new();
        write_all(&mut buf, &[Record { nanos: 0, data: vec![0; 4] }]).unwrap();
        buf[32..36].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(matches!(read_all(&buf[..]), Err(PcapError::BadRecord { .. })));
        // A truncated record body is an error, not a panic.
        let mut buf = Vec::new();
        write_all(&mut buf, &[Record { nanos: 0, data: vec![0; 40] }]).unwrap();
        buf.truncate(50);
        assert!(read_all(&buf[..]).is_err());
    }

    /// Every record error says which record, counted from 1 as Wireshark counts, and where it starts.
    #[test]
    fn record_errors_name_the_record() {
        let three = [Record { nanos: 0, data: vec![0; 40] }, Record { nanos: 1, data: vec![1; 60] }];
        let mut buf = Vec::new();
        write_all(&mut buf, &three).unwrap();
        let second = 24 + 16 + 40;
        let mut bad = buf.clone();
        bad[second + 8..second + 12].copy_from_slice(&(1u32 << 30).to_le_bytes());
        let e = read_all(&bad[..]).unwrap_err().to_string();
        assert_eq!(e, format!("record 2 (at byte {second}) claims {} bytes, more than a frame can be", 1u32 << 30));
        let e = read_all(&buf[..buf.len() - 1]).unwrap_err().to_string();
        assert_eq!(e, format!("record 2 (at byte {second}): the file ends inside its data"));
        let e = read_all(&buf[..second + 5]).unwrap_err().to_string();
        assert_eq!(e, format!("record 2 (at byte {second}): the file ends inside its header"));
        assert_eq!(read_all(&buf[..]).unwrap().len(), 2);
    }

    /// A pcapng file (little-endian, one Ethernet interface in microseconds) holding `records`, written by
    /// the crate; then the offset where each packet's block starts.
    fn pcapng(records: &[Record], link: pcap_file::DataLink) -> (Vec<u8>, Vec<usize>) {
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::PcapNgWriter;
        let section = pcap_file::pcapng::blocks::section_header::SectionHeaderBlock {
            endianness: pcap_file::Endianness::Little,
            ..Default::default()
        };
        let mut w = PcapNgWriter::with_section_header(Vec::new(), section).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock { linktype: link, snaplen: 0, options: vec![] }).unwrap();
        let mut starts = Vec::new();
        for r in records {
            starts.push(w.get_ref().len());
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: std::time::Duration::from_nanos(r.nanos / 1000),
                original_len: r.data.len() as u32,
                data: std::borrow::Cow::Borrowed(&r.data),
                options: vec![],
            })
            .unwrap();
        }
        (w.into_inner(), starts)
    }

    #[test]
    fn pcapng_reads_as_the_same_records_and_its_errors_name_the_record() {
        // Microsecond times: the file's resolution.
        let two = [
            Record { nanos: 1_500_000_123_000, data: vec![7; 40] },
            Record { nanos: 1_600_000_000_000, data: vec![1; 60] },
        ];
        let (buf, starts) = pcapng(&two, pcap_file::DataLink::ETHERNET);
        assert_eq!(read_all(&buf[..]).unwrap(), two);
        let second = starts[1];
        let e = read_all(&buf[..buf.len() - 1]).unwrap_err().to_string();
        assert_eq!(e, format!("record 2 (at byte {second}): the file ends inside its block"));
        // The second packet names an interface that was never declared.
        let mut bad = buf.clone();
        bad[second + 8..second + 12].copy_from_slice(&3u32.to_le_bytes());
        let e = read_all(&bad[..]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("record 2 (at byte {second}): names interface 3, which no interface description block declares")
        );
        let (cooked, _) = pcapng(&two, pcap_file::DataLink::LINUX_SLL);
        assert_eq!(read_all(&cooked[..]).unwrap_err().to_string(), "link type 113 is not Ethernet (1)");
    }

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution_and_offset() {
        let idb = |options| InterfaceDescriptionBlock { linktype: pcap_file::DataLink::ETHERNET, snaplen: 0, options };
        assert_eq!(pcapng_nanos(&idb(vec![]), 1_500_000), 1_500_000_000);
        assert_eq!(pcapng_nanos(&idb(vec![InterfaceDescriptionOption::IfTsResol(9)]), 1_500_000), 1_500_000);
        assert_eq!(pcapng_nanos(&idb(vec![InterfaceDescriptionOption::IfTsResol(3)]), 2), 2_000_000);
        // 2^-10 s ticks: 1024 of them are one second.
        assert_eq!(pcapng_nanos(&idb(vec![InterfaceDescriptionOption::IfTsResol(0x80 | 10)]), 1024), 1_000_000_000);
        let offset = vec![InterfaceDescriptionOption::IfTsResol(9), InterfaceDescriptionOption::IfTsOffset(5)];
        assert_eq!(pcapng_nanos(&idb(offset), 7), 5_000_000_007);
    }
}
