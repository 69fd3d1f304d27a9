//! The one parse the pipeline runs per frame: Ethernet, VLAN tags, IPv4 or IPv6 (with extension
//! headers), the L4 header, and for ICMP errors the quoted packet.
//!
//! The result is either a [`Parsed`], with the offsets later stages need to rewrite the frame and the
//! [`PacketHeader`] policy and conntrack match on, or the first [`Malformed`] reason the frame failed.
//! The checks run in the order the headers come, so a frame has exactly one reason and a counter per
//! reason adds up to the drops.
//!
//! What is checked, beyond each view's `check_len`: the IPv4 header checksum (a corrupt header makes the
//! addresses policy matches on untrustworthy); that the packet is not a non-first fragment (it has no L4
//! header, so ports cannot be matched: the worker reassembles fragments before they get here,
//! `crate::reassembly`, so one reaches `parse` only on paths that do not reassemble); and for ICMP errors that the quoted
//! packet is an IP header of the same family with its first 8 L4 bytes (conntrack needs them to relate
//! the error). The L4 checksum is not checked here; see [`Parsed::verify_l4_checksum`].

use std::net::IpAddr;

use calxdp_policy::net::IpFamily;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resource::Protocol;

use super::ethernet::{ethertype, EthernetFrame};
use super::icmp::{self, IcmpPacket, QuotedPacket};
use super::ipv4::Ipv4Packet;
use super::ipv6::Ipv6Packet;
use super::sctp::SctpPacket;
use super::tcp::TcpPacket;
use super::udp::UdpPacket;
use super::{checksum, read_u16, Malformed};

/// What the frame carries at layer 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L3 {
    Ipv4,
    Ipv6,
    /// Not IP: the ethertype after any VLAN tags (ARP, LLDP, an 802.3 length, …). The header fields of
    /// [`Parsed`] are then placeholders.
    NotIp(u16),
}

/// The flow of the packet an ICMP error quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InnerHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The quoted packet's upper-layer protocol.
    pub protocol: Protocol,
    /// Ports for TCP, UDP, SCTP and UDP-Lite; 0 otherwise, and 0 when the quoted packet was a non-first
    /// fragment.
    pub src_port: u16,
    pub dst_port: u16,
    /// When the quoted packet is ICMP of the same family: its type, code, and (echo request or reply
    /// only) identifier. Zero otherwise.
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub icmp_id: u16,
}

impl InnerHeader {
    fn of<T: AsRef<[u8]>>(quoted: &QuotedPacket<T>) -> InnerHeader {
        let (icmp_type, icmp_code, icmp_id) = quoted.icmp_fields();
        InnerHeader {
            src: quoted.src_addr(),
            dst: quoted.dst_addr(),
            protocol: quoted.protocol(),
            src_port: quoted.src_port(),
            dst_port: quoted.dst_port(),
            icmp_type,
            icmp_code,
            icmp_id,
        }
    }

    /// The quoted packet as a [`PacketHeader`] (no TCP flags: the quote's first 8 bytes do not reach
    /// them), for looking up the flow it belongs to.
    pub fn to_packet_header(&self) -> PacketHeader {
        PacketHeader {
            src: self.src,
            dst: self.dst,
            protocol: self.protocol,
            src_port: self.src_port,
            dst_port: self.dst_port,
            tcp_flags: 0,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            icmp_id: self.icmp_id,
        }
    }
}

