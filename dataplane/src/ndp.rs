//! IPv6 neighbour discovery on the live node: the IPv6 twin of the proxy ARP in `arp.rs`. A pod's
//! default route points at a link-local gateway on its veth (Calico: fe80::ecee:eeff:feee:eeee), so the
//! dataplane answers a pod's neighbour solicitation for any target with the veth's MAC, as the host side
//! of a Calico veth does; and it answers the host's solicitation for a local pod's address (the host routes
//! pods through the tap).

use std::net::{IpAddr, Ipv6Addr};

use calxdp_policy::resource::Protocol;

use crate::wire::checksum::fill_l4_checksum;

const ETHERTYPE_IPV6: u16 = 0x86dd;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Ethernet + IPv6 + the advertisement with its target link-layer address option.
const NA_FRAME_LEN: usize = 14 + 40 + 32;

/// A neighbour solicitation: who asks, from which address, for which target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Solicitation {
    pub sender_mac: [u8; 6],
    pub source: Ipv6Addr,
    pub target: Ipv6Addr,
}

/// Parses an untagged frame holding a valid neighbour solicitation (hop limit 255, RFC 4861 §7.1.1).
pub fn parse_solicitation(frame: &[u8]) -> Option<Solicitation> {
    if frame.len() < 14 + 40 + 24 || frame[12..14] != ETHERTYPE_IPV6.to_be_bytes() {
        return None;
    }
    let ip = &frame[14..54];
    if ip[0] >> 4 != 6 || ip[6] != 58 || ip[7] != 255 {
        return None;
    }
    let icmp = &frame[54..];
    if icmp[0] != NEIGHBOUR_SOLICITATION || icmp[1] != 0 {
        return None;
    }
    let mut sender_mac = [0; 6];
    sender_mac.copy_from_slice(&frame[6..12]);
    let addr = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
    Some(Solicitation { sender_mac, source: addr(&ip[8..24]), target: addr(&icmp[8..24]) })
}

/// Writes into `out` the advertisement answering `ns` with `mac` (solicited, override, and router: we are
/// the pod's gateway); returns its length.
pub fn advertisement(ns: &Solicitation, mac: [u8; 6], out: &mut [u8]) -> usize {
    // An unspecified source (duplicate address detection) is answered to all nodes, unsolicited.
    let (dst, solicited) = if ns.source.is_unspecified() {
        ("ff02::1".parse::<Ipv6Addr>().expect("valid"), false)
    } else {
        (ns.source, true)
    };
    let dst_mac = if solicited { ns.sender_mac } else { [0x33, 0x33, 0, 0, 0, 1] };
    let f = &mut out[..NA_FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&32u16.to_be_bytes());
    ip[6] = 58;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&ns.target.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    let icmp = &mut f[54..];
    icmp.fill(0);
    icmp[0] = NEIGHBOUR_ADVERTISEMENT;
    icmp[4] = 0x80 | if solicited { 0x40 } else { 0 } | 0x20;
    icmp[8..24].copy_from_slice(&ns.target.octets());
    icmp[24] = 2; // target link-layer address option
    icmp[25] = 1; // length in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    fill_l4_checksum(IpAddr::V6(ns.target), IpAddr::V6(dst), Protocol::ICMPV6, icmp);
    NA_FRAME_LEN
}

/// Ethernet + IPv6 + a solicitation with its source link-layer address option.
const NS_FRAME_LEN: usize = 14 + 40 + 32;

/// The solicited-node multicast address of `target` (RFC 4291 §2.7.1): ff02::1:ff + its low 24 bits.
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let t = target.octets();
    let mut a = [0u8; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[11] = 1;
    a[12] = 0xff;
    a[13..16].copy_from_slice(&t[13..16]);
    Ipv6Addr::from(a)
}

pub use calxdp_policy::net::link_local;

/// Writes into `out` a neighbour solicitation for `target`, as Linux sends one to resolve a next hop: to the
/// target's solicited-node multicast group (and its 33:33:ff MAC), hop limit 255, from `source` (the
/// outgoing interface's link-local) and `mac`, with the source link-layer address option; returns its length.
pub fn solicitation(mac: [u8; 6], source: Ipv6Addr, target: Ipv6Addr, out: &mut [u8]) -> usize {
    let group = solicited_node(target);
    let g = group.octets();
    let f = &mut out[..NS_FRAME_LEN];
    f[0..6].copy_from_slice(&[0x33, 0x33, g[12], g[13], g[14], g[15]]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&32u16.to_be_bytes());
    ip[6] = 58;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&source.octets());
    ip[24..40].copy_from_slice(&g);
    let icmp = &mut f[54..];
    icmp.fill(0);
    icmp[0] = NEIGHBOUR_SOLICITATION;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = 1; // source link-layer address option
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&mac);
    fill_l4_checksum(IpAddr::V6(source), IpAddr::V6(group), Protocol::ICMPV6, icmp);
    NS_FRAME_LEN
}

/// A neighbour advertisement: the target address and the MAC it is at (its target link-layer address
/// option, else the frame's source MAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertisement {
    pub target: Ipv6Addr,
    pub mac: [u8; 6],
}

