//! IPv4 headers (RFC 791).
//!
//! The header is 20 bytes plus options up to 60; calxdp reads no option, it only steps over them using the
//! header length. The packet ends at the total length, which may be shorter than what follows the
//! Ethernet header (padding to the 60-byte Ethernet minimum); [`Ipv4Packet::payload`] stops there.
//!
//! Fragments: the fragment offset counts 8-byte units; a packet with offset 0 and more-fragments set is
//! the first fragment and carries the L4 header; every later fragment carries only payload bytes.

use std::net::Ipv4Addr;

use calxdp_policy::resource::Protocol;

use super::{checksum, read_u16, write_u16, Field, Malformed};

mod field {
    use super::Field;

    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// The fixed header's length (no options).
pub const HEADER_LEN: usize = field::DST.end;

/// Flag bits in the flags/fragment-offset word.
const DONT_FRAG: u16 = 0x4000;
const MORE_FRAGS: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>, Malformed> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a version-4 header of at least 20 bytes and the whole packet the total
    /// length announces, and that the header fits within that total length. Trailing bytes are allowed.
    pub fn check_len(&self) -> Result<(), Malformed> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Malformed::TooShortIp)
        } else if self.version() != 4 {
            Err(Malformed::BadIpVersion)
        } else if self.header_len() < HEADER_LEN {
            Err(Malformed::BadIpHeaderLength)
        } else if usize::from(self.total_len()) > len {
            Err(Malformed::IpTotalLengthExceedsFrame)
        } else if usize::from(self.total_len()) < self.header_len() {
            Err(Malformed::BadIpHeaderLength)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (the IHL field times 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The type-of-service byte (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// The total length of header and payload, in bytes.
    pub fn total_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    pub fn ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::IDENT])
    }

    pub fn dont_frag(&self) -> bool {
        read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & DONT_FRAG != 0
    }

    pub fn more_frags(&self) -> bool {
        read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & MORE_FRAGS != 0
    }

    /// The fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & OFFSET_MASK) << 3
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> Protocol {
        Protocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let s = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// Whether the header checksum is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The options between the fixed header and the payload (not interpreted).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: from the end of the header to the total length (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes (a multiple of 4 from 20 to 60). Changes the layout: run
    /// [`check_len`](Ipv4Packet::check_len) again before trusting getters.
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    /// Sets the total length. Changes the layout: run [`check_len`](Ipv4Packet::check_len) again before
    /// trusting getters.
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    pub fn set_ident(&mut self, ident: u16) {
        write_u16(&mut self.buffer.as_mut()[field::IDENT], ident);
    }

    /// Sets the flags and the fragment offset (in bytes; must be a multiple of 8).
    pub fn set_fragment(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut word = (offset >> 3) & OFFSET_MASK;
        if dont_frag {
            word |= DONT_FRAG;
        }
        if more_frags {
            word |= MORE_FRAGS;
        }
        write_u16(&mut self.buffer.as_mut()[field::FLG_OFF], word);
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol.0;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], checksum);
    }

    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.octets());
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let len = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..len]);
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; 28] {
        let mut buf = [0u8; 28];
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_total_len(28);
        p.set_ident(0x1234);
        p.set_fragment(true, false, 0);
        p.set_ttl(64);
        p.set_protocol(Protocol::UDP);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.fill_checksum();
        buf
    }

    #[test]
    fn fields_round_trip() {
        let buf = header();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!((p.version(), p.header_len(), p.total_len(), p.ident()), (4, 20, 28, 0x1234));
        assert_eq!((p.dont_frag(), p.more_frags(), p.frag_offset()), (true, false, 0));
        assert_eq!((p.ttl(), p.protocol(), p.payload().len()), (64, Protocol::UDP, 8));
        assert_eq!((p.src_addr(), p.dst_addr()), (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)));
        assert!(p.verify_checksum());
        assert!(p.options().is_empty());
    }

    #[test]
    fn fragment_fields() {
        let mut buf = header();
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_fragment(false, true, 1480);
        assert_eq!((p.dont_frag(), p.more_frags(), p.frag_offset()), (false, true, 1480));
    }

    #[test]
    fn check_len_reasons() {
        let buf = header();
        assert_eq!(Ipv4Packet::new_checked(&buf[..19]), Err(Malformed::TooShortIp));
        assert_eq!(Ipv4Packet::new_checked(&buf[..27]), Err(Malformed::IpTotalLengthExceedsFrame));
        let mut bad = buf;
        bad[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]), Err(Malformed::BadIpVersion));
        bad[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]), Err(Malformed::BadIpHeaderLength));
        bad[0] = 0x48; // 32-byte header in a 28-byte packet
        assert_eq!(Ipv4Packet::new_checked(&bad[..]), Err(Malformed::BadIpHeaderLength));
    }
}
