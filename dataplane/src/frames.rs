//! Frames in and out of the pipeline: a frame is parsed into a [`Packet`] (a malformed one is counted and
//! dropped, never a panic), and after the verdict an allowed frame is rewritten in place: NAT of addresses
//! and ports with incremental checksum updates (RFC 1624), and TTL / hop-limit decrement for forwarded
//! packets, as the kernel's forwarding path does.

use std::net::{IpAddr, SocketAddr};

use calxdp_policy::resource::Protocol;
use calxdp_policy::verdict::Verdict;

use crate::decision::Decision;
use crate::path::{Port, PortMap, WORKLOAD_GATEWAY_MAC};
use crate::pipeline::Packet;
use calxdp_policy::ids::Tuple;

use crate::wire::checksum::{checksum, fill_l4_checksum, update_addr, update_u16};

use crate::wire::{parse_into, InnerHeader, Parsed, L3};

/// Why an allowed frame could not be sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewriteError {
    /// The TTL or hop limit ran out on a forwarded packet (Linux answers with ICMP time exceeded).
    TtlExceeded,
}

/// Parses a frame that arrived on `port` into a pipeline packet.
pub fn ingest(port: Port, frame: &[u8]) -> (Packet, Option<Parsed>) {
    let (mut packet, mut parsed) = (Packet::EMPTY, None);
    ingest_into(port, frame, &mut packet, &mut parsed);
    (packet, parsed)
}

/// [`ingest`] into a batch's slots: the packet is written in place (`Packet::reset`), not built and moved.
#[inline]
pub fn ingest_into(port: Port, frame: &[u8], packet: &mut Packet, parsed: &mut Option<Parsed>) {
    let p = parsed.get_or_insert(Parsed::EMPTY);
    if let Err(m) = parse_into(frame, p) {
        packet.reset_unparsed(port, Decision::Malformed(m));
        *parsed = None;
        return;
    }
    if p.outer_vlan.is_some_and(|v| v != 0) {
        // Linux drops these before any hook: a VLAN tag with no subinterface for it (a priority tag, id 0,
        // is untagged), and an IPv4 source route (accept_source_route is 0).
        packet.reset_unparsed(port, Decision::VlanTagged);
    } else if p.is_ip() && p.source_routed {
        packet.reset_unparsed(port, Decision::SourceRouted);
    } else if p.is_ip() {
        packet.reset(port, p.header, p.inner.map(|i| Tuple::of(&i.to_packet_header())));
    } else {
        packet.reset_unparsed(port, Decision::NotIp);
    }
}

/// Applies the pipeline's decision to an allowed frame: NAT, TTL, and the MACs of the next hop (where
/// known: configured pod and gateway MACs; an on-link neighbour needs ARP, which the live node does). A
/// dropped frame is left alone.
pub fn rewrite(frame: &mut [u8], parsed: &Parsed, p: &Packet, ports: &PortMap) -> Result<(), RewriteError> {
    if p.verdict != Verdict::Allow || !parsed.is_ip() {
        return Ok(());
    }
    let l3 = parsed.l3_offset;
    let l4 = parsed.l4_offset;
    let h = &parsed.header;
    let forwarded = p.port != Port::Host && !matches!(p.out, Some(Port::Host));
    if forwarded {
        decrement_ttl(frame, parsed.l3, l3)?;
    }
    if p.nat {
        if let Some(dst) = p.translated {
            if dst.ip() != h.dst || (h.has_ports() && dst.port() != h.dst_port) {
                rewrite_endpoint(frame, parsed, l3, l4, false, SocketAddr::new(h.dst, h.dst_port), dst);
            }
        }
        if let Some(src) = p.translated_src {
            if src.ip() != h.src || (h.has_ports() && src.port() != h.src_port) {
                rewrite_endpoint(frame, parsed, l3, l4, true, SocketAddr::new(h.src, h.src_port), src);
            }
        }
        if h.protocol == Protocol::SCTP {
            refresh_sctp_crc(frame, parsed);
        }
    }
    // By reference: the three are over 100 bytes together, and almost every frame has none of them.
    if let (Some(t), Some((ip_at, l4_at, has_l4)), Some(inner)) = (&p.inner_nat, &parsed.inner_at, &parsed.inner) {
        let (ip_at, l4_at, has_l4) = (*ip_at, *l4_at, *has_l4);
        rewrite_quote(frame, parsed.l3, ip_at, l4_at, has_l4, inner, t);
        // The error's own checksum covers the quote: computed again over the whole message.
        let src = p.translated_src.map_or(h.src, |a| a.ip());
        let dst = p.translated.map_or(h.dst, |a| a.ip());
        let end = parsed.l3_end.min(frame.len());
        if end > l4 {
            fill_l4_checksum(src, dst, h.protocol, &mut frame[l4..end]);
        }
    }
    rewrite_macs(frame, p, ports);
    Ok(())
}

