//! Holds our frame parser (`wire::parse` and the `wire` views) against etherparse's
//! `SlicedPacket::from_ethernet` on the same bytes: where both accept a frame they must agree on every
//! field both read (Ethernet addresses, VLAN ids and ethertype; the IPv4 and IPv6 headers and where the
//! upper layer starts; TCP and UDP ports, TCP flags, ICMP type and code), and where one rejects a frame the
//! other must reject it too, except for the differences by design spelt out one by one below (each names
//! the rule ours follows). Nothing else is ignored.
//!
//! etherparse is the strict slicer, as ours is strict about lengths: `from_ethernet`, not the lax one.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O parse_differential`; to start from a few real
//! frames (TCP, UDP with one and two tags, ICMP echo and error, a first fragment, IPv4 options, IPv6 with
//! hop-by-hop and fragment headers, ARP, padding), add `corpus/parse_differential seeds/parse_differential`.

#![no_main]

use calxdp_dataplane::wire::{self, ethernet, ipv6, EthernetFrame, Ipv4Packet, Ipv6Packet, Malformed, Parsed, L3};
use calxdp_fuzz::with_valid_ipv4_checksum;
use calxdp_policy::resource::Protocol;
use etherparse::err::ip_auth::HeaderError as AuthError;
use etherparse::err::ipv6_exts::HeaderError as Ipv6ExtsError;
use etherparse::err::packet::SliceError;
use etherparse::{LinkExtSlice, LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    compare(data);
    // Ours stops an IPv4 frame at a bad header checksum (etherparse does not check it, see
    // `ours_stricter_by_design`); compare a copy with the checksum made valid too, so that IPv4 inputs
    // reach the comparison of the layers above.
    if let Some(fixed) = with_valid_ipv4_checksum(data) {
        compare(&fixed);
    }
});

fn compare(frame: &[u8]) {
    match (wire::parse(frame), SlicedPacket::from_ethernet(frame)) {
        (Ok(ours), Ok(theirs)) => agree(frame, &ours, &theirs),
        (Ok(ours), Err(e)) => {
            assert!(ours_laxer_by_design(frame, &ours, &e), "ours accepts, etherparse rejects ({e:?}): {ours:?}")
        }
        (Err(m), Ok(theirs)) => {
            assert!(ours_stricter_by_design(frame, m, &theirs), "ours rejects ({m:?}), etherparse accepts: {theirs:?}")
        }
        (Err(_), Err(_)) => {}
    }
}

/// Ours rejects, etherparse accepts: true where that is a deliberate rule of ours.
fn ours_stricter_by_design(frame: &[u8], m: Malformed, theirs: &SlicedPacket<'_>) -> bool {
    match m {
        // etherparse does not verify the IPv4 header checksum; ours does (a corrupt header makes the
        // addresses policy matches on untrustworthy, and Linux's ip_rcv drops it too).
        Malformed::BadIpv4Checksum => true,
        // Ours refuses a third stacked tag (bounded work); etherparse slices up to three link extensions
        // and stops there without error.
        Malformed::TooManyVlanTags => true,
        // Ours needs the L4 header to match ports and track the flow, and a non-first fragment has none
        // (the worker reassembles before parsing); etherparse returns the fragment's payload unparsed.
        Malformed::NonFirstFragment => true,
        // Ours walks at most eight IPv6 extension headers; etherparse has no bound.
        Malformed::TooManyExtensionHeaders => true,
        // Ours checks the packet an ICMP error quotes (conntrack relates the error through it);
        // etherparse does not parse the quote.
        Malformed::TooShortIcmpInner | Malformed::BadIcmpInner => true,
        // An IPv6 payload length of 0 without a jumbo payload option means an empty payload to Linux
        // (ipv6_rcv trims the packet to it) and to ours; etherparse takes the rest of the frame as the
        // payload (for jumbograms), so finds the upper layer ours says is missing.
        Malformed::TooShortExtensionHeader | Malformed::TooShortL4 | Malformed::BadTcpDataOffset
            if ipv6_payload_len_zero(frame) =>
        {
            true
        }
        // A UDP length of 0: ours rejects it as below the 8-byte header (RFC 768; Linux's udp_rcv drops
        // it), etherparse reads 0 as "to the end of the payload" (RFC 2675 jumbograms).
        Malformed::BadUdpLength if udp_length_field(frame, theirs) == Some(0) => true,
        // Ours reads the L4 header of a first fragment (it carries one: ports for policy); etherparse
        // leaves any fragment's payload unparsed, so does not see a short or bad one.
        Malformed::TooShortL4 | Malformed::BadTcpDataOffset | Malformed::BadUdpLength
            if theirs.transport.is_none() && their_payload_fragmented(theirs) =>
        {
            true
        }
        // SCTP and UDP-Lite: ours reads their ports, etherparse does not parse them.
        Malformed::TooShortL4 if their_ip_number(theirs).is_some_and(|p| p == 132 || p == 136) => true,
        _ => false,
    }
}

