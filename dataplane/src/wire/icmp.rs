//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages, and the packet an ICMP error quotes.
//!
//! Both families share the first 8 bytes: type, code, checksum, then 4 bytes whose meaning depends on the
//! type (echo identifier and sequence number for echo request and reply, unused or an MTU or pointer for
//! errors). One view, [`IcmpPacket`], serves both; the family decides which types are errors and whether
//! the checksum covers a pseudo-header.
//!
//! # Errors and what they quote
//!
//! Destination unreachable, source quench, redirect, time exceeded and parameter problem (v4 types 3, 4,
//! 5, 11, 12) and destination unreachable, packet too big, time exceeded and parameter problem (v6 types
//! 1–4) carry, after their 8 bytes, the start of the packet that caused them: its IP header and at least
//! the first 8 bytes of what followed it (RFC 792; RFC 4443 §2.4 (c) quotes as much as fits). Conntrack
//! relates the error to the flow of that quoted packet, and NAT rewrites its addresses and ports, so
//! [`QuotedPacket`] reads and writes them.
//!
//! The quoted packet is truncated by design: its total or payload length is not checked against what is
//! there, and extension headers of a quoted IPv6 packet are walked within the quoted bytes only.

use std::net::IpAddr;

use calxdp_policy::net::IpFamily;
use calxdp_policy::resource::Protocol;

use super::{checksum, ipv4, ipv6, read_u16, read_u32, write_u16, write_u32, Field, Malformed};

mod field {
    use super::Field;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// The 4 type-dependent bytes ("rest of header").
    pub const REST: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ_NO: Field = 6..8;
    pub const HEADER_LEN: usize = 8;
}

/// The header's length: type, code, checksum and the 4 type-dependent bytes.
pub const HEADER_LEN: usize = field::HEADER_LEN;

/// ICMP (v4) message types calxdp names.
pub mod v4_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const SOURCE_QUENCH: u8 = 4;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// ICMPv6 message types calxdp names.
pub mod v6_type {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
}

/// Whether `msg_type` is an echo request or reply in `family`: the messages with an identifier.
pub fn is_echo(family: IpFamily, msg_type: u8) -> bool {
    match family {
        IpFamily::V4 => matches!(msg_type, v4_type::ECHO_REPLY | v4_type::ECHO_REQUEST),
        IpFamily::V6 => matches!(msg_type, v6_type::ECHO_REQUEST | v6_type::ECHO_REPLY),
    }
}

/// Whether `msg_type` is an error that quotes a packet, in `family`.
pub fn is_error(family: IpFamily, msg_type: u8) -> bool {
    match family {
        IpFamily::V4 => matches!(msg_type, 3 | 4 | 5 | 11 | 12),
        IpFamily::V6 => matches!(msg_type, 1..=4),
    }
}

/// The ICMP protocol number of `family`.
fn protocol_of(family: IpFamily) -> Protocol {
    match family {
        IpFamily::V4 => Protocol::ICMP,
        IpFamily::V6 => Protocol::ICMPV6,
    }
}

/// A view of an ICMP or ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> IcmpPacket<T> {
        IcmpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<IcmpPacket<T>, Malformed> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the 8-byte header (every message type calxdp reads has one).
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

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The echo identifier (meaningful for echo request and reply).
    pub fn echo_ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_IDENT])
    }

    /// The echo sequence number (meaningful for echo request and reply).
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_SEQ_NO])
    }

    /// The 4 type-dependent bytes as one number (an MTU for "fragmentation needed" and "packet too big",
    /// a pointer for parameter problems, a gateway for redirects).
    pub fn rest_of_header(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::REST])
    }

    /// Everything after the 8-byte header: echo data, or the quoted packet of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// The packet an error quotes, checked as [`QuotedPacket::new_checked`] checks it. The caller decides
    /// whether the message is an error ([`is_error`]).
    pub fn quoted(&self, family: IpFamily) -> Result<QuotedPacket<&[u8]>, Malformed> {
        QuotedPacket::new_checked(self.data(), family)
    }

    /// Whether the checksum is valid for a message from `src` to `dst` (the family of `src` decides
    /// between ICMP, which covers the message alone, and ICMPv6, which adds the pseudo-header).
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let protocol = protocol_of(IpFamily::of(src));
        checksum::verify_l4_checksum(src, dst, protocol, self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn set_msg_type(&mut self, msg_type: u8) {
        self.buffer.as_mut()[field::TYPE] = msg_type;
    }

    pub fn set_msg_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], checksum);
    }

    pub fn set_echo_ident(&mut self, ident: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_IDENT], ident);
    }

    pub fn set_echo_seq_no(&mut self, seq_no: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_SEQ_NO], seq_no);
    }

    pub fn set_rest_of_header(&mut self, rest: u32) {
        write_u32(&mut self.buffer.as_mut()[field::REST], rest);
    }

    /// Computes and stores the checksum for a message from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        let protocol = protocol_of(IpFamily::of(src));
        checksum::fill_l4_checksum(src, dst, protocol, self.buffer.as_mut());
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// The quoted packet of an error, for rewriting (NAT of ICMP errors).
    pub fn quoted_mut(&mut self, family: IpFamily) -> Result<QuotedPacket<&mut [u8]>, Malformed> {
        QuotedPacket::new_checked(self.data_mut(), family)
    }
}

