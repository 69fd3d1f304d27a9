//! Builds frames from a [`PacketHeader`]: for tests and the parity runner, which describe packets by
//! their summary and need real frames to push through the pipeline.
//!
//! A built frame is valid in every way [`parse`](super::parse) and the checksum checks look at: lengths,
//! IPv4 header checksum, L4 checksum. Its payload is a fixed byte pattern, so two builds of one spec are
//! identical. It is not padded to Ethernet's 60-byte minimum (AF_XDP's TX does not need it, and tests of
//! padding add it themselves).
//!
//! What is built per protocol: TCP (20-byte header, the spec's flags), UDP, UDP-Lite (full coverage),
//! SCTP (common header, then the payload as if chunks), ICMP over IPv4 and ICMPv6 over IPv6 (echo
//! identifier for echo request and reply; for errors, a quoted packet). Any other protocol gets the IP
//! header and the payload.
//!
//! Round trip: `parse(&build(&spec))?.header == spec.header` for a header whose fields are those the
//! protocol has (ports only with ports, flags only with TCP, ICMP fields only with ICMP of the header's
//! family, identifier only with echo).

use std::net::IpAddr;

use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resource::Protocol;

use super::checksum;
use super::ethernet::{self, MacAddr};
use super::icmp::{self, IcmpPacket};
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};
use super::sctp::{self, SctpPacket};
use super::tcp::{self, TcpPacket};
use super::udp::{self, UdpPacket};

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// One 802.1Q tag with this VLAN id.
    pub vlan: Option<u16>,
    /// Addresses (one family), protocol, and the L4 fields the protocol has.
    pub header: PacketHeader,
    /// Bytes after the L4 header (after the IP header for protocols without one; of the quoted packet's
    /// payload for ICMP errors).
    pub payload_len: usize,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
}

impl FrameSpec {
    /// A spec with locally administered MACs (02:00:00:00:00:01 to …:02), no VLAN, no payload, TTL 64.
    pub fn new(header: PacketHeader) -> FrameSpec {
        FrameSpec {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            header,
            payload_len: 0,
            ttl: 64,
        }
    }

    /// [`build`] this spec.
    pub fn build(&self) -> Vec<u8> {
        build(self)
    }
}

/// Builds the frame `spec` describes.
///
/// For an ICMP error type, the quoted packet is a UDP packet (ports 0) from the error's destination back
/// to its source, as a destination's "port unreachable" would quote; [`build_icmp_error`] chooses it.
///
/// # Panics
/// If the header's source and destination are of different families, or the packet is longer than its IP
/// length field can say.
pub fn build(spec: &FrameSpec) -> Vec<u8> {
    let h = &spec.header;
    let quoted = PacketHeader { src: h.dst, dst: h.src, protocol: Protocol::UDP, ..PacketHeader::EMPTY };
    frame(spec, h.is_icmp_error().then_some(&quoted))
}

/// Builds an ICMP error frame (`spec.header` an ICMP or ICMPv6 error type) that quotes the packet `quoted`
/// describes: its IP header and L4 header, then `spec.payload_len` bytes of its payload.
///
/// # Panics
/// As [`build`]; also if `quoted` is of another family than `spec.header`.
pub fn build_icmp_error(spec: &FrameSpec, quoted: &PacketHeader) -> Vec<u8> {
    assert_eq!(spec.header.family(), quoted.family(), "an ICMP error quotes a packet of its own family");
    frame(spec, Some(quoted))
}

fn frame(spec: &FrameSpec, quoted: Option<&PacketHeader>) -> Vec<u8> {
    let ip = ip_packet(&spec.header, spec.payload_len, spec.ttl, quoted);
    let vlans = spec.vlan.as_slice();
    let ethertype = if spec.header.src.is_ipv4() { ethernet::ethertype::IPV4 } else { ethernet::ethertype::IPV6 };
    let mut frame = vec![0u8; ethernet::header_len_with_tags(vlans.len()) + ip.len()];
    let at = ethernet::write_header(&mut frame, spec.dst_mac, spec.src_mac, vlans, ethertype);
    frame[at..].copy_from_slice(&ip);
    frame
}