/// Ours accepts, etherparse rejects: true where that is a deliberate rule of ours.
fn ours_laxer_by_design(frame: &[u8], ours: &Parsed, e: &SliceError) -> bool {
    // An IPv6 authentication header whose length field is 0: etherparse rejects it as shorter than AH's
    // 12-byte fixed part (RFC 4302 §2.2); ours steps over (0 + 2) * 4 = 8 bytes, as Linux's
    // ipv6_skip_exthdr does on the forwarding path (only the AH input of a local IPsec SA checks it).
    // (With fewer than 12 bytes left, etherparse says so as a length error on the AH layer first.)
    let short_auth =
        matches!(e, SliceError::Len(l) if l.layer == etherparse::err::Layer::IpAuthHeader && l.required_len == 12);
    if ours.l3 == L3::Ipv6
        && (short_auth || matches!(e, SliceError::Ipv6Exts(Ipv6ExtsError::IpAuth(AuthError::ZeroPayloadLen))))
    {
        return true;
    }
    match ours.l3 {
        // Not IP to ours (ARP, MACsec, an 802.1ad 0x9100 tag, …): `wire` does not judge these, the
        // pipeline passes or drops them by ethertype (ARP is parsed by `arp`).
        L3::NotIp(_) => true,
        L3::Ipv4 | L3::Ipv6 => {
            let family_icmp = if ours.l3 == L3::Ipv4 { Protocol::ICMP } else { Protocol::ICMPV6 };
            match ours.header.protocol {
                // An IPv4 authentication header: ours does not step over it (policy matches protocol 51,
                // as iptables does), etherparse does and checks it.
                Protocol(51) if ours.l3 == L3::Ipv4 => true,
                // The other family's ICMP (ICMPv6 in IPv4, ICMP in IPv6): an opaque protocol to ours and
                // to Linux, parsed (and needing 8 bytes) by etherparse.
                p @ (Protocol::ICMP | Protocol::ICMPV6) if p != family_icmp => true,
                // ICMP timestamp request and reply (types 13, 14): etherparse insists on their 20-byte
                // body (RFC 792); ours reads an ICMP message's type and code (and an echo's identifier)
                // from its first 8 bytes, whatever the type, as a forwarding firewall does.
                Protocol::ICMP if ours.l3 == L3::Ipv4 && matches!(ours.header.icmp_type, 13 | 14) => true,
                // A UDP datagram whose length field is shorter than the IP payload is fine to both; one
                // whose IPv6 payload length is 0: see `ours_stricter_by_design`.
                _ => ours.l3 == L3::Ipv6 && ipv6_payload_len_zero(frame),
            }
        }
    }
}

