//! Which worker owns a flow. Each worker keeps its own conntrack, so both directions of a flow, and the
//! ICMP errors about it, must be decided by one worker, whichever queue they arrive on. The owner is a
//! function of the packet alone, the same for a flow's original and reply directions:
//!
//! - most flows: a symmetric hash of the two (address, port) ends;
//! - service flows, whose reply does not mirror the original (DNAT changes the server end, SNAT the
//!   client's address but not its port): the client's port. A packet *to* a service front end (ClusterIP
//!   or NodePort) or to a backend is original-direction and its client port is its source port; a packet
//!   *from* a backend is a reply and its client port is its destination port.
//! - ICMP errors: the flow they quote.

use std::net::IpAddr;

use calxdp_policy::ids::Tuple;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;

/// Every (address, port, protocol) that is a service front end or backend on this node.
#[derive(Debug, Default)]
pub struct ServiceEnds(foldhash::HashSet<(IpAddr, u16, u8)>);

impl ServiceEnds {
    pub fn new(node: &NodeConfig) -> ServiceEnds {
        let mut set = foldhash::HashSet::default();
        for s in &node.services {
            let p = s.protocol.0;
            if let Some(ip) = s.cluster_ip {
                set.insert((ip, s.port, p));
            }
            if let Some(np) = s.node_port {
                for u in &node.uplinks {
                    for a in &u.addrs {
                        set.insert((*a, np, p));
                    }
                }
            }
            for b in &s.backends {
                set.insert((b.ip(), b.port(), p));
            }
        }
        ServiceEnds(set)
    }

    fn contains(&self, ip: IpAddr, port: u16, protocol: u8) -> bool {
        !self.0.is_empty() && self.0.contains(&(ip, port, protocol))
    }
}

/// The owning worker (of `workers`) of the flow `h` belongs to (`inner`: the flow an ICMP error quotes).
pub fn owner(h: &PacketHeader, inner: Option<Tuple>, ends: &ServiceEnds, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let t = inner.unwrap_or_else(|| Tuple::of(h));
    let p = t.protocol.0;
    let key = if ends.contains(t.dst, t.dst_port, p) {
        mix(u64::from(t.src_port) ^ (u64::from(p) << 16))
    } else if ends.contains(t.src, t.src_port, p) {
        mix(u64::from(t.dst_port) ^ (u64::from(p) << 16))
    } else {
        // XOR of the two ends' hashes: the same whichever end is the source.
        end_hash(t.src, t.src_port) ^ end_hash(t.dst, t.dst_port) ^ u64::from(p)
    };
    (mix(key) % workers as u64) as usize
}

/// The worker that gathers the fragments of a datagram (`src` to `dst`, identification `ident`): one for all
/// of them, since only the first carries ports. Once whole, the datagram goes to its flow's owner.
pub fn fragment_owner(src: IpAddr, dst: IpAddr, ident: u32, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    (mix(end_hash(src, 0) ^ end_hash(dst, 0).rotate_left(1) ^ u64::from(ident)) % workers as u64) as usize
}

fn end_hash(ip: IpAddr, port: u16) -> u64 {
    let a = match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u64) ^ ((v >> 64) as u64).rotate_left(17)
        }
    };
    mix(a ^ (u64::from(port) << 40))
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: every input bit reaches every output bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calxdp_policy::resource::Protocol;

    fn pkt(src: &str, sp: u16, dst: &str, dp: u16) -> PacketHeader {
        PacketHeader {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: Protocol::TCP,
            src_port: sp,
            dst_port: dp,
            ..PacketHeader::EMPTY
        }
    }

    fn ends() -> ServiceEnds {
        let mut set = foldhash::HashSet::default();
        set.insert(("10.96.0.10".parse().unwrap(), 80, 6)); // ClusterIP
        set.insert(("10.0.0.10".parse().unwrap(), 30080, 6)); // NodePort on the node
        set.insert(("192.168.1.10".parse().unwrap(), 8080, 6)); // backend
        ServiceEnds(set)
    }

    #[test]
    fn both_directions_of_plain_flows_have_one_owner() {
        let e = ServiceEnds::default();
        for w in 2..6 {
            for sp in [1000u16, 40000, 51234, 65535] {
                let a = pkt("192.168.1.11", sp, "10.0.0.1", 443);
                let b = pkt("10.0.0.1", 443, "192.168.1.11", sp);
                assert_eq!(owner(&a, None, &e, w), owner(&b, None, &e, w));
            }
        }
    }

    #[test]
    fn service_flows_keep_their_owner_through_dnat_and_snat() {
        let e = ends();
        for sp in [33000u16, 40001, 50002, 60003] {
            // ClusterIP: client -> VIP, reply backend -> client.
            let orig = owner(&pkt("192.168.1.11", sp, "10.96.0.10", 80), None, &e, 4);
            assert_eq!(orig, owner(&pkt("192.168.1.10", 8080, "192.168.1.11", sp), None, &e, 4));
            // NodePort with SNAT to the node's address: the reply comes back to the node's address.
            let orig = owner(&pkt("203.0.113.5", sp, "10.0.0.10", 30080), None, &e, 4);
            assert_eq!(orig, owner(&pkt("192.168.1.10", 8080, "10.0.0.10", sp), None, &e, 4));
            // Straight to the backend, no service: still one owner.
            let orig = owner(&pkt("192.168.1.11", sp, "192.168.1.10", 8080), None, &e, 4);
            assert_eq!(orig, owner(&pkt("192.168.1.10", 8080, "192.168.1.11", sp), None, &e, 4));
        }
    }

    #[test]
    fn an_icmp_error_goes_to_the_owner_of_the_flow_it_quotes() {
        let e = ServiceEnds::default();
        let flow = pkt("192.168.1.11", 40000, "10.0.0.1", 443);
        let mut icmp = pkt("10.0.0.254", 0, "192.168.1.11", 0);
        icmp.protocol = Protocol::ICMP;
        for w in 2..6 {
            assert_eq!(owner(&icmp, Some(Tuple::of(&flow)), &e, w), owner(&flow, None, &e, w));
        }
    }

    #[test]
    fn owners_spread_across_workers() {
        let e = ServiceEnds::default();
        let mut seen = [0usize; 4];
        for sp in 30000..34000u16 {
            seen[owner(&pkt("192.168.1.11", sp, "10.0.0.1", 443), None, &e, 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