/// A frame that passed every check, described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub l3: L3,
    /// The ethertype after any VLAN tags.
    pub ethertype: u16,
    /// The outermost VLAN id, if tagged.
    pub outer_vlan: Option<u16>,
    /// The second VLAN id, if double-tagged (Q-in-Q).
    pub inner_vlan: Option<u16>,
    /// Where the IP header starts (after Ethernet and tags).
    pub l3_offset: usize,
    /// Where the upper-layer header starts (after IPv4 options or IPv6 extension headers). For a frame
    /// that is not IP, equal to `l3_offset`.
    pub l4_offset: usize,
    /// Where the IP packet ends, by its total (v4) or payload (v6) length; bytes after it are Ethernet
    /// padding. For a frame that is not IP, the frame's length.
    pub l3_end: usize,
    /// The packet is the first fragment of a fragmented datagram (more-fragments set): its L4 header is
    /// here, but its L4 checksum covers data in later fragments.
    pub fragmented: bool,
    /// An IPv6 routing header still has nodes to visit: `header.dst` is the next hop, not the final
    /// destination.
    pub routing_pending: bool,
    /// What policy and conntrack match on. For a frame that is not IP: unspecified IPv4 addresses,
    /// protocol 0, zero ports.
    pub header: PacketHeader,
    /// For ICMP errors: the flow of the quoted packet.
    pub inner: Option<InnerHeader>,
    /// An IPv4 loose or strict source route option is present.
    pub source_routed: bool,
    /// For ICMP errors: where the quoted IP header and its L4 header start in the frame, and whether the
    /// quoted L4 header's first 8 bytes are there (so NAT can rewrite the quote).
    pub inner_at: Option<(usize, usize, bool)>,
}

impl Parsed {
    pub fn is_ip(&self) -> bool {
        !matches!(self.l3, L3::NotIp(_))
    }

    /// The upper-layer header and payload in `frame` (the frame this was parsed from), without padding.
    pub fn l4<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame.get(self.l4_offset..self.l3_end).unwrap_or(&[])
    }

    /// Whether the L4 checksum of `frame` (the frame this was parsed from) is valid, by the rules of
    /// [`checksum::verify_l4_checksum`]. True when it cannot be judged from this frame: not IP, a first
    /// fragment (the checksum covers the whole datagram), or a pending IPv6 routing header (the
    /// pseudo-header uses the final destination, RFC 8200 §8.1).
    pub fn verify_l4_checksum(&self, frame: &[u8]) -> bool {
        if !self.is_ip() || self.fragmented || self.routing_pending {
            return true;
        }
        let mut segment = self.l4(frame);
        if self.header.protocol == Protocol::UDP && segment.len() >= 8 {
            // UDP's checksum covers the datagram its length field bounds, which may end before the IP
            // payload does.
            let len = usize::from(read_u16(&segment[4..6])).clamp(8, segment.len());
            segment = &segment[..len];
        }
        checksum::verify_l4_checksum(self.header.src, self.header.dst, self.header.protocol, segment)
    }
}

/// The header of frames that are not IP, and the starting point for those that are.
const EMPTY_HEADER: PacketHeader = PacketHeader::EMPTY;

impl Parsed {
    /// A slot before any frame is parsed into it: a frame that is not IP, of no length.
    pub const EMPTY: Parsed = Parsed {
        l3: L3::NotIp(0),
        ethertype: 0,
        outer_vlan: None,
        inner_vlan: None,
        l3_offset: 0,
        l4_offset: 0,
        l3_end: 0,
        fragmented: false,
        routing_pending: false,
        header: EMPTY_HEADER,
        inner: None,
        inner_at: None,
        source_routed: false,
    };
}

/// Parses one frame. Allocates nothing and never panics.
pub fn parse(frame: &[u8]) -> Result<Parsed, Malformed> {
    let mut parsed = Parsed::EMPTY;
    parse_into(frame, &mut parsed)?;
    Ok(parsed)
}

/// [`parse`] into `out` (a batch's slot), written in place: a parse returned by value and moved into the
/// slot is read back right after its fields were stored one by one, which stalls the store buffer.
#[inline]
pub fn parse_into(frame: &[u8], out: &mut Parsed) -> Result<(), Malformed> {
    let eth = EthernetFrame::new_checked(frame)?.layout();
    *out = Parsed {
        l3: L3::NotIp(eth.ethertype),
        ethertype: eth.ethertype,
        outer_vlan: eth.outer_vlan,
        inner_vlan: eth.inner_vlan,
        l3_offset: eth.header_len,
        l4_offset: eth.header_len,
        l3_end: frame.len(),
        ..Parsed::EMPTY
    };
    let payload = &frame[eth.header_len..];
    match eth.ethertype {
        ethertype::IPV4 => parse_ipv4(payload, out),
        ethertype::IPV6 => parse_ipv6(payload, out),
        _ => Ok(()),
    }
}