/// Puts the packet an ICMP error quotes back as its sender sent it (`to`), where NAT had changed it: the
/// quoted addresses with the quoted IPv4 header checksum, and the quoted ports with the quoted L4 checksum
/// where the quote reaches it (UDP's always, TCP's only when 18 bytes of its header are quoted), as Linux's
/// nf_nat_icmp_reply_translation does. The caller recomputes the error's own checksum.
fn rewrite_quote(frame: &mut [u8], l3: L3, ip_at: usize, l4_at: usize, has_l4: bool, was: &InnerHeader, to: &Tuple) {
    let ports = has_l4 && matches!(was.protocol, Protocol::TCP | Protocol::UDP | Protocol::UDPLITE | Protocol::SCTP);
    let csum_at = match was.protocol {
        Protocol::UDP | Protocol::UDPLITE if has_l4 => Some(l4_at + 6),
        Protocol::TCP if has_l4 && frame.len() >= l4_at + 18 => Some(l4_at + 16),
        _ => None,
    };
    let csum_live =
        csum_at.is_some_and(|o| !(l3 == L3::Ipv4 && was.protocol == Protocol::UDP && frame[o..o + 2] == [0, 0]));
    for (source, old, new) in [(true, was.src, to.src), (false, was.dst, to.dst)] {
        if old == new {
            continue;
        }
        match (l3, old, new) {
            (L3::Ipv4, IpAddr::V4(_), IpAddr::V4(n)) => {
                let at = ip_at + if source { 12 } else { 16 };
                frame[at..at + 4].copy_from_slice(&n.octets());
                let c = u16::from_be_bytes([frame[ip_at + 10], frame[ip_at + 11]]);
                frame[ip_at + 10..ip_at + 12].copy_from_slice(&update_addr(c, old, new).to_be_bytes());
            }
            (L3::Ipv6, IpAddr::V6(_), IpAddr::V6(n)) => {
                let at = ip_at + if source { 8 } else { 24 };
                frame[at..at + 16].copy_from_slice(&n.octets());
            }
            _ => return,
        }
        if let (true, Some(o)) = (csum_live, csum_at) {
            let c = u16::from_be_bytes([frame[o], frame[o + 1]]);
            frame[o..o + 2].copy_from_slice(&update_addr(c, old, new).to_be_bytes());
        }
    }
    if ports {
        for (at, old, new) in [(l4_at, was.src_port, to.src_port), (l4_at + 2, was.dst_port, to.dst_port)] {
            if old == new {
                continue;
            }
            frame[at..at + 2].copy_from_slice(&new.to_be_bytes());
            if let (true, Some(o)) = (csum_live, csum_at) {
                let c = u16::from_be_bytes([frame[o], frame[o + 1]]);
                frame[o..o + 2].copy_from_slice(&update_u16(c, old, new).to_be_bytes());
            }
        }
    }
}

/// Source MAC: the egress port's. Destination MAC: the pod's, the gateway's for off-link destinations,
/// the tap's (the uplink's MAC) for the host.
fn rewrite_macs(frame: &mut [u8], p: &Packet, ports: &PortMap) {
    if frame.len() < 12 {
        return;
    }
    let (src, dst) = match p.out {
        Some(Port::Workload(w)) => (Some(WORKLOAD_GATEWAY_MAC), ports.workload_mac.get(w as usize).copied().flatten()),
        Some(Port::Uplink(u)) => {
            let on_link = p.translated.is_some_and(|d| !ports.is_host_ip(d.ip()) && ports.uplink_on_link(u, d.ip()));
            let gw = if on_link { None } else { ports.gateway_mac.get(u as usize).copied().flatten() };
            (ports.uplink_mac.get(u as usize).copied().flatten(), gw)
        }
        Some(Port::Host) => (None, ports.uplink_mac.first().copied().flatten()),
        None => (None, None),
    };
    if let Some(d) = dst {
        frame[0..6].copy_from_slice(&d);
    }
    if let Some(s) = src {
        frame[6..12].copy_from_slice(&s);
    }
}

