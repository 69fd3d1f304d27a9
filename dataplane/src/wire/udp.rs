//! UDP headers (RFC 768), and UDP-Lite's (RFC 3828), which shares the layout.
//!
//! UDP's length field counts header and payload; it may be shorter than the IP payload (the rest is
//! ignored, as the kernel trims it) but not longer. UDP-Lite reuses the field as checksum coverage, so its
//! packets are checked with [`UdpPacket::new_checked_header`], which trusts only the 8-byte header.

use std::net::IpAddr;

use calxdp_policy::resource::Protocol;

use super::{checksum, read_u16, write_u16, Field, Malformed};

mod field {
    use super::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    /// UDP: length of header and payload. UDP-Lite: checksum coverage, 0 for the whole packet.
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// The header's length.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP (or UDP-Lite) datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    /// Wraps a UDP datagram after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>, Malformed> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Wraps a UDP-Lite datagram (or any datagram whose length field is not to be trusted) after checking
    /// only that the buffer holds the 8-byte header.
    pub fn new_checked_header(buffer: T) -> Result<UdpPacket<T>, Malformed> {
        let packet = Self::new_unchecked(buffer);
        if packet.buffer.as_ref().len() < HEADER_LEN {
            return Err(Malformed::TooShortL4);
        }
        Ok(packet)
    }

    /// Checks that the buffer holds the header and that the length field is at least 8 and within the
    /// buffer.
    pub fn check_len(&self) -> Result<(), Malformed> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Malformed::TooShortL4)
        } else if usize::from(self.len()) < HEADER_LEN || usize::from(self.len()) > len {
            Err(Malformed::BadUdpLength)
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

    /// The length field: UDP's datagram length, or UDP-Lite's checksum coverage.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The payload up to the length field, clamped to the buffer (so it is safe after
    /// [`new_checked_header`](Self::new_checked_header) too; for UDP-Lite it is meaningless).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.len()).clamp(HEADER_LEN, data.len());
        &data[HEADER_LEN..end]
    }

    /// Whether the checksum is valid for a UDP datagram from `src` to `dst` (0 is valid over IPv4 only).
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        checksum::verify_l4_checksum(src, dst, Protocol::UDP, self.datagram())
    }

    /// The datagram as the length field bounds it, for the checksum.
    fn datagram(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[..usize::from(self.len()).clamp(HEADER_LEN, data.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::SRC_PORT], port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::DST_PORT], port);
    }

    pub fn set_len(&mut self, len: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], checksum);
    }

    /// Computes and stores the checksum of a UDP datagram from `src` to `dst` (a computed 0 is stored as
    /// `0xffff`, RFC 768).
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        let end = usize::from(self.len()).clamp(HEADER_LEN, self.buffer.as_ref().len());
        checksum::fill_l4_checksum(src, dst, Protocol::UDP, &mut self.buffer.as_mut()[..end]);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let data = self.buffer.as_mut();
        let end = usize::from(read_u16(&data[field::LENGTH])).clamp(HEADER_LEN, data.len());
        &mut data[HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_checksum() {
        let mut buf = [0u8; 14];
        let mut u = UdpPacket::new_unchecked(&mut buf[..]);
        u.set_src_port(5353);
        u.set_dst_port(53);
        u.set_len(12);
        u.payload_mut().copy_from_slice(b"abcd");
        let (src, dst) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        u.fill_checksum(src, dst);
        let u = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!((u.src_port(), u.dst_port(), u.len(), u.payload()), (5353, 53, 12, &b"abcd"[..]));
        assert!(u.verify_checksum(src, dst));
        assert_ne!(u.checksum(), 0);
    }

    #[test]
    fn check_len_reasons() {
        let mut buf = [0u8; 10];
        assert_eq!(UdpPacket::new_checked(&buf[..7]), Err(Malformed::TooShortL4));
        buf[5] = 7;
        assert_eq!(UdpPacket::new_checked(&buf[..]), Err(Malformed::BadUdpLength));
        buf[5] = 11;
        assert_eq!(UdpPacket::new_checked(&buf[..]), Err(Malformed::BadUdpLength));
        buf[5] = 10;
        assert!(UdpPacket::new_checked(&buf[..]).is_ok());
        buf[5] = 200;
        let lite = UdpPacket::new_checked_header(&buf[..]).unwrap();
        assert_eq!(lite.payload().len(), 2);
        assert_eq!(UdpPacket::new_checked_header(&buf[..7]), Err(Malformed::TooShortL4));
    }
}
