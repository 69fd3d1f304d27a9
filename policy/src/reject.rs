//! Felix's `Reject` deny action as the kernel's REJECT target carries it out (notes on Felix's
//! `rules/rule_defs.go`: a bare `--jump REJECT`, whose default answer is ICMP port unreachable for IPv4 and
//! ICMPv6 port unreachable for IPv6, TCP included).
//!
//! The answer is an ICMP error the host sends: the kernel sends none about an ICMP error, to or from a
//! broadcast or multicast address, or from an unspecified source; it rate-limits what it sends (a global
//! bucket, and one per destination except to the host itself). The answer carries the refused packet's
//! conntrack entry (`icmp_glue_bits` attaches it), so it is RELATED wherever a chain asks, and NAT makes it
//! look like a reply to the packet as its sender sent it; a packet conntrack called INVALID has no entry
//! to attach, and its answer is looked up like any ICMP error (INVALID too, unless it quotes a flow
//! conntrack knows). It then leaves through the host's OUTPUT path like any packet the host sends. That
//! path is the callers' (the reference's hooks, the pipeline's stages); the rest is here, shared by both.

use std::net::IpAddr;

use crate::limit::Rate;
use crate::node::NodeConfig;
use crate::packet::PacketHeader;
use crate::resource::Protocol;

/// The link-local address of the host side of every pod veth (Calico: fe80::ecee:eeff:feee:eeee).
pub const WORKLOAD_GATEWAY_LL: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// `net.ipv4.icmp_msgs_per_sec` 1000 and `icmp_msgs_burst` 50: the host's global bucket of ICMP errors.
pub const GLOBAL: Rate = Rate { interval: 1_000_000, burst: 50 };
/// `net.ipv4.icmp_ratelimit` (and `icmpv6.ratelimit`) one second, with the inet_peer burst of 6.
const PEER_INTERVAL: u64 = 1_000_000_000;
const PEER_BURST: u64 = 6;

/// Whether the kernel answers `pkt` at all (`icmp_send` / `icmp6_send`): not an ICMP message the kernel
/// counts as an error (IPv4: every type but the queries and replies 0, 8 and 13-18, its `icmp_pointers`
/// table; IPv6: types below 128, and redirects), not to or from a broadcast or multicast address, not from
/// an unspecified address.
pub fn eligible(pkt: &PacketHeader, node: &NodeConfig) -> bool {
    let error = match pkt.protocol {
        Protocol::ICMP => !matches!(pkt.icmp_type, 0 | 8 | 13..=18),
        Protocol::ICMPV6 => pkt.icmp_type < 128 || pkt.icmp_type == 137,
        _ => false,
    };
    if error {
        return false;
    }
    let group = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.is_unspecified() || directed_broadcast(node, ip),
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
    };
    !group(pkt.src) && !group(pkt.dst)
}

/// A subnet broadcast address of one of the node's IPv4 subnets.
fn directed_broadcast(node: &NodeConfig, ip: IpAddr) -> bool {
    node.uplinks.iter().flat_map(|u| &u.ips).any(|n| {
        n.family() == crate::net::IpFamily::V4
            && n.prefix_len() < 31
            && n.contains(ip)
            && crate::net::addr_bits(ip) | (u128::MAX >> (96 + n.prefix_len())) == crate::net::addr_bits(ip)
    })
}

/// The header of the answer to `pkt` (as its sender sent it; `translated`: the node had changed its
/// destination, service NAT): port unreachable from the host to the sender. Its source is the packet's
/// destination when that is the host's own address (as `icmp_send` picks it) or when NAT changed it (NAT
/// makes the answer come from the address the sender used), else a host address of the family, else (IPv6
/// to a local pod) the pod veth's link-local address; `None` when the host has no address to answer from.
pub fn answer(pkt: &PacketHeader, node: &NodeConfig, translated: bool) -> Option<PacketHeader> {
    let host_address =
        || node.uplinks.iter().flat_map(|u| &u.addrs).copied().find(|a| a.is_ipv4() == pkt.src.is_ipv4());
    let from = if translated || (node.is_host_ip(pkt.dst) && !pkt.dst.is_loopback()) {
        pkt.dst
    } else if let Some(a) = host_address() {
        a
    } else if pkt.src.is_ipv6() && node.local_workload_by_ip(pkt.src).is_some() {
        // No global IPv6 address: the kernel answers a pod from its veth's link-local address.
        IpAddr::V6(WORKLOAD_GATEWAY_LL)
    } else {
        return None;
    };
    let (protocol, icmp_type, icmp_code) =
        if pkt.src.is_ipv4() { (Protocol::ICMP, 3, 3) } else { (Protocol::ICMPV6, 1, 4) };
    Some(PacketHeader { src: from, dst: pkt.src, protocol, icmp_type, icmp_code, ..PacketHeader::EMPTY })
}