/// The ICMP time-exceeded error Linux sends back when a forwarded packet's TTL runs out: from the host's
/// address on the ingress side to the packet's source, quoting its header.
pub fn time_exceeded(parsed: &Parsed, ports: &PortMap) -> Option<Vec<u8>> {
    let h = &parsed.header;
    let from = ports.host_ips.iter().copied().find(|a| a.is_ipv4() == h.src.is_ipv4())?;
    let icmp = if h.src.is_ipv4() { (Protocol::ICMP, 11) } else { (Protocol::ICMPV6, 3) };
    let reply = calxdp_policy::packet::PacketHeader {
        src: from,
        dst: h.src,
        protocol: icmp.0,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        icmp_type: icmp.1,
        icmp_code: 0,
        icmp_id: 0,
    };
    Some(crate::wire::build_icmp_error(&crate::wire::FrameSpec::new(reply), h))
}

fn decrement_ttl(frame: &mut [u8], l3: L3, at: usize) -> Result<(), RewriteError> {
    match l3 {
        L3::Ipv4 => {
            let ttl = frame[at + 8];
            if ttl <= 1 {
                return Err(RewriteError::TtlExceeded);
            }
            // TTL and protocol share one 16-bit word of the header checksum.
            let old = u16::from_be_bytes([ttl, frame[at + 9]]);
            frame[at + 8] = ttl - 1;
            let new = u16::from_be_bytes([ttl - 1, frame[at + 9]]);
            let csum = u16::from_be_bytes([frame[at + 10], frame[at + 11]]);
            frame[at + 10..at + 12].copy_from_slice(&update_u16(csum, old, new).to_be_bytes());
            Ok(())
        }
        L3::Ipv6 => {
            let hops = frame[at + 7];
            if hops <= 1 {
                return Err(RewriteError::TtlExceeded);
            }
            frame[at + 7] = hops - 1;
            Ok(())
        }
        L3::NotIp(_) => Ok(()),
    }
}

/// Where a protocol keeps its checksum in the L4 header, if the pseudo-header covers addresses.
fn l4_checksum_at(protocol: Protocol, l3: L3) -> Option<usize> {
    match (protocol, l3) {
        (Protocol::TCP, _) => Some(16),
        (Protocol::UDP, _) | (Protocol::UDPLITE, _) => Some(6),
        (Protocol::ICMPV6, _) => Some(2),
        _ => None,
    }
}

fn rewrite_endpoint(
    frame: &mut [u8],
    parsed: &Parsed,
    l3: usize,
    l4: usize,
    source: bool,
    old: SocketAddr,
    new: SocketAddr,
) {
    let h = &parsed.header;
    let csum_at = l4_checksum_at(h.protocol, parsed.l3).map(|o| l4 + o).filter(|&o| o + 2 <= frame.len());
    // UDP over IPv4 may carry no checksum (0): it must stay 0.
    let l4_csum_live =
        csum_at.is_some_and(|o| !(h.protocol == Protocol::UDP && parsed.l3 == L3::Ipv4 && frame[o..o + 2] == [0, 0]));
    if old.ip() != new.ip() {
        let (v4_at, v6_at) = if source { (12, 8) } else { (16, 24) };
        match (old.ip(), new.ip()) {
            (IpAddr::V4(_), IpAddr::V4(n)) => {
                frame[l3 + v4_at..l3 + v4_at + 4].copy_from_slice(&n.octets());
                let csum = u16::from_be_bytes([frame[l3 + 10], frame[l3 + 11]]);
                frame[l3 + 10..l3 + 12].copy_from_slice(&update_addr(csum, old.ip(), new.ip()).to_be_bytes());
            }
            (IpAddr::V6(_), IpAddr::V6(n)) => frame[l3 + v6_at..l3 + v6_at + 16].copy_from_slice(&n.octets()),
            // Service NAT never changes the family.
            _ => return,
        }
        if let (true, Some(o)) = (l4_csum_live, csum_at) {
            let csum = u16::from_be_bytes([frame[o], frame[o + 1]]);
            frame[o..o + 2].copy_from_slice(&update_addr(csum, old.ip(), new.ip()).to_be_bytes());
        }
    }
    if h.has_ports() && old.port() != new.port() {
        let at = l4 + if source { 0 } else { 2 };
        frame[at..at + 2].copy_from_slice(&new.port().to_be_bytes());
        if let (true, Some(o)) = (l4_csum_live, csum_at) {
            let csum = u16::from_be_bytes([frame[o], frame[o + 1]]);
            frame[o..o + 2].copy_from_slice(&update_u16(csum, old.port(), new.port()).to_be_bytes());
        }
    }
}

