//! The hosts at the far end of a node's interfaces, as the test harnesses play them (the pipeline and live
//! parity levels, `replay`): whoever the dataplane asks for by ARP or neighbour solicitation answers, with a
//! MAC made from its own address, so next hops resolve as they would on a real wire.

use std::net::IpAddr;

use calxdp_dataplane::{arp, ndp};

/// The MAC a wire host with address `ip` answers with: 02:cc and the address's last four bytes.
pub fn mac_of(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let b = a.octets();
            [b[12], b[13], b[14], b[15]]
        }
    };
    [0x02, 0xcc, o[0], o[1], o[2], o[3]]
}

/// The answer to `frame` if it is an ARP request or a neighbour solicitation (not for duplicate address
/// detection); `None` for anything else.
pub fn answer(frame: &[u8]) -> Option<Vec<u8>> {
    let mut out = [0u8; 128];
    if let Some(req) = arp::parse(frame).filter(|a| a.request) {
        let n = arp::reply(&req, mac_of(IpAddr::V4(req.target_ip)), &mut out);
        return Some(out[..n].to_vec());
    }
    let ns = ndp::parse_solicitation(frame).filter(|ns| !ns.source.is_unspecified())?;
    let n = ndp::advertisement(&ns, mac_of(IpAddr::V6(ns.target)), &mut out);
    Some(out[..n].to_vec())
}

/// Whether a frame is neighbour resolution traffic (ARP, or ICMPv6 router and neighbour discovery), which
/// a harness looking for a step's frame passes over.
pub fn is_resolution(frame: &[u8]) -> bool {
    if arp::ethertype(frame) == Some(arp::ETHERTYPE_ARP) {
        return true;
    }
    frame.len() > 54 && frame[12..14] == [0x86, 0xdd] && frame[20] == 58 && (133..=136).contains(&frame[54])
}

/// Whether `frame` is a port unreachable (ICMP 3/3, ICMPv6 1/4) about `pkt`, going back to its sender: the
/// node's answer to a frame Felix's Reject deny action refused.
pub fn answers(frame: &[u8], pkt: &calxdp_policy::packet::PacketHeader) -> bool {
    use calxdp_policy::ids::Tuple;
    let Ok(p) = calxdp_dataplane::wire::parse(frame) else { return false };
    is_unreachable(frame)
        && p.header.dst == pkt.src
        && p.inner.is_some_and(|i| Tuple::of(&i.to_packet_header()) == Tuple::of(pkt))
}

/// Whether `frame` is a port unreachable (ICMP 3/3, ICMPv6 1/4). An answer can leave translated (conntrack
/// finds it RELATED to a NATed flow), so a harness that knows the dataplane answered a dropped frame takes
/// any port unreachable it sent as the answer.
pub fn is_unreachable(frame: &[u8]) -> bool {
    use calxdp_policy::resource::Protocol;
    let Ok(p) = calxdp_dataplane::wire::parse(frame) else { return false };
    let h = &p.header;
    matches!((h.protocol, h.icmp_type, h.icmp_code), (Protocol::ICMP, 3, 3) | (Protocol::ICMPV6, 1, 4))
}
