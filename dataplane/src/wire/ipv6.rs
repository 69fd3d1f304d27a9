//! IPv6 headers (RFC 8200) and the walk over extension headers to the upper-layer protocol.
//!
//! The fixed header is 40 bytes; the payload length counts everything after it, extension headers
//! included. The next-header field names either the upper-layer protocol or an extension header, which
//! names the next one in turn. [`Ipv6Packet::extension_headers`] follows that chain through hop-by-hop
//! options, routing, fragment, destination options and authentication headers to the first header that
//! is none of these (TCP, UDP, ICMPv6, ESP, "no next header", …).
//!
//! The walk is bounded: at most [`MAX_EXTENSION_HEADERS`] headers, each checked to lie within the packet
//! before its length is trusted, so a crafted chain costs a fixed amount of work. Hop-by-hop options may
//! only come first (RFC 8200 §4.1): the kernel drops the packet otherwise, and so does calxdp.
//!
//! A fragment header with a non-zero offset ends the walk: what follows it is the middle of the original
//! payload, not headers.

use std::net::Ipv6Addr;

use calxdp_policy::resource::Protocol;

use super::{read_u16, read_u32, write_u16, write_u32, Field, Malformed};

mod field {
    use super::Field;

    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;

    /// In every extension header: the next header's protocol number.
    pub const EXT_NEXT_HEADER: usize = 0;
    /// In hop-by-hop, routing and destination options: length in 8-byte units after the first 8 bytes.
    /// In AH: length in 4-byte units minus 2 (RFC 4302 §2.2).
    pub const EXT_LEN: usize = 1;
    /// In a routing header: how many listed nodes remain to be visited.
    pub const ROUTING_SEGMENTS_LEFT: usize = 3;
    /// In a fragment header: offset (13 bits, 8-byte units), 2 reserved bits, more-fragments bit.
    pub const FRAG_OFF_M: Field = 2..4;
    pub const FRAG_IDENT: Field = 4..8;
    /// The shortest extension header (and the fragment header's fixed size).
    pub const EXT_MIN_LEN: usize = 8;
}

/// The fixed header's length.
pub const HEADER_LEN: usize = field::DST.end;

/// The most extension headers walked before the upper-layer protocol; a packet with more is dropped.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Next-header values of the extension headers walked, and of the two that end a walk without an L4
/// header.
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AUTH: u8 = 51;
    pub const NO_NEXT: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// Whether `nh` names an extension header that [`Ipv6Packet::extension_headers`] steps over.
pub fn is_extension_header(nh: u8) -> bool {
    use next_header::*;
    matches!(nh, HOP_BY_HOP | ROUTING | FRAGMENT | DEST_OPTS | AUTH)
}

/// What a fragment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Fragment {
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset: u16,
    pub more: bool,
    pub ident: u32,
}

/// The result of walking the extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionChain {
    /// The upper-layer protocol (or, after a non-first fragment's header, the protocol of the fragmentable
    /// part, whose header this fragment does not carry).
    pub protocol: Protocol,
    /// Where the upper-layer header starts, from the start of the IPv6 header.
    pub l4_offset: usize,
    /// How many extension headers were stepped over.
    pub count: usize,
    /// The fragment header, if there was one.
    pub fragment: Option<Ipv6Fragment>,
    /// Whether a routing header still has nodes to visit: the destination address is then not the final
    /// destination, which the L4 pseudo-header uses (RFC 8200 §8.1).
    pub routing_pending: bool,
}