/// The per-destination bucket for answers to `dst`, or `None` for the host itself (the loopback device is
/// exempt). IPv6 scales the interval by the prefix of the route to `dst` as `icmpv6_xrlim_allow` does
/// (shorter for wider routes): a local pod's /128, an uplink's subnet, else the default route.
pub fn peer_rate(node: &NodeConfig, dst: IpAddr) -> Option<Rate> {
    if node.is_host_ip(dst) {
        return None;
    }
    let interval = match dst {
        IpAddr::V4(_) => PEER_INTERVAL,
        IpAddr::V6(_) => {
            let prefix = if node.local_workload_by_ip(dst).is_some() {
                128
            } else {
                node.uplinks
                    .iter()
                    .flat_map(|u| &u.ips)
                    .filter(|n| n.contains(dst))
                    .map(|n| n.prefix_len())
                    .max()
                    .unwrap_or(0)
            };
            PEER_INTERVAL >> ((128 - u32::from(prefix)) >> 5)
        }
    };
    Some(Rate { interval, burst: PEER_BURST })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{parse_documents, Field, Origin};

    fn node() -> NodeConfig {
        let text = "name: n1\ninterfaces:\n  - {name: eth0, ips: [10.0.0.1/24, 'fd00:10::1/64'], gateway: [10.0.0.254, 'fd00:10::fe']}\nworkloads:\n  - {name: a, namespace: app, interface: calia, ips: [10.1.0.1, 'fd00:1::1']}\n";
        let origin = Origin::file("node.yaml");
        let docs = parse_documents(text, &origin).unwrap();
        NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
    }

    fn pkt(src: &str, dst: &str, protocol: Protocol, icmp_type: u8) -> PacketHeader {
        PacketHeader {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            icmp_type,
            ..PacketHeader::EMPTY
        }
    }

    #[test]
    fn what_the_kernel_answers() {
        let n = node();
        assert!(eligible(&pkt("10.0.0.9", "10.1.0.1", Protocol::TCP, 0), &n));
        assert!(eligible(&pkt("10.0.0.9", "10.1.0.1", Protocol::ICMP, 8), &n), "an echo request is answered");
        assert!(!eligible(&pkt("10.0.0.9", "10.1.0.1", Protocol::ICMP, 3), &n), "an error is not");
        assert!(!eligible(&pkt("10.0.0.9", "10.1.0.1", Protocol::ICMP, 1), &n), "nor a type Linux counts as one");
        assert!(eligible(&pkt("10.0.0.9", "10.1.0.1", Protocol::ICMP, 13), &n), "a timestamp request is");
        assert!(eligible(&pkt("fd00:10::9", "fd00:1::1", Protocol::ICMPV6, 128), &n));
        assert!(!eligible(&pkt("fd00:10::9", "fd00:1::1", Protocol::ICMPV6, 100), &n));
        assert!(!eligible(&pkt("fd00:10::9", "fd00:1::1", Protocol::ICMPV6, 1), &n));
        assert!(!eligible(&pkt("10.0.0.9", "10.0.0.255", Protocol::UDP, 0), &n), "to the subnet's broadcast");
        assert!(!eligible(&pkt("10.0.0.9", "224.0.0.251", Protocol::UDP, 0), &n));
        assert!(!eligible(&pkt("0.0.0.0", "10.1.0.1", Protocol::UDP, 0), &n));
        let a = answer(&pkt("10.0.0.9", "10.0.0.1", Protocol::TCP, 0), &n, false).unwrap();
        assert_eq!(
            (a.src, a.dst, a.protocol, a.icmp_type, a.icmp_code),
            ("10.0.0.1".parse().unwrap(), "10.0.0.9".parse().unwrap(), Protocol::ICMP, 3, 3)
        );
        let a = answer(&pkt("fd00:1::1", "fd00:1::2", Protocol::UDP, 0), &n, false).unwrap();
        assert_eq!(
            (a.src, a.protocol, a.icmp_type, a.icmp_code),
            ("fd00:10::1".parse().unwrap(), Protocol::ICMPV6, 1, 4)
        );
        let a = answer(&pkt("10.1.0.1", "10.96.0.10", Protocol::TCP, 0), &n, true).unwrap();
        assert_eq!(a.src, "10.96.0.10".parse::<IpAddr>().unwrap(), "from the service address the sender used");
    }

    #[test]
    fn per_destination_limits() {
        let n = node();
        assert_eq!(peer_rate(&n, "10.0.0.1".parse().unwrap()), None, "to the host itself: no per-destination limit");
        assert_eq!(peer_rate(&n, "203.0.113.1".parse().unwrap()).unwrap().interval, 1_000_000_000);
        assert_eq!(peer_rate(&n, "fd00:1::1".parse().unwrap()).unwrap().interval, 1_000_000_000, "a pod's /128");
        assert_eq!(peer_rate(&n, "fd00:10::9".parse().unwrap()).unwrap().interval, 250_000_000, "an on-link /64");
        assert_eq!(peer_rate(&n, "2001:db8::1".parse().unwrap()).unwrap().interval, 62_500_000, "the default route");
    }
}