/// Both accept: every field both read must agree.
fn agree(frame: &[u8], ours: &Parsed, theirs: &SlicedPacket<'_>) {
    let eth = EthernetFrame::new_checked(frame).expect("parse accepted it");
    let Some(LinkSlice::Ethernet2(link)) = &theirs.link else { panic!("no Ethernet from etherparse: {theirs:?}") };
    assert_eq!((eth.dst_addr(), eth.src_addr()), (link.destination(), link.source()));

    // VLAN tags: ours knows 0x8100 and 0x88a8; etherparse also takes 0x9100 as a tag and steps into
    // MACsec. Up to where ours stops, both see the same tags; past it, ours calls the frame not IP.
    let tags = eth.vlan_count();
    assert!(theirs.link_exts.len() >= tags, "etherparse saw fewer tags: {theirs:?}");
    for (i, ext) in theirs.link_exts.iter().enumerate().take(tags) {
        let LinkExtSlice::Vlan(v) = ext else { panic!("tag {i} is not a VLAN to etherparse: {ext:?}") };
        assert_eq!(Some(v.vlan_identifier().value()), eth.vlan_id(i), "tag {i}");
    }
    if theirs.link_exts.len() > tags {
        assert!(
            matches!(ours.l3, L3::NotIp(0x9100 | 0x88e5)),
            "etherparse went past our last tag into {:04x}",
            ours.ethertype
        );
        return;
    }
    let their_ethertype = match theirs.link_exts.last() {
        Some(LinkExtSlice::Vlan(v)) => v.ether_type().0,
        Some(LinkExtSlice::Macsec(_)) => unreachable!("MACsec is not a tag to ours"),
        None => link.ether_type().0,
    };
    assert_eq!(ours.ethertype, their_ethertype);

    match (ours.l3, &theirs.net) {
        (L3::Ipv4, Some(NetSlice::Ipv4(ip))) => {
            let v = Ipv4Packet::new_checked(&frame[ours.l3_offset..]).expect("parse accepted it");
            let h = ip.header();
            assert_eq!((v.version(), v.header_len()), (h.version(), usize::from(h.ihl()) * 4));
            assert_eq!((v.total_len(), v.ttl(), v.protocol().0), (h.total_len(), h.ttl(), h.protocol().0));
            assert_eq!((v.src_addr(), v.dst_addr()), (h.source_addr(), h.destination_addr()));
            assert_eq!((v.dont_frag(), v.more_frags()), (h.dont_fragment(), h.more_fragments()));
            assert_eq!(v.frag_offset(), h.fragments_offset().value() << 3);
            assert_eq!((ours.header.src, ours.header.dst), (v.src_addr().into(), v.dst_addr().into()));
            assert_eq!(ours.header.protocol, v.protocol());
            assert_eq!(ours.fragmented, h.more_fragments());
            let payload = &ip.payload().payload;
            assert_eq!(offset(frame, payload) + payload.len(), ours.l3_end, "where the packet ends");
            if ip.extensions().auth.is_none() {
                assert_eq!(offset(frame, payload), ours.l4_offset, "where the upper layer starts");
            }
        }
        (L3::Ipv6, Some(NetSlice::Ipv6(ip))) => {
            let v = Ipv6Packet::new_checked(&frame[ours.l3_offset..]).expect("parse accepted it");
            let h = ip.header();
            assert_eq!(
                (v.payload_len(), v.next_header(), v.hop_limit()),
                (h.payload_length(), h.next_header().0, h.hop_limit())
            );
            assert_eq!((v.src_addr(), v.dst_addr()), (h.source_addr(), h.destination_addr()));
            assert_eq!((ours.header.src, ours.header.dst), (v.src_addr().into(), v.dst_addr().into()));
            if v.payload_len() == 0 && frame.len() > ours.l3_offset + ipv6::HEADER_LEN {
                // Empty to ours, the rest of the frame to etherparse: see `ours_stricter_by_design`.
                return;
            }
            let chain = v.extension_headers().expect("parse accepted it");
            let payload = ip.payload();
            assert_eq!(ours.header.protocol.0, payload.ip_number.0, "the upper-layer protocol");
            assert_eq!(offset(frame, payload.payload), ours.l4_offset, "where the upper layer starts");
            assert_eq!(offset(frame, payload.payload) + payload.payload.len(), ours.l3_end, "where the packet ends");
            assert_eq!(chain.count, ip.extensions().clone().into_iter().count(), "extension headers");
            // Ours keeps the last fragment header of the chain (a first fragment's may be followed by
            // another one of an inner fragmentation); so does this.
            let their_fragment = ip
                .extensions()
                .clone()
                .into_iter()
                .filter_map(|e| match e {
                    etherparse::Ipv6ExtensionSlice::Fragment(f) => Some(f),
                    _ => None,
                })
                .last();
            match (chain.fragment, their_fragment) {
                (None, None) => {}
                (Some(f), Some(t)) => {
                    // etherparse 0.19 decodes the offset/M word of the IPv6 fragment header in the IPv4
                    // layout (M in the top bit, the offset's low bits at the bottom), where RFC 8200 §4.5
                    // puts the 13-bit offset in the top bits and M in the lowest; ours follows the RFC.
                    // So the fields are compared as the RFC lays them out, in the header etherparse
                    // found, and etherparse's own accessors are not used.
                    let raw = t.slice();
                    let off_m = u16::from_be_bytes([raw[2], raw[3]]);
                    let ident = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
                    assert_eq!((f.offset, f.more, f.ident), (off_m & 0xfff8, off_m & 1 != 0, ident), "fragment header");
                }
                (f, t) => panic!("fragment header: ours {f:?}, etherparse {t:?}"),
            }
        }
        (L3::NotIp(_), None | Some(NetSlice::Arp(_))) => return,
        (l3, net) => panic!("ours {l3:?}, etherparse {net:?}"),
    }

    let h = &ours.header;
    if ours.l3 == L3::Ipv4 && h.protocol == Protocol(51) {
        // etherparse's transport is what follows an IPv4 authentication header, which ours does not step
        // over (`ours_laxer_by_design`): nothing both read.
        return;
    }
    match &theirs.transport {
        Some(TransportSlice::Tcp(t)) => {
            assert_eq!(h.protocol, Protocol::TCP);
            assert_eq!((h.src_port, h.dst_port), (t.source_port(), t.destination_port()));
            let flags = [t.fin(), t.syn(), t.rst(), t.psh(), t.ack(), t.urg(), t.ece(), t.cwr()]
                .iter()
                .enumerate()
                .fold(0u8, |f, (bit, set)| f | (u8::from(*set) << bit));
            assert_eq!(h.tcp_flags, flags, "TCP flags");
        }
        Some(TransportSlice::Udp(u)) => {
            assert_eq!(h.protocol, Protocol::UDP);
            assert_eq!((h.src_port, h.dst_port), (u.source_port(), u.destination_port()));
        }
        // ICMP of the packet's own family; the other family's is opaque to ours (`ours_laxer_by_design`).
        Some(TransportSlice::Icmpv4(i)) if ours.l3 == L3::Ipv4 => {
            assert_eq!((h.protocol, h.icmp_type, h.icmp_code), (Protocol::ICMP, i.type_u8(), i.code_u8()));
        }
        Some(TransportSlice::Icmpv6(i)) if ours.l3 == L3::Ipv6 => {
            assert_eq!((h.protocol, h.icmp_type, h.icmp_code), (Protocol::ICMPV6, i.type_u8(), i.code_u8()));
        }
        Some(TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_)) => {
            assert_eq!((h.icmp_type, h.icmp_code, h.src_port, h.dst_port), (0, 0, 0, 0));
        }
        None => {
            // etherparse parses no fragment's payload (ours reads a first fragment's L4 header), and
            // nothing past an IPv4 authentication header that ours does not step over.
            let skipped = their_payload_fragmented(theirs) || (ours.l3 == L3::Ipv4 && h.protocol == Protocol(51));
            assert!(
                skipped || !matches!(h.protocol, Protocol::TCP | Protocol::UDP),
                "ours read {:?}, etherparse no transport",
                h.protocol
            );
        }
    }
}