/// Parses an untagged frame holding a valid neighbour advertisement (hop limit 255, RFC 4861 §7.1.2).
pub fn parse_advertisement(frame: &[u8]) -> Option<Advertisement> {
    if frame.len() < 14 + 40 + 24 || frame[12..14] != ETHERTYPE_IPV6.to_be_bytes() {
        return None;
    }
    let ip = &frame[14..54];
    if ip[0] >> 4 != 6 || ip[6] != 58 || ip[7] != 255 {
        return None;
    }
    let icmp = &frame[54..];
    if icmp[0] != NEIGHBOUR_ADVERTISEMENT || icmp[1] != 0 {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
    let mut mac = [0; 6];
    mac.copy_from_slice(&frame[6..12]);
    let mut opts = &icmp[24..];
    while opts.len() >= 8 && opts[1] != 0 {
        let len = opts[1] as usize * 8;
        if opts.len() < len {
            break;
        }
        if opts[0] == 2 {
            mac.copy_from_slice(&opts[2..8]);
        }
        opts = &opts[len..];
    }
    Some(Advertisement { target, mac })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;

    #[test]
    fn a_solicitation_goes_to_the_solicited_node_group_with_a_valid_checksum() {
        let target: Ipv6Addr = "fd00::1:2:3:abcd".parse().unwrap();
        let source = link_local([0x02, 0, 0, 0, 0, 0x0a]);
        assert_eq!(source, "fe80::ff:fe00:a".parse::<Ipv6Addr>().unwrap());
        let mut out = [0u8; 128];
        let n = super::solicitation([0x02, 0, 0, 0, 0, 0x0a], source, target, &mut out);
        let frame = &out[..n];
        let parsed = parse(frame).expect("the solicitation parses");
        assert!(parsed.verify_l4_checksum(frame), "ICMPv6 checksum");
        assert_eq!(parsed.header.dst, IpAddr::V6("ff02::1:ff03:abcd".parse().unwrap()));
        assert_eq!(&frame[0..6], &[0x33, 0x33, 0xff, 0x03, 0xab, 0xcd]);
        let ns = parse_solicitation(frame).expect("it is a solicitation");
        assert_eq!((ns.source, ns.target), (source, target));
        // Answered (as a host does), the advertisement names the target and its MAC.
        let mut na = [0u8; 128];
        let m = advertisement(&ns, [2, 0xcc, 0, 0, 0, 1], &mut na);
        assert_eq!(parse_advertisement(&na[..m]), Some(Advertisement { target, mac: [2, 0xcc, 0, 0, 0, 1] }));
        assert_eq!(parse_advertisement(frame), None);
    }

    fn solicitation(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let ns = Solicitation { sender_mac: [2, 0, 0, 0, 0, 9], source: src, target };
        // Build a solicitation by hand: an advertisement's layout with the type changed is not valid, so
        // lay it out here.
        let mut f = vec![0u8; 14 + 40 + 24];
        f[0..6].copy_from_slice(&[0x33, 0x33, 0xff, 0, 0, 1]);
        f[6..12].copy_from_slice(&ns.sender_mac);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[18..20].copy_from_slice(&24u16.to_be_bytes());
        f[20] = 58;
        f[21] = 255;
        f[22..38].copy_from_slice(&src.octets());
        f[38..54].copy_from_slice(&"ff02::1:ff00:1".parse::<Ipv6Addr>().unwrap().octets());
        f[54] = NEIGHBOUR_SOLICITATION;
        f[62..78].copy_from_slice(&target.octets());
        let dst = IpAddr::V6("ff02::1:ff00:1".parse().unwrap());
        fill_l4_checksum(IpAddr::V6(src), dst, Protocol::ICMPV6, &mut f[54..]);
        f
    }

    #[test]
    fn a_pod_asking_for_its_gateway_gets_a_valid_solicited_advertisement() {
        let pod: Ipv6Addr = "fd00::10".parse().unwrap();
        let gw: Ipv6Addr = "fe80::ecee:eeff:feee:eeee".parse().unwrap();
        let ns = parse_solicitation(&solicitation(pod, gw)).expect("a solicitation");
        assert_eq!((ns.source, ns.target), (pod, gw));
        let mut out = [0u8; 128];
        let n = advertisement(&ns, [0xee; 6], &mut out);
        let frame = &out[..n];
        let parsed = parse(frame).expect("the advertisement parses");
        assert!(parsed.verify_l4_checksum(frame), "ICMPv6 checksum");
        assert_eq!((parsed.header.src, parsed.header.dst), (IpAddr::V6(gw), IpAddr::V6(pod)));
        assert_eq!(&frame[0..6], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(frame[54], NEIGHBOUR_ADVERTISEMENT);
        assert_eq!(frame[58], 0xe0, "router, solicited, override");
        assert_eq!(&frame[80..86], &[0xee; 6], "the target link-layer address option");
    }

    #[test]
    fn duplicate_address_detection_is_answered_to_all_nodes_and_other_frames_are_not_solicitations() {
        let ns = parse_solicitation(&solicitation(Ipv6Addr::UNSPECIFIED, "fd00::10".parse().unwrap())).unwrap();
        let mut out = [0u8; 128];
        let n = advertisement(&ns, [0xee; 6], &mut out);
        assert_eq!(&out[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(out[58], 0xa0, "router and override, not solicited");
        assert!(parse(&out[..n]).unwrap().verify_l4_checksum(&out[..n]));
        let mut hop_limit_64 = solicitation("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        hop_limit_64[21] = 64;
        assert_eq!(parse_solicitation(&hop_limit_64), None);
        assert_eq!(parse_solicitation(&[0u8; 30]), None);
    }
}
