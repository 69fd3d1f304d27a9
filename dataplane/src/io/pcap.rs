//! Classic pcap files (libpcap format, Ethernet link type): read a capture for offline replay, write one
//! per output interface. Microsecond and nanosecond variants and both byte orders are read.

use std::io::{self, Read, Write};

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
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

/// Why a capture could not be read.
#[derive(Debug)]
pub enum PcapError {
    Io(io::Error),
    /// Not a pcap file (pcapng is not supported: convert it with `editcap -F pcap`).
    BadMagic(u32),
    /// Not an Ethernet capture.
    LinkType(u32),
    /// A record claims an impossible length. Records are numbered from 1, as Wireshark numbers frames;
    /// `offset` is where the record's header starts in the file.
    BadRecord {
        index: usize,
        offset: u64,
        length: u32,
    },
    /// The file ends inside a record's header or data.
    Truncated {
        index: usize,
        offset: u64,
        /// "header" or "data".
        part: &'static str,
    },
    /// Reading a record failed.
    RecordIo {
        index: usize,
        offset: u64,
        error: io::Error,
    },
}

impl std::fmt::Display for PcapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PcapError::Io(e) => write!(f, "{e}"),
            PcapError::BadMagic(m) => {
                write!(f, "not a pcap file (magic {m:#010x}); pcapng is not supported, convert with `editcap -F pcap`")
            }
            PcapError::LinkType(l) => write!(f, "link type {l} is not Ethernet (1)"),
            PcapError::BadRecord { index, offset, length } => {
                write!(f, "record {index} (at byte {offset}) claims {length} bytes, more than a frame can be")
            }
            PcapError::Truncated { index, offset, part } => {
                write!(f, "record {index} (at byte {offset}): the file ends inside its {part}")
            }
            PcapError::RecordIo { index, offset, error } => write!(f, "record {index} (at byte {offset}): {error}"),
        }
    }
}

impl std::error::Error for PcapError {}

impl From<io::Error> for PcapError {
    fn from(e: io::Error) -> PcapError {
        PcapError::Io(e)
    }
}

/// Reads every record of a pcap stream.
pub fn read_all(mut r: impl Read) -> Result<Vec<Record>, PcapError> {
    let mut header = [0u8; 24];
    r.read_exact(&mut header)?;
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
}