/// Where `part` (a subslice of `frame`) starts in it.
fn offset(frame: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - frame.as_ptr() as usize
}

fn their_payload_fragmented(theirs: &SlicedPacket<'_>) -> bool {
    match &theirs.net {
        Some(NetSlice::Ipv4(ip)) => ip.payload().fragmented,
        Some(NetSlice::Ipv6(ip)) => ip.payload().fragmented,
        _ => false,
    }
}

fn their_ip_number(theirs: &SlicedPacket<'_>) -> Option<u8> {
    match &theirs.net {
        Some(NetSlice::Ipv4(ip)) => Some(ip.payload().ip_number.0),
        Some(NetSlice::Ipv6(ip)) => Some(ip.payload().ip_number.0),
        _ => None,
    }
}

/// The UDP length field of the datagram etherparse found the IP payload to start with, if UDP.
fn udp_length_field(_frame: &[u8], theirs: &SlicedPacket<'_>) -> Option<u16> {
    let payload = match &theirs.net {
        Some(NetSlice::Ipv4(ip)) if ip.payload().ip_number.0 == 17 => ip.payload().payload,
        Some(NetSlice::Ipv6(ip)) if ip.payload().ip_number.0 == 17 => ip.payload().payload,
        _ => return None,
    };
    payload.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Whether the frame is IPv6 (after any tags ours knows) with a payload length of 0 and bytes after the
/// fixed header.
fn ipv6_payload_len_zero(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return false };
    let ip = eth.payload();
    eth.ethertype() == ethernet::ethertype::IPV6 && ip.len() > ipv6::HEADER_LEN && ip[0] >> 4 == 6 && ip[4..6] == [0, 0]
}