/// SCTP's CRC32c covers the whole packet, not a pseudo-header: recompute it after ports change.
fn refresh_sctp_crc(frame: &mut [u8], parsed: &Parsed) {
    let (l4, end) = (parsed.l4_offset, parsed.l3_end.min(frame.len()));
    if end > l4 {
        fill_l4_checksum(parsed.header.src, parsed.header.dst, Protocol::SCTP, &mut frame[l4..end]);
    }
}

/// Whether an IPv4 header's checksum is valid (for tests and the parity runner).
pub fn ipv4_header_ok(frame: &[u8], parsed: &Parsed) -> bool {
    if parsed.l3 != L3::Ipv4 {
        return true;
    }
    let ihl = ((frame[parsed.l3_offset] & 0x0f) as usize) * 4;
    checksum(&frame[parsed.l3_offset..parsed.l3_offset + ihl]) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;
    use crate::wire::FrameSpec;
    use calxdp_policy::packet::{tcp_flags, PacketHeader};

    fn ports() -> PortMap {
        PortMap {
            host_ips: vec!["10.0.0.1".parse().unwrap()],
            uplink_mac: vec![Some([2, 0, 0, 0, 0, 1])],
            gateway_mac: vec![Some([2, 0, 0, 0, 0, 0xfe])],
            workload_mac: vec![Some([0x0a, 0x58, 0, 0, 0, 5])],
            uplink_nets: vec![vec!["10.0.0.0/24".parse().unwrap()]],
            ..PortMap::default()
        }
    }

    fn allowed(port: Port, out: Port, frame: &[u8]) -> (Packet, Parsed) {
        let (mut p, parsed) = ingest(port, frame);
        p.verdict = Verdict::Allow;
        p.out = Some(out);
        (p, parsed.unwrap())
    }

    fn syn(src: &str, dst: &str) -> PacketHeader {
        PacketHeader {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: Protocol::TCP,
            src_port: 40000,
            dst_port: 443,
            tcp_flags: tcp_flags::SYN,
            icmp_type: 0,
            icmp_code: 0,
            icmp_id: 0,
        }
    }

    #[test]
    fn forwarding_rewrites_macs_and_decrements_ttl() {
        let mut frame = FrameSpec::new(syn("192.168.1.10", "8.8.8.8")).build();
        let (p, parsed) = allowed(Port::Workload(0), Port::Uplink(0), &frame);
        rewrite(&mut frame, &parsed, &p, &ports()).unwrap();
        assert_eq!(&frame[0..6], &[2, 0, 0, 0, 0, 0xfe], "off-link: to the gateway");
        assert_eq!(&frame[6..12], &[2, 0, 0, 0, 0, 1], "from the uplink");
        let out = parse(&frame).unwrap();
        assert_eq!(frame[out.l3_offset + 8], 63);
        assert!(ipv4_header_ok(&frame, &out) && out.verify_l4_checksum(&frame));

        let mut to_pod = FrameSpec::new(syn("8.8.8.8", "192.168.1.10")).build();
        let (p, parsed) = allowed(Port::Uplink(0), Port::Workload(0), &to_pod);
        rewrite(&mut to_pod, &parsed, &p, &ports()).unwrap();
        assert_eq!(&to_pod[0..6], &[0x0a, 0x58, 0, 0, 0, 5]);
        assert_eq!(&to_pod[6..12], &WORKLOAD_GATEWAY_MAC);
    }

    #[test]
    fn expiring_ttl_is_refused_and_answered() {
        let mut spec = FrameSpec::new(syn("203.0.113.5", "192.168.1.10"));
        spec.ttl = 1;
        let mut frame = spec.build();
        let (p, parsed) = allowed(Port::Uplink(0), Port::Workload(0), &frame);
        assert_eq!(rewrite(&mut frame, &parsed, &p, &ports()), Err(RewriteError::TtlExceeded));
        let icmp = time_exceeded(&parsed, &ports()).unwrap();
        let answer = parse(&icmp).unwrap();
        assert_eq!((answer.header.icmp_type, answer.header.dst), (11, "203.0.113.5".parse().unwrap()));
        assert_eq!(answer.inner.map(|i| i.dst_port), Some(443), "it quotes the expired packet");
        // Delivered to the host, a TTL of 1 is fine.
        let (p, parsed) = allowed(Port::Uplink(0), Port::Host, &frame);
        assert_eq!(rewrite(&mut frame, &parsed, &p, &ports()), Ok(()));
    }

    /// A backend's port-unreachable about a DNATed UDP flow, on its way back to the client: the outer source
    /// becomes the service address and the quote becomes the packet the client sent (to the service), with
    /// every checksum valid, as Linux's NAT translates it.
    #[test]
    fn an_icmp_error_about_a_translated_flow_is_translated_inside_and_out() {
        let client: IpAddr = "192.168.1.11".parse().unwrap();
        let backend: IpAddr = "192.168.1.10".parse().unwrap();
        let vip: IpAddr = "10.96.0.10".parse().unwrap();
        let sent = PacketHeader {
            src: client,
            dst: backend,
            protocol: Protocol::UDP,
            src_port: 5353,
            dst_port: 53,
            ..PacketHeader::EMPTY
        };
        let error = PacketHeader {
            src: backend,
            dst: client,
            protocol: Protocol::ICMP,
            icmp_type: 3,
            icmp_code: 3,
            ..PacketHeader::EMPTY
        };
        let mut frame = crate::wire::build_icmp_error(&FrameSpec::new(error), &sent);
        let (mut p, parsed) = allowed(Port::Workload(0), Port::Workload(0), &frame);
        p.translated = Some(SocketAddr::new(client, 0));
        p.translated_src = Some(SocketAddr::new(vip, 0));
        p.nat = true;
        p.inner_nat = Some(Tuple { src: client, dst: vip, protocol: Protocol::UDP, src_port: 5353, dst_port: 80 });
        rewrite(&mut frame, &parsed, &p, &ports()).unwrap();
        let out = parse(&frame).expect("the translated error parses");
        assert!(ipv4_header_ok(&frame, &out) && out.verify_l4_checksum(&frame), "outer checksums");
        assert_eq!((out.header.src, out.header.dst), (vip, client));
        let inner = out.inner.unwrap();
        assert_eq!((inner.src, inner.src_port, inner.dst, inner.dst_port), (client, 5353, vip, 80));
        let (ip_at, _, _) = out.inner_at.unwrap();
        assert_eq!(checksum(&frame[ip_at..ip_at + 20]), 0, "the quoted IPv4 header's checksum");
    }

    fn udp() -> PacketHeader {
        PacketHeader {
            src: "10.0.0.9".parse().unwrap(),
            dst: "192.168.1.10".parse().unwrap(),
            protocol: Protocol::UDP,
            src_port: 4000,
            dst_port: 53,
            ..PacketHeader::EMPTY
        }
    }

    /// Linux drops a tagged frame on an interface without a VLAN subinterface; a priority tag (id 0) is
    /// untagged.
    #[test]
    fn vlan_tagged_frames_are_dropped_as_linux_drops_them_but_priority_tagged_ones_are_not() {
        let mut spec = FrameSpec::new(udp());
        spec.vlan = Some(42);
        let (p, _) = ingest(Port::Uplink(0), &spec.build());
        assert_eq!(p.decision, Decision::VlanTagged);
        spec.vlan = Some(0);
        let (p, _) = ingest(Port::Uplink(0), &spec.build());
        assert_eq!(p.header, udp(), "a priority-tagged frame is an ordinary packet");
    }

    #[test]
    fn ipv4_source_routed_packets_are_dropped_and_other_options_pass() {
        let frame = FrameSpec::new(udp()).build();
        let with = |options: &[u8]| {
            let mut f = frame[..34].to_vec();
            f.extend_from_slice(options);
            f.extend_from_slice(&frame[34..]);
            f[14] = 0x45 + (options.len() / 4) as u8;
            let total = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f[24..26].copy_from_slice(&[0, 0]);
            let c = checksum(&f[14..14 + 20 + options.len()]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        };
        // Loose and strict source route (one hop each), then record route and a no-op list.
        for (options, routed) in [
            (&[131u8, 7, 4, 10, 0, 0, 1, 0][..], true),
            (&[137, 7, 4, 10, 0, 0, 1, 0][..], true),
            (&[7, 7, 4, 0, 0, 0, 0, 0][..], false),
            (&[1, 1, 1, 0][..], false),
        ] {
            let (p, _) = ingest(Port::Uplink(0), &with(options));
            assert_eq!(p.decision == Decision::SourceRouted, routed, "options {options:?}");
        }
    }
}