fn parse_ipv4(packet: &[u8], parsed: &mut Parsed) -> Result<(), Malformed> {
    let ip = Ipv4Packet::new_checked(packet)?;
    if !ip.verify_checksum() {
        return Err(Malformed::BadIpv4Checksum);
    }
    if ip.frag_offset() != 0 {
        return Err(Malformed::NonFirstFragment);
    }
    parsed.l3 = L3::Ipv4;
    parsed.source_routed = has_source_route(&packet[20..ip.header_len()]);
    parsed.l4_offset = parsed.l3_offset + ip.header_len();
    parsed.l3_end = parsed.l3_offset + usize::from(ip.total_len());
    parsed.fragmented = ip.more_frags();
    parsed.header.src = ip.src_addr().into();
    parsed.header.dst = ip.dst_addr().into();
    parsed.header.protocol = ip.protocol();
    parse_l4(IpFamily::V4, ip.payload(), parsed)
}

/// Whether IPv4 options hold a loose (131) or strict (137) source route. Walks the options as the kernel
/// does (end of list 0, no-op 1, else type, length); a malformed list is treated as holding none (the
/// header checksum already vouched for it being what the sender sent).
fn has_source_route(options: &[u8]) -> bool {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => return false,
            1 => i += 1,
            kind => {
                if kind == 131 || kind == 137 {
                    return true;
                }
                let Some(&len) = options.get(i + 1) else { return false };
                if len < 2 {
                    return false;
                }
                i += len as usize;
            }
        }
    }
    false
}

fn parse_ipv6(packet: &[u8], parsed: &mut Parsed) -> Result<(), Malformed> {
    let ip = Ipv6Packet::new_checked(packet)?;
    let chain = ip.extension_headers()?;
    if let Some(fragment) = chain.fragment {
        if fragment.offset != 0 {
            return Err(Malformed::NonFirstFragment);
        }
        parsed.fragmented = fragment.more;
    }
    parsed.l3 = L3::Ipv6;
    parsed.l4_offset = parsed.l3_offset + chain.l4_offset;
    parsed.l3_end = parsed.l3_offset + ip.total_len();
    parsed.routing_pending = chain.routing_pending;
    parsed.header.src = ip.src_addr().into();
    parsed.header.dst = ip.dst_addr().into();
    parsed.header.protocol = chain.protocol;
    let l4 = ip.packet().get(chain.l4_offset..).unwrap_or(&[]);
    parse_l4(IpFamily::V6, l4, parsed)
}

