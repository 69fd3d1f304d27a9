//! Felix's framing, both directions: an 8-byte little-endian length, then one protobuf message
//! (`felix/dataplane/external/ext_dataplane.go`). Felix itself puts no bound on the length; the driver does,
//! so a corrupt prefix is an error naming the length instead of an attempt to allocate it.

use std::io::{self, Read, Write};

use prost::Message;

/// The largest frame the driver accepts. Felix does not chunk: an `IPSetUpdate` of a big set is one frame,
/// about 30 bytes a member, so this allows sets of millions of members.
pub const MAX_FRAME: u64 = 256 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside a length prefix.
    #[error("the stream ended inside a length prefix ({0} of 8 bytes)")]
    ShortPrefix(usize),
    /// The length prefix is over [`MAX_FRAME`].
    #[error("length prefix {0} is over the limit of {MAX_FRAME} bytes")]
    TooLong(u64),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame of {want} bytes ({got} read)")]
    ShortFrame { got: usize, want: u64 },
    /// Reading failed.
    #[error("reading the stream: {0}")]
    Io(#[from] io::Error),
    /// A whole frame that is not the message expected.
    #[error("a frame that does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Reads as much of `buf` as the stream has; returns how many bytes it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame's bytes into `buf`. `Ok(false)`: the stream ended cleanly between frames.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<bool, FrameError> {
    let mut prefix = [0u8; 8];
    match read_full(r, &mut prefix)? {
        0 => return Ok(false),
        8 => {}
        n => return Err(FrameError::ShortPrefix(n)),
    }
    let len = u64::from_le_bytes(prefix);
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    let got = read_full(r, buf)?;
    if got as u64 != len {
        return Err(FrameError::ShortFrame { got, want: len });
    }
    Ok(true)
}

/// Reads and decodes one message of type `M`; `Ok(None)` when the stream ended cleanly between frames.
pub fn read_message<M: Message + Default>(r: &mut impl Read) -> Result<Option<M>, FrameError> {
    let mut buf = Vec::new();
    if !read_frame(r, &mut buf)? {
        return Ok(None);
    }
    Ok(Some(M::decode(&buf[..])?))
}

/// A pipe, both ends close-on-exec: `(read end, write end)`. (`std::io::pipe` is newer than the
/// workspace's minimum Rust.)
pub fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    calxdp_dataplane::sys::process::pipe()
}

/// Writes one message with its length prefix, as one write so a reader never sees half a prefix first.
pub fn write_frame(w: &mut impl Write, msg: &impl Message) -> io::Result<()> {
    let mut out = Vec::with_capacity(8 + msg.encoded_len());
    out.extend_from_slice(&(msg.encoded_len() as u64).to_le_bytes());
    msg.encode(&mut out).map_err(|e| io::Error::other(e.to_string()))?;
    w.write_all(&out)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::felix::proto::{to_dataplane, InSync, ToDataplane};

    #[test]
    fn round_trip_and_errors() {
        let msg = ToDataplane { sequence_number: 7, payload: Some(to_dataplane::Payload::InSync(InSync {})) };
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &msg).unwrap();
        assert_eq!(&bytes[..8], &(msg.encoded_len() as u64).to_le_bytes());
        let mut buf = Vec::new();
        let mut r = &bytes[..];
        assert!(read_frame(&mut r, &mut buf).unwrap());
        assert_eq!(ToDataplane::decode(&buf[..]).unwrap(), msg);
        assert!(!read_frame(&mut r, &mut buf).unwrap());

        let huge = (MAX_FRAME + 1).to_le_bytes();
        assert!(matches!(read_frame(&mut &huge[..], &mut buf), Err(FrameError::TooLong(n)) if n == MAX_FRAME + 1));
        assert!(matches!(read_frame(&mut &bytes[..5], &mut buf), Err(FrameError::ShortPrefix(5))));
        assert!(matches!(read_frame(&mut &bytes[..bytes.len() - 1], &mut buf), Err(FrameError::ShortFrame { .. })));
    }
}