/// The payload pattern: not all zeros, so that checksums over it are not trivial.
fn payload(len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
}

/// An IP packet: header, L4 header with a valid checksum, payload.
fn ip_packet(h: &PacketHeader, payload_len: usize, ttl: u8, quoted: Option<&PacketHeader>) -> Vec<u8> {
    let mut segment = l4_segment(h, payload_len, ttl, quoted);
    checksum::fill_l4_checksum(h.src, h.dst, h.protocol, &mut segment);
    match (h.src, h.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = ipv4::HEADER_LEN + segment.len();
            let mut buf = vec![0u8; total];
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.set_version(4);
            ip.set_header_len(ipv4::HEADER_LEN);
            ip.set_total_len(u16::try_from(total).expect("IPv4 packet longer than 65535 bytes"));
            ip.set_fragment(true, false, 0);
            ip.set_ttl(ttl);
            ip.set_protocol(h.protocol);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.payload_mut().copy_from_slice(&segment);
            ip.fill_checksum();
            buf
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut buf = vec![0u8; ipv6::HEADER_LEN + segment.len()];
            let mut ip = Ipv6Packet::new_unchecked(&mut buf[..]);
            ip.set_version_tc_flow(0, 0);
            ip.set_payload_len(u16::try_from(segment.len()).expect("IPv6 payload longer than 65535 bytes"));
            ip.set_next_header(h.protocol.0);
            ip.set_hop_limit(ttl);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.payload_mut().copy_from_slice(&segment);
            buf
        }
        (src, dst) => panic!("source {src} and destination {dst} are of different families"),
    }
}