/// Fills in the L4 fields of `parsed.header` from `l4` (the IP payload after any extension headers).
fn parse_l4(family: IpFamily, l4: &[u8], parsed: &mut Parsed) -> Result<(), Malformed> {
    let header = &mut parsed.header;
    let icmp_protocol = match family {
        IpFamily::V4 => Protocol::ICMP,
        IpFamily::V6 => Protocol::ICMPV6,
    };
    match header.protocol {
        Protocol::TCP => {
            let tcp = TcpPacket::new_checked(l4)?;
            header.src_port = tcp.src_port();
            header.dst_port = tcp.dst_port();
            header.tcp_flags = tcp.flags();
        }
        Protocol::UDP => {
            let udp = UdpPacket::new_checked(l4)?;
            header.src_port = udp.src_port();
            header.dst_port = udp.dst_port();
        }
        Protocol::UDPLITE => {
            let udp = UdpPacket::new_checked_header(l4)?;
            header.src_port = udp.src_port();
            header.dst_port = udp.dst_port();
        }
        Protocol::SCTP => {
            let sctp = SctpPacket::new_checked(l4)?;
            header.src_port = sctp.src_port();
            header.dst_port = sctp.dst_port();
        }
        p if p == icmp_protocol => {
            let message = IcmpPacket::new_checked(l4)?;
            header.icmp_type = message.msg_type();
            header.icmp_code = message.msg_code();
            if icmp::is_echo(family, header.icmp_type) {
                header.icmp_id = message.echo_ident();
            }
            if icmp::is_error(family, header.icmp_type) {
                let quoted = message.quoted(family)?;
                parsed.inner = Some(InnerHeader::of(&quoted));
                let at = parsed.l4_offset + 8;
                parsed.inner_at = Some((at, at + quoted.ip_header_len(), quoted.has_l4()));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use calxdp_policy::packet::tcp_flags;

    use super::*;
    use crate::wire::build::{build, build_icmp_error, FrameSpec};
    use crate::wire::ethernet::{self, write_header};
    use crate::wire::ipv6::next_header;
    use crate::wire::XorShift;

    fn v4(a: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, a])
    }

    fn v6(a: u16) -> IpAddr {
        IpAddr::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, a))
    }

    fn header(src: IpAddr, dst: IpAddr, protocol: Protocol) -> PacketHeader {
        PacketHeader { src, dst, protocol, ..EMPTY_HEADER }
    }

    fn tcp(src: IpAddr, dst: IpAddr) -> PacketHeader {
        PacketHeader { src_port: 40000, dst_port: 443, tcp_flags: tcp_flags::SYN, ..header(src, dst, Protocol::TCP) }
    }

    fn udp(src: IpAddr, dst: IpAddr) -> PacketHeader {
        PacketHeader { src_port: 5353, dst_port: 53, ..header(src, dst, Protocol::UDP) }
    }

    fn spec(header: PacketHeader) -> FrameSpec {
        FrameSpec { payload_len: 12, ..FrameSpec::new(header) }
    }

    /// Recomputes the IPv4 header checksum of an untagged frame after a test edited the header.
    fn refill_v4(frame: &mut [u8]) {
        Ipv4Packet::new_unchecked(&mut frame[14..]).fill_checksum();
    }

    /// Puts IPv6 extension headers (type, total length) between the IPv6 header and the upper layer of an
    /// untagged IPv6 frame, fixing the next-header chain and the payload length.
    fn with_extensions(frame: &[u8], exts: &[(u8, usize)]) -> Vec<u8> {
        let upper = frame[14 + 6];
        let mut out = frame[..54].to_vec();
        out[14 + 6] = exts.first().map_or(upper, |e| e.0);
        for (i, &(kind, len)) in exts.iter().enumerate() {
            let mut ext = vec![0u8; len];
            ext[0] = exts.get(i + 1).map_or(upper, |e| e.0);
            ext[1] = match kind {
                next_header::FRAGMENT => 0,
                next_header::AUTH => (len / 4 - 2) as u8,
                _ => (len / 8 - 1) as u8,
            };
            out.extend_from_slice(&ext);
        }
        out.extend_from_slice(&frame[54..]);
        let payload_len = (out.len() - 54) as u16;
        out[18..20].copy_from_slice(&payload_len.to_be_bytes());
        out
    }

    #[test]
    fn ipv4_tcp() {
        let h = tcp(v4(1), v4(2));
        let frame = build(&spec(h));
        let p = parse(&frame).unwrap();
        assert_eq!((p.l3, p.ethertype, p.outer_vlan, p.inner_vlan), (L3::Ipv4, 0x0800, None, None));
        assert_eq!((p.l3_offset, p.l4_offset, p.l3_end), (14, 34, frame.len()));
        assert_eq!((p.header, p.inner, p.fragmented), (h, None, false));
        assert!(p.verify_l4_checksum(&frame));
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let frame = build(&spec(udp(v4(1), v4(2))));
        // Insert 8 bytes of options (NOPs and an end-of-list) after the fixed header.
        let mut with_options = frame[..34].to_vec();
        with_options.extend_from_slice(&[1, 1, 1, 1, 1, 1, 1, 0]);
        with_options.extend_from_slice(&frame[34..]);
        with_options[14] = 0x47;
        let total = (with_options.len() - 14) as u16;
        with_options[16..18].copy_from_slice(&total.to_be_bytes());
        refill_v4(&mut with_options);
        let p = parse(&with_options).unwrap();
        assert_eq!((p.l4_offset, p.header), (42, udp(v4(1), v4(2))));
        assert!(p.verify_l4_checksum(&with_options));
    }

    #[test]
    fn padding_is_not_payload() {
        let h = udp(v4(1), v4(2));
        let mut frame = build(&FrameSpec { payload_len: 0, ..FrameSpec::new(h) });
        assert_eq!(frame.len(), 42);
        frame.resize(60, 0xee);
        let p = parse(&frame).unwrap();
        assert_eq!((p.l3_end, p.l4(&frame).len(), p.header), (42, 8, h));
        assert!(p.verify_l4_checksum(&frame));
    }

    #[test]
    fn vlan_tags() {
        let h = udp(v6(1), v6(2));
        let frame = build(&FrameSpec { vlan: Some(42), ..spec(h) });
        let p = parse(&frame).unwrap();
        assert_eq!((p.outer_vlan, p.inner_vlan, p.l3_offset, p.l4_offset), (Some(42), None, 18, 58));
        assert_eq!((p.l3, p.header), (L3::Ipv6, h));

        // Q-in-Q: re-tag the same IP packet with two tags.
        let mut qinq = vec![0u8; 22];
        write_header(&mut qinq, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], &[100, 42], ethernet::ethertype::IPV6);
        qinq.extend_from_slice(&frame[18..]);
        let p = parse(&qinq).unwrap();
        assert_eq!((p.outer_vlan, p.inner_vlan, p.l3_offset, p.header), (Some(100), Some(42), 22, h));
        assert!(p.verify_l4_checksum(&qinq));
    }

    #[test]
    fn not_ip() {
        let mut arp = vec![0u8; 42];
        write_header(&mut arp, [0xff; 6], [2, 0, 0, 0, 0, 1], &[7], ethernet::ethertype::ARP);
        let p = parse(&arp).unwrap();
        assert_eq!((p.l3, p.ethertype, p.outer_vlan, p.l3_offset), (L3::NotIp(0x0806), 0x0806, Some(7), 18));
        assert_eq!((p.header, p.inner, p.is_ip()), (EMPTY_HEADER, None, false));
        assert!(p.verify_l4_checksum(&arp));
    }

    #[test]
    fn ipv6_extension_headers() {
        let h = tcp(v6(1), v6(2));
        let frame = build(&spec(h));
        use next_header::*;
        let exts = [(HOP_BY_HOP, 8), (DEST_OPTS, 16), (ROUTING, 24), (FRAGMENT, 8), (AUTH, 24)];
        let frame = with_extensions(&frame, &exts);
        let p = parse(&frame).unwrap();
        assert_eq!((p.l4_offset, p.header, p.fragmented, p.routing_pending), (54 + 80, h, false, false));
        assert!(p.verify_l4_checksum(&frame));

        // A first fragment of a fragmented datagram: parsed, flagged, checksum not judged.
        let mut first = with_extensions(&build(&spec(h)), &[(FRAGMENT, 8)]);
        first[54 + 3] = 1; // more fragments
        first[62] ^= 0xff; // corrupt the TCP ports: the checksum cannot tell from one fragment
        let p = parse(&first).unwrap();
        assert!(p.fragmented && p.verify_l4_checksum(&first));

        // Segments left in a routing header: the destination is not final.
        let mut routed = with_extensions(&build(&spec(h)), &[(ROUTING, 24)]);
        routed[54 + 3] = 1;
        assert!(parse(&routed).unwrap().routing_pending);
    }

    #[test]
    fn icmp_echo_and_errors() {
        let echo = PacketHeader { icmp_type: 8, icmp_id: 777, ..header(v4(1), v4(2), Protocol::ICMP) };
        let frame = build(&spec(echo));
        let p = parse(&frame).unwrap();
        assert_eq!((p.header, p.inner), (echo, None));
        assert!(p.verify_l4_checksum(&frame));

        // Port unreachable about a UDP packet, v4.
        let error = PacketHeader { icmp_type: 3, icmp_code: 3, ..header(v4(9), v4(1), Protocol::ICMP) };
        let quoted = udp(v4(1), v4(2));
        let frame = build_icmp_error(&spec(error), &quoted);
        let p = parse(&frame).unwrap();
        assert_eq!(p.header, error);
        let inner = p.inner.unwrap();
        assert_eq!(inner.to_packet_header(), quoted);
        assert!(p.verify_l4_checksum(&frame));

        // Time exceeded about an ICMP echo, v4: the inner echo's identifier.
        let te = PacketHeader { icmp_type: 11, ..header(v4(9), v4(1), Protocol::ICMP) };
        let frame = build_icmp_error(&spec(te), &echo);
        assert_eq!(parse(&frame).unwrap().inner.unwrap().to_packet_header(), echo);

        // Packet too big about TCP with an extension header, v6.
        let ptb = PacketHeader { icmp_type: 2, ..header(v6(9), v6(1), Protocol::ICMPV6) };
        let quoted = tcp(v6(1), v6(2));
        let inner_frame = with_extensions(&build(&spec(quoted)), &[(next_header::DEST_OPTS, 8)]);
        let frame = build_icmp_error(&spec(ptb), &quoted);
        // Swap the quoted packet for one with an extension header.
        let mut with_ext = frame[..62].to_vec();
        with_ext.extend_from_slice(&inner_frame[14..]);
        let payload_len = (with_ext.len() - 54) as u16;
        with_ext[18..20].copy_from_slice(&payload_len.to_be_bytes());
        let (src, dst) = (ptb.src, ptb.dst);
        crate::wire::checksum::fill_l4_checksum(src, dst, Protocol::ICMPV6, &mut with_ext[54..]);
        let p = parse(&with_ext).unwrap();
        let inner = p.inner.unwrap();
        assert_eq!((inner.protocol, inner.src_port, inner.dst_port), (Protocol::TCP, 40000, 443));
        assert_eq!((inner.src, inner.dst), (quoted.src, quoted.dst));
        assert!(p.verify_l4_checksum(&with_ext));

        // `build` alone quotes a UDP packet back from the error's destination to its source.
        let p = parse(&build(&spec(ptb))).unwrap();
        let inner = p.inner.unwrap();
        assert_eq!((inner.src, inner.dst, inner.protocol), (ptb.dst, ptb.src, Protocol::UDP));
    }

    /// A hand-made frame for every reason: the exhaustive match makes a new reason fail to compile until
    /// it has a frame here.
    fn frame_for(reason: Malformed) -> Vec<u8> {
        use next_header::*;
        let tcp4 = build(&spec(tcp(v4(1), v4(2))));
        let udp4 = build(&spec(udp(v4(1), v4(2))));
        let udp6 = build(&spec(udp(v6(1), v6(2))));
        let error = PacketHeader { icmp_type: 3, icmp_code: 1, ..header(v4(9), v4(1), Protocol::ICMP) };
        let icmp_error = build_icmp_error(&FrameSpec::new(error), &udp(v4(1), v4(2)));
        match reason {
            Malformed::TooShortEthernet => tcp4[..13].to_vec(),
            Malformed::TooManyVlanTags => {
                let mut f = vec![0u8; 30];
                write_header(&mut f, [2; 6], [4; 6], &[1, 2], ethernet::ethertype::VLAN);
                f
            }
            Malformed::TooShortIp => tcp4[..14 + 19].to_vec(),
            Malformed::BadIpVersion => {
                let mut f = tcp4;
                f[14] = 0x65;
                f
            }
            Malformed::BadIpHeaderLength => {
                let mut f = tcp4;
                f[14] = 0x44;
                refill_v4(&mut f);
                f
            }
            Malformed::IpTotalLengthExceedsFrame => tcp4[..tcp4.len() - 1].to_vec(),
            Malformed::BadIpv4Checksum => {
                let mut f = tcp4;
                f[14 + 8] -= 1; // TTL
                f
            }
            Malformed::HopByHopNotFirst => with_extensions(&udp6, &[(DEST_OPTS, 8), (HOP_BY_HOP, 8)]),
            Malformed::TooShortExtensionHeader => {
                let mut f = with_extensions(&udp6, &[(ROUTING, 8)]);
                f[55] = 4; // 40 bytes claimed, 8 + 20 there
                f
            }
            Malformed::TooManyExtensionHeaders => with_extensions(&udp6, &[(DEST_OPTS, 8); 9]),
            Malformed::NonFirstFragment => {
                let mut f = udp4;
                Ipv4Packet::new_unchecked(&mut f[14..]).set_fragment(false, false, 1480);
                refill_v4(&mut f);
                f
            }
            Malformed::TooShortL4 => {
                let mut f = build(&FrameSpec::new(udp(v4(1), v4(2))));
                f[14 + 9] = 6; // 8 bytes of "TCP"
                refill_v4(&mut f);
                f
            }
            Malformed::BadTcpDataOffset => {
                let mut f = tcp4;
                f[34 + 12] = 0x40;
                f
            }
            Malformed::BadUdpLength => {
                let mut f = udp4;
                f[34 + 5] = 7;
                f
            }
            Malformed::TooShortIcmpInner => {
                // Quote only the IP header and 4 bytes of UDP.
                let mut f = icmp_error[..14 + 20 + 8 + 24].to_vec();
                let total = (f.len() - 14) as u16;
                f[16..18].copy_from_slice(&total.to_be_bytes());
                refill_v4(&mut f);
                f
            }
            Malformed::BadIcmpInner => {
                let mut f = icmp_error;
                f[14 + 20 + 8] = 0x65;
                f
            }
        }
    }

    #[test]
    fn every_reason_has_a_frame() {
        for &reason in Malformed::ALL {
            assert_eq!(parse(&frame_for(reason)), Err(reason), "{}", reason.as_str());
        }
    }

    #[test]
    fn ipv6_non_first_fragment() {
        let mut f = with_extensions(&build(&spec(udp(v6(1), v6(2)))), &[(next_header::FRAGMENT, 8)]);
        f[54 + 2..54 + 4].copy_from_slice(&1232u16.to_be_bytes());
        assert_eq!(parse(&f), Err(Malformed::NonFirstFragment));
    }

    /// Valid frames of every shape the parser walks, for the truncation and mutation tests.
    fn valid_frames() -> Vec<Vec<u8>> {
        use next_header::*;
        let echo6 = PacketHeader { icmp_type: 128, icmp_id: 5, ..header(v6(1), v6(2), Protocol::ICMPV6) };
        let unreachable6 = PacketHeader { icmp_type: 1, icmp_code: 4, ..header(v6(9), v6(1), Protocol::ICMPV6) };
        let unreachable4 = PacketHeader { icmp_type: 3, icmp_code: 3, ..header(v4(9), v4(1), Protocol::ICMP) };
        let sctp = PacketHeader { src_port: 1, dst_port: 2, ..header(v4(1), v4(2), Protocol::SCTP) };
        let lite = PacketHeader { src_port: 1, dst_port: 2, ..header(v6(1), v6(2), Protocol::UDPLITE) };
        vec![
            build(&spec(tcp(v4(1), v4(2)))),
            build(&FrameSpec { vlan: Some(3), ..spec(udp(v4(1), v4(2))) }),
            with_extensions(&build(&spec(tcp(v6(1), v6(2)))), &[(HOP_BY_HOP, 8), (ROUTING, 24), (FRAGMENT, 8)]),
            build(&spec(echo6)),
            build_icmp_error(&FrameSpec { vlan: Some(9), ..spec(unreachable4) }, &tcp(v4(1), v4(2))),
            build_icmp_error(&spec(unreachable6), &udp(v6(1), v6(2))),
            build(&spec(sctp)),
            build(&spec(lite)),
            build(&spec(header(v4(1), v4(2), Protocol(47)))),
        ]
    }

    #[test]
    fn truncation_at_every_length_is_malformed() {
        for frame in valid_frames() {
            let p = parse(&frame).unwrap();
            assert!(p.verify_l4_checksum(&frame), "{p:?}");
            for len in 0..frame.len() {
                assert!(parse(&frame[..len]).is_err(), "{len} of {}: {p:?}", frame.len());
            }
        }
    }

    /// A quick in-process fuzz: random byte edits of valid frames, and random frames, never panic.
    #[test]
    fn mutations_never_panic() {
        let mut rng = XorShift::new(0xf022);
        let frames = valid_frames();
        let mut ok = 0;
        for round in 0..50_000 {
            let mut f = frames[round % frames.len()].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(f.len());
                f[at] = rng.byte();
            }
            if rng.below(4) == 0 {
                f.truncate(rng.below(f.len() + 1));
            }
            if let Ok(p) = parse(&f) {
                ok += 1;
                let _ = p.verify_l4_checksum(&f);
                let _ = p.l4(&f);
            }
            let mut random = vec![0u8; rng.below(128)];
            rng.fill(&mut random);
            let _ = parse(&random).map(|p| p.verify_l4_checksum(&random));
        }
        assert!(ok > 1_000, "mutations should still parse sometimes: {ok}");
    }
}
