//! SCTP common headers (RFC 9260 §3.1): ports, verification tag and a CRC32c checksum, then chunks.
//!
//! Policy needs only the ports; the chunks are not interpreted.

use calxdp_policy::resource::Protocol;
use std::net::IpAddr;

use super::{checksum, read_u16, read_u32, write_u16, write_u32, Field, Malformed};

mod field {
    use super::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const VERIFICATION_TAG: Field = 4..8;
    /// CRC32c, least significant byte first (RFC 9260 appendix A).
    pub const CHECKSUM: Field = 8..12;
}

/// The common header's length.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of an SCTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SctpPacket<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> SctpPacket<T> {
        SctpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<SctpPacket<T>, Malformed> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the common header.
    pub fn check_len(&self) -> Result<(), Malformed> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Malformed::TooShortL4)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::DST_PORT])
    }

    pub fn verification_tag(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::VERIFICATION_TAG])
    }

    /// The CRC32c as a number (it is stored least significant byte first).
    pub fn checksum(&self) -> u32 {
        let c = &self.buffer.as_ref()[field::CHECKSUM];
        u32::from_le_bytes([c[0], c[1], c[2], c[3]])
    }

    /// The chunks after the common header.
    pub fn chunks(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the CRC32c is valid (the addresses are not covered; they are taken for symmetry with the
    /// other protocols' views).
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        checksum::verify_l4_checksum(src, dst, Protocol::SCTP, self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SctpPacket<T> {
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::SRC_PORT], port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::DST_PORT], port);
    }

    pub fn set_verification_tag(&mut self, tag: u32) {
        write_u32(&mut self.buffer.as_mut()[field::VERIFICATION_TAG], tag);
    }

    /// Computes and stores the CRC32c. Unlike the Internet checksum it cannot be updated incrementally:
    /// NAT of SCTP recomputes it over the whole packet.
    pub fn fill_checksum(&mut self) {
        let unspecified = IpAddr::from([0, 0, 0, 0]);
        checksum::fill_l4_checksum(unspecified, unspecified, Protocol::SCTP, self.buffer.as_mut());
    }

    pub fn chunks_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_checksum() {
        let mut buf = [0u8; 20];
        let mut s = SctpPacket::new_unchecked(&mut buf[..]);
        s.set_src_port(36412);
        s.set_dst_port(38412);
        s.set_verification_tag(0x0102_0304);
        s.chunks_mut().copy_from_slice(&[1, 0, 0, 8, 0xaa, 0xbb, 0xcc, 0xdd]);
        s.fill_checksum();
        let s = SctpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!((s.src_port(), s.dst_port(), s.verification_tag()), (36412, 38412, 0x0102_0304));
        let any = IpAddr::from([192, 0, 2, 1]);
        assert!(s.verify_checksum(any, any));
        let mut zeroed = buf;
        zeroed[8..12].fill(0);
        assert_eq!(s.checksum(), checksum::crc32c(&zeroed));
        assert_eq!(SctpPacket::new_checked(&buf[..11]), Err(Malformed::TooShortL4));
    }
}