/// The L4 header and payload, checksum field zero.
fn l4_segment(h: &PacketHeader, payload_len: usize, ttl: u8, quoted: Option<&PacketHeader>) -> Vec<u8> {
    let icmp_protocol = if h.src.is_ipv4() { Protocol::ICMP } else { Protocol::ICMPV6 };
    let header_len = match h.protocol {
        Protocol::TCP => tcp::HEADER_LEN,
        Protocol::UDP | Protocol::UDPLITE => udp::HEADER_LEN,
        Protocol::SCTP => sctp::HEADER_LEN,
        p if p == icmp_protocol => icmp::HEADER_LEN,
        _ => 0,
    };
    let body: Vec<u8> = match quoted {
        Some(q) if h.protocol == icmp_protocol => ip_packet(q, payload_len, ttl, None),
        _ => payload(payload_len).collect(),
    };
    let mut segment = vec![0u8; header_len];
    segment.extend_from_slice(&body);
    match h.protocol {
        Protocol::TCP => {
            let mut t = TcpPacket::new_unchecked(&mut segment[..]);
            t.set_src_port(h.src_port);
            t.set_dst_port(h.dst_port);
            t.set_seq_number(0x0100_0000);
            t.set_ack_number(if h.tcp_flags & calxdp_policy::packet::tcp_flags::ACK != 0 { 0x0200_0000 } else { 0 });
            t.set_header_len(tcp::HEADER_LEN);
            t.set_flags(h.tcp_flags);
            t.set_window_len(65535);
        }
        Protocol::UDP | Protocol::UDPLITE => {
            let len = segment.len();
            let mut u = UdpPacket::new_unchecked(&mut segment[..]);
            u.set_src_port(h.src_port);
            u.set_dst_port(h.dst_port);
            // UDP: the datagram length. UDP-Lite: coverage 0, the whole datagram (RFC 3828 §3.1).
            let field = if h.protocol == Protocol::UDP { len } else { 0 };
            u.set_len(u16::try_from(field).expect("UDP datagram longer than 65535 bytes"));
        }
        Protocol::SCTP => {
            let mut s = SctpPacket::new_unchecked(&mut segment[..]);
            s.set_src_port(h.src_port);
            s.set_dst_port(h.dst_port);
            s.set_verification_tag(0x5c7d_0001);
        }
        p if p == icmp_protocol => {
            let family = h.family();
            let mut m = IcmpPacket::new_unchecked(&mut segment[..]);
            m.set_msg_type(h.icmp_type);
            m.set_msg_code(h.icmp_code);
            if icmp::is_echo(family, h.icmp_type) {
                m.set_echo_ident(h.icmp_id);
                m.set_echo_seq_no(1);
            }
        }
        _ => {}
    }
    segment
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use calxdp_policy::packet::tcp_flags;

    use super::*;
    use crate::wire::{parse, L3};

    fn all_headers() -> Vec<PacketHeader> {
        let pairs = [
            (IpAddr::from([10, 65, 0, 1]), IpAddr::from([10, 65, 0, 2])),
            (IpAddr::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)), IpAddr::from(Ipv6Addr::LOCALHOST)),
        ];
        let mut out = Vec::new();
        for (src, dst) in pairs {
            let base = PacketHeader { src, dst, ..PacketHeader::EMPTY };
            let ports = PacketHeader { src_port: 33333, dst_port: 8080, ..base };
            for flags in [tcp_flags::SYN, tcp_flags::SYN | tcp_flags::ACK, tcp_flags::RST, 0, 0xff] {
                out.push(PacketHeader { protocol: Protocol::TCP, tcp_flags: flags, ..ports });
            }
            for p in [Protocol::UDP, Protocol::SCTP, Protocol::UDPLITE] {
                out.push(PacketHeader { protocol: p, ..ports });
            }
            let (icmp, echo, reply, error) = if src.is_ipv4() {
                (Protocol::ICMP, 8, 0, [3, 4, 5, 11, 12])
            } else {
                (Protocol::ICMPV6, 128, 129, [1, 2, 3, 4, 4])
            };
            for t in [echo, reply] {
                out.push(PacketHeader { protocol: icmp, icmp_type: t, icmp_id: 0xbeef, ..base });
            }
            for t in error {
                out.push(PacketHeader { protocol: icmp, icmp_type: t, icmp_code: 1, ..base });
            }
            out.push(PacketHeader { protocol: icmp, icmp_type: 133, ..base }); // v4: unassigned; v6: RS
            out.push(PacketHeader { protocol: Protocol(47), ..base });
            out.push(PacketHeader { protocol: Protocol(ipv6::next_header::ESP), ..base });
        }
        out
    }

    #[test]
    fn build_then_parse_gives_the_same_header() {
        for header in all_headers() {
            for vlan in [None, Some(4094)] {
                for payload_len in [0, 1, 13, 200] {
                    let spec = FrameSpec { vlan, payload_len, ttl: 3, ..FrameSpec::new(header) };
                    let frame = build(&spec);
                    let p = parse(&frame).unwrap_or_else(|e| panic!("{header:?}: {e}"));
                    assert_eq!(p.header, header);
                    assert_eq!(p.outer_vlan, vlan);
                    assert_eq!(p.l3, if header.src.is_ipv4() { L3::Ipv4 } else { L3::Ipv6 });
                    assert_eq!(p.l3_end, frame.len());
                    assert_eq!(p.inner.is_some(), header.is_icmp_error());
                    assert!(p.verify_l4_checksum(&frame), "{header:?}");
                    let ttl_at = p.l3_offset + if header.src.is_ipv4() { 8 } else { 7 };
                    assert_eq!(frame[ttl_at], 3);
                }
            }
        }
    }

    #[test]
    fn icmp_error_quotes_what_it_is_given() {
        for header in all_headers().into_iter().filter(|h| h.is_icmp_error()) {
            for quoted in all_headers().into_iter().filter(|q| q.family() == header.family()) {
                let frame = build_icmp_error(&FrameSpec::new(header), &quoted);
                let p = parse(&frame).unwrap_or_else(|e| panic!("{header:?} quoting {quoted:?}: {e}"));
                let inner = p.inner.unwrap().to_packet_header();
                // The quote's first 8 bytes do not reach TCP's flags.
                assert_eq!(inner, PacketHeader { tcp_flags: 0, ..quoted });
                assert!(p.verify_l4_checksum(&frame));
            }
        }
    }

    #[test]
    #[should_panic(expected = "different families")]
    fn mixed_families_panic() {
        let mut h = all_headers()[0];
        h.dst = IpAddr::from(Ipv6Addr::LOCALHOST);
        build(&FrameSpec::new(h));
    }
}