/// The bytes of the quoted packet the view reads: the L4 header's first 8 (ports, or ICMP type, code,
/// checksum and echo identifier).
const QUOTED_L4_LEN: usize = 8;

/// A view of the packet an ICMP error quotes: its IP header and the first 8 bytes of its L4 header.
///
/// Unlike the other views this one keeps what its check found (the family, where the L4 header starts,
/// whether it is there), because finding it means walking IPv6 extension headers, which is not worth
/// repeating per getter. After [`new_checked`](Self::new_checked) no getter panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedPacket<T: AsRef<[u8]>> {
    buffer: T,
    family: IpFamily,
    l4_offset: usize,
    protocol: Protocol,
    /// The L4 header is present: the quoted packet is not a non-first fragment and its protocol's first
    /// 8 bytes were quoted. False for protocols whose header calxdp does not read.
    has_l4: bool,
}

impl<T: AsRef<[u8]>> QuotedPacket<T> {
    /// Checks that `buffer` starts with an IP header of `family` (the error's own family) and, when the
    /// quoted protocol has ports or is ICMP of that family and the packet is not a non-first fragment, the
    /// first 8 bytes of its L4 header.
    pub fn new_checked(buffer: T, family: IpFamily) -> Result<QuotedPacket<T>, Malformed> {
        let data = buffer.as_ref();
        let (l4_offset, protocol, first_fragment) = match family {
            IpFamily::V4 => {
                if data.len() < ipv4::HEADER_LEN {
                    return Err(Malformed::TooShortIcmpInner);
                }
                let ip = ipv4::Ipv4Packet::new_unchecked(data);
                if ip.version() != 4 || ip.header_len() < ipv4::HEADER_LEN {
                    return Err(Malformed::BadIcmpInner);
                }
                if data.len() < ip.header_len() {
                    return Err(Malformed::TooShortIcmpInner);
                }
                (ip.header_len(), ip.protocol(), ip.frag_offset() == 0)
            }
            IpFamily::V6 => {
                if data.len() < ipv6::HEADER_LEN {
                    return Err(Malformed::TooShortIcmpInner);
                }
                let ip = ipv6::Ipv6Packet::new_unchecked(data);
                if ip.version() != 6 {
                    return Err(Malformed::BadIcmpInner);
                }
                let chain = ipv6::walk(data, ipv6::HEADER_LEN, ip.next_header()).map_err(|e| match e {
                    Malformed::TooShortExtensionHeader => Malformed::TooShortIcmpInner,
                    _ => Malformed::BadIcmpInner,
                })?;
                let first = chain.fragment.is_none_or(|f| f.offset == 0);
                (chain.l4_offset, chain.protocol, first)
            }
        };
        let reads_l4 = protocol == protocol_of(family)
            || matches!(protocol, Protocol::TCP | Protocol::UDP | Protocol::UDPLITE | Protocol::SCTP);
        let has_l4 = reads_l4 && first_fragment;
        if has_l4 && data.len() < l4_offset + QUOTED_L4_LEN {
            return Err(Malformed::TooShortIcmpInner);
        }
        Ok(QuotedPacket { buffer, family, l4_offset, protocol, has_l4 })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn family(&self) -> IpFamily {
        self.family
    }

    pub fn src_addr(&self) -> IpAddr {
        let data = self.buffer.as_ref();
        match self.family {
            IpFamily::V4 => ipv4::Ipv4Packet::new_unchecked(data).src_addr().into(),
            IpFamily::V6 => ipv6::Ipv6Packet::new_unchecked(data).src_addr().into(),
        }
    }

    pub fn dst_addr(&self) -> IpAddr {
        let data = self.buffer.as_ref();
        match self.family {
            IpFamily::V4 => ipv4::Ipv4Packet::new_unchecked(data).dst_addr().into(),
            IpFamily::V6 => ipv6::Ipv6Packet::new_unchecked(data).dst_addr().into(),
        }
    }

    /// The quoted packet's upper-layer protocol (after any IPv6 extension headers).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The quoted IP header with its options or extension headers: where the L4 header starts.
    pub fn ip_header_len(&self) -> usize {
        self.l4_offset
    }

    /// The quoted IP header with its options or extension headers.
    pub fn ip_header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.l4_offset]
    }

    /// Whether the first 8 bytes of the L4 header are quoted and readable (ports or ICMP fields).
    pub fn has_l4(&self) -> bool {
        self.has_l4
    }

    /// Up to the first 8 quoted bytes after the IP header (exactly 8 when [`has_l4`](Self::has_l4)).
    pub fn l4_header(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = data.len().min(self.l4_offset + QUOTED_L4_LEN);
        &data[self.l4_offset..end]
    }

    fn has_ports(&self) -> bool {
        self.has_l4 && matches!(self.protocol, Protocol::TCP | Protocol::UDP | Protocol::UDPLITE | Protocol::SCTP)
    }

    fn is_icmp(&self) -> bool {
        self.has_l4 && self.protocol == protocol_of(self.family)
    }

    /// The quoted source port; 0 when the quoted protocol has no ports or its header is absent.
    pub fn src_port(&self) -> u16 {
        if self.has_ports() {
            read_u16(&self.buffer.as_ref()[self.l4_offset..])
        } else {
            0
        }
    }

    /// The quoted destination port; 0 when the quoted protocol has no ports or its header is absent.
    pub fn dst_port(&self) -> u16 {
        if self.has_ports() {
            read_u16(&self.buffer.as_ref()[self.l4_offset + 2..])
        } else {
            0
        }
    }

    /// The quoted ICMP message's type, code and echo identifier (the identifier only for echo request and
    /// reply); zeros when the quoted packet is not ICMP of the error's family.
    pub fn icmp_fields(&self) -> (u8, u8, u16) {
        if !self.is_icmp() {
            return (0, 0, 0);
        }
        let icmp = IcmpPacket::new_unchecked(&self.buffer.as_ref()[self.l4_offset..]);
        let id = if is_echo(self.family, icmp.msg_type()) { icmp.echo_ident() } else { 0 };
        (icmp.msg_type(), icmp.msg_code(), id)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> QuotedPacket<T> {
    /// Rewrites the quoted source address (NAT of an ICMP error). Checksums are the caller's: the quoted
    /// IPv4 header's ([`fill_ipv4_checksum`](Self::fill_ipv4_checksum)) and the ICMP message's.
    ///
    /// # Panics
    /// If `addr` is not of the quoted packet's family.
    pub fn set_src_addr(&mut self, addr: IpAddr) {
        match (addr, self.buffer.as_mut()) {
            (IpAddr::V4(a), data) if self.family == IpFamily::V4 => {
                ipv4::Ipv4Packet::new_unchecked(data).set_src_addr(a)
            }
            (IpAddr::V6(a), data) if self.family == IpFamily::V6 => {
                ipv6::Ipv6Packet::new_unchecked(data).set_src_addr(a)
            }
            _ => panic!("quoted packet is {:?}, address {addr}", self.family),
        }
    }

    /// Rewrites the quoted destination address; see [`set_src_addr`](Self::set_src_addr).
    ///
    /// # Panics
    /// If `addr` is not of the quoted packet's family.
    pub fn set_dst_addr(&mut self, addr: IpAddr) {
        match (addr, self.buffer.as_mut()) {
            (IpAddr::V4(a), data) if self.family == IpFamily::V4 => {
                ipv4::Ipv4Packet::new_unchecked(data).set_dst_addr(a)
            }
            (IpAddr::V6(a), data) if self.family == IpFamily::V6 => {
                ipv6::Ipv6Packet::new_unchecked(data).set_dst_addr(a)
            }
            _ => panic!("quoted packet is {:?}, address {addr}", self.family),
        }
    }

    /// Rewrites the quoted source port; does nothing when the quoted packet has no ports.
    pub fn set_src_port(&mut self, port: u16) {
        if self.has_ports() {
            let at = self.l4_offset;
            write_u16(&mut self.buffer.as_mut()[at..], port);
        }
    }

    /// Rewrites the quoted destination port; does nothing when the quoted packet has no ports.
    pub fn set_dst_port(&mut self, port: u16) {
        if self.has_ports() {
            let at = self.l4_offset + 2;
            write_u16(&mut self.buffer.as_mut()[at..], port);
        }
    }

    /// Recomputes the quoted IPv4 header's checksum after a rewrite; does nothing for IPv6.
    pub fn fill_ipv4_checksum(&mut self) {
        if self.family == IpFamily::V4 {
            let at = self.l4_offset;
            ipv4::Ipv4Packet::new_unchecked(&mut self.buffer.as_mut()[..at]).fill_checksum();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn echo_fields_and_checksums() {
        for (family, src, dst) in [
            (IpFamily::V4, IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])),
            (IpFamily::V6, IpAddr::from(Ipv6Addr::LOCALHOST), IpAddr::from(Ipv6Addr::UNSPECIFIED)),
        ] {
            let mut buf = [0u8; 12];
            let mut m = IcmpPacket::new_unchecked(&mut buf[..]);
            m.set_msg_type(if family == IpFamily::V4 { 8 } else { 128 });
            m.set_echo_ident(0x4242);
            m.set_echo_seq_no(9);
            m.data_mut().copy_from_slice(b"ping");
            m.fill_checksum(src, dst);
            let m = IcmpPacket::new_checked(&buf[..]).unwrap();
            assert_eq!((m.msg_code(), m.echo_ident(), m.echo_seq_no(), m.data()), (0, 0x4242, 9, &b"ping"[..]));
            assert!(is_echo(family, m.msg_type()) && !is_error(family, m.msg_type()));
            assert!(m.verify_checksum(src, dst));
            assert_eq!(IcmpPacket::new_checked(&buf[..7]), Err(Malformed::TooShortL4));
        }
    }

    #[test]
    fn quoted_v4_udp_and_rewrite() {
        let mut q = [0u8; 28];
        let mut ip = ipv4::Ipv4Packet::new_unchecked(&mut q[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(100); // truncated by the quote: not checked
        ip.set_protocol(Protocol::UDP);
        ip.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        ip.set_dst_addr(Ipv4Addr::new(8, 8, 8, 8));
        ip.fill_checksum();
        q[20..24].copy_from_slice(&[0x9c, 0x40, 0, 53]);
        let mut view = QuotedPacket::new_checked(&mut q[..], IpFamily::V4).unwrap();
        assert_eq!((view.protocol(), view.src_port(), view.dst_port()), (Protocol::UDP, 40000, 53));
        assert_eq!((view.src_addr(), view.dst_addr()), (IpAddr::from([10, 0, 0, 1]), IpAddr::from([8, 8, 8, 8])));
        view.set_src_addr(IpAddr::from([192, 168, 0, 1]));
        view.set_src_port(1234);
        view.fill_ipv4_checksum();
        assert_eq!((view.src_addr(), view.src_port()), (IpAddr::from([192, 168, 0, 1]), 1234));
        assert!(ipv4::Ipv4Packet::new_unchecked(view.ip_header()).verify_checksum());
        assert_eq!(QuotedPacket::new_checked(&q[..27], IpFamily::V4), Err(Malformed::TooShortIcmpInner));
        assert_eq!(QuotedPacket::new_checked(&q[..], IpFamily::V6), Err(Malformed::TooShortIcmpInner));
        q[0] = 0x65;
        assert_eq!(QuotedPacket::new_checked(&q[..], IpFamily::V4), Err(Malformed::BadIcmpInner));
    }

    #[test]
    fn quoted_protocol_without_l4_needs_only_the_header() {
        let mut q = [0u8; 20];
        q[0] = 0x45;
        q[9] = 47; // GRE
        let view = QuotedPacket::new_checked(&q[..], IpFamily::V4).unwrap();
        assert!(!view.has_l4());
        assert_eq!((view.src_port(), view.l4_header().len(), view.icmp_fields()), (0, 0, (0, 0, 0)));
    }
}
