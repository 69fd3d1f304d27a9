//! TCP headers (RFC 9293).
//!
//! The header is 20 bytes plus options; the data offset says where the payload starts. The view expects
//! the IP payload exactly (the packet's end is the IP layer's business), so [`TcpPacket::payload`] is
//! everything after the header.

use std::net::IpAddr;

use calxdp_policy::resource::Protocol;

use super::{checksum, read_u16, read_u32, write_u16, write_u32, Field, Malformed};

mod field {
    use super::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset in the high nibble (32-bit words); the low nibble holds reserved bits and NS.
    pub const DATA_OFFSET: usize = 12;
    /// CWR ECE URG ACK PSH RST SYN FIN, as [`calxdp_policy::packet::tcp_flags`] numbers them.
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// The fixed header's length (no options).
pub const HEADER_LEN: usize = field::URGENT.end;

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>, Malformed> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the fixed header and that the data offset is at least 5 words and
    /// within the buffer.
    pub fn check_len(&self) -> Result<(), Malformed> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Malformed::TooShortL4)
        } else if self.header_len() < HEADER_LEN || self.header_len() > len {
            Err(Malformed::BadTcpDataOffset)
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

    pub fn seq_number(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::SEQ_NUM])
    }

    pub fn ack_number(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::ACK_NUM])
    }

    /// The header length in bytes (the data offset times 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flags byte (see [`calxdp_policy::packet::tcp_flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn window_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::WINDOW])
    }

    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    pub fn urgent_at(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::URGENT])
    }

    /// The options between the fixed header and the payload (not interpreted).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Whether the checksum is valid for a segment from `src` to `dst`.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        checksum::verify_l4_checksum(src, dst, Protocol::TCP, self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::SRC_PORT], port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::DST_PORT], port);
    }

    pub fn set_seq_number(&mut self, seq: u32) {
        write_u32(&mut self.buffer.as_mut()[field::SEQ_NUM], seq);
    }

    pub fn set_ack_number(&mut self, ack: u32) {
        write_u32(&mut self.buffer.as_mut()[field::ACK_NUM], ack);
    }

    /// Sets the header length in bytes (a multiple of 4 from 20 to 60), keeping the low nibble. Changes
    /// the layout: run [`check_len`](TcpPacket::check_len) again before trusting getters.
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::DATA_OFFSET];
        *b = (*b & 0x0f) | ((((len / 4) & 0x0f) as u8) << 4);
    }

    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    pub fn set_window_len(&mut self, window: u16) {
        write_u16(&mut self.buffer.as_mut()[field::WINDOW], window);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], checksum);
    }

    pub fn set_urgent_at(&mut self, urgent: u16) {
        write_u16(&mut self.buffer.as_mut()[field::URGENT], urgent);
    }

    /// Computes and stores the checksum for a segment from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        checksum::fill_l4_checksum(src, dst, Protocol::TCP, self.buffer.as_mut());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }
}

#[cfg(test)]
mod tests {
    use calxdp_policy::packet::tcp_flags;

    use super::*;

    #[test]
    fn fields_round_trip_and_checksum() {
        let mut buf = [0u8; 28];
        let mut t = TcpPacket::new_unchecked(&mut buf[..]);
        t.set_src_port(40000);
        t.set_dst_port(443);
        t.set_seq_number(0xdead_beef);
        t.set_ack_number(7);
        t.set_header_len(24);
        t.set_flags(tcp_flags::SYN | tcp_flags::ACK);
        t.set_window_len(65535);
        t.set_urgent_at(3);
        let (src, dst) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        t.fill_checksum(src, dst);
        let t = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port(), t.seq_number(), t.ack_number()), (40000, 443, 0xdead_beef, 7));
        assert_eq!((t.header_len(), t.flags(), t.window_len(), t.urgent_at()), (24, 0x12, 65535, 3));
        assert_eq!((t.options().len(), t.payload().len()), (4, 4));
        assert!(t.verify_checksum(src, dst));
        assert!(!t.verify_checksum(dst, IpAddr::from([10, 0, 0, 3])));
    }

    #[test]
    fn check_len_reasons() {
        let mut buf = [0u8; 20];
        assert_eq!(TcpPacket::new_checked(&buf[..19]), Err(Malformed::TooShortL4));
        buf[12] = 0x40;
        assert_eq!(TcpPacket::new_checked(&buf[..]), Err(Malformed::BadTcpDataOffset));
        buf[12] = 0x60;
        assert_eq!(TcpPacket::new_checked(&buf[..]), Err(Malformed::BadTcpDataOffset));
        buf[12] = 0x50;
        assert!(TcpPacket::new_checked(&buf[..]).is_ok());
    }
}