/// Walks extension headers in `packet` (an IPv6 header and whatever of its payload is at hand) from
/// `start`, whose type is `first`. Extension headers must lie within `packet`; [`Ipv6Packet`] passes the
/// packet up to its payload length, the ICMP quote view what was quoted.
pub(super) fn walk(packet: &[u8], start: usize, first: u8) -> Result<ExtensionChain, Malformed> {
    let mut chain = ExtensionChain {
        protocol: Protocol(first),
        l4_offset: start,
        count: 0,
        fragment: None,
        routing_pending: false,
    };
    let mut next = first;
    while is_extension_header(next) {
        if chain.count == MAX_EXTENSION_HEADERS {
            return Err(Malformed::TooManyExtensionHeaders);
        }
        if next == next_header::HOP_BY_HOP && chain.count > 0 {
            return Err(Malformed::HopByHopNotFirst);
        }
        let ext = packet.get(chain.l4_offset..).unwrap_or(&[]);
        if ext.len() < field::EXT_MIN_LEN {
            return Err(Malformed::TooShortExtensionHeader);
        }
        let len = match next {
            next_header::FRAGMENT => field::EXT_MIN_LEN,
            next_header::AUTH => (usize::from(ext[field::EXT_LEN]) + 2) * 4,
            _ => (usize::from(ext[field::EXT_LEN]) + 1) * 8,
        };
        if ext.len() < len {
            return Err(Malformed::TooShortExtensionHeader);
        }
        chain.count += 1;
        chain.l4_offset += len;
        let this = next;
        next = ext[field::EXT_NEXT_HEADER];
        if this == next_header::ROUTING && ext[field::ROUTING_SEGMENTS_LEFT] != 0 {
            chain.routing_pending = true;
        }
        if this == next_header::FRAGMENT {
            let off_m = read_u16(&ext[field::FRAG_OFF_M]);
            let fragment =
                Ipv6Fragment { offset: off_m & 0xfff8, more: off_m & 1 != 0, ident: read_u32(&ext[field::FRAG_IDENT]) };
            chain.fragment = Some(fragment);
            if fragment.offset != 0 {
                break;
            }
        }
    }
    chain.protocol = Protocol(next);
    Ok(chain)
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Ipv6Packet<T> {
        Ipv6Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Ipv6Packet<T>, Malformed> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a version-6 fixed header and the payload length it announces.
    /// Trailing bytes are allowed. Extension headers are checked by
    /// [`extension_headers`](Self::extension_headers).
    pub fn check_len(&self) -> Result<(), Malformed> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Malformed::TooShortIp)
        } else if self.version() != 6 {
            Err(Malformed::BadIpVersion)
        } else if self.total_len() > len {
            Err(Malformed::IpTotalLengthExceedsFrame)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        (read_u16(&self.buffer.as_ref()[field::VER_TC_FLOW]) >> 4) as u8
    }

    pub fn flow_label(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::VER_TC_FLOW]) & 0x000f_ffff
    }

    /// The length of everything after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::PAYLOAD_LEN])
    }

    /// The fixed header plus the payload length: where the packet ends.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// The type of the first header after the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        Ipv6Addr::from(a)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        Ipv6Addr::from(a)
    }

    /// The packet: the fixed header through the payload length (Ethernet padding excluded).
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }

    /// The payload after the fixed header, extension headers included.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    /// Walks the extension headers to the upper-layer protocol (at most [`MAX_EXTENSION_HEADERS`]).
    pub fn extension_headers(&self) -> Result<ExtensionChain, Malformed> {
        walk(self.packet(), HEADER_LEN, self.next_header())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6 with the given traffic class and flow label (the three share the first word).
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let word = (6 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        write_u32(&mut self.buffer.as_mut()[field::VER_TC_FLOW], word);
    }

    /// Sets the payload length. Changes the layout: run [`check_len`](Ipv6Packet::check_len) again before
    /// trusting getters.
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(&mut self.buffer.as_mut()[field::PAYLOAD_LEN], len);
    }

    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = nh;
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 header followed by the given extension headers (type, total length) and 8 bytes of `upper`.
    fn packet(exts: &[(u8, usize)], upper: u8) -> Vec<u8> {
        let body: usize = exts.iter().map(|e| e.1).sum::<usize>() + 8;
        let mut buf = vec![0u8; HEADER_LEN + body];
        let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
        p.set_version_tc_flow(0x12, 0xabcde);
        p.set_payload_len(body as u16);
        p.set_next_header(exts.first().map_or(upper, |e| e.0));
        p.set_hop_limit(9);
        let mut at = HEADER_LEN;
        for (i, &(kind, len)) in exts.iter().enumerate() {
            buf[at] = exts.get(i + 1).map_or(upper, |e| e.0);
            buf[at + 1] = match kind {
                next_header::FRAGMENT => 0,
                next_header::AUTH => (len / 4 - 2) as u8,
                _ => (len / 8 - 1) as u8,
            };
            at += len;
        }
        buf
    }

    #[test]
    fn fixed_fields() {
        let buf = packet(&[], 6);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (6, 0x12, 0xabcde));
        assert_eq!((p.payload_len(), p.next_header(), p.hop_limit()), (8, 6, 9));
        let chain = p.extension_headers().unwrap();
        assert_eq!((chain.protocol, chain.l4_offset, chain.count, chain.fragment), (Protocol::TCP, 40, 0, None));
    }

    #[test]
    fn walks_every_kind() {
        use next_header::*;
        let exts = [(HOP_BY_HOP, 8), (DEST_OPTS, 16), (ROUTING, 24), (FRAGMENT, 8), (AUTH, 16), (DEST_OPTS, 8)];
        let buf = packet(&exts, 17);
        let chain = Ipv6Packet::new_checked(&buf[..]).unwrap().extension_headers().unwrap();
        assert_eq!((chain.protocol, chain.l4_offset, chain.count), (Protocol::UDP, 40 + 80, 6));
        assert_eq!(chain.fragment, Some(Ipv6Fragment { offset: 0, more: false, ident: 0 }));
        assert!(!chain.routing_pending);
    }

    #[test]
    fn at_most_eight() {
        let eight = [(next_header::DEST_OPTS, 8); 8];
        let buf = packet(&eight, 58);
        let chain = Ipv6Packet::new_checked(&buf[..]).unwrap().extension_headers().unwrap();
        assert_eq!((chain.protocol, chain.count), (Protocol::ICMPV6, 8));
        let nine = [(next_header::DEST_OPTS, 8); 9];
        let buf = packet(&nine, 58);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.extension_headers(), Err(Malformed::TooManyExtensionHeaders));
    }

    #[test]
    fn hop_by_hop_only_first() {
        let buf = packet(&[(next_header::DEST_OPTS, 8), (next_header::HOP_BY_HOP, 8)], 6);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.extension_headers(), Err(Malformed::HopByHopNotFirst));
    }

    #[test]
    fn extension_beyond_payload() {
        let mut buf = packet(&[(next_header::ROUTING, 16)], 6);
        buf[HEADER_LEN + 1] = 3; // claims 32 bytes; only 24 follow
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.extension_headers(), Err(Malformed::TooShortExtensionHeader));
        // The walk is bounded by the payload length, not by the buffer.
        let buf = packet(&[(next_header::ROUTING, 16)], 6);
        let mut longer = buf.clone();
        longer.extend_from_slice(&[0; 64]);
        longer[5] = 4; // payload length 4
        let p = Ipv6Packet::new_checked(&longer[..]).unwrap();
        assert_eq!(p.extension_headers(), Err(Malformed::TooShortExtensionHeader));
    }

    #[test]
    fn non_first_fragment_ends_walk() {
        let mut buf = packet(&[(next_header::FRAGMENT, 8), (next_header::DEST_OPTS, 8)], 6);
        buf[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&(1232u16 | 1).to_be_bytes());
        buf[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&7u32.to_be_bytes());
        let chain = Ipv6Packet::new_checked(&buf[..]).unwrap().extension_headers().unwrap();
        assert_eq!(chain.fragment, Some(Ipv6Fragment { offset: 1232, more: true, ident: 7 }));
        assert_eq!((chain.protocol.0, chain.l4_offset, chain.count), (next_header::DEST_OPTS, 48, 1));
    }

    #[test]
    fn check_len_reasons() {
        let buf = packet(&[], 6);
        assert_eq!(Ipv6Packet::new_checked(&buf[..39]), Err(Malformed::TooShortIp));
        assert_eq!(Ipv6Packet::new_checked(&buf[..47]), Err(Malformed::IpTotalLengthExceedsFrame));
        let mut bad = buf;
        bad[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&bad[..]), Err(Malformed::BadIpVersion));
    }
}
